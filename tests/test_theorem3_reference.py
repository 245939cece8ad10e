"""Tests of the independent Theorem 3 reference itself (tests/theorem3_reference.py).

The reference is what smoothjax.theorem3 is checked against, so it is checked here against things
that do not share its code path: closed forms (Cohen, the band / SoS of Corollary 3.1 solved as the
paper's own 3x3 system (6)-(7b)), mpmath quadrature of the paper's equations (4), (5a), (5b) with
the paper's coefficients (c0, c1, c2), strong and weak duality, and the envelope theorem.
"""

from __future__ import annotations

import math
import pathlib
import sys

import mpmath
import numpy as np
import pytest
from scipy import optimize, stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import theorem3_reference as ref  # noqa: E402

# (r, q, m1 as a fraction of the admissible |m1|, m2 as a fraction of M)
GRID = [
    (0.5, 0.8, -0.5, 0.3),
    (0.5, 0.8, 0.5, 0.3),
    (1e-3, 0.7, -0.3, 0.5),
    (2.0, 0.95, 0.0, 0.6),
    (1.0, 0.99999, -0.9, 0.2),
    (0.3, 0.6, 0.9, 1e-8),
    (1.5, 0.9, -0.99, 0.9),
    (0.8, 0.8, -1.0, 0.4),  # lower arc: fallback
    (0.8, 0.8, -2.0, 0.4),  # far below: fallback
]


def point(r, q, m1f, m2f):
    big_m = ref.max_grad(q)
    m2 = m2f * big_m
    room = math.sqrt(big_m**2 - m2**2)
    return r, q, m1f * room, m2


def ids(grid):
    return [f"r={g[0]}-q={g[1]}-m1f={g[2]}-m2f={g[3]}" for g in grid]


@pytest.mark.parametrize("args", GRID, ids=ids(GRID))
def test_constraints_hold(args):
    r, q, m1, m2 = point(*args)
    sol = ref.reference_coefficients(r, q, m1, m2)
    assert sol.branch in ("three", "fallback")
    assert sol.residual <= 1e-12
    assert 0.0 <= sol.p_lower <= 1.0
    assert all(l >= 0 for l in sol.lam), sol.lam
    if sol.branch == "three":
        assert sol.c1 >= 0 or r < 0.01
    if args[2] <= -1.0:
        assert sol.branch == "fallback"


@pytest.mark.parametrize("args", [
    (0.5, 0.8, -0.5, 0.3),
    pytest.param((1.2, 0.9, 0.3, 0.5), marks=pytest.mark.slow),
    pytest.param((0.7, 0.8, -1.0, 0.4), marks=pytest.mark.slow),
], ids=["three", "three-large-r", "fallback"])
def test_paper_equations_with_mpmath(args):
    """Equations (4), (5a), (5b) and p_lower = int phi(x - r) Phi(c(x)) dx, by mpmath with (c0, c1, c2)."""
    r, q, m1, m2 = point(*args)
    sol = ref.reference_coefficients(r, q, m1, m2)
    mpmath.mp.dps = 20
    c0, c1, c2 = (mpmath.mpf(v) for v in (sol.c0, sol.c1, sol.c2))
    rr = mpmath.mpf(r)

    def c(x):
        return c0 + c1 * x + c2 * mpmath.exp(rr * x)

    def phi(x):
        return mpmath.npdf(x)

    # split where Phi(c(x)) changes: around the maximiser of c and its zeros
    grid = [mpmath.mpf(x) for x in np.linspace(-10, 10 + r, 41)]
    eq4 = mpmath.quad(lambda x: phi(x) * mpmath.ncdf(c(x)), grid)
    eq5a = mpmath.quad(lambda x: phi(x) * phi(c(x)), grid)
    eq5b = mpmath.quad(lambda x: x * phi(x) * mpmath.ncdf(c(x)), grid)
    p = mpmath.quad(lambda x: phi(x - rr) * mpmath.ncdf(c(x)), grid)
    assert abs(float(eq4) - q) < 1e-10
    assert abs(float(eq5a) - m2) < 1e-10
    if sol.branch == "three":
        assert abs(float(eq5b) - m1) < 1e-10
    else:
        assert float(eq5b) >= m1 - 1e-12  # slack constraint
        assert sol.c1 == 0.0
    assert abs(float(p) - sol.p_lower) < 1e-10


