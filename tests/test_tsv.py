"""Certification logs: smoothjax TSVs, Cohen et al.'s format both ways, and the second paper's logs.

Cohen's ``analyze.py`` reads a log with ``pd.read_csv(path, delimiter="\\t")`` and computes certified
accuracy at r as ``(df["correct"] & (df["radius"] >= r)).mean()``; :func:`_cohen_analyze` does the
same with the csv module (written here from that description, pandas is not needed).
"""

import csv
import json
import math
import types

import numpy as np
import pytest

from smoothjax.app import analysis, tsv


def _result(prediction, radii, ids=None):
    """The fields of a CertifyResult the writers read."""
    prediction = np.asarray(prediction, np.int32)
    return types.SimpleNamespace(
        prediction=prediction, radii={m: np.asarray(r, float) for m, r in radii.items()},
        input_ids=np.arange(len(prediction)) if ids is None else np.asarray(ids),
    )


def _cohen_analyze(path, radii):
    """Cohen's ApproximateAccuracy.at_radii, with csv instead of pandas."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return np.array([np.mean([int(row["correct"]) & (float(row["radius"]) >= r) for row in rows]) for r in radii])


_RADII = {"cohen_l2": [0.3, 0.0, 1.2, 0.7, 1e-17], "sos_l2": [0.31, 0.0, 1.25, 0.7, 2e-17]}
_PRED, _LABELS = [3, -1, 1, 4, 2], [3, 2, 1, 5, 2]


@pytest.mark.parametrize("method", ["cohen_l2", "sos_l2"])
def test_cohen_format_runs_under_cohens_analyze(tmp_path, method):
    result = _result(_PRED, _RADII, ids=[0, 20, 40, 60, 80])
    path = tmp_path / "cohen.tsv"
    tsv.write_cohen_tsv(str(path), result, labels=_LABELS, times=[1.5, 0.25, 2.0, 1.0, 0.5], method=method)
    lines = path.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert lines[1].split("\t")[:3] == ["0", "3", "3"] and lines[2].split("\t")[2:5] == ["-1", "0.0", "0"]
    grid = [0.0, 1e-17, 0.3, 0.5, 1.0, 1.25, 2.0]
    table = tsv.read_tsv(str(path), method=method)
    assert table.source_format == "cohen" and table.methods == [method]
    np.testing.assert_array_equal(table.radii[method], _RADII[method])  # exact round trip
    np.testing.assert_array_equal(table.idx, [0, 20, 40, 60, 80])
    np.testing.assert_allclose(table.time, [1.5, 0.25, 2.0, 1.0, 0.5])
    np.testing.assert_array_equal(_cohen_analyze(path, grid), analysis.certified_accuracy(table, method, grid))
    # without labels: label -1 and correct 0; times unknown
    tsv.write_cohen_tsv(str(path), result, method=method)
    table = tsv.read_tsv(str(path))
    assert table.methods == ["cohen_l2"] and not table.correct.any() and np.isnan(table.time).all()


def test_cohen_rows_check_their_arguments():
    result = _result(_PRED, _RADII)
    with pytest.raises(ValueError, match="method 'dipole_l2' is not in this result"):
        tsv.cohen_rows(result, _LABELS, method="dipole_l2")
    with pytest.raises(ValueError, match="labels must have one entry per input"):
        tsv.cohen_rows(result, [1, 2], method="cohen_l2")
    assert tsv.cohen_header() == ["idx", "label", "predict", "radius", "correct", "time"]
    assert len(tsv.cohen_rows(result, _LABELS)) == 5 and all(r.endswith("\n") for r in tsv.cohen_rows(result))


@pytest.mark.parametrize("rows", [tsv.format_rows, tsv.cohen_rows], ids=["smoothjax", "cohen"])
@pytest.mark.parametrize("arg", ["input_ids", "labels", "times"])
def test_both_writers_check_the_per_input_columns_alike(rows, arg):
    result = _result(_PRED, _RADII, ids=[0, 20, 40, 60, 80])
    with pytest.raises(ValueError, match=f"{arg} must have one entry per input \\(5\\), got shape \\(2,\\)"):
        rows(result, **{arg: [1, 2]})
    lines = [r.rstrip("\n").split("\t") for r in rows(result, labels=_LABELS, times=np.full(5, 0.25))]
    # idx, label, predict first; correct and time last
    assert [r[:3] + r[-2:] for r in lines] == [[str(i), str(lab), str(p), str(int(p == lab)), "0.250000"]
                                               for i, lab, p in zip([0, 20, 40, 60, 80], _LABELS, _PRED)]


@pytest.mark.parametrize("text, seconds", [
    ("12.5", 12.5), ("0:00:22.766151", 22.766151), ("1:02:03", 3723.0), ("0:03:48.677077", 228.677077),
    ("1 day, 0:00:01.5", 86401.5), ("2 days, 1:00:00", 176400.0), ("nan", math.nan),
], ids=["seconds", "cohen", "no-fraction", "minutes", "day", "days", "nan"])
def test_time_formats(text, seconds):
    got = tsv.parse_time(text)
    assert (math.isnan(got) and math.isnan(seconds)) or got == pytest.approx(seconds, abs=1e-9)


def test_cohen_published_log_with_clock_times(tmp_path):
    sub = tmp_path / "noise_0.50" / "test"
    sub.mkdir(parents=True)
    path = sub / "sigma_0.50"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                    "0\t3\t3\t0.412\t1\t0:00:03.044837\n100\t8\t-1\t0.0\t0\t0:00:02.9\n200\t5\t5\t0.0834\tTrue\t3.5\n")
    table = tsv.read_tsv(str(path))
    assert table.source_format == "cohen" and table.settings == {"sigma": 0.5}
    np.testing.assert_allclose(table.time, [3.044837, 2.9, 3.5])
    np.testing.assert_array_equal(table.correct, [True, False, True])
    assert table.name == "sigma_0.50"  # a numeric suffix is not an extension


def test_smoothjax_tsv_round_trip(tmp_path):
    path = tmp_path / "run.tsv"
    tsv.write_tsv(str(path), _result(_PRED, _RADII), labels=_LABELS, times=np.full(5, 0.5))
    table = tsv.read_tsv(str(path))
    assert table.source_format == "smoothjax" and table.methods == ["cohen_l2", "sos_l2"]
    np.testing.assert_array_equal(table.radii["sos_l2"], _RADII["sos_l2"])
    np.testing.assert_array_equal(table.correct, [True, False, True, False, True])
    assert len(table) == 5 and table.settings == {}


def test_sidecar_settings_and_overrides(tmp_path):
    path = tmp_path / "run.tsv"
    tsv.write_tsv(str(path), _result(_PRED, _RADII), labels=_LABELS)
    (tmp_path / "run.tsv.json").write_text(json.dumps({"sigma": 0.25, "n": 2000, "alpha": 0.001, "model": "x",
                                                       "methods": ["cohen_l2"]}))
    assert tsv.read_tsv(str(path)).settings == {"sigma": 0.25, "n": 2000, "alpha": 0.001}
    over = tsv.read_tsv(str(path), settings={"sigma": 0.5, "n": None})
    assert over.settings == {"sigma": 0.5, "n": 2000, "alpha": 0.001}
    (tmp_path / "run.tsv.json").write_text(json.dumps({"settings": {"sigma": 1.0, "n": "many", "alpha": True}}))
    assert tsv.read_tsv(str(path)).settings == {"sigma": 1.0}  # non-numbers are ignored
    (tmp_path / "run.tsv.json").write_text("{not json")
    with pytest.raises(tsv.AnalysisError, match="could not read the settings file"):
        tsv.read_tsv(str(path))


def test_unreadable_files_say_what_they_need(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(tsv.AnalysisError, match="not a smoothjax certification TSV nor a Cohen-format log"):
        tsv.read_tsv(str(bad))
    broken = tmp_path / "broken.tsv"
    broken.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tzero\t1\t0.1\n")
    with pytest.raises(tsv.AnalysisError, match="column 'radius'"):
        tsv.read_tsv(str(broken))
    (tmp_path / "empty").mkdir()
    with pytest.raises(tsv.AnalysisError, match="holds no certification logs"):
        tsv.expand_log_paths([str(tmp_path / "empty")])


# --------------------------------------------------------------------------- the second paper's logs


_LEVINE_EXPECTED = {"N_": "cohen_l2", "second_order_N_": "sos_l2", "dipole_N_": "dipole_l2"}


def test_peer_logs_map_onto_methods(peer_data_dir):
    from scipy.stats import norm

    logs = sorted(p for p in peer_data_dir.rglob("*") if p.is_file())
    assert logs
    for path in logs:
        table = tsv.read_tsv(str(path))
        prefix = path.name[: path.name.index("N_") + 2]
        method = _LEVINE_EXPECTED[prefix]
        n = int(path.name.split("N_")[1])
        assert table.source_format == "levine" and table.methods == [method] and table.name == path.name
        assert table.settings == {"n": n, "alpha": 0.001, "sigma": 0.25}
        np.testing.assert_array_equal(table.correct, (table.predict == table.label) & (table.predict >= 0))
        assert np.all(table.time > 0) and np.all(table.radii[method] >= 0)
        assert np.all(table.radii[method][table.predict < 0] == 0)
        if method == "cohen_l2":  # radius = sigma Phi^-1(p_A_bar), printed with 3 significant digits
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
            p = np.array([float(r["p_A_bar"]) for r in rows])
            expected = np.where(p > 0.5, 0.25 * norm.ppf(p), 0.0)
            np.testing.assert_allclose(table.radii[method], expected, rtol=6e-3, atol=6e-4)


def test_peer_directory_expands_to_its_logs(peer_data_dir):
    folder = peer_data_dir / "cifar10" / "resnet110" / "noise_0.25" / "test"
    paths = tsv.expand_log_paths([str(folder)])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["N_100000", "dipole_N_100000", "dipole_N_1000000"]
