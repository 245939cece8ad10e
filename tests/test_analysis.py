"""Certified accuracy (approximate and HighProb), ACR, the envelope, tables, figures and `smoothjax analyze`.

Expected values are computed by hand or with scipy (binomial quantiles, normal quantiles), never
with the functions under test.
"""

import dataclasses
import math
import os

import numpy as np
import pytest
from scipy.stats import binom, norm

from smoothjax.app import analysis, arguments, cli
from smoothjax.app.tsv import CertificationTable


def _table(name, radii, correct, *, settings=None, path="", idx=None, predict=None):
    correct = np.asarray(correct, bool)
    m = len(correct)
    label = np.zeros(m, np.int64)
    predict = np.where(correct, 0, -1) if predict is None else np.asarray(predict)
    return CertificationTable(name, label, predict, correct, {k: np.asarray(v, float) for k, v in radii.items()},
                              np.full(m, 0.5), None if idx is None else np.asarray(idx), dict(settings or {}),
                              "smoothjax", path)


# --------------------------------------------------------------------------- definitions


def test_certified_accuracy_counts_every_attempted_input():
    # correct & certified 0.3 / correct 0.8 / abstain / wrong with a radius / correct with radius 0 (a method abstained)
    radius = np.array([0.3, 0.8, 0.0, 0.6, 0.0])
    correct = np.array([True, True, False, False, True])
    got = analysis.certified_accuracy_curve(radius, correct, [0.0, 1e-12, 0.3, 0.31, 0.8, 0.9])
    np.testing.assert_array_equal(got, [3 / 5, 2 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0])
    assert analysis.certified_accuracy_curve(np.zeros(0), np.zeros(0, bool), [0.0, 1.0]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="same length"):
        analysis.certified_accuracy_curve(radius, correct[:3], [0.0])


def test_acr_and_table_accuracy_agree_with_a_direct_count():
    t = _table("t", {"cohen_l2": [0.3, 0.8, 0.0, 0.6]}, [True, True, False, False])
    assert analysis.average_certified_radius(t, "cohen_l2") == pytest.approx(1.1 / 4)
    r = np.array([0.0, 0.5, 1.0])
    direct = [np.mean([c and rad >= x for c, rad in zip(t.correct, t.radii["cohen_l2"])]) for x in r]
    np.testing.assert_array_equal(analysis.certified_accuracy(t, "cohen_l2", r), direct)


@pytest.mark.parametrize("m", [1, 10, 100, 500, 1000, 10_000])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.1])
@pytest.mark.parametrize("rho", [0.001, 0.05])
def test_binomial_quantile_matches_scipy(m, alpha, rho):
    ours = analysis.binomial_upper_quantile(m, alpha, rho)
    reference = int(binom.ppf(1 - rho, m, alpha))
    assert ours >= reference  # never optimistic
    assert ours == reference or binom.cdf(reference, m, alpha) >= 1 - rho - 1e-12  # only a tie at the target moves it
    assert binom.sf(ours, m, alpha) <= rho * (1 + 1e-9)  # P[more than k* wrong certificates] <= rho


def test_highprob_bounds_are_below_approximate_and_binomial_is_tighter_than_cohens():
    rng = np.random.default_rng(0)
    m = 500
    t = _table("t", {"cohen_l2": rng.uniform(0, 1, m)}, rng.random(m) < 0.8, settings={"alpha": 0.001})
    radii = [0.0, 0.25, 0.5, 0.75]
    approx = analysis.certified_accuracy(t, "cohen_l2", radii)
    binomial = analysis.highprob_certified_accuracy(t, "cohen_l2", radii, alpha=0.001, rho=0.001)
    bernstein = analysis.highprob_certified_accuracy(t, "cohen_l2", radii, alpha=0.001, rho=0.001, bound="bernstein")
    k = int(binom.ppf(1 - 0.001, m, 0.001))
    np.testing.assert_allclose(binomial, np.maximum(approx - k / m, 0), rtol=0, atol=1e-15)
    # Cohen et al.'s analyze.py, HighProbAccuracy.at_radius
    cohen = approx - 0.001 - math.sqrt(0.001 * 0.999 * math.log(1 / 0.001) / m) - math.log(1 / 0.001) / (3 * m)
    np.testing.assert_allclose(bernstein, np.maximum(cohen, 0), rtol=0, atol=1e-15)
    assert np.all(bernstein <= binomial) and np.all(binomial <= approx)
    with pytest.raises(ValueError, match="unknown bound"):
        analysis.highprob_certified_accuracy(t, "cohen_l2", radii, alpha=0.001, bound="hoeffding")


