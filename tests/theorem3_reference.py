"""Independent high-precision reference for Theorem 3 of the first paper (Mohapatra et al. 2020).

Pure NumPy/SciPy (``scipy.integrate.quad`` / ``quad_vec`` and ``scipy.optimize``), written from
the paper, not from ``smoothjax.theorem3``; slow (tens of milliseconds per ``p_lower``, about a
second per directional radius) but accurate to about 1e-12 on ``p_lower``.

Derivation (checked here, used throughout)
------------------------------------------
Work in units of sigma: h(z) = f(x + sigma z) in [0, 1], Z ~ N(0, I). Put the first axis along the
unit vector v and the second along the part of grad g(x) orthogonal to v. Then
``g(x) = E[h(Z)]``, ``sigma v.grad g = E[Z1 h(Z)]``, ``sigma ||grad g - (v.grad g) v|| = E[Z2 h(Z)]``,
and ``g(x + sigma r v) = E[h(Z + r e1)] = E[h(Z) L(Z1)]`` with ``L(x) = exp(r x - r^2 / 2)``.
Theorem 3 is the linear program

    p_lower(r) = min_h E[h L]   s.t.   E[h] >= q,  E[Z1 h] >= m1,  E[Z2 h] >= m2,  0 <= h <= 1.

Generalized Neyman-Pearson (multipliers lam = (lam0, lam1, lam2) >= 0): the minimiser is
h = 1{lam0 + lam1 Z1 + lam2 Z2 > L(Z1)} = 1{Z2 > -c(Z1)} with
c(x) = c0 + c1 x + c2 e^{r x}, c0 = lam0/lam2, c1 = lam1/lam2, c2 = -e^{-r^2/2}/lam2 < 0.
Integrating Z2 out:  E[h] = E[Phi(c(Z1))]  (eq. 4),  E[Z1 h] = E[Z1 Phi(c(Z1))]  (eq. 5b),
E[Z2 h] = E[phi(c(Z1))]  (eq. 5a), and, since phi(x) L(x) = phi(x - r),

    p_lower(r) = integral phi(x - r) Phi(c(x)) dx.

When the three-equation solution has c1 < 0 (lam1 < 0 is not allowed for the inequality
E[Z1 h] >= m1), the m1 constraint is slack and the minimiser is the two-equation fallback
c(x) = c0 + c2 e^{r x} (lam1 = 0). Weak duality: for ANY lam >= 0 and any feasible h,
E[h L] >= lam.(q, m1, m2) - E[(lam0 + lam1 Z1 + lam2 Z2 - L(Z1))_+], and integrating Z2 out,
E[(a + lam2 Z2)_+] = a Phi(a/lam2) + lam2 phi(a/lam2); equality at the optimum.

Well-conditioned parametrisation used for the solve (the c's cancel as r -> 0 and blow up as
m2 -> 0):

* three-equation branch: c(x) = u(x) / tau, u(x) = alpha + beta x - s_r(x),
  s_r(x) = (e^{r x} - 1 - r x) / r^2 (-> x^2/2 as r -> 0), tau > 0. Then
  c2 = -1/(r^2 tau), c1 = (beta + 1/r)/tau, c0 = (alpha + 1/r^2)/tau, and
  lam = e^{-r^2/2} (1 + alpha r^2, r (1 + beta r), r^2 tau). c1 >= 0  <=>  beta >= -1/r.
* fallback: u(x) = alpha - e_r(x), e_r(x) = (e^{r x} - 1)/r (-> x), c2 = -1/(r tau),
  c0 = (alpha + 1/r)/tau, c1 = 0, lam = e^{-r^2/2} (1 + alpha r, 0, r tau).

As tau -> 0 (m2 -> 0), Phi(c) -> 1{u > 0}: the three-equation branch becomes the band
1{w2 < Z1 < w1} of Corollary 3.1 / second paper Theorem 1 (SoS), the fallback the half-space
1{Z1 < Phi^-1(q)} (Cohen). m2 = 0 is solved in closed form by those.

Conventions: M = phi(Phi^-1(q)); feasible (m1, m2) satisfy 0 <= m2 <= M and, above the
fallback threshold, m1^2 + m2^2 <= M^2 (m1 <= M). Any m1 at or below the fallback threshold
T(r, q, m2) (the value of E[Z1 Phi(c)] at the fallback solution) gives the fallback value. At
m2 = M, p_lower(r) = q for all r. On the upper arc m1 = +sqrt(M^2 - m2^2) the only feasible h is the
half-space with normal (m1, m2)/M and p_lower(r) = Phi(Phi^-1(q) + r m1/M).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, special

SQRT2 = math.sqrt(2.0)
SQRT2PI = math.sqrt(2.0 * math.pi)
X_HALF_WIDTH = 14.0  # phi(14) ~ 1e-43: integrals over [-14, 14] (or around r) are exact to double precision
QUAD_EPSABS = 1e-14
QUAD_EPSREL = 1e-13
QUAD_LIMIT = 400


# ----------------------------------------------------------------------------- scalar helpers
def _Phi(c: float) -> float:
    return 0.5 * math.erfc(-c / SQRT2)


def _phi(c: float) -> float:
    if not (abs(c) < 40.0):
        return 0.0
    return math.exp(-0.5 * c * c) / SQRT2PI


def _cphi(c: float) -> float:
    if not (abs(c) < 40.0):
        return 0.0
    return c * math.exp(-0.5 * c * c) / SQRT2PI


def _s(x: float, r: float) -> float:
    """(e^{r x} - 1 - r x) / r^2, stable for small r x, +inf when e^{r x} overflows."""
    t = r * x
    if abs(t) < 1e-3:
        return x * x * (0.5 + t * (1 / 6 + t * (1 / 24 + t * (1 / 120 + t / 720))))
    if t > 700.0:
        return math.inf
    return (math.expm1(t) - t) / (r * r)


def _ds(x: float, r: float) -> float:
    """s_r'(x) = (e^{r x} - 1) / r."""
    return _e(x, r)


