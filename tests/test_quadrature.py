"""Quadrature rules: Gauss-Hermite for N(0, 1) and the composite Gauss-Legendre panel rule used by
the Theorem 3 solver. Expected values come from closed forms and scipy.integrate.quad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

import smoothjax  # noqa: F401  (x64)
from smoothjax.quadrature import WINDOW, gauss_hermite_normal, gauss_legendre, gaussian_panel_rule


@pytest.mark.parametrize("n", [4, 16, 64])
def test_gauss_hermite_moments(n):
    z, w = gauss_hermite_normal(n)
    assert z.dtype == np.float64 and w.shape == (n,)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-14)
    # E Z^{2k} = (2k-1)!!, exact for 2k <= 2n - 1
    for k in range(1, n):
        moment = np.sum(w * z ** (2 * k))
        expected = np.prod(np.arange(1, 2 * k, 2, dtype=float))
        np.testing.assert_allclose(moment, expected, rtol=1e-11)
    np.testing.assert_allclose(np.sum(w * np.cos(z)), np.exp(-0.5), atol=1e-15 if n >= 16 else 1e-3)


def test_gauss_hermite_cannot_do_a_step():
    """Why Theorem 3 does not use plain Gauss-Hermite: E[1{Z < 0.3}] is off by ~1e-2 with 64 nodes."""
    z, w = gauss_hermite_normal(64)
    err = abs(np.sum(w * (z < 0.3)) - norm.cdf(0.3))
    assert err > 1e-4


def test_rules_are_cached_and_read_only():
    assert gauss_legendre(12)[0] is gauss_legendre(12)[0]
    with pytest.raises(ValueError):
        gauss_legendre(12)[0][0] = 1.0
    with pytest.raises(ValueError):
        gauss_hermite_normal(0)


# integrands with slope <= 1, of the kinds the Theorem 3 pieces produce
_FUNCTIONS = [
    lambda t: norm.cdf(0.8 * t + 0.5 * np.sin(t) - 1.0),
    lambda t: norm.cdf(0.999 * t - 1.0) * t,
    lambda t: norm.cdf(np.sqrt(1.0 + (t - 0.5) ** 2) - 3.0),
    lambda t: norm.pdf(t - 0.3) * t * t,
]
_INTERVALS = [(-np.inf, np.inf), (-9.0, 2.0), (0.3, 9.0), (-1.0, 1.5), (-4.0, -3.9), (2.0, 2.0)]


def _reference(f, a, b):
    a, b = max(a, -12.0), min(b, 12.0)
    if b <= a:
        return 0.0
    pts = [p for p in (-3.0, -1.0, 0.0, 1.0, 3.0) if a < p < b] or None
    return integrate.quad(lambda t: norm.pdf(t) * f(t), a, b, epsabs=1e-16, epsrel=1e-14, limit=500, points=pts)[0]


def test_panel_rule_error_matches_docstring():
    """The measurement quoted in smoothjax.quadrature: 16 nodes per panel -> below 1e-13."""
    worst = {}
    for n in (8, 12, 16):
        err = 0.0
        for a, b in _INTERVALS:
            x, w = gaussian_panel_rule(a, b, nodes_per_panel=n)
            x, w = np.asarray(x), np.asarray(w)
            for f in _FUNCTIONS:
                err = max(err, abs(np.sum(w * norm.pdf(x) * f(x)) - _reference(f, a, b)))
        worst[n] = err
    assert worst[16] < 1e-13
    assert worst[12] < 1e-10
    assert worst[8] > worst[12] > worst[16]


def test_panel_rule_broadcasts_and_jits():
    lo = jnp.array([[-jnp.inf], [0.0]])
    hi = jnp.array([1.0, 2.0, jnp.inf])
    x, w = jax.jit(gaussian_panel_rule)(lo, hi)
    assert x.shape == (2, 3, 64) and w.shape == (2, 3, 64)
    assert bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(w >= 0))
    mass = jnp.sum(w * jnp.exp(-0.5 * x * x) / jnp.sqrt(2 * jnp.pi), axis=-1)
    expected = norm.cdf(np.minimum(np.asarray(hi), WINDOW)) - norm.cdf(np.maximum(np.asarray(lo), -WINDOW))
    np.testing.assert_allclose(mass, expected, atol=1e-14)
    # empty interval -> zero weights
    _, w0 = gaussian_panel_rule(1.0, 0.5)
    assert float(jnp.sum(w0)) == 0.0
