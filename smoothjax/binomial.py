"""Binomial confidence bounds (Clopper-Pearson) and the binomial test, computed inside JAX.

Clopper-Pearson bounds are quantiles of beta distributions:

* lower bound at level 1 - alpha: the x with ``P[Bin(n, x) >= k] = I_x(k, n - k + 1) = alpha``
  (0 when k = 0); equal to ``scipy.stats.beta.ppf(alpha, k, n - k + 1)`` and to statsmodels
  ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``;
* upper bound: the x with ``P[Bin(n, x) <= k] = alpha`` (1 when k = n), i.e.
  ``1 - lower(n - k, n, alpha)``.

JAX has no inverse incomplete beta, so we invert ``I_x(a, b)`` with a safeguarded Newton solve
(``lax.while_loop``, vectorised over all inputs) in the logit variable ``t = log(x / (1 - x))``,
which keeps relative precision for bounds near 0 and near 1. ``I_x`` itself is not taken from
``jax.scipy.special.betainc``: that evaluates the prefactor ``x^a (1-x)^b / B(a, b)`` from
differences of ``lgamma`` values of size ``n log n`` and loses about ``n * eps`` in relative
accuracy (measured at the 0.001 quantile: relative error 1e-9 at n = 1e6, 2e-7 at n = 1e8,
2e-6 at n = 1e9). We instead write the prefactor in Loader's saddle-point form,
``log(x^a y^b / B(a, b)) = -bd0(a, N x) - bd0(b, N y) + log(ab / (2 pi N)) / 2
+ delta(N) - delta(a) - delta(b)`` (N = a + b, y = 1 - x, ``bd0(k, m) = k log(k/m) + m - k``
summed as a series when k is near m, ``delta`` = Stirling-series remainder of ``lgamma``), and
multiply by the modified-Lentz continued fraction of DLMF 8.17.22 (with the symmetry
``I_x(a, b) = 1 - I_{1-x}(b, a)`` where the fraction converges slowly). Every term then has
relative error of a few ulps, for n up to 1e9 and beyond.

Soundness: the solve keeps a bracket ``[t_lo, t_hi]`` on the root of
``log I - (log alpha - margin)`` (margin: 1e4 * eps * (1 + |log alpha|) in float64, which absorbs
the rounding error of evaluating ``log I``) and stops when the bracket is narrower than 64 * eps
in t (a relative 1.4e-14 of x and of 1 - x) or when ``log I(t_lo)`` is within the margin of its
target; ``t_lo`` is then lowered by 16 eps (1 + |t_lo|) to cover the conditioning of ``I_x`` in
x (a 1-ulp change of x moves ``log I`` by up to ~2e-11 at n = 1e9). The lower bound returned is ``sigmoid(t_lo)``
rounded one ulp down, the upper bound ``sigmoid(-t_lo') = 1 - lower(n - k)`` rounded one ulp up: the bounds err
on the safe side, by at most ~1e-13 relative (tested against scipy ``beta.ppf`` to 1e-10
absolute for n up to 1e9 and k from 0 to n).

Accuracy is guaranteed for ``alpha <= 0.25``, the regime of certificates. For alpha near 1/2
and n ~ 1e9 the continued fraction needs thousands of terms near the mean; it is capped at
20,000 terms.

Invalid inputs: concrete ones raise ``ValueError`` (negative counts, k > n, n < 1, non-integer
counts, alpha outside (0, 1), NaN); under ``jit`` the functions return NaN for them instead.

float32 (x64 off): the same algorithm runs in float32 (margin and bracket
tolerances scale with float32 eps); bounds are then accurate to about 2e-4 relative for
n <= 1e7 (tested) and err on the safe side (the float32 margin is what costs the 2e-4), but
counts above 2^24 are not exact in float32, so prefer x64 for large n.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from smoothjax._config import as_float
from smoothjax._validation import check_alpha, check_counts

__all__ = ["binomial_two_sided_pvalue", "clopper_pearson_lower", "clopper_pearson_upper"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_CF_MAX_TERMS = 20_000
_SOLVE_MAX_STEPS = 200


# ----------------------------------------------------------------------------------------------
# Log of the regularized incomplete beta function I_x(a, b), parametrised by t = logit(x).
# ----------------------------------------------------------------------------------------------


def _stirling_delta(z):
    """``lgamma(z) - [(z - 1/2) log z - z + log(2 pi) / 2]`` for z >= 1 (Stirling remainder)."""
    big = z >= 10.0
    zb = jnp.where(big, z, 10.0)
    w = 1.0 / (zb * zb)
    series = (
        1.0 / 12.0
        + w
        * (
            -1.0 / 360.0
            + w
            * (
                1.0 / 1260.0
                + w * (-1.0 / 1680.0 + w * (1.0 / 1188.0 + w * (-691.0 / 360360.0 + w / 156.0)))
            )
        )
    ) / zb
    zs = jnp.where(big, 1.0, jnp.maximum(z, 1e-300))
    direct = jax.scipy.special.gammaln(zs) - (zs - 0.5) * jnp.log(zs) + zs - _HALF_LOG_2PI
    return jnp.where(big, series, direct)


def _bd0(k, log_m):
    """Loader's deviance ``k log(k / m) + m - k`` (>= 0) with m = exp(log_m), accurate when k ~ m."""
    m = jnp.exp(log_m)
    d = k - m
    near = jnp.abs(d) < 0.1 * (k + m)
    v = jnp.where(near, d / jnp.where(near, k + m, 1.0), 0.0)
    v2 = v * v
    # 2 k (v^3/3 + v^5/5 + ...), |v| < 0.1: 9 terms reach v^21 < 1e-21.
    s = 0.0
    for j in range(10, 0, -1):
        s = 1.0 / (2 * j + 1) + v2 * s
    series = d * v + 2.0 * k * v * v2 * s
    direct = k * (jnp.log(k) - log_m) + m - k
    return jnp.where(near, series, direct)


