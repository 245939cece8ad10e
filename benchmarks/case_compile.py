"""Case 4: compilation time of the certify program, reported apart from its run time.

:func:`smoothjax.pipeline.certify` is called on the benchmark MLP with every default method. The
first call traces and compiles; JAX's own monitoring events give the time spent tracing,
lowering and in the XLA compiler during that call (``compile``), and the median of the following
calls is the run time (``run``). A second call with new inputs of the same shape must not compile
again (``recompiled_on_new_inputs`` should be false).
"""

from __future__ import annotations

import time

import jax

from benchmarks import models
from benchmarks.common import compile_timer, spread
from smoothjax.pipeline import certify


def run(config, log) -> list[dict]:
    cfg = config["compile"]
    apply_fn, params, shape = models.get("mlp")
    xs = jax.random.uniform(jax.random.key(0), (cfg["inputs"], *shape))
    xs2 = jax.random.uniform(jax.random.key(1), (cfg["inputs"], *shape))
    kwargs = dict(sigma=0.25, n0=cfg["n0"], n=cfg["n"], alpha=0.001, batch_size=cfg["batch_size"])
    if cfg.get("methods"):  # smoke mode leaves out the (slow to compile) first-order methods
        kwargs["methods"] = tuple(cfg["methods"])

    def call(x, seed):
        return jax.block_until_ready(certify(apply_fn, params, x, jax.random.key(seed), **kwargs))

    timer = compile_timer()
    with timer.measure():
        t0 = time.perf_counter()
        try:
            result = call(xs, 0)
        except NotImplementedError as exc:  # certify reports a method whose module is missing
            log(f"  skip compile: {exc}")
            return [{"case": "compile", "name": "certify", "skipped": str(exc)}]
        first = time.perf_counter() - t0
    compile_summary = timer.summary()
    with timer.measure():
        t0 = time.perf_counter()
        call(xs2, 1)
        second = time.perf_counter() - t0
    recompile = timer.summary()["total_s"] > 0.05 * max(compile_summary["total_s"], 1e-9)
    times = []
    for i in range(config["repeats"]):
        t0 = time.perf_counter()
        call(xs, 2 + i)
        times.append(time.perf_counter() - t0)
    run_timing = spread(times)
    methods = sorted(getattr(result, "radii", {}) or {})
    row = {
        "case": "compile",
        "name": "certify",
        "size": cfg["inputs"],
        "unit": "inputs/s",
        "methods": methods,
        "n0": cfg["n0"],
        "n": cfg["n"],
        "batch_size": cfg["batch_size"],
        "first_call_s": first,
        "compile": compile_summary,
        "second_call_new_inputs_s": second,
        "recompiled_on_new_inputs": bool(recompile),
        **run_timing,
        "throughput": cfg["inputs"] / run_timing["median_s"],
        "ratio": compile_summary["total_s"] / run_timing["median_s"],
        "ratio_meaning": "compile seconds / run seconds",
    }
    log(f"  certify: compile {compile_summary['total_s']:.3g} s (XLA {compile_summary['xla_compile_s']:.3g} s), "
        f"first call {first:.3g} s, run {run_timing['median_s']:.3g} s, methods {methods}")
    return [row]
