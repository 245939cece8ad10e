"""Reading Cohen-style certification TSVs: certified accuracy curves, plots and a markdown table.

A TSV written by :func:`smoothjax.app.tsv.write_tsv` has one row per input with columns ``idx``,
``label``, ``predict`` (-1 = abstain), one ``radius_<method>`` column per certificate (input
units, 0 where abstaining), ``correct`` (1 when ``predict == label``) and ``time``.

Certified accuracy at radius ``r`` for a method (Cohen et al. 2019, their ``analyze.py``): the
fraction of rows that are correct AND have ``radius_<method> >= r``. The average certified radius
(ACR, as in MACER) is the mean over rows of ``radius * correct``.

Methods are grouped by threat model from the suffix of their name: ``*_l2`` (cohen, sos, dipole),
``*_l1``, ``*_linf``, and ``subspace_*`` (an l2 ball inside a subspace); each threat model gets its
own panel because radii in different norms are not comparable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from smoothjax.app.tsv import AnalysisError, CertificationTable, read_tsv  # noqa: F401  (re-exported)

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)

_THREAT_MODELS = (
    ("subspace", "subspace l2"),
    ("_linf", "linf"),
    ("_l1", "l1"),
    ("_l2", "l2"),
)


def threat_model(method: str) -> str:
    """The threat model a method's radius is for: ``"l2"``, ``"l1"``, ``"linf"`` or ``"subspace l2"``."""
    for marker, name in _THREAT_MODELS:
        if (marker in method) if marker == "subspace" else method.endswith(marker):
            return name
    return "other"


def certified_accuracy(table: CertificationTable, method: str, radii: Sequence[float]) -> np.ndarray:
    """Fraction of rows correct with ``radius_<method> >= r``, for each ``r`` in ``radii``."""
    rad = table.radii[method]
    r = np.asarray(radii, float)
    if len(rad) == 0:
        return np.zeros_like(r)
    return np.mean(table.correct[None, :] & (rad[None, :] >= r[:, None]), axis=1)


def average_certified_radius(table: CertificationTable, method: str) -> float:
    """Mean of ``radius * correct`` over rows (0 for abstentions and wrong predictions)."""
    rad = table.radii[method]
    return float(np.mean(np.where(table.correct, rad, 0.0))) if len(rad) else 0.0


def markdown_table(tables: Sequence[CertificationTable], radii: Sequence[float] = DEFAULT_RADII) -> str:
    """One row per (file, method): threat model, certified accuracy at each radius, ACR, time per input."""
    head = ["file", "method", "threat model", *[f"r = {r:g}" for r in radii], "ACR", "s / input"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(radii) + 2)) + "|"]
    for t in tables:
        per_input = float(np.nanmean(t.time)) if len(t.time) and np.any(np.isfinite(t.time)) else float("nan")
        for m in t.methods:
            acc = certified_accuracy(t, m, radii)
            cells = [t.name, m, threat_model(m), *[f"{a:.3f}" for a in acc], f"{average_certified_radius(t, m):.3f}", f"{per_input:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_certified_accuracy(tables: Sequence[CertificationTable], out_stem: str, *, formats: Sequence[str] = ("png", "svg")) -> list[str]:
    """Draw certified accuracy vs radius, one panel per threat model; write ``out_stem.<fmt>``.

    Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[CertificationTable, str]]] = {}
    for t in tables:
        for m in t.methods:
            groups.setdefault(threat_model(m), []).append((t, m))
    order = [name for _, name in reversed(_THREAT_MODELS) if name in groups] + [g for g in groups if g == "other"]
    fig, axes = plt.subplots(1, len(order), figsize=(4.2 * len(order), 3.6), squeeze=False)
    many_files = len(tables) > 1
    for ax, group in zip(axes[0], order):
        entries = groups[group]
        r_max = max([float(np.max(t.radii[m], initial=0.0)) for t, m in entries] + [1e-3])
        grid = np.linspace(0.0, r_max * 1.05, 400)
        for t, m in entries:
            label = f"{t.name}: {m}" if many_files else m
            ax.plot(grid, certified_accuracy(t, m, grid), label=label, drawstyle="steps-post")
        if group in ("l1", "subspace l2"):
            # baseline: an l2 ball of radius R contains the l1 ball and the subspace l2 ball of radius R,
            # so Cohen's l2 radius certifies these threat models too (first paper, Figure 2's baseline)
            for t in tables:
                if "cohen_l2" in t.radii:
                    label = f"{t.name}: cohen_l2 (baseline)" if many_files else "cohen_l2 (baseline)"
                    ax.plot(grid, certified_accuracy(t, "cohen_l2", grid), "--", color="0.5", lw=1, label=label,
                            drawstyle="steps-post")
        ax.set_title(f"{group} threat model")
        ax.set_xlabel(f"radius ({group} norm, input units)")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(0.0, grid[-1])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(out_stem))
    os.makedirs(directory, exist_ok=True)
    paths = []
    for fmt in formats:
        path = f"{out_stem}.{fmt}"
        fig.savefig(path, dpi=120)
        paths.append(path)
    plt.close(fig)
    return paths
