r"""Confidence bounds on norms of ``grad g`` from split-half means (first paper, Table 1, Thms 4-5).

Setting (Mohapatra et al., "Higher-Order Certification for Randomized Smoothing", Section 4).
``f(x) in {0, 1}`` is the indicator of the top class, ``g(x) = E f(x + w)`` with
``w ~ N(0, sigma^2 I_d)``, and ``z = w (f(x + w) - 1/2)``. Stein's lemma gives
``E z = sigma^2 grad g(x) =: beta``. The caller splits ``n`` iid samples of ``z`` into two halves
and passes their means ``X = mean_a`` (``num_a`` samples) and ``Y = mean_b`` (``num_b`` samples),
shape ``[..., d]`` (the statistics :mod:`smoothjax.sampling` returns as ``z_mean_a``,
``z_mean_b``). Every function here returns bounds on a norm of ``grad g = beta / sigma^2`` in
**inverse input units** (the smoothjax convention; the largest possible ``||grad g||_2`` at
``g = p`` is ``phi(Phi^-1(p)) / sigma``).

Sub-Gaussian constant (Theorem 4). ``k = K sigma^2`` with ``K = 1/4 + 3/sqrt(8 pi e) ~ 0.6130``
(:data:`SUBGAUSSIAN_CONSTANT`) is used as a *variance proxy in the moment-generating-function
sense*: for every vector ``u``, ``E exp(u.(z - beta)) <= exp(k ||u||^2 / 2)``. The paper gives
no proof in the text we have; we checked it numerically
(``tests/test_gradient_bounds.py::test_theorem4_constant``): for a unit ``u`` the worst case
over all classifiers of ``u.z`` given ``G = u.w`` is ``+-|G|/2`` with the sign switching at a
threshold on ``|G|`` (the maximiser of a concave problem in ``P[f = 1 | G]``), and the largest
``sup_lambda 2 log E exp(lambda (u.z - u.beta)) / lambda^2`` over that family is ``~0.4022
sigma^2`` (at ``|G|``-threshold ~2.14, lambda ~4.35/sigma), below the paper's ``0.6130 sigma^2``.
So the paper's constant is valid (about 1.5x conservative); ``sigma^2/4`` alone would not be
(the proxy must also absorb the skew). The mean of ``n`` iid such vectors has proxy ``k / n``.

Two consequences of that MGF bound carry every proof below (``xi = X - beta``,
``eta = Y - beta``, independent, proxies ``k1 = k/num_a``, ``k2 = k/num_b``, dimension ``D``):

* **Norm**: ``E exp(c ||xi||^2 / 2) = E_g E_xi exp(sqrt(c) g.xi) <= E_g exp(c k1 ||g||^2/2)
  = (1 - c k1)^(-D/2)`` (``g ~ N(0, I_D)``), i.e. ``||xi||^2 / k1`` is MGF-dominated by chi^2_D.
* **Chaos**: conditioning on ``eta`` and then using the norm bound,
  ``E exp(lam xi.eta) <= E exp(lam^2 k1 ||eta||^2 / 2) <= (1 - lam^2 k1 k2)^(-D/2)``: the MGF of
  ``sqrt(k1 k2) a.b`` for independent ``a, b ~ N(0, I_D)`` (a Gaussian chaos; no Hanson-Wright
  constant is lost).

l2 bounds (Theorem 5, corrected). ``X.Y = ||beta||^2 + beta.(xi + eta) + xi.eta``. The linear
term is sub-Gaussian with proxy ``(k1 + k2) ||beta||^2``, so it is ``>= -a ||beta||`` (and
``<= +a ||beta||``) except with probability ``alpha/2``, ``a = sqrt(2 (k1 + k2) log(2/alpha))``.
The chaos term is ``>= -t`` (``<= t``) except with probability ``alpha/2``. On the good event
``||beta||^2 - a ||beta|| - (X.Y + t) <= 0``, so solving the quadratic in ``||beta||``:

    upper = (a + sqrt(a^2 + 4 (X.Y + t))) / 2 = sqrt(X.Y + t) / (sqrt(1 + eps_u^2) - eps_u),
    lower = (-a + sqrt(a^2 + 4 (X.Y - t))) / 2 = sqrt(X.Y - t) / (sqrt(1 + eps_l^2) + eps_l),

with ``eps = a / (2 sqrt(X.Y +- t)) = sqrt((k1 + k2) log(2/alpha) / (2 (X.Y +- t)))`` (the
paper's eps) and ``lower = 0`` where ``X.Y <= t``. The paper prints the denominators as
``sqrt(1 + eps^2 -+ eps)``, which is not the root of this quadratic and makes the upper bound
too small (``~1 + eps/2`` instead of ``~1 + eps``). **Alpha split**: each of ``lower`` and
``upper`` holds on its own with probability ``>= 1 - alpha`` (alpha/2 for the linear term's tail,
alpha/2 for the chaos term's tail, on opposite sides for the two bounds); the pair holds jointly
with probability ``>= 1 - 2 alpha`` (union bound). Callers that need both should pass alpha/2.

The chaos deviation ``t`` for ``P(xi.eta < -t) <= alpha/2`` (``L = log(2/alpha)``,
``kappa = k1 k2``) depends on ``method``:

=====================  ===================================================================
``"bernstein"``        (default, proven) for ``lam^2 kappa <= 1/2``,
                       ``-log(1 - x) <= 2x`` gives ``E exp(lam xi.eta) <= exp(D kappa lam^2)``
                       (sub-exponential with ``nu^2 = 2 D kappa``, ``b = sqrt(2 kappa)``), and
                       Bernstein's tail gives ``t = sqrt(kappa) max(sqrt(4 D L), 2 sqrt(2) L)``
                       (the first branch whenever ``L <= D/2``): ``t = sqrt(4 k1 k2 D L)``.
``"chernoff"``         (proven, tighter) the exact Chernoff bound of the chaos MGF above:
                       ``t = sqrt(kappa) s`` with ``sup_lam lam s + (D/2) log(1 - lam^2) = L``
                       (solved by bisection on the float order to adjacent floats; the safe,
                       larger end is returned).
                       ~``sqrt(2 D L)`` for large ``D``, i.e. ~0.71x the Bernstein ``t``.
``"paper_theorem5"``   as printed in Theorem 5: ``t = sqrt(sqrt(2) kappa D L)``, with the printed
                       denominators ``sqrt(1 + eps^2 -+ eps)``. NOT a valid bound for general
                       ``subG(k)`` vectors: for Gaussian ``xi, eta`` with variance ``k_i`` the
                       ``alpha/2`` tail of ``xi.eta`` already needs ``~3.48 sqrt(kappa D)`` at
                       ``alpha = 5e-4`` (large ``D``, CLT) while this ``t`` is ``3.42 sqrt(kappa D)``.
``"paper_table1"``     as printed in Table 1: ``t = sqrt(sqrt(2 D) kappa L)`` (grows like
                       ``D^(1/4)`` instead of ``D^(1/2)``: badly invalid for large ``D``), with the
                       printed denominators.
=====================  ===================================================================

Only the first two are certificates; the paper forms exist to reproduce published numbers. For
the real ``z`` of a {0,1} classifier ``K`` is ~2.45x the actual per-coordinate variance ``1/4``,
which hides the Theorem 5 form's error in practice, but not Table 1's: on a half-space with
``d = 256``, ``b = 3 sigma``, ``n = 2 x 2000``, alpha = 0.05, its l2 bounds failed in ~10% of
trials per bound (``tests/test_gradient_bounds.py::test_paper_table1_fails_on_a_halfspace``).

linf and l1 bounds (Table 1, first and third columns; valid for every ``method``). With the pooled
mean ``M = (num_a X + num_b Y) / (num_a + num_b)`` (proxy ``k/n``, ``n = num_a + num_b``):

* linf: ``|M_i - beta_i| <= t`` for all ``m`` coordinates except with probability
  ``2 m exp(-n t^2 / (2k))`` (union bound), ``t = sqrt(2 k log(2m/alpha) / n)``;
  ``||M||_inf -+ t`` bound ``||beta||_inf``.
* l1: ``||M - beta||_1 <= t`` with the smaller of two deterministic (data-independent, so the
  choice costs no alpha) deviations: Table 1's union over the ``2^m`` sign vectors
  ``t_1 = sqrt(2 k m (m log 2 + log(1/alpha)) / n)``, and ``sqrt(m)`` times the chi^2 bound on
  ``||M - beta||_2`` (Laurent-Massart, which uses only the MGF domination above)
  ``t_2 = sqrt(m k (D + 2 sqrt(D log(1/alpha)) + 2 log(1/alpha)) / n)`` (~15% smaller for large
  ``m``). The paper methods use ``t_1`` only. ``||M||_1 -+ t`` bound ``||beta||_1``.

Both lower and upper of the linf (or l1) pair come from one two-sided event: they hold *jointly*
with probability ``>= 1 - alpha``.

Subspaces (Corollary 3.4). Pass the projected means (coordinates ``[..., m]`` of ``P_S X`` and
``P_S Y``, e.g. ``z_mean @ basis`` for an orthonormal basis, or the coordinates of one colour
channel) and ``subspace_dim = dim S`` (default ``m``). The l2 bounds then use ``D = dim S``
(``(P_S xi).(P_S eta)`` is a chaos in ``dim S`` dimensions); linf takes its union bound over the
``m`` coordinates passed (each has proxy ``<= k``); l1 uses ``m`` and ``D = dim S`` as above.
:func:`grad_dual_norm_upper` returns the upper bound of the dual norm ``||P_S grad g||_{p'}``
that the subspace-lp radius needs. The l2 lower bound the radii also need is that of the *full*
gradient (:func:`grad_l2_bounds` on the unprojected means).

Numerics. Computed in :func:`smoothjax._config.float_dtype` (float64 by default; float32 inputs are
promoted). The rounding error of the dot product / norms is bounded (``2 m eps sum |x_i y_i|``)
and added on the safe side, the deviations ``t`` and the results are widened by ``16 eps``
relative (so the cancellation in ``X.Y - t`` cannot round a lower bound up), so in float32
mode (x64 off) the bounds stay conservative. Bad input: outside ``jit``, NaN/inf
means, mismatched shapes, ``alpha`` outside (0, 1), ``sigma <= 0`` or a count ``< 1`` raise
``ValueError``; under ``jit`` the affected entries are NaN (never a finite wrong number).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from smoothjax._config import as_float, float_dtype
from smoothjax._deprecation import keyword_only_shim
from smoothjax._normal import max_grad as _max_grad
from smoothjax._roots import bisect_bracket as _bisect_bracket
from smoothjax._validation import (
    check_alpha,
    check_at_least_one,
    check_finite,
    check_probability,
    check_sigma,
    check_static_int,
    invalid_probability,
    invalid_sigma,
    is_concrete,
)

__all__ = [
    "SUBGAUSSIAN_CONSTANT",
    "METHODS",
    "NormBounds",
    "grad_l2_bounds",
    "grad_l1_bounds",
    "grad_linf_bounds",
    "grad_l1_upper",
    "grad_linf_upper",
    "grad_dual_norm_upper",
    "chaos_deviation",
    "sos_grad_norm_upper",
]

#: ``K`` in ``k = K sigma^2``, the first paper's Theorem 4 sub-Gaussian constant of
#: ``z = w (f(x+w) - 1/2)`` (a valid MGF variance proxy; the sharp value is ~0.4022).
SUBGAUSSIAN_CONSTANT = 0.25 + 3.0 / math.sqrt(8.0 * math.pi * math.e)

#: Accepted ``method`` names (see the module docstring).
METHODS = ("bernstein", "chernoff", "paper_theorem5", "paper_table1")
_PROVEN = ("bernstein", "chernoff")
_WIDEN = 16  # final relative widening, in units of eps


class NormBounds(NamedTuple):
    """``(lower, upper)`` bounds on a norm of ``grad g`` (1/input units), each ``[...]``.

    Example:
      >>> import numpy as np
      >>> lower, upper = grad_l2_bounds(np.array([0.05, 0.0]), np.array([0.04, 0.01]), 5000, 5000,
      ...                               sigma=0.25, alpha=0.001)
      >>> bool(lower <= upper)
      True
    """

    lower: jax.Array
    upper: jax.Array


# ----------------------------------------------------------------------------- validation


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


def _check_counts(name, x):
    if not is_concrete(x):
        return
    a = np.asarray(x, dtype=float)
    if np.any(np.isnan(a)) or np.any(a < 1) or np.any(np.isinf(a)):
        raise ValueError(f"{name} must be a sample count >= 1, got {np.asarray(x)!r}.")


def _validate(mean_a, mean_b, num_a, num_b, sigma, alpha, subspace_dim):
    """Host-side checks (skipped for tracers); return the static ``(m, D)``."""
    check_finite("mean_a", mean_a)
    check_finite("mean_b", mean_b)
    shape_a, shape_b = jnp.shape(mean_a), jnp.shape(mean_b)
    if len(shape_a) < 1 or shape_a[-1] < 1:
        raise ValueError(f"mean_a must have shape [..., d] with d >= 1, got {shape_a}.")
    if shape_a != shape_b:
        raise ValueError(f"mean_a and mean_b must have the same shape, got {shape_a} and {shape_b}.")
    _check_counts("num_a", num_a)
    _check_counts("num_b", num_b)
    check_sigma(sigma)
    check_alpha(alpha)
    m = shape_a[-1]
    dim = m if subspace_dim is None else check_static_int("subspace_dim", subspace_dim, 1)
    if dim > m:
        raise ValueError(f"subspace_dim ({dim}) cannot exceed the number of coordinates passed ({m}).")
    return m, dim


def _prepare(mean_a, mean_b, num_a, num_b, sigma, alpha):
    """Float arrays and the in-graph bad-input mask (used inside the jitted cores)."""
    x = as_float(mean_a)
    y = as_float(mean_b)
    na, nb, s, a = (as_float(v) for v in (num_a, num_b, sigma, alpha))
    # One batch shape for everything (explicit broadcasting; the values are unchanged).
    batch = jnp.broadcast_shapes(x.shape[:-1], y.shape[:-1], na.shape, nb.shape, s.shape, a.shape)
    x = jnp.broadcast_to(x, batch + x.shape[-1:])
    y = jnp.broadcast_to(y, batch + y.shape[-1:])
    na, nb, s, a = (jnp.broadcast_to(v, batch) for v in (na, nb, s, a))
    bad = (
        ~jnp.all(jnp.isfinite(x) & jnp.isfinite(y), axis=-1)
        | ~(na >= 1) | ~(nb >= 1) | ~jnp.isfinite(na) | ~jnp.isfinite(nb)
        | ~(s > 0) | ~jnp.isfinite(s)
        | ~(a > 0) | ~(a < 1)
    )
    return x, y, na, nb, s, a, bad


def _finish(lower, upper, sigma, bad):
    """Widen by a few ulps, convert beta units to grad units, flag bad entries with NaN."""
    eps = jnp.finfo(float_dtype()).eps
    s2 = sigma * sigma
    lower = jnp.maximum(lower * (1 - _WIDEN * eps) / s2, 0.0)
    upper = upper * (1 + _WIDEN * eps) / s2
    nan = jnp.asarray(jnp.nan, float_dtype())
    return NormBounds(jnp.where(bad, nan, lower), jnp.where(bad, nan, upper))


# ----------------------------------------------------------------------------- chaos deviation


def _chernoff_chaos(dim, log_inv):
    """``s`` with ``sup_lam lam s + (D/2) log(1 - lam^2) = log_inv`` (upper end of the bisection).

    Parametrised by the optimal ``lam``: ``s(lam) = D lam / (1 - lam^2)`` and the rate
    ``I(lam) = D lam^2 / (1 - lam^2) + (D/2) log(1 - lam^2)``, both increasing on (0, 1). The
    bracket of ``I(lam) >= log_inv`` on [0, 1] is closed to adjacent floats
    (:func:`smoothjax._roots.bisect_bracket`) and ``s`` taken at its upper end, the larger ``s``.
    """
    dim = as_float(dim)

    def rate(lam):
        q = lam * lam
        return dim * q / (1 - q) + 0.5 * dim * jnp.log1p(-q)

    _, hi = _bisect_bracket(lambda lam: rate(lam) >= log_inv, jnp.zeros_like(log_inv), jnp.ones_like(log_inv))
    # hi == 1 only if no lam < 1 reaches the rate (log_inv inf or NaN); then the bound is infinite (safe).
    return jnp.where(hi < 1, dim * hi / (1 - hi * hi), jnp.inf)


@keyword_only_shim("dim", "alpha_tail")
def chaos_deviation(
    k1: ArrayLike, k2: ArrayLike, *, dim: int | float, alpha_tail: ArrayLike, method: str = "bernstein"
) -> jax.Array:
    """Deviation ``t`` with ``P(xi.eta < -t) <= alpha_tail`` (and ``P(xi.eta > t) <= alpha_tail``).

    ``xi``, ``eta``: independent ``dim``-dimensional vectors, sub-Gaussian (MGF sense) with
    proxies ``k1``, ``k2`` (same units as ``X.Y``). ``alpha_tail`` is the one-sided failure
    probability (the l2 bounds pass ``alpha/2``, so ``log(1/alpha_tail) = log(2/alpha)``). See the
    module docstring for the four methods; only ``"bernstein"`` and ``"chernoff"`` are proven.

    Args:
      k1, k2: the two sub-Gaussian variance proxies (e.g. ``K sigma^2 / num_a``), broadcastable.
      dim: the dimension ``D`` of the chaos (a Python number).
      alpha_tail: one-sided failure probability in (0, 1), broadcastable.
      method: ``"bernstein"`` (default), ``"chernoff"``, ``"paper_theorem5"`` or
        ``"paper_table1"``. Static.

    Returns:
      ``t`` (units of ``X.Y``), the broadcast shape of ``k1``, ``k2`` and ``alpha_tail``.

    Example:
      >>> t = chaos_deviation(1e-4, 1e-4, dim=3, alpha_tail=0.0005)
      >>> print(f"{float(t):.4g}")
      0.00215
      >>> bool(chaos_deviation(1e-4, 1e-4, dim=3, alpha_tail=0.0005, method="chernoff") < t)
      True
    """
    _check_method(method)
    kappa = as_float(k1) * as_float(k2)
    log_inv = -jnp.log(as_float(alpha_tail))
    d = float(dim)
    if method == "bernstein":
        s = jnp.maximum(jnp.sqrt(4.0 * d * log_inv), 2.0 * math.sqrt(2.0) * log_inv)
    elif method == "chernoff":
        s = _chernoff_chaos(d, log_inv)
    elif method == "paper_theorem5":
        s = jnp.sqrt(math.sqrt(2.0) * d * log_inv)
    else:  # paper_table1
        s = jnp.sqrt(math.sqrt(2.0 * d) * log_inv)
    return jnp.sqrt(kappa) * s


# ----------------------------------------------------------------------------- public bounds


@keyword_only_shim("sigma", "alpha")
def grad_l2_bounds(
    mean_a: ArrayLike,
    mean_b: ArrayLike,
    num_a: ArrayLike,
    num_b: ArrayLike,
    *,
    sigma: ArrayLike,
    alpha: ArrayLike,
    method: str = "bernstein",
    subspace_dim: int | None = None,
) -> NormBounds:
    """Lower and upper confidence bounds on ``||grad g||_2`` (first paper Thm 5, corrected).

    Args:
      mean_a, mean_b: ``[..., m]`` split-half means of ``z = w (f(x+w) - 1/2)`` (input units; they
        estimate ``sigma^2 grad g``), or their projections on a subspace (coordinates in ``m``
        numbers; then ``||P_S grad g||_2`` is bounded).
      num_a, num_b: sample counts of the two halves (``>= 1``), broadcast with ``[...]``.
      sigma: noise std (input units), broadcast with ``[...]``.
      alpha: failure probability in (0, 1) of EACH bound (see below), broadcast with ``[...]``.
      method: ``"bernstein"`` (default), ``"chernoff"`` (both proven), ``"paper_theorem5"``,
        ``"paper_table1"`` (the paper's printed forms; not certificates). Static.
      subspace_dim: ``dim S`` when the means are projections (static int, default ``m``).

    Returns:
      :class:`NormBounds` ``(lower, upper)``, each ``[...]`` in 1/input units. ``lower`` holds with
      probability ``>= 1 - alpha`` and so does ``upper``, each on its own (alpha/2 for the linear
      term ``beta.(xi + eta)``, alpha/2 for the chaos ``xi.eta``); jointly ``>= 1 - 2 alpha``.
      ``lower = 0`` where ``X.Y <= t``. NaN marks invalid input under ``jit``.

    Math: the module docstring (``upper = (a + sqrt(a^2 + 4 (X.Y + t))) / 2``,
    ``lower = (-a + sqrt(a^2 + 4 (X.Y - t))) / 2``, ``a = sqrt(2 (k1 + k2) log(2/alpha))``,
    ``k_i = K sigma^2 / num_i``, then divided by ``sigma^2``).

    Example:
      >>> import numpy as np
      >>> mean_a, mean_b = np.array([0.05, 0.0, 0.02]), np.array([0.04, 0.01, 0.02])
      >>> bounds = grad_l2_bounds(mean_a, mean_b, 5000, 5000, sigma=0.25, alpha=0.001)
      >>> print(f"{float(bounds.lower):.4f} {float(bounds.upper):.4f}")
      0.6441 0.9415
    """
    _check_method(method)
    _, dim = _validate(mean_a, mean_b, num_a, num_b, sigma, alpha, subspace_dim)
    return _l2_core(mean_a, mean_b, num_a, num_b, sigma, alpha, method=method, dim=dim)


@functools.partial(jax.jit, static_argnames=("method", "dim"))
def _l2_core(mean_a, mean_b, num_a, num_b, sigma, alpha, *, method, dim):
    x, y, na, nb, s, alpha, bad = _prepare(mean_a, mean_b, num_a, num_b, sigma, alpha)
    m = x.shape[-1]
    eps = jnp.finfo(float_dtype()).eps
    k = SUBGAUSSIAN_CONSTANT * s * s
    k1, k2 = k / na, k / nb
    log_inv = jnp.log(2.0) - jnp.log(alpha)  # log(2/alpha): alpha/2 per term
    t = chaos_deviation(k1, k2, dim=dim, alpha_tail=alpha / 2, method=method) * (1 + _WIDEN * eps)
    xy = jnp.sum(x * y, axis=-1)
    slack = 2.0 * m * eps * jnp.sum(jnp.abs(x * y), axis=-1)  # rounding of the dot product
    hi = xy + t + slack
    lo = xy - t - slack
    if method in _PROVEN:
        a = jnp.sqrt(2.0 * (k1 + k2) * log_inv)
        upper = 0.5 * (a + jnp.sqrt(jnp.maximum(a * a + 4.0 * hi, 0.0)))
        root = jnp.sqrt(a * a + 4.0 * jnp.maximum(lo, 0.0))
        lower = jnp.where(lo > 0, 2.0 * jnp.maximum(lo, 0.0) / (a + root), 0.0)  # = (-a + root)/2, stably
    else:
        c = (k1 + k2) * log_inv / 2.0
        hi_pos = jnp.maximum(hi, 0.0)
        lo_pos = jnp.maximum(lo, 0.0)
        eps_u = jnp.sqrt(c / jnp.where(hi > 0, hi, 1.0))
        eps_l = jnp.sqrt(c / jnp.where(lo > 0, lo, 1.0))
        upper = jnp.where(hi > 0, jnp.sqrt(hi_pos) / jnp.sqrt(1.0 + eps_u**2 - eps_u), 0.0)
        lower = jnp.where(lo > 0, jnp.sqrt(lo_pos) / jnp.sqrt(1.0 + eps_l**2 + eps_l), 0.0)
    return _finish(lower, upper, s, bad)


def _pooled(x, y, na, nb):
    n = na + nb
    w_a = (na / n)[..., None]
    w_b = (nb / n)[..., None]
    return w_a * x + w_b * y, n


@keyword_only_shim("sigma", "alpha")
def grad_linf_bounds(
    mean_a: ArrayLike,
    mean_b: ArrayLike,
    num_a: ArrayLike,
    num_b: ArrayLike,
    *,
    sigma: ArrayLike,
    alpha: ArrayLike,
    method: str = "bernstein",
    subspace_dim: int | None = None,
) -> NormBounds:
    """Lower and upper bounds on ``||grad g||_inf`` (first paper, Table 1, third column).

    ``||M||_inf -+ t`` with the pooled mean ``M`` and ``t = sqrt(2 k log(2m/alpha) / n)``,
    ``k = K sigma^2``, ``n = num_a + num_b``, ``m`` the number of coordinates passed (union bound
    over the ``2m`` one-sided coordinate tails), divided by ``sigma^2``. The pair holds jointly with
    probability ``>= 1 - alpha``. Identical for every ``method`` (accepted for a uniform interface).
    ``subspace_dim`` is accepted and validated but not needed (each projected coordinate has
    proxy ``<= k``). Shapes, units and NaN flags as :func:`grad_l2_bounds`.

    Example:
      >>> import numpy as np
      >>> mean_a, mean_b = np.array([0.05, 0.0, 0.02]), np.array([0.04, 0.01, 0.02])
      >>> bounds = grad_linf_bounds(mean_a, mean_b, 5000, 5000, sigma=0.25, alpha=0.001)
      >>> print(f"{float(bounds.lower):.4f} {float(bounds.upper):.4f}")
      0.5894 0.8506
    """
    _check_method(method)
    _validate(mean_a, mean_b, num_a, num_b, sigma, alpha, subspace_dim)
    return _linf_core(mean_a, mean_b, num_a, num_b, sigma, alpha)


@jax.jit
def _linf_core(mean_a, mean_b, num_a, num_b, sigma, alpha):
    x, y, na, nb, s, alpha, bad = _prepare(mean_a, mean_b, num_a, num_b, sigma, alpha)
    m = x.shape[-1]
    eps = jnp.finfo(float_dtype()).eps
    mean, n = _pooled(x, y, na, nb)
    k = SUBGAUSSIAN_CONSTANT * s * s
    t = jnp.sqrt(2.0 * k * (jnp.log(2.0 * m) - jnp.log(alpha)) / n) * (1 + _WIDEN * eps)
    norm = jnp.max(jnp.abs(mean), axis=-1)
    slack = 4.0 * eps * norm
    return _finish(norm - t - slack, norm + t + slack, s, bad)


@keyword_only_shim("sigma", "alpha")
def grad_l1_bounds(
    mean_a: ArrayLike,
    mean_b: ArrayLike,
    num_a: ArrayLike,
    num_b: ArrayLike,
    *,
    sigma: ArrayLike,
    alpha: ArrayLike,
    method: str = "bernstein",
    subspace_dim: int | None = None,
) -> NormBounds:
    """Lower and upper bounds on ``||grad g||_1`` (first paper, Table 1, first column).

    ``||M||_1 -+ t`` with the pooled mean ``M``. For the proven methods ``t = min(t_1, t_2)``
    (both deterministic): Table 1's ``t_1 = sqrt(2 k m (m log 2 + log(1/alpha)) / n)`` and
    ``t_2 = sqrt(m k (D + 2 sqrt(D log(1/alpha)) + 2 log(1/alpha)) / n)`` (``sqrt(m)`` times a
    chi^2-type bound on ``||M - beta||_2``, ``D = subspace_dim``); the paper methods use ``t_1``.
    Divided by ``sigma^2``. The pair holds jointly with probability ``>= 1 - alpha``. Shapes,
    units and NaN flags as :func:`grad_l2_bounds`.

    Example:
      >>> import numpy as np
      >>> mean_a, mean_b = np.array([0.05, 0.0, 0.02]), np.array([0.04, 0.01, 0.02])
      >>> bounds = grad_l1_bounds(mean_a, mean_b, 5000, 5000, sigma=0.25, alpha=0.001)
      >>> print(f"{float(bounds.lower):.4f} {float(bounds.upper):.4f}")
      0.8900 1.3500
    """
    _check_method(method)
    _, dim = _validate(mean_a, mean_b, num_a, num_b, sigma, alpha, subspace_dim)
    return _l1_core(mean_a, mean_b, num_a, num_b, sigma, alpha, proven=method in _PROVEN, dim=dim)


@functools.partial(jax.jit, static_argnames=("proven", "dim"))
def _l1_core(mean_a, mean_b, num_a, num_b, sigma, alpha, *, proven, dim):
    x, y, na, nb, s, alpha, bad = _prepare(mean_a, mean_b, num_a, num_b, sigma, alpha)
    m = x.shape[-1]
    eps = jnp.finfo(float_dtype()).eps
    mean, n = _pooled(x, y, na, nb)
    k = SUBGAUSSIAN_CONSTANT * s * s
    log_inv = -jnp.log(alpha)
    t = jnp.sqrt(2.0 * k * m * (m * math.log(2.0) + log_inv) / n)
    if proven:
        t_norm = jnp.sqrt(m * k * (dim + 2.0 * jnp.sqrt(dim * log_inv) + 2.0 * log_inv) / n)
        t = jnp.minimum(t, t_norm)
    t = t * (1 + _WIDEN * eps)
    norm = jnp.sum(jnp.abs(mean), axis=-1)
    slack = 2.0 * (m + 2) * eps * norm
    return _finish(norm - t - slack, norm + t + slack, s, bad)


@keyword_only_shim("sigma", "alpha")
def grad_linf_upper(
    mean_a: ArrayLike,
    mean_b: ArrayLike,
    num_a: ArrayLike,
    num_b: ArrayLike,
    *,
    sigma: ArrayLike,
    alpha: ArrayLike,
    method: str = "bernstein",
    subspace_dim: int | None = None,
) -> jax.Array:
    """Upper confidence bound (``>= 1 - alpha``) on ``||grad g||_inf``: :func:`grad_linf_bounds` ``.upper``.

    Example:
      >>> import numpy as np
      >>> mean_a, mean_b = np.array([0.05, 0.0, 0.02]), np.array([0.04, 0.01, 0.02])
      >>> print(f"{float(grad_linf_upper(mean_a, mean_b, 5000, 5000, sigma=0.25, alpha=0.001)):.4f}")
      0.8506
    """
    return grad_linf_bounds(
        mean_a, mean_b, num_a, num_b, sigma=sigma, alpha=alpha, method=method, subspace_dim=subspace_dim
    ).upper


@keyword_only_shim("sigma", "alpha")
def grad_l1_upper(
    mean_a: ArrayLike,
    mean_b: ArrayLike,
    num_a: ArrayLike,
    num_b: ArrayLike,
    *,
    sigma: ArrayLike,
    alpha: ArrayLike,
    method: str = "bernstein",
    subspace_dim: int | None = None,
) -> jax.Array:
    """Upper confidence bound (``>= 1 - alpha``) on ``||grad g||_1``: :func:`grad_l1_bounds` ``.upper``.

    Example:
      >>> import numpy as np
      >>> mean_a, mean_b = np.array([0.05, 0.0, 0.02]), np.array([0.04, 0.01, 0.02])
      >>> print(f"{float(grad_l1_upper(mean_a, mean_b, 5000, 5000, sigma=0.25, alpha=0.001)):.4f}")
      1.3500
    """
    return grad_l1_bounds(
        mean_a, mean_b, num_a, num_b, sigma=sigma, alpha=alpha, method=method, subspace_dim=subspace_dim
    ).upper


@keyword_only_shim("sigma", "alpha", "p")
def grad_dual_norm_upper(
    mean_a: ArrayLike,
    mean_b: ArrayLike,
    num_a: ArrayLike,
    num_b: ArrayLike,
    *,
    sigma: ArrayLike,
    alpha: ArrayLike,
    p: int | float | str,
    method: str = "bernstein",
    subspace_dim: int | None = None,
) -> jax.Array:
    """Upper bound (``>= 1 - alpha``) on ``||P_S grad g||_{p'}``, ``1/p + 1/p' = 1`` (Corollary 3.4).

    ``p`` is the threat-model norm (static: 1, 2 or ``inf``): ``p = 1`` bounds the linf norm,
    ``p = 2`` the l2 norm, ``p = inf`` the l1 norm of the gradient. Pass projected means and
    ``subspace_dim`` for a subspace (full-space means for Corollaries 3.2/3.3). 1/input units.

    Example:
      >>> import numpy as np
      >>> mean_a, mean_b = np.array([0.05, 0.0, 0.02]), np.array([0.04, 0.01, 0.02])
      >>> up = grad_dual_norm_upper(mean_a, mean_b, 5000, 5000, sigma=0.25, alpha=0.001, p=2)
      >>> print(f"{float(up):.4f}")  # p = 2: the l2 upper bound
      0.9415
    """
    if p == 1:
        fn = grad_linf_bounds
    elif p == 2:
        fn = grad_l2_bounds
    elif p == math.inf or p == "inf":
        fn = grad_l1_bounds
    else:
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}.")
    bounds = fn(mean_a, mean_b, num_a, num_b, sigma=sigma, alpha=alpha, method=method, subspace_dim=subspace_dim)
    return bounds.upper


# ----------------------------------------------------------------------------------------------
# The dot-product estimator of the second paper (Theorem 2)
# ----------------------------------------------------------------------------------------------


@keyword_only_shim("dim", "sigma", "alpha", "p_lower")
def sos_grad_norm_upper(
    grad_norm_sq_estimate: ArrayLike,
    num_pairs: ArrayLike,
    *,
    dim: ArrayLike,
    sigma: ArrayLike,
    alpha: ArrayLike,
    p_lower: ArrayLike,
) -> jax.Array:
    """Upper confidence bound on ``||grad g(x)||_2`` (second paper Theorem 2, Appendix A.3).

    The estimator: ``V_hat = mean over n pairs of (e . e') f(x + e) f(x + e')`` with
    e, e' ~ N(0, sigma^2 I) independent; ``E[V_hat] = sigma^4 ||grad g||^2`` and
    ``grad_norm_sq_estimate = V_hat / sigma^4`` (1/input units squared; it can be negative).
    ``V_hat - E[V_hat]`` is a mean of (2 sqrt(2 d) sigma^2, 2 sqrt(2) sigma^2)-sub-exponential
    variables (their Lemma 1), so with probability >= 1 - alpha, ``E[V] <= V_hat + t`` with

        t = 4 sigma^2 sqrt(d log(1/alpha) / n)     if 2 log(1/alpha) <= d n,
        t = 4 sqrt(2) sigma^2 log(1/alpha) / n     otherwise.

    The bound returned is ``min(sqrt(max(grad_norm_sq_estimate + t / sigma^4, 0)),
    max_grad_norm(p_lower, sigma))``. The clip is itself a valid bound when p_lower >= 1/2:
    ``||grad g|| <= phi(Phi^-1(g(x))) / sigma`` and that maximum decreases in g on [1/2, 1], so
    ``g(x) >= p_lower`` gives ``||grad g|| <= phi(Phi^-1(p_lower)) / sigma`` (the two events are
    covered by the usual union bound). For p_lower < 1/2 the certificate abstains anyway.

    This is exactly what the second paper's reference code prints as ``grad_norm_bound``
    (reproduced on every peer-data row at the printed 6 digits, up to the printed rounding of
    ``raw_grad_norm``), with ``alpha`` = its alpha / 2 = 0.0005, ``num_pairs = N / 2`` and
    d = 49 (7x7 MNIST); its ``grad_norm_bound_nonvacuous`` is ``bound < max_grad_norm``, i.e.
    "the clip did not bind".

    Args:
      grad_norm_sq_estimate: ``V_hat / sigma^4`` (signed), any shape.
      num_pairs: number n of independent pairs (N / 2 when N samples are paired), >= 1.
      dim: input dimension d, >= 1.
      sigma: noise level (input units), > 0.
      alpha: failure probability of this bound (the SoS certificate of the second paper spends
        alpha / 2 here and alpha / 2 on ``p_lower``), in (0, 1).
      p_lower: lower bound on g(x) used for the clip, in [0, 1].

    Returns:
      bound in 1/input units (broadcast shape). NaN under ``jit`` for invalid inputs.

    Example:
      >>> bound = sos_grad_norm_upper(0.3, 50_000, dim=49, sigma=0.25, alpha=0.0005, p_lower=0.9)
      >>> print(f"{float(bound):.4f}")
      0.7020
    """
    check_finite("grad_norm_sq_estimate", grad_norm_sq_estimate)
    check_at_least_one("num_pairs", num_pairs)
    check_at_least_one("dim", dim)
    check_sigma(sigma)
    check_alpha(alpha)
    check_probability("p_lower", p_lower)
    args = (grad_norm_sq_estimate, num_pairs, dim, sigma, alpha, p_lower)
    return _sos_grad_norm_upper(*(as_float(x) for x in args))


@jax.jit
def _sos_grad_norm_upper(est, n, d, sigma, alpha, p):
    est, n, d, sigma, alpha, p = jnp.broadcast_arrays(est, n, d, sigma, alpha, p)
    invalid = (
        ~jnp.isfinite(est)
        | ~(n >= 1.0)
        | ~(d >= 1.0)
        | invalid_sigma(sigma)
        | ~((alpha > 0.0) & (alpha < 1.0))
        | invalid_probability(p)
    )
    log_inv = -jnp.log(alpha)
    sub_gaussian = 2.0 * log_inv <= d * n
    t = jnp.where(
        sub_gaussian,
        4.0 * jnp.sqrt(d * log_inv / n),
        4.0 * jnp.sqrt(2.0) * log_inv / n,
    ) / sigma**2
    bound = jnp.sqrt(jnp.maximum(est + t, 0.0))
    cap = _max_grad(jnp.minimum(p, 1.0 - p)) / sigma
    return jnp.where(invalid, jnp.nan, jnp.minimum(bound, cap))
