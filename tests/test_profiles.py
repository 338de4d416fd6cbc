from unittest import mock

import pytest

from promptmem.profiles import MEMORIZATION, PROFILE_ENV, resolve_profile


def test_auto_picks_by_device(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert resolve_profile("auto") == "quick"
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert resolve_profile("auto") == "paper"


def test_environment_overrides_auto_only(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "quick")
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert resolve_profile("auto") == "quick"
    assert resolve_profile("paper") == "paper"
    monkeypatch.setenv(PROFILE_ENV, "fast")
    with pytest.raises(ValueError, match=PROFILE_ENV):
        resolve_profile("auto")


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match=r"profile must be one of \('auto', 'paper', 'quick'\)"):
        resolve_profile("full")


def test_paper_profile_is_the_papers_setup():
    paper = MEMORIZATION["paper"]
    assert paper.n_values == (1600, 2500, 3600) and paper.base.lr == 0.005 and paper.base.epochs == 1000
    assert (paper.base.num_layers, paper.base.hidden_size, paper.base.seq_len) == (2, 512, 8)
    assert paper.base.dataset == "imdb" and paper.base.batch_size is None
