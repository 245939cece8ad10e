"""The curve h(x; r) of the Theorem 3 region and the roots of h(x) - B x = T (lowest layer).

The optimal set of Theorem 3 is {(x, y): A + B x - h(x) + eps y > 0} with
h(x) = 2 (e^{r x} - 1 - r x) / r^2 (see :mod:`smoothjax.theorem3`). This module evaluates h, h',
dh/dr and the inverse of h' stably as r -> 0, and finds the two ends x1(y) < x2(y) of a horizontal
section of the region, between which :mod:`smoothjax.theorem3._moments` integrates in closed form.
It imports nothing else from the package.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

_MAX_EXP = 700.0  # exp(u) is finite for u <= this in float64
# Newton steps of the monotone root solves of the y-pieces. Measured (final solutions of 1500
# broad random problems at 4 radii each, q up to 1 - 1e-5, m2 = 0 to near the arc): against 10
# steps, 4 steps change the moments by <= 1.1e-15 and 3 steps by up to 1.3e-13.
_ROOT_ITERS = 4
_FAR = 40.0  # |x| beyond which Phi(x) is exactly 0 or 1 in float64


# ---------------------------------------------------------------------------------------------
# elementary functions, stable at r -> 0


def _e1(u):
    """expm1(u) / u."""
    small = jnp.abs(u) < 1e-4
    us = jnp.where(small, 1.0, u)
    return jnp.where(small, 1.0 + u * (0.5 + u * (1.0 / 6.0 + u / 24.0)), jnp.expm1(us) / us)


def _e2(u):
    """2 (e^u - 1 - u) / u^2."""
    small = jnp.abs(u) < 0.05
    us = jnp.where(small, 1.0, u)
    # sum_k 2 u^k / (k+2)!
    coef = [2.0 / math.factorial(k + 2) for k in range(9)]
    series = coef[-1]
    for c in coef[-2::-1]:
        series = series * u + c
    return jnp.where(small, series, 2.0 * (jnp.expm1(us) - us) / (us * us))


def _l2(u):
    """2 (u - log1p(u)) / u^2  (u > -1)."""
    small = jnp.abs(u) < 0.01
    us = jnp.where(small, 0.5, u)
    coef = [2.0 * (-1.0) ** k / (k + 2) for k in range(12)]
    series = coef[-1]
    for c in coef[-2::-1]:
        series = series * u + c
    return jnp.where(small, series, 2.0 * (us - jnp.log1p(us)) / (us * us))


def _lg(s):
    """log1p(s) / s  (s > -1)."""
    small = jnp.abs(s) < 1e-4
    ss = jnp.where(small, 1.0, s)
    return jnp.where(small, 1.0 + s * (-0.5 + s * (1.0 / 3.0 - s / 4.0)), jnp.log1p(ss) / ss)


def h(x, r):
    """h(x) = 2 (e^{r x} - 1 - r x) / r^2, = x^2 at r = 0."""
    u = jnp.minimum(r * x, _MAX_EXP)
    return x * x * _e2(u)


def dh(x, r):
    """h'(x) = 2 (e^{r x} - 1) / r."""
    u = jnp.minimum(r * x, _MAX_EXP)
    return 2.0 * x * _e1(u)


def _e2_prime(u):
    """d/du of 2 (e^u - 1 - u) / u^2  = 2 ((u - 2) e^u + u + 2) / u^3."""
    small = jnp.abs(u) < 0.5
    us = jnp.where(small, 1.0, u)
    # sum_{k>=1} 2 k u^{k-1} / (k+2)!
    coef = [2.0 * k / math.factorial(k + 2) for k in range(1, 16)]
    series = coef[-1]
    for c in coef[-2::-1]:
        series = series * u + c
    return jnp.where(small, series, 2.0 * ((us - 2.0) * jnp.exp(us) + us + 2.0) / (us * us * us))


def dh_dr(x, r):
    """d h(x; r) / d r at fixed x  (= x^3 / 3 at r = 0)."""
    u = jnp.minimum(r * x, _MAX_EXP)
    return x * x * x * _e2_prime(u)


