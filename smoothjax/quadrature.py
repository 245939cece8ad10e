"""Gaussian quadrature rules for expectations over N(0, 1), computed once in NumPy float64.

Two kinds of rule live here:

* :func:`gauss_hermite_normal` -- the probabilists' Gauss-Hermite rule, E[f(Z)] ~ sum_i w_i f(z_i)
  for Z ~ N(0, 1) (nodes and weights of ``numpy.polynomial.hermite_e.hermegauss`` with the
  weights divided by sqrt(2 pi) so they sum to one). Exact for polynomials of degree <= 2n - 1 and
  excellent for smooth integrands, but hopeless for the integrands of the first paper's Theorem 3
  near its limits: ``Phi(c(x))`` becomes a step as m2 -> 0 (the band solution of Corollary 3.1)
  and Gauss-Hermite converges only like O(1/n) on a step.
* :func:`gaussian_panel_rule` -- composite Gauss-Legendre over an interval ``[lo, hi]`` clipped
  to the window ``[-WINDOW, WINDOW]`` and split into panels at ``BREAKPOINTS``, for integrals
  ``int_lo^hi phi(x) f(x) dx`` whose integrand includes the Gaussian density explicitly. It is what
  :mod:`smoothjax.theorem3` uses: the Theorem 3 integrals are split into pieces on which ``f`` is
  smooth with slope at most one (see there), and the pieces have arbitrary, moving end points.

Measured accuracy of :func:`gaussian_panel_rule` (``tests/test_quadrature.py`` repeats this
measurement against ``scipy.integrate.quad``): for ``f`` with |f'| <= 1 of the kinds that occur
(``Phi`` of a convex curve with slope <= 1, ``x Phi(...)``, ``phi(x - 0.3) x^2``) and intervals from
``[-20, 20]`` down to width 0.1, the worst absolute error of ``int phi f`` was

    nodes per panel     8        10       12       16       20
    max abs error       4.6e-7   3.8e-9   1.9e-11  4.0e-14  5.0e-16

so the default of 16 nodes per panel (4 panels, 64 nodes) is accurate to a few 1e-14, four orders
of magnitude inside the 1e-8 target of Theorem 3's ``p_lower``. The window truncation costs at most
``2 Phi(-8.5) = 1.9e-17``. Gauss-Hermite with the same 64 nodes errs by about 1e-2 on a unit step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from smoothjax._config import float_dtype

#: Half-width of the window the Gaussian-weighted integrals are truncated to: 2 Phi(-8.5) = 1.9e-17.
WINDOW = 8.5
#: Panel boundaries inside the window (the Gaussian bulk gets its own panels).
BREAKPOINTS = (-3.0, 0.0, 3.0)
#: Default Gauss-Legendre nodes per panel; see the module docstring for the measured error.
NODES_PER_PANEL = 16


@functools.cache
def gauss_hermite_normal(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and weights ``w`` (float64 NumPy arrays of shape ``[n]``) with
    ``E[f(Z)] ~= sum(w * f(z))`` for Z ~ N(0, 1); ``sum(w) == 1``. Cached per ``n``.

    Example:
      >>> from smoothjax.quadrature import gauss_hermite_normal
      >>> z, w = gauss_hermite_normal(8)
      >>> print(f"{w.sum():.12f} {(w * z**2).sum():.12f}")  # E[1], E[Z^2]
      1.000000000000 1.000000000000
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    z, w = np.polynomial.hermite_e.hermegauss(int(n))
    w = w / np.sqrt(2.0 * np.pi)
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


@functools.cache
def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-1, 1] (float64 NumPy, shape ``[n]``). Cached per ``n``.

    Example:
      >>> from smoothjax.quadrature import gauss_legendre
      >>> t, w = gauss_legendre(4)
      >>> print(f"{w.sum():.12f} {(w * t**6).sum():.12f}")  # int 1, int t^6 = 2/7 over [-1, 1]
      2.000000000000 0.285714285714
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    t, w = np.polynomial.legendre.leggauss(int(n))
    t.setflags(write=False)
    w.setflags(write=False)
    return t, w


def gaussian_panel_rule(lo: ArrayLike, hi: ArrayLike, *,
                        nodes_per_panel: int = NODES_PER_PANEL) -> tuple[jax.Array, jax.Array]:
    """Nodes and weights for ``int_lo^hi phi(x) f(x) dx ~= sum(w * phi(x) * f(x))``.

    The interval is clipped to ``[-WINDOW, WINDOW]`` (``lo`` may be ``-inf`` and ``hi`` ``+inf``)
    and split at ``BREAKPOINTS`` into ``len(BREAKPOINTS) + 1`` panels, each with
    ``nodes_per_panel`` Gauss-Legendre nodes; empty panels (and empty intervals, ``hi <= lo``) get
    zero weights and finite nodes. The weights are for ``dx`` only: the caller multiplies by the
    density it integrates against.

    Args:
      lo, hi: arrays broadcastable to a common shape ``S``.
      nodes_per_panel: static Python int.

    Returns:
      ``(x, w)``, each of shape ``S + (P * nodes_per_panel,)`` with ``P = len(BREAKPOINTS) + 1``.

    Example (in float64: a 1e-14 error is below float32 resolution):
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from jax.scipy.stats import norm
      >>> from smoothjax.quadrature import gaussian_panel_rule
      >>> with jax.enable_x64(True):
      ...     x, w = gaussian_panel_rule(-jnp.inf, 0.3)  # P(Z < 0.3) = Phi(0.3)
      ...     error = float(abs(jnp.sum(w * norm.pdf(x)) - norm.cdf(0.3)))
      >>> print(x.shape, bool(error < 1e-14))
      (64,) True
    """
    dtype = float_dtype()
    t, wt = gauss_legendre(nodes_per_panel)
    t = jnp.asarray(t, dtype)
    wt = jnp.asarray(wt, dtype)
    lo = jnp.clip(jnp.asarray(lo, dtype), -WINDOW, WINDOW)
    hi = jnp.clip(jnp.asarray(hi, dtype), -WINDOW, WINDOW)
    lo, hi = jnp.broadcast_arrays(lo, hi)
    hi = jnp.maximum(hi, lo)
    t, wt = (v.reshape((1,) * lo.ndim + v.shape) for v in (t, wt))  # rank of lo[..., None]
    edges = [lo] + [jnp.clip(jnp.asarray(b, dtype), lo, hi) for b in BREAKPOINTS] + [hi]
    xs, ws = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        half = 0.5 * (b - a)
        mid = 0.5 * (b + a)
        xs.append(mid[..., None] + half[..., None] * t)
        ws.append(half[..., None] * wt)
    return jnp.concatenate(xs, axis=-1), jnp.concatenate(ws, axis=-1)
