"""T5.1.1 / Switch encoder-decoder in Flax linen, with MoE FFNs where the config says.

Param tree (T5X naming): token_embedder; encoder/{relpos_bias, layers_i/
{pre_attention_layer_norm, attention, pre_mlp_layer_norm, mlp}, encoder_norm};
decoder/{relpos_bias, layers_i/{pre_self_attention_layer_norm,
self_attention, pre_cross_attention_layer_norm, encoder_decoder_attention,
pre_mlp_layer_norm, mlp}, decoder_norm, logits_dense (untied only)}.
Token id 0 is padding (and the decoder's start token). With
config.scan_layers the layers_i sit in blocks (moejax.models.scan).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Mesh

from moejax.layers import MOE_COLLECTION, ROUTER_STATE, TRACE_COLLECTION, MlpBlock, MoeLayer
from moejax.layers.attention import (
    MultiHeadAttention,
    RelativePositionBias,
    additive_mask,
    resolve_attention,
    stack_bias,
)
from moejax.matmul import matmul
from moejax.models.config import REMAT_POLICIES, MoeConfig, T5Config
from moejax.models.scan import BLOCKS, layer_name


def attention_mask(q_mask, k_mask, q_segment=None, k_segment=None, q_index=None, k_index=None):
    """[B, 1, Lq, Lk] bool: True where query and key are both real tokens of
    the same segment (and key <= query when indices are given)."""
    allowed = q_mask[:, :, None] & k_mask[:, None, :]
    if q_segment is not None:
        allowed &= q_segment[:, :, None] == k_segment[:, None, :]
    if q_index is not None:
        allowed &= k_index[:, None, :] <= q_index[:, :, None]
    return allowed[:, None]


def attention_bias(*args, **kwargs):
    """attention_mask as an additive float32 mask: 0 where allowed, else -1e10."""
    return additive_mask(attention_mask(*args, **kwargs))


def _norm(cfg: T5Config, name: str):
    return nn.RMSNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      name=name)


def _attention_impl(cfg: T5Config, decode: bool = False) -> str:
    """What the stack's attention runs (cached decoding: always the einsum)."""
    if decode:
        return "einsum"
    return resolve_attention(cfg.attention, dtype=cfg.compute_dtype, head_dim=cfg.kv_dim,
                             dropout_rate=cfg.dropout_rate)


def _attention(cfg: T5Config, name: str, decode: bool = False):
    return MultiHeadAttention(cfg.num_heads, cfg.kv_dim, cfg.dropout_rate, cfg.compute_dtype,
                              implementation=_attention_impl(cfg, decode), name=name)


class _Layer(nn.Module):
    config: T5Config
    index: int
    mesh: Mesh | None = None
    expert_axis: str | None = None

    def feed_forward(self, stack: MoeConfig, x, mask, token_ids, *, deterministic,
                     decode=False):
        """Pre-norm FFN sublayer with residual: `pre_mlp_layer_norm`, then
        `mlp`, a dense MlpBlock or, where `stack` puts one, a MoeLayer
        (both directly under layers_i, as in T5X)."""
        cfg = self.config
        y = _norm(cfg, "pre_mlp_layer_norm")(x)
        if not stack.is_moe_layer(self.index):
            y = MlpBlock(cfg.d_ff, cfg.activations, dtype=cfg.compute_dtype, name="mlp")(y)
        else:
            y = MoeLayer(stack.router_of(self.index), d_ff=stack.d_ff or cfg.d_ff,
                         activations=stack.activations or cfg.activations,
                         # One decode step is one token per sequence: route it alone.
                         group_size=None if decode else stack.group_size,
                         # Capacity buffers would hold E slots per decoded token.
                         dispatch="dropless" if decode else stack.dispatch,
                         grouped_matmul=stack.grouped_matmul,
                         dtype=cfg.compute_dtype, mesh=None if decode else self.mesh,
                         expert_axis=self.expert_axis, dropout_rate=stack.expert_dropout,
                         num_shared_experts=stack.num_shared_experts,
                         shared_d_ff=stack.shared_d_ff, name="mlp")(
                y, mask=mask, token_ids=token_ids, deterministic=deterministic)
        return x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)