def _e(x: float, r: float) -> float:
    """(e^{r x} - 1) / r (-> x as r -> 0)."""
    if r == 0.0:
        return x
    t = r * x
    if t > 700.0:
        return math.inf
    return math.expm1(t) / r


def max_grad(q: float) -> float:
    """M = phi(Phi^-1(q)): the largest sigma ||grad g|| of any smoothed classifier with g(x) = q."""
    return float(np.exp(-0.5 * special.ndtri(q) ** 2) / SQRT2PI)


# ----------------------------------------------------------------------------- the system
@dataclass(frozen=True)
class ReferenceSolution:
    """Solution of Theorem 3 at one (r, q, m1, m2).

    branch: "three" (3 equations, c1 >= 0), "fallback" (2 equations, c1 = 0), "band" (m2 = 0, three-
    equation limit tau -> 0), "halfspace" (m2 = 0 and m1 <= -M: Cohen), "boundary" (m2 = M: p = q),
    "arc" (upper arc of the disk: tilted half-space).
    alpha, beta, tau: the stable parametrisation (see module docstring); NaN where not applicable.
    c0, c1, c2: the paper's coefficients (inf where the limit is a step).
    lam: Lagrange multipliers (lam0, lam1, lam2) = (dp/dq, dp/dm1, dp/dm2) by the envelope theorem.
    p_lower: the lower bound of g(x + sigma r v).
    residual: max |constraint error| measured by an independent quad() after the solve.
    """

    r: float
    q: float
    m1: float
    m2: float
    branch: str
    alpha: float
    beta: float
    tau: float
    c0: float
    c1: float
    c2: float
    lam: tuple
    p_lower: float
    residual: float


def _u(x, r, alpha, beta, fallback):
    if fallback:
        return alpha - _e(x, r)
    return alpha + beta * x - _s(x, r)


def _du(x, r, beta, fallback):
    if fallback:
        return -math.exp(min(r * x, 700.0))
    return beta - _ds(x, r)


