"""Training objectives for smoothed classifiers: the field's baselines and certificate-aware losses.

Every objective is a Monte Carlo loss over ``num_samples`` noisy copies ``x + eps``,
``eps ~ N(0, sigma^2 I)``, of each input, differentiable in the model parameters. Objectives
(:data:`OBJECTIVES`, built by :func:`make_objective` as ``loss_fn(params, x, y, key)``):

* the field's baselines, as published: ``"gaussian"`` (Gaussian augmentation, Cohen et al. 2019),
  ``"macer"`` (Zhai et al. 2020), ``"consistency"`` (Jeong & Shin 2020), ``"smoothadv"`` (Salman et
  al. 2019): :func:`gaussian_augmentation_loss`, :func:`macer_loss`, :func:`consistency_loss`,
  :func:`smoothadv_loss`;
* certificate-aware objectives (:data:`RADII`), :func:`certified_radius_loss`: cross-entropy of the
  smoothed softmax plus a hinge ``max(gamma - R / sigma, 0)`` on one of smoothjax's certified radii
  ``R`` (Cohen l2, SoS l2, dipole l2, first-order l1 / linf) evaluated at the soft surrogates of
  :mod:`smoothjax.surrogates` (soft smoothed probability, gradient of the smoothed classifier and
  its norms, :func:`soft_radius`); those names are importable from here too.

Finite everywhere. Every objective's value and gradient (in the parameters) are finite for every
input the losses can see, in float32 and in float64: zero input gradients, ``p`` at 1/2 and at 1,
saturated softmax, gradient norms at their maximum (tested). The radii are evaluated at clipped
surrogates (see :mod:`smoothjax.surrogates`), the log of an averaged softmax is a log-sum-exp, and
MACER leaves out the inputs whose ``Phi^-1`` would overflow.

dtype. The losses run in the models' dtype (noise is drawn in the dtype of ``x``); the
certificate-aware hinge runs in JAX's default float dtype (float64 with ``jax_enable_x64``, else
float32), and so does their sum. In float32 the Theorem 3 radii (first-order l1 / linf) are finite
but their solver often stops before its convergence tolerance and then reports a zero derivative,
so those hinges train mostly through ``p`` in float32; enable x64 to train them.

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

from smoothjax._monte_carlo import gaussian_noise as _noise
from smoothjax._monte_carlo import soft_link as _soft_link
from smoothjax._monte_carlo import stein_gradient as _stein_gradient
from smoothjax._monte_carlo import take_label as _take
from smoothjax._validation import check_sigma, check_static_int
from smoothjax.surrogates import (
    GRAD_EPS,
    P_EPS,
    RADII,
    gradient_norms,
    noisy_logits,
    smoothed_gradient,
    soft_radius,
    soft_smoothed_probabilities,
)

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

#: The field's baseline objectives.
BASELINES = ("gaussian", "macer", "consistency", "smoothadv")
#: Names accepted by :func:`make_objective`: the baselines and the certificate-aware objectives, one per radius.
OBJECTIVES = BASELINES + RADII

_GRADIENT_RADII = ("sos_l2", "first_order_l1", "first_order_linf")


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
    # the cross-entropy is in the model's dtype, the hinge in the certificate math's (at least as wide)
    return jnp.mean(ce).astype(r.dtype) + weight * (sig / 2) * jnp.mean(hinge)


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
