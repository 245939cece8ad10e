"""Certification results as TSV files: one row per input, written as soon as known, read back exactly.

A TSV written by :func:`write_tsv` has one row per input with columns ``idx``, ``label``,
``predict`` (-1 = abstain), one ``radius_<method>`` column per certificate (input units, 0 where
abstaining), ``correct`` (1 when ``predict == label``) and ``time`` (seconds per input). Radii are
written with Python's shortest round-trip float repr, so reading them back gives exactly the
certified numbers. :func:`read_tsv` parses such a file into a :class:`CertificationTable`.

Two other formats are read unchanged:

* Cohen et al.'s logs (``certify.py`` of "Certified Adversarial Robustness via Randomized
  Smoothing", and their published ``data/certify/...`` files): columns ``idx label predict radius
  correct time`` for one method; ``time`` is seconds or ``h:mm:ss.ffffff``. The method is
  ``cohen_l2`` unless the reader is told otherwise. :func:`cohen_rows` / :func:`write_cohen_tsv`
  write this format for one chosen method, so Cohen's ``analyze.py`` runs on it unchanged.
* The second paper's logs (Levine et al.'s reference code): one file per method, named
  ``N_<n>`` (Cohen's certificate), ``second_order_N_<n>`` (second-order smoothing) or
  ``dipole_N_<n>`` (dipole smoothing), each with Cohen's columns plus its statistics
  (``raw_count``, ``p_A_bar``, ...). A file maps to one table with the one method its name
  says (``cohen_l2``, ``sos_l2`` or ``dipole_l2``), ``n`` from the name and ``alpha = 0.001``
  (their code's default); a directory ``noise_<sigma>`` above the file gives sigma. Files of
  one run certify different inputs (different ``idx`` strides), so they stay separate tables
  rather than being merged into one multi-method table.

Settings (``sigma``, ``n``, ``alpha``) come from, in increasing priority: the file's name and
folders (as above, and Cohen's ``noise_<s>`` / ``sigma_<s>``), a JSON sidecar ``<tsv>.json`` (or
``<stem>.json``, the name without a ``.tsv``-like extension) with top-level keys ``sigma``, ``n``,
``alpha`` (also looked for under ``settings`` / ``config``), and explicit values passed to
:func:`read_tsv`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from smoothjax.pipeline import ALL_METHODS, CertifyResult


class AnalysisError(ValueError):
    """A user-facing problem with a TSV file."""


#: Columns of Cohen et al.'s certification logs, in order.
COHEN_HEADER = ("idx", "label", "predict", "radius", "correct", "time")
#: File-name prefix of the second paper's logs -> our method name.
LEVINE_METHODS = {"": "cohen_l2", "second_order_": "sos_l2", "dipole_": "dipole_l2"}
#: alpha of the second paper's published logs (their code's default).
LEVINE_ALPHA = 0.001
SETTING_KEYS = ("sigma", "n", "alpha")

_LEVINE_NAME = re.compile(r"^(second_order_|dipole_)?N_(\d+)$")
_SIGMA_NAME = re.compile(r"^(?:noise|sigma)_(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)$")
_HMS = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


@dataclasses.dataclass(frozen=True)
class CertificationTable:
    """Columns of one certification log (one row per input).

    ``radii`` maps method name -> ``[rows]`` radii (input units); ``correct`` is ``[rows]`` bool;
    ``time`` seconds per input (NaN where unknown); ``idx`` the input ids (None if the file has
    none); ``settings`` the known subset of ``sigma``, ``n``, ``alpha``; ``source_format`` one of
    ``"smoothjax"``, ``"cohen"``, ``"levine"``; ``path`` the file read; ``job`` what a
    ``smoothjax certify`` sidecar says about the run (:func:`read_job_info`; empty otherwise).
    """

    name: str
    label: np.ndarray
    predict: np.ndarray
    correct: np.ndarray
    radii: dict
    time: np.ndarray
    idx: np.ndarray | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    source_format: str = "smoothjax"
    path: str = ""
    job: dict = dataclasses.field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.radii)

    def __len__(self) -> int:
        return int(len(self.label))


def parse_time(text: str) -> float:
    """Seconds from ``"12.5"`` or ``"[D day[s], ]H:MM:SS[.ffffff]"`` (``str(datetime.timedelta)``)."""
    text = text.strip()
    match = _HMS.match(text)
    if match:
        days, hours, minutes, seconds = match.groups()
        return int(days or 0) * 86400.0 + int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds)
    return float(text)


def _parse_int(text: str) -> int:
    value = float(text)
    if value != int(value):
        raise ValueError(text)
    return int(value)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return bool(_parse_int(text))


def settings_from_path(path: str) -> dict:
    """``sigma`` / ``n`` / ``alpha`` told by a log's name and folders (Cohen's and Levine's layouts)."""
    out: dict = {}
    base = os.path.basename(path)
    match = _LEVINE_NAME.match(base)
    if match:
        out["n"] = int(match.group(2))
        out["alpha"] = LEVINE_ALPHA
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    for part in reversed(parts):
        sigma = _SIGMA_NAME.match(file_stem(part) if part == base else part)
        if sigma:
            out["sigma"] = float(sigma.group(1))
            break
    return out


