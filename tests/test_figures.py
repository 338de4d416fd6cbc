"""The committed figures are what the committed results plot: each notebook re-plotted from a copy of results/ with
PROMPTMEM_REPLOT set (nothing trains or is measured anew), in the profile figures/provenance.json records, writes
the numbers of figures/*.csv: text and integers exactly, floats within float64 rounding (REPLOT_TOLERANCE), as
fits of stored numbers may round differently on another machine. make test runs it once, under another machine's
kernel set (re-plotting every notebook twice would cost a minute of its 20)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import papermill
import pytest

from promptmem.reproducibility import REPLOT_TOLERANCE
from promptmem.store import REPLOT_ENV

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.kernels, pytest.mark.replot]
RECORD = json.loads((ROOT / "figures" / "provenance.json").read_text())


@pytest.mark.parametrize("notebook", sorted(RECORD))
def test_the_committed_figures_are_what_the_committed_results_plot(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv(REPLOT_ENV, "1")
    shutil.copytree(ROOT / "results", tmp_path / "results")
    papermill.execute_notebook(ROOT / "notebooks" / f"{notebook}.ipynb", tmp_path / f"{notebook}.ipynb",
                               parameters=dict(profile=RECORD[notebook]["profile"],
                                               results_dir=str(tmp_path / "results"),
                                               figures_dir=str(tmp_path / "figures")),
                               cwd=ROOT / "notebooks", kernel_name="python3", progress_bar=False)
    drawn = sorted((tmp_path / "figures").glob("*.csv"))
    assert drawn, f"{notebook} drew no figure"
    for table in drawn:
        committed = ROOT / "figures" / table.name
        pd.testing.assert_frame_equal(pd.read_csv(table), pd.read_csv(committed), check_exact=False, obj=table.name,
                                      **REPLOT_TOLERANCE)
        for kind in (".png", ".pdf"):
            assert committed.with_suffix(kind).exists()
    for results in (tmp_path / "results").glob("*.csv"):  # a re-plot writes nothing into results/
        assert results.read_bytes() == (ROOT / "results" / results.name).read_bytes(), results.name
