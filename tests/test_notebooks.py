"""Every notebook in notebooks/ runs top to bottom (nbclient) and saves its figures.

Figures go to a temporary directory through ``SMOOTHJAX_FIGURES``. Notebooks whose run is longer
than a few tens of seconds on 2 CPU cores are marked slow (``pytest -m slow``); at least one stays
in the default run.
"""

import importlib.util
import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"

# notebook -> (smoothjax modules it needs, figures it must write, in the default (fast) run?)
KNOWN = {
    "second_order_figure1.ipynb": (("theorem3", "certificates"), ("second_order_fig1a_lower_bound", "second_order_fig1b_radius_vs_gradient"), True),
    "higher_order_figure1.ipynb": (("theorem3",), ("higher_order_fig1_safety_regions",), False),
    "swiss_roll.ipynb": (("pipeline", "certificates"), ("swiss_roll_sos_vs_cohen",), False),
    "digits_certificates.ipynb": (("pipeline", "certificates", "gradient_bounds", "first_order", "theorem3"),
                                  ("digits_certified_accuracy", "digits_radius_scatter"), False),
}


def _params():
    out = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        needs, figures, fast = KNOWN.get(path.name, (("pipeline", "certificates", "gradient_bounds", "first_order", "theorem3"), (), False))
        marks = [] if fast else [pytest.mark.slow]
        out.append(pytest.param(path, needs, figures, marks=marks, id=path.stem))
    return out


@pytest.mark.parametrize("path, needs, figures", _params())
def test_notebook_runs_and_saves_figures(path, needs, figures, tmp_path, monkeypatch):
    missing = [m for m in needs if importlib.util.find_spec(f"smoothjax.{m}") is None]
    if missing:
        pytest.skip(f"{path.name} needs smoothjax.{', smoothjax.'.join(missing)} (not built yet)")
    monkeypatch.setenv("SMOOTHJAX_FIGURES", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for name in figures:
        png = tmp_path / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 5_000, name
    print(f"{path.name} ran in {elapsed:.0f} s")
