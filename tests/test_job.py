"""The dataset job: streamed rows, resume after a crash or a kill, shards and merge, the sidecar.

Every comparison is against an uninterrupted run of the same settings, byte for byte apart from
the ``time`` column (seconds per input, the last column of both TSV formats). The command-line
kill tests start ``python -m smoothjax.app.cli certify`` in a subprocess, stop it with SIGTERM
(it finishes the chunk in flight and exits 143) or SIGKILL once some rows are on disk, and resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from smoothjax.app import cli, datasets, job, models, provenance, tsv

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("cohen_l2", "sos_l2")
SETTINGS = dict(sigma=0.25, n0=32, n=200, alpha=0.001, batch_size=100, methods=METHODS, inputs_per_call=4)
NUM = 14  # inputs of the in-process job: 4 chunks, the last one padded


@pytest.fixture(autouse=True)
def _no_persistent_cache_in_process(monkeypatch):
    # cli.main turns on JAX's persistent compilation cache (process-wide); keep pytest's process clean
    monkeypatch.setenv("SMOOTHJAX_CACHE_DIR", "")


@pytest.fixture(scope="module")
def digits():
    apply_fn, params, _ = models.load_model(models.default_model_path())
    data = datasets.load_dataset("digits", "test")
    return apply_fn, params, data.x[:NUM], data.y[:NUM]


@contextlib.contextmanager
def _default_promotion():
    """JAX's default dtype / rank promotion: ``pipeline.certify`` is not yet strict-promotion clean
    (conftest runs test bodies strictly; see its allow-list, which lists test_pipeline and test_cli)."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def _run(digits, out, **overrides):
    apply_fn, params, x, y = digits
    kwargs = dict(SETTINGS, out=str(out), progress=False)
    kwargs.update(overrides)
    key = kwargs.pop("key", jax.random.key(0))
    with _default_promotion():
        return job.certify_dataset(apply_fn, params, kwargs.pop("xs", x), kwargs.pop("ys", y), key, **kwargs)


def _rows(path) -> list[list[str]]:
    """The file's lines without the ``time`` column (the header keeps all its names)."""
    lines = pathlib.Path(path).read_text().splitlines()
    return [lines[0].split("\t")] + [line.split("\t")[:-1] for line in lines[1:]]


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "all.tsv"
    summary = _run(digits, out)
    assert summary.status == "complete" and summary.done_now == NUM
    return out


def test_uninterrupted_run_writes_every_row_and_a_sidecar(reference):
    rows = _rows(reference)
    assert rows[0] == ["idx", "label", "predict", "radius_cohen_l2", "radius_sos_l2", "correct", "time"]
    assert [int(r[0]) for r in rows[1:]] == list(range(NUM))
    side = job.read_sidecar(job.sidecar_path(str(reference)))
    assert side["status"] == "complete" and side["settings"]["methods"] == list(METHODS)
    assert side["inputs"] == {"job": NUM, "this_file": NUM, "shape": [8, 8, 1]}


def test_resume_after_an_exception_mid_run(digits, reference, tmp_path, monkeypatch):
    out = tmp_path / "crash.tsv"
    real, calls = job.pipeline.certify, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(job.pipeline, "certify", failing)
    with pytest.raises(RuntimeError, match="injected"):
        _run(digits, out)
    monkeypatch.setattr(job.pipeline, "certify", real)
    written = len(_rows(out)) - 1
    assert 0 < written < NUM
    side = job.read_sidecar(job.sidecar_path(str(out)))
    assert side["status"] == "interrupted" and "injected failure" in side["sessions"][-1]["error"]
    summary = _run(digits, out, resume=True)
    assert (summary.done_before, summary.done_now, summary.status) == (written, NUM - written, "complete")
    assert _rows(out) == _rows(reference)
    side = job.read_sidecar(job.sidecar_path(str(out)))
    assert side["status"] == "complete" and len(side["sessions"]) == 2


def test_a_line_announces_the_first_compiling_call(digits, reference, tmp_path):
    lines = []
    _run(digits, tmp_path / "c.tsv", on_first_call=lines.append)
    assert lines == ["compiling the certification program for inputs [4, 8, 8, 1] (n0=32, n=200, "
                     "methods=cohen_l2,sos_l2); later chunks of this shape reuse it"]
    _run(digits, tmp_path / "c.tsv", resume=True, on_first_call=lines.append)  # nothing left: no call, no line
    assert len(lines) == 1


