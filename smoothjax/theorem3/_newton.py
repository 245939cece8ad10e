"""Newton on the Theorem 3 optimality conditions, the branch logic and the certified dual value.

Third layer: solves I(theta) = (q, m1, m2) (:func:`smoothjax.theorem3._moments.moments`) for
theta = (A, B, eps) at one r by Levenberg-Marquardt-damped Newton on the three-equation branch or
the two-equation fallback (lam1 = 0, B = -2/r), switching branch when the KKT conditions fail;
:func:`certify` turns a Newton state into the dual value, a lower bound of p_lower whatever the
accuracy of Newton; :func:`p_lower_core` adds the closed-form cases. The states are NamedTuples
(:class:`NewtonState`, :class:`NewtonCarry`, :class:`Certified`, :class:`PLowerCore`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import ndtri

from smoothjax._config import float_dtype
from smoothjax._normal import Phi, max_grad, phi
from smoothjax.theorem3._curve import dh, h
from smoothjax.theorem3._moments import QUAD_ERR, moments

NEWTON_ITERS = 40  # most moments evaluations per branch of one solve (2 * NEWTON_ITERS in all)
RES_TOL = 1e-13  # max |residual| at which Newton stops
CONVERGED_TOL = 1e-11  # max |residual| reported as converged
_STEP_SCALE = (1.0, 3.0, 3.0)  # |dA|, 3|dB|, 3|d eps|: shifts of the curve over |x| <= 3


class NewtonState(NamedTuple):
    """Moments at theta, the residual of the branch's equations and its masked Newton system."""

    theta: jax.Array  # (A, B, eps)
    res: jax.Array  # b - I, [3]
    merit: jax.Array  # max |res| over the branch's equations
    J: jax.Array  # dI/dtheta, identity rows / columns for held coordinates
    rhs: jax.Array  # res with held equations zeroed
    P: jax.Array  # E[F w(X)]
    Pr: jax.Array  # dP/dr
    Jr: jax.Array  # d(residual)/dr along the branch, held equations zeroed


class NewtonCarry(NamedTuple):
    """Loop state of :func:`newton_body`."""

    st: NewtonState  # the best point so far
    mu: jax.Array  # Levenberg-Marquardt damping
    it: jax.Array  # moments evaluations, both branches
    phase_it: jax.Array  # moments evaluations on the current branch
    fallback: jax.Array  # on the two-equation fallback (lam1 = 0)
    switched: jax.Array  # branch switches so far
    fresh: jax.Array  # next evaluation at the state's theta itself (no step)
    done: jax.Array


class Certified(NamedTuple):
    """A Newton state's certified dual value, multipliers and diagnostics (:func:`certify`)."""

    p: jax.Array  # the dual value (NaN when not certified)
    lam: jax.Array  # multipliers (lam0, lam1, lam2) >= 0
    Pr: jax.Array  # dp/dr
    theta: jax.Array
    use_fb: jax.Array  # the fallback branch
    merit: jax.Array  # residual, the fallback's violation of E[X F] >= m1 included
    num_steps: jax.Array
    J: jax.Array  # the masked Newton system (for :func:`predict_theta`)
    rhs: jax.Array
    Jr: jax.Array


class PLowerCore(NamedTuple):
    """Scalar result of :func:`p_lower_core` (closed forms included)."""

    p: jax.Array
    lam: jax.Array
    Pr: jax.Array
    theta: jax.Array
    branch: jax.Array  # BRANCH_THREE, BRANCH_FALLBACK or BRANCH_CLOSED_FORM
    converged: jax.Array
    num_steps: jax.Array
    residual: jax.Array



def _lams(theta, r):
    A, B, eps = theta[0], theta[1], theta[2]
    e = jnp.exp(-0.5 * r * r)
    k = 0.5 * r * r * e
    return jnp.stack([e + k * A, r * e * (1.0 + 0.5 * r * B), k * eps])


def b_min(r):
    """Smallest B allowed (lam1 >= 0): -2/r."""
    return jnp.where(r > 0, -2.0 / jnp.where(r > 0, r, 1.0), -jnp.inf)


