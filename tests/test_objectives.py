"""Tests of smoothjax.surrogates and smoothjax.objectives: surrogates against closed forms / scipy
quadrature on a linear (half-space) logit model; every objective finite and differentiable at the
edges (zero gradients, p at 1/2 and 1, saturated softmax, gradient norms at their maximum) in
float32 and float64 under jit and vmap, and with a float32 model while x64 is on; the baselines
(MACER, Consistency, SmoothAdv) against hand computations in NumPy; a training step decreases the
loss; determinism given the key; errors for bad names/options.

References are independent of the code under test: for logits ``[0, k (w.x + b)]`` with unit ``w``,
softmax(beta * logits)_1 = sigmoid(beta k s) with ``s = w.x + b``, so the soft smoothed probability
is the 1-D integral ``E[sigmoid(beta k (s + sigma Z))]`` (scipy.integrate.quad), its gradient is
``w d/ds`` of that integral, and the smoothed hard classifier of the half-space is ``Phi(s / sigma)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, special, stats

from smoothjax import objectives as obj

SIGMA = 0.5
DIM = 5


def _unit(dim=DIM, seed=0):
    w = np.random.default_rng(seed).standard_normal(dim)
    return w / np.linalg.norm(w)


def linear_apply(params, x):
    """Two-class linear logits ``[0, k (w.x + b)]``; params = {"w": [d], "b": [], "k": []}."""
    s = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    z = params["k"] * s
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)


def dense_apply(params, x):
    """A general linear model ``x @ W + c`` (C classes), used for the edge and training tests."""
    return x.reshape(x.shape[0], -1) @ params["W"] + params["c"][None]


def soft_p_reference(s, scale, sigma):
    """E[sigmoid(scale (s + sigma Z))], Z ~ N(0, 1), by adaptive quadrature."""
    f = lambda z: special.expit(scale * (s + sigma * z)) * stats.norm.pdf(z)
    return integrate.quad(f, -12, 12, points=[-s / sigma], limit=200, epsabs=1e-13)[0]


def soft_dp_ds_reference(s, scale, sigma):
    """d/ds E[sigmoid(scale (s + sigma Z))] = E[scale sigmoid'(scale (s + sigma Z))]."""

    def f(z):
        t = special.expit(scale * (s + sigma * z))
        return scale * t * (1 - t) * stats.norm.pdf(z)

    return integrate.quad(f, -12, 12, points=[-s / sigma], limit=200, epsabs=1e-13)[0]


def _linear_params(b, k=1.0):
    return {"w": jnp.asarray(_unit()), "b": jnp.asarray(b), "k": jnp.asarray(k)}


# ------------------------------------------------------------------------------------------
# Surrogates against independent references
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["softmax", "sigmoid"])
@pytest.mark.parametrize("b", [0.0, 0.3, -0.2, 0.9])
def test_soft_probability_low_temperature_matches_half_space(b, link):
    """beta -> large: the soft smoothed p of the half-space tends to Phi(s / sigma) (within MC error)."""
    params = _linear_params(b, k=1.0)
    x = jnp.zeros((1, DIM))
    n, beta = 40000, 1e4
    p = obj.soft_smoothed_probabilities(
        linear_apply, params, x, jax.random.key(0), sigma=SIGMA, num_samples=n, beta=beta, link=link
    )
    exact = stats.norm.cdf(b / SIGMA)
    # temperature bias <= pi^2 / (6 (beta sigma)^2) * max|phi'| ~ 1e-8, negligible
    tol = 5 * math.sqrt(exact * (1 - exact) / n) + 1e-6
    assert abs(float(p[0, 1]) - exact) < tol
    assert abs(float(p[0, 0]) - (1 - exact)) < tol


@pytest.mark.parametrize("b,beta", [(0.0, 1.0), (0.4, 2.0), (-0.3, 4.0)])
def test_soft_probability_matches_quadrature(b, beta):
    """At finite temperature: E[sigmoid(beta k s)] by quad, within 5 MC standard deviations."""
    params = _linear_params(b, k=1.5)
    x = jnp.zeros((1, DIM))
    n = 20000
    p = obj.soft_smoothed_probabilities(linear_apply, params, x, jax.random.key(1), sigma=SIGMA, num_samples=n,
                                        beta=beta)
    ref = soft_p_reference(b, beta * 1.5, SIGMA)
    # per-sample values lie in [0, 1] with std <= 1/2; use the reference-free bound
    assert abs(float(p[0, 1]) - ref) < 5 * 0.5 / math.sqrt(n)
    np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("method", ["stein", "autodiff"])
