"""Checkpoints with orbax: train state + input-pipeline position, per step.

Keeps the latest `keep` steps plus the one with the lowest eval loss.
Restoring reads onto the shardings of the current mesh, so a run can resume
on a different mesh shape. A checkpoint that cannot be read, or whose
params do not match the configured model, stops the run with an error and
is left untouched. A save that fails (a full disk, a lost permission) stops
the run at the next step with one error naming the step and the cause.

Failures are reported once, in one line (`describe`): orbax's background
threads log every failure they see with a traceback, and TensorStore puts
its whole spec into its messages; MOEJAX_DEBUG=1 keeps both.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import re
import sys

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = "eval_loss"


class CheckpointError(RuntimeError):
    pass


def describe(e: BaseException, limit: int = 400) -> str:
    """'ValueError: OUT_OF_RANGE: Error reading ...' : the innermost cause of
    an orbax/TensorStore failure, on one line, without TensorStore's spec."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = str(e).split("See full TensorStore details")[0]
    # TensorStore's annotations: [source locations='...'], [os_error_code=2] and
    # [tensorstore_spec[1]='{...}'], whose JSON holds brackets of its own.
    text = re.sub(r"\s*\[[\w ]+(?:\[\d+\])?=('.*?'|[^\]'][^\]]*)\]", "", text, flags=re.S)
    text = " ".join(text.split()).rstrip(" .")
    if len(text) > limit:  # the OS's reason comes last: keep both ends
        text = f"{text[:limit // 2]} ... {text[-limit // 2:]}"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _in_orbax(tb) -> bool:
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _OrbaxThreadReports(logging.Filter):
    """Drops the tracebacks orbax logs from its background threads (the
    failure reaches the trainer as an exception and is reported there,
    once); asyncio's "Task exception was never retrieved" for the other
    reads of a failed orbax restore (one per array, each with the whole
    TensorStore spec), logged whenever those tasks are collected; and
    orbax's warning that an item directory (<step>/state, which init
    checkpoints read) has no step metadata: that lives one level up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio":
            unretrieved = str(record.msg).startswith("Task exception was never retrieved")
            return not (unretrieved and record.exc_info and _in_orbax(record.exc_info[2]))
        if "orbax" not in record.pathname:
            return True
        if record.levelno >= logging.ERROR:
            return False
        return not str(record.msg).startswith("Metadata file does not exist")


def _echo(unraisable) -> bool:
    """An echo of a checkpoint failure already reported: TensorStore
    completing a read or write after orbax closed the event loop of the
    operation that failed, or one of that operation's other coroutines
    collected with its error unretrieved."""
    if isinstance(unraisable.exc_value, RuntimeError) and \
            str(unraisable.exc_value) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


def quiet_orbax_threads() -> None:
    """Installs _OrbaxThreadReports on absl's and asyncio's loggers and
    drops the `_echo`es of failures from sys.unraisablehook (each once, and
    again if replaced; not with MOEJAX_DEBUG=1)."""
    from moejax.cli import debug

    if debug():
        return
    for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
        if not any(isinstance(f, _OrbaxThreadReports) for f in logger.filters):
            logger.addFilter(_OrbaxThreadReports())
    if not getattr(sys.unraisablehook, "drops_checkpoint_echoes", False):
        previous = sys.unraisablehook

        def hook(unraisable):
            if not _echo(unraisable):
                previous(unraisable)

        hook.drops_checkpoint_echoes = True
        sys.unraisablehook = hook


def leaf_paths(tree, signature) -> dict[str, object]:
    """{'a/b/0/c': signature(leaf)} over a pytree's leaves."""
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                     for k in path): signature(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mismatch_report(got: dict, want: dict) -> str:
    """'' when the two {path: signature} maps agree; otherwise every entry
    whose signature differs, is missing from `got` or is not in `want`."""
    mismatched = [f"{k}: checkpoint {got[k]} vs model {want[k]}"
                  for k in sorted(want) if k in got and got[k] != want[k]]
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    parts = [f"mismatched: {'; '.join(mismatched)}" if mismatched else "",
             f"missing from the checkpoint: {', '.join(missing)}" if missing else "",
             f"not in the model: {', '.join(unexpected)}" if unexpected else ""]
    return ". ".join(p for p in parts if p)


class Checkpoints:
    def __init__(self, directory: str, cfg):
        quiet_orbax_threads()
        preserve = [policies.LatestN(n=cfg.keep),
                    policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
                                   keep_checkpoints_without_metrics=False)]
        self.directory = directory
        self.manager = ocp.CheckpointManager(
            directory, item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=1, enable_async_checkpointing=cfg.async_save,
                preservation_policy=policies.AnyPreservationPolicy(preserve)))
        self.saving: int | None = None  # the step of the latest save started

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _write_failed(self, e: Exception) -> CheckpointError:
        with contextlib.suppress(Exception):
            self.manager.reload()
        complete = self.latest_step()
        kept = (f"the latest complete checkpoint is step {complete}" if complete is not None
                else "no complete checkpoint was written")
        return CheckpointError(f"checkpoint step {self.saving} cannot be written to "
                               f"{self.directory} ({describe(e)}); stopped, {kept}")

    def save(self, step: int, state, data_state, metrics: dict | None = None):
        """Starts writing step `step` (in the background when async); a
        failure of the previous save is raised here as CheckpointError."""
        self.wait()  # orbax would wait for it too; this reports its failure with its step
        self.saving = step
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
                metrics=metrics, force=True)
        except Exception as e:
            raise self._write_failed(e) from e

    def check(self):
        """Raises CheckpointError when a background save has failed (does
        not wait for one in progress)."""
        if self.saving is not None and not self.manager.is_saving_in_progress():
            self.wait()  # returns at once; raises if that save failed

    def restore(self, step: int, abstract_state):
        """(state, data_state) of `step`, placed like `abstract_state`
        (a tree of jax.ShapeDtypeStruct with shardings)."""
        where = f"{self.directory}/{step}"
        quiet_orbax_threads()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable data
            gc.collect()  # the failed read's other coroutines: dropped now, as echoes
            raise CheckpointError(
                f"checkpoint {where} cannot be restored ({describe(e)}). It was left as is; move "
                f"it away or use another --workdir.") from e
        signature = lambda a: (tuple(a.shape), str(a.dtype))
        report = mismatch_report(leaf_paths(restored.state, signature),
                                 leaf_paths(abstract_state, signature))
        if report:
            raise CheckpointError(
                f"checkpoint {where} does not match the configured model/optimizer ({report}); "
                f"it was left as is. Use the config it was trained with.")
        return restored.state, restored.data

    def wait(self):
        """Blocks until the latest save is complete; CheckpointError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_failed(e) from e

    def close(self):
        """Waits for a save in progress and releases the manager; a failed
        save is not raised again (`wait` and `check` report it)."""
        with contextlib.suppress(Exception):
            self.manager.close()
