import dataclasses
from unittest import mock

import pytest

from promptmem.profiles import INITIALIZATION, LOW_RANK, MEMORIZATION, PROFILE_ENV, resolve_profile
from promptmem.training import DEVICE_ENV


def test_auto_picks_by_device(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert resolve_profile("auto") == "quick"
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert resolve_profile("auto") == "paper"
        monkeypatch.setenv(DEVICE_ENV, "cpu")  # runs sent to the CPU on a machine with a GPU
        assert resolve_profile("auto") == "quick"


def test_environment_overrides_auto_only(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "quick")
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert resolve_profile("auto") == "quick"
    assert resolve_profile("paper") == "paper"
    monkeypatch.setenv(PROFILE_ENV, "fast")
    with pytest.raises(ValueError, match=PROFILE_ENV):
        resolve_profile("auto")


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match=r"profile must be one of \('auto', 'paper', 'medium', 'quick'\)"):
        resolve_profile("full")


def test_paper_profile_is_the_papers_setup():
    paper = MEMORIZATION["paper"]
    assert {1600, 2500, 3600} <= set(paper.n_values) and paper.base.lr == 0.005 and paper.base.epochs == 1000
    assert paper.search_max_prompt_len == 32  # the smallest memorizing p on the integers, not off a grid
    assert (paper.base.num_layers, paper.base.hidden_size, paper.base.seq_len) == (2, 512, 8)
    assert paper.base.dataset == "imdb" and paper.base.batch_size is None


def test_medium_profile_is_a_subset_of_the_papers():
    """Every medium run is a paper run (same fields, so the same config_id): a GPU later runs only the rest."""
    paper, medium = MEMORIZATION["paper"], MEMORIZATION["medium"]
    assert dataclasses.replace(medium.base, n=paper.base.n) == paper.base
    assert max(medium.prompt_lengths) <= paper.search_max_prompt_len and set(medium.n_values) <= set(paper.n_values)
    assert (medium.seq_len_n, medium.baseline_n_values) == (paper.seq_len_n, paper.baseline_n_values)
    assert set(medium.scan.init_scales) == set(paper.scan.init_scales)
    run = dict(n=1600, prompt_len=8, labels="random", init_scale=0.5)
    assert (dataclasses.replace(medium.base, **run).config_id == dataclasses.replace(paper.base, **run).config_id)
    low_rank, paper_low_rank = LOW_RANK["medium"], LOW_RANK["paper"]
    assert dataclasses.replace(low_rank.base, n=low_rank.n) == dataclasses.replace(paper_low_rank.base, n=low_rank.n)
    assert low_rank.n == paper_low_rank.n
    assert set(low_rank.ranks) <= set(paper_low_rank.ranks)
    assert set(low_rank.prompt_lengths) <= set(paper_low_rank.prompt_lengths)
    initialization, paper_initialization = INITIALIZATION["medium"], INITIALIZATION["paper"]
    assert initialization.base == paper_initialization.base and len(initialization.seeds) >= 3
    assert initialization.prompt_lengths == paper_initialization.prompt_lengths
    assert set(initialization.init_scales) <= set(paper_initialization.init_scales)


def test_low_rank_thresholds_are_over_seeds_and_a_bad_count_is_refused():
    assert all(LOW_RANK[profile].threshold_seeds >= 3 for profile in ("quick", "medium", "paper"))
    assert LOW_RANK["paper"].threshold_seeds >= 4  # enough to bracket p50 at 95%
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="threshold_seeds must be an integer >= 1"):
            dataclasses.replace(LOW_RANK["quick"], threshold_seeds=bad)