@pytest.mark.parametrize("b", [0.0, 0.4])
def test_smoothed_gradient_matches_quadrature(method, b):
    """grad_x p_1 = w * d/ds E[sigmoid(scale (s + sigma Z))] for the linear model."""
    scale = 3.0
    params = _linear_params(b, k=scale)
    x = jnp.zeros((1, DIM))
    n = 40000
    g = obj.smoothed_gradient(
        linear_apply, params, x, jnp.array([1]), jax.random.key(2), sigma=SIGMA, num_samples=n, method=method
    )
    ref = soft_dp_ds_reference(b, scale, SIGMA) * _unit()
    # Stein with antithetic pairs: |per-pair estimate_i| <= |eps_i| / (2 sigma^2) -> std <= 1/(2 sigma sqrt(n/2));
    # autodiff: per-sample |grad_i| <= scale/4 |w_i| -> std <= scale/4/sqrt(n).
    std = 1 / (2 * SIGMA * math.sqrt(n / 2)) if method == "stein" else scale / 4 / math.sqrt(n)
    np.testing.assert_allclose(np.asarray(g[0]), ref, atol=5 * std)
    l2, l1, linf = obj.gradient_norms(g)
    gn = np.asarray(g[0])
    np.testing.assert_allclose(float(l2[0]), np.linalg.norm(gn), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(float(l1[0]), np.abs(gn).sum(), rtol=1e-10)
    np.testing.assert_allclose(float(linf[0]), np.abs(gn).max(), rtol=1e-10)


def test_gradient_at_max_for_hard_half_space():
    """A near-hard half-space has the largest gradient any smoothed classifier can have at its p."""
    b = 0.3
    params = _linear_params(b, k=1e3)
    x = jnp.zeros((1, DIM))
    n = 40000
    g = obj.smoothed_gradient(
        linear_apply, params, x, jnp.array([1]), jax.random.key(3), sigma=SIGMA, num_samples=n, method="stein"
    )
    l2 = float(obj.gradient_norms(g)[0][0])
    top = stats.norm.pdf(b / SIGMA) / SIGMA  # phi(Phi^-1(p)) / sigma at p = Phi(b / sigma)
    assert abs(l2 - top) < 5 * math.sqrt(DIM) / (2 * SIGMA * math.sqrt(n / 2))


def test_gradient_norm_of_zero_is_differentiable():
    g = jnp.zeros((2, 3, 3))
    val, grad = jax.value_and_grad(lambda v: jnp.sum(jnp.stack(obj.gradient_norms(v))))(g)
    assert float(val) == 0.0
    assert np.all(np.isfinite(np.asarray(grad)))


def test_cohen_soft_radius_against_scipy():
    p = np.linspace(0.01, 0.9998, 201)  # inside [p_eps, 1 - p_eps]
    r = obj.soft_radius("cohen_l2", p, 0.25)
    np.testing.assert_allclose(np.asarray(r), 0.25 * stats.norm.ppf(p), rtol=1e-12, atol=1e-14)
    d = jax.vmap(jax.grad(lambda q: obj.soft_radius("cohen_l2", q, 0.25)))(jnp.asarray(p))
    np.testing.assert_allclose(np.asarray(d), 0.25 / stats.norm.pdf(stats.norm.ppf(p)), rtol=1e-9)
    # clipped at the edges: finite value, zero gradient outside [p_eps, 1 - p_eps]
    edge = jnp.array([0.0, 0.5, 1.0 - 1e-12, 1.0])
    r_edge = obj.soft_radius("cohen_l2", edge, 0.25)
    d_edge = jax.vmap(jax.grad(lambda q: obj.soft_radius("cohen_l2", q, 0.25)))(edge)
    assert np.all(np.isfinite(np.asarray(r_edge))) and np.all(np.isfinite(np.asarray(d_edge)))
    np.testing.assert_allclose(float(r_edge[-1]), 0.25 * stats.norm.ppf(1 - obj.P_EPS), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Radii at the edges (the gradient-norm clipping) and the zero-gradient regression
# ------------------------------------------------------------------------------------------

# Objectives / radii that go through the Theorem 3 solver compile for a minute or more on 2 cores.
THEOREM3 = {"first_order_l1", "first_order_linf"}


def _slow_if_theorem3(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in THEOREM3 else n for n in names]


# the default run checks float32 (what training runs in without x64); float64 runs with -m slow
# where a compilation takes tens of seconds
X64_SLOW = [pytest.param(False, id="float32"), pytest.param(True, id="float64", marks=pytest.mark.slow)]


@pytest.mark.parametrize("x64", [pytest.param(False, id="float32", marks=pytest.mark.slow),
                                 pytest.param(True, id="float64")])
def test_first_order_l1_radius_gradient_finite_at_zero_input_gradient(x64):
    """Regression: grad of soft_radius('first_order_l1') at an all-zero input gradient was NaN."""
    with jax.enable_x64(x64):
        def radius(g, p):
            l2, _, linf = obj.gradient_norms(g)
            return jnp.sum(obj.soft_radius("first_order_l1", p, 0.25, grad_l2=l2, grad_linf=linf))

        g0 = jnp.zeros((3, 4))
        p = jnp.array([0.9, 1.0, 0.5])  # generic, saturated softmax (p = 1), and p = 1/2
        val, (dg, dp) = jax.jit(jax.value_and_grad(radius, argnums=(0, 1)))(g0, p)
        assert np.isfinite(float(val))
        assert np.all(np.isfinite(np.asarray(dg))) and np.all(np.isfinite(np.asarray(dp)))
        # p = 0.9 with no gradient information: the worst-case ratio linf = l2 at the smallest l2
        top = stats.norm.pdf(stats.norm.ppf(0.9)) / 0.25
        ref = obj.soft_radius("first_order_l1", 0.9, 0.25, grad_l2=obj.GRAD_EPS * top, grad_linf=obj.GRAD_EPS * top)
        np.testing.assert_allclose(float(radius(g0[:1], p[:1])), float(ref), rtol=1e-5)


def _edge_grid():
    """(p, l2 as a fraction of its maximum M(p), dual-norm ratio, p_both as a fraction of p)."""
    ps = [0.0, 0.3, 0.5, 0.5 + 1e-5, 0.5001, 0.7, 0.99, 1 - 1e-9, 1.0]
    fracs = [0.0, 1e-30, 1e-3, 0.5, 1.0, 2.0]  # zero, denormal-small, floor, interior, at / above max
    rows = [(p, f, r, b) for p in ps for f in fracs for r, b in ((0.0, 0.0), (1.0, 1.0), (0.4, 0.9))]
    return np.array(rows).T


@pytest.mark.parametrize("x64", X64_SLOW)
@pytest.mark.parametrize("radius", _slow_if_theorem3(obj.RADII))
def test_soft_radius_finite_at_edges_under_jit_and_vmap(radius, x64):
    with jax.enable_x64(x64):
        p, frac, ratio, both = (jnp.asarray(a) for a in _edge_grid())
        sigma, dim = 0.25, 16
        inner = np.clip(np.asarray(p), 1e-300, 1 - 1e-16)
        top = jnp.where((p > 0) & (p < 1), stats.norm.pdf(stats.norm.ppf(inner)) / sigma, 0.0)
        l2 = frac * top

        def r(p, l2, ratio, both):
            # linf = ratio * l2 (at most l2), l1 = (1 + ratio (sqrt(d) - 1)) * l2 (in [l2, sqrt(d) l2])
            return obj.soft_radius(radius, p, sigma, grad_l2=l2, grad_linf=ratio * l2,
                                   grad_l1=(1 + ratio * (math.sqrt(dim) - 1)) * l2, dim=dim, p_both=both * p)

        vals = jax.jit(jax.vmap(r))(p, l2, ratio, both)
        grads = jax.jit(jax.vmap(jax.grad(r, argnums=(0, 1, 2, 3))))(p, l2, ratio, both)
        assert np.all(np.isfinite(np.asarray(vals))), radius
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g))), radius
        # at p = 1/2 and below the higher-order radii fall back to Cohen's (<= 0 up to p_eps)
        assert np.all(np.asarray(vals)[np.asarray(p) <= 0.5] <= 1e-6)