def file_stem(base: str) -> str:
    """A file name without an extension of letters (``run.tsv`` -> ``run``; ``sigma_0.50`` stays)."""
    root, ext = os.path.splitext(base)
    return root if ext[1:].isalpha() else base


def read_sidecar(path: str) -> dict:
    """Settings from the JSON sidecar ``<path>.json`` (or ``<stem>.json``); ``{}`` when absent.

    Only finite numbers under the keys ``sigma``, ``n``, ``alpha`` are kept (top level, or under
    ``settings`` / ``config``); anything else in the file is ignored. An unreadable sidecar raises
    :class:`AnalysisError`.
    """
    for candidate in (f"{path}.json", os.path.join(os.path.dirname(path), file_stem(os.path.basename(path)) + ".json")):
        if candidate != path and os.path.isfile(candidate):
            try:
                with open(candidate) as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as err:
                raise AnalysisError(
                    f"could not read the settings file {candidate!r} ({err}); fix or remove it.") from None
            return _settings_in(data)
    return {}


def read_job_info(path: str) -> dict:
    """What the ``smoothjax certify`` sidecar ``<path>.json`` says about the run; ``{}`` without one.

    Keys (each only when the sidecar has it): ``status`` (``"complete"``, ``"interrupted"``,
    ``"running"``), ``job_inputs`` (inputs of the whole job), ``file_inputs`` (this file's share),
    ``shard`` (``[i, k]``), ``process`` (``[p, P]``), ``dim`` (input dimension: the product of the
    input shape, from the sidecar or the model config it records).
    """
    candidate = f"{path}.json"
    if not os.path.isfile(candidate):
        return {}
    try:
        with open(candidate) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}  # read_sidecar reports an unreadable file
    if not isinstance(data, Mapping) or not str(data.get("format", "")).startswith("smoothjax-job/"):
        return {}
    info: dict = {}
    if isinstance(data.get("status"), str):
        info["status"] = data["status"]
    inputs = data.get("inputs") if isinstance(data.get("inputs"), Mapping) else {}
    for key, name in (("job", "job_inputs"), ("this_file", "file_inputs")):
        if isinstance(inputs.get(key), int):
            info[name] = inputs[key]
    settings = data.get("settings") if isinstance(data.get("settings"), Mapping) else {}
    for key in ("shard", "process"):
        if isinstance(settings.get(key), list) and len(settings[key]) == 2:
            info[key] = [int(v) for v in settings[key]]
    model = (data.get("metadata") or {}).get("model") if isinstance(data.get("metadata"), Mapping) else None
    config = model.get("config") if isinstance(model, Mapping) else None
    shape = inputs.get("shape", (config or {}).get("input_shape") if isinstance(config, Mapping) else None)
    if isinstance(shape, list) and shape and all(isinstance(s, int) and s >= 1 for s in shape):
        info["dim"] = int(np.prod(shape))
    return info


