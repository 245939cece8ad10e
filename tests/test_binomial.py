"""Tests of smoothjax.binomial against scipy / statsmodels references."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import padded_call
from scipy import optimize, special, stats
from statsmodels.stats.proportion import proportion_confint

import smoothjax
from smoothjax import binomial_two_sided_pvalue, clopper_pearson_lower, clopper_pearson_upper
from smoothjax.binomial import _log_betainc_logit

# Calls go through a fixed padded length so the solve compiles once for the whole file.
_PAD = 1024
JITTED = {f: jax.jit(f) for f in (clopper_pearson_lower, clopper_pearson_upper, binomial_two_sided_pvalue)}


def _padded(fn, *args):
    return padded_call(fn, *args, length=_PAD)


def lower(k, n, alpha):
    return _padded(clopper_pearson_lower, k, n, alpha)


def upper(k, n, alpha):
    return _padded(clopper_pearson_upper, k, n, alpha)


def pvalue(k, n):
    return _padded(binomial_two_sided_pvalue, k, n)


def dense_cases():
    """k = 0, 1, 2, n-2, n-1, n and spread values, for n from 1 to 1e9."""
    rows = []
    for n in [1, 2, 3, 5, 10, 37, 100, 1000, 10**4, 10**5, 10**6, 10**7, 10**8, 10**9]:
        ks = {0, 1, 2, 7, n - 2, n - 1, n, n // 2, n // 3, int(0.01 * n), int(0.9 * n), int(0.99 * n),
              int(0.999 * n), int(0.999999 * n), n - 1000}
        rows += [(k, n) for k in sorted(ks) if 0 <= k <= n]
    k, n = np.array(rows, dtype=float).T
    return k, n


def _beta_quantile(alpha, a, b):
    """scipy ``beta.ppf(alpha, a, b)``, checked against scipy's forward ``betainc``.

    scipy's inverse is occasionally wrong for huge b: ``beta.ppf(0.001, 1000, 999999001)``
    returns 1.9e-6 although ``betainc`` there is 1.0 (the quantile is 9.05e-7; mpmath agrees).
    Where the forward check fails, the reference is re-solved with brentq on ``betainc``.
    """
    x = stats.beta.ppf(alpha, a, b)
    bad = np.abs(special.betainc(a, b, x) / alpha - 1) > 1e-8
    for i in np.flatnonzero(bad):
        ai, bi, al = np.broadcast_to(a, x.shape)[i], np.broadcast_to(b, x.shape)[i], np.broadcast_to(alpha, x.shape)[i]
        with np.errstate(divide="ignore"):
            x[i] = optimize.brentq(lambda y, ai=ai, bi=bi, al=al: np.log(special.betainc(ai, bi, y)) - np.log(al),
                                   1e-300, 1 - 1e-16, xtol=1e-300, rtol=1e-15, maxiter=500)
    return x


def ref_lower(k, n, alpha):
    k, n = np.asarray(k, float), np.asarray(n, float)
    return np.where(k == 0, 0.0, _beta_quantile(alpha, np.maximum(k, 1), n - k + 1))


def ref_upper(k, n, alpha):
    k, n = np.asarray(k, float), np.asarray(n, float)
    # P[Bin(n, x) <= k] = alpha  <=>  I_{1-x}(n - k, k + 1) = alpha.
    return np.where(k == n, 1.0, 1.0 - _beta_quantile(alpha, np.maximum(n - k, 1), k + 1))


@pytest.mark.parametrize("alpha", [1e-3, 5e-4, 0.05, 1e-8])
def test_matches_scipy_beta_ppf_to_1e_10_for_n_up_to_1e9(alpha):
    k, n = dense_cases()
    lo, up = lower(k, n, alpha), upper(k, n, alpha)
    ref_lo, ref_up = ref_lower(k, n, alpha), ref_upper(k, n, alpha)
    err_lo, err_up = lo - ref_lo, up - ref_up
    print(f"alpha={alpha}: {k.size} cases, max |lower err| {np.abs(err_lo).max():.2e}, "
          f"max |upper err| {np.abs(err_up).max():.2e}")
    assert np.all(np.abs(err_lo) <= 1e-10)
    assert np.all(np.abs(err_up) <= 1e-10)
    # Safe side: lower errs low, upper errs high (up to scipy's own last-digit rounding).
    assert np.all(err_lo <= 1e-15)
    assert np.all(err_up >= -1e-15)


def test_equals_statsmodels_proportion_confint():
    k = np.array([0, 1, 5, 50, 99, 100, 4871, 95126, 949612])
    n = np.array([100, 100, 100, 100, 100, 100, 10000, 100000, 1000000])
    expected = np.array([proportion_confint(ki, ni, alpha=2 * 0.001, method="beta")[0] for ki, ni in zip(k, n)])
    np.testing.assert_allclose(lower(k, n, 0.001), expected, rtol=0, atol=1e-12)
    expected = np.array([proportion_confint(ki, ni, alpha=2 * 0.001, method="beta")[1] for ki, ni in zip(k, n)])
    np.testing.assert_allclose(upper(k, n, 0.001), expected, rtol=0, atol=1e-12)


def test_closed_forms_at_the_ends():
    n = np.array([1.0, 10.0, 1e6, 1e9])
    alpha = 0.001
    assert np.all(lower(0 * n, n, alpha) == 0.0)
    assert np.all(upper(n, n, alpha) == 1.0)
    np.testing.assert_allclose(lower(n, n, alpha), alpha ** (1 / n), rtol=1e-14)
    np.testing.assert_allclose(upper(0 * n, n, alpha), -np.expm1(np.log(alpha) / n), rtol=1e-12)
    assert np.all(lower(n, n, alpha) <= alpha ** (1 / n))


def test_ordering_and_monotonicity():
    n = 1000.0
    k = np.arange(0, 1001, 7, dtype=float)
    lo, up = lower(k, n, 0.01), upper(k, n, 0.01)
    assert np.all(lo <= k / n) and np.all(up >= k / n)
    assert np.all(np.diff(lo) > 0) and np.all(np.diff(up) > 0)
    # Smaller alpha = wider interval.
    assert np.all(lower(k, n, 0.001) <= lo) and np.all(upper(k, n, 0.001) >= up)


def test_log_incomplete_beta_is_accurate_for_large_n():
    """The internal I_x(a, b) keeps ~1e-12 relative accuracy where jax's betainc loses ~n*eps."""
    cases = []
    for n in [1e4, 1e6, 1e8, 1e9]:
        for frac in [0.5, 0.9, 0.99]:
            a = np.floor(n * frac)
            b = n - a + 1
            cases.append((a, b, stats.beta.ppf(1e-3, a, b)))
    a, b, x = (np.array(c) for c in zip(*cases))
    t = np.log(x) - np.log1p(-x)
    log_i, _ = jax.jit(_log_betainc_logit)(a, b, t)
    ref = special.betainc(a, b, x)
    ours_rel = np.abs(np.exp(np.asarray(log_i)) / ref - 1)
    jax_rel = np.abs(np.asarray(jax.scipy.special.betainc(a, b, x)) / ref - 1)
    print("relative error of I_x at the 0.001 quantile, ours:", ours_rel.max(), "jax betainc:", jax_rel.max())
    # 1e-10 is the conditioning of I_x in x: a 1-ulp change of x at n = 1e9 moves I by ~2e-11.
    assert ours_rel.max() <= 1e-10