# ------------------------------------------------------------------------------------------
# Losses: edges, training step, jit, determinism
# ------------------------------------------------------------------------------------------


def _dense_params(scale, seed=0, classes=2, dim=DIM):
    rng = np.random.default_rng(seed)
    return {"W": jnp.asarray(scale * rng.standard_normal((dim, classes))), "c": jnp.zeros(classes)}


EDGE_CASES = {
    # logits all 0 -> soft p = 1/2 exactly (two classes), gradient exactly 0
    "p_half_grad_zero": ({"W": np.zeros((DIM, 2)), "c": np.zeros(2)}, [0, 1, 0, 1]),
    # huge constant margin -> saturated softmax, p = 1 to machine precision, gradient 0
    "p_one_saturated": ({"W": np.zeros((DIM, 2)), "c": np.array([60.0, 0.0])}, [0, 1, 0, 1]),
    # steep half-space through x = -0.1 w -> near-hard classifier, gradient near its maximum
    "grad_at_max": ({"W": np.stack([np.zeros(DIM), 1e3 * _unit()], 1), "c": np.array([0.0, 100.0])}, [1, 1, 1, 1]),
    "generic": ({"W": 2.0 * np.random.default_rng(0).standard_normal((DIM, 2)), "c": np.zeros(2)}, [0, 1, 0, 1]),
}


