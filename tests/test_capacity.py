"""Bits stored about random labels: the estimators on cases with a known answer, and capacity curves along n
(doubling past the largest n memorized, resumable from the results file)."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from promptmem import capacity, sweeps
from promptmem.capacity import capacity_curve, capacity_curves, capacity_of, hard_decision_bits, likelihood_bits
from tests.test_sweeps import TINY


def test_a_model_at_chance_stores_nothing_and_a_certain_right_one_stores_n():
    assert likelihood_bits(100, math.log(2)) == pytest.approx(0)
    assert likelihood_bits(100, 0.0) == pytest.approx(100)
    assert likelihood_bits(100, 2.0) == 0  # worse than chance: clipped at 0
    assert hard_decision_bits(100, 0.5) == pytest.approx(0)
    assert hard_decision_bits(100, 1.0) == pytest.approx(100)


def test_a_small_table_of_probabilities_gives_the_bits_worked_out_by_hand():
    # four pairs with p(y_i | x_i) = 1, 1/2, 1/2, 1/4: -log2 sums to 0 + 1 + 1 + 2 = 4 bits of surprise, so 4 - 4 = 0;
    # and 1, 1, 1/2, 1/2: 2 bits of surprise, 2 bits stored
    for probabilities, stored in (([1, 0.5, 0.5, 0.25], 0.0), ([1, 1, 0.5, 0.5], 2.0)):
        mean_loss = -np.mean(np.log(probabilities))
        assert likelihood_bits(4, mean_loss) == pytest.approx(stored)
    # one error in four: H2(1/4) = 0.811278 bits per pair lost
    assert hard_decision_bits(4, 0.75) == pytest.approx(4 * (1 - 0.8112781244591328))


def test_the_estimators_take_columns_and_refuse_what_is_not_a_count_a_loss_or_an_accuracy():
    np.testing.assert_allclose(likelihood_bits(np.array([10, 20]), np.array([0.0, math.log(2)])), [10, 0])
    with pytest.raises(ValueError, match="n must be whole numbers >= 1"):
        likelihood_bits(0, 0.1)
    with pytest.raises(ValueError, match="mean_loss must be finite and >= 0"):
        likelihood_bits(10, float("nan"))
    with pytest.raises(ValueError, match=r"accuracy must be in \[0, 1\]"):
        hard_decision_bits(10, 1.5)


def test_bits_are_refused_for_true_labels():
    rows = pd.DataFrame({"labels": ["true"], "n": [8], "final_loss": [0.1], "final_accuracy": [1.0],
                         "trainable_params": [32]})
    with pytest.raises(ValueError, match="labels must be 'random'"):
        capacity.with_bits(rows)


@pytest.fixture
def capacity_runs(monkeypatch, one_run_at_a_time):
    """Runs that store min(n, `capacity["bits"]`) bits (accuracy and loss set to match), recording the n run."""
    ran, limit = [], {"bits": 100}

    def run(config, device=None, progress=False, **checkpointing):
        ran.append(config.n)
        row = real_run(dataclasses.replace(config, epochs=1), device, progress)
        stored = min(config.n, limit["bits"])
        return row | {"config_id": config.config_id, "n": config.n, "final_accuracy": 1.0 if stored == config.n
                      else 0.75, "final_loss": math.log(2) * (1 - stored / config.n)}

    real_run = sweeps.run_config
    monkeypatch.setattr(sweeps, "run_config", run)
    return ran, limit


def test_a_curve_doubles_n_past_its_largest_memorized_n_and_finds_the_plateau(tmp_path, capacity_runs):
    ran, _ = capacity_runs
    curve = capacity.with_bits(capacity_curve(TINY, tmp_path / "r.csv", n_start=16, n_max=1024, beyond=2))
    assert ran == [16, 32, 64, 128, 256, 512]  # 128 is the first not memorized, then two doublings more
    summary = capacity_of(curve)
    assert summary["capacity_bits"] == pytest.approx(100) and summary["largest_n_memorized"] == 64
    assert summary["shape"] == "plateau"


def test_a_curve_still_rising_says_so_with_its_rate(capacity_runs, tmp_path):
    _, limit = capacity_runs
    limit["bits"] = float("inf")
    curve = capacity.with_bits(capacity_curve(TINY, tmp_path / "r.csv", n_start=16, n_max=64))
    assert capacity_of(curve)["shape"] == "not reached"  # every run memorized: the capacity is above n_max
    rising = curve.assign(final_accuracy=0.9, likelihood_bits=curve.n ** 0.5)
    summary = capacity_of(rising)
    assert summary["shape"] == "rising" and summary["rate"] == pytest.approx(0.5)


def test_an_interrupted_curve_resumes_from_the_results_file(tmp_path, capacity_runs):
    ran, _ = capacity_runs
    capacity_curve(TINY, tmp_path / "r.csv", n_start=16, n_max=64)  # stopped early: only up to 64
    ran.clear()
    capacity_curve(TINY, tmp_path / "r.csv", n_start=16, n_max=1024, beyond=1)
    assert ran == [128, 256]  # 16, 32, 64 read back from the file


def test_longer_prompts_start_at_the_last_prompts_largest_memorized_n(tmp_path, capacity_runs):
    ran, _ = capacity_runs
    rows, summaries = capacity_curves(TINY, tmp_path / "r.csv", [2, 1], n_start=16, n_max=256, beyond=1)
    assert list(summaries.prompt_len) == [1, 2]
    assert ran == [16, 32, 64, 128, 256, 64, 128, 256]  # p = 2 starts at 64, the largest n p = 1 memorized
    assert (summaries.prompt_numbers == summaries.prompt_len * TINY.hidden_size).all()


@pytest.mark.parametrize("change, message", [
    (dict(n_start=0), "n_start must be an integer >= 1"),
    (dict(n_max=8), "n_max must be at least n_start=16"),
    (dict(beyond=-1), "beyond must be an integer >= 0"),
])
def test_bad_curve_arguments_are_refused_before_any_run(tmp_path, capacity_runs, change, message):
    ran, _ = capacity_runs
    with pytest.raises(ValueError, match=message):
        capacity_curve(TINY, tmp_path / "r.csv", **(dict(n_start=16, n_max=64, beyond=1) | change))
    with pytest.raises(ValueError, match="base.labels must be 'random'"):
        capacity_curve(dataclasses.replace(TINY, labels="true", dataset="imdb"), tmp_path / "r.csv", n_start=16,
                       n_max=64)
    assert ran == []


def test_a_real_tiny_curve_stores_between_zero_and_n_bits(tmp_path):
    rows = capacity.with_bits(capacity_curve(dataclasses.replace(TINY, epochs=30, early_stop=False),
                                             tmp_path / "r.csv", n_start=8, n_max=32, beyond=1))
    assert ((rows.likelihood_bits >= 0) & (rows.likelihood_bits <= rows.n)).all()
    assert ((rows.hard_decision_bits >= 0) & (rows.hard_decision_bits <= rows.n + 1e-9)).all()


def test_seeded_curves_run_each_seed_and_resume_without_rerunning(tmp_path, capacity_runs):
    ran, _ = capacity_runs
    rows, summaries = capacity.seeded_capacity_curves(TINY, tmp_path / "r.csv", [1], 2, n_start=16, n_max=256,
                                                      beyond=1)
    assert sorted(summaries.seed) == [0, 1] and set(rows.seed) == {0, 1}
    assert ran == [16, 32, 64, 128, 256] * 2
    ran.clear()
    capacity.seeded_capacity_curves(TINY, tmp_path / "r.csv", [1], 3, n_start=16, n_max=256, beyond=1)
    assert ran == [16, 32, 64, 128, 256]  # only seed 2 is new
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        capacity.seeded_capacity_curves(TINY, tmp_path / "r.csv", [1], 0, n_start=16, n_max=256)


def synthetic_capacities(exponent, seeds, spread, rng):
    """Capacities C = 50 p^exponent, each seed's curve scaled by its own log-normal factor and each point jittered."""
    prompts = np.array([1, 2, 4, 8])
    factors = np.exp(rng.normal(0, spread, size=(seeds, 1)) + rng.normal(0, spread / 2, size=(seeds, len(prompts))))
    bits = 50 * prompts ** exponent * factors
    return pd.DataFrame([{"seed": s, "prompt_len": p, "capacity_bits": bits[s, i]}
                         for s in range(seeds) for i, p in enumerate(prompts)])


