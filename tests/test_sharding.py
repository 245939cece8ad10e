"""Multi-device runs (4 forced CPU devices, in a subprocess) equal the single-device run."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs in both processes: 5 inputs (not a multiple of 4: exercises the padding), every statistic,
# PREDICT and (when the certificate modules exist) CERTIFY.
SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    import smoothjax
    from analytic_classifiers import Slab, unit_vector
    from smoothjax import certify, predict, sample_statistics

    clf = Slab(unit_vector((2, 2), seed=1), t=0.6)
    xs = jnp.asarray(np.linspace(-0.5, 0.5, 20).reshape(5, 2, 2), jnp.float32)
    key = jax.random.key(7)
    out = {{"devices": np.array(jax.device_count())}}
    st = sample_statistics(clf.apply_fn, clf.params, xs, key, sigma=0.5, num_samples=1000, batch_size=250,
                           target_class=jnp.ones(5, jnp.int32), dot_product=True, dipole=True, split_half=True,
                           input_ids=np.arange(10, 15))
    for f in ("counts", "nonfinite", "dipole_both", "dipole_plus_only", "dot_sum", "z_sum_a", "z_sum_b"):
        out["stats_" + f] = np.asarray(getattr(st, f))
    out["predict"] = np.asarray(predict(clf.apply_fn, clf.params, xs, key, sigma=0.5, n=1000, alpha=0.01,
                                        batch_size=250))
    res = certify(clf.apply_fn, clf.params, xs, key, sigma=0.5, n0=50, n=1000, alpha=0.01, batch_size=250,
                  methods={methods!r})
    out["prediction"] = np.asarray(res.prediction)
    for name, r in res.radii.items():
        out["radius_" + name] = np.asarray(r)
    np.savez({path!r}, **out)
    """
)


def _run(path, devices, methods):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code = SCRIPT.format(tests=str(ROOT / "tests"), path=str(path), methods=tuple(methods))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(path))


ZERO_ORDER = ("cohen_l2", "sos_l2", "dipole_l2")
ALL = ZERO_ORDER + ("first_order_l1", "first_order_linf")


@pytest.mark.parametrize(
    "methods",
    [ZERO_ORDER, pytest.param(ALL, marks=pytest.mark.slow)],  # the Theorem 3 solver compiles slowly
    ids=["zero-order", "all-methods"],
)
def test_four_devices_match_one_device(tmp_path, methods):
    one = _run(tmp_path / "one.npz", 1, methods)
    four = _run(tmp_path / "four.npz", 4, methods)
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4
    assert set(one) == set(four)
    for name in one:
        if name == "devices":
            continue
        if np.issubdtype(one[name].dtype, np.integer):
            np.testing.assert_array_equal(four[name], one[name], err_msg=name)
        else:
            np.testing.assert_allclose(four[name], one[name], rtol=1e-6, atol=1e-9, err_msg=name)


def test_sharded_program_uses_every_device():
    """Inside the 4-device process the certify program is partitioned over the input axis."""
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, smoothjax
        from smoothjax.sampling import _sample_statistics_jit
        f = lambda p, x: jnp.stack([x[:, 0], -x[:, 0]], -1)
        out = _sample_statistics_jit(f, None, jnp.zeros((8, 3), jnp.float32), jax.random.key(0), jnp.asarray(1.0),
                                     jnp.zeros(8, jnp.int32), jnp.arange(8, dtype=jnp.uint32),
                                     num_samples=100, batch_size=50)
        print(len(out.counts.sharding.device_set))
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "4"
