"""The first paper's Theorem 3: first-order lower bound of the smoothed probability, its solver
and the directional radius.

Source: Mohapatra et al., "Higher-Order Certification for Randomized Smoothing" (NeurIPS 2020),
Section 3.2, Theorem 3, Propositions 1-2, Corollary 3.1.

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

float32: the solver runs in :func:`smoothjax._config.float_dtype`, which is float32 unless x64 is on;
in float32 its tolerances are not reachable and ``converged`` is usually False. For float64 turn
x64 on: ``jax.config.update("jax_enable_x64", True)``, or ``with jax.enable_x64(True):`` around the
calls. A float32 radius is taken down by :data:`F32_ROUND_ULPS` float32 ulps of
|R| + sum_i |x_i dR/dx_i| (x = q, m1, m2): the float32 solve's own rounding, carried through the
radius's sensitivity to its inputs, put it up to 1.2 such ulps (8e-5 relative at q = 0.999) above
the float64 radius at the same inputs; with the margin it stays below (tests/test_float32_gradients.py).
An unconverged float32 radius is a certified iterate, and its derivative is the
implicit-function derivative -(dp/dtheta) / (dp/dr) at the last float32 solve, provided that solve
is accurate to float32 round-off (``slope_ok`` in :mod:`smoothjax.theorem3._radius`: residual <=
1e-4 M, r within 1e-3 relative of its crossing); measured against float64 on q in (0.55, 0.999), m1
<= 0, 0 <= m2 < M (tests/test_float32_gradients.py) it is within 1e-3 relative (up to 6e-3 near q =
1, m2 = M, where dR/dq ~ 2e4). E.g. in float32 ``directional_radius(0.9, -0.05, 0.1)`` is 1.6290592
(below the float64 1.629086, so sound) with ``converged`` False, and its gradient in q is 6.455563
(float64: 6.455570). A solve that stops short of round-off (out of budget, NaN) keeps a zero
derivative, as every unconverged float64 radius does (``fixed``). So the first-order l1, linf and
subspace radii (:mod:`smoothjax.first_order`)
can be trained through in float32 too.

Layout (each module imports only the ones above it)
---------------------------------------------------
``_curve``    the curve h(x; r), its derivatives and the roots of h(x) - B x = T
``_moments``  the integrals I, P, dP/dr and their Jacobians (:mod:`smoothjax.quadrature`)
``_newton``   Newton on theta at one r, the branch logic, the certified dual value, closed forms
``_radius``   the directional radius: Newton on r and the slot scheduler
``__init__``  the public API below, with the custom_jvp rules (envelope / implicit function)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from smoothjax import _validation
from smoothjax._config import as_float
from smoothjax._normal import max_grad
from smoothjax.theorem3._newton import BRANCH_CLOSED_FORM, FEAS_RTOL, p_lower_core
from smoothjax.theorem3._radius import RadiusBatch, radius_batch

__all__ = [
    "DirectionalRadiusSolution",
    "Theorem3Solution",
    "directional_radius",
    "directional_radius_solution",
    "max_grad_norm_dimensionless",
    "theorem3_coefficients",
    "theorem3_p_lower",
]

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
    M = np.asarray(max_grad(qa), np.float64)
    m2c = np.maximum(m2a, 0.0)
    bad_m2 = m2c > M * (1 + FEAS_RTOL)
    bad_disk = np.maximum(m1a, 0.0) ** 2 + m2c**2 > M * M * (1 + 2 * FEAS_RTOL)
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


def _tangents(tangents, like):
    """The tangents of a custom_jvp rule, symbolic zeros as zero arrays shaped like ``like``."""
    return (jnp.zeros_like(like) if isinstance(t, jax.custom_derivatives.SymbolicZero) else t for t in tangents)


def _coefficients(r, q, m1, m2):
    out = p_lower_core(r, q, m1, m2)
    lam = out.lam
    e = jnp.exp(-0.5 * r * r)
    with_lam2 = lam[2] > 0
    l2 = jnp.where(with_lam2, lam[2], 1.0)
    c0 = jnp.where(with_lam2, lam[0] / l2, jnp.inf)
    c1 = jnp.where(with_lam2, lam[1] / l2, jnp.where(lam[1] > 0, jnp.inf, 0.0))
    c2 = jnp.where(with_lam2, -e / l2, -jnp.inf)
    special = out.branch == BRANCH_CLOSED_FORM
    nan = jnp.asarray(jnp.nan, c0.dtype)
    c0, c1, c2 = (jnp.where(special, nan, c) for c in (c0, c1, c2))
    p = jnp.where(special, out.p, out.p - P_MARGIN)
    return Theorem3Solution(
        c0=c0, c1=c1, c2=c2, lam=lam, theta=out.theta, p_lower=p, dp_dr=out.Pr,
        branch=out.branch, converged=out.converged, num_steps=out.num_steps,
        residual=out.residual,
    )


def theorem3_coefficients(r: ArrayLike, q: ArrayLike, m1: ArrayLike, m2: ArrayLike) -> Theorem3Solution:
    """Solve Theorem 3 at radius r (dimensionless, >= 0) for lower bounds q, m1, m2.

    Arguments broadcast against each other (any shapes); see the module docstring for the
    convention, the feasible region and the closed-form cases. Outside jit, infeasible or
    non-finite input raises ValueError; inside jit, p_lower is NaN and ``converged`` False.
    Not differentiable (use :func:`theorem3_p_lower` for gradients).

    Example:
      >>> import jax
      >>> from smoothjax.theorem3 import theorem3_coefficients
      >>> with jax.enable_x64(True):  # float64: see "float32" in the module docstring
      ...     sol = theorem3_coefficients(1.0, 0.9, -0.05, 0.1)
      >>> print(f"{float(sol.p_lower):.4f}", bool(sol.converged), int(sol.branch))
      0.7221 True 0
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
    dr, dq, dm1, dm2 = _tangents(tangents, sol.p_lower)
    lam = sol.lam
    # Envelope theorem: dp/dq = lam0, dp/dm1 = lam1, dp/dm2 = lam2 (m2 < 0 is clipped to 0), dp/dr = E[F w (X - r)].
    dm2_eff = jnp.where(as_float(m2) >= 0, dm2, 0.0)
    tangent = lam[..., 0] * dq + lam[..., 1] * dm1 + lam[..., 2] * dm2_eff + sol.dp_dr * dr
    return sol.p_lower, tangent


