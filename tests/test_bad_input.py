"""Bad input never crashes and never yields a silent finite answer.

Policy (``smoothjax/_validation.py``): a concrete bad argument raises ``ValueError`` with a clear
sentence; under ``jit`` the checks cannot run, so the function returns NaN (certificate math) or
abstains with a reason flag (``certify``). Each row of the tables below is checked both ways.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from coverage_helpers import IntervalUnion, fixed_weights, interval_union_apply
from scipy import stats

import smoothjax as sj
from smoothjax import pipeline, sampling

NAN, INF = float("nan"), float("inf")


# Positional front ends (every argument traced under jax.jit) of functions with keyword-only arguments.
def _sos_grad_norm_upper(est, num_pairs, dim, sigma, alpha, p_lower):
    return sj.sos_grad_norm_upper(est, num_pairs, dim=dim, sigma=sigma, alpha=alpha, p_lower=p_lower)


def _l1_radius(p_lower, l2_lower, linf_upper, sigma):
    return sj.l1_radius(p_lower, l2_lower, linf_upper, sigma=sigma)


def _linf_radius(p_lower, l2_lower, l1_upper, dim, sigma):
    return sj.linf_radius(p_lower, l2_lower, l1_upper, dim=dim, sigma=sigma)


def _subspace_radius(p_lower, l2_lower, dual_upper, sigma):
    return sj.subspace_radius(p_lower, l2_lower, dual_upper, sigma=sigma)


def _positional(bounds):
    def fn(mean_a, mean_b, num_a, num_b, sigma, alpha):
        return bounds(mean_a, mean_b, num_a, num_b, sigma=sigma, alpha=alpha)

    return fn


_grad_l2_bounds = _positional(sj.grad_l2_bounds)
_grad_l1_bounds = _positional(sj.grad_l1_bounds)
_grad_linf_bounds = _positional(sj.grad_linf_bounds)

# (id, function, args): the function is called with the args as given (concrete -> ValueError) and
# under jax.jit with every arg traced (-> every output entry NaN).
MATH_TABLE = [
    ("cohen p=nan", sj.cohen_radius, (NAN, 1.0)),
    ("cohen p=inf", sj.cohen_radius, (INF, 1.0)),
    ("cohen p<0", sj.cohen_radius, (-0.1, 1.0)),
    ("cohen p>1", sj.cohen_radius, (1.1, 1.0)),
    ("cohen sigma=0", sj.cohen_radius, (0.9, 0.0)),
    ("cohen sigma<0", sj.cohen_radius, (0.9, -1.0)),
    ("cohen sigma=nan", sj.cohen_radius, (0.9, NAN)),
    ("cohen sigma=inf", sj.cohen_radius, (0.9, INF)),
    ("sos p>1", sj.sos_radius, (1.2, 0.1, 1.0)),
    ("sos p=nan", sj.sos_radius, (NAN, 0.1, 1.0)),
    ("sos grad=nan", sj.sos_radius, (0.9, NAN, 1.0)),
    ("sos grad<0", sj.sos_radius, (0.9, -0.1, 1.0)),
    ("sos sigma=0", sj.sos_radius, (0.9, 0.1, 0.0)),
    ("sos sigma=nan", sj.sos_radius, (0.9, 0.1, NAN)),
    ("dipole cs=nan", sj.dipole_radius, (NAN, 0.1, 1.0)),
    ("dipole cn<0", sj.dipole_radius, (0.6, -0.1, 1.0)),
    ("dipole cs+cn>1", sj.dipole_radius, (0.7, 0.5, 1.0)),
    ("dipole sigma<0", sj.dipole_radius, (0.7, 0.1, -1.0)),
    ("max_grad_norm p>1", sj.max_grad_norm, (2.0, 1.0)),
    ("cp alpha=0", sj.clopper_pearson_lower, (5, 10, 0.0)),
    ("cp alpha=1", sj.clopper_pearson_lower, (5, 10, 1.0)),
    ("cp alpha>1", sj.clopper_pearson_lower, (5, 10, 1.5)),
    ("cp alpha<0", sj.clopper_pearson_lower, (5, 10, -0.1)),
    ("cp alpha=nan", sj.clopper_pearson_lower, (5, 10, NAN)),
    ("cp k>n", sj.clopper_pearson_lower, (11, 10, 0.01)),
    ("cp k<0", sj.clopper_pearson_lower, (-1, 10, 0.01)),
    ("cp n=0", sj.clopper_pearson_lower, (0, 0, 0.01)),
    ("cp k=nan", sj.clopper_pearson_lower, (NAN, 10, 0.01)),
    ("cp k non-integer", sj.clopper_pearson_lower, (2.5, 10, 0.01)),
    ("cp upper alpha=0", sj.clopper_pearson_upper, (5, 10, 0.0)),
    ("cp upper k>n", sj.clopper_pearson_upper, (11, 10, 0.01)),
    ("sos_grad est=nan", _sos_grad_norm_upper, (NAN, 100, 8, 1.0, 0.01, 0.9)),
    ("sos_grad est=inf", _sos_grad_norm_upper, (INF, 100, 8, 1.0, 0.01, 0.9)),
    ("sos_grad alpha=0", _sos_grad_norm_upper, (0.1, 100, 8, 1.0, 0.0, 0.9)),
    ("sos_grad alpha=1", _sos_grad_norm_upper, (0.1, 100, 8, 1.0, 1.0, 0.9)),
    ("sos_grad sigma=0", _sos_grad_norm_upper, (0.1, 100, 8, 0.0, 0.01, 0.9)),
    ("sos_grad pairs=0", _sos_grad_norm_upper, (0.1, 0, 8, 1.0, 0.01, 0.9)),
    ("sos_grad p>1", _sos_grad_norm_upper, (0.1, 100, 8, 1.0, 0.01, 1.5)),
    ("l1 p=nan", _l1_radius, (NAN, 0.1, 0.1, 1.0)),
    ("l1 p>1", _l1_radius, (1.5, 0.1, 0.1, 1.0)),
    ("l1 l2_lower=nan", _l1_radius, (0.9, NAN, 0.1, 1.0)),
    ("l1 linf_upper=inf", _l1_radius, (0.9, 0.1, INF, 1.0)),
    ("l1 linf_upper<0", _l1_radius, (0.9, 0.1, -0.1, 1.0)),
    ("l1 sigma=0", _l1_radius, (0.9, 0.1, 0.1, 0.0)),
    ("l1 contradictory (sigma*l2 > phi(Phi^-1(p)))", _l1_radius, (0.9, 0.5, 0.1, 1.0)),
    ("linf l1_upper < l2_lower", _linf_radius, (0.9, 0.1, 0.05, 8, 1.0)),
    ("linf sigma=nan", _linf_radius, (0.9, 0.1, 0.2, 8, NAN)),
    ("subspace p=nan", _subspace_radius, (NAN, 0.1, 0.1, 1.0)),
]

_MEANS = np.full((3, 8), 0.01)
_MEANS_NAN = _MEANS.copy()
_MEANS_NAN[1, 2] = np.nan
GRAD_TABLE = [
    ("l2 means=nan", _grad_l2_bounds, (_MEANS_NAN, _MEANS, 100, 100, 1.0, 0.01)),
    ("l2 means=inf", _grad_l2_bounds, (_MEANS * np.inf, _MEANS, 100, 100, 1.0, 0.01)),
    ("l2 alpha=1", _grad_l2_bounds, (_MEANS, _MEANS, 100, 100, 1.0, 1.0)),
    ("l2 alpha=0", _grad_l2_bounds, (_MEANS, _MEANS, 100, 100, 1.0, 0.0)),
    ("l2 sigma<0", _grad_l2_bounds, (_MEANS, _MEANS, 100, 100, -1.0, 0.01)),
    ("l2 num_a=0", _grad_l2_bounds, (_MEANS, _MEANS, 0, 100, 1.0, 0.01)),
    ("linf sigma=nan", _grad_linf_bounds, (_MEANS, _MEANS, 100, 100, NAN, 0.01)),
    ("l1 alpha>1", _grad_l1_bounds, (_MEANS, _MEANS, 100, 100, 1.0, 2.0)),
]


def _all_nan(out):
    leaves = jax.tree_util.tree_leaves(out)
    return all(bool(np.all(np.isnan(np.asarray(leaf, float)))) for leaf in leaves)


@pytest.mark.parametrize("name,fn,args", MATH_TABLE + GRAD_TABLE, ids=[r[0] for r in MATH_TABLE + GRAD_TABLE])
def test_concrete_bad_input_raises_value_error(name, fn, args):
    with pytest.raises(ValueError) as err:
        fn(*args)
    assert len(str(err.value)) > 15  # a sentence, not an empty error


# The means rows with NaN only poison the affected row; the jit check for them looks at that row.
@pytest.mark.parametrize("name,fn,args", MATH_TABLE + GRAD_TABLE, ids=[r[0] for r in MATH_TABLE + GRAD_TABLE])
def test_traced_bad_input_gives_nan(name, fn, args):
    arrays = [jnp.asarray(a, jnp.float64) for a in args]
    out = jax.jit(fn)(*arrays)
    if name == "l2 means=nan":
        out = jax.tree_util.tree_map(lambda a: np.asarray(a)[1], out)
    assert _all_nan(out), f"{name}: jit returned {out} instead of NaN"


# ----------------------------------------------------------------------------- pipeline

DIM = 8
CLF = IntervalUnion(fixed_weights(DIM), [(-0.6, 0.6)])
XS = np.zeros((2, DIM), np.float32)
GOOD = dict(sigma=0.5, n0=16, n=64, alpha=0.01, batch_size=32, methods=("cohen_l2", "sos_l2", "dipole_l2"))


def _certify(xs=XS, apply_fn=interval_union_apply, params=None, **kw):
    args = dict(GOOD)
    args.update(kw)
    return sj.certify(apply_fn, CLF.params if params is None else params, xs, jax.random.key(0), **args)


PIPELINE_TABLE = [
    ("sigma=0", dict(sigma=0.0)),
    ("sigma<0", dict(sigma=-0.5)),
    ("sigma=nan", dict(sigma=NAN)),
    ("sigma per input", dict(sigma=np.full(2, 0.5))),
    ("sigma per pixel", dict(sigma=np.full(DIM, 0.5, np.float32))),
    ("alpha=0", dict(alpha=0.0)),
    ("alpha=1", dict(alpha=1.0)),
    ("alpha=nan", dict(alpha=NAN)),
    ("n0>n", dict(n0=128, n=64)),
    ("odd n with pair methods", dict(n=63)),
    ("odd batch_size with pair methods", dict(batch_size=31)),
    ("n=0", dict(n=0, n0=0)),
    ("n float", dict(n=64.0)),
    ("n > 2^32 (counts/key overflow)", dict(n=2**32 + 2)),
    ("unknown method", dict(methods=("cohen_l3",))),
    ("input nan", dict(xs=np.full((2, DIM), np.nan, np.float32))),
    ("input inf", dict(xs=np.full((2, DIM), np.inf, np.float32))),
    ("input without batch axis", dict(xs=np.zeros(DIM, np.float32))),
    ("input of the wrong shape for the model", dict(xs=np.zeros((2, DIM + 3), np.float32))),
    ("apply_fn returns 1-D output", dict(apply_fn=lambda p, x: jnp.sum(x, axis=1))),
]


@pytest.mark.parametrize("name,kw", PIPELINE_TABLE, ids=[r[0] for r in PIPELINE_TABLE])
def test_certify_bad_input_raises_value_error(name, kw):
    with pytest.raises(ValueError):
        _certify(**kw)


def test_array_sigma_is_refused_by_name():
    """One noise level per call: an array sigma is a clear error, not a broadcast deep in the model."""
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        _certify(sigma=jnp.full((2,), 0.5))
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        sj.predict(interval_union_apply, CLF.params, XS, jax.random.key(0), sigma=np.full(DIM, 0.5), n=16,
                   alpha=0.01, batch_size=8)


def test_predict_and_sampler_bad_input():
    with pytest.raises(ValueError):
        sj.predict(interval_union_apply, CLF.params, XS, jax.random.key(0), sigma=0.5, n=0, alpha=0.01, batch_size=8)
    with pytest.raises(ValueError):
        sj.predict(interval_union_apply, CLF.params, XS, jax.random.key(0), sigma=0.5, n=16, alpha=1.5, batch_size=8)
    with pytest.raises(ValueError):
        sj.sample_statistics(interval_union_apply, CLF.params, XS, jax.random.key(0), sigma=0.5,
                             num_samples=2**32 + 2, batch_size=8)
    with pytest.raises(ValueError):
        sj.sample_statistics(interval_union_apply, CLF.params, XS, jax.random.key(0), sigma=0.5,
                             num_samples=63, batch_size=8, dot_product=True, target_class=np.zeros(2, int))


def _nan_logits_apply(params, x):
    """Like interval_union_apply but NaN logits whenever w . x > 0.3 (about 27% of noisy samples)."""
    logits = interval_union_apply(params, x)
    s = x.reshape(x.shape[0], -1) @ params["w"].astype(x.dtype)
    return jnp.where((s > 0.3)[:, None], jnp.nan, logits)


def _all_nan_apply(params, x):
    return jnp.full((x.shape[0], 2), jnp.nan, x.dtype)


@pytest.mark.parametrize("apply_fn", [_nan_logits_apply, _all_nan_apply], ids=["some NaN logits", "all NaN logits"])
def test_nan_logits_abstain_with_reason(apply_fn):
    res = _certify(apply_fn=apply_fn)
    assert np.all(np.asarray(res.prediction) == sj.ABSTAIN)
    assert np.all(np.asarray(res.abstain_reason) & pipeline.REASON_NONFINITE_LOGITS)
    for name, r in res.radii.items():
        assert np.all(np.asarray(r) == 0.0), name
    pred = sj.predict(apply_fn, CLF.params, XS, jax.random.key(0), sigma=0.5, n=64, alpha=0.01, batch_size=32)
    assert np.all(np.asarray(pred) == sj.ABSTAIN)


def test_nan_input_under_jit_abstains_with_reason():
    """Under an outer jit the input check cannot raise: the input abstains with REASON_NONFINITE_INPUT."""
    xs = XS.copy()
    xs[1, 3] = np.nan

    @jax.jit
    def run(xs, sigma, alpha):
        kw = dict(GOOD, sigma=sigma, alpha=alpha)
        return sj.certify(interval_union_apply, CLF.params, xs, jax.random.key(0), **kw)

    res = run(jnp.asarray(xs), 0.5, 0.01)
    pred, reason = np.asarray(res.prediction), np.asarray(res.abstain_reason)
    assert pred[1] == sj.ABSTAIN and reason[1] & pipeline.REASON_NONFINITE_INPUT
    for name, r in res.radii.items():
        assert np.asarray(r)[1] == 0.0, name
    assert pred[0] == 1  # the good input is still certified (slab centre, p ~ 0.77)


@jax.jit
def _run_traced(sigma, alpha):
    kw = dict(GOOD, sigma=sigma, alpha=alpha)
    return sj.certify(interval_union_apply, CLF.params, jnp.asarray(XS), jax.random.key(0), **kw)


SIGMA_JIT_BUG = (
    "BUG (owner C, pipeline.certify under jit): with sigma <= 0 or NaN traced, certify still predicts the top class "
    "(prediction 1, not -1); the radii are 0 (method failed) but the input does not abstain with a reason flag "
    "as the bad-input policy requires inside jit.")


@pytest.mark.parametrize("sigma,alpha", [
    pytest.param(0.5, 0.0, id="alpha=0"),
    pytest.param(0.5, 1.5, id="alpha>1"),
    pytest.param(0.5, NAN, id="alpha=nan"),
    pytest.param(-0.5, 0.01, id="sigma<0"),
    pytest.param(NAN, 0.01, id="sigma=nan"),
])
def test_bad_sigma_alpha_under_jit_do_not_certify(sigma, alpha):
    """sigma / alpha outside their domain under jit: no finite positive radius, and the input abstains."""
    res = _run_traced(sigma, alpha)
    for name, r in res.radii.items():
        r = np.asarray(r)
        assert not np.any(np.isfinite(r) & (r > 0)), (sigma, alpha, name, r)
    assert np.all(np.asarray(res.prediction) == sj.ABSTAIN), (sigma, alpha, np.asarray(res.abstain_reason))
    assert np.all(np.asarray(res.abstain_reason) != 0)


# ----------------------------------------------------------------------------- integer overflow

CP_UPPER_BUG = (
    "BUG (owner A, binomial.clopper_pearson_upper): for n = 2^34, k = 1, alpha = 1e-3 the upper bound "
    "5.374553997604248e-10 is BELOW the exact quantile 5.3745540058234703e-10 (mpmath, 60 digits; scipy agrees), "
    "relative -1.5e-9: an upper confidence bound that errs low (n > 1e9 is outside the range A tested).")
BIG = [
    pytest.param(3_000_000_000, 4_000_000_000, id="k3e9_n4e9"),
    pytest.param(2**33 - 5, 2**33, id="k2^33-5_n2^33"),
    pytest.param(2**31 + 7, 2**31 + 9, id="k2^31+7_n2^31+9"),
    pytest.param(1, 2**34, id="k1_n2^34"),
]


@pytest.mark.parametrize("k,n", BIG)
def test_counts_above_2_31_are_exact(k, n):
    """Counts/bounds functions given k, n > 2^31 (as Python ints and as int64 arrays) compute correctly."""
    alpha = 1e-3
    ref = stats.beta.ppf(alpha, k, n - k + 1)
    for kk, nn in ((k, n), (np.int64(k), np.int64(n)), (np.array([k], np.int64), np.array([n], np.int64))):
        lo = float(np.ravel(np.asarray(sj.clopper_pearson_lower(kk, nn, alpha)))[0])
        assert lo <= ref * (1 + 1e-12) and lo >= ref - 1e-10, (kk, nn, lo, ref)
    up = float(sj.clopper_pearson_upper(k, n, alpha))
    ref_up = stats.beta.isf(alpha, k + 1, n - k)
    assert up >= ref_up * (1 - 1e-12) and up <= ref_up + 1e-10


def test_binomial_pvalue_above_2_31():
    n = 6_000_000_000
    k = n // 2 + 100_000
    ref = 2 * stats.binom.sf(k - 1, n, 0.5)  # symmetric at 1/2: exact two-sided p-value
    got = float(sj.binomial_two_sided_pvalue(k, n))
    assert got == pytest.approx(ref, rel=1e-6)


def test_sampler_refuses_n_of_2_31_and_more_with_x64_on():
    """Counts are int32 on the device whatever the x64 setting: n >= 2^31 is refused before sampling."""
    assert jax.config.jax_enable_x64
    with pytest.raises(ValueError, match="exceeds"):
        sj.sample_statistics(interval_union_apply, CLF.params, np.asarray(XS), jax.random.key(0), sigma=0.5,
                             num_samples=2**31 + 2, batch_size=64, target_class=np.zeros(2, np.int32),
                             dot_product=True, dipole=True)
    assert sampling.count_dtype() == jnp.int32


def test_sampler_refuses_n_above_2_31_without_x64():
    """In a fresh process x64 is off, so counts are int32: n >= 2^31 must be refused before sampling."""
    script = textwrap.dedent(
        """
        import numpy as np, jax, smoothjax as sj
        import sys
        sys.path.insert(0, "tests")
        from coverage_helpers import IntervalUnion, fixed_weights, interval_union_apply
        clf = IntervalUnion(fixed_weights(8), [(-0.6, 0.6)])
        try:
            sj.sample_statistics(interval_union_apply, clf.params, np.zeros((2, 8), np.float32), jax.random.key(0),
                                 sigma=0.5, num_samples=2**31, batch_size=8)
        except ValueError as e:
            print("REFUSED", e)
        else:
            print("ACCEPTED")
        """
    )
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")  # x64 off even if the caller exported it
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout, proc.stdout
