"""Differentiable surrogates of smoothed quantities, and training objectives for smoothed classifiers.

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
* its l2, l1 and linf norms, the statistics the certificates consume (first paper, Section 3.2).

Objectives (:data:`OBJECTIVES`, built by :func:`make_objective` as ``loss_fn(params, x, y, key)``):

* the field's baselines, as published: ``"gaussian"`` (Gaussian augmentation, Cohen et al. 2019),
  ``"macer"`` (Zhai et al. 2020), ``"consistency"`` (Jeong & Shin 2020), ``"smoothadv"`` (Salman et
  al. 2019): :func:`gaussian_augmentation_loss`, :func:`macer_loss`, :func:`consistency_loss`,
  :func:`smoothadv_loss`;
* certificate-aware objectives (:data:`RADII`), :func:`certified_radius_loss`: cross-entropy of the
  smoothed softmax plus a hinge ``max(gamma - R / sigma, 0)`` on one of smoothjax's certified radii
  ``R`` (Cohen l2, SoS l2, dipole l2, first-order l1 / linf) evaluated at the soft surrogates.

Finite everywhere. Every objective's value and gradient (in the parameters) are finite for every
input the losses can see, in float32 and in float64: zero input gradients, ``p`` at 1/2 and at 1,
saturated softmax, gradient norms at their maximum (tested). Certificates are singular where
``p -> 1`` (``Phi^-1(p) -> inf``), have a kink at ``p = 1/2`` and degenerate at the largest gradient
norm a smoothed classifier can have, ``M(p) = phi(Phi^-1(p)) / sigma``, so :func:`soft_radius`
evaluates them at clipped surrogates: ``p`` in ``[1/2 + p_eps, 1 - p_eps]`` (Cohen's closed form,
used below ``1/2 + p_eps``, in ``[p_eps, 1 - p_eps]``), ``||grad||_2`` in ``[grad_eps M, (1 - grad_eps)
M]``, the dual norms rescaled with the l2 norm (their ratio to it kept and clipped into its feasible
range; where the gradient is too small to have a direction, the worst-case ratio). The defaults
``p_eps = 1e-4``, ``grad_eps = 1e-3`` are below the Monte Carlo resolution of a training batch, so
the clipping only removes singularities; outside the interval the derivative is zero, as with
``jnp.clip``. Every ``where`` that guards a singular branch also feeds that branch a harmless
input, so no NaN or inf enters a backward pass.

dtype. Model evaluation runs in the models' dtype (noise is drawn in the dtype of ``x``); the
certificate math runs in JAX's default float dtype (float64 with ``jax_enable_x64``, else float32).
In float32 the Theorem 3 radii (first-order l1 / linf) are finite but their solver often stops
before its convergence tolerance and then reports a zero derivative, so those hinges train mostly
through ``p`` in float32; enable x64 to train them.

Shapes: ``x: [batch, *input_shape]``, ``y: [batch]`` int, ``apply_fn(params, x_batch) -> logits
[batch, num_classes]``; the model must treat inputs independently (no batch statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import ndtri
from jax.typing import ArrayLike

from smoothjax._validation import check_sigma, check_static_int

__all__ = [
    "BASELINES",
    "OBJECTIVES",
    "RADII",
    "certified_radius_loss",
    "consistency_loss",
    "gaussian_augmentation_loss",
    "gradient_norms",
    "macer_loss",
    "make_objective",
    "noisy_logits",
    "smoothadv_loss",
    "smoothed_gradient",
    "soft_radius",
    "soft_smoothed_probabilities",
]

#: Radii the certificate-aware objective can target (names as in ``pipeline.certify``).
RADII = ("cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf")
#: The field's baseline objectives.
BASELINES = ("gaussian", "macer", "consistency", "smoothadv")
#: Names accepted by :func:`make_objective`.
OBJECTIVES = BASELINES + RADII

P_EPS = 1e-4
GRAD_EPS = 1e-3
_NORM_TINY = 1e-12
_GRADIENT_RADII = ("sos_l2", "first_order_l1", "first_order_linf")


def _default_float():
    """JAX's default float dtype: float64 with ``jax_enable_x64``, else float32."""
    return jnp.asarray(0.0).dtype


