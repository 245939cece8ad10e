"""Cases 2 and 3: the statistics pass vs the bare forward pass, and scaling in n and in batch.

Case 2 (``sampling``). For each model, two configurations of
:func:`smoothjax.sampling.sample_statistics` are timed:

* ``counts``: class counts only (what Cohen's CERTIFY needs);
* ``all``: counts + dot-product pairs + dipole pairs + split-half means (every certificate of
  :func:`smoothjax.pipeline.certify` from one pass). Dipole evaluates the model on ``n/2`` extra
  mirrored points, so the model sees ``1.5 n`` rows per input.

Each is compared with the bare jitted forward pass: a ``fori_loop`` that feeds the model exactly
the same number of rows per step and in total (a fixed input batch plus a tiny step-dependent
shift so XLA cannot hoist the model out of the loop), with no noise, no argmax bookkeeping beyond
one reduction, no statistics. ``overhead_pct`` = 100 (t_stats / t_bare - 1) at equal model
evaluations: the price of noise generation plus every statistic. ``ratio`` = bare time /
statistics time (<= 1; 1/1.1 = 0.909 is the 10% target).

``python -m benchmarks.case_sampling --profile cnn`` (:func:`profile`) splits one sampling step
into its parts: the noise alone, the model alone, and the statistics programs, in ms per step.

Case 3 (``scaling``). The MLP with the ``all`` configuration, compiled once per shape
(``jit(...).lower(...).compile()``): wall time and memory as ``n`` grows at batch 1, and as the
input batch grows at fixed ``n``. Memory is XLA's compiled memory analysis (temp buffers) and the
process peak RSS around the call (Linux ``clear_refs``). ``log_log_slope`` is the least-squares
slope of log(fastest time) on log(n) over n >= 10^4 (1 = linear; the fastest repeat is the
least disturbed on a shared machine); ``ratio`` there is the temp-memory ratio
largest n / smallest n (1 = flat).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import models
from benchmarks.common import compiled_memory, peak_rss_bytes, reset_peak_rss, spread, time_interleaved
from smoothjax.sampling import _key_words, device_statistics, sample_statistics, standard_normal

SIGMA = 0.25
CONFIGS = {"counts": {}, "all": {"dot_product": True, "dipole": True, "split_half": True}}


def _bare_forward(apply_fn, rows_per_step: int, num_steps: int):
    """Jitted bare forward pass: ``num_steps`` model calls on ``rows_per_step`` rows each."""

    @jax.jit
    def bare(params, base, pattern):
        def body(step, acc):
            rows = base + (step.astype(base.dtype) * 1e-3) * pattern
            return acc + jnp.sum(jnp.argmax(apply_fn(params, rows), axis=-1)).astype(jnp.int32)

        return jax.lax.fori_loop(0, num_steps, body, jnp.zeros((), jnp.int32))

    return bare


def _inputs(shape, batch, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, *shape), jnp.float32)


def run_sampling(config, log) -> list[dict]:
    rows = []
    for model_name, (batch, n, chunk) in config["sampling"].items():
        apply_fn, params, shape = models.get(model_name)
        xs = _inputs(shape, batch)
        target = jnp.zeros(batch, jnp.int32)
        key = jax.random.key(1)
        for cfg_name, flags in CONFIGS.items():
            stats_fn = jax.jit(
                lambda p, x, k, t, flags=flags, apply_fn=apply_fn, n=n, chunk=chunk: sample_statistics(
                    apply_fn, p, x, k, sigma=SIGMA, num_samples=n, batch_size=chunk,
                    target_class=t if flags else None, **flags)
            )
            factor = 1.5 if flags.get("dipole") else 1.0
            rows_per_step = int(batch * chunk * factor)
            num_steps = -(-n // chunk)
            bare = _bare_forward(apply_fn, rows_per_step, num_steps)
            base = jnp.repeat(xs, rows_per_step // batch, axis=0)
            pattern = jax.random.normal(jax.random.key(2), base.shape, jnp.float32)
            stats_timing, bare_timing, first, _ = time_interleaved(
                stats_fn, (params, xs, key, target), bare, (params, base, pattern), repeats=config["repeats"])
            model_rows = rows_per_step * num_steps
            # fastest of the interleaved repeats: the least disturbed by other processes
            overhead = 100.0 * (stats_timing["min_s"] / bare_timing["min_s"] - 1.0)
            overhead_median = 100.0 * (stats_timing["median_s"] / bare_timing["median_s"] - 1.0)
            row = {
                "case": "sampling",
                "name": f"{model_name}/{cfg_name}",
                "size": batch * n,
                "unit": "noise samples/s",
                "model": model_name,
                "input_shape": list(shape),
                "inputs": batch,
                "num_samples": n,
                "batch_size": chunk,
                "statistics": sorted(flags) or ["counts"],
                **stats_timing,
                "first_call_s": first,
                "throughput": batch * n / stats_timing["median_s"],
                "model_rows": model_rows,
                "model_rows_per_s": model_rows / stats_timing["median_s"],
                "baseline": {
                    "description": "bare jitted forward pass, same rows per step and in total, no noise/statistics",
                    **bare_timing,
                    "throughput": batch * n / bare_timing["median_s"],
                    "model_rows_per_s": model_rows / bare_timing["median_s"],
                },
                "ratio": bare_timing["min_s"] / stats_timing["min_s"],
                "overhead_pct": overhead,
                "overhead_pct_of_medians": overhead_median,
                "overhead_note": "from the fastest of interleaved repeats (stats and bare alternate)",
                "target_overhead_pct": 10.0,
                "meets_target": bool(overhead <= 10.0),
            }
            rows.append(row)
            log(f"  {model_name:6s} {cfg_name:6s} stats {row['model_rows_per_s']:10.4g} rows/s  "
                f"bare {row['baseline']['model_rows_per_s']:10.4g} rows/s  overhead {overhead:6.1f}%")
    return rows


def _timed_compiled(sample_statistics, apply_fn, params, xs, n, chunk, repeats):
    flags = CONFIGS["all"]
    fn = jax.jit(
        lambda p, x, k, t: sample_statistics(
            apply_fn, p, x, k, sigma=SIGMA, num_samples=n, batch_size=chunk, target_class=t, **flags)
    )
    args = (params, xs, jax.random.key(3), jnp.zeros(xs.shape[0], jnp.int32))
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled_memory(fn, *args)
    jax.block_until_ready(compiled(*args))  # first execution (allocations, thread pools)
    times, rss = [], []
    for _ in range(repeats):
        reset_peak_rss()
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
        rss.append(peak_rss_bytes())
    return spread(times), compile_s, memory, max((r for r in rss if r is not None), default=None)


def run_scaling(config, log) -> list[dict]:
    apply_fn, params, shape = models.get("mlp")
    chunk = config["scaling"]["batch_size"]
    rows, points = [], []
    for n in config["scaling"]["n"]:
        xs = _inputs(shape, 1)
        repeats = config["repeats"] if n <= 100_000 else 1
        timing, compile_s, memory, rss = _timed_compiled(sample_statistics, apply_fn, params, xs, n, chunk, repeats)
        points.append((n, timing["min_s"], memory["temp_size_in_bytes"] if memory else None))
        rows.append({
            "case": "scaling", "name": "mlp/n", "size": n, "unit": "noise samples/s", "inputs": 1,
            "num_samples": n, "batch_size": chunk, **timing, "compile_s": compile_s,
            "throughput": n / timing["median_s"], "seconds_per_sample": timing["median_s"] / n,
            "compiled_memory": memory, "peak_rss_bytes": rss,
        })
        log(f"  scaling n={n:>9d}: {timing['median_s']:.4g} s ({n / timing['median_s']:.4g} samples/s), "
            f"temp {memory['temp_size_in_bytes'] if memory else 'n/a'} B, peak RSS {rss}")
    big = [(n, t) for n, t, _ in points if n >= 10_000]
    slope = float(np.polyfit(np.log([n for n, _ in big]), np.log([t for _, t in big]), 1)[0]) if len(big) >= 2 else None
    temps = [m for _, _, m in points if m is not None]
    mem_ratio = max(temps) / max(min(temps), 1) if temps else None
    rows.append({
        "case": "scaling", "name": "mlp/n-summary", "size": points[-1][0], "unit": "",
        "log_log_slope": slope, "ratio": mem_ratio if mem_ratio is not None else float("nan"),
        "ratio_meaning": "compiled temp memory, largest n / smallest n (1 = flat)",
        "n_values": [p[0] for p in points],
    })
    log(f"  scaling summary: log-log slope (n >= 1e4) {slope}, temp memory ratio {mem_ratio}")

    n = config["scaling"]["batch_n"]
    batch_points = []
    for batch in config["scaling"]["batches"]:
        xs = _inputs(shape, batch)
        timing, compile_s, memory, rss = _timed_compiled(
            sample_statistics, apply_fn, params, xs, n, chunk, config["repeats"])
        batch_points.append((batch, timing["median_s"]))
        rows.append({
            "case": "scaling", "name": "mlp/batch", "size": batch * n, "unit": "noise samples/s", "inputs": batch,
            "num_samples": n, "batch_size": chunk, **timing, "compile_s": compile_s,
            "throughput": batch * n / timing["median_s"], "seconds_per_input": timing["median_s"] / batch,
            "compiled_memory": memory, "peak_rss_bytes": rss,
        })
        log(f"  scaling batch={batch:>4d} (n={n}): {timing['median_s']:.4g} s, "
            f"temp {memory['temp_size_in_bytes'] if memory else 'n/a'} B")
    return rows


def profile(model_name: str = "cnn", inputs: int = 8, chunk: int = 1000, steps: int = 10, rows_per_call: int = 2000,
            repeats: int = 7, log=print) -> dict:
    """Where one sampling step (``inputs x chunk`` rows) spends its time, in ms per step.

    Programs, each a ``fori_loop`` of ``steps`` steps, timed in interleaved repeats (fastest wall
    and fastest process CPU time, the latter less sensitive to other processes on the machine):
    ``noise`` draws the step's noise and forms the rows (kept, as the model needs them); ``model``
    is the bare forward pass over the same rows in calls of ``rows_per_call``; ``counts``,
    ``counts+dots``, ``counts+halves`` and ``all`` are :func:`smoothjax.sampling.device_statistics`
    (noise, model and statistics) with ``rows_per_call``; ``all`` evaluates 1.5x the rows.
    """
    apply_fn, params, shape = models.get(model_name)
    xs = _inputs(shape, inputs)
    ids = jnp.arange(inputs, dtype=jnp.uint32)
    sigma = jnp.float32(SIGMA)

    @jax.jit
    def noise(xs, key):
        words = jax.vmap(_key_words)(jax.vmap(jax.random.fold_in, (None, 0))(key, ids))

        def body(j, acc):
            idx = (j * chunk + jnp.arange(chunk)).astype(jnp.uint32)
            u = jax.vmap(lambda k: standard_normal(k, idx, shape, jnp.float32))(words)
            return acc + (xs[:, None] + sigma * u)

        return jax.lax.fori_loop(0, steps, body, jnp.zeros((inputs, chunk, *shape), jnp.float32))

    def stats(**flags):
        return jax.jit(lambda p, x, k: device_statistics(
            apply_fn, p, x, k, sigma, jnp.zeros(inputs, jnp.int32), ids, num_samples=chunk * steps,
            batch_size=chunk, rows_per_call=rows_per_call, **flags))

    base = jax.random.uniform(jax.random.key(3), (rows_per_call, *shape), jnp.float32)
    pattern = jax.random.normal(jax.random.key(4), base.shape, jnp.float32)
    bare = _bare_forward(apply_fn, rows_per_call, steps * inputs * chunk // rows_per_call)
    key = jax.random.key(1)
    programs = {
        "noise": functools.partial(noise, xs, key),
        "model": functools.partial(bare, params, base, pattern),
        "counts": functools.partial(stats(), params, xs, key),
        "counts+dots": functools.partial(stats(dot_product=True), params, xs, key),
        "counts+halves": functools.partial(stats(split_half=True), params, xs, key),
        "all": functools.partial(stats(dot_product=True, dipole=True, split_half=True), params, xs, key),
    }
    for fn in programs.values():
        jax.block_until_ready(fn())
    wall, cpu = {k: [] for k in programs}, {k: [] for k in programs}
    for _ in range(repeats):
        for name, fn in programs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn())
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = {"model": model_name, "rows_per_step": inputs * chunk, "rows_per_call": rows_per_call,
           "load_average": os.getloadavg(), "ms_per_step": {k: 1e3 * min(v) / steps for k, v in wall.items()},
           "cpu_ms_per_step": {k: 1e3 * min(v) / steps for k, v in cpu.items()}}
    log(f"{model_name}: {inputs} inputs x {chunk} samples per step, {rows_per_call} rows per model call, "
        f"load {out['load_average'][0]:.2f}")
    for name in programs:
        log(f"  {name:14s} {out['ms_per_step'][name]:8.2f} ms/step  (CPU {out['cpu_ms_per_step'][name]:8.2f} ms)")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Split a sampling step into noise, model and statistics.")
    parser.add_argument("--profile", default="cnn", choices=sorted(models.SHAPES))
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--rows-per-call", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    a = parser.parse_args()
    profile(a.profile, a.inputs, a.chunk, rows_per_call=a.rows_per_call, repeats=a.repeats)
