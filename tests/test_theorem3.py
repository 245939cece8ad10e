"""Theorem 3 solver (smoothjax.theorem3) against the independent scipy reference
(tests/theorem3_reference.py, written by another engineer from the paper), closed forms
(Cohen, SoS, half-space) and scipy.integrate.quad of the theorem's own equations.

Default run: a small grid (~40 s). The dense acceptance grid and the throughput measurement are
marked slow.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

import smoothjax
from smoothjax import directional_radius, theorem3_coefficients, theorem3_p_lower
from smoothjax.certificates import sos_radius
from smoothjax.theorem3 import directional_radius_solution
from smoothjax.theorem3._moments import QUAD_ERR
from smoothjax.theorem3._newton import NEWTON_ITERS, band_edges
from smoothjax.theorem3._radius import RADIUS_ITERS, RADIUS_STEPS, band_radius, radius_batch

theorem3_reference = pytest.importorskip("theorem3_reference")

P_ABS_TOL = 1e-8  # acceptance tolerances
R_REL_TOL = 1e-7
OVER_TOL = 1e-12  # allowed non-conservative error


def _M(q):
    return float(norm.pdf(norm.ppf(q)))


def _point(q, m1f, m2f):
    """(q, m1, m2) with m1, m2 given as fractions of M (m2 capped to the feasible disk)."""
    M = _M(q)
    return q, m1f * M, m2f * M


# (r, q, m1/M, m2/M): both signs of m1, m2 from 0 and 1e-8 to near M, q from 0.5001 to 0.99999
P_GRID = [
    (1.0, 0.9, -1.0, 0.0),
    (1.0, 0.9, -0.5, 1e-8),
    (0.05, 0.9, 0.0, 0.3),
    (3.0, 0.9, 0.5, 0.8),
    (1.0, 0.6, -0.5, 0.8),
    (2.0, 0.5001, 0.3, 0.5),
    (0.3, 0.999, -1.0, 0.8),
    (3.0, 0.999, 0.0, 1e-8),
    (1.0, 0.99999, -0.5, 0.3),
    (3.0, 0.99999, 0.5, 0.0),
    (1.0, 0.9, -0.2, 0.999),
    (5.0, 0.99, -0.9, 0.2),
]


@pytest.mark.parametrize("r,q,m1f,m2f", P_GRID, ids=[f"r{r}-q{q}-m1{a}-m2{b}" for r, q, a, b in P_GRID])
def test_p_lower_matches_reference(r, q, m1f, m2f):
    q, m1, m2 = _point(q, m1f, m2f)
    ours = float(theorem3_p_lower(r, q, m1, m2))
    ref = theorem3_reference.reference_p_lower(r, q, m1, m2)
    assert abs(ours - ref) <= P_ABS_TOL
    assert ours - ref <= OVER_TOL  # a lower bound: never above the exact value


R_GRID = [(0.6, -0.5, 0.3), (0.6, 0.0, 0.0), (0.9, -0.5, 0.3), (0.9, 0.5, 1e-8), (0.9, -1.0, 0.8), (0.6, -1.0, 1e-8)]


# the last three grid points run in the slow set (each compiles and solves for ~10 s)
@pytest.mark.parametrize(
    "q,m1f,m2f",
    [pytest.param(*p, marks=pytest.mark.slow) if i >= 3 else p for i, p in enumerate(R_GRID)],
    ids=[f"q{q}-m1{a}-m2{b}" for q, a, b in R_GRID],
)
def test_directional_radius_matches_reference(q, m1f, m2f):
    q, m1, m2 = _point(q, m1f, m2f)
    ours = float(directional_radius(q, m1, m2))
    ref = theorem3_reference.reference_directional_radius(q, m1, m2)
    assert abs(ours - ref) <= R_REL_TOL * ref
    assert ours - ref <= OVER_TOL * max(ref, 1.0)


def test_solution_satisfies_the_theorem_equations():
    """Independent of the solver's quadrature: integrate eqs. (4), (5a), (5b) and p_lower with
    scipy.integrate.quad using the returned coefficients c(x) = c0 + c1 x + c2 e^{r x}."""
    for r, q, m1f, m2f in [(1.0, 0.9, -0.5, 0.3), (2.0, 0.99, 0.2, 0.6), (0.5, 0.7, -0.9, 0.2)]:
        q, m1, m2 = _point(q, m1f, m2f)
        sol = theorem3_coefficients(r, q, m1, m2)
        c0, c1, c2 = (float(v) for v in (sol.c0, sol.c1, sol.c2))
        assert bool(sol.converged) and int(sol.branch) in (0, 1)

        def c(x, c0=c0, c1=c1, c2=c2, r=r):
            return c0 + c1 * x + c2 * math.exp(min(r * x, 700.0))

        def quad(f, r=r):
            return integrate.quad(f, -14, 14 + r, epsabs=1e-14, epsrel=1e-13, limit=400)[0]

        assert abs(quad(lambda x: norm.pdf(x) * norm.cdf(c(x))) - q) < 1e-10
        assert abs(quad(lambda x: norm.pdf(x) * norm.pdf(c(x))) - m2) < 1e-10
        e1 = quad(lambda x: x * norm.pdf(x) * norm.cdf(c(x)))
        if int(sol.branch) == 0:
            assert abs(e1 - m1) < 1e-10
        else:  # fallback: c1 = 0 and the m1 constraint is slack
            assert c1 == 0.0 and e1 >= m1 - 1e-12
        p = quad(lambda x, r=r: norm.pdf(x - r) * norm.cdf(c(x)))
        assert abs(float(sol.p_lower) - p) < 1e-9 and float(sol.p_lower) <= p + 1e-12


@pytest.mark.parametrize("q", [0.55, 0.9, 0.999, 0.99999])
def test_l2_cases_equal_cohen_and_sos(q):
    """m2 = 0, m1 = -sigma ||grad g||: Corollary 3.1 = SoS radius; at the largest gradient, Cohen's."""
    sigma = 0.5
    M = _M(q)
    cohen = norm.ppf(q)
    R = float(directional_radius(q, -M, 0.0))
    assert cohen * (1 - 1e-9) <= R <= cohen * (1 + 1e-12)
    for frac in (0.2, 0.7):
        G = frac * M / sigma  # ||grad g|| in 1/input units
        ours = sigma * float(directional_radius(q, -sigma * G, 0.0))
        sos = float(sos_radius(q, G, sigma))
        ref = sigma * theorem3_reference.sos_radius_dimensionless(q, frac * M)
        assert abs(ours - ref) <= R_REL_TOL * ref and ours <= ref * (1 + OVER_TOL)
        assert abs(ours - sos) <= R_REL_TOL * sos


