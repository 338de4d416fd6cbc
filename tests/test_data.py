import sys

import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

from promptmem import data
from tests.conftest import requires_local_data


@requires_local_data
def test_tokenizer_is_roberta_base():
    tokenizer = data.load_tokenizer()
    assert len(tokenizer) == 50265 and tokenizer.mask_token_id == 50264
    assert tokenizer("Hello world, this movie was great!")["input_ids"] == [0, 31414, 232, 6, 42, 1569, 21, 372, 328, 2]


@requires_local_data
@pytest.mark.parametrize("dataset, seq_len", [("imdb", 8), ("sst2", 8), ("imdb", 4), ("sst2", 16)])
def test_texts_are_cut_to_exactly_n_tokens(dataset, seq_len):
    sample = data.sample_texts(dataset, 50, seq_len, seed=1)
    assert sample.inputs.shape == (50, seq_len) and sample.labels.shape == (50,)
    assert len({tuple(row) for row in sample.inputs.tolist()}) == 50  # distinct inputs
    special = {0, 1, 2, 3}  # no <s>, <pad>, </s>, <unk>
    assert not special & set(sample.inputs.flatten().tolist())


@requires_local_data
def test_true_labels_belong_to_their_texts():
    frame = data.load_split("imdb", "train")
    sample = data.sample_texts("imdb", 5, 8, seed=2)
    tokenizer = data.load_tokenizer()
    for ids, label in zip(sample.inputs.tolist(), sample.labels.tolist()):
        prefix = tokenizer.decode(ids)
        rows = frame[frame.text.str.startswith(prefix)]
        assert len(rows) >= 1 and label in set(rows.label)


@requires_local_data
def test_sampling_is_seeded_and_random_labels_keep_the_inputs():
    first, again = data.sample_texts("sst2", 20, 8, seed=3), data.sample_texts("sst2", 20, 8, seed=3)
    shuffled = data.sample_texts("sst2", 20, 8, seed=3, labels="random")
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.labels, again.labels)
    assert torch.equal(first.inputs, shuffled.inputs) and not torch.equal(first.labels, shuffled.labels)
    assert not torch.equal(first.inputs, data.sample_texts("sst2", 20, 8, seed=4).inputs)


@requires_local_data
def test_local_folder_has_the_hub_schema():
    imdb, sst2 = data.load_split("imdb", "test"), data.load_split("sst2", "validation")
    assert (len(imdb), len(sst2)) == (25000, 872)
    assert list(imdb.columns) == ["text", "label"] and set(imdb.label) == {0, 1}


@requires_local_data
def test_n_larger_than_the_dataset_is_refused():
    with pytest.raises(ValueError, match="n must be at most 872"):
        data.sample_texts("sst2", 873, 8, split="validation")


def test_no_local_data_and_no_hub_names_the_variable(monkeypatch):
    datasets = pytest.importorskip("datasets")  # a declared dependency; GPU images may lack it

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(RuntimeError, match=data.DATA_DIR_ENV):
        data.load_split("imdb", "train")


def test_no_local_data_and_no_datasets_package_names_the_variable(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(RuntimeError, match=f"ModuleNotFoundError.*{data.DATA_DIR_ENV}"):
        data.load_split("sst2", "validation")


def test_local_folder_is_used_instead_of_the_hub(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")

    (tmp_path / "sst2").mkdir()
    pd.DataFrame({"sentence": ["a b ", "c "], "label": [0, 1], "idx": [0, 1]}).to_parquet(
        tmp_path / "sst2" / "train.parquet")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was contacted"))
    frame = data.load_split("sst2", "train")
    assert frame.text.tolist() == ["a b ", "c "] and frame.label.tolist() == [0, 1]


@pytest.mark.parametrize("setup, error, message", [
    ("missing", ValueError, "is not a folder"),
    ("empty", FileNotFoundError, "does not exist"),
    ("corrupt", ValueError, "not a readable parquet"),
])
def test_bad_local_folder_is_explained(monkeypatch, tmp_path, setup, error, message):
    folder = tmp_path / "data"
    if setup != "missing":
        folder.mkdir()
    if setup == "corrupt":
        (folder / "imdb").mkdir()
        (folder / "imdb" / "train.parquet").write_bytes(b"not parquet at all")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    with pytest.raises(error, match=message):
        data.load_split("imdb", "train")


@pytest.mark.parametrize("call, message", [
    (lambda: data.make_dataset("mnist", 10, 8), "dataset must be one of"),
    (lambda: data.make_dataset("imdb", 10, 8, labels="noisy"), "labels must be one of"),
    (lambda: data.make_dataset("random_tokens", 10, 8, labels="true"), "labels must be 'random'"),
    (lambda: data.random_tokens(0, 8), "n must be"),
    (lambda: data.random_tokens(5, 0), "seq_len"),
    (lambda: data.load_split("imdb", "validation"), "split must be one of"),
])
def test_bad_data_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_random_tokens_are_seeded_and_ordinary():
    first, again = data.random_tokens(40, 6, seed=5), data.random_tokens(40, 6, seed=5)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.labels, again.labels)
    assert first.inputs.min() >= data.FIRST_ORDINARY_TOKEN and set(first.labels.tolist()) == {0, 1}


class CharTokenizer:
    """One token per character: enough to test truncation without the real tokenizer."""

    def __call__(self, texts, add_special_tokens, truncation, max_length):
        assert not add_special_tokens
        return {"input_ids": [[ord(c) for c in text][:max_length] for text in texts]}


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(alphabet="abc", max_size=6), max_size=30), seq_len=st.integers(1, 5),
       n=st.integers(1, 30))
