"""Training classifiers for randomized smoothing: Gaussian noise augmentation with optax.

The base classifier ``f`` of a smoothed classifier ``g(x) = P[f(x + sigma N(0, I)) = c]`` should be
accurate under the noise it is smoothed with (Cohen et al. 2019, Section 4: train with Gaussian
data augmentation at the same sigma). :func:`train` minimises an objective
``loss_fn(params, x, y, key) -> scalar`` over mini-batches:

- ``"gaussian"`` (default): cross-entropy of ``f(x + sigma * eps)`` with ``eps ~ N(0, I)``, one
  noise draw per example per step (:func:`gaussian_augmentation_loss`; used when
  :mod:`smoothjax.objectives` is not importable, otherwise ``make_objective("gaussian", ...)``);
- any other name: ``smoothjax.objectives.make_objective(name, apply_fn, sigma=sigma, **options)``
  (e.g. a certified-radius objective).

Determinism: all randomness comes from ``jax.random.key(seed)``: parameter init, the per-epoch
shuffle (``fold_in(key, epoch)``) and the per-step noise (``fold_in(key, step)``), so the same seed
and data give the same parameters.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smoothjax.app import models as _models
from smoothjax.app.datasets import Dataset

LossFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Trained ``params``, the model ``config``, and per-epoch ``history`` (mean loss, seconds)."""

    params: Any
    config: dict
    history: list
    apply_fn: Callable


def gaussian_augmentation_loss(apply_fn: Callable, *, sigma: float) -> LossFn:
    """Cross-entropy under Gaussian noise: ``mean_i CE(f(x_i + sigma eps_i), y_i)``, ``eps_i ~ N(0, I)``.

    ``x: [batch, *input_shape]`` in input units, ``y: [batch]`` int labels, ``key`` a PRNG key.
    """

    def loss_fn(params, x, y, key):
        noise = jax.random.normal(key, x.shape, dtype=x.dtype)
        logits = apply_fn(params, x + sigma * noise)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def resolve_objective(name: str, apply_fn: Callable, *, sigma: float, **options) -> LossFn:
    """The loss for objective ``name``; ``"gaussian"`` works without :mod:`smoothjax.objectives`."""
    try:
        from smoothjax.objectives import make_objective
    except ImportError:
        make_objective = None
    if make_objective is not None:
        return make_objective(name, apply_fn, sigma=sigma, **options)
    if name == "gaussian":
        return gaussian_augmentation_loss(apply_fn, sigma=sigma)
    raise ValueError(f"objective {name!r} needs smoothjax.objectives, which is not available; use --objective gaussian.")


def train(
    dataset: Dataset,
    *,
    sigma: float,
    architecture: str = "mlp",
    config: dict | None = None,
    objective: str = "gaussian",
    objective_options: dict | None = None,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a classifier on ``dataset`` with the given objective (Adam, cosine-decayed learning rate).

    ``sigma`` is the noise std in input units (the one the model will be smoothed and certified
    with). ``config`` overrides the default model config for ``architecture``. Returns a
    :class:`TrainResult`; ``callback(epoch, mean_loss)`` is called after each epoch.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}.")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch size must be at least 1.")
    config = config or _models.default_config(architecture, dataset.input_shape, dataset.num_classes)
    model = _models.build_model(config)
    apply_fn = model.apply
    key = jax.random.key(seed)
    init_key, shuffle_key, noise_key = jax.random.split(key, 3)
    params = _models.init_params(config, init_key)

    x_all = jnp.asarray(dataset.x, jnp.float32)
    y_all = jnp.asarray(dataset.y, jnp.int32)
    num = x_all.shape[0]
    batch_size = min(batch_size, num)
    steps_per_epoch = num // batch_size
    total_steps = steps_per_epoch * epochs
    schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)
    loss_fn = resolve_objective(objective, apply_fn, sigma=sigma, **(objective_options or {}))

    @jax.jit
    def epoch_step(params, opt_state, epoch):
        order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num)
        batches = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

        def step(carry, inputs):
            params, opt_state = carry
            idx, i = inputs
            step_key = jax.random.fold_in(noise_key, epoch * steps_per_epoch + i)
            loss, grads = jax.value_and_grad(loss_fn)(params, x_all[idx], y_all[idx], step_key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (batches, jnp.arange(steps_per_epoch)))
        return params, opt_state, losses.mean()

    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        params, opt_state, loss = epoch_step(params, opt_state, epoch)
        loss = float(loss)
        history.append({"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - start})
        if callback is not None:
            callback(epoch, loss)
    return TrainResult(params=params, config=config, history=history, apply_fn=apply_fn)


def accuracy(apply_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray, *, sigma: float = 0.0, seed: int = 0) -> float:
    """Accuracy of the base classifier on ``x`` (with one Gaussian noise draw of std ``sigma`` if > 0)."""
    x = jnp.asarray(x, jnp.float32)
    if sigma > 0:
        x = x + sigma * jax.random.normal(jax.random.key(seed), x.shape, dtype=x.dtype)
    pred = jnp.argmax(jax.jit(apply_fn)(params, x), axis=-1)
    return float(jnp.mean(pred == jnp.asarray(y)))
