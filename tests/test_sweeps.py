import dataclasses
import json

import pandas as pd
import pytest
import torch

from promptmem import building, sweeps
from promptmem.attention import prompt_attention_statistics
from promptmem.building import data_for, train_config
from promptmem.configs import RunConfig, config_from_row, grid
from promptmem.rows import ATTENTION_COLUMNS, RESULTS_SCHEMA
from promptmem.store import REPLOT_ENV, ResultsStore, read_results, stored_table
from promptmem.sweeps import run_sweep
from promptmem.tables import best_setting, evaluation_curves, min_prompt_length, prompt_bounds, shortest_memorizing
from tests.conftest import interrupt_at_call, requires_local_data

# A few-second sweep: random tokens through a small random encoder.
TINY = RunConfig(n=16, prompt_len=2, seq_len=4, dataset="random_tokens", labels="random", hidden_size=32,
                 num_heads=2, ffn_size=64, init_scale=0.3, epochs=30, lr=0.05)


@pytest.fixture
def counted_runs(monkeypatch, one_run_at_a_time):
    ran = []

    def run_and_count(config, device=None, progress=False, **checkpointing):
        ran.append(config)
        return real_run(config, device, progress, **checkpointing)

    real_run = sweeps.run_config
    monkeypatch.setattr(sweeps, "run_config", run_and_count)
    return ran


def test_rerun_skips_finished_configs_and_recompute_reruns(tmp_path, counted_runs):
    path = tmp_path / "results.csv"
    configs = grid(TINY, prompt_len=[1, 2])
    first = run_sweep(configs, path, progress=False)
    assert len(counted_runs) == 2 and len(first) == 2
    again = run_sweep(configs + grid(TINY, prompt_len=[4]), path, progress=False)
    assert len(counted_runs) == 3  # only the new config ran
    assert again.prompt_len.tolist() == [1, 2, 4]
    pd.testing.assert_frame_equal(again.iloc[:2], first)  # finished rows are kept as they were
    run_sweep(configs, path, recompute=True, progress=False)
    assert len(counted_runs) == 5
    stored = ResultsStore(path).load()
    assert len(stored) == 3 and stored.config_id.is_unique  # recomputed rows replace, never duplicate
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_rows_read_back_with_their_types(tmp_path):
    row = sweeps.run_config(dataclasses.replace(TINY, epochs=2))
    row["config_id"] = "000000000123"  # an all-digit id must stay text
    ResultsStore(tmp_path / "r.csv").put(row)
    stored = ResultsStore(tmp_path / "r.csv").load().iloc[0]
    assert stored.config_id == "000000000123" and stored.labels == "random"
    assert stored.trainable_params == 2 * 32 and stored.torch_version
    assert {"final_accuracy", "epochs_run", "status", "device", "seconds", "precision_used"} <= set(stored.index)


def test_labels_true_is_not_read_as_a_bool(tmp_path):
    store = ResultsStore(tmp_path / "r.csv")
    store.put({"config_id": "a", "labels": "true", "method": "prompt"})
    assert store.load().labels.tolist() == ["true"]