DUAL_GRID = [g for g in GRID if g[0] >= 0.05]  # the dual's a(x) = lam0 + lam1 x - e^{rx - r^2/2} cancels at tiny r


@pytest.mark.parametrize("args", DUAL_GRID, ids=ids(DUAL_GRID))
def test_strong_and_weak_duality(args):
    """Equal at the optimum (checked where |lam| is moderate: the dual's own round-off is ~|lam| eps)."""
    r, q, m1, m2 = point(*args)
    sol = ref.reference_coefficients(r, q, m1, m2)
    lam = np.array(sol.lam)
    assert abs(ref.reference_dual_value(r, q, m1, m2, lam) - sol.p_lower) < 1e-10
    rng = np.random.default_rng(0)
    for _ in range(3):
        other = np.maximum(lam * (1 + 0.2 * rng.standard_normal(3)), 0.0)
        assert ref.reference_dual_value(r, q, m1, m2, other) <= sol.p_lower + 1e-12


def test_envelope_theorem():
    """dp/d(q, m1, m2) = (lam0, lam1, lam2): the solution is the optimum, not just a root."""
    r, q, m1, m2 = point(0.7, 0.8, -0.4, 0.4)
    sol = ref.reference_coefficients(r, q, m1, m2)
    h = 1e-5
    fd = [
        (ref.reference_p_lower(r, q + h, m1, m2) - ref.reference_p_lower(r, q - h, m1, m2)) / (2 * h),
        (ref.reference_p_lower(r, q, m1 + h, m2) - ref.reference_p_lower(r, q, m1 - h, m2)) / (2 * h),
        (ref.reference_p_lower(r, q, m1, m2 + h) - ref.reference_p_lower(r, q, m1, m2 - h)) / (2 * h),
    ]
    np.testing.assert_allclose(fd, sol.lam, rtol=1e-6)


def corollary31_radius(q, m1):
    """Corollary 3.1: (r, w1, w2) solving (6), (7a), (7b) with fsolve, (7b) read as
    phi(w2) - phi(w1) = m1 (the band w2 < Z1 < w1 has E[Z1; band] = phi(w2) - phi(w1))."""

    def eqs(z):
        r, w1, w2 = z
        return [
            stats.norm.cdf(w1 - r) - stats.norm.cdf(w2 - r) - 0.5,
            stats.norm.cdf(w1) - stats.norm.cdf(w2) - q,
            stats.norm.pdf(w2) - stats.norm.pdf(w1) - m1,
        ]

    zq = stats.norm.ppf(q)
    for w2 in (-1.0, -2.0, -3.0, -4.0, -5.0, -6.0):
        z = optimize.fsolve(eqs, [zq, zq + 0.5, w2], xtol=1e-14)
        if np.max(np.abs(eqs(z))) < 1e-13:
            return z[0]
    raise AssertionError("fsolve found no solution of (6)-(7b)")


@pytest.mark.parametrize("q,frac", [(0.6, 0.5), (0.8, 0.1), (0.9, 0.9), (0.99, 0.5)])
def test_band_matches_corollary_3_1_and_small_m2(q, frac):
    big_m = ref.max_grad(q)
    m1 = -frac * big_m
    radius = ref.reference_directional_radius(q, m1, 0.0)
    assert abs(radius - corollary31_radius(q, m1)) < 1e-9
    # the quadrature path at m2 = 1e-9 M (three-equation branch) tends to the closed-form band
    r = radius
    sol = ref.reference_coefficients(r, q, m1, 1e-9 * big_m)
    assert sol.branch == "three"
    assert abs(sol.p_lower - 0.5) < 1e-8
    assert sol.p_lower >= ref.sos_p_lower(r, q, m1) - 1e-12  # more information, larger bound


