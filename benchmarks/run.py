"""The benchmark runner: ``python -m benchmarks [--quick | --smoke] [--only CASES] [--out FILE]``.

Runs every case (see ``benchmarks/README.md``), prints a table and writes JSON (and the same
table as markdown next to it). A case that cannot run here (e.g. needs a GPU) is recorded as skipped with
the reason printed and recorded (``"skipped"``), never silently.

Modes: ``--smoke`` (the smallest sizes, for the test suite, ~30 s), ``--quick`` (under 2 minutes
on 2 CPU cores), default full (10^6 certificates, n up to 10^7; tens of minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import pathlib
import resource
import sys
import time

CASES = ("certificates", "sampling", "scaling", "compile", "overhead")
CERTIFICATES = ("cohen", "sos", "dipole", "directional", "l1", "linf")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SCHEMA_VERSION = 1

CONFIGS = {
    "smoke": {
        "sizes": [100],
        "repeats": 2,
        "certificate_budget_s": 20.0,
        "certificates": CERTIFICATES,
        "baseline_items": {"cohen": 5, "sos": 3, "dipole": 3, "directional": 1, "l1": 1, "linf": 1},
        "reference_items": {"cohen": 3, "sos": 2, "dipole": 2, "directional": 1, "l1": 1, "linf": 1},
        "sampling": {"mlp": (2, 200, 100)},
        "scaling": {"n": [1_000, 10_000], "batch_size": 500, "batches": [1, 2], "batch_n": 1_000},
        "compile": {"inputs": 2, "n0": 50, "n": 200, "batch_size": 100,
                    "methods": ["cohen_l2", "sos_l2", "dipole_l2"]},
        "overhead": {"configs": ["cohen"], "repeats": 2, "models": {
            "mlp": {"inputs_per_call": 2, "calls": 2, "n0": 32, "n": 200, "batch_size": 100, "bare_rows": [200, 800]}}},
    },
    "quick": {
        "sizes": [100, 10_000],
        "repeats": 3,
        "certificate_budget_s": 15.0,
        "certificates": CERTIFICATES,
        "baseline_items": {"cohen": 100, "sos": 20, "dipole": 20, "directional": 1, "l1": 1, "linf": 1},
        "reference_items": {"cohen": 20, "sos": 10, "dipole": 10, "directional": 3, "l1": 2, "linf": 2},
        # a batch of 10^4 Theorem 3 radii takes seconds per call (plus seconds of compilation):
        # quick mode times it once, for the directional radius only
        "theorem3_large": {"min_size": 10_000, "names": ["directional"], "repeats": 1},
        "sampling": {"mlp": (4, 4_000, 500), "cnn": (4, 4_000, 500), "resnet": (1, 128, 64)},
        "scaling": {"n": [1_000, 10_000, 100_000], "batch_size": 1_000, "batches": [1, 4, 16], "batch_n": 10_000},
        "compile": {"inputs": 4, "n0": 100, "n": 2_000, "batch_size": 500},
        # every default method at once, then each alone; n fixed per model (the ResNet is ~50x slower per row)
        "overhead": {"repeats": 3, "models": {
            "mlp": {"inputs_per_call": 8, "calls": 4, "n0": 100, "n": 10_000, "batch_size": 1_000,
                    "bare_rows": [2_000, 8_000, 32_000]},
            "cnn": {"inputs_per_call": 8, "calls": 2, "n0": 100, "n": 10_000, "batch_size": 1_000,
                    "bare_rows": [2_000, 8_000, 32_000]},
            "resnet": {"inputs_per_call": 2, "calls": 2, "n0": 100, "n": 1_000, "batch_size": 500,
                       "bare_rows": [256, 1_000, 4_000]}}},
    },
    "full": {
        "sizes": [100, 10_000, 1_000_000],
        "repeats": 5,
        "certificate_budget_s": 60.0,
        "certificates": CERTIFICATES,
        "baseline_items": {"cohen": 1000, "sos": 200, "dipole": 200, "directional": 5, "l1": 3, "linf": 3},
        "reference_items": {"cohen": 200, "sos": 50, "dipole": 50, "directional": 20, "l1": 10, "linf": 10},
        "sampling": {"mlp": (8, 20_000, 1_000), "cnn": (8, 20_000, 1_000), "resnet": (2, 1_024, 128)},
        "scaling": {
            "n": [1_000, 10_000, 100_000, 1_000_000, 10_000_000],
            "batch_size": 1_000,
            "batches": [1, 4, 16, 64],
            "batch_n": 20_000,
        },
        "compile": {"inputs": 8, "n0": 100, "n": 20_000, "batch_size": 1_000},
        "overhead": {"repeats": 5, "models": {
            "mlp": {"inputs_per_call": 16, "calls": 4, "n0": 100, "n": 100_000, "batch_size": 1_000,
                    "bare_rows": [2_000, 8_000, 32_000]},
            "cnn": {"inputs_per_call": 16, "calls": 4, "n0": 100, "n": 100_000, "batch_size": 1_000,
                    "bare_rows": [2_000, 8_000, 32_000]},
            "resnet": {"inputs_per_call": 4, "calls": 2, "n0": 100, "n": 10_000, "batch_size": 500,
                       "bare_rows": [256, 1_000, 4_000]}}},
    },
}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_cases(mode: str, only=None, log=_log, partial_path=None) -> dict:
    """Run the selected cases in ``mode`` and return the JSON-able report."""
    from benchmarks import case_certificates, case_compile, case_overhead, case_sampling
    from benchmarks.common import machine_info

    config = dict(CONFIGS[mode])
    selected = tuple(only) if only else CASES
    # "certificates.sos" selects one certificate of the certificates case
    picked = [c.split(".", 1)[1] for c in selected if c.startswith("certificates.")]
    if picked:
        bad = [p for p in picked if p not in CERTIFICATES]
        if bad:
            raise ValueError(f"unknown certificate(s) {bad}; choose from {CERTIFICATES}")
        config["certificates"] = tuple(picked)
        selected = tuple(dict.fromkeys("certificates" if c.startswith("certificates.") else c for c in selected))
    unknown = [c for c in selected if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; choose from {CASES}")
    runners = {
        "certificates": case_certificates.run,
        "sampling": case_sampling.run_sampling,
        "scaling": case_sampling.run_scaling,
        "compile": case_compile.run,
        "overhead": case_overhead.run,
    }
    report = {
        "schema_version": SCHEMA_VERSION,
        "mode": mode,
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {k: v for k, v in config.items()},
        "cases": [],
        "case_seconds": {},
    }
    t_all, cpu_all = time.perf_counter(), _cpu_seconds()
    for case in selected:
        log(f"[{case}]")
        t0 = time.perf_counter()
        try:
            report["cases"].extend(runners[case](config, log))
        except Exception as exc:  # noqa: BLE001  (recorded, reported, and the exit status is 1)
            log(f"  ERROR in {case}: {type(exc).__name__}: {exc}")
            report["cases"].append({"case": case, "name": "error", "error": f"{type(exc).__name__}: {exc}"})
        report["case_seconds"][case] = time.perf_counter() - t0
        if partial_path is not None:  # long runs: keep what is done if the run is cut short
            partial_path.write_text(json.dumps(report, indent=1, default=str))
    report["total_seconds"] = time.perf_counter() - t_all
    report["cpu_seconds"] = _cpu_seconds() - cpu_all
    report["cpu_seconds_note"] = (
        "user+sys CPU time of this process; on a shared machine wall time exceeds what an idle one takes, "
        "cpu_seconds / cores visible bounds the idle wall time from below")
    report["skipped"] = [
        {"case": r["case"], "name": r["name"], "reason": r["skipped"]} for r in report["cases"] if "skipped" in r
    ]
    return report


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}"
    return str(x)


def table_rows(report) -> list[list[str]]:
    """One table line per case row: case, name, size, ours, baseline, ratio, target, notes."""
    lines = []
    for r in report["cases"]:
        if "error" in r:
            lines.append([r["case"], r["name"], "-", "-", "-", "-", "-", "ERROR: " + r["error"]])
            continue
        if "skipped" in r:
            lines.append([r["case"], r["name"], _fmt(r.get("size")), "-", "-", "-", "-", "skipped: " + r["skipped"]])
            continue
        base = r.get("baseline", {})
        notes = []
        errors = r.get("errors") or {}
        if "ours_max_abs_error" in errors:
            baseline_error = errors.get("baseline_max_abs_error", float("nan"))
            notes.append(f"max err {errors['ours_max_abs_error']:.1e} (baseline {baseline_error:.1e})")
        elif "reference" in errors:
            notes.append(str(errors["reference"]))
        if "overhead_pct" in r:
            notes.append(f"overhead {r['overhead_pct']:.1f}%")
        if r["case"] == "scaling":
            mem = r.get("compiled_memory") or {}
            if "temp_size_in_bytes" in mem:
                notes.append(f"temp {mem['temp_size_in_bytes'] / 2**20:.2f} MiB")
            if r.get("peak_rss_bytes"):
                notes.append(f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
            if "log_log_slope" in r:
                notes.append(f"log-log slope {_fmt(r['log_log_slope'])}; temp memory max/min {_fmt(r['ratio'])}")
        if r["case"] == "overhead":
            notes.append(f"model rows/s in certify {r['model_rows_per_s']:.3g} vs bare {base['model_rows_per_s']:.3g}; "
                         f"rows seen/needed {r['model_rows_seen'] / r['model_rows_needed']:.3f}; "
                         f"job vs bare certify calls {r['job_overhead_pct']:+.1f}%")
        if r["case"] == "compile":
            notes.append(f"compile {r['compile']['total_s']:.2f} s, run {r['median_s']:.3f} s, "
                         f"first call {r['first_call_s']:.2f} s")
        ours = r.get("throughput")
        unit = r.get("unit", "")
        target = r.get("target_ratio")
        if "target_overhead_pct" in r:
            target = f"<= {r['target_overhead_pct']:.0f}% overhead"
        elif target is not None:
            target = f">= {target:.0e}"
        if "meets_target" in r:
            target = f"{target} ({'met' if r['meets_target'] else 'MISSED'})"
        lines.append([
            r["case"], r["name"], _fmt(r.get("size")),
            f"{_fmt(ours)} {unit}".strip() if ours is not None else "-",
            _fmt(base.get("throughput")) if base else "-",
            _fmt(r.get("ratio")),
            target or "-",
            "; ".join(notes),
        ])
    return lines


HEADER = ["case", "name", "size", "smoothjax", "baseline", "ratio", "target", "notes"]


def print_table(report, stream=sys.stdout) -> None:
    lines = [HEADER] + table_rows(report)
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER) - 1)]
    for line in lines:
        stream.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1] + "\n")


def markdown_table(report) -> str:
    m = report["machine"]
    out = [
        f"Mode `{report['mode']}`, {report['started_utc']}, {m['cpu_model']} "
        f"({m['cpu_affinity'] or m['cpu_count']} cores visible), backend {m['backend']} ({m['device_kind']}), "
        f"jax {m['jax']}, load average at start {m['load_average_at_start']}. "
        f"Total {report['total_seconds']:.0f} s wall, {report['cpu_seconds']:.0f} s CPU.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for line in table_rows(report):
        out.append("| " + " | ".join(cell.replace("|", "/") for cell in line) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes: under 2 minutes on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="the smallest sizes (used by the tests)")
    parser.add_argument(
        "--only", default=None,
        help=f"comma-separated subset of {','.join(CASES)}; 'certificates.NAME' picks certificates "
             f"({','.join(CERTIFICATES)})")
    parser.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/<mode>-<time>.json)")
    parser.add_argument("--note", default=None, help="free text stored in the JSON (e.g. 'shared 2-core machine')")
    args = parser.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.note:
        os.environ["SMOOTHJAX_BENCH_NOTE"] = args.note
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    out = pathlib.Path(args.out) if args.out else RESULTS / (
        f"{mode_name}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    report = run_cases(mode_name, only, partial_path=partial)
    partial.unlink(missing_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown_table(report))
    print()
    print_table(report)
    print(f"\nwrote {out} and {out.with_suffix('.md')} ({report['total_seconds']:.1f} s)")
    return 1 if any("error" in r for r in report["cases"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
