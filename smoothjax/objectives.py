"""Differentiable surrogates of smoothed quantities, and certificate-aware training losses.

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
  ``grad_x E[s(x + eps)] = E[eps s(x + eps)] / sigma^2`` (needs no model gradient, valid for hard
  classifiers too; with antithetic pairs ``E[eps (s(x + eps) - s(x - eps))] / (2 sigma^2)``) or
  automatic differentiation through the model ``E[grad_x s(x + eps)]``;
* its l2, l1 and linf norms, the statistics the certificates consume (first paper, Section 3.2:
  the l2 radius needs ``||grad g||_2``, the l1 radius ``||grad g||_2`` and ``||grad g||_inf``, the
  linf radius ``||grad g||_2`` and ``||grad g||_1``).

On top of these, :func:`certified_radius_loss` is a MACER-style objective: cross-entropy of the
smoothed (noise-averaged) softmax plus a hinge ``max(gamma - R / sigma, 0)`` on a certified radius
``R`` of the correctly classified inputs, where ``R`` is one of the library's certificates
evaluated at the soft surrogates (Cohen l2, SoS l2, first-order l1 / linf). :func:`make_objective`
returns ``loss_fn(params, x, y, key) -> scalar`` for the training loop (``smoothjax train
--objective NAME``).

Edges (documented epsilons). Certificates are singular where ``p -> 1`` (``Phi^-1(p) -> inf``) and
their gradients blow up or vanish at ``p = 1/2`` and at the largest gradient norm a smoothed
classifier can have, ``phi(Phi^-1(p)) / sigma``. Inside the losses the surrogates are therefore
clipped into the interior before they reach a radius: ``p`` into ``[1/2 + p_eps, 1 - p_eps]`` for
the first-order radii (``[p_eps, 1 - p_eps]`` for Cohen's closed form), the gradient norms to at
most ``(1 - grad_eps)`` times that maximum and at least ``grad_eps`` times it (the l1 / linf norms are
rescaled with the l2 norm, so the ratios the certificates depend on are kept), and the l2 norm of a
zero gradient uses ``sqrt(|v|^2 + tiny^2) - tiny`` so its derivative is finite (zero) at 0. The
defaults ``p_eps = 1e-4``, ``grad_eps = 1e-3`` are far below the Monte Carlo resolution of a
training batch (16 noise samples per input), so the clipping only removes singularities.
Clipping makes the gradient zero outside the interval, as ``jnp.clip`` does.

Shapes: ``x: [batch, *input_shape]``, ``y: [batch]`` int, ``apply_fn(params, x_batch) -> logits
[batch, num_classes]``; the model must treat inputs independently (no batch statistics), which the
autodiff gradient estimator relies on.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import ndtri

from smoothjax._config import as_float, float_dtype
from smoothjax._validation import check_sigma, check_static_int

__all__ = [
    "OBJECTIVES",
    "RADII",
    "certified_radius_loss",
    "gaussian_augmentation_loss",
    "gradient_norms",
    "make_objective",
    "noisy_logits",
    "smoothed_gradient",
    "soft_radius",
    "soft_smoothed_probabilities",
]

#: Radii the certificate-aware objective can target (names as in ``pipeline.certify``).
RADII = ("cohen_l2", "sos_l2", "first_order_l1", "first_order_linf")
#: Names accepted by :func:`make_objective`.
OBJECTIVES = ("gaussian",) + RADII

P_EPS = 1e-4
GRAD_EPS = 1e-3
_NORM_TINY = 1e-12


# --------------------------------------------------------------------------------------------
# Noise and model evaluation
# --------------------------------------------------------------------------------------------


def _noise(key, x, num_samples: int, sigma, antithetic: bool = False):
    """``sigma * N(0, I)`` draws of shape ``[num_samples, *x.shape]`` in ``x``'s dtype.

    With ``antithetic=True`` the second half is the negation of the first (``num_samples`` even).
    """
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else float_dtype()
    if antithetic:
        half = jax.random.normal(key, (num_samples // 2,) + x.shape, dtype)
        z = jnp.concatenate([half, -half], axis=0)
    else:
        z = jax.random.normal(key, (num_samples,) + x.shape, dtype)
    return jnp.asarray(sigma, dtype) * z


def noisy_logits(apply_fn: Callable, params: Any, x, noise):
    """Logits of the model at ``x + noise``: ``noise [S, batch, *input_shape]`` -> ``[S, batch, C]``.

    All ``S * batch`` noisy copies go through ``apply_fn`` in one call.
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