def _settings_in(data) -> dict:
    if not isinstance(data, Mapping):
        return {}
    out = {}
    for source in (data.get("config"), data.get("settings"), data):
        if isinstance(source, Mapping):
            for key in SETTING_KEYS:
                value = source.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                    out[key] = int(value) if key == "n" else float(value)
    return out


def read_tsv(path: str, name: str | None = None, *, method: str | None = None,
             settings: Mapping[str, float] | None = None) -> CertificationTable:
    """Parse a certification log (smoothjax, Cohen or second-paper format; see the module doc).

    Args:
      path: the TSV file.
      name: the table's name in tables and legends (default: the file name without extension).
      method: method name of a single-``radius`` log (Cohen / Levine formats); default
        ``cohen_l2``, or the method a Levine file name says. Ignored for smoothjax TSVs.
      settings: ``sigma`` / ``n`` / ``alpha`` overriding those found beside the file (None
        values are ignored).

    Raises :class:`AnalysisError` with a sentence when the file cannot be read.
    """
    if not os.path.isfile(path):
        raise AnalysisError(f"TSV file {path!r} not found; write one with `smoothjax certify --out {path}`.")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows:
        raise AnalysisError(f"{path!r} is empty; it must be a TSV written by `smoothjax certify`.")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    columns = {h: i for i, h in enumerate(header)}
    radius_cols = [h for h in header if h.startswith("radius_")]
    single = "radius" in columns and not radius_cols
    missing = [c for c in ("label", "predict") if c not in columns]
    if missing or not (radius_cols or single):
        raise AnalysisError(
            f"{path!r} is not a smoothjax certification TSV nor a Cohen-format log (needs columns label, predict and "
            f"radius_<method>, or idx label predict radius correct time; found {', '.join(header)}); "
            "write one with `smoothjax certify`."
        )

    def col(h, parse=float):
        try:
            return np.array([parse(r[columns[h]]) for r in body])
        except (ValueError, IndexError):
            raise AnalysisError(f"column {h!r} of {path!r} has a malformed row; re-run `smoothjax certify`.") from None

    label = col("label", _parse_int).astype(np.int64)
    predict = col("predict", _parse_int).astype(np.int64)
    correct = col("correct", _parse_bool).astype(bool) if "correct" in columns else (predict == label) & (label >= 0)
    time = col("time", parse_time).astype(float) if "time" in columns else np.full(len(body), np.nan)
    idx = col("idx", _parse_int).astype(np.int64) if "idx" in columns else None
    base = os.path.basename(path)
    levine = _LEVINE_NAME.match(base)
    if radius_cols:
        radii = {h[len("radius_"):]: col(h).astype(float) for h in radius_cols}
        source = "smoothjax"
    else:
        default = LEVINE_METHODS[levine.group(1) or ""] if levine else "cohen_l2"
        radii = {method or default: col("radius").astype(float)}
        source = "levine" if levine else "cohen"
    found = {**settings_from_path(path), **read_sidecar(path)}
    found.update({k: v for k, v in (settings or {}).items() if v is not None})
    stem = name or file_stem(base)
    return CertificationTable(stem, label, predict, correct, radii, time, idx, found, source, path,
                              read_job_info(path))


