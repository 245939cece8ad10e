"""First-order certified radii for the l1, linf and subspace-lp threat models.

Source: Mohapatra et al., "Higher-Order Certification for Randomized Smoothing" (NeurIPS 2020),
Section 3.2, Corollaries 3.2 (l1), 3.3 (linf) and 3.4 (subspace lp); the l2 radius (Corollary 3.1)
is :func:`smoothjax.certificates.sos_radius`. Each radius is the smallest Theorem 3 directional
radius over the worst direction of the threat model's unit ball, computed by
:func:`smoothjax.theorem3.directional_radius`.

Why these (m1, m2) and which direction is worst
------------------------------------------------
Let ``g`` be the smoothed probability of the top class, ``q <= g(x)``, and let the ball be the lp
ball (restricted to a coordinate subspace S for Corollary 3.4). The certified region computed from
the exact (g(x), grad g(x)) is convex (Proposition 1), so the ball is certified as soon as all its
vertices are. A vertex ``delta`` lies at l2 distance ``||delta||_2`` along the unit vector
``v = delta / ||delta||_2``; it is certified when ``||delta||_2 < sigma R(q, m1, m2)`` for any lower
bounds ``m1 <= sigma v.grad g`` and ``m2 <= sigma ||grad g - (v.grad g) v||_2``, because the
Theorem 3 bound is non-decreasing in m1 and m2. For every vertex ``|v.grad g| <= a`` with

* l1 (Corollary 3.2): vertices ``+-e_i``, ``||delta||_2 = 1``, ``a = ||grad g||_inf``;
* linf (Corollary 3.3): vertices ``s in {-1, 1}^d``, ``||delta||_2 = sqrt(d)``,
  ``a = ||grad g||_1 / sqrt(d)`` (v = s / sqrt(d) is the unit vector);
* subspace lp (Corollary 3.4), S spanned by d_S coordinates, P_S its projection: p = 1 and p = 2 as
  above with ``a = ||P_S grad g||_{p'}`` (p' the dual exponent); p = inf with vertices on S,
  ``||delta||_2 = sqrt(d_S)`` and ``a = ||P_S grad g||_1 / sqrt(d_S)``. The paper prints Corollary
  3.4 without this 1/sqrt(d_S) (it is needed because v must be a unit vector); we include it.
  p = 2 holds for any subspace; p = 1, inf assume S is spanned by coordinate axes (e.g. one colour
  channel).

so, with ``l <= ||grad g||_2`` and ``a_up >= a`` from the confidence bounds,

    m1 = -sigma a_up,     m2 = sigma sqrt(max(l^2 - a_up^2, 0)),
    radius = sigma R(q, m1, m2) / ||delta||_2          (input units),

the worst vertex being the one that points against the gradient (Proposition 2). With p = 2 on the
full space and ``a_up`` an upper bound of ``||grad g||_2`` this is exactly the SoS radius.

Units: sigma is the noise standard deviation in input units; gradient-norm bounds are norms of
grad_x g in 1/input units (no sigma factor, as everywhere in smoothjax); radii are in input units.

Feasible input and what comes back
----------------------------------
* ``p_lower <= 1/2``: radius 0 (abstain), whatever the gradient bounds.
* The bounds contradict each other (then a confidence bound has failed, so nothing can be
  certified): ``sigma * grad_l2_lower > M = phi(Phi^-1(p_lower))`` (no smoothed classifier with
  g(x) >= p_lower > 1/2 has so large a gradient; checked with relative slack 1e-9, inside which
  ``grad_l2_lower`` is clipped to M / sigma), or, for linf, ``grad_l1_upper < grad_l2_lower``
  (||.||_1 >= ||.||_2). Outside ``jit`` this raises ``ValueError``; inside ``jit`` the radius is
  NaN. Malformed input (p outside [0, 1], negative bounds, sigma <= 0, NaN) behaves the same way.
* ``m2 = M`` (only possible for a subspace radius with ``proj_dual_norm_upper = 0`` and
  ``sigma l = M``): the radius is ``inf`` (g cannot change along S).

Gradients: everything is differentiable with ``jax.grad`` through the implicit/envelope derivatives
of :func:`smoothjax.theorem3.directional_radius`; the square root above uses a zero subgradient
where ``l <= a_up``, and the radius has zero gradient where ``p_lower <= 1/2``.

float32 (when x64 is off): the arithmetic here is exact enough in float32; the accuracy and
soundness are those of :func:`smoothjax.theorem3.directional_radius` in float32 (see there). Its
solve usually stops unconverged in float32 (its tolerances are out of reach); such a radius is
sound and, when the solve is accurate to float32 round-off (the usual case), has the
implicit-function derivative at that solve, about 1e-3 relative of float64's (e.g. ``jax.grad`` of
``l1_radius(0.9, 0.3, 0.1, sigma=0.5)`` in p is 6.368409 in float32, 6.368410 in float64); a solve
that stops short of that gives a zero gradient. For float64 accuracy turn x64 on
(``with jax.enable_x64(True):``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from smoothjax import _validation
from smoothjax._config import as_float
from smoothjax._deprecation import keyword_only_shim
from smoothjax._normal import max_grad
from smoothjax.theorem3 import directional_radius, directional_radius_solution

__all__ = ["RadiusSolution", "l1_radius", "linf_radius", "subspace_radius", "subspace_radius_solution"]

_FEASIBILITY_SLACK = 1e-9


def _safe_sqrt(x):
    """sqrt(max(x, 0)) with a zero (not infinite) derivative at and below 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _check_inputs(p_lower, grad_l2_lower, dual_upper, sigma, dual_name):
    _validation.check_probability("p_lower", p_lower)
    _validation.check_nonnegative("grad_l2_lower", grad_l2_lower)
    _validation.check_nonnegative(dual_name, dual_upper)
    _validation.check_finite("grad_l2_lower", grad_l2_lower)
    _validation.check_finite(dual_name, dual_upper)
    _validation.check_sigma(sigma)