def _log_front(a, b, log_x, log_y):
    """``log(x^a y^b / B(a, b))`` in Loader's saddle-point form (a, b >= 1)."""
    n = a + b
    log_n = jnp.log(n)
    return (
        -_bd0(a, log_n + log_x)
        - _bd0(b, log_n + log_y)
        + 0.5 * (jnp.log(a) + jnp.log(b) - log_n)
        - _HALF_LOG_2PI
        + _stirling_delta(n)
        - _stirling_delta(a)
        - _stirling_delta(b)
    )


def _log_cf(a, b, x):
    """``log`` of the DLMF 8.17.22 continued fraction ``1 + d1/(1 + d2/(1 + ...))`` (modified Lentz).

    ``I_x(a, b) = x^a (1-x)^b / (a B(a, b)) / cf``; converges quickly for x < (a + 1)/(a + b + 2).
    """
    dtype = x.dtype
    eps = jnp.finfo(dtype).eps
    tiny = jnp.finfo(dtype).tiny * 1e3

    def coef(m):
        j_odd = (m - 1) // 2
        j_even = m // 2
        jo = j_odd.astype(dtype)
        je = j_even.astype(dtype)
        odd = -(a + jo) * (a + b + jo) * x / ((a + 2 * jo) * (a + 2 * jo + 1))
        even = je * (b - je) * x / ((a + 2 * je - 1) * (a + 2 * je))
        return jnp.where(m % 2 == 1, odd, even)

    def cond(state):
        m, _, _, _, active = state
        return (m <= _CF_MAX_TERMS) & jnp.any(active)

    def body(state):
        m, f, c, d, active = state
        dm = coef(m)
        d_new = 1.0 + dm * d
        d_new = jnp.where(jnp.abs(d_new) < tiny, tiny, d_new)
        d_new = 1.0 / d_new
        c_new = 1.0 + dm / c
        c_new = jnp.where(jnp.abs(c_new) < tiny, tiny, c_new)
        delta = c_new * d_new
        f = jnp.where(active, f * delta, f)
        c = jnp.where(active, c_new, c)
        d = jnp.where(active, d_new, d)
        active = active & (jnp.abs(delta - 1.0) > eps)
        return m + 1, f, c, d, active

    init = (
        jnp.asarray(1, jnp.int32),
        jnp.ones_like(x),
        jnp.ones_like(x),
        jnp.zeros_like(x),
        jnp.ones(x.shape, bool),
    )
    _, f, _, _, _ = lax.while_loop(cond, body, init)
    return jnp.log(jnp.abs(f))