def expand_log_paths(paths: Sequence[str]) -> list[str]:
    """``paths`` with each directory replaced by the certification logs directly inside it.

    A file in a directory counts as a log when its first line names a ``radius`` or
    ``radius_<method>`` column (sidecars, plots and other files are skipped); sorted by name. A
    directory without logs raises :class:`AnalysisError`.
    """
    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = []
        for entry in sorted(os.listdir(path)):
            full = os.path.join(path, entry)
            skip = entry.endswith((".json", ".png", ".svg", ".md", ".tex", ".npz"))
            if os.path.isfile(full) and not skip and _looks_like_log(full):
                found.append(full)
        if not found:
            raise AnalysisError(f"directory {path!r} holds no certification logs (TSV files with a radius column); "
                                "pass TSV files.")
        out.extend(found)
    return out


def _looks_like_log(path: str) -> bool:
    try:
        with open(path, newline="", errors="replace") as fh:
            first = fh.readline(4096)
    except OSError:
        return False
    names = [h.strip() for h in first.rstrip("\r\n").split("\t")]
    return "predict" in names and any(h == "radius" or h.startswith("radius_") for h in names)


# ---------------------------------------------------------------------------- Cohen's format


def cohen_header() -> list[str]:
    """Column names of Cohen et al.'s certification logs: ``idx label predict radius correct time``."""
    return list(COHEN_HEADER)


def _row_columns(result: CertifyResult, labels, times, input_ids):
    """``(idx, label, predict, correct, time)`` per input, checked to have one entry per input.

    ``idx`` defaults to the ids stored in ``result``; ``label`` is -1 (so ``correct`` is 0) when
    ``labels`` is None; ``time`` is ``nan`` when ``times`` is None.
    """
    prediction = np.asarray(result.prediction).astype(np.int64)
    batch = prediction.shape[0]
    idx = np.asarray(result.input_ids if input_ids is None else input_ids).astype(np.int64)
    lab = np.full(batch, -1, np.int64) if labels is None else np.asarray(labels).astype(np.int64)
    tim = np.full(batch, np.nan) if times is None else np.asarray(times, float)
    for name, arr in (("input_ids", idx), ("labels", lab), ("times", tim)):
        if arr.shape != (batch,):
            raise ValueError(f"{name} must have one entry per input ({batch}), got shape {arr.shape}.")
    return idx, lab, prediction, (prediction == lab) & (lab >= 0), tim


def cohen_rows(result: CertifyResult, labels=None, times=None, input_ids=None, *,
               method: str = "cohen_l2") -> list[str]:
    """The lines (each ending in ``"\\n"``) of a Cohen-format log of ``result`` for one ``method``.

    Columns ``idx label predict radius correct time`` (Cohen et al.'s ``certify.py``), so that
    their ``analyze.py`` (``pd.read_csv(path, delimiter="\\t")``; certified accuracy at r =
    ``(df["correct"] & (df["radius"] >= r)).mean()``) runs on the file unchanged. ``predict`` is
    the pipeline's prediction (-1 = abstain); ``radius`` is ``method``'s radius (0 where it
    abstains), written with Python's shortest round-trip repr (never rounded up, unlike the 3
    significant digits of ``certify.py``); ``correct`` is 1 when ``predict == label``; ``time``
    is seconds per input with 6 decimals (``nan`` when ``times`` is None); ``label`` is -1 and
    ``correct`` 0 when ``labels`` is None; ``idx`` is ``input_ids`` (default: the ids stored in
    ``result``).
    """
    if method not in result.radii:
        raise ValueError(f"method {method!r} is not in this result (it has {', '.join(result.radii)}); "
                         "certify with that method or choose one of those.")
    idx, lab, prediction, correct, tim = _row_columns(result, labels, times, input_ids)
    radius = np.asarray(result.radii[method], float)
    return [
        f"{idx[i]}\t{lab[i]}\t{prediction[i]}\t{float(radius[i])!r}\t{int(correct[i])}\t{tim[i]:.6f}\n"
        for i in range(len(idx))
    ]


