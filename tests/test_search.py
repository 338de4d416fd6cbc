"""The smallest memorizing prompt on the integers: a guess, doubling, then bisection (or one step down at a time from a
guess that memorizes), resumable from the results file."""

import dataclasses

import pytest

from promptmem import search, sweeps
from promptmem.search import Bracket, bracket, next_prompt_len, smallest_memorizing_prompt
from tests.test_sweeps import TINY


@pytest.fixture
def threshold_runs(monkeypatch, one_run_at_a_time):
    """Runs that memorize exactly from prompt length `threshold["p"]` on, or where `threshold["rule"]` says (a row as
    run_config makes it, its accuracy set by the rule), recording the prompt lengths run."""
    ran, threshold = [], {"p": 5}

    def run(config, device=None, progress=False, **checkpointing):
        ran.append(config.prompt_len)
        row = real_run(dataclasses.replace(config, epochs=1), device, progress)
        return row | {"config_id": config.config_id, "prompt_len": config.prompt_len,
                      "final_accuracy": 1.0 if threshold.get("rule", lambda c: c.prompt_len >= threshold["p"])(config)
                      else 0.9}

    real_run = sweeps.run_config
    monkeypatch.setattr(sweeps, "run_config", run)
    return ran, threshold


def test_the_search_doubles_then_bisects_to_the_exact_threshold(tmp_path, threshold_runs):
    ran, _ = threshold_runs
    found = smallest_memorizing_prompt(TINY, tmp_path / "r.csv", max_prompt_len=32, progress=False)
    assert found == Bracket(4, 5) and found.exact
    assert ran == [1, 2, 4, 8, 6, 5]  # doubling to the first memorizing length, then halving the bracket


def test_an_interrupted_search_resumes_without_rerunning(tmp_path, threshold_runs, monkeypatch):
    ran, _ = threshold_runs
    real_sweep = search.run_sweep
    calls = []

    def sweep_then_fail(*arguments, **options):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_sweep(*arguments, **options)

    monkeypatch.setattr(search, "run_sweep", sweep_then_fail)
    with pytest.raises(KeyboardInterrupt):
        smallest_memorizing_prompt(TINY, tmp_path / "r.csv", max_prompt_len=32, progress=False)
    monkeypatch.setattr(search, "run_sweep", real_sweep)
    assert smallest_memorizing_prompt(TINY, tmp_path / "r.csv", max_prompt_len=32, progress=False) == Bracket(4, 5)
    assert ran == [1, 2, 4, 8, 6, 5]  # nothing ran twice
    assert smallest_memorizing_prompt(TINY, tmp_path / "r.csv", max_prompt_len=32, progress=False) == Bracket(4, 5)
    assert len(ran) == 6  # a finished search runs nothing


def test_no_memorizing_prompt_up_to_the_limit_and_a_first_guess(tmp_path, threshold_runs):
    ran, threshold = threshold_runs
    threshold["p"] = 100
    assert smallest_memorizing_prompt(TINY, tmp_path / "a.csv", max_prompt_len=12, progress=False) == Bracket(12, None)
    assert ran == [1, 2, 4, 8, 12]
    ran.clear()
    threshold["p"] = 3
    assert smallest_memorizing_prompt(TINY, tmp_path / "b.csv", max_prompt_len=32, start=8,
                                      progress=False) == Bracket(2, 3)
    assert ran == [8, 7, 6, 5, 4, 3, 2]  # a guess that memorizes: one step down at a time until a run fails
    ran.clear()
    assert smallest_memorizing_prompt(TINY, tmp_path / "c.csv", max_prompt_len=32, start=3,
                                      progress=False) == Bracket(2, 3)
    assert ran == [3, 2]  # a right first guess costs two runs


