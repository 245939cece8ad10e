"""Tests of smoothjax.certificates against independent scipy / mpmath references."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from helpers import central_difference, count_compilations, padded_call
from scipy import optimize, stats

import smoothjax
from smoothjax import cohen_radius, dipole_radius, max_grad_norm, sos_grad_norm_upper, sos_radius

NORM = stats.norm
SIGMA = 0.25

# One compiled program per function: value tests call through these helpers, which pad inputs to
# a fixed length (compiles dominate the run time of this file on a small CPU).
_PAD = 2048


def _padded(fn, *args):
    return padded_call(fn, *args, length=_PAD, fill=0.75)


def sos(p, g, s=SIGMA):
    return _padded(sos_radius, p, g, s)


def dip(cs, cn, s=SIGMA):
    return _padded(dipole_radius, cs, cn, s)


def cohen(p, s=SIGMA):
    return _padded(cohen_radius, p, s)


def gmax(p, s=SIGMA):
    return _padded(max_grad_norm, p, s)


SOS_GRAD = jax.jit(jax.grad(sos_radius, argnums=(0, 1, 2)))
JITTED = {fn: jax.jit(fn) for fn in (cohen_radius, sos_radius, dipole_radius, max_grad_norm, sos_grad_norm_upper)}
DIPOLE_GRAD = jax.jit(jax.grad(dipole_radius, argnums=(0, 1, 2)))


# ---------------------------------------------------------------------------------------------
# Independent scipy references (written from the papers, not from the library code).
# ---------------------------------------------------------------------------------------------


def ref_cohen(p, sigma):
    return sigma * NORM.isf(1.0 - p) if p > 0.5 else 0.0


def ref_sos(p, grad, sigma):
    """Second paper Theorem 1: solve Eq. 3 for a0 with brentq, then the bound (Eq. 2) = 1/2."""
    if p <= 0.5:
        return 0.0
    gamma = min(sigma * grad, NORM.pdf(NORM.ppf(p)))

    def eq3(a0):  # phi(Phi^-1(a0)) - phi(Phi^-1(a0 + p)) + gamma, increasing in a0
        return NORM.pdf(NORM.ppf(a0)) - NORM.pdf(NORM.isf(1.0 - p - a0)) + gamma

    if eq3(0.0) >= 0.0:
        a0 = 0.0
    else:
        a0 = optimize.brentq(eq3, 0.0, (1.0 - p) / 2.0, xtol=1e-300, rtol=1e-15, maxiter=500)
    b = 1.0 - p - a0

    def bound(rho):  # Phi(Phi^-1(a0 + p) - rho) - Phi(Phi^-1(a0) - rho) - 1/2, decreasing
        return NORM.cdf(NORM.isf(b) - rho) - NORM.cdf(NORM.ppf(a0) - rho) - 0.5

    return sigma * optimize.brentq(bound, 0.0, 40.0, xtol=1e-15, rtol=1e-15, maxiter=500)


def ref_dipole(cs, cn, sigma):
    """Second paper Theorem 3: the bound of Eq. 9 set to 1/2, solved with brentq."""
    if cs + cn <= 0.5:
        return 0.0

    def bound(rho):
        return (
            (NORM.cdf(NORM.ppf(cn) - rho) if cn > 0 else 0.0)
            + NORM.cdf(NORM.isf((1.0 - cs) / 2.0) - rho)
            - NORM.cdf(NORM.ppf((1.0 - cs) / 2.0) - rho)
            - 0.5
        )

    theorem3 = sigma * optimize.brentq(bound, 0.0, 40.0, xtol=1e-15, rtol=1e-15, maxiter=500)
    # dipole_radius also uses g(x) >= cs + cn, i.e. Cohen's radius at the total (never smaller).
    return max(theorem3, sigma * NORM.ppf(cs + cn))


SOS_CASES = [
    (0.9, 0.0),
    (0.9, 0.5),
    (0.9, 0.7),
    (0.6, 0.1),
    (0.51, 0.0),
    (0.51, 1.5),
    (0.75, 1.27),
    (0.99, 0.0),
    (0.99, 0.05),
    (0.999999, 1e-4),
    (0.999999, 0.0),
    (1.0 - 1e-12, 0.0),
]

DIPOLE_CASES = [
    (0.89476, 0.0472581),
    (0.5, 0.3),
    (0.0, 0.9),
    (0.3, 0.25),
    (0.999721, 2.99413e-06),
    (0.6, 0.0),
    (0.99, 0.009),
    (0.1, 0.45),
]


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def test_cohen_matches_scipy_and_mpmath():
    ps = np.array([0.0, 0.3, 0.5, 0.5000001, 0.6, 0.9, 0.999, 1 - 1e-9, 1 - 1e-12])
    ours = cohen(ps)
    ref = np.array([ref_cohen(p, SIGMA) for p in ps])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    # mpmath at 1 - 1e-12 (the float nearest to it), 30 digits.
    p = mpmath.mpf(float(1 - 1e-12))
    exact = float(SIGMA * mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1))
    assert np.isfinite(ours[-1])
    assert abs(ours[-1] - exact) <= 1e-12 * exact
    assert np.all(ours[ps <= 0.5] == 0.0)


def test_max_grad_norm_matches_scipy():
    ps = np.array([0.0, 0.1, 0.5, 0.75, 0.948428, 0.999, 1 - 1e-12, 1.0])
    ref = NORM.pdf(NORM.ppf(np.minimum(ps, 1 - ps))) / SIGMA
    np.testing.assert_allclose(gmax(ps), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("p,grad", SOS_CASES, ids=[f"p={p:.12g},G={g}" for p, g in SOS_CASES])
def test_sos_matches_scipy_reference_and_errs_low(p, grad):
    ours = float(sos_radius(p, grad, SIGMA))
    ref = ref_sos(p, grad, SIGMA)
    assert np.isfinite(ours)
    assert abs(ours - ref) <= 1e-10 * max(1.0, ref)
    assert ours <= ref * (1 + 1e-13) + 1e-15  # rounds toward the smaller radius


@pytest.mark.parametrize("cs,cn", DIPOLE_CASES, ids=[f"cs={a},cn={b}" for a, b in DIPOLE_CASES])
def test_dipole_matches_scipy_reference_and_errs_low(cs, cn):
    ours = float(dipole_radius(cs, cn, SIGMA))
    ref = ref_dipole(cs, cn, SIGMA)
    assert abs(ours - ref) <= 1e-10 * max(1.0, ref)
    assert ours <= ref * (1 + 1e-13) + 1e-15


def test_sos_grad_norm_upper_formula_both_regimes():
    # Theorem 2 (second paper, Appendix A.3): t = 4 s^2 sqrt(d ln(1/eta)/n) when 2 ln(1/eta) <= d n,
    # else 4 sqrt(2) s^2 ln(1/eta) / n; bound = sqrt(est + t / s^4) clipped at phi(Phi^-1(p))/s.
    eta, p = 0.0005, 0.8
    cap = NORM.pdf(NORM.ppf(p)) / SIGMA
    for est, n, d in [(0.3, 500_000, 49), (-0.2, 5_000_000, 49), (0.5, 3, 1), (0.01, 2, 2), (-5.0, 50, 49)]:
        log_inv = np.log(1 / eta)
        if 2 * log_inv <= d * n:
            t = 4 * SIGMA**2 * np.sqrt(d * log_inv / n)
        else:
            t = 4 * np.sqrt(2) * SIGMA**2 * log_inv / n
        expected = min(np.sqrt(max(est + t / SIGMA**4, 0.0)), cap)
        ours = float(sos_grad_norm_upper(est, n, dim=d, sigma=SIGMA, alpha=eta, p_lower=p))
        assert ours == pytest.approx(expected, rel=1e-13, abs=1e-300)


# ---------------------------------------------------------------------------------------------
# Identities and monotonicity
# ---------------------------------------------------------------------------------------------

P_GRID = np.array([0.5, 0.500001, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 0.99999, 1 - 1e-9, 1 - 1e-12])


def test_sos_equals_cohen_at_max_gradient():
    g = gmax(P_GRID)
    np.testing.assert_allclose(sos(P_GRID, g), cohen(P_GRID), rtol=1e-12, atol=0)
    np.testing.assert_allclose(sos(P_GRID, 2 * g + 1), cohen(P_GRID), rtol=1e-12, atol=0)


def test_sos_never_below_cohen():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.3, 1.0, 2000)
    grad = rng.uniform(0.0, 1.2, 2000) * gmax(p)
    # Up to the last-ulp rounding of Phi^-1 in differently fused XLA programs.
    assert np.all(sos(p, grad) >= cohen(p) * (1 - 4 * np.finfo(float).eps))


def test_sos_monotone_in_each_argument():
    gs = np.linspace(0.0, 1.0, 41)
    ps = np.array([0.55, 0.8, 0.99, 1 - 1e-9])
    r = sos(ps[:, None], gs[None, :] * gmax(ps)[:, None])
    assert np.all(np.diff(r, axis=1) <= 0.0)  # decreasing in the gradient bound
    r = sos(P_GRID[None, :], np.array([0.0, 0.1, 0.5, 1.0])[:, None])
    assert np.all(np.diff(r, axis=1) >= 0.0)  # increasing in p_lower
    sigmas = np.linspace(0.05, 1.0, 20)
    # At fixed sigma * ||grad|| (the dimensionless gradient) the radius grows with sigma.
    assert np.all(np.diff(sos(0.9, 0.1 / sigmas, sigmas)) > 0.0)


def test_dipole_identities_and_monotonicity():
    cn = np.array([0.3, 0.5, 0.51, 0.7, 0.9, 0.999, 1 - 1e-12])
    np.testing.assert_allclose(dip(0.0, cn), cohen(cn), rtol=1e-12, atol=0)
    rng = np.random.default_rng(1)
    cs = rng.uniform(0, 1, 2000)
    # Theorem 3 bounds f_S and f_N separately, so it can fall below Cohen for cs + cn (documented);
    # with cn = 0 it cannot.
    assert dip(0.5, 0.3) < cohen(0.8)
    assert np.all(dip(cs, 0.0) >= cohen(cs) * (1 - 4 * np.finfo(float).eps))
    grid = np.linspace(0.0, 0.6, 31)
    other = np.array([0.0, 0.2, 0.39])[:, None]
    assert np.all(np.diff(dip(grid[None, :], other), axis=1) >= 0.0)  # in cs
    assert np.all(np.diff(dip(other, grid[None, :]), axis=1) >= 0.0)  # in cn
    assert np.all(np.diff(dip(0.5, 0.3, np.linspace(0.1, 1, 10))) > 0)


def test_cohen_monotone():
    assert np.all(np.diff(cohen(P_GRID)) >= 0)
    assert np.all(np.diff(cohen(0.9, np.linspace(0.1, 1, 10))) > 0)


def test_zero_below_half_and_finite_near_one():
    low = np.array([0.0, 0.1, 0.49, 0.5])
    assert np.all(cohen(low) == 0)
    assert np.all(sos(low, 0.0) == 0)
    assert np.all(dip(0.25, low / 2) == 0)
    high = 1 - 1e-12
    r = np.concatenate([cohen([high]), sos([high, high], [0.0, 1.0]), dip([high, 0.0], [0.0, high])])
    assert np.all(np.isfinite(r)) and np.all(r > 1.7)


# ---------------------------------------------------------------------------------------------
# Gradients (implicit differentiation) against central differences of the scipy reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p,grad", [(0.9, 0.3), (0.6, 0.05), (0.99, 0.0), (0.8, 1.0), (0.7, 0.2)])
def test_sos_gradients_match_finite_differences(p, grad):
    gp, gg, gs = SOS_GRAD(p, grad, SIGMA)
    fd_p = central_difference(lambda x: ref_sos(x, grad, SIGMA), p, 1e-6)
    fd_g = central_difference(lambda x: ref_sos(p, x, SIGMA), grad, 1e-5) if grad > 0 else None
    fd_s = central_difference(lambda x: ref_sos(p, grad, x), SIGMA, 1e-6)
    assert float(gp) == pytest.approx(fd_p, rel=1e-5)
    if fd_g is not None:
        assert float(gg) == pytest.approx(fd_g, rel=1e-5, abs=1e-9)
    assert float(gs) == pytest.approx(fd_s, rel=1e-5)


@pytest.mark.parametrize("cs,cn", [(0.5, 0.3), (0.89476, 0.0472581), (0.2, 0.5), (0.0, 0.8)])
def test_dipole_gradients_match_finite_differences(cs, cn):
    gcs, gcn, gs = DIPOLE_GRAD(cs, cn, SIGMA)
    fd_cs = central_difference(lambda x: ref_dipole(x, cn, SIGMA), max(cs, 1e-5), 1e-6) if cs > 0 else None
    fd_cn = central_difference(lambda x: ref_dipole(cs, x, SIGMA), cn, 1e-6)
    fd_s = central_difference(lambda x: ref_dipole(cs, cn, x), SIGMA, 1e-6)
    if fd_cs is not None:
        assert float(gcs) == pytest.approx(fd_cs, rel=1e-5)
    assert float(gcn) == pytest.approx(fd_cn, rel=1e-5)
    assert float(gs) == pytest.approx(fd_s, rel=1e-5)


def test_gradients_finite_at_the_edges():
    g_max = float(max_grad_norm(0.9, SIGMA))
    cases = [(0.5, 0.0), (0.5, 1.0), (0.5 + 1e-9, 0.0), (0.9, g_max), (0.9, 2 * g_max), (0.9, 0.0),
             (1 - 1e-12, 0.0), (0.3, 0.1)]
    for p, g in cases:
        grads = SOS_GRAD(p, g, SIGMA)
        assert all(np.isfinite(float(x)) for x in grads), (p, g, grads)
    # At and above the maximal gradient SoS is Cohen: d/dG = 0, d/dp = sigma / phi(Phi^-1(p)).
    gp, gg, _ = SOS_GRAD(0.9, 2 * g_max, SIGMA)
    assert float(gg) == 0.0
    assert float(gp) == pytest.approx(SIGMA / NORM.pdf(NORM.ppf(0.9)), rel=1e-10)
    # Abstain region: constant 0.
    assert float(SOS_GRAD(0.4, 0.1, SIGMA)[0]) == 0.0
    for cs, cn in [(0.0, 0.5), (0.25, 0.25), (1 - 1e-12, 0.0), (0.0, 1 - 1e-12), (0.3, 0.3)]:
        grads = DIPOLE_GRAD(cs, cn, SIGMA)
        assert all(np.isfinite(float(x)) for x in grads), (cs, cn, grads)


@pytest.mark.slow
def test_forward_mode_agrees_with_reverse_mode():
    f = lambda p: sos_radius(p, 0.4, SIGMA)  # noqa: E731
    assert float(jax.jacfwd(f)(0.85)) == pytest.approx(float(jax.grad(f)(0.85)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# jit / vmap / dtype / bad input
# ---------------------------------------------------------------------------------------------


def test_jit_and_vmap_agree_with_eager():
    p = np.linspace(0.4, 0.999, _PAD)
    g = np.linspace(0.3, 0.0, _PAD)
    eager = sos(p, g)
    np.testing.assert_allclose(np.asarray(JITTED[sos_radius](p, g, SIGMA)), eager, rtol=1e-15)
    vmapped = jax.jit(jax.vmap(sos_radius, (0, 0, None)))(p[:8], g[:8], SIGMA)
    np.testing.assert_allclose(np.asarray(vmapped), eager[:8], rtol=1e-15)
    cs, cn = np.linspace(0.1, 0.9, _PAD), np.linspace(0.3, 0.05, _PAD)
    eager = dip(cs, cn)
    np.testing.assert_allclose(np.asarray(JITTED[dipole_radius](cs, cn, SIGMA)), eager, rtol=1e-15)
    vmapped = jax.jit(jax.vmap(dipole_radius, (0, 0, None)))(cs[:8], cn[:8], SIGMA)
    np.testing.assert_allclose(np.asarray(vmapped), eager[:8], rtol=1e-15)
    np.testing.assert_allclose(np.asarray(JITTED[cohen_radius](p, SIGMA)), cohen(p), rtol=1e-15)
    args = (jnp.array([0.3, -0.1]), 500_000)
    kw = dict(dim=49, sigma=SIGMA, alpha=0.0005, p_lower=jnp.array([0.9, 0.8]))
    np.testing.assert_allclose(
        np.asarray(JITTED[sos_grad_norm_upper](*args, **kw)), np.asarray(sos_grad_norm_upper(*args, **kw)),
        rtol=1e-15,
    )


def test_no_recompilation_on_repeated_calls():
    sos(0.9, 0.1)  # warm
    with count_compilations() as compiled:
        sos(0.8, 0.2)
        sos(np.full(10, 0.7), 0.3)
    assert compiled == []


def test_broadcasting_over_leading_axes():
    p = np.linspace(0.55, 0.99, 12).reshape(3, 4)
    r = sos_radius(p, np.array([0.0, 0.1, 0.2, 0.3]), np.array([[0.25], [0.5], [1.0]]))
    assert r.shape == (3, 4)


def test_float32_inputs_are_promoted():
    # x64 is on (importing smoothjax): float32 inputs are promoted; the result is the float64
    # computation on the (exactly representable) float32 value.
    p32 = np.float32(0.9)
    r = sos_radius(p32, np.float32(0.3), np.float32(SIGMA))
    assert r.dtype == jnp.float64
    assert float(r) == float(sos_radius(float(p32), float(np.float32(0.3)), float(np.float32(SIGMA))))
    assert cohen_radius(jnp.float32(0.9), 0.25).dtype == jnp.float64
    assert dipole_radius(jnp.float32(0.5), jnp.float32(0.3), 0.25).dtype == jnp.float64


BAD_CALLS = [
    (cohen_radius, (1.2, SIGMA)),
    (cohen_radius, (-0.1, SIGMA)),
    (cohen_radius, (float("nan"), SIGMA)),
    (cohen_radius, (0.9, 0.0)),
    (cohen_radius, (0.9, -1.0)),
    (sos_radius, (0.9, -0.1, SIGMA)),
    (sos_radius, (0.9, float("nan"), SIGMA)),
    (sos_radius, (1.5, 0.1, SIGMA)),
    (sos_radius, (0.9, 0.1, float("inf"))),
    (dipole_radius, (0.7, 0.5, SIGMA)),
    (dipole_radius, (-0.1, 0.5, SIGMA)),
    (dipole_radius, (0.5, 0.3, 0.0)),
    (max_grad_norm, (1.1, SIGMA)),
    (sos_grad_norm_upper, (0.1, 100, 49, SIGMA, 0.0, 0.9)),
    (sos_grad_norm_upper, (0.1, 100, 49, SIGMA, 1.0, 0.9)),
    (sos_grad_norm_upper, (0.1, 0, 49, SIGMA, 0.001, 0.9)),
    (sos_grad_norm_upper, (float("nan"), 100, 49, SIGMA, 0.001, 0.9)),
    (sos_grad_norm_upper, (0.1, 100, 49, SIGMA, 0.001, 1.5)),
]
_KEYWORD_ONLY = {sos_grad_norm_upper: ("dim", "sigma", "alpha", "p_lower")}


@pytest.mark.parametrize("fn,args", BAD_CALLS, ids=[f"{f.__name__}{a}" for f, a in BAD_CALLS])
def test_bad_input_raises_outside_jit_and_is_nan_inside(fn, args):
    names = _KEYWORD_ONLY.get(fn, ())
    split = len(args) - len(names)
    args, kwargs = args[:split], dict(zip(names, args[split:]))
    with pytest.raises(ValueError):
        fn(*args, **kwargs)
    assert np.isnan(float(JITTED[fn](*args, **kwargs)))


def test_sos_grad_norm_upper_positional_call_warns_and_agrees():
    with pytest.warns(DeprecationWarning, match="dim, sigma, alpha, p_lower"):
        old = sos_grad_norm_upper(0.3, 500, 49, SIGMA, 0.0005, 0.9)
    assert float(old) == float(sos_grad_norm_upper(0.3, 500, dim=49, sigma=SIGMA, alpha=0.0005, p_lower=0.9))


def test_exported_from_package():
    for name in ["cohen_radius", "sos_radius", "sos_grad_norm_upper", "dipole_radius", "max_grad_norm"]:
        assert hasattr(smoothjax, name)


@pytest.mark.slow
def test_float32_mode_is_conservative():
    """In a fresh process x64 is off, so the radii are float32 and stay below the exact (float64) values."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, smoothjax as sj;"
        "p=np.array([0.6,0.9,0.99,0.9999,0.75],np.float32); g=np.array([0.1,0.5,0.0,0.001,1.27],np.float32);"
        "h=np.float32(0.5); f=np.float32(0.4);"
        "r=[sj.cohen_radius(p,0.25), sj.sos_radius(p,g,0.25), sj.dipole_radius(p*h,p*f,0.25)];"
        "print(r[0].dtype, *np.concatenate([np.asarray(x,float) for x in r]).tolist())"
    )
    env = dict(os.environ, JAX_ENABLE_X64="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    fields = out.stdout.split()
    assert fields[0] == "float32"
    values = np.array(fields[1:], dtype=float).reshape(3, 5)
    p = np.array([0.6, 0.9, 0.99, 0.9999, 0.75], np.float32)
    g = np.array([0.1, 0.5, 0.0, 0.001, 1.27], np.float32)
    cs, cn = p * np.float32(0.5), p * np.float32(0.4)
    exact = np.array([
        [ref_cohen(float(x), SIGMA) for x in p],
        [ref_sos(float(x), float(y), SIGMA) for x, y in zip(p, g)],
        [ref_dipole(float(a), float(b), SIGMA) for a, b in zip(cs, cn)],
    ])
    assert np.all(values <= exact)
    # float32 radii are deliberately shrunk by 2^-10 relative (certificates._round_down) plus a few
    # float32 ulps, so they may lie up to ~1.1e-3 below the exact value, never above it.
    np.testing.assert_allclose(values, exact, rtol=2e-3)


@pytest.mark.slow
def test_hundred_thousand_radii_in_one_jitted_call():
    import time

    rng = np.random.default_rng(3)
    p = rng.uniform(0.3, 1.0, 100_000)
    g = rng.uniform(0.0, 1.0, 100_000) * np.asarray(max_grad_norm(p, SIGMA))
    fn = jax.jit(sos_radius)
    fn(p, g, SIGMA).block_until_ready()  # compile
    start = time.perf_counter()
    r = np.asarray(fn(p, g, SIGMA).block_until_ready())
    print(f"1e5 SoS radii: {time.perf_counter() - start:.2f} s")
    assert np.all(np.isfinite(r))
    assert np.all(r >= np.asarray(cohen_radius(p, SIGMA)) * (1 - 4 * np.finfo(float).eps))
