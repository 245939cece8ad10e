"""Baselines in the style of the papers' public reference code: one certificate at a time.

These are what smoothjax is compared against in ``python -m benchmarks``. Each function takes the
statistics of ONE input as Python floats and returns one radius, the way the reference
implementations of the two papers work: a Python loop over inputs, ``scipy.stats.norm`` /
``statsmodels`` for the distribution functions, and bisection for every implicit equation.
They are written here from the papers' mathematics (none of the public code is copied) and are
deliberately straightforward, not deliberately slow: tolerances are the ones the reference code
uses (Theorem 3) or tight enough that the baseline is accurate (SoS, dipole), and brackets are
found by doubling instead of a fixed huge interval.

Units follow smoothjax: ``sigma`` is the noise std in input units, radii are in input units,
gradient norms are norms of grad g in inverse input units; the Theorem 3 functions are
dimensionless (q, m1, m2, r), as in the first paper.

Papers
------
* Cohen, Rosenfeld, Kolter (2019): radius = sigma * Phi^-1(p_lower), p_lower the one-sided
  Clopper-Pearson bound (``proportion_confint(..., alpha=2*alpha, method="beta")[0]``).
* Levine et al., "Tight second-order certificates": Theorem 1 (SoS) and Theorem 3 (dipole).
* Mohapatra et al., "Higher-order certification": Theorem 3 (three integral equations for
  c(x) = c0 + c1 x + c2 e^{r x}, two-equation fallback when c1 < 0) and Corollaries 3.2/3.3.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, roots_hermitenorm
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

# --------------------------------------------------------------------------------------------
# Cohen et al. (zeroth order)
# --------------------------------------------------------------------------------------------


def cohen_certify_one(count: int, n: int, alpha: float, sigma: float) -> float:
    """Cohen's CERTIFY tail for one input: Clopper-Pearson lower bound, then sigma * Phi^-1.

    Returns 0.0 when the bound is not above 1/2 (Cohen's code abstains there).
    """
    p_lower = proportion_confint(count, n, alpha=2 * alpha, method="beta")[0]
    if p_lower < 0.5:
        return 0.0
    return float(sigma * norm.ppf(p_lower))


# --------------------------------------------------------------------------------------------
# Levine et al. Theorem 1 (second-order smoothing, "SoS")
# --------------------------------------------------------------------------------------------


def _bisect(fn, lo: float, hi: float, tol: float, max_iter: int = 200, relative: bool = False) -> float:
    """Bisection for an increasing ``fn`` with fn(lo) <= 0 <= fn(hi); returns the midpoint once the
    bracket is at most tol wide (tol * max(1, |midpoint|) when ``relative``)."""
    for _ in range(max_iter):
        if hi - lo <= tol * (max(1.0, abs(0.5 * (lo + hi))) if relative else 1.0):
            break
        mid = 0.5 * (lo + hi)
        if fn(mid) <= 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def sos_radius_one(p_lower: float, grad_norm_upper: float, sigma: float, tol: float = 1e-9) -> float:
    """Second-order smoothing radius (Levine et al. Theorem 1) for one input.

    a0 solves phi(Phi^-1(a0)) - phi(Phi^-1(a0 + p)) = -sigma * ||grad g|| (bisection over
    a0 in [0, 1 - p]); the radius is sigma * R with Phi(Phi^-1(a0 + p) - R) - Phi(Phi^-1(a0) - R) = 1/2
    (bisection over R, the left side decreasing in R). A gradient bound at or above the largest
    possible gradient phi(Phi^-1(p)) / sigma gives Cohen's radius.
    """
    p = float(p_lower)
    if p <= 0.5:
        return 0.0
    g = sigma * float(grad_norm_upper)
    if g >= norm.pdf(norm.ppf(p)):
        return float(sigma * norm.ppf(p))

    def constraint(a0):
        return norm.pdf(norm.ppf(a0)) - norm.pdf(norm.ppf(a0 + p)) + g

    a0 = _bisect(constraint, 0.0, 1.0 - p, tol * 1e-3)
    w_hi, w_lo = norm.ppf(a0 + p), norm.ppf(a0)

    def excess(radius):  # increasing in R: 1/2 - lower bound
        return 0.5 - (norm.cdf(w_hi - radius) - norm.cdf(w_lo - radius))

    hi = 1.0
    while excess(hi) < 0.0:
        hi *= 2.0
    return float(sigma * _bisect(excess, 0.0, hi, tol))


# --------------------------------------------------------------------------------------------
# Levine et al. Theorem 3 (Gaussian dipole smoothing)
# --------------------------------------------------------------------------------------------


def dipole_radius_one(cs_lower: float, cn_lower: float, sigma: float, tol: float = 1e-9) -> float:
    """Dipole radius (Levine et al. Theorem 3) for one input.

    Lower bound at distance sigma*R: Phi(Phi^-1(C_N) - R) + Phi(Phi^-1((1 + C_S)/2) - R)
    - Phi(Phi^-1((1 - C_S)/2) - R); the radius is where it equals 1/2 (bisection over R).
    Returned: the larger of that radius and Cohen's radius sigma Phi^-1(C_S + C_N) (also valid,
    since g(x) = C_S + C_N), the same certificate ``smoothjax.dipole_radius`` computes.
    """
    cs, cn = float(cs_lower), float(cn_lower)
    if cs + cn <= 0.5:
        return 0.0
    w_n = norm.ppf(cn) if cn > 0.0 else -np.inf
    w_hi, w_lo = norm.ppf(0.5 * (1.0 + cs)), norm.ppf(0.5 * (1.0 - cs))

    def excess(radius):
        bound = norm.cdf(w_n - radius) + norm.cdf(w_hi - radius) - norm.cdf(w_lo - radius)
        return 0.5 - bound

    hi = 1.0
    while excess(hi) < 0.0:
        hi *= 2.0
    return float(sigma * max(_bisect(excess, 0.0, hi, tol), norm.ppf(cs + cn)))


# --------------------------------------------------------------------------------------------
# Mohapatra et al. Theorem 3 (first order), the way its public code solves it
# --------------------------------------------------------------------------------------------

GH_NODES = 1000  # Gauss-Hermite nodes of the reference solver
THEOREM3_TOL = 1e-3  # tolerance of every bisection in the reference solver
_NODES, _WEIGHTS = roots_hermitenorm(GH_NODES)
_WEIGHTS = _WEIGHTS / math.sqrt(2.0 * math.pi)  # E[h(X)], X ~ N(0, 1)  ~=  sum_i w_i h(x_i)
_WEIGHTED_NODES = _WEIGHTS * _NODES
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _bracket_increasing(fn, lo: float, hi: float, max_doublings: int = 40):
    """Widen [lo, hi] by doubling until fn(lo) <= 0 <= fn(hi) for an increasing fn."""
    for _ in range(max_doublings):
        if fn(lo) <= 0.0:
            break
        lo = 2.0 * lo - 1.0 if lo <= 0 else -1.0
    for _ in range(max_doublings):
        if fn(hi) >= 0.0:
            break
        hi = 2.0 * hi + 1.0 if hi >= 0 else 1.0
    return lo, hi


def _bisect_rel(fn, lo: float, hi: float, tol: float = THEOREM3_TOL, max_iter: int = 100) -> float:
    """Bisection of an increasing fn down to a bracket of width tol * max(1, |midpoint|).

    The relative stop keeps the work bounded when the coefficients are large (they grow like
    1/m2); it is also where the reference solver loses accuracy (radii a few percent small).
    """
    return _bisect(fn, lo, hi, tol, max_iter, relative=True)


class _Theorem3System:
    """The three integrals of Theorem 3 at one r over the 1000-node Gauss-Hermite rule.

    With c(x) = c0 + c1 x + c2 e^{r x}, X ~ N(0, 1):
      (4)  E[Phi(c(X))]   = q
      (5b) E[X Phi(c(X))] = m1
      (5a) E[phi(c(X))]   = m2
    and the bound p(r) = E[Phi(c(X + r))] = int phi(x - r) Phi(c(x)) dx.
    """

    def __init__(self, r: float):
        self.r = r
        with np.errstate(over="ignore"):
            self.exp_rx = np.exp(r * _NODES)
            self.exp_rx_shift = np.exp(r * (_NODES + r))

    def c(self, c0, c1, c2):
        with np.errstate(invalid="ignore", over="ignore"):
            return c0 + c1 * _NODES + c2 * self.exp_rx

    def probability(self, c0, c1, c2):
        return float(_WEIGHTS @ ndtr(self.c(c0, c1, c2)))

    def first_moment(self, c0, c1, c2):
        return float(_WEIGHTED_NODES @ ndtr(self.c(c0, c1, c2)))

    def orthogonal_moment(self, c0, c1, c2):
        with np.errstate(over="ignore"):
            c = self.c(c0, c1, c2)
            return float(_WEIGHTS @ (np.exp(-0.5 * c * c) * _INV_SQRT_2PI))

    def shifted_probability(self, c0, c1, c2):
        with np.errstate(invalid="ignore", over="ignore"):
            c = c0 + c1 * (_NODES + self.r) + c2 * self.exp_rx_shift
        return float(_WEIGHTS @ ndtr(c))

    # nested bisection: c0 inside c1 inside c2 ---------------------------------------------
    def solve_c0(self, c1, c2, q):
        fn = lambda c0: self.probability(c0, c1, c2) - q  # noqa: E731  increasing in c0
        return _bisect_rel(fn, *_bracket_increasing(fn, -1.0, 1.0))

    def solve_c1(self, c2, q, m1):
        def fn(c1):  # first moment increasing in c1 (c0 re-solved for q)
            return self.first_moment(self.solve_c0(c1, c2, q), c1, c2) - m1

        c1 = _bisect_rel(fn, *_bracket_increasing(fn, -1.0, 1.0))
        return self.solve_c0(c1, c2, q), c1

    def solve(self, q, m1, m2):
        """(c0, c1, c2) by three nested bisections, with the paper's c1 < 0 fallback."""

        def fn3(log_neg_c2):  # m2 moment decreasing in |c2|: increasing in -log|c2|
            c2 = -math.exp(-log_neg_c2)
            c0, c1 = self.solve_c1(c2, q, m1)
            return self.orthogonal_moment(c0, c1, c2) - m2

        t = _bisect_rel(fn3, *_bracket_increasing(fn3, -1.0, 1.0))
        c2 = -math.exp(-t)
        c0, c1 = self.solve_c1(c2, q, m1)
        if c1 >= 0.0:
            return c0, c1, c2

        def fn2(log_neg_c2):  # fallback c(x) = c0 + c2 e^{r x}
            c2 = -math.exp(-log_neg_c2)
            return self.orthogonal_moment(self.solve_c0(0.0, c2, q), 0.0, c2) - m2

        t = _bisect_rel(fn2, *_bracket_increasing(fn2, -1.0, 1.0))
        c2 = -math.exp(-t)
        return self.solve_c0(0.0, c2, q), 0.0, c2