def _raise_if_contradictory(bad, message):
    """Host-side: raise ValueError when any concrete entry of ``bad`` is True."""
    if _validation.is_concrete(bad) and bool(np.any(np.asarray(bad))):
        raise ValueError(message)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RadiusSolution:
    """A certified radius and whether the Theorem 3 solve behind it converged (same shapes).

    Fields:
      radius: the radius (input units), bitwise the same as the function without ``_solution``.
      converged: True where the directional-radius solve converged or was not needed (p_lower <= 1/2,
        contradictory or malformed input: radius 0 or NaN there); where False the radius is a
        certified but possibly loose lower end (see :func:`smoothjax.theorem3.directional_radius`).
    """

    radius: jax.Array
    converged: jax.Array


def _radius_core(q, l2, dual, sigma, length, require_dual_ge_l2, solver, diagnostics):
    """Elementwise radius, contradiction mask and (with ``diagnostics``) the solver's convergence
    on equal-shape arrays (see :func:`_radius`). ``solver`` (static) is
    :func:`~smoothjax.theorem3.directional_radius`, or with ``diagnostics``
    :func:`~smoothjax.theorem3.directional_radius_solution`."""
    malformed = ~((q >= 0) & (q <= 1) & (l2 >= 0) & (dual >= 0) & (sigma > 0) & (length >= 1)
                  & jnp.isfinite(l2) & jnp.isfinite(dual) & jnp.isfinite(sigma))
    certify = (q > 0.5) & ~malformed
    big_m = max_grad(jnp.where(certify, q, 0.75))
    s_l2 = sigma * l2
    contradictory = certify & (s_l2 > big_m * (1 + _FEASIBILITY_SLACK))
    contradictory = contradictory | (certify & require_dual_ge_l2 & (dual < l2 * (1 - _FEASIBILITY_SLACK)))
    ok = certify & ~contradictory
    a = dual / length
    s_l2 = jnp.minimum(s_l2, big_m)  # within the slack: clip onto the disk
    m1 = -sigma * a
    m2 = jnp.minimum(_safe_sqrt(s_l2 * s_l2 - (sigma * a) ** 2), big_m)
    # feed a harmless point to the solver where we do not certify (its value is discarded)
    q_s = jnp.where(ok, q, 0.75)
    m1_s = jnp.where(ok, m1, 0.0)
    m2_s = jnp.where(ok, m2, 0.0)
    if diagnostics:
        sol = solver(q_s, m1_s, m2_s)
        r, converged = sol.radius, jnp.where(ok, sol.converged, True)
    else:
        r, converged = solver(q_s, m1_s, m2_s), None
    radius = jnp.where(ok, sigma * r / length, 0.0)
    radius = jnp.where(malformed | contradictory, jnp.nan, radius)
    return radius, contradictory, converged


