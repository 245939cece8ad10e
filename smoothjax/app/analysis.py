"""Certified accuracy from certification logs: curves, high-probability bounds, tables and figures.

Logs are read by :func:`smoothjax.app.tsv.read_tsv` (smoothjax TSVs with one ``radius_<method>``
column per certificate, Cohen et al.'s ``idx label predict radius correct time`` logs, and the
second paper's logs). Radii are in input units.

Definitions (one for every caller, including the experiments):

* **Certified accuracy** at radius ``r`` (Cohen et al. 2019, Section 4, "approximate certified
  test set accuracy"; their ``analyze.py``): the fraction of *all attempted* inputs that are
  classified correctly and certified with radius ``>= r``. Abstentions (``predict = -1``) and
  wrong predictions count as failures at every ``r``, including ``r = 0``, where the value is the
  smoothed classifier's clean accuracy (:func:`certified_accuracy_curve`).
* **HighProb certified accuracy**: each certificate is wrong with probability at most ``alpha``
  over the noise drawn to certify it, independently across the ``m`` test inputs (fresh noise per
  input), so the number of wrong certificates among them is stochastically dominated by
  ``Binomial(m, alpha)``. With probability ``>= 1 - rho`` over the certification noise it is at most
  ``k* = min{k : P[Binomial(m, alpha) <= k] >= 1 - rho}``, and the true certified accuracy is at
  least ``approximate - k*/m`` (clipped at 0): :func:`highprob_certified_accuracy` with
  ``bound="binomial"`` (the default; the exact quantile, computed in log space). Cohen et al.'s
  ``analyze.py`` (class ``HighProbAccuracy``) bounds the same quantile with Bernstein's
  inequality, ``alpha + sqrt(alpha (1 - alpha) log(1/rho) / m) + log(1/rho) / (3 m)``
  (``bound="bernstein"``), which is never tighter.
* **ACR** (average certified radius, Zhai et al. 2020, MACER): the mean over inputs of
  ``radius * correct``.
* **Largest certifiable radius** with ``n`` samples at level ``alpha``: when all ``n`` samples give
  the top class, the one-sided Clopper-Pearson lower bound is ``alpha^(1/n)``, so Cohen's radius
  cannot exceed ``sigma Phi^-1(alpha^(1/n))`` (0.675 for sigma = 0.25, n = 2000, alpha = 0.001).
  Curves that drop to 0 there show the sample budget, not the model (:func:`max_certifiable_radius`).

Methods are grouped by threat model from the suffix of their name: ``*_l2`` (cohen, sos, dipole,
top2), ``*_l1``, ``*_linf``, and ``subspace_*`` (an l2 ball inside a subspace); each threat model
gets its own panel because radii in different norms are not comparable.
"""

from __future__ import annotations

import math
import os
import statistics
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from smoothjax.app.tsv import AnalysisError, CertificationTable, read_tsv  # noqa: F401  (re-exported)

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_RHO = 0.001
REFERENCE_METHOD = "cohen_l2"

_THREAT_MODELS = (
    ("subspace", "subspace l2"),
    ("_linf", "linf"),
    ("_l1", "l1"),
    ("_l2", "l2"),
)
_METHOD_ORDER = ("cohen_l2", "top2_l2", "sos_l2", "dipole_l2", "first_order_l1", "first_order_linf", "subspace_l2")
# One (colour, line style) per method, the same in every figure; no two methods share either.
_METHOD_STYLES = {
    "cohen_l2": ("#1f77b4", "-"),
    "top2_l2": ("#ff7f0e", (0, (6, 2))),
    "sos_l2": ("#2ca02c", (0, (7, 2, 1.5, 2))),
    "dipole_l2": ("#d62728", (0, (2.5, 1.5))),
    "first_order_l1": ("#9467bd", (0, (7, 2, 1.5, 2, 1.5, 2))),
    "first_order_linf": ("#8c564b", (0, (12, 3))),
    "subspace_l2": ("#e377c2", (0, (4, 1.5, 1, 1.5))),
}
_OTHER_STYLES = (("#7f7f7f", (0, (3, 3))), ("#bcbd22", (0, (9, 2, 3, 2))), ("#17becf", (0, (5, 1.5, 5, 1.5, 1, 1.5))))
_BASELINE_STYLE = (0, (1, 1.5))  # Cohen's l2 radius drawn in the l1 and subspace panels
_FILE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # several files: one marker per file
_CAP_STYLES = ((0, (1, 3)), (0, (4, 3)), (0, (1, 2, 4, 2)))  # max-radius lines, one per distinct radius
_LEGEND_FONTSIZE = 9


