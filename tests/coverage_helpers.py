"""Shared helpers of owner G's soundness tests (coverage, tightness, floating point, bad input).

Everything here is computed with NumPy/SciPy only (independent of smoothjax), except the pure
JAX ``apply_fn`` that the sampler evaluates.

:class:`IntervalUnion` is one family that contains every analytic classifier the coverage tests
use: class 1 where ``s = w . x`` lies in a union of disjoint closed intervals ``[a_i, b_i]``
(``a_i`` may be ``-inf``, ``b_i`` may be ``+inf``), class 0 elsewhere. With ``K`` intervals:

- half-space: ``[-b, inf)``;
- slab: ``[c - t, c + t]``;
- two parallel half-spaces: ``(-inf, a] U [b, inf)``;
- union of slabs: several bounded intervals.

All of them use the SAME ``apply_fn`` (:func:`interval_union_apply`) with the intervals in
``params`` (padded to :data:`MAX_INTERVALS` with empty intervals), so one compiled certify
program serves every classifier.

Closed forms at ``x0`` for noise ``x0 + sigma N(0, I)`` (``s0 = w . x0``, ``tau = sigma ||w||_2``,
``S_c`` the set of s values of class ``c``):

- ``g_c(s0) = sum_i Phi((b_i - s0) / tau) - Phi((a_i - s0) / tau)`` over the intervals of ``S_c``;
- ``grad_x g_c = (d g_c / d s0) w`` with ``d g_c / d s0 = sum_i [phi((a_i - s0)/tau) -
  phi((b_i - s0)/tau)] / tau``, so ``||grad g_c||_p = |d g_c / d s0| ||w||_p``;
- antithetic pairs: ``P[both sides in S_c] = P[Z in U cap (-U)]``, ``U = (S_c - s0) / tau``
  (an intersection of two unions of intervals: a sum of normal-CDF differences);
- flip distance: moving x0 by delta changes s by ``w . delta`` (at most ``||delta|| ||w||_dual``),
  and nothing else, so the distance (in a norm) to the nearest point where ``g_c <= 1/2`` is
  ``min |s* - s0| / ||w||_dual`` over the roots s* of ``g_c(s) = 1/2`` (l2 -> l2, l1 -> linf,
  linf -> l1). Every sound certified radius is at most this number.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from scipy import optimize, stats

MAX_INTERVALS = 4


def interval_union_apply(params, x):
    """Two-class logits: class 1 where ``w . x`` lies in one of the intervals ``[a_i, b_i]``."""
    x = jnp.asarray(x)
    w = params["w"].astype(x.dtype)
    s = x.reshape(x.shape[0], -1) @ w.reshape(-1)
    a = params["a"].astype(x.dtype)
    b = params["b"].astype(x.dtype)
    inside = jnp.any((s[:, None] >= a[None, :]) & (s[:, None] <= b[None, :]), axis=1)
    ind = inside.astype(x.dtype)
    return jnp.stack([1.0 - ind, ind], axis=-1)


def _complement(intervals):
    """Complement in R of a sorted union of disjoint closed intervals (as open-closed doesn't matter)."""
    out = []
    left = -math.inf
    for a, b in intervals:
        if a > left:
            out.append((left, a))
        left = b
    if left < math.inf:
        out.append((left, math.inf))
    return out


def _mass(intervals, s0, tau):
    """P[s0 + tau Z in union of intervals]."""
    s0 = np.asarray(s0, np.float64)
    total = np.zeros_like(s0)
    for a, b in intervals:
        hi = (b - s0) / tau
        lo = (a - s0) / tau
        # difference of CDFs, computed on the side that keeps precision
        total = total + np.where(lo >= 0, stats.norm.sf(lo) - stats.norm.sf(hi),
                                 stats.norm.cdf(hi) - stats.norm.cdf(lo))
    return float(total) if total.ndim == 0 else total


class IntervalUnion:
    """Class 1 where ``w . x`` lies in the union of ``intervals`` (sorted, disjoint ``(a, b)`` pairs)."""

    def __init__(self, w, intervals, name=""):
        self.w = np.asarray(w, np.float32).astype(np.float64)  # the exact weights the model uses
        self.intervals = [(float(a), float(b)) for a, b in sorted(intervals)]
        assert len(self.intervals) <= MAX_INTERVALS
        for (_, b1), (a2, _) in zip(self.intervals, self.intervals[1:]):
            assert b1 < a2, "intervals must be disjoint"
        self.name = name

    @property
    def params(self):
        pad = MAX_INTERVALS - len(self.intervals)
        a = [a for a, _ in self.intervals] + [1.0] * pad  # padding: empty intervals [1, 0]
        b = [b for _, b in self.intervals] + [0.0] * pad
        return {
            "w": jnp.asarray(self.w, jnp.float32),
            "a": jnp.asarray(a, jnp.float32),
            "b": jnp.asarray(b, jnp.float32),
        }

    # --- geometry -----------------------------------------------------------------------------
    def s(self, x0):
        return float(np.dot(self.w.ravel(), np.ravel(x0)))

    def tau(self, sigma):
        return sigma * float(np.linalg.norm(self.w))

    def dual_norm(self, norm):
        w = self.w.ravel()
        return {"l2": np.linalg.norm(w, 2), "l1": np.max(np.abs(w)), "linf": np.sum(np.abs(w))}[norm]

    def class_set(self, c):
        return self.intervals if c == 1 else _complement(self.intervals)

    # --- closed forms -------------------------------------------------------------------------
    def g_of_s(self, s0, sigma, c):
        return _mass(self.class_set(c), s0, self.tau(sigma))

    def p(self, x0, sigma, c):
        """Smoothed probability of class c at x0."""
        return self.g_of_s(self.s(x0), sigma, c)

    def top_class(self, x0, sigma):
        return 1 if self.p(x0, sigma, 1) > 0.5 else 0

    def dg_ds(self, x0, sigma, c):
        s0, tau = self.s(x0), self.tau(sigma)
        total = 0.0
        for a, b in self.class_set(c):
            total += stats.norm.pdf((a - s0) / tau) - stats.norm.pdf((b - s0) / tau)
        return total / tau

    def grad_norm(self, x0, sigma, c, norm="l2"):
        """``||grad_x g_c(x0)||`` in the l2, l1 or linf norm (1/input units)."""
        wn = {"l2": np.linalg.norm(self.w.ravel(), 2), "l1": np.sum(np.abs(self.w)), "linf": np.max(np.abs(self.w))}
        return abs(self.dg_ds(x0, sigma, c)) * float(wn[norm])

    def dipole_both(self, x0, sigma, c):
        """P[f(x0 + e) = c and f(x0 - e) = c]."""
        s0, tau = self.s(x0), self.tau(sigma)
        u = [((a - s0) / tau, (b - s0) / tau) for a, b in self.class_set(c)]
        mirror = [(-b, -a) for a, b in u]
        pieces = []
        for a1, b1 in u:
            for a2, b2 in mirror:
                lo, hi = max(a1, a2), min(b1, b2)
                if lo < hi:
                    pieces.append((lo, hi))
        return _mass(pieces, 0.0, 1.0)

    def dipole_plus_only(self, x0, sigma, c):
        return self.p(x0, sigma, c) - self.dipole_both(x0, sigma, c)

    def flip_distance_s(self, x0, sigma, c):
        """Smallest |delta| (in s units) with g_c(s0 + delta) <= 1/2 (0 if already <= 1/2)."""
        s0 = self.s(x0)
        tau = self.tau(sigma)
        h = lambda s: self.g_of_s(s, sigma, c) - 0.5  # noqa: E731
        if h(s0) <= 0:
            return 0.0
        best = math.inf
        for direction in (1.0, -1.0):
            grid = s0 + direction * np.linspace(0.0, 20.0 * tau + 10.0, 4001)
            vals = h(grid)
            below = np.nonzero(vals <= 0)[0]
            if below.size == 0:
                continue
            j = below[0]
            lo, hi = sorted((grid[j - 1], grid[j]))
            root = optimize.brentq(h, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=200)
            best = min(best, abs(root - s0))
        return best

    def flip_distance(self, x0, sigma, c, norm="l2"):
        return self.flip_distance_s(x0, sigma, c) / float(self.dual_norm(norm))

    def truth(self, x0, sigma, c):
        """Every closed-form quantity the coverage tests compare with, for class c at x0."""
        return dict(
            p=self.p(x0, sigma, c),
            grad_l2=self.grad_norm(x0, sigma, c, "l2"),
            grad_l1=self.grad_norm(x0, sigma, c, "l1"),
            grad_linf=self.grad_norm(x0, sigma, c, "linf"),
            dipole_both=self.dipole_both(x0, sigma, c),
            dipole_plus_only=self.dipole_plus_only(x0, sigma, c),
            flip_l2=self.flip_distance(x0, sigma, c, "l2"),
            flip_l1=self.flip_distance(x0, sigma, c, "l1"),
            flip_linf=self.flip_distance(x0, sigma, c, "linf"),
        )


def fixed_weights(dim, seed=0):
    """A fixed unit-l2 weight vector (float32-representable), non-uniform so l1/linf matter."""
    w = np.random.default_rng(seed).standard_normal(dim)
    return (w / np.linalg.norm(w)).astype(np.float32).astype(np.float64)


def point_with_s(w, s0):
    """The input x0 = s0 w / ||w||^2 (so that w . x0 = s0), float32."""
    w = np.asarray(w, np.float64)
    return (s0 * w / np.dot(w, w)).astype(np.float32)


def coverage_classifiers(dim=8, seed=0):
    """(name, classifier, s0) for the four analytic families, each with top-class p ~ 0.65-0.8."""
    w = fixed_weights(dim, seed)
    return [
        ("half_space", IntervalUnion(w, [(-0.4, math.inf)], "half_space"), 0.0),
        ("slab", IntervalUnion(w, [(-0.6, 0.6)], "slab"), 0.0),
        ("two_half_spaces", IntervalUnion(w, [(-math.inf, -0.3), (0.9, math.inf)], "two_half_spaces"), 1.3),
        ("union_of_slabs", IntervalUnion(w, [(-0.5, 0.3), (0.6, 1.2), (1.5, 2.0)], "union_of_slabs"), 0.0),
    ]


def binomial_pvalue_at_most(failures, trials, rate):
    """One-sided exact binomial p-value of H0 'failure probability <= rate': P[Bin(trials, rate) >= failures]."""
    if failures <= 0:
        return 1.0
    return float(stats.binom.sf(failures - 1, trials, rate))