_radius_core_jit = jax.jit(_radius_core, static_argnames=("solver", "diagnostics"))


def _radius(p_lower, grad_l2_lower, dual_upper, sigma, length, *, require_dual_ge_l2=False, diagnostics=False):
    """sigma R(q, -sigma a, sigma sqrt(l^2 - a^2)) / length with a = dual_upper / length.

    ``length`` = ||delta||_2 of the threat model's worst vertex (1 or sqrt(dim)). Returns the radius,
    the boolean mask of contradictory entries (NaN there) and, with ``diagnostics``, the mask of
    converged solves (else None).

    The inputs are broadcast, flattened and padded to a power-of-two length (at least 8) before the
    jitted solve, so that calls with different small shapes (and l1 / linf / subspace calls, the
    linf check being a traced flag) share one compilation of the Theorem 3 solver, which takes
    seconds to compile.
    """
    arrays = jnp.broadcast_arrays(*(as_float(v) for v in (p_lower, grad_l2_lower, dual_upper, sigma, length)))
    shape = arrays[0].shape
    n = math.prod(shape)
    padded = max(8, 1 << max(n - 1, 0).bit_length())
    fill = (0.75, 0.0, 0.0, 1.0, 1.0)
    flat = [jnp.concatenate([a.reshape(-1), jnp.full((padded - n,), f, a.dtype)]) for a, f in zip(arrays, fill)]
    # the solver is looked up here, at call time, and is part of the compilation's cache key
    solver = directional_radius_solution if diagnostics else directional_radius
    radius, bad, converged = _radius_core_jit(*flat, jnp.asarray(bool(require_dual_ge_l2)), solver=solver,
                                              diagnostics=diagnostics)
    if converged is not None:
        converged = converged[:n].reshape(shape)
    return radius[:n].reshape(shape), bad[:n].reshape(shape), converged


_CONTRADICTS_P = ("The gradient bounds contradict p_lower: sigma * grad_l2_lower exceeds phi(Phi^-1(p_lower)), "
                  "the largest gradient any smoothed classifier can have there (a confidence bound has failed).")


@keyword_only_shim("sigma")
def l1_radius(p_lower: ArrayLike, grad_l2_lower: ArrayLike, grad_linf_upper: ArrayLike, *,
              sigma: ArrayLike) -> jax.Array:
    """Certified l1 radius from zeroth- and first-order information (first paper, Corollary 3.2).

    Args:
      p_lower: lower confidence bound of g(x) (top-class smoothed probability), in [0, 1].
      grad_l2_lower: lower bound of ||grad g(x)||_2, 1/input units, >= 0.
      grad_linf_upper: upper bound of ||grad g(x)||_inf, 1/input units, >= 0.
      sigma: noise standard deviation, input units, > 0 (keyword-only; passing it positionally
        still works but is deprecated).
      (all broadcast against each other)

    Returns:
      The radius R (input units): every x' with ||x' - x||_1 < R is classified like x. It is
      ``sigma R_v(q, m1, m2)`` with ``q = p_lower``, ``m1 = -sigma grad_linf_upper``,
      ``m2 = sigma sqrt(max(grad_l2_lower^2 - grad_linf_upper^2, 0))`` (the worst vertex +-e_i of the
      l1 ball; see the module docstring). 0 where p_lower <= 1/2; NaN (ValueError outside jit) where
      ``sigma grad_l2_lower > phi(Phi^-1(p_lower))`` (contradictory bounds) or the input is malformed.

    Example:
      >>> from smoothjax.first_order import l1_radius
      >>> print(f"{float(l1_radius(0.9, 0.3, 0.1, sigma=0.5)):.4f}")
      0.9059
    """
    _check_inputs(p_lower, grad_l2_lower, grad_linf_upper, sigma, "grad_linf_upper")
    radius, bad, _ = _radius(p_lower, grad_l2_lower, grad_linf_upper, sigma, 1.0)
    _raise_if_contradictory(bad, _CONTRADICTS_P)
    return radius