def threat_model(method: str) -> str:
    """The threat model a method's radius is for: ``"l2"``, ``"l1"``, ``"linf"`` or ``"subspace l2"``."""
    for marker, name in _THREAT_MODELS:
        if (marker in method) if marker == "subspace" else method.endswith(marker):
            return name
    return "other"


# ------------------------------------------------------------------------------------------
# numbers
# ------------------------------------------------------------------------------------------


def certified_accuracy_curve(radius: np.ndarray, correct: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """Fraction of inputs with ``correct`` and ``radius >= r``, for each ``r`` in ``radii``.

    ``radius`` and ``correct`` are ``[m]`` over every attempted input (abstentions have
    ``correct = False``); returns ``[len(radii)]`` floats, zeros when ``m = 0``. This is the one
    definition of certified accuracy in smoothjax (see the module doc).
    """
    rad = np.asarray(radius, float)
    ok = np.asarray(correct, bool)
    r = np.asarray(radii, float)
    if rad.shape != ok.shape or rad.ndim != 1:
        raise ValueError(f"radius and correct must be 1-D of the same length, got {rad.shape} and {ok.shape}.")
    if rad.size == 0:
        return np.zeros(r.shape)
    return np.mean(ok[None, :] & (rad[None, :] >= r.reshape(-1)[:, None]), axis=1).reshape(r.shape)


def certified_accuracy(table: CertificationTable, method: str, radii: Sequence[float]) -> np.ndarray:
    """:func:`certified_accuracy_curve` of one method of a table."""
    return certified_accuracy_curve(table.radii[method], table.correct, radii)


def average_certified_radius(table: CertificationTable, method: str) -> float:
    """Mean of ``radius * correct`` over rows (0 for abstentions and wrong predictions)."""
    rad = table.radii[method]
    return float(np.mean(np.where(table.correct, rad, 0.0))) if len(rad) else 0.0


def binomial_upper_quantile(m: int, alpha: float, rho: float) -> int:
    """``min{k : P[Binomial(m, alpha) <= k] >= 1 - rho}``, summed exactly in log space.

    The running sum is compared with ``1 - rho + 1e-12`` so that rounding can only make ``k``
    larger (the safe side for a lower bound on accuracy).
    """
    if m < 0 or not (0.0 < alpha < 1.0) or not (0.0 < rho < 1.0):
        raise ValueError(f"need m >= 0 and alpha, rho in (0, 1); got m={m}, alpha={alpha}, rho={rho}.")
    if m == 0:
        return 0
    target = 1.0 - rho + 1e-12
    log_a, log_b = math.log(alpha), math.log1p(-alpha)
    log_norm = math.lgamma(m + 1)
    total = 0.0
    for k in range(m + 1):
        total += math.exp(log_norm - math.lgamma(k + 1) - math.lgamma(m - k + 1) + k * log_a + (m - k) * log_b)
        if total >= target:
            return k
    return m


def highprob_certified_accuracy(table: CertificationTable, method: str, radii: Sequence[float], *, alpha: float,
                                rho: float = DEFAULT_RHO, bound: str = "binomial") -> np.ndarray:
    """A lower bound on the true certified accuracy holding with probability ``>= 1 - rho``.

    ``approximate - q`` clipped at 0, where ``q`` is the ``1 - rho`` quantile of
    ``Binomial(m, alpha) / m`` (``bound="binomial"``) or Cohen et al.'s Bernstein bound on it
    (``bound="bernstein"``, their ``analyze.py``); see the module doc. ``alpha`` is the failure
    probability each certificate was computed at; ``m`` the number of rows.
    """
    approx = certified_accuracy(table, method, radii)
    m = len(table)
    if m == 0:
        return approx
    if bound == "binomial":
        slack = binomial_upper_quantile(m, alpha, rho) / m
    elif bound == "bernstein":
        log_term = math.log(1.0 / rho)
        slack = alpha + math.sqrt(alpha * (1.0 - alpha) * log_term / m) + log_term / (3.0 * m)
    else:
        raise ValueError(f"unknown bound {bound!r}; use 'binomial' or 'bernstein'.")
    return np.maximum(approx - slack, 0.0)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """``sigma Phi^-1(alpha^(1/n))``: Cohen's radius when all ``n`` samples hit the top class.

    The one-sided Clopper-Pearson lower bound at ``k = n`` is ``alpha^(1/n)``; ``Phi^-1`` is taken
    as ``-Phi^-1(1 - p)`` with ``1 - p = -expm1(log(alpha) / n)`` so that large ``n`` keeps its
    digits.
    """
    if not (sigma > 0 and n >= 1 and 0 < alpha < 1):
        raise ValueError(f"need sigma > 0, n >= 1 and alpha in (0, 1); got sigma={sigma}, n={n}, alpha={alpha}.")
    tail = -math.expm1(math.log(alpha) / n)
    if tail >= 0.5:
        return 0.0
    return sigma * -statistics.NormalDist().inv_cdf(tail)


def envelope(tables: Sequence[CertificationTable], method: str, radii: Sequence[float]) -> np.ndarray:
    """Pointwise maximum over ``tables`` (e.g. one per sigma) of ``method``'s certified accuracy.

    The envelope is what Cohen et al. plot when they choose the best sigma per radius; tables
    without ``method`` are skipped (an error if none has it).
    """
    curves = [certified_accuracy(t, method, radii) for t in tables if method in t.radii]
    if not curves:
        raise ValueError(f"no table has method {method!r}.")
    return np.max(curves, axis=0)


def settings_text(settings: Mapping[str, float]) -> str:
    """``"sigma = 0.25, n = 2000, alpha = 0.001"`` from the known settings (empty when none)."""
    parts = []
    for key in ("sigma", "n", "alpha"):
        if key in settings:
            parts.append(f"{key} = {settings[key]:g}" if key != "n" else f"n = {int(settings[key])}")
    return ", ".join(parts)


def _ordered_methods(tables: Sequence[CertificationTable]) -> list[str]:
    found = {m for t in tables for m in t.methods}
    return [m for m in _METHOD_ORDER if m in found] + sorted(found - set(_METHOD_ORDER))


def _envelope_methods(tables: Sequence[CertificationTable]) -> list[str]:
    """Methods held by several tables that differ in sigma (unknown counts as a value): the envelope's methods."""
    out = []
    for m in _ordered_methods(tables):
        holders = [t for t in tables if m in t.radii]
        if len(holders) > 1 and len({t.settings.get("sigma") for t in holders}) > 1:
            out.append(m)
    return out


def partial_note(table: CertificationTable) -> str | None:
    """A one-line note when ``table`` holds only part of its job (its sidecar says so), else None.

    An interrupted (or unfinished) run: ``"cert.tsv: 5 of 40 inputs (run interrupted; resume it
    with --resume)"``; one shard or process file of a job: ``"cert.shard1.tsv (shard 1/2): 20 of
    40 inputs; merge the shards first"``.
    """
    job = table.job
    if not job:
        return None
    name = os.path.basename(table.path) or table.name
    rows = len(table)
    status = job.get("status")
    if status in ("interrupted", "running") and rows < job.get("file_inputs", rows + 1):
        why = "run interrupted" if status == "interrupted" else "run unfinished, or still running"
        return f"{name}: {rows} of {job.get('file_inputs', '?')} inputs ({why}; resume it with --resume)"
    part = job.get("shard") or job.get("process")
    if part is not None and rows < job.get("job_inputs", rows + 1):
        kind = "shard" if job.get("shard") else "process"
        what = "shards" if kind == "shard" else "process files"
        return f"{name} ({kind} {part[0]}/{part[1]}): {rows} of {job['job_inputs']} inputs; merge the {what} first"
    return None


def _shared_settings(tables: Sequence[CertificationTable]) -> dict:
    keys = set.intersection(*(set(t.settings) for t in tables)) if tables else set()
    return {k: tables[0].settings[k] for k in ("sigma", "n", "alpha")
            if k in keys and len({t.settings[k] for t in tables}) == 1}


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------


def markdown_table(tables: Sequence[CertificationTable], radii: Sequence[float] = DEFAULT_RADII, *,
                   rho: float = DEFAULT_RHO, highprob: bool = True) -> str:
    """Markdown: approximate certified accuracy per (file, method), the envelope, and HighProb.

    First table: one row per (file, method) with the threat model, certified accuracy at each
    radius, ACR and seconds per input; then, when files with different sigmas share a method, one
    ``envelope`` row per method (maximum over those files). With ``highprob``, a second table
    gives :func:`highprob_certified_accuracy` (binomial bound at ``rho``) for files whose
    ``alpha`` is known (``n/a`` for the others; only a note when no file's alpha is known).
    """
    head = ["file", "method", "threat model", *[f"r = {r:g}" for r in radii], "ACR", "s / input"]
    notes = [note for note in map(partial_note, tables) if note]
    lines = [f"**Partial run.** {note}; its certified accuracy covers only these inputs.\n" for note in notes]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(radii) + 2)) + "|"]
    for t in tables:
        per_input = float(np.nanmean(t.time)) if len(t.time) and np.any(np.isfinite(t.time)) else float("nan")
        for m in t.methods:
            acc = certified_accuracy(t, m, radii)
            cells = [t.name, m, threat_model(m), *[f"{a:.3f}" for a in acc], f"{average_certified_radius(t, m):.3f}",
                     f"{per_input:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
    for m in _envelope_methods(tables):
        cells = ["envelope (max over sigmas)", m, threat_model(m), *[f"{a:.3f}" for a in envelope(tables, m, radii)],
                 "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if highprob and not any("alpha" in t.settings for t in tables):
        text += ("\nHighProb certified accuracy needs the certification alpha: pass --alpha (or keep the OUT.json "
                 "sidecar).\n")
    elif highprob:
        rows = []
        for t in tables:
            alpha = t.settings.get("alpha")
            for m in t.methods:
                if alpha is None:
                    rows.append([t.name, m, *["n/a"] * len(radii)])
                else:
                    high = highprob_certified_accuracy(t, m, radii, alpha=alpha, rho=rho)
                    rows.append([t.name, m, *[f"{a:.3f}" for a in high]])
        text += (f"\nHighProb certified accuracy (Cohen et al. 2019): a lower bound on the certified accuracy that "
                 f"holds with probability >= 1 - rho = 1 - {rho:g} over the certification noise: the approximate "
                 "certified accuracy minus the 1 - rho quantile of Binomial(m, alpha) / m, m inputs, alpha the "
                 "certificates' failure probability (n/a where alpha is unknown: pass --alpha).\n\n")
        text += "| " + " | ".join(["file", "method", *[f"r = {r:g}" for r in radii]]) + " |\n"
        text += "|" + "|".join(["---"] * 2 + ["---:"] * len(radii)) + "|\n"
        text += "".join("| " + " | ".join(r) + " |\n" for r in rows)
    return text


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                       ("$", r"\$")):
        text = text.replace(char, repl)
    return text


def latex_table(tables: Sequence[CertificationTable], radii: Sequence[float] = DEFAULT_RADII, *,
                rho: float = DEFAULT_RHO) -> str:
    """A booktabs LaTeX table: certified accuracy (HighProb in parentheses where alpha is known) and ACR.

    Needs ``\\usepackage{booktabs}``. One row per (file, method), as :func:`markdown_table`.
    """
    shared = settings_text(_shared_settings(tables))
    cols = "ll" + "r" * (len(radii) + 1)
    lines = [
        r"\begin{table}[t]", r"\centering",
        rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
        "file & method & " + " & ".join(f"$r = {r:g}$" for r in radii) + r" & ACR \\", r"\midrule",
    ]
    for t in tables:
        alpha = t.settings.get("alpha")
        for m in t.methods:
            acc = certified_accuracy(t, m, radii)
            high = highprob_certified_accuracy(t, m, radii, alpha=alpha, rho=rho) if alpha is not None else None
            cells = [f"{a:.3f}" + (f" ({h:.3f})" if high is not None else "")
                     for a, h in zip(acc, high if high is not None else acc)]
            lines.append(f"{_latex_escape(t.name)} & {_latex_escape(m)} & " + " & ".join(cells)
                         + f" & {average_certified_radius(t, m):.3f} \\\\")
    caption = ("Approximate certified accuracy at radius $r$ (fraction of test inputs classified correctly with "
               "certified radius $\\ge r$; in parentheses the HighProb lower bound, which holds with probability "
               f"$\\ge 1 - {rho:g}$) and average certified radius (ACR).")
    if shared:
        caption += " " + _latex_escape(shared).replace("sigma", r"$\sigma$").replace("alpha", r"$\alpha$") + "."
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, plt, title: str, shared: dict, out_stem: str, formats: Sequence[str]) -> list[str]:
    """Title a figure with the settings its files share, save it in every format, close it."""
    if shared:
        title += f"; {settings_text(shared)}".replace("sigma", "σ").replace("alpha", "α")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths = _save(fig, out_stem, formats)
    plt.close(fig)
    return paths