@pytest.mark.parametrize("sigma, n, alpha",
                         [(0.25, 2000, 0.001), (0.5, 100_000, 0.001), (0.12, 10**7, 1e-5), (1.0, 10, 0.1)])
def test_max_certifiable_radius(sigma, n, alpha):
    expected = sigma * norm.isf(-np.expm1(np.log(alpha) / n))
    assert analysis.max_certifiable_radius(sigma, n, alpha) == pytest.approx(expected, rel=1e-12)
    # the same number the pipeline produces when every sample hits the top class
    import smoothjax

    p = float(smoothjax.clopper_pearson_lower(n, n, alpha))
    cohen = float(smoothjax.cohen_radius(p, sigma))
    assert analysis.max_certifiable_radius(sigma, n, alpha) == pytest.approx(cohen, rel=1e-9)


def test_max_radius_of_the_demo_and_degenerate_cases():
    # the 0.675 where the demo's curves end
    assert analysis.max_certifiable_radius(0.25, 2000, 0.001) == pytest.approx(0.6755, abs=1e-4)
    assert analysis.max_certifiable_radius(1.0, 1, 0.5) == 0.0  # alpha^(1/n) <= 1/2: nothing certifiable
    with pytest.raises(ValueError):
        analysis.max_certifiable_radius(0.0, 10, 0.001)


def test_envelope_is_the_pointwise_maximum_over_sigmas():
    a = _table("s0.25", {"cohen_l2": [0.2, 0.4, 0.0]}, [1, 1, 0], settings={"sigma": 0.25})
    b = _table("s0.5", {"cohen_l2": [0.0, 0.9, 0.7]}, [0, 1, 1], settings={"sigma": 0.5})
    c = _table("other", {"sos_l2": [1.0, 1.0, 1.0]}, [1, 1, 1], settings={"sigma": 0.5})
    radii = [0.0, 0.3, 0.5, 0.8, 1.0]
    np.testing.assert_array_equal(analysis.envelope([a, b, c], "cohen_l2", radii), [2 / 3, 2 / 3, 2 / 3, 1 / 3, 0.0])
    assert analysis._envelope_methods([a, b, c]) == ["cohen_l2"]
    assert analysis._envelope_methods([a, _table("same", {"cohen_l2": [1]}, [1], settings={"sigma": 0.25})]) == []
    with pytest.raises(ValueError, match="no table has method"):
        analysis.envelope([a], "dipole_l2", radii)


# --------------------------------------------------------------------------- tables


def test_markdown_table_rows_envelope_and_highprob():
    a = _table("a", {"cohen_l2": [0.3, 0.8, 0.0, 0.6], "first_order_l1": [0.5, 1.2, 0.0, 0.7]}, [1, 1, 0, 0],
               settings={"sigma": 0.25, "alpha": 0.001})
    b = _table("b", {"cohen_l2": [0.9, 0.9, 0.9, 0.9]}, [1, 1, 1, 1], settings={"sigma": 0.5})
    md = analysis.markdown_table([a, b], [0, 0.5, 1.0])
    assert "| a | cohen_l2 | l2 | 0.500 | 0.250 | 0.000 | 0.275 | 0.5000 |" in md
    assert "| a | first_order_l1 | l1 | 0.500 | 0.500 | 0.250 |" in md
    assert "| envelope (max over sigmas) | cohen_l2 | l2 | 1.000 | 1.000 | 0.000 |" in md
    # HighProb: m = 4, alpha = 0.001, rho = 0.001 -> k* = 1, so 1/4 comes off; b's alpha is unknown
    assert "| a | cohen_l2 | 0.250 | 0.000 | 0.000 |" in md
    assert "| b | cohen_l2 | n/a | n/a | n/a |" in md
    unknown = analysis.markdown_table([b], [0, 0.5])
    assert unknown.count("| cohen_l2 |") == 1 and "needs the certification alpha: pass --alpha" in unknown


