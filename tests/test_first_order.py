"""Tests of smoothjax.first_order (first paper, Corollaries 3.2-3.4).

Expected values come from tests/theorem3_reference.py (scipy quad + root finding, independent of
smoothjax.theorem3), from brute force over the vertices of the threat model's unit ball with
explicit gradient vectors (checks which direction is worst, i.e. the corollaries' derivation), and
from the l2 (SoS, second paper Theorem 1) closed form.

Two solvers run the corollaries: ``reference`` replaces ``smoothjax.theorem3.directional_radius``
by the scipy reference through ``jax.pure_callback`` (tests the mapping bounds -> (m1, m2) -> radius
on its own, also under jit/vmap), ``jax`` uses the real solver.
"""

from __future__ import annotations

import itertools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import smoothjax.first_order as first_order
from smoothjax.theorem3 import DirectionalRadiusSolution

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import theorem3_reference as ref  # noqa: E402

RTOL_REF = 1e-7  # solver vs reference (the acceptance tolerance of the directional radius)


def _reference_directional_radius(q, m1, m2):
    def host(q, m1, m2):
        q, m1, m2 = np.broadcast_arrays(np.asarray(q, float), np.asarray(m1, float), np.asarray(m2, float))
        out = np.array([ref.reference_directional_radius(float(a), float(b), float(c))
                        for a, b, c in zip(q.ravel(), m1.ravel(), m2.ravel())])
        return out.reshape(q.shape)

    q, m1, m2 = jnp.broadcast_arrays(jnp.asarray(q, jnp.float64), m1, m2)
    return jax.pure_callback(host, jax.ShapeDtypeStruct(q.shape, jnp.float64), q, m1, m2,
                             vmap_method="broadcast_all")


def _reference_directional_radius_solution(q, m1, m2):
    r = _reference_directional_radius(q, m1, m2)
    return DirectionalRadiusSolution(radius=r, converged=jnp.ones(r.shape, bool), steps=jnp.zeros(r.shape, jnp.int32),
                                     evaluations=jnp.zeros(r.shape, jnp.int32))


def _use_reference(monkeypatch):
    """Swap the scipy reference in for the directional-radius solver first_order imports (the
    solver is part of the key of first_order's compilation cache, so no trace is shared)."""
    monkeypatch.setattr(first_order, "directional_radius", _reference_directional_radius)
    monkeypatch.setattr(first_order, "directional_radius_solution", _reference_directional_radius_solution)


@pytest.fixture(params=["reference", "jax"])
def solver(request, monkeypatch):
    if request.param == "reference":
        _use_reference(monkeypatch)
    return request.param


@pytest.fixture
def reference_solver(monkeypatch):
    """For tests of this module's own logic under jit / vmap (compiling the real solver for every
    new trace would cost seconds each; the real solver under jit is covered by
    test_jit_with_the_real_solver and the gradient tests)."""
    _use_reference(monkeypatch)
    return "reference"


def max_grad(p, sigma):
    """Largest ||grad g||_2 (1/input units) at g = p."""
    return stats.norm.pdf(stats.norm.ppf(p)) / sigma


# ----------------------------------------------------------------------------- brute force
def vertex_radius_brute_force(p, grad, sigma, vertices):
    """min over the ball's vertices delta of sigma R(q, sigma v.grad, sigma |grad_perp|) / ||delta||_2."""
    best = math.inf
    for delta in vertices:
        length = np.linalg.norm(delta)
        v = delta / length
        along = float(v @ grad)
        perp = math.sqrt(max(float(grad @ grad) - along**2, 0.0))
        best = min(best, sigma * ref.reference_directional_radius(p, sigma * along, sigma * perp) / length)
    return best


def l1_vertices(d):
    eye = np.eye(d)
    return list(eye) + list(-eye)


def linf_vertices(d):
    return [np.array(s, float) for s in itertools.product((-1.0, 1.0), repeat=d)]


GRADS = {  # in units of the largest possible gradient at p, times a factor < 1
    "spread": np.array([0.3, -0.5, 0.2, 0.4]),
    "peaked": np.array([0.05, -0.9, 0.05, 0.1]),
    "flat": np.array([0.3, 0.3, -0.3, 0.3]),
}
GRAD_PARAMS = [pytest.param(name, marks=() if name == "spread" else pytest.mark.slow, id=name) for name in GRADS]