def test_truncation_property(texts, seq_len, n):
    rows, ids = data.truncate_texts(texts, CharTokenizer(), seq_len, n, chunk=7)
    eligible = [i for i, t in enumerate(texts) if len(t) >= seq_len]
    assert ids.shape == (len(rows), seq_len) and len(rows) <= n
    assert rows == sorted(rows) and set(rows) <= set(eligible)
    for row, token_ids in zip(rows, ids.tolist()):
        assert token_ids == [ord(c) for c in texts[row][:seq_len]]
    assert len({tuple(r) for r in ids.tolist()}) == len(rows)  # distinct
    prefixes = {texts[i][:seq_len] for i in eligible}
    assert len(rows) == min(n, len(prefixes))  # nothing usable was skipped


def test_compact_vocabulary_keeps_the_pattern():
    ids = torch.tensor([[7, 900, 7], [12, 900, 5]])
    remapped, vocab_size = data.compact_vocabulary(ids)
    assert vocab_size == 4 and remapped.max() == 3
    assert torch.equal(remapped, torch.tensor([[1, 3, 1], [2, 3, 0]]))


@pytest.mark.parametrize("rank", [1, 2, 7, 24])
def test_low_rank_data_has_exactly_rank_r(rank):
    pairs = data.low_rank_sequences(40, 6, 24, rank, seed=0, scale=0.3)
    tokens = pairs.inputs.reshape(-1, 24)
    assert pairs.inputs.shape == (40, 6, 24) and pairs.inputs.dtype == torch.float32
    assert torch.linalg.matrix_rank(tokens) == rank
    assert abs(tokens.std().item() / 0.3 - 1) < 0.15  # the same entry scale at every rank


def test_low_rank_labels_are_seeded_balanced_and_set_by_the_rule():
    first, again = data.low_rank_sequences(200, 4, 16, 3, seed=1), data.low_rank_sequences(200, 4, 16, 3, seed=1)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.labels, again.labels)
    assert 0.3 < first.labels.float().mean() < 0.7  # balanced
    other = data.low_rank_sequences(200, 4, 16, 3, seed=2)
    assert not torch.equal(first.labels, other.labels)
    shuffled = data.low_rank_sequences(200, 4, 16, 3, seed=1, labels="random")
    assert torch.equal(shuffled.inputs, first.inputs) and not torch.equal(shuffled.labels, first.labels)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "rank must be"), (dict(rank=17), "rank must be"), (dict(scale=0.0), "scale"),
    (dict(labels="rule"), "labels must be one of"),
])
def test_bad_low_rank_arguments_are_refused(kwargs, message):
    arguments = dict(n=10, seq_len=4, width=16, rank=2) | kwargs
    with pytest.raises(ValueError, match=message):
        data.low_rank_sequences(**arguments)


@requires_local_data
def test_held_out_texts_come_from_the_test_split_and_never_repeat_a_training_input():
    train = data.sample_texts("sst2", 500, 2, seed=5)
    test = data.held_out_texts("sst2", 100, 2, train.inputs, seed=5)
    assert test.inputs.shape == (100, 2)
    assert not {tuple(row) for row in train.inputs.tolist()} & {tuple(row) for row in test.inputs.tolist()}
    unfiltered = data.sample_texts("sst2", 100, 2, seed=5, split="validation")
    assert {tuple(r) for r in unfiltered.inputs.tolist()} & {tuple(r) for r in train.inputs.tolist()}, \
        "at N = 2 some validation sentences start like a training sentence: else the filter had nothing to do"
    validation = data.load_split("sst2", "validation")
    tokenizer = data.load_tokenizer()
    for ids, label in zip(test.inputs[:5].tolist(), test.labels[:5].tolist()):
        rows = validation[validation.text.str.startswith(tokenizer.decode(ids))]
        assert len(rows) >= 1 and label in set(rows.label)  # true labels of validation sentences


def test_held_out_texts_need_a_text_dataset():
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.held_out_texts("random_tokens", 10, 4, torch.zeros(1, 4, dtype=torch.long))
