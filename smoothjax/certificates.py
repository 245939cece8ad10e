"""Closed-form and one-dimensional l2 certificates: Cohen, second-order smoothing (SoS), dipole.

Units (see API.md): ``sigma`` is the noise standard deviation in input units; radii are returned
in input units (the dimensionless solution times sigma); gradient norms are norms of
``grad_x g(x)`` with ``g(x) = P[f(x + sigma N(0, I)) = top class]``, in 1/input units. The
largest possible ``||grad g||_2`` at ``g = p`` is ``phi(Phi^-1(p)) / sigma`` (:func:`max_grad_norm`).

Papers: "second paper" = Levine, Kumar, Goldstein, Feizi, "Tight Second-Order Certificates for
Randomized Smoothing" (Theorems 1-3, Appendix A); "first paper" = Mohapatra et al.,
"Higher-Order Certification for Randomized Smoothing" (Corollary 3.1 = second paper Theorem 1).

Conventions shared by every function here:

* Abstain: where the probability lower bound is <= 1/2 the radius is 0.
* Soundness: every one-dimensional solve ends on the safe side of its (floating-point) equation,
  i.e. rounds toward the smaller radius. The dipole radius is a bisection inside
  ``lax.while_loop`` (vectorised, no Python loops over inputs) that returns the safe end of the
  final bracket. The SoS radius takes a fixed number of Newton steps and then *verifies* the
  safe-side condition that a bisection would maintain, stepping down where it fails (a bisection
  takes over for any entry still failing; it never ran on a dense test grid, and when no entry
  needs it the ``while_loop`` costs one test). The SoS radius is additionally never below the Cohen
  radius for the same p_lower, which it provably dominates.
* Invalid inputs: concrete invalid arguments raise ``ValueError``; under ``jit`` (tracers) the
  checks cannot run, and the functions return NaN for invalid entries instead (probabilities
  outside [0, 1] or NaN, sigma <= 0 or non-finite, negative or NaN gradient norms, ...).
* dtype: inputs are converted with :func:`smoothjax._config.as_float`: float32 inputs are
  promoted to float64 when the caller has x64 on, and results are float64. With x64 off (JAX's
  default) everything runs in float32: the same formulas with float32 rounding
  (about 1e-6 relative), and every radius is then shrunk by a relative 2^-16 = 1.5e-5 so that it
  stays below the exact radius for the given (float32) inputs (tested). Prefer x64 for
  certification: float32 cannot even represent p_lower within 6e-8 of 1.
* Differentiability: :func:`sos_radius` and :func:`dipole_radius` carry implicit-function
  derivatives (``jax.custom_jvp``, so both forward and reverse mode work). At the abstain edge
  (p <= 1/2, or cs + cn <= 1/2) the radius is the constant 0 and so is its gradient; the
  one-sided derivative from above can be unbounded there when the gradient bound is 0 (the SoS
  radius then grows like sqrt(p - 1/2)), so it is finite for every p > 1/2 but not uniformly
  bounded. Near p = 1 the derivative is large (like Cohen's ``1 / phi(Phi^-1(p))``) but finite
  for p < 1. When the gradient bound is at (or above) its maximum the SoS radius is Cohen's and
  its derivative w.r.t. the gradient bound is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import ndtri
from jax.typing import ArrayLike

from smoothjax._config import as_float
from smoothjax._normal import Phi as _Phi
from smoothjax._normal import max_grad as _max_grad
from smoothjax._normal import phi as _phi
from smoothjax._normal import upper_quantile as _upper_quantile
from smoothjax._roots import bisect as _bisect
from smoothjax._roots import safe_side as _safe_side
from smoothjax._validation import (
    check_nonnegative,
    check_probability,
    check_sigma,
    invalid_probability,
    invalid_sigma,
    is_concrete,
)

__all__ = [
    "cohen_radius",
    "dipole_radius",
    "max_grad_norm",
    "sos_radius",
    "top2_radius",
]

_F_MARGIN = 32.0  # ulps of 1 allowed for the evaluation error of the bound functions
_SOS_NEWTON_STEPS_A = 4  # Newton steps for Phi^-1(a0); 3 leave errors of 1e-10 in the radius
_SOS_NEWTON_STEPS_R = 4  # Newton steps for the SoS radius


def _float32_safety(r):
    """In float32 mode (x64 disabled) shrink radii by a relative 2^-16 (1.5e-5), which covers the
    float32 rounding of Phi^-1 and of the solves, so float32 radii stay conservative. A no-op in
    float64, where the bracket ends are already the safe side."""
    if r.dtype == jnp.float64:
        return r
    return r * (1.0 - 2.0**-16)


def _round_down(r):
    """A dimensionless radius from a solve, moved to the safe side of its rounding error.

    The solves' safe-side conditions are exact for the *floating-point* bound function, but that
    function carries absolute errors of a few ulps (``Phi`` near 1/2, ``ndtri``), which matter
    only when the root is tiny (p within ~1e-9 of 1/2, where the radius is ~1e-9 sigma).
    Subtracting 64 ulps of 1 covers them; in float32 mode a further 2^-10 relative covers the
    float32 evaluation error of the SoS / dipole bounds (measured up to 1.2e-4 relative,
    tests/test_floating_point.py).
    """
    eps = jnp.finfo(r.dtype).eps
    rel = 0.0 if r.dtype == jnp.float64 else 2.0**-10
    return jnp.maximum(r * (1.0 - rel) - 64.0 * eps, 0.0)


# ----------------------------------------------------------------------------------------------
# Cohen et al. (2019)
# ----------------------------------------------------------------------------------------------


def cohen_radius(p_lower: ArrayLike, sigma: ArrayLike) -> jax.Array:
    """Cohen et al. (2019) l2 radius ``sigma * Phi^-1(p_lower)``; 0 where ``p_lower <= 1/2``.

    Args:
      p_lower: lower confidence bound on the top-class probability g(x), any shape, in [0, 1].
      sigma: noise standard deviation (input units), > 0, broadcastable.

    Returns:
      radius in input units (``inf`` at p_lower = 1). ``Phi^-1`` is evaluated as
      ``-Phi^-1(1 - p)`` so that p = 1 - 1e-12 gives 7.03 sigma accurately. NaN under ``jit``
      for invalid inputs, ``ValueError`` outside it.

    Example:
      >>> print(f"{float(cohen_radius(0.9, sigma=0.25)):.4f}")  # 0.25 * Phi^-1(0.9)
      0.3204
      >>> [float(r) for r in cohen_radius([0.5, 1.0], sigma=0.25)]  # abstain at 1/2, inf at 1
      [0.0, inf]
    """
    check_probability("p_lower", p_lower)
    check_sigma(sigma)
    p, sigma = jnp.broadcast_arrays(as_float(p_lower), as_float(sigma))
    z = _upper_quantile(jnp.where(p > 0.5, p, 0.75))
    r = _float32_safety(jnp.where(p > 0.5, sigma * z, 0.0))
    return jnp.where(invalid_probability(p) | invalid_sigma(sigma), jnp.nan, r)


def max_grad_norm(p: ArrayLike, sigma: ArrayLike) -> jax.Array:
    """Largest ``||grad g||_2`` any smoothed classifier can have where ``g = p``.

    ``phi(Phi^-1(p)) / sigma`` (1/input units), attained by a linear base classifier (second
    paper, Figure 3a). Symmetric in p <-> 1 - p and evaluated through ``min(p, 1 - p)``. 0 at
    p in {0, 1}. NaN under ``jit`` for invalid inputs, ``ValueError`` outside it.

    Example:
      >>> print(f"{float(max_grad_norm(0.9, sigma=0.25)):.4f}")  # phi(Phi^-1(0.9)) / 0.25
      0.7020
    """
    check_probability("p", p)
    check_sigma(sigma)
    p, sigma = jnp.broadcast_arrays(as_float(p), as_float(sigma))
    out = _max_grad(jnp.minimum(p, 1.0 - p)) / sigma
    return jnp.where(invalid_probability(p) | invalid_sigma(sigma), jnp.nan, out)


# ----------------------------------------------------------------------------------------------
# Second-order smoothing (second paper Theorem 1 = first paper Corollary 3.1)
# ----------------------------------------------------------------------------------------------
#
# With q = 1 - p, the worst-case base classifier (second paper, Appendix A.2) is 1 on the slab
# z in [Phi^-1(a), Phi^-1(1 - b)] of the gradient direction, with lower and upper adversarial
# masses a + b = q. The gradient constraint (their Eq. 38) fixes a:
#     h(a) := phi(Phi^-1(b)) - phi(Phi^-1(a)) = sigma * ||grad g||,   b = q - a,  a in [0, q/2],
# h decreasing in a (from phi(Phi^-1(q)), the maximal gradient, at a = 0 to 0 at a = q/2). The
# tight lower bound on g at distance sigma * r is Phi(Phi^-1(1 - b) - r) - Phi(Phi^-1(a) - r);
# it reaches 1/2 where
#     F(r) := Phi(r + Phi^-1(b)) + Phi(Phi^-1(a) - r) - 1/2 = 0,
# which is increasing in r, with root between -Phi^-1(q) (Cohen) and -Phi^-1(b).
# Soundness: the bound is increasing in a (their Eq. 36-37), so we solve for a from below
# (safe end = smaller a, in u = Phi^-1(a)) and for r from below.
#
# Both solves are Newton iterations with a fixed number of steps (no data-dependent loop, so a
# batch costs what one input costs, times its size), followed by _safe_side: the result satisfies
# the same floating-point condition that a bisection's lower end satisfies (h(u) >= g, F(r) <= 0
# with the _F_MARGIN), which is what makes it safe.


def _sos_a0(q, g, v_q, g_max):
    """``u = Phi^-1(a0)`` on the safe side (``h(u) >= g`` as evaluated) and ``v = Phi^-1(q - a0)``.

    Newton on ``log(g_max - h(u)) = log(D)``, ``D = g_max - g > 0``, with
    ``g_max - h(u) = phi(u) + (g_max - phi(v))`` and derivative ``-(u + v) phi(u)`` (u, v < 0).
    In the tail this is ``phi(u) (1 + |v_q| / |u| + ...)``: in log form almost the parabola
    ``-u^2 / 2``, so Newton converges quadratically from ``u0 = -sqrt(-2 log(sqrt(2 pi) D))`` (where
    ``phi(u0) = D``, an upper bound on the root since ``g_max - h >= phi``), clipped to
    ``u_max = Phi^-1(q/2)`` (the root for g = 0). Checked on a dense grid (2.3e5 points, q in
    [1e-16, 1/2), g / g_max in [0, 1]): after four steps the radius agrees with that of 64-step
    bisections to 100 ulps of 1 for |p - 1/2| > 1e-3 (to the width of the floating-point noise
    band of F nearer 1/2) and the fallback bisection never runs. :func:`_safe_side` then moves u
    to where ``h(u) >= g`` holds as evaluated, allowing for the rounding of ``phi(v)`` and
    ``phi(u)`` (relative ``(1 + y^2) eps`` for ``phi(y)``).

    Where D is within 8 (1 + v_q^2) ulps of g_max (the rounding error of h itself, so the
    floating-point root is noise) u is the lower end ``Phi^-1(tiny)`` (a0 ~ 0, safe): the exact a0
    is below ``D / (|u| + |v_q|)``, at most ~1e-13 g_max, and the radius moves by O(a0). Entries
    with D <= 0 (gradient at its maximum) are handled by the caller; their u here is meaningless.
    """
    dtype = q.dtype
    eps = jnp.finfo(dtype).eps
    u_min = jnp.asarray(ndtri(jnp.asarray(np.finfo(dtype).tiny, dtype)), dtype)
    u_max = ndtri(0.5 * q)
    d = g_max - g
    noise = d <= 8.0 * (1.0 + v_q * v_q) * eps * g_max
    log_d = jnp.log(jnp.where(noise, 0.5 * g_max, d))
    u = jnp.minimum(-jnp.sqrt(jnp.maximum(-2.0 * log_d - float(np.log(2.0 * np.pi)), 0.0)), u_max)
    slope = jnp.ones_like(q)
    for _ in range(_SOS_NEWTON_STEPS_A):
        v = ndtri(q - _Phi(u))
        phi_u = _phi(u)
        s = phi_u + jnp.maximum(g_max - _phi(v), 0.0)
        slope = jnp.maximum(-(u + v) * phi_u, np.finfo(dtype).tiny)  # d(g_max - h)/du
        u = jnp.clip(u - (jnp.log(s) - log_d) * s / slope, u_min, u_max)
    u = jnp.where(noise, u_min, u)

    def g_minus_h(uu):  # increasing in u; <= 0 is the safe side
        return g + _phi(uu) - _phi(ndtri(q - _Phi(uu)))

    v = ndtri(q - _Phi(u))
    margin = 4.0 * eps * ((1.0 + v * v) * g_max + (1.0 + u * u) * _phi(u))
    u = _safe_side(g_minus_h, u, slope, margin, u_min)
    return u, ndtri(q - _Phi(u))


def _sos_solve(p, g):
    """Dimensionless SoS radius and its worst-case masses.

    p in (1/2, 1), g = sigma ||grad g|| in [0, phi(Phi^-1(p))]. Returns (r, u, v) with
    u = Phi^-1(a) (-inf when a = 0) and v = Phi^-1(b).

    The radius: Newton on F, which is convex on the bracket [-Phi^-1(q), -v] (F'' =
    -(r + v) phi(r + v) + (r - u) phi(u - r) >= 0 for r <= -v), so from any start every step after
    the first lands at or above the root and the iterates decrease to it. The start is the smaller
    of the first Newton step from -v (good when r is large) and the root of F's quadratic Taylor
    model at r = 0, ``F(0) = q - 1/2 (+ margin)``, ``F'(0) = phi(v) - phi(u) = g``,
    ``F''(0) = -v phi(v) - u phi(u)`` (good when r is small, including the flat case g = 0,
    p -> 1/2, where F'(root) -> 0). :func:`_safe_side` then moves r to where F(r) <= 0 as
    evaluated; as the Newton point is at or above the root (convexity), in exact arithmetic the
    result is at most 2 ulps of 1 / F' + 4 ulps of r below the root.
    """
    dtype = p.dtype
    eps = jnp.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    q = 1.0 - p
    v_q = ndtri(q)
    g_max = _phi(v_q)
    at_max = g >= g_max  # gradient at its maximum: a = 0, Cohen's classifier
    u, v = _sos_a0(q, g, v_q, g_max)
    u = jnp.where(at_max, -jnp.inf, u)
    v = jnp.where(at_max, v_q, v)
    r_cohen = -v_q
    hi = jnp.maximum(-v, r_cohen)
    margin = _F_MARGIN * eps

    def f(r):
        # + _F_MARGIN: a point counts as inside the radius only if the bound clears 1/2 by more
        # than the evaluation error of this expression, so the safe end stays safe in exact math
        # (matters where the bound is flat at its root, e.g. zero gradient and p near 1/2).
        return _Phi(r + v) + _Phi(u - r) - 0.5 + margin

    def slope(r):
        return jnp.maximum(_phi(r + v) - _phi(u - r), tiny)

    u_fin = jnp.where(at_max, 0.0, u)
    curvature = -v * _phi(v) - u_fin * _phi(u_fin)
    c = 0.5 - q - margin
    r_quad = 2.0 * c / (g + jnp.sqrt(g * g + 2.0 * curvature * jnp.maximum(c, 0.0)))
    r_top = -v - (_Phi(u + v) + margin) / (_phi(0.0) - _phi(u + v))
    r = jnp.clip(jnp.where(c > 0.0, jnp.minimum(r_quad, r_top), r_cohen), r_cohen, hi)
    for _ in range(_SOS_NEWTON_STEPS_R):
        r = jnp.clip(r - f(r) / slope(r), r_cohen, hi)
    r = _safe_side(f, r, slope(r), 2.0 * eps, r_cohen)
    return jnp.maximum(r, r_cohen), u, v


@jax.custom_jvp
def _sos_dimensionless(p, g):
    r, _, _ = _sos_solve(p, g)
    return r


@_sos_dimensionless.defjvp
def _sos_dimensionless_jvp(primals, tangents):
    p, g = primals
    dp, dg = tangents
    r, u, v = _sos_solve(p, g)
    # Implicit differentiation of E1: phi(v) - phi(u) = g and E2: F(r; a, b) = 0, b = 1 - p - a,
    # using d phi(Phi^-1(y)) / dy = -Phi^-1(y):
    #   da = (dg - v dp) / (u + v),   db = -dp - da,
    #   dr = -(exp(-r v - r^2/2) db + exp(u r - r^2/2) da) / (phi(r + v) - phi(u - r)).
    # u = -inf (gradient at its maximum) gives da = 0 and the Cohen derivative.
    tiny = jnp.finfo(r.dtype).tiny
    uv = jnp.where(jnp.isfinite(u), u + v, -jnp.inf)
    da = jnp.where(jnp.isfinite(u), (dg - v * dp) / jnp.minimum(uv, -tiny), 0.0)
    db = -dp - da
    w_b = jnp.exp(-r * v - 0.5 * r * r)
    w_a = jnp.where(jnp.isfinite(u), jnp.exp(jnp.where(jnp.isfinite(u), u, 0.0) * r - 0.5 * r * r), 0.0)
    slope = _phi(r + v) - jnp.where(jnp.isfinite(u), _phi(jnp.where(jnp.isfinite(u), u, 0.0) - r), 0.0)
    dr = -(w_b * db + w_a * da) / jnp.maximum(slope, tiny)
    return r, dr


def sos_radius(p_lower: ArrayLike, grad_norm_upper: ArrayLike, sigma: ArrayLike) -> jax.Array:
    """Second-order smoothing l2 radius (second paper Theorem 1; first paper Corollary 3.1).

    The largest rho such that every base classifier f: R^d -> [0, 1] whose smoothed version has
    ``g(x) >= p_lower`` and ``||grad g(x)||_2 <= grad_norm_upper`` keeps ``g(x') >= 1/2`` for
    ``||x' - x||_2 < rho``. With q = 1 - p_lower and gamma = sigma * grad_norm_upper (clipped to
    the maximum ``phi(Phi^-1(p_lower))``), a solves ``phi(Phi^-1(q - a)) - phi(Phi^-1(a)) = gamma``
    on [0, q/2] (the paper's a0) and the radius is ``sigma * r`` with
    ``Phi(Phi^-1(1 - q + a) - r) - Phi(Phi^-1(a) - r) = 1/2``.

    Identities: equals :func:`cohen_radius` when ``grad_norm_upper >= max_grad_norm(p_lower,
    sigma)``; never below it otherwise; decreasing in ``grad_norm_upper``, increasing in
    ``p_lower`` and proportional to sigma at fixed ``sigma * grad_norm_upper``.

    Args:
      p_lower: lower confidence bound on g(x), in [0, 1]; radius 0 where <= 1/2.
      grad_norm_upper: upper confidence bound on ``||grad g(x)||_2`` in 1/input units (e.g. from
        :func:`sos_grad_norm_upper`), >= 0; values above the maximum are clipped to it.
      sigma: noise level, > 0.

    Returns:
      radius in input units, broadcast shape (inf at p_lower = 1). Solved by a fixed number of
      Newton steps for a0 and for the radius, each verified to lie on the safe side of its
      floating-point equation (see :func:`_sos_solve`), rounded toward the smaller radius.
      Differentiable (implicit function theorem, see the module docstring for the edges). NaN
      under ``jit`` for invalid inputs.

    Example:
      >>> print(f"{float(sos_radius(0.9, 0.3, sigma=0.25)):.3f}")  # above Cohen's 0.320
      0.364
      >>> print(f"{float(sos_radius(0.9, 1.0, sigma=0.25)):.3f}")  # bound >= maximum: Cohen's radius
      0.320
    """
    check_probability("p_lower", p_lower)
    check_nonnegative("grad_norm_upper", grad_norm_upper)
    check_sigma(sigma)
    return _sos_radius(as_float(p_lower), as_float(grad_norm_upper), as_float(sigma))


@jax.jit
def _sos_radius(p, grad, sigma):
    p, grad, sigma = jnp.broadcast_arrays(p, grad, sigma)
    invalid = invalid_probability(p) | invalid_sigma(sigma) | jnp.isnan(grad) | (grad < 0.0)
    active = (p > 0.5) & (p < 1.0) & ~invalid
    p_safe = jnp.where(active, p, 0.75)
    sigma_safe = jnp.where(invalid, 1.0, sigma)
    gamma_max = _max_grad(1.0 - p_safe)
    gamma = jnp.minimum(jnp.where(active, sigma_safe * grad, 0.0), gamma_max)
    # SoS provably dominates Cohen (gradient bound at its maximum = Cohen's worst case), so the
    # solve's rounding margin never needs to take the radius below Cohen's exact value.
    r = jnp.maximum(_round_down(_sos_dimensionless(p_safe, gamma)), _upper_quantile(p_safe))
    radius = _float32_safety(jnp.where(active, sigma_safe * r, 0.0))
    radius = jnp.where((p == 1.0) & ~invalid, jnp.inf, radius)
    return jnp.where(invalid, jnp.nan, radius)


# ----------------------------------------------------------------------------------------------
# Gaussian dipole smoothing (second paper Theorem 3, Appendix A.4)
# ----------------------------------------------------------------------------------------------
#
# With w = Phi^-1((1 - cs) / 2) <= 0 and c = Phi^-1(cn), the bound at distance sigma * r is
#     Phi(c - r) + Phi(-w - r) - Phi(w - r),
# and it equals 1/2 where
#     F(r) := Phi(w + r) + Phi(w - r) - Phi(c - r) - 1/2 = 0,
# F increasing in r (F' = phi(w + r) - phi(w - r) + phi(c - r) > 0 since w <= 0 <= r).
# Bracket: 0 (F(0) = 1/2 - cs - cn < 0 when not abstaining) and max(c, -w) + 0.675 (there the
# bound is <= 2 Phi(-0.675) < 1/2). Note the bracket does NOT start at Cohen's radius for the
# total mass cs + cn: the theorem minimises over f_S and f_N separately (ignoring f_S + f_N <= 1,
# the paper's footnote 2), so its bound can be below Cohen's (e.g. cs = 0.5, cn = 0.3 gives
# 0.736 sigma against Cohen's 0.842 sigma). max(dipole, Cohen(cs + cn)) is also a valid
# certificate (g(x) >= cs + cn), and that is what dipole_radius returns (the reference code prints
# Theorem 3 alone; no row of the peer data differs).


def _dipole_solve(cs, cn):
    w = ndtri(0.5 * (1.0 - cs))
    c = ndtri(cn)
    lo = jnp.zeros_like(cs)
    hi = jnp.maximum(c, -w) + 0.675

    def f(r):
        # + _F_MARGIN ulps: see _sos_solve. _Phi is ndtr at a sixth of the cost.
        return _Phi(w + r) + _Phi(w - r) - _Phi(c - r) - 0.5 + _F_MARGIN * jnp.finfo(cs.dtype).eps

    return _bisect(f, lo, hi), w, c


@jax.custom_jvp
def _dipole_dimensionless(cs, cn):
    r, _, _ = _dipole_solve(cs, cn)
    return r


@_dipole_dimensionless.defjvp
def _dipole_dimensionless_jvp(primals, tangents):
    cs, cn = primals
    dcs, dcn = tangents
    r, w, c = _dipole_solve(cs, cn)
    # dr = [exp(c r - r^2/2) dcn + exp(-r^2/2) cosh(w r) dcs] / F'(r)
    tiny = jnp.finfo(r.dtype).tiny
    c_fin = jnp.isfinite(c)
    c_safe = jnp.where(c_fin, c, 0.0)
    w_cn = jnp.where(c_fin, jnp.exp(c_safe * r - 0.5 * r * r), 0.0)
    w_cs = 0.5 * (jnp.exp(w * r - 0.5 * r * r) + jnp.exp(-w * r - 0.5 * r * r))
    slope = _phi(w + r) - _phi(w - r) + jnp.where(c_fin, _phi(c_safe - r), 0.0)
    dr = (w_cn * dcn + w_cs * dcs) / jnp.maximum(slope, tiny)
    return r, dr


def dipole_radius(cs_lower: ArrayLike, cn_lower: ArrayLike, sigma: ArrayLike) -> jax.Array:
    """Gaussian dipole smoothing l2 radius (second paper Theorem 3).

    ``cs = E[f(x + e) f(x - e)]`` (both antithetic samples give the top class) and
    ``cn = E[f(x + e) - f(x + e) f(x - e)]`` (only the + sample does); the smoothed probability
    at distance rho is at least ``Phi(Phi^-1(cn) - rho/sigma) + Phi(Phi^-1((1 + cs)/2) - rho/sigma)
    - Phi(Phi^-1((1 - cs)/2) - rho/sigma)``, and the radius is where this reaches 1/2.

    Identities: ``dipole_radius(0, cn, sigma) == cohen_radius(cn, sigma)``; increasing in cs and
    cn. Radius 0 where ``cs + cn <= 1/2``; inf where cs = 1. Theorem 3 alone can be *below*
    ``cohen_radius(cs + cn, sigma)`` when cs and cn are both sizeable (the theorem bounds the two
    parts separately, e.g. cs = 0.5, cn = 0.3 gives 0.736 sigma against 0.842 sigma); since
    ``g(x) >= cs + cn`` Cohen's radius at the total is also sound, and the function returns the
    larger of the two (never below ``cohen_radius(cs_lower + cn_lower)``).

    Args:
      cs_lower, cn_lower: lower confidence bounds on cs and cn (e.g. Clopper-Pearson over the
        N/2 antithetic pairs at alpha/2 each), in [0, 1] with ``cs + cn <= 1``.
      sigma: noise level, > 0.

    Returns:
      radius in input units, rounded toward the smaller radius; differentiable (implicit
      function theorem). NaN under ``jit`` for invalid inputs, ``ValueError`` outside it.

    Example:
      >>> print(f"{float(dipole_radius(0.95, 0.02, sigma=0.25)):.2f}")  # Cohen at 0.97: 0.47
      0.49
      >>> print(f"{float(dipole_radius(0.5, 0.3, sigma=0.25)):.3f}")  # Cohen's radius at cs + cn = 0.8
      0.210
    """
    check_probability("cs_lower", cs_lower)
    check_probability("cn_lower", cn_lower)
    check_sigma(sigma)
    if is_concrete((cs_lower, cn_lower)):
        total = np.asarray(cs_lower, float) + np.asarray(cn_lower, float)
        if np.any(total > 1.0 + 1e-12):
            raise ValueError("cs_lower + cn_lower must not exceed 1 (they bound disjoint events).")
    return _dipole_radius(as_float(cs_lower), as_float(cn_lower), as_float(sigma))


@jax.jit
def _dipole_radius(cs, cn, sigma):
    cs, cn, sigma = jnp.broadcast_arrays(cs, cn, sigma)
    invalid = (
        invalid_probability(cs)
        | invalid_probability(cn)
        | invalid_sigma(sigma)
        | (cs + cn > 1.0 + 1e-12)
    )
    cn = jnp.minimum(cn, 1.0 - cs)
    active = (cs + cn > 0.5) & (cs < 1.0) & ~invalid
    cs_safe = jnp.where(active, cs, 0.25)
    cn_safe = jnp.where(active, cn, 0.5)
    sigma_safe = jnp.where(invalid, 1.0, sigma)
    # g(x) = P[f(x + e) = top] = cs + cn >= cs_lower + cn_lower, so Cohen's radius at the total is
    # also a valid certificate; Theorem 3 bounds f_S and f_N separately and can fall below it.
    # The float sum is moved one ulp down so its rounding cannot raise the Cohen term.
    s = cs_safe + cn_safe
    total = jnp.where(cs_safe == 0.0, cn_safe, s + (jnp.nextafter(lax.stop_gradient(s), 0.0) - lax.stop_gradient(s)))
    cohen = jnp.where(total > 0.5, _upper_quantile(jnp.where(total > 0.5, total, 0.75)), 0.0)
    r = jnp.maximum(_round_down(_dipole_dimensionless(cs_safe, cn_safe)), cohen)
    radius = _float32_safety(jnp.where(active, sigma_safe * r, 0.0))
    radius = jnp.where((cs == 1.0) & ~invalid, jnp.inf, radius)
    return jnp.where(invalid, jnp.nan, radius)


# ----------------------------------------------------------------------------------------------
# Cohen et al. (2019) Theorem 1 with the runner-up class bounded
# ----------------------------------------------------------------------------------------------


def top2_radius(pa_lower, pb_upper, *, sigma):
    """Cohen et al. (2019) Theorem 1 l2 radius ``sigma/2 (Phi^-1(pA_lower) - Phi^-1(pB_upper))``.

    Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019, Theorem 1: if ``P[f(x + e) = c_A] >= pA_lower >= pB_upper >= max_{c != c_A}
    P[f(x + e) = c]`` then ``g(x + delta) = c_A`` for every ``||delta||_2 < R`` with
    ``R = sigma/2 (Phi^-1(pA_lower) - Phi^-1(pB_upper))``. Their CERTIFY uses ``pB = 1 - pA``,
    which gives ``sigma Phi^-1(pA_lower)`` (:func:`cohen_radius`). Since ``pB <= 1 - pA <=
    1 - pA_lower`` whenever ``pA >= pA_lower``, ``min(pB_upper, 1 - pA_lower)`` is also an upper
    bound on the runner-up under the same confidence event, so this function returns the larger
    of the two forms: ``sigma/2 (Phi^-1(pA_lower) - Phi^-1(min(pB_upper, 1 - pA_lower)))``. The
    certificate can be positive with ``pA_lower <= 1/2`` (e.g. pA_lower = 0.45, pB_upper = 0.2).

    Confidence: the two bounds must hold jointly. With one-sided Clopper-Pearson bounds on the
    top-class count (``pA_lower`` at ``alpha/2``) and on the runner-up's count (``pB_upper`` at
    ``alpha/2``, with the runner-up chosen on the selection samples, not the estimation ones), the
    union bound gives probability ``>= 1 - alpha`` for the pair, the same guarantee as Cohen's
    certificate at the full ``alpha``.

    Args:
      pa_lower: lower confidence bound on the top-class probability, any shape, in [0, 1].
      pb_upper: upper confidence bound on the runner-up class probability, in [0, 1],
        broadcastable with ``pa_lower``.
      sigma: noise standard deviation (input units), > 0, broadcastable (keyword only).

    Returns:
      radius in input units, 0 where ``pA_lower <= min(pB_upper, 1 - pA_lower)``; ``inf`` where
      ``pa_lower = 1`` or ``pb_upper = 0 < pa_lower``. Float64 (x64 on). Rounded toward the
      smaller radius: the difference of the two normal quantiles is lowered by 16 ulps of their
      magnitudes (``Phi^-1`` evaluates to within a few ulps), so floating-point error never
      enlarges the radius. NaN under ``jit`` for invalid inputs (probabilities outside [0, 1] or
      NaN, sigma <= 0 or non-finite), ``ValueError`` outside it.

    Example (in float64; with x64 off it runs in float32 and gives 0.530783, below the exact value):
      >>> import jax
      >>> import smoothjax.certificates as c
      >>> with jax.enable_x64(True):
      ...     radius = c.top2_radius(0.8, 0.1, sigma=0.5)
      >>> round(float(radius), 6)  # 0.25 * (0.841621 + 1.281552)
      0.530793
    """
    check_probability("pa_lower", pa_lower)
    check_probability("pb_upper", pb_upper)
    check_sigma(sigma)
    return _top2_radius(as_float(pa_lower), as_float(pb_upper), as_float(sigma))


def _quantile(p):
    """``Phi^-1(p)`` from the accurate side: ``ndtri(p)`` below 1/2, ``-ndtri(1 - p)`` above."""
    return jnp.where(p > 0.5, _upper_quantile(jnp.where(p > 0.5, p, 0.75)), ndtri(jnp.where(p > 0.5, 0.25, p)))


@jax.jit
def _top2_radius(pa, pb, sigma):
    pa, pb, sigma = jnp.broadcast_arrays(pa, pb, sigma)
    invalid = invalid_probability(pa) | invalid_probability(pb) | invalid_sigma(sigma)
    pb = jnp.minimum(pb, 1.0 - pa)  # 1 - pa is exact for pa >= 1/2, where it can be the smaller
    active = (pa > pb) & ~invalid
    infinite = active & ((pa == 1.0) | (pb == 0.0))
    finite = active & ~infinite
    za = _quantile(jnp.where(finite, pa, 0.75))
    zb = _quantile(jnp.where(finite, pb, 0.25))
    eps = jnp.finfo(za.dtype).eps
    half_gap = 0.5 * (za - zb) - 16.0 * eps * (jnp.abs(za) + jnp.abs(zb))
    r = jnp.maximum(half_gap, 0.0) * jnp.where(invalid, 1.0, sigma) * (1.0 - 2.0 * eps)
    r = _float32_safety(jnp.where(finite, r, 0.0))
    r = jnp.where(infinite, jnp.inf, r)
    return jnp.where(invalid, jnp.nan, r)