def test_resume_drops_a_torn_last_line_and_damaged_rows(digits, reference, tmp_path):
    out = tmp_path / "torn.tsv"
    _run(digits, out)
    lines = out.read_text().splitlines(keepends=True)
    # rows 0..6 intact, row 3 damaged (a field missing), row 7 torn in the middle (no newline)
    damaged = lines[:4] + ["3\t9\t9\t0.1\n"] + lines[5:8] + [lines[8][:7]]
    out.write_text("".join(damaged))
    header, rows, dropped = tsv.read_complete_rows(str(out))
    assert header == lines[0] and len(rows) == 6 and dropped == 2
    summary = _run(digits, out, resume=True)
    assert summary.dropped_rows == 2 and summary.done_before == 6
    assert _rows(out) == _rows(reference)  # rewritten in job order once complete


def test_resume_of_a_file_torn_inside_its_header_starts_again(digits, reference, tmp_path):
    out = tmp_path / "header.tsv"
    _run(digits, out)
    out.write_text("idx\tlab")
    summary = _run(digits, out, resume=True)
    assert summary.done_before == 0 and summary.done_now == NUM
    assert _rows(out) == _rows(reference)


@pytest.mark.parametrize("change", [{"sigma": 0.5}, {"n": 400}, {"methods": ("cohen_l2",)},
                                    {"key": jax.random.key(1)}, {"shard": (0, 2)}, {"alpha": 0.01}],
                         ids=["sigma", "n", "methods", "seed", "shard", "alpha"])
def test_resume_with_other_settings_is_refused(digits, reference, tmp_path, change):
    out = tmp_path / "c.tsv"
    out.write_bytes(reference.read_bytes())
    pathlib.Path(job.sidecar_path(str(out))).write_bytes(pathlib.Path(job.sidecar_path(str(reference))).read_bytes())
    before = out.read_bytes()
    with pytest.raises(job.JobError, match="settings differ"):
        _run(digits, out, resume=True, **change)
    assert out.read_bytes() == before


@pytest.mark.parametrize("name,value", [("batch_size", 50), ("inputs_per_call", 2)])
def test_resume_with_another_batch_size_or_chunk_is_refused(digits, reference, tmp_path, name, value):
    # both change radii in the last digits (the host math is compiled per chunk shape): never mixed
    out = tmp_path / "c.tsv"
    out.write_bytes(reference.read_bytes())
    side = pathlib.Path(job.sidecar_path(str(out)))
    side.write_bytes(pathlib.Path(job.sidecar_path(str(reference))).read_bytes())
    before = (out.read_bytes(), side.read_bytes())
    with pytest.raises(job.JobError) as err:
        _run(digits, out, resume=True, **{name: value})
    message = str(err.value)
    assert "\n" not in message and "settings differ" in message
    assert f"{name} {SETTINGS[name]!r} -> {value!r}" in message and "--" not in message
    assert (out.read_bytes(), side.read_bytes()) == before


def test_resume_with_another_rows_per_call_is_accepted(digits, reference, tmp_path):
    out = tmp_path / "c.tsv"
    lines = reference.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]))
    pathlib.Path(job.sidecar_path(str(out))).write_bytes(pathlib.Path(job.sidecar_path(str(reference))).read_bytes())
    summary = _run(digits, out, resume=True, rows_per_call=64)
    assert summary.done_before == 4 and _rows(out) == _rows(reference)


def test_resume_refuses_other_data_and_a_missing_sidecar(digits, reference, tmp_path):
    out = tmp_path / "c.tsv"
    out.write_bytes(reference.read_bytes())
    side = pathlib.Path(job.sidecar_path(str(out)))
    side.write_bytes(pathlib.Path(job.sidecar_path(str(reference))).read_bytes())
    with pytest.raises(job.JobError, match="dataset_sha256"):
        _run(digits, out, resume=True, xs=digits[2][::-1].copy())
    side.unlink()
    with pytest.raises(job.JobError, match="sidecar .* is missing"):
        _run(digits, out, resume=True)


