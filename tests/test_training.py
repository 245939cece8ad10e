"""The training loop: learning, determinism, divergence stops (also on the command line), checkpoints
and resume, data-parallel training equal to single-device training, the progress bar, and the
reduced configuration of the certificate-training experiment."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax import objectives
from smoothjax.app import cli, datasets, models, training

SMALL_MLP = {"architecture": "mlp", "input_shape": [8, 8, 1], "num_classes": 10, "hidden": [64]}


@pytest.fixture(scope="module")
def digits_train():
    full = datasets.load_dataset("digits", "train")
    return datasets.Dataset("digits", "train", full.x[:640], full.y[:640], 10)


def _short(data, seed, epochs=8):
    return training.train(data, sigma=0.25, config=SMALL_MLP, epochs=epochs, batch_size=64, learning_rate=5e-3,
                          seed=seed)


@pytest.fixture(scope="module")
def short_run(digits_train):
    return _short(digits_train, seed=3)


def test_loss_decreases_and_model_learns(short_run):
    losses = [h["loss"] for h in short_run.history]
    assert losses[0] > 1.5  # about log(10) = 2.3 at the start
    assert losses[-1] < 0.6 * losses[0]
    assert all(np.isfinite(losses))
    test = datasets.load_dataset("digits", "test")
    assert training.accuracy(short_run.apply_fn, short_run.params, test.x, test.y) > 0.75  # chance is 0.1


def test_training_is_deterministic_given_the_seed(digits_train, short_run):
    again = _short(digits_train, seed=3)
    for a, b in zip(jax.tree_util.tree_leaves(short_run.params), jax.tree_util.tree_leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["loss"] for h in again.history] == [h["loss"] for h in short_run.history]
    # a different seed gives different initial parameters
    a = models.init_params(SMALL_MLP, jax.random.split(jax.random.key(3), 3)[0])
    b = models.init_params(SMALL_MLP, jax.random.split(jax.random.key(4), 3)[0])
    assert not all(
        np.array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_cnn_trains_on_spirals_shape_checks():
    data = datasets.load_dataset("spirals", "train")
    with pytest.raises(models.ModelError, match="cnn needs image inputs"):
        training.train(data, sigma=0.1, architecture="cnn", epochs=1)
    cfg = models.default_config("cnn", (8, 8, 1), 10)
    params = models.init_params(cfg, jax.random.key(0))
    logits = models.build_model(cfg).apply(params, jnp.zeros((3, 8, 8, 1)))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_training_uses_the_objectives_gaussian_loss(digits_train):
    """One Gaussian-augmentation loss (smoothjax.objectives); the training loop minimises it."""
    assert not hasattr(training, "gaussian_augmentation_loss") and not hasattr(training, "resolve_objective")
    cfg = models.default_config("mlp", (4,), 3)
    model = models.build_model(cfg)
    params = models.init_params(cfg, jax.random.key(1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    y = jnp.array([0, 1, 2, 1, 0])
    key = jax.random.key(7)
    loss = objectives.gaussian_augmentation_loss(model.apply, params, x, y, key, sigma=0.5)
    noise = np.asarray(jax.random.normal(key, (1,) + x.shape, dtype=x.dtype))[0]
    logits = np.asarray(model.apply(params, np.asarray(x) + 0.5 * noise), np.float64)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(float(loss), -np.mean(logp[np.arange(5), np.asarray(y)]), rtol=1e-5)


def test_unknown_objective_is_a_value_error(digits_train):
    with pytest.raises(ValueError, match="objective"):
        training.train(digits_train, sigma=0.25, objective="no-such-objective", epochs=1)
    with pytest.raises(ValueError, match="sigma"):
        training.train(digits_train, sigma=0.0, epochs=1)


def test_checkpoint_round_trip_is_loadable_without_smoothjax(tmp_path, short_run):
    path = str(tmp_path / "m.msgpack")
    config = dict(short_run.config, training={"sigma": 0.25})
    models.save_model(path, config, short_run.params)
    apply_fn, params, loaded = models.load_model(path)
    assert loaded == json.loads(json.dumps(config))
    x = datasets.load_dataset("digits", "test").x[:7]
    np.testing.assert_array_equal(np.asarray(apply_fn(params, x)), np.asarray(short_run.apply_fn(short_run.params, x)))
    # plain flax.serialization can read it back
    import flax.serialization

    blob = flax.serialization.msgpack_restore(open(path, "rb").read())
    assert blob["format"] == models.CHECKPOINT_FORMAT and json.loads(blob["config"])["architecture"] == "mlp"


def test_load_model_errors(tmp_path):
    with pytest.raises(models.ModelError, match="not found"):
        models.load_model(str(tmp_path / "nope.msgpack"))
    (tmp_path / "bad.msgpack").write_bytes(b"\x00\x01garbage")
    with pytest.raises(models.ModelError, match="not a smoothjax model checkpoint"):
        models.load_model(str(tmp_path / "bad.msgpack"))


def test_shipped_model_is_small_and_accurate():
    import os

    path = models.default_model_path()
    assert os.path.getsize(path) < 300_000
    apply_fn, params, config = models.load_model(path)
    assert config["training"]["sigma"] == 0.25
    test = datasets.load_dataset("digits", "test")
    assert training.accuracy(apply_fn, params, test.x, test.y) > 0.95
    assert training.accuracy(apply_fn, params, test.x, test.y, sigma=0.25) > 0.85


# ------------------------------------------------------------------------------------------
# Divergence, checkpoints and resume, devices, progress
# ------------------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {"architecture": "mlp", "input_shape": [2], "num_classes": 2, "hidden": [8]}


@pytest.fixture(scope="module")
def spirals():
    return datasets.load_dataset("spirals", "train")


def _nan_objective(monkeypatch, when):
    """Patch make_objective: the Gaussian loss, times NaN where ``when(x)`` (a batch-content test)."""
    real = objectives.make_objective

    def patched(name, apply_fn, *, sigma, **options):
        loss = real("gaussian", apply_fn, sigma=sigma)
        return lambda params, x, y, key: jnp.where(when(x), jnp.nan, 1.0) * loss(params, x, y, key)

    monkeypatch.setattr(objectives, "make_objective", patched)


def test_non_finite_loss_stops_training_naming_epoch_and_step(monkeypatch, spirals):
    """The first batch of epoch 2 whose first input is the first training point: NaN there."""
    target = jnp.asarray(spirals.x[0])
    _nan_objective(monkeypatch, lambda x: jnp.any(jnp.all(x == target[None], axis=-1)))
    # with batch 250 of 1000 points, every epoch has 4 steps and the point is in exactly one of them
    with pytest.raises(training.TrainingDiverged, match=r"epoch 1, step [1-4]: the loss is nan") as info:
        training.train(spirals, sigma=0.1, config=TINY, epochs=3, batch_size=250)
    assert info.value.epoch == 1 and 1 <= info.value.step <= 4


def test_non_finite_parameters_stop_training(spirals):
    with pytest.raises(training.TrainingDiverged, match="a parameter became non-finite"):
        training.train(spirals, sigma=0.1, config=TINY, epochs=2, batch_size=250, learning_rate=float("inf"))


def test_cli_exits_1_and_writes_no_model_when_training_diverges(monkeypatch, tmp_path, capsys):
    _nan_objective(monkeypatch, lambda x: jnp.asarray(True))
    out = tmp_path / "m.msgpack"
    code = cli.main(["train", "--dataset", "spirals", "--sigma", "0.1", "--epochs", "2", "--hidden", "8",
                     "--quiet", "--checkpoint", str(tmp_path / "ckpt.msgpack"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "training diverged at epoch 1, step 1" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "ckpt.msgpack").exists()


def test_resume_from_checkpoint_equals_uninterrupted_training(tmp_path, spirals):
    straight = training.train(spirals, sigma=0.1, config=TINY, epochs=4, batch_size=100, seed=5)
    ckpt = str(tmp_path / "ckpt.msgpack")
    with pytest.raises(_Interrupted):  # a run killed during epoch 3, after the checkpoint of epoch 2
        training.train(spirals, sigma=0.1, config=TINY, epochs=4, batch_size=100, seed=5, checkpoint=ckpt,
                       callback=_interrupt_in_epoch(3))
    _, _, config = models.load_model(ckpt)  # the checkpoint is what certify loads
    assert config["training"]["epochs_done"] == 2
    resumed = training.train(spirals, sigma=0.1, config=TINY, epochs=4, batch_size=100, seed=5, resume=ckpt)
    assert [h["epoch"] for h in resumed.history] == [2, 3]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[2:]]
    for a, b in zip(jax.tree_util.tree_leaves(straight.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="no optimizer state"):
        os.remove(ckpt + training.OPTIMIZER_SUFFIX)
        training.train(spirals, sigma=0.1, config=TINY, epochs=4, batch_size=100, resume=ckpt)


class _Interrupted(Exception):
    pass


def _interrupt_in_epoch(number):
    def callback(epoch, loss):
        if epoch + 1 == number:
            raise _Interrupted

    return callback


def test_progress_bar_shows_loss_and_accuracy(spirals, capsys):
    result = training.train(spirals, sigma=0.1, config=TINY, epochs=2, batch_size=250, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "acc=" in err
    assert all(0.0 <= h["accuracy"] <= 1.0 for h in result.history)


DATA_PARALLEL = textwrap.dedent(
    """
    import jax, numpy as np
    from smoothjax.app import datasets, training
    data = datasets.load_dataset("spirals", "train")
    cfg = {{"architecture": "mlp", "input_shape": [2], "num_classes": 2, "hidden": [16]}}
    res = training.train(data, sigma=0.1, config=cfg, objective="macer", objective_options={{"num_samples": 4}},
                         epochs=2, batch_size=100, seed=3)
    leaves = jax.tree_util.tree_leaves(res.params)
    np.savez({path!r}, devices=np.array(jax.device_count()), loss=np.array([h["loss"] for h in res.history]),
             **{{f"p{{i}}": np.asarray(leaf) for i, leaf in enumerate(leaves)}})
    """
)


def test_data_parallel_training_equals_single_device(tmp_path):
    runs = {}
    for devices in (1, 2):
        path = tmp_path / f"run{devices}.npz"
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        done = subprocess.run([sys.executable, "-c", DATA_PARALLEL.format(path=str(path))], env=env,
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[devices] = dict(np.load(path))
    assert int(runs[1]["devices"]) == 1 and int(runs[2]["devices"]) == 2
    for name in set(runs[1]) - {"devices"}:
        # the same noise and batches; only the order of the float32 sums differs
        np.testing.assert_allclose(runs[2][name], runs[1][name], rtol=1e-4, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------
# The experiment's reduced configuration
# ------------------------------------------------------------------------------------------


@pytest.mark.slow  # about 30 s; the training loop and certificate losses are tested above
def test_certificate_training_experiment_reduced_configuration(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import certificate_training as exp
    finally:
        sys.path.pop(0)
    results = exp.run(exp.CONFIGS["test"], out=str(tmp_path), log=lambda *a: None)
    for name in ("results.json", "results.md", "certified_accuracy.png"):
        assert (tmp_path / name).is_file(), name
    cfg = exp.CONFIGS["test"]
    for dataset in cfg.datasets:
        summary = results["summary"][dataset]
        assert set(summary) == set(cfg.objectives)
        for name in cfg.objectives:
            for method in cfg.methods:
                acr = summary[name][method]["acr"]
                assert np.isfinite(acr["mean"]) and acr["std"] >= 0 and len(acr["values"]) == len(cfg.seeds)
    assert "| objective |" in (tmp_path / "results.md").read_text()
