"""Model FLOPs of the encoder-decoder, counted from its config: what MFU divides.

Matmul FLOPs only (2 per multiply-add), the convention of PaLM's MFU and
MaxText's: attention projections and scores, dense and expert FFNs (experts
at their nominal active count, whatever the dispatch pads or drops), the
router, the output logits. A training step costs 3x the forward pass
(backward: the input and the weight gradient). Checked in the tests against
the dot_general and ragged_dot operations of the traced model.
"""
from __future__ import annotations

from moejax.models.config import MoeConfig, T5Config
from moejax.routing import RouterConfig


def active_experts(router: RouterConfig) -> float:
    """Experts a token uses on average, nominally: k for token choice; for
    routers whose capacity is the routing rule (expert choice), the training
    capacity factor times k, the slots per token."""
    k = router.k or router.spec.default_k
    if not router.spec.capacity_drops and router.capacity_factor is not None:
        return router.capacity_factor * k
    return float(k)


def _ffn(cfg: T5Config, stack: MoeConfig, index: int, tokens: int) -> float:
    n_in = len(stack.activations or cfg.activations)
    if not stack.is_moe_layer(index):
        return 2 * tokens * cfg.d_model * cfg.d_ff * (len(cfg.activations) + 1)
    router = stack.router
    expert = 2 * tokens * cfg.d_model * (stack.d_ff or cfg.d_ff) * (n_in + 1)
    shared = stack.num_shared_experts * (stack.shared_d_ff or stack.d_ff or cfg.d_ff)
    return (2 * tokens * cfg.d_model * router.num_experts + active_experts(router) * expert
            + 2 * tokens * cfg.d_model * shared * (n_in + 1))


def forward_flops(cfg: T5Config, inputs_length: int, targets_length: int) -> dict[str, float]:
    """Forward matmul FLOPs of one example, by part."""
    d, hd = cfg.d_model, cfg.num_heads * cfg.kv_dim
    le, ld = inputs_length, targets_length
    encoder = sum(8 * le * d * hd + 4 * le * le * hd + _ffn(cfg, cfg.encoder_moe, i, le)
                  for i in range(cfg.num_encoder_layers))
    # Self-attention (the causal mask computes every score), cross-attention
    # (keys and values projected from the encoder output in every layer).
    decoder = sum(8 * ld * d * hd + 4 * ld * ld * hd
                  + 4 * ld * d * hd + 4 * le * d * hd + 4 * ld * le * hd
                  + _ffn(cfg, cfg.decoder_moe, i, ld)
                  for i in range(cfg.num_decoder_layers))
    return {"encoder": float(encoder), "decoder": float(decoder),
            "logits": float(2 * ld * d * cfg.vocab_size)}


def train_flops_per_example(cfg: T5Config, inputs_length: int, targets_length: int) -> float:
    return 3 * sum(forward_flops(cfg, inputs_length, targets_length).values())
