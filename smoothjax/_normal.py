"""The standard normal distribution as the certificates use it (private; one home for every module).

``phi`` (density), ``Phi`` (CDF), ``upper_quantile`` (``Phi^-1`` accurate near 1) and
``max_grad(q) = phi(Phi^-1(q))``, the largest ``sigma ||grad g||_2`` of any smoothed classifier
with ``g(x) = q`` (attained by a linear base classifier; second paper, Figure 3a).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.scipy.special import ndtri

__all__ = [
    "INV_SQRT_2PI",
    "Phi",
    "max_grad",
    "phi",
    "upper_quantile",
]

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def phi(x):
    """Standard normal density ``exp(-x^2 / 2) / sqrt(2 pi)``."""
    return jnp.exp(-0.5 * x * x) * INV_SQRT_2PI


def Phi(x):
    """``Phi(x) = erfc(-x / sqrt 2) / 2``: ``jax.scipy.special.ndtr`` at a sixth of its CPU cost.

    ``ndtr`` evaluates both ``erf`` and ``erfc`` and selects; one ``erfc`` is as accurate (against
    mpmath on [-37, 9]: absolute error <= 0.5 ulp of 1 in float64, 0.6 in float32; relative error
    in the lower tail the same as ndtr's, set by the rounding of x / sqrt 2; the two differ by at
    most 1 ulp of 1). Used inside the solves, where it is evaluated many times per certificate.
    """
    return 0.5 * lax.erfc(x * -0.7071067811865476)


def upper_quantile(p):
    """``Phi^-1(p)`` computed as ``-Phi^-1(1 - p)``: accurate for p near 1 (1 - p is exact there)."""
    return -ndtri(1.0 - p)


def max_grad(q):
    """``M = phi(Phi^-1(q))``: the largest ``sigma ||grad g||_2`` possible where ``g(x) = q``."""
    return phi(ndtri(q))
