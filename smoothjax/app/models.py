"""Small Flax linen classifiers built from a JSON-able config, and checkpoints that reload them.

A model is described by a plain dict (``ModelConfig``), e.g.::

    {"architecture": "mlp", "input_shape": [8, 8, 1], "num_classes": 10, "hidden": [128, 128]}
    {"architecture": "cnn", "input_shape": [8, 8, 1], "num_classes": 10, "features": [16, 32], "hidden": 64}

``build_model(config)`` returns the linen module; ``model.apply`` is the pure
``apply_fn(params, x_batch) -> logits [batch, num_classes]`` that :func:`smoothjax.pipeline.certify`
takes, with ``x_batch: [batch, *input_shape]``. Models compute in float32 whatever the input dtype
(smoothjax turns on x64 for certificate math; the network stays float32).

Checkpoint formats (``save_model`` / ``load_model``):

* a path ending in ``.msgpack``: one file written by ``flax.serialization.msgpack_serialize``
  holding ``{"format": "smoothjax-model/1", "config": <JSON string>, "params": <the params pytree as
  nested dicts of arrays>}``. Anyone can load it again without smoothjax::

      import json, flax.serialization
      blob = flax.serialization.msgpack_restore(open(path, "rb").read())
      config, params = json.loads(blob["config"]), blob["params"]

* any other path: an Orbax checkpoint directory (``orbax.checkpoint.CompositeCheckpointHandler``)
  with the items ``params`` (``StandardSave`` of the params pytree) and ``config`` (``JsonSave`` of
  ``{"format": "smoothjax-model/1", "config": <config dict>}``).

:func:`load_for_certify` is what ``smoothjax certify`` loads models with: these checkpoints, PyTorch
checkpoints of the published architectures (:mod:`smoothjax.app.torch_checkpoint`, ``--arch``), or
any Flax model from a user factory (``--model-fn package.module:factory``).
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
    return {"architecture": architecture, "input_shape": [int(s) for s in input_shape],
            "num_classes": int(num_classes), **extra}


#: Fields every config needs, and those of each architecture: name -> (kind, example).
_COMMON_FIELDS = {"input_shape": ("ints", "[8, 8, 1]"), "num_classes": ("int", "10")}
_ARCH_FIELDS = {
    "mlp": {"hidden": ("ints", "[128, 128]")},
    "cnn": {"features": ("ints", "[16, 32]"), "hidden": ("int", "64")},
}


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def validate_config(config: Any, source: str = "the model config") -> None:
    """Raise :class:`ModelError` unless ``config`` names a known architecture with all of its fields.

    ``source`` names where the config comes from in the message (e.g. the checkpoint path).
    """
    if not isinstance(config, dict):
        raise ModelError(f"{source} must be a dict with an 'architecture', got {type(config).__name__}.")
    arch = config.get("architecture")
    if arch not in _ARCH_FIELDS:
        raise ModelError(f"{source} names an unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}.")
    for name, (kind, example) in {**_COMMON_FIELDS, **_ARCH_FIELDS[arch]}.items():
        if name not in config:
            raise ModelError(f"{source} lacks the field {name!r} that a {arch} needs (e.g. {name!r}: {example}).")
        value = config[name]
        ok = (_positive_int(value) if kind == "int" else
              isinstance(value, (list, tuple)) and all(_positive_int(v) for v in value)
              and (name == "hidden" or len(value) >= 1))
        if not ok:
            what = "a whole number >= 1" if kind == "int" else "a list of whole numbers >= 1"
            raise ModelError(f"{source}: the {arch} field {name!r} must be {what} (e.g. {example}), got {value!r}.")


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"params/Dense_0/kernel": shape, ...}`` of a (state-dict) parameter tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path):
            tuple(np.shape(leaf)) for path, leaf in leaves}


def check_params(config: dict[str, Any], params: Any, source: str = "the model") -> None:
    """Raise :class:`ModelError` unless ``params`` has the tree and shapes that ``config``'s ``init`` makes.

    The message names the first parameter path (in sorted order) that is missing, extra or of
    another shape, with both shapes.
    """
    from flax import serialization

    validate_config(config, f"the config of {source}")
    expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    want = _flat_shapes(serialization.to_state_dict(expected))
    try:
        got = _flat_shapes(serialization.to_state_dict(params))
    except Exception as err:  # noqa: BLE001  (a params blob that is not a tree of arrays)
        raise ModelError(f"the parameters of {source} are not a tree of arrays ({type(err).__name__}).") from None
    described = f"a {config['architecture']} with input shape {list(config['input_shape'])}, " + ", ".join(
        f"{k} {config[k]}" for k in _ARCH_FIELDS[config["architecture"]]) + f", {config['num_classes']} classes"
    for path in sorted(set(want) | set(got)):
        if want.get(path) != got.get(path):
            have = "absent" if path not in got else f"shape {got[path]}"
            need = "absent" if path not in want else f"shape {want[path]}"
            raise ModelError(f"the parameters of {source} do not match its config ({described}): "
                             f"parameter {path!r}: {have} in the file, {need} for the config; the config's "
                             "'architecture' or sizes are wrong for these parameters.")


def build_model(config: dict[str, Any]) -> nn.Module:
    """The linen module a config describes (see module docstring for the keys)."""
    validate_config(config)
    arch = config.get("architecture")
    if arch == "mlp":
        return MLP(hidden=tuple(config["hidden"]), num_classes=int(config["num_classes"]))
    if arch == "cnn":
        if len(config["input_shape"]) not in (2, 3):
            raise ModelError(f"the cnn needs image inputs [H, W] or [H, W, C], "
                             f"got input shape {config['input_shape']}; use --arch mlp.")
        return SmallCNN(features=tuple(config["features"]), hidden=int(config["hidden"]),
                        num_classes=int(config["num_classes"]))
    raise ModelError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}.")


def init_params(config: dict[str, Any], key: jax.Array) -> Any:
    """Fresh float32 parameters for ``config`` from PRNG ``key``."""
    model = build_model(config)
    dummy = jnp.zeros((1, *config["input_shape"]), jnp.float32)
    return model.init(key, dummy)


def save_model(path: str, config: dict[str, Any], params: Any) -> None:
    """Write ``config`` and ``params`` to ``path``: msgpack for ``*.msgpack``, else an Orbax directory.

    Formats in the module docstring; an existing checkpoint at ``path`` is replaced.
    """
    from flax import serialization

    if not path.endswith(".msgpack"):
        _save_orbax(path, config, jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(params)))
        return
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
    """Load a checkpoint written by :func:`save_model` (msgpack file or Orbax directory).

    Returns ``(apply_fn, params, config)``, with ``apply_fn(params, x_batch) -> logits [batch,
    num_classes]``; raises :class:`ModelError` (a ``ValueError``) when the file is missing or is not
    a smoothjax checkpoint.
    """
    from flax import serialization

    if os.path.isdir(path):
        config, params = _load_orbax(path)
        check_params(config, params, repr(path))
        return build_model(config).apply, params, config
    if not os.path.isfile(path):
        raise ModelError(f"model file {path!r} not found; "
                         f"train one with `smoothjax train --out {path}` or pass an existing checkpoint.")
    try:
        with open(path, "rb") as fh:
            blob = serialization.msgpack_restore(fh.read())
        if blob.get("format") != CHECKPOINT_FORMAT:
            raise KeyError("format")
        config = json.loads(blob["config"])
        params = blob["params"]
    except Exception:  # noqa: BLE001  (any unreadable file is a user error here)
        raise ModelError(f"{path!r} is not a smoothjax model checkpoint; create one with `smoothjax train`.") from None
    check_params(config, params, repr(path))
    model = build_model(config)
    return model.apply, params, config


def default_model_path() -> str:
    """Path of the digits model shipped in ``smoothjax/app/assets/`` (see ``assets/README.md``)."""
    return os.path.join(os.path.dirname(__file__), "assets", "digits_mlp_sigma0.25.msgpack")


# ------------------------------------------------------------------------------------------
# Orbax checkpoints
# ------------------------------------------------------------------------------------------


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ModelError("Orbax checkpoints need the orbax-checkpoint package (pip install orbax-checkpoint), "
                         "or save to a path ending in .msgpack.") from None
    return ocp


def _save_orbax(path: str, config: dict[str, Any], params: Any) -> None:
    ocp = _orbax()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            os.path.abspath(path),
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                config=ocp.args.JsonSave({"format": CHECKPOINT_FORMAT, "config": config}),
            ),
            force=True,
        )


def _load_orbax(path: str) -> tuple[dict[str, Any], Any]:
    ocp = _orbax()
    not_ours = ModelError(f"{path!r} is a directory but not a smoothjax Orbax checkpoint; "
                          "create one with `smoothjax train`.")
    if not (os.path.isdir(os.path.join(path, "config")) and os.path.isdir(os.path.join(path, "params"))):
        raise not_ours
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(
                os.path.abspath(path),
                args=ocp.args.Composite(params=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()),
            )
        blob, params = restored.config, restored.params
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise KeyError("format")
    except Exception:  # noqa: BLE001  (any unreadable directory is a user error here)
        raise not_ours from None
    return blob["config"], params


# ------------------------------------------------------------------------------------------
# models for `smoothjax certify`
# ------------------------------------------------------------------------------------------


def load_model_fn(spec: str, model_path: str | None = None):
    """Call a user factory named ``"package.module:factory"`` -> ``(apply_fn, params, config)``.

    The factory is called with no arguments, or with ``model_path`` when one is given, and returns
    ``(apply_fn, params)`` or ``(apply_fn, params, config)``: ``apply_fn(params, x_batch) -> logits
    [batch, num_classes]`` with ``x_batch: [batch, *input_shape]`` in the units sigma is given in, and
    ``config`` an optional dict that may set ``input_shape``, ``num_classes`` and
    ``{"training": {"sigma": ...}}``. Missing ``input_shape`` / ``num_classes`` are ``None``
    (:func:`complete_config` fills them from the data). The current directory is importable.
    Raises :class:`ModelError` when the module cannot be imported, the factory is missing or fails,
    or it returns something else.

    Example:
        >>> apply_fn, params, config = load_model_fn("smoothjax.app.models:_example_factory")
        >>> config["input_shape"], config["num_classes"]
        (None, None)
    """
    import importlib
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ModelError(f"--model-fn must look like package.module:factory, got {spec!r}.")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"--model-fn {spec!r}: cannot import module {module_name!r} ({err}); "
                         "put its directory on PYTHONPATH or run from it.") from None
    except Exception as err:  # noqa: BLE001  (a user module failing at import: report it in one line)
        raise ModelError(f"--model-fn {spec!r}: importing {module_name!r} raised {type(err).__name__}: {err}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise ModelError(f"--model-fn {spec!r}: module {module_name!r} has no callable {attr!r}.")
    try:
        result = factory() if model_path is None else factory(model_path)
    except Exception as err:  # noqa: BLE001  (the user's factory failed: report it in one line)
        raise ModelError(f"--model-fn {spec!r}: {attr}({'' if model_path is None else repr(model_path)}) raised "
                         f"{type(err).__name__}: {err}") from None
    shape_hint = "(apply_fn, params) or (apply_fn, params, config)"
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise ModelError(f"--model-fn {spec!r}: {attr} must return {shape_hint}, got {type(result).__name__}.")
    apply_fn, params, *rest = result
    if not callable(apply_fn):
        raise ModelError(f"--model-fn {spec!r}: {attr} must return {shape_hint} with a callable apply_fn "
                         f"apply_fn(params, x_batch) -> logits; got {type(apply_fn).__name__} first.")
    extra = rest[0] if rest else {}
    if not isinstance(extra, dict):
        raise ModelError(f"--model-fn {spec!r}: the third item {attr} returns must be a config dict, "
                         f"got {type(extra).__name__}.")
    config = {"input_shape": None, "num_classes": None, **extra, "source": {"format": "model-fn", "model_fn": spec}}
    return apply_fn, params, config


def _example_factory():
    """A tiny factory for :func:`load_model_fn`'s doctest: a linear map of 2 features to 2 logits."""
    return (lambda params, x: x @ params), np.eye(2, dtype=np.float32)