def dh_inverse(s, r):
    """The x with h'(x) = s, or -inf when s <= -2/r (h' > -2/r everywhere)."""
    z = 0.5 * r * s
    ok = z > -1.0
    zs = jnp.where(ok, z, 0.0)
    return jnp.where(ok, 0.5 * s * _lg(zs), -jnp.inf)


# ---------------------------------------------------------------------------------------------
# roots of h(x) - B x = T on either side of the curve's steep part


def _quadratic_step(D, slope, curv):
    """Positive root d of curv d^2 + slope d = D (D, slope, curv >= 0), computed stably."""
    D = jnp.maximum(D, 0.0)
    den = slope + jnp.sqrt(slope * slope + 4.0 * curv * D)
    return jnp.where(den > 0, 2.0 * D / jnp.where(den > 0, den, 1.0), 0.0)


def right_root(T, B, r, eps, x_R, H_R):
    """Largest root of h(x) - B x = T, given x_R (where h' - B = eps) and H_R = h(x_R) - B x_R <= T.

    Newton on psi(x) = (2/r^2) (r x - log(1 + r x + r^2 (B x + T)/2)), convex in x and increasing
    at the root, from a start to its right (a quadratic lower bound of h - B x): the iterates
    decrease monotonically to the root; the log form converges in a few steps even where e^{r x}
    dominates.
    """
    curv = jnp.exp(jnp.minimum(r * x_R, _MAX_EXP))  # h''/2 >= this right of x_R
    # Beyond x_far every function of x2 we use (Phi(x2), Phi(x2 - r), phi(...)) is exactly 1 or 0,
    # so a root past it is as good as x_far (the iterates never move right).
    x_far = jnp.maximum(x_R, r + _FAR)
    x = jnp.minimum(x_R + _quadratic_step(T - H_R, eps, curv), x_far)

    def body(_, x):
        u = r * x
        lin = B * x + T
        delta = 0.5 * r * r * lin
        z = 1.0 + u + delta
        zs = jnp.maximum(z, 1e-300)
        small = jnp.abs(u) < 0.5
        us = jnp.where(small, u, 0.0)
        s = delta / (1.0 + us)
        psi_small = x * x * _l2(us) - lin / (1.0 + us) * _lg(jnp.where(small, s, 0.0))
        rs = jnp.where(small, 1.0, r)
        psi_large = 2.0 / (rs * rs) * (u - jnp.log(zs))
        psi = jnp.where(small, psi_small, psi_large)
        dpsi = (2.0 * x - B + r * lin) / zs
        step = jnp.where(dpsi > 0, psi / jnp.where(dpsi > 0, dpsi, 1.0), 0.0)
        return jnp.clip(x - jnp.maximum(step, 0.0), x_R, x)

    return lax.fori_loop(0, _ROOT_ITERS, body, x)


def left_root(T, B, r, eps, x_L, H_L):
    """Smallest root of h(x) - B x = T, given x_L (where h' - B = -eps) and H_L = h(x_L) - B x_L <= T.

    Newton on the convex, decreasing phi(x) = h(x) - B x - T from a start to the left of the root
    (the larger of the tangent-line bound and a Newton step from a quadratic inner bound): the
    iterates increase monotonically to the root.
    """
    D = jnp.maximum(T - H_L, 0.0)
    x_lin = jnp.where(eps > 0, x_L - D / jnp.where(eps > 0, eps, 1.0), -jnp.inf)
    curv = jnp.exp(jnp.minimum(r * x_L, _MAX_EXP))  # h''/2 <= this left of x_L
    x_in = x_L - _quadratic_step(D, eps, curv)

    def newton(x):
        f = h(x, r) - B * x - T
        df = dh(x, r) - B
        return x - jnp.where(df < 0, f / jnp.where(df < 0, df, -1.0), 0.0)

    x = jnp.maximum(jnp.maximum(x_lin, jnp.minimum(newton(x_in), x_in)), jnp.minimum(x_L, -_FAR))

    def body(_, x):
        return jnp.clip(newton(x), x, x_L)

    return lax.fori_loop(0, _ROOT_ITERS, body, x)
