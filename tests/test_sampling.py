"""sample_statistics against closed forms on analytic classifiers; invariances, memory, bad input."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from analytic_classifiers import HalfSpace, Slab, unit_vector
from jax.extend.random import threefry_2x32

from smoothjax.sampling import MAX_NUM_SAMPLES, device_statistics, sample_statistics, standard_normal

SIGMA = 0.5
SHAPE = (2, 2)
D = 4
W = unit_vector(SHAPE, seed=3)
Z = 5.0  # tolerance in standard deviations (fixed keys; ~1e-6 two-sided per comparison)


def _all_stats(clf, xs, target, n, batch_size=500, key=0, **kw):
    return sample_statistics(
        clf.apply_fn, clf.params, xs, jax.random.key(key), sigma=SIGMA, num_samples=n, batch_size=batch_size,
        target_class=jnp.asarray(target), dot_product=True, dipole=True, split_half=True, **kw,
    )


def _binomial_ok(count, trials, p):
    std = np.sqrt(trials * p * (1 - p))
    return abs(count - trials * p) <= Z * std + 1e-9


def test_half_space_statistics_match_closed_forms():
    clf = HalfSpace(W, 0.2)
    offsets = np.array([0.0, 0.3, -0.9])  # scores b + a: 0.2, 0.5, -0.7 (top class 0 for the last)
    x0s = [a * W for a in offsets]
    xs = jnp.asarray(np.stack(x0s), jnp.float32)
    target = [clf.top_class(x0) for x0 in x0s]
    n = 200_000
    st = _all_stats(clf, xs, target, n, batch_size=2000)
    counts = np.asarray(st.counts)
    assert counts.dtype == np.int64 and counts.shape == (3, 3)
    np.testing.assert_array_equal(counts.sum(axis=1), n)
    np.testing.assert_array_equal(counts[:, 2], 0)
    np.testing.assert_array_equal(np.asarray(st.nonfinite), 0)
    m = n // 2
    for b, x0 in enumerate(x0s):
        p = clf.p(x0, SIGMA)
        assert _binomial_ok(counts[b, target[b]], n, p)
        grad = clf.grad(x0, SIGMA).ravel()
        # dot statistic: mean of m iid terms with |term| <= |u.u'| / sigma^2, E(u.u')^2 = d.
        tol = Z * np.sqrt(D / m) / SIGMA**2
        assert abs(float(st.dot_mean[b]) - grad @ grad) <= tol
        # split halves: z_k = e_k (1 - 1/2), Var z_k <= sigma^2 / 4; mean estimates sigma^2 grad.
        for mean, num in ((st.z_mean_a[b], st.num_a), (st.z_mean_b[b], st.num_b)):
            tol_z = Z * SIGMA / (2 * np.sqrt(num))
            np.testing.assert_array_less(np.abs(np.asarray(mean) - SIGMA**2 * grad), tol_z)
        assert _binomial_ok(int(st.dipole_both[b]), m, clf.dipole_both(x0, SIGMA))
        assert _binomial_ok(int(st.dipole_plus_only[b]), m, clf.dipole_plus_only(x0, SIGMA))


def test_slab_statistics_match_closed_forms():
    clf = Slab(W, t=0.6)
    x0s = [np.zeros(SHAPE), 0.25 * W]
    xs = jnp.asarray(np.stack(x0s), jnp.float32)
    n = 100_000
    st = _all_stats(clf, xs, [1, 1], n, batch_size=1000)
    m = n // 2
    for b, x0 in enumerate(x0s):
        assert _binomial_ok(int(st.counts[b, 1]), n, clf.p(x0, SIGMA))
        grad = clf.grad(x0, SIGMA).ravel()
        assert abs(float(st.dot_mean[b]) - grad @ grad) <= Z * np.sqrt(D / m) / SIGMA**2
        np.testing.assert_array_less(
            np.abs(np.asarray(st.z_mean_a[b]) - SIGMA**2 * grad), Z * SIGMA / (2 * np.sqrt(st.num_a))
        )
        assert _binomial_ok(int(st.dipole_both[b]), m, clf.dipole_both(x0, SIGMA))
    # At the centre the slab is symmetric: x+e is inside iff x-e is, so no pair is one-sided.
    assert int(st.dipole_plus_only[0]) == 0
    assert _binomial_ok(int(st.dipole_plus_only[1]), m, clf.dipole_plus_only(x0s[1], SIGMA))


_X3 = np.stack([np.zeros(SHAPE), 0.2 * W, -0.3 * W])
_T3 = [1, 1, 0]


def test_chunk_size_invariance():
    """Noise is drawn per sample index: counts are identical for any batch size (302: a remainder)."""
    clf = HalfSpace(W, 0.1)
    xs = jnp.asarray(_X3, jnp.float32)
    a, b = (_all_stats(clf, xs, _T3, 2000, batch_size=bs) for bs in (2000, 302))
    for field in ("counts", "nonfinite", "dipole_both", "dipole_plus_only"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
    for field in ("dot_sum", "dot_sq_sum", "z_sum_a", "z_sum_b"):
        np.testing.assert_allclose(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), rtol=1e-5, atol=1e-5)


def test_same_key_same_result_and_input_id_invariance():
    clf = HalfSpace(W, 0.1)
    xs = jnp.asarray(_X3, jnp.float32)
    a = _all_stats(clf, xs, _T3, 2000, batch_size=302)
    b = _all_stats(clf, xs, _T3, 2000, batch_size=302)
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)
    # the same inputs in another order, with their ids, give the same rows
    perm = np.array([2, 0, 1])
    c = _all_stats(clf, xs[perm], [_T3[i] for i in perm], 2000, batch_size=302, input_ids=perm)
    np.testing.assert_array_equal(np.asarray(c.counts), np.asarray(a.counts)[perm])
    np.testing.assert_array_equal(np.asarray(c.dipole_both), np.asarray(a.dipole_both)[perm])
    np.testing.assert_allclose(np.asarray(c.z_sum_a), np.asarray(a.z_sum_a)[perm], rtol=1e-6)
    other = _all_stats(clf, xs, _T3, 2000, batch_size=302, key=1)
    assert not np.array_equal(np.asarray(other.counts), np.asarray(a.counts))


def _reference_noise(key_words, idx, shape, dtype):
    """The noise as defined: Threefry words of the counters ``(i, j // 2)`` laid out as all first
    words then all second words, turned into normals as ``jax.random.normal`` does."""
    dim = int(np.prod(shape))
    words = dim * (2 if dtype == np.float64 else 1)
    pairs = (words + 1) // 2
    counters = np.concatenate([np.repeat(idx, pairs), np.tile(np.arange(pairs, dtype=np.uint32), len(idx))])
    out = np.asarray(threefry_2x32(tuple(key_words), jnp.asarray(counters)))
    half = len(idx) * pairs
    bits = np.concatenate([out[:half].reshape(-1, pairs), out[half:].reshape(-1, pairs)], axis=1)[:, :words]
    if dtype == np.float64:
        bits = (bits[:, :dim].astype(np.uint64) << np.uint64(32)) | bits[:, dim:].astype(np.uint64)
        unit = ((bits >> np.uint64(12)) | np.uint64(0x3FF0000000000000)).view(np.float64) - 1.0
    else:
        unit = ((bits >> np.uint32(9)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1.0)
    v = jnp.maximum(dtype(2.0) * jnp.asarray(unit) - dtype(1.0), np.nextafter(dtype(-1), dtype(0)))
    return np.asarray(dtype(np.sqrt(2.0)) * jax.lax.erf_inv(v)).reshape((len(idx), *shape))


@pytest.mark.parametrize("shape, dtype", [((8, 8, 1), np.float32), ((7,), np.float32), ((3, 5), np.float64)])
def test_noise_is_bitwise_the_documented_draw(shape, dtype):
    """``standard_normal`` transforms the two hash words separately (for speed): same bits as the definition."""
    key_words = np.array([0x12345678, 0x9ABCDEF0], np.uint32)
    idx = np.array([0, 1, 2, 1000, 2**32 - 1], np.uint32)
    got = jax.jit(standard_normal, static_argnums=(2, 3))(jnp.asarray(key_words), jnp.asarray(idx), shape,
                                                         jnp.dtype(dtype))
    want = _reference_noise(key_words, idx, shape, dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got).view(np.uint8), want.view(np.uint8))


def test_rows_per_call_does_not_change_the_statistics():
    clf = HalfSpace(W, 0.1)
    xs = jnp.asarray(_X3, jnp.float32)
    a, b = (_all_stats(clf, xs, _T3, 1000, batch_size=200, rows_per_call=rpc) for rpc in (None, 300))
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


def test_pair_dots_in_blocks_are_the_same_sums():
    from smoothjax.sampling import _pair_dots

    uu = jax.random.normal(jax.random.key(0), (3, 37, 2, 1000), jnp.float32)
    whole, blocks = jax.jit(lambda u: _pair_dots(u, 10**9))(uu), jax.jit(lambda u: _pair_dots(u, 7000))(uu)
    for a, b in zip(whole[:2], blocks[:2]):  # the double word u.u', bit for bit
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(whole[2]), np.asarray(blocks[2]), rtol=1e-6)  # sum |u_j u'_j|


def test_grouped_and_blocked_program_has_no_64_bit_op():
    """rows_per_call (groups of inputs) and long inputs (dot products in blocks of pairs) under x64."""
    import re

    assert jax.config.jax_enable_x64
    program = jax.jit(functools.partial(
        device_statistics, lambda p, x: x.reshape(x.shape[0], -1)[:, :3], None, num_samples=1000, batch_size=100,
        dot_product=True, dipole=True, split_half=True, rows_per_call=150))
    args = (jnp.zeros((4, 3072), jnp.float32), jax.random.key(0), jnp.float32(0.5), jnp.zeros(4, jnp.int32),
            jnp.arange(4, dtype=jnp.uint32))
    text = jax.export.export(program, platforms=["tpu"])(*args).mlir_module()
    assert not re.findall(r"\b(f64|i64|ui64)\b", text)


def test_every_key_implementation_works():
    """rbg keys give the noise of the Threefry key of the same seed; unsafe_rbg keys their own, deterministic."""
    clf = HalfSpace(W, 0.1)
    xs = jnp.asarray(_X3, jnp.float32)

    def stats(key, batch_size=100):
        return sample_statistics(clf.apply_fn, clf.params, xs, key, sigma=SIGMA, num_samples=400,
                                 batch_size=batch_size, target_class=jnp.asarray(_T3), split_half=True)

    threefry = stats(jax.random.key(7))
    for impl in ("rbg", "unsafe_rbg"):
        a, b = stats(jax.random.key(7, impl=impl)), stats(jax.random.key(7, impl=impl), batch_size=50)
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.z_sum_a, b.z_sum_a)
        same = np.array_equal(a.z_sum_a, threefry.z_sum_a) and np.array_equal(a.counts, threefry.counts)
        assert same == (impl == "rbg"), impl
    raw = stats(jax.random.PRNGKey(7))  # a raw uint32 key: the Threefry key of that seed
    np.testing.assert_array_equal(raw.z_sum_a, threefry.z_sum_a)


def test_runs_under_outer_jit_and_noise_dtype_follows_input():
    seen = []

    def apply_fn(params, x):
        seen.append(x.dtype)
        return HalfSpace.apply_fn(params, x)

    clf = HalfSpace(W, 0.1)
    f = jax.jit(functools.partial(sample_statistics, apply_fn, num_samples=100, batch_size=50))
    st = f(clf.params, jnp.zeros((2, *SHAPE), jnp.float32), jax.random.key(0), sigma=SIGMA)
    assert int(st.counts.sum()) == 200
    assert all(d == jnp.float32 for d in seen)
    seen.clear()
    sample_statistics(apply_fn, clf.params, np.zeros((1, *SHAPE), np.float64), jax.random.key(0),
                      sigma=SIGMA, num_samples=10, batch_size=10)
    assert seen and all(d == jnp.float64 for d in seen)


def test_nonfinite_logits_are_counted():
    def nan_model(params, x):
        logits = HalfSpace.apply_fn(params, x)
        bad = x.reshape(x.shape[0], -1)[:, 0] > 0  # about half of the noisy inputs
        return jnp.where(bad[:, None], jnp.nan, logits)

    clf = HalfSpace(W, 0.1)
    st = sample_statistics(nan_model, clf.params, jnp.zeros((1, *SHAPE), jnp.float32), jax.random.key(0),
                           sigma=SIGMA, num_samples=1000, batch_size=100)
    assert 300 < int(st.nonfinite[0]) < 700


def _memory(n):
    clf = HalfSpace(unit_vector((8, 8, 1)), 0.1)
    args = (clf.params, jnp.zeros((4, 8, 8, 1), jnp.float32), jax.random.key(0), jnp.float32(0.25),
            jnp.zeros(4, jnp.int32), jnp.arange(4, dtype=jnp.uint32))
    kw = dict(num_samples=n, batch_size=1000, dot_product=True, dipole=True, split_half=True)
    compiled = jax.jit(functools.partial(device_statistics, clf.apply_fn, **kw)).lower(*args).compile()
    mem = compiled.memory_analysis()
    return mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes


def test_peak_memory_flat_in_num_samples():
    small, large = _memory(10_000), _memory(1_000_000)
    assert small > 0
    assert abs(large - small) <= 0.1 * small, (small, large)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(num_samples=101, dot_product=True), "even"),
        (dict(batch_size=51, dipole=True), "even"),
        (dict(num_samples=0), "at least 1"),
        (dict(num_samples=MAX_NUM_SAMPLES + 2), "exceeds"),
        (dict(num_samples=10.0), "integer"),
        (dict(split_half=True), "target_class"),
    ],
    ids=["sigma0", "sigma-nan", "odd-n", "odd-batch", "n0", "n-overflow", "float-n", "no-target"],
)
def test_bad_arguments_raise(kwargs, match):
    clf = HalfSpace(W, 0.1)
    args = dict(sigma=SIGMA, num_samples=100, batch_size=50)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sample_statistics(clf.apply_fn, clf.params, jnp.zeros((2, *SHAPE), jnp.float32), jax.random.key(0), **args)


def test_bad_inputs_raise():
    clf = HalfSpace(W, 0.1)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="finite"):
        sample_statistics(clf.apply_fn, clf.params, jnp.full((1, *SHAPE), jnp.nan), key, sigma=SIGMA,
                          num_samples=10, batch_size=10)
    with pytest.raises(ValueError, match="batch axis"):
        sample_statistics(clf.apply_fn, clf.params, jnp.zeros(4), key, sigma=SIGMA, num_samples=10, batch_size=10)
    with pytest.raises(ValueError, match="apply_fn"):  # w has 4 entries; inputs with 9 do not fit
        sample_statistics(clf.apply_fn, clf.params, jnp.zeros((1, 3, 3)), key, sigma=SIGMA, num_samples=10,
                          batch_size=10)
    with pytest.raises(ValueError, match="logits"):
        sample_statistics(lambda p, x: jnp.zeros(x.shape[0]), None, jnp.zeros((1, *SHAPE)), key, sigma=SIGMA,
                          num_samples=10, batch_size=10)
    with pytest.raises(ValueError, match="input_ids"):
        sample_statistics(clf.apply_fn, clf.params, jnp.zeros((2, *SHAPE)), key, sigma=SIGMA, num_samples=10,
                          batch_size=10, input_ids=np.array([0, -1]))


def test_counts_do_not_overflow_in_32_bit_mode():
    """In a fresh process x64 is off, so counts are int32 and n >= 2^31 is refused instead of wrapping around."""
    code = (
        "import jax, jax.numpy as jnp, numpy as np, smoothjax\n"
        "from smoothjax.sampling import sample_statistics, count_dtype\n"
        "assert not jax.config.jax_enable_x64 and count_dtype() == jnp.int32\n"
        "f = lambda p, x: jnp.stack([x[:, 0], -x[:, 0]], -1)\n"
        "try:\n"
        "    sample_statistics(f, None, np.zeros((1, 2), np.float32), jax.random.key(0), sigma=1.0,\n"
        "                      num_samples=2**31, batch_size=10)\n"
        "except ValueError as e:\n"
        "    assert 'exceeds' in str(e); print('ok')\n"
    )
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")  # x64 off even if the caller exported it
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _throughput(repeats=15, inputs=8, batch_size=256, chunks=10):
    """Seconds (min over interleaved repeats) of the bare jitted forward pass and of sample_statistics.

    Model: smoothjax.app.models.SmallCNN (conv 16, conv 32 stride 2, dense 64, 10 classes) on 8x8x1
    inputs. The bare pass evaluates the model on the same number of rows inside one jitted
    ``fori_loop`` (the input changes every step, so XLA cannot hoist the call out of the loop).
    """
    import time

    from smoothjax.app.models import SmallCNN

    model = SmallCNN(features=(16, 32), hidden=64, num_classes=10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.float32))
    xs = jax.random.normal(jax.random.key(1), (inputs, 8, 8, 1), jnp.float32)
    rows = jax.random.normal(jax.random.key(2), (inputs * batch_size, 8, 8, 1), jnp.float32)

    @jax.jit
    def bare(params, rows):
        def body(i, acc):
            return acc + jnp.sum(jnp.argmax(model.apply(params, rows + i.astype(jnp.float32)), -1))

        return jax.lax.fori_loop(0, chunks, body, 0)

    programs = {}

    def stats(**flags):
        key = tuple(sorted(flags.items()))
        if key not in programs:
            programs[key] = jax.jit(functools.partial(device_statistics, model.apply, num_samples=batch_size * chunks,
                                                      batch_size=batch_size, **flags))
        return programs[key](params, xs, jax.random.key(3), jnp.float32(0.25), jnp.zeros(inputs, jnp.int32),
                             jnp.arange(inputs, dtype=jnp.uint32))

    cases = {
        "bare forward": lambda: bare(params, rows),
        "counts": lambda: stats(),
        "counts+dot+split_half": lambda: stats(dot_product=True, split_half=True),
        "all (+dipole, 1.5x rows)": lambda: stats(dot_product=True, split_half=True, dipole=True),
    }
    for f in cases.values():
        jax.block_until_ready(f())
    times = {k: [] for k in cases}
    for _ in range(repeats):  # interleaved, so a change of machine load hits every case alike
        for name, f in cases.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[name].append(time.perf_counter() - t)
    samples = inputs * batch_size * chunks
    return {k: np.asarray(v) for k, v in times.items()}, samples


@pytest.mark.slow
def test_statistics_cost_at_most_ten_percent_over_bare_forward_pass():
    """Time per model row of sample_statistics vs the bare forward pass: median of per-repeat ratios."""
    times, samples = _throughput()
    base = times["bare forward"]
    ratios = {}
    for name, t in times.items():
        rows = samples * (1.5 if "dipole" in name else 1)
        ratios[name] = float(np.median(t / rows / (base / samples)))
        print(f"{name:26s} {samples / t.min():>10,.0f} samples/s  {rows / t.min():>10,.0f} model rows/s (best)  "
              f"time per row vs bare (median ratio): {ratios[name]:.3f}")
    assert ratios["counts+dot+split_half"] <= 1.10
    assert ratios["all (+dipole, 1.5x rows)"] <= 1.10
