"""Timing, memory and machine-description helpers shared by the benchmark cases.

Every JAX timing warms up first (the first call compiles), then times ``repeats`` calls, each
ended by ``jax.block_until_ready``; figures are the median and the spread (IQR, min, max) of
those wall times. Baselines are timed one certificate at a time on a subset of the inputs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import jax
import numpy as np

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def spread(times) -> dict:
    """Median, interquartile range, min and max of a list of seconds."""
    arr = np.asarray(times, dtype=np.float64)
    q25, q50, q75 = np.percentile(arr, [25, 50, 75])
    return {
        "median_s": float(q50),
        "iqr_s": [float(q25), float(q75)],
        "min_s": float(arr.min()),
        "max_s": float(arr.max()),
        "repeats": int(arr.size),
    }


def time_jax(fn, *args, repeats: int = 3, warmup: int = 1, min_time_s: float = 0.0,
             max_repeats: int = 1000) -> tuple[dict, float]:
    """Time ``fn(*args)`` (a jitted function) after warm-up; returns (spread dict, first-call seconds).

    At least ``repeats`` timed calls, and more (up to ``max_repeats``) until they add up to
    ``min_time_s``: calls of a fraction of a millisecond need many repeats for a median that a
    burst of load on a shared machine does not move.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn(*args))
    times = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return spread(times), first


def time_interleaved(fn_a, args_a, fn_b, args_b, repeats: int = 3):
    """Time two jitted functions alternately (a, b, a, b, ...) after one warm-up call of each.

    On a shared machine the load changes from second to second; alternating exposes both to the
    same conditions. Returns (spread of a, spread of b, first-call seconds of a, of b).
    """
    firsts = []
    for fn, args in ((fn_a, args_a), (fn_b, args_b)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        firsts.append(time.perf_counter() - t0)
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, args, times in ((fn_a, args_a, times_a), (fn_b, args_b, times_b)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
    return spread(times_a), spread(times_b), firsts[0], firsts[1]


def time_per_item(fn, rows) -> tuple[dict, np.ndarray]:
    """Time a one-input Python function on each row separately; per-item spread and the outputs."""
    times, out = [], []
    for row in rows:
        t0 = time.perf_counter()
        out.append(fn(*row))
        times.append(time.perf_counter() - t0)
    result = spread(times)
    result["mean_s"] = float(np.mean(times))
    result["items"] = len(times)
    return result, np.asarray(out, dtype=np.float64)


@dataclass
class CompileTimer:
    """Collects JAX's own compile-phase durations (trace, lowering, XLA compile) while active."""

    totals: dict = field(default_factory=lambda: {name: 0.0 for name in COMPILE_EVENTS})
    active: bool = False

    def __post_init__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **_):
        if self.active and event in self.totals:
            self.totals[event] += float(duration)

    @contextlib.contextmanager
    def measure(self):
        for name in self.totals:
            self.totals[name] = 0.0
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def summary(self) -> dict:
        return {
            "trace_s": self.totals[COMPILE_EVENTS[0]],
            "lower_s": self.totals[COMPILE_EVENTS[1]],
            "xla_compile_s": self.totals[COMPILE_EVENTS[2]],
            "total_s": float(sum(self.totals.values())),
        }


_COMPILE_TIMER = None


def compile_timer() -> CompileTimer:
    global _COMPILE_TIMER
    if _COMPILE_TIMER is None:
        _COMPILE_TIMER = CompileTimer()
    return _COMPILE_TIMER


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set size since the last :func:`reset_peak_rss` (``VmHWM``), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def compiled_memory(jitted, *args) -> dict | None:
    """XLA's compiled memory analysis of ``jitted`` at ``args`` (bytes), or None if unavailable."""
    try:
        analysis = jitted.lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001  (backends without the analysis)
        return None
    if analysis is None:
        return None
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "generated_code_size_in_bytes")
    return {name: int(getattr(analysis, name, 0)) for name in fields}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import flax
    import scipy

    devices = jax.devices()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(load) if load else None,
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "flax": flax.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "x64": bool(jax.config.jax_enable_x64),
        "note": os.environ.get("SMOOTHJAX_BENCH_NOTE", ""),
    }


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def median(xs):
    return float(statistics.median(xs))