def soft_smoothed_probabilities(
    apply_fn: Callable,
    params: Any,
    x,
    key,
    *,
    sigma,
    num_samples: int = 16,
    beta=1.0,
    link: str = "softmax",
):
    """Monte Carlo soft smoothed probabilities ``p [batch, C]``.

    ``p_c(x) = (1/S) sum_s s_c(f(x + eps_s))``, ``eps_s ~ N(0, sigma^2 I)`` i.i.d. (shared across the
    batch, ``S = num_samples``), with the link ``s`` = ``softmax(beta * logits)`` (``link="softmax"``)
    or ``sigmoid(beta * (f_c - max_{k != c} f_k))`` (``link="sigmoid"``, not normalised over classes).
    Unbiased for ``E_eps[s_c(f(x + eps))]``, which tends to the smoothed hard classifier
    ``g_c(x) = P[argmax f(x + eps) = c]`` as ``beta -> inf`` (MACER's ``beta``; ``beta = 1`` is the
    plain noise-averaged softmax). Differentiable in ``params`` and ``x``; deterministic given ``key``.

    Args:
      apply_fn: ``apply_fn(params, x_batch) -> logits [batch, C]``.
      x: ``[batch, *input_shape]``; sigma: noise std in input units; beta: inverse temperature.
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    noise = _noise(key, x, num_samples, sigma)
    return jnp.mean(_soft_link(noisy_logits(apply_fn, params, x, noise), beta, link), axis=0)


def smoothed_gradient(
    apply_fn: Callable,
    params: Any,
    x,
    y,
    key,
    *,
    sigma,
    num_samples: int = 16,
    beta=1.0,
    link: str = "softmax",
    method: str = "stein",
):
    """Estimate of ``grad_x p_y(x)`` (1/input units), ``[batch, *input_shape]``.

    ``p_y`` is the soft smoothed probability of :func:`soft_smoothed_probabilities` for class
    ``y [batch]``. Two unbiased estimators:

    * ``method="stein"`` (noise-weighted; Salman et al. 2019, second paper eq. 24):
      ``grad_x E[s(x + eps)] = E[eps s(x + eps)] / sigma^2``, computed with antithetic pairs
      ``(eps, -eps)``: ``(1/S) sum_{s <= S/2} eps_s (s(x + eps_s) - s(x - eps_s)) / sigma^2``
      (``num_samples`` must be even). It needs no model gradient (works for any ``f``) but its
      variance grows with the input dimension.
    * ``method="autodiff"``: ``(1/S) sum_s grad_x s_y(f(x + eps_s))`` by ``jax.grad`` through the
      model (low variance; requires a differentiable model that treats batch items independently).

    Both are differentiable in ``params`` (the autodiff one by second-order differentiation).
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    y = jnp.asarray(y)
    if method == "stein":
        if num_samples % 2:
            raise ValueError(f"method='stein' uses antithetic pairs: num_samples must be even, got {num_samples}.")
        noise = _noise(key, x, num_samples, sigma, antithetic=True)
        s = _soft_link(noisy_logits(apply_fn, params, x, noise), beta, link)  # [S, B, C]
        s_y = jnp.take_along_axis(s, y[None, :, None], axis=-1)[..., 0]  # [S, B]
        half = num_samples // 2
        diff = s_y[:half] - s_y[half:]  # [S/2, B]
        eps = noise[:half]
        weights = diff.reshape(diff.shape + (1,) * (eps.ndim - 2))
        sig = jnp.asarray(sigma, eps.dtype)
        return jnp.sum(eps * weights, axis=0) / (num_samples * sig**2)
    if method == "autodiff":
        noise = _noise(key, x, num_samples, sigma)

        def total_p(xx):
            s = _soft_link(noisy_logits(apply_fn, params, xx, noise), beta, link)
            s_y = jnp.take_along_axis(s, y[None, :, None], axis=-1)
            return jnp.sum(jnp.mean(s_y, axis=0))  # sum over batch: grads are per input

        return jax.grad(total_p)(jnp.asarray(x))
    raise ValueError(f"method must be 'stein' or 'autodiff', got {method!r}.")