# --------------------------------------------------------------------------------------------
# Noise and model evaluation
# --------------------------------------------------------------------------------------------


def _noise(key, x, num_samples: int, sigma, antithetic: bool = False):
    """``sigma * N(0, I)`` draws of shape ``[num_samples, *x.shape]`` in ``x``'s dtype.

    With ``antithetic=True`` the second half is the negation of the first (``num_samples`` even).
    """
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else _default_float()
    if antithetic:
        half = jax.random.normal(key, (num_samples // 2,) + x.shape, dtype)
        z = jnp.concatenate([half, -half], axis=0)
    else:
        z = jax.random.normal(key, (num_samples,) + x.shape, dtype)
    return jnp.asarray(sigma, dtype) * z


def noisy_logits(apply_fn: Callable, params: Any, x: ArrayLike, noise: jax.Array) -> jax.Array:
    """Logits of the model at ``x + noise``: ``noise [S, batch, *input_shape]`` -> ``[S, batch, C]``.

    All ``S * batch`` noisy copies go through ``apply_fn`` in one call.

    Example:
      >>> import jax.numpy as jnp
      >>> from smoothjax.objectives import noisy_logits
      >>> apply_fn = lambda params, x: x @ params
      >>> noisy_logits(apply_fn, jnp.eye(2), jnp.ones((3, 2)), jnp.zeros((4, 3, 2))).shape
      (4, 3, 2)
    """
    x = jnp.asarray(x)
    s, b = noise.shape[0], x.shape[0]
    xs = x[None] + noise
    logits = apply_fn(params, xs.reshape((s * b,) + x.shape[1:]))
    return logits.reshape((s, b) + logits.shape[1:])


def _soft_link(logits, beta, link: str):
    """Soft indicator of the predicted class, per class: ``[..., C] -> [..., C]`` in [0, 1]."""
    z = beta * logits
    if link == "softmax":
        return jax.nn.softmax(z, axis=-1)
    if link == "sigmoid":
        # margin of class c over the best other class: f_c - max_{k != c} f_k
        top2 = jax.lax.top_k(z, 2)[0]
        best_other = jnp.where(z >= top2[..., :1], top2[..., 1:2], top2[..., :1])
        return jax.nn.sigmoid(z - best_other)
    raise ValueError(f"link must be 'softmax' or 'sigmoid', got {link!r}.")


def _take(values, y):
    """``values[..., b, y_b]`` for ``values [..., B, C]``, ``y [B]`` -> ``[..., B]``."""
    idx = jnp.broadcast_to(y[:, None], values.shape[:-1] + (1,))
    return jnp.take_along_axis(values, idx, axis=-1)[..., 0]


def _stein_gradient(noise, s_y, sigma):
    """Antithetic noise-weighted estimate of ``grad_x E[s(x + eps)]``, ``[B, *input_shape]``.

    ``noise [S, B, ...]`` with ``noise[S/2:] = -noise[:S/2]``, ``s_y [S, B]`` the soft indicator at
    ``x + noise``: ``(1/S) sum_{s <= S/2} eps_s (s(x + eps_s) - s(x - eps_s)) / sigma^2``.
    """
    half = noise.shape[0] // 2
    diff = s_y[:half] - s_y[half:]
    weights = diff.reshape(diff.shape + (1,) * (noise.ndim - 2)).astype(noise.dtype)
    return jnp.sum(noise[:half] * weights, axis=0) / (noise.shape[0] * jnp.asarray(sigma, noise.dtype) ** 2)


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
      >>> from smoothjax.objectives import soft_smoothed_probabilities
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
      >>> from smoothjax.objectives import smoothed_gradient
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
      >>> from smoothjax.objectives import gradient_norms
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
      >>> from smoothjax.objectives import soft_radius
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
            raise ValueError("radius 'dipole_l2' needs p_both (the soft probability that x + eps and x - eps both vote y).")
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


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _log_mean_softmax(logits):
    """``log (1/S) sum_s softmax(logits_s)``: ``[S, B, C] -> [B, C]``, finite for any finite logits."""
    return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - math.log(logits.shape[0])


def gaussian_augmentation_loss(
    apply_fn: Callable, params: Any, x: ArrayLike, y: ArrayLike, key: jax.Array, *, sigma: ArrayLike,
    num_samples: int = 1,
) -> jax.Array:
    """Gaussian noise augmentation (Cohen et al. 2019, Section 3.4 / Appendix B).

    ``mean_{s, b} CE(f(x_b + eps_sb), y_b)``, ``eps ~ N(0, sigma^2 I)``, over ``num_samples`` noisy
    copies of each input (``optax.losses.softmax_cross_entropy_with_integer_labels``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.objectives import gaussian_augmentation_loss
      >>> loss = gaussian_augmentation_loss(lambda w, x: x @ w, jnp.zeros((2, 3)), jnp.ones((4, 2)),
      ...                                   jnp.array([0, 1, 2, 0]), jax.random.key(0), sigma=0.25)
      >>> print(f"{float(loss):.4f}")  # log(3): uniform logits
      1.0986
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    noise = _noise(key, x, num_samples, sigma)
    logits = noisy_logits(apply_fn, params, x, noise)  # [S, B, C]
    labels = jnp.broadcast_to(jnp.asarray(y)[None], logits.shape[:2])
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def macer_loss(
    apply_fn: Callable, params: Any, x: ArrayLike, y: ArrayLike, key: jax.Array, *, sigma: ArrayLike,
    num_samples: int = 16, beta: ArrayLike = 16.0, gamma: ArrayLike = 8.0, lam: ArrayLike = 12.0,
) -> jax.Array:
    """MACER (Zhai et al., "MACER: Attack-free and Scalable Robust Training via Maximizing Certified
    Radius", ICLR 2020, Section 4 and Algorithm 1).

    With ``k = num_samples`` noisy copies ``x + eps_j`` of each input (``eps_j ~ N(0, sigma^2 I)``):

    * classification loss ``l_C = -log((1/k) sum_j softmax(f(x + eps_j))_y)``;
    * soft smoothed probabilities at inverse temperature ``beta``:
      ``z = (1/k) sum_j softmax(beta f(x + eps_j))``, with top-1 ``z_A`` and top-2 ``z_B``;
    * robustness loss on the inputs the soft classifier gets right (``argmax z = y``):
      ``l_R = (sigma / 2) max(gamma - xi, 0)``, ``xi = Phi^-1(z_A) - Phi^-1(z_B)``
      (``sigma xi / 2`` is the two-class certified radius of Cohen et al.'s Theorem 1);
    * ``loss = (1/B) sum_b [l_C + lam * l_R]``.

    Defaults are the paper's CIFAR-10 hyperparameters at sigma = 0.25: ``k = 16``, ``beta = 16``,
    ``gamma = 8``, ``lam = 12`` (``lam = 4`` at sigma = 0.5 and 1.0; Jeong & Shin's MNIST
    reproduction uses ``lam = 16``). As in the reference implementation, inputs whose ``xi`` is not
    finite (``z_A = 1`` or ``z_B = 0`` after rounding: a saturated softmax) contribute no
    robustness loss; here also inputs with ``z_B`` below ``sqrt(tiny)`` of the dtype, whose
    ``Phi^-1`` derivative would overflow (their ``xi`` exceeds 8 by far, so their hinge is 0
    anyway). The reference code's deferred start (no ``l_R`` for the first epochs) and its
    ``log(. + 1e-10)`` are left out: ``l_C`` is computed by a log-sum-exp, exactly.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.objectives import macer_loss
      >>> loss = macer_loss(lambda w, x: x @ w, jnp.zeros((2, 3)), jnp.ones((4, 2)),
      ...                   jnp.array([0, 1, 2, 0]), jax.random.key(0), sigma=0.25)
      >>> print(f"{float(loss):.4f}")  # uniform logits: l_C = log 3 and argmax = 0 (ties), xi = 0
      7.0986
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    y = jnp.asarray(y)
    noise = _noise(key, x, num_samples, sigma)
    logits = noisy_logits(apply_fn, params, x, noise)  # [k, B, C]
    ce = -_take(_log_mean_softmax(logits), y)
    z = jnp.mean(jax.nn.softmax(beta * logits, axis=-1), axis=0)  # [B, C]
    top2, top2_idx = jax.lax.top_k(z, 2)
    z_a, z_b, top_idx = top2[:, 0], top2[:, 1], top2_idx[:, 0]
    dtype = z.dtype
    floor = math.sqrt(float(jnp.finfo(dtype).tiny))
    usable = (z_a < 1.0) & (z_b > floor)
    xi = ndtri(jnp.where(usable, z_a, 0.75)) - ndtri(jnp.where(usable, z_b, 0.25))
    sig = jnp.asarray(sigma, dtype)
    hinge = jnp.where((top_idx.astype(y.dtype) == y) & usable, jnp.maximum(gamma - xi, 0.0), 0.0)
    return jnp.mean(ce + lam * (sig / 2) * hinge)


def consistency_loss(
    apply_fn: Callable, params: Any, x: ArrayLike, y: ArrayLike, key: jax.Array, *, sigma: ArrayLike,
    num_samples: int = 2, lam: ArrayLike = 20.0, eta: ArrayLike = 0.5,
) -> jax.Array:
    """Consistency regularization (Jeong & Shin, "Consistency Regularization for Certified Robustness
    of Smoothed Classifiers", NeurIPS 2020, Section 3.2), on Gaussian augmentation.

    With ``m = num_samples`` noisy copies, ``F_j = softmax(f(x + eps_j))`` and their mean
    ``Fhat = (1/m) sum_j F_j``:

    ``loss = mean_b [ (1/m) sum_j CE(F_j, y) + lam (1/m) sum_j KL(Fhat || F_j) + eta H(Fhat) ]``

    with ``KL(P || Q) = sum_c P_c (log P_c - log Q_c)`` and the entropy ``H(P) = -sum_c P_c log P_c``.
    Defaults: ``m = 2``, ``eta = 0.5`` (the paper's) and ``lam = 20`` (its MNIST setting and one of its
    CIFAR-10 settings; 10 is the other). ``log Fhat`` is a log-sum-exp of log-softmaxes, so the loss
    is finite for saturated softmaxes (the reference code clamps at 1e-20 instead).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.objectives import consistency_loss
      >>> loss = consistency_loss(lambda w, x: x @ w, jnp.zeros((2, 3)), jnp.ones((4, 2)),
      ...                         jnp.array([0, 1, 2, 0]), jax.random.key(0), sigma=0.25)
      >>> print(f"{float(loss):.4f}")  # log 3 + 20 * 0 + 0.5 * log 3
      1.6479
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    y = jnp.asarray(y)
    noise = _noise(key, x, num_samples, sigma)
    logits = noisy_logits(apply_fn, params, x, noise)  # [m, B, C]
    log_f = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.mean(_take(log_f, y), axis=0)
    log_avg = _log_mean_softmax(logits)  # [B, C]
    avg = jnp.exp(log_avg)
    kl = jnp.mean(jnp.sum(avg[None] * (log_avg[None] - log_f), axis=-1), axis=0)
    entropy = -jnp.sum(avg * log_avg, axis=-1)
    return jnp.mean(ce + lam * kl + eta * entropy)


def smoothadv_loss(
    apply_fn: Callable, params: Any, x: ArrayLike, y: ArrayLike, key: jax.Array, *, sigma: ArrayLike,
    num_samples: int = 4, epsilon: ArrayLike = 1.0, num_steps: int = 10,
    clip_min: float | None = None, clip_max: float | None = None,
) -> jax.Array:
    """SmoothAdv (Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed
    Classifiers", NeurIPS 2019, Section 3, "SmoothAdv_PGD").

    Adversarial training of the soft smoothed classifier ``G(x) = E_eps[softmax(f(x + eps))]``: with
    ``m = num_samples`` noise draws ``eps_j`` (shared by the attack and the update),

    1. ``x_adv = argmax_{||x' - x||_2 <= epsilon} -log((1/m) sum_j softmax(f(x' + eps_j))_y)``,
       approximated by ``T = num_steps`` PGD steps from ``x' = x``: a step of length
       ``2 epsilon / T`` along the l2-normalised gradient (a random direction where it is 0),
       then the projection onto the box ``[clip_min, clip_max]`` (if given; the reference code
       uses [0, 1] images) and onto the l2 ball of radius ``epsilon``;
    2. ``loss = mean_{j, b} CE(f(x_adv,b + eps_jb), y_b)`` with ``x_adv`` held fixed (no gradient
       through the attack).

    Defaults are the published MNIST settings (Jeong & Shin's reproduction of SmoothAdv,
    ``--epsilon 255 --num-steps 10 --num-noise-vec 4``): ``epsilon = 1.0`` (in input units,
    inputs in [0, 1]), ``T = 10``, ``m = 4``. The reference training ramps ``epsilon`` up linearly
    over the first 10 epochs; here ``epsilon`` is fixed (the loss has no notion of epoch).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.objectives import smoothadv_loss
      >>> loss = smoothadv_loss(lambda w, x: x @ w, jnp.zeros((2, 3)), jnp.ones((4, 2)),
      ...                       jnp.array([0, 1, 2, 0]), jax.random.key(0), sigma=0.25, num_steps=2)
      >>> print(f"{float(loss):.4f}")  # uniform logits: no attack can move the loss
      1.0986
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    num_steps = check_static_int("num_steps", num_steps, 0)
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    noise_key, direction_key = jax.random.split(key)
    noise = _noise(noise_key, x, num_samples, sigma)
    dtype = noise.dtype
    eps = jnp.asarray(epsilon, dtype)
    params_fixed = jax.lax.stop_gradient(params)
    x0 = jax.lax.stop_gradient(x).astype(dtype)
    axes = tuple(range(1, x.ndim))

    def attack_loss(delta):
        logits = noisy_logits(apply_fn, params_fixed, x0 + delta, noise)
        return -jnp.sum(_take(_log_mean_softmax(logits), y))  # per-input gradients

    def l2(v):
        return jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))

    def pgd_step(i, delta):
        g = jax.grad(attack_loss)(delta)
        norm = l2(g)
        fallback = jax.random.normal(jax.random.fold_in(direction_key, i), g.shape, dtype)
        g = jnp.where(norm > 0, g, fallback)
        g = g / l2(g)
        delta = delta + (2.0 * eps / max(num_steps, 1)) * g
        if clip_min is not None or clip_max is not None:
            delta = jnp.clip(x0 + delta, clip_min, clip_max) - x0
        size = l2(delta)
        return delta * jnp.minimum(1.0, eps / jnp.where(size > 0, size, 1.0))

    delta = jax.lax.fori_loop(0, num_steps, pgd_step, jnp.zeros_like(x0))
    x_adv = jax.lax.stop_gradient(x0 + delta)
    logits = noisy_logits(apply_fn, params, x_adv, noise)
    labels = jnp.broadcast_to(y[None], logits.shape[:2])
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def certified_radius_loss(
    apply_fn: Callable,
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    key: jax.Array,
    *,
    sigma: ArrayLike,
    radius: str = "cohen_l2",
    num_samples: int = 16,
    beta: ArrayLike = 16.0,
    gamma: ArrayLike = 4.0,
    weight: ArrayLike = 12.0,
    link: str = "softmax",
    gradient: str = "autodiff",
    p_eps: float = P_EPS,
    grad_eps: float = GRAD_EPS,
) -> jax.Array:
    """Certificate-aware loss: MACER's construction with any smoothjax radius in place of Cohen's.

    With ``S = num_samples`` noisy copies ``x + eps_s`` of each input (one draw, shared by all terms;
    antithetic pairs for ``"dipole_l2"`` and for ``gradient="stein"``):

    ``loss = mean_b [ -log pbar_{y_b}(x_b) ]
           + weight * (sigma / 2) * mean_b [ 1[correct_b] * max(gamma - R(x_b) / sigma, 0) ]``

    * ``pbar = (1/S) sum_s softmax(f(x + eps_s))``: cross-entropy of the smoothed soft classifier;
    * ``R`` = :func:`soft_radius` ``(radius, ...)`` at the soft smoothed probability ``p_y`` with
      inverse temperature ``beta`` (``link``); for the gradient radii the norms of the estimate of
      ``grad_x p_y`` (``gradient="autodiff"`` or ``"stein"``, see :func:`smoothed_gradient`); for
      the dipole radius ``p_both = (2/S) sum_{s <= S/2} s_y(x + eps_s) s_y(x - eps_s)``;
    * ``correct_b``: ``argmax p(x_b) = y_b`` (the hinge only acts where a radius is certified);
    * ``gamma``: the hinge threshold in units of sigma (radii beyond ``gamma * sigma`` are not pushed).

    :func:`macer_loss` is the published method (hinge on ``Phi^-1(p_A) - Phi^-1(p_B)``, about
    ``2 R / sigma``); here the hinge is on ``R / sigma``, so ``gamma = 4`` matches MACER's 8 and
    ``weight`` its ``lam``. ``weight = 12``, ``gamma = 4`` follow MACER's CIFAR-10 setting.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.objectives import certified_radius_loss
      >>> loss = certified_radius_loss(lambda w, x: x @ w, jnp.zeros((2, 3)), jnp.ones((4, 2)),
      ...                              jnp.array([0, 1, 2, 0]), jax.random.key(0), sigma=0.25)
      >>> bool(jnp.isfinite(loss))
      True
    """
    check_sigma(sigma)
    if radius not in RADII:
        raise ValueError(f"unknown radius {radius!r}; choose one of {', '.join(RADII)}.")
    if gradient not in ("autodiff", "stein"):
        raise ValueError(f"gradient must be 'autodiff' or 'stein', got {gradient!r}.")
    uses_gradient = radius in _GRADIENT_RADII
    antithetic = radius == "dipole_l2" or (uses_gradient and gradient == "stein")
    num_samples = check_static_int("num_samples", num_samples, 2 if antithetic else 1)
    if antithetic and num_samples % 2:
        raise ValueError(f"radius {radius!r} with gradient {gradient!r} uses antithetic pairs: "
                         f"num_samples must be even, got {num_samples}.")
    y = jnp.asarray(y)
    x = jnp.asarray(x)
    noise = _noise(key, x, num_samples, sigma, antithetic=antithetic)

    def soft_p_y(xx):
        logits = noisy_logits(apply_fn, params, xx, noise)  # [S, B, C]
        s = _soft_link(logits, beta, link)
        s_y = _take(s, y)  # [S, B]
        return jnp.sum(jnp.mean(s_y, axis=0)), (logits, s, s_y)

    if uses_gradient and gradient == "autodiff":
        grad_x, (logits, s, s_y) = jax.grad(soft_p_y, has_aux=True)(x)
    else:
        logits, s, s_y = soft_p_y(x)[1]
        grad_x = _stein_gradient(noise, s_y, sigma) if uses_gradient else None
    p_soft = jnp.mean(s, axis=0)  # [B, C]
    p_y = jnp.mean(s_y, axis=0)
    ce = -_take(_log_mean_softmax(logits), y)

    options = {"p_eps": p_eps, "grad_eps": grad_eps}
    if radius == "dipole_l2":
        half = num_samples // 2
        options["p_both"] = jnp.mean(s_y[:half] * s_y[half:], axis=0)
    elif uses_gradient:
        l2, l1, linf = gradient_norms(grad_x)
        options.update(grad_l2=l2, grad_l1=l1, grad_linf=linf, dim=int(math.prod(x.shape[1:])))
    r = soft_radius(radius, p_y, sigma, **options)
    correct = jnp.argmax(p_soft, axis=-1).astype(y.dtype) == y
    sig = jnp.asarray(sigma, r.dtype)
    hinge = jnp.where(correct, jnp.maximum(gamma - r / sig, 0.0), 0.0)
    return jnp.mean(ce) + weight * (sig / 2) * jnp.mean(hinge)


_OPTIONS = {
    "gaussian": (gaussian_augmentation_loss, {"num_samples"}),
    "macer": (macer_loss, {"num_samples", "beta", "gamma", "lam"}),
    "consistency": (consistency_loss, {"num_samples", "lam", "eta"}),
    "smoothadv": (smoothadv_loss, {"num_samples", "epsilon", "num_steps", "clip_min", "clip_max"}),
}
_RADIUS_OPTIONS = {"num_samples", "beta", "gamma", "weight", "link", "gradient", "p_eps", "grad_eps"}


def make_objective(name: str, apply_fn: Callable, *, sigma: ArrayLike, **options: Any) -> Callable:
    """A training loss ``loss_fn(params, x, y, key) -> scalar`` by name (used by ``smoothjax train``).

    Names (:data:`OBJECTIVES`) and their options (keyword arguments of the loss):

    * ``"gaussian"``: :func:`gaussian_augmentation_loss` (``num_samples``);
    * ``"macer"``: :func:`macer_loss` (``num_samples``, ``beta``, ``gamma``, ``lam``);
    * ``"consistency"``: :func:`consistency_loss` (``num_samples``, ``lam``, ``eta``);
    * ``"smoothadv"``: :func:`smoothadv_loss` (``num_samples``, ``epsilon``, ``num_steps``,
      ``clip_min``, ``clip_max``);
    * ``"cohen_l2"``, ``"sos_l2"``, ``"dipole_l2"``, ``"first_order_l1"``, ``"first_order_linf"``:
      :func:`certified_radius_loss` targeting that radius (``num_samples``, ``beta``, ``gamma``,
      ``weight``, ``link``, ``gradient``, ``p_eps``, ``grad_eps``).

    ``sigma`` is the noise std in input units (use the one you will certify with). Unknown names or
    options raise ``ValueError``. The returned function is pure and jit-compatible; it is
    deterministic given ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from smoothjax.objectives import make_objective
      >>> loss_fn = make_objective("consistency", lambda w, x: x @ w, sigma=0.25, lam=10.0)
      >>> print(f"{float(loss_fn(jnp.zeros((2, 3)), jnp.ones((4, 2)), jnp.zeros(4, int), jax.random.key(0))):.4f}")
      1.6479
    """
    check_sigma(sigma)
    if name in _OPTIONS:
        fn, allowed = _OPTIONS[name]
        extra = {}
    elif name in RADII:
        fn, allowed = certified_radius_loss, _RADIUS_OPTIONS
        extra = {"radius": name}
    else:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"objective {name!r} does not take option(s) {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(allowed))}."
        )

    def loss_fn(params, x, y, key):
        return fn(apply_fn, params, x, y, key, sigma=sigma, **extra, **options)

    loss_fn.__doc__ = f"{name!r} objective at sigma={sigma}: loss_fn(params, x, y, key) -> scalar."
    return loss_fn