def theorem3_p_lower(r: ArrayLike, q: ArrayLike, m1: ArrayLike, m2: ArrayLike) -> jax.Array:
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

    Example:
      >>> import jax
      >>> from smoothjax.theorem3 import theorem3_p_lower
      >>> print(f"{float(theorem3_p_lower(1.0, 0.9, -0.05, 0.1)):.4f}")
      0.7221
      >>> dp_dq = jax.grad(theorem3_p_lower, argnums=1)(1.0, 0.9, -0.05, 0.1)
      >>> bool(dp_dq > 0)
      True
    """
    _check_inputs(q, m1, m2, r)
    return _p_lower_jit(*(as_float(a) for a in (r, q, m1, m2)))


_p_lower_jit = jax.jit(_p_lower)


def _radius_with_margin(q, m1, m2) -> tuple[jax.Array, RadiusBatch]:
    """Radii (with R_MARGIN taken off solved ones) and the solver's outputs, broadcast shapes."""
    args = [as_float(a) for a in (q, m1, m2)]
    shape = jnp.broadcast_shapes(*[a.shape for a in args])
    out = radius_batch(*[jnp.broadcast_to(a, shape).reshape(-1) for a in args])
    out = jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), out)
    R = jnp.where(out.special, out.R, out.R * (1.0 - R_MARGIN))
    if jnp.finfo(R.dtype).bits == 32:
        R = _float32_rounding_margin(R, out, args)
    return R, out


#: float32 only: radii are taken down by this many float32 ulps of |R| + sum_i |x_i dR/dx_i|
#: (x = q, m1, m2; dR/dx_i = -lam_i / Pr), the solve's own rounding carried through the radius's
#: sensitivity to its inputs (ill-conditioned near q = 1). Measured float32 excess over the float64
#: radius at the same inputs: up to 1.2 such ulps (8e-5 relative at q = 0.999), hence 8.
F32_ROUND_ULPS = 8.0