@pytest.mark.parametrize("name", GRAD_PARAMS)
def test_l1_equals_worst_vertex_for_exact_norms(solver, name):
    """With exact norms the corollary is the minimum over the l1 ball's vertices (Prop. 1 + 2)."""
    p, sigma = 0.85, 0.5
    direction = GRADS[name] / np.linalg.norm(GRADS[name])
    grad = 0.8 * max_grad(p, sigma) * direction
    expected = vertex_radius_brute_force(p, grad, sigma, l1_vertices(4))
    ours = float(first_order.l1_radius(p, np.linalg.norm(grad), np.max(np.abs(grad)), sigma=sigma))
    assert ours == pytest.approx(expected, rel=RTOL_REF)


@pytest.mark.parametrize("name", GRAD_PARAMS)
def test_linf_equals_worst_vertex_for_exact_norms(solver, name):
    p, sigma, d = 0.9, 0.25, 4
    direction = GRADS[name] / np.linalg.norm(GRADS[name])
    grad = 0.6 * max_grad(p, sigma) * direction
    expected = vertex_radius_brute_force(p, grad, sigma, linf_vertices(d))
    ours = float(first_order.linf_radius(p, np.linalg.norm(grad), np.sum(np.abs(grad)), dim=d, sigma=sigma))
    assert ours == pytest.approx(expected, rel=RTOL_REF)


def test_subspace_matches_brute_force_on_a_coordinate_subspace(solver):
    """S = first 3 of 5 coordinates; p = 1, 2, inf against the vertices of the ball inside S."""
    p, sigma = 0.8, 1.0
    u = np.array([0.5, -0.3, 0.1, 0.6, -0.5])
    grad = 0.7 * max_grad(p, sigma) * u / np.linalg.norm(u)
    proj = grad[:3]
    pad = lambda vs: [np.concatenate([v, np.zeros(2)]) for v in vs]  # noqa: E731
    l2 = np.linalg.norm(grad)
    ours1 = float(first_order.subspace_radius(p, l2, np.max(np.abs(proj)), sigma=sigma, p=1))
    assert ours1 == pytest.approx(vertex_radius_brute_force(p, grad, sigma, pad(l1_vertices(3))), rel=RTOL_REF)
    oursi = float(first_order.subspace_radius(p, l2, np.sum(np.abs(proj)), sigma=sigma, p=math.inf, subspace_dim=3))
    assert oursi == pytest.approx(vertex_radius_brute_force(p, grad, sigma, pad(linf_vertices(3))), rel=RTOL_REF)
    # p = 2: worst direction -P_S grad / |P_S grad| (the "vertex" of the l2 ball in S)
    ours2 = float(first_order.subspace_radius(p, l2, np.linalg.norm(proj), sigma=sigma, p=2))
    v = -np.concatenate([proj, np.zeros(2)]) / np.linalg.norm(proj)
    assert ours2 == pytest.approx(vertex_radius_brute_force(p, grad, sigma, [v]), rel=RTOL_REF)
    # and no other unit direction in S is worse (random directions)
    rng = np.random.default_rng(0)
    others = [np.concatenate([u / np.linalg.norm(u), np.zeros(2)]) for u in rng.standard_normal((4, 3))]
    assert vertex_radius_brute_force(p, grad, sigma, others) >= ours2 * (1 - 1e-9)


def test_soundness_with_loose_bounds(solver):
    """Looser bounds (smaller l2 lower, larger dual upper) never give a larger radius than exact ones."""
    p, sigma = 0.85, 0.5
    grad = 0.8 * max_grad(p, sigma) * GRADS["spread"] / np.linalg.norm(GRADS["spread"])
    exact = vertex_radius_brute_force(p, grad, sigma, l1_vertices(4))
    l2, linf = np.linalg.norm(grad), np.max(np.abs(grad))
    loose = np.asarray(first_order.l1_radius(p, l2 * np.array([0.5, 0.9, 1.0]), linf * np.array([1.0, 1.1, 2.0]),
                                             sigma=sigma))
    assert np.all(loose <= exact * (1 + 1e-9))


