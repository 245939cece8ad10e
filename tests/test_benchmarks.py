"""The benchmark suite runs, writes the documented JSON, and its baselines are right.

The runner is called in-process with the ``--smoke`` sizes. A smoothjax case never skips (a
missing function is an error); every ratio that is reported must be finite.
The baselines are checked against the independent high-precision references of
``benchmarks/references.py`` (mpmath / scipy), so the speed ratios compare against code that
computes the right thing.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np
import pytest
from scipy.stats import norm

# `benchmarks/` is a top-level package of the repository, not installed with smoothjax: make it
# importable when pytest is started as `pytest` (which does not put the repository root on sys.path).
ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import baselines, references, run  # noqa: E402

TOP_KEYS = {"schema_version", "mode", "started_utc", "machine", "config", "cases", "case_seconds",
            "total_seconds", "cpu_seconds", "skipped"}
MACHINE_KEYS = {"platform", "python", "cpu_model", "cpu_count", "jax", "backend", "devices", "device_kind", "x64"}
TIMED_KEYS = {"median_s", "iqr_s", "min_s", "max_s", "repeats"}


def _check_report(report, expect_cases):
    assert TOP_KEYS <= set(report), TOP_KEYS - set(report)
    assert report["schema_version"] == run.SCHEMA_VERSION
    assert MACHINE_KEYS <= set(report["machine"])
    seen = {r["case"] for r in report["cases"]}
    assert seen == set(expect_cases)
    for r in report["cases"]:
        assert "error" not in r, r["error"]
        assert {"case", "name"} <= set(r)
        if "skipped" in r:
            assert isinstance(r["skipped"], str) and r["skipped"], r
            continue
        if r["case"] in ("certificates", "sampling", "compile") or "ratio" in r:
            assert isinstance(r["ratio"], (int, float)) and math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        if r["case"] in ("certificates", "sampling", "compile") or r["name"] in ("mlp/n", "mlp/batch"):
            assert TIMED_KEYS <= set(r), TIMED_KEYS - set(r)
            assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
            assert r["iqr_s"][0] <= r["median_s"] <= r["iqr_s"][1]
            assert math.isfinite(r["throughput"]) and r["throughput"] > 0
        if r["case"] in ("certificates", "sampling"):
            base = r["baseline"]
            assert math.isfinite(base["throughput"]) and base["throughput"] > 0
        if r["case"] == "certificates":
            assert r["baseline"]["timed_items"] >= 1
            errors = r["errors"]
            if "ours_max_abs_error" in errors:
                assert math.isfinite(errors["ours_max_abs_error"])
                assert math.isfinite(errors["baseline_max_abs_error"])
        if r["case"] == "sampling":
            assert math.isfinite(r["overhead_pct"])
        if r["case"] == "compile":
            assert r["compile"]["total_s"] >= 0 and r["first_call_s"] > 0
    # a smoothjax case never skips: a broken import or a missing function is an error, not a skip
    assert report["skipped"] == [], report["skipped"]


def test_smoke_run_writes_schema(tmp_path):
    """The cheap cases at the smoke sizes (Theorem 3 cases are in the slow test below)."""
    out = tmp_path / "smoke.json"
    code = run.main([
        "--smoke", "--only",
        "certificates.cohen,certificates.sos,certificates.dipole,sampling,scaling,compile",
        "--out", str(out),
    ])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    _check_report(report, {"certificates", "sampling", "scaling", "compile"})
    assert (tmp_path / "smoke.md").read_text().count("\n") >= 4
    names = {(r["case"], r["name"]) for r in report["cases"]}
    assert {("certificates", "cohen"), ("certificates", "sos"), ("certificates", "dipole")} <= names


@pytest.mark.slow
def test_smoke_run_all_cases(tmp_path):
    out = tmp_path / "all.json"
    assert run.main(["--smoke", "--out", str(out)]) == 0
    _check_report(json.loads(out.read_text()), set(run.CASES))


@pytest.mark.slow
def test_sampling_profile_splits_a_step():
    from benchmarks import case_sampling

    out = case_sampling.profile("mlp", inputs=2, chunk=50, steps=2, rows_per_call=100, repeats=1, log=lambda _: None)
    assert set(out["ms_per_step"]) == {"noise", "model", "counts", "counts+dots", "counts+halves", "all"}
    assert all(t > 0 for t in out["ms_per_step"].values())


def test_only_rejects_unknown_case():
    with pytest.raises(ValueError, match="unknown case"):
        run.run_cases("smoke", ["nonsense"])
    with pytest.raises(ValueError, match="unknown certificate"):
        run.run_cases("smoke", ["certificates.nonsense"])


def test_table_from_synthetic_report():
    report = {
        "mode": "smoke", "started_utc": "now", "total_seconds": 1.0, "cpu_seconds": 1.0,
        "machine": {"cpu_model": "x", "cpu_affinity": 2, "cpu_count": 2, "backend": "cpu", "device_kind": "cpu",
                    "jax": "0", "load_average_at_start": [0, 0, 0]},
        "cases": [
            {"case": "certificates", "name": "sos", "size": 100, "unit": "certificates/s", "throughput": 2e6,
             "baseline": {"throughput": 100.0}, "ratio": 2e4, "target_ratio": 1e4, "meets_target": True,
             "errors": {"ours_max_abs_error": 1e-12, "baseline_max_abs_error": 1e-9}},
            {"case": "certificates", "name": "l1", "size": 10**6, "skipped": "estimated 642 s exceeds the budget"},
        ],
    }
    md = run.markdown_table(report)
    assert "| certificates | sos | 100 |" in md and "2e+04" in md and "(met)" in md
    assert "skipped: estimated 642 s exceeds the budget" in md


# ---- the baselines compute the right radii (independent mpmath / scipy references) ----

RNG = np.random.default_rng(7)


def _max_grad(p):
    return norm.pdf(norm.ppf(p))


@pytest.mark.parametrize("p,frac", [(0.6, 0.0), (0.9, 0.5), (0.999, 0.9), (0.75, 1.0)], ids=str)
def test_sos_baseline_matches_mpmath(p, frac):
    sigma = 0.5
    grad = frac * _max_grad(p) / sigma
    ref = references.sos_radius(p, grad, sigma)
    assert baselines.sos_radius_one(p, grad, sigma) == pytest.approx(ref, abs=1e-7)


def test_sos_reference_limits():
    """Closed forms: zero gradient gives sigma * Phi^-1((1 + p) / 2) ... and the largest gradient Cohen's."""
    sigma, p = 0.25, 0.8
    assert references.sos_radius(p, _max_grad(p) / sigma, sigma) == pytest.approx(sigma * norm.ppf(p), rel=1e-12)
    # zero gradient: the band is symmetric, [-w, w] with 2 Phi(w) - 1 = p, and the radius R solves
    # Phi(w - R) - Phi(-w - R) = 1/2 (checked against scipy brentq)
    from scipy.optimize import brentq

    w = norm.ppf((1 + p) / 2)
    expect = brentq(lambda r: norm.cdf(w - r) - norm.cdf(-w - r) - 0.5, 0, 10, xtol=1e-14)
    assert references.sos_radius(p, 0.0, sigma) == pytest.approx(sigma * expect, rel=1e-10)