def _log_betainc_logit(a, b, t):
    """``(log I_x(a, b), log(x^a y^b / B(a, b)))`` at x = sigmoid(t), for a, b >= 1.

    The second value is ``log(d I / d t)``, so ``d log I / d t = exp(second - first)``.
    """
    log_x = -jax.nn.softplus(-t)
    log_y = -jax.nn.softplus(t)
    x = jnp.exp(log_x)
    y = jnp.exp(log_y)
    log_front = _log_front(a, b, log_x, log_y)
    direct = x * (a + b + 2.0) < a + 1.0
    # direct: I = front / (a cf(a, b, x)); else I = 1 - front / (b cf(b, a, y)).
    aa = jnp.where(direct, a, b)
    bb = jnp.where(direct, b, a)
    xx = jnp.where(direct, x, y)
    log_part = log_front - jnp.log(aa) - _log_cf(aa, bb, xx)
    log_i = jnp.where(direct, log_part, jnp.log1p(-jnp.minimum(jnp.exp(log_part), 1.0)))
    return log_i, log_front


# ----------------------------------------------------------------------------------------------
# Safeguarded Newton solve for the lower Clopper-Pearson bound, in logit space.
# ----------------------------------------------------------------------------------------------


def _lower_logit(k, n, log_alpha):
    """Safe lower end ``t_lo`` of a bracket on ``logit`` of the lower Clopper-Pearson bound.

    Solves ``log I_x(k, n - k + 1) = log(alpha) - margin`` for ``k >= 1`` (lanes with k = 0 are
    solved for a dummy k = 1 and overwritten by the caller).
    """
    dtype = log_alpha.dtype
    eps = float(jnp.finfo(dtype).eps)
    t_min = -700.0 if dtype == jnp.float64 else -85.0
    t_max = -t_min
    tol = 64.0 * eps
    a = jnp.maximum(k, 1.0)
    b = n - a + 1.0
    margin = (1e4 if dtype == jnp.float64 else 1e2) * eps * (1.0 + jnp.abs(log_alpha))
    # The evaluation error of log I grows with n (measured: ~2e-11 at n = 1e9, ~1.5e-9 at
    # n = 2^34 for k = n - 1); 0.01 n ulps covers it with a factor >= 25 and moves the bound by
    # < 1e-13 absolute for n <= 1e9.
    margin = margin + 0.01 * eps * n
    target = log_alpha - margin

    def g(t):  # t: [2, ...], the two evaluation points per lane
        a_t, b_t, target_t = (jnp.broadcast_to(v, t.shape) for v in (a, b, target))
        log_i, log_front = _log_betainc_logit(a_t, b_t, t)
        return log_i - target_t, jnp.exp(log_front - log_i)

    # Initial point: normal approximation on the success fraction, on the logit scale.
    z = -jax.scipy.special.ndtri(jnp.exp(log_alpha))
    p_hat = a / n
    x0 = p_hat - z * jnp.sqrt(p_hat * (1.0 - p_hat) / n) - 0.5 / n
    x0 = jnp.clip(x0, 0.5 * a / n * jnp.exp(log_alpha / a), 1.0 - 0.5 / n)
    t0 = jnp.clip(jnp.log(x0) - jnp.log1p(-x0), t_min + 1.0, t_max - 1.0)

    lo0 = jnp.full_like(log_alpha, t_min)
    hi0 = jnp.full_like(log_alpha, t_max)

    # A lane is done when its bracket is narrower than tol (relative), or when g(t_lo) is within
    # g_tol of 0: then log I(x_lo) lies in [log alpha - 2 margin, log alpha - margin], i.e. x_lo
    # is below the quantile by at most ~2 margin / (d log I / dx). The second test stops lanes
    # whose g is so flat that rounding noise (~1e-12 for n ~ 1e6, k ~ n) hides its sign change.
    g_tol = margin

    def converged(lo, hi, g_lo):
        narrow = hi - lo <= 2.0 * tol * jnp.maximum(1.0, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
        return narrow | (g_lo >= -g_tol)

    def cond(state):
        step, lo, hi, g_lo = state[:4]
        return (step < _SOLVE_MAX_STEPS) & ~jnp.all(converged(lo, hi, g_lo))

    def body(state):
        step, lo, hi, g_lo, t, gt, dgt, dx_old = state
        width = hi - lo
        # rtsafe-style safeguard: take the Newton step when it stays inside the bracket and
        # at least halves the previous step, else bisect.
        dx = gt / dgt
        newton = t - dx
        ok = (
            jnp.isfinite(newton)
            & (newton >= lo)
            & (newton <= hi)
            & (jnp.abs(dx) <= 0.5 * jnp.abs(dx_old))
        )
        cand = jnp.where(ok, newton, 0.5 * (lo + hi))
        dx = jnp.where(ok, dx, 0.5 * width)
        dx = jnp.where(step == 0, jnp.inf, dx)  # the first step only evaluates t0
        half = 0.5 * tol * jnp.maximum(1.0, jnp.abs(cand))
        cand = jnp.clip(cand, lo + half, hi - half)
        # Evaluate just below and just above the candidate: once Newton has converged the two
        # points straddle the root and close the bracket.
        pts = jnp.stack([cand - half, cand + half])
        gp, dgp = g(pts)
        below = gp <= 0.0  # NaN counts as "above": only the unsafe end can move on NaN
        # pts are increasing, so the last point below the root is the best new lower end.
        use1 = below[1] & (pts[1] > lo)
        use0 = below[0] & (pts[0] > lo) & ~use1
        new_lo = jnp.where(use1, pts[1], jnp.where(use0, pts[0], lo))
        new_g_lo = jnp.where(use1, gp[1], jnp.where(use0, gp[0], g_lo))
        new_hi = jnp.minimum(hi, jnp.min(jnp.where(below, jnp.broadcast_to(hi, pts.shape), pts), axis=0))
        done = converged(lo, hi, g_lo)
        new_lo = jnp.where(done, lo, new_lo)
        new_hi = jnp.where(done, hi, new_hi)
        new_g_lo = jnp.where(done, g_lo, new_g_lo)
        # Continue Newton from whichever evaluated point is nearer the root.
        second = jnp.abs(gp[1]) < jnp.abs(gp[0])
        t_next = jnp.where(second, pts[1], pts[0])
        g_next = jnp.where(second, gp[1], gp[0])
        dg_next = jnp.where(second, dgp[1], dgp[0])
        return step + 1, new_lo, new_hi, new_g_lo, t_next, g_next, dg_next, dx

    # g = 0, dg = 1 and dx_old = inf make the first Newton "step" land exactly on t0, so g is
    # traced once (inside the loop body) only.
    ones = jnp.ones_like(lo0)
    state = (0, lo0, hi0, jnp.full_like(lo0, -jnp.inf), t0, 0.0 * ones, ones, jnp.inf * ones)
    final = lax.while_loop(cond, body, state)
    lo = final[1]
    return lo


def _inputs(successes, trials, alpha):
    k = as_float(successes)
    n = as_float(trials)
    alpha = as_float(alpha)
    k, n, alpha = jnp.broadcast_arrays(k, n, alpha)
    invalid = (
        jnp.isnan(k)
        | jnp.isnan(n)
        | jnp.isnan(alpha)
        | (k < 0)
        | (k > n)
        | (n < 1)
        | (k != jnp.round(k))
        | (n != jnp.round(n))
        | (alpha <= 0)
        | (alpha >= 1)
    )
    # Replace invalid lanes with harmless values so the solve stays finite; they become NaN.
    k = jnp.where(invalid, 0.0, k)
    n = jnp.where(invalid, 1.0, n)
    alpha = jnp.where(invalid, 0.5, alpha)
    return k, n, alpha, invalid


def _lower_bound_logit(k, n, alpha):
    """Safe logit of the lower bound for 1 <= k < n (other lanes: placeholder values)."""
    t = _lower_logit(k, n, jnp.log(alpha))
    # Widen by 16 ulps of (1 + |t|): covers the conditioning of I_x in its argument (a 1-ulp
    # change of x moves log I by up to ~2e-11 at n = 1e9), which the log I margin does not.
    return t - 16.0 * jnp.finfo(t.dtype).eps * (1.0 + jnp.abs(t))


@jax.jit
def _lower_jit(successes, trials, alpha):
    k, n, alpha, invalid = _inputs(successes, trials, alpha)
    t = _lower_bound_logit(k, n, alpha)
    zero = jnp.zeros_like(t)
    x = jnp.nextafter(jax.nn.sigmoid(t), zero)  # one more ulp toward the safe side
    # k = n: I_x(n, 1) = x^n, so the bound is alpha^(1/n); k = 0: 0.
    x = jnp.where(k == n, jnp.nextafter(jnp.exp(jnp.log(alpha) / n), zero), x)
    x = jnp.where(k == 0, 0.0, x)
    return jnp.where(invalid, jnp.nan, x)


@jax.jit
def _upper_jit(successes, trials, alpha):
    # upper(k, n) = 1 - lower(n - k, n) = sigmoid(-logit(lower(n - k, n))), which keeps relative
    # accuracy for upper bounds near 0; rounded one ulp up.
    k, n, alpha, invalid = _inputs(successes, trials, alpha)
    t = _lower_bound_logit(n - k, n, alpha)
    one = jnp.ones_like(t)
    x = jnp.nextafter(jax.nn.sigmoid(-t), one)
    # k = 0: 1 - alpha^(1/n) = -expm1(log(alpha) / n); k = n: 1.
    x = jnp.where(k == 0, jnp.nextafter(-jnp.expm1(jnp.log(alpha) / n), one), x)
    x = jnp.where(k == n, 1.0, jnp.minimum(x, 1.0))
    return jnp.where(invalid, jnp.nan, x)


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, alpha: ArrayLike) -> jax.Array:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Returns the x solving ``P[Bin(n, x) >= k] = alpha``, i.e. ``beta.ppf(alpha, k, n - k + 1)``
    (0 for k = 0), which equals statsmodels ``proportion_confint(k, n, alpha=2 * alpha,
    method="beta")[0]``. Used for ``p_A_bar`` in Cohen et al. (2019) and in both papers.

    Args:
      successes: counts k, any shape (whole numbers, 0 <= k <= n).
      trials: counts n >= 1, broadcastable with ``successes``.
      alpha: failure probability in (0, 1), broadcastable.

    Returns:
      float array of the broadcast shape (float64 under x64). Errs low: it is the lower end of the
      final bracket, within ~1e-13 relative of the exact quantile (n up to 1e9). NaN for invalid
      entries under ``jit``; ``ValueError`` for concrete invalid inputs.

    Example:
      >>> p_lower = clopper_pearson_lower(990, 1000, 0.001)
      >>> print(f"{float(p_lower):.4f}")
      0.9760
      >>> [round(float(b), 4) for b in clopper_pearson_lower([0, 1000], 1000, 0.001)]  # 0 and alpha^(1/n)
      [0.0, 0.9931]
    """
    check_counts(successes, trials)
    check_alpha(alpha)
    return _lower_jit(as_float(successes), as_float(trials), as_float(alpha))


def clopper_pearson_upper(successes: ArrayLike, trials: ArrayLike, alpha: ArrayLike) -> jax.Array:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on a binomial proportion.

    Returns the x solving ``P[Bin(n, x) <= k] = alpha``, i.e. ``beta.isf(alpha, k + 1, n - k)``
    (1 for k = n), computed as ``1 - clopper_pearson_lower(n - k, n, alpha)`` (through the logit,
    so bounds near 0 keep their relative accuracy) and rounded up: it errs high. Shapes, dtypes
    and invalid-input behaviour as :func:`clopper_pearson_lower`.

    Example:
      >>> print(f"{float(clopper_pearson_upper(990, 1000, 0.001)):.4f}")
      0.9970
    """
    check_counts(successes, trials)
    check_alpha(alpha)
    return _upper_jit(as_float(successes), as_float(trials), as_float(alpha))