def test_the_capacity_exponent_is_recovered_inside_its_interval_and_one_seed_has_none():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(100):
        estimate = capacity.capacity_exponent(synthetic_capacities(1.3, 3, 0.2, rng))
        covered += estimate.admits(1.3)
        assert estimate.low < estimate.value < estimate.high
    assert covered >= 88  # a 95% interval; 88 of 100 is its binomial 1-in-1000 floor
    one = capacity.capacity_exponent(synthetic_capacities(1.3, 1, 0.2, rng))
    assert abs(one.value - 1.3) < 0.5 and np.isnan(one.low) and np.isnan(one.high) and not one.admits(1.3)


def test_a_gap_is_refused_and_a_prompt_that_stored_nothing_is_left_out():
    table = synthetic_capacities(1.0, 2, 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="capacity_bits must be a number >= 0"):
        capacity.capacity_exponent(table.iloc[1:])
    with pytest.raises(ValueError, match="capacity_bits must be a number >= 0"):
        capacity.capacity_exponent(table.assign(capacity_bits=-1.0))
    nothing_at_p1 = table.assign(capacity_bits=np.where((table.prompt_len == 1) & (table.seed == 0), 0.0,
                                                        table.capacity_bits))
    assert capacity.capacity_exponent(nothing_at_p1).value == pytest.approx(
        capacity.capacity_exponent(table[table.prompt_len > 1]).value)
    assert np.isnan(capacity.capacity_exponent(table[table.prompt_len == 1]).value)
