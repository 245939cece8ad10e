"""Models for `smoothjax certify`: Orbax and msgpack checkpoints, PyTorch checkpoints (--arch), --model-fn factories."""

import collections
import os
import pickle
import textwrap
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_reference as ref
from helpers import run_cli

from smoothjax.app import models


@pytest.fixture(autouse=True)
def _no_persistent_cache_in_process(monkeypatch):
    monkeypatch.setenv("SMOOTHJAX_CACHE_DIR", "")


_run = run_cli


# ------------------------------------------------------------------------------------------
# smoothjax checkpoints
# ------------------------------------------------------------------------------------------


def test_orbax_round_trip_and_overwrite(tmp_path):
    config = models.default_config("mlp", (8, 8, 1), 10)
    config["hidden"] = [16]
    config["training"] = {"sigma": 0.25}
    params = models.init_params(config, jax.random.key(0))
    path = str(tmp_path / "model")  # no .msgpack suffix: an Orbax directory
    models.save_model(path, config, params)
    assert os.path.isdir(path)
    models.save_model(path, config, params)  # replaced, not an error
    apply_fn, loaded, loaded_config = models.load_model(path)
    assert loaded_config == config
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), jnp.float32)
    np.testing.assert_array_equal(apply_fn(loaded, x), models.build_model(config).apply(params, x))
    assert models.load_for_certify(path)[2] == config


def _write_msgpack(path, config, params):
    """A msgpack checkpoint holding any ``config`` (save_model's format, without its checks)."""
    import json

    from flax import serialization

    blob = {"format": models.CHECKPOINT_FORMAT, "config": json.dumps(config),
            "params": jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(params))}
    with open(path, "wb") as fh:
        fh.write(serialization.msgpack_serialize(blob))
    return str(path)


BAD_CONFIGS = [
    (lambda c: dict(c, architecture="cnn", features=[16, 32], hidden=64),
     "parameter 'params/Conv_0/bias': absent in the file, shape (16,) for the config"),
    (lambda c: dict(c, architecture="cnn"), "lacks the field 'features' that a cnn needs"),
    (lambda c: {k: v for k, v in c.items() if k != "hidden"}, "lacks the field 'hidden' that a mlp needs"),
    (lambda c: dict(c, hidden=[100, 128]),
     "parameter 'params/Dense_0/bias': shape (128,) in the file, shape (100,) for the config"),
    (lambda c: dict(c, num_classes=3),
     "parameter 'params/Dense_2/bias': shape (10,) in the file, shape (3,) for the config"),
    (lambda c: dict(c, architecture="resnet"), "unknown architecture 'resnet'"),
    (lambda c: dict(c, hidden="128"), "'hidden' must be a list of whole numbers"),
]
BAD_CONFIG_IDS = ["cnn-config-mlp-params", "cnn-without-features", "no-hidden", "other-width", "other-classes",
                  "unknown-arch", "hidden-not-a-list"]


