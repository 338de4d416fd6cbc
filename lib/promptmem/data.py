"""Datasets to memorize: IMDb and SST-2 texts cut to N tokens, random token sequences, and continuous
sequences of controlled rank.

Sources: `datasets.load_dataset("stanfordnlp/imdb" | "stanfordnlp/sst2")` and the tokenizer
`FacebookAI/roberta-base` from the Hugging Face hub. When the environment variable PROMPTMEM_DATA_DIR names a
folder (the layout of the project's shared data: `imdb/train.parquet`, `sst2/train.parquet`,
`roberta-base-tokenizer/`), everything loads from there and the hub is never contacted.

Truncation: a text becomes its first N tokens (RoBERTa's, or those of the pretrained backbone's own tokenizer),
tokenized *without* special tokens (no <s>, no </s>): the prompt takes the place of any prefix, and the readout is
the first data token. Texts shorter than N tokens are
skipped, so every example has exactly N real tokens and no padding. Examples whose N tokens repeat an earlier
example are skipped too: two identical inputs with different labels cannot both be memorized, so with
`distinct=True` (the default) 100% memorization is always attainable.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

DATA_DIR_ENV = "PROMPTMEM_DATA_DIR"
TOKENIZER_HUB_NAME = "FacebookAI/roberta-base"
LOCAL_TOKENIZER_FOLDER = "roberta-base-tokenizer"
# name -> (hub id, text column, splits)
TEXT_DATASETS = {
    "imdb": ("stanfordnlp/imdb", "text", ("train", "test")),
    "sst2": ("stanfordnlp/sst2", "sentence", ("train", "validation")),
}
DATASET_NAMES = (*TEXT_DATASETS, "random_tokens", "low_rank")
LABEL_KINDS = ("true", "random")
FIRST_ORDINARY_TOKEN = 4  # RoBERTa ids 0-3 are <s>, <pad>, </s>, <unk>


@dataclass
class PairData:
    """n input-output pairs: inputs of exactly N tokens, labels in [0, num_labels)."""

    inputs: torch.Tensor  # token ids (n, N) int64, or token embeddings (n, N, d) float32
    labels: torch.Tensor  # (n,) int64


def local_data_dir() -> Path | None:
    """The folder PROMPTMEM_DATA_DIR names, checked; None when the variable is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{DATA_DIR_ENV}={value!r} is not a folder; set it to a folder holding imdb/, sst2/ "
                         f"and {LOCAL_TOKENIZER_FOLDER}/, or unset it to load from the Hugging Face hub")
    return folder


def _hub_unreachable(what: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"could not load {what} from the Hugging Face hub ({type(error).__name__}: {error}). "
                        f"Offline, set {DATA_DIR_ENV} to a folder with the layout imdb/train.parquet, "
                        f"sst2/train.parquet, {LOCAL_TOKENIZER_FOLDER}/vocab.json + merges.txt")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


