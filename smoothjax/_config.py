"""Floating-point policy of smoothjax: float64 for certificate math, never a global switch.

Importing smoothjax changes no JAX setting. Certificate math (binomial bounds, inverse normal CDFs
near 1, the Theorem 3 solve) needs float64: in float32, ``Phi^-1(1 - 1e-7)`` is already off in its
third digit and Clopper-Pearson bounds for n = 1e6 lose every digit that matters. So:

- :func:`smoothjax.certify` and :func:`smoothjax.predict` run their math in a separate program on the
  host CPU under ``jax.enable_x64(True)`` (a context manager: the setting is scoped to that
  program), while the sampling program on the accelerator keeps the model's dtype and holds no
  64-bit type;
- the certificate functions (``cohen_radius``, ``sos_radius``, ``directional_radius``, ...) compute
  in :func:`float_dtype`, the float type of the calling context: float64 when the caller turned x64
  on (``jax.config.update("jax_enable_x64", True)`` or ``with jax.enable_x64(True):``), float32
  otherwise. In float32 each function is documented (and tested) to stay conservative or to
  refuse: that is the float32-only mode, e.g. for training losses inside a float32 program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def float_dtype():
    """The float dtype certificate math runs in: float64 when x64 is on in this context, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def as_float(x):
    """``x`` as a JAX array of :func:`float_dtype` (float32 inputs are promoted, not rejected)."""
    return jnp.asarray(x, dtype=float_dtype())