def test_existing_output_needs_resume_or_overwrite(digits, reference, tmp_path):
    out = tmp_path / "c.tsv"
    out.write_text("something\n")
    with pytest.raises(job.JobError, match=r"exists; pass resume=True to continue it or overwrite=True") as err:
        _run(digits, out)
    assert "--" not in str(err.value)  # Python callers are told the keyword arguments, not the flags
    assert out.read_text() == "something\n"
    _run(digits, out, overwrite=True)
    assert _rows(out) == _rows(reference)


def test_bad_arguments_touch_no_file(digits, tmp_path):
    out = tmp_path / "c.tsv"
    with pytest.raises(ValueError):
        _run(digits, out, n0=500)  # n0 > n: the first call validates before anything is written
    assert not out.exists() and not pathlib.Path(job.sidecar_path(str(out))).exists()


def test_shards_merge_to_the_whole_run(digits, reference, tmp_path):
    parts = [tmp_path / f"part{i}.tsv" for i in range(2)]
    for i, part in enumerate(parts):
        summary = _run(digits, part, shard=(i, 2))
        assert summary.total == len(range(i, NUM, 2))
    assert [int(r[0]) for r in _rows(parts[1])[1:]] == list(range(1, NUM, 2))
    merged = tmp_path / "merged.tsv"
    summary = job.merge_shards([str(p) for p in parts[::-1]], str(merged))
    assert summary.rows == NUM
    assert _rows(merged) == _rows(reference)
    side = job.read_sidecar(job.sidecar_path(str(merged)))
    assert side["settings"]["shard"] is None and [s["shard"] for s in side["merged_from"]] == [[1, 2], [0, 2]]
    with pytest.raises(job.JobError, match="not in any|in none of the files"):
        job.merge_shards([str(parts[0])], str(tmp_path / "half.tsv"))
    with pytest.raises(job.JobError, match="more than once"):
        job.merge_shards([str(parts[0]), str(parts[0]), str(parts[1])], str(tmp_path / "dup.tsv"))
    with pytest.raises(job.JobError, match="exists"):
        job.merge_shards([str(p) for p in parts], str(merged))


def test_merge_names_every_file_that_holds_a_duplicated_idx(digits, reference, tmp_path):
    parts = [tmp_path / f"part{i}.tsv" for i in range(2)]
    for i, part in enumerate(parts):
        _run(digits, part, shard=(i, 2))
    copy = tmp_path / "copy0.tsv"
    copy.write_bytes(parts[0].read_bytes())
    pathlib.Path(job.sidecar_path(str(copy))).write_bytes(pathlib.Path(job.sidecar_path(str(parts[0]))).read_bytes())
    with pytest.raises(job.JobError) as err:
        job.merge_shards([str(parts[0]), str(parts[1]), str(copy)], str(tmp_path / "m.tsv"))
    message = str(err.value)
    assert f"{len(range(0, NUM, 2))} input(s) appear more than once" in message
    assert f"idx 0 in {parts[0]}, {copy}" in message
    assert f"the files that hold them: {parts[0]}, {copy}." in message and str(parts[1]) not in message
    # the whole run and one shard: every odd idx is in both, and both files are named
    with pytest.raises(job.JobError, match="more than once") as err:
        job.merge_shards([str(reference), str(parts[1])], str(tmp_path / "m.tsv"))
    assert f"the files that hold them: {reference}, {parts[1]}." in str(err.value)
    assert not (tmp_path / "m.tsv").exists()


def test_merge_refuses_files_of_different_runs(digits, reference, tmp_path):
    other = tmp_path / "other.tsv"
    _run(digits, other, shard=(1, 2), sigma=0.5)
    part = tmp_path / "part0.tsv"
    _run(digits, part, shard=(0, 2))
    with pytest.raises(job.JobError, match="different runs .*sigma"):
        job.merge_shards([str(part), str(other)], str(tmp_path / "m.tsv"))
    # a shard computed with another batch size or chunk size: its radii differ in the last digits
    shard1 = tmp_path / "part1.tsv"
    _run(digits, shard1, shard=(1, 2))
    for name, value in (("batch_size", 50), ("inputs_per_call", 2)):
        side = pathlib.Path(job.sidecar_path(str(shard1)))
        record = json.loads(side.read_text())
        record["settings"] = dict(record["settings"], **{name: value})
        side.write_text(json.dumps(record))
        with pytest.raises(job.JobError) as err:
            job.merge_shards([str(part), str(shard1)], str(tmp_path / "m.tsv"))
        assert f"differ in {name} ({value} in {shard1}, {SETTINGS[name]} in {part})" in str(err.value)
        record["settings"][name] = SETTINGS[name]
        side.write_text(json.dumps(record))
    job.merge_shards([str(part), str(shard1)], str(tmp_path / "m.tsv"))
    with pytest.raises(job.JobError, match=r"shard TSV .*nothere.tsv' not found"):
        job.merge_shards([str(part), str(tmp_path / "nothere.tsv")], str(tmp_path / "m2.tsv"))