def _roots(r, alpha, beta, fallback):
    """Zeros of u (at most 2: u is concave, decreasing in the fallback), and the maximiser of u."""
    f = lambda x: _u(x, r, alpha, beta, fallback)  # noqa: E731
    roots = []
    xmax = None
    if fallback:
        lo, hi = -1.0, 1.0
        while f(lo) <= 0 and lo > -1e6:
            lo *= 2
        while f(hi) >= 0 and hi < 1e6:
            hi *= 2
        if f(lo) > 0 > f(hi):
            roots.append(optimize.brentq(f, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500))
        return roots, xmax
    # concave: maximum where beta = s'(x) = (e^{rx}-1)/r
    if r == 0.0:
        xmax = beta
    elif 1.0 + r * beta > 0.0:
        xmax = math.log1p(r * beta) / r
    else:
        return roots, xmax  # u decreasing everywhere (c1 <= 0): not used on this branch
    if f(xmax) <= 0:
        return roots, xmax
    step = 1.0
    lo = xmax - step
    while f(lo) > 0 and step < 1e6:
        step *= 2
        lo = xmax - step
    step = 1.0
    hi = xmax + step
    while f(hi) > 0 and step < 1e6:
        step *= 2
        hi = xmax + step
    if f(lo) < 0:
        roots.append(optimize.brentq(f, lo, xmax, xtol=1e-15, rtol=1e-15, maxiter=500))
    if f(hi) < 0:
        roots.append(optimize.brentq(f, xmax, hi, xtol=1e-15, rtol=1e-15, maxiter=500))
    return roots, xmax


def _break_points(r, alpha, beta, tau, fallback, lo, hi):
    """Points where Phi(c(x)) changes fast: the zeros of u and a few transition widths around them."""
    roots, xmax = _roots(r, alpha, beta, fallback)
    pts = [0.0]
    if xmax is not None:
        pts.append(xmax)
    for x0 in roots:
        slope = abs(_du(x0, r, beta, fallback))
        width = tau / max(slope, 1e-300)
        for k in (0.0, 1.0, 3.0, 8.0, 20.0, 50.0):
            pts.extend((x0 - k * width, x0 + k * width))
    pts = sorted({p for p in pts if lo < p < hi})
    return pts


_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


def _nodes(segs, panel):
    """Composite 24-point Gauss-Legendre nodes/weights over consecutive segments, panels <= panel long."""
    xs, ws = [], []
    for a, b in zip(segs[:-1], segs[1:]):
        n = max(1, int(math.ceil((b - a) / panel)))
        edges = np.linspace(a, b, n + 1)
        half = 0.5 * np.diff(edges)[:, None]
        mid = 0.5 * (edges[:-1] + edges[1:])[:, None]
        xs.append((mid + half * _GL_X).ravel())
        ws.append((half * _GL_W).ravel())
    return np.concatenate(xs), np.concatenate(ws)


def _u_vec(x, r, alpha, beta, fallback):
    t = np.minimum(r * x, 700.0)
    if r == 0.0:
        e = x
        s = 0.5 * x * x
    else:
        e = np.expm1(t) / r
        small = np.abs(t) < 1e-3
        s = np.where(small, x * x * (0.5 + t * (1 / 6 + t * (1 / 24 + t * (1 / 120 + t / 720)))),
                     (np.expm1(t) - t) / (r * r))
    if fallback:
        return alpha - e
    return alpha + beta * x - s


def _moments(r, alpha, beta, tau, fallback, with_jac):
    """E[Phi(c)], E[Z1 Phi(c)], E[phi(c)] (and the Jacobian wrt (alpha, beta, log tau)).

    Composite Gauss-Legendre (24 nodes per panel) on panels split at the zeros of u and at several
    transition widths tau/|u'| around them: used inside the root solve; the converged solution is
    re-checked with adaptive scalar quad() in :func:`_check_residual`.
    """
    lo, hi = -X_HALF_WIDTH, X_HALF_WIDTH
    pts = _break_points(r, alpha, beta, tau, fallback, lo, hi)
    panel = min(0.5, 1.0 / max(r, 1e-300))
    x, wq = _nodes([lo] + pts + [hi], panel)
    w = wq * np.exp(-0.5 * x * x) / SQRT2PI
    c = _u_vec(x, r, alpha, beta, fallback) / tau
    c = np.maximum(c, -1e300)
    Pc = special.ndtr(c)
    pc = np.exp(-0.5 * np.minimum(c * c, 1e4)) / SQRT2PI
    pc = np.where(np.abs(c) < 40, pc, 0.0)
    F = np.array([w @ Pc, w @ (x * Pc), w @ pc])
    if not with_jac:
        return F, None
    cpc = c * pc
    J = np.empty((3, 3))
    for i, g in enumerate((pc, x * pc, -cpc)):
        J[i] = (w @ g / tau, w @ (g * x) / tau, -(w @ (g * c)))
    return F, J


