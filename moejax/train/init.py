"""Initial params for fine-tuning: a moejax checkpoint or a Hugging Face model.

`init_checkpoint` is one of
  <workdir>                  a moejax run: its latest checkpoint
  <workdir>/checkpoints/<N>  one step of it
  hf:<hub name or directory> an HF T5 / Switch model (e.g. hf:google/switch-base-8)
Only the params are read (the optimizer starts fresh, at step 0). Every
param must exist with the configured shape; otherwise the error names each
mismatched, missing and unexpected param.

`upcycled_params` instead starts an MoE model from a dense one (sparse
upcycling, Komatsuzaki et al. 2022, as T5X's MoE does): every expert of an
MoE layer is a copy of the dense FFN it replaces, routers start fresh.
"""
from __future__ import annotations

import dataclasses
import gc
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from moejax import models
from moejax.files import absolute
from moejax.layers import EXPERT_AXIS, ROUTER_AXES
from moejax.models.scan import is_scanned, match_layout
from moejax.train.checkpoint import (
    CheckpointError,
    describe,
    leaf_paths,
    mismatch_report,
    quiet_orbax_threads,
)

HF_PREFIX = "hf:"


def checkpoint_step_dir(spec: str) -> str:
    """The step directory `spec` names (a run's latest, or the step itself),
    on any filesystem (moejax.files)."""
    path = epath.Path(spec)
    if (path / "state").is_dir():
        return spec
    root = path / "checkpoints"
    steps = sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) \
        if root.is_dir() else []
    if not steps:
        raise FileNotFoundError(
            f"init_checkpoint {spec!r} is neither a moejax workdir with checkpoints nor a "
            f"checkpoint step directory (<workdir>/checkpoints/<step>), nor 'hf:<model>'")
    return os.fspath(root / str(steps[-1]))


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
    run = epath.Path(absolute(checkpoint_step_dir(spec))).parent.parent
    path = run / "tokenizer" / "spm.model"
    return os.fspath(path) if path.exists() else None


def _check_shapes(got, want, source: str) -> None:
    """Raises CheckpointError naming every param whose shape differs, is
    missing or is unexpected."""
    shape = lambda a: tuple(a.shape)
    report = mismatch_report(leaf_paths(got, shape), leaf_paths(want, shape))
    if report:
        raise CheckpointError(f"init_checkpoint {source} does not fit model config: {report}. "
                              "Set the model config the checkpoint was trained with.")


def _saved_params(spec: str):
    """(checkpointer, state directory, params metadata) of the moejax
    checkpoint `spec` names; CheckpointError when it cannot be read."""
    state_dir = absolute(os.fspath(epath.Path(checkpoint_step_dir(spec)) / "state"))
    quiet_orbax_threads()
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(state_dir).item_metadata
    except Exception as e:  # orbax raises many types for unreadable data
        raise _unreadable(state_dir, e) from e
    if metadata is None or "params" not in (metadata.tree or {}):
        raise _unreadable(state_dir, ValueError("its metadata is missing or damaged"))
    return checkpointer, state_dir, metadata.tree["params"]


def _unreadable(state_dir: str, e: Exception) -> CheckpointError:
    return CheckpointError(f"init_checkpoint {state_dir} cannot be read ({describe(e)}); it was "
                           f"left as is")


def _restore_params(checkpointer, state_dir: str, item, restore_args) -> dict:
    try:
        return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))["params"]
    except Exception as e:  # orbax raises many types for unreadable data
        gc.collect()  # the failed read's other coroutines: dropped now, as echoes
        raise _unreadable(state_dir, e) from e


def load_params(spec: str, abstract_params):
    """Params from `spec`, placed like `abstract_params` (ShapeDtypeStructs
    with shardings)."""
    if spec.startswith(HF_PREFIX):
        from moejax.convert import from_hf

        _, params = from_hf(spec[len(HF_PREFIX):])
        params = match_layout(params, abstract_params)  # HF layers are unscanned
        _check_shapes(params, abstract_params, spec)
        return _place(params, abstract_params)
    checkpointer, state_dir, saved = _saved_params(spec)
    if is_scanned(saved) != is_scanned(abstract_params):
        # Saved with the other model.scan_layers: read on the host, convert.
        params = match_layout(_host_params(checkpointer, state_dir, saved), abstract_params)
        _check_shapes(params, abstract_params, state_dir)
        return _place(params, abstract_params)
    _check_shapes(saved, abstract_params, state_dir)
    item = {"params": abstract_params}
    return _restore_params(checkpointer, state_dir, item,
                           ocp.checkpoint_utils.construct_restore_args(item))


