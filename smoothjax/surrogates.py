"""Differentiable surrogates of smoothed quantities, and certified radii evaluated at them.

Randomized smoothing certifies the smoothed classifier
``g_c(x) = P[argmax f(x + eps) = c]``, ``eps ~ N(0, sigma^2 I)``, of a base model ``f`` (logits).
``g`` is piecewise constant in the model parameters, so training cannot differentiate it. This
module replaces it by Monte Carlo surrogates that are differentiable in the parameters and in ``x``:

* the **soft smoothed probability** ``p_c(x) = E_eps[s_c(f(x + eps))]`` with a soft link ``s``:
  ``softmax(beta * logits)`` (MACER, Zhai et al. 2020) or the sigmoid of the class margin
  ``sigmoid(beta * (f_c - max_{k != c} f_k))``. As the inverse temperature ``beta -> inf`` both links
  tend to the indicator ``1[argmax f = c]`` wherever the argmax is unique, so ``p_c -> g_c``;
* the **gradient of the smoothed classifier**, in 1/input units, by either of two unbiased
  estimators of ``grad_x p_c(x)``: the noise-weighted (Stein / Salman et al. 2019) identity
  ``grad_x E[s(x + eps)] = E[eps s(x + eps)] / sigma^2`` with antithetic pairs, or automatic
  differentiation through the model ``E[grad_x s(x + eps)]``;
* its l2, l1 and linf norms, the statistics the certificates consume (first paper, Section 3.2);
* a **certified radius at the surrogates** (:data:`RADII`: Cohen l2, SoS l2, dipole l2, first-order
  l1 / linf), :func:`soft_radius`, differentiable in ``p`` and the gradient norms.

The training objectives (the published baselines, and the certificate-aware hinges built on these
surrogates) are in :mod:`smoothjax.objectives`, which also re-exports every name of this module.

Finite everywhere. Certificates are singular where ``p -> 1`` (``Phi^-1(p) -> inf``), have a kink
at ``p = 1/2`` and degenerate at the largest gradient norm a smoothed classifier can have,
``M(p) = phi(Phi^-1(p)) / sigma``, so :func:`soft_radius` evaluates them at clipped surrogates:
``p`` in ``[1/2 + p_eps, 1 - p_eps]`` (Cohen's closed form, used below ``1/2 + p_eps``, in
``[p_eps, 1 - p_eps]``), ``||grad||_2`` in ``[grad_eps M, (1 - grad_eps) M]``, the dual norms
rescaled with the l2 norm (their ratio to it kept and clipped into its feasible range; where the
gradient is too small to have a direction, the worst-case ratio). The defaults ``p_eps = 1e-4``,
``grad_eps = 1e-3`` are below the Monte Carlo resolution of a training batch, so the clipping only
removes singularities; outside the interval the derivative is zero, as with ``jnp.clip``. Every
``where`` that guards a singular branch also feeds that branch a harmless input, so no NaN or inf
enters a backward pass. The l2 norm of a zero gradient has a finite derivative.

dtype. Model evaluation runs in the models' dtype (noise is drawn in the dtype of ``x``, in the
default float dtype for integer ``x``); the certificate math runs in JAX's default float dtype
(float64 with ``jax_enable_x64``, else float32).
In float32 the Theorem 3 radii (first-order l1 / linf) are finite but their solver often stops
before its convergence tolerance and then reports a zero derivative; enable x64 to differentiate
them.

Shapes: ``x: [batch, *input_shape]``, ``y: [batch]`` int, ``apply_fn(params, x_batch) -> logits
[batch, num_classes]``; the model must treat inputs independently (no batch statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri
from jax.typing import ArrayLike

from smoothjax._monte_carlo import default_float as _default_float
from smoothjax._monte_carlo import gaussian_noise as _noise
from smoothjax._monte_carlo import soft_link as _soft_link
from smoothjax._monte_carlo import stein_gradient as _stein_gradient
from smoothjax._monte_carlo import take_label as _take
from smoothjax._validation import check_sigma, check_static_int

__all__ = [
    "GRAD_EPS",
    "P_EPS",
    "RADII",
    "gradient_norms",
    "noisy_logits",
    "smoothed_gradient",
    "soft_radius",
    "soft_smoothed_probabilities",
]

#: Radii :func:`soft_radius` evaluates (names as in ``pipeline.certify``).
RADII = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf")
#: Default ``p_eps`` of :func:`soft_radius`: ``p`` clipped into ``[1/2 + P_EPS, 1 - P_EPS]``.
P_EPS = 1e-4
#: Default ``grad_eps`` of :func:`soft_radius`: ``||grad||_2`` clipped into ``[GRAD_EPS M, (1 - GRAD_EPS) M]``.
GRAD_EPS = 1e-3
_NORM_TINY = 1e-12


# --------------------------------------------------------------------------------------------
# Model evaluation and the smoothed probability and gradient
# --------------------------------------------------------------------------------------------


def noisy_logits(apply_fn: Callable, params: Any, x: ArrayLike, noise: jax.Array) -> jax.Array:
    """Logits of the model at ``x + noise``: ``noise [S, batch, *input_shape]`` -> ``[S, batch, C]``.

    All ``S * batch`` noisy copies go through ``apply_fn`` in one call.

    Example:
      >>> import jax.numpy as jnp
      >>> from smoothjax.surrogates import noisy_logits
      >>> apply_fn = lambda params, x: x @ params
      >>> noisy_logits(apply_fn, jnp.eye(2), jnp.ones((3, 2)), jnp.zeros((4, 3, 2))).shape
      (4, 3, 2)
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):  # integer inputs: noise is in the default float dtype
        x = x.astype(noise.dtype)
    s, b = noise.shape[0], x.shape[0]
    xs = x[None] + noise
    logits = apply_fn(params, xs.reshape((s * b,) + x.shape[1:]))
    return logits.reshape((s, b) + logits.shape[1:])