def test_closed_form_cases():
    q = 0.9
    M = _M(q)
    assert float(directional_radius(0.5, -0.1, 0.1)) == 0.0
    assert float(directional_radius(0.3, -0.1, 0.1)) == 0.0
    assert float(directional_radius(q, -0.3 * M, M)) == np.inf  # m2 = M: p stays q
    assert float(theorem3_p_lower(2.0, q, -0.3 * M, M)) == pytest.approx(q, abs=1e-15)
    m1, m2 = 0.6 * M, 0.8 * M  # on the arc, m1 > 0: the half-space
    assert float(theorem3_p_lower(1.5, q, m1, m2)) == pytest.approx(norm.cdf(norm.ppf(q) + 1.5 * 0.6), abs=1e-14)
    assert float(directional_radius(q, m1, m2)) == np.inf
    assert float(theorem3_p_lower(0.0, q, -0.5 * M, 0.3 * M)) == pytest.approx(q, abs=1e-15)
    # negative m2 is a weaker (still valid) bound and is treated as 0
    assert float(theorem3_p_lower(1.0, q, -0.5 * M, -0.01)) == float(theorem3_p_lower(1.0, q, -0.5 * M, 0.0))


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_cohen_corner_is_exact_with_its_gradient():
    """m2 = 0 and m1 <= -M (the gradient at its largest, against v): Cohen's half-space exactly,
    p = Phi(Phi^-1(q) - r) and R = Phi^-1(q), with dR/dq = 1 / M and dp/dq = phi(z - r) / M
    (closed forms, scipy), converged and without Newton's slow degenerate limit."""
    q = np.repeat([0.6, 0.9, 0.9999], 2)
    M, z = norm.pdf(norm.ppf(q)), norm.ppf(q)
    m1 = M * np.tile([-1.0, -1.5], 3)
    m2 = np.zeros_like(q)
    sol = directional_radius_solution(q, m1, m2)
    np.testing.assert_allclose(np.asarray(sol.radius), z, rtol=1e-15)
    assert np.all(np.asarray(sol.converged))
    gq, gm1, gm2 = jax.jit(jax.vmap(jax.grad(directional_radius, argnums=(0, 1, 2))))(q, m1, m2)
    np.testing.assert_allclose(np.asarray(gq), 1.0 / M, rtol=1e-12)
    assert np.all(np.asarray(gm1) == 0.0) and np.all(np.asarray(gm2) == 0.0)
    for r in (0.3, 2.0):
        p = np.asarray(theorem3_p_lower(r, q, m1, m2))
        np.testing.assert_allclose(p, norm.cdf(z - r), rtol=0, atol=1e-15)
        dp = jax.jit(jax.vmap(jax.grad(theorem3_p_lower, argnums=1), in_axes=(None, 0, 0, 0)))(r, q, m1, m2)
        np.testing.assert_allclose(np.asarray(dp), norm.pdf(z - r) / M, rtol=1e-12)