@keyword_only_shim("dim", "sigma")
def linf_radius(p_lower: ArrayLike, grad_l2_lower: ArrayLike, grad_l1_upper: ArrayLike, *,
                dim: ArrayLike, sigma: ArrayLike) -> jax.Array:
    """Certified linf radius from zeroth- and first-order information (first paper, Corollary 3.3).

    Args:
      p_lower: lower confidence bound of g(x), in [0, 1].
      grad_l2_lower: lower bound of ||grad g(x)||_2, 1/input units, >= 0.
      grad_l1_upper: upper bound of ||grad g(x)||_1, 1/input units, >= grad_l2_lower.
      dim: input dimension d (number of coordinates), >= 1 (a number or an array; keyword-only).
      sigma: noise standard deviation, input units, > 0 (keyword-only; passing ``dim`` and
        ``sigma`` positionally still works but is deprecated).

    Returns:
      The radius R (input units): every x' with ||x' - x||_inf < R is classified like x. The worst
      vertex is a sign vector s, at l2 distance R sqrt(d) along v = s / sqrt(d), so
      ``R = sigma R_v(q, m1, m2) / sqrt(d)`` with ``m1 = -sigma grad_l1_upper / sqrt(d)`` and
      ``m2 = sigma sqrt(max(grad_l2_lower^2 - grad_l1_upper^2 / d, 0))``. It is never below
      (l2 radius from the same bounds) / sqrt(d). 0 where p_lower <= 1/2; NaN (ValueError outside
      jit) for contradictory bounds (``grad_l1_upper < grad_l2_lower`` or
      ``sigma grad_l2_lower > phi(Phi^-1(p_lower))``) or malformed input.

    Example:
      >>> from smoothjax.first_order import linf_radius
      >>> print(f"{float(linf_radius(0.9, 0.3, 1.2, dim=16, sigma=0.5)):.4f}")
      0.1647
    """
    _check_inputs(p_lower, grad_l2_lower, grad_l1_upper, sigma, "grad_l1_upper")
    _check_dim("dim", dim)
    radius, bad, _ = _radius(p_lower, grad_l2_lower, grad_l1_upper, sigma, jnp.sqrt(as_float(dim)),
                             require_dual_ge_l2=True)
    _raise_if_contradictory(
        bad, "The gradient bounds contradict each other or p_lower: need grad_l1_upper >= grad_l2_lower and "
        "sigma * grad_l2_lower <= phi(Phi^-1(p_lower)) (a confidence bound has failed).")
    return radius


def _subspace(p_lower, grad_l2_lower, proj_dual_norm_upper, sigma, p, subspace_dim, diagnostics):
    """:func:`subspace_radius` (radius, converged mask or None)."""
    if isinstance(p, str):
        if p.lower() not in ("inf", "infinity"):
            raise ValueError(f"p must be 1, 2 or inf, got {p!r}.")
        p = math.inf
    if p not in (1, 2, math.inf):
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}.")
    _check_inputs(p_lower, grad_l2_lower, proj_dual_norm_upper, sigma, "proj_dual_norm_upper")
    if p == math.inf:
        if subspace_dim is None:
            raise ValueError("subspace_dim (the dimension d_S of the subspace) is required for p = inf.")
        _check_dim("subspace_dim", subspace_dim)
        length = jnp.sqrt(as_float(subspace_dim))
    else:
        length = 1.0
    radius, bad, converged = _radius(p_lower, grad_l2_lower, proj_dual_norm_upper, sigma, length,
                                     diagnostics=diagnostics)
    _raise_if_contradictory(bad, _CONTRADICTS_P)
    return radius, converged


