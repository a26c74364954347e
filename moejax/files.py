"""Files on any filesystem etils.epath reaches: local paths, gs://, s3://, ...

Every file the trainer, fine-tuning and evaluation write goes through here
or through `epath.Path` directly, so a Cloud TPU run can keep its workdir in
a bucket as a T5X or MaxText run does. Object stores have neither append
nor rename-over, so the two writes that need them have one owner here:
`AppendLog` (metrics.jsonl, TensorBoard events) and `write_atomic` (the
tokenizer cache, which a killed run must never leave half-written).
"""
from __future__ import annotations

import os
import socket
import time

from etils import epath


def is_local(path) -> bool:
    return "://" not in os.fspath(path)


def absolute(path: str) -> str:
    """`path` made absolute when local (orbax needs that); URIs as given."""
    return os.path.abspath(path) if is_local(path) else path


def write_atomic(path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see all of it or nothing."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):  # an object store publishes a whole object or none
        path.write_bytes(data)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class UnwritableDirectory(PermissionError):
    """A directory that cannot be created or written to (bad input, not a bug)."""


def check_writable(directory) -> None:
    """Creates `directory` (parents too) and proves it takes a file; raises
    UnwritableDirectory naming it otherwise."""
    directory = epath.Path(directory)
    # Named per host and process: on a pod every process probes the same place.
    probe = directory / f".moejax-write-test-{socket.gethostname()}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UnwritableDirectory(f"workdir {os.fspath(directory)!r} cannot be written "
                                  f"({e})") from None


class AppendLog:
    """A file that records are appended to. A local file is opened for
    append and every flush reaches the disk. An object store cannot append,
    so there the whole file (what was there when opened, then every record
    since) is rewritten on a flush at most once per `min_interval_s`, and on
    close: a crash loses at most that many seconds of records.

    Text or bytes (`binary`); write / flush / close, as tensorboardX's
    record writer expects of a file (which flushes again at exit: flushes
    after close do nothing).
    """

    def __init__(self, path, binary: bool = False, min_interval_s: float = 10.0):
        self.path, self.binary, self.min_interval_s = epath.Path(path), binary, min_interval_s
        self.local, self.closed = is_local(path), False
        if self.local:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "ab" if binary else "a", encoding=None if binary
                             else "utf-8")
            return
        self.chunks = [self.path.read_bytes()] if self.path.exists() else []
        self.written = time.monotonic()

    def write(self, data) -> None:
        if self.local:
            self.file.write(data)
        else:
            self.chunks.append(data if self.binary else data.encode("utf-8"))

    def flush(self, force: bool = False) -> None:
        if self.closed:
            return
        if self.local:
            self.file.flush()
        elif force or time.monotonic() - self.written >= self.min_interval_s:
            self.path.write_bytes(b"".join(self.chunks))
            self.written = time.monotonic()

    def close(self) -> None:
        if self.closed:
            return
        if self.local:
            self.file.close()
        else:
            self.flush(force=True)
        self.closed = True
