"""Property-based tests (hypothesis) of the certificate functions.

* monotonicity in every argument: Cohen (p up, sigma up), SoS (p up, gradient bound down; exact
  sigma scaling at fixed sigma * gradient), dipole (cs up, cn up), first-order l1 / linf (p up,
  ||grad||_2 lower bound up, dual-norm upper bound down);
* radius 0 where the probability bound is <= 1/2 (every radius);
* SoS >= Cohen for the same p_lower; dipole(cs, cn) >= Cohen(cs + cn), dipole(0, cn) = Cohen(cn);
* first-order l1 radius >= the l1 radius implied by the l2 certificate. Derivation: an l1 ball of
  radius eps lies inside the l2 ball of radius eps, so an l2 certificate R2 = sos_radius(p, U,
  sigma) (U >= ||grad g||_2) certifies the l1 ball of radius R2. From the same statistics,
  ||grad g||_inf <= ||grad g||_2 <= U, so any valid linf upper bound a may be taken <= U and
  l1_radius(p, l, a, sigma) = sigma R(q, -sigma a, sigma sqrt(l^2 - a^2)) >= sigma R(q, -sigma a, 0)
  >= sigma R(q, -sigma U, 0) = R2 (Theorem 3 bound non-decreasing in m1, m2; Corollary 3.1 is
  m1 = -sigma U, m2 = 0). Hence: for all 0 <= a <= U and feasible l, l1_radius >= sos_radius(p, U).
  Likewise for linf: an linf ball of radius eps lies inside the l2 ball of radius eps sqrt(d), and
  ||grad||_1 <= sqrt(d) ||grad||_2, so for l <= b <= sqrt(d) U: linf_radius >= sos_radius / sqrt(d).

Tolerances: radii from bisections to adjacent floats (Cohen/SoS/dipole) are compared with 1e-12
relative slack; Theorem 3 radii (Newton to ~1e-14) with 1e-9 relative slack.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import special, stats

import smoothjax as sj

SET = settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
SET_T3 = settings(deadline=None, max_examples=8, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

probs = st.floats(0.5, 1.0 - 1e-9, allow_nan=False)
any_probs = st.floats(0.0, 1.0, allow_nan=False)
sigmas = st.floats(0.05, 5.0, allow_nan=False)
fracs = st.floats(0.0, 1.0, allow_nan=False)


def _le(a, b, rel=1e-12):
    a, b = float(a), float(b)
    return a <= b + rel * (1.0 + abs(b))


def _gmax(p, sigma):
    """phi(Phi^-1(p)) / sigma: the largest ||grad g|| at g = p (SciPy, independent)."""
    return stats.norm.pdf(special.ndtri(p)) / sigma


@SET
@given(p1=probs, p2=probs, s1=sigmas, s2=sigmas)
def test_cohen_monotone(p1, p2, s1, s2):
    p1, p2 = sorted((p1, p2))
    s1, s2 = sorted((s1, s2))
    assert _le(sj.cohen_radius(p1, s1), sj.cohen_radius(p2, s1))
    assert _le(sj.cohen_radius(p1, s1), sj.cohen_radius(p1, s2))


@SET
@given(p1=probs, p2=probs, f1=fracs, f2=fracs, sigma=sigmas, scale=st.floats(0.1, 10.0))
def test_sos_monotone_and_scaling(p1, p2, f1, f2, sigma, scale):
    p1, p2 = sorted((p1, p2))
    f1, f2 = sorted((f1, f2))
    g = f1 * _gmax(p2, sigma)
    # increasing in p at fixed gradient bound
    assert _le(sj.sos_radius(p1, g, sigma), sj.sos_radius(p2, g, sigma))
    # decreasing in the gradient bound
    g1, g2 = f1 * _gmax(p1, sigma), f2 * _gmax(p1, sigma)
    assert _le(sj.sos_radius(p1, g2, sigma), sj.sos_radius(p1, g1, sigma))
    # proportional to sigma at fixed sigma * gradient
    r = float(sj.sos_radius(p1, g1, sigma))
    r_scaled = float(sj.sos_radius(p1, g1 / scale, sigma * scale))
    assert math.isclose(r_scaled, scale * r, rel_tol=1e-10, abs_tol=1e-300)


@SET
@given(p=probs, f=st.floats(0.0, 2.0), sigma=sigmas)
def test_sos_at_least_cohen(p, f, sigma):
    g = f * _gmax(p, sigma)
    sos = float(sj.sos_radius(p, g, sigma))
    cohen = float(sj.cohen_radius(p, sigma))
    assert sos >= cohen
    if f >= 1.0:  # gradient at (or above) its maximum: exactly Cohen
        assert math.isclose(sos, cohen, rel_tol=1e-12, abs_tol=1e-300)


@SET
@given(cs1=fracs, cs2=fracs, u1=fracs, u2=fracs, sigma=sigmas)
def test_dipole_monotone_and_vs_cohen(cs1, cs2, u1, u2, sigma):
    cs1, cs2 = sorted((cs1, cs2))
    cs2 = min(cs2, 1.0 - 1e-9)
    cs1 = min(cs1, cs2)
    u1, u2 = sorted((u1, u2))
    # feasible region: P[only + side] = P[only - side] <= (1 - cs) / 2 (as are valid lower bounds of them)
    cn = u1 * (1 - cs2) / 2
    cn2 = u2 * (1 - cs2) / 2
    # increasing in cs (cn fixed, still cs + cn <= 1) and in cn
    assert _le(sj.dipole_radius(cs1, cn, sigma), sj.dipole_radius(cs2, cn, sigma))
    assert _le(sj.dipole_radius(cs2, cn, sigma), sj.dipole_radius(cs2, cn2, sigma))
    # never below Cohen for the total mass; equal to Cohen when cs = 0
    assert float(sj.dipole_radius(cs2, cn, sigma)) >= float(sj.cohen_radius(min(cs2 + cn, 1.0), sigma)) * (1 - 1e-12)
    assert math.isclose(float(sj.dipole_radius(0.0, cn2, sigma)), float(sj.cohen_radius(cn2, sigma)),
                        rel_tol=1e-12, abs_tol=1e-300)


@SET
@given(p=st.floats(0.0, 0.5), f=fracs, sigma=sigmas, cs=fracs)
def test_radius_zero_at_or_below_half(p, f, sigma, cs):
    assert float(sj.cohen_radius(p, sigma)) == 0.0
    assert float(sj.sos_radius(p, f * 10.0, sigma)) == 0.0
    cs = cs * p
    assert float(sj.dipole_radius(cs, p - cs, sigma)) == 0.0
    assert float(sj.l1_radius(p, 0.0, f, sigma=sigma)) == 0.0
    assert float(sj.linf_radius(p, 0.0, f, dim=8, sigma=sigma)) == 0.0


# ----------------------------------------------------------------------------- first order

probs_t3 = st.floats(0.55, 0.999, allow_nan=False)


@SET_T3
@given(p1=probs_t3, p2=probs_t3, fl1=fracs, fl2=fracs, fa1=fracs, fa2=fracs, sigma=st.floats(0.1, 2.0))
def test_l1_radius_monotone(p1, p2, fl1, fl2, fa1, fa2, sigma):
    p1, p2 = sorted((p1, p2))
    fl1, fl2 = sorted((fl1, fl2))
    fa1, fa2 = sorted((fa1, fa2))
    gm = _gmax(p2, sigma) * (1 - 1e-9)  # feasible for both p1 and p2 (M decreases in p above 1/2)
    l1, l2 = fl1 * gm, fl2 * gm
    a1, a2 = fa1 * gm, fa2 * gm
    rel = 1e-9
    assert _le(sj.l1_radius(p1, l1, a1, sigma=sigma), sj.l1_radius(p2, l1, a1, sigma=sigma), rel)  # up in p
    # up in ||grad||_2 lower, down in ||grad||_inf upper
    assert _le(sj.l1_radius(p1, l1, a1, sigma=sigma), sj.l1_radius(p1, l2, a1, sigma=sigma), rel)
    assert _le(sj.l1_radius(p1, l1, a2, sigma=sigma), sj.l1_radius(p1, l1, a1, sigma=sigma), rel)


@SET_T3
@given(p=probs_t3, fu=fracs, fa=fracs, fl=fracs, sigma=st.floats(0.1, 2.0))
def test_l1_radius_at_least_l2_implied(p, fu, fa, fl, sigma):
    gm = _gmax(p, sigma)
    U = fu * gm * 1.2  # the l2 upper bound (may exceed the maximum; sos clips it)
    a = fa * min(U, gm)  # 0 <= a <= U
    l = fl * gm * (1 - 1e-9)
    l1 = float(sj.l1_radius(p, l, a, sigma=sigma))
    r2 = float(sj.sos_radius(p, U, sigma))
    assert l1 >= r2 * (1 - 1e-9), (l1, r2)


@SET_T3
@given(p=probs_t3, fu=fracs, fb=fracs, fl=fracs, d=st.integers(1, 64), sigma=st.floats(0.1, 2.0))
def test_linf_radius_at_least_l2_implied(p, fu, fb, fl, d, sigma):
    gm = _gmax(p, sigma)
    U = fu * gm
    l = fl * U  # l <= ||grad||_2 <= U
    b = l + fb * (math.sqrt(d) * U - l)  # l <= b <= sqrt(d) U
    linf = float(sj.linf_radius(p, l, b, dim=d, sigma=sigma))
    r2 = float(sj.sos_radius(p, U, sigma))
    assert linf >= r2 / math.sqrt(d) * (1 - 1e-9), (linf, r2 / math.sqrt(d))


def test_dipole_edge_cs_plus_cn_equal_one():
    """cs + cn = 1 exactly (cn = 1 - cs, outside the feasible region): never NaN, never a negative radius."""
    for cs in (0.0, 0.3, 0.6):
        r = float(sj.dipole_radius(cs, 1.0 - cs, 0.5))
        assert not math.isnan(r) and r >= 0.0


def test_l1_equals_sos_when_all_gradient_along_the_vertex():
    """l = a = U (all of the gradient on one coordinate, m2 = 0): Corollary 3.2 reduces to 3.1."""
    for p in (0.6, 0.8, 0.95, 0.999):
        for frac in (0.0, 0.3, 0.9):
            U = frac * _gmax(p, 0.5)
            l1 = float(sj.l1_radius(p, U, U, sigma=0.5))
            sos = float(sj.sos_radius(p, U, 0.5))
            assert math.isclose(l1, sos, rel_tol=1e-7), (p, frac, l1, sos)


def test_properties_hold_on_a_vectorised_grid():
    """The same properties on a dense NumPy grid (one vectorised call each), for broad coverage."""
    p = np.linspace(0.5005, 0.9999, 60)[:, None]
    f = np.linspace(0.0, 1.0, 25)[None, :]
    sigma = 0.5
    g = f * _gmax(p, sigma)
    sos = np.asarray(sj.sos_radius(p, g, sigma))
    cohen = np.asarray(sj.cohen_radius(p, sigma))
    assert np.all(sos >= cohen * (1 - 1e-12))  # equal (to rounding) where the gradient is at its maximum
    assert np.all(np.diff(sos, axis=1) <= 1e-12 * (1 + sos[:, 1:]))  # down in the gradient bound
    g_fixed = 0.3 * _gmax(0.9999, sigma)
    sos_p = np.asarray(sj.sos_radius(p[:, 0], g_fixed, sigma))
    assert np.all(np.diff(sos_p) >= -1e-12 * (1 + sos_p[1:]))  # up in p
