"""Shared test configuration: x64 on, strict dtype and rank promotion, paths to shared data.

Every test runs with ``jax_enable_x64`` on (set here, before any test traces: the certificate
math is tested in float64; float32 behaviour is tested in subprocesses). Tests also run under
``jax.numpy_dtype_promotion("strict")`` and ``jax.numpy_rank_promotion("raise")``, so an implicit
float32 -> float64 promotion or an implicit rank broadcast in the code under test is an error.
Set ``SMOOTHJAX_STRICT_PROMOTION=0`` to run everything with JAX's default promotion (to tell a
promotion error from a numerical one).
"""

import contextlib
import os
import pathlib

import jax
import pytest

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SMOOTHJAX_SHARED", ROOT.parent / "shared"))
PEER_DATA = SHARED / "peer-data" / "levine"

_STRICT = os.environ.get("SMOOTHJAX_STRICT_PROMOTION", "1") != "0"


def _strict(item: pytest.Item) -> bool:
    # doctests and other non-Python items have no module; they run with default promotion
    return _STRICT and getattr(item, "module", None) is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Run the test body under strict dtype and rank promotion (see the module docstring)."""
    with contextlib.ExitStack() as stack:
        if _strict(item):
            stack.enter_context(jax.numpy_dtype_promotion("strict"))
            stack.enter_context(jax.numpy_rank_promotion("raise"))
        return (yield)


@pytest.fixture
def peer_data_dir():
    if not PEER_DATA.is_dir():
        pytest.skip(f"peer data not found at {PEER_DATA}")
    return PEER_DATA