# ----------------------------------------------------------------------------- identities
def sos_radius_reference(p, grad_norm_upper, sigma):
    return sigma * ref.sos_radius_dimensionless(p, sigma * grad_norm_upper)


CASES = [(0.7, 0.3, 0.25), (0.9, 0.6, 0.5), (0.99, 0.2, 1.0), (0.999, 0.9, 0.12)]


@pytest.mark.parametrize("p,frac,sigma", CASES)
def test_identities_against_l2(solver, p, frac, sigma):
    big = max_grad(p, sigma)
    l2_upper = frac * big
    l2_lower = 0.9 * l2_upper
    sos = sos_radius_reference(p, l2_upper, sigma)
    # subspace p = 2 over the whole space with b = ||grad||_2 upper bound is the SoS radius
    r2 = float(first_order.subspace_radius(p, l2_lower, l2_upper, sigma=sigma, p=2))
    assert r2 == pytest.approx(sos, rel=RTOL_REF)
    # the l1 ball of radius eps lies in the l2 ball of radius eps: l1 radius >= l2 radius
    linf_upper = 0.5 * l2_upper  # consistent with ||grad||_inf <= ||grad||_2 <= l2_upper
    assert float(first_order.l1_radius(p, l2_lower, linf_upper, sigma=sigma)) >= sos * (1 - 1e-9)
    # the linf ball of radius eps lies in the l2 ball of radius eps sqrt(d): linf >= l2 / sqrt(d)
    d = 49
    l1_upper = 3.0 * l2_upper  # <= sqrt(d) l2_upper
    assert float(first_order.linf_radius(p, l2_lower, l1_upper, dim=d, sigma=sigma)) >= sos / math.sqrt(d) * (1 - 1e-9)
    # and the l2 radius is at least Cohen's
    assert sos >= sigma * stats.norm.ppf(p) * (1 - 1e-12)


def test_full_space_subspace_equals_l1_and_linf(solver):
    p, l2, sigma = np.array([0.8, 0.95]), np.array([0.2, 0.1]), 0.5
    dual = np.array([0.15, 0.12])
    np.testing.assert_allclose(first_order.subspace_radius(p, l2, dual, sigma=sigma, p=1),
                               first_order.l1_radius(p, l2, dual, sigma=sigma), rtol=1e-12)
    np.testing.assert_allclose(first_order.subspace_radius(p, l2, 3 * dual, sigma=sigma, p="inf", subspace_dim=16),
                               first_order.linf_radius(p, l2, 3 * dual, dim=16, sigma=sigma), rtol=1e-12)


def test_cohen_limit(solver):
    """No gradient information beyond an upper bound at the maximum: Cohen's radius sigma Phi^-1(p)."""
    p, sigma = 0.9, 0.5
    big = max_grad(p, sigma)
    cohen = sigma * stats.norm.ppf(p)
    assert float(first_order.l1_radius(p, 0.0, big, sigma=sigma)) == pytest.approx(cohen, rel=1e-9)
    assert float(first_order.l1_radius(p, 0.0, 3 * big, sigma=sigma)) == pytest.approx(cohen, rel=1e-9)


def test_monotone(solver):
    p, sigma = 0.85, 0.5
    big = max_grad(p, sigma)
    base = float(first_order.l1_radius(p, 0.5 * big, 0.3 * big, sigma=sigma))
    assert float(first_order.l1_radius(p + 0.05, 0.5 * big, 0.3 * big, sigma=sigma)) > base
    assert float(first_order.l1_radius(p, 0.6 * big, 0.3 * big, sigma=sigma)) > base
    assert float(first_order.l1_radius(p, 0.5 * big, 0.35 * big, sigma=sigma)) < base
    lin = [float(first_order.linf_radius(p, 0.5 * big, u * big, dim=64, sigma=sigma)) for u in (0.6, 1.0, 2.0)]
    assert lin[0] > lin[1] > lin[2]


def test_below_half_and_infinite(solver):
    assert float(first_order.l1_radius(0.5, 0.1, 0.1, sigma=0.5)) == 0.0
    assert float(first_order.linf_radius(0.3, 0.1, 0.2, dim=4, sigma=0.5)) == 0.0
    # gradient orthogonal to S at its maximum: g cannot change along S
    p, sigma = 0.8, 0.5
    assert float(first_order.subspace_radius(p, max_grad(p, sigma), 0.0, sigma=sigma, p=2)) == math.inf


