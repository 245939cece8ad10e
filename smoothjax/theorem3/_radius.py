"""The directional radius: Newton on r around the Theorem 3 solve, and the slot scheduler.

Fourth layer, on top of :mod:`smoothjax.theorem3._newton`. :func:`radius_batch` solves for the r
at which the certified p_lower crosses 1/2, for a batch of (q, m1, m2), as a flat state machine
(:class:`Slot`, :func:`_slot_step`) whose slots take the next problem from a queue as soon as
theirs is done.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import ndtri

from smoothjax._config import float_dtype
from smoothjax._normal import INV_SQRT_2PI, Phi, max_grad, phi
from smoothjax.theorem3._newton import (
    CONVERGED_TOL,
    RES_TOL,
    Certified,
    NewtonCarry,
    b_min,
    band_edges,
    certify,
    classify,
    newton_body,
    newton_init,
    predict_theta,
    start,
)

RADIUS_ITERS = 60  # most Newton steps on r for one radius
# Budget of Newton evaluations (moments) for one radius, all r-steps together; typical radii take
# 5-12 (see _slot_step). It is checked when an inner solve finishes, so the last solve may overrun
# it by up to 2 * NEWTON_ITERS. A radius out of budget returns the largest certified r seen,
# flagged not converged.
RADIUS_STEPS = 120

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
# float32 slope (see ``fixed`` in radius_batch): the full tolerances above are out of float32's
# reach, so there a radius also gets its implicit-function derivative when the last solve's
# residual is below _SLOPE_TOL M and r lies within _SLOPE_RSTEP r of that solve's crossing
# (measured on q in (0.55, 0.999), m1 = -a M, a in [0, 1.1], m2 in [0, 0.99 M]: float32 solves
# stop at residuals <= 2e-5 M (median 2e-8 M) and r within 3e-4 relative of the crossing, except
# solves out of budget or NaN (residual >= 2e-2 M), which keep a zero slope; the gradients are
# within 1.2e-3 of float64's at 99 % of the points, 6e-3 at worst, tests/test_float32_gradients.py).
_SLOPE_TOL = 1e-4
_SLOPE_RSTEP = 1e-3


class RadiusSetup(NamedTuple):
    """Closed forms and solver inputs of one radius problem (:func:`_radius_setup`)."""

    qs: jax.Array  # (q, m1, m2) for the solver; harmless values where special
    m1s: jax.Array
    m2s: jax.Array
    special: jax.Array  # infeasible, q <= 1/2, infinite, or Cohen's corner: not solved
    feasible: jax.Array
    cohen: jax.Array
    R_special: jax.Array  # the closed-form radius
    lam_special: jax.Array
    Pr_special: jax.Array


class BandRadius(NamedTuple):
    """The m2 = 0 band's radius and the certified lower end it gives (:func:`band_radius`)."""

    r: jax.Array  # the band's radius, where the r-iteration starts
    lo: jax.Array  # certified lower end of the bracket
    exact: jax.Array  # the band is the m2 = 0 solution to rounding: lo is the radius
    lam: jax.Array  # its multipliers (lam0, lam1, 0)
    Pr: jax.Array  # dp/dr at lo


class Slot(NamedTuple):
    """One slot of the radius state machine: a radius problem in progress."""

    b: jax.Array  # (q, m1, m2)
    edges: jax.Array  # the m2 = 0 band's edges, the Newton restart
    r: jax.Array  # current radius
    sol: Certified  # the last finished inner solve
    lo: jax.Array  # certified lower end of the bracket
    hi: jax.Array  # upper end (inf until a converged solve closes it)
    rdone: jax.Array  # r has converged
    rit: jax.Array  # r-steps
    steps: jax.Array  # moments evaluations, all r-steps together
    tol: jax.Array  # residual tolerance of the current inner solve
    inner: NewtonCarry  # the current inner solve


class SlotResult(NamedTuple):
    """What a finished slot reports (:func:`_slot_result`)."""

    R: jax.Array
    lam: jax.Array
    Pr: jax.Array
    converged: jax.Array
    slope_ok: jax.Array  # float32: the last solve is accurate to round-off (_slot_result)
    num_steps: jax.Array  # r-steps
    evaluations: jax.Array  # moments evaluations


