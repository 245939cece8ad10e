"""Monte Carlo building blocks of the differentiable surrogates and the training objectives.

Shared by :mod:`smoothjax.surrogates` and :mod:`smoothjax.objectives`: Gaussian noise draws in the
dtype of the inputs (optionally antithetic pairs), the soft indicator of the predicted class, the
label gather and the antithetic noise-weighted (Stein) estimate of ``grad_x E[s(x + eps)]``.
Shapes: noise ``[S, B, *input_shape]``, logits and soft indicators ``[S, B, C]``, labels ``[B]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_float():
    """JAX's default float dtype: float64 with ``jax_enable_x64``, else float32."""
    return jnp.asarray(0.0).dtype


def gaussian_noise(key, x, num_samples: int, sigma, antithetic: bool = False):
    """``sigma * N(0, I)`` draws of shape ``[num_samples, *x.shape]`` in ``x``'s dtype.

    With ``antithetic=True`` the second half is the negation of the first (``num_samples`` even).
    """
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else default_float()
    if antithetic:
        half = jax.random.normal(key, (num_samples // 2,) + x.shape, dtype)
        z = jnp.concatenate([half, -half], axis=0)
    else:
        z = jax.random.normal(key, (num_samples,) + x.shape, dtype)
    return jnp.asarray(sigma, dtype) * z


def soft_link(logits, beta, link: str):
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


def take_label(values, y):
    """``values[..., b, y_b]`` for ``values [..., B, C]``, ``y [B]`` -> ``[..., B]``."""
    idx = jnp.broadcast_to(y[:, None], values.shape[:-1] + (1,))
    return jnp.take_along_axis(values, idx, axis=-1)[..., 0]


def stein_gradient(noise, s_y, sigma):
    """Antithetic noise-weighted estimate of ``grad_x E[s(x + eps)]``, ``[B, *input_shape]``.

    ``noise [S, B, ...]`` with ``noise[S/2:] = -noise[:S/2]``, ``s_y [S, B]`` the soft indicator at
    ``x + noise``: ``(1/S) sum_{s <= S/2} eps_s (s(x + eps_s) - s(x - eps_s)) / sigma^2``.
    """
    half = noise.shape[0] // 2
    diff = s_y[:half] - s_y[half:]
    weights = diff.reshape(diff.shape + (1,) * (noise.ndim - 2)).astype(noise.dtype)
    return jnp.sum(noise[:half] * weights, axis=0) / (noise.shape[0] * jnp.asarray(sigma, noise.dtype) ** 2)
