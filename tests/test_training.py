"""Training with Gaussian noise augmentation, model configs and checkpoints."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax.app import datasets, models, training


SMALL_MLP = {"architecture": "mlp", "input_shape": [8, 8, 1], "num_classes": 10, "hidden": [64]}


@pytest.fixture(scope="module")
def digits_train():
    full = datasets.load_dataset("digits", "train")
    return datasets.Dataset("digits", "train", full.x[:640], full.y[:640], 10)


def _short(data, seed, epochs=8):
    return training.train(data, sigma=0.25, config=SMALL_MLP, epochs=epochs, batch_size=64, learning_rate=5e-3, seed=seed)


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
        np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_cnn_trains_on_spirals_shape_checks():
    data = datasets.load_dataset("spirals", "train")
    with pytest.raises(models.ModelError, match="cnn needs image inputs"):
        training.train(data, sigma=0.1, architecture="cnn", epochs=1)
    cfg = models.default_config("cnn", (8, 8, 1), 10)
    params = models.init_params(cfg, jax.random.key(0))
    logits = models.build_model(cfg).apply(params, jnp.zeros((3, 8, 8, 1)))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_gaussian_loss_matches_numpy_cross_entropy():
    cfg = models.default_config("mlp", (4,), 3)
    model = models.build_model(cfg)
    params = models.init_params(cfg, jax.random.key(1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    y = jnp.array([0, 1, 2, 1, 0])
    key = jax.random.key(7)
    loss = training.gaussian_augmentation_loss(model.apply, sigma=0.5)(params, x, y, key)
    noise = np.asarray(jax.random.normal(key, x.shape, dtype=x.dtype))
    logits = np.asarray(model.apply(params, np.asarray(x) + 0.5 * noise), np.float64)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(logp[np.arange(5), np.asarray(y)])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # the library objective (when present) has the same mean: both are unbiased CE under noise
    assert training.resolve_objective("gaussian", model.apply, sigma=0.5) is not None


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