@functools.lru_cache(maxsize=8)
def load_split(dataset: str, split: str = "train") -> pd.DataFrame:
    """One split as a frame with columns `text` and `label`, in the source's row order."""
    _check_choice("dataset", dataset, TEXT_DATASETS)
    hub_id, text_column, splits = TEXT_DATASETS[dataset]
    _check_choice("split", split, splits)
    folder = local_data_dir()
    if folder is None:
        try:
            import datasets  # imported here: a slow import only the hub path needs

            frame = datasets.load_dataset(hub_id, split=split).to_pandas()
        except Exception as error:  # no network, hub down, rate limit, no `datasets`: all mean "use the local copy"
            raise _hub_unreachable(f"{hub_id} ({split})", error) from error
    else:
        path = folder / dataset / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{DATA_DIR_ENV} is set but {path} does not exist")
        try:
            frame = pd.read_parquet(path)
        except Exception as error:
            raise ValueError(f"{path} (from {DATA_DIR_ENV}) is not a readable parquet file: {error}") from error
    missing = {text_column, "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"{dataset}/{split} lacks the columns {sorted(missing)} of {hub_id}")
    return frame.rename(columns={text_column: "text"})[["text", "label"]].reset_index(drop=True)


@functools.lru_cache(maxsize=4)
def load_tokenizer(source: str | None = None):
    """The roberta-base byte-level BPE tokenizer (50,265 tokens) when `source` is None or roberta-base's hub name (then
    PROMPTMEM_DATA_DIR's copy serves), else the tokenizer of the checkpoint `source` (a hub name or a folder) names."""
    from transformers import AutoTokenizer, RobertaTokenizerFast

    if source not in (None, TOKENIZER_HUB_NAME):
        try:
            return AutoTokenizer.from_pretrained(source)
        except Exception as error:
            raise _hub_unreachable(f"the tokenizer {source}", error) from error
    folder = local_data_dir()
    if folder is None:
        try:
            return AutoTokenizer.from_pretrained(TOKENIZER_HUB_NAME)
        except Exception as error:
            raise _hub_unreachable(f"the tokenizer {TOKENIZER_HUB_NAME}", error) from error
    path = folder / LOCAL_TOKENIZER_FOLDER
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        raise FileNotFoundError(f"{DATA_DIR_ENV} is set but {path} lacks vocab.json and merges.txt")
    # from_pretrained on the folder, not vocab_file=...: transformers 5 ignores that keyword (5-token tokenizer)
    return RobertaTokenizerFast.from_pretrained(str(path))


def _check_size(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def random_labels(n: int, seed: int, num_labels: int = 2, per_input: int | None = None) -> torch.Tensor:
    """Labels drawn uniformly, from a stream of their own (changing the labels never changes the inputs): (n,), or
    (n, per_input) for sequences of targets, whose first column is then the (n,) draw."""
    size = n if per_input is None else (n, per_input)
    return torch.from_numpy(np.random.default_rng([seed, 1]).integers(0, num_labels, size=size))


def truncate_texts(texts, tokenizer, seq_len: int, n: int, distinct: bool = True, chunk: int = 512,
                   exclude: torch.Tensor | None = None, distinct_len: int | None = None):
    """The first `seq_len` tokens of texts, in order, until `n` qualify; returns (rows used, ids (k, seq_len)).
    With `distinct`, texts whose first `distinct_len` tokens (None: all seq_len) repeat an earlier text's are skipped;
    so are inputs equal to a row of `exclude` (token ids (m, distinct_len or seq_len))."""
    _check_size("seq_len (N)", seq_len)
    distinct_len = distinct_len or seq_len
    rows, ids_kept = [], []
    seen = set() if exclude is None else {tuple(ids) for ids in exclude.tolist()}
    for start in range(0, len(texts), chunk):
        batch = [str(t) for t in texts[start:start + chunk]]
        encoded = tokenizer(batch, add_special_tokens=False, truncation=True, max_length=seq_len)["input_ids"]
        for offset, ids in enumerate(encoded):
            key = tuple(ids[:distinct_len])
            if len(ids) < seq_len or (distinct and key in seen):
                continue
            seen.add(key)
            rows.append(start + offset)
            ids_kept.append(ids)
            if len(rows) == n:
                return rows, torch.tensor(ids_kept, dtype=torch.long)
    return rows, torch.tensor(ids_kept, dtype=torch.long).reshape(-1, seq_len)


def sample_texts(dataset: str, n: int, seq_len: int, *, seed: int = 0, labels: str = "true",
                 split: str = "train", distinct: bool = True, tokenizer: str | None = None,
                 exclude: torch.Tensor | None = None) -> PairData:
    """n examples of `dataset` drawn with `seed`, each cut to exactly `seq_len` tokens of `tokenizer` (None: RoBERTa's,
    else a checkpoint's name or folder), none equal to a row of `exclude` (token ids, e.g. the training inputs)."""
    _check_choice("labels", labels, LABEL_KINDS)
    _check_size("n", n)
    _check_size("seq_len (N)", seq_len)
    frame = load_split(dataset, split)
    if n > len(frame):
        raise ValueError(f"n must be at most {len(frame)} (the size of {dataset}/{split}), got {n}")
    order = np.random.default_rng(seed).permutation(len(frame))
    texts = frame["text"].to_numpy()[order]
    rows, input_ids = truncate_texts(texts, load_tokenizer(tokenizer), seq_len, n, distinct, exclude=exclude)
    if len(rows) < n:
        raise ValueError(f"n must be at most {len(rows)} for {dataset}/{split} at N={seq_len}: only that many "
                         f"texts have at least N tokens{' and distinct first N tokens' if distinct else ''}"
                         f"{' not among the excluded inputs' if exclude is not None else ''}")
    if labels == "true":
        label_ids = torch.from_numpy(frame["label"].to_numpy()[order][rows].astype(np.int64))
    else:
        label_ids = random_labels(n, seed)
    return PairData(input_ids, label_ids)


def random_tokens(n: int, seq_len: int, *, seed: int = 0, vocab_size: int = 50265, num_labels: int = 2) -> PairData:
    """Synthetic data: uniform random ordinary tokens and uniform random labels."""
    _check_size("n", n)
    _check_size("seq_len (N)", seq_len)
    _check_size("vocab_size", vocab_size, FIRST_ORDINARY_TOKEN + 1)
    rng = np.random.default_rng([seed, 0])
    input_ids = torch.from_numpy(rng.integers(FIRST_ORDINARY_TOKEN, vocab_size, size=(n, seq_len)))
    return PairData(input_ids, random_labels(n, seed, num_labels))


def text_continuations(dataset: str, n: int, seq_len: int, output_len: int, *,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n texts of `dataset` (train split) drawn with `seed`: their first `seq_len` (N) tokens as inputs (n, N) and the
    `output_len` (M) tokens that follow as targets (n, M), RoBERTa's tokens. Texts shorter than N + M tokens are
    skipped, and so are those whose first N tokens repeat an earlier text's: one input, one continuation."""
    _check_size("n", n)
    _check_size("seq_len (N)", seq_len)
    _check_size("output_len (M)", output_len)
    frame = load_split(dataset, "train")
    texts = frame["text"].to_numpy()[np.random.default_rng(seed).permutation(len(frame))]
    rows, ids = truncate_texts(texts, load_tokenizer(), seq_len + output_len, n, distinct_len=seq_len)
    if len(rows) < n:
        raise ValueError(f"n must be at most {len(rows)} for {dataset} at N={seq_len}, M={output_len}: only that many "
                         f"texts have N + M tokens and distinct first N tokens")
    return ids[:, :seq_len], ids[:, seq_len:]


def low_rank_sequences(n: int, seq_len: int, width: int, rank: int, *, seed: int = 0, scale: float = 1.0,
                       labels: str = "true") -> PairData:
    """Continuous sequences (n, N, width) whose n*N tokens span exactly an r-dimensional subspace.

    Generator: a random orthonormal basis U (width x r) and latent coordinates z ~ N(0, s^2) of shape (n, N, r) give
    the tokens x = z U^T. With s = scale * sqrt(width / r) every entry of x has standard deviation `scale` whatever
    r is, so inputs of different rank reach the backbone at the same size (pass the word-embedding std).
    Labels 'true' follow a fixed rule of the latent coordinates alone, y = 1[sum_t <w_t, z_t> > 0] with
    w ~ N(0, 1) of shape (N, r), a balanced linear rule; 'random' labels are uniform and ignore the inputs.
    """
    _check_choice("labels", labels, LABEL_KINDS)
    _check_size("n", n)
    _check_size("seq_len (N)", seq_len)
    _check_size("width", width)
    if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= width:
        raise ValueError(f"rank must be an integer in [1, width={width}], got {rank!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(width, rank, generator=generator, dtype=torch.float64))
    latent = torch.randn(n, seq_len, rank, generator=generator, dtype=torch.float64) * scale * (width / rank) ** 0.5
    inputs = (latent @ basis.T).float()
    if labels == "random":
        return PairData(inputs, random_labels(n, seed))
    rule = torch.randn(seq_len, rank, generator=generator, dtype=torch.float64)
    return PairData(inputs, ((latent * rule).sum((1, 2)) > 0).long())


def make_dataset(dataset: str, n: int, seq_len: int, *, seed: int = 0, labels: str = "true",
                 rank: int | None = None, width: int | None = None, scale: float = 1.0,
                 tokenizer: str | None = None) -> PairData:
    """One entry point for the sweeps: a text dataset with its true or random labels (cut by `tokenizer`), random
    tokens, or low-rank continuous sequences (`rank`, `width` and `scale` are for those alone)."""
    _check_choice("dataset", dataset, DATASET_NAMES)
    if dataset == "low_rank":
        if rank is None or width is None:
            raise ValueError("dataset 'low_rank' needs rank and width")
        return low_rank_sequences(n, seq_len, width, rank, seed=seed, scale=scale, labels=labels)
    if dataset == "random_tokens":
        if labels != "random":
            raise ValueError(f"labels must be 'random' for dataset 'random_tokens', got {labels!r}")
        return random_tokens(n, seq_len, seed=seed)
    return sample_texts(dataset, n, seq_len, seed=seed, labels=labels, tokenizer=tokenizer)


def held_out_texts(dataset: str, n: int, seq_len: int, train_inputs: torch.Tensor, *, seed: int = 0,
                   tokenizer: str | None = None) -> PairData:
    """n examples with their true labels from the dataset's test split (IMDb's test, SST-2's validation), drawn with
    `seed`, none of whose N tokens equal a training input: a test set the memorized pairs cannot leak into."""
    _check_choice("dataset", dataset, TEXT_DATASETS)
    test_split = TEXT_DATASETS[dataset][2][1]
    return sample_texts(dataset, n, seq_len, seed=seed, split=test_split, tokenizer=tokenizer, exclude=train_inputs)


def compact_vocabulary(input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Renumber the tokens that occur to 0..V-1, for small from-scratch models; returns (ids, V)."""
    used, remapped = torch.unique(input_ids, return_inverse=True)
    return remapped, len(used)