def _float32_rounding_margin(R, out, args):
    """float32 radii moved below their rounding error (see :data:`F32_ROUND_ULPS`); float64 never
    comes here. Lanes without a finite sensitivity (closed forms' 0 and inf, NaN) are unchanged
    apart from the relative part."""
    x = jnp.stack([jnp.broadcast_to(a, R.shape) for a in args], axis=-1)
    sens = jnp.sum(jnp.abs(out.lam * x), axis=-1) / jnp.abs(out.Pr)
    sens = jnp.where(jnp.isfinite(sens), sens, 0.0)
    lowered = R - F32_ROUND_ULPS * jnp.finfo(R.dtype).eps * (jnp.abs(R) + sens)
    return jnp.where(jnp.isfinite(R) & (R > 0), jnp.maximum(lowered, 0.0), R)


@jax.custom_jvp
def _directional_radius(q, m1, m2):
    return _radius_with_margin(q, m1, m2)[0]


@_directional_radius.defjvp
def _directional_radius_jvp(primals, tangents):
    q, m1, m2 = primals
    R, out = _radius_with_margin(q, m1, m2)
    dq, dm1, dm2 = _tangents(tangents, R)
    lam, Pr = out.lam, out.Pr
    dm2_eff = jnp.where(as_float(m2) >= 0, dm2, 0.0)
    dp = lam[..., 0] * dq + lam[..., 1] * dm1 + lam[..., 2] * dm2_eff
    # Implicit function theorem on p_lower(R; q, m1, m2) = 1/2.
    # An unconverged lane returns a certified iterate, not the crossing: no implicit derivative
    # exists there, and the radius is held fixed (zero tangent) rather than given a wrong slope.
    # float32 only: a lane whose last solve is accurate to float32 round-off (slope_ok) is not
    # fixed; its tangent is the implicit-function derivative at that solve (the crossing to float32
    # accuracy; measured within 1e-3 of float64's, 6e-3 near q = 1), while R stays the certified
    # value. float64 is unchanged (slope_ok is False there).
    tangent = jnp.where(out.fixed, 0.0, -dp / jnp.where(Pr < 0, Pr, -1.0))
    return R, tangent


def directional_radius(q: ArrayLike, m1: ArrayLike, m2: ArrayLike) -> jax.Array:
    """Dimensionless directional robustness R_v of the first paper (Theorem 3 + Proposition 1).

    The r >= 0 where theorem3_p_lower(r, q, m1, m2) crosses 1/2 (multiply by sigma for input
    units). 0 when q <= 1/2; +inf when m2 = M (p stays q) or (m1 > 0 on the arc, a half-space
    that never drops below q). Solved by safeguarded Newton on Phi^-1(p_lower(r)) from the radius
    of the m2 = 0 band, with a bracket and predicted, warm-started inner solves (see
    ``smoothjax.theorem3._radius``), and returned on the safe side: the certified p_lower at the
    returned radius is >= 1/2 (up to a first-order correction of at most 1e-10 relative; the dual
    value already carries a quadrature allowance scaled by the multipliers) and R_MARGIN = 1e-10
    relative is taken off. Very near the arc (max(m1,0)^2 + m2^2 within ~1e-4 of M^2, where the
    multipliers exceed 1e6) or for q within ~1e-5 of 1 the solve may not converge within its
    budget of moment evaluations (``RADIUS_STEPS``; radii near the arc with m1 > 0 are large and
    take the most, e.g. |grad| = 0.99 M at q = 0.6 takes up to 17); the radius returned there is
    the largest certified one found (never below Cohen's Phi^-1(q), and usually not below the
    m2 = 0 band's radius, certified by weak duality), sound but possibly loose
    (:func:`directional_radius_solution` reports which radii converged). l2 case (Corollary 3.1):
    m1 = -sigma ||grad g||, m2 = 0 gives the SoS radius / sigma (the band's radius, returned
    without a moments evaluation, 1e-9 relative below the crossing, when the band's edges and
    crossing converge: everywhere but within ~1e-6 M of m1 = +-M); m1 = -M (or below), m2 = 0 gives
    Cohen's Phi^-1(q), in closed form.

    Batched, the radii are solved by a fixed number of slots that take the next problem as soon as
    theirs is done, so a batch costs about the mean number of moment evaluations per radius (~7 on
    the benchmark's inputs), not the slowest radius's.

    Differentiable (first order) by the implicit function theorem:
    dR/dtheta = -(dp/dtheta) / (dp/dr) with dp/d(q, m1, m2) = lam (zero where the radius is 0,
    infinite, or an unconverged solve's certified fallback; 1 / M in q for Cohen's closed form).
    Broadcasts; outside jit infeasible input raises ValueError, inside jit it gives NaN.

    Example:
      >>> import jax
      >>> from smoothjax.theorem3 import directional_radius
      >>> with jax.enable_x64(True):  # float64: see "float32" in the module docstring
      ...     radius = directional_radius(0.9, -0.05, 0.1)
      ...     abstain = directional_radius(0.4, -0.05, 0.1)
      ...     slope = float(jax.grad(directional_radius)(0.9, -0.05, 0.1))
      >>> print(f"{float(radius):.4f}")
      1.6291
      >>> print(f"{float(abstain):.4f}")  # q <= 1/2: abstain
      0.0000
      >>> slope > 0
      True
    """
    _check_inputs(q, m1, m2)
    return _directional_radius_jit(*(as_float(a) for a in (q, m1, m2)))


