"""Certification results as TSV files: one row per input, written as soon as known, read back exactly.

A TSV written by :func:`write_tsv` has one row per input with columns ``idx``, ``label``,
``predict`` (-1 = abstain), one ``radius_<method>`` column per certificate (input units, 0 where
abstaining), ``correct`` (1 when ``predict == label``) and ``time`` (seconds per input). Radii are
written with Python's shortest round-trip float repr, so reading them back gives exactly the
certified numbers. :func:`read_tsv` parses such a file into a :class:`CertificationTable`.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from smoothjax.pipeline import ALL_METHODS, CertifyResult


class AnalysisError(ValueError):
    """A user-facing problem with a TSV file."""


@dataclasses.dataclass(frozen=True)
class CertificationTable:
    """Columns of one TSV: ``radii`` maps method name -> [rows] radii; ``correct`` [rows] bool."""

    name: str
    label: np.ndarray
    predict: np.ndarray
    correct: np.ndarray
    radii: dict
    time: np.ndarray

    @property
    def methods(self) -> list[str]:
        return list(self.radii)


def read_tsv(path: str, name: str | None = None) -> CertificationTable:
    """Parse a certification TSV; raises :class:`AnalysisError` with a sentence when it cannot."""
    if not os.path.isfile(path):
        raise AnalysisError(f"TSV file {path!r} not found; write one with `smoothjax certify --out {path}`.")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows:
        raise AnalysisError(f"{path!r} is empty; it must be a TSV written by `smoothjax certify`.")
    header, body = rows[0], [r for r in rows[1:] if r]
    columns = {h: i for i, h in enumerate(header)}
    radius_cols = [h for h in header if h.startswith("radius_")]
    missing = [c for c in ("label", "predict") if c not in columns]
    if missing or not radius_cols:
        raise AnalysisError(
            f"{path!r} is not a smoothjax certification TSV (needs columns label, predict and radius_<method>; "
            f"found {', '.join(header)}); write one with `smoothjax certify`."
        )

    def col(h, dtype=float):
        try:
            return np.array([dtype(r[columns[h]]) for r in body])
        except (ValueError, IndexError):
            raise AnalysisError(f"column {h!r} of {path!r} has a malformed row; re-run `smoothjax certify`.") from None

    label = col("label", lambda s: int(float(s)))
    predict = col("predict", lambda s: int(float(s)))
    correct = col("correct", lambda s: int(float(s))).astype(bool) if "correct" in columns else predict == label
    time = col("time") if "time" in columns else np.full(len(body), np.nan)
    radii = {h[len("radius_"):]: col(h) for h in radius_cols}
    stem = name or os.path.splitext(os.path.basename(path))[0]
    return CertificationTable(stem, label, predict, correct, radii, time)



def write_tsv(path, result: CertifyResult, labels=None, times=None, input_ids=None) -> None:
    """Write a Cohen-style TSV: ``idx, label, predict, radius_<method>..., correct, time``.

    One row per input. ``idx`` is ``input_ids`` (default: the ids stored in ``result``); ``label``
    is -1 and ``correct`` 0 when ``labels`` is None; ``time`` is seconds per input (``nan`` when
    ``times`` is None). Radii are written with Python's shortest round-trip float repr, so
    reading them back gives exactly the certified numbers (never rounded up).
    """
    prediction = np.asarray(result.prediction)
    batch = prediction.shape[0]
    idx = np.asarray(result.input_ids if input_ids is None else input_ids).astype(np.int64)
    lab = np.full(batch, -1, np.int64) if labels is None else np.asarray(labels).astype(np.int64)
    tim = np.full(batch, np.nan) if times is None else np.asarray(times, float)
    for name, arr in (("input_ids", idx), ("labels", lab), ("times", tim)):
        if arr.shape != (batch,):
            raise ValueError(f"{name} must have one entry per input ({batch}), got shape {arr.shape}.")
    names = [m for m in ALL_METHODS if m in result.radii]
    radii = {m: np.asarray(result.radii[m], float) for m in names}
    correct = (prediction == lab) & (lab >= 0) if labels is not None else np.zeros(batch, bool)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["idx", "label", "predict", *[f"radius_{m}" for m in names], "correct", "time"])
        for i in range(batch):
            writer.writerow(
                [int(idx[i]), int(lab[i]), int(prediction[i]), *[repr(float(radii[m][i])) for m in names],
                 int(correct[i]), f"{tim[i]:.6f}"]
            )