@pytest.mark.parametrize("q,m1f,m2f",
                         [(0.56, 0.35, 0.19), (0.87, -0.02, 0.51), (0.99, 0.64, 0.12), (0.66, -0.38, 0.01)])
def test_band_lower_end_is_certified_by_the_reference(q, m1f, m2f):
    """The radius solve starts at the m2 = 0 band's radius and takes as certified lower end the
    point where a weak-duality bound of the band exceeds 1/2: the reference p_lower there (with
    the m2 constraint, and without it) is >= 1/2, and the band radius is the m2 = 0 radius."""
    q, m1, m2 = _point(q, m1f, m2f)
    edges = band_edges(q, m1)
    band = band_radius(q, m1, edges)
    r_band, lo = float(band.r), float(band.lo)
    assert lo > norm.ppf(q)  # the band improved on Cohen's lower end
    assert theorem3_reference.reference_p_lower(lo, q, m1, 0.0) >= 0.5
    assert theorem3_reference.reference_p_lower(lo, q, m1, m2) >= 0.5
    R0 = float(directional_radius(q, m1, 0.0))
    assert abs(r_band - R0) <= 1e-8 * R0 and lo <= R0


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_m2_zero_band_closed_form_and_gradient():
    """m2 = 0 (above Cohen's corner): the band is the solution, returned without a moments
    evaluation; radius and gradient agree with the independently derived SoS certificate
    (smoothjax.certificates.sos_radius, second paper): R sigma = SoS(q, G) for m1 = -sigma G."""
    sigma = 0.5
    q = np.array([0.55, 0.9, 0.999, 0.9999999])
    G = np.array([0.3, 0.8, 0.1, 0.5]) * norm.pdf(norm.ppf(q)) / sigma
    m1, m2 = -sigma * G, np.zeros_like(q)
    sol = directional_radius_solution(q, m1, m2)
    assert np.all(np.asarray(sol.evaluations) == 0) and np.all(np.asarray(sol.converged))
    R = np.asarray(sol.radius)
    sos = np.asarray(sos_radius(q, G, sigma))
    assert np.all(np.abs(sigma * R - sos) <= 2e-9 * sos) and np.all(sigma * R <= sos * (1 + 1e-12))
    gq, gm1 = jax.jit(jax.vmap(jax.grad(directional_radius, argnums=(0, 1))))(q, m1, m2)
    sq, sG = jax.jit(jax.vmap(jax.grad(lambda p, g: sos_radius(p, g, sigma), argnums=(0, 1))))(q, G)
    np.testing.assert_allclose(sigma * np.asarray(gq), np.asarray(sq), rtol=1e-6)
    np.testing.assert_allclose(-sigma * sigma * np.asarray(gm1), np.asarray(sG), rtol=1e-6)


