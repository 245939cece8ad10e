"""Bisection on the IEEE-754 order of floats, and moving an approximate root to its safe side.

Private; shared by the certificate modules and :mod:`smoothjax.gradient_bounds`. Every solve that
needs a guaranteed side of its root ends here: :func:`bisect_bracket` closes a bracket of a
monotone predicate to adjacent floats and returns both ends, :func:`bisect` returns the lower end
(the end that satisfies the invariant ``fn <= 0``), never the midpoint, and :func:`safe_side`
moves a Newton iterate there. A caller whose safe side is the upper end takes it from
:func:`bisect_bracket`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = [
    "BISECTION_MAX_STEPS",
    "bisect",
    "bisect_bracket",
    "from_ordered_int",
    "ordered_int",
    "safe_side",
]

BISECTION_MAX_STEPS = 128  # bit-pattern bisection closes within 64 steps (float64)


def ordered_int(x):
    """Map floats to integers monotonically (IEEE-754 order; -0.0 and 0.0 both map to 0)."""
    itype = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
    i = lax.bitcast_convert_type(x, itype)
    return jnp.where(i >= 0, i, -(i & jnp.iinfo(itype).max))


def from_ordered_int(k, dtype):
    itype = jnp.int64 if dtype == jnp.float64 else jnp.int32
    bits = jnp.where(k >= 0, k, (-k) | jnp.array(jnp.iinfo(itype).min, itype))
    return lax.bitcast_convert_type(bits.astype(itype), dtype)


def bisect_bracket(above, lo, hi, max_steps=BISECTION_MAX_STEPS):
    """Vectorised bisection of a monotone predicate; returns the final bracket ``(lo, hi)``.

    ``above(x)`` is a boolean array, False below a threshold and True from it on, with
    ``above(lo)`` False and ``above(hi)`` True (neither end is evaluated; an end that breaks this
    simply stays put). ``lo`` and ``hi`` are float32 or float64 arrays of one shape and dtype (any
    signs), and ``above(x)`` has their shape.

    Bisects on the integer order of the floats (their IEEE-754 bit patterns), so every step
    halves the number of representable numbers in the bracket: it closes to adjacent floats in at
    most 64 steps (32 in float32) wherever the threshold lies, including thresholds near 0 where
    halving the value would need ~1075 steps. Each end keeps its invariant throughout: the
    returned ``lo`` has ``above`` False (or is the initial ``lo``), the returned ``hi`` has it True
    (or is the initial ``hi``). Where ``above`` is monotone in floating point, the closed bracket
    is the unique pair of adjacent floats around the threshold, whatever the path to it (XLA on
    CPU flushes subnormals to zero, so a predicate that reads them need not be monotone there).
    """
    dtype = lo.dtype
    lo_k = ordered_int(lo)
    hi_k = ordered_int(jnp.asarray(hi, dtype))

    def is_open(lo_k, hi_k):
        return hi_k - 1 > lo_k  # hi_k - lo_k > 1 without overflow when the ends have opposite signs

    def cond(state):
        step, lo_k, hi_k = state
        return (step < max_steps) & jnp.any(is_open(lo_k, hi_k))

    def body(state):
        step, lo_k, hi_k = state
        # floor((lo + hi) / 2) without overflow for integers of either sign
        mid_k = (lo_k >> 1) + (hi_k >> 1) + (lo_k & hi_k & 1)
        open_ = is_open(lo_k, hi_k)
        up = above(from_ordered_int(mid_k, dtype))
        lo_k = jnp.where(open_ & ~up, mid_k, lo_k)
        hi_k = jnp.where(open_ & up, mid_k, hi_k)
        return step + 1, lo_k, hi_k

    _, lo_k, hi_k = lax.while_loop(cond, body, (0, lo_k, hi_k))
    return from_ordered_int(lo_k, dtype), from_ordered_int(hi_k, dtype)


def bisect(fn, lo, hi, max_steps=BISECTION_MAX_STEPS):
    """Vectorised bisection for an increasing ``fn`` with ``fn(lo) <= 0 < fn(hi)``; returns ``lo``.

    :func:`bisect_bracket` of the predicate ``not fn(x) <= 0`` (a NaN counts as above), keeping
    the lower end: it always satisfies the invariant ``fn <= 0`` (or is the initial ``lo``), so
    for solves where "larger root = larger radius" it is the safe end.
    """
    lo, _ = bisect_bracket(lambda x: ~(fn(x) <= 0.0), lo, hi, max_steps)
    return lo


def safe_side(fn, x, slope, margin, lo):
    """Move an approximate root ``x`` of an increasing ``fn`` to its safe side, ``fn <= 0``.

    The answer is ``x`` where ``fn(x) <= 0`` already holds (the invariant a bisection keeps for its
    lower end). Elsewhere x steps down by the Newton correction ``(fn(x) + margin) / slope`` (slope
    ~ fn'(x) > 0, margin >= the evaluation error of fn) and 4 ulps of x, not below ``lo``, and the
    step is kept if fn <= 0 there. Any entry still failing (none on the test grids) is handed to
    :func:`bisect` on [lo, that point], so the result always satisfies the same floating-point
    condition as a bisection's result (or is ``lo``, assumed safe as in :func:`bisect`); entries
    already settled enter the bisection as closed brackets, and when all are, it costs one test.
    Takes two evaluations of fn.
    """
    eps = jnp.finfo(x.dtype).eps
    f1 = fn(x)
    x2 = jnp.maximum(x - (jnp.maximum(f1, 0.0) + margin) / slope - 4.0 * eps * jnp.abs(x), lo)
    y = jnp.where(f1 <= 0.0, x, x2)
    settled = (f1 <= 0.0) | (fn(x2) <= 0.0) | (x2 <= lo)
    return bisect(fn, jnp.where(settled, y, lo), y)
