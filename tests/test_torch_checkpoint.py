"""PyTorch checkpoints without torch: real ``torch.save`` fixtures, an independent writer and NumPy reference, safety.

What is checked against what:

* ``cifar_resnet20``, ``mnist_net``, ``small_mnist_net`` (legacy format), ``small_mnist_pca_net`` and
  ``swiss_roll_net``: files written by real PyTorch (``scripts/make_torch_fixtures.py``, committed in
  ``tests/data/torch/``) and PyTorch's own logits, float32 and float64.
* ``cifar_resnet110`` and ``resnet50``: checkpoints written here by ``torch_reference`` (its own
  pickle-opcode writer, zip and legacy formats) and logits of its NumPy forward pass. The same two
  were checked once against real PyTorch / torchvision (float64 logits agree to 1e-12); rerun that
  with ``scripts/make_torch_fixtures.py --large DIR`` and ``SMOOTHJAX_TORCH_LARGE_FIXTURES=DIR``
  (``slow`` tests below).
"""

import collections
import io
import lzma
import os
import pathlib
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_reference as ref

from smoothjax.app import architectures
from smoothjax.app import torch_checkpoint as tc

DATA = pathlib.Path(__file__).parent / "data" / "torch"
REAL_TORCH = ("cifar_resnet20", "mnist_net", "small_mnist_net", "small_mnist_pca_net", "swiss_roll_net")
LARGE = os.environ.get("SMOOTHJAX_TORCH_LARGE_FIXTURES")


def _fixture(name: str, tmp_path) -> tuple[str, dict]:
    path = tmp_path / f"{name}.pth.tar"
    path.write_bytes(lzma.decompress((DATA / f"{name}.pth.tar.xz").read_bytes()))
    with np.load(DATA / f"{name}_logits.npz") as npz:
        return str(path), {k: npz[k] for k in npz.files}


def _apply64(arch, variables, x, num_classes=None):
    model = architectures.get_architecture(arch, num_classes=num_classes, dtype=jnp.float64)
    v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    return np.asarray(jax.jit(model.apply)(v64, jnp.asarray(x, jnp.float64)))


# ------------------------------------------------------------------------------------------
# real PyTorch files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", REAL_TORCH)
def test_real_torch_checkpoints_give_torchs_logits(arch, tmp_path):
    path, expected = _fixture(arch, tmp_path)
    arch_arg = arch if str(expected["prefix"]) == "" else None  # the bare state_dict records no arch
    apply_fn, variables, config = tc.load_torch_model(path, arch_arg)
    assert config["architecture"] == arch
    assert config["input_shape"] == list(architectures.arch_spec(arch).input_shape)
    assert config["num_classes"] == expected["logits"].shape[1]
    logits = jax.jit(apply_fn)(variables, expected["x"])
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected["logits"], rtol=0, atol=1e-5)
    # in float64 the only differences left are summation order: the mapping is exact
    np.testing.assert_allclose(_apply64(arch, variables, expected["x"]), expected["logits_float64"], rtol=0, atol=1e-12)


def test_fixture_formats_and_wrappers(tmp_path):
    seen = {}
    for arch in REAL_TORCH:
        path, expected = _fixture(arch, tmp_path)
        state, info = tc.read_state_dict(path)
        prefix = str(expected["prefix"])
        assert all(k.startswith(prefix) for k in state), arch
        seen[(str(expected["format"]), prefix)] = arch
        if prefix:
            assert info["arch"] == arch and info["epoch"] == 90
    assert set(seen) >= {("zip", "1.module."), ("zip", "1."), ("legacy", "1."), ("zip", "")}
    everything = tc.load_torch_checkpoint(_fixture("swiss_roll_net", tmp_path)[0])
    assert set(everything) == {"arch", "state_dict", "epoch", "optimizer"}
    momentum = everything["optimizer"]["state"][0]["momentum_buffer"]
    assert momentum.shape == (10, 2) and momentum.dtype == np.float32
    assert everything["optimizer"]["param_groups"][0]["momentum"] == 0.9


@pytest.mark.slow
@pytest.mark.skipif(not LARGE,
                    reason="set SMOOTHJAX_TORCH_LARGE_FIXTURES to a directory from make_torch_fixtures.py --large")