def _benchmark_like(size, seed=0):
    """(q, m1, m2) as in benchmarks/case_certificates.py's directional case."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.55, 0.99, size)
    rho = rng.uniform(0.3, 0.95, size) * norm.pdf(norm.ppf(q))
    angle = rng.uniform(0.5, 0.92, size) * math.pi
    return q, rho * np.cos(angle), rho * np.sin(angle)


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_radius_does_not_depend_on_the_slots():
    """The slot machine: each radius runs the same operations whichever slot solves it, so the
    result is the same for a few slots refilled many times and one slot per radius (up
    to rounding: XLA compiles each batch width to its own vector code; measured <= 1 ulp)."""
    q, m1, m2 = _benchmark_like(40, seed=3)
    q[5], m1[5], m2[5] = 0.4, 0.0, 0.0  # closed forms mixed in (q <= 1/2 and Cohen's corner)
    q[9], m1[9], m2[9] = 0.9, -_M(0.9), 0.0
    outs = [jax.jit(radius_batch, static_argnums=3)(q, m1, m2, w) for w in (3, 40)]
    for o in outs[1:]:
        np.testing.assert_allclose(np.asarray(o.R), np.asarray(outs[0].R), rtol=1e-14, atol=0)
        np.testing.assert_allclose(np.asarray(o.lam), np.asarray(outs[0].lam), rtol=1e-12, atol=1e-300)
        np.testing.assert_array_equal(np.asarray(o.evaluations), np.asarray(outs[0].evaluations))
    R = np.asarray(outs[0].R)
    assert R[5] == 0.0 and R[9] == norm.ppf(0.9)


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_radius_cost_in_moment_evaluations():
    """Algorithmic cost, not time: the number of moment evaluations per radius on the
    benchmark's input distribution (about 7.5 on average)."""
    sol = directional_radius_solution(*_benchmark_like(500))
    evals = np.asarray(sol.evaluations)
    assert np.all(np.asarray(sol.converged))
    assert evals.mean() <= 9.0 and evals.max() <= 30, (evals.mean(), evals.max())


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_below_fallback_threshold_gives_fallback_value():
    """m1 is only a lower bound: every m1 below the fallback threshold gives the same value."""
    r, q, m2f = 1.0, 0.9, 0.3
    M = _M(q)
    sol = theorem3_coefficients(r, q, -M, m2f * M)
    assert int(sol.branch) == 1 and float(sol.lam[1]) == 0.0
    p = [float(theorem3_p_lower(r, q, f * M, m2f * M)) for f in (-1.0, -0.99, -0.98)]
    assert max(p) - min(p) <= 1e-13
    assert float(jax.grad(theorem3_p_lower, argnums=2)(r, q, -M, m2f * M)) == 0.0


def _fd(fn, x, i, h):
    xp, xm = list(x), list(x)
    xp[i] += h
    xm[i] -= h
    return (fn(*xp) - fn(*xm)) / (2 * h)


@pytest.mark.parametrize("point", [(1.0, 0.9, -0.5, 0.3), (2.0, 0.99, 0.2, 0.6), (0.7, 0.7, -0.3, 1e-8)])
def test_p_lower_gradient_matches_reference_finite_differences(point):
    r, q, m1f, m2f = point
    x = [r, *_point(q, m1f, m2f)]
    grads = jax.grad(theorem3_p_lower, argnums=(0, 1, 2, 3))(*x)
    for i, h in enumerate([1e-4, 1e-5, 1e-5, 1e-5]):
        if i == 3 and x[3] < 1e-6:
            h = 0.5 * x[3]  # stay feasible
        fd = _fd(theorem3_reference.reference_p_lower, x, i, h)
        assert float(grads[i]) == pytest.approx(fd, rel=1e-5, abs=1e-7), f"argument {i}"


