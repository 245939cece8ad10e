"""The first paper's Theorem 3: first-order lower bound of the smoothed probability, its solver
and the directional radius.

Source: Mohapatra et al., "Higher-Order Certification for Randomized Smoothing" (NeurIPS 2020),
Section 3.2, Theorem 3, Propositions 1-2, Corollary 3.1 (``/work/shared/papers/higher-order-
certification.txt``).

Convention (dimensionless, as in the theorem)
---------------------------------------------
``q`` <= g(x) is a lower bound of the smoothed probability of the top class at x; ``m1`` a lower
bound of ``sigma v . grad g(x)``; ``m2`` a lower bound of ``sigma ||grad g(x) - (v . grad g) v||``;
``r = radius / sigma``. Multiply a dimensionless radius by sigma to get input units.

The problem and its solution (derived here, not taken from the paper's text)
-------------------------------------------------------------------------------
Write F(z) = f(x + sigma z) in [0, 1] for the base classifier in sigma units, Z = (X, Y, ...) ~
N(0, I) with X along v and Y along the part of grad g orthogonal to v. Then g(x) = E[F],
sigma v.grad g = E[X F], sigma ||grad g - (v.grad g) v|| = E[Y F] and, by the Gaussian change of
measure, g(x + sigma r v) = E[F(Z + r e1)] = E[F(Z) w(X)] with w(x) = exp(r x - r^2/2). Theorem 3
is the linear program

    p_lower(r) = min_F E[F w(X)]  s.t.  E[F] >= q,  E[X F] >= m1,  E[Y F] >= m2,  0 <= F <= 1.

Generalized Neyman-Pearson / Lagrange duality with multipliers lam = (lam0, lam1, lam2) >= 0: for
every feasible F and every lam >= 0,

    E[F w] >= lam.(q, m1, m2) - E[(lam0 + lam1 X + lam2 Y - w(X))_+]          (weak duality)

with equality for F = 1{lam0 + lam1 X + lam2 Y > w(X)} = 1{Y > -c(X)}, where
c(x) = c0 + c1 x + c2 e^{r x}, c0 = lam0/lam2, c1 = lam1/lam2, c2 = -e^{-r^2/2}/lam2 < 0. Integrating
Y out gives the paper's equations (4), (5b), (5a): E[Phi(c(X))] = q, E[X Phi(c(X))] = m1,
E[phi(c(X))] = m2, and, since phi(x) w(x) = phi(x - r),

    p_lower(r) = integral phi(x - r) Phi(c(x)) dx.

lam1 >= 0 is c1 >= 0: when the three-equation solution would have c1 < 0 the constraint on m1 is
slack and the minimiser is the paper's two-equation fallback c(x) = c0 + c2 e^{r x} (lam1 = 0).
Envelope theorem: dp/dq = lam0, dp/dm1 = lam1, dp/dm2 = lam2, dp/dr = E[F w(X) (X - r)].

Parametrisation used for the solve
-----------------------------------
The c's cancel catastrophically as r -> 0 and grow like 1/m2 as m2 -> 0, so we solve for
theta = (A, B, eps) with

    lam0 = e^{-r^2/2} (1 + k A),  lam1 = r e^{-r^2/2} (1 + r B / 2),  lam2 = k eps,
    k = (r^2 / 2) e^{-r^2/2},  h(x) = 2 (e^{r x} - 1 - r x) / r^2  (-> x^2 as r -> 0),

so that the optimal set is {(x, y): A + B x - h(x) + eps y > 0}, i.e. c(x) = (A + B x - h(x))/eps.
theta stays O(1) as r -> 0 (the limit problem has h = x^2) and is finite at eps = 0 (m2 = 0, the
band / half-line solution of Corollary 3.1 and of Cohen et al.). lam1 >= 0 is B >= -2/r.

Quadrature (why it is accurate in every limit)
----------------------------------------------
The region lies above the convex curve y = b(x) = (h(x) - B x - A)/eps. Where |b'(x)| <= 1 we
integrate over x (integrand phi(x) Phi(-b(x)), smooth on the scale of the Gaussian); where the
curve is steeper (|b'| > 1, including the whole curve as eps -> 0) we integrate over y and do the
x-integral in closed form between the curve's roots x1(y), x2(y) (found by monotone Newton
iterations), whose dependence on y is then gentle. Each piece uses the composite Gauss-Legendre
rule of :mod:`smoothjax.quadrature` (absolute error ~1e-14). The Jacobian needed by Newton is the
corresponding line integral along the curve (no differentiation through quadrature nodes).

Soundness
---------
``theorem3_p_lower`` returns the dual value at the multipliers Newton found, evaluated as
P + lam.(b - I) (P = E[F w], I = (E F, E X F, E Y F), b = (q, m1, m2)), which is a valid lower bound
for any lam >= 0 whatever the accuracy of Newton; only the quadrature error (~1e-14) is not
covered. ``directional_radius`` returns a radius at which that certified value is >= 1/2 (after a
first-order correction of at most 1e-10 relative, whose second-order error is ~1e-20).

Feasible region and outside it
-------------------------------
M = phi(Phi^-1(q)) is the largest sigma ||grad g|| possible at g(x) = q. (m1, m2) is feasible when
0 <= m2 <= M and max(m1, 0)^2 + m2^2 <= M^2 (an m1 <= 0 below the disk only means the m1 bound is
slack: the fallback value applies). Negative m2 is treated as 0 (a norm is >= 0, so 0 is a valid
lower bound). q must lie in (0, 1). Outside jit, infeasible input raises ``ValueError``; inside
jit the result is NaN (and ``converged`` False). m2 == M gives p_lower = q for every r and an
infinite radius; m1 > 0 on the arc max(m1,0)^2 + m2^2 = M^2 gives the half-space value
Phi(Phi^-1(q) + r m1 / M) >= q and an infinite radius. Near that arc the multipliers blow up and
Newton may report ``converged = False``; the value returned is still a valid (possibly loose)
lower bound because it is a dual value.

float32: the solver runs in :func:`smoothjax._config.float_dtype`; in float32 its tolerances are
not reachable and ``converged`` is usually False -- use float64 (the default).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import ndtri

from smoothjax import _validation
from smoothjax._config import as_float, float_dtype
from smoothjax._normal import Phi as _Phi
from smoothjax.quadrature import NODES_PER_PANEL, WINDOW, gaussian_panel_rule

__all__ = [
    "Theorem3Solution",
    "theorem3_coefficients",
    "theorem3_p_lower",
    "directional_radius",
    "max_grad_norm_dimensionless",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_MAX_EXP = 700.0
_NEWTON_ITERS = 40
# Newton steps of the monotone root solves of the y-pieces. Measured (final solutions of 1500
# broad random problems at 4 radii each, q up to 1 - 1e-5, m2 = 0 to near the arc): against 10
# steps, 4 steps change the moments by <= 1.1e-15 and 3 steps by up to 1.3e-13.
_ROOT_ITERS = 4
_RES_TOL = 1e-13  # max |residual| at which Newton stops
_CONVERGED_TOL = 1e-11  # max |residual| reported as converged
_RADIUS_ITERS = 60
# Budget of Newton evaluations (moments) for one radius, all r-steps together; typical radii take
# 5-12 (see _slot_step). A radius out of budget returns the largest certified r seen, flagged not
# converged.
_RADIUS_STEPS = 120
_STEP_SCALE = jnp.array([1.0, 3.0, 3.0])  # |dA|, 3|dB|, 3|d eps|: shifts of the curve over |x| <= 3
_FAR = 40.0  # |x| beyond which Phi(x) is exactly 0 or 1 in float64
# Absolute error allowed per quadrature integral I_i in the dual value (the panel rule errs by a
# few 1e-14, see smoothjax.quadrature; the root solves and rounding add a few ulps).
_QUAD_ERR = 1e-13


# ---------------------------------------------------------------------------------------------
# elementary functions, stable at r -> 0


def _phi(x):
    return jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI


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


def _h(x, r):
    """h(x) = 2 (e^{r x} - 1 - r x) / r^2, = x^2 at r = 0."""
    u = jnp.minimum(r * x, _MAX_EXP)
    return x * x * _e2(u)


def _dh(x, r):
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


def _dh_dr(x, r):
    """d h(x; r) / d r at fixed x  (= x^3 / 3 at r = 0)."""
    u = jnp.minimum(r * x, _MAX_EXP)
    return x * x * x * _e2_prime(u)


def _dh_inverse(s, r):
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


def _right_root(T, B, r, eps, x_R, H_R):
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


def _left_root(T, B, r, eps, x_L, H_L):
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
        f = _h(x, r) - B * x - T
        df = _dh(x, r) - B
        return x - jnp.where(df < 0, f / jnp.where(df < 0, df, -1.0), 0.0)

    x = jnp.maximum(jnp.maximum(x_lin, jnp.minimum(newton(x_in), x_in)), jnp.minimum(x_L, -_FAR))

    def body(_, x):
        return jnp.clip(newton(x), x, x_L)

    return lax.fori_loop(0, _ROOT_ITERS, body, x)


# ---------------------------------------------------------------------------------------------
# the integrals


def _line_integrals(line, u, dh_dr):
    """J[i, j] = sum_k line_k u_ik u_jk and Jr[i] = -sum_k line_k u_ik dh_dr_k for u = (u0, u1, u2).

    Written as six explicit sums (J is symmetric): batched under vmap, XLA on CPU runs these
    several times faster than the equivalent einsum (a batched matrix product of tiny matrices).
    """
    lu = [line * ui for ui in u]
    d = [[None] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(i, 3):
            d[i][j] = d[j][i] = jnp.sum(lu[i] * u[j])
    J = jnp.stack([jnp.stack(row) for row in d])
    Jr = -jnp.stack([jnp.sum(lui * dh_dr) for lui in lu])
    return J, Jr


def _y_piece(wy, y, lo, hi, xb, slope, r):
    """A piece integrated over y (weights wy = quadrature weight x phi(y)) with x from lo(y) to
    hi(y) done in closed form; xb(y) is the moving end on the curve and slope = |g'(xb)| >= eps.

    Returns (I, J, Jr, P, Pr) of the piece, as in :func:`_moments`; the Jacobians are the line
    integrals along the curve with the co-area weight phi(xb) / slope and u = (1, xb, y).
    """
    d0 = _Phi(hi) - _Phi(lo)
    d1 = _phi(lo) - _phi(hi)
    I = jnp.stack([jnp.sum(wy * d0), jnp.sum(wy * d1), jnp.sum(wy * y * d0)])
    line = wy * _phi(xb) / jnp.where(slope > 0, slope, 1.0)
    J, Jr = _line_integrals(line, (jnp.ones_like(xb), xb, y), _dh_dr(xb, r))
    P = jnp.sum(wy * (_Phi(hi - r) - _Phi(lo - r)))
    Pr = jnp.sum(wy * (_phi(lo - r) - _phi(hi - r)))
    return I, J, Jr, P, Pr


def _moments(theta, r, n=NODES_PER_PANEL):
    """Integrals over F = 1{A + B X - h(X) + eps Y > 0} for scalar theta = (A, B, eps) and r.

    Returns (I, P, Pr, J, Jr): I = (E F, E[X F], E[Y F]); P = E[F w(X)]; Pr = E[F w(X) (X - r)];
    J[i, j] = d I_i / d theta_j (symmetric positive semi-definite); Jr[i] = d I_i / d r at fixed
    theta (the same line integrals along the curve, with -dh/dr in place of d(level)/d theta_j).
    """
    A, B, eps = theta[0], theta[1], theta[2]
    pos = eps > 0
    eps_s = jnp.where(pos, eps, 1.0)

    def g(x):
        return A + B * x - _h(x, r)

    # Left of -WINDOW - 2 nothing matters (Phi(-10.5) ~ 4e-26): clamping x_R there keeps it finite
    # at the fallback with eps = 0 (x_R = -inf) and keeps every bound used below valid.
    x_R = jnp.maximum(_dh_inverse(B + eps, r), -WINDOW - 2.0)
    x_L = _dh_inverse(B - eps, r)
    # Likewise the left piece (x < x_L) only matters when x_L > -WINDOW - 2.
    x_L = jnp.where((x_L > -WINDOW - 2.0) & (x_L <= x_R), x_L, -jnp.inf)
    has_left = jnp.isfinite(x_L)
    x_Lf = jnp.where(has_left, x_L, x_R)
    g_R = g(x_R)
    g_L = g(x_Lf)
    H_R = A - g_R  # h(x_R) - B x_R
    H_L = A - g_L

    # --- middle piece: x in [x_L, x_R], |b'| <= 1, integrate over x
    lo = jnp.where(pos, x_L, x_R)
    xm, wm = gaussian_panel_rule(lo, x_R, nodes_per_panel=n)
    cm = g(xm) / eps_s
    Phic = _Phi(cm)
    phic = _phi(cm)
    wphi = wm * _phi(xm)
    I_mid = jnp.stack([jnp.sum(wphi * Phic), jnp.sum(wphi * xm * Phic), jnp.sum(wphi * phic)])
    J_mid, Jr_mid = _line_integrals(wphi * phic / eps_s, (jnp.ones_like(xm), xm, -cm), _dh_dr(xm, r))
    xp, wp = gaussian_panel_rule(lo - r, x_R - r, nodes_per_panel=n)
    Phip = _Phi(g(xp + r) / eps_s)
    wphip = wp * _phi(xp)
    P_mid = jnp.sum(wphip * Phip)
    Pr_mid = jnp.sum(wphip * xp * Phip)

    # --- right piece: x > x_R, y > y_R = -g(x_R)/eps; x from x_R to the right root x2(y)
    y_R = jnp.where(pos, -g_R / eps_s, jnp.where(g_R > 0, -jnp.inf, jnp.inf))
    yr, wr = gaussian_panel_rule(y_R, jnp.inf, nodes_per_panel=n)
    T_r = A + eps * yr
    x2 = _right_root(T_r, B, r, eps, x_R, H_R)
    slope2 = jnp.maximum(_dh(x2, r) - B, eps)  # |g'(x2)| >= eps
    right = _y_piece(wr * _phi(yr), yr, x_R, x2, x2, slope2, r)

    # --- left piece (only when h' - B reaches -eps): x from x1(y) to x_L
    y_L = jnp.where(pos, -g_L / eps_s, jnp.where(g_L > 0, -jnp.inf, jnp.inf))
    y_L = jnp.where(has_left, y_L, jnp.inf)
    yl, wl = gaussian_panel_rule(y_L, jnp.inf, nodes_per_panel=n)
    T_l = A + eps * yl
    x1 = _left_root(T_l, B, r, eps, x_Lf, H_L)
    x1 = jnp.where(jnp.isfinite(x1), x1, -2.0 * WINDOW - 1.0)
    slope1 = jnp.maximum(B - _dh(x1, r), eps)
    left = _y_piece(wl * _phi(yl), yl, x1, x_Lf, x1, slope1, r)

    mid = (I_mid, J_mid, Jr_mid, P_mid, Pr_mid)
    I, J, Jr, P, Pr = (a + b + c for a, b, c in zip(mid, right, left))
    return I, P, Pr, J, Jr


# ---------------------------------------------------------------------------------------------
# Newton on the optimality conditions I(theta) = (q, m1, m2)


def _max_grad(q):
    """M = phi(Phi^-1(q))."""
    return _phi(ndtri(q))


def _lams(theta, r):
    A, B, eps = theta[0], theta[1], theta[2]
    e = jnp.exp(-0.5 * r * r)
    k = 0.5 * r * r * e
    return jnp.stack([e + k * A, r * e * (1.0 + 0.5 * r * B), k * eps])


def _b_min(r):
    """Smallest B allowed (lam1 >= 0): -2/r."""
    return jnp.where(r > 0, -2.0 / jnp.where(r > 0, r, 1.0), -jnp.inf)


def _band_start(q, m1, m2, r):
    """The band (|X| < w, mass q) bent to the curve h, tilted and thickened to first order: theta
    = (A, B, eps), B not yet clipped to the bound -2/r."""
    w = ndtri(0.5 * (1.0 + q))
    pw = _phi(w)
    hp, hm = _h(w, r), _h(-w, r)
    B = (hp - hm) / (2.0 * w)
    A = hp - B * w
    sp = jnp.abs(B - _dh(w, r))
    sm = jnp.abs(B - _dh(-w, r))
    j00 = pw * (1.0 / sp + 1.0 / sm)
    j01 = pw * w * (1.0 / sp - 1.0 / sm)
    j11 = pw * w * w * (1.0 / sp + 1.0 / sm)
    det = j00 * j11 - j01 * j01
    dA = -j01 * m1 / det
    dB = j00 * m1 / det
    eps = m2 / j00
    return jnp.stack([A + dA, B + dB, eps])


_BAND_ITERS = 8


def _band_edges(q, m1):
    """Edges (x1, x2) of the band {x1 < X < x2} with P = q and E[X; band] = m1: the m2 = 0 optimum
    of the three-equation branch (Corollary 3.1's band; it does not depend on r), for -M < m1 < M.

    Safeguarded Newton in x1 on F(x1) = phi(x1) - phi(x2) - m1 with x2 = -Phi^-1(1 - q - Phi(x1)),
    increasing in x1 (F' = phi(x1) (x2 - x1)), from the symmetric band, inside the bracket
    (-40, Phi^-1(1 - q)). _BAND_ITERS steps: the band is a start for Newton on theta, it need not be
    exact (within ~1e-4 of M of the target m1 the far edge recedes to -40 and the steps slow down).
    """
    M = _max_grad(q)
    m1c = jnp.clip(m1, -M * (1 - 1e-9), M * (1 - 1e-9))
    tail = 1.0 - q
    dtype = float_dtype()
    lo = jnp.asarray(-40.0, dtype)
    hi = ndtri(tail)

    def right(x):
        return -ndtri(jnp.maximum(tail - _Phi(x), 1e-300))

    def body(_, c):
        x, lo, hi = c
        x2 = right(x)
        F = _phi(x) - _phi(x2) - m1c
        below = F < 0
        lo = jnp.where(below, x, lo)
        hi = jnp.where(below, hi, x)
        dF = _phi(x) * (x2 - x)
        xn = x - F / jnp.where(dF > 0, dF, 1.0)
        x = jnp.where((dF > 0) & (xn >= lo) & (xn <= hi), xn, 0.5 * (lo + hi))
        return x, lo, hi

    x, _, _ = lax.fori_loop(0, _BAND_ITERS, body, (-ndtri(0.5 * (1.0 + q)), lo, hi))
    return jnp.stack([x, right(x)])


def _band_theta(edges, m2, r):
    """theta of the band with these edges at r (the curve through both edges), thickened to first
    order in m2 (eps = m2 / (d I0 / d eps))."""
    x1, x2 = edges[0], edges[1]
    h1, h2 = _h(x1, r), _h(x2, r)
    B = (h2 - h1) / (x2 - x1)
    A = h1 - B * x1
    j00 = _phi(x1) / jnp.abs(B - _dh(x1, r)) + _phi(x2) / jnp.abs(B - _dh(x2, r))
    return jnp.stack([A, B, m2 / j00])


def _start(q, m1, m2, r):
    """Start: the band of :func:`_band_start`, or, tilted below lam1 = 0, the fallback's eps = 0
    limit, the half-line X < Phi^-1(q). (The exact band of :func:`_band_edges` is a worse start
    here on average -- the first-order tilt and thickening match each other -- but it is the
    restart when the fallback turns out to violate E[X F] >= m1.)"""
    A, B, eps = _band_start(q, m1, m2, r)
    bmin = _b_min(r)
    clamp = B <= bmin
    x0 = ndtri(q)
    A_fb = _h(x0, r) - jnp.where(clamp, bmin, 0.0) * x0
    return jnp.stack([jnp.where(clamp, A_fb, A), jnp.maximum(B, bmin), eps])


def _newton_state(theta, r, b, fix_eps, fallback):
    """Moments at theta, the residual of the branch's equations and its (masked) Newton system.

    fallback: B is held at -2/r (lam1 = 0) and the m1 equation is dropped (the paper's
    two-equation system); fix_eps: eps is held at 0 and the m2 equation dropped (m2 = 0).
    """
    I, P, Pr, J, Jr = _moments(theta, r)
    res = b - I
    free = jnp.stack([True, ~fallback, ~fix_eps])
    merit = jnp.max(jnp.abs(jnp.where(free, res, 0.0)))
    Jf = jnp.where(free[:, None] & free[None, :], J, jnp.eye(3, dtype=J.dtype))
    rf = jnp.where(free, res, 0.0)
    # d(residual)/dr along the branch: on the fallback B = -2/r moves with r (dB/dr = 2/r^2).
    Jr_b = Jr + jnp.where(fallback, 2.0 / (r * r), 0.0) * J[:, 1]
    return dict(theta=theta, res=res, merit=merit, J=Jf, rhs=rf, P=P, Pr=Pr, Jr=jnp.where(free, Jr_b, 0.0))


def _step(st, mu):
    """Levenberg-Marquardt step (J + mu diag J) d = rhs, capped to a trust region of the curve."""
    J = st["J"]
    d = jnp.diagonal(J)
    d = jnp.maximum(d, 1e-30 + 1e-12 * jnp.max(d))
    step = jnp.linalg.solve(J + mu * jnp.diag(d), st["rhs"])
    step = jnp.where(jnp.all(jnp.isfinite(step)), step, jnp.zeros_like(step))
    theta = st["theta"]
    size = jnp.max(jnp.abs(step) * _STEP_SCALE)
    radius = 1.0 + 0.5 * jnp.sum(jnp.abs(theta) * _STEP_SCALE)
    return step * jnp.minimum(1.0, radius / jnp.maximum(size, 1e-300))


def _advance(theta, step, r, fix_eps):
    """theta + alpha step with the largest alpha <= 1 keeping B >= -2/r (landing exactly on the
    bound when it is hit) and eps >= eps/10 (eps stays 0 when it is fixed)."""
    A, B, eps = theta[0], theta[1], theta[2]
    dA, dB, de = step[0], step[1], step[2]
    bmin = _b_min(r)
    room = B - bmin
    hit = (dB < 0) & (B + dB < bmin)
    alpha_b = jnp.where(hit, room / jnp.where(hit, -dB, 1.0), 1.0)
    shrink = (de < 0) & (eps + de < 0.1 * eps)
    alpha_e = jnp.where(shrink, 0.9 * eps / jnp.where(shrink, -de, 1.0), 1.0)
    alpha = jnp.clip(jnp.minimum(alpha_b, alpha_e), 0.0, 1.0)
    B_new = jnp.where(hit & (alpha_b <= alpha_e), bmin, jnp.maximum(B + alpha * dB, bmin))
    eps_new = jnp.where(fix_eps, 0.0, jnp.maximum(eps + alpha * de, 0.0))
    return jnp.stack([A + alpha * dA, B_new, eps_new])


def _project(theta, theta_old, r, fix_eps):
    A = theta[0]
    B = jnp.maximum(theta[1], _b_min(r))
    eps = jnp.where(fix_eps, 0.0, jnp.maximum(theta[2], 0.1 * theta_old[2]))
    return jnp.stack([A, B, eps])


def _clean(theta, fallback, r, fix_eps):
    """theta with B on the fallback's bound -2/r (or above it) and eps = 0 when it is fixed."""
    bmin = _b_min(r)
    B = jnp.where(fallback, bmin, jnp.maximum(theta[1], bmin))
    return jnp.stack([theta[0], B, jnp.where(fix_eps, 0.0, theta[2])])


def _newton_init(theta0, fallback0, r, fix_eps):
    """State of :func:`_newton_body` before its first (fresh: step-free) moments evaluation."""
    dtype = theta0.dtype
    st = dict(
        theta=_clean(theta0, fallback0, r, fix_eps), res=jnp.zeros(3, dtype), merit=jnp.asarray(jnp.inf, dtype),
        J=jnp.eye(3, dtype=dtype), rhs=jnp.zeros(3, dtype), P=jnp.zeros((), dtype), Pr=jnp.zeros((), dtype),
        Jr=jnp.zeros(3, dtype),
    )
    return dict(st=st, mu=jnp.zeros((), dtype), it=jnp.zeros((), jnp.int32), phase_it=jnp.zeros((), jnp.int32),
                fallback=jnp.asarray(fallback0), switched=jnp.zeros((), jnp.int32), fresh=jnp.asarray(True),
                done=jnp.asarray(False))


def _newton_body(c, r, b, tol, edges, max_iter=_NEWTON_ITERS):
    """One iteration (one moments evaluation) of the damped Newton solve of :func:`_solve_theta`."""
    fix_eps = b[2] <= 0
    bmin = _b_min(r)
    st, mu = c["st"], c["mu"]
    step = jnp.where(c["fresh"], 0.0, 1.0) * _step(st, mu)
    trial = _clean(_advance(st["theta"], step, r, fix_eps), c["fallback"], r, fix_eps)
    new = _newton_state(trial, r, b, fix_eps, c["fallback"])
    accept = c["fresh"] | ((new["merit"] < st["merit"]) & jnp.isfinite(new["merit"]))
    st = jax.tree_util.tree_map(lambda a, o: jnp.where(accept, a, o), new, st)
    mu = jnp.where(accept, jnp.where(mu < 1e-10, 0.0, mu / 8.0), jnp.maximum(8.0 * mu, 1e-3))
    phase_it = c["phase_it"] + 1
    # stop at the target, at the round-off floor (a rejected step below the converged
    # tolerance), when damping no longer helps, or after max_iter steps on this branch
    floor = ~accept & (st["merit"] <= _CONVERGED_TOL)
    at_bound = st["theta"][1] <= bmin * (1.0 - 1e-12)
    # On the three-equation branch, an accepted step that lands on B = -2/r (lam1 = 0) after the
    # first steps means the solution wants lam1 < 0: go to the fallback now rather than grind
    # against the bound (the fallback's own KKT check sends it back if that was wrong).
    pinned = ~c["fallback"] & at_bound & accept & (phase_it >= 2)
    finished = (st["merit"] <= tol) | floor | (mu >= 1e12) | (phase_it >= max_iter) | pinned
    stalled = st["merit"] > jnp.maximum(tol, _CONVERGED_TOL)
    # (the fallback may violate E[X F] >= m1 by rounding, e.g. at m1 = -M where it holds with
    # equality; the violation counts in the merit of the certified solve, see _certify)
    kkt_fails = jnp.where(c["fallback"], st["res"][1] > _CONVERGED_TOL, at_bound | stalled)
    switch = finished & kkt_fails & (c["switched"] < 2)
    # Back from the fallback (its m1 constraint is violated), the three-equation branch does
    # not restart at B = -2/r itself: there the left end of the region sits at -inf, J is nearly
    # singular and Newton cannot move it. It restarts from the band with the right mass and
    # first moment (:func:`_band_edges`), thickened for m2.
    to_three = switch & c["fallback"]
    band = _band_theta(edges, b[2], r)
    st = dict(st, theta=jnp.where(to_three, _clean(band, False, r, fix_eps), st["theta"]))
    it = c["it"] + 1
    return dict(
        st=st, mu=jnp.where(switch, 0.0, mu), it=it, phase_it=jnp.where(switch, 0, phase_it),
        fallback=c["fallback"] ^ switch, switched=c["switched"] + switch, fresh=switch,
        done=(finished & ~switch) | (it >= 2 * max_iter),
    )


def _solve_theta(r, q, m1, m2, theta0, fallback0, edges, max_iter=_NEWTON_ITERS, tol=_RES_TOL):
    """Levenberg-Marquardt-damped Newton on one branch's equations, switching branch once.

    Starts on the branch ``fallback0`` (True: the two-equation fallback, B held at -2/r). A trial
    point is accepted when it lowers the max-norm of the branch's residual; otherwise the damping
    mu grows (mu shrinks after each success and is dropped below 1e-10: pure Newton, quadratic
    convergence). When the branch has converged (or stalled), its KKT conditions are checked: the
    fallback needs E[X F] >= m1 (res1 <= 0), the three-equation solution B > -2/r; if they fail the
    other branch is solved from the current point (at most twice; the three-equation branch also
    hands over as soon as an accepted step is pinned at B = -2/r; it restarts from the (q, m1) band
    whose ``edges`` :func:`_band_edges` gives). One moments evaluation per iteration
    (:func:`_newton_body`) keeps the compiled program small. Returns (state, fallback, iterations).
    """
    b = jnp.stack([q, m1, m2])
    c = _newton_init(theta0, fallback0, r, m2 <= 0)
    c = lax.while_loop(lambda c: ~c["done"], lambda c: _newton_body(c, r, b, tol, edges, max_iter), c)
    return c["st"], c["fallback"], c["it"]


# ---------------------------------------------------------------------------------------------
# scalar cores: p_lower at one r, and the directional radius

_BRANCH_THREE = 0
_BRANCH_FALLBACK = 1
_BRANCH_CLOSED_FORM = 2
_FEAS_RTOL = 1e-12


def _classify(q, m1, m2):
    """(m2 clipped at 0, M, feasible, boundary, arc, cohen) for scalar inputs.

    boundary: m2 == M (p stays q); arc: m1 > 0 on the arc max(m1,0)^2 + m2^2 = M^2 (half-space
    along v); cohen: m2 == 0 and m1 <= -M (Cohen's half-space against v, p = Phi(Phi^-1(q) - r):
    the minimiser over E F >= q alone, the half-line X < Phi^-1(q), meets E[X F] = -M >= m1 and
    E[Y F] = 0, so it is optimal; for m1 within 1e-12 M above -M Cohen's value is still a valid,
    if by a hair loose, lower bound). Both are the solver's degenerate limits (a band edge at
    infinity), where Newton converges only linearly.
    """
    m2 = jnp.maximum(m2, 0.0)
    M = _max_grad(jnp.clip(q, 1e-300, 1.0 - 1e-16))
    finite = jnp.isfinite(q) & jnp.isfinite(m1) & jnp.isfinite(m2)
    norm2 = jnp.maximum(m1, 0.0) ** 2 + m2 * m2
    feasible = finite & (q > 0) & (q < 1) & (m2 <= M * (1 + _FEAS_RTOL)) & (norm2 <= M * M * (1 + 2 * _FEAS_RTOL))
    boundary = feasible & (m2 >= M * (1 - 1e-14))
    arc = feasible & ~boundary & (m1 > 0) & (norm2 >= M * M * (1 - 2e-14))
    cohen = feasible & ~boundary & (m2 <= 0) & (m1 <= -M * (1 - 1e-12))
    return m2, M, feasible, boundary, arc, cohen


def _solve_at(r, q, m1, m2, theta0, fallback0, edges, tol=_RES_TOL):
    """Solve at one r (scalar); returns a dict with the certified p, lam, Pr and diagnostics."""
    return _certify(*_solve_theta(r, q, m1, m2, theta0, fallback0, edges, tol=tol), r)


def _certify(st, use_fb, it, r):
    """The certified dual value, multipliers and diagnostics of a Newton state at r."""
    lam = _lams(st["theta"], r)
    lam = lam.at[1].set(jnp.where(use_fb, 0.0, lam[1]))
    # B = -2/r gives lam1 = 0 up to rounding (~1e-17); clipping it changes F negligibly.
    ok = jnp.all(lam >= -1e-12)
    lam = jnp.maximum(lam, 0.0)
    res = jnp.where(use_fb, st["res"].at[1].set(0.0), st["res"])
    # The fallback is the answer only when its solution meets E[X F] >= m1 (lam1 = 0 is then
    # optimal); a violated m1 constraint counts in the residual, so it is never reported converged.
    merit = jnp.where(use_fb, jnp.maximum(st["merit"], st["res"][1]), st["merit"])
    # The dual value, a lower bound for any lam >= 0 given exact integrals. The integrals I carry
    # a quadrature error of up to _QUAD_ERR each, which the dual value multiplies by lam: near the
    # arc lam reaches 1e10, so that error is taken off explicitly (P's own error is P_MARGIN).
    p = st["P"] + jnp.dot(lam, res) - _QUAD_ERR * jnp.sum(lam)
    ok = ok & jnp.isfinite(p)
    return dict(
        p=jnp.where(ok, p, jnp.nan), lam=lam, Pr=st["Pr"], theta=st["theta"], use_fb=use_fb,
        merit=merit, num_steps=it, J=st["J"], rhs=st["rhs"], Jr=st["Jr"],
    )


def _predict_theta(sol, dr):
    """First-order predictor of the solution after r moves by dr: J d theta = res - Jr dr.

    J, res and Jr are the branch's masked Newton system at the current solution (held coordinates
    get a zero step: B follows -2/r on the fallback through ``clean`` in :func:`_solve_theta`).
    eps keeps at least a tenth of its value; a non-finite step falls back to the warm start.
    """
    theta = sol["theta"]
    step = jnp.linalg.solve(sol["J"], sol["rhs"] - sol["Jr"] * dr)
    step = jnp.where(jnp.all(jnp.isfinite(step)), step, 0.0)
    new = theta + step
    return new.at[2].set(jnp.maximum(new[2], 0.1 * theta[2]))


def _p_lower_core(r, q, m1, m2):
    """Scalar Theorem 3 solve with the closed-form cases; returns a dict of results."""
    dtype = float_dtype()
    m2c, M, feasible, boundary, arc, cohen = _classify(q, m1, m2)
    r_pos = r > 0
    half = arc | cohen  # half-spaces: p = Phi(Phi^-1(q) + r m1e / M)
    special = ~feasible | boundary | half | ~r_pos
    # Solve at a harmless point where the closed form applies (keeps the iteration finite).
    qs = jnp.where(special, 0.9, q)
    Ms = _max_grad(qs)
    m1s = jnp.where(special, -0.5 * Ms, m1)
    m2s = jnp.where(special, 0.5 * Ms, m2c)
    rs = jnp.where(special, 1.0, r)
    edges = _band_edges(qs, m1s)
    th0 = _start(qs, m1s, m2s, rs)
    sol = _solve_at(rs, qs, m1s, m2s, th0, th0[1] <= _b_min(rs), edges)

    z = ndtri(q)
    slope0 = jnp.maximum(m1, -jnp.sqrt(jnp.maximum(M * M - m2c * m2c, 0.0)))  # dp/dr at r = 0+
    m1e = jnp.where(cohen, -M, m1)
    p_half = _Phi(z + r * m1e / M)
    p_special = jnp.where(half & r_pos, p_half, q)
    p = jnp.where(special, p_special, sol["p"])
    p = jnp.where(feasible & (r >= 0) & jnp.isfinite(r), p, jnp.nan)

    # dp/dq of the half-space (exact for Cohen's; on the arc, where p also moves with m1 through
    # the arc, only the q-part at fixed m1 / M)
    lam_half = jnp.stack([_phi(z + r * m1e / M) / M, jnp.zeros((), dtype), jnp.zeros((), dtype)])
    lam_special = jnp.where(half, lam_half, jnp.array([1.0, 0.0, 0.0], dtype))
    lam = jnp.where(special, lam_special, sol["lam"])
    Pr_special = jnp.where(half, _phi(z + r * m1e / M) * m1e / M, jnp.where(boundary, 0.0, slope0))
    Pr = jnp.where(special, Pr_special, sol["Pr"])
    branch = jnp.where(special, _BRANCH_CLOSED_FORM, jnp.where(sol["use_fb"], _BRANCH_FALLBACK, _BRANCH_THREE))
    converged = jnp.where(special, feasible, (sol["merit"] <= _CONVERGED_TOL) & jnp.isfinite(sol["p"]))
    return dict(
        p=p, lam=lam, Pr=Pr, theta=sol["theta"], branch=branch, converged=converged,
        num_steps=jnp.where(special, 0, sol["num_steps"]), residual=jnp.where(special, 0.0, sol["merit"]),
    )


# The directional radius is a flat state machine: one "slot" holds one radius problem, and every
# step of a slot is one moments evaluation -- an inner Newton iteration on theta at the current r,
# followed, when that inner solve finishes, by a Newton update of r and the start of the next
# inner solve. Batched, a fixed number of slots step together and a slot whose problem is done
# takes the next problem from a queue, so that the batch pays about the mean number of moment
# evaluations per radius (~12 on the benchmark distribution) instead of, for a vmapped nested
# loop, the sum over r-steps of the slowest lane's inner iterations (~32).

#: Largest number of slots stepped together (a batch of N radii uses about N / 8 of them, at least
#: 32). Measured on 2 CPU cores: at N = 10^4, 512 slots beat 256 and 1024 by 5-10 % (fewer add
#: per-step overhead, more leave slots idle while the last problems finish); at N = 10^3, 128 slots
#: take 0.072 ms per radius against 0.098 ms with one slot per radius.
_SLOTS = 512
# Inexact inner solves (residual tolerances in units of M = phi(Phi^-1(q)), the scale of m1, m2
# and of 1 - q near q = 1): the first solve at Cohen's radius stops at 0.1 M, later ones at
# min((dr Pr)^2, 0.01 M) until r moves by 1e-5 or less, then at the full tolerance. The dual
# value's error is second order in the residual, so Newton on r stays fast while theta and r
# converge together (7.5 moment evaluations per radius on the benchmark distribution, against
# 12 with solves to 1e-6 at every r).
_FIRST_TOL = 0.1
_TOL_CAP = 0.01
# r has converged when a full-tolerance solve's Newton step on r is below this, relative: the radius
# returned is then within ~1e-11 relative of the crossing (on the safe side), far inside the 1e-7
# asked for, and the last confirming r-step (a moments evaluation) is saved.
_R_STOP = 1e-11


def _radius_setup(q, m1, m2):
    """Closed-form cases and the start of the solve for one (scalar) radius problem."""
    m2c, M, feasible, boundary, arc, cohen = _classify(q, m1, m2)
    zero = feasible & (q <= 0.5)
    infinite = feasible & ~zero & (boundary | arc)
    cohen = cohen & ~zero
    special = ~feasible | zero | infinite | cohen
    # special problems are never solved; harmless values keep their (unused) slot state finite
    qs = jnp.where(special, 0.9, q)
    Ms = _max_grad(qs)
    m1s = jnp.where(special, -0.5 * Ms, m1)
    m2s = jnp.where(special, 0.5 * Ms, m2c)
    # Cohen's radius Phi^-1(q), exactly: p = Phi(Phi^-1(q) - r), dR/dq = 1 / M; the multipliers
    # and dp/dr at R give that derivative through the implicit-function rule of the radius's jvp.
    z = ndtri(q)
    R = jnp.where(zero, 0.0, jnp.where(cohen, z, jnp.inf))
    lam = jnp.where(cohen, _INV_SQRT_2PI / M, 0.0) * jnp.array([1.0, 0.0, 0.0], float_dtype())
    return dict(qs=qs, m1s=m1s, m2s=m2s, special=special, feasible=feasible, cohen=cohen,
                R_special=jnp.where(feasible, R, jnp.nan), lam_special=lam,
                Pr_special=jnp.where(cohen, -_INV_SQRT_2PI, 0.0))


def _probit_newton_step(p, dp):
    """Newton step in r on G(r) = Phi^-1(p(r)) = 0 given p and dp/dr < 0: -G / G', G' = dp / phi(G)."""
    z = ndtri(jnp.clip(p, 1e-300, 1.0 - 1e-16))
    return -z * _phi(z) / jnp.where(dp < 0, dp, -1.0)


def _band_radius(q, m1, edges, iters=8):
    """Radius of the m2 = 0 problem and a certified lower end for the directional radius.

    The band [x1, x2] (:func:`_band_edges`) is the m2 = 0 solution; its value at r is
    Phi(x2 - r) - Phi(x1 - r). Newton on Phi^-1 of it (iters steps from Cohen's radius) gives
    r_band, where the solve for r starts. Adding the m2 constraint can only raise p_lower, and weak
    duality makes this exact whatever the accuracy of the edges: with (lam0, lam1) the chord of
    w(x) = exp(r x - r^2/2) through x1, x2 (both > 0, since 0 lies inside a band of mass q > 1/2),

        p_lower(r; q, m1, m2) >= lam0 (q - q') + lam1 (m1 - m1') + Phi(x2 - r) - Phi(x1 - r)

    with q' = Phi(x2) - Phi(x1), m1' = phi(x1) - phi(x2) the band's own mass and moment. Returns
    (r_band, lo): lo = r_band (1 - 1e-9) when that bound exceeds 1/2 + 1e-13 there (a radius
    certified without a moments evaluation), else Cohen's radius.
    """
    x1, x2 = edges[0], edges[1]
    cohen = jnp.maximum(ndtri(q), 0.0)

    def body(_, r):
        p = _Phi(x2 - r) - _Phi(x1 - r)
        dp = _phi(x1 - r) - _phi(x2 - r)
        step = _probit_newton_step(p, dp)
        return jnp.where(dp < 0, jnp.clip(r + step, 0.5 * r, 2.0 * r + 0.25), 2.0 * r + 0.25)

    r = jnp.maximum(lax.fori_loop(0, iters, body, cohen), cohen)
    r_lo = r * (1.0 - 1e-9)
    w1 = jnp.exp(r_lo * x1 - 0.5 * r_lo * r_lo)
    w2 = jnp.exp(r_lo * x2 - 0.5 * r_lo * r_lo)
    lam1 = (w2 - w1) / (x2 - x1)
    lam0 = w1 - lam1 * x1
    bound = (lam0 * (q - (_Phi(x2) - _Phi(x1))) + lam1 * (m1 - (_phi(x1) - _phi(x2)))
             + _Phi(x2 - r_lo) - _Phi(x1 - r_lo))
    ok = (bound >= 0.5 + 1e-13) & (lam0 >= 0) & (lam1 >= 0) & jnp.isfinite(bound)
    lo = jnp.where(ok, jnp.maximum(r_lo, cohen), cohen)
    # With m2 = 0 the band IS the solution: when its edges meet (q, m1) and r its crossing to
    # rounding, lo is the radius (1e-9 relative below the crossing), with multipliers (lam0, lam1)
    # and dp/dr = phi(x1 - r) - phi(x2 - r) for the implicit-function derivative.
    p_r = _Phi(x2 - r) - _Phi(x1 - r)
    exact = (ok & (jnp.abs(q - (_Phi(x2) - _Phi(x1))) <= 1e-14) & (jnp.abs(m1 - (_phi(x1) - _phi(x2))) <= 1e-14)
             & (jnp.abs(p_r - 0.5) <= 1e-14))
    pr = _phi(x1 - lo) - _phi(x2 - lo)
    return dict(r=r, lo=lo, exact=exact, lam=jnp.stack([lam0, lam1, jnp.zeros_like(lam0)]), Pr=pr)


def _slot_init(qs, m1s, m2s, edges, r_start, lo):
    """Slot state at the start of a radius problem: r at the m2 = 0 band's radius r_start, the
    bracket's lower end at lo (both from :func:`_band_radius`), a fresh inner solve."""
    dtype = float_dtype()
    # The solve starts at the radius of the m2 = 0 band, r_start, with lo (certified without a
    # solve, see _band_radius) as the lower end of the bracket.
    r0 = jnp.maximum(r_start, 1e-6)
    th0 = _start(qs, m1s, m2s, r0)
    zero_ = jnp.zeros((), dtype)
    sol0 = dict(p=zero_, lam=jnp.zeros(3, dtype), Pr=zero_, theta=th0, use_fb=th0[1] <= _b_min(r0),
                merit=jnp.asarray(jnp.inf, dtype), num_steps=jnp.zeros((), jnp.int32), J=jnp.eye(3, dtype=dtype),
                rhs=jnp.zeros(3, dtype), Jr=jnp.zeros(3, dtype))
    b = jnp.stack([qs, m1s, m2s])
    return dict(
        b=b, edges=edges, r=r0, sol=sol0, lo=lo, hi=jnp.asarray(jnp.inf, dtype), rdone=jnp.asarray(False),
        rit=jnp.zeros((), jnp.int32), steps=jnp.zeros((), jnp.int32), tol=_FIRST_TOL * _max_grad(qs),
        inner=_newton_init(th0, sol0["use_fb"], r0, m2s <= 0),
    )


def _r_update(r, sol, lo, hi):
    """Newton on G(r) = Phi^-1(p(r)) = 0 inside the bracket [lo, hi]; returns (r_next, lo, hi, done)."""
    p, Pr = sol["p"], sol["Pr"]
    above = p >= 0.5
    lo = jnp.where(above, r, lo)  # certified: the dual value is a lower bound at any theta
    # p < 1/2 proves nothing when the solve was loose (the dual value lies below p(r) by
    # O(residual^2)): only a converged solve may close the bracket from above.
    hi = jnp.where(above | (sol["merit"] > _CONVERGED_TOL), hi, r)
    # G is exactly linear for Cohen's half-space and close to linear in general; G' = Pr / phi(G).
    newton = r + _probit_newton_step(p, Pr)
    # (closed bracket: when Newton no longer moves r, r itself is the answer). A step below the
    # certified lo (from a loose solve, whose p is low) stops at lo.
    ok = (Pr < 0) & (newton <= hi) & jnp.isfinite(newton)
    newton = jnp.maximum(newton, lo)
    # Without an upper end yet, r at most doubles (plus 1/4) per step: near the top of p(r)
    # (Pr ~ 0, possible when m1 > 0) a Newton step would shoot far into p ~ 0.
    grow = 2.0 * r + 0.25
    fallback_r = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), grow)
    r_new = jnp.where(ok, jnp.where(jnp.isfinite(hi), newton, jnp.minimum(newton, grow)), fallback_r)
    done = (jnp.abs(r_new - r) <= _R_STOP * r) | (jnp.isfinite(hi) & (hi - lo <= 4e-16 * hi)) | ~jnp.isfinite(p)
    return r_new, lo, hi, done


