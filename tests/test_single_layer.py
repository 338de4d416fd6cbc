"""Notebook 08's object: the frozen 1-layer, 1-head Transformer, its grid and Lipschitz data, the fit and its sweep."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from promptmem import single_layer
from promptmem.profiles import SINGLE_LAYER
from promptmem.single_layer import LipschitzMap, SingleLayerConfig, measured_lipschitz
from promptmem.store import REPLOT_ENV

TINY = SingleLayerConfig(task="memorize", n=4, dim=2, length=1, prompt_len=4, width=32, epochs=1000,
                         target_error=0.05)
TINY_MAP = dataclasses.replace(TINY, task="lipschitz", n=8, test_n=16, lipschitz=1.0, epochs=20)


@pytest.mark.parametrize("field, value, message", [
    ("task", "classify", "task must be one of"),
    ("n", 0, "n must be an integer >= 1"),
    ("dim", 1.5, "dim must be an integer >= 1"),
    ("prompt_len", True, "prompt_len must be an integer >= 1"),
    ("width", 1, r"width must be None or an integer >= dim \(2\)"),
    ("lr", 10.0, r"lr must be a number in \(0, 10\)"),
    ("target_error", 0.0, r"target_error must be a number in \(0, 1\)"),
    ("lipschitz", 1.0, "lipschitz and test_n must be set for task 'lipschitz' and only for it"),
    ("grid_points", 1, "grid_points must be None or, for task 'memorize', an integer >= 2"),
    ("grid_points", 3, r"n must be grid_points\^\(dim \* length\) = 9 on a grid, got 4"),
])
def test_bad_fields_are_refused_by_name_before_anything_is_built(field, value, message, monkeypatch):
    monkeypatch.setattr(single_layer, "build", lambda config: pytest.fail("built a model for a bad config"))
    with pytest.raises(ValueError, match=message):
        single_layer.fit(dataclasses.replace(TINY, **{field: value}))


def test_a_lipschitz_bound_outside_its_range_is_refused():
    with pytest.raises(ValueError, match=r"lipschitz must be a number in \(0, 100\]"):
        dataclasses.replace(TINY_MAP, lipschitz=-1.0).validate()


def test_the_grid_holds_every_cell_centre_once():
    cells = single_layer.grid_inputs(2, dim=2, length=2)
    assert cells.shape == (16, 2, 2)
    assert set(cells.unique().tolist()) == {0.25, 0.75}
    assert len({tuple(cell.flatten().tolist()) for cell in cells}) == 16


@pytest.mark.parametrize("dim, length, bound", [(2, 1, 0.5), (2, 2, 2.0), (1, 4, 1.0)])
def test_a_generated_map_stays_within_its_lipschitz_bound_and_comes_close_to_it(dim, length, bound):
    generator = torch.Generator().manual_seed(0)
    target_map = LipschitzMap(dim, length, bound, generator)
    inputs = torch.rand(256, length, dim, generator=generator)
    with torch.no_grad():
        outputs = target_map(inputs)
    # every pair of points: |f(x) - f(y)| <= c |x - y| (Euclidean), the bound the generator promises
    exact = "donot_use_mm_for_euclid_dist"  # the matmul shortcut leaves rounding noise of 1e-4 on the diagonal
    differences = torch.cdist(outputs.flatten(1), outputs.flatten(1), compute_mode=exact)
    distances = torch.cdist(inputs.flatten(1), inputs.flatten(1), compute_mode=exact)
    assert (differences <= bound * distances + 1e-5).all()
    measured = measured_lipschitz(target_map, inputs[:64])
    assert 0.5 * bound < measured <= bound * (1 + 1e-5)


def test_the_data_depend_on_the_seed_alone_so_prompt_lengths_share_them():
    short, long = (single_layer.build(dataclasses.replace(TINY_MAP, prompt_len=p, width=w)) for p, w in ((1, 32), (8, 16)))
    for a, b in zip(short[1:5], long[1:5]):
        assert torch.equal(a, b)
    other_seed = single_layer.build(dataclasses.replace(TINY_MAP, seed=1))
    assert not torch.equal(short[1], other_seed[1])


def test_positions_differ_only_in_the_padding_and_the_prompt_alone_trains():
    model = single_layer.build(dataclasses.replace(TINY, length=3))[0]
    assert (model.positions[:, :TINY.dim] == 0).all() and (model.positions[:, TINY.dim:] != 0).any()
    assert [name for name, _ in model.named_parameters()] == ["prompt"]


def test_a_fit_reaches_the_target_on_a_small_grid_and_beats_the_constant_output():
    row = single_layer.fit(dataclasses.replace(TINY, grid_points=2, n=4))
    assert row["status"] == "fitted" and row["best_max_error"] <= TINY.target_error
    assert row["best_max_error"] < row["constant_max_error"] < row["initial_max_error"]
    assert row["prompt_numbers"] == TINY.prompt_len * TINY.width and row["target_numbers"] == 4 * 2


def test_the_sweep_stores_each_row_resumes_and_refuses_to_fit_while_replotting(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    configs = [dataclasses.replace(TINY_MAP, prompt_len=p) for p in (1, 2)]
    first = single_layer.run_sweep(configs[:1], path)
    fitted = []
    monkeypatch.setattr(single_layer, "fit", lambda config: fitted.append(config) or first.iloc[0].to_dict()
                        | {"config_id": config.config_id, "prompt_len": config.prompt_len})
    rows = single_layer.run_sweep(configs, path)
    assert fitted == configs[1:]  # the finished config is not fitted again
    assert rows.prompt_len.tolist() == [1, 2]
    for column in ("best_max_error", "test_max_error", "prompt_query_key_bound"):  # numbers, as stored
        assert pd.api.types.is_float_dtype(rows[column]), column
    monkeypatch.setenv(REPLOT_ENV, "1")
    with pytest.raises(RuntimeError, match="1 of these configs are not finished"):
        single_layer.run_sweep(configs + [dataclasses.replace(TINY_MAP, prompt_len=3)], path)


def test_fits_on_worker_processes_store_the_rows_one_process_fits(tmp_path):
    configs = [dataclasses.replace(TINY_MAP, prompt_len=p) for p in (1, 2, 3)]
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        single_layer.run_sweep(configs, tmp_path / "none.csv", workers=0)
    serial = single_layer.run_sweep(configs, tmp_path / "serial.csv", workers=1)
    parallel = single_layer.run_sweep(configs, tmp_path / "parallel.csv", workers=2)
    assert parallel.config_id.tolist() == serial.config_id.tolist() == [config.config_id for config in configs]
    for column in ("best_max_error", "test_max_error", "final_mse"):  # one thread each, on one machine: the same fits
        assert np.allclose(parallel[column], serial[column], rtol=1e-5, atol=1e-7), column


def test_smallest_prompt_reads_each_error_level_off_the_fits():
    fits = pd.DataFrame({"dim": [1, 1, 1], "prompt_len": [1, 2, 4], "best_max_error": [0.5, 0.15, 0.03]})
    table = single_layer.smallest_prompt(fits, "best_max_error", [0.4, 0.1, 0.02], by=["dim"])
    assert table.min_prompt_len.tolist()[:2] == [2, 4] and pd.isna(table.min_prompt_len.iloc[2])


@pytest.mark.parametrize("profile", ["quick", "medium"])
def test_every_profile_config_is_valid(profile):
    settings = SINGLE_LAYER[profile]
    for config in settings.capacity_configs() + settings.lipschitz_configs():
        config.validate()
