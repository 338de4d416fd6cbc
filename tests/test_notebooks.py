"""The committed notebooks carry their figures: each cell that saves a figure shows it inline, and a notebook executed
with MPLBACKEND=Agg in its kernel's environment (which turns the inline backend off) still keeps its figures."""

import json
import re
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def shown_and_saved(notebook: dict) -> list[tuple[int, int]]:
    """Per code cell that saves figures: (figures saved, images shown in its outputs)."""
    counts = []
    for cell in notebook["cells"]:
        saved = len(re.findall(r"\bsave_figure\(", "".join(cell["source"]))) if cell["cell_type"] == "code" else 0
        if saved:
            counts.append((saved, sum("image/png" in output.get("data", {}) for output in cell["outputs"])))
    return counts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_a_committed_notebook_shows_every_figure_it_saves(path):
    counts = shown_and_saved(json.loads(path.read_text()))
    assert counts, f"{path.name} saves no figure"
    missing = [(saved, shown) for saved, shown in counts if shown < saved]
    assert not missing, (f"{path.name}: cells save {[s for s, _ in missing]} figures but show {[s for _, s in missing]}"
                         " (executed with the inline backend off?)")


def test_a_notebook_keeps_its_figures_whatever_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what make test's environment sets, inherited by every kernel
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nimport pandas as pd\n"
                                  "from promptmem.plotting import save_figure, use_style\nuse_style()"),
        nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.plot([1, 2])\n"
                                  f"save_figure(fig, 'line', pd.DataFrame({{'y': [1, 2]}}), {str(tmp_path)!r})")])
    nbformat.write(notebook, tmp_path / "in.ipynb")
    papermill.execute_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb", kernel_name="python3",
                               progress_bar=False)
    assert shown_and_saved(json.loads((tmp_path / "out.ipynb").read_text())) == [(1, 1)]
