"""Notebook 07's task: pairs of sequences, teacher-forced training through the frozen LM head, and memorization as
exact match under free (greedy) generation."""

import dataclasses

import pandas as pd
import pytest
import torch

from promptmem import data, seq2seq
from promptmem.building import backbone_for, data_for
from promptmem.model import SoftPromptModel
from promptmem.profiles import SEQ2SEQ
from promptmem.seq2seq import Seq2SeqConfig
from promptmem.store import REPLOT_ENV

from .conftest import requires_local_data

TINY = Seq2SeqConfig(n=4, prompt_len=4, seq_len=3, output_len=2, alphabet_size=4, hidden_size=32, num_heads=2,
                     ffn_size=64, init_scale=0.3, epochs=300, lr=0.05)


@pytest.mark.parametrize("field, value, message", [
    ("dataset", "sst2", "dataset must be one of"),
    ("n", 0, "n must be an integer >= 1"),
    ("output_len", 0, r"output_len must be an integer >= 1"),
    ("seq_len", 2.0, r"seq_len must be an integer >= 1"),
    ("alphabet_size", 1, r"alphabet_size \(V\) must be an integer in \[2, 50261\]"),
    ("alphabet_size", None, r"alphabet_size \(V\) must be an integer in \[2, 50261\]"),
    ("output_len", 1020, r"p \+ N \+ M - 1\) must be at most 1024"),
    ("num_heads", 3, r"hidden_size \(32\) must be divisible by num_heads \(3\)"),
    ("lr", 0.0, r"lr must be a number in \(0, 10\)"),
])
def test_bad_fields_are_refused_by_name_before_anything_is_built(field, value, message, monkeypatch):
    monkeypatch.setattr(seq2seq, "backbone_for", lambda config: pytest.fail("built a model for a bad config"))
    with pytest.raises(ValueError, match=message):
        seq2seq.fit(dataclasses.replace(TINY, **{field: value}))


def test_imdb_targets_are_the_whole_vocabulary():
    with pytest.raises(ValueError, match="alphabet_size must be None for dataset 'imdb'"):
        dataclasses.replace(TINY, dataset="imdb").validate()


def test_one_binary_output_token_is_notebook_02s_classification_data():
    config = dataclasses.replace(TINY, n=32, output_len=1, alphabet_size=2)
    inputs, targets, alphabet = seq2seq.pairs(config)
    classification = data_for(config.classification_config())
    assert torch.equal(inputs, classification.inputs)
    assert torch.equal(targets[:, 0], classification.labels)
    assert alphabet.tolist() == [data.FIRST_ORDINARY_TOKEN, data.FIRST_ORDINARY_TOKEN + 1]


def test_random_targets_cover_the_alphabet_and_no_more():
    inputs, targets, alphabet = seq2seq.pairs(dataclasses.replace(TINY, n=200, output_len=3, alphabet_size=5))
    assert inputs.shape == (200, 3) and targets.shape == (200, 3) and len(alphabet) == 5
    assert set(targets.unique().tolist()) == set(range(5))


@requires_local_data
def test_imdb_pairs_are_a_reviews_first_tokens_and_the_ones_that_follow():
    config = dataclasses.replace(TINY, dataset="imdb", alphabet_size=None, n=40, seq_len=4, output_len=3)
    inputs, targets, alphabet = seq2seq.pairs(config)
    assert inputs.shape == (40, 4) and targets.shape == (40, 3) and len(alphabet) == config.output_vocabulary
    assert len({tuple(row) for row in inputs.tolist()}) == 40  # one continuation per input
    texts = data.load_split("imdb", "train")["text"].tolist()
    tokenizer = data.load_tokenizer()  # byte-level BPE: the tokens decode to the text's exact first characters
    for row in torch.cat([inputs, targets], dim=1).tolist():
        assert any(text.startswith(tokenizer.decode(row)) for text in texts)


def small_model(config=TINY):
    return SoftPromptModel(backbone_for(config.classification_config()), config.prompt_len, seed=config.seed)


