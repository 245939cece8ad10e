"""Floating-point policy of smoothjax.

Certificate math (binomial bounds, inverse normal CDFs near 1, the Theorem 3 solve) needs float64:
in float32, ``Phi^-1(1 - 1e-7)`` is already off in its third digit and Clopper-Pearson bounds for
n = 1e6 lose every digit that matters. Importing smoothjax therefore turns on ``jax_enable_x64``
(a process-wide JAX setting; a scoped toggle would not cover backward passes traced later by
``jax.grad``). Model evaluation is unaffected in practice: Flax parameters keep their own dtype
and the sampler draws noise in the dtype of the inputs, so a float32 model stays float32.

Set the environment variable ``SMOOTHJAX_ENABLE_X64=0`` before importing smoothjax to keep JAX in
32-bit mode; certificate functions then compute in float32, which is documented per function
(and tested) to be conservative or to refuse.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

if os.environ.get("SMOOTHJAX_ENABLE_X64", "1") != "0":
    jax.config.update("jax_enable_x64", True)


def float_dtype():
    """The float dtype certificate math runs in: float64 when x64 is on, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def as_float(x):
    """``x`` as a JAX array of :func:`float_dtype` (float32 inputs are promoted, not rejected)."""
    return jnp.asarray(x, dtype=float_dtype())