def _slot_step(s):
    """One moments evaluation of a slot; returns (state, finished).

    When the inner solve at r finishes, r takes a safeguarded Newton step on Phi^-1(p_lower(r))
    (:func:`_r_update`) and the next inner solve starts from the first-order prediction
    theta + J^-1 (res - dI/dr dr) of the solution just found (a joint Newton step on theta and
    r), solved only loosely while r still moves a lot (residual <= min((dr Pr)^2, 0.01 M); the
    first, at Cohen's radius, to 0.1 M) -- the dual value's error is second order in the residual,
    so Newton on r stays fast; the last solves, after steps of 1e-5 or less, run to the full
    tolerance. The problem is finished when r has converged after a full-tolerance solve,
    or after _RADIUS_ITERS r-steps or _RADIUS_STEPS evaluations.
    """
    r = s["r"]
    inner = _newton_body(s["inner"], r, s["b"], s["tol"], s["edges"])
    sol = _certify(inner["st"], inner["fallback"], inner["it"], r)
    r_next, lo, hi, rdone = _r_update(r, sol, s["lo"], s["hi"])
    # never stop on a loose solve (one asked for a looser tolerance but met the full one counts)
    rdone = rdone & ((s["tol"] <= _RES_TOL) | (sol["merit"] <= _RES_TOL))
    rit = s["rit"] + 1
    steps = s["steps"] + inner["it"]
    solved = inner["done"]
    finished = solved & (rdone | (rit >= _RADIUS_ITERS) | (steps >= _RADIUS_STEPS))
    # the next inner solve, at r_next
    dr = r_next - r
    theta0 = _predict_theta(sol, dr)
    tol = jnp.clip((dr * sol["Pr"]) ** 2, _RES_TOL, jnp.maximum(_TOL_CAP * _max_grad(s["b"][0]), _RES_TOL))
    # A predicted B below -2/r means lam1 would turn negative: start on the fallback branch.
    fb0 = sol["use_fb"] | (theta0[1] <= _b_min(r_next))
    restart = solved & ~finished
    fresh = _newton_init(theta0, fb0, r_next, s["b"][2] <= 0)
    pick = lambda new, old: jax.tree_util.tree_map(lambda a, o: jnp.where(solved, a, o), new, old)  # noqa: E731
    out = dict(
        b=s["b"],
        edges=s["edges"],
        r=jnp.where(restart, r_next, r),
        inner=jax.tree_util.tree_map(lambda a, o: jnp.where(restart, a, o), fresh, inner),
        tol=jnp.where(restart, tol, s["tol"]),
        **pick(dict(sol=sol, lo=lo, hi=hi, rdone=rdone, rit=rit, steps=steps),
               {k: s[k] for k in ("sol", "lo", "hi", "rdone", "rit", "steps")}),
    )
    return out, finished


