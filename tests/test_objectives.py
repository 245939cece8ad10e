"""Tests of smoothjax.objectives: surrogates against closed forms / scipy quadrature on a linear
(half-space) logit model, losses finite and differentiable at the edges, a training step decreases
the loss, jit, determinism given the key, and errors for bad names/options.

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
    return x.reshape(x.shape[0], -1) @ params["W"] + params["c"]


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
    p = obj.soft_smoothed_probabilities(linear_apply, params, x, jax.random.key(1), sigma=SIGMA, num_samples=n, beta=beta)
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
# Losses: edges, training step, jit, determinism
# ------------------------------------------------------------------------------------------


def _available_objectives():
    return ["gaussian", "cohen_l2", "sos_l2", "first_order_l1", "first_order_linf"]


def _params_for(names):
    """Objectives that go through the Theorem 3 solver compile for minutes: run them only with -m slow."""
    slow = {"first_order_l1", "first_order_linf"}
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


OBJECTIVE_NAMES = _params_for(_available_objectives())


def _dense_params(scale, seed=0, classes=2, dim=DIM):
    rng = np.random.default_rng(seed)
    return {"W": jnp.asarray(scale * rng.standard_normal((dim, classes))), "c": jnp.zeros(classes)}


EDGE_CASES = {
    # logits all 0 -> soft p = 1/2 exactly (two classes), gradient exactly 0
    "p_half_grad_zero": {"W": jnp.zeros((DIM, 2)), "c": jnp.zeros(2)},
    # huge constant margin -> p = 1 to machine precision, gradient 0
    "p_one": {"W": jnp.zeros((DIM, 2)), "c": jnp.array([60.0, 0.0])},
    # steep half-space through x = 0.1 w -> near-hard classifier, gradient near its maximum
    "grad_at_max": {"W": jnp.asarray(np.stack([np.zeros(DIM), 1e3 * _unit()], 1)), "c": jnp.array([0.0, 100.0])},
    "generic": _dense_params(2.0),
}


@pytest.mark.parametrize("case", list(EDGE_CASES), ids=list(EDGE_CASES))
@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_loss_finite_and_differentiable_at_edges(name, case):
    params = EDGE_CASES[case]
    x = jnp.zeros((4, DIM))
    y = jnp.array([0, 1, 0, 1]) if case != "grad_at_max" else jnp.ones(4, int)
    loss_fn = obj.make_objective(name, dense_apply, sigma=SIGMA, num_samples=8)
    val, grads = jax.jit(jax.value_and_grad(loss_fn))(params, x, y, jax.random.key(4))
    assert np.isfinite(float(val))
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(np.asarray(leaf))), (name, case)


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_training_step_decreases_loss_jit_and_determinism(name):
    params = _dense_params(0.3, seed=1, classes=3, dim=DIM)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((16, DIM)))
    y = jnp.asarray(np.argmax(np.asarray(x)[:, :3], axis=1))  # a linearly learnable labelling
    loss_fn = obj.make_objective(name, dense_apply, sigma=0.25, num_samples=8)
    key = jax.random.key(6)
    jitted = jax.jit(loss_fn)
    l0 = float(loss_fn(params, x, y, key))
    np.testing.assert_allclose(float(jitted(params, x, y, key)), l0, rtol=1e-6)
    assert float(jitted(params, x, y, key)) == float(jitted(params, x, y, key))  # deterministic
    assert float(jitted(params, x, y, jax.random.key(7))) != float(jitted(params, x, y, key))
    # one small normalised gradient step (the hinge's "correct" mask is piecewise constant, so a
    # long run need not decrease this loss monotonically; a small step must)
    g = jax.grad(loss_fn)(params, x, y, key)
    gnorm = optax.tree.norm(g)
    params = jax.tree_util.tree_map(lambda p, d: p - 1e-3 * d / gnorm, params, g)
    l1 = float(loss_fn(params, x, y, key))
    assert l1 < l0, (name, l0, l1)


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


def test_gaussian_objective_matches_numpy_cross_entropy():
    params = _dense_params(1.0, seed=3, classes=3)
    x = jnp.asarray(np.random.default_rng(10).standard_normal((5, DIM)))
    y = jnp.array([0, 1, 2, 0, 1])
    key = jax.random.key(11)
    val = obj.make_objective("gaussian", dense_apply, sigma=SIGMA)(params, x, y, key)
    noise = SIGMA * np.asarray(jax.random.normal(key, (1,) + x.shape, x.dtype))
    logits = ((np.asarray(x)[None] + noise) @ np.asarray(params["W"]))[0]
    logp = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    np.testing.assert_allclose(float(val), -np.mean(logp[np.arange(5), np.asarray(y)]), rtol=1e-10)


def test_bad_names_and_options_raise():
    with pytest.raises(ValueError, match="unknown objective"):
        obj.make_objective("macer_l7", dense_apply, sigma=0.25)
    with pytest.raises(ValueError, match="does not take"):
        obj.make_objective("gaussian", dense_apply, sigma=0.25, gamma=3.0)
    with pytest.raises(ValueError, match="sigma"):
        obj.make_objective("cohen_l2", dense_apply, sigma=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        obj.soft_smoothed_probabilities(dense_apply, _dense_params(1.0), jnp.zeros((1, DIM)), jax.random.key(0), sigma=0.25, num_samples=0)
    with pytest.raises(ValueError, match="even"):
        obj.smoothed_gradient(dense_apply, _dense_params(1.0), jnp.zeros((1, DIM)), jnp.array([0]), jax.random.key(0), sigma=0.25, num_samples=3)


@pytest.mark.parametrize("margin", ["top", "runner_up"])
def test_cohen_hinge_matches_numpy(margin):
    """The full cohen_l2 loss (CE + weight sigma/2 mean(correct * hinge)) recomputed in NumPy/SciPy."""
    params = _dense_params(2.0, seed=4, classes=3)
    x = jnp.asarray(np.random.default_rng(12).standard_normal((8, DIM)))
    y = jnp.asarray(np.random.default_rng(13).integers(0, 3, 8))
    key = jax.random.key(14)
    beta, gamma, weight, s = 4.0, 3.0, 5.0, 6
    val = obj.certified_radius_loss(
        dense_apply, params, x, y, key, sigma=SIGMA, num_samples=s, beta=beta, gamma=gamma, weight=weight, margin=margin
    )
    noise = SIGMA * np.asarray(jax.random.normal(key, (s,) + x.shape, x.dtype))
    logits = (np.asarray(x)[None] + noise) @ np.asarray(params["W"]) + np.asarray(params["c"])
    yy = np.asarray(y)
    ce = -np.log(special.softmax(logits, axis=-1).mean(0)[np.arange(8), yy])
    p = special.softmax(beta * logits, axis=-1).mean(0)
    z = stats.norm.ppf(np.clip(p, obj.P_EPS, 1 - obj.P_EPS))
    if margin == "top":
        r_over_sigma = z[np.arange(8), yy]
    else:
        others = np.where(np.eye(3, dtype=bool)[yy], -np.inf, p)
        r_over_sigma = 0.5 * (z[np.arange(8), yy] - stats.norm.ppf(np.clip(others.max(1), obj.P_EPS, 1 - obj.P_EPS)))
    correct = p.argmax(1) == yy
    assert correct.any() and not correct.all()  # both branches of the mask are exercised
    expected = ce.mean() + weight * SIGMA / 2 * np.mean(np.where(correct, np.maximum(gamma - r_over_sigma, 0), 0))
    np.testing.assert_allclose(float(val), expected, rtol=1e-9)