@jax.jit
def _pvalue_jit(successes, trials):
    k, n, _, invalid = _inputs(successes, trials, 0.5)
    m = jnp.minimum(k, n - k)
    # P[X <= m] for X ~ Bin(n, 1/2) is I_{1/2}(n - m, m + 1).
    log_cdf, _ = _log_betainc_logit(n - m, m + 1.0, jnp.zeros_like(n))
    p = jnp.minimum(2.0 * jnp.exp(log_cdf), 1.0)
    p = jnp.where(2.0 * m == n, 1.0, p)
    return jnp.where(invalid, jnp.nan, p)


def binomial_two_sided_pvalue(successes: ArrayLike, trials: ArrayLike) -> jax.Array:
    """Two-sided p-value of the exact binomial test of H0: p = 1/2.

    For the symmetric null this is ``min(1, 2 P[X <= min(k, n - k)])``, X ~ Bin(n, 1/2) (and 1
    when k = n/2): the value of ``scipy.stats.binomtest(k, n, 0.5).pvalue``, up to scipy's
    1e-7 relative tie tolerance, which only matters for p-values near 1. Cohen et al.'s
    PREDICT abstains unless this p-value is <= alpha.

    Args:
      successes: count k of the top class among the two leading classes (0 <= k <= n).
      trials: n >= 1, broadcastable.

    Returns:
      float array; NaN for invalid entries under ``jit``, ``ValueError`` for concrete ones.
      Accurate to ~1e-13 relative for p-values up to ~0.25 (the continued fraction is capped
      at 20,000 terms, enough near the centre for n up to ~1e8).

    Example:
      >>> print(f"{float(binomial_two_sided_pvalue(60, 100)):.4f}")
      0.0569
    """
    check_counts(successes, trials)
    return _pvalue_jit(as_float(successes), as_float(trials))
