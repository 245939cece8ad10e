"""Gradients through every radius, checked against finite differences of INDEPENDENT references.

For each certificate radius of smoothjax (Cohen, SoS, dipole, Theorem 3 directional radius,
first-order l1 / linf) we compare ``jax.jit(jax.vmap(jax.grad(radius, argnums=...)))`` with central
finite differences of a reference written here from the papers' formulas with scipy (or, for the
Theorem 3 radii, of ``tests/theorem3_reference.py``), to 1e-5 relative at >= 200 points across the
domain (the quick default run uses a subset; the full sets are ``@pytest.mark.slow``), and check that
the gradients stay finite at the edges (p at 1/2 and near 1, gradient norm at 0 and at its maximum).

References (dimensionless r = radius / sigma; Phi, phi the standard normal cdf / pdf):

* Cohen et al. 2019: ``R = sigma Phi^-1(p)``.
* SoS, second paper Theorem 1: ``a0`` solves ``phi(Phi^-1(a0)) - phi(Phi^-1(a0 + p)) = -sigma ||grad||``,
  then ``Phi(Phi^-1(a0 + p) - r) - Phi(Phi^-1(a0) - r) = 1/2``.
* Dipole, second paper Theorem 3: ``Phi(Phi^-1(cn) - r) + Phi(Phi^-1((1 + cs)/2) - r)
  - Phi(Phi^-1((1 - cs)/2) - r) = 1/2``.
* Theorem 3 (first paper): ``p_lower(R; q, m1, m2) = 1/2``; the reference gradient is the implicit
  function theorem ``dR/dtheta = -(dp/dtheta) / (dp/dr)`` at the reference root, each partial by a
  central finite difference of the reference ``p_lower`` (about 1e-12 accurate). l1 (Corollary 3.2):
  ``q = p, m1 = -sigma linf, m2 = sigma sqrt(l2^2 - linf^2)``; linf (Corollary 3.3):
  ``m1 = -sigma l1 / sqrt(d), m2 = sigma sqrt(d l2^2 - l1^2) / sqrt(d)``; radius = sigma R (l1) and
  sigma R / sqrt(d) (linf: the linf norm of the worst vertex direction (+-1, ..., +-1) / sqrt(d) times R).
"""

from __future__ import annotations

import importlib
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

RTOL = 1e-5
ATOL = 1e-9
FD_NOISE = 1e-13  # relative rounding noise of a reference evaluation (brentq to ~1e-15 plus scipy's special functions)


def _need(module, name):
    return getattr(importlib.import_module(f"smoothjax.{module}"), name)


def _theorem3_reference():
    import theorem3_reference

    return theorem3_reference


def _jit_vmap_grad(fn, nargs, argnums, static=()):
    """jit(vmap(grad)) over the first ``nargs`` arrays; ``static`` values are closed over."""

    def scalar(*args):
        return fn(*args[:nargs], *static) if static else fn(*args)

    return jax.jit(jax.vmap(jax.grad(scalar, argnums=argnums)))


def _fd(f, x, h):
    """Fourth-order central difference (f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / (12 h)."""
    return (f(x - 2 * h) - 8 * f(x - h) + 8 * f(x + h) - f(x + 2 * h)) / (12 * h)


def _fd2(f, x, h):
    """Second-order central difference (f(x+h) - f(x-h)) / (2h)."""
    return (f(x + h) - f(x - h)) / (2 * h)


def _step(x, scale):
    """A step of about ``scale`` that is an exact multiple of the float spacing at x (so x +- k h is exact)."""
    ulp = np.spacing(abs(x)) if x != 0 else np.spacing(1.0)
    return max(round(scale / ulp), 1) * ulp


