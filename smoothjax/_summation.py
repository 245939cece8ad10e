"""Compensated (double-word) summation in the device's float type, with a proven error bound.

The sampling program must not use 64-bit types (TPUs have no native float64 and GPUs run it far
slower), yet its float statistics are sums over up to ~10^8 samples that the certificates read
to ~1e-10. They are therefore carried as *double words*: an unevaluated sum ``hi + lo`` of two
floats of the working type (float32 on accelerators), with ``|lo| <= u |hi|`` and unit roundoff
``u = eps / 2`` (``2^-24`` in float32). The host adds ``hi + lo`` in float64.

Arithmetic (Joldes, Muller, Popescu, "Tight and rigorous error bounds for basic building blocks
of double-word arithmetic", ACM TOMS 2017): :func:`two_sum` is Knuth's error-free sum
(``a + b = s + e`` exactly); :func:`dw_add` is their Algorithm 6 ("AccurateDWPlusDW"), whose
result has relative error at most ``3u^2 / (1 - 4u)`` with respect to the exact sum of its two
double-word operands. Neither uses fused multiply-add or relies on reassociation, and XLA does not
reassociate floating-point additions (no fast-math), so the bound holds on CPU, GPU and TPU.

Error bound. Summing values ``x_i`` (exact in the working type) by a tree of :func:`dw_add`
of depth ``L`` (every leaf passes through at most ``L`` additions) gives
``|(hi + lo) - sum x_i| <= L * 3u^2/(1 - 4u) * (1 + 3u^2)^L * sum |x_i|``
(each addition errs by at most ``3u^2/(1-4u)`` times the exact magnitude of its operands, and the
operands of one tree level are disjoint sub-sums whose magnitudes add up to at most
``(1 + 3u^2)^L sum |x_i|``). :func:`error_bound` returns ``4 L u^2 S`` for a bound ``S`` on
``sum |x_i|``, which dominates this for ``L u^2 < 10^-3``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth; 6 flops, no branch)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _fast_two_sum(a, b):
    """``(s, e)`` with ``a + b = s + e`` exactly, valid when ``|a| >= |b|`` (Dekker; 3 flops)."""
    s = a + b
    e = b - (s - a)
    return s, e


def dw_add(xh, xl, yh, yl):
    """Double word + double word, relative error <= ``3u^2 / (1 - 4u)`` (Joldes et al. Alg. 6)."""
    sh, sl = two_sum(xh, yh)
    th, tl = two_sum(xl, yl)
    sl = sl + th
    vh, vl = _fast_two_sum(sh, sl)
    vl = tl + vl
    return _fast_two_sum(vh, vl)


def tree_sum(x, axis: int, lo=None):
    """Sum ``x`` along ``axis`` as a double word ``(hi, lo)`` by a balanced tree of :func:`dw_add`.

    The axis is padded with zeros to a power of two; the depth of the tree is
    ``ceil(log2(x.shape[axis]))`` (see :func:`tree_depth`); term ``i`` meets term ``i + half``.
    ``x`` is taken as exact, or, with ``lo``, the terms are the double words ``(x, lo)``. The tree
    works on slices along ``axis`` (no transpose: moving a long last axis to the front first
    costs as much as the sum).
    """
    axis = axis % x.ndim
    pad = (1 << tree_depth(x.shape[axis])) - x.shape[axis]
    hi = pad_zeros(x, pad, axis)
    lo = jnp.zeros_like(hi) if lo is None else pad_zeros(lo, pad, axis)
    while hi.shape[axis] > 1:
        half = hi.shape[axis] // 2
        first = [jax.lax.slice_in_dim(v, 0, half, axis=axis) for v in (hi, lo)]
        second = [jax.lax.slice_in_dim(v, half, 2 * half, axis=axis) for v in (hi, lo)]
        hi, lo = dw_add(first[0], first[1], second[0], second[1])
    return jnp.squeeze(hi, axis), jnp.squeeze(lo, axis)


def pad_zeros(x, pad: int, axis: int = -1):
    """``x`` with ``pad`` zeros appended along ``axis`` (no 64-bit constant, unlike ``jnp.pad``)."""
    if not pad:
        return x
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (0, pad, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def tree_depth(size: int) -> int:
    """Depth ``ceil(log2(size))`` of :func:`tree_sum` over ``size`` terms (0 for one term)."""
    return max(int(size) - 1, 0).bit_length()


def unit_roundoff(dtype) -> float:
    """``u = eps / 2`` of a float dtype (``2^-24`` for float32, ``2^-53`` for float64)."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def error_bound(depth, abs_sum_bound, dtype):
    """Bound ``4 L u^2 S`` on ``|(hi + lo) - sum x_i|`` after ``L = depth`` levels of :func:`dw_add`.

    ``abs_sum_bound`` is an upper bound ``S`` on ``sum |x_i|``. Valid while ``L u^2 < 10^-3``
    (``L < 2.8e11`` in float32).
    """
    u = unit_roundoff(dtype)
    return 4.0 * depth * u * u * abs_sum_bound
