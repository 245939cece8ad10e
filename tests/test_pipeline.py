"""predict / certify on analytic classifiers: soundness against true flip distances, invariances,
no recompilation, abstain flags, bad input, TSV output."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from analytic_classifiers import HalfSpace, Slab, unit_vector
from helpers import count_compilations
from scipy import stats

from smoothjax.pipeline import (
    REASON_LOW_PROBABILITY,
    REASON_NONFINITE_INPUT,
    REASON_NONFINITE_LOGITS,
    certify,
    certify_in_batches,
    predict,
)
from smoothjax.sampling import sample_statistics

SIGMA = 0.5
SHAPE = (2,)
W = unit_vector(SHAPE, seed=5)
ALPHA = 0.001
N0, N, BS = 100, 200_000, 4000

ZERO_ORDER = ("cohen_l2", "sos_l2", "dipole_l2")
ALL5 = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf")


def _certify(clf, x0s, methods=None, key=0, **kw):
    args = dict(sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=BS, methods=methods or ALL5)
    args.update(kw)
    xs = jnp.asarray(np.stack(x0s), jnp.float32)
    return certify(clf.apply_fn, clf.params, xs, jax.random.key(key), **args)


# --------------------------------------------------------------------------- predict


def test_predict_matches_binomial_test_decision():
    clf = HalfSpace(W, 0.0)
    x0s = [0.6 * W, -0.6 * W, 0.0 * W, 0.01 * W]
    xs = jnp.asarray(np.stack(x0s), jnp.float32)
    n = 1000
    pred = np.asarray(predict(clf.apply_fn, clf.params, xs, jax.random.key(0), sigma=SIGMA, n=n, alpha=ALPHA,
                              batch_size=250))
    assert pred.dtype == np.int32
    assert pred[0] == 1 and pred[1] == 0  # p = Phi(1.2) = 0.885: the test rejects at 1e-3
    # Same noise (PREDICT uses stream 2 of the key): the decision equals scipy's binomial test.
    st = sample_statistics(clf.apply_fn, clf.params, xs, jax.random.fold_in(jax.random.key(0), 2), sigma=SIGMA,
                           num_samples=n, batch_size=250)
    counts = np.sort(np.asarray(st.counts), axis=1)[:, ::-1]
    for b in range(len(x0s)):
        pvalue = stats.binomtest(int(counts[b, 0]), int(counts[b, 0] + counts[b, 1]), 0.5).pvalue
        expected = int(np.argmax(np.asarray(st.counts)[b])) if pvalue <= ALPHA else -1
        assert pred[b] == expected


def test_predict_abstains_on_nan_logits():
    def nan_model(params, x):
        return jnp.full((x.shape[0], 3), jnp.nan)

    clf = HalfSpace(W, 0.5)
    pred = predict(nan_model, clf.params, jnp.zeros((2, *SHAPE)), jax.random.key(0), sigma=SIGMA, n=100, alpha=ALPHA,
                   batch_size=50)
    np.testing.assert_array_equal(np.asarray(pred), -1)


# --------------------------------------------------------------------------- certify: soundness


MASK = np.array([True, False])  # subspace_l2: perturb only the first coordinate
_NORM = {"first_order_l1": "l1", "first_order_linf": "linf", "subspace_l2": "subspace"}


def _truth(clf, x0, norm):
    args = (x0,) if isinstance(clf, HalfSpace) else (x0, SIGMA)
    if norm == "subspace":
        return clf.flip_distance(*args, "l2", MASK)
    return clf.flip_distance(*args, norm)


def _every_method(clf, x0s):
    """All methods available (+ subspace_l2 when first-order works): one compiled program for all."""
    return _certify(clf, x0s, methods=ALL5, subspace=MASK)


def _check_sound(clf, x0s, res):
    assert set(res.radii) >= set(ZERO_ORDER)
    for name, r in res.radii.items():
        bound = np.array([_truth(clf, x0, _NORM.get(name, "l2")) for x0 in x0s])
        r = np.asarray(r)
        assert np.all(r > 0) and np.all(r <= bound), (name, r, bound)


def _cohen_slack(clf, x0s):
    """Estimation error of Cohen's radius: p_lower within 5 binomial std of p."""
    p = np.array([clf.p(x0, SIGMA) for x0 in x0s])
    return SIGMA * (stats.norm.ppf(p) - stats.norm.ppf(p - 5 * np.sqrt(p * (1 - p) / N)))


def test_half_space_radii_sound_and_sos_equals_cohen():
    """Half-space: Cohen's radius is exact in the limit; SoS equals it (gradient at its maximum)."""
    clf = HalfSpace(W, 0.5)
    x0s = [0.0 * W, 0.3 * W, -0.2 * W]
    res = _every_method(clf, x0s)
    np.testing.assert_array_equal(np.asarray(res.prediction), [clf.top_class(x0) for x0 in x0s])
    np.testing.assert_array_equal(np.asarray(res.abstain_reason), 0)
    _check_sound(clf, x0s, res)
    slack = _cohen_slack(clf, x0s)
    truth = np.array([clf.flip_distance(x0) for x0 in x0s])
    cohen, sos = np.asarray(res.radii["cohen_l2"]), np.asarray(res.radii["sos_l2"])
    assert np.all(cohen >= truth - slack)
    np.testing.assert_array_less(np.abs(sos - cohen), slack)  # SoS spends alpha/2 on p: same slack


