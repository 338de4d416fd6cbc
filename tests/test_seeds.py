"""Thresholds over seeds: success rates with Wilson intervals, p50 and its bracket, the seeded search (resumable),
and the bootstrap interval of p50's exponent on a synthetic success model with a known law."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from promptmem import search, seeds, sweeps
from promptmem.seeds import (ExponentEstimate, Rate, SeededBracket, brackets_of_rates, crossing, p50_exponent,
                             rates_of_runs, seeded_bracket_from, seeded_threshold, seeded_thresholds,
                             significant_digits, student_t_975, threshold_runs, thresholds_of, wilson_interval)
from tests.test_sweeps import TINY


def test_wilson_intervals_of_small_samples():
    low, high = wilson_interval([0, 1, 4, 2], [1, 1, 4, 4])
    assert np.allclose(low, [0, 0.2065, 0.5101, 0.15], atol=1e-3)
    assert np.allclose(high, [0.7935, 1, 1, 0.85], atol=1e-3)
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(3, 2)


def test_only_four_unanimous_seeds_are_sure_of_a_side_of_one_half():
    assert Rate(4, 4).surely_over_half() and Rate(0, 4).surely_under_half()
    assert not Rate(3, 3).surely_over_half() and not Rate(0, 3).surely_under_half()
    assert not Rate(3, 4).surely_over_half() and Rate(2, 4).reaches_half() and not Rate(1, 4).reaches_half()


def test_the_bracket_of_rates():
    found = seeded_bracket_from({2: Rate(0, 4), 3: Rate(1, 4), 4: Rate(2, 4), 5: Rate(3, 4), 6: Rate(4, 4)}, 4)
    assert found == SeededBracket(below=2, p50=4, above=6, seeds=4) and not found.exact
    one_seed = seeded_bracket_from({3: Rate(0, 1), 4: Rate(1, 1)}, 1)
    assert one_seed == SeededBracket(below=0, p50=4, above=None, seeds=1)  # one seed is never sure: open
    assert seeded_bracket_from({3: Rate(0, 4), 4: Rate(4, 4)}, 4).exact


@pytest.fixture
def seeded_runs(monkeypatch, one_run_at_a_time):
    """Runs whose success depends on (prompt length, seed): seed s memorizes from p = threshold[s] on (a row as
    run_config makes it, its accuracy set by the rule), recording the (p, seed, backbone seed) run."""
    ran, thresholds = [], {0: 4, 1: 5, 2: 5, 3: 7}

    def run(config, device=None, progress=False, **checkpointing):
        ran.append((config.prompt_len, config.seed, config.backbone_seed))
        row = real_run(dataclasses.replace(config, epochs=1), device, progress)
        return row | {"config_id": config.config_id, "prompt_len": config.prompt_len, "seed": config.seed,
                      "final_accuracy": 1.0 if config.prompt_len >= thresholds[config.seed] else 0.999}

    real_run = sweeps.run_config
    monkeypatch.setattr(sweeps, "run_config", run)
    return ran, thresholds


def test_the_seeded_search_finds_p50_and_the_bracket_its_intervals_allow(tmp_path, seeded_runs):
    ran, _ = seeded_runs
    found = seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=16, seeds=4, start=6, progress=False)
    # rates: p = 3: 0/4, 4: 1/4, 5: 3/4, 6: 3/4, 7: 4/4
    assert found == SeededBracket(below=3, p50=5, above=7, seeds=4)
    prompts = [p for p, _, _ in ran]
    assert sorted(set(prompts)) == [3, 4, 5, 6, 7, 9, 12]  # p50, then each interval end
    assert all(prompts.count(p) == 4 for p in set(prompts))  # every step trains all four seeds, once
    at_999 = seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=16, seeds=4, start=6, target=0.999,
                              progress=False)
    assert at_999.p50 is not None and at_999.p50 <= 3  # a laxer criterion: every run so far reaches 99.9%


def test_an_interrupted_seeded_search_resumes_without_rerunning(tmp_path, seeded_runs, monkeypatch):
    ran, _ = seeded_runs
    real_sweep = seeds.run_sweep
    calls = []

    def sweep_then_fail(*arguments, **options):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_sweep(*arguments, **options)

    monkeypatch.setattr(seeds, "run_sweep", sweep_then_fail)
    with pytest.raises(KeyboardInterrupt):
        seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=16, seeds=4, progress=False)
    monkeypatch.setattr(seeds, "run_sweep", real_sweep)
    found = seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=16, seeds=4, progress=False)
    assert found == SeededBracket(below=3, p50=5, above=7, seeds=4)
    assert len(ran) == len(set(ran))  # nothing ran twice
    count = len(ran)
    assert seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=16, seeds=4, progress=False) == found
    assert len(ran) == count  # a finished search runs nothing


def test_one_seed_searches_p50_alone_and_leaves_the_bracket_open(tmp_path, seeded_runs):
    ran, _ = seeded_runs
    found = seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=16, seeds=1, progress=False)
    assert found == SeededBracket(below=0, p50=4, above=None, seeds=1)
    assert {seed for _, seed, _ in ran} == {0}


def test_seeded_thresholds_along_n_take_a_seed_count_per_value(tmp_path, seeded_runs):
    ran, _ = seeded_runs
    brackets, rates = seeded_thresholds(TINY, tmp_path / "r.csv", "n", [16, 8], 16, seeds=[1, 4], progress=False)
    assert brackets.n.tolist() == [8, 16] and brackets.seeds.tolist() == [4, 1]  # counts follow their values
    assert set(rates.columns) >= {"n", "prompt_len", "successes", "trials", "rate", "low", "high"}
    assert (rates[rates.n == 8].trials == 4).all() and (rates[rates.n == 16].trials == 1).all()
    count = len(ran)
    laxer, laxer_rates = thresholds_of(TINY, tmp_path / "r.csv", "n", [16, 8], 16, seeds=[1, 4], target=0.999)
    assert len(ran) == count and laxer_rates.prompt_len.tolist() == rates.prompt_len.tolist()  # reads, trains nothing
    assert (laxer.p50 <= brackets.p50).all() and (laxer_rates.successes >= rates.successes).all()
    with pytest.raises(ValueError, match="seeds must be one count or one per value"):
        seeded_thresholds(TINY, tmp_path / "r.csv", "n", [8, 16], 16, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        seeded_threshold(TINY, tmp_path / "r.csv", 16, seeds=0)


def test_a_search_along_a_value_the_threshold_need_not_grow_with_starts_at_the_last_p50(tmp_path, seeded_runs):
    ran, _ = seeded_runs
    brackets, _ = seeded_thresholds(TINY, tmp_path / "r.csv", "n", [8, 16], 16, seeds=1, start_growth=0,
                                    progress=False)
    assert brackets.p50.tolist() == [4, 4]
    assert [p for p, _, _ in ran] == [1, 2, 4, 3, 4, 3]  # n = 16 starts at n = 8's p50, not at 8
    ran.clear()
    seeded_thresholds(TINY, tmp_path / "grown.csv", "n", [8, 16], 16, seeds=1, progress=False)
    assert [p for p, _, _ in ran][4:] == [8, 7, 6, 5, 4, 3]  # grown in proportion to n, it steps down to p50
    with pytest.raises(ValueError, match=r"start_growth must be a number in \[0, 1\]"):
        seeded_thresholds(TINY, tmp_path / "r.csv", "n", [8, 16], 16, seeds=1, start_growth=2)


def test_the_backbone_seed_is_an_axis_of_its_own(tmp_path, seeded_runs):
    ran, _ = seeded_runs
    seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=4, seeds=2, start=4, seed_field="backbone_seed",
                     progress=False)
    assert {(seed, backbone) for _, seed, backbone in ran} == {(0, 0), (0, 1)}  # the data seed stays
    with pytest.raises(ValueError, match="seed_field must be one of"):
        seeded_threshold(TINY, tmp_path / "r.csv", max_prompt_len=4, seeds=2, seed_field="init_scale")


def synthetic_rates(exponent, seeds, rng, ns=(400, 800, 1600, 3200, 6400), constant=0.05, width=0.1):
    """A success model with a known p50 law: P(success | n, p) = logistic((ln p - ln p50(n)) / width), p50(n) =
    constant * n^exponent; the rates of `seeds` seeds at every integer p around each p50."""
    rows = []
    for n in ns:
        p50 = constant * n ** exponent
        for p in range(max(1, int(0.6 * p50)), int(1.6 * p50) + 2):
            success = 1 / (1 + np.exp(-(np.log(p) - np.log(p50)) / width))
            rows.append(dict(n=n, prompt_len=p, successes=rng.binomial(seeds, success), trials=seeds))
    return pd.DataFrame(rows)


def test_the_bootstrap_recovers_a_known_exponent_and_one_seed_is_visibly_wide():
    many = p50_exponent(synthetic_rates(0.7, 8, np.random.default_rng(1)), replicates=1000)
    one = p50_exponent(synthetic_rates(0.7, 1, np.random.default_rng(1)), replicates=1000)
    assert many.admits(0.7) and one.admits(0.7)
    assert many.high - many.low < 0.3
    assert one.high - one.low > 2.5 * (many.high - many.low)
    assert not many.admits(0.5) and many.high < 1  # the synthetic law is neither √n nor linear


def test_the_crossing_interpolates_between_adjacent_prompt_lengths_only():
    prompts = np.array([2.0, 3.0, 6.0])
    rates = np.array([[0.0, 1.0, 1.0], [0.25, 0.75, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert np.allclose(crossing(prompts, rates), [np.sqrt(6), np.sqrt(6), 6, 2, 7])


def test_digits_follow_the_interval_width():
    assert [significant_digits(w) for w in (0.4, 0.04, 3.0, float("inf"))] == [1, 2, 0, 1]
    assert ExponentEstimate(1.07, -0.3, 1.21).formula() == "p50 ∝ n^1, 95% (0, 1)"  # no "-0"
    assert ExponentEstimate(0.91, 0.83, 1.06).describe().startswith("p50 ∝ n^0.9, 95% interval (0.8, 1.1): excludes")


def test_threshold_runs_search_or_grid_with_every_criterion(tmp_path, seeded_runs):
    ran, _ = seeded_runs
    rows, brackets, rates = threshold_runs(TINY, tmp_path / "s.csv", ("n", [8, 16]), seeds=4,
                                           vary={"labels": ["random"]}, search_max_prompt_len=16, progress=False)
    assert set(brackets.criterion) == {1.0, 0.999} and len(brackets) == 4
    assert brackets[brackets.criterion == 1.0][["below", "p50", "above"]].values.tolist() == [[3, 5, 7]] * 2
    assert len(rows) == len(ran) and set(rows.seed) == {0, 1, 2, 3}
    ran.clear()
    rows, brackets, rates = threshold_runs(TINY, tmp_path / "g.csv", ("n", [8]), seeds=4, prompt_lengths=[2, 4, 8],
                                           progress=False)
    assert sorted(ran) == sorted((p, s, 0) for p in (2, 4, 8) for s in range(4))  # the grid, every seed
    assert rates[rates.criterion == 1.0].successes.tolist() == [0, 1, 4]
    assert brackets[brackets.criterion == 1.0][["below", "p50", "above"]].values.tolist() == [[2, 8, 8]]


def test_rates_and_brackets_of_rows_that_are_no_run_config():
    rows = pd.DataFrame([dict(n=n, prompt_len=p, seed=seed, exact_match=1.0 if p >= threshold else 0.9)
                         for n, thresholds in ((16, (2, 2, 4, 4)), (32, (4, 8, 8, 8)))
                         for seed, threshold in enumerate(thresholds) for p in (1, 2, 4, 8)])
    rates = rates_of_runs(rows, ["n"], column="exact_match")
    assert rates[rates.n == 16].successes.tolist() == [0, 2, 4, 4] and (rates.trials == 4).all()
    assert rates[["low", "high"]].values.tolist()[2] == pytest.approx(list(wilson_interval(4, 4)))
    brackets = brackets_of_rates(rates, ["n"])
    assert brackets[["n", "below", "p50", "above", "seeds"]].values.tolist() == [[16, 1, 2, 4, 4], [32, 2, 8, 8, 4]]
    assert brackets.exact.tolist() == [False, False]


def test_student_t_quantiles_match_their_tables():
    assert student_t_975(2) == pytest.approx(4.303)
    assert student_t_975(20) == pytest.approx(2.086, abs=1e-3)
    assert student_t_975(60) == pytest.approx(2.000, abs=1e-3)
