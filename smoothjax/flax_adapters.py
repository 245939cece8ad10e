"""Turning Flax models into the pure ``apply_fn(params, x_batch) -> logits`` that smoothjax takes.

Everything in smoothjax (:func:`smoothjax.sampling.sample_statistics`,
:func:`smoothjax.pipeline.predict`, :func:`smoothjax.pipeline.certify`) evaluates a classifier as
a pure function ``apply_fn(params, x_batch)`` with ``x_batch: [batch, *input_shape]`` returning
``logits: [batch, num_classes]``; ``params`` is any pytree (it is passed through ``jit`` as an
argument, so new weights do not trigger recompilation).

- Flax linen: ``apply_fn, params = linen_apply_fn(module, variables)``; ``apply_fn`` is
  ``module.apply(variables, x, **apply_kwargs)`` (e.g. ``train=False``), never mutating state.
- Flax NNX: ``apply_fn, params = nnx_apply_fn(model)``; ``params`` is the model's state from
  ``nnx.split(model)`` and ``apply_fn`` rebuilds the model with ``nnx.merge`` inside the traced
  function (the functional API of NNX). By default the rebuilt copy is put in evaluation mode
  (``Dropout`` deterministic, ``BatchNorm`` with running averages): a smoothed classifier must be a
  fixed function of its input. The caller's model object is not modified.

Example:
  >>> import flax.linen as nn
  >>> import jax, jax.numpy as jnp
  >>> module = nn.Dense(10)
  >>> variables = module.init(jax.random.key(0), jnp.zeros((1, 64)))
  >>> apply_fn, params = linen_apply_fn(module, variables)
  >>> apply_fn(params, jnp.ones((5, 64))).shape
  (5, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ApplyFn", "linen_apply_fn", "nnx_apply_fn"]

#: ``apply_fn(params, x_batch) -> logits``: the form in which smoothjax evaluates a classifier.
ApplyFn = Callable[[Any, Any], Any]


def linen_apply_fn(
    module: Any, variables: Any, *, method: Callable | str | None = None, **apply_kwargs: Any
) -> tuple[ApplyFn, Any]:
    """``(apply_fn, params)`` for a Flax linen module and its variables.

    Args:
      module: a ``flax.linen.Module``.
      variables: the variables dict from ``module.init`` (e.g. ``{"params": ...}``, plus
        ``"batch_stats"`` for BatchNorm models); returned unchanged as ``params``.
      method: optional method of the module to call instead of ``__call__``.
      **apply_kwargs: static keyword arguments for every call, e.g. ``train=False``.

    Returns:
      ``apply_fn(params, x_batch) = module.apply(params, x_batch, method=method, **apply_kwargs)``
      and ``params = variables``.

    Example:
      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp
      >>> module = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> variables = module.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> apply_fn, params = linen_apply_fn(module, variables)
      >>> apply_fn(params, jnp.ones((2, 4))).shape
      (2, 3)
    """

    def apply_fn(params, x_batch):
        return module.apply(params, x_batch, method=method, **apply_kwargs)

    return apply_fn, variables


def nnx_apply_fn(model: Any, *, eval_mode: bool = True) -> tuple[ApplyFn, Any]:
    """``(apply_fn, params)`` for a Flax NNX model, through ``nnx.split`` / ``nnx.merge``.

    Args:
      model: a ``flax.nnx.Module`` whose ``__call__(x_batch)`` returns logits.
      eval_mode: call ``.eval()`` on the rebuilt model before applying it (deterministic dropout,
        BatchNorm running averages). The caller's ``model`` is left as it is.

    Returns:
      ``apply_fn(params, x_batch)`` and ``params``, the model's full ``nnx.State`` (all variables:
      parameters, batch statistics, RNG state). Any state update the call would make (e.g. RNG
      counters) is discarded: the function is pure.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)),
      ...                        nnx.Linear(8, 3, rngs=nnx.Rngs(2)))
      >>> apply_fn, params = nnx_apply_fn(model)
      >>> x = jnp.ones((2, 4))
      >>> bool(jnp.all(apply_fn(params, x) == apply_fn(params, x)))  # dropout off: deterministic
      True
    """
    from flax import nnx

    graphdef, state = nnx.split(model)

    def apply_fn(params, x_batch):
        rebuilt = nnx.merge(graphdef, params, copy=True)
        if eval_mode:
            rebuilt.eval()
        return rebuilt(x_batch)

    return apply_fn, state
