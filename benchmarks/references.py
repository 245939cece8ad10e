"""High-precision references the benchmark errors are measured against (small subsets only).

* Cohen: the one-sided Clopper-Pearson bound is the alpha quantile of Beta(k, n - k + 1)
  (``scipy.special.betaincinv``, double precision), then sigma * Phi^-1 with mpmath at 30 digits.
* SoS and dipole: the same equations as the baselines, solved with mpmath at 30 significant digits
  by 110-step bisection (bracket width 2^-110 of its start), independent of both implementations.
  The dipole reference is the larger of Theorem 3's radius and Cohen's radius at cs + cn (both
  valid certificates; smoothjax returns the larger).
* Theorem 3 (directional, l1, linf): ``tests/theorem3_reference.py`` (owner B2; scipy adaptive
  quadrature, ~1e-12 on p_lower), imported by path; None when that file is absent.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import mpmath as mp
from scipy import special

mp.mp.dps = 30
_BISECT_STEPS = 110
ROOT = pathlib.Path(__file__).resolve().parents[1]
THEOREM3_REFERENCE = ROOT / "tests" / "theorem3_reference.py"


def _ppf(y):
    y = mp.mpf(y)
    if y <= 0:
        return -mp.inf
    if y >= 1:
        return mp.inf
    return mp.sqrt(2) * mp.erfinv(2 * y - 1)


def _bisect(fn, lo, hi):
    """Root of an increasing fn on [lo, hi] (fn(lo) <= 0 <= fn(hi))."""
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if fn(mid) <= 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _radius_of(bound):
    """Smallest R >= 0 where the decreasing bound(R) reaches 1/2."""

    def excess(r):
        return mp.mpf("0.5") - bound(r)

    hi = mp.mpf(1)
    while excess(hi) < 0:
        hi *= 2
    return _bisect(excess, 0, hi)


def cohen_radius(count, n, alpha, sigma) -> float:
    p = float(special.betaincinv(count, n - count + 1, alpha)) if count > 0 else 0.0
    if p <= 0.5:
        return 0.0
    return float(sigma * _ppf(p))


def sos_radius(p_lower, grad_norm_upper, sigma) -> float:
    p = mp.mpf(float(p_lower))
    if p <= 0.5:
        return 0.0
    g = mp.mpf(float(sigma)) * mp.mpf(float(grad_norm_upper))
    if g >= mp.npdf(_ppf(p)):
        return float(sigma * _ppf(p))
    a0 = _bisect(lambda a: mp.npdf(_ppf(a)) - mp.npdf(_ppf(a + p)) + g, 0, 1 - p)
    w_hi, w_lo = _ppf(a0 + p), _ppf(a0)
    return float(sigma * _radius_of(lambda r: mp.ncdf(w_hi - r) - mp.ncdf(w_lo - r)))


def dipole_radius(cs_lower, cn_lower, sigma) -> float:
    """max(second paper's Theorem 3 radius, Cohen's radius at cs + cn), both in mpmath.

    g(x) = cs + cn >= cs_lower + cn_lower, so Cohen's radius sigma Phi^-1(cs + cn) is also a valid
    certificate, and Theorem 3 alone can fall below it (e.g. cs = 0.5, cn = 0.3); the certified
    dipole radius is the larger of the two (what ``smoothjax.dipole_radius`` documents).
    """
    cs, cn = mp.mpf(float(cs_lower)), mp.mpf(float(cn_lower))
    total = cs + cn  # exact: 30 digits hold the sum of two doubles
    if total <= 0.5:
        return 0.0
    w_n = _ppf(cn)
    w_hi, w_lo = _ppf((1 + cs) / 2), _ppf((1 - cs) / 2)
    bound = lambda r: mp.ncdf(w_n - r) + mp.ncdf(w_hi - r) - mp.ncdf(w_lo - r)  # noqa: E731
    theorem3 = _radius_of(bound)
    cohen = _ppf(total)
    return float(sigma * max(theorem3, cohen))


_THEOREM3 = None


def theorem3_module():
    """``tests/theorem3_reference.py`` loaded by path, or None when it does not exist."""
    global _THEOREM3
    if _THEOREM3 is None and THEOREM3_REFERENCE.is_file():
        spec = importlib.util.spec_from_file_location("_bench_theorem3_reference", THEOREM3_REFERENCE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses in the module look themselves up here
        spec.loader.exec_module(module)
        _THEOREM3 = module
    return _THEOREM3


def directional_radius(q, m1, m2) -> float:
    return float(theorem3_module().reference_directional_radius(float(q), float(m1), float(m2)))


def l1_radius(p_lower, grad_l2_lower, grad_linf_upper, sigma) -> float:
    m1 = -sigma * grad_linf_upper
    m2 = sigma * math.sqrt(max(grad_l2_lower**2 - grad_linf_upper**2, 0.0))
    return sigma * directional_radius(p_lower, m1, m2)


def linf_radius(p_lower, grad_l2_lower, grad_l1_upper, dim, sigma) -> float:
    root_d = math.sqrt(dim)
    dual = grad_l1_upper / root_d
    m1 = -sigma * dual
    m2 = sigma * math.sqrt(max(grad_l2_lower**2 - dual**2, 0.0))
    return sigma * directional_radius(p_lower, m1, m2) / root_d
