"""Initial params for fine-tuning: a moejax checkpoint or a Hugging Face model.

`init_checkpoint` is one of
  <workdir>                  a moejax run: its latest checkpoint
  <workdir>/checkpoints/<N>  one step of it
  hf:<hub name or directory> an HF T5 / Switch model (e.g. hf:google/switch-base-8)
Only the params are read (the optimizer starts fresh, at step 0). Every
param must exist with the configured shape; otherwise the error names each
mismatched, missing and unexpected param.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from moejax.train.checkpoint import CheckpointError, leaf_paths, mismatch_report

HF_PREFIX = "hf:"


def checkpoint_step_dir(spec: str) -> str:
    """The step directory `spec` names (a run's latest, or the step itself)."""
    if "://" in spec:
        raise ValueError(f"init_checkpoint {spec!r}: remote checkpoints are not supported yet; "
                         "copy the run (or mount its bucket) and give the local path")
    if os.path.isdir(os.path.join(spec, "state")):
        return spec
    root = os.path.join(spec, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
    if not steps:
        raise FileNotFoundError(
            f"init_checkpoint {spec!r} is neither a moejax workdir with checkpoints nor a "
            f"checkpoint step directory (<workdir>/checkpoints/<step>), nor 'hf:<model>'")
    return os.path.join(root, str(steps[-1]))


def tokenizer_of(spec: str) -> str | None:
    """The SentencePiece model that goes with an init checkpoint: the run's
    cached tokenizer, or the HF model's spiece.model; None if it has none."""
    if not spec:
        return None
    if spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX):]
        if os.path.isdir(name):
            path = os.path.join(name, "spiece.model")
            return path if os.path.exists(path) else None
        from huggingface_hub import hf_hub_download

        return hf_hub_download(name, "spiece.model")
    step_dir = checkpoint_step_dir(spec)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(step_dir))),
                        "tokenizer", "spm.model")
    return path if os.path.exists(path) else None


def _check_shapes(got, want, source: str) -> None:
    """Raises CheckpointError naming every param whose shape differs, is
    missing or is unexpected."""
    shape = lambda a: tuple(a.shape)
    report = mismatch_report(leaf_paths(got, shape), leaf_paths(want, shape))
    if report:
        raise CheckpointError(f"init_checkpoint {source} does not fit model config: {report}. "
                              "Set the model config the checkpoint was trained with.")


def load_params(spec: str, abstract_params):
    """Params from `spec`, placed like `abstract_params` (ShapeDtypeStructs
    with shardings)."""
    if spec.startswith(HF_PREFIX):
        from moejax.convert import from_hf

        _, params = from_hf(spec[len(HF_PREFIX):])
        _check_shapes(params, abstract_params, spec)
        return jax.tree.map(lambda p, a: jax.device_put(p.astype(a.dtype), a.sharding),
                            params, abstract_params)
    state_dir = os.path.join(checkpoint_step_dir(spec), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        saved = checkpointer.metadata(state_dir).item_metadata.tree["params"]
    except Exception as e:  # orbax raises many types for unreadable data
        raise CheckpointError(f"init_checkpoint {state_dir} cannot be read "
                              f"({type(e).__name__}: {e})") from None
    _check_shapes(saved, abstract_params, state_dir)
    item = {"params": abstract_params}
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))
    return restored["params"]