def test_radius_gradient_matches_reference_finite_differences():
    x = list(_point(0.9, -0.5, 0.3))
    grads = jax.grad(directional_radius, argnums=(0, 1, 2))(*x)
    for i, h in enumerate([1e-5, 1e-5, 1e-5]):
        fd = _fd(theorem3_reference.reference_directional_radius, x, i, h)
        assert float(grads[i]) == pytest.approx(fd, rel=1e-5), f"argument {i}"


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_jit_vmap_grad_and_no_recompilation():
    q = jnp.array([0.7, 0.9, 0.99])
    M = jnp.exp(-0.5 * jax.scipy.special.ndtri(q) ** 2) / jnp.sqrt(2 * jnp.pi)
    m1, m2 = -0.4 * M, 0.5 * M
    g = jax.jit(jax.vmap(jax.grad(directional_radius, argnums=(0, 1, 2))))
    gq, gm1, gm2 = g(q, m1, m2)
    grad = jax.grad(directional_radius, argnums=(0, 1, 2))
    eager = [grad(float(a), float(b), float(c)) for a, b, c in zip(q, m1, m2)]
    np.testing.assert_allclose(np.asarray(gq), [float(e[0]) for e in eager], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(gm2), [float(e[2]) for e in eager], rtol=1e-10)
    assert bool(jnp.all(gq > 0)) and bool(jnp.all(gm2 > 0))
    gp = jax.jit(jax.vmap(jax.grad(theorem3_p_lower, argnums=(0, 1, 2, 3))))(jnp.full(3, 1.0), q, m1, m2)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in gp)
    f = jax.jit(directional_radius)
    f(q, m1, m2)
    f(q * 0.999, m1, m2)
    assert f._cache_size() == 1


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_monotone_in_q_m1_m2_and_angle():
    """p_lower non-decreasing in q, m1, m2; radius non-increasing in the angle (Proposition 2)."""
    r = 1.3
    q = jnp.array([0.8, 0.85, 0.9])  # fixed (m1, m2) feasible for all three
    p = theorem3_p_lower(r, q, -0.1, 0.1)
    assert bool(jnp.all(jnp.diff(p) >= 0))
    M = _M(0.9)
    p = theorem3_p_lower(r, 0.9, jnp.linspace(-M, 0.5 * M, 5), 0.3 * M)
    assert bool(jnp.all(jnp.diff(p) >= -1e-15))
    p = theorem3_p_lower(r, 0.9, -0.5 * M, jnp.array([0.0, 1e-8, 0.2, 0.5, 0.8]) * M)
    assert bool(jnp.all(jnp.diff(p) >= -1e-15))
    G = 0.7 * M
    angles = jnp.linspace(0.0, jnp.pi, 7)
    R = directional_radius(0.9, G * jnp.cos(angles), G * jnp.sin(angles))
    assert bool(jnp.all(jnp.diff(R) <= 1e-12))


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_infeasible_input():
    M = _M(0.9)
    with pytest.raises(ValueError, match="infeasible"):
        theorem3_p_lower(1.0, 0.9, 0.0, 1.01 * M)
    with pytest.raises(ValueError, match="infeasible"):
        directional_radius(0.9, 0.8 * M, 0.8 * M)
    with pytest.raises(ValueError, match="q must"):
        directional_radius(1.0, -0.1, 0.0)
    with pytest.raises(ValueError):
        theorem3_p_lower(-1.0, 0.9, -0.1, 0.0)
    # inside jit: NaN, never a silent number
    assert np.isnan(float(jax.jit(theorem3_p_lower)(1.0, 0.9, 0.0, 1.01 * M)))
    assert np.isnan(float(jax.jit(directional_radius)(0.9, 0.8 * M, 0.8 * M)))
    sol = jax.jit(theorem3_coefficients)(1.0, 0.9, 0.8 * M, 0.8 * M)
    assert not bool(sol.converged)


def test_float32_inputs_are_promoted():
    R64 = directional_radius(0.9, -0.05, 0.1)
    R32 = directional_radius(np.float32(0.9), np.float32(-0.05), np.float32(0.1))
    assert R32.dtype == smoothjax._config.float_dtype()
    assert abs(float(R32) - float(R64)) < 1e-6


def test_exported():
    for name in ("theorem3_coefficients", "theorem3_p_lower", "directional_radius", "Theorem3Solution"):
        assert hasattr(smoothjax, name)
    for name in smoothjax.theorem3.__all__:
        assert hasattr(smoothjax.theorem3, name)