class RadiusBatch(NamedTuple):
    """[N] arrays returned by :func:`radius_batch` (lam is [N, 3])."""

    R: jax.Array  # the radius, before R_MARGIN
    lam: jax.Array  # multipliers at R
    Pr: jax.Array  # dp/dr at R
    converged: jax.Array
    slope_ok: jax.Array  # float32: lam, Pr give the radius's derivative to round-off (as converged
    # for the closed forms; always False in float64)
    num_steps: jax.Array  # r-steps (0 for closed forms)
    evaluations: jax.Array  # moments evaluations, all r-steps together (0 for closed forms)
    special: jax.Array  # closed form: no margin to take off
    fixed: jax.Array  # zero derivative: 0, +inf, NaN and unconverged radii (float32: unless slope_ok)



def _radius_setup(q, m1, m2):
    """Closed-form cases and the start of the solve for one (scalar) radius problem."""
    m2c, M, feasible, boundary, arc, cohen = classify(q, m1, m2)
    zero = feasible & (q <= 0.5)
    infinite = feasible & ~zero & (boundary | arc)
    cohen = cohen & ~zero
    special = ~feasible | zero | infinite | cohen
    # special problems are never solved; harmless values keep their (unused) slot state finite
    qs = jnp.where(special, 0.9, q)
    Ms = max_grad(qs)
    m1s = jnp.where(special, -0.5 * Ms, m1)
    m2s = jnp.where(special, 0.5 * Ms, m2c)
    # Cohen's radius Phi^-1(q), exactly: p = Phi(Phi^-1(q) - r), dR/dq = 1 / M; the multipliers
    # and dp/dr at R give that derivative through the implicit-function rule of the radius's jvp.
    z = ndtri(q)
    R = jnp.where(zero, 0.0, jnp.where(cohen, z, jnp.inf))
    lam = jnp.where(cohen, INV_SQRT_2PI / M, 0.0) * jnp.array([1.0, 0.0, 0.0], float_dtype())
    return RadiusSetup(qs=qs, m1s=m1s, m2s=m2s, special=special, feasible=feasible, cohen=cohen,
                       R_special=jnp.where(feasible, R, jnp.nan), lam_special=lam,
                       Pr_special=jnp.where(cohen, -INV_SQRT_2PI, 0.0))


def _probit_newton_step(p, dp):
    """Newton step in r on G(r) = Phi^-1(p(r)) = 0 given p and dp/dr < 0: -G / G', G' = dp / phi(G)."""
    z = ndtri(jnp.clip(p, 1e-300, 1.0 - 1e-16))
    return -z * phi(z) / jnp.where(dp < 0, dp, -1.0)


def band_radius(q, m1, edges, iters=8):
    """Radius of the m2 = 0 problem and a certified lower end for the directional radius.

    The band [x1, x2] (:func:`band_edges`) is the m2 = 0 solution; its value at r is
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
        p = Phi(x2 - r) - Phi(x1 - r)
        dp = phi(x1 - r) - phi(x2 - r)
        step = _probit_newton_step(p, dp)
        return jnp.where(dp < 0, jnp.clip(r + step, 0.5 * r, 2.0 * r + 0.25), 2.0 * r + 0.25)

    r = jnp.maximum(lax.fori_loop(0, iters, body, cohen), cohen)
    r_lo = r * (1.0 - 1e-9)
    w1 = jnp.exp(r_lo * x1 - 0.5 * r_lo * r_lo)
    w2 = jnp.exp(r_lo * x2 - 0.5 * r_lo * r_lo)
    lam1 = (w2 - w1) / (x2 - x1)
    lam0 = w1 - lam1 * x1
    bound = (lam0 * (q - (Phi(x2) - Phi(x1))) + lam1 * (m1 - (phi(x1) - phi(x2)))
             + Phi(x2 - r_lo) - Phi(x1 - r_lo))
    ok = (bound >= 0.5 + 1e-13) & (lam0 >= 0) & (lam1 >= 0) & jnp.isfinite(bound)
    lo = jnp.where(ok, jnp.maximum(r_lo, cohen), cohen)
    # With m2 = 0 the band IS the solution: when its edges meet (q, m1) and r its crossing to
    # rounding, lo is the radius (1e-9 relative below the crossing), with multipliers (lam0, lam1)
    # and dp/dr = phi(x1 - r) - phi(x2 - r) for the implicit-function derivative.
    p_r = Phi(x2 - r) - Phi(x1 - r)
    exact = (ok & (jnp.abs(q - (Phi(x2) - Phi(x1))) <= 1e-14) & (jnp.abs(m1 - (phi(x1) - phi(x2))) <= 1e-14)
             & (jnp.abs(p_r - 0.5) <= 1e-14))
    pr = phi(x1 - lo) - phi(x2 - lo)
    return BandRadius(r=r, lo=lo, exact=exact, lam=jnp.stack([lam0, lam1, jnp.zeros_like(lam0)]), Pr=pr)


def _slot_init(qs, m1s, m2s, edges, r_start, lo):
    """Slot state at the start of a radius problem: r at the m2 = 0 band's radius r_start, the
    bracket's lower end at lo (both from :func:`band_radius`), a fresh inner solve."""
    dtype = float_dtype()
    # The solve starts at the radius of the m2 = 0 band, r_start, with lo (certified without a
    # solve, see band_radius) as the lower end of the bracket.
    r0 = jnp.maximum(r_start, 1e-6)
    th0 = start(qs, m1s, m2s, r0)
    zero_ = jnp.zeros((), dtype)
    sol0 = Certified(p=zero_, lam=jnp.zeros(3, dtype), Pr=zero_, theta=th0, use_fb=th0[1] <= b_min(r0),
                     merit=jnp.asarray(jnp.inf, dtype), num_steps=jnp.zeros((), jnp.int32),
                     J=jnp.eye(3, dtype=dtype), rhs=jnp.zeros(3, dtype), Jr=jnp.zeros(3, dtype))
    b = jnp.stack([qs, m1s, m2s])
    return Slot(
        b=b, edges=edges, r=r0, sol=sol0, lo=lo, hi=jnp.asarray(jnp.inf, dtype), rdone=jnp.asarray(False),
        rit=jnp.zeros((), jnp.int32), steps=jnp.zeros((), jnp.int32), tol=_FIRST_TOL * max_grad(qs),
        inner=newton_init(th0, sol0.use_fb, r0, m2s <= 0),
    )