def _solve(r, q, m1, m2, fallback, x0, scaled=False):
    """Root of the constraint equations from start x0 = (alpha, [beta,] log tau).

    Newton runs in (alpha, beta, log tau) or, with ``scaled``, in (a, b, log kappa) =
    (alpha/tau, beta/tau, -log tau), i.e. c(x) = a + b x - kappa s_r(x): the better-conditioned
    variables near the disk boundary, where tau -> inf (the half-space limit). Returns the root in
    (alpha, [beta,] log tau) and the max residual.
    """
    target = np.array([q, m1, m2])
    idx = [0, 2] if fallback else [0, 1, 2]
    cols = [0, 2] if fallback else [0, 1, 2]

    def to_p1(z):
        if not scaled:
            return z
        tau = math.exp(min(-z[-1], 700.0))
        return np.concatenate([np.asarray(z[:-1]) * tau, [-z[-1]]])

    def from_p1(z):
        if not scaled:
            return np.asarray(z, float)
        tau = math.exp(z[-1])
        return np.concatenate([np.asarray(z[:-1]) / tau, [-z[-1]]])

    def unpack(z1):
        if fallback:
            return z1[0], 0.0, math.exp(min(z1[1], 700.0))
        return z1[0], z1[1], math.exp(min(z1[2], 700.0))

    def fun(z):
        z1 = to_p1(z)
        a, b, t = unpack(z1)
        if not (t > 0 and math.isfinite(t) and np.all(np.isfinite(z1))):
            return np.full(len(idx), math.inf), np.eye(len(idx))
        with np.errstate(all="ignore"):
            F, J = _moments(r, a, b, t, fallback, True)
        J = J[np.ix_(idx, cols)]
        if scaled:  # chain rule d(alpha, [beta,] log tau) / d(a, [b,] log kappa)
            n = len(idx)
            D = np.zeros((n, n))
            for i in range(n - 1):
                D[i, i] = t
                D[i, n - 1] = -z1[i]
            D[n - 1, n - 1] = -1.0
            J = J @ D
        return (F - target)[idx], J

    def norm(F):
        return float(np.max(np.abs(F))) if np.all(np.isfinite(F)) else math.inf

    # damped Newton: steps limited to 1 unit per coordinate, halved until the residual decreases
    z = from_p1(np.asarray(x0, float))
    F, J = fun(z)
    for _ in range(60):
        if norm(F) < 1e-15:
            break
        try:
            dz = np.linalg.solve(J, -F)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(dz)):
            break
        dz *= min(1.0, 1.0 / max(np.max(np.abs(dz)), 1e-300))
        step = 1.0
        while step > 1e-6:
            z_new = z + step * dz
            F_new, J_new = fun(z_new)
            if norm(F_new) < norm(F) or norm(F) < 1e-13 and norm(F_new) <= norm(F):
                break
            step *= 0.5
        else:
            break
        if norm(F_new) >= norm(F):
            break
        z, F, J = z_new, F_new, J_new
    if norm(F) > 1e-12:  # second opinion: MINPACK's hybrid method
        try:
            sol = optimize.root(fun, z, jac=True, method="hybr", options={"xtol": 1e-15})
            F2, _ = fun(sol.x)
            if norm(F2) < norm(F):
                z, F = sol.x, F2
        except (ValueError, FloatingPointError):
            pass
    return to_p1(z), norm(F)


# ----------------------------------------------------------------------------- closed forms
def band_edges(q: float, m1: float) -> tuple[float, float]:
    """The band 1{w2 < Z1 < w1} with P = q and E[Z1 1{band}] = phi(w2) - phi(w1) = m1 (|m1| < M).

    Second paper Theorem 1 in its a0-parametrisation: w2 = Phi^-1(a0), w1 = Phi^-1(a0 + q).
    """
    M = max_grad(q)
    if not (-M < m1 < M):
        raise ValueError("band needs -M < m1 < M")
    one_minus_q = 1.0 - q

    def edges(a0):
        w2 = special.ndtri(a0)
        w1 = -special.ndtri(one_minus_q - a0)  # Phi^-1(a0 + q) without losing the tail
        return w2, w1

    def g(a0):
        w2, w1 = edges(a0)
        return math.exp(-0.5 * w2 * w2) / SQRT2PI - math.exp(-0.5 * w1 * w1) / SQRT2PI - m1

    a0 = optimize.brentq(g, 0.0, one_minus_q, xtol=1e-300, rtol=1e-15, maxiter=1000)
    return edges(a0)


