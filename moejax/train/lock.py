"""One trainer per workdir: `<workdir>/lock.json` names the live holder.

Two trainers on one workdir would overwrite each other's checkpoints and
metrics, so the second stops with one line naming the first (host, pid,
since when). A lock whose holder is gone is taken over, so that rerunning
the command after a kill -9 or a preemption resumes as before:

- on the holder's host, the holder is alive while its pid is (and, where
  /proc tells, the process with that pid started when the holder did, so
  a reused pid is not mistaken for it);
- from another host (a bucket workdir), while it has refreshed the lock
  within STALE_S (it does every HEARTBEAT_S).

Creation is atomic on local filesystems (O_EXCL); object stores have no
exclusive create, so there the lock is written, read back and compared,
which catches all but two starts within the same second; likewise two
trainers taking over one stale lock at the same moment may both succeed.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import time

from etils import epath

from moejax.files import is_local

LOCK_FILE = "lock.json"
HEARTBEAT_S = 60.0
STALE_S = 600.0


class WorkdirLocked(RuntimeError):
    """Another live trainer holds the workdir."""


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 22; the command name (field 2) may hold spaces, so count
            # from its closing parenthesis.
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WorkdirLock:
    """Holds `<workdir>/lock.json` from `acquire()` to `release()`."""

    def __init__(self, workdir: str):
        self.path = epath.Path(workdir) / LOCK_FILE
        pid = os.getpid()
        self.record = {"host": socket.gethostname(), "pid": pid, "since": _now(),
                       "start_ticks": _start_ticks(pid)}
        self.refreshed = 0.0

    def _holder(self) -> dict | None:
        """The lock's record; None when there is none or it is unreadable
        (a holder killed while writing it)."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def holder_alive(self, holder: dict) -> bool:
        if holder.get("host") == self.record["host"]:
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _alive(pid):
                return False
            started = holder.get("start_ticks")
            return started is None or _start_ticks(pid) in (None, started)
        heartbeat = holder.get("heartbeat_unix", 0.0)
        return time.time() - float(heartbeat) < STALE_S

    def _create(self) -> bool:
        """Writes the record if there is no lock file; False if there is one."""
        data = json.dumps({**self.record, "heartbeat_unix": time.time()})
        if is_local(self.path):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(data)
            return True
        if self.path.exists():
            return False
        self.path.write_text(data)
        return self._holder() == json.loads(data)

    def acquire(self) -> None:
        """Takes the lock, or raises WorkdirLocked naming its live holder."""
        for _ in range(3):  # a stale lock removed, then a race for the new one
            if self._create():
                self.refreshed = time.monotonic()
                return
            holder = self._holder()
            if holder is not None and self.holder_alive(holder):
                raise WorkdirLocked(
                    f"workdir {os.fspath(self.path.parent)!r} is in use by the trainer with pid "
                    f"{holder.get('pid')} on host {holder.get('host')!r} since "
                    f"{holder.get('since')} ({LOCK_FILE}); stop it first, or use another "
                    f"--workdir")
            if self._holder() == holder:  # still the dead holder's: take it over
                self.path.unlink(missing_ok=True)
        raise WorkdirLocked(f"cannot lock workdir {os.fspath(self.path.parent)!r}: other "
                            f"trainers keep taking {LOCK_FILE}")

    def refresh(self) -> None:
        """Renews the heartbeat every HEARTBEAT_S (cheap to call every step),
        so that trainers on other hosts see the holder is alive."""
        if time.monotonic() - self.refreshed < HEARTBEAT_S:
            return
        self.refreshed = time.monotonic()
        self.path.write_text(json.dumps({**self.record, "heartbeat_unix": time.time()}))

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        holder = self._holder()
        if holder and holder.get("pid") == self.record["pid"] and \
                holder.get("host") == self.record["host"]:
            self.path.unlink(missing_ok=True)