_directional_radius_jit = jax.jit(_directional_radius)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DirectionalRadiusSolution:
    """:func:`directional_radius` with the solver's diagnostics; every field has the broadcast shape.

    Fields:
      radius: the radius, bitwise equal to :func:`directional_radius`'s.
      converged: the radius solve converged (True for the closed forms on feasible input: q <= 1/2,
        m2 = M, m1 > 0 on the arc, Cohen's corner and the m2 = 0 band; False for infeasible input,
        whose radius is NaN). Where False on feasible input, the radius is the largest certified
        one found: sound, possibly loose.
      steps: Newton steps on r (int32; 0 for closed forms), at most ``RADIUS_ITERS`` = 60.
      evaluations: moments evaluations, all r-steps together (int32; 0 for closed forms). The
        budget ``RADIUS_STEPS`` = 120 is checked when an inner solve finishes, so it may be
        overrun by one solve (at most ``2 * NEWTON_ITERS`` = 80 evaluations).
    """

    radius: jax.Array
    converged: jax.Array
    steps: jax.Array
    evaluations: jax.Array


def _radius_solution(q, m1, m2):
    R, out = _radius_with_margin(q, m1, m2)
    return DirectionalRadiusSolution(radius=R, converged=out.converged, steps=out.num_steps,
                                     evaluations=out.evaluations)


_radius_solution_jit = jax.jit(_radius_solution)


def directional_radius_solution(q: ArrayLike, m1: ArrayLike, m2: ArrayLike) -> DirectionalRadiusSolution:
    """:func:`directional_radius` and whether its solve converged, in how many steps.

    The same solve as :func:`directional_radius` (``radius`` is bitwise the same), returning the
    diagnostics it computes alongside: see :class:`DirectionalRadiusSolution`. Broadcasts;
    outside jit infeasible input raises ValueError, inside jit its radius is NaN and
    ``converged`` False. Not differentiable (use :func:`directional_radius` for gradients).

    Example:
      >>> import jax
      >>> from smoothjax.theorem3 import directional_radius_solution
      >>> with jax.enable_x64(True):  # float64: see "float32" in the module docstring
      ...     sol = directional_radius_solution(0.9, -0.05, 0.1)
      ...     band = directional_radius_solution(0.9, -0.1, 0.0)  # m2 = 0: closed form
      >>> print(f"{float(sol.radius):.4f}", bool(sol.converged), int(sol.evaluations) > 0)
      1.6291 True True
      >>> bool(band.evaluations == 0)
      True
    """
    _check_inputs(q, m1, m2)
    return _radius_solution_jit(*(as_float(a) for a in (q, m1, m2)))


def max_grad_norm_dimensionless(q: ArrayLike) -> jax.Array:
    """M = phi(Phi^-1(q)): the largest sigma ||grad g(x)|| of any smoothed classifier with g(x) = q.

    Example:
      >>> from smoothjax.theorem3 import max_grad_norm_dimensionless
      >>> print(f"{float(max_grad_norm_dimensionless(0.5)):.6f}")  # 1 / sqrt(2 pi)
      0.398942
    """
    return max_grad(as_float(q))