def sos_p_lower(r: float, q: float, m1: float) -> float:
    """m2 = 0: Phi(w1 - r) - Phi(w2 - r) for the band of :func:`band_edges` (Cohen when m1 <= -M)."""
    M = max_grad(q)
    if m1 <= -M:
        return float(special.ndtr(special.ndtri(q) - r))
    w2, w1 = band_edges(q, m1)
    return float(special.ndtr(w1 - r) - special.ndtr(w2 - r))


def sos_radius_dimensionless(q: float, grad_norm: float) -> float:
    """Second paper Theorem 1 (SoS) radius / sigma for sigma ||grad g|| = grad_norm (m1 = -grad_norm)."""
    if q <= 0.5:
        return 0.0
    return float(optimize.brentq(lambda r: sos_p_lower(r, q, -grad_norm) - 0.5, 0.0, 50.0, xtol=1e-14, rtol=1e-15))


# ----------------------------------------------------------------------------- public reference
def _p_from_params(r, alpha, beta, tau, fallback):
    lo, hi = r - X_HALF_WIDTH, r + X_HALF_WIDTH
    pts = _break_points(r, alpha, beta, tau, fallback, lo, hi) + [r]
    pts = sorted({p for p in pts if lo < p < hi})

    def f(x):
        return math.exp(-0.5 * (x - r) ** 2) / SQRT2PI * _Phi(_u(x, r, alpha, beta, fallback) / tau)

    segs = [lo] + pts + [hi]
    return float(sum(integrate.quad(f, a, b, epsabs=QUAD_EPSABS, epsrel=QUAD_EPSREL, limit=QUAD_LIMIT)[0]
                     for a, b in zip(segs[:-1], segs[1:])))


def _check_residual(r, q, m1, m2, alpha, beta, tau, fallback):
    """Independent re-measure of the constraints with scalar quad() (not quad_vec)."""
    lo, hi = -X_HALF_WIDTH, X_HALF_WIDTH
    pts = _break_points(r, alpha, beta, tau, fallback, lo, hi)
    segs = [lo] + pts + [hi]

    def integ(fn):
        return sum(integrate.quad(fn, a, b, epsabs=QUAD_EPSABS, epsrel=QUAD_EPSREL, limit=QUAD_LIMIT)[0]
                   for a, b in zip(segs[:-1], segs[1:]))

    c = lambda x: _u(x, r, alpha, beta, fallback) / tau  # noqa: E731
    w = lambda x: math.exp(-0.5 * x * x) / SQRT2PI  # noqa: E731
    e0 = integ(lambda x: w(x) * _Phi(c(x))) - q
    e2 = integ(lambda x: w(x) * _phi(c(x))) - m2
    e1 = integ(lambda x: w(x) * x * _Phi(c(x))) - m1
    return (e0, e1, e2)


def _fallback_start(r, q, m2):
    """r -> 0 fallback: c = (alpha - x)/tau with alpha/sqrt(1+tau^2) = z_q, tau/sqrt(1+tau^2) = m2/M."""
    M = max_grad(q)
    s = min(m2 / M, 1 - 1e-12)
    tau = s / math.sqrt(1 - s * s)
    alpha = special.ndtri(q) * math.sqrt(1 + tau * tau)
    return np.array([alpha, math.log(tau)])


