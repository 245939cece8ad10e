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


# A small Flax MLP (4 -> 22 -> 6) whose Dense kernels are split over a "model" mesh axis (tensor
# parallelism, [in, out] -> [in, out / 2] per device). argv: the output file; with 1 device the
# reference run, with 4 the meshes (inputs, samples, model) = (1, 2, 2) and (2, 1, 2), the compiled
# program of the first and the refused shardings.
MODEL_SCRIPT = textwrap.dedent(
    """
    import sys
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import smoothjax
    from smoothjax import _sharding, pipeline
    from smoothjax.flax_adapters import linen_apply_fn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(6)(nn.relu(nn.Dense(22)(x.reshape((x.shape[0], -1)))))

    module = MLP()
    apply_fn, params = linen_apply_fn(module, module.init(jax.random.key(0), jnp.zeros((1, 2, 2))))
    xs = np.linspace(-0.5, 0.5, 20).reshape(5, 2, 2).astype(np.float32)
    key = jax.random.key(7)
    kw = dict(sigma=0.5, n0=50, n=1000, alpha=0.01, batch_size=100, methods=("cohen_l2", "sos_l2", "dipole_l2"))

    def save(out, tag, res):
        out[tag + "prediction"] = np.asarray(res.prediction)
        out[tag + "certify_counts"] = np.asarray(res.statistics.counts)
        out[tag + "selection_counts"] = np.asarray(res.selection_counts)
        for name, r in res.radii.items():
            out[tag + "radius_" + name] = np.asarray(r)

    def place(mesh, kernel_spec):
        return jax.tree_util.tree_map_with_path(
            lambda path, p: jax.device_put(p, NamedSharding(mesh, kernel_spec if path[-1].key == "kernel" else P())),
            params)

    def refused(**kw_call):
        try:
            smoothjax.certify(apply_fn, key=key, xs=xs, **kw, **kw_call)
        except ValueError as err:
            return str(err)
        raise AssertionError("not refused")

    out = {}
    if jax.device_count() == 1:
        save(out, "1x1_", smoothjax.certify(apply_fn, params, xs, key, **kw))
    else:
        devices = np.asarray(jax.devices())
        for shape in ((1, 2, 2), (2, 1, 2)):
            mesh = Mesh(devices.reshape(shape), ("inputs", "samples", "model"))
            sharded = place(mesh, P(None, "model"))
            save(out, "%dx%dx%d_" % shape, smoothjax.certify(apply_fn, sharded, xs, key, mesh=mesh, **kw))
            if shape == (1, 2, 2):
                # the compiled device program of that call: its parameters arrive split over "model"
                # and the whole kernels never appear in it
                config = pipeline._config(kw["methods"], n0=50, n=1000, batch_size=100, dim=4, subspace_dim=None,
                                          xs_dtype=np.float32)
                xs_g, ids_g, _ = _sharding.shard_inputs(mesh, xs, np.arange(5, dtype=np.uint32))
                compiled = pipeline._statistics_jit.lower(apply_fn, sharded, xs_g, key, ids_g, jnp.float32(0.5),
                                                          mesh=mesh, config=config).compile()
                for layer, full in (("Dense_0", (4, 22)), ("Dense_1", (22, 6))):
                    got = compiled.input_shardings[0][0]["params"][layer]["kernel"]
                    assert got.spec == P(None, "model"), got
                    out[layer + "_shard_shape"] = np.asarray(got.shard_shape(full))
                out["hlo"] = np.asarray(compiled.as_text())
                # no mesh= : the mesh the parameters are sharded over
                own = smoothjax.certify(apply_fn, sharded, xs, key, **kw)
                out["own_mesh_counts"] = np.asarray(own.statistics.counts)
                out["error_samples"] = np.asarray(refused(params=place(mesh, P(None, "samples")), mesh=mesh))
                out["error_inputs"] = np.asarray(refused(params=place(mesh, P("inputs", "model")), mesh=mesh))
                try:  # the sampler alone checks the parameters' sharding the same way
                    smoothjax.sample_statistics(apply_fn, place(mesh, P(None, "samples")), xs, key, sigma=0.5,
                                                num_samples=100, batch_size=50, mesh=mesh)
                    out["error_sampler"] = np.asarray("not refused")
                except ValueError as err:
                    out["error_sampler"] = np.asarray(str(err))
                other = Mesh(devices.reshape(2, 2), ("data", "model"))
                out["error_other_mesh"] = np.asarray(refused(params=place(other, P(None, "model")), mesh=mesh))
        # any axis order; the inputs positions of a (model, inputs, samples) mesh
        mesh = Mesh(devices.reshape(2, 2, 1), ("model", "inputs", "samples"))
        out["positions"] = np.asarray(_sharding._local_positions(_sharding.check_mesh(mesh)))
    np.savez(sys.argv[1], **out)
    """
)


def _run_model(path, devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    done = subprocess.run([sys.executable, "-c", MODEL_SCRIPT, str(path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(path))


@pytest.mark.slow  # about 35 s (two subprocesses); the default suite keeps the 4-device mesh test above
def test_parameters_sharded_over_a_model_axis_stay_sharded(tmp_path):
    """Dense kernels split over a "model" axis: counts bitwise equal to one device on the meshes
    (inputs, samples, model) = (1, 2, 2) and (2, 1, 2), radii equal, the kernels split in the
    compiled program; parameters sharded over inputs, samples or another mesh are refused."""
    one = _run_model(tmp_path / "one.npz", 1)
    four = _run_model(tmp_path / "four.npz", 4)
    for shape in ("1x2x2_", "2x1x2_"):
        for name in ("prediction", "certify_counts", "selection_counts"):
            np.testing.assert_array_equal(four[shape + name], one["1x1_" + name], err_msg=shape + name)
        for name in ("cohen_l2", "sos_l2", "dipole_l2"):
            np.testing.assert_allclose(four[shape + "radius_" + name], one["1x1_radius_" + name], rtol=1e-12,
                                       atol=1e-12, err_msg=shape + name)
    assert one["1x1_radius_cohen_l2"].max() > 0  # something is certified
    np.testing.assert_array_equal(four["own_mesh_counts"], one["1x1_certify_counts"])
    # each device holds half of every kernel, and the compiled program never builds a whole one
    assert four["Dense_0_shard_shape"].tolist() == [4, 11] and four["Dense_1_shard_shape"].tolist() == [22, 3]
    hlo = str(four["hlo"])
    assert "f32[4,11]" in hlo and "f32[22,3]" in hlo
    assert "f32[4,22]" not in hlo and "f32[22,6]" not in hlo
    assert "'samples'" in str(four["error_samples"]) and "'inputs'" in str(four["error_inputs"])
    assert "not over the mesh certification runs on" in str(four["error_other_mesh"])
    assert "'samples'" in str(four["error_sampler"])
    assert int(four["positions"]) == 2


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