def gradient_norms(grad):
    """``(l2, l1, linf)`` norms of ``grad [batch, *input_shape]`` over the input axes, each ``[batch]``.

    The l2 norm is ``sqrt(|v|^2 + t^2) - t`` with ``t = 1e-12`` (exact to 1e-12 absolute), so its
    derivative is finite (zero) at ``v = 0``; ``|.|`` and ``max`` have finite subgradients everywhere.
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


def _max_grad_norm(p, sigma):
    """``phi(Phi^-1(p)) / sigma``: the largest ``||grad g||_2`` a smoothed classifier can have at ``g = p``."""
    z = ndtri(p)
    return jnp.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * sigma)


def soft_radius(
    radius: str,
    p,
    sigma,
    *,
    grad_l2=None,
    grad_l1=None,
    grad_linf=None,
    dim: int | None = None,
    p_eps: float = P_EPS,
    grad_eps: float = GRAD_EPS,
):
    """A certified radius (input units) evaluated at soft surrogates, clipped into the interior.

    * ``"cohen_l2"``: ``sigma * Phi^-1(p)`` with ``p`` clipped into ``[p_eps, 1 - p_eps]`` (negative
      below 1/2, so a hinge keeps pushing misclassified-by-margin inputs up; Cohen et al. 2019).
    * ``"sos_l2"``: :func:`smoothjax.certificates.sos_radius` ``(p, grad_l2, sigma)`` (second paper,
      Theorem 1).
    * ``"first_order_l1"``: :func:`smoothjax.first_order.l1_radius` ``(p, grad_l2, grad_linf, sigma)``
      (first paper, Corollary 3.2).
    * ``"first_order_linf"``: :func:`smoothjax.first_order.linf_radius`
      ``(p, grad_l2, grad_l1, dim, sigma)`` (Corollary 3.3).

    For the last three, ``p`` is clipped into ``[1/2 + p_eps, 1 - p_eps]`` and the gradient norms are
    scaled by one common factor so that ``grad_eps * M <= grad_l2 <= (1 - grad_eps) * M`` with
    ``M = phi(Phi^-1(p)) / sigma`` (the feasible region of Theorem 3), which keeps ``l1 / l2`` and
    ``linf / l2``. Gradient norms are in 1/input units (no sigma factor), as everywhere in smoothjax.
    The radius functions of the other modules provide the gradients (implicit differentiation of the
    Theorem 3 solve); non-finite radii (which the clipping should prevent) are replaced by 0.
    """
    dtype = float_dtype()
    p = as_float(p)
    sigma = jnp.asarray(sigma, dtype)
    if radius == "cohen_l2":
        return sigma * ndtri(jnp.clip(p, p_eps, 1.0 - p_eps))
    if radius not in RADII:
        raise ValueError(f"unknown radius {radius!r}; choose one of {', '.join(RADII)}.")
    if grad_l2 is None:
        raise ValueError(f"radius {radius!r} needs grad_l2 (the l2 norm of grad p, 1/input units).")
    p = jnp.clip(p, 0.5 + p_eps, 1.0 - p_eps)
    l2 = as_float(grad_l2)
    top = _max_grad_norm(p, sigma)
    l2_clipped = jnp.clip(l2, grad_eps * top, (1.0 - grad_eps) * top)
    scale = l2_clipped / jnp.maximum(l2, jnp.finfo(dtype).tiny)
    if radius == "sos_l2":
        from smoothjax.certificates import sos_radius

        r = sos_radius(p, l2_clipped, sigma)
    elif radius == "first_order_l1":
        if grad_linf is None:
            raise ValueError("radius 'first_order_l1' needs grad_linf (the linf norm of grad p).")
        from smoothjax.first_order import l1_radius

        # where l2 was raised to its floor (scale > 1 or l2 = 0), use an isotropic-looking ratio 0
        linf = jnp.minimum(as_float(grad_linf) * jnp.minimum(scale, 1.0), l2_clipped)
        r = l1_radius(p, l2_clipped, linf, sigma)
    else:  # first_order_linf
        if grad_l1 is None or dim is None:
            raise ValueError("radius 'first_order_linf' needs grad_l1 and dim.")
        from smoothjax.first_order import linf_radius

        l1 = jnp.minimum(as_float(grad_l1) * jnp.minimum(scale, 1.0), math.sqrt(dim) * l2_clipped)
        r = linf_radius(p, l2_clipped, l1, dim, sigma)
    r = jnp.asarray(r, dtype)
    return jnp.where(jnp.isfinite(r), r, 0.0)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def gaussian_augmentation_loss(apply_fn: Callable, params: Any, x, y, key, *, sigma, num_samples: int = 1):
    """Plain Gaussian noise augmentation (Cohen et al. 2019): mean over ``num_samples`` noisy copies
    of ``optax.losses.softmax_cross_entropy_with_integer_labels(f(x + eps), y)``, averaged over the batch.
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 1)
    noise = _noise(key, x, num_samples, sigma)
    logits = noisy_logits(apply_fn, params, x, noise)  # [S, B, C]
    labels = jnp.broadcast_to(jnp.asarray(y)[None], logits.shape[:2])
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def certified_radius_loss(
    apply_fn: Callable,
    params: Any,
    x,
    y,
    key,
    *,
    sigma,
    radius: str = "cohen_l2",
    num_samples: int = 16,
    beta=16.0,
    gamma=4.0,
    weight=12.0,
    link: str = "softmax",
    gradient: str = "autodiff",
    margin: str = "top",
    p_eps: float = P_EPS,
    grad_eps: float = GRAD_EPS,
):
    """Certificate-aware loss (MACER-style, Zhai et al. 2020, generalised to any smoothjax radius).

    With ``S = num_samples`` noisy copies ``x + eps_s`` of each input (one draw, shared by all terms):

    ``loss = mean_b [ -log pbar_{y_b}(x_b) ]
           + weight * (sigma / 2) * mean_b [ 1[correct_b] * max(gamma - R(x_b) / sigma, 0) ]``

    * ``pbar = (1/S) sum_s softmax(f(x + eps_s))``: cross-entropy of the smoothed soft classifier
      (``optax.losses.softmax_cross_entropy_with_integer_labels`` applied to ``log pbar``, which is
      already normalised);
    * ``R`` = :func:`soft_radius` ``(radius, p_y, sigma, grad norms)`` at the soft smoothed
      probability ``p_y`` with inverse temperature ``beta`` (``link``), and for the gradient-based
      radii the norms of :func:`smoothed_gradient` of ``p_y`` (``gradient="autodiff"`` or
      ``"stein"``), all from the same noise draw;
    * ``correct_b``: ``argmax p(x_b) = y_b`` (the hinge only acts where a radius is certified);
    * ``gamma``: the hinge threshold in units of sigma (radii beyond ``gamma * sigma`` are not pushed).
    * ``margin`` (``"cohen_l2"`` only): ``"top"`` uses ``R = sigma Phi^-1(p_y)`` (the certified
      radius itself); ``"runner_up"`` uses MACER's ``R = sigma/2 (Phi^-1(p_y) - Phi^-1(p_b))`` with
      ``p_b`` the largest other class (equal to the former when ``p_b = 1 - p_y``, larger otherwise,
      i.e. Cohen's two-class radius, which pushes specifically against the runner-up).

    The factor ``sigma / 2`` and the defaults ``beta = 16``, ``S = 16`` follow MACER. MACER's hinge is
    on ``xi = Phi^-1(p_A) - Phi^-1(p_B)`` (about ``2 R / sigma``), so its ``gamma = 8`` is our
    ``gamma = 4`` (radius ``4 sigma``, about the largest Cohen radius ``n = 1e5`` samples can certify)
    and its ``lambda`` is our ``weight / 2``. ``weight = 12`` and ``gamma = 4`` were the best of the
    few settings tried on digits (experiments/certificate_training.py). Returns a scalar; finite at
    the edges (see the module doc).
    """
    check_sigma(sigma)
    num_samples = check_static_int("num_samples", num_samples, 2 if gradient == "stein" else 1)
    if radius not in RADII:
        raise ValueError(f"unknown radius {radius!r}; choose one of {', '.join(RADII)}.")
    y = jnp.asarray(y)
    x = jnp.asarray(x)
    antithetic = radius != "cohen_l2" and gradient == "stein"
    if antithetic and num_samples % 2:
        raise ValueError(f"gradient='stein' uses antithetic pairs: num_samples must be even, got {num_samples}.")
    noise = _noise(key, x, num_samples, sigma, antithetic=antithetic)

    def soft_p_y(xx):
        logits = noisy_logits(apply_fn, params, xx, noise)  # [S, B, C]
        s = _soft_link(logits, beta, link)
        p = jnp.mean(s, axis=0)  # [B, C]
        return jnp.take_along_axis(p, y[:, None], axis=-1)[:, 0], (logits, p)

    if radius != "cohen_l2" and gradient == "autodiff":
        grad_x, (p_y, (logits, p_soft)) = jax.grad(lambda xx: _sum_first(soft_p_y(xx)), has_aux=True)(x)
    else:
        p_y, (logits, p_soft) = soft_p_y(x)
        grad_x = None
    if radius != "cohen_l2" and gradient == "stein":
        s = _soft_link(logits, beta, link)
        s_y = jnp.take_along_axis(s, y[None, :, None], axis=-1)[..., 0]
        half = num_samples // 2
        w = (s_y[:half] - s_y[half:]).reshape((half, x.shape[0]) + (1,) * (x.ndim - 1))
        grad_x = jnp.sum(noise[:half] * w, axis=0) / (num_samples * jnp.asarray(sigma, noise.dtype) ** 2)
    elif gradient not in ("autodiff", "stein"):
        raise ValueError(f"gradient must be 'autodiff' or 'stein', got {gradient!r}.")

    # cross-entropy of the noise-averaged softmax (beta = 1): -log mean_s softmax(f(x + eps_s))_y
    log_pbar = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - math.log(num_samples)
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(log_pbar, y)

    if grad_x is None and margin == "runner_up":
        others = jnp.where(jax.nn.one_hot(y, p_soft.shape[-1], dtype=bool), -jnp.inf, p_soft)
        p_b = jnp.max(others, axis=-1)
        r = 0.5 * (soft_radius(radius, p_y, sigma, p_eps=p_eps) - soft_radius(radius, p_b, sigma, p_eps=p_eps))
    elif margin not in ("top", "runner_up"):
        raise ValueError(f"margin must be 'top' or 'runner_up', got {margin!r}.")
    elif grad_x is None:
        r = soft_radius(radius, p_y, sigma, p_eps=p_eps, grad_eps=grad_eps)
    else:
        l2, l1, linf = gradient_norms(grad_x)
        r = soft_radius(
            radius, p_y, sigma, grad_l2=l2, grad_l1=l1, grad_linf=linf,
            dim=int(math.prod(x.shape[1:])), p_eps=p_eps, grad_eps=grad_eps,
        )
    correct = jnp.argmax(p_soft, axis=-1) == y
    sig = jnp.asarray(sigma, r.dtype)
    hinge = jnp.where(correct, jnp.maximum(gamma - r / sig, 0.0), 0.0)
    return jnp.mean(ce) + weight * (sig / 2) * jnp.mean(hinge)