def write_cohen_tsv(path: str, result: CertifyResult, labels=None, times=None, input_ids=None, *,
                    method: str = "cohen_l2") -> None:
    """Write a Cohen-format log of ``result`` for one ``method`` (see :func:`cohen_rows`)."""
    lines = cohen_rows(result, labels, times, input_ids, method=method)
    with open(path, "w", newline="") as fh:
        fh.write("\t".join(COHEN_HEADER) + "\n")
        fh.writelines(lines)


def tsv_header(methods) -> list[str]:
    """Column names of a smoothjax TSV for ``methods`` (written in :data:`ALL_METHODS` order)."""
    names = [m for m in ALL_METHODS if m in methods]
    return ["idx", "label", "predict", *[f"radius_{m}" for m in names], "correct", "time"]


def format_rows(result: CertifyResult, labels=None, times=None, input_ids=None) -> list[str]:
    """The TSV lines (each ending in ``"\\n"``) of ``result``, one per input, in its order.

    ``idx`` is ``input_ids`` (default: the ids stored in ``result``); ``label`` is -1 and
    ``correct`` 0 when ``labels`` is None; ``time`` is seconds per input (``nan`` when ``times``
    is None). Radii are written with Python's shortest round-trip float repr, so reading them
    back gives exactly the certified numbers (never rounded up). The same inputs always give
    the same bytes, apart from the ``time`` column.
    """
    idx, lab, prediction, correct, tim = _row_columns(result, labels, times, input_ids)
    names = [m for m in ALL_METHODS if m in result.radii]
    radii = {m: np.asarray(result.radii[m], float) for m in names}
    return [
        "\t".join([str(int(idx[i])), str(int(lab[i])), str(int(prediction[i])),
                   *[repr(float(radii[m][i])) for m in names], str(int(correct[i])), f"{tim[i]:.6f}"]) + "\n"
        for i in range(len(idx))
    ]


def write_tsv(path, result: CertifyResult, labels=None, times=None, input_ids=None) -> None:
    """Write a Cohen-style TSV: ``idx, label, predict, radius_<method>..., correct, time``.

    One row per input (see :func:`format_rows` for the columns and number formats).
    """
    lines = format_rows(result, labels=labels, times=times, input_ids=input_ids)
    with open(path, "w", newline="") as fh:
        fh.write("\t".join(tsv_header(result.radii)) + "\n")
        fh.writelines(lines)


# ---------------------------------------------------------------------------- streaming writes


def append_lines(path: str, lines) -> None:
    """Append complete lines to ``path`` durably: one write, then flush and ``fsync``.

    After this returns, the lines survive a crash of the process (and, as far as the file system
    honours ``fsync``, of the machine). A process killed inside the call can leave a torn last
    line, which :func:`read_complete_rows` drops.
    """
    data = "".join(lines).encode()
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_lines_atomic(path: str, lines, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``lines`` atomically (a synced temporary file renamed over it).

    ``sync_dir`` also syncs the directory, which makes the rename itself durable (one directory
    sync covers every rename in it before; callers writing several files sync the last one).
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write("".join(lines).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if not sync_dir:
        return
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _row_ok(fields: list[str], width: int) -> bool:
    if len(fields) != width:
        return False
    try:
        int(fields[0])
        for f in fields[1:]:
            float(f)
    except ValueError:
        return False
    return True


def read_complete_rows(path: str) -> tuple[str | None, list[str], int]:
    """Read a TSV being streamed: ``(header line or None, complete row lines, rows dropped)``.

    A line without its final newline (a write cut short by a kill) is dropped, and so is any row
    whose field count differs from the header's or whose fields are not numbers (``idx`` an
    integer). Returned lines keep their ``"\\n"``; the header is None when the file is empty
    or even its first line is torn.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    dropped = 0
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
        dropped += 1
    if not lines:
        return None, [], dropped
    header, rows = lines[0], []
    width = len(header.rstrip("\n").split("\t"))
    for line in lines[1:]:
        if _row_ok(line.rstrip("\n").split("\t"), width):
            rows.append(line)
        elif line.strip():
            dropped += 1
    return header, rows, dropped