def test_slab_sos_beats_cohen_and_all_radii_sound():
    """Slab at and near its centre: gradient ~0, SoS is larger than Cohen's radius; all sound."""
    clf = Slab(W, t=0.6)  # t / sigma = 1.2: p = 0.77
    x0s = [0.0 * W, 0.05 * W, -0.1 * W]
    res = _every_method(clf, x0s)
    np.testing.assert_array_equal(np.asarray(res.prediction), 1)
    np.testing.assert_array_equal(np.asarray(res.abstain_reason), 0)
    _check_sound(clf, x0s, res)
    sos, cohen = np.asarray(res.radii["sos_l2"]), np.asarray(res.radii["cohen_l2"])
    assert np.all(sos > cohen + _cohen_slack(clf, x0s)), (sos, cohen)
    # The dipole certificate also uses the symmetry (no one-sided pairs at the centre).
    assert int(res.statistics.dipole_plus_only[0]) == 0
    assert float(res.radii["dipole_l2"][0]) > float(cohen[0])


def test_first_order_bounds_reported_and_consistent():
    clf = Slab(W, t=0.6)
    x0s = [0.0 * W, 0.05 * W, -0.1 * W]
    res = _every_method(clf, x0s)  # the same program and key as above: cached
    assert {"first_order_l1", "first_order_linf", "subspace_l2"} <= set(res.radii)
    b = {k: np.asarray(v) for k, v in res.bounds.items()}
    # ||g||_2 lower <= ||g||_1 upper; ||g||_inf upper >= 0; subspace bound <= max possible gradient
    assert np.all(b["grad_l2_lower"] <= b["grad_l1_upper"]) and np.all(b["grad_linf_upper"] >= 0)
    p = np.array([clf.p(x0, SIGMA) for x0 in x0s])
    assert np.all(b["grad_l2_lower"] <= stats.norm.pdf(stats.norm.ppf(p)) / SIGMA)
    # first-order radii use p_lower at alpha/2, like SoS
    np.testing.assert_array_equal(np.asarray(res.p_lower["first_order_l1"]), np.asarray(res.p_lower["sos_l2"]))


def test_nan_logits_and_nan_inputs_abstain_with_reasons():
    """Under an outer jit (no host checks): NaN input -> abstain, model NaN logits -> abstain."""

    def sometimes_nan(params, x):
        logits = HalfSpace.apply_fn(params, x)
        return jnp.where((x[:, :1] > 2.0), jnp.nan, logits)  # always NaN near input 1, never near input 2

    clf = HalfSpace(W, 0.5)

    @jax.jit
    def run(xs):
        return certify(sometimes_nan, clf.params, xs, jax.random.key(0), sigma=SIGMA, n0=10, n=100, alpha=ALPHA,
                       batch_size=50, methods=("cohen_l2",))

    res = run(jnp.asarray([[jnp.nan, 0.0], [4.0, 4.0], [0.0, 0.0]], jnp.float32))
    reason, pred = np.asarray(res.abstain_reason), np.asarray(res.prediction)
    assert pred[0] == -1 and reason[0] & REASON_NONFINITE_INPUT
    assert int(res.statistics.nonfinite[1]) > 0
    assert pred[1] == -1 and reason[1] & REASON_NONFINITE_LOGITS
    assert pred[2] == 1 and reason[2] == 0
    np.testing.assert_array_equal(np.asarray(res.radii["cohen_l2"])[:2], 0.0)


# --------------------------------------------------------------------------- invariances, compilation

_SMALL = dict(methods=ZERO_ORDER, n=2000)
# the device program and the host certificate program of certify
_PROGRAMS = ("_statistics_jit", "_certificates", "per_shard")
_SMALL_X = [a * W for a in (0.0, -0.3, 0.1, 0.4)]  # the second is on the boundary: p = 1/2


