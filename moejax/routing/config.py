"""RouterConfig: every knob a router reads, validated once at construction."""
from __future__ import annotations

import dataclasses

import numpy as np

from moejax.routing.base import BALANCE_SCOPES, SCORE_FNS
from moejax.routing.registry import ROUTERS, get_router


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """Hashable (static under jit) router settings.

    name: a registered router (see `moejax.routing.ROUTERS`).
    num_experts: E.
    k: experts per token for token-choice routers (None: the router's
      default, 1 for switch/hash, 2 for gshard_top2). For `top_p` it is the
      average experts per token that capacity is sized for, not a limit.
    capacity_factor / eval_capacity_factor: C = ceil(cf * T * k / E) in
      training / evaluation; None = no capacity limit (nothing dropped).
      Expert choice uses C = ceil(cf * T / E).
    batch_prioritized: token-choice places are claimed in order of each
      token's max probability instead of position (V-MoE).
    normalize_weights: combine weights are renormalised to sum to 1 over a
      token's chosen experts (top_k, vmoe, xmoe, frozen, top_p).
    noise_std: V-MoE gating noise std added to logits in training
      (None: 1/E). Only `vmoe` reads it.
    jitter_eps: Switch input jitter, x * U(1-eps, 1+eps) in training
      (linear scorers).
    load_balance_weight, z_loss_weight, entropy_weight: aux-loss weights
      (V-MoE weights its importance and load losses by load_balance_weight / 2
      each; MOESART has no load-balance loss).
    trimmed_lasso_weight: MOESART's trimmed-lasso weight lambda (the authors
      sweep 1e-4 .. 10; 1e-2 is the middle of that sweep on a log scale).
    threshold: top_p cumulative-probability threshold, in (0, 1].
    max_experts_per_token: cap on experts per token (EC-CAP for
      expert_choice; a cap for top_p); None = no cap.
    sampling / sample_weighting: MOESART choices, see moejax/routing/moesart.py.
    xmoe_dim / xmoe_temperature: X-MoE hypersphere dimension and initial
      temperature (1.0: routing starts near uniform; the temperature is learned).
    score_fn: 'softmax' (over experts), or per expert 'sigmoid' (DeepSeek-V3)
      or 'sqrtsoftplus', sqrt(softplus(logit)) (DeepSeek-V4); with per-expert
      scores the combine weights are the chosen scores normalised to sum to 1.
    routed_scaling: factor on the combine weights (DeepSeek-V2/V3's
      routed_scaling_factor; 1.0 = none).
    expert_groups / topk_groups: group-limited routing (DeepSeek-V2/V3):
      E experts in `expert_groups` equal groups, each token choosing among
      the experts of its `topk_groups` best groups (None: all groups).
    bias_update_rate: auxiliary-loss-free balancing (Wang et al. 2024;
      DeepSeek-V3); 0 = off. A per-expert bias, added to the scores for
      selection only, moves by bias_update_rate * sign(mean load - load_e)
      after every training step (MoeLayer keeps it in the 'router_state'
      collection, outside the optimizer's reach; evaluation uses it frozen).
    quantile_balancing / quantile_balancing_ema: quantile balancing (Kimi
      K3 report, sec. 2.3.3 and app. D; Megatron-Core's and torchtitan's
      `quantile_balancing`), the alternative to bias_update_rate: after
      every training step the selection bias is solved rather than nudged.
      Each real token's cutoff is its (k+1)-th best score + bias; expert
      e's new bias is the k/E quantile over the batch's tokens of
      (cutoff - score_e), so that k/E of them would pick e, mean-centred,
      and mixed as ema * old + (1 - ema) * solved (ema 0: no memory).
      Needs k < num_experts and expert_groups = 1.
    num_null_experts: zero-computation experts among the routed ones
      (MoE++, Jin et al. 2024; LongCat-Flash): the router scores
      num_experts + num_null_experts columns and takes its k best; a choice
      of a null expert computes nothing and adds nothing (its combine
      weight is spent on a zero output), so a token uses 0..k real experts
      (metric `null_expert_share`: the fraction of choices that were null;
      `experts_per_token` counts real experts). The load-balance loss
      counts null experts like real ones. At most num_experts; not with a
      selection bias or expert groups.
    score_fn, routed_scaling, expert groups, bias_update_rate,
    quantile_balancing and num_null_experts are read by the routers
    registered with `score_options=True` (top_k, switch, frozen, xmoe).
    hash_table: the `hash` router's token-id -> experts table, a .npy file
      of ints [vocab_size, k] in [0, num_experts) (DeepSeek-V4's tid2eid;
      any path etils.epath reads); None: each id's k experts are the k
      largest of a murmur3 hash of (id, expert) (k = 1: murmur3(id) mod E).
    relu_active_fraction / relu_l1_init / relu_l1_growth: the `relu` router
      (ReMoE, Wang et al. 2024): the target fraction of experts active per
      token (1 - ReMoE's target sparsity; None: k / num_experts), the L1
      coefficient's starting value and its factor per step (see
      moejax/routing/relu.py).
    balance_scope: what the load-balance loss balances: each routing
      'group' (flaxformer, T5X), each 'sequence' (DeepSeek-V3's
      sequence-wise loss) or the whole 'batch' (Megatron-Core / Qwen's
      global-batch loss, over every device). Read by the routers with the
      Switch loss (`balance_scopes=True`: all but vmoe, expert_choice and
      moesart, which must keep 'group').

    Fields that only one router reads are checked by that router's
    `validate` (see `moejax.routing.register_router`).
    """

    name: str = "switch"
    num_experts: int = 8
    k: int | None = None
    capacity_factor: float | None = 1.25
    eval_capacity_factor: float | None = 2.0
    batch_prioritized: bool = False
    normalize_weights: bool = False
    noise_std: float | None = None
    jitter_eps: float = 0.0
    load_balance_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    entropy_weight: float = 0.0
    trimmed_lasso_weight: float = 1e-2
    threshold: float = 0.4
    max_experts_per_token: int | None = None
    sampling: str = "without_replacement"
    sample_weighting: str = "small_random"
    xmoe_dim: int = 16
    xmoe_temperature: float = 1.0
    score_fn: str = "softmax"
    routed_scaling: float = 1.0
    expert_groups: int = 1
    topk_groups: int | None = None
    bias_update_rate: float = 0.0
    quantile_balancing: bool = False
    quantile_balancing_ema: float = 0.0
    num_null_experts: int = 0
    balance_scope: str = "group"
    hash_table: str | None = None
    relu_active_fraction: float | None = None
    relu_l1_init: float = 1e-8
    relu_l1_growth: float = 1.2

    def __post_init__(self):
        spec = get_router(self.name)
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        self._check_scoring(spec)
        k = spec.default_k if self.k is None else self.k
        if spec.fixed_k and k != spec.default_k:
            raise ValueError(f"router {self.name!r} uses k={spec.default_k}, got k={k}; "
                             "use router 'top_k' for other values")
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"k must be in [1, num_experts={self.num_experts}], got k={k}")
        reachable = self.kept_groups * (self.num_experts // self.expert_groups)
        if k > reachable:
            raise ValueError(f"k={k} exceeds the {reachable} experts that topk_groups="
                             f"{self.kept_groups} of expert_groups={self.expert_groups} hold")
        object.__setattr__(self, "k", k)
        if self.quantile_balancing and k >= self.num_experts:
            raise ValueError(f"quantile_balancing needs k < num_experts={self.num_experts} (its "
                             f"cutoff is each token's (k+1)-th best score), got k={k}")
        for field in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"{field} must be > 0 (or None for no capacity limit), "
                                 f"got {value}")
        if not 0 <= self.jitter_eps < 1:
            raise ValueError(f"jitter_eps must be in [0, 1), got {self.jitter_eps}")
        for field in ("load_balance_weight", "z_loss_weight", "entropy_weight",
                      "trimmed_lasso_weight"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        cap = self.max_experts_per_token
        if cap is not None and not 1 <= cap <= self.num_experts:
            raise ValueError(f"max_experts_per_token must be in [1, num_experts="
                             f"{self.num_experts}] or None, got {cap}")
        if self.hash_table is not None and spec.scorer != "hash":
            raise ValueError(f"router {self.name!r} does not read hash_table="
                             f"{self.hash_table!r}; the router that does: hash")
        if spec.validate is not None:
            spec.validate(self)

    def check_hash_table(self, vocab_size: int, where: str = "") -> None:
        """Raises a ValueError naming `where`hash_table unless its table is
        ints [vocab_size, k] in [0, num_experts)."""
        from moejax.routing.scores import load_hash_table

        table = load_hash_table(self.hash_table)
        name = f"{where}hash_table={self.hash_table!r}"
        if table.ndim != 2 or table.shape != (vocab_size, self.k):
            raise ValueError(f"{name} has shape {table.shape}; it must be [vocab_size, k] = "
                             f"[{vocab_size}, {self.k}]")
        if not np.issubdtype(table.dtype, np.integer) or table.min() < 0 or \
                table.max() >= self.num_experts:
            raise ValueError(f"{name} must hold integer experts in [0, num_experts="
                             f"{self.num_experts}), got {table.dtype} in [{table.min()}, "
                             f"{table.max()}]")
        if any(len(set(row)) < self.k for row in table.tolist()):
            raise ValueError(f"{name} names an expert twice in a row; each token id needs k "
                             f"distinct experts")

    def _check_scoring(self, spec) -> None:
        """score_fn, routed_scaling, expert_groups / topk_groups, balance_scope."""
        if self.score_fn not in SCORE_FNS:
            raise ValueError(f"score_fn must be one of {SCORE_FNS}, got {self.score_fn!r}")
        if self.balance_scope not in BALANCE_SCOPES:
            raise ValueError(f"balance_scope must be one of {BALANCE_SCOPES}, got "
                             f"{self.balance_scope!r}")
        if self.balance_scope != "group" and not spec.balance_scopes:
            scoped = sorted(n for n, r in ROUTERS.items() if r.balance_scopes)
            raise ValueError(f"router {self.name!r} has no Switch load-balance loss to scope: "
                             f"balance_scope must be 'group', got {self.balance_scope!r} "
                             f"(routers with scopes: {', '.join(scoped)})")
        if self.bias_update_rate < 0:
            raise ValueError(f"bias_update_rate must be >= 0 (0 = off), got "
                             f"{self.bias_update_rate}")
        if not 0 <= self.quantile_balancing_ema < 1:
            raise ValueError(f"quantile_balancing_ema must be in [0, 1), got "
                             f"{self.quantile_balancing_ema}")
        if self.quantile_balancing and self.bias_update_rate > 0:
            raise ValueError("quantile_balancing and bias_update_rate both set the selection "
                             f"bias: use one (bias_update_rate={self.bias_update_rate})")
        nulls = self.num_null_experts
        if not 0 <= nulls <= self.num_experts:
            raise ValueError(f"num_null_experts must be in [0, num_experts={self.num_experts}], "
                             f"got {nulls}")
        if nulls and (self.has_selection_bias or self.expert_groups > 1):
            raise ValueError(f"num_null_experts={nulls} works without a selection bias and "
                             "expert groups (bias_update_rate=0, quantile_balancing=False, "
                             "expert_groups=1)")
        if self.quantile_balancing and self.expert_groups > 1:
            raise ValueError(f"quantile_balancing needs expert_groups=1, got "
                             f"{self.expert_groups}")
        if not self.routed_scaling > 0:
            raise ValueError(f"routed_scaling must be > 0, got {self.routed_scaling}")
        groups = self.expert_groups
        if groups < 1 or self.num_experts % groups:
            raise ValueError(f"expert_groups must be >= 1 and divide num_experts="
                             f"{self.num_experts}, got {groups}")
        top = self.kept_groups
        if not 1 <= top <= groups:
            raise ValueError(f"topk_groups must be in [1, expert_groups={groups}], got {top}")
        used = [f"{name}={getattr(self, name)!r}" for name, default in
                (("score_fn", "softmax"), ("routed_scaling", 1.0), ("expert_groups", 1),
                 ("bias_update_rate", 0.0), ("quantile_balancing", False),
                 ("num_null_experts", 0))
                if getattr(self, name) != default]
        if used and not spec.score_options:
            takers = ", ".join(sorted(n for n, r in ROUTERS.items() if r.score_options))
            raise ValueError(f"router {self.name!r} does not read {', '.join(used)}; "
                             f"routers that do: {takers}")

    @property
    def num_choices(self) -> int:
        """Columns the router scores: the real experts and the null ones."""
        return self.num_experts + self.num_null_experts

    @property
    def has_selection_bias(self) -> bool:
        """The router selects with a per-expert bias kept as state
        (bias_update_rate > 0 or quantile_balancing)."""
        return self.bias_update_rate > 0 or self.quantile_balancing

    @property
    def kept_groups(self) -> int:
        """Expert groups a token chooses from (topk_groups; None = all)."""
        return self.expert_groups if self.topk_groups is None else self.topk_groups

    @property
    def spec(self):
        return get_router(self.name)

    @property
    def is_causal(self) -> bool:
        """Safe in an autoregressive decoder: batch-prioritised drops depend
        on later tokens' probabilities, expert choice on later tokens."""
        return self.spec.causal and not self.batch_prioritized

    def dropless(self) -> RouterConfig:
        """This router with no evaluation capacity limit where the capacity
        only drops tokens (spec.capacity_drops; expert choice is kept)."""
        if not self.spec.capacity_drops or self.eval_capacity_factor is None:
            return self
        return dataclasses.replace(self, eval_capacity_factor=None)

    def capacity_factor_for(self, train: bool) -> float | None:
        return self.capacity_factor if train else self.eval_capacity_factor

    def loss_weights(self) -> dict[str, float]:
        return {"load_balance_loss": self.load_balance_weight, "z_loss": self.z_loss_weight,
                "entropy_loss": self.entropy_weight,
                "trimmed_lasso_loss": self.trimmed_lasso_weight,
                "importance_loss": self.load_balance_weight / 2,
                "load_loss": self.load_balance_weight / 2}