def _slot_result(s):
    """Radius of a finished slot, on the safe side.

    The certified value at r is p; when it fell (by rounding) below 1/2, step back to first order
    (a correction of at most 10 _R_STOP relative; its second-order error, ~(10 _R_STOP)^2, is
    dwarfed by R_MARGIN). When more would be
    needed (no convergence: near the arc, where the multipliers blow up), return the largest r at
    which a dual value >= 1/2 was seen: certified, if loose, and flagged not converged.
    """
    sol, r = s["sol"], s["r"]
    p, Pr = sol["p"], sol["Pr"]
    short = jnp.where(p >= 0.5, 0.0, (0.5 - p) / jnp.maximum(-Pr, 1e-300) * 1.001)
    small = (Pr < 0) & (short <= 10.0 * _R_STOP * r)
    converged = (sol["merit"] <= _CONVERGED_TOL) & s["rdone"] & small
    R = jnp.where(converged, r - short, s["lo"])
    return dict(R=R, lam=sol["lam"], Pr=Pr, converged=converged, num_steps=s["rit"], evaluations=s["steps"])


def _radius_batch(q, m1, m2, slots=_SLOTS):
    """Directional radii for 1-D arrays (q, m1, m2): the slot machine of :func:`_slot_step`.

    Returns a dict of [N] arrays: R, lam [N, 3], Pr, special, converged, num_steps (r-steps) and
    evaluations (moment evaluations, all r-steps together; 0 for closed forms).
    Each problem runs the same sequence of operations whichever slot it lands in, so the result
    does not depend on the batch or the number of slots (up to rounding: each batch width
    compiles to its own vector code, measured <= 1 ulp).
    """
    n = q.shape[0]
    dtype = float_dtype()
    pre = jax.vmap(_radius_setup)(q, m1, m2)
    # the band edges take a short root solve: once per radius, not once per slot step
    edges = jax.vmap(_band_edges)(pre["qs"], pre["m1s"])
    band = jax.vmap(_band_radius)(pre["qs"], pre["m1s"], edges)
    r_start, lo = band["r"], band["lo"]
    # m2 = 0: the band's radius is the answer when the band solve converged (closed form)
    band_form = ~pre["special"] & (pre["m2s"] <= 0) & band["exact"]
    special = pre["special"] | band_form
    work = ~special
    n_work = jnp.sum(work)
    order = jnp.argsort(~work, stable=True)  # the problems to solve first, in input order
    # about n / 8 slots (at least 32, at most `slots`): fewer slots than radii let the fast ones
    # hand their slot over; too few add per-step overhead (measured at n = 10^2, 10^3, 10^4)
    width = max(1, min(n, slots, max(32, n // 8)))

    def load(k):
        j = order[jnp.clip(k, 0, n - 1)]
        return jax.vmap(_slot_init)(pre["qs"][j], pre["m1s"][j], pre["m2s"][j], edges[j], r_start[j], lo[j]), j

    state, idx = load(jnp.arange(width))
    active = jnp.arange(width) < n_work
    out = dict(R=jnp.zeros(n, dtype), lam=jnp.zeros((n, 3), dtype), Pr=jnp.zeros(n, dtype),
               converged=jnp.zeros(n, bool), num_steps=jnp.zeros(n, jnp.int32),
               evaluations=jnp.zeros(n, jnp.int32))

    def body(c):
        state, idx, active, nxt, out = c
        state, finished = jax.vmap(_slot_step)(state)
        finished = finished & active
        res = jax.vmap(_slot_result)(state)
        target = jnp.where(finished, idx, n)  # out of range: dropped
        out = jax.tree_util.tree_map(lambda o, v: o.at[target].set(v, mode="drop"), out, res)
        k = nxt + jnp.cumsum(finished) - 1  # the k-th finished slot takes queue entry nxt + k
        refill = finished & (k < n_work)
        new, new_idx = load(k)
        state = jax.tree_util.tree_map(
            lambda a, o: jnp.where(refill.reshape(refill.shape + (1,) * (a.ndim - 1)), a, o), new, state)
        idx = jnp.where(refill, new_idx, idx)
        return state, idx, (active & ~finished) | refill, nxt + jnp.sum(finished), out

    c = lax.while_loop(lambda c: jnp.any(c[2]), body, (state, idx, active, jnp.asarray(width), out))
    out = c[4]
    closed = pre["special"]
    out["R"] = jnp.where(closed, pre["R_special"], jnp.where(band_form, lo, out["R"]))
    out["converged"] = jnp.where(closed, pre["feasible"], out["converged"] | band_form)
    out["lam"] = jnp.where(closed[:, None], pre["lam_special"], jnp.where(band_form[:, None], band["lam"], out["lam"]))
    out["Pr"] = jnp.where(closed, pre["Pr_special"], jnp.where(band_form, band["Pr"], out["Pr"]))
    # special: no margin to take off (closed forms; the band's radius already sits 1e-9 below)
    out["special"] = special
    # radii whose derivative is zero: 0, +inf, NaN and unconverged (certified-fallback) ones
    out["fixed"] = (closed & ~pre["cohen"]) | ~out["converged"]
    return out


# ---------------------------------------------------------------------------------------------
# public API

#: Absolute allowance subtracted from every solved p_lower for the quadrature error (measured
#: worst case 3e-12 against an independent adaptive-quadrature reference), and the matching
#: relative allowance taken off every solved radius.
P_MARGIN = 1e-11
R_MARGIN = 1e-10


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Theorem3Solution:
    """Solution of the Theorem 3 system at (r, q, m1, m2); every field has the broadcast shape.

    Fields:
      c0, c1, c2: the paper's coefficients of c(x) = c0 + c1 x + c2 e^{r x} (c1 = 0 on the fallback
        branch; +-inf when lam2 = 0, i.e. m2 = 0, where Phi(c) is the indicator of c(x)'s sign
        pattern: the band / half-line of Corollary 3.1).
      lam: Lagrange multipliers [..., 3] = (dp/dq, dp/dm1, dp/dm2).
      theta: the solver's well-conditioned unknowns [..., 3] = (A, B, eps), see the module docstring.
      p_lower: the certified lower bound of g(x + sigma r v) (a dual value, minus P_MARGIN).
      dp_dr: d p_lower / d r.
      branch: 0 three-equation system, 1 two-equation fallback (c1 = 0), 2 closed form
        (r = 0, m2 = M, the arc, or infeasible input).
      converged: residual <= 1e-11 (always True for closed forms on feasible input).
      num_steps: Newton iterations (both branches together).
      residual: max |residual| of the branch's equations.
    """

    c0: jax.Array
    c1: jax.Array
    c2: jax.Array
    lam: jax.Array
    theta: jax.Array
    p_lower: jax.Array
    dp_dr: jax.Array
    branch: jax.Array
    converged: jax.Array
    num_steps: jax.Array
    residual: jax.Array


def _check_inputs(q, m1, m2, r=None):
    """Host-side checks (skipped for tracers): finite, q in (0, 1), r >= 0, (m1, m2) feasible."""
    _validation.check_finite("q", q)
    _validation.check_finite("m1", m1)
    _validation.check_finite("m2", m2)
    if r is not None:
        _validation.check_finite("r", r)
        _validation.check_nonnegative("r", r)
    if not _validation.is_concrete((q, m1, m2)):
        return
    qa = np.asarray(q, dtype=np.float64)
    if np.any((qa <= 0) | (qa >= 1)):
        raise ValueError(f"q must lie strictly between 0 and 1 (a lower bound of g(x)), got {qa!r}.")
    qa, m1a, m2a = np.broadcast_arrays(qa, np.asarray(m1, np.float64), np.asarray(m2, np.float64))
    M = np.exp(-0.5 * np.asarray(ndtri(qa)) ** 2) / math.sqrt(2 * math.pi)
    m2c = np.maximum(m2a, 0.0)
    bad_m2 = m2c > M * (1 + _FEAS_RTOL)
    bad_disk = np.maximum(m1a, 0.0) ** 2 + m2c**2 > M * M * (1 + 2 * _FEAS_RTOL)
    if np.any(bad_m2 | bad_disk):
        i = np.flatnonzero((bad_m2 | bad_disk).ravel())[0]
        raise ValueError(
            "(m1, m2) is infeasible for q: need m2 <= M and max(m1, 0)^2 + m2^2 <= M^2 with "
            f"M = phi(Phi^-1(q)) (the largest sigma*||grad g|| at g = q); got q={qa.ravel()[i]!r}, "
            f"m1={m1a.ravel()[i]!r}, m2={m2a.ravel()[i]!r}, M={M.ravel()[i]!r}. For confidence bounds "
            "this means the bounds contradict each other."
        )


def _broadcast_map(fn, *args):
    """Apply a scalar core over the broadcast of args (vmapped over the flattened batch)."""
    args = [as_float(a) for a in args]
    shape = jnp.broadcast_shapes(*[a.shape for a in args])
    flat = [jnp.broadcast_to(a, shape).reshape(-1) for a in args]
    out = jax.vmap(fn)(*flat)
    return jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), out)


def _coefficients(r, q, m1, m2):
    out = _p_lower_core(r, q, m1, m2)
    lam = out["lam"]
    e = jnp.exp(-0.5 * r * r)
    with_lam2 = lam[2] > 0
    l2 = jnp.where(with_lam2, lam[2], 1.0)
    c0 = jnp.where(with_lam2, lam[0] / l2, jnp.inf)
    c1 = jnp.where(with_lam2, lam[1] / l2, jnp.where(lam[1] > 0, jnp.inf, 0.0))
    c2 = jnp.where(with_lam2, -e / l2, -jnp.inf)
    special = out["branch"] == _BRANCH_CLOSED_FORM
    nan = jnp.asarray(jnp.nan, c0.dtype)
    c0, c1, c2 = (jnp.where(special, nan, c) for c in (c0, c1, c2))
    p = jnp.where(special, out["p"], out["p"] - P_MARGIN)
    return Theorem3Solution(
        c0=c0, c1=c1, c2=c2, lam=lam, theta=out["theta"], p_lower=p, dp_dr=out["Pr"],
        branch=out["branch"], converged=out["converged"], num_steps=out["num_steps"],
        residual=out["residual"],
    )


def theorem3_coefficients(r, q, m1, m2) -> Theorem3Solution:
    """Solve Theorem 3 at radius r (dimensionless, >= 0) for lower bounds q, m1, m2.

    Arguments broadcast against each other (any shapes); see the module docstring for the
    convention, the feasible region and the closed-form cases. Outside jit, infeasible or
    non-finite input raises ValueError; inside jit, p_lower is NaN and ``converged`` False.
    Not differentiable (use :func:`theorem3_p_lower` for gradients).
    """
    _check_inputs(q, m1, m2, r)
    return _coefficients_jit(*(as_float(a) for a in (r, q, m1, m2)))


# Module-level jitted entry points: repeated calls with the same shapes reuse one compilation
# (eager calls would otherwise retrace the solver's while loops every time).
_coefficients_jit = jax.jit(lambda r, q, m1, m2: _broadcast_map(_coefficients, r, q, m1, m2))


@jax.custom_jvp
def _p_lower(r, q, m1, m2):
    return _broadcast_map(_coefficients, r, q, m1, m2).p_lower


@_p_lower.defjvp
def _p_lower_jvp(primals, tangents):
    r, q, m1, m2 = primals
    sol = _broadcast_map(_coefficients, r, q, m1, m2)
    dr, dq, dm1, dm2 = (jnp.zeros_like(sol.p_lower) if isinstance(t, jax.custom_derivatives.SymbolicZero) else t for t in tangents)
    lam = sol.lam
    # Envelope theorem: dp/dq = lam0, dp/dm1 = lam1, dp/dm2 = lam2 (m2 < 0 is clipped to 0), dp/dr = E[F w (X - r)].
    dm2_eff = jnp.where(as_float(m2) >= 0, dm2, 0.0)
    tangent = lam[..., 0] * dq + lam[..., 1] * dm1 + lam[..., 2] * dm2_eff + sol.dp_dr * dr
    return sol.p_lower, tangent


def theorem3_p_lower(r, q, m1, m2):
    """Certified lower bound of g(x + sigma r v) from Theorem 3 (first paper), dimensionless r.

    p_lower(r) = integral phi(x - r) Phi(c(x)) dx = min E[F(Z) exp(r Z1 - r^2/2)] over base
    classifiers F with E F >= q, E[Z1 F] >= m1, E[Z2 F] >= m2 (see the module docstring for the
    derivation). The value returned is the Lagrange dual value at the multipliers found (a valid
    lower bound whatever Newton's accuracy) minus P_MARGIN = 1e-11 for the quadrature error.
    Accuracy (tests/test_theorem3.py, against tests/theorem3_reference.py): within 1e-8 absolute
    and in practice ~1e-11, never above the reference by more than 1e-12.

    Differentiable in r, q, m1, m2 (first order): d/dq = lam0, d/dm1 = lam1, d/dm2 = lam2 (envelope
    theorem), d/dr = E[F w(X) (X - r)]; no differentiation through the Newton iterations.
    Broadcasts; outside jit infeasible input raises ValueError, inside jit it gives NaN.
    """
    _check_inputs(q, m1, m2, r)
    return _p_lower_jit(*(as_float(a) for a in (r, q, m1, m2)))


_p_lower_jit = jax.jit(_p_lower)


def _radius(q, m1, m2):
    """Radii (with R_MARGIN taken off solved ones) and the solver's outputs, broadcast shapes."""
    args = [as_float(a) for a in (q, m1, m2)]
    shape = jnp.broadcast_shapes(*[a.shape for a in args])
    out = _radius_batch(*[jnp.broadcast_to(a, shape).reshape(-1) for a in args])
    out = jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), out)
    R = jnp.where(out["special"], out["R"], out["R"] * (1.0 - R_MARGIN))
    return R, out


