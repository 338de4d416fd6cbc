"""A damaged results file is never taken for a good one: a row cut short, a field of the wrong type or bytes that are
not UTF-8 stop a sweep before anything trains, with a message naming the file, the line and how to recover, and
leave the file byte for byte as it was; `salvage` keeps the rows that read whole, on request only."""

import dataclasses

import pytest

from promptmem.configs import grid
from promptmem.store import DamagedResultsError, ResultsStore, main
from promptmem.sweeps import run_sweep
from tests.test_sweeps import TINY, counted_runs  # noqa: F401 (a fixture)

CONFIGS = grid(dataclasses.replace(TINY, epochs=3), prompt_len=[1, 2, 3])
NEW = dataclasses.replace(CONFIGS[0], prompt_len=4)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The bytes of a results file of three finished configs."""
    path = tmp_path_factory.mktemp("finished") / "results.csv"
    run_sweep(CONFIGS, path, progress=False)
    return path.read_bytes()


def refused(path, counted_runs, *message):
    """Run a sweep over `path` and check it was refused with every part of `message`, trained nothing and left the
    file as it was."""
    before = path.read_bytes()
    with pytest.raises(DamagedResultsError) as error:
        run_sweep(CONFIGS + [NEW], path, progress=False)
    for part in (str(path), "Nothing was trained and the file was not changed", *message):
        assert part in str(error.value)
    assert counted_runs == [] and path.read_bytes() == before
    return str(error.value)


def last_row_cut(finished, marker: bytes, after: int = 0) -> bytes:
    """The file cut `after` bytes past the last occurrence of `marker`."""
    return finished[:finished.rindex(marker) + len(marker) + after]


@pytest.mark.parametrize("cut", ["early in the row", "after a comma", "inside a quoted field", "the line break only"])
def test_a_truncated_file_is_refused_and_left_as_it_was(tmp_path, finished, counted_runs, cut):
    last_row = finished.rindex(b"\n", 0, len(finished) - 1) + 1
    damaged = {"early in the row": finished[:last_row + 20],  # inside its third field
               "after a comma": finished[:finished.rindex(b",") + 1],
               "inside a quoted field": last_row_cut(finished, b'"[', 3),  # the JSON lists are quoted
               "the line break only": finished[:-1]}[cut]
    assert last_row < len(damaged) < len(finished)  # every cut lands in the last row
    path = tmp_path / "results.csv"
    path.write_bytes(damaged)
    message = refused(path, counted_runs, "line 4", "keep the 2 rows that read whole",
                      f"python -m promptmem.store salvage {path}")
    if cut == "the line break only":
        assert "cut short" in message


def test_a_field_of_the_wrong_type_is_refused(tmp_path, finished, counted_runs):
    header, *rows = finished.decode().splitlines(keepends=True)
    column = header.rstrip("\n").split(",").index("final_accuracy")
    fields = rows[1].split(",")
    fields[column] = "0.9x"
    path = tmp_path / "results.csv"
    path.write_text(header + rows[0] + ",".join(fields) + rows[2])
    refused(path, counted_runs, "line 3", "final_accuracy is '0.9x', not a number")


def test_bytes_that_are_not_utf8_are_refused(tmp_path, finished, counted_runs):
    path = tmp_path / "results.csv"
    path.write_bytes(b"\xff\xfe" + finished)
    refused(path, counted_runs, "byte 0 is not UTF-8", "git checkout --")


def test_salvage_keeps_the_whole_rows_and_the_damaged_file(tmp_path, finished, counted_runs, capsys):
    path = tmp_path / "results.csv"
    damaged = last_row_cut(finished, b'"[', 3)
    path.write_bytes(damaged)
    main(["salvage", str(path)])
    assert "kept 2 whole rows" in capsys.readouterr().out
    assert path.with_name("results.csv.damaged").read_bytes() == damaged
    assert path.read_bytes() == finished[:finished.rindex(b"\n", 0, len(finished) - 1) + 1]  # the first two, as they were
    run_sweep(CONFIGS + [NEW], path, progress=False)
    assert [config.prompt_len for config in counted_runs] == [3, 4]  # the dropped row and the new config only


def test_salvage_refuses_a_file_whose_header_cannot_be_read(tmp_path):
    path = tmp_path / "results.csv"
    path.write_bytes(b"config\xff_id,x\n1,2\n")
    with pytest.raises(DamagedResultsError, match="header cannot be read"):
        ResultsStore(path).salvage()


@pytest.mark.parametrize("content", [b"", b"config_id,status,final_accuracy\n"], ids=["empty", "header only"])
def test_an_empty_or_header_only_file_holds_no_finished_run(tmp_path, counted_runs, content):
    path = tmp_path / "results.csv"
    path.write_bytes(content)
    assert ResultsStore(path).load().empty
    rows = run_sweep(CONFIGS, path, progress=False)
    assert len(counted_runs) == 3 and len(ResultsStore(path).load()) == 3 and len(rows) == 3