class EncoderLayer(_Layer):
    @nn.compact
    def __call__(self, x, bias, mask, token_ids, deterministic):
        cfg = self.config
        y = _norm(cfg, "pre_attention_layer_norm")(x)
        y = _attention(cfg, "attention")(y, y, bias, deterministic=deterministic)
        x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        return self.feed_forward(cfg.encoder_moe, x, mask, token_ids, deterministic=deterministic)


class DecoderLayer(_Layer):
    @nn.compact
    def __call__(self, x, encoded, self_bias, cross_bias, mask, token_ids, deterministic,
                 decode=False, decode_position=None, max_length=None):
        cfg = self.config
        y = _norm(cfg, "pre_self_attention_layer_norm")(x)
        y = _attention(cfg, "self_attention", decode)(
            y, y, self_bias, deterministic=deterministic, decode="self" if decode else None,
            decode_position=decode_position, max_length=max_length)
        x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention", decode)(
            y, encoded, cross_bias, deterministic=deterministic, decode="cross" if decode else None)
        x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        return self.feed_forward(cfg.decoder_moe, x, mask, token_ids, deterministic=deterministic,
                                 decode=decode)


def _run_layer(layer, x, args, deterministic: bool, decode: bool, decode_position, max_length):
    """x through one layer; args: the arrays it takes after x. Only a
    decoding call passes the cache's keywords (a rematerialised layer is
    never decoded, and takes positional arguments only)."""
    if decode:
        return layer(x, *args, deterministic, decode=True, decode_position=decode_position,
                     max_length=max_length)
    return layer(x, *args, deterministic)


class _Block(nn.Module):
    """`size` consecutive layers (one period of the stack's MoE pattern):
    what scan_layers repeats. The flags are attributes, static under
    nn.scan; the arrays after `x` are the same for every block."""

    config: T5Config
    layer: type[nn.Module]  # EncoderLayer or DecoderLayer
    size: int
    mesh: Mesh | None = None
    expert_axis: str | None = None
    deterministic: bool = True
    decode: bool = False
    max_length: int | None = None

    @nn.compact
    def __call__(self, x, *args):
        """Returns (x, None): the carry and no per-block output."""
        arrays, position = (args[:-1], args[-1]) if self.decode else (args, None)
        for r in range(self.size):  # the pattern repeats, so index r is layer j * size + r's
            layer = self.layer(self.config, r, self.mesh, self.expert_axis, name=f"layers_{r}")
            x = _run_layer(layer, x, arrays, self.deterministic, self.decode, position,
                           self.max_length)
        return x, None


class _Stack(nn.Module):
    """What Encoder and Decoder share: embedding, relative position bias, final norm."""

    config: T5Config
    embedder: nn.Embed
    mesh: Mesh | None = None
    expert_axis: str | None = None

    def embed(self, tokens, deterministic):
        x = self.embedder(tokens).astype(self.config.compute_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return nn.Dropout(self.config.dropout_rate)(x, deterministic=deterministic)

    def relpos(self, bidirectional):
        cfg = self.config
        return RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, bidirectional,
                                    name="relpos_bias")

    def final(self, x, name, deterministic):
        x = _norm(self.config, name)(x)
        return nn.Dropout(self.config.dropout_rate)(x, deterministic=deterministic)

    def layer_args(self, i):
        return dict(config=self.config, index=i, mesh=self.mesh, expert_axis=self.expert_axis,
                    name=f"layers_{i}")

    def layer_class(self, layer: type[nn.Module], decode: bool = False) -> type[nn.Module]:
        """`layer`, rematerialised per layer as config.remat says (never when
        decoding: no backward pass). `deterministic`, the positional argument
        after the arrays, is static."""
        policy = REMAT_POLICIES[self.config.remat]
        if decode or self.config.remat == "none":
            return layer
        static = 5 if layer is EncoderLayer else 7  # self counts as argument 0
        return nn.remat(layer, policy=policy, prevent_cse=True, static_argnums=(static,))

    def layers(self, layer: type[nn.Module], x, *args, deterministic: bool, decode: bool = False,
               decode_position=None, max_length: int | None = None):
        """x through the stack's layers, one by one or (config.scan_layers)
        as nn.scan over blocks of config's block size, each rematerialised
        as config.remat says. args: the arrays every layer takes after x."""
        cfg = self.config
        encoder = layer is EncoderLayer
        count = cfg.num_encoder_layers if encoder else cfg.num_decoder_layers
        if not cfg.scan_layers:
            for i in range(count):
                module = self.layer_class(layer, decode)(**self.layer_args(i))
                x = _run_layer(module, x, args, deterministic, decode, decode_position, max_length)
            return x
        if not count:
            return x
        k = (cfg.encoder_moe if encoder else cfg.decoder_moe).block_size
        block = _Block
        if cfg.remat != "none" and not decode:
            # scan already keeps XLA from merging the recomputation away
            block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        extra = (decode_position,) if decode else ()
        scanned = nn.scan(block, variable_axes={"params": 0, ROUTER_STATE: 0, MOE_COLLECTION: 0,
                                                TRACE_COLLECTION: 0, "cache": 0},
                          split_rngs={"params": True, "dropout": True, "router": True},
                          in_axes=(nn.broadcast,) * (len(args) + len(extra)), length=count // k,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scanned(cfg, layer, k, self.mesh, self.expert_axis, deterministic, decode,
                       max_length, name=BLOCKS)(x, *args, *extra)
        return x


