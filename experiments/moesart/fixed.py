"""Tasks with a fixed training set, and a trainer that runs every seed at once.

The MOESART paper's gains are out-of-sample, on finite training sets: a
comparison there needs a generalisation gap, early stopping on a
validation split and hyperparameters chosen on validation. Two tasks, each
seed drawing its own split:
- `digits_task`: two digits side by side from scikit-learn's bundled
  `load_digits` (8x8 images, no download), two tasks (classify the left
  and the right digit; loss = the sum of the two cross-entropies). The
  1797 images are split 60/20/20 into train/validation/test pools, so test
  pairs are made of images never seen in training.
- `cluster_task`: the clustered regression of `experiments.harness.synthetic` (K=8
  clusters, each its own tanh target) with a fixed training sample.

`train_fixed` trains `ClusterMoE` on one task for all seeds in one vmapped
program (seeds differ in data, init and router randomness) and returns,
per seed, the test loss at the evaluation with the lowest validation loss.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.harness.synthetic import ClusterMoE, ClusterTask
from moejax.layers import MOE_COLLECTION
from moejax.models import moe_outputs
from moejax.routing import RouterConfig
from moejax.train import optim

GROUP = 64  # tokens (examples) routed together


@dataclasses.dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32 [N, dim]
    y: np.ndarray  # [N, out] float32 targets (regression) or [N, 2] int labels (digits)


@dataclasses.dataclass(frozen=True)
class FixedTask:
    name: str
    loss: str  # "mse" or "two_digit_xent"
    out_dim: int
    train: Split
    val: Split
    test: Split


def digits_task(seed: int, n_train: int = 1024, n_val: int = 512, n_test: int = 1024) -> FixedTask:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(labels))
    cut = [int(0.6 * len(order)), int(0.8 * len(order))]
    pools = np.split(order, cut)
    mean, std = images[pools[0]].mean(), images[pools[0]].std()

    def pairs(pool, n):
        a, b = rng.choice(pool, n), rng.choice(pool, n)
        x = (np.concatenate([images[a], images[b]], 1) - mean) / std
        return Split(x.astype(np.float32), np.stack([labels[a], labels[b]], 1))

    return FixedTask("digits", "two_digit_xent", 20, pairs(pools[0], n_train),
                     pairs(pools[1], n_val), pairs(pools[2], n_test))


def cluster_task(seed: int, n_train: int = 2048, n_val: int = 1024,
                 n_test: int = 4096) -> FixedTask:
    task = ClusterTask(widths=(16,) * 8, separation=1.0, seed=seed)
    split = lambda n, s: Split(*task.sample(n, seed=s)[::2])  # (x, y)
    return FixedTask("clusters", "mse", task.out_dim, split(n_train, 10 * seed + 1),
                     split(n_val, 10 * seed + 2), split(n_test, 10 * seed + 3))


TASKS = {"digits": digits_task, "clusters": cluster_task}


def _loss(kind: str, pred, y):
    """Per example: [G, T] loss of pred [G, T, out] against y."""
    if kind == "mse":
        return jnp.mean(jnp.square(pred - y), -1)
    left, right = pred[..., :10], pred[..., 10:]
    return (optax.softmax_cross_entropy_with_integer_labels(left, y[..., 0]) +
            optax.softmax_cross_entropy_with_integer_labels(right, y[..., 1]))


def _groups(a: np.ndarray) -> np.ndarray:
    n = len(a) // GROUP * GROUP
    return a[:n].reshape(-1, GROUP, *a.shape[1:])


@functools.cache
def _programs(router: RouterConfig, d_ff: int, in_dim: int, out_dim: int, loss_kind: str):
    """(init, step, evaluate), jitted and vmapped over seeds; cached so that
    every learning rate of a grid reuses one compilation."""
    model = ClusterMoE(router, d_ff=d_ff, layers=1, out_dim=out_dim)
    ids = jnp.zeros((1, GROUP), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, GROUP, in_dim)), ids)
    labels = optim.frozen_labels(boxed["params"])  # a router that never trains stays put
    opt = optax.inject_hyperparams(
        lambda learning_rate: optim.freeze(optax.adam(learning_rate), labels))(learning_rate=1e-3)

    def init(key, x, lr):
        variables = nn.unbox(model.init(key, x[:1], ids))
        params = variables["params"]
        state = opt.init(params)
        state.hyperparams["learning_rate"] = lr
        return params, {k: v for k, v in variables.items() if k != "params"}, state

    def loss_fn(params, frozen, x, y, rng):
        pred, state = model.apply({"params": params, **frozen}, x,
                                  jnp.zeros(x.shape[:2], jnp.int32), deterministic=False,
                                  rngs={"router": rng}, mutable=[MOE_COLLECTION])
        aux, _ = moe_outputs(state[MOE_COLLECTION])
        return jnp.mean(_loss(loss_kind, pred, y)) + aux

    def step(params, frozen, state, x, y, rng):
        grads = jax.grad(loss_fn)(params, frozen, x, y, rng)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def chunk(params, frozen, state, xs, ys, keys, idx, start):
        """len(idx) steps (idx: [n, batch_groups] group indices), every seed."""
        def body(carry, inputs):
            params, state = carry
            i, batch = inputs
            rngs = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
            params, state = jax.vmap(step)(params, frozen, state, xs[:, batch], ys[:, batch], rngs)
            return (params, state), None

        steps = start + jnp.arange(idx.shape[0])
        (params, state), _ = jax.lax.scan(body, (params, state), (steps, idx))
        return params, state

    def evaluate(params, frozen, x, y):
        pred = model.apply({"params": params, **frozen}, x, jnp.zeros(x.shape[:2], jnp.int32))
        loss = jnp.mean(_loss(loss_kind, pred, y))
        if loss_kind == "mse":
            return loss, jnp.zeros(())
        hits = jnp.stack([jnp.argmax(pred[..., :10], -1) == y[..., 0],
                          jnp.argmax(pred[..., 10:], -1) == y[..., 1]])
        return loss, jnp.mean(hits)

    return jax.jit(jax.vmap(init)), jax.jit(chunk), jax.jit(jax.vmap(evaluate))


def train_fixed(task: str, seeds: int, router: RouterConfig, *, lr: float, steps: int,
                d_ff: int = 16, batch_groups: int = 4, evals: int = 40) -> dict:
    """Trains on TASKS[task](seed) for seeds 0..seeds-1 at once. Returns
    per seed: 'val' / 'test' curves [(step, loss)], and at the evaluation
    with the lowest validation loss (early stopping) 'best_step',
    'best_val', 'test_loss' and (digits) 'test_accuracy'."""
    data = [TASKS[task](s) for s in range(seeds)]
    stack = lambda f: jnp.asarray(np.stack([_groups(f(d)) for d in data]))
    xs, ys = stack(lambda d: d.train.x), stack(lambda d: d.train.y)
    xv, yv = stack(lambda d: d.val.x), stack(lambda d: d.val.y)
    xt, yt = stack(lambda d: d.test.x), stack(lambda d: d.test.y)
    init, chunk, evaluate = _programs(router, d_ff, xs.shape[-1], data[0].out_dim,
                                      data[0].loss)
    keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    params, frozen, state = init(keys, xs[:, :1], jnp.full((seeds,), lr, jnp.float32))
    n_groups = xs.shape[1]
    rng = np.random.RandomState(12345)  # the same batch order for every arm
    order = np.concatenate([rng.permutation(n_groups) for _ in range(steps * batch_groups
                                                                       // n_groups + 1)])
    order = order[:steps * batch_groups].reshape(steps, batch_groups)
    every = max(1, steps // evals)
    val, test, acc = [], [], []
    for i in range(0, steps + 1, every):
        (vl, _), (tl, ta) = evaluate(params, frozen, xv, yv), evaluate(params, frozen, xt, yt)
        val.append((i, np.asarray(vl)))
        test.append((i, np.asarray(tl)))
        acc.append(np.asarray(ta))
        if i + every <= steps:
            params, state = chunk(params, frozen, state, xs, ys, keys,
                                  jnp.asarray(order[i:i + every]), i)
    out = []
    for s in range(seeds):
        v = np.array([vl[s] for _, vl in val])
        v = np.where(np.isfinite(v), v, np.inf)
        best = int(np.argmin(v))
        out.append({"val": [(st, float(vl[s])) for st, vl in val],
                    "test": [(st, float(tl[s])) for st, tl in test],
                    "best_step": val[best][0], "best_val": float(v[best]),
                    "test_loss": float(test[best][1][s]), "test_accuracy": float(acc[best][s])})
    return out