def soft_smoothed_probabilities(
    apply_fn: Callable,
    params: Any,
    x: ArrayLike,
    key: jax.Array,
    *,
    sigma: ArrayLike,
    num_samples: int = 16,
    beta: ArrayLike = 1.0,
    link: str = "softmax",
) -> jax.Array:
    """Monte Carlo soft smoothed probabilities ``p [batch, C]``.

    ``p_c(x) = (1/S) sum_s s_c(f(x + eps_s))``, ``eps_s ~ N(0, sigma^2 I)`` i.i.d. (``S =
    num_samples``), with the link ``s`` = ``softmax(beta * logits)`` (``link="softmax"``) or
    ``sigmoid(beta * (f_c - max_{k != c} f_k))`` (``link="sigmoid"``, not normalised over classes).
    Unbiased for ``E_eps[s_c(f(x + eps))]``, which tends to the smoothed hard classifier
    ``g_c(x) = P[argmax f(x + eps) = c]`` as ``beta -> inf`` (MACER's ``beta``; ``beta = 1`` is the
    plain noise-averaged softmax). Differentiable in ``params`` and ``x``; deterministic given ``key``.

    Args:
      apply_fn: ``apply_fn(params, x_batch) -> logits [batch, C]``.
      x: ``[batch, *input_shape]``; sigma: noise std in input units; beta: inverse temperature.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.surrogates import soft_smoothed_probabilities
      >>> p = soft_smoothed_probabilities(lambda w, x: x @ w, jnp.eye(2), jnp.ones((3, 2)),
      ...                                 jax.random.key(0), sigma=0.5, num_samples=8)
      >>> p.shape, bool(jnp.allclose(p.sum(-1), 1.0))
      ((3, 2), True)
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    noise = _noise(key, x, num_samples, sigma)
    return jnp.mean(_soft_link(noisy_logits(apply_fn, params, x, noise), beta, link), axis=0)


def smoothed_gradient(
    apply_fn: Callable,
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    key: jax.Array,
    *,
    sigma: ArrayLike,
    num_samples: int = 16,
    beta: ArrayLike = 1.0,
    link: str = "softmax",
    method: str = "stein",
) -> jax.Array:
    """Estimate of ``grad_x p_y(x)`` (1/input units), ``[batch, *input_shape]``.

    ``p_y`` is the soft smoothed probability of :func:`soft_smoothed_probabilities` for class
    ``y [batch]``. Two unbiased estimators:

    * ``method="stein"`` (noise-weighted; Salman et al. 2019; second paper eq. 24):
      ``grad_x E[s(x + eps)] = E[eps s(x + eps)] / sigma^2``, computed with antithetic pairs
      ``(eps, -eps)``: ``(1/S) sum_{s <= S/2} eps_s (s(x + eps_s) - s(x - eps_s)) / sigma^2``
      (``num_samples`` must be even). It needs no model gradient (works for any ``f``) but its
      variance grows with the input dimension.
    * ``method="autodiff"``: ``(1/S) sum_s grad_x s_y(f(x + eps_s))`` by ``jax.grad`` through the
      model (low variance; requires a differentiable model that treats batch items independently).

    Both are differentiable in ``params`` (the autodiff one by second-order differentiation).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.surrogates import smoothed_gradient
      >>> g = smoothed_gradient(lambda w, x: x @ w, jnp.eye(2), jnp.zeros((1, 2)), jnp.array([1]),
      ...                       jax.random.key(0), sigma=0.5, num_samples=4, method="autodiff")
      >>> g.shape
      (1, 2)
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    y = jnp.asarray(y)
    if method == "stein":
        if num_samples % 2:
            raise ValueError(f"method='stein' uses antithetic pairs: num_samples must be even, got {num_samples}.")
        noise = _noise(key, x, num_samples, sigma, antithetic=True)
        s_y = _take(_soft_link(noisy_logits(apply_fn, params, x, noise), beta, link), y)
        return _stein_gradient(noise, s_y, sigma)
    if method == "autodiff":
        noise = _noise(key, x, num_samples, sigma)

        def total_p(xx):
            s_y = _take(_soft_link(noisy_logits(apply_fn, params, xx, noise), beta, link), y)
            return jnp.sum(jnp.mean(s_y, axis=0))  # sum over batch: grads are per input

        return jax.grad(total_p)(jnp.asarray(x))
    raise ValueError(f"method must be 'stein' or 'autodiff', got {method!r}.")