def _save(fig, out_stem: str, formats: Sequence[str]) -> list[str]:
    os.makedirs(os.path.dirname(os.path.abspath(out_stem)), exist_ok=True)
    paths = []
    for fmt in formats:
        path = f"{out_stem}.{fmt}"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths


def method_style(method: str) -> tuple[str, object]:
    """The ``(colour, matplotlib line style)`` a method is drawn with in every figure.

    Fixed for the methods smoothjax certifies; any other name gets one of a few spare styles chosen
    from a checksum of the name (so it too looks the same in every figure).
    """
    if method in _METHOD_STYLES:
        return _METHOD_STYLES[method]
    return _OTHER_STYLES[zlib.crc32(method.encode()) % len(_OTHER_STYLES)]


def _cap_marks(tables: Sequence[CertificationTable]) -> list[tuple[float, str]]:
    """``(radius, key label)`` per distinct :func:`max_certifiable_radius` of the tables with sigma, n and alpha."""
    caps: dict[float, tuple[int, set]] = {}
    for t in tables:
        if all(k in t.settings for k in ("sigma", "n", "alpha")):
            n = int(t.settings["n"])
            r = round(max_certifiable_radius(t.settings["sigma"], n, t.settings["alpha"]), 12)
            known_n, sigmas = caps.get(r, (n, set()))
            caps[r] = (min(known_n, n), sigmas | {t.settings["sigma"]})
    several = len(caps) > 1
    return [(r, f"largest radius n = {n:,} certifies: {r:.3g}"
                + (f" (σ = {', '.join(f'{s:g}' for s in sorted(sigmas))})" if several else ""))
            for r, (n, sigmas) in sorted(caps.items())]