def test_a_file_that_is_not_a_results_table_is_refused(tmp_path):
    (tmp_path / "r.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="config_id"):
        ResultsStore(tmp_path / "r.csv").load()


@pytest.mark.parametrize("change, message", [
    (dict(prompt_len=0), "prompt_len must be an integer >= 1"),
    (dict(seq_len=500, prompt_len=20), r"N \+ p"),
    (dict(dataset="wikitext"), "dataset must be one of"),
    (dict(method="lora"), "method must be one of"),
    (dict(init_scale=-1.0), "init_scale"),
    (dict(init_scale="0.3"), "init_scale must be a number"),
    (dict(lr=0.0), "lr must be a number"),
    (dict(precision="fp64"), "precision"),
    (dict(n=0), "n must be"),
])
def test_bad_configs_are_refused_before_any_run(tmp_path, counted_runs, change, message):
    with pytest.raises(ValueError, match=message):
        run_sweep([TINY, dataclasses.replace(TINY, **change)], tmp_path / "r.csv", progress=False)
    assert counted_runs == []  # the valid first config did not run either


@requires_local_data
def test_n_beyond_the_dataset_is_refused_before_any_run(tmp_path, counted_runs):
    with pytest.raises(ValueError, match="n must be at most 67349"):
        run_sweep([TINY, RunConfig(n=70000, prompt_len=1, dataset="sst2")], tmp_path / "r.csv", progress=False)
    assert counted_runs == []


def test_grid_is_the_product():
    configs = grid(TINY, n=[1, 2, 3], prompt_len=[4, 8])
    assert [(c.n, c.prompt_len) for c in configs] == [(n, p) for n in (1, 2, 3) for p in (4, 8)]
    assert len({c.config_id for c in configs}) == 6


def test_min_prompt_length_per_setting():
    results = pd.DataFrame({
        "method": ["prompt"] * 7 + ["scratch"],
        "n": [10, 10, 10, 20, 20, 20, 30, 10],
        "prompt_len": [1, 2, 4, 1, 2, 4, 4, 0],
        "final_accuracy": [0.8, 1.0, 1.0, 0.7, 0.9, 1.0, 0.95, 1.0],
    })
    table = min_prompt_length(results, by=["n"])
    assert table.n.tolist() == [10, 20, 30]
    assert table.min_prompt_len.tolist()[:2] == [2, 4] and pd.isna(table.min_prompt_len.iloc[2])
    assert table.max_prompt_len_tried.tolist() == [4, 4, 4]


def test_prompt_length_brackets_give_both_ends_of_each_threshold():
    from promptmem.tables import prompt_length_brackets

    results = pd.DataFrame({
        "method": ["prompt"] * 9 + ["scratch"],
        "n": [10, 10, 10, 20, 20, 20, 20, 30, 30, 10],
        "prompt_len": [1, 2, 4, 1, 3, 4, 8, 2, 4, 0],
        # n = 20: p = 8 falls short above the threshold 4 (noise), which is not the bracket's lower end
        "final_accuracy": [1.0, 1.0, 1.0, 0.7, 0.9, 1.0, 0.99, 0.8, 0.95, 0.5],
    })
    table = prompt_length_brackets(results, by=["n"])
    assert table.n.tolist() == [10, 20, 30]
    assert table.max_failing_prompt_len.tolist() == [0, 3, 4]  # none failed; below the threshold; none memorized
    assert table.min_prompt_len.tolist()[:2] == [1, 4] and pd.isna(table.min_prompt_len.iloc[2])


def test_best_setting_prefers_accuracy_then_speed():
    scan = pd.DataFrame({"init_scale": [0.02, 0.3, 1.0, 3.0], "final_accuracy": [0.6, 1.0, 1.0, 0.9],
                         "epochs_run": [100, 40, 20, 100]})
    assert best_setting(scan, "init_scale") == 1.0


def test_low_rank_configs_record_prompt_spectra(tmp_path):
    config = dataclasses.replace(TINY, dataset="low_rank", labels="true", rank=3, prompt_len=4, epochs=5)
    row = run_sweep([config], tmp_path / "r.csv", progress=False).iloc[0]
    assert row["rank"] == 3 and row.dataset == "low_rank"
    trained, initial, update = (json.loads(row[column]) for column in (
        "prompt_singular_values", "initial_prompt_singular_values", "prompt_update_singular_values"))
    assert len(trained) == len(initial) == len(update) == 4 and trained != initial
    assert all(a >= b for a, b in zip(update, update[1:]))


@pytest.mark.parametrize("change, message", [
    (dict(dataset="low_rank"), "rank must be set"), (dict(rank=4), "rank must be set"),
    (dict(dataset="low_rank", rank=33), r"rank must be an integer in \[1, hidden_size=32\]"),
    (dict(compact_vocab=True), "compact_vocab"),
])
def test_bad_rank_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change).validate()


def test_ids_of_earlier_configs_survive_new_optional_fields():
    # an id hashes the fields that are not None, so a field added later with default None changes no id
    @dataclasses.dataclass(frozen=True)
    class LaterVersion(RunConfig):
        new_option: int | None = None

    assert LaterVersion(n=10, prompt_len=2).config_id == RunConfig(n=10, prompt_len=2).config_id
    assert LaterVersion(n=10, prompt_len=2, new_option=3).config_id != RunConfig(n=10, prompt_len=2).config_id


