"""Statistical coverage of every confidence bound and certified radius.

On analytic classifiers whose smoothed probability, gradient, antithetic-pair probabilities and
flip distances are known in closed form (``tests/coverage_helpers.py``: half-space, slab, two
parallel half-spaces, union of slabs), the full ``certify`` procedure is repeated with independent
noise (``T`` copies of the same input with distinct ``input_ids``, so every copy gets its own
independent selection and estimation samples) and failures are counted:

* a confidence bound fails when a lower bound exceeds its true value or an upper bound falls
  below it; it is checked against the alpha it was computed at (the pipeline's alpha split:
  Cohen's ``p_A`` at alpha; SoS ``p_A`` and gradient bound at alpha/2 each; dipole ``cs``/``cn`` at
  alpha/2 each; first-order ``||grad||_2`` lower, ``||grad||_inf``/``||grad||_1`` upper at alpha/4
  each), plus the Table 1 bounds called directly at alpha;
* a certificate fails when its radius exceeds the true flip distance (in its norm) of the class it
  certified; each radius must fail at most at rate alpha.

Each failure count is checked with a one-sided exact binomial test of ``H0: rate <= alpha`` at level
``LEVEL = 1e-3`` (fixed keys, so the outcome is deterministic). The quick variant uses a high alpha
(0.1) and a few hundred trials so that tight bounds (Cohen on the half-space, SoS on the slab) do
fail now and then and the test has power; the slow variant uses 10^4 trials.

Counts-only bounds (Clopper-Pearson; the dipole radius and Cohen's radius as functions of counts)
are also checked exactly: the failure probability is the binomial mass of the counts whose bound
fails, summed exactly over all k (no simulation), and by NumPy multinomial draws.

Run ``pytest tests/test_coverage.py -s`` to see the measured failure rates.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from coverage_helpers import (
    binomial_pvalue_at_most,
    coverage_classifiers,
    interval_union_apply,
    point_with_s,
)
from scipy import stats

import smoothjax as sj
from smoothjax import pipeline

LEVEL = 1e-3  # level of every one-sided binomial test below
SIGMA = 0.5
DIM = 8
N0 = 64
N = 2000
BATCH = 500

# The pipeline runs are restricted to the zeroth/second-order methods: compiling certify with the
# first-order (Theorem 3) radii costs minutes on the shared 2-core CI machine. The first-order
# bounds and radii are covered below from the exact split-half statistics simulated in NumPy (the
# same per-sample quantities the sampler accumulates), and by one full-pipeline run in the slow set.
PIPELINE_METHODS = ("cohen_l2", "sos_l2", "dipole_l2")


def _truth_table(clf, x0, sigma):
    return {c: clf.truth(x0, sigma, c) for c in (0, 1)}


def _coverage(clf, s0, *, trials, alpha, seed, n=N, methods=None):
    """Run certify ``trials`` times (independent noise) and count failures of every bound and radius.

    Returns {name: (failures, trials, allowed_rate)}.
    """
    x0 = point_with_s(clf.w, s0)
    xs = np.tile(x0[None], (trials, 1))
    res = sj.certify(
        interval_union_apply, clf.params, xs, jax.random.key(seed), sigma=SIGMA, n0=N0, n=n, alpha=alpha,
        batch_size=BATCH, methods=methods or PIPELINE_METHODS, input_ids=np.arange(trials, dtype=np.uint32),
    )
    truth = _truth_table(clf, x0, SIGMA)
    top = np.asarray(res.top_class)
    pred = np.asarray(res.prediction)
    T = lambda key: np.array([truth[int(c)][key] for c in top])  # noqa: E731  truth for the selected class

    out = {}

    def record(name, failed, rate):
        out[name] = (int(np.sum(failed)), trials, rate)

    # --- confidence bounds computed by the pipeline ---------------------------------------------
    p_true = T("p")
    if "cohen_l2" in res.radii:
        record("bound cp_lower(p) @alpha [cohen]", np.asarray(res.p_lower["cohen_l2"]) > p_true, alpha)
    if "sos_l2" in res.radii:
        record("bound cp_lower(p) @alpha/2 [sos]", np.asarray(res.p_lower["sos_l2"]) > p_true, alpha / 2)
        record("bound sos_grad_norm_upper @alpha/2", np.asarray(res.bounds["sos_grad_norm_upper"]) < T("grad_l2"),
               alpha / 2)
    if "dipole_l2" in res.radii:
        record("bound dipole cs_lower @alpha/2", np.asarray(res.p_lower["dipole_l2"]) > T("dipole_both"), alpha / 2)
        record("bound dipole cn_lower @alpha/2",
               np.asarray(res.bounds["dipole_plus_only_lower"]) > T("dipole_plus_only"), alpha / 2)
    if "grad_l2_lower" in res.bounds:
        record("bound grad_l2_lower @alpha/4 [first-order]", np.asarray(res.bounds["grad_l2_lower"]) > T("grad_l2"),
               alpha / 4)
    if "grad_linf_upper" in res.bounds:
        record("bound grad_linf_upper @alpha/4", np.asarray(res.bounds["grad_linf_upper"]) < T("grad_linf"), alpha / 4)
    if "grad_l1_upper" in res.bounds:
        record("bound grad_l1_upper @alpha/4", np.asarray(res.bounds["grad_l1_upper"]) < T("grad_l1"), alpha / 4)

    # --- Table 1 bounds called directly at alpha on the pipeline's split-half statistics --------
    st = res.statistics
    if st.z_sum_a is not None:
        args = (st.z_mean_a, st.z_mean_b, st.num_a, st.num_b)
        l2 = sj.grad_l2_bounds(*args, sigma=SIGMA, alpha=alpha)
        linf = sj.grad_linf_bounds(*args, sigma=SIGMA, alpha=alpha)
        l1 = sj.grad_l1_bounds(*args, sigma=SIGMA, alpha=alpha)
        record("bound table1 l2 lower @alpha", np.asarray(l2.lower) > T("grad_l2"), alpha)
        record("bound table1 l2 upper @alpha", np.asarray(l2.upper) < T("grad_l2"), alpha)
        # linf / l1: lower and upper hold jointly at 1 - alpha
        record("bound table1 linf pair @alpha",
               (np.asarray(linf.lower) > T("grad_linf")) | (np.asarray(linf.upper) < T("grad_linf")), alpha)
        record("bound table1 l1 pair @alpha",
               (np.asarray(l1.lower) > T("grad_l1")) | (np.asarray(l1.upper) < T("grad_l1")), alpha)

    # --- certified radii --------------------------------------------------------------------------
    norm_of = {"cohen_l2": "l2", "sos_l2": "l2", "dipole_l2": "l2", "first_order_l1": "l1",
               "first_order_linf": "linf"}
    for name, radius in res.radii.items():
        radius = np.asarray(radius)
        assert not np.any(np.isnan(radius)), f"{name}: NaN radius in the result"
        # the certified class is the prediction; where it abstains the radius is 0 (never a failure)
        flip = np.array([truth[int(c)][f"flip_{norm_of[name]}"] if c >= 0 else np.inf for c in pred])
        record(f"radius {name} @alpha", radius > flip, alpha)
    out["_abstain_rate"] = (int(np.sum(pred < 0)), trials, None)
    return out


def _report(title, out):
    print(f"\n[coverage] {title}")
    for name, (f, t, rate) in out.items():
        if rate is None:
            print(f"  {name:48s} {f:6d}/{t}  ({f / t:.4f})")
        else:
            pv = binomial_pvalue_at_most(f, t, rate)
            print(f"  {name:48s} {f:6d}/{t}  rate {f / t:.4f}  allowed {rate:.4f}  p-value {pv:.3g}")


def _assert_coverage(out):
    bad = []
    for name, (f, t, rate) in out.items():
        if rate is None:
            continue
        pv = binomial_pvalue_at_most(f, t, rate)
        if pv < LEVEL:
            bad.append(f"{name}: {f}/{t} failures = {f / t:.4f} > allowed {rate} (one-sided binomial p = {pv:.2e})")
    assert not bad, "coverage violated:\n" + "\n".join(bad)


CLASSIFIERS = coverage_classifiers(DIM)


@pytest.mark.parametrize("name,clf,s0", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_coverage_quick(name, clf, s0):
    """300 independent certify runs per classifier at alpha = 0.1 (binomial test level 1e-3)."""
    out = _coverage(clf, s0, trials=300, alpha=0.1, seed=1000 + len(name))
    _report(f"{name} quick: T=300, n={N}, alpha=0.1", out)
    _assert_coverage(out)
    if name == "half_space":
        # Power: on the half-space Cohen's certificate is tight, so it fails about as often as the
        # Clopper-Pearson bound does (~alpha); a test that never sees failures could not detect a bug.
        f, t, _ = out["radius cohen_l2 @alpha"]
        assert f >= 10, f"expected ~alpha * T = 30 Cohen failures on the half-space, saw {f}"


@pytest.mark.slow
@pytest.mark.parametrize("name,clf,s0", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
@pytest.mark.parametrize("alpha", [0.05])
def test_coverage_slow(name, clf, s0, alpha):
    """10^4 independent certify runs per classifier (binomial test level 1e-3)."""
    out = _coverage(clf, s0, trials=10_000, alpha=alpha, seed=2000 + len(name))
    _report(f"{name} slow: T=10000, n={N}, alpha={alpha}", out)
    _assert_coverage(out)


# ------------------------------------------------------------------------------------------------
# Counts-only bounds: exact coverage (summed over every possible count) and NumPy draws.
# ------------------------------------------------------------------------------------------------


CP_CASES = [(n, p, a) for n in (10, 100, 1000) for p in (0.03, 0.5, 0.77, 0.999) for a in (0.001, 0.05, 0.2)]


def _exact_cp_failures(cases):
    """[(n, p, alpha, P[lower > p], P[upper < p])] for every case, with ONE call per bound (one compile)."""
    ks, ns, als = [], [], []
    for n, _, alpha in cases:
        ks.append(np.arange(n + 1))
        ns.append(np.full(n + 1, n))
        als.append(np.full(n + 1, alpha))
    k, n_all, a_all = np.concatenate(ks), np.concatenate(ns), np.concatenate(als)
    lo = np.asarray(sj.clopper_pearson_lower(k, n_all, a_all))
    up = np.asarray(sj.clopper_pearson_upper(k, n_all, a_all))
    out, start = [], 0
    for n, p, alpha in cases:
        sl = slice(start, start + n + 1)
        start += n + 1
        pmf = stats.binom.pmf(np.arange(n + 1), n, p)
        out.append((n, p, alpha, float(np.sum(pmf[lo[sl] > p])), float(np.sum(pmf[up[sl] < p]))))
    return out


def test_clopper_pearson_exact_coverage():
    """For K ~ Bin(n, p) the probability (exact, summed over all k) that the one-sided bound fails is <= alpha."""
    worst = 0.0
    for n, p, alpha, f_lo, f_up in _exact_cp_failures(CP_CASES):
        worst = max(worst, f_lo / alpha, f_up / alpha)
        assert f_lo <= alpha * (1 + 1e-9), (n, p, alpha, f_lo)
        assert f_up <= alpha * (1 + 1e-9), (n, p, alpha, f_up)
    print(f"\n[coverage] Clopper-Pearson exact: worst failure probability / alpha = {worst:.4f} "
          f"over {len(CP_CASES)} cases")
    assert worst > 0.5  # the bounds are not uselessly loose


@pytest.mark.slow
def test_clopper_pearson_exact_coverage_dense():
    worst = 0.0
    cases = [(n, p, a) for n in (7, 50, 333, 5000) for p in np.linspace(0.001, 0.999, 60) for a in (1e-3, 0.01, 0.1)]
    for n, p, alpha, f_lo, f_up in _exact_cp_failures(cases):
        worst = max(worst, f_lo / alpha, f_up / alpha)
        assert f_lo <= alpha * (1 + 1e-9) and f_up <= alpha * (1 + 1e-9), (n, p, alpha, f_lo, f_up)
    print(f"\n[coverage] Clopper-Pearson exact (dense): worst failure probability / alpha = {worst:.4f}")


def test_cohen_radius_exact_coverage_half_space():
    """Half-space (Cohen tight): P[cohen_radius(CP_lower(K)) > b] summed exactly over K ~ Bin(n, p) is <= alpha."""
    sigma, b = 0.5, 0.4
    p = stats.norm.cdf(b / sigma)
    cases = ((100, 0.1), (1000, 0.05), (10_000, 0.001))
    k = np.concatenate([np.arange(n + 1) for n, _ in cases])
    n_all = np.concatenate([np.full(n + 1, n) for n, _ in cases])
    a_all = np.concatenate([np.full(n + 1, a) for n, a in cases])
    r_all = np.asarray(sj.cohen_radius(sj.clopper_pearson_lower(k, n_all, a_all), sigma))
    for n, alpha in cases:
        sel = (n_all == n)
        r = r_all[sel]
        fail = float(np.sum(stats.binom.pmf(np.arange(n + 1), n, p)[r > b]))
        print(f"\n[coverage] cohen radius exact on half-space n={n} alpha={alpha}: failure probability {fail:.5f}")
        assert fail <= alpha


def _dipole_draws(clf, s0, trials, n_pairs, alpha, seed):
    x0 = point_with_s(clf.w, s0)
    c = clf.top_class(x0, SIGMA)
    both, plus = clf.dipole_both(x0, SIGMA, c), clf.dipole_plus_only(x0, SIGMA, c)
    counts = np.random.default_rng(seed).multinomial(n_pairs, [both, plus, 1 - both - plus], size=trials)
    cs = sj.clopper_pearson_lower(counts[:, 0], n_pairs, alpha / 2)
    cn = sj.clopper_pearson_lower(counts[:, 1], n_pairs, alpha / 2)
    r = np.asarray(sj.dipole_radius(cs, np.minimum(np.asarray(cn), 1 - np.asarray(cs)), SIGMA))
    flip = clf.flip_distance(x0, SIGMA, c, "l2")
    return {
        "bound cs_lower @alpha/2": (int(np.sum(np.asarray(cs) > both)), trials, alpha / 2),
        "bound cn_lower @alpha/2": (int(np.sum(np.asarray(cn) > plus)), trials, alpha / 2),
        "radius dipole_l2 @alpha": (int(np.sum(r > flip)), trials, alpha),
    }


@pytest.mark.parametrize("name,clf,s0", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_dipole_coverage_exact_multinomial(name, clf, s0):
    """Dipole counts drawn from their exact multinomial law (10^4 trials, alpha = 0.2)."""
    out = _dipole_draws(clf, s0, trials=10_000, n_pairs=500, alpha=0.2, seed=7)
    _report(f"{name} dipole multinomial draws: T=10000, pairs=500, alpha=0.2", out)
    _assert_coverage(out)


def test_binomial_check_has_power():
    """The same check rejects a bound that is not one (the point estimate k/n as a 'lower bound')."""
    p, n, trials = 0.77, 500, 2000
    k = np.random.default_rng(3).binomial(n, p, size=trials)
    failures = int(np.sum(k / n > p))  # ~half the time
    assert binomial_pvalue_at_most(failures, trials, 0.1) < LEVEL
    # and a genuine bound at the same level passes
    lo = np.asarray(sj.clopper_pearson_lower(k, n, 0.1))
    assert binomial_pvalue_at_most(int(np.sum(lo > p)), trials, 0.1) >= LEVEL


def test_interval_union_closed_forms_match_sampling():
    """The closed forms the coverage tests trust agree with brute-force NumPy Monte Carlo (4 sigma)."""
    rng = np.random.default_rng(0)
    m = 400_000
    for name, clf, s0 in CLASSIFIERS:
        x0 = point_with_s(clf.w, s0).astype(np.float64)
        e = rng.standard_normal((m, DIM)) * SIGMA
        s_plus = (x0 + e) @ clf.w
        s_minus = (x0 - e) @ clf.w
        inside = lambda s, clf=clf: np.any([(s >= a) & (s <= b) for a, b in clf.intervals], axis=0)
        f_plus, f_minus = inside(s_plus), inside(s_minus)
        c = clf.top_class(x0, SIGMA)
        hit = f_plus if c == 1 else ~f_plus
        hit_m = f_minus if c == 1 else ~f_minus
        tr = clf.truth(x0, SIGMA, c)
        se = lambda q: 4 * math.sqrt(q * (1 - q) / m) + 1e-12  # noqa: E731
        assert abs(hit.mean() - tr["p"]) < se(tr["p"]), name
        assert abs((hit & hit_m).mean() - tr["dipole_both"]) < se(tr["dipole_both"]), name
        # Stein: E[e 1] = sigma^2 grad g
        grad_mc = (e * hit[:, None]).mean(0) / SIGMA**2
        grad_se = 4 * SIGMA * math.sqrt(DIM) / SIGMA**2 / math.sqrt(m)
        assert abs(np.linalg.norm(grad_mc) - tr["grad_l2"]) < grad_se, name


# ------------------------------------------------------------------------------------------------
# First paper: Table 1 gradient-norm bounds and the first-order l1 / linf radii, from split-half
# statistics simulated exactly in NumPy (z_i = e_i (1[f(x0 + e_i) = c] - 1/2), e_i ~ N(0, sigma^2 I),
# even samples -> half a, odd -> half b; counts from the same samples), as sampling.py accumulates.
# ------------------------------------------------------------------------------------------------


def _simulate_split_half(clf, x0, c, trials, n, seed, chunk=250):
    rng = np.random.default_rng(seed)
    mean_a, mean_b, counts = [], [], []
    for start in range(0, trials, chunk):
        m = min(chunk, trials - start)
        e = rng.standard_normal((m, n, DIM)) * SIGMA
        s = (x0.astype(np.float64) + e) @ clf.w
        inside = np.zeros(s.shape, bool)
        for a, b in clf.intervals:
            inside |= (s >= a) & (s <= b)
        hit = inside if c == 1 else ~inside
        z = e * (hit[..., None] - 0.5)
        mean_a.append(z[:, 0::2].mean(1))
        mean_b.append(z[:, 1::2].mean(1))
        counts.append(hit.sum(1))
    return np.concatenate(mean_a), np.concatenate(mean_b), np.concatenate(counts)


def _first_order_coverage(clf, s0, *, trials, alpha, seed, n=N, radii=True):
    x0 = point_with_s(clf.w, s0)
    c = clf.top_class(x0, SIGMA)
    tr = clf.truth(x0, SIGMA, c)
    ma, mb, k = _simulate_split_half(clf, x0, c, trials, n, seed)
    na, nb = n // 2, n // 2
    out = {}

    def record(name, failed, rate):
        out[name] = (int(np.sum(failed)), trials, rate)

    l2 = sj.grad_l2_bounds(ma, mb, na, nb, sigma=SIGMA, alpha=alpha)
    linf = sj.grad_linf_bounds(ma, mb, na, nb, sigma=SIGMA, alpha=alpha)
    l1 = sj.grad_l1_bounds(ma, mb, na, nb, sigma=SIGMA, alpha=alpha)
    record("bound table1 l2 lower @alpha", np.asarray(l2.lower) > tr["grad_l2"], alpha)
    record("bound table1 l2 upper @alpha", np.asarray(l2.upper) < tr["grad_l2"], alpha)
    record("bound table1 linf pair @alpha",
           (np.asarray(linf.lower) > tr["grad_linf"]) | (np.asarray(linf.upper) < tr["grad_linf"]), alpha)
    record("bound table1 l1 pair @alpha",
           (np.asarray(l1.lower) > tr["grad_l1"]) | (np.asarray(l1.upper) < tr["grad_l1"]), alpha)
    ch = sj.grad_l2_bounds(ma, mb, na, nb, sigma=SIGMA, alpha=alpha, method="chernoff")
    record("bound table1 l2 lower (chernoff) @alpha", np.asarray(ch.lower) > tr["grad_l2"], alpha)
    record("bound table1 l2 upper (chernoff) @alpha", np.asarray(ch.upper) < tr["grad_l2"], alpha)
    if radii:
        # the pipeline's split: p at alpha/2, each gradient bound at alpha/4
        p_lo = sj.clopper_pearson_lower(k, n, alpha / 2)
        l2_lo = sj.grad_l2_bounds(ma, mb, na, nb, sigma=SIGMA, alpha=alpha / 4).lower
        linf_up = sj.grad_linf_upper(ma, mb, na, nb, sigma=SIGMA, alpha=alpha / 4)
        l1_up = sj.grad_l1_upper(ma, mb, na, nb, sigma=SIGMA, alpha=alpha / 4)
        r1 = np.asarray(sj.l1_radius(p_lo, l2_lo, linf_up, sigma=SIGMA))
        rinf = np.asarray(sj.linf_radius(p_lo, l2_lo, l1_up, dim=DIM, sigma=SIGMA))
        assert not np.any(np.isnan(r1)) and not np.any(np.isnan(rinf))
        record("radius first_order_l1 @alpha", r1 > tr["flip_l1"], alpha)
        record("radius first_order_linf @alpha", rinf > tr["flip_linf"], alpha)
        out["_mean l1 radius / flip"] = (int(round(1000 * float(np.mean(r1)) / tr["flip_l1"])), 1000, None)
    return out


@pytest.mark.parametrize("name,clf,s0", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_table1_bounds_coverage_quick(name, clf, s0):
    """Table 1 bounds on exact split-half statistics: 1000 trials, n = 2000, alpha = 0.2 (level 1e-3)."""
    out = _first_order_coverage(clf, s0, trials=1000, alpha=0.2, seed=11, radii=False)
    _report(f"{name} Table 1 bounds (NumPy split halves): T=1000, n={N}, alpha=0.2", out)
    _assert_coverage(out)


@pytest.mark.slow
@pytest.mark.parametrize("name,clf,s0", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_first_order_coverage_slow(name, clf, s0):
    """Table 1 bounds and first-order l1/linf radii: 10^4 trials, alpha = 0.2 (level 1e-3)."""
    out = _first_order_coverage(clf, s0, trials=10_000, alpha=0.2, seed=12, radii=True)
    _report(f"{name} first order (NumPy split halves): T=10000, n={N}, alpha=0.2", out)
    _assert_coverage(out)


@pytest.mark.slow
def test_full_pipeline_all_methods_slow():
    """The whole certify program with every default method (wiring of the first-order radii): 1000 trials."""
    for name, clf, s0 in CLASSIFIERS[:2]:
        out = _coverage(clf, s0, trials=1000, alpha=0.1, seed=3000, methods=pipeline.DEFAULT_METHODS)
        _report(f"{name} full pipeline, all methods: T=1000, n={N}, alpha=0.1", out)
        _assert_coverage(out)
