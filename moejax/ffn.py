"""The T5 feed-forward block as a pure function, shared by dense and expert FFNs."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax

from moejax.matmul import matmul

# T5.1.1 'gelu' is the tanh approximation (HF's gelu_new).
ACTIVATIONS: dict[str, Callable] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


def check_activations(activations: Sequence[str]) -> tuple[str, ...]:
    unknown = [a for a in activations if a not in ACTIVATIONS]
    if not activations or unknown:
        raise ValueError(f"activations must be a non-empty sequence of {sorted(ACTIVATIONS)}, "
                         f"got {tuple(activations)}")
    return tuple(activations)


def input_kernel_names(activations: Sequence[str]) -> list[str]:
    """T5X names: 'wi' for one activation, 'wi_0', 'wi_1', ... when gated."""
    if len(activations) == 1:
        return ["wi"]
    return [f"wi_{i}" for i in range(len(activations))]


def ffn(x, params, activations: Sequence[str], matmul: Callable = matmul,
        hidden_dropout: Callable | None = None):
    """prod_i act_i(x @ wi_i) @ wo, with `matmul(x, w)` supplied by the caller
    (a plain matmul, a per-expert einsum, or a grouped matmul).
    `hidden_dropout` (array -> array) acts on the hidden activations: the
    Switch Transformer's "expert dropout" when fine-tuning."""
    hidden = None
    for name, act in zip(input_kernel_names(activations), activations):
        h = ACTIVATIONS[act](matmul(x, params[name]))
        hidden = h if hidden is None else hidden * h
    if hidden_dropout is not None:
        hidden = hidden_dropout(hidden)
    return matmul(hidden, params["wo"])
