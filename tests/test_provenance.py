"""The provenance record of executed notebooks, and the stripping of what changes from run to run."""

import json

import nbformat
import pandas as pd
import pytest

from promptmem import provenance, tables


@pytest.fixture
def executed(tmp_path):
    """A notebook as papermill leaves it: timestamps everywhere, a progress-bar widget."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)"),
                                               nbformat.v4.new_code_cell('profile = "quick"')])
    notebook.cells[1].metadata["tags"] = ["injected-parameters"]
    notebook.metadata["papermill"] = {"duration": 12.34, "start_time": "2026-01-01T00:00:00", "end_time": "x",
                                      "parameters": {"profile": "quick"}}
    notebook.metadata["widgets"] = {"state": {"abc": {}}}
    cell = notebook.cells[0]
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:01"}
    cell.metadata["papermill"] = {"duration": 1.0, "status": "completed"}
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": "100%|##########| 3/3", provenance.WIDGET_VIEW: {"model_id": "abc", "version_major": 2}})]
    path = tmp_path / "07_example.ipynb"
    nbformat.write(notebook, path)
    return path


def test_a_run_is_recorded_with_where_how_and_how_long(executed, tmp_path):
    record_path = tmp_path / "provenance.json"
    entry = provenance.record(executed, "quick", record_path)
    assert entry["profile"] == "quick" and entry["wall_seconds"] == 12.3
    assert entry["device"].startswith("cpu") and entry["torch"] and entry["training"] is None  # it showed none
    assert json.loads(record_path.read_text()) == {"07_example": entry}
    assert provenance.recorded_profile(executed, record_path) == "quick"
    with pytest.raises(ValueError, match="no entry for 08_missing"):
        provenance.recorded_profile(tmp_path / "08_missing.ipynb", record_path)
    assert provenance.recorded_profile_or(executed, "paper", record_path) == "quick"
    assert provenance.recorded_profile_or(tmp_path / "08_missing.ipynb", "paper", record_path) == "paper"


def test_make_reproduce_runs_each_notebook_in_its_committed_profile_unless_asked(executed, tmp_path):
    record_path = tmp_path / "provenance.json"
    provenance.record(executed, "medium", record_path)
    assert provenance.profile_to_run(executed, "committed", record_path) == "medium"
    assert provenance.profile_to_run(executed, "quick", record_path) == "quick"
    assert provenance.profile_to_run(tmp_path / "09_new.ipynb", "committed", record_path) == "auto"
    with pytest.raises(ValueError, match="PROFILE must be one of .*'committed'.*got 'fast'"):
        provenance.profile_to_run(executed, "fast", record_path)


def test_stripping_removes_timestamps_widgets_and_injected_parameters_but_keeps_outputs(executed):
    provenance.strip(executed)
    notebook = nbformat.read(executed, as_version=4)
    assert "widgets" not in notebook.metadata and set(notebook.metadata.papermill) == {"parameters"}
    cell = notebook.cells[0]
    assert "execution" not in cell.metadata and "papermill" not in cell.metadata
    assert cell.outputs[0].data == {"text/plain": "100%|##########| 3/3"}
    assert len(notebook.cells) == 1  # the injected parameters are gone from the cells, kept in the metadata
    assert notebook.metadata.papermill.parameters == {"profile": "quick"}
    with pytest.raises(ValueError, match="no papermill run to record"):
        provenance.record(executed, "quick", executed.parent / "p.json")  # the duration is gone now


def test_the_training_cost_a_notebook_shows_is_recorded_once_per_run(executed, tmp_path):
    """A resumed sweep's last run may only re-plot: the cost comes from the rows' own seconds, not the wall time."""
    runs = pd.DataFrame({"config_id": ["a", "b"], "seconds": [100.0, 20.5], "device": ["cpu (x86_64, 2 threads)"] * 2,
                         "precision_used": ["bf16", None]})
    scan = runs.iloc[:1].assign(precision_used="fp32")  # the same run seen again in another frame counts once
    cost = tables.training_cost(runs, scan)
    assert cost == {"runs": 2, "training_seconds": 120.5, "devices": ["cpu (x86_64, 2 threads)"],
                    "precisions": ["bf16"]}
    assert tables.training_cost(runs.drop(columns="precision_used"))["precisions"] == []  # not recorded
    notebook = nbformat.read(executed, as_version=4)
    notebook.cells[0].outputs.append(nbformat.v4.new_output("display_data", data={"text/plain": "training: 2 runs"},
                                                            metadata={tables.TRAINING: cost}))
    nbformat.write(notebook, executed)
    entry = provenance.record(executed, "quick", tmp_path / "provenance.json")
    assert entry["training"] == cost and entry["wall_seconds"] == 12.3


def test_the_cost_table_lists_each_notebook_that_trained(executed, tmp_path):
    record_path = tmp_path / "provenance.json"
    provenance.record(executed, "quick", record_path)  # trains nothing: no row
    notebook = nbformat.read(executed, as_version=4)
    cost = {"runs": 3, "training_seconds": 5400.0, "devices": ["cpu"], "precisions": []}
    notebook.cells[0].outputs.append(nbformat.v4.new_output("display_data", data={"text/plain": "training"},
                                                            metadata={tables.TRAINING: cost}))
    trained = tmp_path / "01_trained.ipynb"
    nbformat.write(notebook, trained)
    provenance.record(trained, "medium", record_path)
    rows = provenance.cost_table(record_path).splitlines()
    assert len(rows) == 3 and rows[2] == "| 01_trained | medium | cpu | 3 | 1.50 h | not recorded |"
    with pytest.raises(SystemExit):
        provenance.main(["strip"])  # every command but table needs a notebook
