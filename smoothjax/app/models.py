"""Small Flax linen classifiers built from a JSON-able config, and checkpoints that reload them.

A model is described by a plain dict (``ModelConfig``), e.g.::

    {"architecture": "mlp", "input_shape": [8, 8, 1], "num_classes": 10, "hidden": [128, 128]}
    {"architecture": "cnn", "input_shape": [8, 8, 1], "num_classes": 10, "features": [16, 32], "hidden": 64}

``build_model(config)`` returns the linen module; ``model.apply`` is the pure
``apply_fn(params, x_batch) -> logits [batch, num_classes]`` that :func:`smoothjax.pipeline.certify`
takes, with ``x_batch: [batch, *input_shape]``. Models compute in float32 whatever the input dtype
(smoothjax turns on x64 for certificate math; the network stays float32).

Checkpoint format (``save_model`` / ``load_model``): one msgpack file written by
``flax.serialization.msgpack_serialize`` holding ``{"format": "smoothjax-model/1", "config": <JSON
string>, "params": <the params pytree as nested dicts of arrays>}``. Anyone can load it again
without smoothjax::

    import json, flax.serialization
    blob = flax.serialization.msgpack_restore(open(path, "rb").read())
    config, params = json.loads(blob["config"]), blob["params"]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CHECKPOINT_FORMAT = "smoothjax-model/1"
ARCHITECTURES = ("mlp", "cnn")


class ModelError(ValueError):
    """A user-facing problem with a model config or checkpoint."""


class MLP(nn.Module):
    """Flatten, then dense layers with ReLU: ``x [batch, *input_shape] -> logits [batch, num_classes]``."""

    hidden: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class SmallCNN(nn.Module):
    """3x3 convolutions with ReLU (the second and later ones stride 2), then one hidden dense layer.

    Input ``[batch, H, W, C]`` (channels last; a ``[batch, H, W]`` input gets one channel).
    """

    features: Sequence[int]
    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        if x.ndim == 3:
            x = x[..., None]
        for i, width in enumerate(self.features):
            x = nn.relu(nn.Conv(width, (3, 3), strides=(1, 1) if i == 0 else (2, 2), padding="SAME")(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


def default_config(architecture: str, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The default config for an architecture: MLP hidden [128, 128]; CNN features [16, 32], hidden 64."""
    if architecture == "mlp":
        extra: dict[str, Any] = {"hidden": [128, 128]}
    elif architecture == "cnn":
        extra = {"features": [16, 32], "hidden": 64}
    else:
        raise ModelError(f"unknown architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}.")
    return {"architecture": architecture, "input_shape": [int(s) for s in input_shape], "num_classes": int(num_classes), **extra}


def build_model(config: dict[str, Any]) -> nn.Module:
    """The linen module a config describes (see module docstring for the keys)."""
    arch = config.get("architecture")
    if arch == "mlp":
        return MLP(hidden=tuple(config["hidden"]), num_classes=int(config["num_classes"]))
    if arch == "cnn":
        if len(config["input_shape"]) not in (2, 3):
            raise ModelError(f"the cnn needs image inputs [H, W] or [H, W, C], got input shape {config['input_shape']}; use --arch mlp.")
        return SmallCNN(features=tuple(config["features"]), hidden=int(config["hidden"]), num_classes=int(config["num_classes"]))
    raise ModelError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}.")


def init_params(config: dict[str, Any], key: jax.Array) -> Any:
    """Fresh float32 parameters for ``config`` from PRNG ``key``."""
    model = build_model(config)
    dummy = jnp.zeros((1, *config["input_shape"]), jnp.float32)
    return model.init(key, dummy)


def save_model(path: str, config: dict[str, Any], params: Any) -> None:
    """Write ``config`` and ``params`` to ``path`` (msgpack, format in the module docstring)."""
    from flax import serialization

    blob = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config, sort_keys=True),
        "params": jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(params)),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(serialization.msgpack_serialize(blob))


def load_model(path: str):
    """Load a checkpoint written by :func:`save_model` -> ``(apply_fn, params, config)``.

    ``apply_fn(params, x_batch) -> logits [batch, num_classes]``; raises :class:`ModelError` (a
    ``ValueError``) when the file is missing or is not a smoothjax checkpoint.
    """
    from flax import serialization

    if not os.path.isfile(path):
        raise ModelError(f"model file {path!r} not found; train one with `smoothjax train --out {path}` or pass an existing checkpoint.")
    try:
        with open(path, "rb") as fh:
            blob = serialization.msgpack_restore(fh.read())
        if blob.get("format") != CHECKPOINT_FORMAT:
            raise KeyError("format")
        config = json.loads(blob["config"])
        params = blob["params"]
    except Exception:  # noqa: BLE001  (any unreadable file is a user error here)
        raise ModelError(f"{path!r} is not a smoothjax model checkpoint; create one with `smoothjax train`.") from None
    model = build_model(config)
    return model.apply, params, config


def default_model_path() -> str:
    """Path of the digits model shipped in ``smoothjax/app/assets/`` (see ``assets/README.md``)."""
    return os.path.join(os.path.dirname(__file__), "assets", "digits_mlp_sigma0.25.msgpack")
