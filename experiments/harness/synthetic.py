"""The synthetic clustered task and its MoE model, trained one seed at a time.

K Gaussian clusters in d dimensions; cluster k has its own target function,
a random tanh network with `widths[k]` hidden units (wider = more complex).
The model is a stack of residual MoE blocks (moejax.layers.MoeLayer with
any RouterConfig) between linear maps, trained with Adam on the squared
error; test loss is measured on fresh draws.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.metrics import normalized_mutual_info_score

from moejax.layers import MOE_COLLECTION, MoeLayer
from moejax.models import moe_outputs
from moejax.routing import RouterConfig, route
from moejax.routing.base import experts_per_token
from moejax.train import optim


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """K clusters in `dim` dimensions, cluster k's target a tanh network of
    widths[k] units; `separation` scales the distance between centres."""

    widths: tuple[int, ...] = (8, 8, 8, 8)
    dim: int = 16
    out_dim: int = 4
    separation: float = 3.0
    noise: float = 0.5
    seed: int = 0

    @property
    def num_clusters(self) -> int:
        return len(self.widths)

    def _teacher(self):
        rng = np.random.RandomState(self.seed)
        centres = rng.randn(self.num_clusters, self.dim) * self.separation / np.sqrt(2)
        nets = [(rng.randn(self.dim, w) * 1.5 / np.sqrt(self.dim),
                 rng.randn(w, self.out_dim) / np.sqrt(w)) for w in self.widths]
        return centres, nets

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x [n, dim], cluster [n], y [n, out_dim]), float32 / int."""
        centres, nets = self._teacher()
        rng = np.random.RandomState(seed)
        cluster = rng.randint(self.num_clusters, size=n)
        x = centres[cluster] + self.noise * rng.randn(n, self.dim)
        y = np.zeros((n, self.out_dim))
        for k, (w1, w2) in enumerate(nets):
            sel = cluster == k
            y[sel] = np.tanh((x[sel] - centres[k]) @ w1 / self.noise) @ w2
        return x.astype(np.float32), cluster, y.astype(np.float32)


class ClusterMoE(nn.Module):
    """x [G, T, dim] -> layers x (h + MoE(n_i(h))) -> Dense(out), h starting at
    x; n_0 is the identity, so the first router (frozen or learned) routes
    the raw inputs with no learnable scale in front of it, as in Dikkala et
    al.; later layers see RMSNorm(h) without a scale."""

    router: RouterConfig
    d_ff: int = 32
    layers: int = 1
    out_dim: int = 4

    @nn.compact
    def __call__(self, x, token_ids, *, deterministic=True):
        h = x
        for i in range(self.layers):
            inputs = h if i == 0 else nn.RMSNorm(use_scale=False, name=f"norm_{i}")(h)
            h = h + MoeLayer(self.router, d_ff=self.d_ff, activations=("gelu",), name=f"moe_{i}")(
                inputs, token_ids=token_ids, deterministic=deterministic)
        return nn.Dense(self.out_dim, name="out")(h)


def _groups(a: np.ndarray, group: int) -> np.ndarray:
    return a.reshape(-1, group, *a.shape[1:])


@dataclasses.dataclass
class SyntheticRun:
    """Results of one synthetic training run."""

    test_loss: float
    loss_curve: list[tuple[int, float]]
    test_loss_per_cluster: list[float]
    nmi: list[tuple[int, list[float]]]  # (step, per layer)
    confusion: list[tuple[int, list[list[float]]]]  # (step, [cluster][expert]) of layer 0
    experts_per_token: list[float]  # per layer
    experts_per_token_per_cluster: list[list[float]]  # [layer][cluster]
    dropped_fraction: list[float]  # per layer


def routing_counts(router: RouterConfig, logits: jax.Array) -> np.ndarray:
    """Experts each token gets [G, T] when `router` (eval mode) routes `logits`."""
    result = route(router, logits)
    return np.asarray(experts_per_token(result.token, result.valid, logits.shape[1]))