def _assert_grads(ours, ref, label, floor=0.0):
    """max |ours - ref| / max(|ref|, ATOL / RTOL, floor / RTOL) <= RTOL, where ``floor`` (per point) is
    the rounding-noise level of the finite difference, ~1e-13 |R| / h (it matters only where the
    derivative is tiny against the radius itself, e.g. dR/dcn when cn ~ 1e-3)."""
    ours = np.asarray(ours, float)
    ref = np.asarray(ref, float)
    err = np.abs(ours - ref) / np.maximum(np.maximum(np.abs(ref), ATOL / RTOL), np.asarray(floor) / RTOL)
    worst = int(np.argmax(err))
    assert np.all(np.isfinite(ours)), f"{label}: non-finite gradient at index {np.flatnonzero(~np.isfinite(ours))[:5]}"
    assert err.max() <= RTOL, (f"{label}: max relative error {err.max():.3g} at index {worst}: "
                               f"ours {ours[worst]!r}, reference {ref[worst]!r}")
    return err.max()


# ------------------------------------------------------------------------------------------
# References from the papers' formulas (scipy only)
# ------------------------------------------------------------------------------------------


def cohen_reference(p, sigma):
    return sigma * stats.norm.ppf(p) if p > 0.5 else 0.0


def sos_reference(p, grad_norm, sigma):
    """Second paper Theorem 1, in the variable t = Phi^-1(a0) (well conditioned as a0 -> 0)."""
    big_m = stats.norm.pdf(stats.norm.ppf(p))
    s = sigma * grad_norm
    if p <= 0.5:
        return 0.0
    if s >= big_m:
        return sigma * stats.norm.ppf(p)

    def upper(t):  # Phi^-1(Phi(t) + p) computed from the upper tail: 1 - (Phi(t) + p) = (1 - p) - Phi(t)
        return stats.norm.isf((1.0 - p) - stats.norm.cdf(t))

    t_sym = stats.norm.ppf((1.0 - p) / 2)
    h = lambda t: stats.norm.pdf(t) - stats.norm.pdf(upper(t)) + s
    if h(-38.0) >= 0:  # a0 below 1e-300: numerically the Cohen (half-space) case
        return sigma * stats.norm.ppf(p)
    t = t_sym if h(t_sym) <= 0 else optimize.brentq(h, -38.0, t_sym, xtol=1e-15, rtol=1e-15, maxiter=500)
    w1, w2 = upper(t), t
    band = lambda r: stats.norm.cdf(w1 - r) - stats.norm.cdf(w2 - r) - 0.5
    r = optimize.brentq(band, 0.0, w1 + 1.0, xtol=1e-15, rtol=1e-15, maxiter=500)
    return sigma * r


def dipole_reference(cs, cn, sigma):
    """Second paper Theorem 3: the r where the dipole lower bound crosses 1/2 (0 if cs + cn <= 1/2)."""
    if cs + cn <= 0.5:
        return 0.0
    zn = stats.norm.ppf(cn) if cn > 0 else -np.inf
    za, zb = stats.norm.isf((1 - cs) / 2), stats.norm.ppf((1 - cs) / 2)

    def f(r):
        return stats.norm.cdf(zn - r) + stats.norm.cdf(za - r) - stats.norm.cdf(zb - r) - 0.5

    theorem3 = sigma * optimize.brentq(f, 0.0, 40.0, xtol=1e-15, rtol=1e-15, maxiter=500)
    # dipole_radius also certifies with g(x) >= cs + cn (Cohen's radius at the total mass).
    return max(theorem3, sigma * stats.norm.ppf(cs + cn))


def _assert_value_sound_and_close(ours, ref, rtol_low=1e-6):
    """Radius values: never above the reference (beyond 1e-10 relative), and below it by at most
    rtol_low relative (the solvers keep a margin of a few ulps in the bound function, which costs
    up to ~1e-7 relative where the bound is flat at its root, p within 1e-7 of 1/2)."""
    ours = np.asarray(ours)
    assert np.all(ours <= ref * (1 + 1e-10)), np.max((ours - ref) / ref)
    assert np.all(ours >= ref * (1 - rtol_low)), np.min((ours - ref) / ref)