# ----------------------------------------------------------------------------- jit / vmap / bad input
def test_jit_vmap_match_eager(reference_solver):
    p = jnp.array([0.6, 0.8, 0.95, 0.4])
    l2 = jnp.array([0.1, 0.3, 0.2, 0.1])
    dual = jnp.array([0.05, 0.2, 0.5, 0.1])
    sigma = 0.5
    l1 = lambda p, l2, dual, sigma: first_order.l1_radius(p, l2, dual, sigma=sigma)  # noqa: E731
    eager = np.asarray(l1(p, l2, dual, sigma))
    jitted = np.asarray(jax.jit(l1)(p, l2, dual, sigma))
    mapped = np.asarray(jax.vmap(l1, in_axes=(0, 0, 0, None))(p, l2, dual, sigma))
    np.testing.assert_allclose(jitted, eager, rtol=1e-12)
    np.testing.assert_allclose(mapped, eager, rtol=1e-12)
    assert eager[3] == 0.0
    lin = jax.jit(lambda p, l2, l1, dim, sigma: first_order.linf_radius(p, l2, l1, dim=dim, sigma=sigma),
                  static_argnums=3)(p, l2, 4 * dual, 16, sigma)
    np.testing.assert_allclose(lin, first_order.linf_radius(p, l2, 4 * dual, dim=16, sigma=sigma), rtol=1e-12)
    sub = jax.jit(lambda p, l2, b, sigma: first_order.subspace_radius(p, l2, b, sigma=sigma, p="inf", subspace_dim=16))(
        p, l2, 4 * dual, sigma)
    np.testing.assert_allclose(sub, lin, rtol=1e-12)
    # a larger batch with a leading axis
    big = jnp.tile(p, (3, 1))
    np.testing.assert_allclose(first_order.l1_radius(big, l2, dual, sigma=sigma), np.tile(eager, (3, 1)), rtol=1e-12)


def test_jit_with_the_real_solver():
    p = jnp.array([0.6, 0.8, 0.95, 0.4])
    l2 = jnp.array([0.1, 0.3, 0.2, 0.1])
    dual = jnp.array([0.05, 0.2, 0.5, 0.1])
    eager = np.asarray(first_order.l1_radius(p, l2, dual, sigma=0.5))
    jitted = np.asarray(jax.jit(lambda p, l2, dual: first_order.l1_radius(p, l2, dual, sigma=0.5))(p, l2, dual))
    np.testing.assert_allclose(jitted, eager, rtol=1e-12)
    expected = [0.5 * ref.reference_directional_radius(float(a), -0.5 * float(c),
                                                       0.5 * math.sqrt(max(float(b)**2 - float(c)**2, 0)))
                if a > 0.5 else 0.0 for a, b, c in zip(p, l2, dual)]
    np.testing.assert_allclose(eager, expected, rtol=RTOL_REF)


BAD = [
    ("p>1", dict(p_lower=1.2)),
    ("negative l2", dict(grad_l2_lower=-0.1)),
    ("negative dual", dict(dual=-0.1)),
    ("sigma 0", dict(sigma=0.0)),
    ("nan", dict(grad_l2_lower=math.nan)),
    ("l2 above max", dict(grad_l2_lower=1.0)),  # sigma l2 = 0.5 > M(0.8) = 0.28
]