def test_latex_table_escapes_and_shows_highprob():
    a = _table("run_1", {"cohen_l2": [0.3, 0.8]}, [1, 1], settings={"sigma": 0.25, "n": 2000, "alpha": 0.1})
    tex = analysis.latex_table([a], [0.0, 0.5])
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"run\_1 & cohen\_l2" in tex
    k = int(binom.ppf(1 - 0.001, 2, 0.1))  # = 1
    assert f"1.000 ({1 - k / 2:.3f})" in tex and r"$\sigma$ = 0.25, n = 2000, $\alpha$ = 0.1" in tex


# --------------------------------------------------------------------------- figures


def test_radius_pairs_join_single_method_logs_of_one_folder_by_idx(tmp_path):
    run, other = str(tmp_path / "run" / "N_100"), str(tmp_path / "other" / "N_100")
    settings = {"sigma": 0.25, "n": 100}
    cohen = _table("N_100", {"cohen_l2": [0.1, 0.2, 0.3]}, [1, 1, 0], idx=[0, 10, 20], path=run, settings=settings)
    dipole = _table("dipole_N_100", {"dipole_l2": [0.5, 0.6]}, [1, 1], idx=[20, 10],
                    path=str(tmp_path / "run" / "dipole_N_100"), settings=settings)
    stranger = _table("N_100", {"cohen_l2": [9.0, 9.0]}, [1, 1], idx=[10, 20], path=other, settings=settings)
    pairs = analysis.radius_pairs([stranger, cohen, dipole])
    assert len(pairs) == 1
    name, method, ref, rad, ok = pairs[0]
    assert method == "dipole_l2" and name == "dipole_N_100 vs N_100"
    np.testing.assert_array_equal(ref, [0.3, 0.2])
    np.testing.assert_array_equal(rad, [0.5, 0.6])
    np.testing.assert_array_equal(ok, [False, True])
    multi = _table("m", {"cohen_l2": [0.1, 0.0], "sos_l2": [0.2, 0.0], "first_order_l1": [0.3, 0.0]}, [1, 0])
    assert [p[1] for p in analysis.radius_pairs([multi])] == ["sos_l2", "first_order_l1"]


def test_figures_are_written(tmp_path):
    a = _table("a", {"cohen_l2": [0.3, 0.8, 0.0], "sos_l2": [0.35, 0.8, 0.0], "first_order_l1": [0.5, 1.2, 0.0],
                     "subspace_l2": [0.4, 1.0, 0.0]}, [1, 1, 0], settings={"sigma": 0.25, "n": 2000, "alpha": 0.001})
    b = _table("b", {"cohen_l2": [0.5, 0.1, 0.0]}, [1, 1, 0], settings={"sigma": 0.5, "n": 2000, "alpha": 0.001})
    written = analysis.plot_certified_accuracy([a, b], str(tmp_path / "acc"))
    assert [os.path.basename(p) for p in written] == ["acc.png", "acc.svg"]
    svg = (tmp_path / "acc.svg").read_text()
    for text in ("envelope over sigma (colour = method)", "largest radius n = 2,000 certifies: 0.675 (σ = 0.25)",
                 "largest radius n = 2,000 certifies: 1.35 (σ = 0.5)", "cohen_l2 as l2 baseline", "n = 2000, α = 0.001",
                 "a (sigma = 0.25)"):
        assert text in svg, text
    single = (tmp_path / "one.svg")
    analysis.plot_certified_accuracy([a], str(tmp_path / "one"), formats=("svg",))
    one = single.read_text()
    assert "cohen_l2 (l2 baseline)" in one and "envelope" not in one
    # the max-radius line is named in the key of each panel that plots an l2 radius: l2, l1 (baseline), subspace
    assert one.count("largest radius n = 2,000 certifies: 0.675") == 3
    assert analysis.plot_radius_scatter([a], str(tmp_path / "sc"))[0].endswith("sc.png")
    assert (tmp_path / "sc.png").stat().st_size > 5000
    assert analysis.plot_radius_scatter([b], str(tmp_path / "none")) == []