def test_pvalue_matches_scipy_binomtest():
    cases = [(0, 1), (1, 1), (3, 10), (8, 10), (10, 10), (60, 100), (40, 100), (0, 100), (100, 100),
             (5200, 10000), (5400, 10000), (4700, 10000), (502000, 1000000), (510000, 1000000),
             (0, 50), (17, 20)]
    k, n = np.array(cases, dtype=float).T
    ours = pvalue(k, n)
    ref = np.array([stats.binomtest(int(ki), int(ni), 0.5).pvalue for ki, ni in cases])
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-300)


def test_pvalue_decision_matches_scipy_for_predict():
    """Cohen's PREDICT: abstain unless binomtest(k, n, 1/2).pvalue <= alpha."""
    n = 200
    k = np.arange(0, n + 1, dtype=float)
    ours = pvalue(k, np.full_like(k, n)) <= 0.001
    ref = np.array([stats.binomtest(int(ki), n, 0.5).pvalue <= 0.001 for ki in k])
    np.testing.assert_array_equal(ours, ref)


def test_jit_and_vmap():
    for k, n in [(0.0, 10.0), (3.0, 10.0), (500.0, 1000.0), (999.0, 1000.0)]:
        args = (np.float64(k), np.float64(n), np.float64(0.001))
        for fn, eager in ((clopper_pearson_lower, lower), (clopper_pearson_upper, upper)):
            assert float(JITTED[fn](*args)) == pytest.approx(float(eager([k], [n], 0.001)[0]), rel=1e-15, abs=0)
        assert float(JITTED[binomial_two_sided_pvalue](*args[:2])) == pytest.approx(
            float(pvalue([k], [n])[0]), rel=1e-15, abs=0)
    k, n = jnp.array([0.0, 3.0, 500.0, 999.0]), jnp.array([10.0, 10.0, 1000.0, 1000.0])
    vm = jax.vmap(clopper_pearson_upper, (0, 0, None))(k, n, 0.001)
    np.testing.assert_allclose(np.asarray(vm), np.asarray(clopper_pearson_upper(k, n, 0.001)), rtol=1e-15)