@pytest.mark.parametrize("change, message", BAD_CONFIGS, ids=BAD_CONFIG_IDS)
def test_a_config_that_does_not_fit_its_params_is_a_model_error(change, message, tmp_path):
    _, params, config = models.load_model(models.default_model_path())
    path = _write_msgpack(tmp_path / "bad.msgpack", change(config), params)
    with pytest.raises(models.ModelError) as err:
        models.load_model(path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", BAD_CONFIGS[:3], ids=BAD_CONFIG_IDS[:3])
def test_cli_bad_model_config_is_one_line_exit_2(change, message, tmp_path, capsys):
    _, params, config = models.load_model(models.default_model_path())
    path = _write_msgpack(tmp_path / "bad.msgpack", change(config), params)
    code, _, err = _run(["certify", "--model", path, "--n", "100", "--out", str(tmp_path / "o.tsv")], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("smoothjax certify: error: ")
    assert message in err and "Traceback" not in err


def test_msgpack_and_the_shipped_model_still_load(tmp_path):
    apply_fn, params, config = models.load_for_certify()  # the shipped digits model
    assert config["input_shape"] == [8, 8, 1] and config["training"]["sigma"] == 0.25
    path = str(tmp_path / "copy.msgpack")
    models.save_model(path, config, params)
    assert os.path.isfile(path)
    assert models.load_for_certify(path)[2] == config


def test_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(models.ModelError, match="not a smoothjax Orbax checkpoint"):
        models.load_for_certify(str(tmp_path))


# ------------------------------------------------------------------------------------------
# PyTorch checkpoints
# ------------------------------------------------------------------------------------------


def _cifar_resnet20_checkpoint(path, *, record_arch=True):
    state = ref.random_state_dict("cifar_resnet20", seed=0)
    blob = {"state_dict": collections.OrderedDict(("1." + k, v) for k, v in state.items()), "epoch": 1}
    if record_arch:
        blob["arch"] = "cifar_resnet20"
    ref.write_torch_legacy(str(path), blob)
    return str(path), state


def test_torch_checkpoint_detected_with_or_without_arch(tmp_path):
    path, state = _cifar_resnet20_checkpoint(tmp_path / "checkpoint.pth.tar")
    _, recorded, config = models.load_for_certify(path)  # arch from the checkpoint's "arch" field
    assert config["architecture"] == "cifar_resnet20"
    assert config["input_shape"] == [32, 32, 3] and config["num_classes"] == 10
    _, named, _ = models.load_for_certify(path, arch="cifar_resnet20")
    jax.tree_util.tree_map(np.testing.assert_array_equal, recorded, named)
    np.testing.assert_array_equal(named["params"]["layer3_2"]["conv2"]["kernel"],
                                  np.transpose(state["layer3.2.conv2.weight"], (2, 3, 1, 0)))


def test_arch_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'resnet18'"):
        models.load_for_certify(str(tmp_path / "x.pth"), arch="resnet18")
    with pytest.raises(models.ModelError, match="needs --model"):
        models.load_for_certify(None, arch="resnet50")
    with pytest.raises(models.ModelError, match="not a PyTorch checkpoint"):
        models.load_for_certify(models.default_model_path(), arch="mnist_net")


# ------------------------------------------------------------------------------------------
# --model-fn
# ------------------------------------------------------------------------------------------

USER_MODULE = textwrap.dedent(
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1)))

    def factory(path=None):
        model = Linear()
        params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.float32))
        return model.apply, params

    def with_config():
        apply_fn, params = factory()
        return apply_fn, params, {"input_shape": [8, 8, 1], "training": {"sigma": 0.5}}

    def not_a_pair():
        return {"apply_fn": None}

    def not_callable():
        return 3, {}

    def broken():
        raise RuntimeError("weights not found")

    def wrong_output():
        return (lambda params, x: jnp.zeros((x.shape[0], 2, 2))), {}
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = "smoothjax_user_models_for_tests"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name


def test_model_fn_factory(user_module):
    apply_fn, params, config = models.load_for_certify(model_fn=f"{user_module}:factory")
    assert config["input_shape"] is None and config["num_classes"] is None
    config = models.complete_config(config, apply_fn, params, (8, 8, 1))
    assert config["input_shape"] == [8, 8, 1] and config["num_classes"] == 10
    _, _, config = models.load_for_certify(model_fn=f"{user_module}:with_config")
    assert config["training"]["sigma"] == 0.5 and config["source"]["model_fn"] == f"{user_module}:with_config"


@pytest.mark.parametrize(
    "factory, message",
    [
        ("no_such_module_xyz:factory", "cannot import module 'no_such_module_xyz'"),
        ("{m}:missing", "has no callable 'missing'"),
        ("{m}", "must look like package.module:factory"),
        ("{m}:not_a_pair", r"must return \(apply_fn, params\) or \(apply_fn, params, config\), got dict"),
        ("{m}:not_callable", "with a callable apply_fn"),
        ("{m}:broken", r"broken\(\) raised RuntimeError: weights not found"),
    ],
)
def test_model_fn_errors(user_module, factory, message):
    with pytest.raises(models.ModelError, match=message):
        models.load_for_certify(model_fn=factory.format(m=user_module))


def test_model_fn_wrong_output_and_arch_combination(user_module):
    apply_fn, params, config = models.load_for_certify(model_fn=f"{user_module}:wrong_output")
    message = r"must return logits \[batch, num_classes\]; for a batch of 1 it returned \[1, 2, 2\]"
    with pytest.raises(models.ModelError, match=message):
        models.complete_config(config, apply_fn, params, (8, 8, 1))
    with pytest.raises(models.ModelError, match="cannot be combined with --model-fn"):
        models.load_for_certify(model_fn=f"{user_module}:factory", arch="mnist_net")


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------

CERTIFY_FAST = ["--n0", "8", "--n", "16", "--batch-size", "16", "--methods", "cohen", "--inputs-per-call", "2",
                "--quiet"]