@pytest.mark.parametrize("x64", X64_SLOW)
@pytest.mark.parametrize("name", _slow_if_theorem3(obj.OBJECTIVES))
def test_loss_finite_and_differentiable_at_edges(name, x64):
    """Value and parameter gradient finite for every edge case, all cases in one jit(vmap(...))."""
    with jax.enable_x64(x64):
        cases = list(EDGE_CASES.values())
        dtype = jnp.float64 if x64 else jnp.float32
        params = jax.tree_util.tree_map(lambda *leaves: jnp.asarray(np.stack(leaves), dtype), *[c[0] for c in cases])
        ys = jnp.asarray([c[1] for c in cases])
        x = jnp.zeros((4, DIM), dtype)
        options = {"num_samples": 8}
        if name == "smoothadv":
            options["num_steps"] = 2
        loss_fn = obj.make_objective(name, dense_apply, sigma=SIGMA, **options)
        vals, grads = jax.jit(jax.vmap(jax.value_and_grad(loss_fn), in_axes=(0, None, 0, None)))(
            params, x, ys, jax.random.key(4))
        assert np.all(np.isfinite(np.asarray(vals))), (name, np.asarray(vals))
        for leaf in jax.tree_util.tree_leaves(grads):
            assert np.all(np.isfinite(np.asarray(leaf))), (name, list(EDGE_CASES))


@pytest.mark.parametrize("name", _slow_if_theorem3(["sos_l2", "first_order_l1", "first_order_linf"]))
def test_stein_gradient_objectives_finite_at_edges(name):
    """The noise-weighted (Stein) gradient variant of the gradient radii, float32, all edge cases."""
    with jax.enable_x64(False):
        cases = list(EDGE_CASES.values())
        params = jax.tree_util.tree_map(lambda *leaves: jnp.asarray(np.stack(leaves), jnp.float32),
                                        *[c[0] for c in cases])
        ys = jnp.asarray([c[1] for c in cases])
        loss_fn = obj.make_objective(name, dense_apply, sigma=SIGMA, num_samples=8, gradient="stein")
        vals, grads = jax.jit(jax.vmap(jax.value_and_grad(loss_fn), in_axes=(0, None, 0, None)))(
            params, jnp.zeros((4, DIM), jnp.float32), ys, jax.random.key(5))
        assert np.all(np.isfinite(np.asarray(vals)))
        for leaf in jax.tree_util.tree_leaves(grads):
            assert np.all(np.isfinite(np.asarray(leaf))), name


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in THEOREM3 | {"sos_l2"} else n
                                  for n in obj.OBJECTIVES])