def _three_start(r, q, m1, m2):
    """Band of (q, m1) (clipped into (-M, M)) with tau from E[phi(c)] ~ tau sum phi(w)/|u'(w)|."""
    M = max_grad(q)
    m1c = min(max(m1, -0.999 * M), 0.999 * M)
    w2, w1 = band_edges(q, m1c)
    w1 = min(w1, 12.0)
    w2 = max(w2, -12.0)
    if r == 0.0:
        beta = 0.5 * (w1 + w2)
    else:
        beta = (_s(w1, r) - _s(w2, r)) / (w1 - w2)
    alpha = _s(w1, r) - beta * w1
    denom = sum(math.exp(-0.5 * w * w) / SQRT2PI / abs(beta - _ds(w, r)) for w in (w1, w2))
    tau = max(m2, 1e-300) / max(denom, 1e-300)
    return np.array([alpha, beta, math.log(tau)])


def _validate(q, m1, m2):
    if not (0.0 < q < 1.0):
        raise ValueError(f"q must lie in (0, 1), got {q}")
    M = max_grad(q)
    if m2 < 0 or m2 > M * (1 + 1e-12):
        raise ValueError(f"m2 must lie in [0, M = {M}], got {m2}")
    if m1 > M * (1 + 1e-12):
        raise ValueError(f"m1 must be <= M = {M}, got {m1}")
    return M


TOL_SOLVE = 1e-12


def _best(attempts):
    """Run solve attempts (callables returning (z, residual)) until one reaches TOL_SOLVE."""
    best = (None, math.inf)
    for attempt in attempts:
        z, res = attempt()
        if res < best[1]:
            best = (z, res)
        if res <= TOL_SOLVE:
            break
    return best


@functools.lru_cache(maxsize=100_000)
def _fallback_solution(r, q, m2):
    start = _fallback_start(r, q, m2)

    def continuation(scaled):
        def run():
            z, res = start, math.inf
            for rr in np.linspace(0.0, r, 9)[1:]:
                z, res = _solve(float(rr), q, 0.0, m2, True, z, scaled)
            return z, res
        return run

    return _best([
        lambda: _solve(r, q, 0.0, m2, True, start),
        lambda: _solve(r, q, 0.0, m2, True, start, True),
        continuation(True),
        continuation(False),
    ])


def _halfspace_start(r, q, m1, m2, kappa):
    """Near the disk boundary: c(x) = (z_q rho + m1 x)/m2 - kappa s_r(x), rho = |(m1, m2)|, in P1."""
    rho = math.hypot(m1, m2)
    a, b = special.ndtri(q) * rho / m2, m1 / m2
    tau = 1.0 / kappa
    return np.array([a * tau, b * tau, math.log(tau)])


def _three_solution(r, q, m1, m2, start):
    attempts = []
    if start is not None:
        attempts += [lambda: _solve(r, q, m1, m2, False, start), lambda: _solve(r, q, m1, m2, False, start, True)]
    band = _three_start(r, q, m1, m2)
    attempts += [lambda: _solve(r, q, m1, m2, False, band), lambda: _solve(r, q, m1, m2, False, band, True)]
    for kappa in (0.1, 0.01, 1.0):
        attempts.append(lambda k=kappa: _solve(r, q, m1, m2, False, _halfspace_start(r, q, m1, m2, k), True))

    def continuation():  # in m2, from small values (band-like) up to the target
        z, res = _three_start(r, q, m1, m2 * 1e-3), math.inf
        for frac in np.geomspace(1e-3, 1.0, 13):
            z1, res1 = _solve(r, q, m1, float(m2 * frac), False, z)
            z2, res2 = _solve(r, q, m1, float(m2 * frac), False, z, True) if res1 > TOL_SOLVE else (z1, res1)
            z, res = (z1, res1) if res1 <= res2 else (z2, res2)
        return z, res

    attempts.append(continuation)
    return _best(attempts)


