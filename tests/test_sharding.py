"""Multi-device and multi-process runs equal the single-device run (forced CPU devices, subprocesses).

Counts are integers reduced exactly, so they must be bitwise equal for every mesh; float sums are
double words whose reduction order changes with the samples axis, so they agree to their
documented accumulation bound (checked here at 1e-12 relative).
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# 5 inputs (not a multiple of the inputs axis: exercises the padding), every statistic, PREDICT
# and CERTIFY, on each mesh shape given.
SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    import smoothjax
    from analytic_classifiers import Slab, unit_vector
    from smoothjax import certify, make_mesh, predict, sample_statistics

    clf = Slab(unit_vector((2, 2), seed=1), t=0.6)
    xs = np.linspace(-0.5, 0.5, 20).reshape(5, 2, 2).astype(np.float32)
    key = jax.random.key(7)
    out = {{"devices": np.array(jax.device_count())}}
    for shape in {meshes!r}:
        mesh = make_mesh(*shape)
        tag = "%dx%d_" % shape
        if shape != (2, 2):  # the mixed mesh is covered by certify below (fewer compilations)
            st = sample_statistics(clf.apply_fn, clf.params, xs, key, sigma=0.5, num_samples=1000, batch_size=100,
                                   target_class=np.ones(5, np.int32), dot_product=True, dipole=True, split_half=True,
                                   input_ids=np.arange(10, 15), mesh=mesh)
            for f in ("counts", "nonfinite", "dipole_both", "dipole_plus_only", "dot_sum", "z_sum_a", "z_sum_b"):
                out[tag + "stats_" + f] = np.asarray(getattr(st, f))
            out[tag + "predict"] = np.asarray(predict(clf.apply_fn, clf.params, xs, key, sigma=0.5, n=1000,
                                                      alpha=0.01, batch_size=100, mesh=mesh))
        res = certify(clf.apply_fn, clf.params, xs, key, sigma=0.5, n0=50, n=1000, alpha=0.01, batch_size=100,
                      methods={methods!r}, mesh=mesh)
        out[tag + "prediction"] = np.asarray(res.prediction)
        out[tag + "certify_counts"] = np.asarray(res.statistics.counts)
        for name, r in res.radii.items():
            out[tag + "radius_" + name] = np.asarray(r)
    np.savez({path!r}, **out)
    """
)


def _run(path, devices, methods, meshes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code = SCRIPT.format(tests=str(ROOT / "tests"), path=str(path), methods=tuple(methods), meshes=list(meshes))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(path))


ZERO_ORDER = ("cohen_l2", "sos_l2", "dipole_l2")
ALL = ZERO_ORDER + ("first_order_l1", "first_order_linf")


def _compare(one, other, prefix_one, prefix_other):
    names = [k[len(prefix_one):] for k in one if k.startswith(prefix_one)]
    assert names
    for name in names:
        if prefix_other + name not in other:  # the 2 x 2 mesh runs certify only
            assert prefix_other == "2x2_" and not name.startswith("radius") and name != "prediction", name
            continue
        a, b = one[prefix_one + name], other[prefix_other + name]
        if np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(b, a, err_msg=prefix_other + name)  # counts, predictions
        else:  # radii from equal counts may differ in the last bit: XLA's CPU code differs per batch size
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=prefix_other + name)


@pytest.mark.parametrize(
    "methods",
    [ZERO_ORDER, pytest.param(ALL, marks=pytest.mark.slow)],  # the Theorem 3 solver compiles slowly
    ids=["zero-order", "all-methods"],
)
def test_every_mesh_of_four_devices_matches_one_device(tmp_path, methods):
    """Input axis, sample axis and both: counts bitwise equal to one device for every mesh shape."""
    one = _run(tmp_path / "one.npz", 1, methods, [(1, 1)])
    four = _run(tmp_path / "four.npz", 4, methods, [(4, 1), (2, 2), (1, 4)])
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4
    for shape in ("4x1_", "2x2_", "1x4_"):
        _compare(one, four, "1x1_", shape)


def test_sharded_program_uses_every_device():
    """Inside the 4-device process the inputs are spread over all devices, 2 inputs per device; fewer
    inputs than devices get their samples split instead of being computed several times over."""
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, smoothjax
        from smoothjax import _sharding, sampling
        f = lambda p, x: jnp.stack([x[:, 0], -x[:, 0]], -1)
        mesh = _sharding.default_mesh()
        xs, ids, _ = _sharding.shard_inputs(mesh, np.zeros((8, 3), np.float32), np.arange(8, dtype=np.uint32))
        seen = []
        def fn(params, x):
            seen.append(x.shape[0])
            return f(params, x)
        sampling.sample_statistics(fn, None, np.zeros((8, 3), np.float32), jax.random.key(0), sigma=1.0,
                                   num_samples=100, batch_size=50)
        print(max(seen[1:]))  # rows per model call inside the program: 2 inputs of the 8 per device
        shapes = [tuple(_sharding.default_mesh(b).devices.shape) for b in (1, 2, 3, 8)]
        assert shapes == [(1, 4), (2, 2), (2, 2), (4, 1)], shapes  # few inputs: split their samples
        print(len(xs.sharding.device_set))
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows, devices = done.stdout.strip().splitlines()[-2:]
    assert devices == "4" and int(rows) == 2 * 50


# Each of 2 processes (2 CPU devices each, gloo collectives) certifies ITS OWN inputs: process 0
# the dataset ids [0, 2, 4], process 1 the ids [1, 3] (uneven on purpose), on a 2 x 2 mesh whose
# samples axis stays inside a process.
PROCESS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, {tests!r})
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=pid)
    import numpy as np
    import smoothjax
    from analytic_classifiers import Slab, unit_vector
    clf = Slab(unit_vector((2, 2), seed=1), t=0.6)
    data = np.linspace(-0.5, 0.5, 20).reshape(5, 2, 2).astype(np.float32)
    ids = np.arange(pid, 5, 2)
    res = smoothjax.certify(clf.apply_fn, clf.params, data[ids], jax.random.key(7), sigma=0.5, n0=50, n=1000,
                            alpha=0.01, batch_size=100, methods=("cohen_l2", "sos_l2", "dipole_l2"),
                            input_ids=ids, mesh=smoothjax.make_mesh(2, 2))
    np.savez(out, ids=np.asarray(res.input_ids), prediction=res.prediction, counts=res.statistics.counts,
             **{{"radius_" + k: v for k, v in res.radii.items()}})
    jax.distributed.shutdown()
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_processes_each_get_their_own_inputs_certified_once(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    code = PROCESS_SCRIPT.format(tests=str(ROOT / "tests"))
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pid), port, str(tmp_path / f"p{pid}.npz")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    parts = [dict(np.load(tmp_path / f"p{pid}.npz")) for pid in (0, 1)]
    np.testing.assert_array_equal(parts[0]["ids"], [0, 2, 4])
    np.testing.assert_array_equal(parts[1]["ids"], [1, 3])
    one = _run(tmp_path / "one.npz", 1, ZERO_ORDER, [(1, 1)])
    for part in parts:
        ids = part["ids"]
        np.testing.assert_array_equal(part["prediction"], one["1x1_prediction"][ids])
        np.testing.assert_array_equal(part["counts"], one["1x1_certify_counts"][ids])
        for name in ("cohen_l2", "sos_l2", "dipole_l2"):
            np.testing.assert_allclose(part["radius_" + name], one["1x1_radius_" + name][ids], rtol=1e-12)
