"""The two layouts of a stack's layers, and the one place that converts them.

Unscanned (T5X naming, HF conversion, `scan_layers=False`):
    encoder/layers_{i}/...            one subtree per layer i
Scanned (`scan_layers=True`, what nn.scan over blocks of k layers makes):
    encoder/blocks/layers_{r}/...     each leaf with a leading block axis
Layer i is blocks/layers_{i % k}[i // k], k = the stack's block size (its MoE
interval, so every block has the same layers; 1 without MoE). The same
holds for any tree shaped like the params per layer: router_state, the
decoding cache (whose batch axis moves to 1), the sown MoE metrics.
Conversion needs no config: a scanned tree's k is its number of layers_r.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

BLOCKS = "blocks"
LAYER = "layers_"


def _stacks(tree) -> list[str]:
    return [name for name, sub in tree.items() if isinstance(sub, Mapping)]


def is_scanned(tree) -> bool:
    """Whether any stack of `tree` (params, router_state, ...) is scanned."""
    return any(BLOCKS in tree[stack] for stack in _stacks(tree))


def _stack(leaves):
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype)
    if isinstance(first, np.ndarray):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _take(leaf, j: int):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[j]


def _layers(sub) -> dict[int, object]:
    return {int(name[len(LAYER):]): value for name, value in sub.items()
            if name.startswith(LAYER) and name[len(LAYER):].isdigit()}


def scan_tree(tree, block_sizes: Mapping[str, int]):
    """The scanned layout of unscanned `tree`; block_sizes: {stack: k}."""
    out = dict(tree)
    for stack in _stacks(tree):
        layers = _layers(tree[stack])
        if not layers or BLOCKS in tree[stack]:
            continue
        k, n = block_sizes[stack], len(layers)
        if n % k or sorted(layers) != list(range(n)):
            raise ValueError(f"{stack} has layers {sorted(layers)}, which do not form blocks of "
                             f"{k}")
        rest = {name: v for name, v in tree[stack].items()
                if not (name.startswith(LAYER) and name[len(LAYER):].isdigit())}
        blocks = {f"{LAYER}{r}": jax.tree.map(lambda *xs: _stack(xs),
                                              *[layers[j * k + r] for j in range(n // k)])
                  for r in range(k)}
        out[stack] = {**rest, BLOCKS: blocks}
    return out


def unscan_tree(tree):
    """The unscanned layout of scanned `tree`."""
    out = dict(tree)
    for stack in _stacks(tree):
        if BLOCKS not in tree[stack]:
            continue
        blocks = _layers(tree[stack][BLOCKS])
        k = len(blocks)
        count = jax.tree.leaves(blocks[0])[0].shape[0]
        rest = {name: v for name, v in tree[stack].items() if name != BLOCKS}
        layers = {f"{LAYER}{j * k + r}": jax.tree.map(lambda a, j=j: _take(a, j), blocks[r])
                  for j in range(count) for r in range(k)}
        out[stack] = {**rest, **layers}
    return out


def match_layout(tree, like):
    """`tree` in the layout of `like` (a tree of the same model in either)."""
    if is_scanned(like) and not is_scanned(tree):
        return scan_tree(tree, {stack: len(_layers(like[stack][BLOCKS]))
                                for stack in _stacks(like) if BLOCKS in like[stack]})
    if is_scanned(tree) and not is_scanned(like):
        return unscan_tree(tree)
    return tree


def layer_name(path: str, block_sizes: Mapping[str, int], j: int | None) -> str:
    """'encoder/layers_3/mlp' for 'encoder/blocks/layers_1/mlp' in block j=1
    of k=2 layers; unscanned paths (j None) pass through."""
    if j is None:
        return path
    stack, blocks, layer, *rest = path.split("/")
    assert blocks == BLOCKS, path
    index = j * block_sizes[stack] + int(layer[len(LAYER):])
    return "/".join([stack, f"{LAYER}{index}", *rest])


def take_rows(cache, rows):
    """The decoding cache of batch rows `rows` (beam search reorders beams):
    the batch axis is 0, or 1 under a scanned stack's leading block axis."""
    def take(path, leaf):
        scanned = any(getattr(key, "key", None) == BLOCKS for key in path)
        return leaf[:, rows] if scanned else leaf[rows]

    return jax.tree_util.tree_map_with_path(take, cache)
