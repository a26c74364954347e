"""T5Config: the encoder-decoder's shape and MoE placement, validated once."""
from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp

from moejax.dispatch import check_dispatch
from moejax.ffn import check_activations
from moejax.layers.attention import FUSED
from moejax.layers.attention import IMPLEMENTATIONS as ATTENTION
from moejax.routing import RouterConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.remat -> jax.checkpoint policy (None: save nothing, recompute the layer).
REMAT_POLICIES = {"none": None, "full": None,
                  "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """Where and how one stack (encoder or decoder) uses experts.

    interval / offset: layer i has an MoE FFN iff i % interval == offset
      (offset None: interval - 1, so 2 = every other layer starting at the
      second, as in Switch; 1 = every layer; interval 0 = a dense stack).
      HF Switch with a sparse step s >= 3 puts them at i % s == 1: interval
      s, offset 1.
    router: the router of every MoE layer of the stack. T5Config's defaults:
      expert choice (capacity factor 2) in the encoder, token-choice top-2
      in the decoder.
    d_ff / activations: expert FFN size and activations (None: the model's).
    group_size: tokens routed together (capacity and expert choice are per
      group); None = one group per sequence.
    dispatch: see moejax.dispatch.MODES ('auto': the fastest measured here).
    grouped_matmul: the kernel of 'dropless' dispatch (and of cached
      decoding, which always runs dropless), one of
      moejax.dispatch.GROUPED_MATMULS; None = the backend's default
      (moejax.dispatch.choice).
    expert_dropout: dropout on the experts' hidden activations in training
      (Switch fine-tuning uses 0.4 with 0.1 elsewhere).
    num_shared_experts / shared_d_ff: always-active experts (DeepSeekMoE)
      of shared_d_ff hidden units each (None: d_ff), added to the routed
      output; 0 = none.
    first_router / first_router_layers: the stack's first
      `first_router_layers` MoE layers route with `first_router` instead of
      `router` (DeepSeek-V4: hash routing by a token-id table in the first
      layers, learned routing after); 0 = every MoE layer uses `router`.
      Same num_experts as `router`; not with scan_layers (scanned blocks
      repeat one layer pattern).
    """

    interval: int = 0
    offset: int | None = None
    router: RouterConfig = RouterConfig("top_k", k=2)
    d_ff: int | None = None
    activations: tuple[str, ...] | None = None
    group_size: int | None = None
    dispatch: str = "auto"
    grouped_matmul: str | None = None
    expert_dropout: float = 0.0
    num_shared_experts: int = 0
    shared_d_ff: int | None = None
    first_router: RouterConfig = RouterConfig("hash")
    first_router_layers: int = 0

    def __post_init__(self):
        if self.first_router_layers < 0:
            raise ValueError(f"first_router_layers must be >= 0 (0 = every MoE layer uses "
                             f"router), got {self.first_router_layers}")
        if self.first_router_layers and (self.first_router.num_experts
                                         != self.router.num_experts):
            raise ValueError(f"first_router.num_experts={self.first_router.num_experts} must "
                             f"equal router.num_experts={self.router.num_experts}")
        if self.num_shared_experts < 0:
            raise ValueError(f"num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if self.shared_d_ff is not None and self.shared_d_ff < 1:
            raise ValueError(f"shared_d_ff must be >= 1 or None, got {self.shared_d_ff}")
        if not 0 <= self.expert_dropout < 1:
            raise ValueError(f"expert_dropout must be in [0, 1), got {self.expert_dropout}")
        if self.interval < 0:
            raise ValueError(f"interval must be >= 0 (0 = no MoE layers), got {self.interval}")
        if self.offset is not None and not 0 <= self.offset < max(self.interval, 1):
            raise ValueError(f"offset must be in [0, interval={self.interval}) or None, got "
                             f"{self.offset}")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"d_ff must be >= 1 or None, got {self.d_ff}")
        if self.activations is not None:
            check_activations(self.activations)
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 or None, got {self.group_size}")
        check_dispatch(self.dispatch, self.grouped_matmul)

    def is_moe_layer(self, i: int) -> bool:
        offset = self.interval - 1 if self.offset is None else self.offset
        return self.interval > 0 and i % self.interval == offset

    def router_of(self, i: int) -> RouterConfig:
        """The router of MoE layer i: first_router for the stack's first
        first_router_layers MoE layers, router after."""
        earlier = sum(self.is_moe_layer(j) for j in range(i))
        return self.first_router if earlier < self.first_router_layers else self.router

    def routers(self) -> dict[str, RouterConfig]:
        """field name -> router, of the routers the stack's MoE layers use."""
        used = {"first_router": self.first_router} if self.first_router_layers else {}
        return {**used, "router": self.router}

    @property
    def block_size(self) -> int:
        """Layers per repeated block of the stack: one period of the MoE
        pattern (1 without MoE layers); what scan_layers scans over."""
        return max(self.interval, 1)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """A T5.1.1 / Switch encoder-decoder.

    head_dim: per-head size (T5's d_kv); None = d_model // num_heads.
    activations: dense FFN activations; ('gelu', 'linear') is T5.1.1's
      gated GELU, ('relu',) the original T5 / Switch FFN.
    tie_embeddings: output logits use the input embedding, scaled by
      d_model ** -0.5 as in T5; False gives a separate output projection.
    dtype: activation dtype ('float32' or 'bfloat16'); parameters, norms,
      softmaxes, router and logits stay float32.
    attention: 'auto', 'einsum', 'xla' or 'cudnn' (moejax.layers.attention):
      'auto' is cuDNN's fused attention on a GPU with bfloat16 and no
      dropout, the einsum elsewhere. The fused ones have no dropout on the
      attention weights, so they take dropout_rate=0 only.
    remat: rematerialisation of each encoder/decoder layer in the backward
      pass: 'none' (keep every activation), 'full' (keep the layer's inputs,
      recompute the rest) or 'dots_saveable' (keep the matmul outputs that
      have no batch dimension, recompute the rest: MaxText's 'minimal').
      With scan_layers, per block.
    scan_layers: run each stack's repeated block (k layers, k = its MoE
      interval, 1 without MoE) with nn.scan, so compile time does not grow
      with depth. The params then have the scanned layout (moejax.models.
      scan: `encoder/blocks/layers_r/...` with a leading block axis);
      init checkpoints and HF weights of either layout are converted.
    allow_decoder_expert_choice: a non-causal router (expert choice,
      batch-prioritised token choice) in the decoder lets a token's routing
      depend on later tokens, which leaks the targets in training. It is only
      accepted with this explicit opt-in, and warns.
    """

    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 6
    head_dim: int | None = 64
    d_ff: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    activations: tuple[str, ...] = ("gelu", "linear")
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    tie_embeddings: bool = False
    dtype: str = "float32"
    encoder_moe: MoeConfig = MoeConfig(router=RouterConfig("expert_choice", capacity_factor=2.0))
    decoder_moe: MoeConfig = MoeConfig()
    allow_decoder_expert_choice: bool = False
    attention: str = "auto"
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_heads", "d_ff", "relative_attention_num_buckets",
                     "relative_attention_max_distance"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model} "
                             "(or set head_dim explicitly)")
        if self.head_dim is not None and self.head_dim < 1:
            raise ValueError(f"head_dim must be >= 1 or None, got {self.head_dim}")
        check_activations(self.activations)
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.attention in FUSED and self.dropout_rate > 0:
            raise ValueError(f"attention {self.attention!r} has no dropout on the attention "
                             f"weights, so it takes dropout_rate=0, got {self.dropout_rate}; use "
                             f"'auto' or 'einsum'")
        for stack in ("encoder", "decoder"):
            moe = getattr(self, f"{stack}_moe")
            if moe.first_router_layers and self.scan_layers:
                raise ValueError(f"{stack}_moe.first_router_layers={moe.first_router_layers} "
                                 "gives layers different routers, which scan_layers cannot "
                                 "scan: set scan_layers=False")
            for field, router in moe.routers().items():
                if router.hash_table:
                    router.check_hash_table(self.vocab_size, f"{stack}_moe.{field}.")
        if self.scan_layers:
            for stack in ("encoder", "decoder"):
                layers, k = getattr(self, f"num_{stack}_layers"), getattr(self,
                                                                           f"{stack}_moe").block_size
                if layers % k:
                    raise ValueError(f"scan_layers scans blocks of {stack}_moe.interval={k} "
                                     f"layers, which must divide num_{stack}_layers={layers}")
        router = next((r for r in self.decoder_moe.routers().values() if not r.is_causal),
                      self.decoder_moe.router)
        if self.decoder_moe.interval and self.num_decoder_layers and not router.is_causal:
            what = (f"router {router.name!r}" + (" with batch_prioritized=True"
                                                  if router.batch_prioritized else ""))
            if not self.allow_decoder_expert_choice:
                raise ValueError(
                    f"decoder_moe uses {what}, which is not causal: a token's routing would depend "
                    "on later tokens and leak the targets. Use a token-choice router in the "
                    "decoder, or set allow_decoder_expert_choice=True to accept the leak.")
            warnings.warn(f"decoder_moe uses non-causal {what} (allow_decoder_expert_choice=True): "
                          "routing sees later tokens, so training leaks targets and decoding "
                          "differs from teacher forcing.", stacklevel=2)

    @property
    def kv_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    def dropless(self) -> T5Config:
        """This model with no evaluation capacity limit in any MoE layer
        (RouterConfig.dropless): the canonical eval loss that runs differing
        in eval capacity compare on. The params are the same."""
        lift = lambda moe: dataclasses.replace(
            moe, **{field: router.dropless() for field, router in moe.routers().items()})
        return dataclasses.replace(self, encoder_moe=lift(self.encoder_moe),
                                   decoder_moe=lift(self.decoder_moe))