@pytest.mark.parametrize("arch", ["cifar_resnet110", "resnet50"])
def test_real_torch_large_checkpoints(arch):
    with np.load(os.path.join(LARGE, f"{arch}_logits.npz")) as npz:
        expected = {k: npz[k] for k in npz.files}
    apply_fn, variables, _ = tc.load_torch_model(os.path.join(LARGE, f"{arch}.pth.tar"))
    logits = np.asarray(jax.jit(apply_fn)(variables, expected["x"]))
    # float32 networks this deep differ by PyTorch's own float32 rounding (its float32 vs float64 logits)
    torch_rounding = np.abs(expected["logits"] - expected["logits_float64"]).max()
    assert np.abs(logits - expected["logits_float64"]).max() <= 4 * torch_rounding + 1e-5
    np.testing.assert_allclose(_apply64(arch, variables, expected["x"]), expected["logits_float64"], rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------
# independent writer + NumPy reference
# ------------------------------------------------------------------------------------------


def _write(writer, path, arch, state, prefix="1.module.", **extra):
    wrapped = collections.OrderedDict((prefix + k, v) for k, v in state.items())
    writer(str(path), {"arch": arch, "state_dict": wrapped, "epoch": 7, **extra})
    return str(path)


@pytest.mark.parametrize(
    "arch, writer, hw",
    [
        ("resnet50", ref.write_torch_zip, 32),
        pytest.param("resnet50", ref.write_torch_legacy, 64, marks=pytest.mark.slow),
        pytest.param("cifar_resnet110", ref.write_torch_zip, 32, marks=pytest.mark.slow),
    ],
    ids=["resnet50-zip", "resnet50-legacy-64px", "cifar_resnet110-zip"],
)
def test_large_architectures_against_numpy_reference(arch, writer, hw, tmp_path):
    state = ref.random_state_dict(arch, seed=0)
    path = _write(writer, tmp_path / "checkpoint.pth.tar", arch, state)
    x = np.asarray(jax.random.uniform(jax.random.key(0), (1, hw, hw, 3), jnp.float32))
    apply_fn, variables, config = tc.load_torch_model(path)
    assert config["num_classes"] == (1000 if arch == "resnet50" else 10)
    expected = ref.forward(arch, state, x)
    logits = np.asarray(jax.jit(apply_fn)(variables, x))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_cifar_resnet_mapping_is_exact_in_float64(tmp_path):
    arch = "cifar_resnet20"
    state = ref.random_state_dict(arch, seed=1, num_classes=100)
    path = _write(ref.write_torch_legacy, tmp_path / "c100.pth", arch, state, prefix="module.")
    x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), jnp.float32))
    _, variables, config = tc.load_torch_model(path)
    assert config["num_classes"] == 100  # from the classifier's rows
    np.testing.assert_allclose(_apply64(arch, variables, x, 100), ref.forward(arch, state, x), rtol=0, atol=1e-12)


def test_resnet50_names_and_layouts_cover_torchvision():
    state = ref.random_state_dict("resnet50", seed=2)
    variables = tc.to_flax_variables(state, "resnet50")
    conv = state["layer4.2.conv2.weight"]  # OIHW
    np.testing.assert_array_equal(variables["params"]["layer4_2"]["conv2"]["kernel"], np.transpose(conv, (2, 3, 1, 0)))
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(variables["batch_stats"]["layer1_0"]["downsample_1"]["var"],
                                  state["layer1.0.downsample.1.running_var"])
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], state["bn1.weight"])
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(v.size for k, v in state.items() if not k.endswith(buffers))
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables["params"])) == n_params == 25_557_032


def test_strided_half_and_scalar_tensors(tmp_path):
    base = np.arange(12, dtype=np.float32)
    transposed = ref.StridedTensor(base, offset=0, shape=(4, 3), stride=(1, 4))  # a .t() view
    sliced = ref.StridedTensor(base, offset=5, shape=(2,), stride=(3,))
    half = np.array([1.5, -2.25], np.float16)
    path = str(tmp_path / "misc.pt")
    ref.write_torch_zip(path, {"t": transposed, "s": sliced, "h": half, "n": np.array(7, np.int64),
                               "x": [1, 2.5, None, True]})
    got = tc.load_torch_checkpoint(path)
    np.testing.assert_array_equal(got["t"], base.reshape(3, 4).T)
    np.testing.assert_array_equal(got["s"], [5.0, 8.0])
    assert got["h"].dtype == np.float16 and got["h"].tolist() == [1.5, -2.25]
    assert got["n"].shape == () and int(got["n"]) == 7
    assert got["x"] == [1, 2.5, None, True]

    past_end = ref.StridedTensor(base, offset=10, shape=(3,), stride=(1,))
    ref.write_torch_zip(path, {"bad": past_end})
    with pytest.raises(tc.CheckpointError, match="past the end of its storage"):
        tc.load_torch_checkpoint(path)


def test_plain_numpy_and_python_values_in_a_checkpoint(tmp_path):
    # what torch.save writes for non-tensor fields (pickled by Python's pickle, protocol 2)
    path = tmp_path / "extras.pth"
    blob = {"best_acc": np.float64(0.875), "epochs": {1, 2}, "note": b"\x00\xff", "arch": "swiss_roll_net"}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(blob, protocol=2))
    got = tc.load_torch_checkpoint(str(path))
    assert got == blob and isinstance(got["best_acc"], np.float64)