def _band_start(q, m1, m2, r):
    """The band (|X| < w, mass q) bent to the curve h, tilted and thickened to first order: theta
    = (A, B, eps), B not yet clipped to the bound -2/r."""
    w = ndtri(0.5 * (1.0 + q))
    pw = phi(w)
    hp, hm = h(w, r), h(-w, r)
    B = (hp - hm) / (2.0 * w)
    A = hp - B * w
    sp = jnp.abs(B - dh(w, r))
    sm = jnp.abs(B - dh(-w, r))
    j00 = pw * (1.0 / sp + 1.0 / sm)
    j01 = pw * w * (1.0 / sp - 1.0 / sm)
    j11 = pw * w * w * (1.0 / sp + 1.0 / sm)
    det = j00 * j11 - j01 * j01
    dA = -j01 * m1 / det
    dB = j00 * m1 / det
    eps = m2 / j00
    return jnp.stack([A + dA, B + dB, eps])


_BAND_ITERS = 8


def band_edges(q, m1):
    """Edges (x1, x2) of the band {x1 < X < x2} with P = q and E[X; band] = m1: the m2 = 0 optimum
    of the three-equation branch (Corollary 3.1's band; it does not depend on r), for -M < m1 < M.

    Safeguarded Newton in x1 on F(x1) = phi(x1) - phi(x2) - m1 with x2 = -Phi^-1(1 - q - Phi(x1)),
    increasing in x1 (F' = phi(x1) (x2 - x1)), from the symmetric band, inside the bracket
    (-40, Phi^-1(1 - q)). _BAND_ITERS steps: the band is a start for Newton on theta, it need not be
    exact (within ~1e-4 of M of the target m1 the far edge recedes to -40 and the steps slow down).
    """
    M = max_grad(q)
    m1c = jnp.clip(m1, -M * (1 - 1e-9), M * (1 - 1e-9))
    tail = 1.0 - q
    dtype = float_dtype()
    lo = jnp.asarray(-40.0, dtype)
    hi = ndtri(tail)

    def right(x):
        return -ndtri(jnp.maximum(tail - Phi(x), 1e-300))

    def body(_, c):
        x, lo, hi = c
        x2 = right(x)
        F = phi(x) - phi(x2) - m1c
        below = F < 0
        lo = jnp.where(below, x, lo)
        hi = jnp.where(below, hi, x)
        dF = phi(x) * (x2 - x)
        xn = x - F / jnp.where(dF > 0, dF, 1.0)
        x = jnp.where((dF > 0) & (xn >= lo) & (xn <= hi), xn, 0.5 * (lo + hi))
        return x, lo, hi

    x, _, _ = lax.fori_loop(0, _BAND_ITERS, body, (-ndtri(0.5 * (1.0 + q)), lo, hi))
    return jnp.stack([x, right(x)])


def _band_theta(edges, m2, r):
    """theta of the band with these edges at r (the curve through both edges), thickened to first
    order in m2 (eps = m2 / (d I0 / d eps))."""
    x1, x2 = edges[0], edges[1]
    h1, h2 = h(x1, r), h(x2, r)
    B = (h2 - h1) / (x2 - x1)
    A = h1 - B * x1
    j00 = phi(x1) / jnp.abs(B - dh(x1, r)) + phi(x2) / jnp.abs(B - dh(x2, r))
    return jnp.stack([A, B, m2 / j00])


def start(q, m1, m2, r):
    """Start: the band of :func:`_band_start`, or, tilted below lam1 = 0, the fallback's eps = 0
    limit, the half-line X < Phi^-1(q). (The exact band of :func:`band_edges` is a worse start
    here on average -- the first-order tilt and thickening match each other -- but it is the
    restart when the fallback turns out to violate E[X F] >= m1.)"""
    A, B, eps = _band_start(q, m1, m2, r)
    bmin = b_min(r)
    clamp = B <= bmin
    x0 = ndtri(q)
    A_fb = h(x0, r) - jnp.where(clamp, bmin, 0.0) * x0
    return jnp.stack([jnp.where(clamp, A_fb, A), jnp.maximum(B, bmin), eps])