def test_training_step_decreases_loss_jit_and_determinism(name):
    params = _dense_params(0.3, seed=1, classes=3, dim=DIM)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((16, DIM)))
    y = jnp.asarray(np.argmax(np.asarray(x)[:, :3], axis=1))  # a linearly learnable labelling
    loss_fn = obj.make_objective(name, dense_apply, sigma=0.25, num_samples=8)
    key = jax.random.key(6)
    jitted = jax.jit(loss_fn)
    l0 = float(jitted(params, x, y, key))
    assert float(jitted(params, x, y, key)) == l0  # deterministic
    assert float(jitted(params, x, y, jax.random.key(7))) != l0
    # one small normalised gradient step (the hinge's "correct" mask is piecewise constant, so a
    # long run need not decrease this loss monotonically; a small step must)
    g = jax.jit(jax.grad(loss_fn))(params, x, y, key)
    gnorm = optax.tree.norm(g)
    params = jax.tree_util.tree_map(lambda p, d: p - 1e-3 * d / gnorm, params, g)
    l1 = float(jitted(params, x, y, key))
    assert l1 < l0, (name, l0, l1)


@pytest.mark.parametrize("name", ["macer", "cohen_l2", "dipole_l2"])
def test_float32_model_with_x64_on(name):
    """The training loop's case, under strict promotion (conftest): a float32 model while x64 is on. A
    baseline stays in float32; a certificate-aware loss adds its hinge in float64 (the radius dtype)."""
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), _dense_params(0.3, seed=1, classes=3))
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, DIM)), jnp.float32)
    y = jnp.array([0, 1, 2, 0], jnp.int32)
    loss_fn = obj.make_objective(name, dense_apply, sigma=0.25, num_samples=4)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, x, y, jax.random.key(0))
    assert loss.dtype == (jnp.float32 if name in obj.BASELINES else jnp.float64)
    assert np.isfinite(float(loss))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


def test_integer_inputs_are_noised_in_the_default_float_dtype():
    params = _dense_params(1.0, seed=2, classes=3)
    x = jnp.asarray(np.random.default_rng(3).integers(0, 4, (3, DIM)))
    key = jax.random.key(4)
    p_int = obj.soft_smoothed_probabilities(dense_apply, params, x, key, sigma=SIGMA, num_samples=8)
    p_float = obj.soft_smoothed_probabilities(dense_apply, params, x.astype(jnp.float64), key, sigma=SIGMA,
                                              num_samples=8)
    np.testing.assert_array_equal(np.asarray(p_int), np.asarray(p_float))


def test_surrogates_are_importable_from_objectives_and_the_package():
    import smoothjax
    from smoothjax import surrogates

    for name in surrogates.__all__:
        assert getattr(obj, name) is getattr(surrogates, name), name
    for name in set(surrogates.__all__) & set(smoothjax.__all__):
        assert getattr(smoothjax, name) is getattr(surrogates, name), name


def test_certified_loss_reduces_to_smoothed_cross_entropy_without_hinge():
    """weight = 0: the loss is -log mean_s softmax(f(x + eps_s))_y, checked in NumPy with the same noise."""
    params = _dense_params(1.0, seed=2, classes=3)
    x = jnp.asarray(np.random.default_rng(8).standard_normal((3, DIM)))
    y = jnp.array([0, 1, 2])
    key = jax.random.key(9)
    val = obj.certified_radius_loss(dense_apply, params, x, y, key, sigma=SIGMA, num_samples=6, weight=0.0)
    noise = SIGMA * np.asarray(jax.random.normal(key, (6,) + x.shape, x.dtype))
    logits = (np.asarray(x)[None] + noise) @ np.asarray(params["W"]) + np.asarray(params["c"])
    pbar = special.softmax(logits, axis=-1).mean(0)
    np.testing.assert_allclose(float(val), -np.mean(np.log(pbar[np.arange(3), np.asarray(y)])), rtol=1e-10)


def _noisy_numpy_logits(params, x, key, num_samples, sigma=SIGMA):
    noise = sigma * np.asarray(jax.random.normal(key, (num_samples,) + x.shape, x.dtype))
    logits = (np.asarray(x)[None] + noise) @ np.asarray(params["W"]) + np.asarray(params["c"])
    return noise, logits


