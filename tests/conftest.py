"""Shared test configuration: x64 on, strict dtype and rank promotion, paths to shared data.

Every test runs with ``jax_enable_x64`` on (set here, before any test traces: the certificate
math is tested in float64; float32 behaviour is tested in subprocesses). Tests also run under
``jax.numpy_dtype_promotion("strict")`` and ``jax.numpy_rank_promotion("raise")``, so an implicit
float32 -> float64 promotion or an implicit rank broadcast in the code under test is an error.
Set ``SMOOTHJAX_STRICT_PROMOTION=0`` to run everything with JAX's default promotion (to tell a
promotion error from a numerical one).

One JAX persistent compilation cache serves the whole run: the pytest-xdist workers and the
subprocesses tests start compile many of the same programs (the certify program, the Theorem 3
solver), and sharing them cuts the suite's time by about a third on 2 cores. The folder is a fresh
temporary one per run, removed at the end, so no run reuses another's programs; set
``JAX_COMPILATION_CACHE_DIR`` yourself to choose it (then it is kept), or to an empty string to run
without a cache.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = "SMOOTHJAX_TEST_OWNS_CACHE"  # set by the process that created the run's cache folder


def pytest_configure(config):
    """Create the run's compilation cache before xdist starts its workers (they inherit the
    environment, as do the subprocesses tests start), and point this process's JAX at it."""
    if _CACHE_ENV not in os.environ:
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="smoothjax-tests-jax-cache-")
        os.environ[_OWN_CACHE] = str(os.getpid())
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    if os.environ[_CACHE_ENV]:
        jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")))


def pytest_unconfigure(config):
    if os.environ.get(_OWN_CACHE) == str(os.getpid()):
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)

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
