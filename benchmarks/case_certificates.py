"""Case 1: certificates per second, smoothjax (jitted, batched) vs one-at-a-time scipy baselines.

For each certificate and each size N (10^2, 10^4, 10^6; quick mode stops at 10^4) the jitted
smoothjax function is timed on N inputs; the baseline of :mod:`benchmarks.baselines` is timed one
certificate at a time on a small subset (it is slow) and its per-certificate throughput is what the
ratio divides by. Errors are the largest absolute radius differences to the high-precision
reference of :mod:`benchmarks.references` on a subset of the same inputs; ``over_reference`` is
the largest amount by which a radius EXCEEDS the reference (soundness: should be <= ~1e-12).
A first (compiling) call at the first size's batch shape gives ``first_call_small_batch_s`` (the
compile time of that program), the smoothjax outputs on the reference subset and the per-input
cost estimate that decides whether the larger sizes fit this mode's time budget.

Input distributions (fixed seed): sigma = 0.25; probabilities uniform in the ranges below;
gradient norms a uniform fraction of the largest possible gradient phi(Phi^-1(p)) / sigma; for
Theorem 3 (q, m1, m2) inside the feasible disk m1^2 + m2^2 < M^2 with m1 <= 0 and m2 >= 0.075 M
(directions at or beyond 90 degrees from the gradient, the ones the l1/linf radii use).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri

from benchmarks import baselines, references
from benchmarks.common import spread, time_jax, time_per_item

SIGMA = 0.25
COHEN_N = 100_000
ALPHA = 0.001
LINF_DIM = 64
MIN_TIME_S = 0.2  # cheap calls are repeated until they add up to this (at least `repeats` calls)


def _max_grad(p):
    return np.exp(-0.5 * ndtri(p) ** 2) / math.sqrt(2 * math.pi)


def _inputs(name, size, rng):
    """Columns (float64 numpy arrays) of ``size`` inputs for certificate ``name``."""
    if name == "cohen":
        p = rng.uniform(0.45, 0.9999, size)
        return {"count": rng.binomial(COHEN_N, p).astype(np.int64)}
    if name == "sos":
        p = rng.uniform(0.55, 0.9999, size)
        return {"p_lower": p, "grad_norm_upper": rng.uniform(0.0, 1.0, size) * _max_grad(p) / SIGMA}
    if name == "dipole":
        p = rng.uniform(0.55, 0.9999, size)
        cs = p * rng.uniform(0.0, 1.0, size)
        return {"cs_lower": cs, "cn_lower": p - cs}
    if name == "directional":
        q = rng.uniform(0.55, 0.99, size)
        rho = rng.uniform(0.3, 0.95, size) * _max_grad(q)
        theta = rng.uniform(0.5, 0.92, size) * math.pi
        return {"q": q, "m1": rho * np.cos(theta), "m2": rho * np.sin(theta)}
    if name in ("l1", "linf"):
        p = rng.uniform(0.55, 0.99, size)
        l2 = rng.uniform(0.3, 0.95, size) * _max_grad(p) / SIGMA
        frac = rng.uniform(0.3, 0.9, size)
        dual = l2 * frac * (math.sqrt(LINF_DIM) if name == "linf" else 1.0)
        key = "grad_l1_upper" if name == "linf" else "grad_linf_upper"
        return {"p_lower": p, "grad_l2_lower": l2, key: dual}
    raise KeyError(name)


def _lookup(path):
    """The function ``smoothjax.<module>.<name>`` for ``path = "module.name"``."""
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(f"smoothjax.{module}"), name)


def _ours(name):
    """A jitted function of the input columns (as positional arrays) for certificate ``name``."""
    if name == "cohen":
        cp_lower = _lookup("binomial.clopper_pearson_lower")
        cohen = _lookup("certificates.cohen_radius")
        return jax.jit(lambda k: cohen(cp_lower(k, COHEN_N, ALPHA), SIGMA))
    if name == "sos":
        fn = _lookup("certificates.sos_radius")
        return jax.jit(lambda p, g: fn(p, g, SIGMA))
    if name == "dipole":
        fn = _lookup("certificates.dipole_radius")
        return jax.jit(lambda cs, cn: fn(cs, cn, SIGMA))
    if name == "directional":
        fn = _lookup("theorem3.directional_radius")
        return jax.jit(lambda q, m1, m2: fn(q, m1, m2))
    if name == "l1":
        fn = _lookup("first_order.l1_radius")
        return jax.jit(lambda p, l2, linf: fn(p, l2, linf, sigma=SIGMA))
    if name == "linf":
        fn = _lookup("first_order.linf_radius")
        return jax.jit(lambda p, l2, l1: fn(p, l2, l1, dim=LINF_DIM, sigma=SIGMA))
    raise KeyError(name)


BASELINES = {
    "cohen": (lambda k: baselines.cohen_certify_one(int(k), COHEN_N, ALPHA, SIGMA),
              "statsmodels proportion_confint(method='beta') + scipy.stats.norm.ppf, one input at a time"),
    "sos": (lambda p, g: baselines.sos_radius_one(p, g, SIGMA),
            "scipy.stats.norm; bisection for a0 then bisection for the radius, one input at a time"),
    "dipole": (lambda cs, cn: baselines.dipole_radius_one(cs, cn, SIGMA),
               "scipy.stats.norm; bisection for the radius, one input at a time"),
    "directional": (baselines.directional_radius_one,
                    "first paper's reference solver: bisection on r around nested bisections on c2/c1/c0, "
                    "1000-node Gauss-Hermite, tolerance 1e-3, one input at a time"),
    "l1": (lambda p, l2, linf: baselines.l1_radius_one(p, l2, linf, SIGMA), "Corollary 3.2 on the reference solver"),
    "linf": (lambda p, l2, l1: baselines.linf_radius_one(p, l2, l1, LINF_DIM, SIGMA),
             "Corollary 3.3 on the reference solver"),
}

REFERENCES = {
    "cohen": (lambda k: references.cohen_radius(int(k), COHEN_N, ALPHA, SIGMA),
              "scipy betaincinv (Beta quantile) + mpmath 30-digit Phi^-1"),
    "sos": (lambda p, g: references.sos_radius(p, g, SIGMA), "mpmath 30 digits, 110-step bisections"),
    "dipole": (lambda cs, cn: references.dipole_radius(cs, cn, SIGMA), "mpmath 30 digits, 110-step bisection"),
    "directional": (references.directional_radius, "tests/theorem3_reference.py (scipy adaptive quadrature)"),
    "l1": (lambda p, l2, linf: references.l1_radius(p, l2, linf, SIGMA), "tests/theorem3_reference.py"),
    "linf": (lambda p, l2, l1: references.linf_radius(p, l2, l1, LINF_DIM, SIGMA), "tests/theorem3_reference.py"),
}

TARGETS = {"sos": 1e4, "dipole": 1e3, "directional": 1e4, "l1": 1e4, "linf": 1e4}
THEOREM3 = ("directional", "l1", "linf")


def _time_compiled(jitted, inputs, repeats):
    """(spread of ``repeats`` calls of the compiled program, compile seconds); no warm-up call."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*inputs).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - t0)
    return spread(times), compile_s