def _newton_state(theta, r, b, fix_eps, fallback):
    """Moments at theta, the residual of the branch's equations and its (masked) Newton system.

    fallback: B is held at -2/r (lam1 = 0) and the m1 equation is dropped (the paper's
    two-equation system); fix_eps: eps is held at 0 and the m2 equation dropped (m2 = 0).
    """
    I, P, Pr, J, Jr = moments(theta, r)  # noqa: E741 (the paper's I)
    res = b - I
    free = jnp.stack([True, ~fallback, ~fix_eps])
    merit = jnp.max(jnp.abs(jnp.where(free, res, 0.0)))
    Jf = jnp.where(free[:, None] & free[None, :], J, jnp.eye(3, dtype=J.dtype))
    rf = jnp.where(free, res, 0.0)
    # d(residual)/dr along the branch: on the fallback B = -2/r moves with r (dB/dr = 2/r^2).
    Jr_b = Jr + jnp.where(fallback, 2.0 / (r * r), 0.0) * J[:, 1]
    return NewtonState(theta=theta, res=res, merit=merit, J=Jf, rhs=rf, P=P, Pr=Pr, Jr=jnp.where(free, Jr_b, 0.0))


def _step(st, mu):
    """Levenberg-Marquardt step (J + mu diag J) d = rhs, capped to a trust region of the curve."""
    J = st.J
    d = jnp.diagonal(J)
    d = jnp.maximum(d, 1e-30 + 1e-12 * jnp.max(d))
    step = jnp.linalg.solve(J + mu * jnp.diag(d), st.rhs)
    step = jnp.where(jnp.all(jnp.isfinite(step)), step, jnp.zeros_like(step))
    theta = st.theta
    size = jnp.max(jnp.abs(step) * jnp.asarray(_STEP_SCALE, step.dtype))
    radius = 1.0 + 0.5 * jnp.sum(jnp.abs(theta) * jnp.asarray(_STEP_SCALE, theta.dtype))
    return step * jnp.minimum(1.0, radius / jnp.maximum(size, 1e-300))


def _advance(theta, step, r, fix_eps):
    """theta + alpha step with the largest alpha <= 1 keeping B >= -2/r (landing exactly on the
    bound when it is hit) and eps >= eps/10 (eps stays 0 when it is fixed)."""
    A, B, eps = theta[0], theta[1], theta[2]
    dA, dB, de = step[0], step[1], step[2]
    bmin = b_min(r)
    room = B - bmin
    hit = (dB < 0) & (B + dB < bmin)
    alpha_b = jnp.where(hit, room / jnp.where(hit, -dB, 1.0), 1.0)
    shrink = (de < 0) & (eps + de < 0.1 * eps)
    alpha_e = jnp.where(shrink, 0.9 * eps / jnp.where(shrink, -de, 1.0), 1.0)
    alpha = jnp.clip(jnp.minimum(alpha_b, alpha_e), 0.0, 1.0)
    B_new = jnp.where(hit & (alpha_b <= alpha_e), bmin, jnp.maximum(B + alpha * dB, bmin))
    eps_new = jnp.where(fix_eps, 0.0, jnp.maximum(eps + alpha * de, 0.0))
    return jnp.stack([A + alpha * dA, B_new, eps_new])


def _clean(theta, fallback, r, fix_eps):
    """theta with B on the fallback's bound -2/r (or above it) and eps = 0 when it is fixed."""
    bmin = b_min(r)
    B = jnp.where(fallback, bmin, jnp.maximum(theta[1], bmin))
    return jnp.stack([theta[0], B, jnp.where(fix_eps, 0.0, theta[2])])