def theorem3_p_lower_one(r: float, q: float, m1: float, m2: float) -> float:
    """Theorem 3 lower bound of g(x + sigma r v) for one (r, q, m1, m2), reference-code style."""
    system = _Theorem3System(float(r))
    return system.shifted_probability(*system.solve(q, m1, m2))


def directional_radius_one(q: float, m1: float, m2: float, r_max: float = 8.0) -> float:
    """Dimensionless directional radius R_v (Theorem 3 bound crosses 1/2), reference-code style.

    Bisection on r in [0, r_max] with tolerance 1e-3 around three nested bisections for
    (c2, c1, c0); every integral on a 1000-node Gauss-Hermite rule. Returns the lower end of the
    final bracket (r where the bound was still above 1/2). Capped at r_max.
    """
    if q <= 0.5:
        return 0.0
    lo, hi = 0.0, r_max
    if theorem3_p_lower_one(hi, q, m1, m2) > 0.5:
        return r_max
    while hi - lo > THEOREM3_TOL:
        mid = 0.5 * (lo + hi)
        if theorem3_p_lower_one(mid, q, m1, m2) > 0.5:
            lo = mid
        else:
            hi = mid
    return lo


def _first_order_inputs(p_lower, grad_l2_lower, grad_dual_upper, sigma):
    m1 = -sigma * grad_dual_upper
    m2 = sigma * math.sqrt(max(grad_l2_lower**2 - grad_dual_upper**2, 0.0))
    return float(p_lower), m1, m2