def _errors(ours, base, ref):
    """Max |error| of ours / baseline vs reference on the common prefix, and the largest excess."""
    out = {}
    for label, values in (("ours", ours), ("baseline", base)):
        k = min(len(values), len(ref))
        if k == 0:
            continue
        diff = np.asarray(values[:k], np.float64) - ref[:k]
        out[f"{label}_max_abs_error"] = float(np.max(np.abs(diff)))
        scale = np.maximum(np.abs(ref[:k]), 1e-300)
        out[f"{label}_max_rel_error"] = float(np.max(np.abs(diff) / scale))
        out[f"{label}_over_reference"] = float(max(np.max(diff), 0.0))
        out[f"{label}_error_items"] = k
    return out


def run(config, log) -> list[dict]:
    """All certificate rows for ``config`` (sizes, repeats, subset sizes).

    The certificate functions run in the precision of their calling context; the library runs them
    in float64 (``certify`` scopes x64 on the host), so they are timed and checked that way here.
    """
    with jax.enable_x64(True):
        return _run_all(config, log)


def _run_all(config, log) -> list[dict]:
    rows = []
    for name in config["certificates"]:
        try:
            rows.extend(_run_one(name, config, log))
        except Exception as exc:  # noqa: BLE001  (recorded; the runner's exit status reports it)
            log(f"  ERROR in certificates/{name}: {type(exc).__name__}: {exc}")
            rows.append({"case": "certificates", "name": name, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def _run_one(name, config, log) -> list[dict]:
    ours = _ours(name)
    rng = np.random.default_rng(12345)
    small = _inputs(name, max(config["baseline_items"][name], config["reference_items"][name], 1), rng)
    cols = list(small.values())
    n_ref = config["reference_items"][name]
    # The probe has the batch shape of the first size, so the program it compiles is the one that
    # size is timed with (jit compiles once per shape; the Theorem 3 programs take seconds each).
    # Its first n_ref entries are the reference subset; np.resize repeats them to fill the batch.
    probe_size = config["sizes"][0]
    probe = [jnp.asarray(np.resize(c, probe_size)) for c in cols]
    t0 = time.perf_counter()
    ours_probe = np.asarray(ours(*probe))
    probe_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(ours(*probe))  # second call: no compilation; estimates the cost per input
    per_item_estimate = (time.perf_counter() - t0) / probe_size
    log(f"  {name}: first call at N={probe_size} {probe_first:.3g} s (compiles), "
        f"then ~{per_item_estimate * 1e6:.3g} us/certificate")
    if n_ref <= probe_size:
        ours_small = ours_probe[:n_ref]
    else:  # a reference subset larger than the first size (not in the shipped configs)
        ours_small = np.asarray(ours(*[jnp.asarray(c[:n_ref]) for c in cols]))

    base_fn, base_note = BASELINES[name]
    n_base = config["baseline_items"][name]
    base_stats, base_out = time_per_item(base_fn, list(zip(*[c[:n_base] for c in cols])))
    base_rate = 1.0 / base_stats["mean_s"]
    log(f"  {name}: baseline {base_stats['mean_s'] * 1e3:.3f} ms/certificate over {n_base} inputs")

    ref_fn, ref_note = REFERENCES[name]
    if name in THEOREM3 and references.theorem3_module() is None:
        errors = {"reference": "skipped: tests/theorem3_reference.py not found"}
    else:
        ref_out = np.array([ref_fn(*row) for row in zip(*[c[:n_ref] for c in cols])], np.float64)
        errors = _errors(ours_small[:n_ref], base_out, ref_out)
        errors["reference"] = ref_note

    rows = []
    budget = config["certificate_budget_s"]
    large = config.get("theorem3_large")  # quick mode: one Theorem 3 row at the large size, one repeat
    for size in config["sizes"]:
        repeats = config["repeats"]
        if large and name in THEOREM3 and size >= large["min_size"]:
            if name not in large["names"]:
                reason = (f"N={size} skipped: this mode times the Theorem 3 solver at N >= {large['min_size']} "
                          f"through {', '.join(large['names'])} only (the l1 / linf radii are the same solve "
                          f"after a closed-form input map; the full mode times them)")
                log(f"  skip certificates/{name}: {reason}")
                rows.append({"case": "certificates", "name": name, "size": size, "skipped": reason,
                             "estimated_us_per_certificate": per_item_estimate * 1e6})
                continue
            repeats = large["repeats"]
            aot = True
        else:
            aot = False
        estimate = per_item_estimate * size * (repeats + (0 if aot else 1))
        if estimate > budget:
            reason = (f"N={size} skipped: estimated {estimate:.0f} s at {per_item_estimate * 1e6:.3g} us/certificate "
                      f"exceeds this mode's budget of {budget:.0f} s per size")
            log(f"  skip certificates/{name}: {reason}")
            rows.append({"case": "certificates", "name": name, "size": size, "skipped": reason,
                         "estimated_us_per_certificate": per_item_estimate * 1e6})
            continue
        inputs = [jnp.asarray(c) for c in _inputs(name, size, np.random.default_rng(size)).values()]
        if aot:  # compile ahead of time instead of a warm-up call: a call takes seconds at this size
            timing, first = _time_compiled(ours, inputs, repeats)
        else:
            timing, first = time_jax(ours, *inputs, repeats=repeats, min_time_s=MIN_TIME_S)
        rate = size / timing["median_s"]
        ratio = rate / base_rate
        row = {
            "case": "certificates",
            "name": name,
            "size": size,
            "unit": "certificates/s",
            **timing,
            "first_call_s": first,
            "first_call_note": ("ahead-of-time compilation only (jit(...).lower(...).compile()), no warm-up run"
                                if aot else "first call of this size's inputs (compiles unless the probe did)"),
            # first call of the probe at N = sizes[0]: the compilation of that size's program
            # (first_call_s of that size then no longer compiles)
            "first_call_small_batch_s": probe_first,
            "probe_batch": probe_size,
            "throughput": rate,
            "baseline": {
                "description": base_note,
                "timed_items": n_base,
                "per_item": base_stats,
                "throughput": base_rate,
                "note": "per-certificate throughput measured one certificate at a time on a subset",
            },
            "ratio": ratio,
            "errors": errors,
        }
        if name in TARGETS:
            row["target_ratio"] = TARGETS[name]
            row["meets_target"] = bool(ratio >= TARGETS[name])
        if name in THEOREM3:
            quoted = 1.0 / 1.7  # the measured 1.7 s per certificate of the public code
            row["ratio_vs_quoted_1_7s"] = rate / quoted
        rows.append(row)
        log(f"  {name:12s} N={size:>8d} {rate:12.4g}/s  baseline {base_rate:9.4g}/s  ratio {ratio:9.3g}")
    return rows
