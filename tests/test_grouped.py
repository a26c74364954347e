"""The grouped matmul and its VJP, every kernel against a float64 reference.

The Pallas kernels run on CPU: megablox in interpret mode; Mosaic GPU's
padding and tiling with stand-in kernels (tests/gmm_kernels.py) that check
the real kernels' shape constraints, since Mosaic GPU needs a Hopper GPU.
"""
import gmm_kernels
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.dispatch import grouped_kernel, resolve_mode
from moejax.dispatch.blocks import Blocks, block_layout, block_size_for
from moejax.dispatch.choice import available_grouped_matmuls, default_grouped_matmul
from moejax.dispatch.grouped import RaggedDot, grouped_matmul
from moejax.dispatch.pallas import GpuTiles, Megablox, MosaicGpu, gpu_tiles
from moejax.routing import RouterConfig, route

K, N = 20, 36  # neither a multiple of any tile below
INACTIVE = 4   # rows past the last group (dropped / inactive assignments)
SIZES = {"uneven": [5, 0, 17, 1, 0, 9], "one_expert": [0, 0, 0, 32, 0, 0],
         "even": [3, 3, 3, 3, 3, 3]}


def mosaic(**tiles):
    return MosaicGpu(tiles=GpuTiles(**tiles), forward=gmm_kernels.ragged_dot,
                     transposed=gmm_kernels.transposed_ragged_dot)


KERNELS = {
    "blocks": Blocks(),
    "blocks_4": Blocks(block=4),
    "ragged_dot": RaggedDot(),
    "megablox_16": Megablox(tiling=(16, 128, 128), interpret=True),
    "megablox_default_tiles": Megablox(interpret=True),
    "mosaic_16": mosaic(block_m=16, block_n=16, block_k=16, max_concurrent_steps=2),
    "mosaic_grid2": mosaic(block_m=8, block_n=8, block_k=8, max_concurrent_steps=2,
                           grid_block_n=2),
}