def reference_coefficients(r: float, q: float, m1: float, m2: float, *, _start=None,
                           check: bool = True) -> ReferenceSolution:
    """Solve the Theorem 3 system at (r, q, m1, m2) (dimensionless) to round-off; see module docstring.

    Raises ValueError for infeasible input (m2 outside [0, M], m1 > M, or m1 above the fallback
    threshold with m1^2 + m2^2 > M^2) or RuntimeError if the solve does not reach a 1e-11 residual.
    ``check``: re-measure the constraints with scalar adaptive quad() (``residual``; ~50 ms);
    without it ``residual`` is the solver's own (Gauss-Legendre) residual.
    """
    r, q, m1, m2 = float(r), float(q), float(m1), float(m2)
    if r < 0:
        raise ValueError("r must be >= 0")
    M = _validate(q, m1, m2)
    zq = float(special.ndtri(q))
    nan = math.nan
    er = math.exp(-0.5 * r * r)

    def make(branch, alpha=nan, beta=nan, tau=nan, c=(nan, nan, nan), lam=(nan, nan, nan), p=nan, res=0.0):
        return ReferenceSolution(r, q, m1, m2, branch, alpha, beta, tau, c[0], c[1], c[2], tuple(lam), p, res)

    if m2 >= M * (1 - 1e-14):
        if m1 > 1e-7 * M:
            raise ValueError("infeasible: m2 = M forces E[Z1 h] = 0 < m1")
        return make("boundary", p=q)
    if m2 == 0.0:
        if m1 <= -M:
            return make("halfspace", p=float(special.ndtr(zq - r)), c=(math.inf, 0.0, -math.inf))
        if m1 >= M:
            return make("arc", p=float(special.ndtr(zq + r)))
        return make("band", p=sos_p_lower(r, q, m1), c=(math.inf, math.inf, -math.inf))
    arc = math.sqrt(max(M * M - m2 * m2, 0.0))
    # fallback first: its E[Z1 Phi(c)] is the threshold
    zf, resf = _fallback_solution(r, q, m2)
    alpha_f, tau_f = zf[0], math.exp(zf[1])
    F, _ = _moments(r, alpha_f, 0.0, tau_f, True, False)
    threshold = F[1]
    if m1 <= threshold:
        if resf > 1e-11:
            raise RuntimeError(f"fallback solve did not converge (residual {resf:.2e})")
        p = _p_from_params(r, alpha_f, 0.0, tau_f, True) if r > 0 else q
        if check:
            res = max(abs(e) for i, e in enumerate(_check_residual(r, q, m1, m2, alpha_f, 0.0, tau_f, True)) if i != 1)
        else:
            res = resf
        c = ((alpha_f + 1 / r) / tau_f, 0.0, -1 / (r * tau_f)) if r > 0 else (nan, 0.0, nan)
        lam = (er * (1 + alpha_f * r), 0.0, er * r * tau_f)
        return make("fallback", alpha_f, nan, tau_f, c, lam, p, res)
    if m1 * m1 + m2 * m2 >= M * M * (1 - 1e-13):
        if m1 * m1 + m2 * m2 > M * M * (1 + 1e-12):
            raise ValueError(f"infeasible: m1^2 + m2^2 > M^2 with m1 = {m1} above the fallback threshold")
        return make("arc", p=float(special.ndtr(zq + r * m1 / M)))
    del arc
    z, res = _three_solution(r, q, m1, m2, None if _start is None else np.asarray(_start, float))
    if res > 1e-11:
        raise RuntimeError(f"three-equation solve did not converge at {(r, q, m1, m2)} (residual {res:.2e})")
    alpha, beta, tau = z[0], z[1], math.exp(z[2])
    if r > 0 and beta < -1 / r:
        raise RuntimeError("three-equation solution with c1 < 0 above the fallback threshold")
    p = _p_from_params(r, alpha, beta, tau, False)
    if check:
        res = max(abs(e) for e in _check_residual(r, q, m1, m2, alpha, beta, tau, False))
    if r > 0:
        c = ((alpha + 1 / r**2) / tau, (beta + 1 / r) / tau, -1 / (r * r * tau))
    else:
        c = (nan, nan, nan)
    lam = (er * (1 + alpha * r * r), er * r * (1 + beta * r), er * r * r * tau)
    return make("three", alpha, beta, tau, c, lam, p, res)


@functools.lru_cache(maxsize=100_000)
def reference_p_lower(r: float, q: float, m1: float, m2: float) -> float:
    """Theorem 3 lower bound of g(x + sigma r v), dimensionless inputs; accurate to ~1e-12."""
    return reference_coefficients(r, q, m1, m2, check=False).p_lower