def test_a_failing_run_above_a_memorizing_one_does_not_move_the_bracket(tmp_path, threshold_runs):
    ran, threshold = threshold_runs
    threshold["rule"] = lambda config: config.prompt_len in (6, 7)  # not monotone: 8 fails although 6 memorizes
    path = tmp_path / "r.csv"
    assert smallest_memorizing_prompt(TINY, path, max_prompt_len=32, start=7, progress=False) == Bracket(5, 6)
    assert ran == [7, 6, 5]
    sweeps.run_sweep([dataclasses.replace(TINY, prompt_len=8)], path, progress=False)
    assert bracket(TINY, path, 32) == Bracket(5, 6)  # the failing 8 lies above the smallest memorizing length
    assert next_prompt_len(Bracket(0, 1), 32) is None  # p = 1 memorizes: nothing shorter exists
    assert next_prompt_len(Bracket(6, 12), 32, start=9) == 9  # a guess inside the bracket goes before its middle
    assert next_prompt_len(Bracket(6, None), 32, start=9) == 9 and next_prompt_len(Bracket(9, None), 32, start=9) == 18


@pytest.mark.parametrize("options, message", [(dict(max_prompt_len=0), "max_prompt_len"),
                                              (dict(max_prompt_len=8, start=9), "start must be"),
                                              (dict(max_prompt_len=8, recompute="yes"), "recompute must be"),
                                              (dict(max_prompt_len=600), r"N \+ p")])
def test_bad_search_arguments_are_refused_before_any_run(tmp_path, threshold_runs, options, message):
    with pytest.raises(ValueError, match=message):
        smallest_memorizing_prompt(TINY, tmp_path / "r.csv", progress=False, **options)
    assert threshold_runs[0] == []


def test_the_bracket_reads_the_finished_rows(tmp_path, threshold_runs):
    smallest_memorizing_prompt(TINY, tmp_path / "r.csv", max_prompt_len=32, progress=False)
    assert bracket(TINY, tmp_path / "r.csv", 32) == Bracket(4, 5)
    assert bracket(dataclasses.replace(TINY, seed=1), tmp_path / "r.csv", 32) == Bracket(0, None)  # another setting


def test_recompute_trains_every_step_anew_and_reads_only_its_own_runs(tmp_path, threshold_runs):
    ran, threshold = threshold_runs
    path = tmp_path / "r.csv"
    smallest_memorizing_prompt(TINY, path, max_prompt_len=32, progress=False)
    threshold["p"] = 3  # what the runs give now (another machine, another library)
    ran.clear()
    assert smallest_memorizing_prompt(TINY, path, max_prompt_len=32, recompute=True, progress=False) == Bracket(2, 3)
    assert ran == [1, 2, 4, 3]  # the stored 5 and 6 were not taken as finished


def test_searches_along_n_start_at_the_previous_threshold_grown_with_n(tmp_path, threshold_runs):
    ran, threshold = threshold_runs
    threshold["rule"] = lambda config: config.prompt_len >= {32: 2, 48: 2, 64: 5}[config.n]
    brackets, rows = search.smallest_memorizing_prompts(TINY, tmp_path / "r.csv", "n", [64, 32, 48], 32,
                                                        progress=False)
    assert brackets.to_dict("records") == [{"n": 32, "fails": 1, "memorizes": 2, "exact": True},
                                           {"n": 48, "fails": 1, "memorizes": 2, "exact": True},
                                           {"n": 64, "fails": 4, "memorizes": 5, "exact": True}]
    # n = 48 starts at 2 * 48 / 32 = 3 (memorizes: down to 1, which fails); n = 64 at 2 * 64 / 48 -> 3 (fails: doubling)
    assert ran == [1, 2, 3, 2, 1, 3, 6, 4, 5]
    assert list(zip(rows.n, rows.prompt_len)) == [(32, 1), (32, 2), (48, 1), (48, 2), (48, 3), (64, 3), (64, 4),
                                                  (64, 5), (64, 6)]
    assert search.grown_guess(6, 2500, 3600, 32) == 9 and search.grown_guess(20, 100, 200, 32) == 32  # capped
    with pytest.raises(ValueError, match="field must name"):
        search.smallest_memorizing_prompts(TINY, tmp_path / "r.csv", "prompt_len", [1], 32)
