"""The `smoothjax` command line: the demo (README's first command), analyze, train, and every error path."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import run_cli

from smoothjax.app import analysis, cli, models

REQUIRED_MODULES = ("pipeline", "certificates", "gradient_bounds", "first_order", "theorem3")
MISSING = [m for m in REQUIRED_MODULES if importlib.util.find_spec(f"smoothjax.{m}") is None]
needs_pipeline = pytest.mark.skipif(
    bool(MISSING), reason=f"certify needs smoothjax.{', smoothjax.'.join(MISSING)} (not built yet)")


@pytest.fixture(autouse=True)
def _no_persistent_cache_in_process(monkeypatch):
    # cli.main turns on JAX's persistent compilation cache (process-wide); keep pytest's process clean
    monkeypatch.setenv("SMOOTHJAX_CACHE_DIR", "")


_run_main = run_cli


# --------------------------------------------------------------------------- error paths


def _bad_npz(tmp_path):
    path = tmp_path / "wrong_shape.npz"
    np.savez(path, x=np.zeros((5, 10), np.float32), y=np.zeros(5, int))
    return str(path)


def _mismatch_npz(tmp_path):
    path = tmp_path / "mismatch.npz"
    np.savez(path, x=np.zeros((5, 64), np.float32), y=np.zeros(4, int))
    return str(path)


def _no_y_npz(tmp_path):
    path = tmp_path / "no_y.npz"
    np.savez(path, x=np.zeros((5, 64), np.float32))
    return str(path)


def _not_tsv(tmp_path):
    path = tmp_path / "notes.tsv"
    path.write_text("hello\tworld\n1\t2\n")
    return str(path)


ERROR_CASES = [
    (lambda t: ["certify", "--model", str(t / "missing.msgpack"), "--out", str(t / "o.tsv")], "not found"),
    (lambda t: ["certify", "--dataset", str(t / "missing.npz"), "--out", str(t / "o.tsv")], "not found"),
    (lambda t: ["certify", "--dataset", _bad_npz(t), "--out", str(t / "o.tsv")], "the model expects [8, 8, 1]"),
    (lambda t: ["certify", "--dataset", _mismatch_npz(t), "--out", str(t / "o.tsv")], "differ in length"),
    (lambda t: ["train", "--dataset", _no_y_npz(t), "--sigma", "0.25", "--out", str(t / "m.msgpack")], "no array 'y'"),
    (lambda t: ["certify", "--sigma", "0", "--out", str(t / "o.tsv")], "--sigma must be"),
    (lambda t: ["certify", "--sigma", "-0.5", "--out", str(t / "o.tsv")], "--sigma must be"),
    (lambda t: ["train", "--sigma", "0", "--out", str(t / "m.msgpack")], "--sigma must be"),
    (lambda t: ["certify", "--n0", "500", "--n", "100", "--out", str(t / "o.tsv")], "must not exceed --n"),
    (lambda t: ["certify", "--methods", "cohen,bogus", "--out", str(t / "o.tsv")], "unknown method 'bogus'"),
    (lambda t: ["certify", "--alpha", "1.5", "--out", str(t / "o.tsv")], "--alpha must lie"),
    (lambda t: ["certify", "--subspace", "diagonal", "--methods", "subspace", "--out", str(t / "o.tsv")],
     "unknown --subspace"),
    (lambda t: ["certify", "--dataset", "mnist7", "--out", str(t / "o.tsv")], "unknown dataset 'mnist7'"),
    (lambda t: ["train", "--sigma", "0.25", "--arch", "resnet", "--out", str(t / "m.msgpack")], "unknown architecture"),
    (lambda t: ["train", "--sigma", "0.25", "--objective", "nope", "--out", str(t / "m.msgpack")],
     "unknown objective 'nope'"),
    (lambda t: ["train", "--sigma", "0.25", "--objective-option", "foo", "--out", str(t / "m.msgpack")], "KEY=VALUE"),
    (lambda t: ["analyze", str(t / "missing.tsv")], "not found"),
    (lambda t: ["analyze", _not_tsv(t)], "not a smoothjax certification TSV"),
    (lambda t: ["analyze", _not_tsv(t), "--radii", "a,b"], "--radii must be"),
    (lambda t: ["certify", "--n", "ten"], "invalid int value"),
    (lambda t: ["train", "--sigma", "0.25"], "required: --out"),
    (lambda t: ["frobnicate"], "invalid choice"),
]
ERROR_IDS = [
    "missing-model", "missing-npz", "wrong-input-shape", "x-y-length-mismatch", "npz-without-y", "sigma-zero",
    "sigma-negative", "train-sigma-zero", "n0-above-n", "unknown-method", "alpha-out-of-range", "unknown-subspace",
    "unknown-dataset", "unknown-arch", "unknown-objective", "bad-objective-option", "missing-tsv", "not-a-tsv",
    "bad-radii", "non-integer-n", "missing-out", "unknown-command",
]


@pytest.mark.parametrize("make_argv, fragment", ERROR_CASES, ids=ERROR_IDS)
def test_user_mistakes_give_one_line_and_exit_code_2(tmp_path, capsys, make_argv, fragment):
    argv = make_argv(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors exit from inside parse_args
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("smoothjax") and "error:" in lines[0]
    assert fragment in lines[0]
    assert "Traceback" not in err + out
    assert not os.path.exists(tmp_path / "o.tsv")


def test_console_script_error_has_no_traceback(tmp_path):
    exe = shutil.which("smoothjax")
    if exe is None:
        pytest.skip("the smoothjax console script is not installed (pip install -e .)")
    proc = subprocess.run([exe, "certify", "--sigma", "0", "--out", str(tmp_path / "o.tsv")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--sigma must be" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_parse_methods_aliases():
    assert cli.parse_methods("cohen, SOS,dipole,first-order-l1,linf") == (
        "cohen_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf")
    assert cli.parse_methods("cohen_l2,cohen") == ("cohen_l2",)
    assert cli.parse_methods("subspace") == ("subspace_l2",)


def test_subspace_masks():
    top = cli.subspace_mask("top", (8, 8, 1))
    assert top.shape == (8, 8, 1) and top.sum() == 32 and top[:4].all() and not top[4:].any()
    centre = cli.subspace_mask("centre", (8, 8, 1))
    assert centre.sum() == 16 and centre[2:6, 2:6].all()


# --------------------------------------------------------------------------- analyze


def _write_tsv(path, rows, methods):
    with open(path, "w") as fh:
        fh.write("\t".join(["idx", "label", "predict", *[f"radius_{m}" for m in methods], "correct", "time"]) + "\n")
        for i, (label, pred, radii) in enumerate(rows):
            cells = [str(i), str(label), str(pred), *[repr(r) for r in radii], str(int(label == pred)), "0.5"]
            fh.write("\t".join(cells) + "\n")


def test_analyze_table_and_plots(tmp_path, capsys):
    methods = ["cohen_l2", "sos_l2", "first_order_l1", "first_order_linf"]
    rows = [
        (3, 3, [0.30, 0.35, 0.50, 0.05]),
        (1, 1, [0.80, 0.80, 1.20, 0.10]),
        (2, -1, [0.0, 0.0, 0.0, 0.0]),   # abstain
        (4, 5, [0.60, 0.60, 0.70, 0.08]),  # wrong: never counts
    ]
    tsv = tmp_path / "run.tsv"
    _write_tsv(tsv, rows, methods)
    out_dir = tmp_path / "analysis"
    code, out, err = _run_main(["analyze", str(tsv), "--out", str(out_dir)], capsys)
    assert code == 0, err
    for name in ("certified_accuracy.png", "certified_accuracy.svg", "summary.md"):
        assert (out_dir / name).stat().st_size > 500
    table = analysis.read_tsv(str(tsv))
    # independent: correct rows are 0 and 1; cohen radii 0.30 and 0.80
    np.testing.assert_allclose(analysis.certified_accuracy(table, "cohen_l2", [0, 0.25, 0.5, 0.75, 1.0]),
                               [0.5, 0.5, 0.25, 0.25, 0.0])
    np.testing.assert_allclose(analysis.certified_accuracy(table, "first_order_l1", [0, 0.5, 1.0, 1.25]),
                               [0.5, 0.5, 0.25, 0.0])
    assert analysis.average_certified_radius(table, "sos_l2") == pytest.approx((0.35 + 0.80) / 4)
    md = (out_dir / "summary.md").read_text()
    assert "| run | cohen_l2 | l2 | 0.500 | 0.500 | 0.250 | 0.250 | 0.000 | 0.275 |" in md
    assert "| run | first_order_linf | linf |" in md
    assert "cohen_l2" in out
    assert {analysis.threat_model(m) for m in methods} == {"l2", "l1", "linf"}
    assert analysis.threat_model("subspace_l2") == "subspace l2"


def test_analyze_several_tsvs_with_the_same_name(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _write_tsv(tmp_path / sub / "run.tsv", [(1, 1, [0.5])], ["cohen_l2"])
    code, out, err = _run_main(["analyze", str(tmp_path / "a" / "run.tsv"), str(tmp_path / "b" / "run.tsv"),
                                "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    md = (tmp_path / "out" / "summary.md").read_text()
    assert md.count("| cohen_l2 |") == 2


# --------------------------------------------------------------------------- train


def test_train_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "spirals.msgpack"
    code, stdout, err = _run_main(["train", "--dataset", "spirals", "--sigma", "0.1", "--epochs", "2", "--hidden", "16",
                                   "--out", str(out)], capsys)
    assert code == 0, err
    apply_fn, params, config = models.load_model(str(out))
    assert config["input_shape"] == [2] and config["hidden"] == [16] and config["training"]["sigma"] == 0.1
    assert apply_fn(params, np.zeros((3, 2), np.float32)).shape == (3, 2)
    assert "saved" in stdout and "test accuracy" in stdout


# --------------------------------------------------------------------------- certify / demo


@needs_pipeline
def test_certify_small_run_and_summary(tmp_path, capsys):
    out = tmp_path / "c.tsv"
    code, stdout, err = _run_main(["certify", "--methods", "cohen,sos", "--n0", "32", "--n", "200",
                                   "--batch-size", "100", "--max-inputs", "6", "--skip", "7", "--inputs-per-call", "4",
                                   "--out", str(out)], capsys)
    assert code == 0, err
    table = analysis.read_tsv(str(out))
    assert table.methods == ["cohen_l2", "sos_l2"]
    assert len(table.label) == 6
    idx = np.loadtxt(out, skiprows=1, usecols=0, dtype=int)
    ids = np.arange(0, 42, 7)
    np.testing.assert_array_equal(idx, ids)
    assert "summary: 6 inputs" in stdout and "ACR" in stdout
    # chunks of 4 (the last one padded) give what one direct call on the same inputs and ids gives
    import jax

    from smoothjax import pipeline
    from smoothjax.app import datasets

    apply_fn, params, _ = models.load_model(models.default_model_path())
    x = datasets.load_dataset("digits", "test").x[ids]
    direct = pipeline.certify(apply_fn, params, x, jax.random.key(0), sigma=0.25, n0=32, n=200, alpha=0.001,
                              batch_size=100, methods=("cohen_l2", "sos_l2"), input_ids=ids)
    np.testing.assert_array_equal(table.predict, np.asarray(direct.prediction))
    for m in table.methods:
        np.testing.assert_allclose(table.radii[m], np.asarray(direct.radii[m]), rtol=1e-9, atol=1e-12)


@needs_pipeline
def test_demo_in_a_fresh_directory(tmp_path):
    """The README's first command after install: `smoothjax demo --out DIR` (subprocess, fresh cwd)."""
    exe = shutil.which("smoothjax")
    cmd = [exe] if exe else [sys.executable, "-m", "smoothjax.app.cli"]
    cmd += ["demo", "--out", "demo-out"]
    start = time.perf_counter()
    env = dict(os.environ)
    env.pop("SMOOTHJAX_CACHE_DIR", None)  # as a user runs it (the default compilation cache)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_dir = tmp_path / "demo-out"
    tsvs = sorted(out_dir.glob("*.tsv"))
    assert len(tsvs) == 1
    table = analysis.read_tsv(str(tsvs[0]))
    assert set(table.methods) == set(cli.ALL_METHODS) | {"subspace_l2"}
    assert len(table.label) == cli.DEMO_INPUTS
    for m in table.methods:
        r = table.radii[m]
        assert np.all(np.isfinite(r)) and np.all(r >= 0)
        assert np.all(r[table.predict == -1] == 0)
    # sane: the shipped model certifies most digits at radius 0, and no l2 radius beats sigma * Phi^-1(1 - 1/n) much
    assert analysis.certified_accuracy(table, "cohen_l2", [0.0])[0] > 0.7
    assert np.max(table.radii["cohen_l2"]) < 0.25 * 4.0
    assert np.all(table.radii["sos_l2"] >= 0) and np.mean(table.radii["sos_l2"]) > 0
    for name in ("certified_accuracy.png", "certified_accuracy.svg", "summary.md"):
        assert (out_dir / name).stat().st_size > 500
    assert "summary:" in proc.stdout and "ACR" in proc.stdout
    assert re.search(r"cohen_l2\s+l2\s+[01]\.\d{3}", proc.stdout)
    assert "Traceback" not in proc.stderr
    print(f"demo wall time {wall:.1f} s")


def test_summary_names_unconverged_first_order_radii(tmp_path):
    """Radii from Theorem 3's certified fallback are named in the summary (sound but possibly loose)."""
    import io

    from smoothjax.app.tsv import CertificationTable

    table = CertificationTable("t", np.array([1, 1]), np.array([1, 1]), np.array([True, True]),
                               {"first_order_l1": np.array([0.5, 0.25])}, np.array([0.1, 0.1]))
    timing = {"total_s": 1.0, "per_input_s": 0.5, "first_call_s": 0.6, "steady_per_input_s": float("nan"),
              "inputs_this_run": 2, "unconverged": {"first_order_l1": [7]}}
    out = io.StringIO()
    cli.print_summary(table, timing, file=out)
    text = out.getvalue()
    assert "1 first_order_l1 radii are Theorem 3's certified fallback" in text and "inputs 7" in text


@pytest.mark.parametrize("value, expected", [("all", None), ("512", 512), ("auto", 2048)])
def test_rows_per_call_option(value, expected):
    assert cli.parse_rows_per_call(value) == expected  # the test machine's backend is a CPU


def test_rows_per_call_rejects_nonsense():
    with pytest.raises(cli.UsageError, match="rows-per-call"):
        cli.parse_rows_per_call("-3")