def train_synthetic(task: ClusterTask, router: RouterConfig, *, steps: int, seed: int,
                    layers: int = 1, d_ff: int = 32, group: int = 64, batch_groups: int = 8,
                    lr: float = 3e-3, snapshots: int = 5, vocab: int = 4096) -> SyntheticRun:
    """Trains ClusterMoE on `task`; test metrics on 4096 fresh points."""
    model = ClusterMoE(router, d_ff=d_ff, layers=layers, out_dim=task.out_dim)
    n_train = steps * batch_groups * group
    x, _, y = task.sample(n_train, seed=1000 + seed)
    ids = np.random.RandomState(seed).randint(vocab, size=n_train)  # hash-router token ids
    xt, ct, yt = task.sample(4096, seed=10_000_019)
    idt = np.random.RandomState(99).randint(vocab, size=4096)
    xt, idt = jnp.asarray(_groups(xt, group)), jnp.asarray(_groups(idt, group))
    boxed = model.init(jax.random.key(seed), xt[:1], idt[:1])
    variables = nn.unbox(boxed)
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    opt = optim.freeze(optax.adam(lr), optim.frozen_labels(boxed["params"]))  # router 'frozen'
    opt_state = opt.init(params)

    def loss_fn(p, xb, idb, yb, rng):
        pred, state = model.apply({"params": p, **rest}, xb, idb, deterministic=False,
                                  rngs={"router": rng}, mutable=[MOE_COLLECTION])
        aux, _ = moe_outputs(state[MOE_COLLECTION])
        return jnp.mean(jnp.square(pred - yb)) + aux

    @jax.jit
    def step(p, s, xb, idb, yb, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, idb, yb, rng)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    @jax.jit
    def evaluate(p):
        pred, state = model.apply({"params": p, **rest}, xt, idt, mutable=[MOE_COLLECTION],
                                  capture_intermediates=lambda m, name: name == "router_logits")
        _, metrics = moe_outputs(state[MOE_COLLECTION])
        logits = [state["intermediates"][f"moe_{i}"]["router_logits"][0] for i in range(layers)]
        return jnp.mean(jnp.square(pred - yt.reshape(pred.shape)), axis=-1), logits, metrics

    yt = jnp.asarray(yt)
    curve, nmi, confusion = [], [], []
    snap_at = set(np.linspace(0, steps, snapshots).astype(int).tolist())
    xg, idg, yg = _groups(x, group), _groups(ids, group), _groups(y, group)
    rng = jax.random.key(seed + 7)
    for i in range(steps + 1):
        if i in snap_at:
            per_point, logits, _ = evaluate(params)
            chosen = [np.asarray(jnp.argmax(lg, -1)).reshape(-1) for lg in logits]
            nmi.append((i, [float(normalized_mutual_info_score(ct, c)) for c in chosen]))
            table = np.zeros((task.num_clusters, router.num_experts))
            np.add.at(table, (ct, chosen[0]), 1.0)
            confusion.append((i, (table / table.sum(1, keepdims=True)).tolist()))
            curve.append((i, float(jnp.mean(per_point))))
        if i == steps:
            break
        sl = slice(i * batch_groups, (i + 1) * batch_groups)
        params, opt_state, _ = step(params, opt_state, xg[sl], idg[sl], yg[sl],
                                    jax.random.fold_in(rng, i))
    per_point, logits, metrics = evaluate(params)
    per_point = np.asarray(per_point).reshape(-1)
    counts = [routing_counts(router, lg).reshape(-1) for lg in logits]
    return SyntheticRun(
        test_loss=float(per_point.mean()), loss_curve=curve,
        test_loss_per_cluster=[float(per_point[ct == k].mean()) for k in range(task.num_clusters)],
        nmi=nmi, confusion=confusion,
        experts_per_token=[float(c.mean()) for c in counts],
        experts_per_token_per_cluster=[[float(c[ct == k].mean()) for k in range(task.num_clusters)]
                                       for c in counts],
        dropped_fraction=[float(metrics[f"moe_{i}/dropped_fraction"]) for i in range(layers)])