def test_integer_and_float32_inputs_are_promoted():
    k = np.full(_PAD, 95126, dtype=np.int32)
    out = clopper_pearson_lower(k, np.full(_PAD, 100000), np.full(_PAD, 0.001, dtype=np.float32))
    assert out.dtype == jnp.float64
    assert float(out[0]) == pytest.approx(stats.beta.ppf(np.float64(np.float32(0.001)), 95126, 4875), abs=1e-12)


BAD = [
    (clopper_pearson_lower, (11, 10, 0.001)),
    (clopper_pearson_lower, (-1, 10, 0.001)),
    (clopper_pearson_lower, (0, 0, 0.001)),
    (clopper_pearson_lower, (2.5, 10, 0.001)),
    (clopper_pearson_lower, (5, 10, 0.0)),
    (clopper_pearson_lower, (5, 10, 1.0)),
    (clopper_pearson_lower, (5, 10, float("nan"))),
    (clopper_pearson_lower, (float("nan"), 10, 0.01)),
    (clopper_pearson_upper, (11, 10, 0.001)),
    (clopper_pearson_upper, (5, 10, 1.5)),
    (binomial_two_sided_pvalue, (11, 10)),
    (binomial_two_sided_pvalue, (-3, 10)),
]


@pytest.mark.parametrize("fn,args", BAD, ids=[f"{f.__name__}{a}" for f, a in BAD])
def test_bad_input_raises_outside_jit_and_is_nan_inside(fn, args):
    with pytest.raises(ValueError):
        fn(*args)
    assert np.isnan(float(JITTED[fn](*(np.float64(a) for a in args))))


def test_exported():
    assert smoothjax.clopper_pearson_lower is clopper_pearson_lower


@pytest.mark.slow
def test_every_k_small_n_and_random_k_large_n():
    rng = np.random.default_rng(0)
    rows = [(k, n) for n in range(1, 41) for k in range(n + 1)]
    for n in [10**5, 10**7, 10**9]:
        rows += [(k, n) for k in rng.integers(0, n + 1, 60)]
    k, n = np.array(rows[:_PAD], dtype=float).T
    for alpha in [1e-6, 1e-3, 0.01, 0.1, 0.25]:
        lo, up = lower(k, n, alpha), upper(k, n, alpha)
        assert np.all(np.abs(lo - ref_lower(k, n, alpha)) <= 1e-10)
        assert np.all(np.abs(up - ref_upper(k, n, alpha)) <= 1e-10)
        assert np.all(lo - ref_lower(k, n, alpha) <= 1e-15)
        assert np.all(up - ref_upper(k, n, alpha) >= -1e-15)


@pytest.mark.slow
def test_float32_mode_is_conservative():
    """In a fresh process x64 is off, so the solve runs in float32; bounds stay on the safe side."""
    code = (
        "import numpy as np, smoothjax, jax.numpy as jnp;"
        "k=np.array([1,50,95126,999000,9496110],np.float32); n=np.array([10,100,100000,1000000,10000000],np.float32);"
        "lo=smoothjax.clopper_pearson_lower(k,n,0.001); up=smoothjax.clopper_pearson_upper(k,n,0.001);"
        "print(lo.dtype, *np.asarray(lo,float).tolist(), *np.asarray(up,float).tolist())"
    )
    env = dict(os.environ, JAX_ENABLE_X64="0")  # x64 off even if the caller exported it
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    fields = out.stdout.split()
    assert fields[0] == "float32"
    values = np.array(fields[1:], dtype=float)
    k = np.array([1, 50, 95126, 999000, 9496110.0])
    n = np.array([10, 100, 100000, 1000000, 10000000.0])
    lo, up = values[:5], values[5:]
    assert np.all(lo <= ref_lower(k, n, 0.001)) and np.all(up >= ref_upper(k, n, 0.001))
    np.testing.assert_allclose(lo, ref_lower(k, n, 0.001), rtol=1e-3)
    np.testing.assert_allclose(up, ref_upper(k, n, 0.001), rtol=1e-3)
