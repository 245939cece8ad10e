"""The x64 policy: no global setting changed, no 64-bit op on the device, sums as accurate as float64.

The device program (noise, model, statistics) must compile on accelerators without 64-bit
support: exported for TPU and CUDA with x64 ON (the hardest case: a user who turned it on), it
holds no f64, i64 or nextafter op. The certificate math runs in float64 on the host CPU.
"""

import functools
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from analytic_classifiers import HalfSpace, unit_vector

from smoothjax import pipeline, sampling

SHAPE = (4, 4)
W = unit_vector(SHAPE, seed=2)


def _mlp(params, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"]) @ params["w2"]


def _mlp_params():
    rng = np.random.default_rng(7)
    return {"w1": jnp.asarray(rng.normal(size=(16, 32)) / 4, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(32, 5)), jnp.float32)}


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_device_program_has_no_64_bit_or_nextafter_op(platform):
    """Every method on: the exported StableHLO of the per-sample program, with x64 on in this process."""
    assert jax.config.jax_enable_x64
    config = pipeline._config(pipeline.ALL_METHODS, n0=64, n=2000, batch_size=200, dim=16, subspace_dim=4,
                              xs_dtype=np.float32)
    program = jax.jit(functools.partial(pipeline._statistics, _mlp, config=config))
    xs = np.zeros((3, *SHAPE), np.float32)
    exported = jax.export.export(program, platforms=[platform])(
        _mlp_params(), xs, jax.random.key(0), np.arange(3, dtype=np.uint32), np.float32(0.25))
    text = exported.mlir_module()
    found = {op: len(re.findall(r"\b" + op + r"\b", text)) for op in ("f64", "i64", "ui64", "nextafter")}
    assert found == {"f64": 0, "i64": 0, "ui64": 0, "nextafter": 0}, found


USER_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
before = {k: getattr(jax.config, k) for k in ("jax_enable_x64", "jax_default_matmul_precision",
                                               "jax_numpy_dtype_promotion", "jax_default_prng_impl")}
class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = (x - jnp.array([0.4914, 0.4822])) / jnp.array([0.2023, 0.1994])  # constants written as in Cohen's code
        return nn.Dense(3)(x)
import smoothjax
after = {k: getattr(jax.config, k) for k in before}
assert before == after, (before, after)
net = Net()
params = net.init(jax.random.key(0), jnp.zeros((1, 2), jnp.float32))
logits = net.apply(params, jnp.zeros((4, 2), jnp.float32))
assert logits.dtype == jnp.float32, logits.dtype
res = smoothjax.certify(net.apply, params, np.zeros((2, 2), np.float32), jax.random.key(0), sigma=0.25, n0=32,
                        n=200, alpha=0.01, batch_size=100, methods=("cohen_l2",))
