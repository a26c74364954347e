"""Dense T5 feed-forward block (no biases), the MoE layer's dense counterpart."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from moejax.ffn import check_activations, ffn, input_kernel_names

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class MlpBlock(nn.Module):
    """prod_i act_i(x @ wi_i) @ wo; x [batch, length, embed]."""

    d_ff: int
    activations: Sequence[str] = ("gelu", "linear")
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init

    @nn.compact
    def __call__(self, x):
        activations = check_activations(self.activations)
        d = x.shape[-1]

        def kernel(axes):
            return nn.with_logical_partitioning(self.kernel_init, axes)

        params = {name: self.param(name, kernel(("embed", "mlp")), (d, self.d_ff), self.param_dtype)
                  for name in input_kernel_names(activations)}
        params["wo"] = self.param("wo", kernel(("mlp", "embed")), (self.d_ff, d), self.param_dtype)
        params = {k: jnp.asarray(v, self.dtype) for k, v in params.items()}
        y = ffn(jnp.asarray(x, self.dtype), params, activations)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))