def test_gaussian_objective_matches_numpy_cross_entropy():
    params = _dense_params(1.0, seed=3, classes=3)
    x = jnp.asarray(np.random.default_rng(10).standard_normal((5, DIM)))
    y = jnp.array([0, 1, 2, 0, 1])
    key = jax.random.key(11)
    val = obj.make_objective("gaussian", dense_apply, sigma=SIGMA)(params, x, y, key)
    _, logits = _noisy_numpy_logits(params, x, key, 1)
    logp = special.log_softmax(logits[0], axis=-1)
    np.testing.assert_allclose(float(val), -np.mean(logp[np.arange(5), np.asarray(y)]), rtol=1e-10)


def test_macer_matches_hand_computation():
    """MACER (Zhai et al. 2020, Algorithm 1) in NumPy/SciPy with the same noise: CE of the mean softmax
    + lam * sigma/2 * hinge(gamma - (Phi^-1(z_A) - Phi^-1(z_B))) on correct inputs, saturated ones dropped."""
    params = _dense_params(2.0, seed=4, classes=3)
    params["c"] = jnp.array([0.0, 0.0, 0.0])
    x = np.random.default_rng(12).standard_normal((8, DIM))
    x[7] = 40.0 * np.asarray(params["W"])[:, 0] / np.linalg.norm(np.asarray(params["W"])[:, 0]) ** 2  # saturated
    x = jnp.asarray(x)
    y = np.random.default_rng(13).integers(0, 3, 8)
    k, beta, gamma, lam = 6, 4.0, 3.0, 5.0
    key = jax.random.key(14)
    y = jnp.asarray(y)
    val = obj.macer_loss(dense_apply, params, x, y, key, sigma=SIGMA, num_samples=k, beta=beta, gamma=gamma, lam=lam)
    _, logits = _noisy_numpy_logits(params, x, key, k)
    yy = np.asarray(y)
    ce = -np.log(special.softmax(logits, axis=-1).mean(0)[np.arange(8), yy])
    z = special.softmax(beta * logits, axis=-1).mean(0)
    order = np.argsort(-z, axis=1)
    z_a, z_b = z[np.arange(8), order[:, 0]], z[np.arange(8), order[:, 1]]
    xi = stats.norm.ppf(z_a) - stats.norm.ppf(z_b)
    keep = (order[:, 0] == yy) & np.isfinite(xi)
    hinge = np.where(keep, np.maximum(gamma - np.where(np.isfinite(xi), xi, 0), 0), 0)
    assert keep.any() and not keep.all() and not np.isfinite(xi[7])  # both branches and a dropped input
    expected = np.mean(ce + lam * SIGMA / 2 * hinge)
    np.testing.assert_allclose(float(val), expected, rtol=1e-9)


def test_consistency_matches_hand_computation():
    """Jeong & Shin (2020): mean CE + lam mean_j KL(Fhat || F_j) + eta H(Fhat), in NumPy."""
    params = _dense_params(1.5, seed=5, classes=4)
    x = jnp.asarray(np.random.default_rng(15).standard_normal((6, DIM)))
    y = jnp.asarray(np.random.default_rng(16).integers(0, 4, 6))
    m, lam, eta = 3, 7.0, 0.3
    key = jax.random.key(17)
    val = obj.consistency_loss(dense_apply, params, x, y, key, sigma=SIGMA, num_samples=m, lam=lam, eta=eta)
    _, logits = _noisy_numpy_logits(params, x, key, m)
    f = special.softmax(logits, axis=-1)  # [m, B, C]
    fhat = f.mean(0)
    yy = np.asarray(y)
    ce = -np.log(f[:, np.arange(6), yy]).mean(0)
    kl = (fhat[None] * (np.log(fhat[None]) - np.log(f))).sum(-1).mean(0)
    ent = -(fhat * np.log(fhat)).sum(-1)
    np.testing.assert_allclose(float(val), np.mean(ce + lam * kl + eta * ent), rtol=1e-10)


