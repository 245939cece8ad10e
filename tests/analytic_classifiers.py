"""Analytic classifiers whose smoothed probability and gradient are known in closed form.

Each classifier is a pure ``apply_fn(params, x_batch) -> logits [batch, 3]`` (three classes, the
third never wins; both classes share the module-level :func:`apply_fn`, the classifier being a
parameter) together with closed forms, computed with NumPy/SciPy only (independent of
smoothjax), of everything the sampler estimates at an input ``x0`` for Gaussian noise
``x0 + sigma * N(0, I)``:

- ``p``: the smoothed top-class probability ``g(x0) = P[f(x0 + e) = top]``;
- ``grad``: ``grad_x g(x0)`` (1/input units, a vector shaped like the input);
- ``dipole_both``, ``dipole_plus_only``: for antithetic pairs ``(x0 + e, x0 - e)``, the probability
  that both sides give the top class, and that only the ``+`` side does;
- ``flip_distance(norm, mask)``: the true distance (input units, in the l2/l1/linf norm) from
  ``x0`` to the nearest point where the smoothed top-class probability falls to 1/2 (moving only
  the coordinates selected by the boolean ``mask``, when given). Every sound certified radius in
  that norm is at most this number.

Both classifiers depend on ``x`` only through ``s = w . x`` with a unit l2 vector ``w``, so the
smoothed classifier depends only on ``s`` too, its gradient is parallel to ``w``, and the nearest
point of the set ``{g <= 1/2}`` in any norm lies on the hyperplane ``w . x = s*`` at distance
``|s* - s0| / ||w||_dual`` (dual norm of the norm used: l2 -> l2, l1 -> linf, linf -> l1).

- :class:`HalfSpace`: class 1 where ``w . x + b > 0``, else class 0. At ``x0 = 0``:
  ``p = Phi(b / sigma)`` and ``||grad g|| = phi(b / sigma) / sigma``, the largest gradient any
  smoothed classifier can have at that p; Cohen's radius ``sigma Phi^-1(p) = b`` is exact.
- :class:`Slab`: class 1 where ``|w . x - c| <= t``, else class 0. At the centre ``w . x0 = c``:
  ``p = 2 Phi(t / sigma) - 1`` and ``grad g = 0``; there the second-order (SoS) certificate is
  tight and strictly beats Cohen's.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from scipy import optimize, stats


def unit_vector(shape, seed=0):
    """A fixed random unit (l2) vector with the given input shape (NumPy, float64)."""
    w = np.random.default_rng(seed).standard_normal(int(np.prod(shape)))
    return (w / np.linalg.norm(w)).reshape(shape)


def _dual_norm(w, norm, mask=None):
    """Dual norm of w (restricted to the coordinates in ``mask``, perturbations confined to them)."""
    w = np.ravel(w) if mask is None else np.ravel(w)[np.ravel(mask)]
    return {"l2": np.linalg.norm(w, 2), "l1": np.max(np.abs(w)), "linf": np.sum(np.abs(w))}[norm]


def _logits_from_score(score):
    """Three-class logits: class 1 wins where score > 0, class 0 where score < 0, class 2 never."""
    return jnp.stack([-score, score, -jnp.abs(score) - 1.0], axis=-1)


def apply_fn(params, x):
    """The one ``apply_fn`` of both classifiers (which one is a parameter, ``params["slab"]``).

    Sharing one function object means that jitted programs (e.g. ``smoothjax.certify``, whose
    ``apply_fn`` is static) compile once for both classifiers: tests stay fast.
    """
    x = jnp.asarray(x)
    w = params["w"].astype(x.dtype)
    s = jnp.sum(x.reshape(x.shape[0], -1) * w.reshape(1, -1), axis=-1)
    half_space = s + params["b"].astype(x.dtype)
    slab = params["t"].astype(x.dtype) - jnp.abs(s - params["c"].astype(x.dtype))
    return _logits_from_score(jnp.where(params["slab"], slab, half_space))


def _params(w, b=0.0, t=0.0, c=0.0, slab=False):
    f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return {"w": f(w), "b": f(b), "t": f(t), "c": f(c), "slab": jnp.asarray(slab)}


@dataclasses.dataclass(frozen=True)
class HalfSpace:
    """Class 1 where ``w . x + b > 0``; ``w`` has unit l2 norm and the input shape."""

    w: np.ndarray
    b: float

    apply_fn = staticmethod(apply_fn)

    @property
    def params(self):
        return _params(self.w, b=self.b)

    def score(self, x0):
        return float(np.sum(np.ravel(self.w) * np.ravel(x0)) + self.b)

    def top_class(self, x0):
        return 1 if self.score(x0) > 0 else 0

    def p(self, x0, sigma):
        s = self.score(x0)
        return float(stats.norm.cdf(abs(s) / sigma))

    def grad(self, x0, sigma):
        """grad of g (the top-class probability) at x0."""
        s = self.score(x0)
        sign = 1.0 if s > 0 else -1.0
        return sign * stats.norm.pdf(s / sigma) / sigma * np.asarray(self.w, float)

    def dipole_both(self, x0, sigma):
        return float(2 * stats.norm.cdf(abs(self.score(x0)) / sigma) - 1)

    def dipole_plus_only(self, x0, sigma):
        return float(stats.norm.sf(abs(self.score(x0)) / sigma))

    def flip_distance(self, x0, norm="l2", mask=None):
        """Distance (perturbations confined to ``mask`` when given) to the decision boundary."""
        return abs(self.score(x0)) / _dual_norm(self.w, norm, mask)


@dataclasses.dataclass(frozen=True)
class Slab:
    """Class 1 where ``|w . x - c| <= t``; ``w`` has unit l2 norm and the input shape."""

    w: np.ndarray
    t: float
    c: float = 0.0

    apply_fn = staticmethod(apply_fn)

    @property
    def params(self):
        return _params(self.w, t=self.t, c=self.c, slab=True)

    def offset(self, x0):
        return float(np.sum(np.ravel(self.w) * np.ravel(x0)) - self.c)

    def _p_inside(self, u, sigma):
        return stats.norm.cdf((self.t - u) / sigma) - stats.norm.cdf((-self.t - u) / sigma)

    def top_class(self, x0, sigma):
        return 1 if self._p_inside(self.offset(x0), sigma) > 0.5 else 0

    def p(self, x0, sigma):
        q = float(self._p_inside(self.offset(x0), sigma))
        return q if q > 0.5 else 1 - q

    def grad(self, x0, sigma):
        u = self.offset(x0)
        d_inside = (-stats.norm.pdf((self.t - u) / sigma) + stats.norm.pdf((self.t + u) / sigma)) / sigma
        sign = 1.0 if self.top_class(x0, sigma) == 1 else -1.0
        return sign * d_inside * np.asarray(self.w, float)

    def dipole_both(self, x0, sigma):
        """Only for the inside class (top class 1) with |offset| <= t."""
        u = abs(self.offset(x0))
        assert self.top_class(x0, sigma) == 1 and u <= self.t
        return float(2 * stats.norm.cdf((self.t - u) / sigma) - 1)

    def dipole_plus_only(self, x0, sigma):
        return self.p(x0, sigma) - self.dipole_both(x0, sigma)

    def flip_offset(self, sigma):
        """The offset u* > 0 from the centre where the inside probability falls to 1/2."""
        return optimize.brentq(lambda u: self._p_inside(u, sigma) - 0.5, 0.0, self.t + 10 * sigma, xtol=1e-14)

    def flip_distance(self, x0, sigma, norm="l2", mask=None):
        """Distance from x0 (inside class, p > 1/2) to the nearest point where p falls to 1/2
        (perturbations confined to the coordinates in ``mask`` when given)."""
        assert self.top_class(x0, sigma) == 1
        return (self.flip_offset(sigma) - abs(self.offset(x0))) / _dual_norm(self.w, norm, mask)