def plot_certified_accuracy(tables: Sequence[CertificationTable], out_stem: str, *,
                            formats: Sequence[str] = ("png", "svg"), mark_max_radius: bool = True,
                            show_envelope: bool = True) -> list[str]:
    """Certified accuracy vs radius, one panel per threat model; writes ``out_stem.<fmt>``, returns the paths.

    Each method has one colour and one line style, the same in every figure (:func:`method_style`);
    with several files each file also has its own marker, and one key below the figure covers all
    panels, while with one file each panel has its own key below it. Cohen's l2 radius is drawn as a
    thin dotted baseline in its colour in the l1 and subspace panels (an l2 ball of radius R
    contains the l1 ball and the subspace ball of radius R). When files with different sigmas share
    a method, a wide pale band in the method's colour shows its envelope (maximum over those
    files). Where sigma, n and alpha are known, a grey vertical line marks
    :func:`max_certifiable_radius` (one per distinct value, each named in the key) in every panel
    that plots an l2 radius: the l2 panel and the panels with Cohen's baseline. The figure's
    title gives the settings the files share; settings that differ go into the key.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    methods = _ordered_methods(tables)
    groups: dict[str, list[tuple[CertificationTable, str]]] = {}
    for t in tables:
        for m in sorted(t.methods, key=methods.index):
            groups.setdefault(threat_model(m), []).append((t, m))
    order = [name for _, name in reversed(_THREAT_MODELS) if name in groups] + [g for g in groups if g == "other"]
    fig, axes = plt.subplots(1, len(order), figsize=(4.8 * len(order), 4.2), squeeze=False)
    many = len(tables) > 1
    marker = {id(t): _FILE_MARKERS[i % len(_FILE_MARKERS)] for i, t in enumerate(tables)}
    shared = _shared_settings(tables)
    caps = _cap_marks(tables) if mark_max_radius else []
    baseline = [t for t in tables if REFERENCE_METHOD in t.radii]

    def label_of(t, m):
        own = {k: v for k, v in t.settings.items() if k not in shared}
        suffix = f" ({settings_text(own)})" if own else ""
        return (f"{t.name}: {m}" if many else m) + suffix if m else t.name + suffix

    def finite_max(values):
        return float(np.max(values[np.isfinite(values)], initial=0.0))

    def cap_line(ax, i, r, label):
        ax.axvline(r, color="0.3", linestyle=_CAP_STYLES[i % len(_CAP_STYLES)], lw=1.3, zorder=0, label=label)

    for ax, group in zip(axes[0], order):
        entries = groups[group]
        with_baseline = group in ("l1", "subspace l2") and bool(baseline)
        with_caps = group == "l2" or with_baseline
        # Each panel has its own grid: radii in different norms differ in scale (linf radii are
        # ~1/sqrt(d) of the l2 ones), so a shared grid would leave some panels a handful of points.
        r_max = max([finite_max(t.radii[m]) for t, m in entries]
                    + [finite_max(t.radii[REFERENCE_METHOD]) for t in baseline if with_baseline]
                    + [r for r, _ in caps if with_caps] + [1e-3])
        grid = np.linspace(0.0, r_max * 1.08, 600)

        def draw(ax, grid, t, m, colour, style, lw, label):
            acc = certified_accuracy(t, m, grid)
            marks = {}
            if many:  # a few file markers, staggered between methods, none on the zero tail
                every = (np.arange(grid.size) % 75 == (20 + 11 * methods.index(m)) % 75) & (acc > 0)
                marks = {"marker": marker[id(t)], "markevery": every, "markersize": 5}
            ax.plot(grid, acc, color=colour, linestyle=style, lw=lw, label=label, drawstyle="steps-post", **marks)

        for t, m in entries:
            draw(ax, grid, t, m, *method_style(m), 1.7, label_of(t, m))
        if with_baseline:
            for t in baseline:
                draw(ax, grid, t, REFERENCE_METHOD, method_style(REFERENCE_METHOD)[0], _BASELINE_STYLE, 1.1,
                     label_of(t, REFERENCE_METHOD) + " (l2 baseline)")
        if show_envelope:
            for m in [m for m in _envelope_methods(tables) if threat_model(m) == group]:
                ax.plot(grid, envelope(tables, m, grid), color=method_style(m)[0], alpha=0.25, lw=5.0,
                        solid_capstyle="butt", label=f"envelope over sigma: {m}", drawstyle="steps-post", zorder=1)
        if with_caps:
            for i, (r, label) in enumerate(caps):
                cap_line(ax, i, r, label)
        ax.set_title(f"{group} threat model")
        ax.set_xlabel(f"radius ({group.split()[-1]} norm, input units)")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(0.0, grid[-1])
        ax.grid(alpha=0.3)
        if not many:
            ax.legend(fontsize=_LEGEND_FONTSIZE, handlelength=3.5, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      frameon=False)
    if many:  # one key for all panels: colour and line style = method, marker = file
        handles = [Line2D([], [], color="0.25", linestyle="none", marker=marker[id(t)],
                          label=label_of(t, "").rstrip(": ")) for t in tables]
        handles += [Line2D([], [], color=method_style(m)[0], linestyle=method_style(m)[1], lw=1.7, label=m)
                    for m in methods]
        if any(g in groups for g in ("l1", "subspace l2")) and baseline:
            handles.append(Line2D([], [], color=method_style(REFERENCE_METHOD)[0], linestyle=_BASELINE_STYLE, lw=1.1,
                                  label=f"{REFERENCE_METHOD} as l2 baseline (l1, subspace)"))
        if show_envelope and _envelope_methods(tables):
            handles.append(Line2D([], [], color="0.4", alpha=0.35, lw=5, label="envelope over sigma (colour = method)"))
        handles += [Line2D([], [], color="0.3", linestyle=_CAP_STYLES[i % len(_CAP_STYLES)], lw=1.3, label=label)
                    for i, (_, label) in enumerate(caps)]
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)),
                   fontsize=_LEGEND_FONTSIZE, handlelength=3.5, frameon=False)
    title = "certified accuracy (correct and radius >= r, abstentions count as wrong)"
    return _finish(fig, plt, title, shared, out_stem, formats)


def radius_pairs(tables: Sequence[CertificationTable],
                 reference: str = REFERENCE_METHOD) -> list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per-input ``(table name, method, reference radius, method radius, correct)`` for every method but ``reference``.

    Within a table the rows pair up directly. A table without ``reference`` (a second-paper log
    holds one method) is paired with a table from the same folder that has it, with the same sigma
    and n, by input ``idx``; inputs in only one of them are left out.
    """
    out = []
    for t in tables:
        for m in t.methods:
            if m == reference:
                continue
            if reference in t.radii:
                out.append((t.name, m, t.radii[reference], t.radii[m], t.correct))
                continue
            partner = next((o for o in tables if reference in o.radii and o.idx is not None and t.idx is not None
                            and os.path.dirname(o.path) == os.path.dirname(t.path)
                            and all(o.settings.get(k) == t.settings.get(k) for k in ("sigma", "n"))), None)
            if partner is None:
                continue
            where = {int(i): j for j, i in enumerate(partner.idx)}
            rows = [(j, where[int(i)]) for j, i in enumerate(t.idx) if int(i) in where]
            if rows:
                mine, theirs = (np.array(x) for x in zip(*rows))
                out.append((f"{t.name} vs {partner.name}", m, partner.radii[reference][theirs], t.radii[m][mine],
                            t.correct[mine] & partner.correct[theirs]))
    return out