def newton_init(theta0, fallback0, r, fix_eps):
    """State of :func:`newton_body` before its first (fresh: step-free) moments evaluation."""
    dtype = theta0.dtype
    st = NewtonState(
        theta=_clean(theta0, fallback0, r, fix_eps), res=jnp.zeros(3, dtype), merit=jnp.asarray(jnp.inf, dtype),
        J=jnp.eye(3, dtype=dtype), rhs=jnp.zeros(3, dtype), P=jnp.zeros((), dtype), Pr=jnp.zeros((), dtype),
        Jr=jnp.zeros(3, dtype),
    )
    return NewtonCarry(st=st, mu=jnp.zeros((), dtype), it=jnp.zeros((), jnp.int32),
                       phase_it=jnp.zeros((), jnp.int32), fallback=jnp.asarray(fallback0),
                       switched=jnp.zeros((), jnp.int32), fresh=jnp.asarray(True), done=jnp.asarray(False))


def newton_body(c, r, b, tol, edges, max_iter=NEWTON_ITERS):
    """One iteration (one moments evaluation) of the damped Newton solve of :func:`_solve_theta`."""
    fix_eps = b[2] <= 0
    bmin = b_min(r)
    st, mu = c.st, c.mu
    step = jnp.where(c.fresh, 0.0, 1.0) * _step(st, mu)
    trial = _clean(_advance(st.theta, step, r, fix_eps), c.fallback, r, fix_eps)
    new = _newton_state(trial, r, b, fix_eps, c.fallback)
    accept = c.fresh | ((new.merit < st.merit) & jnp.isfinite(new.merit))
    st = jax.tree_util.tree_map(lambda a, o: jnp.where(accept, a, o), new, st)
    mu = jnp.where(accept, jnp.where(mu < 1e-10, 0.0, mu / 8.0), jnp.maximum(8.0 * mu, 1e-3))
    phase_it = c.phase_it + 1
    # stop at the target, at the round-off floor (a rejected step below the converged
    # tolerance), when damping no longer helps, or after max_iter steps on this branch
    floor = ~accept & (st.merit <= CONVERGED_TOL)
    at_bound = st.theta[1] <= bmin * (1.0 - 1e-12)
    # On the three-equation branch, an accepted step that lands on B = -2/r (lam1 = 0) after the
    # first steps means the solution wants lam1 < 0: go to the fallback now rather than grind
    # against the bound (the fallback's own KKT check sends it back if that was wrong).
    pinned = ~c.fallback & at_bound & accept & (phase_it >= 2)
    finished = (st.merit <= tol) | floor | (mu >= 1e12) | (phase_it >= max_iter) | pinned
    stalled = st.merit > jnp.maximum(tol, CONVERGED_TOL)
    # (the fallback may violate E[X F] >= m1 by rounding, e.g. at m1 = -M where it holds with
    # equality; the violation counts in the merit of the certified solve, see certify)
    kkt_fails = jnp.where(c.fallback, st.res[1] > CONVERGED_TOL, at_bound | stalled)
    switch = finished & kkt_fails & (c.switched < 2)
    # Back from the fallback (its m1 constraint is violated), the three-equation branch does
    # not restart at B = -2/r itself: there the left end of the region sits at -inf, J is nearly
    # singular and Newton cannot move it. It restarts from the band with the right mass and
    # first moment (:func:`band_edges`), thickened for m2.
    to_three = switch & c.fallback
    band = _band_theta(edges, b[2], r)
    st = st._replace(theta=jnp.where(to_three, _clean(band, False, r, fix_eps), st.theta))
    it = c.it + 1
    return NewtonCarry(
        st=st, mu=jnp.where(switch, 0.0, mu), it=it, phase_it=jnp.where(switch, 0, phase_it),
        fallback=c.fallback ^ switch, switched=c.switched + switch.astype(c.switched.dtype), fresh=switch,
        done=(finished & ~switch) | (it >= 2 * max_iter),
    )