def complete_config(config: dict[str, Any], apply_fn, params, input_shape: Sequence[int]) -> dict[str, Any]:
    """Fill a missing ``input_shape`` (from the data) and ``num_classes`` (from the logits' shape) of ``config``.

    The model is traced once abstractly (``jax.eval_shape``, nothing computed) on a float32
    ``[1, *input_shape]`` batch; raises :class:`ModelError` when it fails or returns something other
    than logits ``[1, num_classes]``. A config with both fields is returned unchanged.
    """
    if config.get("input_shape") and config.get("num_classes"):
        return config
    shape = tuple(int(s) for s in (config.get("input_shape") or input_shape))
    try:
        out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    except Exception as err:  # noqa: BLE001  (a user model failing on the data: report it in one line)
        raise ModelError(f"the model fails on inputs of shape [batch, {', '.join(map(str, shape))}]: "
                         f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 1:
        got = list(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ModelError(f"the model must return logits [batch, num_classes]; for a batch of 1 it returned {got}.")
    return {**config, "input_shape": list(shape), "num_classes": int(config.get("num_classes") or out.shape[1])}


def load_for_certify(
    model: str | None = None, arch: str | None = None, model_fn: str | None = None, *, num_classes: int | None = None
):
    """The model ``smoothjax certify`` runs -> ``(apply_fn, params, config)``.

    * ``model_fn`` (``"package.module:factory"``): the user's factory, see :func:`load_model_fn`
      (called with ``model`` when that is given too);
    * ``arch`` (one of :data:`smoothjax.app.architectures.ARCHITECTURES`), or ``model`` a PyTorch
      checkpoint (``torch.save`` zip or legacy file): imported by
      :func:`smoothjax.app.torch_checkpoint.load_torch_model` (``arch`` defaults to the checkpoint's
      ``"arch"`` field; ``num_classes`` to its classifier's rows);
    * otherwise ``model`` is a smoothjax checkpoint (msgpack file or Orbax directory), by default the
      shipped digits model.

    ``config`` has at least ``input_shape`` and ``num_classes`` (``None`` when a factory does not say;
    see :func:`complete_config`). Every failure is a :class:`ModelError` (or another ``ValueError``)
    with a one-line message.

    Example:
        >>> apply_fn, params, config = load_for_certify()
        >>> config["input_shape"], config["num_classes"]
        ([8, 8, 1], 10)
    """
    from smoothjax.app import architectures, torch_checkpoint

    if model_fn is not None:
        if arch is not None:
            raise ModelError("--arch names a built-in architecture for PyTorch checkpoints; "
                             "it cannot be combined with --model-fn.")
        return load_model_fn(model_fn, model)
    if arch is not None:
        architectures.arch_spec(arch)  # unknown names fail before the checkpoint is read
        if model is None:
            raise ModelError(f"--arch {arch} needs --model with a PyTorch checkpoint of it (e.g. checkpoint.pth.tar).")
    if model is not None and (arch is not None or torch_checkpoint.is_torch_checkpoint(model)):
        if os.path.isdir(model):
            raise ModelError(f"{model!r} is a directory; --arch needs a PyTorch checkpoint file.")
        if arch is not None and os.path.isfile(model) and not torch_checkpoint.is_torch_checkpoint(model):
            raise ModelError(f"{model!r} is not a PyTorch checkpoint (torch.save file); --arch applies to those only.")
        return torch_checkpoint.load_torch_model(model, arch, num_classes=num_classes)
    return load_model(model or default_model_path())