@jax.custom_jvp
def _directional_radius(q, m1, m2):
    return _radius(q, m1, m2)[0]


@_directional_radius.defjvp
def _directional_radius_jvp(primals, tangents):
    q, m1, m2 = primals
    R, out = _radius(q, m1, m2)
    dq, dm1, dm2 = (jnp.zeros_like(R) if isinstance(t, jax.custom_derivatives.SymbolicZero) else t for t in tangents)
    lam, Pr = out["lam"], out["Pr"]
    dm2_eff = jnp.where(as_float(m2) >= 0, dm2, 0.0)
    dp = lam[..., 0] * dq + lam[..., 1] * dm1 + lam[..., 2] * dm2_eff
    # Implicit function theorem on p_lower(R; q, m1, m2) = 1/2.
    # An unconverged lane returns a certified iterate, not the crossing: no implicit derivative
    # exists there, and the radius is held fixed (zero tangent) rather than given a wrong slope.
    fixed = out["fixed"]
    tangent = jnp.where(fixed, 0.0, -dp / jnp.where(Pr < 0, Pr, -1.0))
    return R, tangent


def directional_radius(q, m1, m2):
    """Dimensionless directional robustness R_v of the first paper (Theorem 3 + Proposition 1).

    The r >= 0 where theorem3_p_lower(r, q, m1, m2) crosses 1/2 (multiply by sigma for input
    units). 0 when q <= 1/2; +inf when m2 = M (p stays q) or (m1 > 0 on the arc, a half-space
    that never drops below q). Solved by safeguarded Newton on Phi^-1(p_lower(r)) from the radius
    of the m2 = 0 band, with a bracket and predicted, warm-started inner solves (see
    ``_slot_step``), and returned on the safe side: the certified p_lower at the returned radius is
    >= 1/2 (up to a first-order correction of at most 1e-10 relative; the dual value already
    carries a quadrature allowance scaled by the multipliers) and R_MARGIN = 1e-10 relative is
    taken off. Very near the arc (max(m1,0)^2 + m2^2 within ~1e-4 of M^2, where the multipliers
    exceed 1e6) or for q within ~1e-5 of 1 the solve may not converge within its budget of
    moment evaluations (_RADIUS_STEPS; radii near the arc with m1 > 0 are large and take the
    most, e.g. |grad| = 0.99 M at q = 0.6 takes up to 17); the radius returned there is the
    largest certified one found (never below Cohen's Phi^-1(q), and usually not below the m2 = 0
    band's radius, certified by weak duality), sound but possibly loose. l2 case (Corollary 3.1):
    m1 = -sigma ||grad g||, m2 = 0 gives the SoS radius / sigma (the band's radius, returned
    without a moments evaluation, 1e-9 relative below the crossing, when the band's edges and
    crossing converge: everywhere but within ~1e-6 M of m1 = +-M); m1 = -M (or below), m2 = 0 gives
    Cohen's Phi^-1(q), in closed form.

    Batched, the radii are solved by a fixed number of slots that take the next problem as soon as
    theirs is done (see ``_radius_batch``), so a batch costs about the mean number of moment
    evaluations per radius (~7 on the benchmark's inputs), not the slowest radius's.

    Differentiable (first order) by the implicit function theorem:
    dR/dtheta = -(dp/dtheta) / (dp/dr) with dp/d(q, m1, m2) = lam (zero where the radius is 0,
    infinite, or an unconverged solve's certified fallback; 1 / M in q for Cohen's closed form).
    Broadcasts; outside jit infeasible input raises ValueError, inside jit it gives NaN.
    """
    _check_inputs(q, m1, m2)
    return _directional_radius_jit(*(as_float(a) for a in (q, m1, m2)))


_directional_radius_jit = jax.jit(_directional_radius)


def max_grad_norm_dimensionless(q):
    """M = phi(Phi^-1(q)): the largest sigma ||grad g(x)|| of any smoothed classifier with g(x) = q."""
    return _max_grad(as_float(q))