def gradient_norms(grad: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(l2, l1, linf)`` norms of ``grad [batch, *input_shape]`` over the input axes, each ``[batch]``.

    The l2 norm is ``sqrt(|v|^2 + t^2) - t`` with ``t = 1e-12`` (exact to 1e-12 absolute), so its
    derivative is finite (zero) at ``v = 0``; ``|.|`` and ``max`` have finite subgradients everywhere.

    Example:
      >>> import jax.numpy as jnp
      >>> from smoothjax.surrogates import gradient_norms
      >>> [round(float(n[0]), 6) for n in gradient_norms(jnp.array([[3.0, -4.0]]))]
      [5.0, 7.0, 4.0]
    """
    grad = jnp.asarray(grad)
    flat = grad.reshape(grad.shape[0], -1)
    tiny = jnp.asarray(_NORM_TINY, flat.dtype)
    l2 = jnp.sqrt(jnp.sum(flat**2, axis=-1) + tiny**2) - tiny
    l1 = jnp.sum(jnp.abs(flat), axis=-1)
    linf = jnp.max(jnp.abs(flat), axis=-1)
    return l2, l1, linf


# --------------------------------------------------------------------------------------------
# Radii at the surrogates
# --------------------------------------------------------------------------------------------


def _norm_ratio(norm, l2, has_direction, low, high, worst):
    """``norm / l2`` clipped into ``[low, high]``; ``worst`` where the gradient has no direction."""
    safe_l2 = jnp.where(has_direction, l2, 1.0)
    ratio = jnp.where(has_direction, norm / safe_l2, worst)
    return jnp.clip(ratio, low, high)


def soft_radius(
    radius: str,
    p: ArrayLike,
    sigma: ArrayLike,
    *,
    grad_l2: ArrayLike | None = None,
    grad_l1: ArrayLike | None = None,
    grad_linf: ArrayLike | None = None,
    dim: int | None = None,
    p_both: ArrayLike | None = None,
    p_eps: float = P_EPS,
    grad_eps: float = GRAD_EPS,
) -> jax.Array:
    """A certified radius (input units) evaluated at soft surrogates, clipped into the interior.

    With ``q = clip(p, 1/2 + p_eps, 1 - p_eps)``:

    * ``"cohen_l2"``: ``sigma * Phi^-1(clip(p, p_eps, 1 - p_eps))`` (Cohen et al. 2019, Theorem 1;
      negative below 1/2, so a hinge keeps pushing misclassified-by-margin inputs up).
    * ``"sos_l2"``: :func:`smoothjax.certificates.sos_radius` ``(q, grad_l2)`` (second paper,
      Theorem 1 = first paper, Corollary 3.1).
    * ``"dipole_l2"``: :func:`smoothjax.certificates.dipole_radius` ``(cs, cn)`` with
      ``cs = clip(p_both, 0, q)`` the soft probability that both antithetic samples ``x +- eps``
      vote ``y`` and ``cn = q - cs`` (second paper, Theorem 3).
    * ``"first_order_l1"``: :func:`smoothjax.first_order.l1_radius` ``(q, grad_l2, grad_linf)``
      (first paper, Corollary 3.2).
    * ``"first_order_linf"``: :func:`smoothjax.first_order.linf_radius`
      ``(q, grad_l2, grad_l1, dim)`` (Corollary 3.3).

    The two first-order radii can be trained through in float32: their Theorem 3 solve there
    usually stops unconverged (its tolerances are out of float32's reach), but a solve accurate to
    float32 round-off gives the implicit-function derivative, about 1e-3 relative of float64's
    (a solve that stops short of that, rare, gives a zero gradient; see :mod:`smoothjax.theorem3`).
    For float64 accuracy turn x64 on (e.g. ``with jax.enable_x64(True):``).

    For all but Cohen's, where ``p <= 1/2 + p_eps`` the Cohen value is returned instead (there the
    higher-order radii are 0 and flat, Cohen's keeps a slope). ``grad_l2`` is clipped into
    ``[grad_eps M, (1 - grad_eps) M]``, ``M = phi(Phi^-1(q)) / sigma`` (the feasible region of the
    first paper's Theorem 3), and the dual norm keeps its ratio to ``grad_l2``, clipped into the
    range norms can have (``linf / l2`` in [0, 1], ``l1 / l2`` in [1, sqrt(dim)]); where
    ``grad_l2`` is too small to carry a direction (below ``eps(dtype) grad_eps M``) the ratio is
    the worst case (1, resp. sqrt(dim): the smallest radius). Gradient norms are in 1/input units.
    Derivatives come from the radius functions' implicit differentiation. Value and gradient are
    finite for every ``p`` in [0, 1] and every non-negative norm.

    Example:
      >>> from smoothjax.surrogates import soft_radius
      >>> print(f"{float(soft_radius('cohen_l2', 0.9, 0.5)):.4f}")
      0.6408
      >>> print(f"{float(soft_radius('dipole_l2', 0.9, 0.5, p_both=0.85)):.2f}")  # above Cohen's
      0.72
    """
    dtype = _default_float()
    p = jnp.asarray(p, dtype)
    sigma = jnp.asarray(sigma, dtype)
    cohen = sigma * ndtri(jnp.clip(p, p_eps, 1.0 - p_eps))
    if radius == "cohen_l2":
        return cohen
    if radius not in RADII:
        raise ValueError(f"unknown radius {radius!r}; choose one of {', '.join(RADII)}.")
    inside = p > 0.5 + p_eps
    q = jnp.clip(p, 0.5 + p_eps, 1.0 - p_eps)
    if radius == "dipole_l2":
        if p_both is None:
            raise ValueError("radius 'dipole_l2' needs p_both (the soft probability that x + eps and x - eps "
                             "both vote y).")
        from smoothjax.certificates import dipole_radius

        cs = jnp.clip(jnp.asarray(p_both, dtype), 0.0, q)
        r = dipole_radius(cs, q - cs, sigma=sigma)
    else:
        if grad_l2 is None:
            raise ValueError(f"radius {radius!r} needs grad_l2 (the l2 norm of grad p, 1/input units).")
        from smoothjax.certificates import max_grad_norm

        top = max_grad_norm(q, sigma=sigma)
        l2 = jnp.asarray(grad_l2, dtype)
        l2_clipped = jnp.clip(l2, grad_eps * top, (1.0 - grad_eps) * top)
        has_direction = l2 > jnp.finfo(dtype).eps * grad_eps * top
        if radius == "sos_l2":
            from smoothjax.certificates import sos_radius

            r = sos_radius(q, l2_clipped, sigma=sigma)
        elif radius == "first_order_l1":
            if grad_linf is None:
                raise ValueError("radius 'first_order_l1' needs grad_linf (the linf norm of grad p).")
            from smoothjax.first_order import l1_radius

            ratio = _norm_ratio(jnp.asarray(grad_linf, dtype), l2, has_direction, 0.0, 1.0, 1.0)
            r = l1_radius(q, l2_clipped, ratio * l2_clipped, sigma=sigma)
        else:  # first_order_linf
            if grad_l1 is None or dim is None:
                raise ValueError("radius 'first_order_linf' needs grad_l1 and dim.")
            from smoothjax.first_order import linf_radius

            root_d = math.sqrt(dim)
            ratio = _norm_ratio(jnp.asarray(grad_l1, dtype), l2, has_direction, 1.0, root_d, root_d)
            r = linf_radius(q, l2_clipped, ratio * l2_clipped, dim=dim, sigma=sigma)
    r = jnp.asarray(r, dtype)
    r = jnp.where(jnp.isfinite(r), r, 0.0)
    return jnp.where(inside, r, cohen)