def test_several_processes_write_one_file_each(digits, reference, tmp_path, monkeypatch):
    out = tmp_path / "multi.tsv"
    files = []
    for index in range(2):
        monkeypatch.setattr(job, "process_position", lambda index=index: (index, 2))
        summary = _run(digits, out)
        assert summary.out == job.process_output_path(str(out), index, 2) == f"{out}.process{index}-of-2"
        files.append(summary.out)
    assert not out.exists()
    job.merge_shards(files, str(out))
    assert _rows(out) == _rows(reference)


def test_cohen_format_rows(digits, reference, tmp_path):
    out = tmp_path / "cohen.tsv"
    _run(digits, out, format="cohen", format_method="sos_l2")
    rows, ref = _rows(out), _rows(reference)
    assert rows[0] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert [r[:3] + [r[4], r[5]] for r in ref[1:]] == [r[:3] + [r[3], r[4]] for r in rows[1:]]
    with pytest.raises(job.JobError, match="format_method"):
        _run(digits, out, resume=True, format="cohen", format_method="cohen_l2")


def test_shards_and_ids_helpers():
    assert job.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(job.JobError, match="I/K"):
            job.parse_shard(bad)
    np.testing.assert_array_equal(job.shard_positions(7, (2, 3)), [2, 5])
    np.testing.assert_array_equal(job.shard_positions(3, None), [0, 1, 2])
    for ids in (np.arange(0, 40, 7), np.array([5]), np.array([3, 1, 2]), np.array([], np.int64)):
        np.testing.assert_array_equal(provenance.decode_ids(json.loads(json.dumps(provenance.encode_ids(ids)))), ids)


# --------------------------------------------------------------------------- the command line


CLI_ARGS = ["certify", "--methods", "cohen,sos", "--n0", "32", "--n", "100000", "--batch-size", "2000",
            "--max-inputs", "32", "--skip", "3", "--inputs-per-call", "2", "--seed", "3", "--quiet"]


