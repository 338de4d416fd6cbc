"""Training within an allocation: past PROMPTMEM_DEADLINE a run saves its checkpoint and raises, and a rerun resumes
it; `allocation.run` executes notebooks until the deadline and packs their new rows and checkpoints; `merge` adds
them at home, keeping what is there and refusing damaged or foreign files before it writes anything."""

import dataclasses
import json
import tarfile
import time
from pathlib import Path

import nbformat
import pytest
import torch

from promptmem import allocation, batched, sweeps, training
from promptmem.allocation import CHECKPOINTS, LOG, NOT_STARTED, STOPPED, main, merge
from promptmem.batched import train_together
from promptmem.deadline import DEADLINE_ENV, BudgetExhausted
from promptmem.model import SoftPromptModel
from promptmem.rows import RESULTS_SCHEMA
from promptmem.store import ResultsStore
from promptmem.sweeps import run_sweep
from tests.test_batched import make_runs
from tests.test_sweeps import TINY

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "00_tiny.csv"
CUT = dataclasses.replace(TINY, epochs=40, early_stop=False, seed=3)  # the run the deadline stops


@pytest.fixture
def resumed_from(monkeypatch):
    """The epochs the runs' loaded checkpoints had run, alone and in a batch."""
    epochs, load = [], training.load_checkpoint

    def loading(path, model, optimizer, scaler, generator, result):
        seconds = load(path, model, optimizer, scaler, generator, result)
        epochs.append(result.epochs)
        return seconds

    monkeypatch.setattr(training, "load_checkpoint", loading)
    monkeypatch.setattr(batched, "load_checkpoint", loading)
    return epochs


def test_a_run_past_the_deadline_saves_its_state_and_a_rerun_ends_where_an_uninterrupted_one_does(
        tiny_backbone, tiny_data, tmp_path, monkeypatch, resumed_from):
    arguments = dict(epochs=10, lr=0.02, early_stop=False, progress=False)
    uninterrupted = SoftPromptModel(tiny_backbone, 3, seed=0)
    train_alone = training.train(uninterrupted, tiny_data.inputs, tiny_data.labels, **arguments)
    checkpoint = tmp_path / "run.pt"
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() - 1))
    with pytest.raises(BudgetExhausted, match="1 of them saved"):
        training.train(SoftPromptModel(tiny_backbone, 3, seed=0), tiny_data.inputs, tiny_data.labels,
                       checkpoint=checkpoint, checkpoint_every=100, **arguments)
    assert torch.load(checkpoint, weights_only=True)["epochs"] == 1  # saved although checkpoint_every is 100

    monkeypatch.delenv(DEADLINE_ENV)
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    resumed = training.train(model, tiny_data.inputs, tiny_data.labels, checkpoint=checkpoint, checkpoint_every=100,
                             **arguments)
    assert resumed_from == [1] and resumed.epochs == 10 and not checkpoint.exists()
    assert torch.equal(model.prompt, uninterrupted.prompt) and resumed.history == train_alone.history


def test_a_batch_past_the_deadline_saves_every_unfinished_run(tiny_backbone, tmp_path, monkeypatch, resumed_from):
    specs = [(2, 16, 0), (4, 24, 1)]
    reference = make_runs(tiny_backbone, specs, early_stop=False)
    train_together(reference, precision="fp32", progress=False)

    def with_checkpoints(runs):
        for index, run in enumerate(runs):
            run.checkpoint, run.checkpoint_every = tmp_path / f"{index}.pt", 100
        return runs

    monkeypatch.setenv(DEADLINE_ENV, str(time.time() - 1))
    with pytest.raises(BudgetExhausted, match="2 unfinished run.s. stopped, 2 of them saved"):
        train_together(with_checkpoints(make_runs(tiny_backbone, specs, early_stop=False)), precision="fp32",
                       progress=False)  # sync_every 10: the deadline forces the read-back at epoch 1
    assert [torch.load(tmp_path / f"{i}.pt", weights_only=True)["epochs"] for i in range(2)] == [1, 1]

    monkeypatch.delenv(DEADLINE_ENV)
    resumed = with_checkpoints(make_runs(tiny_backbone, specs, early_stop=False))
    results = train_together(resumed, precision="fp32", progress=False)
    assert resumed_from == [1, 1] and [result.epochs for result in results] == [15, 15]
    assert all(torch.equal(run.model.prompt, again.model.prompt) for run, again in zip(reference, resumed))
    assert not list(tmp_path.glob("*.pt"))