# ------------------------------------------------------------------------------------------
# Point sets (fixed seeds), >= 200 points each
# ------------------------------------------------------------------------------------------

SEED = 20260601  # every point set draws from its own generator, so sets do not depend on test order


def _p_grid(n):
    """p across (1/2, 1): near 1/2, the bulk, and deep in the upper tail."""
    k = n // 4
    return np.concatenate([
        0.5 + np.logspace(-7, -1.5, k),
        np.linspace(0.55, 0.99, n - 3 * k),
        1 - np.logspace(-2, -6, k),
        1 - np.logspace(-6, -10, k),
    ])


def cohen_points(n=200):
    rng = np.random.default_rng(SEED)
    p = _p_grid(n)
    return p, rng.uniform(0.1, 1.0, p.size)


def sos_points(n=200):
    rng = np.random.default_rng(SEED + 1)
    p = _p_grid(n)
    sigma = rng.uniform(0.1, 1.0, p.size)
    frac = rng.uniform(0.01, 0.99, p.size)  # grad_norm / its maximum phi(Phi^-1(p)) / sigma
    frac[::10] = 0.999
    frac[5::10] = 0.001
    return p, frac * stats.norm.pdf(stats.norm.ppf(p)) / sigma, sigma


def dipole_points(n=200):
    rng = np.random.default_rng(SEED + 2)
    total = 0.5 + np.concatenate([np.logspace(-6, -1, n // 4), rng.uniform(0.1, 0.499, n - n // 2),
                                  0.5 - np.logspace(-2, -8, n // 4)])
    share = rng.uniform(0.02, 0.98, total.size)  # fraction of cs + cn that is symmetric
    share[::8] = 0.999
    cs, cn = total * share, total * (1 - share)
    return cs, cn, rng.uniform(0.1, 1.0, total.size)


def theorem3_points(n=200):
    """(q, m1, m2) across the feasible disk (radius rho < M, angle theta in (0, pi)), interior."""
    rng = np.random.default_rng(SEED + 3)
    q = np.concatenate([0.5 + np.logspace(-3, -1, n // 4), rng.uniform(0.6, 0.99, n // 2),
                        1 - np.logspace(-2, -5, n - 3 * (n // 4))])
    big_m = stats.norm.pdf(stats.norm.ppf(q))
    rho = rng.uniform(0.05, 0.95, q.size) * big_m
    theta = rng.uniform(0.1, 0.9 * math.pi, q.size)
    return q, rho * np.cos(theta), rho * np.sin(theta)


# ------------------------------------------------------------------------------------------
# Cohen
# ------------------------------------------------------------------------------------------


def _check_cohen(n):
    cohen_radius = _need("certificates", "cohen_radius")
    p, sigma = cohen_points(n)
    ref_val = np.array([cohen_reference(a, s) for a, s in zip(p, sigma)])
    np.testing.assert_allclose(np.asarray(cohen_radius(p, sigma)), ref_val, rtol=1e-10)
    ref_dp = np.array([_fd(lambda t, s=s: cohen_reference(t, s), a, _step(a, 1e-3 * min(a - 0.5, 1 - a)))
                       for a, s in zip(p, sigma)])
    ref_ds = np.array([_fd(lambda t, a=a: cohen_reference(a, t), s, 1e-3 * s) for a, s in zip(p, sigma)])
    dp, ds = _jit_vmap_grad(cohen_radius, 2, (0, 1))(jnp.asarray(p), jnp.asarray(sigma))
    return (_assert_grads(dp, ref_dp, "d cohen_radius / d p_lower"),
            _assert_grads(ds, ref_ds, "d cohen_radius / d sigma"))


def test_cohen_radius_gradient_quick():
    _check_cohen(24)


@pytest.mark.slow
def test_cohen_radius_gradient_200_points():
    errs = _check_cohen(200)
    print(f"cohen_radius: 200 points, max rel err dp {errs[0]:.2e}, dsigma {errs[1]:.2e}")


# ------------------------------------------------------------------------------------------
# SoS
# ------------------------------------------------------------------------------------------


def _check_sos(n):
    sos_radius = _need("certificates", "sos_radius")
    p, g, sigma = sos_points(n)
    ref_val = np.array([sos_reference(*a) for a in zip(p, g, sigma)])
    _assert_value_sound_and_close(sos_radius(p, g, sigma), ref_val)
    h_p = np.array([_step(a, 1e-4 * min(a - 0.5, 1 - a)) for a in p])
    ref_dp = np.array([_fd(lambda t, b=b, s=s: sos_reference(t, b, s), a, h) for a, b, s, h in zip(p, g, sigma, h_p)])
    top = stats.norm.pdf(stats.norm.ppf(p)) / sigma
    h_g = 1e-4 * np.minimum(g, top - g)
    ref_dg = np.array([_fd(lambda t, a=a, s=s: sos_reference(a, t, s), b, h) for a, b, s, h in zip(p, g, sigma, h_g)])
    dp, dg = _jit_vmap_grad(sos_radius, 3, (0, 1))(jnp.asarray(p), jnp.asarray(g), jnp.asarray(sigma))
    return (_assert_grads(dp, ref_dp, "d sos_radius / d p_lower", FD_NOISE * ref_val / h_p),
            _assert_grads(dg, ref_dg, "d sos_radius / d grad_norm_upper", FD_NOISE * ref_val / h_g))


def test_sos_radius_gradient_quick():
    _check_sos(24)


@pytest.mark.slow
def test_sos_radius_gradient_200_points():
    errs = _check_sos(200)
    print(f"sos_radius: 200 points, max rel err dp {errs[0]:.2e}, dgrad {errs[1]:.2e}")


# ------------------------------------------------------------------------------------------
# Dipole
# ------------------------------------------------------------------------------------------


def _dipole_branches(cs, cn, sigma):
    """(Theorem 3 radius, Cohen radius at cs + cn): dipole_radius is their max."""
    cohen = sigma * stats.norm.ppf(cs + cn) if 0.5 < cs + cn < 1 else 0.0
    saved = dipole_reference(cs, cn, sigma)
    return (saved if saved > cohen else _dipole_theorem3(cs, cn, sigma)), cohen


def _dipole_theorem3(cs, cn, sigma):
    zn = stats.norm.ppf(cn) if cn > 0 else -np.inf
    za, zb = stats.norm.isf((1 - cs) / 2), stats.norm.ppf((1 - cs) / 2)

    def f(r):
        return stats.norm.cdf(zn - r) + stats.norm.cdf(za - r) - stats.norm.cdf(zb - r) - 0.5

    return sigma * optimize.brentq(f, 0.0, 40.0, xtol=1e-15, rtol=1e-15, maxiter=500)


def _check_dipole(n):
    dipole_radius = _need("certificates", "dipole_radius")
    cs, cn, sigma = dipole_points(n)
    ref_val = np.array([dipole_reference(*a) for a in zip(cs, cn, sigma)])
    _assert_value_sound_and_close(dipole_radius(cs, cn, sigma), ref_val)
    # steps small against the distance to where a term of the formula is singular (cs -> 1, cn -> 0 or 1)
    # and to the abstain boundary cs + cn = 1/2
    room = cs + cn - 0.5
    gap = 1 - cs - cn  # the Cohen branch Phi^-1(cs + cn) is singular at cs + cn = 1
    h_cs = 1e-4 * np.minimum.reduce([room, cs, 1 - cs, gap])
    h_cn = 1e-4 * np.minimum.reduce([room, cn, 1 - cn, gap])
    # dipole_radius = max(Theorem 3, Cohen(cs + cn)): differentiate the branch in force, and skip
    # the points where the max switches branch within the finite-difference step (a kink, where
    # no derivative exists); at least 80% of the points remain.
    branches = np.array([_dipole_branches(*a) for a in zip(cs, cn, sigma)])
    use_cohen = branches[:, 1] > branches[:, 0]
    same = np.ones(n, bool)
    for dcs_, dcn_ in ((h_cs, 0 * h_cn), (-h_cs, 0 * h_cn), (0 * h_cs, h_cn), (0 * h_cs, -h_cn)):
        moved = np.array([_dipole_branches(*a) for a in zip(cs + dcs_, cn + dcn_, sigma)])
        same &= (moved[:, 1] > moved[:, 0]) == use_cohen
    keep = same
    assert keep.sum() >= 0.8 * n, keep.sum()

    # Cohen branch: its derivative in closed form (sigma / phi(Phi^-1(cs + cn)), scipy), since a
    # finite difference cannot resolve it where 1 - cs - cn ~ 1e-8 (the step is then ~1e-12 and
    # the rounding of cs + h + cn alone is 1e-4 of it); Theorem 3 branch: finite differences.
    cohen_slope = sigma / stats.norm.pdf(stats.norm.isf(gap))
    ref_dcs = np.array([(cs_ if c else _fd(lambda t, b=b, s=s: _dipole_theorem3(t, b, s), a, h)) if k else 0.0
                        for a, b, s, h, c, k, cs_ in zip(cs, cn, sigma, h_cs, use_cohen, keep, cohen_slope)])
    ref_dcn = np.array([(cs_ if c else _fd(lambda t, a=a, s=s: _dipole_theorem3(a, t, s), b, h)) if k else 0.0
                        for a, b, s, h, c, k, cs_ in zip(cs, cn, sigma, h_cn, use_cohen, keep, cohen_slope)])
    dcs, dcn = _jit_vmap_grad(dipole_radius, 3, (0, 1))(jnp.asarray(cs), jnp.asarray(cn), jnp.asarray(sigma))
    dcs, dcn = np.asarray(dcs), np.asarray(dcn)
    assert np.all(np.isfinite(dcs)) and np.all(np.isfinite(dcn))
    return (_assert_grads(dcs[keep], ref_dcs[keep], "d dipole_radius / d cs_lower", (FD_NOISE * ref_val / h_cs)[keep]),
            _assert_grads(dcn[keep], ref_dcn[keep], "d dipole_radius / d cn_lower", (FD_NOISE * ref_val / h_cn)[keep]))


def test_dipole_radius_gradient_quick():
    _check_dipole(24)


@pytest.mark.slow
def test_dipole_radius_gradient_200_points():
    errs = _check_dipole(256)  # >= 200 points remain after skipping kinks (asserted inside)
    print(f"dipole_radius: 256 points, max rel err dcs {errs[0]:.2e}, dcn {errs[1]:.2e}")


# ------------------------------------------------------------------------------------------
# Theorem 3: directional radius, l1 and linf radii
# ------------------------------------------------------------------------------------------


def theorem3_reference_radius_and_grad(q, m1, m2):
    """Reference R and (dR/dq, dR/dm1, dR/dm2) by the implicit function theorem on FD partials of p_lower."""
    ref = _theorem3_reference()
    big_r = ref.reference_directional_radius(float(q), float(m1), float(m2))
    p = ref.reference_p_lower
    # fourth-order differences with steps 1e-3 of the distance to the nearest singular edge
    # (p_lower is accurate to ~1e-12, so the rounding noise is ~1e-12 / h)
    hr = 1e-3 * max(big_r, 1e-2)
    dp_dr = _fd(lambda t: p(t, q, m1, m2), big_r, hr)
    hq = 1e-3 * min(q - 0.5, 1 - q)
    dp_dq = _fd(lambda t: p(big_r, t, m1, m2), q, hq)
    big_m = ref.max_grad(q)
    room = min(big_m - math.hypot(m1, m2), m2)
    h = 1e-3 * room
    dp_dm1 = _fd(lambda t: p(big_r, q, t, m2), m1, h)
    dp_dm2 = _fd(lambda t: p(big_r, q, m1, t), m2, h)
    return big_r, -np.array([dp_dq, dp_dm1, dp_dm2]) / dp_dr


def _theorem3_table(n):
    q, m1, m2 = theorem3_points(n)
    rows = [theorem3_reference_radius_and_grad(*a) for a in zip(q, m1, m2)]
    return q, m1, m2, np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def _check_directional(n):
    directional_radius = _need("theorem3", "directional_radius")
    q, m1, m2, ref_r, ref_g = _theorem3_table(n)
    np.testing.assert_allclose(np.asarray(directional_radius(q, m1, m2)), ref_r, rtol=1e-7)
    g = _jit_vmap_grad(directional_radius, 3, (0, 1, 2))(jnp.asarray(q), jnp.asarray(m1), jnp.asarray(m2))
    return tuple(_assert_grads(g[i], ref_g[:, i], f"d directional_radius / d {name}")
                 for i, name in enumerate(("q", "m1", "m2")))


def _first_order_points(n, kind):
    """(p, grad_l2, grad_dual, sigma, dim) mapped from Theorem 3 points with m1 < 0."""
    q, m1, m2 = theorem3_points(n)
    m1 = -np.abs(m1)  # the l1 / linf corollaries always look along the worst (negative) direction
    sigma = np.random.default_rng(SEED + 4).uniform(0.1, 1.0, q.size)
    dim = 64
    l2 = np.hypot(m1, m2) / sigma
    if kind == "l1":
        dual = -m1 / sigma  # ||grad||_inf
    else:
        # ||grad||_1 >= ||grad||_2 always (linf_radius rejects l1 < l2): keep |m1| >= rho / sqrt(d)
        rho = np.hypot(m1, m2)
        m1 = -np.maximum(-m1, 1.01 * rho / math.sqrt(dim))
        m2 = np.sqrt(np.maximum(rho**2 - m1**2, 0.0))
        dual = -m1 * math.sqrt(dim) / sigma  # ||grad||_1
    return q, m1, m2, l2, dual, sigma, dim


def _check_first_order(n, kind):
    fn = _need("first_order", "l1_radius" if kind == "l1" else "linf_radius")
    q, m1, m2, l2, dual, sigma, dim = _first_order_points(n, kind)
    rows = [theorem3_reference_radius_and_grad(*a) for a in zip(q, m1, m2)]
    ref_r = sigma * np.array([r[0] for r in rows])
    rq, rm1, rm2 = (np.array([r[1][i] for r in rows]) for i in range(3))
    if kind == "l1":
        ours = fn(q, l2, dual, sigma)
        # m1 = -sigma linf, m2 = sigma sqrt(l2^2 - linf^2)
        dm2_dl2 = sigma**2 * l2 / m2
        dm2_ddual = -sigma**2 * dual / m2
        dm1_ddual = -sigma
        grads = _jit_vmap_grad(lambda a, b, c, s: fn(a, b, c, s), 4, (0, 1, 2))(
            *(jnp.asarray(v) for v in (q, l2, dual, sigma)))
    else:
        ours = fn(q, l2, dual, dim, sigma)
        # m1 = -sigma l1 / sqrt(d), m2 = sigma sqrt(d l2^2 - l1^2) / sqrt(d)
        dm2_dl2 = sigma**2 * l2 / m2
        dm2_ddual = -sigma**2 * dual / (dim * m2)
        dm1_ddual = -sigma / math.sqrt(dim)
        grads = _jit_vmap_grad(lambda a, b, c, s: fn(a, b, c, dim, s), 4, (0, 1, 2))(
            *(jnp.asarray(v) for v in (q, l2, dual, sigma)))
    # the linf radius is the linf norm of the worst vertex perturbation: l2 length / sqrt(d)
    scale = sigma if kind == "l1" else sigma / math.sqrt(dim)
    ref_r = scale * np.array([r[0] for r in rows])
    np.testing.assert_allclose(np.asarray(ours), ref_r, rtol=1e-7)
    ref = [scale * rq, scale * rm2 * dm2_dl2, scale * (rm1 * dm1_ddual + rm2 * dm2_ddual)]
    names = ("p_lower", "grad_l2_lower", "grad_linf_upper" if kind == "l1" else "grad_l1_upper")
    return tuple(_assert_grads(grads[i], ref[i], f"d {kind}_radius / d {names[i]}") for i in range(3))


# The Theorem 3 based checks compile jit(vmap(grad)) through the solver (minutes on a loaded CPU)
# and call the slow scipy reference: all of them are marked slow.
@pytest.mark.slow
def test_directional_radius_gradient_quick():
    _check_directional(8)


@pytest.mark.slow
def test_l1_radius_gradient_quick():
    _check_first_order(8, "l1")


@pytest.mark.slow
def test_linf_radius_gradient_quick():
    _check_first_order(8, "linf")


@pytest.mark.slow
def test_directional_radius_gradient_200_points():
    errs = _check_directional(200)
    print("directional_radius: 200 points, max rel err (dq, dm1, dm2)", [f"{e:.2e}" for e in errs])


@pytest.mark.slow
def test_l1_radius_gradient_200_points():
    errs = _check_first_order(200, "l1")
    print("l1_radius: 200 points, max rel err (dp, dl2, dlinf)", [f"{e:.2e}" for e in errs])


@pytest.mark.slow
def test_linf_radius_gradient_200_points():
    errs = _check_first_order(200, "linf")
    print("linf_radius: 200 points, max rel err (dp, dl2, dl1)", [f"{e:.2e}" for e in errs])


# ------------------------------------------------------------------------------------------
# Edges: finite values and gradients (p at 1/2 and near 1, gradient at 0 and at its maximum)
# ------------------------------------------------------------------------------------------

P_EDGES = np.array([0.5, 0.5 + 1e-12, 0.75, 1 - 1e-12])


def _assert_finite(tree, label):
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        assert np.all(np.isfinite(a)), f"{label}: non-finite values {a}"


def test_cohen_edges_finite():
    f = _need("certificates", "cohen_radius")
    s = jnp.full(P_EDGES.shape, 0.25)
    _assert_finite(f(P_EDGES, s), "cohen_radius")
    _assert_finite(_jit_vmap_grad(f, 2, (0, 1))(jnp.asarray(P_EDGES), s), "grad cohen_radius")


def test_sos_edges_finite():
    f = _need("certificates", "sos_radius")
    p = np.repeat(P_EDGES, 3)
    top = stats.norm.pdf(stats.norm.ppf(p)) / 0.25
    g = np.tile([0.0, 0.5, 1.0], P_EDGES.size) * top  # gradient at 0, half, and at its maximum
    s = jnp.full(p.shape, 0.25)
    _assert_finite(f(p, g, s), "sos_radius")
    _assert_finite(_jit_vmap_grad(f, 3, (0, 1, 2))(jnp.asarray(p), jnp.asarray(g), s), "grad sos_radius")


def test_dipole_edges_finite():
    f = _need("certificates", "dipole_radius")
    cs = np.array([0.5, 0.0, 0.3, 1 - 1e-12, 0.0, 0.6])
    cn = np.array([0.0, 0.5, 0.2, 0.0, 1 - 1e-12, 0.4 - 1e-12])
    s = jnp.full(cs.shape, 0.25)
    _assert_finite(f(cs, cn, s), "dipole_radius")
    _assert_finite(_jit_vmap_grad(f, 3, (0, 1, 2))(jnp.asarray(cs), jnp.asarray(cn), s), "grad dipole_radius")


@pytest.mark.slow
def test_directional_edges_finite():
    f = _need("theorem3", "directional_radius")
    q = np.repeat([0.5 + 1e-9, 0.8, 1 - 1e-9], 4)
    big_m = stats.norm.pdf(stats.norm.ppf(q))
    m1 = np.tile([-1.0, 0.0, -0.999, -0.5], 3) * big_m  # gradient at its maximum, zero, near max, inside
    m2 = np.tile([0.0, 0.0, 0.0, 0.5], 3) * big_m
    _assert_finite(f(q, m1, m2), "directional_radius")
    _assert_finite(_jit_vmap_grad(f, 3, (0, 1, 2))(*(jnp.asarray(v) for v in (q, m1, m2))), "grad directional_radius")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["l1", "linf"])
def test_first_order_edges_finite(kind):
    fn = _need("first_order", "l1_radius" if kind == "l1" else "linf_radius")
    sigma, dim = 0.25, 64
    p = np.repeat([0.5 + 1e-9, 0.8, 1 - 1e-9], 3)
    top = stats.norm.pdf(stats.norm.ppf(p)) / sigma
    l2 = np.tile([0.0, 0.999, 0.5], 3) * top  # gradient 0, near its maximum, inside
    dual = l2 * (0.5 if kind == "l1" else 0.5 * math.sqrt(dim))
    s = jnp.full(p.shape, sigma)
    if kind == "l1":
        val = fn(p, l2, dual, s)
        g = _jit_vmap_grad(lambda a, b, c, t: fn(a, b, c, t), 4, (0, 1, 2))(*(jnp.asarray(v) for v in (p, l2, dual)), s)
    else:
        val = fn(p, l2, dual, dim, s)
        g = _jit_vmap_grad(lambda a, b, c, t: fn(a, b, c, dim, t), 4, (0, 1, 2))(
            *(jnp.asarray(v) for v in (p, l2, dual)), s)
    _assert_finite(val, f"{kind}_radius")
    _assert_finite(g, f"grad {kind}_radius")


# ------------------------------------------------------------------------------------------
# Through the radii to model parameters
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", ["cohen_l2", "sos_l2", pytest.param("first_order_l1", marks=pytest.mark.slow),
                                    pytest.param("first_order_linf", marks=pytest.mark.slow)])
def test_gradient_through_radius_to_params(radius):
    """d/dparams of soft_radius(soft p, soft grad norms) for a linear model: finite, and equal to a
    central finite difference of the same (deterministic given the key) function along a random
    direction in parameter space (checks the whole chain model -> surrogates -> radius)."""
    from smoothjax import objectives as obj

    if radius == "sos_l2":
        _need("certificates", "sos_radius")
    if radius.startswith("first_order"):
        _need("first_order", "l1_radius")
        _need("first_order", "linf_radius")
    dim, sigma = 6, 0.5
    rng = np.random.default_rng(3)

    def apply_fn(params, x):
        return x.reshape(x.shape[0], -1) @ params["W"] + params["c"][None]

    params = {"W": jnp.asarray(rng.standard_normal((dim, 3))), "c": jnp.asarray([1.5, 0.0, -0.5])}
    x = jnp.asarray(0.1 * rng.standard_normal((4, dim)))
    y = jnp.zeros(4, int)
    key = jax.random.key(0)

    def total_radius(params):
        p = obj.soft_smoothed_probabilities(apply_fn, params, x, key, sigma=sigma, num_samples=64, beta=2.0)[:, 0]
        g = obj.smoothed_gradient(apply_fn, params, x, y, key, sigma=sigma, num_samples=64, beta=2.0, method="autodiff")
        l2, l1, linf = obj.gradient_norms(g)
        return jnp.sum(obj.soft_radius(radius, p, sigma, grad_l2=l2, grad_l1=l1, grad_linf=linf, dim=dim))

    grads = jax.jit(jax.grad(total_radius))(params)
    _assert_finite(grads, f"grad of {radius} w.r.t. params")
    direction = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
    along = sum(float(jnp.vdot(grads[k], direction[k])) for k in params)
    h = 1e-5
    shifted = lambda t: float(total_radius(jax.tree_util.tree_map(lambda a, d: a + t * d, params, direction)))
    fd = (shifted(h) - shifted(-h)) / (2 * h)
    assert abs(along - fd) <= 1e-4 * max(abs(fd), 1e-3), (radius, along, fd)