def _env(cache_dir) -> dict:
    env = dict(os.environ)
    env["SMOOTHJAX_CACHE_DIR"] = str(cache_dir)  # one persistent compilation cache for this module's runs
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _cli(args, cwd, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "smoothjax.app.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    return _env(tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory, cli_env):
    cwd = tmp_path_factory.mktemp("cli-reference")
    proc = _cli(CLI_ARGS + ["--out", "ref.tsv"], cwd, cli_env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return cwd / "ref.tsv"


def _data_rows(path) -> int:
    try:
        return max(0, pathlib.Path(path).read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_cli_killed_midway_then_resumed_equals_an_uninterrupted_run(tmp_path, cli_env, cli_reference, sig):
    out = tmp_path / "run.tsv"
    proc = _cli(CLI_ARGS + ["--out", str(out)], tmp_path, cli_env)
    deadline = time.monotonic() + 240
    while _data_rows(out) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    written = _data_rows(out)
    assert 4 <= written < 32, f"the run was not stopped midway ({written} rows); raise --n so it runs longer"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "--resume" in err and "Traceback" not in err
        assert job.read_sidecar(job.sidecar_path(str(out)))["status"] == "interrupted"
        assert out.read_bytes().endswith(b"\n")
    else:
        assert proc.returncode == -signal.SIGKILL
    resumed = _cli(CLI_ARGS + ["--out", str(out), "--resume"], tmp_path, cli_env)
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "summary: 32 inputs" in stdout
    assert _rows(out) == _rows(cli_reference)
    side = job.read_sidecar(job.sidecar_path(str(out)))
    assert side["status"] == "complete" and side["sessions"][0]["done_before"] == 0
    assert side["sessions"][-1]["done_before"] == written


def test_cli_sidecar_records_the_run(cli_reference):
    side = job.read_sidecar(job.sidecar_path(str(cli_reference)))
    assert side["status"] == "complete" and side["finished_utc"] >= side["started_utc"]
    settings = side["settings"]
    assert (settings["sigma"], settings["n0"], settings["n"], settings["alpha"]) == (0.25, 32, 100_000, 0.001)
    assert settings["methods"] == ["cohen_l2", "sos_l2"] and settings["shard"] is None
    assert settings["input_ids"] == {"start": 0, "stop": 96, "step": 3}
    assert len(settings["params_sha256"]) == len(settings["dataset_sha256"]) == 64
    meta = side["metadata"]
    assert meta["seed"] == 3 and "certify" in meta["command"] and "--seed" in meta["command"]
    assert meta["model"]["sha256"] == provenance.file_sha256(models.default_model_path())
    assert meta["dataset"] == {"name": "digits", "split": "test", "skip": 3, "max_inputs": 32, "size": 360}
    env = side["environment"]
    assert set(env["versions"]) >= {"smoothjax", "jax", "jaxlib", "flax", "numpy", "python"}
    assert env["versions"]["jax"] == jax.__version__
    assert env["prng_impl"] and env["device_kind"] and env["device_count"] >= 1 and env["process_count"] == 1
    assert "matmul_precision" in env and side["model"]["output_dtype"] == "float32"


def test_cli_shards_merge_and_refusals(tmp_path, capsys, digits, monkeypatch):
    # the same model object as the in-process runs above: their compiled program is reused
    apply_fn, params, _, _ = digits
    config = models.load_model(models.default_model_path())[2]
    monkeypatch.setattr(models, "load_model", lambda path: (apply_fn, params, config))
    common = ["certify", "--methods", "cohen,sos", "--n0", "32", "--n", "200", "--batch-size", "100",
              "--max-inputs", "9", "--inputs-per-call", "4", "--quiet"]
    with _default_promotion():
        for i in range(2):
            assert cli.main(common + ["--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}.tsv")]) == 0
        assert cli.main(common + ["--out", str(tmp_path / "all.tsv")]) == 0
    assert "compiling" not in capsys.readouterr().out  # --quiet
    merge = ["merge", str(tmp_path / "s0.tsv"), str(tmp_path / "s1.tsv"), "--out", str(tmp_path / "m.tsv")]
    assert cli.main(merge) == 0
    assert "9 rows from 2 files" in capsys.readouterr().out
    assert _rows(tmp_path / "m.tsv") == _rows(tmp_path / "all.tsv")

    def one_line_error(argv, fragment):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"smoothjax {argv[0]}: error:") and fragment in err[0], err

    one_line_error(common + ["--out", str(tmp_path / "s0.tsv")], "exists; pass --resume to continue it or --overwrite")
    one_line_error(common + ["--shard", "1/2", "--resume", "--out", str(tmp_path / "s0.tsv")], "settings differ")
    one_line_error(common + ["--seed", "1", "--resume", "--out", str(tmp_path / "all.tsv")], "key (seed)")
    one_line_error(common + ["--batch-size", "50", "--resume", "--out", str(tmp_path / "all.tsv")],
                   "--batch-size 100 -> 50")
    one_line_error(common + ["--inputs-per-call", "3", "--resume", "--out", str(tmp_path / "all.tsv")],
                   "--inputs-per-call 4 -> 3")
    one_line_error(["merge", str(tmp_path / "s0.tsv"), str(tmp_path / "nothere.tsv"), "--out", str(tmp_path / "x")],
                   "nothere.tsv' not found")
    one_line_error(common + ["--batch-size", "99", "--out", str(tmp_path / "odd.tsv")],
                   "--batch-size must be even for sos")
    one_line_error(common + ["--n", "201", "--out", str(tmp_path / "odd.tsv")], "--n must be even for sos")
    one_line_error(["merge", str(tmp_path / "s0.tsv"), "--out", str(tmp_path / "half.tsv")], "in none of the files")
    one_line_error(common + ["--shard", "2/2", "--out", str(tmp_path / "x.tsv")], "--shard must look like I/K")
    # resuming a finished file certifies nothing and reports the whole table
    with _default_promotion():
        assert cli.main(common + ["--resume", "--out", str(tmp_path / "all.tsv")]) == 0
    assert "summary: 9 inputs, all certified by earlier runs" in capsys.readouterr().out
