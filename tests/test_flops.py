"""moejax.models.flops against the matmuls of the traced model."""
import math

import jax
import numpy as np
import pytest
from jax.extend import core as jex
from model_util import init, tiny_config

from moejax.models import MoeConfig, T5Config
from moejax.models.flops import forward_flops, train_flops_per_example
from moejax.routing import RouterConfig


def traced_matmul_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general and ragged_dot in a jaxpr,
    sub-jaxprs included (jit, custom_vjp, remat)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general" or name.startswith("ragged_dot"):
            if name == "dot_general":
                contracting = eqn.params["dimension_numbers"][0][0]
            else:
                contracting = eqn.params["ragged_dot_dimension_numbers"].dot_dimension_numbers[0][0]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[i] for i in contracting)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jex.ClosedJaxpr):
                    total += traced_matmul_flops(sub.jaxpr)
                elif isinstance(sub, jex.Jaxpr):
                    total += traced_matmul_flops(sub)
    return total


def dropless(router):
    return MoeConfig(interval=2, router=router, dispatch="dropless", grouped_matmul="ragged_dot")


CASES = {
    "moe_top2_shared": dict(
        encoder_moe=dropless(RouterConfig("top_k", num_experts=4, k=2, capacity_factor=None)),
        decoder_moe=MoeConfig(interval=1, router=RouterConfig("switch", num_experts=4,
                                                               capacity_factor=None),
                              dispatch="dropless", grouped_matmul="ragged_dot",
                              num_shared_experts=1, shared_d_ff=8, d_ff=24)),
    "expert_choice": dict(
        encoder_moe=dropless(RouterConfig("expert_choice", num_experts=4, capacity_factor=2.0)),
        decoder_moe=dropless(RouterConfig("top_k", num_experts=4, k=2, capacity_factor=None))),
    "dense_tied_relu": dict(encoder_moe=MoeConfig(), decoder_moe=MoeConfig(),
                            activations=("relu",), tie_embeddings=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_flops_equal_the_traced_matmuls(case):
    cfg = tiny_config(**CASES[case], attention="einsum")
    model, params = init(cfg)
    enc = np.ones((2, 8), np.int32)
    dec = np.ones((2, 6), np.int32)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, enc, dec, mutable=["moe"]))(params)
    want = traced_matmul_flops(jaxpr.jaxpr)
    assert sum(forward_flops(cfg, 8, 6).values()) * 2 == want  # 2 examples


def test_training_is_three_forward_passes():
    cfg = T5Config()
    assert train_flops_per_example(cfg, 64, 32) == 3 * sum(forward_flops(cfg, 64, 32).values())
