"""Deprecation helpers shared by the public modules (private module, public names)."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def keyword_only_shim(*names: str) -> Callable[[F], F]:
    """Decorator: keyword-only parameters ``names`` may still be passed positionally, with a warning.

    For a function whose parameters ``names`` became keyword-only (``def f(a, b, *, dim, sigma)``),
    ``@keyword_only_shim("dim", "sigma")`` accepts the old positional call ``f(a, b, 8, 0.5)``: the
    positional arguments beyond the function's positional parameters are bound, in order, to
    ``names`` and a ``DeprecationWarning`` names them. More positional arguments than that, or a
    name given both ways, raise ``TypeError`` as Python would. Keyword calls pass through
    untouched. The wrapper keeps the function's name, docstring and signature
    (``inspect.signature`` shows the keyword-only form).

    Example:
      >>> import warnings
      >>> @keyword_only_shim("dim", "sigma")
      ... def scale(x, *, dim, sigma=1.0):
      ...     return x * sigma / dim
      >>> scale(6.0, dim=2, sigma=0.5)
      1.5
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     scale(6.0, 2, 0.5)
      1.5
      >>> caught[0].category.__name__
      'DeprecationWarning'
    """
    if not names or len(set(names)) != len(names):
        raise ValueError(f"keyword_only_shim needs distinct parameter names, got {names!r}.")

    def decorate(fn: F) -> F:
        params = inspect.signature(fn).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            raise TypeError(f"keyword_only_shim: {fn.__qualname__} takes *args; nothing to shim.")
        keyword_only = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        missing = [n for n in names if n not in keyword_only]
        if missing:
            raise TypeError(f"keyword_only_shim: {missing} are not keyword-only parameters of {fn.__qualname__}.")
        n_positional = sum(p.kind in _POSITIONAL for p in params)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if len(args) > n_positional:
                extra = args[n_positional:]
                if len(extra) > len(names):
                    raise TypeError(
                        f"{fn.__qualname__}() takes {n_positional} positional arguments (and, deprecated, "
                        f"{', '.join(names)}) but {len(args)} were given.")
                moved = dict(zip(names, extra))
                twice = [n for n in moved if n in kwargs]
                if twice:
                    raise TypeError(f"{fn.__qualname__}() got multiple values for argument {twice[0]!r}.")
                warnings.warn(
                    f"Passing {', '.join(moved)} positionally to {fn.__qualname__}() is deprecated; pass "
                    + ", ".join(f"{n}=..." for n in moved) + " as keyword arguments.",
                    DeprecationWarning, stacklevel=2)
                args = args[:n_positional]
                kwargs.update(moved)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
