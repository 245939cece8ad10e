"""The Theorem 3 integrals over the region above the curve, and their Jacobians (second layer).

:func:`moments` integrates over F = 1{A + B X - h(X) + eps Y > 0} with the composite
Gauss-Legendre rule of :mod:`smoothjax.quadrature`: over x where the curve is flat (|b'| <= 1) and
over y, with the x-integral in closed form between the roots of :mod:`smoothjax.theorem3._curve`,
where it is steep (see :mod:`smoothjax.theorem3`, "Quadrature"). The Jacobians are line integrals
along the curve (no differentiation through the quadrature nodes).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from smoothjax._normal import Phi, phi
from smoothjax.quadrature import NODES_PER_PANEL, WINDOW, gaussian_panel_rule
from smoothjax.theorem3._curve import dh, dh_dr, dh_inverse, h, left_root, right_root

# Absolute error allowed per quadrature integral I_i in the dual value (the panel rule errs by a
# few 1e-14, see smoothjax.quadrature; the root solves and rounding add a few ulps).
QUAD_ERR = 1e-13


class Moments(NamedTuple):
    """The integrals of :func:`moments` at one (theta, r)."""

    I: jax.Array  # noqa: E741 -- (E F, E[X F], E[Y F])
    P: jax.Array  # E[F w(X)]
    Pr: jax.Array  # E[F w(X) (X - r)] = dP/dr
    J: jax.Array  # d I_i / d theta_j, [3, 3]
    Jr: jax.Array  # d I_i / d r at fixed theta, [3]


def _line_integrals(line, u, dhdr):
    """J[i, j] = sum_k line_k u_ik u_jk and Jr[i] = -sum_k line_k u_ik dhdr_k for u = (u0, u1, u2).

    Written as six explicit sums (J is symmetric): batched under vmap, XLA on CPU runs these
    several times faster than the equivalent einsum (a batched matrix product of tiny matrices).
    """
    lu = [line * ui for ui in u]
    d = [[None] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(i, 3):
            d[i][j] = d[j][i] = jnp.sum(lu[i] * u[j])
    J = jnp.stack([jnp.stack(row) for row in d])
    Jr = -jnp.stack([jnp.sum(lui * dhdr) for lui in lu])
    return J, Jr


def _y_piece(wy, y, lo, hi, xb, slope, r):
    """A piece integrated over y (weights wy = quadrature weight x phi(y)) with x from lo(y) to
    hi(y) done in closed form; xb(y) is the moving end on the curve and slope = |g'(xb)| >= eps.

    Returns (I, J, Jr, P, Pr) of the piece, as in :func:`moments`; the Jacobians are the line
    integrals along the curve with the co-area weight phi(xb) / slope and u = (1, xb, y).
    """
    d0 = Phi(hi) - Phi(lo)
    d1 = phi(lo) - phi(hi)
    I = jnp.stack([jnp.sum(wy * d0), jnp.sum(wy * d1), jnp.sum(wy * y * d0)])  # noqa: E741 (the paper's I)
    line = wy * phi(xb) / jnp.where(slope > 0, slope, 1.0)
    J, Jr = _line_integrals(line, (jnp.ones_like(xb), xb, y), dh_dr(xb, r))
    P = jnp.sum(wy * (Phi(hi - r) - Phi(lo - r)))
    Pr = jnp.sum(wy * (phi(lo - r) - phi(hi - r)))
    return I, J, Jr, P, Pr


def moments(theta, r, n=NODES_PER_PANEL):
    """Integrals over F = 1{A + B X - h(X) + eps Y > 0} for scalar theta = (A, B, eps) and r.

    Returns :class:`Moments` (I, P, Pr, J, Jr): I = (E F, E[X F], E[Y F]); P = E[F w(X)];
    Pr = E[F w(X) (X - r)]; J[i, j] = d I_i / d theta_j (symmetric positive semi-definite);
    Jr[i] = d I_i / d r at fixed theta (the same line integrals along the curve, with -dh/dr in
    place of d(level)/d theta_j).
    """
    A, B, eps = theta[0], theta[1], theta[2]
    pos = eps > 0
    eps_s = jnp.where(pos, eps, 1.0)

    def g(x):
        return A + B * x - h(x, r)

    # Left of -WINDOW - 2 nothing matters (Phi(-10.5) ~ 4e-26): clamping x_R there keeps it finite
    # at the fallback with eps = 0 (x_R = -inf) and keeps every bound used below valid.
    x_R = jnp.maximum(dh_inverse(B + eps, r), -WINDOW - 2.0)
    x_L = dh_inverse(B - eps, r)
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
    Phic = Phi(cm)
    phic = phi(cm)
    wphi = wm * phi(xm)
    I_mid = jnp.stack([jnp.sum(wphi * Phic), jnp.sum(wphi * xm * Phic), jnp.sum(wphi * phic)])
    J_mid, Jr_mid = _line_integrals(wphi * phic / eps_s, (jnp.ones_like(xm), xm, -cm), dh_dr(xm, r))
    xp, wp = gaussian_panel_rule(lo - r, x_R - r, nodes_per_panel=n)
    Phip = Phi(g(xp + r) / eps_s)
    wphip = wp * phi(xp)
    P_mid = jnp.sum(wphip * Phip)
    Pr_mid = jnp.sum(wphip * xp * Phip)

    # --- right piece: x > x_R, y > y_R = -g(x_R)/eps; x from x_R to the right root x2(y)
    y_R = jnp.where(pos, -g_R / eps_s, jnp.where(g_R > 0, -jnp.inf, jnp.inf))
    yr, wr = gaussian_panel_rule(y_R, jnp.inf, nodes_per_panel=n)
    T_r = A + eps * yr
    x2 = right_root(T_r, B, r, eps, x_R, H_R)
    slope2 = jnp.maximum(dh(x2, r) - B, eps)  # |g'(x2)| >= eps
    right = _y_piece(wr * phi(yr), yr, x_R, x2, x2, slope2, r)

    # --- left piece (only when h' - B reaches -eps): x from x1(y) to x_L
    y_L = jnp.where(pos, -g_L / eps_s, jnp.where(g_L > 0, -jnp.inf, jnp.inf))
    y_L = jnp.where(has_left, y_L, jnp.inf)
    yl, wl = gaussian_panel_rule(y_L, jnp.inf, nodes_per_panel=n)
    T_l = A + eps * yl
    x1 = left_root(T_l, B, r, eps, x_Lf, H_L)
    x1 = jnp.where(jnp.isfinite(x1), x1, -2.0 * WINDOW - 1.0)
    slope1 = jnp.maximum(B - dh(x1, r), eps)
    left = _y_piece(wl * phi(yl), yl, x1, x_Lf, x1, slope1, r)

    mid = (I_mid, J_mid, Jr_mid, P_mid, Pr_mid)
    I, J, Jr, P, Pr = (a + b + c for a, b, c in zip(mid, right, left))  # noqa: E741 (the paper's I)
    return Moments(I=I, P=P, Pr=Pr, J=J, Jr=Jr)