def reference_dual_value(r: float, q: float, m1: float, m2: float, lam) -> float:
    """Weak-duality lower bound lam.(q, m1, m2) - E[(lam0 + lam1 Z1 + lam2 Z2 - e^{r Z1 - r^2/2})_+].

    Valid (<= p_lower) for every lam >= 0; equal to p_lower at the optimal multipliers.
    Computed as lam.(q,m1,m2) - integral phi(x) [a Phi(a/lam2) + lam2 phi(a/lam2)] dx with
    a(x) = lam0 + lam1 x - e^{r x - r^2/2} (lam2 = 0: integral phi(x) a_+ dx).
    """
    lam0, lam1, lam2 = (float(v) for v in lam)
    lo, hi = -X_HALF_WIDTH, X_HALF_WIDTH + max(r, 0.0)

    def a(x):
        return lam0 + lam1 * x - math.exp(min(r * x - 0.5 * r * r, 700.0))

    def f(x):
        ax = a(x)
        w = math.exp(-0.5 * x * x) / SQRT2PI
        if lam2 == 0.0:
            return w * max(ax, 0.0)
        c = ax / lam2
        return w * (ax * _Phi(c) + lam2 * _phi(c))

    # zeros of the concave a(x), to split the integration
    pts = [0.0]
    grid = np.linspace(lo, hi, 2001)
    vals = np.array([a(x) for x in grid])
    for i in np.nonzero(np.sign(vals[:-1]) != np.sign(vals[1:]))[0]:
        x0 = optimize.brentq(a, grid[i], grid[i + 1], xtol=1e-15)
        width = max(lam2, 1e-300) / max(abs(lam1 - r * math.exp(r * x0 - 0.5 * r * r)), 1e-300)
        for k in (0.0, 1.0, 3.0, 8.0, 20.0, 50.0):
            pts.extend((x0 - k * width, x0 + k * width))
    pts = sorted({p for p in pts if lo < p < hi})
    segs = [lo] + pts + [hi]
    expectation = sum(integrate.quad(f, s0, s1, epsabs=QUAD_EPSABS, epsrel=QUAD_EPSREL, limit=QUAD_LIMIT)[0]
                      for s0, s1 in zip(segs[:-1], segs[1:]))
    return lam0 * q + lam1 * m1 + lam2 * m2 - expectation


@functools.lru_cache(maxsize=100_000)
def reference_directional_radius(q: float, m1: float, m2: float) -> float:
    """Dimensionless directional robustness R_v: the r >= 0 with p_lower(r) = 1/2 (brentq, xtol 1e-13).

    0 when q <= 1/2; inf at m2 = M (p stays q) and on the upper arc with m1 >= 0 (p never decreases).
    """
    q, m1, m2 = float(q), float(m1), float(m2)
    M = _validate(q, m1, m2)
    if q <= 0.5:
        return 0.0
    if m2 >= M * (1 - 1e-14):
        if m1 > 1e-7 * M:
            raise ValueError("infeasible: m2 = M forces E[Z1 h] = 0 < m1")
        return math.inf
    if m2 == 0.0:
        if m1 >= M:
            return math.inf
        return sos_radius_dimensionless(q, -m1) if m1 > -M else float(special.ndtri(q))
    if m1 > 0 and m1 * m1 + m2 * m2 >= M * M * (1 - 1e-13):
        if m1 * m1 + m2 * m2 > M * M * (1 + 1e-12):
            raise ValueError("infeasible: m1^2 + m2^2 > M^2 above the fallback threshold")
        return math.inf
    state = {"z": None}

    def g(r):
        sol = reference_coefficients(r, q, m1, m2, _start=state["z"], check=False)
        if sol.branch == "three":
            state["z"] = np.array([sol.alpha, sol.beta, math.log(sol.tau)])
        return sol.p_lower - 0.5

    lo, hi = 0.0, max(float(special.ndtri(q)), 0.5)
    while g(hi) > 0:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(g, lo, hi, xtol=1e-13, rtol=1e-14, maxiter=200))


def reference_directional_radii(points) -> np.ndarray:
    """Vectorised-over-points helper: radii for an iterable of (q, m1, m2) (cached per point)."""
    return np.array([reference_directional_radius(float(q), float(m1), float(m2)) for q, m1, m2 in points])


def reference_p_lowers(points) -> np.ndarray:
    """p_lower for an iterable of (r, q, m1, m2) (cached per point)."""
    return np.array([reference_p_lower(float(r), float(q), float(m1), float(m2)) for r, q, m1, m2 in points])
