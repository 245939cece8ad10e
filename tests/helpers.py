"""Helpers shared by the tests: finite differences, padded calls, compilation counting."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

__all__ = [
    "BACKEND_COMPILE_EVENT",
    "central_difference",
    "count_compilations",
    "padded_call",
    "partial_difference",
]

#: The event JAX records (through :mod:`jax.monitoring`) once per backend compilation.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def central_difference(fn: Callable[[float], float], x: float, h: float, *, order: int = 2) -> float:
    """Central difference of ``fn`` at ``x`` with step ``h``, of accuracy ``O(h^order)``.

    ``order=2``: ``(fn(x + h) - fn(x - h)) / (2 h)``; ``order=4``:
    ``(fn(x - 2h) - 8 fn(x - h) + 8 fn(x + h) - fn(x + 2h)) / (12 h)``.
    """
    if order == 2:
        return (fn(x + h) - fn(x - h)) / (2 * h)
    if order == 4:
        return (fn(x - 2 * h) - 8 * fn(x - h) + 8 * fn(x + h) - fn(x + 2 * h)) / (12 * h)
    raise ValueError(f"order must be 2 or 4, got {order!r}")


def partial_difference(fn: Callable[..., float], args: Sequence[float], i: int, h: float, *, order: int = 2) -> float:
    """Central difference of ``fn(*args)`` in its ``i``-th argument (see :func:`central_difference`)."""

    def along(x: float) -> float:
        return fn(*args[:i], x, *args[i + 1:])

    return central_difference(along, args[i], h, order=order)


def padded_call(fn: Callable, *args, length: int, fill: float | None = None) -> np.ndarray:
    """``fn(*args)`` with every argument broadcast, flattened and padded to ``length`` entries.

    Calls through a fixed length compile ``fn`` once for a whole test file, whatever the number
    of points a test asks for. Padding repeats each argument's first entry (``fill`` where an
    argument is empty); the result is cut back and reshaped to the broadcast shape of ``args``.
    Arguments are passed positionally, as float64 NumPy arrays.
    """
    arrays = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args])
    shape = arrays[0].shape
    flat = [a.ravel() for a in arrays]
    size = flat[0].size
    assert size <= length, f"{size} points do not fit the padded length {length}"
    padded = [np.concatenate([a, np.full(length - size, a[0] if size else fill)]) for a in flat]
    return np.asarray(fn(*padded))[:size].reshape(shape)


@contextlib.contextmanager
def count_compilations(fun_name: str | Sequence[str] | None = None) -> Iterator[list[str]]:
    """Context manager collecting the names of the functions XLA compiles inside it.

    Listens to JAX's public monitoring event for backend compilations, so it sees every
    compilation in the process (``jit`` cache misses, eager operations on new shapes), not only
    those of one function. ``fun_name`` (a name or several) keeps only the compilations of
    functions with those names (the name of the traced Python function, e.g. ``"_sos_radius"``).

    Usage::

        f(x)  # warm up
        with count_compilations() as compiled:
            f(x + 1)
        assert compiled == []
    """
    names = {fun_name} if isinstance(fun_name, str) else None if fun_name is None else set(fun_name)
    compiled: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        del duration
        if event != BACKEND_COMPILE_EVENT:
            return
        name = str(kwargs.get("fun_name", ""))
        if names is None or name in names:
            compiled.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def run_cli(argv, capsys):
    """``smoothjax.app.cli.main(argv)`` in this process: ``(exit code, stdout, stderr)``."""
    from smoothjax.app import cli

    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err