def test_greedy_decoding_through_the_cache_is_decoding_from_scratch():
    model = small_model()
    inputs, _, alphabet = seq2seq.pairs(TINY)
    generated = seq2seq.greedy_decode(model, alphabet, inputs, 5)
    sequence = inputs
    with torch.no_grad():
        for step in range(5):  # the whole sequence again at every step, no cache
            hidden = model.backbone.encode(model.embed(sequence))[:, -1]
            token = seq2seq.output_logits(model, alphabet, hidden).argmax(-1)
            assert torch.equal(token, generated[:, step])
            sequence = torch.cat([sequence, alphabet[token][:, None]], dim=1)


def test_exact_match_is_free_generation_not_teacher_forcing():
    """Targets whose later tokens are what the model predicts given the true earlier ones, but whose first token is
    not what it generates: teacher forcing gets all but the first token right, free generation fails every pair."""
    model = small_model()
    inputs, _, alphabet = seq2seq.pairs(TINY)
    first = seq2seq.greedy_decode(model, alphabet, inputs, 1)[:, 0]
    targets = ((first + 1) % len(alphabet))[:, None]
    with torch.no_grad():
        for _ in range(TINY.output_len - 1):  # extend by the teacher-forced arg-max after the wrong first token
            padded = torch.cat([targets, targets[:, :1]], dim=1)
            predicted = seq2seq.teacher_forced_logits(model, alphabet, inputs, padded)[:, -1].argmax(-1)
            targets = torch.cat([targets, predicted[:, None]], dim=1)
        right = seq2seq.teacher_forced_logits(model, alphabet, inputs, targets).argmax(-1) == targets
    assert right[:, 1:].all() and not right[:, 0].any()
    assert not seq2seq.exact_matches(model, alphabet, inputs, targets).any()


def test_a_fit_generates_every_pair_and_reports_it():
    row = seq2seq.fit(TINY)
    assert row["status"] == "memorized" and row["exact_match"] == 1.0 and row["epochs_run"] < TINY.epochs
    assert row["teacher_forced_match"] == 1.0 and row["teacher_forced_token_accuracy"] == 1.0
    assert row["prompt_numbers"] == TINY.prompt_len * TINY.hidden_size
    assert row["target_bits"] == TINY.n * TINY.output_len * 2  # log2(4) bits per token
    assert row["precision_used"] == "fp32" and row["config_id"] == TINY.config_id


def test_a_short_budget_is_reported_as_not_memorized():
    row = seq2seq.fit(dataclasses.replace(TINY, n=32, prompt_len=1, epochs=2))
    assert row["status"] == "completed" and row["epochs_run"] == 2 and row["exact_match"] < 1


def test_the_sweep_resumes_and_refuses_to_train_while_replotting(tmp_path, monkeypatch):
    configs = [dataclasses.replace(TINY, epochs=3, prompt_len=p) for p in (1, 2)]
    path = tmp_path / "results.csv"
    seq2seq.run_sweep(configs[:1], path)
    fitted, original = [], seq2seq.fit
    monkeypatch.setattr(seq2seq, "fit", lambda config: fitted.append(config) or original(config))
    rows = seq2seq.run_sweep(configs, path)
    assert fitted == configs[1:]
    assert rows.prompt_len.tolist() == [1, 2] and pd.api.types.is_float_dtype(rows.exact_match)
    monkeypatch.setenv(REPLOT_ENV, "1")
    with pytest.raises(RuntimeError, match="re-plot"):
        seq2seq.run_sweep([dataclasses.replace(TINY, epochs=4)], path)


@pytest.mark.parametrize("profile", ["quick", "medium"])
def test_the_profiles_panels_are_valid_and_share_their_common_point(profile):
    settings = SEQ2SEQ[profile]
    panels = settings.panels(0.1)
    for configs in panels.values():
        for config in configs:
            config.validate()
    base_at_n = {config.config_id for config in panels["n"] if config.n == settings.panel_n and config.seed == 0}
    assert base_at_n <= {config.config_id for config in panels["M"]}  # the base's M appears in both panels
    assert {config.seed for config in panels["n"]} == set(range(settings.seeds))  # panel (a) over its seeds
    assert {config.seed for config in panels["M"]} == {0}
    assert all(config.output_len == 1 and config.alphabet_size == 2 for config in panels["agreement"])
