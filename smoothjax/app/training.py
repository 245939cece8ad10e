"""Training classifiers for randomized smoothing with optax: any objective of :mod:`smoothjax.objectives`.

The base classifier ``f`` of a smoothed classifier ``g(x) = P[f(x + sigma N(0, I)) = c]`` should be
accurate under the noise it is smoothed with (Cohen et al. 2019, Section 4: train with Gaussian
data augmentation at the same sigma). :func:`train` minimises
``smoothjax.objectives.make_objective(name, apply_fn, sigma=sigma, **options)`` over mini-batches
with Adam and a cosine-decayed learning rate: ``"gaussian"`` (the default), the baselines
``"macer"``, ``"consistency"``, ``"smoothadv"``, or a certificate-aware objective (``"cohen_l2"``,
``"sos_l2"``, ``"dipole_l2"``, ``"first_order_l1"``, ``"first_order_linf"``).

* **Never diverges silently.** Every step checks that the loss and the updated parameters are
  finite. At the first step where one is not, the parameters stop changing (inside the compiled
  epoch) and :func:`train` raises :class:`TrainingDiverged`, naming the epoch and step; no model is
  returned, so none can be saved.
* **Checkpoints and resume.** With ``checkpoint=PATH`` the model is written after every
  ``checkpoint_every`` epochs in the format ``smoothjax certify`` loads
  (:func:`smoothjax.app.models.save_model`; the epochs done are recorded in
  ``config["training"]["epochs_done"]``), and the optimizer state beside it
  (``PATH + ".optimizer"``, ``flax.serialization`` bytes). ``resume=PATH`` continues from such a
  checkpoint; with the same arguments the result equals the uninterrupted run bitwise.
* **Data-parallel.** With several devices (``jax.devices()``) each batch is sharded over a 1-D
  mesh ``("batch",)`` and parameters and optimizer state are replicated (``jax.sharding``;
  XLA inserts the gradient all-reduce). Noise is drawn per step from the same keys, so results
  equal the single-device run up to the order of floating-point sums. The batch size must be a
  multiple of the device count.
* **Progress.** ``progress=True`` shows a tqdm bar over epochs with the loss and the accuracy of
  the base classifier on the noisy training batches.

Determinism: all randomness comes from ``jax.random.key(seed)``: parameter init, the per-epoch
shuffle (``fold_in(key, epoch)``) and the per-step noise (``fold_in(key, global step)``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smoothjax import objectives
from smoothjax.app import models as _models
from smoothjax.app.datasets import Dataset

LossFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
OPTIMIZER_SUFFIX = ".optimizer"


class TrainingDiverged(FloatingPointError):
    """The loss or a parameter became non-finite during training (epoch and step in the message)."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        what = f"the loss is {loss}" if not np.isfinite(loss) else "a parameter became non-finite"
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: {what}. No model was kept; "
            "lower the learning rate or change the objective's options."
        )


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Trained ``params``, the model ``config``, per-epoch ``history`` and the final optimizer state.

    ``history`` holds one dict per epoch run: ``epoch`` (0-based), ``loss`` (mean over the
    epoch's steps), ``accuracy`` (base classifier on the noisy training batches) and ``seconds``.
    """

    params: Any
    config: dict
    history: list
    apply_fn: Callable
    opt_state: Any = None


def make_optimizer(learning_rate: float, total_steps: int) -> optax.GradientTransformation:
    """Adam with a cosine-decayed learning rate over ``total_steps``.

    Example:
      >>> from smoothjax.app.training import make_optimizer
      >>> opt = make_optimizer(1e-3, 100)
      >>> type(opt).__name__
      'GradientTransformationExtraArgs'
    """
    return optax.adam(optax.cosine_decay_schedule(learning_rate, max(total_steps, 1)))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _batch_sharding():
    """``(batch, replicated)`` NamedShardings over a 1-D mesh of all devices, or ``None`` for one device."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    spec = jax.sharding.PartitionSpec
    return jax.sharding.NamedSharding(mesh, spec("batch")), jax.sharding.NamedSharding(mesh, spec())


def save_checkpoint(path: str, config: dict, params: Any, opt_state: Any) -> None:
    """Write a resumable checkpoint: the model (:func:`smoothjax.app.models.save_model`) at ``path``
    and the optimizer state at ``path + ".optimizer"``; a msgpack file is replaced atomically.

    Example:
      >>> import os, tempfile, jax
      >>> from smoothjax.app import models
      >>> from smoothjax.app.training import make_optimizer, save_checkpoint
      >>> config = models.default_config("mlp", (2,), 2)
      >>> params = models.init_params(config, jax.random.key(0))
      >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.msgpack")
      >>> save_checkpoint(path, config, params, make_optimizer(1e-3, 10).init(params))
      >>> sorted(os.listdir(os.path.dirname(path)))
      ['ckpt.msgpack', 'ckpt.msgpack.optimizer']
    """
    from flax import serialization

    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, ".tmp-" + name)  # same suffix: save_model picks the format by it
    os.makedirs(directory, exist_ok=True)
    with open(tmp + OPTIMIZER_SUFFIX, "wb") as fh:
        fh.write(serialization.to_bytes(jax.device_get(opt_state)))
    if os.path.isfile(path) or not os.path.exists(path):
        _models.save_model(tmp, config, params)
        os.replace(tmp, path)
    else:  # a checkpoint directory (Orbax): save_model replaces it
        _models.save_model(path, config, params)
    os.replace(tmp + OPTIMIZER_SUFFIX, path + OPTIMIZER_SUFFIX)


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
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
    resume: str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a classifier on ``dataset`` with the given objective (Adam, cosine-decayed learning rate).

    ``sigma`` is the noise std in input units (the one the model will be smoothed and certified
    with). ``config`` overrides the default model config for ``architecture``. ``epochs`` is the
    total number of epochs (with ``resume``, including those already done). ``callback(epoch,
    mean_loss)`` is called after each epoch. Raises :class:`TrainingDiverged` when a loss or a
    parameter becomes non-finite, ``ValueError`` for bad arguments. See the module docstring for
    checkpoints, resuming and devices.

    Example:
      >>> from smoothjax.app import datasets
      >>> from smoothjax.app.training import train
      >>> data = datasets.load_dataset("spirals", "train")
      >>> cfg = {"architecture": "mlp", "input_shape": [2], "num_classes": 2, "hidden": [8]}
      >>> result = train(data, sigma=0.1, config=cfg, epochs=1, batch_size=250)
      >>> [sorted(h) for h in result.history]
      [['accuracy', 'epoch', 'loss', 'seconds']]
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}.")
    if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError("epochs, batch size and checkpoint_every must be at least 1.")
    start_epoch = 0
    opt_bytes = None
    if resume is not None:
        _, params, config = _models.load_model(resume)
        config = dict(config)
        start_epoch = int(config.get("training", {}).get("epochs_done", 0))
        if os.path.isfile(resume + OPTIMIZER_SUFFIX):
            with open(resume + OPTIMIZER_SUFFIX, "rb") as fh:
                opt_bytes = fh.read()
        else:
            raise ValueError(f"{resume!r} has no optimizer state ({resume + OPTIMIZER_SUFFIX!r}); "
                             "resume from a checkpoint written by `smoothjax train --checkpoint`.")
    config = config or _models.default_config(architecture, dataset.input_shape, dataset.num_classes)
    model = _models.build_model(config)
    apply_fn = model.apply
    key = jax.random.key(seed)
    init_key, shuffle_key, noise_key = jax.random.split(key, 3)
    if resume is None:
        params = _models.init_params(config, init_key)
    params = jax.tree_util.tree_map(jnp.asarray, params)

    x_all = jnp.asarray(dataset.x, jnp.float32)
    y_all = jnp.asarray(dataset.y, jnp.int32)
    num = x_all.shape[0]
    batch_size = min(batch_size, num)
    shardings = _batch_sharding()
    if shardings is not None and batch_size % jax.device_count():
        raise ValueError(f"batch size {batch_size} must be a multiple of the {jax.device_count()} devices "
                         "for data-parallel training.")
    steps_per_epoch = num // batch_size
    optimizer = make_optimizer(learning_rate, steps_per_epoch * epochs)
    opt_state = optimizer.init(params)
    if opt_bytes is not None:
        from flax import serialization

        opt_state = serialization.from_bytes(opt_state, opt_bytes)
    loss_fn = objectives.make_objective(objective, apply_fn, sigma=sigma, **(objective_options or {}))
    if shardings is not None:
        batch_sharding, replicated = shardings
        params, opt_state, x_all, y_all = jax.device_put((params, opt_state, x_all, y_all), replicated)

    # data and keys are arguments, not constants of the program: one compilation serves every seed
    # (JAX's persistent compilation cache, when enabled, finds it again)
    @jax.jit
    def epoch_step(params, opt_state, epoch, x_all, y_all, shuffle_key, noise_key):
        order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num)
        batches = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

        def step(carry, inputs):
            params, opt_state, bad_step, bad_loss = carry
            idx, i = inputs
            xb, yb = x_all[idx], y_all[idx]
            if shardings is not None:
                xb = jax.lax.with_sharding_constraint(xb, batch_sharding)
                yb = jax.lax.with_sharding_constraint(yb, batch_sharding)
            step_key = jax.random.fold_in(noise_key, epoch * steps_per_epoch + i)
            loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, step_key)
            with jax.numpy_dtype_promotion("standard"):  # optax's Adam raises a Python float to its int32 count
                updates, new_opt_state = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            noisy = xb + sigma * jax.random.normal(jax.random.fold_in(step_key, 1), xb.shape, xb.dtype)
            acc = jnp.mean(jnp.argmax(apply_fn(params, noisy), axis=-1).astype(yb.dtype) == yb)
            finite = jnp.isfinite(loss) & _all_finite(new_params)
            first_bad = (bad_step < 0) & ~finite
            bad_loss = jnp.where(first_bad, loss.astype(bad_loss.dtype), bad_loss)
            bad_step = jnp.where(first_bad, i, bad_step)
            keep = bad_step < 0
            params, opt_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(keep, new, old), (new_params, new_opt_state), (params, opt_state)
            )
            return (params, opt_state, bad_step, bad_loss), (loss, acc)

        init = (params, opt_state, jnp.asarray(-1, jnp.int32), jnp.asarray(0.0, jnp.float32))
        (params, opt_state, bad_step, bad_loss), (losses, accs) = jax.lax.scan(
            step, init, (batches, jnp.arange(steps_per_epoch, dtype=jnp.int32))
        )
        return params, opt_state, losses.mean(), accs.mean(), bad_step, bad_loss

    config = dict(config)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start_epoch, desc=f"train {objective}", unit="epoch", file=sys.stderr)
    try:
        for epoch in range(start_epoch, epochs):
            start = time.perf_counter()
            params, opt_state, loss, acc, bad_step, bad_loss = epoch_step(
                params, opt_state, epoch, x_all, y_all, shuffle_key, noise_key)
            if int(bad_step) >= 0:
                raise TrainingDiverged(epoch + 1, int(bad_step) + 1, float(bad_loss))
            loss, acc = float(loss), float(acc)
            history.append({"epoch": epoch, "loss": loss, "accuracy": acc, "seconds": time.perf_counter() - start})
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}")
                bar.update(1)
            if callback is not None:
                callback(epoch, loss)
            done = epoch + 1
            if checkpoint is not None and (done % checkpoint_every == 0 or done == epochs):
                training = dict(config.get("training", {}), epochs_done=done)
                save_checkpoint(checkpoint, dict(config, training=training), params, opt_state)
    finally:
        if bar is not None:
            bar.close()
    training = dict(config.get("training", {}), epochs_done=epochs)
    config["training"] = training
    return TrainResult(params=params, config=config, history=history, apply_fn=apply_fn, opt_state=opt_state)


def accuracy(apply_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray, *, sigma: float = 0.0,
             seed: int = 0) -> float:
    """Accuracy of the base classifier on ``x`` (with one Gaussian noise draw of std ``sigma`` if > 0).

    Example:
      >>> import jax.numpy as jnp
      >>> from smoothjax.app.training import accuracy
      >>> accuracy(lambda w, x: x @ w, jnp.eye(2), jnp.eye(2), jnp.array([0, 1]))
      1.0
    """
    x = jnp.asarray(x, jnp.float32)
    if sigma > 0:
        x = x + sigma * jax.random.normal(jax.random.key(seed), x.shape, dtype=x.dtype)
    y = jnp.asarray(y)
    pred = jnp.argmax(jax.jit(apply_fn)(params, x), axis=-1)
    return float(jnp.mean(pred.astype(y.dtype) == y))