def _solve_theta(r, q, m1, m2, theta0, fallback0, edges, max_iter=NEWTON_ITERS, tol=RES_TOL):
    """Levenberg-Marquardt-damped Newton on one branch's equations, switching branch once.

    Starts on the branch ``fallback0`` (True: the two-equation fallback, B held at -2/r). A trial
    point is accepted when it lowers the max-norm of the branch's residual; otherwise the damping
    mu grows (mu shrinks after each success and is dropped below 1e-10: pure Newton, quadratic
    convergence). When the branch has converged (or stalled), its KKT conditions are checked: the
    fallback needs E[X F] >= m1 (res1 <= 0), the three-equation solution B > -2/r; if they fail the
    other branch is solved from the current point (at most twice; the three-equation branch also
    hands over as soon as an accepted step is pinned at B = -2/r; it restarts from the (q, m1) band
    whose ``edges`` :func:`band_edges` gives). One moments evaluation per iteration
    (:func:`newton_body`) keeps the compiled program small. Returns (state, fallback, iterations).
    """
    b = jnp.stack([q, m1, m2])
    c = newton_init(theta0, fallback0, r, m2 <= 0)
    c = lax.while_loop(lambda c: ~c.done, lambda c: newton_body(c, r, b, tol, edges, max_iter), c)
    return c.st, c.fallback, c.it


# ---------------------------------------------------------------------------------------------
# scalar core: p_lower at one r, closed forms included

BRANCH_THREE = 0
BRANCH_FALLBACK = 1
BRANCH_CLOSED_FORM = 2
FEAS_RTOL = 1e-12


def classify(q, m1, m2):
    """(m2 clipped at 0, M, feasible, boundary, arc, cohen) for scalar inputs.

    boundary: m2 == M (p stays q); arc: m1 > 0 on the arc max(m1,0)^2 + m2^2 = M^2 (half-space
    along v); cohen: m2 == 0 and m1 <= -M (Cohen's half-space against v, p = Phi(Phi^-1(q) - r):
    the minimiser over E F >= q alone, the half-line X < Phi^-1(q), meets E[X F] = -M >= m1 and
    E[Y F] = 0, so it is optimal; for m1 within 1e-12 M above -M Cohen's value is still a valid,
    if by a hair loose, lower bound). Both are the solver's degenerate limits (a band edge at
    infinity), where Newton converges only linearly.
    """
    m2 = jnp.maximum(m2, 0.0)
    M = max_grad(jnp.clip(q, 1e-300, 1.0 - 1e-16))
    finite = jnp.isfinite(q) & jnp.isfinite(m1) & jnp.isfinite(m2)
    norm2 = jnp.maximum(m1, 0.0) ** 2 + m2 * m2
    feasible = finite & (q > 0) & (q < 1) & (m2 <= M * (1 + FEAS_RTOL)) & (norm2 <= M * M * (1 + 2 * FEAS_RTOL))
    boundary = feasible & (m2 >= M * (1 - 1e-14))
    arc = feasible & ~boundary & (m1 > 0) & (norm2 >= M * M * (1 - 2e-14))
    cohen = feasible & ~boundary & (m2 <= 0) & (m1 <= -M * (1 - 1e-12))
    return m2, M, feasible, boundary, arc, cohen


def _solve_at(r, q, m1, m2, theta0, fallback0, edges, tol=RES_TOL):
    """Solve at one r (scalar); returns the :class:`Certified` p, lam, Pr and diagnostics."""
    return certify(*_solve_theta(r, q, m1, m2, theta0, fallback0, edges, tol=tol), r)


def certify(st, use_fb, it, r):
    """The certified dual value, multipliers and diagnostics of a Newton state at r."""
    lam = _lams(st.theta, r)
    lam = lam.at[1].set(jnp.where(use_fb, 0.0, lam[1]))
    # B = -2/r gives lam1 = 0 up to rounding (~1e-17); clipping it changes F negligibly.
    ok = jnp.all(lam >= -1e-12)
    lam = jnp.maximum(lam, 0.0)
    res = jnp.where(use_fb, st.res.at[1].set(0.0), st.res)
    # The fallback is the answer only when its solution meets E[X F] >= m1 (lam1 = 0 is then
    # optimal); a violated m1 constraint counts in the residual, so it is never reported converged.
    merit = jnp.where(use_fb, jnp.maximum(st.merit, st.res[1]), st.merit)
    # The dual value, a lower bound for any lam >= 0 given exact integrals. The integrals I carry
    # a quadrature error of up to QUAD_ERR each, which the dual value multiplies by lam: near the
    # arc lam reaches 1e10, so that error is taken off explicitly (P's own error is P_MARGIN).
    p = st.P + jnp.dot(lam, res) - QUAD_ERR * jnp.sum(lam)
    ok = ok & jnp.isfinite(p)
    return Certified(
        p=jnp.where(ok, p, jnp.nan), lam=lam, Pr=st.Pr, theta=st.theta, use_fb=use_fb,
        merit=merit, num_steps=it, J=st.J, rhs=st.rhs, Jr=st.Jr,
    )