def _numpy_pgd(params, x, y, noise, eps, steps, lo=None, hi=None):
    """l2 PGD on -log mean_j softmax(W^T (x + delta + e_j) + c)_y, analytic gradient of the linear model."""
    W, c = np.asarray(params["W"]), np.asarray(params["c"])
    x = np.asarray(x)
    delta = np.zeros_like(x)
    b = np.arange(x.shape[0])
    for _ in range(steps):
        s = special.softmax((x[None] + delta[None] + noise) @ W + c, axis=-1)  # [m, B, C]
        sy = s[:, b, y]  # [m, B]
        # d s_y / d x = s_y (W_y - sum_c s_c W_c)
        dsy = sy[..., None] * (W[:, y].T[None] - s @ W.T)  # [m, B, D]
        grad = -(dsy.mean(0)) / sy.mean(0)[:, None]
        grad = grad / np.linalg.norm(grad, axis=1, keepdims=True)
        delta = delta + 2 * eps / steps * grad
        if lo is not None:
            delta = np.clip(x + delta, lo, hi) - x
        delta = delta * np.minimum(1, eps / np.linalg.norm(delta, axis=1, keepdims=True))
    return x + delta


@pytest.mark.parametrize("box", [None, (0.0, 1.0)], ids=["no-box", "box"])
def test_smoothadv_matches_hand_computation(box):
    """Salman et al. (2019) SmoothAdv_PGD: NumPy PGD on the soft smoothed classifier, then mean CE."""
    params = _dense_params(1.0, seed=6, classes=3)
    x = jnp.asarray(np.random.default_rng(18).uniform(0.2, 0.8, (5, DIM)))
    y = jnp.asarray(np.random.default_rng(19).integers(0, 3, 5))
    m, eps, steps = 3, 0.5, 4
    key = jax.random.key(20)
    lo, hi = box if box else (None, None)
    val = obj.smoothadv_loss(dense_apply, params, x, y, key, sigma=SIGMA, num_samples=m, epsilon=eps,
                             num_steps=steps, clip_min=lo, clip_max=hi)
    noise_key, _ = jax.random.split(key)
    noise, _ = _noisy_numpy_logits(params, x, noise_key, m)
    x_adv = _numpy_pgd(params, x, np.asarray(y), noise, eps, steps, lo, hi)
    assert np.all(np.linalg.norm(x_adv - np.asarray(x), axis=1) <= eps + 1e-12)
    logits = (x_adv[None] + noise) @ np.asarray(params["W"]) + np.asarray(params["c"])
    logp = special.log_softmax(logits, axis=-1)
    expected = -logp[:, np.arange(5), np.asarray(y)].mean()
    np.testing.assert_allclose(float(val), expected, rtol=1e-9)
    clean = obj.gaussian_augmentation_loss(dense_apply, params, x, y, noise_key, sigma=SIGMA, num_samples=m)
    assert float(val) > float(clean)  # the attack raises the loss


def test_smoothadv_does_not_differentiate_through_the_attack():
    params = _dense_params(1.0, seed=7, classes=3)
    x = jnp.asarray(np.random.default_rng(21).standard_normal((4, DIM)))
    y = jnp.array([0, 1, 2, 0])
    key = jax.random.key(22)
    g = jax.grad(obj.smoothadv_loss, argnums=1)(dense_apply, params, x, y, key, sigma=SIGMA, num_steps=3)
    noise_key, _ = jax.random.split(key)
    noise, _ = _noisy_numpy_logits(params, x, noise_key, 4)  # the defaults: m = 4, epsilon = 1
    xa = jnp.asarray(_numpy_pgd(params, x, np.asarray(y), noise, 1.0, 3))

    def fixed(p):
        logits = (xa[None] + noise) @ p["W"] + p["c"][None, None]
        labels = jnp.broadcast_to(y, logits.shape[:2])
        return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))

    ref = jax.grad(fixed)(params)  # CE at the adversarial points held fixed
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-12)


