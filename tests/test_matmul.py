"""moejax.matmul: same values and gradients as jnp.matmul / a per-expert einsum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.matmul import matmul


def _reference(x, w):
    if w.ndim == 2:
        return np.einsum("...k,kn->...n", x, w)
    return np.einsum("e...k,ekn->e...n", x, w)


@pytest.mark.parametrize("x_shape,w_shape", [((3, 5, 4), (4, 6)), ((2, 3, 5, 4), (2, 4, 6))])
def test_values_and_gradients_match_reference(x_shape, w_shape):
    rng = np.random.RandomState(0)
    x = rng.randn(*x_shape).astype(np.float32)
    w = rng.randn(*w_shape).astype(np.float32)
    dy = rng.randn(*_reference(x, w).shape).astype(np.float32)
    y, vjp = jax.vjp(jax.jit(matmul), jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(y, _reference(x, w), rtol=1e-5, atol=1e-5)
    dx, dw = vjp(jnp.asarray(dy))
    # d<dy, x @ w>/dx = dy @ w^T and /dw = x^T @ dy, per expert for 3-D kernels.
    if w.ndim == 2:
        ref_dx = np.einsum("...n,kn->...k", dy, w)
        ref_dw = x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    else:
        ref_dx = np.einsum("e...n,ekn->e...k", dy, w)
        ref_dw = np.stack([a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])
                           for a, b in zip(x, dy)])
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)


def test_gradients_keep_dtypes():
    x = jnp.ones((4, 3), jnp.bfloat16)
    w = jnp.ones((3, 2), jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: matmul(x, w).astype(jnp.float32).sum(), argnums=(0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dw, np.float32), np.full((3, 2), 4.0))


def test_bad_kernel_rank():
    with pytest.raises(ValueError, match=r"\[k, n\] or \[E, k, n\] kernel, got shape \(3,\)"):
        matmul(jnp.ones((2, 3)), jnp.ones((3,)))
