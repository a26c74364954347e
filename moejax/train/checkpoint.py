"""Checkpoints with orbax: train state + input-pipeline position, per step.

Keeps the latest `keep` steps plus the one with the lowest eval loss.
Restoring reads onto the shardings of the current mesh, so a run can resume
on a different mesh shape. A checkpoint that cannot be read, or whose
params do not match the configured model, stops the run with an error and
is left untouched.
"""
from __future__ import annotations

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = "eval_loss"


class CheckpointError(RuntimeError):
    pass


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
        preserve = [policies.LatestN(n=cfg.keep),
                    policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
                                   keep_checkpoints_without_metrics=False)]
        self.manager = ocp.CheckpointManager(
            directory, item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=1, enable_async_checkpointing=cfg.async_save,
                preservation_policy=policies.AnyPreservationPolicy(preserve)))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state, metrics: dict | None = None):
        """Starts writing step `step` (in the background when async)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            metrics=metrics, force=True)

    def restore(self, step: int, abstract_state):
        """(state, data_state) of `step`, placed like `abstract_state`
        (a tree of jax.ShapeDtypeStruct with shardings)."""
        where = f"{self.manager.directory}/{step}"
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable data
            raise CheckpointError(
                f"checkpoint {where} cannot be restored ({type(e).__name__}: {e}). It was left "
                f"as is; move it away or use another --workdir.") from None
        signature = lambda a: (tuple(a.shape), str(a.dtype))
        report = mismatch_report(leaf_paths(restored.state, signature),
                                 leaf_paths(abstract_state, signature))
        if report:
            raise CheckpointError(
                f"checkpoint {where} does not match the configured model/optimizer ({report}); "
                f"it was left as is. Use the config it was trained with.")
        return restored.state, restored.data

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