@keyword_only_shim("sigma")
def subspace_radius(p_lower: ArrayLike, grad_l2_lower: ArrayLike, proj_dual_norm_upper: ArrayLike, *,
                    sigma: ArrayLike, p: float | str = 2, subspace_dim: ArrayLike | None = None) -> jax.Array:
    """Certified lp radius over a subspace S (first paper, Corollary 3.4, with the 1/sqrt(d_S) fix).

    Perturbations are restricted to S (for p = 1 or inf, S is spanned by ``subspace_dim``
    coordinate axes, e.g. one colour channel; for p = 2 any linear subspace).

    Args:
      p_lower: lower confidence bound of g(x), in [0, 1].
      grad_l2_lower: lower bound of ||grad g(x)||_2 (full gradient), 1/input units.
      proj_dual_norm_upper: upper bound of ||P_S grad g(x)||_{p'} (p' dual to p: inf for p = 1,
        2 for p = 2, 1 for p = inf), 1/input units.
      sigma: noise standard deviation, input units (keyword-only; passing it positionally still
        works but is deprecated).
      p: 1, 2 or inf (``math.inf``, ``np.inf`` or the string ``"inf"``); static.
      subspace_dim: d_S, needed for p = inf (a number or an array), ignored otherwise.

    Returns:
      The radius R (input units) such that every x' = x + delta, delta in S, ||delta||_p < R, is
      classified like x: ``R = sigma R_v(q, m1, m2) / n`` with n = 1 (p = 1, 2) or sqrt(d_S)
      (p = inf), ``m1 = -sigma b / n``, ``m2 = sigma sqrt(max(l^2 - (b / n)^2, 0))``,
      b = proj_dual_norm_upper, l = grad_l2_lower. With S the whole space this is :func:`l1_radius`
      (p = 1), :func:`linf_radius` (p = inf, without its l1 >= l2 consistency check) and, for p = 2
      with b an upper bound of ||grad g||_2, the SoS radius. 0 where p_lower <= 1/2; ``inf`` where
      b = 0 and sigma l = M (g is constant along S); NaN (ValueError outside jit) where
      ``sigma grad_l2_lower > phi(Phi^-1(p_lower))`` or the input is malformed.

    Example:
      >>> import math
      >>> from smoothjax.first_order import subspace_radius
      >>> print(f"{float(subspace_radius(0.9, 0.3, 0.6, sigma=0.5, p=math.inf, subspace_dim=4)):.4f}")
      0.3294
    """
    return _subspace(p_lower, grad_l2_lower, proj_dual_norm_upper, sigma, p, subspace_dim, False)[0]


@keyword_only_shim("sigma")
def subspace_radius_solution(p_lower: ArrayLike, grad_l2_lower: ArrayLike, proj_dual_norm_upper: ArrayLike, *,
                             sigma: ArrayLike, p: float | str = 2,
                             subspace_dim: ArrayLike | None = None) -> RadiusSolution:
    """:func:`subspace_radius` and where its Theorem 3 solve converged: a :class:`RadiusSolution`.

    Same arguments, same checks and the same radius, bitwise; ``converged`` (bool, the radius's
    shape) is False where the directional-radius solve ran out of its budget (very near the arc
    max(m1, 0)^2 + m2^2 = M^2, or p_lower within ~1e-5 of 1), where the radius is certified but
    possibly loose. Not differentiable (use :func:`subspace_radius` for gradients).

    Example:
      >>> import math
      >>> from smoothjax.first_order import subspace_radius_solution
      >>> sol = subspace_radius_solution(0.9, 0.3, 0.6, sigma=0.5, p=math.inf, subspace_dim=4)
      >>> print(f"{float(sol.radius):.4f}", bool(sol.converged))
      0.3294 True
    """
    radius, converged = _subspace(p_lower, grad_l2_lower, proj_dual_norm_upper, sigma, p, subspace_dim, True)
    return RadiusSolution(radius=radius, converged=converged)


def _check_dim(name, dim):
    a = None if not _validation.is_concrete(dim) else np.asarray(dim)
    if a is not None and (np.any(np.isnan(a.astype(float))) or np.any(a < 1)):
        raise ValueError(f"{name} must be a dimension >= 1, got {a!r}.")
