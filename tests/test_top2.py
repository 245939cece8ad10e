"""Cohen et al.'s Theorem 1 certificate with an upper bound on the runner-up (``top2_radius``).

Reference: ``sigma / 2 * (norm.ppf(pa) - norm.ppf(min(pb, 1 - pa)))`` from scipy, in float64 on
the host. Soundness is one-sided: ours may be below the reference by a few ulps, never above it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from smoothjax.certificates import cohen_radius, top2_radius

_PA = np.array([1e-300, 1e-12, 0.01, 0.2, 0.3, 0.45, 0.5 - 1e-12, 0.5, 0.5 + 1e-12, 0.6, 0.8, 0.95, 0.999,
                1 - 1e-9, 1 - 1e-15])
_PB = np.array([0.0, 1e-300, 1e-15, 1e-6, 0.01, 0.1, 0.2, 0.3, 0.45, 0.5, 0.55, 0.7, 0.99, 1.0])


def _reference(pa, pb, sigma):
    pa, pb = np.broadcast_arrays(np.asarray(pa, float), np.asarray(pb, float))
    # 1 - pa in exact arithmetic decides which form is larger; scipy's isf keeps its accuracy near 1
    pb_eff = np.minimum(pb, 1.0 - pa)
    za = np.where(pa > 0.5, norm.isf(1.0 - pa), norm.ppf(pa))
    zb = norm.ppf(pb_eff)
    with np.errstate(invalid="ignore"):
        r = sigma / 2.0 * (za - zb)
    return np.where(pa > pb_eff, r, 0.0)


def _grid():
    pa, pb = np.meshgrid(_PA, _PB, indexing="ij")
    return pa.ravel(), pb.ravel()


@pytest.mark.parametrize("sigma", [0.12, 0.25, 1.0], ids=["s0.12", "s0.25", "s1"])
def test_matches_scipy_and_never_exceeds_it(sigma):
    pa, pb = _grid()
    ours = np.asarray(top2_radius(pa, pb, sigma=sigma))
    ref = _reference(pa, pb, sigma)
    assert ours.dtype == np.float64
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    # soundness: every error is toward the smaller radius (scipy's own error allowed: 4 ulps)
    slack = 4 * np.finfo(float).eps * np.abs(ref[finite]) + 1e-300
    assert np.all(ours[finite] <= ref[finite] + slack), np.max(ours[finite] - ref[finite])
    # accuracy: within 1e-13 relative of the reference (plus an absolute floor for radii ~0)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-13, atol=1e-14 * sigma)
    assert np.all(ours >= 0.0)


def test_same_under_jit_and_vmap():
    pa, pb = _grid()
    eager = np.asarray(top2_radius(pa, pb, sigma=0.5))
    jitted = jax.jit(lambda a, b, s: top2_radius(a, b, sigma=s))(pa, pb, 0.5)
    np.testing.assert_array_equal(np.asarray(jitted), eager)
    vmapped = jax.vmap(lambda a, b: top2_radius(a, b, sigma=0.5))(jnp.asarray(pa), jnp.asarray(pb))
    np.testing.assert_array_equal(np.asarray(vmapped), eager)


@pytest.mark.parametrize("pa", [0.51, 0.7, 0.9, 0.999, 1 - 1e-12], ids=lambda p: f"pa{p}")
def test_with_pb_one_minus_pa_it_is_cohens_radius(pa):
    # sigma/2 (Phi^-1(pa) - Phi^-1(1 - pa)) = sigma Phi^-1(pa); a larger pb_upper changes nothing
    cohen = float(cohen_radius(pa, 0.25))
    for pb in (1.0 - pa, 0.99, 1.0):
        ours = float(top2_radius(pa, pb, sigma=0.25))
        assert ours <= cohen * (1 + 1e-15)
        assert ours == pytest.approx(cohen, rel=1e-13)


def test_monotone_and_positive_below_one_half():
    pa = np.linspace(0.3, 0.99, 40)
    r = np.asarray(top2_radius(pa, 0.25, sigma=1.0))
    assert np.all(np.diff(r) >= 0) and r[0] > 0  # pa = 0.3 > pb = 0.25: certified below 1/2
    r_b = np.asarray(top2_radius(0.6, np.linspace(0.0, 0.6, 40), sigma=1.0))
    assert np.all(np.diff(r_b) <= 0)
    assert r_b[-1] == pytest.approx(float(cohen_radius(0.6, 1.0)), rel=1e-13)  # pb capped at 1 - pa
    assert float(top2_radius(0.3, 0.3, sigma=1.0)) == 0.0 and float(top2_radius(0.3, 0.31, sigma=1.0)) == 0.0
    # never below Cohen's radius at the same pa (the pB = 1 - pA form is included)
    np.testing.assert_array_less(np.asarray(cohen_radius(pa, 1.0)) - 1e-12,
                                 np.asarray(top2_radius(pa, 0.9, sigma=1.0)) + 1e-15)


def test_float32_inputs_are_promoted():
    r = top2_radius(np.float32(0.8), np.float32(0.1), sigma=np.float32(0.5))
    assert r.dtype == jnp.float64


@pytest.mark.parametrize(
    "pa, pb, sigma, fragment",
    [(1.2, 0.1, 0.5, "pa_lower"), (0.8, -0.1, 0.5, "pb_upper"), (np.nan, 0.1, 0.5, "NaN"), (0.8, 0.1, 0.0, "sigma"),
     (0.8, 0.1, np.inf, "sigma")],
    ids=["pa>1", "pb<0", "pa-nan", "sigma0", "sigma-inf"],
)
def test_invalid_inputs_raise_outside_jit_and_are_nan_inside(pa, pb, sigma, fragment):
    with pytest.raises(ValueError, match=fragment):
        top2_radius(pa, pb, sigma=sigma)
    inside = jax.jit(lambda a, b, s: top2_radius(a, b, sigma=s))(pa, pb, sigma)
    assert np.isnan(float(inside))


def test_sigma_is_keyword_only():
    with pytest.raises(TypeError):
        top2_radius(0.8, 0.1, 0.5)  # noqa