def tiny_rows(*seeds) -> list[dict]:
    return [sweeps.run_config(dataclasses.replace(TINY, epochs=2, seed=seed)) for seed in seeds]


def notebook(path: Path, *code: str) -> Path:
    """A notebook with the parameters cell `allocation.run` fills in, then `code`."""
    parameters = nbformat.v4.new_code_cell('profile = "quick"\nresults_dir = "."\nfigures_dir = "."')
    parameters.metadata["tags"] = ["parameters"]
    kernel = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}
    nbformat.write(nbformat.v4.new_notebook(cells=[parameters, *map(nbformat.v4.new_code_cell, code)], metadata=kernel),
                   path)
    return path


def test_run_stops_at_the_deadline_and_merge_lets_the_next_run_resume(tmp_path, resumed_from):
    there_before, new, home_only = tiny_rows(0, 1, 2)
    gpu, home, out = tmp_path / "gpu", tmp_path / "home", tmp_path / "out"
    ResultsStore(gpu / RESULTS).put(there_before)
    for row in (there_before, home_only, {**new, "device": "home"}):  # home has finished `new` itself
        ResultsStore(home / RESULTS).put(row)
    cut = notebook(tmp_path / "00_cut.ipynb", f"""
import json, os, time
from pathlib import Path
from promptmem.configs import RunConfig
from promptmem.store import ResultsStore
from promptmem.sweeps import run_sweep
path = Path(results_dir) / {RESULTS!r}
ResultsStore(path).put(json.loads({json.dumps(new)!r}))  # a run that finished before the deadline
time.sleep(max(0.0, float(os.environ["{DEADLINE_ENV}"]) - time.time()))
run_sweep([RunConfig(**{dataclasses.asdict(CUT)!r})], path, checkpoint_every=1000, progress=False)""")
    after = notebook(tmp_path / "00_after.ipynb", "open('after-ran', 'w').close()")

    outcomes = allocation.run([cut, after], "quick", time.time() + 6, out, results_dir=gpu)
    assert outcomes == {"00_cut": STOPPED, "00_after": NOT_STARTED} and not (tmp_path / "after-ran").exists()
    assert sorted(path.name for path in out.iterdir()) == [RESULTS, LOG, CHECKPOINTS]
    assert ResultsStore(out / RESULTS).load().config_id.tolist() == [new["config_id"]]  # not there_before
    assert STOPPED in (out / LOG).read_text()

    assert merge(out, home)[0] == f"{RESULTS}: 0 rows added, 1 finished here already"
    rows = ResultsStore(home / RESULTS).load().set_index("config_id")
    assert sorted(rows.index) == sorted(row["config_id"] for row in (there_before, home_only, new))
    assert rows.loc[new["config_id"], "device"] == "home"  # kept, not duplicated
    checkpoint = home / f".{Path(RESULTS).stem}.checkpoints" / f"{CUT.config_id}.pt"
    assert torch.load(checkpoint, weights_only=True)["epochs"] == 1

    resumed = run_sweep([CUT], home / RESULTS, checkpoint_every=1000, progress=False).iloc[0]
    assert resumed_from == [1] and resumed.epochs_run == CUT.epochs and not checkpoint.exists()


@pytest.fixture
def returned(tmp_path):
    """A home results file and a folder returned by `run` with one new row; their paths."""
    at_home, new = tiny_rows(0, 1)
    ResultsStore(tmp_path / "home" / RESULTS).put(at_home)
    ResultsStore(tmp_path / "out" / RESULTS).put(new)
    return tmp_path / "home", tmp_path / "out"