# Near the arc max(m1,0)^2 + m2^2 = M^2 the multipliers reach 1e6..1e10 and the solve may stop
# unconverged; the radius must then still be certified: finite, >= Cohen's, and the true p_lower
# (independent reference) at it >= 1/2. (q, rho, angle): m1 = rho M cos, m2 = rho M sin.
NEAR_ARC = [
    (0.54584589, 0.9999999878, 1.285),
    (0.98866507, 0.9999996979, 0.059),
    (0.99997601, 0.9999998062, 0.028),
    (0.7243600270478111, 0.9971635494995387, 1.6442324330864335),
    (0.9999406781457181, 0.9983625670261768, 1.5806445394663806),
    (0.9999985452953203, 0.9995296680076622, math.pi),
]


def _near_arc_inputs():
    q, rho, ang = (np.array(c) for c in zip(*NEAR_ARC))
    M = np.array([_M(x) for x in q])
    return q, M * rho * np.cos(ang), np.maximum(M * rho * np.sin(ang), 0.0)


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_near_arc_radius_is_finite_and_at_least_cohen():
    q, m1, m2 = _near_arc_inputs()
    R = np.asarray(jax.jit(directional_radius)(q, m1, m2))
    cohen = norm.ppf(q)
    assert np.all(np.isfinite(R))
    assert np.all(R >= cohen * (1 - 1e-9))
    # gradients stay finite there (zero for a lane that returns its certified fallback)
    grads = jax.jit(jax.vmap(jax.grad(directional_radius, argnums=(0, 1, 2))))(q, m1, m2)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_large_radii_toward_the_gradient_converge_and_follow_proposition_2():
    """|grad| = 0.99 M at q = 0.6: radii up to ~3 toward the gradient (m1 > 0), the most expensive
    (up to ~17 moment evaluations); they must converge, decrease as v turns away (Proposition 2)
    and match the reference."""
    q = 0.6
    G = 0.99 * _M(q)
    angles = np.linspace(0.0, np.pi, 13)
    sol = directional_radius_solution(np.full(13, q), G * np.cos(angles), G * np.sin(angles))
    R = np.asarray(sol.radius)
    assert np.all(np.asarray(sol.converged))
    assert np.all(np.diff(R) <= 1e-12)
    assert np.all(R >= norm.ppf(q))
    ref = theorem3_reference.reference_directional_radius(q, G * math.cos(angles[2]), G * math.sin(angles[2]))
    ours = float(directional_radius(q, G * math.cos(angles[2]), G * math.sin(angles[2])))
    assert (ref - ours) / ref <= R_REL_TOL and (ours - ref) / ref <= OVER_TOL


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_directional_radius_solution_is_the_radius_with_its_diagnostics():
    """The solution's radius is directional_radius's, bit for bit, on benchmark-like inputs mixed
    with closed forms (q <= 1/2, Cohen's corner, the m2 = 0 band), and every solve converged."""
    q, m1, m2 = _benchmark_like(24, seed=5)
    q[3], m1[3], m2[3] = 0.4, 0.0, 0.0
    q[7], m1[7], m2[7] = 0.9, -_M(0.9), 0.0
    q[11], m1[11], m2[11] = 0.9, -0.3 * _M(0.9), 0.0
    sol = directional_radius_solution(q, m1, m2)
    R = np.asarray(directional_radius(q, m1, m2))
    np.testing.assert_array_equal(np.asarray(sol.radius), R)
    assert np.all(np.asarray(sol.converged))
    steps, evals = np.asarray(sol.steps), np.asarray(sol.evaluations)
    assert steps.dtype == np.int32 and evals.dtype == np.int32
    closed = np.zeros(24, bool)
    closed[[3, 7, 11]] = True
    assert np.all(steps[closed] == 0) and np.all(evals[closed] == 0)
    assert np.all(steps[~closed] >= 1) and np.all(evals[~closed] >= steps[~closed])
    # scalar input and jit
    s0 = jax.jit(directional_radius_solution)(q[0], m1[0], m2[0])
    assert float(s0.radius) == float(jax.jit(directional_radius)(q[0], m1[0], m2[0])) and bool(s0.converged)


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_directional_radius_solution_reports_the_budget_near_the_arc():
    """Near the arc the multipliers blow up: the first point spends its moments-evaluation budget
    (RADIUS_STEPS, checked when an inner solve ends, so overrun by at most one solve) and reports
    converged False; every point stays within the r-step and evaluation limits."""
    q, m1, m2 = _near_arc_inputs()
    sol = directional_radius_solution(q, m1, m2)
    np.testing.assert_array_equal(np.asarray(sol.radius), np.asarray(directional_radius(q, m1, m2)))
    steps, evals, conv = np.asarray(sol.steps), np.asarray(sol.evaluations), np.asarray(sol.converged)
    assert np.all(steps <= RADIUS_ITERS) and np.all(evals >= steps)
    assert np.all(evals <= RADIUS_STEPS + 2 * NEWTON_ITERS)
    assert not conv[0] and evals[0] >= RADIUS_STEPS
    assert np.all(evals[conv] < RADIUS_STEPS)
    # infeasible input inside jit: NaN radius, not converged
    M = _M(0.9)
    bad = jax.jit(directional_radius_solution)(0.9, 0.8 * M, 0.8 * M)
    assert np.isnan(float(bad.radius)) and not bool(bad.converged)
    with pytest.raises(ValueError, match="infeasible"):
        directional_radius_solution(0.9, 0.8 * M, 0.8 * M)