@pytest.mark.parametrize("q", [0.55, 0.8, 0.99, 0.99999])
def test_gradient_at_maximum_is_cohen(q):
    big_m = ref.max_grad(q)
    zq = stats.norm.ppf(q)
    assert ref.reference_directional_radius(q, -big_m, 0.0) == pytest.approx(zq, abs=1e-12)
    assert ref.reference_directional_radius(q, -2 * big_m, 0.0) == pytest.approx(zq, abs=1e-12)
    # small m2 on the lower arc: fallback, close to Cohen from above
    m2 = 1e-6 * big_m
    r = ref.reference_directional_radius(q, -big_m, m2)
    assert zq - 1e-12 <= r <= zq + 1e-4


def test_boundary_and_arc():
    q = 0.8
    big_m = ref.max_grad(q)
    assert ref.reference_p_lower(1.0, q, 0.0, big_m) == q
    assert ref.reference_directional_radius(q, -0.1, big_m) == math.inf
    m2 = 0.6 * big_m
    m1 = math.sqrt(big_m**2 - m2**2)
    assert ref.reference_p_lower(1.0, q, m1, m2) == pytest.approx(stats.norm.cdf(stats.norm.ppf(q) + m1 / big_m))
    assert ref.reference_directional_radius(q, m1, m2) == math.inf


def test_fallback_is_flat_in_m1():
    r, q, m2 = 0.8, 0.8, 0.3 * ref.max_grad(0.8)
    big_m = ref.max_grad(q)
    a = ref.reference_coefficients(r, q, -1.0 * big_m, m2)
    b = ref.reference_coefficients(r, q, -5.0 * big_m, m2)
    assert a.branch == b.branch == "fallback"
    assert a.p_lower == b.p_lower
    # just above the threshold the three-equation value joins continuously
    threshold = a.lam  # noqa: F841  (documented in the solution; the threshold itself is E[Z1 Phi(c)])
    sols = [ref.reference_coefficients(r, q, f * big_m, m2) for f in (-0.9, -0.85)]
    assert all(s.p_lower >= a.p_lower - 1e-12 for s in sols)


def test_monotone_in_q_m1_m2():
    r = 0.9
    base = dict(q=0.8, m1=-0.1, m2=0.1)
    p0 = ref.reference_p_lower(r, **base)
    assert ref.reference_p_lower(r, 0.81, -0.1, 0.1) > p0
    assert ref.reference_p_lower(r, 0.8, -0.05, 0.1) > p0
    assert ref.reference_p_lower(r, 0.8, -0.1, 0.15) > p0
    ps = [ref.reference_p_lower(rr, **base) for rr in (0.2, 0.5, 0.9, 1.5)]
    assert all(a > b for a, b in zip(ps, ps[1:]))


def test_radius_solves_half_and_proposition_2():
    q = 0.8
    big_m = ref.max_grad(q)
    g = 0.7 * big_m  # sigma ||grad g||
    radii = []
    for angle in np.linspace(0, np.pi, 5):  # v at angle from -grad: m1 = -g cos, m2 = g sin
        m1, m2 = -g * math.cos(angle), g * math.sin(angle)
        radius = ref.reference_directional_radius(q, m1, abs(m2) if abs(m2) > 1e-15 else 0.0)
        radii.append(radius)
        if 0 < angle < np.pi:
            assert abs(ref.reference_p_lower(radius, q, m1, m2) - 0.5) < 1e-11
    # Proposition 2: non-increasing in the angle between v and grad g (increasing from -grad)
    assert all(a <= b + 1e-12 for a, b in zip(radii, radii[1:]))
    assert ref.reference_directional_radius(0.5, 0.0, 0.1) == 0.0


@pytest.mark.parametrize("args",
                         [(0.8, 0.0, -0.1), (0.8, 0.3, 0.0), (0.8, 0.25, 0.2), (1.0, 0.0, 0.1), (0.8, 0.0, 0.3)])
def test_infeasible_raises(args):
    with pytest.raises(ValueError):
        ref.reference_directional_radius(*args)


def test_vectorised_helpers():
    pts = [(0.8, -0.1, 0.1), (0.9, -0.05, 0.0)]
    radii = ref.reference_directional_radii(pts)
    assert radii.shape == (2,)
    assert radii[0] == ref.reference_directional_radius(*pts[0])
    assert ref.reference_p_lowers([(0.5,) + pts[0]]).shape == (1,)