def test_bad_names_and_options_raise():
    with pytest.raises(ValueError, match="unknown objective"):
        obj.make_objective("macer_l7", dense_apply, sigma=0.25)
    with pytest.raises(ValueError, match="does not take"):
        obj.make_objective("gaussian", dense_apply, sigma=0.25, gamma=3.0)
    with pytest.raises(ValueError, match="does not take"):
        obj.make_objective("cohen_l2", dense_apply, sigma=0.25, margin="runner_up")
    with pytest.raises(ValueError, match="sigma"):
        obj.make_objective("cohen_l2", dense_apply, sigma=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        obj.soft_smoothed_probabilities(dense_apply, _dense_params(1.0), jnp.zeros((1, DIM)), jax.random.key(0),
                                        sigma=0.25, num_samples=0)
    with pytest.raises(ValueError, match="even"):
        obj.smoothed_gradient(dense_apply, _dense_params(1.0), jnp.zeros((1, DIM)), jnp.array([0]), jax.random.key(0),
                              sigma=0.25, num_samples=3)
    with pytest.raises(ValueError, match="even"):
        obj.certified_radius_loss(dense_apply, _dense_params(1.0), jnp.zeros((1, DIM)), jnp.array([0]),
                                  jax.random.key(0), sigma=0.25, radius="dipole_l2", num_samples=3)
    with pytest.raises(ValueError, match="p_both"):
        obj.soft_radius("dipole_l2", 0.9, 0.25)


def test_cohen_hinge_matches_numpy():
    """The full cohen_l2 loss (CE + weight sigma/2 mean(correct * hinge)) recomputed in NumPy/SciPy."""
    params = _dense_params(2.0, seed=4, classes=3)
    x = jnp.asarray(np.random.default_rng(12).standard_normal((8, DIM)))
    y = jnp.asarray(np.random.default_rng(13).integers(0, 3, 8))
    key = jax.random.key(14)
    beta, gamma, weight, s = 4.0, 3.0, 5.0, 6
    val = obj.certified_radius_loss(
        dense_apply, params, x, y, key, sigma=SIGMA, num_samples=s, beta=beta, gamma=gamma, weight=weight
    )
    _, logits = _noisy_numpy_logits(params, x, key, s)
    yy = np.asarray(y)
    ce = -np.log(special.softmax(logits, axis=-1).mean(0)[np.arange(8), yy])
    p = special.softmax(beta * logits, axis=-1).mean(0)
    r_over_sigma = stats.norm.ppf(np.clip(p, obj.P_EPS, 1 - obj.P_EPS))[np.arange(8), yy]
    correct = p.argmax(1) == yy
    assert correct.any() and not correct.all()  # both branches of the mask are exercised
    expected = ce.mean() + weight * SIGMA / 2 * np.mean(np.where(correct, np.maximum(gamma - r_over_sigma, 0), 0))
    np.testing.assert_allclose(float(val), expected, rtol=1e-9)


def test_dipole_hinge_uses_antithetic_agreement():
    """dipole_l2: p_both = mean over antithetic pairs of s_y(x + e) s_y(x - e), radius >= Cohen's at p."""
    params = _dense_params(2.0, seed=8, classes=3)
    x = jnp.asarray(np.random.default_rng(23).standard_normal((6, DIM)))
    y = jnp.asarray(np.argmax(np.asarray(dense_apply(params, x)), axis=1))  # all correct
    key = jax.random.key(24)
    beta, gamma, weight, s = 4.0, 4.0, 5.0, 8
    val = obj.certified_radius_loss(dense_apply, params, x, y, key, sigma=SIGMA, radius="dipole_l2",
                                    num_samples=s, beta=beta, gamma=gamma, weight=weight)
    half = SIGMA * np.asarray(jax.random.normal(key, (s // 2,) + x.shape, x.dtype))
    noise = np.concatenate([half, -half])
    logits = (np.asarray(x)[None] + noise) @ np.asarray(params["W"]) + np.asarray(params["c"])
    yy = np.asarray(y)
    ce = -np.log(special.softmax(logits, axis=-1).mean(0)[np.arange(6), yy])
    soft = special.softmax(beta * logits, axis=-1)
    sy = soft[:, np.arange(6), yy]
    p_y, p_both = sy.mean(0), (sy[: s // 2] * sy[s // 2:]).mean(0)
    correct = soft.mean(0).argmax(1) == yy
    r = np.asarray(obj.soft_radius("dipole_l2", p_y, SIGMA, p_both=p_both))
    assert np.all(r >= SIGMA * stats.norm.ppf(np.clip(p_y, obj.P_EPS, 1 - obj.P_EPS)) - 1e-9)
    expected = ce.mean() + weight * SIGMA / 2 * np.mean(np.where(correct, np.maximum(gamma - r / SIGMA, 0), 0))
    np.testing.assert_allclose(float(val), expected, rtol=1e-9)