@pytest.mark.slow
def test_near_arc_radius_is_certified_by_the_reference():
    q, m1, m2 = _near_arc_inputs()
    R = np.asarray(directional_radius(q, m1, m2))
    for i in range(len(q) - 1):  # the last point defeats the reference's own solver
        p_true = theorem3_reference.reference_p_lower(float(R[i]), float(q[i]), float(m1[i]), float(m2[i]))
        assert p_true >= 0.5 - 1e-12, (NEAR_ARC[i], R[i], p_true)


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_dense_acceptance_grid_p_lower():
    worst_abs, worst_over = 0.0, -1.0
    for q in (0.5, 0.6, 0.9, 0.99, 0.999, 0.99999):
        M = _M(q)
        for m1f in (-1.0, -0.6, -0.2, 0.0, 0.3, 0.7):
            for m2f in (0.0, 1e-8, 0.1, 0.5, 0.9, 1.0):
                m2 = m2f * M
                if max(m1f, 0.0) ** 2 + m2f**2 > 1.0:
                    continue
                for r in (0.01, 0.5, 1.5, 4.0):
                    ours = float(theorem3_p_lower(r, q, m1f * M, m2))
                    ref = theorem3_reference.reference_p_lower(r, q, m1f * M, m2)
                    # The dual value deliberately gives up _QUAD_ERR * sum(lam) for the quadrature
                    # error of the constraint integrals (up to 1.2e-8 at q = 0.99999, r = 4, where
                    # lam ~ 1e5); that conservative shift is allowed on top of the 1e-8.
                    lam = np.asarray(theorem3_coefficients(r, q, m1f * M, m2).lam)
                    allowance = QUAD_ERR * float(np.sum(lam))
                    worst_abs = max(worst_abs, abs(ours - ref) - (allowance if ours < ref else 0.0))
                    worst_over = max(worst_over, ours - ref)
    print(f"p_lower: max |err| {worst_abs:.2e}, max over {worst_over:.2e}")
    assert worst_abs <= P_ABS_TOL and worst_over <= OVER_TOL


@pytest.mark.slow
def test_dense_acceptance_grid_radius():
    worst_rel, worst_over = 0.0, -1.0
    for q in (0.5001, 0.6, 0.9, 0.99, 0.999, 0.99999):
        M = _M(q)
        for m1f in (-1.0, -0.5, 0.0, 0.4):
            for m2f in (0.0, 1e-8, 0.3, 0.8):
                if max(m1f, 0.0) ** 2 + m2f**2 > 0.99:
                    continue
                ours = float(directional_radius(q, m1f * M, m2f * M))
                ref = theorem3_reference.reference_directional_radius(q, m1f * M, m2f * M)
                worst_rel = max(worst_rel, abs(ours - ref) / ref)
                worst_over = max(worst_over, (ours - ref) / ref)
    print(f"radius: max rel err {worst_rel:.2e}, max rel over {worst_over:.2e}")
    assert worst_rel <= R_REL_TOL and worst_over <= OVER_TOL