def l1_radius_one(p_lower, grad_l2_lower, grad_linf_upper, sigma) -> float:
    """First paper Corollary 3.2: l1 radius = sigma * R_v along the worst basis vector.

    m1 = -sigma ||grad||_inf (upper bound), m2 = sigma sqrt(||grad||_2^2 - ||grad||_inf^2)
    with the lower bound of ||grad||_2; gradients in 1/input units.
    """
    q, m1, m2 = _first_order_inputs(p_lower, grad_l2_lower, grad_linf_upper, sigma)
    return sigma * directional_radius_one(q, m1, m2)


def linf_radius_one(p_lower, grad_l2_lower, grad_l1_upper, dim, sigma) -> float:
    """First paper Corollary 3.3: linf radius along the worst unit vector s / sqrt(d), s in {-1, 1}^d.

    m1 = -sigma ||grad||_1 / sqrt(d), m2 = sigma sqrt(||grad||_2^2 - ||grad||_1^2 / d); a step
    sigma R_v along a unit vector s / sqrt(d) has linf norm sigma R_v / sqrt(d).
    """
    root_d = math.sqrt(dim)
    q, m1, m2 = _first_order_inputs(p_lower, grad_l2_lower, grad_l1_upper / root_d, sigma)
    return sigma * directional_radius_one(q, m1, m2) / root_d


# --------------------------------------------------------------------------------------------
# Loops over inputs (what a reference script does) and a fast-ndtr variant for comparison
# --------------------------------------------------------------------------------------------


def loop(fn, *columns, **kwargs) -> np.ndarray:
    """Apply a one-input baseline to every row of the given columns (a Python loop)."""
    return np.array([fn(*row, **kwargs) for row in zip(*columns)], dtype=np.float64)


__all__ = [
    "GH_NODES",
    "THEOREM3_TOL",
    "cohen_certify_one",
    "directional_radius_one",
    "dipole_radius_one",
    "l1_radius_one",
    "linf_radius_one",
    "loop",
    "sos_radius_one",
    "theorem3_p_lower_one",
]