class Encoder(_Stack):
    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic=True):
        """tokens [B, L] -> encoded [B, L, d]."""
        cfg = self.config
        mask = tokens > 0
        x = self.embed(tokens, deterministic)
        pos = jnp.arange(tokens.shape[1])[None] if positions is None else positions
        bias = stack_bias(self.relpos(True)(pos, pos),
                          attention_mask(mask, mask, segment_ids, segment_ids),
                          _attention_impl(cfg))
        x = self.layers(EncoderLayer, x, bias, mask, tokens, deterministic=deterministic)
        return self.final(x, "encoder_norm", deterministic)


class Decoder(_Stack):
    @nn.compact
    def __call__(self, encoded, encoder_mask, tokens, target_mask=None, encoder_segment_ids=None,
                 segment_ids=None, positions=None, *, deterministic=True, decode=False,
                 decode_position=None, max_length=None):
        """tokens [B, L] (L = 1 when decoding) -> logits [B, L, vocab] float32.

        target_mask [B, L]: real target positions (None: all). In decode mode
        the token sits at `decode_position` of a `max_length` cache.
        """
        cfg = self.config
        b, l = tokens.shape
        mask = jnp.ones((b, l), bool) if target_mask is None else target_mask
        x = self.embed(tokens, deterministic)
        impl = _attention_impl(cfg, decode)
        if decode:
            q_index = jnp.full((1, l), decode_position, jnp.int32)
            k_index = jnp.arange(max_length)[None]
            self_bias = stack_bias(self.relpos(False)(q_index, k_index), attention_mask(
                mask, jnp.ones((b, max_length), bool), q_index=jnp.broadcast_to(q_index, (b, l)),
                k_index=jnp.broadcast_to(k_index, (b, max_length))), impl)
        else:
            index = jnp.broadcast_to(jnp.arange(l)[None], (b, l))
            pos = index if positions is None else positions
            self_bias = stack_bias(self.relpos(False)(pos, pos), attention_mask(
                mask, mask, segment_ids, segment_ids, index, index), impl)
        cross_bias = stack_bias(None, attention_mask(mask, encoder_mask, segment_ids,
                                                     encoder_segment_ids), impl)
        x = self.layers(DecoderLayer, x, encoded, self_bias, cross_bias, mask, tokens,
                        deterministic=deterministic, decode=decode,
                        decode_position=decode_position, max_length=max_length)
        y = self.final(x, "decoder_norm", deterministic).astype(jnp.float32)
        if cfg.tie_embeddings:
            logits = matmul(y, self.embedder.embedding.T) * cfg.d_model ** -0.5
        else:
            kernel = self.param("logits_dense", nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                ("embed", "vocab")), (cfg.d_model, cfg.vocab_size), jnp.float32)
            logits = matmul(y, kernel)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
    """The encoder-decoder. With `mesh` whose `expert_axis` has size > 1, MoE
    layers run expert-parallel (shard_map + all-to-all); otherwise sharding is
    left to the compiler through the logical axis annotations."""

    config: T5Config
    mesh: Mesh | None = None
    expert_axis: str = "expert"

    def setup(self):
        cfg = self.config
        ep = self.mesh is not None and self.mesh.shape.get(self.expert_axis, 1) > 1
        mesh, axis = (self.mesh, self.expert_axis) if ep else (None, None)
        # float32 table: lookups are cast to the compute dtype, tied logits stay float32.
        self.token_embedder = nn.Embed(
            cfg.vocab_size, cfg.d_model, dtype=jnp.float32, param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                        ("vocab", "embed")))
        self.encoder = Encoder(cfg, self.token_embedder, mesh, axis)
        self.decoder = Decoder(cfg, self.token_embedder, mesh, axis)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, *,
               enable_dropout: bool = False):
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None,
               decoder_positions=None, *, enable_dropout: bool = False, decode: bool = False,
               decode_position=None, max_length: int | None = None):
        target_mask = None if decoder_target_tokens is None else decoder_target_tokens > 0
        return self.decoder(encoded, encoder_input_tokens > 0, decoder_input_tokens, target_mask,
                            encoder_segment_ids, decoder_segment_ids, decoder_positions,
                            deterministic=not enable_dropout, decode=decode,
                            decode_position=decode_position, max_length=max_length)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
                 decoder_positions=None, *, enable_dropout: bool = False):
        """Teacher-forced logits [B, L_dec, vocab] float32. Packed inputs pass
        segment ids (and positions within each segment)."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout=enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                           decoder_positions, enable_dropout=enable_dropout)


def abstract_params(cfg: T5Config, mesh: Mesh | None = None, boxed: bool = False):
    """The model's params as jax.ShapeDtypeStructs (nothing is allocated).
    Param shapes do not depend on the input length, so one token is traced.
    boxed=True keeps the nn.Partitioned logical-axis annotations."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = jax.eval_shape(Transformer(cfg, mesh=mesh).init, jax.random.PRNGKey(0),
                               tokens, tokens)
    return variables["params"] if boxed else nn.unbox(variables)["params"]