@pytest.fixture(scope="module")
def small_runs():
    """One dataset of 4 inputs certified in one call, again, and in two calls of 2 (other batch_size)."""
    clf = HalfSpace(W, 0.3)
    full = _certify(clf, _SMALL_X, batch_size=1000, **_SMALL)
    with count_compilations(_PROGRAMS) as compiled:
        again = _certify(clf, _SMALL_X, batch_size=1000, **_SMALL)
    recompiled = bool(compiled)
    halves = [_certify(clf, _SMALL_X[i:i + 2], batch_size=500, input_ids=np.arange(i, i + 2), **_SMALL) for i in (0, 2)]
    with count_compilations(_PROGRAMS) as compiled:
        # new sigma, alpha, ids and inputs: the same compiled programs
        _certify(clf, _SMALL_X[1:3], batch_size=500, input_ids=np.arange(5, 7), sigma=0.4, alpha=0.01, **_SMALL)
        # a dataset of 3 in groups of 2: the last group is padded to 2, so still the same programs
        grouped = certify_in_batches(clf.apply_fn, clf.params, np.stack(_SMALL_X[:3]).astype(np.float32),
                                     jax.random.key(0), inputs_per_call=2, sigma=SIGMA, n0=N0, alpha=ALPHA,
                                     batch_size=500, **_SMALL)
    recompiled = recompiled or bool(compiled)
    return clf, full, again, halves, recompiled, grouped


def test_batching_invariance_same_key_and_no_recompile(small_runs):
    clf, full, again, halves, recompiled, grouped = small_runs
    assert not recompiled
    assert np.asarray(grouped.prediction).shape == (3,)
    for name in ZERO_ORDER:
        np.testing.assert_array_equal(np.asarray(grouped.radii[name]), np.asarray(full.radii[name])[:3])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), full, again)
    for name in ZERO_ORDER:
        joined = np.concatenate([np.asarray(h.radii[name]) for h in halves])
        np.testing.assert_array_equal(joined, np.asarray(full.radii[name]))
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(h.statistics.counts) for h in halves]), np.asarray(full.statistics.counts)
    )


def test_abstains_where_probability_too_low(small_runs):
    res = small_runs[1]
    assert int(res.prediction[1]) == -1 and int(res.abstain_reason[1]) & REASON_LOW_PROBABILITY
    for name, r in res.radii.items():
        assert float(r[1]) == 0.0 and bool(res.method_abstained[name][1])
    np.testing.assert_array_equal(np.asarray(res.prediction)[[0, 2, 3]], 1)
    np.testing.assert_array_equal(np.asarray(res.abstain_reason)[[0, 2, 3]], 0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma=-1.0), "sigma"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=0.0), "alpha"),
        (dict(n0=200, n=100), "n0"),
        (dict(n=101), "even"),
        (dict(batch_size=33), "even"),
        (dict(methods=("cohen",)), "unknown"),
        (dict(methods=("subspace_l2",)), "subspace"),
        (dict(subspace=np.ones(3, bool)), "subspace"),
        (dict(subspace=np.zeros(2, bool)), "no coordinates"),
        (dict(input_ids=[0]), "input_ids"),
    ],
    ids=["sigma", "alpha-big", "alpha-zero", "n0>n", "odd-n", "odd-batch", "method", "no-subspace",
         "subspace-shape", "subspace-empty", "ids"],
)
def test_certify_bad_arguments_raise(kwargs, match):
    clf = HalfSpace(W, 0.5)
    args = dict(sigma=SIGMA, n0=10, n=100, alpha=ALPHA, batch_size=50, methods=("cohen_l2", "sos_l2"))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        certify(clf.apply_fn, clf.params, jnp.zeros((2, *SHAPE), jnp.float32), jax.random.key(0), **args)


def test_certify_bad_inputs_raise():
    clf = HalfSpace(W, 0.5)
    args = dict(sigma=SIGMA, n0=10, n=100, alpha=ALPHA, batch_size=50)
    with pytest.raises(ValueError, match="finite"):
        certify(clf.apply_fn, clf.params, jnp.asarray([[jnp.inf, 0.0]]), jax.random.key(0), **args)
    with pytest.raises(ValueError, match="apply_fn"):
        certify(clf.apply_fn, clf.params, jnp.zeros((2, 3)), jax.random.key(0), **args)


# --------------------------------------------------------------------------- TSV


def test_write_tsv_round_trip(tmp_path, small_runs):
    from smoothjax.app.tsv import write_tsv

    res = small_runs[1]
    path = tmp_path / "out.tsv"
    labels = np.array([1, 1, 0, 1])
    write_tsv(path, res, labels=labels, times=np.array([0.1, 0.2, 0.3, 0.4]), input_ids=np.array([7, 8, 9, 10]))
    with open(path) as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["idx", "label", "predict", "radius_cohen_l2", "radius_sos_l2", "radius_dipole_l2", "correct",
                       "time"]
    assert [int(r[0]) for r in rows[1:]] == [7, 8, 9, 10]
    pred = np.asarray(res.prediction)
    assert [int(r[2]) for r in rows[1:]] == list(pred)
    assert [int(r[6]) for r in rows[1:]] == list((pred == labels).astype(int))
    for j, name in enumerate(ZERO_ORDER):
        np.testing.assert_array_equal([float(r[3 + j]) for r in rows[1:]], np.asarray(res.radii[name]))
    from smoothjax.app import analysis

    table = analysis.read_tsv(str(path))
    np.testing.assert_array_equal(table.radii["cohen_l2"], np.asarray(res.radii["cohen_l2"]))