# ------------------------------------------------------------------------------------------
# refusing code, bad files, mismatches
# ------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": collections.OrderedDict(w=_Evil(marker))}, protocol=2)
    zip_path, legacy_path = tmp_path / "evil_zip.pth.tar", tmp_path / "evil_legacy.pth.tar"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    legacy_path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in (ref.LEGACY_MAGIC, 1001, {})) + payload)
    bare_path = tmp_path / "evil.pkl"
    bare_path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    for path in (zip_path, legacy_path, bare_path):
        with pytest.raises(tc.UnsafeCheckpointError, match=r"references (posix|nt|os)\.system.*refusing to load"):
            tc.load_torch_model(str(path), "swiss_roll_net")
    assert not marker.exists()
    # a class that is not a tensor, even a harmless one, is refused the same way
    with pytest.raises(tc.UnsafeCheckpointError, match="collections.Counter"):
        tc.RestrictedUnpickler(io.BytesIO(pickle.dumps(collections.Counter("ab"), protocol=2))).load()


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        tc.load_torch_model(str(tmp_path / "missing.pth"), "swiss_roll_net")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(tc.CheckpointError, match="not a PyTorch checkpoint"):
        tc.load_torch_model(str(junk), "swiss_roll_net")
    path, _ = _fixture("mnist_net", tmp_path)
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(tc.CheckpointError, match="cannot read|not a PyTorch|truncated"):
        tc.load_torch_model(path)
    legacy, _ = _fixture("small_mnist_net", tmp_path)
    data = pathlib.Path(legacy).read_bytes()
    pathlib.Path(legacy).write_bytes(data[:-100])
    with pytest.raises(tc.CheckpointError, match="truncated"):
        tc.load_torch_model(legacy)


def test_no_arch_recorded_or_unknown(tmp_path):
    path, _ = _fixture("small_mnist_pca_net", tmp_path)  # a bare state_dict
    with pytest.raises(tc.CheckpointError, match="pass --arch"):
        tc.load_torch_model(path)
    with pytest.raises(architectures.ArchitectureError, match="unknown architecture 'lenet'"):
        tc.load_torch_model(path, "lenet")


@pytest.mark.parametrize(
    "fixture, arch, message",
    [
        ("mnist_net", "small_mnist_net",
         r"parameter '1\.conv1\.weight' has shape \[16, 1, 4, 4\], but small_mnist_net needs \[4, 1, 2, 2\]"),
        ("cifar_resnet20", "cifar_resnet110",
         r"it lacks parameter '1\.module\.layer1\.3\.conv1\.weight' \(shape \[16, 16, 3, 3\]\)"),
        ("swiss_roll_net", "mnist_net",
         r"parameter '1\.lin1\.weight' has shape \[10, 2\], but mnist_net needs \[100, 1568\]"),
        ("small_mnist_pca_net", "swiss_roll_net",
         r"parameter 'lin1\.weight' has shape \[100, 10\], but swiss_roll_net needs \[10, 2\]"),
    ],
)
def test_architecture_mismatch_names_the_first_parameter(fixture, arch, message, tmp_path):
    path, _ = _fixture(fixture, tmp_path)
    with pytest.raises(tc.CheckpointError, match=f"checkpoint does not match {arch}: {message}"):
        tc.load_torch_model(path, arch)


def test_extra_parameter_is_named(tmp_path):
    state = ref.random_state_dict("cifar_resnet110", seed=3)
    path = _write(ref.write_torch_zip, tmp_path / "c110.pth", "cifar_resnet110", state, prefix="1.")
    with pytest.raises(tc.CheckpointError,
                       match=r"it has parameter '1\.layer1\.3\.conv1\.weight' .* which cifar_resnet20 does not have"):
        tc.load_torch_model(path, "cifar_resnet20")


# ------------------------------------------------------------------------------------------
# wrapper prefixes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "module.", "1.", "1.module.", "module.1.", "0."])
def test_wrapper_prefixes_are_stripped(prefix):
    state = collections.OrderedDict((prefix + k, np.zeros(2)) for k in ("lin1.weight", "lin1.bias", "lin3.bias"))
    stripped, names = tc.strip_wrapper_prefixes(state)
    assert list(stripped) == ["lin1.weight", "lin1.bias", "lin3.bias"]
    assert names["lin3.bias"] == prefix + "lin3.bias"


def test_sequential_index_inside_the_model_is_kept():
    # keys of an architecture that itself has numbered children must keep them
    state = collections.OrderedDict((k, np.zeros(1)) for k in ("1.layer1.0.conv1.weight", "1.layer1.1.conv1.weight"))
    assert list(tc.strip_wrapper_prefixes(state)[0]) == ["layer1.0.conv1.weight", "layer1.1.conv1.weight"]


def test_normalisation_buffers_are_checked_and_dropped():
    mean, std = architectures.NORMALIZATION["cifar10"]
    state = collections.OrderedDict([("0.means", mean), ("0.sds", std), ("1.fc.bias", np.zeros(10))])
    assert list(tc.strip_wrapper_prefixes(state, "cifar_resnet20")[0]) == ["fc.bias"]
    state["0.sds"] = architectures.NORMALIZATION["imagenet"][1]
    with pytest.raises(tc.CheckpointError, match="normalisation layer has 0.sds"):
        tc.strip_wrapper_prefixes(state, "cifar_resnet20")