def _r_update(r, sol, lo, hi):
    """Newton on G(r) = Phi^-1(p(r)) = 0 inside the bracket [lo, hi]; returns (r_next, lo, hi, done)."""
    p, Pr = sol.p, sol.Pr
    above = p >= 0.5
    lo = jnp.where(above, r, lo)  # certified: the dual value is a lower bound at any theta
    # p < 1/2 proves nothing when the solve was loose (the dual value lies below p(r) by
    # O(residual^2)): only a converged solve may close the bracket from above.
    hi = jnp.where(above | (sol.merit > CONVERGED_TOL), hi, r)
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
    or after RADIUS_ITERS r-steps or RADIUS_STEPS evaluations.
    """
    r = s.r
    inner = newton_body(s.inner, r, s.b, s.tol, s.edges)
    sol = certify(inner.st, inner.fallback, inner.it, r)
    r_next, lo, hi, rdone = _r_update(r, sol, s.lo, s.hi)
    # never stop on a loose solve (one asked for a looser tolerance but met the full one counts)
    rdone = rdone & ((s.tol <= RES_TOL) | (sol.merit <= RES_TOL))
    rit = s.rit + 1
    steps = s.steps + inner.it
    solved = inner.done
    finished = solved & (rdone | (rit >= RADIUS_ITERS) | (steps >= RADIUS_STEPS))
    # the next inner solve, at r_next
    dr = r_next - r
    theta0 = predict_theta(sol, dr)
    tol = jnp.clip((dr * sol.Pr) ** 2, RES_TOL, jnp.maximum(_TOL_CAP * max_grad(s.b[0]), RES_TOL))
    # A predicted B below -2/r means lam1 would turn negative: start on the fallback branch.
    fb0 = sol.use_fb | (theta0[1] <= b_min(r_next))
    restart = solved & ~finished
    fresh = newton_init(theta0, fb0, r_next, s.b[2] <= 0)
    # a finished inner solve updates the r-iteration's state; the others keep it
    kept = (s.sol, s.lo, s.hi, s.rdone, s.rit, s.steps)
    sol, lo, hi, rdone, rit, steps = jax.tree_util.tree_map(
        lambda a, o: jnp.where(solved, a, o), (sol, lo, hi, rdone, rit, steps), kept)
    out = Slot(
        b=s.b,
        edges=s.edges,
        r=jnp.where(restart, r_next, r),
        sol=sol, lo=lo, hi=hi, rdone=rdone, rit=rit, steps=steps,
        tol=jnp.where(restart, tol, s.tol),
        inner=jax.tree_util.tree_map(lambda a, o: jnp.where(restart, a, o), fresh, inner),
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
    sol, r = s.sol, s.r
    p, Pr = sol.p, sol.Pr
    short = jnp.where(p >= 0.5, 0.0, (0.5 - p) / jnp.maximum(-Pr, 1e-300) * 1.001)
    small = (Pr < 0) & (short <= 10.0 * _R_STOP * r)
    converged = (sol.merit <= CONVERGED_TOL) & s.rdone & small
    R = jnp.where(converged, r - short, s.lo)
    if jnp.finfo(r.dtype).bits == 32:
        # float32 (trace time): the last solve is at round-off and r within _SLOPE_RSTEP of its
        # crossing, so lam and Pr give the implicit-function derivative of the radius, to float32
        # accuracy (R itself stays the certified value above)
        step = jnp.abs(0.5 - p) / jnp.maximum(-Pr, jnp.finfo(r.dtype).tiny)
        slope_ok = ((sol.merit <= _SLOPE_TOL * max_grad(s.b[0])) & (Pr < 0) & (step <= _SLOPE_RSTEP * r)
                    & jnp.all(jnp.isfinite(sol.lam)) & jnp.isfinite(Pr) & jnp.isfinite(R))
    else:
        slope_ok = jnp.zeros_like(converged)
    return SlotResult(R=R, lam=sol.lam, Pr=Pr, converged=converged, slope_ok=slope_ok, num_steps=s.rit,
                      evaluations=s.steps)


def radius_batch(q, m1, m2, slots=_SLOTS):
    """Directional radii for 1-D arrays (q, m1, m2): the slot machine of :func:`_slot_step`.

    Returns a :class:`RadiusBatch` of [N] arrays: R, lam [N, 3], Pr, converged, num_steps
    (r-steps), evaluations (moment evaluations, all r-steps together; 0 for closed forms), special
    and fixed.
    Each problem runs the same sequence of operations whichever slot it lands in, so the result
    does not depend on the batch or the number of slots (up to rounding: each batch width
    compiles to its own vector code, measured <= 1 ulp).
    """
    n = q.shape[0]
    dtype = float_dtype()
    pre = jax.vmap(_radius_setup)(q, m1, m2)
    # the band edges take a short root solve: once per radius, not once per slot step
    edges = jax.vmap(band_edges)(pre.qs, pre.m1s)
    band = jax.vmap(band_radius)(pre.qs, pre.m1s, edges)
    r_start, lo = band.r, band.lo
    # m2 = 0: the band's radius is the answer when the band solve converged (closed form)
    band_form = ~pre.special & (pre.m2s <= 0) & band.exact
    special = pre.special | band_form
    work = ~special
    n_work = jnp.sum(work)
    order = jnp.argsort(~work, stable=True)  # the problems to solve first, in input order
    # about n / 8 slots (at least 32, at most `slots`): fewer slots than radii let the fast ones
    # hand their slot over; too few add per-step overhead (measured at n = 10^2, 10^3, 10^4)
    width = max(1, min(n, slots, max(32, n // 8)))

    def load(k):
        j = order[jnp.clip(k, 0, n - 1)]
        return jax.vmap(_slot_init)(pre.qs[j], pre.m1s[j], pre.m2s[j], edges[j], r_start[j], lo[j]), j

    state, idx = load(jnp.arange(width))
    active = jnp.arange(width) < n_work
    out = SlotResult(R=jnp.zeros(n, dtype), lam=jnp.zeros((n, 3), dtype), Pr=jnp.zeros(n, dtype),
                     converged=jnp.zeros(n, bool), slope_ok=jnp.zeros(n, bool), num_steps=jnp.zeros(n, jnp.int32),
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
    closed = pre.special
    R = jnp.where(closed, pre.R_special, jnp.where(band_form, lo, out.R))
    converged = jnp.where(closed, pre.feasible, out.converged | band_form)
    # float32 only (False in float64, where fixed below is unchanged)
    slope_ok = jnp.where(closed, pre.feasible, out.slope_ok | band_form) & (jnp.finfo(dtype).bits == 32)
    lam = jnp.where(closed[:, None], pre.lam_special, jnp.where(band_form[:, None], band.lam, out.lam))
    Pr = jnp.where(closed, pre.Pr_special, jnp.where(band_form, band.Pr, out.Pr))
    return RadiusBatch(
        R=R, lam=lam, Pr=Pr, converged=converged, slope_ok=slope_ok, num_steps=out.num_steps,
        evaluations=out.evaluations,
        # special: no margin to take off (closed forms; the band's radius already sits 1e-9 below)
        special=special,
        # radii whose derivative is zero: 0, +inf, NaN and unconverged (certified-fallback) ones;
        # in float32, unconverged ones whose last solve is at round-off (slope_ok) keep their slope
        fixed=(closed & ~pre.cohen) | ~(converged | slope_ok),
    )