def predict_theta(sol, dr):
    """First-order predictor of the solution after r moves by dr: J d theta = res - Jr dr.

    J, res and Jr are the branch's masked Newton system at the current solution (held coordinates
    get a zero step: B follows -2/r on the fallback through ``clean`` in :func:`_solve_theta`).
    eps keeps at least a tenth of its value; a non-finite step falls back to the warm start.
    """
    theta = sol.theta
    step = jnp.linalg.solve(sol.J, sol.rhs - sol.Jr * dr)
    step = jnp.where(jnp.all(jnp.isfinite(step)), step, 0.0)
    new = theta + step
    return new.at[2].set(jnp.maximum(new[2], 0.1 * theta[2]))


def p_lower_core(r, q, m1, m2):
    """Scalar Theorem 3 solve with the closed-form cases; returns a :class:`PLowerCore`."""
    dtype = float_dtype()
    m2c, M, feasible, boundary, arc, cohen = classify(q, m1, m2)
    r_pos = r > 0
    half = arc | cohen  # half-spaces: p = Phi(Phi^-1(q) + r m1e / M)
    special = ~feasible | boundary | half | ~r_pos
    # Solve at a harmless point where the closed form applies (keeps the iteration finite).
    qs = jnp.where(special, 0.9, q)
    Ms = max_grad(qs)
    m1s = jnp.where(special, -0.5 * Ms, m1)
    m2s = jnp.where(special, 0.5 * Ms, m2c)
    rs = jnp.where(special, 1.0, r)
    edges = band_edges(qs, m1s)
    th0 = start(qs, m1s, m2s, rs)
    sol = _solve_at(rs, qs, m1s, m2s, th0, th0[1] <= b_min(rs), edges)

    z = ndtri(q)
    slope0 = jnp.maximum(m1, -jnp.sqrt(jnp.maximum(M * M - m2c * m2c, 0.0)))  # dp/dr at r = 0+
    m1e = jnp.where(cohen, -M, m1)
    p_half = Phi(z + r * m1e / M)
    p_special = jnp.where(half & r_pos, p_half, q)
    p = jnp.where(special, p_special, sol.p)
    p = jnp.where(feasible & (r >= 0) & jnp.isfinite(r), p, jnp.nan)

    # dp/dq of the half-space (exact for Cohen's; on the arc, where p also moves with m1 through
    # the arc, only the q-part at fixed m1 / M)
    lam_half = jnp.stack([phi(z + r * m1e / M) / M, jnp.zeros((), dtype), jnp.zeros((), dtype)])
    lam_special = jnp.where(half, lam_half, jnp.array([1.0, 0.0, 0.0], dtype))
    lam = jnp.where(special, lam_special, sol.lam)
    Pr_special = jnp.where(half, phi(z + r * m1e / M) * m1e / M, jnp.where(boundary, 0.0, slope0))
    Pr = jnp.where(special, Pr_special, sol.Pr)
    branch = jnp.where(special, BRANCH_CLOSED_FORM, jnp.where(sol.use_fb, BRANCH_FALLBACK, BRANCH_THREE))
    converged = jnp.where(special, feasible, (sol.merit <= CONVERGED_TOL) & jnp.isfinite(sol.p))
    return PLowerCore(
        p=p, lam=lam, Pr=Pr, theta=sol.theta, branch=branch, converged=converged,
        num_steps=jnp.where(special, 0, sol.num_steps), residual=jnp.where(special, 0.0, sol.merit),
    )