@pytest.mark.parametrize("change, message", [
    (dict(architecture="gpt2"), "generation_steps must be set"),
    (dict(generation_steps=2), "generation_steps must be set"),
    (dict(architecture="gpt2", generation_steps=-1), "generation_steps must be an integer >= 0"),
    (dict(architecture="gpt2", generation_steps=2, method="scratch", prompt_len=0), "0 for method 'scratch'"),
    (dict(architecture="gpt2", generation_steps=1020), r"N \+ p \+ K"),
    (dict(architecture="bert"), "architecture must be one of"),
])
def test_bad_generation_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change).validate()


def test_causal_config_trains(tmp_path):
    config = dataclasses.replace(TINY, architecture="gpt2", generation_steps=2, epochs=3)
    row = run_sweep([config], tmp_path / "r.csv", progress=False).iloc[0]
    assert row.architecture == "gpt2" and row.generation_steps == 2 and row.epochs_run == 3


@pytest.mark.kernels  # bit-identical on one machine, whatever its kernels
def test_a_row_gives_back_its_config_and_its_prompt(tmp_path):
    config = dataclasses.replace(TINY, epochs=5, batch_size=8)
    row = run_sweep([config], tmp_path / "r.csv", progress=False).iloc[0]
    assert config_from_row(row) == config
    model, _, _ = train_config(config)
    again, _, _ = train_config(config_from_row(row))
    assert torch.equal(model.prompt, again.prompt)  # deterministic: the finished run's prompt, exactly


def test_rows_of_another_version_are_refused_not_misread(tmp_path):
    row = run_sweep([TINY], tmp_path / "r.csv", progress=False).iloc[0]
    with pytest.raises(ValueError, match="has no architecture"):
        config_from_row(row.drop("architecture"))  # a column an older version did not write
    with pytest.raises(ValueError, match="does not match"):
        config_from_row(row.copy().replace({row["lr"]: 0.5}))


def test_shortest_memorizing_run_per_n(tmp_path):
    results = pd.DataFrame({"method": ["prompt"] * 5 + ["scratch"], "n": [10, 10, 10, 20, 20, 10],
                            "prompt_len": [4, 2, 8, 8, 4, 0], "final_accuracy": [1.0, 1.0, 1.0, 1.0, 0.9, 1.0],
                            "labels": ["true"] * 5 + ["true"]})
    shortest = shortest_memorizing(results, labels="true")
    assert shortest[["n", "prompt_len"]].values.tolist() == [[10, 2], [20, 8]]
    assert read_results(tmp_path, "99_missing") is None


def test_prompt_bounds_are_those_of_the_rows_prompts(tmp_path):
    rows = run_sweep(grid(TINY, prompt_len=[2, 3]), tmp_path / "r.csv", progress=False)
    bounds = prompt_bounds(rows)
    assert len(bounds) == 2 * TINY.num_layers and (bounds.bound > 0).all()
    model, _, _ = train_config(config_from_row(rows.iloc[1]))  # deterministic: the row's prompt again
    again = prompt_attention_statistics(model, data_for(TINY).inputs)["bound"]
    assert bounds[bounds.prompt_len == 3].bound.tolist() == pytest.approx(again, rel=1e-5)


def test_a_replot_trains_nothing_and_measures_nothing(tmp_path, monkeypatch, counted_runs):
    run_sweep([TINY], tmp_path / "r.csv", progress=False)
    monkeypatch.setenv(REPLOT_ENV, "1")
    assert len(run_sweep([TINY], tmp_path / "r.csv", progress=False)) == 1  # finished: read back
    with pytest.raises(RuntimeError, match="re-plot from results/ only.*1 of these configs"):
        run_sweep([TINY, dataclasses.replace(TINY, seed=7)], tmp_path / "r.csv", progress=False)
    assert len(counted_runs) == 1
    with pytest.raises(RuntimeError, match="does not hold these settings"):
        stored_table(tmp_path / "t.csv", lambda: pd.DataFrame({"x": [1]}), settings="a")


def test_a_stored_table_is_computed_once_per_settings(tmp_path):
    computed = []

    def compute():
        computed.append(1)
        return pd.DataFrame({"length": [4, 8], "seconds": [0.1, None]})

    first = stored_table(tmp_path / "t.csv", compute, settings=("quick", "cpu"))
    again = stored_table(tmp_path / "t.csv", compute, settings=("quick", "cpu"))
    pd.testing.assert_frame_equal(first, again)
    assert len(computed) == 1
    stored_table(tmp_path / "t.csv", compute, settings=("paper", "cpu"))  # other settings: measured again
    assert len(computed) == 2
