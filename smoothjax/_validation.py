"""Host-side validation of public-function inputs.

Policy (see README, "Bad input"): public entry points call these checks first. When an argument
is a concrete value (a Python number, a NumPy array, or a JAX array outside of ``jit``), a bad
value raises ``ValueError`` with a sentence a user understands. When it is a tracer (inside
``jit``/``vmap``/``grad``), the check is skipped and the function's own in-graph flag applies
instead (NaN radius / abstain), as each function documents.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_alpha",
    "check_at_least_one",
    "check_counts",
    "check_finite",
    "check_nonnegative",
    "check_probability",
    "check_scalar",
    "check_sigma",
    "check_static_int",
    "invalid_probability",
    "invalid_sigma",
    "is_concrete",
]


def is_concrete(x: Any) -> bool:
    """True when ``x`` (or every leaf of it) holds concrete values we can inspect on the host."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def _host(x: Any) -> np.ndarray | None:
    if not is_concrete(x):
        return None
    return np.asarray(x)


def _show(a: Any) -> str:
    """A value for an error message: a plain number for one entry, a short list otherwise."""
    arr = np.asarray(a)
    if arr.size == 1:
        return repr(arr.reshape(-1)[0].item())
    return np.array2string(arr, threshold=6, separator=", ")


def check_finite(name: str, x: Any) -> None:
    """Raise if ``x`` contains NaN or inf."""
    a = _host(x)
    if a is None or a.dtype.kind not in "fc":
        return
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, but it contains NaN or inf.")


def check_probability(name: str, x: Any) -> None:
    """Raise unless every entry of ``x`` is a number in [0, 1]."""
    a = _host(x)
    if a is None:
        return
    if np.any(np.isnan(a)):
        raise ValueError(f"{name} contains NaN; it must be a probability in [0, 1].")
    if np.any((a < 0) | (a > 1)):
        bad = a[(a < 0) | (a > 1)].ravel()[0]
        raise ValueError(f"{name} must be a probability in [0, 1], got {_show(bad)}.")


def check_alpha(x: Any, name: str = "alpha") -> None:
    """Raise unless every entry of ``x`` lies strictly between 0 and 1."""
    a = _host(x)
    if a is None:
        return
    if np.any(np.isnan(a)) or np.any((a <= 0) | (a >= 1)):
        raise ValueError(
            f"{name} must lie strictly between 0 and 1 (a failure probability such as 0.001), got {_show(a)}."
        )


def check_sigma(x: Any, name: str = "sigma") -> None:
    """Raise unless every entry of ``x`` is finite and > 0 (a noise standard deviation)."""
    a = _host(x)
    if a is None:
        return
    if np.any(~np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{name} must be a finite noise level > 0, got {_show(a)}.")


def check_scalar(name: str, x: Any, meaning: str) -> None:
    """Raise unless ``x`` is a scalar (a Python number or a 0-d array, concrete or traced)."""
    shape = np.shape(x)
    if shape != ():
        raise ValueError(f"{name} must be a scalar ({meaning}), got an array of shape {shape}.")


def check_nonnegative(name: str, x: Any) -> None:
    """Raise unless every entry of ``x`` is finite and >= 0."""
    a = _host(x)
    if a is None:
        return
    if np.any(np.isnan(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be >= 0 and not NaN, got {_show(a)}.")


def check_counts(successes: Any, trials: Any) -> None:
    """Raise unless 0 <= successes <= trials and trials >= 1, all whole numbers."""
    k = _host(successes)
    n = _host(trials)
    if k is not None:
        if np.any(np.isnan(k.astype(float))) or np.any(k < 0):
            raise ValueError(f"successes must be counts >= 0, got {_show(k)}.")
        if np.any(np.asarray(k, float) != np.round(np.asarray(k, float))):
            raise ValueError(f"successes must be whole numbers, got {_show(k)}.")
    if n is not None:
        if np.any(np.isnan(n.astype(float))) or np.any(n < 1):
            raise ValueError(f"trials must be a count >= 1, got {_show(n)}.")
        if np.any(np.asarray(n, float) != np.round(np.asarray(n, float))):
            raise ValueError(f"trials must be whole numbers, got {_show(n)}.")
    if k is not None and n is not None:
        if np.any(np.asarray(k, float) > np.asarray(n, float)):
            raise ValueError("successes must not exceed trials (k > n).")


def check_static_int(name: str, value: Any, minimum: int) -> int:
    """A static (Python) integer argument such as a sample count; raise if it is below minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return int(value)


def check_at_least_one(name: str, x: Any) -> None:
    """Raise unless every entry of ``x`` is a finite number >= 1 (a count such as ``num_pairs``)."""
    if not is_concrete(x):
        return
    a = np.asarray(x, dtype=float)
    if np.any(~np.isfinite(a)) or np.any(a < 1):
        raise ValueError(f"{name} must be a finite number >= 1, got {_show(x)}.")


def invalid_probability(p):
    """In-graph flag: ``p`` is NaN or outside [0, 1] (the traced counterpart of check_probability)."""
    return jnp.isnan(p) | (p < 0.0) | (p > 1.0)


def invalid_sigma(sigma):
    """In-graph flag: ``sigma`` is not a finite positive number."""
    return ~jnp.isfinite(sigma) | (sigma <= 0.0)