def _place(params, abstract_params):
    """Host or device `params` on the devices, as `abstract_params` says."""
    return jax.tree.map(lambda p, a: jax.device_put(np.asarray(p).astype(a.dtype), a.sharding),
                        params, abstract_params)


def _dense_params(spec: str) -> dict:
    """The params of a checkpoint of any shape, on the host."""
    if spec.startswith(HF_PREFIX):
        from moejax.convert import from_hf

        return jax.tree.map(np.asarray, from_hf(spec[len(HF_PREFIX):])[1])
    return _host_params(*_saved_params(spec))


def _host_params(checkpointer, state_dir: str, saved) -> dict:
    """The params `saved` (their metadata) describes, read as numpy arrays."""
    item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)}
    restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    return _restore_params(checkpointer, state_dir, item, restore)


def _fresh_params(model_cfg, seed: int, paths: set[str]) -> dict[str, np.ndarray]:
    """Params `paths` of a random init with `seed`, as a run from scratch
    would draw them (only those are computed: the rest is dead code)."""
    tokens = jnp.ones((1, 1), jnp.int32)

    def init(rng):
        params = nn.unbox(models.Transformer(model_cfg).init({"params": rng, "router": rng}, tokens,
                                                      tokens))["params"]
        flat = traverse_util.flatten_dict(params, sep="/")
        return {p: flat[p] for p in paths}

    return jax.device_get(jax.jit(init)(jax.random.key(seed)))


def upcycled_params(spec: str, model_cfg, abstract_params, noise: float = 0.0, seed: int = 0):
    """Sparse upcycling (Komatsuzaki et al. 2022): params of the MoE model
    `model_cfg` from the dense model at `spec` (a moejax workdir or step, or
    'hf:<T5>'), placed like `abstract_params` (ShapeDtypeStructs with
    shardings). Each expert kernel (logical axis 'expert', [E, ...]) is the
    dense FFN kernel at the same path, copied E times and, with `noise` > 0,
    scaled by (1 + noise * N(0, 1)) elementwise per expert; router params
    (ROUTER_AXES) are a fresh init with `seed`; every other param is copied.
    Raises CheckpointError naming every dense param whose shape does not fit
    (the dense d_ff must be the experts' d_ff), missing or left over.
    A scanned model (model_cfg.scan_layers) is upcycled in the unscanned
    layout, then converted."""
    host = _upcycled_on_host(spec, dataclasses.replace(model_cfg, scan_layers=False), noise, seed)
    return _place(match_layout(host, abstract_params), abstract_params)


def _upcycled_on_host(spec: str, model_cfg, noise: float, seed: int) -> dict:
    """upcycled_params's values as numpy arrays, for unscanned `model_cfg`."""
    target = traverse_util.flatten_dict(models.abstract_params(model_cfg, boxed=True), sep="/")
    routers = {p for p, box in target.items() if set(box.names) & set(ROUTER_AXES)}
    experts = {p for p, box in target.items() if p not in routers and EXPERT_AXIS in box.names}
    if not experts:
        raise ValueError("upcycle=True needs a model with MoE layers (model.encoder_moe / "
                         "decoder_moe.interval > 0) to copy the dense FFNs into")
    for p in experts:
        if target[p].names[0] != EXPERT_AXIS:
            raise ValueError(f"expert kernel {p} has axes {target[p].names}; upcycling copies "
                             "along a leading 'expert' axis")
    want = {p: tuple(box.value.shape[1:] if p in experts else box.value.shape)
            for p, box in target.items() if p not in routers}
    dense = traverse_util.flatten_dict(_dense_params(spec), sep="/")
    report = mismatch_report({p: tuple(v.shape) for p, v in dense.items()}, want)
    if report:
        raise CheckpointError(f"upcycling from {spec}: the dense model must have this model's "
                              f"shape, with dense FFNs of the experts' shape: {report}")
    fresh = _fresh_params(model_cfg, seed, routers)
    rng = np.random.default_rng(seed)
    out = {}
    for p, box in target.items():
        if p in routers:
            value = fresh[p]
        elif p in experts:
            value = np.broadcast_to(dense[p], box.value.shape)
            if noise:
                value = value * (1.0 + noise * rng.standard_normal(value.shape))
        else:
            value = dense[p]
        out[p] = np.asarray(value)
    return traverse_util.unflatten_dict(out, sep="/")