def test_each_method_has_its_own_colour_and_line_style():
    known = [analysis.method_style(m) for m in analysis._METHOD_ORDER]
    assert len({c for c, _ in known}) == len({str(s) for _, s in known}) == len(known)
    assert analysis.method_style("my_method_l2") == analysis.method_style("my_method_l2")  # stable for other names


# --------------------------------------------------------------------------- the command line


def _write_cohen_log(path, rows):
    with open(path, "w") as fh:
        fh.write("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
        for i, (label, pred, radius) in enumerate(rows):
            fh.write(f"{i}\t{label}\t{pred}\t{radius}\t{int(label == pred)}\t0:00:01.250000\n")


def test_analyze_reads_cohens_published_format(tmp_path, capsys):
    log = tmp_path / "sigma_0.25"
    _write_cohen_log(log, [(3, 3, 0.31), (1, 1, 0.82), (2, -1, 0.0), (4, 5, 0.6)])
    out = tmp_path / "out"
    code = cli.main(["analyze", str(log), "--out", str(out), "--n", "100000", "--alpha", "0.001"])
    stdout = capsys.readouterr().out
    assert code == 0
    acr = (0.31 + 0.82) / 4
    assert f"| sigma_0.25 | cohen_l2 | l2 | 0.500 | 0.500 | 0.250 | 0.250 | 0.000 | {acr:.3f} | 1.2500 |" in stdout
    assert "sigma_0.25: sigma = 0.25, n = 100000, alpha = 0.001" in stdout
    for name in ("certified_accuracy.png", "certified_accuracy.svg", "summary.md", "summary.tex"):
        assert (out / name).stat().st_size > 300
    assert not (out / "radius_scatter.png").exists()  # one method: nothing to pair
    code = cli.main(["analyze", str(log), "--out", str(out), "--method", "sos"])
    assert code == 0 and "| sigma_0.25 | sos_l2 | l2 |" in capsys.readouterr().out


def test_analyze_reads_the_second_papers_logs(peer_data_dir, tmp_path, capsys):
    folder = peer_data_dir / "cifar10" / "resnet110" / "noise_0.25" / "test"
    code = cli.main(["analyze", str(folder), "--out", str(tmp_path / "peer")])
    stdout = capsys.readouterr().out
    assert code == 0
    # file names are unique here, so they stay short
    assert "| N_100000 | cohen_l2 | l2 |" in stdout and "| dipole_N_1000000 | dipole_l2 | l2 |" in stdout
    assert "N_100000: sigma = 0.25, n = 100000, alpha = 0.001" in stdout
    assert (tmp_path / "peer" / "radius_scatter.png").is_file()  # dipole paired with N_100000 by idx


@pytest.mark.parametrize("argv, fragment", [
    (["--rho", "0"], "--rho must lie strictly between 0 and 1"),
    (["--alpha", "2"], "--alpha must lie strictly between 0 and 1"),
    (["--sigma", "-1"], "--sigma must be > 0"),
    (["--method", "nope"], "unknown method 'nope'"),
], ids=["rho", "alpha", "sigma", "method"])
def test_analyze_rejects_bad_options(tmp_path, capsys, argv, fragment):
    log = tmp_path / "log.tsv"
    _write_cohen_log(log, [(1, 1, 0.5)])
    code = cli.main(["analyze", str(log), "--out", str(tmp_path / "o"), *argv])
    assert code == 2 and fragment in capsys.readouterr().err


def test_dataset_arguments_reach_the_loader(tmp_path, capsys):
    args = cli.build_parser().parse_args(["certify", "--dataset", "cifar10:data", "--layout", "nchw", "--scale", "255",
                                          "--download", "--out", "o.tsv"])
    assert arguments.dataset_options(args) == {"layout": "nchw", "scale": 255.0, "download": True}
    pixels = tmp_path / "u8.npz"
    np.savez(pixels, x=np.zeros((4, 8, 8, 1), np.uint8), y=np.zeros(4, int))
    code = cli.main(["train", "--dataset", str(pixels), "--sigma", "0.25", "--out", str(tmp_path / "m.msgpack")])
    assert code == 2 and "--scale 255" in capsys.readouterr().err
    code = cli.main(["train", "--dataset", "digits", "--layout", "nchw", "--sigma", "0.25",
                     "--out", str(tmp_path / "m.msgpack")])
    assert code == 2 and "--layout does not apply to the built-in dataset 'digits'" in capsys.readouterr().err


def test_distinct_names_keep_only_the_folders_that_differ():
    names = cli._distinct_names(["x/cifar10/resnet110/noise_0.25/test/N_100", "x/mnist/net/noise_0.25/test/N_100",
                                 "y/s025/run.tsv", "deep/er/s050/run.tsv", "alone.tsv"])
    assert names == ["resnet110/N_100", "net/N_100", "s025/run", "s050/run", "alone"]


# --------------------------------------------------------------------------- partial runs, norms of the scatter


def _write_job(path, rows, *, status="complete", job_inputs, file_inputs, shard=None, shape=(8, 8, 1)):
    """A smoothjax TSV with ``rows`` inputs and the sidecar `smoothjax certify` would write beside it."""
    import json

    with open(path, "w") as fh:
        fh.write("idx\tlabel\tpredict\tradius_cohen_l2\tradius_first_order_linf\tcorrect\ttime\n")
        for i in range(rows):
            fh.write(f"{i}\t1\t1\t0.8\t{0.05 if i % 2 else 0.2}\t1\t0.5\n")
    side = {"format": "smoothjax-job/1", "status": status,
            "settings": {"sigma": 0.25, "n": 1000, "alpha": 0.001, "shard": shard},
            "inputs": {"job": job_inputs, "this_file": file_inputs, "shape": list(shape)}}
    with open(f"{path}.json", "w") as fh:
        json.dump(side, fh)
    return str(path)


def test_analyze_notes_an_interrupted_run_and_a_single_shard(tmp_path, capsys):
    cert = _write_job(tmp_path / "cert.tsv", 5, status="interrupted", job_inputs=40, file_inputs=40)
    shard = _write_job(tmp_path / "cert.shard1.tsv", 20, shard=[1, 2], job_inputs=40, file_inputs=20)
    whole = _write_job(tmp_path / "whole.tsv", 40, job_inputs=40, file_inputs=40)
    assert cli.main(["analyze", cert, shard, whole, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    notes = ["cert.tsv: 5 of 40 inputs (run interrupted; resume it with --resume)",
             "cert.shard1.tsv (shard 1/2): 20 of 40 inputs; merge the shards first"]
    md = (tmp_path / "out" / "summary.md").read_text()
    for note in notes:
        assert captured.err.count(note) == 1 and note in md and note in captured.out
    assert "whole.tsv" not in captured.err  # a complete, unsharded run gets no note


def test_radius_scatter_compares_linf_with_the_linf_ball_inside_cohens_ball(tmp_path):
    # cohen 0.8 in d = 64 contains the linf ball of radius 0.1: linf radii 0.2 are larger, 0.05 smaller
    path = _write_job(tmp_path / "cert.tsv", 4, job_inputs=4, file_inputs=4)
    table = analysis.read_tsv(path)
    assert table.job["dim"] == 64
    analysis.plot_radius_scatter([table], str(tmp_path / "sc"), formats=("svg", "png"))
    svg = (tmp_path / "sc.svg").read_text()
    assert "cohen_l2 radius / sqrt(d), the linf ball it contains (d = 64)" in svg
    assert "larger than cohen_l2's ball for 50%, smaller for 50%" in svg
    # without the input dimension the linf panel is left out, and said so
    notes = []
    assert analysis.plot_radius_scatter([dataclasses.replace(table, job={})], str(tmp_path / "x"), notes=notes) == []
    assert len(notes) == 1 and "input dimension d is unknown" in notes[0]