@pytest.mark.parametrize("cs,cn", [(0.9, 0.05), (0.3, 0.5), (0.0, 0.8), (0.7, 0.0), (0.5, 0.3)], ids=str)
def test_dipole_baseline_matches_mpmath(cs, cn):
    ref = references.dipole_radius(cs, cn, 0.25)
    assert baselines.dipole_radius_one(cs, cn, 0.25) == pytest.approx(ref, abs=1e-7)


def test_dipole_with_no_symmetric_part_is_cohen():
    assert references.dipole_radius(0.0, 0.8, 0.25) == pytest.approx(0.25 * norm.ppf(0.8), rel=1e-12)


@pytest.mark.parametrize("cs,cn", [(0.5, 0.3), (0.9, 0.05), (0.2, 0.45)], ids=str)
def test_dipole_reference_is_max_of_theorem3_and_cohen(cs, cn):
    """The certified dipole radius is max(Theorem 3, Cohen at cs + cn), like smoothjax.dipole_radius."""
    from scipy.optimize import brentq

    sigma = 0.25
    w_n, w_hi, w_lo = norm.ppf(cn), norm.ppf((1 + cs) / 2), norm.ppf((1 - cs) / 2)
    theorem3 = brentq(lambda r: norm.cdf(w_n - r) + norm.cdf(w_hi - r) - norm.cdf(w_lo - r) - 0.5, 0, 20, xtol=1e-14)
    expect = sigma * max(theorem3, norm.ppf(cs + cn))
    assert references.dipole_radius(cs, cn, sigma) == pytest.approx(expect, rel=1e-10)
    if (cs, cn) == (0.5, 0.3):  # the documented case where Cohen's radius is the larger
        assert norm.ppf(cs + cn) > theorem3 + 0.1


@pytest.mark.parametrize("count", [40_000, 60_000, 99_990, 100_000], ids=str)
def test_cohen_baseline_matches_reference(count):
    from scipy.stats import beta

    n, alpha, sigma = 100_000, 0.001, 0.25
    p = beta.ppf(alpha, count, n - count + 1)
    expect = sigma * norm.ppf(p) if p >= 0.5 else 0.0
    assert baselines.cohen_certify_one(count, n, alpha, sigma) == pytest.approx(expect, abs=1e-10)
    assert references.cohen_radius(count, n, alpha, sigma) == pytest.approx(expect, abs=1e-10)


def test_theorem3_baseline_p_lower_near_reference():
    """The reference-style solver (tolerance 1e-3) agrees with B2's adaptive reference to ~1e-2."""
    module = references.theorem3_module()
    if module is None:
        pytest.skip("tests/theorem3_reference.py not present")
    q = 0.8
    m = _max_grad(q)
    for r, m1, m2 in [(0.5, -0.5 * m, 0.3 * m), (1.0, 0.0, 0.5 * m)]:
        ours = baselines.theorem3_p_lower_one(r, q, m1, m2)
        assert ours == pytest.approx(module.reference_p_lower(r, q, m1, m2), abs=2e-2)