def as_variables(params_or_variables) -> dict:
    """The variables to apply the model with: `params_or_variables` itself
    when it already has a 'params' entry (with 'router_state' when a router
    keeps a selection bias), else {'params': it}. Evaluation and decoding
    take either."""
    if "params" in params_or_variables:
        return dict(params_or_variables)
    return {"params": params_or_variables}


def moe_outputs(moe_collection, config: T5Config | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(sum of every MoE layer's weighted aux loss, per-layer routing metrics
    keyed 'encoder/layers_1/expert_load', ...) from the sown 'moe' collection.
    A scanned model's (stacked per block) needs its `config`."""
    flat = traverse_util.flatten_dict(moe_collection or {}, sep="/")
    sizes = ({"encoder": config.encoder_moe.block_size, "decoder": config.decoder_moe.block_size}
             if config else {})
    aux = jnp.zeros((), jnp.float32)
    metrics = {}
    for key, values in flat.items():
        layer, kind = key.rsplit("/", 1)
        scanned = f"/{BLOCKS}/" in layer
        if scanned and not config:
            raise ValueError("moe_outputs of a scanned model needs its config")
        for value in values:  # sow appends one entry per call
            if kind == "aux_loss":
                aux = aux + jnp.sum(value)  # scanned: one per block
                continue
            count = jax.tree.leaves(value)[0].shape[0] if scanned else 1
            for j in range(count):
                prefix = layer_name(layer, sizes, j if scanned else None).removesuffix("/mlp")
                metrics.update({f"{prefix}/{name}": v[j] if scanned else v
                                for name, v in value.items()})
    return aux, metrics


__all__ = ["Decoder", "Encoder", "MOE_COLLECTION", "ROUTER_STATE", "Transformer",
           "abstract_params", "as_variables",
           "attention_bias", "attention_mask", "moe_outputs"]