def plot_radius_scatter(tables: Sequence[CertificationTable], out_stem: str, *, reference: str = REFERENCE_METHOD,
                        formats: Sequence[str] = ("png",), notes: list[str] | None = None) -> list[str]:
    """Each input's radius under every method against Cohen's, one panel per (table, method).

    Each method is compared with the ball of its own norm that Cohen's l2 ball contains: an l2
    ball of radius r contains the l1 ball and the subspace l2 ball of radius r, and the linf ball
    of radius r / sqrt(d) (d the input dimension, from the table's sidecar). Points above the
    diagonal are inputs where the method certifies more than that; each title gives the fractions
    of inputs above and below it. Correctly classified inputs are filled, wrong ones hollow;
    inputs where both radii are 0 are left out. A linf panel whose d is unknown is skipped, with a
    sentence appended to ``notes`` (when given). Returns ``[]`` (and writes nothing) when no panel
    is left.
    """
    dims = {t.name: t.job.get("dim") for t in tables}
    pairs = []
    for name, m, ref, rad, ok in radius_pairs(tables, reference):
        label = f"{reference} radius (l2, input units)"
        if threat_model(m) == "linf":
            dim = next((dims[n] for n in name.split(" vs ") if dims.get(n)), None)
            if not dim:
                if notes is not None:
                    notes.append(f"{name}: the {m} scatter panel is left out: the input dimension d is unknown "
                                 f"(no sidecar), and a linf radius is compared with {reference} / sqrt(d)")
                continue
            ref = ref / math.sqrt(dim)
            label = f"{reference} radius / sqrt(d), the linf ball it contains (d = {dim})"
        elif threat_model(m) == "l1":
            label = f"{reference} radius, the l1 ball it contains (same radius)"
        elif threat_model(m) == "subspace l2":
            label = f"{reference} radius, the subspace l2 ball it contains (same radius)"
        pairs.append((name, m, ref, rad, ok, label))
    if not pairs:
        return []
    plt = _pyplot()
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.8 * rows), squeeze=False)
    shared = _shared_settings(tables)
    for ax, (name, m, ref, rad, ok, xlabel) in zip(axes.ravel(), pairs):
        keep = (ref > 0) | (rad > 0)
        finite = np.isfinite(ref) & np.isfinite(rad)
        keep &= finite
        top = max(float(np.max(ref[keep], initial=0.0)), float(np.max(rad[keep], initial=0.0)), 1e-3) * 1.05
        ax.plot([0, top], [0, top], color="0.5", lw=1, linestyle="--", label="equal (same norm)")
        ax.scatter(ref[keep & ok], rad[keep & ok], s=10, alpha=0.7, label="correct")
        ax.scatter(ref[keep & ~ok], rad[keep & ~ok], s=12, facecolors="none", edgecolors="C3", alpha=0.8, label="wrong")
        above = float(np.mean(rad[keep] > ref[keep])) if keep.any() else 0.0
        below = float(np.mean(rad[keep] < ref[keep])) if keep.any() else 0.0
        ax.set_title(f"{name}\n{m}: larger than {reference}'s ball for {above:.0%}, smaller for {below:.0%}",
                     fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"{m} radius ({threat_model(m).split()[-1]}, input units)")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=_LEGEND_FONTSIZE, loc="upper left")
    for ax in axes.ravel()[len(pairs):]:
        ax.set_visible(False)
    title = f"per-input radius against the ball of the same norm inside {reference}'s l2 ball"
    return _finish(fig, plt, title, shared, out_stem, formats)