@pytest.mark.parametrize("name,kw", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_outside_jit_and_is_nan_inside(reference_solver, name, kw):
    args = dict(p_lower=0.8, grad_l2_lower=0.2, dual=0.3, sigma=0.5)
    args.update(kw)
    call = (args["p_lower"], args["grad_l2_lower"], args["dual"])
    sigma = args["sigma"]
    with pytest.raises(ValueError):
        first_order.l1_radius(*call, sigma=sigma)
    with pytest.raises(ValueError):
        first_order.subspace_radius(*call, sigma=sigma, p=2)
    assert np.isnan(float(jax.jit(lambda *a: first_order.l1_radius(*a[:3], sigma=a[3]))(*call, sigma)))


def test_linf_contradiction_l1_below_l2(reference_solver):
    with pytest.raises(ValueError):
        first_order.linf_radius(0.8, 0.3, 0.2, dim=16, sigma=0.5)
    linf = lambda p, l2, l1, dim, sigma: first_order.linf_radius(p, l2, l1, dim=dim, sigma=sigma)  # noqa: E731
    assert np.isnan(float(jax.jit(linf, static_argnums=3)(0.8, 0.3, 0.2, 16, 0.5)))
    # dim traced (an array) works too
    assert np.isnan(float(jax.jit(linf)(0.8, 0.3, 0.2, 16.0, 0.5)))


def test_bad_static_arguments():
    with pytest.raises(ValueError):
        first_order.subspace_radius(0.8, 0.1, 0.1, sigma=0.5, p=3)
    with pytest.raises(ValueError):
        first_order.subspace_radius(0.8, 0.1, 0.1, sigma=0.5, p=math.inf)
    with pytest.raises(ValueError):
        first_order.linf_radius(0.8, 0.1, 0.2, dim=0, sigma=0.5)


def test_slack_at_the_maximum_gradient(solver):
    """A bound equal to M/sigma up to rounding is accepted (clipped), not flagged."""
    p, sigma = 0.8, 0.3
    big = max_grad(p, sigma) * (1 + 1e-12)
    r = float(first_order.l1_radius(p, big, 0.5 * big, sigma=sigma))
    assert np.isfinite(r) and r > sigma * stats.norm.ppf(p)


# ----------------------------------------------------------------------------- gradients (real solver)
@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_grad_through_radii():
    """jax.grad of l1 + linf radius against central differences of the same function (real solver)."""
    p, l2, dual, sigma = 0.85, 0.4, 0.25, 0.5

    def loss(p, l2, dual):
        return first_order.l1_radius(p, l2, dual, sigma=sigma) + first_order.linf_radius(p, l2, 4 * dual, dim=64,
                                                                                         sigma=sigma)

    g = jax.grad(loss, argnums=(0, 1, 2))(p, l2, dual)
    h = 1e-6
    fd = [(loss(p + h, l2, dual) - loss(p - h, l2, dual)) / (2 * h),
          (loss(p, l2 + h, dual) - loss(p, l2 - h, dual)) / (2 * h),
          (loss(p, l2, dual + h) - loss(p, l2, dual - h)) / (2 * h)]
    np.testing.assert_allclose(np.array(g), np.array(fd), rtol=1e-5)
    assert g[0] > 0 and g[1] > 0 and g[2] < 0
    # below 1/2 and where l2 <= dual (m2 = 0): finite (zero / one-sided) gradients
    g_half = jax.grad(lambda a: first_order.l1_radius(a, l2, dual, sigma=sigma))(0.4)
    assert g_half == 0.0
    g_band = jax.grad(lambda b: first_order.l1_radius(p, b, dual, sigma=sigma))(0.2)
    assert np.isfinite(g_band)


@pytest.mark.slow
def test_jit_vmap_grad_real_solver():
    l2, dual, sigma = 0.4, 0.25, 0.5
    grad = jax.grad(lambda a: first_order.l1_radius(a, l2, dual, sigma=sigma))
    gv = jax.jit(jax.vmap(grad))(jnp.array([0.3, 0.7, 0.85]))
    assert np.all(np.isfinite(gv)) and gv[0] == 0.0 and gv[1] > 0 and gv[2] > 0


def test_l2_case_agrees_with_certificates_sos_radius(solver):
    """Corollary 3.1 consistency: subspace p = 2 over the whole space with b = ||grad||_2 upper bound."""
    try:
        from smoothjax.certificates import sos_radius
    except ImportError:
        pytest.skip("smoothjax.certificates.sos_radius is not available yet")
    p = np.array([0.7, 0.9, 0.99])
    sigma = 0.5
    upper = np.array([0.3, 0.6, 0.9]) * max_grad(p, sigma)
    ours = np.asarray(first_order.subspace_radius(p, 0.5 * upper, upper, sigma=sigma, p=2))
    np.testing.assert_allclose(ours, np.asarray(sos_radius(p, upper, sigma)), rtol=RTOL_REF)


# ----------------------------------------------------------------------------- subspace_radius_solution
def _pipeline_like(n=12, seed=0):
    """(p_lower, l2_lower, dual, sigma, subspace_dim) shaped as the pipeline's call: p_lower[None]
    against a [k, n] block of dual norms and subspace dimensions."""
    rng = np.random.default_rng(seed)
    sigma = 0.25
    p = rng.uniform(0.3, 0.999, n)
    big = max_grad(p, sigma)
    l2 = rng.uniform(0.1, 0.9, n) * big
    dims = np.array([[4.0], [16.0]])
    dual = rng.uniform(0.5, 3.0, (2, n)) * l2 * np.sqrt(dims)
    return p[None], l2[None], dual, sigma, dims


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_subspace_radius_solution_is_the_radius_and_converged():
    """Real solver: the radius is subspace_radius's bit for bit, converged is True everywhere
    (including p_lower <= 1/2, where no solve runs) with the radius's shape."""
    p, l2, dual, sigma, dims = _pipeline_like()
    assert np.any(p <= 0.5)
    sol = first_order.subspace_radius_solution(p, l2, dual, sigma=sigma, p=math.inf, subspace_dim=dims)
    radius = first_order.subspace_radius(p, l2, dual, sigma=sigma, p=math.inf, subspace_dim=dims)
    np.testing.assert_array_equal(np.asarray(sol.radius), np.asarray(radius))
    assert sol.converged.shape == radius.shape == (2, 12) and sol.converged.dtype == bool
    assert np.all(np.asarray(sol.converged))
    sol2 = first_order.subspace_radius_solution(p, l2, dual[0], sigma=sigma, p=2)
    np.testing.assert_array_equal(np.asarray(sol2.radius), np.asarray(first_order.subspace_radius(
        p, l2, dual[0], sigma=sigma, p=2)))


def test_subspace_radius_solution_passes_on_the_solver_convergence(monkeypatch):
    """converged is the directional solver's where a solve ran and True elsewhere (p_lower <= 1/2,
    contradictory bounds); inside jit the contradictory entry is NaN."""
    def never_converges(q, m1, m2):
        sol = _reference_directional_radius_solution(q, m1, m2)
        return DirectionalRadiusSolution(radius=sol.radius, converged=jnp.zeros(sol.radius.shape, bool),
                                         steps=sol.steps, evaluations=sol.evaluations)

    monkeypatch.setattr(first_order, "directional_radius_solution", never_converges)
    p = np.array([0.8, 0.4, 0.9, 0.8])
    l2 = np.array([0.2, 0.2, 0.1, 1.0])  # the last contradicts p_lower (sigma l2 > M)
    dual = np.array([0.3, 0.3, 0.2, 0.3])
    fn = jax.jit(lambda p, l2, dual: first_order.subspace_radius_solution(p, l2, dual, sigma=0.5, p=2))
    sol = fn(p, l2, dual)
    np.testing.assert_array_equal(np.asarray(sol.converged), [False, True, False, True])
    radius = np.asarray(sol.radius)
    assert radius[1] == 0.0 and np.isnan(radius[3]) and np.all(radius[[0, 2]] > 0)
    with pytest.raises(ValueError):
        first_order.subspace_radius_solution(p, l2, dual, sigma=0.5, p=2)


def test_positional_sigma_and_dim_still_work_with_a_deprecation_warning(reference_solver):
    with pytest.warns(DeprecationWarning, match="sigma"):
        r1 = first_order.l1_radius(0.8, 0.2, 0.1, 0.5)
    assert float(r1) == float(first_order.l1_radius(0.8, 0.2, 0.1, sigma=0.5))
    with pytest.warns(DeprecationWarning, match="dim, sigma"):
        r2 = first_order.linf_radius(0.8, 0.2, 0.4, 16, 0.5)
    assert float(r2) == float(first_order.linf_radius(0.8, 0.2, 0.4, dim=16, sigma=0.5))
    with pytest.warns(DeprecationWarning, match="sigma"):
        r3 = first_order.subspace_radius(0.8, 0.2, 0.1, 0.5, p=1)
    assert float(r3) == float(r1)
    with pytest.raises(TypeError):
        first_order.l1_radius(0.8, 0.2, 0.1, 0.5, sigma=0.5)
