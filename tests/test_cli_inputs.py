"""The command line's care for its inputs: a warning for data on another scale than the model's, defaults in --help."""

import re

import numpy as np
import pytest
from helpers import run_cli

from smoothjax.app import cli, datasets, models


@pytest.fixture(autouse=True)
def _no_persistent_cache_in_process(monkeypatch):
    # cli.main turns on JAX's persistent compilation cache (process-wide); keep pytest's process clean
    monkeypatch.setenv("SMOOTHJAX_CACHE_DIR", "")


# --------------------------------------------------------------------------- input scale


def _digits_npz(tmp_path, name, transform):
    """The first digits test images, ``transform``-ed, as a user's ``.npz`` (``x [n, 8, 8, 1]``, ``y [n]``)."""
    data = datasets.load_digits("test")
    path = tmp_path / name
    np.savez(path, x=transform(data.x[:4]), y=data.y[:4])
    return str(path)


CERTIFY_SMALL = ["--methods", "cohen", "--n0", "10", "--n", "20", "--batch-size", "20", "--max-inputs", "2",
                 "--inputs-per-call", "2", "--quiet"]


@pytest.mark.parametrize("name, transform, extra, warns", [
    ("float255.npz", lambda x: np.round(x * 255).astype(np.float32), [], True),
    ("float01.npz", lambda x: x.astype(np.float32), [], False),
    ("uint8.npz", lambda x: np.round(x * 255).astype(np.uint8), ["--scale", "255"], False),
])
def test_certify_warns_once_about_inputs_on_the_0_255_scale(tmp_path, capsys, name, transform, extra, warns):
    """0..255 floats for the shipped [0, 1] model: one warning line; [0, 1] floats and rescaled uint8: none."""
    path = _digits_npz(tmp_path, name, transform)
    code, _, err = run_cli(["certify", "--dataset", path, *CERTIFY_SMALL, *extra, "--out", str(tmp_path / "c.tsv")],
                           capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "warning" in line]
    if not warns:
        assert lines == [], err
        return
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("smoothjax certify: warning: ")
    assert "[0, 255]" in line and "expects inputs in [0, 1]" in line and "--scale 255" in line
    assert path in line


def test_default_demo_data_is_not_warned_about(tmp_path, capsys):
    """The digits data and the shipped model (what `demo` runs) agree: no warning."""
    data = datasets.load_dataset("digits", "test")
    _, _, config = models.load_for_certify()
    assert datasets.expected_input_range(config)[0] == datasets.PIXEL_RANGE
    assert datasets.input_range_warning(data.x, config, "'digits'") is None


def test_expected_input_range_sources():
    image = {"input_shape": [8, 8, 1], "num_classes": 10}
    x255 = np.linspace(0, 255, 64, dtype=np.float32).reshape(1, 8, 8, 1)
    # an image checkpoint without a record: [0, 1] pixels; a little outside [0, 1] is no reason to warn
    assert datasets.input_range_warning(x255, image, "x") is not None
    assert datasets.input_range_warning(np.float32([-0.3, 1.4]), image, "x") is None
    assert datasets.input_range_warning(np.float32([-0.6, 1.0]), image, "x") is not None
    # a model trained on 0..255 expects them (the range `smoothjax train` records)
    trained = dict(image, training={"sigma": 0.25, "input_range": [0.0, 255.0]})
    assert datasets.expected_input_range(trained)[0] == (0.0, 255.0)
    assert datasets.input_range_warning(x255, trained, "x") is None
    # a factory's model says nothing unless its config has input_range; flat inputs have no convention
    factory = {"input_shape": [8, 8, 1], "num_classes": 10, "source": {"format": "model-fn"}}
    assert datasets.expected_input_range(factory) is None
    assert datasets.input_range_warning(x255, dict(factory, input_range=[0, 1]), "x") is not None
    assert datasets.expected_input_range({"input_shape": [64], "num_classes": 10}) is None


def test_train_records_the_input_range(tmp_path, capsys):
    """`smoothjax train` stores the training inputs' range, so certify expects what the model learnt on."""
    x = np.random.default_rng(0).integers(0, 256, size=(32, 3)).astype(np.float32)
    x[0, 0], x[1, 1] = 0.0, 255.0
    path = tmp_path / "raw.npz"
    np.savez(path, x=x, y=(x[:, 0] > 127).astype(int))
    out = tmp_path / "m.msgpack"
    code, _, err = run_cli(["train", "--dataset", str(path), "--sigma", "10", "--epochs", "1", "--hidden", "4",
                            "--batch-size", "32", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    config = models.load_model(str(out))[2]
    assert config["training"]["input_range"] == [0.0, 255.0]
    assert datasets.input_range_warning(x, config, "x") is None


# --------------------------------------------------------------------------- --help shows defaults


REQUIRED = {"train": ["--sigma", "1", "--out", "m"], "certify": ["--out", "o"], "merge": ["a.tsv", "--out", "o"],
            "analyze": ["a.tsv"], "demo": []}


def _help_entries(command, capsys) -> dict[str, str]:
    """``{"--option": its help entry, whitespace collapsed}`` of ``smoothjax COMMAND --help``."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    entries: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (-[-\w]+)", line)
        if match:
            current = match.group(1)
            entries[current] = []
        if current is not None:
            entries[current].append(line)
    return {option: " ".join(" ".join(lines).split()) for option, lines in entries.items()}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_help_shows_every_meaningful_default(command, capsys):
    """Each option with a real default says it (the parser's own value), and no "default: None"-type noise."""
    entries = _help_entries(command, capsys)
    defaults = vars(cli.build_parser().parse_args([command, *REQUIRED[command]]))
    given = {arg for arg in REQUIRED[command] if arg.startswith("--")}
    for option, entry in entries.items():
        for noise in ("default: None", "default: False", "default: []"):
            assert noise not in entry, entry
        dest = option.lstrip("-").replace("-", "_")
        if option in given or dest not in defaults:
            continue
        value = defaults[dest]
        if value is None or isinstance(value, bool) or value == []:
            continue
        assert "default" in entry, entry
        shown = re.search(r"\(default: ([^)]*)\)", entry)
        if shown:
            assert shown.group(1) == str(value), entry


def test_train_help_shows_its_defaults(capsys):
    entries = _help_entries("train", capsys)
    defaults = cli.build_parser().parse_args(["train", "--sigma", "1", "--out", "m"])
    for option in ("--epochs", "--batch-size", "--lr", "--seed", "--arch", "--dataset", "--checkpoint-every"):
        value = getattr(defaults, option.lstrip("-").replace("-", "_"))
        assert f"(default: {value})" in entries[option], entries[option]
    assert entries["--objective"].count("default") == 1  # its help names the default already