assert res.model_dtype == "float32" and res.radii["cohen_l2"].dtype == np.float64
assert not jax.config.jax_enable_x64
print("ok")
"""


def test_import_changes_no_global_setting_and_float32_model_stays_float32():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_ENABLE_X64", None)
    done = subprocess.run([sys.executable, "-c", USER_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def _noise(key, input_id, n, shape):
    words = jax.random.key_data(jax.random.fold_in(jax.random.fold_in(key, 0), input_id)).reshape(-1)[:2]
    return np.asarray(sampling.standard_normal(words.astype(jnp.uint32), jnp.arange(n, dtype=jnp.uint32), shape,
                                               jnp.float32), np.float64)


def test_double_word_sums_within_their_bound_of_the_exact_sums():
    """Split-half and dot-product sums against exactly rounded sums (math.fsum) of the same float32 terms."""
    clf = HalfSpace(W, 0.1)
    n, sigma = 3000, 0.5
    key = jax.random.key(11)
    xs = np.stack([0.2 * W, -0.05 * W]).astype(np.float32)
    st = sampling.sample_statistics(clf.apply_fn, clf.params, xs, jax.random.fold_in(key, 0), sigma=sigma,
                                    num_samples=n, batch_size=250, target_class=np.array([1, 1], np.int32),
                                    dot_product=True, split_half=True)
    # the same noise, recomputed: input b uses fold_in(key', b) with key' = fold_in(key, 0) above
    for b in range(2):
        u = _noise(key, b, n, SHAPE).reshape(n, -1)
        e32 = (u.astype(np.float32) * np.float32(sigma))
        rows = xs[b].reshape(-1)[None].astype(np.float32) + e32
        hit = np.argmax(np.asarray(clf.apply_fn(clf.params, jnp.asarray(rows.reshape(n, *SHAPE)))), -1) == 1
        z = np.where(hit, 0.5, -0.5)[:, None] * u  # exact in float64
        exact_a = np.array([math.fsum(z[0::2, j]) for j in range(z.shape[1])]) * sigma
        exact_b = np.array([math.fsum(z[1::2, j]) for j in range(z.shape[1])]) * sigma
        err = float(st.z_sum_error[b])
        assert 0 < err < 1e-9
        assert np.max(np.abs(st.z_sum_a[b] - exact_a)) <= err
        assert np.max(np.abs(st.z_sum_b[b] - exact_b)) <= err
        prods = (u[0::2].astype(np.float32) * u[1::2].astype(np.float32)).astype(np.float64)  # float32 products
        both = hit[0::2] & hit[1::2]
        exact_dot = math.fsum(float(v) for v in (u[0::2] * u[1::2]).sum(axis=1)[both]) / sigma**2
        assert abs(float(st.dot_sum[b]) - exact_dot) <= float(st.dot_sum_error[b])
        # the bound is tight to the float32 products' rounding, not to the accumulation
        assert float(st.dot_sum_error[b]) <= 2 * 2.0**-24 * np.abs(prods[both]).sum() / sigma**2 * 1.01


def test_dipole_alone_evaluates_n_rows_and_equal_statistics():
    rows_seen = []

    def counting(params, x):
        rows_seen.append(x.shape[0])
        return HalfSpace.apply_fn(params, x)

    clf = HalfSpace(W, 0.1)
    xs = np.stack([0.1 * W, -0.2 * W]).astype(np.float32)
    kw = dict(sigma=0.5, num_samples=1000, batch_size=100, target_class=np.array([1, 0], np.int32), dipole=True)
    full = sampling.sample_statistics(counting, clf.params, xs, jax.random.key(1), **kw)
    full_rows = max(rows_seen)
    rows_seen.clear()
    alone = sampling.sample_statistics(counting, clf.params, xs, jax.random.key(1), pairs_only=True, **kw)
    assert max(rows_seen) * 3 == full_rows * 2  # n rows instead of 1.5 n, in as many steps
    np.testing.assert_array_equal(alone.dipole_both, full.dipole_both)
    np.testing.assert_array_equal(alone.dipole_plus_only, full.dipole_plus_only)
    assert alone.count_samples == 500 and int(alone.counts.sum()) == 2 * 500
    with pytest.raises(ValueError, match="pairs_only"):
        sampling.sample_statistics(counting, clf.params, xs, jax.random.key(1), pairs_only=True, dot_product=True,
                                   **kw)


def test_bfloat16_inputs_get_float32_noise():
    seen = []

    def model(params, x):
        seen.append(x.dtype)
        return HalfSpace.apply_fn(params, x.astype(jnp.bfloat16)).astype(jnp.float32)

    clf = HalfSpace(W, 0.1)
    st = sampling.sample_statistics(model, clf.params, np.zeros((1, *SHAPE)).astype(jnp.bfloat16),
                                    jax.random.key(0), sigma=0.5, num_samples=100, batch_size=50)
    assert int(st.counts.sum()) == 100
    assert seen and all(d == jnp.float32 for d in seen)


@pytest.mark.slow  # Theorem 3 compiles slowly: the default run keeps it under 10 minutes
def test_float32_only_mode_is_sound_against_float64_math():
    """certificate_math='device' in a float32 process: radii never above the float64 host radii."""
    code = f"""
import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
import jax, numpy as np, smoothjax
from analytic_classifiers import HalfSpace, unit_vector
clf = HalfSpace(unit_vector((4, 4), seed=2), 0.1)
xs = np.stack([a * unit_vector((4, 4), seed=2) for a in (0.3, 0.6, 1.0)]).astype(np.float32)
kw = dict(sigma=0.5, n0=64, n=4000, alpha=0.001, batch_size=500, methods=("cohen_l2", "sos_l2", "dipole_l2"))
host = smoothjax.certify(clf.apply_fn, clf.params, xs, jax.random.key(0), **kw)
dev = smoothjax.certify(clf.apply_fn, clf.params, xs, jax.random.key(0), certificate_math="device", **kw)
for m in kw["methods"]:
    h, d = np.asarray(host.radii[m], np.float64), np.asarray(dev.radii[m], np.float64)
    assert str(dev.radii[m].dtype) == "float32", dev.radii[m].dtype
    assert np.all(d <= h) and np.all(d >= h * (1 - 1e-2)), (m, h, d)
print("ok")
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_rows_per_call_caps_model_calls_without_changing_statistics():
    calls = []

    def counting(params, x):
        calls.append(x.shape[0])
        return HalfSpace.apply_fn(params, x)

    clf = HalfSpace(W, 0.1)
    xs = np.stack([a * W for a in (0.1, -0.2, 0.3, 0.0)]).astype(np.float32)
    kw = dict(sigma=0.5, num_samples=1000, batch_size=100, target_class=np.array([1, 0, 1, 1], np.int32),
              dot_product=True, dipole=True, split_half=True)
    whole = sampling.sample_statistics(counting, clf.params, xs, jax.random.key(1), **kw)
    assert max(calls) == 4 * 150
    calls.clear()
    capped = sampling.sample_statistics(counting, clf.params, xs, jax.random.key(1), rows_per_call=300, **kw)
    assert max(calls) == 2 * 150  # two inputs per call
    for field in ("counts", "dipole_both", "dipole_plus_only", "dot_sum", "z_sum_a", "z_sum_b"):
        np.testing.assert_array_equal(getattr(capped, field), getattr(whole, field), err_msg=field)
