"""Tightness: on the worst-case classifiers of the proofs, with EXACT p and gradient, the
certificate equals the true flip distance.

* SoS (second paper, Appendix A.2 / first paper Corollary 3.1): the band classifier, 1 on
  ``l <= z <= u`` along the gradient direction (z = x . v / sigma). Exact p = Phi(u) - Phi(l),
  ``||grad g|| = |phi(l) - phi(u)| / sigma``; the true flip distance is the smallest shift of the
  band (either way) at which Phi(u - d) - Phi(l - d) = 1/2. The half-space (l = -inf) is Cohen's case.
* Dipole (second paper, Theorem 3 / Appendix A.4): 1 on ``{z <= c} U [w, -w]`` with c < w < 0;
  both sides of an antithetic pair agree on the band (cs = Phi(-w) - Phi(w)) and only the + side on
  the half-line (cn = Phi(c)); shifted by d: Phi(c - d) + Phi(-w - d) - Phi(w - d).
* Theorem 3 (first paper): F(x, y) = 1[y >= -c(x)], c(x) = c0 + c1 x + c2 e^{r x} with
  c0, c1 >= 0 > c2 (nonnegative multipliers, so F is the minimiser of its own linear program),
  c0 chosen so that the true smoothed probability at x + sigma r v equals 1/2. Then q, m1, m2 are
  the exact E[F], E[X F], E[Y F] (adaptive quadrature), ``theorem3_p_lower(r, ...) = 1/2`` and
  ``directional_radius(q, m1, m2) = r``; in 2-D with |m1| >= m2 the l1 radius is sigma r too.

Flip distances are computed with SciPy (brentq to ~1e-15, independent of smoothjax). Tolerance: the
certificate equals the truth within 1e-6 and never exceeds it by more than 1e-10.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy import integrate, optimize, stats

import smoothjax as sj

TOL = 1e-6
SOUND = 1e-10


_Phi = stats.norm.cdf
_phi = stats.norm.pdf


def _first_root(fn, hi=15.0):
    """Smallest d > 0 with fn(d) = 0 (fn > 0 at 0): scan (step 0.01), then brentq to ~1e-15."""
    grid = np.linspace(0.0, hi, 1501)
    vals = fn(grid)
    below = np.nonzero(vals <= 0)[0]
    if below.size == 0:
        return math.inf
    j = below[0]
    return optimize.brentq(fn, grid[j - 1], grid[j], xtol=1e-15, rtol=1e-15, maxiter=500)


# ----------------------------------------------------------------------------- SoS: band classifier

BANDS = [(-0.8, 1.5), (-1.0, 1.0), (-2.0, 0.7), (-3.5, 3.0), (-0.3, 4.0), (-1.7, 1.2), (-0.05, 6.0),
         (-5.0, 0.2), (-math.inf, 1.3), (-math.inf, 0.4)]


def _band_truth(l, u):
    p = stats.norm.sf(l) - stats.norm.sf(u)
    grad = abs(_phi(l) - _phi(u))
    down = _first_root(lambda d: _Phi(u - d) - _Phi(l - d) - 0.5)
    up = _first_root(lambda d: _Phi(u + d) - _Phi(l + d) - 0.5)
    return p, grad, min(down, up)


@pytest.mark.parametrize("sigma", [0.25])
@pytest.mark.parametrize("l,u", BANDS, ids=[f"band[{l},{u}]" for l, u in BANDS])
def test_sos_radius_tight_on_band(l, u, sigma):
    p, grad, flip = _band_truth(l, u)
    cert = float(sj.sos_radius(float(p), float(grad) / sigma, sigma))
    truth = float(flip) * sigma
    assert cert <= truth + SOUND, (cert, truth)
    assert abs(cert - truth) <= TOL, (cert, truth)
    cert_jit = float(jax.jit(sj.sos_radius)(float(p), float(grad) / sigma, sigma))
    assert cert_jit == pytest.approx(cert, abs=1e-14)
    if l == -math.inf:  # half-space: Cohen is tight too
        assert abs(float(sj.cohen_radius(float(p), sigma)) - truth) <= TOL


# ----------------------------------------------------------------------------- dipole worst case

DIPOLES = [(-0.9, -1.5), (-0.8, -0.85), (-1.2, -1.3), (-0.6, -0.7), (-2.0, -2.5), (-0.7, -4.0)]


def _dipole_truth(w, c):
    cs = _Phi(-w) - _Phi(w)
    cn = _Phi(c)
    plus = _first_root(lambda d: _Phi(c - d) + _Phi(-w - d) - _Phi(w - d) - 0.5)
    minus = _first_root(lambda d: _Phi(c + d) + _Phi(-w + d) - _Phi(w + d) - 0.5)
    return cs, cn, min(plus, minus)


@pytest.mark.parametrize("sigma", [0.5])
@pytest.mark.parametrize("w,c", DIPOLES, ids=[f"w{w}_c{c}" for w, c in DIPOLES])
def test_dipole_radius_tight_on_worst_case(w, c, sigma):
    cs, cn, flip = _dipole_truth(w, c)
    assert cs + cn > 0.5
    # the construction has exactly these antithetic-pair probabilities (independent check with
    # the interval-union closed forms of coverage_helpers)
    from coverage_helpers import IntervalUnion

    clf = IntervalUnion(np.array([1.0]), [(-math.inf, c), (w, -w)])
    assert clf.dipole_both(np.zeros(1), 1.0, 1) == pytest.approx(float(cs), abs=1e-14)
    assert clf.dipole_plus_only(np.zeros(1), 1.0, 1) == pytest.approx(float(cn), abs=1e-14)
    cert = float(sj.dipole_radius(float(cs), float(cn), sigma))
    truth = float(flip) * sigma
    assert cert <= truth + SOUND, (cert, truth)
    assert abs(cert - truth) <= TOL, (cert, truth)


# ----------------------------------------------------------------------------- Theorem 3 construction

T3_CASES = [(0.5, 0.2, -1.0), (2.0, 0.1, -0.05), (1.5, 1.0, -0.5), (1.0, 0.5, -0.3), (0.8, 0.3, -0.6)]


def _quad(fn):
    val, _ = integrate.quad(fn, -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13, limit=400)
    return val


def _theorem3_case(r, c1, c2):
    def c_of(c0):
        return lambda x: c0 + c1 * x + c2 * np.exp(min(r * x, 700.0))

    def p_at(c0, shift):
        c = c_of(c0)
        return _quad(lambda x: stats.norm.pdf(x - shift) * stats.norm.cdf(c(x)))

    c0 = optimize.brentq(lambda c0: p_at(c0, r) - 0.5, -20, 20, xtol=1e-15, rtol=1e-15)
    c = c_of(c0)
    q = p_at(c0, 0.0)
    m1 = _quad(lambda x: x * stats.norm.pdf(x) * stats.norm.cdf(c(x)))
    m2 = _quad(lambda x: stats.norm.pdf(x) * stats.norm.pdf(c(x)))
    return c0, q, m1, m2


@pytest.mark.parametrize("r,c1,c2", T3_CASES, ids=[f"r{r}_c1{c1}_c2{c2}" for r, c1, c2 in T3_CASES])
def test_theorem3_tight_on_its_construction(r, c1, c2):
    from smoothjax.theorem3 import directional_radius, theorem3_p_lower

    c0, q, m1, m2 = _theorem3_case(r, c1, c2)
    assert c0 >= 0 and q > 0.5  # nonnegative multipliers: F is the minimiser of its own program
    p_lo = float(theorem3_p_lower(r, q, m1, m2))
    assert p_lo <= 0.5 + 1e-10, p_lo
    assert abs(p_lo - 0.5) <= 1e-8, p_lo
    rad = float(directional_radius(q, m1, m2))
    assert rad <= r + SOUND, (rad, r)
    assert abs(rad - r) <= TOL, (rad, r)
    if m1 < 0 and -m1 >= m2:
        # 2-D input (v = e1, orthogonal part along e2): the worst l1 vertex is -e1, so the
        # Corollary 3.2 l1 radius from the exact norms equals sigma r.
        for sigma in (0.5,):
            g_l2 = math.hypot(m1, m2) / sigma
            g_linf = -m1 / sigma
            l1 = float(sj.l1_radius(q, g_l2, g_linf, sigma=sigma))
            assert l1 <= sigma * r + SOUND
            assert abs(l1 - sigma * r) <= TOL * sigma, (l1, sigma * r)