def reference(x, w, dy, sizes):
    """float64 loops: y = x_e @ w_e, dx = dy_e @ w_e^T, dw_e = x_e^T @ dy_e."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    y, dx, dw = np.zeros((len(x), w.shape[2])), np.zeros_like(x), np.zeros_like(w)
    start = 0
    for e, size in enumerate(sizes):
        rows = slice(start, start + size)
        y[rows], dx[rows], dw[e] = x[rows] @ w[e], dy[rows] @ w[e].T, x[rows].T @ dy[rows]
        start += size
    return y, dx, dw


def operands(sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    m = sum(sizes) + INACTIVE
    x, w, dy = rng.normal(size=(m, K)), rng.normal(size=(len(sizes), K, N)), rng.normal(size=(m, N))
    # Round to the dtype first, so the reference sees the same inputs.
    return [np.asarray(jnp.asarray(a, dtype).astype(jnp.float32)) for a in (x, w, dy)]


TOL = {jnp.float32: dict(rtol=1e-5, atol=1e-4), jnp.bfloat16: dict(rtol=2e-2, atol=1e-1)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("sizes", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("name", list(KERNELS))
def test_values_and_gradients_match_float64_reference(name, sizes, dtype):
    kernel = KERNELS[name]
    x, w, dy = operands(sizes, dtype)
    gs = jnp.asarray(sizes, jnp.int32)
    fn = jax.jit(lambda x, w: grouped_matmul(x, w, gs, kernel))
    y, vjp = jax.vjp(fn, jnp.asarray(x, dtype), jnp.asarray(w, dtype))
    dx, dw = vjp(jnp.asarray(dy, dtype))
    assert y.dtype == dx.dtype == dw.dtype == dtype
    want_y, want_dx, want_dw = reference(x, w, dy, sizes)
    for got, want, what in ((y, want_y, "y"), (dx, want_dx, "dx"), (dw, want_dw, "dw")):
        got = np.asarray(got, np.float64)
        assert np.isfinite(got).all(), what
        np.testing.assert_allclose(got, want, err_msg=what, **TOL[dtype])
    # Rows past the groups are exactly zero, in the output and in dx.
    assert not np.asarray(y, np.float32)[sum(sizes):].any()
    assert not np.asarray(dx, np.float32)[sum(sizes):].any()


@pytest.mark.parametrize("sizes", list(SIZES.values()), ids=list(SIZES))
def test_every_kernel_available_here_matches_reference(sizes):
    """On CPU: blocks, ragged_dot (and tokamax where installed); on a Hopper
    GPU this runs the real Mosaic GPU kernels, on a TPU megablox."""
    x, w, dy = operands(sizes, jnp.bfloat16, seed=2)
    gs = jnp.asarray(sizes, jnp.int32)
    want = reference(x, w, dy, sizes)
    for name in available_grouped_matmuls():
        kernel = grouped_kernel(name, jnp.bfloat16)
        fn = jax.jit(lambda x, w, kernel=kernel: grouped_matmul(x, w, gs, kernel))
        y, vjp = jax.vjp(fn, jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
        got = (y, *vjp(jnp.asarray(dy, jnp.bfloat16)))
        for g, ref, what in zip(got, want, ("y", "dx", "dw")):
            np.testing.assert_allclose(np.asarray(g, np.float64), ref, err_msg=f"{name} {what}",
                                       **TOL[jnp.bfloat16])


@pytest.mark.parametrize("sizes", [SIZES["uneven"], [0, 0, 0, 0, 0, 0]], ids=["uneven", "empty"])
def test_megablox_kernels_alone_match_reference(sizes):
    """The raw gmm / tgmm (through the padding only), outside the VJP."""
    kernel = KERNELS["megablox_16"]
    x, w, dy = operands(sizes, jnp.float32, seed=1)
    gs = jnp.asarray(sizes, jnp.int32)
    want_y, want_dx, want_dw = reference(x, w, dy, sizes)
    np.testing.assert_allclose(kernel.gmm(x, w, gs), want_y, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(kernel.gmm_t(dy, w, gs), want_dx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(kernel.tgmm(x, dy, gs), want_dw, rtol=1e-5, atol=1e-4)


def test_mosaic_wrapper_pads_to_the_kernels_tiles():
    """The stand-in kernels assert the tile multiples; here, which padded
    shapes reached them (M=36 rows, K=20, N=36 with 16-wide tiles)."""
    gmm_kernels.CALLS.clear()
    x, w, dy = operands(SIZES["uneven"], jnp.float32)
    gs = jnp.asarray(SIZES["uneven"], jnp.int32)
    jax.vjp(lambda x, w: grouped_matmul(x, w, gs, KERNELS["mosaic_16"]), x, w)[1](dy)
    assert gmm_kernels.CALLS == [
        ("ragged_dot", (48, 32), (6, 32, 48), False),     # forward: K->32, N->48, M->48
        ("ragged_dot", (48, 48), (6, 32, 48), True),      # dx: contracts N (48), emits K
        ("transposed_ragged_dot", (48, 32), (48, 48)),    # dw: tokens 48, K 32, N 48
    ]


def test_gpu_tile_table_covers_every_row_count():
    assert gpu_tiles(1).block_m == 64 and gpu_tiles(10**7) == GpuTiles()


def test_blocks_layout_is_unique_and_in_range():
    for sizes in SIZES.values():
        for block in (1, 4, 8):
            m = sum(sizes) + INACTIVE
            position, block_expert = block_layout(jnp.asarray(sizes, jnp.int32), m, block)
            position, num_slots = np.asarray(position), block_expert.shape[0] * block
            assert len(set(position.tolist())) == m  # the scatter promises unique indices
            assert (position[:sum(sizes)] < num_slots).all()
            assert (position[sum(sizes):] >= num_slots).all()


def test_block_size_is_power_of_two_in_range():
    for rows, experts in [(16, 8), (4096, 8), (4096, 64), (10**6, 2)]:
        b = block_size_for(rows, experts)
        assert b & (b - 1) == 0 and 8 <= b <= 256 and (b <= rows // experts or b == 8)


def test_defaults_never_pick_xlas_expanded_ragged_dot():
    for backend in ("cpu", "gpu"):
        for dtype in (jnp.float32, jnp.bfloat16):
            assert default_grouped_matmul(dtype, backend) == "blocks"
    assert isinstance(grouped_kernel(None), Blocks)
    assert available_grouped_matmuls("cpu")[:2] == ("blocks", "ragged_dot")
    assert "megablox" not in available_grouped_matmuls("cpu")
    assert "mosaic_gpu" not in available_grouped_matmuls("cpu")


@pytest.mark.parametrize("impl,needs", [
    ("mosaic_gpu", "needs an NVIDIA Hopper GPU"), ("megablox", "needs a TPU")])
def test_unavailable_kernel_is_one_line_naming_it_and_what_runs(impl, needs):
    with pytest.raises(ValueError) as e:
        grouped_kernel(impl, jnp.bfloat16, backend="cpu")
    message = str(e.value)
    assert "\n" not in message and f"grouped_matmul {impl!r} {needs}" in message
    assert message.endswith("where blocks, ragged_dot can run") or "tokamax" in message
    with pytest.raises(ValueError, match=r"must be one of \('blocks', 'ragged_dot', "):
        grouped_kernel("cutlass")


def test_auto_is_scatter_on_accelerators_and_priced_on_cpu():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 1024, 64))

    def result(name, cf, **kw):
        cfg = RouterConfig(name=name, num_experts=64, eval_capacity_factor=cf, **kw)
        return route(cfg, logits, train=False)
    dropless = result("top_k", None, k=2)
    assert resolve_mode("auto", dropless, backend="cpu") == "dropless"
    assert resolve_mode("auto", result("top_k", 1.25, k=2), backend="cpu") == "scatter"
    assert resolve_mode("auto", result("top_p", 1.0), backend="cpu") == "scatter"
    assert resolve_mode("auto", result("expert_choice", 2.0), backend="cpu") == "scatter"
    for backend in ("gpu", "tpu"):
        assert resolve_mode("auto", dropless, backend=backend) == "scatter"
    assert resolve_mode("auto", dropless, expert_parallel=True) == "scatter"
    with pytest.raises(ValueError, match="dispatch must be one of"):
        resolve_mode("dense", dropless)


def test_grouped_matmul_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"x \[M, K\] and w \[E, K, N\], got \(4, 3\) and"):
        grouped_matmul(jnp.ones((4, 3)), jnp.ones((2, 5, 6)), jnp.ones(2, jnp.int32), Blocks())
    with pytest.raises(ValueError, match=r"group_sizes must have shape \(2,\), got \(3,\)"):
        grouped_matmul(jnp.ones((4, 3)), jnp.ones((2, 3, 6)), jnp.ones(3, jnp.int32), Blocks())