def _sum_first(out):
    value, aux = out
    return jnp.sum(value), (value, aux)


def make_objective(name: str, apply_fn: Callable, *, sigma, **options) -> Callable:
    """A training loss ``loss_fn(params, x, y, key) -> scalar`` by name (used by ``smoothjax train``).

    Names (:data:`OBJECTIVES`):

    * ``"gaussian"``: :func:`gaussian_augmentation_loss` (plain cross-entropy under Gaussian noise
      augmentation); options: ``num_samples`` (noisy copies per input, default 1).
    * ``"cohen_l2"``, ``"sos_l2"``, ``"first_order_l1"``, ``"first_order_linf"``:
      :func:`certified_radius_loss` targeting that radius; options: ``num_samples``, ``beta``,
      ``gamma``, ``weight``, ``link``, ``gradient``, ``margin``, ``p_eps``, ``grad_eps``.

    ``sigma`` is the noise std in input units (use the one you will certify with). Unknown names or
    options raise ``ValueError``. The returned function is pure and jit-compatible; it is
    deterministic given ``key``.
    """
    check_sigma(sigma)
    if name == "gaussian":
        allowed = {"num_samples"}
        fn = gaussian_augmentation_loss
        extra = {}
    elif name in RADII:
        allowed = {"num_samples", "beta", "gamma", "weight", "link", "gradient", "margin", "p_eps", "grad_eps"}
        fn = certified_radius_loss
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