def _tiny_cifar(tmp_path):
    path = tmp_path / "tiny_cifar.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.uniform(size=(2, 32, 32, 3)).astype(np.float32), y=np.array([3, 7]))
    return str(path)


def test_cli_certifies_a_pytorch_cifar_resnet(tmp_path, capsys):
    path, _ = _cifar_resnet20_checkpoint(tmp_path / "cohen.pth.tar")
    out = tmp_path / "cert.tsv"
    argv = ["certify", "--model", path, "--arch", "cifar_resnet20", "--dataset", _tiny_cifar(tmp_path),
            "--sigma", "0.25", *CERTIFY_FAST, "--out", str(out)]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0, stderr
    rows = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    assert len(rows) == 3  # header + 2 inputs
    assert "cohen_l2" in stdout


def test_cli_certifies_a_model_fn(user_module, tmp_path, capsys):
    path = tmp_path / "digits.npz"
    np.savez(path, x=np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32), y=np.array([1, 2]))
    out = tmp_path / "cert.tsv"
    code, stdout, stderr = _run(["certify", "--model-fn", f"{user_module}:with_config", "--dataset", str(path),
                                 *CERTIFY_FAST, "--out", str(out)], capsys)
    assert code == 0, stderr
    assert "sigma=0.5" in stdout  # from the factory's config


def _evil_checkpoint(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth.tar"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl",
                    pickle.dumps({"arch": "cifar_resnet20", "state_dict": {"w": Evil()}}, protocol=2))
    return str(path)


CLI_ERRORS = [
    (lambda t: ["--model", _cifar_resnet20_checkpoint(t / "c.pth")[0], "--arch", "resnet18"],
     "unknown architecture 'resnet18'"),
    (lambda t: ["--model", _cifar_resnet20_checkpoint(t / "c.pth")[0], "--arch", "cifar_resnet110"],
     "checkpoint does not match cifar_resnet110: it lacks parameter '1.layer1.3.conv1.weight'"),
    (lambda t: ["--model", _cifar_resnet20_checkpoint(t / "c.pth", record_arch=False)[0]], "pass --arch"),
    (lambda t: ["--model", _evil_checkpoint(t)],
     "references posix.system" if os.name == "posix" else "refusing to load"),
    (lambda t: ["--model-fn", "no_such_module_xyz:factory"], "cannot import module 'no_such_module_xyz'"),
    (lambda t: ["--model-fn", "smoothjax_user_models_for_tests:not_a_pair"],
     "must return (apply_fn, params)"),
    (lambda t: ["--model-fn", "smoothjax_user_models_for_tests:wrong_output"],
     "must return logits [batch, num_classes]"),
]


@pytest.mark.parametrize("make_args, message", CLI_ERRORS, ids=[
    "unknown-arch", "arch-mismatch", "no-arch", "malicious-pickle", "model-fn-import", "model-fn-return",
    "model-fn-output"])
def test_cli_model_errors_are_one_line_exit_2(make_args, message, tmp_path, capsys, user_module):
    code, _, err = _run(["certify", *make_args(tmp_path), "--dataset", _tiny_cifar(tmp_path), "--sigma", "0.25",
                         "--out", str(tmp_path / "o.tsv")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("smoothjax certify: error: ")
    assert message in err
    assert not (tmp_path / "pwned").exists()


def test_cli_certifies_a_pytorch_cifar_resnet_on_a_cifar10_folder(tmp_path, capsys):
    """The field's setting end to end: a Cohen-style checkpoint and CIFAR-10's python batches on disk."""
    from test_datasets import _cifar_images, _write_cifar_batch

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", _cifar_images(rng, 1), [i])
    _write_cifar_batch(folder / "test_batch", _cifar_images(rng, 2), [3, 7])
    path, _ = _cifar_resnet20_checkpoint(tmp_path / "checkpoint.pth.tar")
    out = tmp_path / "cert.tsv"
    code, stdout, stderr = _run(["certify", "--model", path, "--arch", "cifar_resnet20", "--dataset",
                                 f"cifar10:{tmp_path}", "--sigma", "0.25", *CERTIFY_FAST, "--out", str(out)], capsys)
    assert code == 0, stderr
    rows = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    assert len(rows) == 3 and rows[1].split("\t")[1] == "3" and rows[2].split("\t")[1] == "7"  # labels from test_batch