def test_a_sweep_resumes_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch, one_run_at_a_time):
    config = dataclasses.replace(TINY, epochs=9, early_stop=False, batch_size=8)
    reference = run_sweep([config], tmp_path / "reference.csv", progress=False).iloc[0]
    real_train = building.train

    def train_that_dies_in_epoch_eight(model, *args, **kwargs):
        interrupt_at_call(model, 7 * 2 + 1)  # 2 minibatches an epoch: the first step of epoch 8
        return real_train(model, *args, **kwargs)

    checkpoint = tmp_path / ".results.checkpoints" / f"{config.config_id}.pt"
    monkeypatch.setattr(building, "train", train_that_dies_in_epoch_eight)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([config], tmp_path / "results.csv", progress=False, checkpoint_every=3)
    assert checkpoint.exists()
    steps = []

    def counting_train(model, *args, **kwargs):
        forward = model.forward
        model.forward = lambda inputs: steps.append(1) or forward(inputs)
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(building, "train", counting_train)
    resumed = run_sweep([config], tmp_path / "results.csv", progress=False, checkpoint_every=3).iloc[0]
    assert len(steps) == 3 * 2 + 2  # epochs 7-9 (2 minibatches each) and the final evaluation, not all 9 epochs
    assert resumed.prompt_singular_values == reference.prompt_singular_values
    assert resumed.final_loss == reference.final_loss and not checkpoint.exists()


def test_recompute_must_be_a_bool(tmp_path, counted_runs):
    with pytest.raises(ValueError, match="recompute must be True or False"):
        run_sweep([TINY], tmp_path / "r.csv", recompute="yes", progress=False)
    assert counted_runs == []


def test_evaluation_curves_are_one_row_per_run_and_epoch():
    rows = pd.DataFrame({"seed": [0, 1], "evaluations": [
        json.dumps({"epoch": [0, 2], "train_accuracy": [0.5, 1.0], "test_accuracy": [0.4, 0.6]}),
        json.dumps({"epoch": [0, 2], "train_accuracy": [0.6, 0.9], "test_accuracy": [0.5, 0.5]})]})
    curves = evaluation_curves(rows, keep=["seed"])
    assert curves.columns.tolist() == ["epoch", "train_accuracy", "test_accuracy", "seed"]
    assert curves.seed.tolist() == [0, 0, 1, 1] and curves.train_accuracy.tolist() == [0.5, 1.0, 0.6, 0.9]


def test_prompt_rows_carry_the_attention_statistics(tmp_path):
    row = run_sweep([dataclasses.replace(TINY, epochs=3)], tmp_path / "r.csv", progress=False).iloc[0]
    for column in ATTENTION_COLUMNS.values():
        assert len(json.loads(row[column])) == TINY.num_layers, column
    assert pd.isna(row.test_accuracy) and pd.isna(row.evaluations)  # no held-out set, no curves asked for


def test_rows_of_an_older_version_run_again_and_of_a_newer_one_are_refused(tmp_path, counted_runs, capsys):
    path = tmp_path / "r.csv"
    first = run_sweep(grid(TINY, prompt_len=[1, 2]), path, progress=False)
    assert first.results_schema.tolist() == [RESULTS_SCHEMA] * 2
    # the file as the version before held-out accuracy and attention statistics wrote it
    first.drop(columns=["results_schema", "test_accuracy", "attention_entropy"]).to_csv(path, index=False)
    again = run_sweep(grid(TINY, prompt_len=[1, 2]), path, progress=False)
    assert len(counted_runs) == 4 and "2 rows of" in capsys.readouterr().out  # rerun, and said so
    assert again.attention_entropy.notna().all() and len(ResultsStore(path).load()) == 2
    newer = ResultsStore(path).load().assign(results_schema=RESULTS_SCHEMA + 1)
    newer.to_csv(path, index=False)
    with pytest.raises(ValueError, match="written by a newer promptmem"):
        run_sweep(grid(TINY, prompt_len=[1, 2]), path, progress=False)