def test_merge_adds_new_rows_and_keeps_those_there(returned):
    home, out = returned
    before = ResultsStore(home / RESULTS).load()
    assert merge(out, home) == [f"{RESULTS}: 1 rows added, 0 finished here already"]
    assert merge(out, home) == [f"{RESULTS}: 0 rows added, 1 finished here already"]
    rows = ResultsStore(home / RESULTS).load()
    assert len(rows) == 2 and rows.iloc[0].equals(before.iloc[0])


def truncated(path: Path) -> None:
    path.write_text(path.read_text()[:-20])


def of_schema(schema: int):
    def change(path: Path) -> None:
        ResultsStore(path).load().assign(results_schema=schema).to_csv(path, index=False)
    return change


def with_a_column_unknown_at_home(path: Path) -> None:
    ResultsStore(path).load().assign(gpu_clock=1.5).to_csv(path, index=False)


@pytest.mark.parametrize("change, refusal", [
    (truncated, "is damaged, line 2"), (of_schema(RESULTS_SCHEMA + 1), "newer promptmem"),
    (of_schema(RESULTS_SCHEMA - 1), f"results schema \\[{RESULTS_SCHEMA - 1}\\]"),
    (with_a_column_unknown_at_home, "unknown there \\['gpu_clock'\\]"),
], ids=["damaged", "newer schema", "older schema", "unknown column"])
def test_merge_refuses_a_bad_rows_file_and_changes_nothing(returned, change, refusal):
    home, out = returned
    change(out / RESULTS)
    before = (home / RESULTS).read_bytes()
    with pytest.raises(ValueError, match=refusal) as refused:
        merge(out, home)
    assert str(out / RESULTS) in str(refused.value) and (home / RESULTS).read_bytes() == before


def cut_short(archive: Path) -> None:
    archive.write_bytes(b"\x1f\x8b\x08\x00 cut short")


def holding_a_path_out_of_results(archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(__file__, arcname="../results.csv")


@pytest.mark.parametrize("archive, refusal", [(cut_short, "is damaged"),
                                              (holding_a_path_out_of_results, "not a run's checkpoint")])
def test_merge_refuses_a_bad_checkpoint_archive_before_writing_rows(returned, archive, refusal):
    home, out = returned
    archive(out / CHECKPOINTS)
    before = (home / RESULTS).read_bytes()
    with pytest.raises(ValueError, match=refusal):
        merge(out, home)
    assert (home / RESULTS).read_bytes() == before and not (home / "results.csv").exists()


@pytest.mark.parametrize("change, named", [
    (["--notebooks", "05"], "--notebooks"), (["--notebooks", "10"], "--notebooks"), (["--minutes", "1"], "--minutes"),
    (["--minutes", "nan"], "--minutes"), (["--profile", "huge"], "--profile"), (["--out", "not empty"], "--out"),
])
def test_run_refuses_bad_arguments_before_computing(tmp_path, monkeypatch, capsys, change, named):
    monkeypatch.chdir(ROOT)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").touch()
    monkeypatch.setattr(allocation, "run", lambda *arguments, **options: pytest.fail("it computed"))
    arguments = {"--notebooks": "01", "--profile": "paper", "--minutes": "5", "--out": str(tmp_path / "new")}
    arguments[change[0]] = str(tmp_path / "full") if change[1] == "not empty" else change[1]
    with pytest.raises(SystemExit) as stopped:
        main(["run", *(item for pair in arguments.items() for item in pair)])
    assert stopped.value.code == 2 and f"error: {named}" in capsys.readouterr().err


def test_the_deadline_leaves_the_margin_before_the_allocation_ends(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    deadlines = []
    monkeypatch.setattr(allocation, "run", lambda notebooks, profile, deadline, out, **options:
                        deadlines.append(deadline) or {})
    main(["run", "--notebooks", "1", "--minutes", "5", "--out", str(tmp_path / "out")])
    assert 0 <= time.time() + 5 * 60 - allocation.MARGIN_SECONDS - deadlines[0] < 5
