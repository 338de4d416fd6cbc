"""Sequence-to-sequence memorization (notebook 07): a soft prompt on a frozen random causal Transformer (GPT-2
architecture) and its frozen language-model head, trained so that the model *generates* each pair's M target tokens
after its N input tokens.

    logits of target token t = h_t E[alphabet]^T,  h_t = decoder([P; x; y_1 .. y_{t-1}])[last position]

The head is GPT-2's: the final hidden state times the word-embedding matrix (the tied weights), restricted to the
output alphabet of V tokens. Data (`dataset`): 'random_tokens', N uniform ordinary tokens in and M tokens drawn
uniformly from the alphabet out (the alphabet: the first V ordinary tokens); 'imdb', a review's first N tokens in and
its next M tokens out, the alphabet the whole vocabulary. The prompt is trained with teacher forcing (cross-entropy
at the M target positions given the true earlier targets). A pair counts as memorized only when greedy decoding
(each arg-max fed back as the next input, through the key/value cache) generates all M targets exactly. Training
reads the final states through `Backbone.final_states` (the readout decoder: the last layer at the M target positions
alone); greedy decoding, which judges memorization, runs through Hugging Face's forward (`Backbone.extend`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

from . import data
from .backbones import GPT2_MAX_POSITIONS, ROBERTA_VOCAB_SIZE
from .building import backbone_for
from .configs import RunConfig, check_counts, check_numbers, fields_id
from .model import SoftPromptModel
from .rows import RESULTS_SCHEMA, device_name
from .store import ResultsStore
from .training import autocast, default_device

DATASETS = ("random_tokens", "imdb")


@dataclass(frozen=True)
class Seq2SeqConfig:
    """One prompt trained to make the frozen causal model generate n pairs' targets; stops once all are generated."""

    n: int
    prompt_len: int
    seq_len: int = 8  # N, the input tokens
    output_len: int = 1  # M, the target tokens
    alphabet_size: int | None = 2  # V, for 'random_tokens'; None for 'imdb' (the whole vocabulary)
    dataset: str = "random_tokens"
    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 4
    ffn_size: int = 512
    init_scale: float = 0.1
    backbone_seed: int = 0
    epochs: int = 100
    lr: float = 0.02
    weight_decay: float = 0.01
    seed: int = 0  # draws the data and the initial prompt

    @property
    def config_id(self) -> str:
        return fields_id(self)

    @property
    def output_vocabulary(self) -> int:
        """V: the size of the alphabet the head chooses from."""
        return ROBERTA_VOCAB_SIZE if self.alphabet_size is None else self.alphabet_size

    def validate(self) -> None:
        """Raise a ValueError naming the first bad field and its allowed range, before anything is built."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        check_counts(self, ("n", "prompt_len", "seq_len", "output_len", "num_layers", "hidden_size", "num_heads",
                            "ffn_size", "epochs"))
        ordinary = ROBERTA_VOCAB_SIZE - data.FIRST_ORDINARY_TOKEN
        if self.dataset == "imdb" and self.alphabet_size is not None:
            raise ValueError(f"alphabet_size must be None for dataset 'imdb' (its targets are any of the vocabulary's "
                             f"tokens), got {self.alphabet_size!r}")
        if self.dataset == "random_tokens" and not (isinstance(self.alphabet_size, int) and
                                                    2 <= self.alphabet_size <= ordinary):
            raise ValueError(f"alphabet_size (V) must be an integer in [2, {ordinary}] for dataset 'random_tokens', "
                             f"got {self.alphabet_size!r}")
        positions = self.prompt_len + self.seq_len + self.output_len - 1
        if positions > GPT2_MAX_POSITIONS:
            raise ValueError(f"prompt_len + seq_len + output_len - 1 (p + N + M - 1) must be at most "
                             f"{GPT2_MAX_POSITIONS}, the backbone's positions; got {positions}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        check_numbers(self, ("init_scale", "lr", "weight_decay"))
        if self.dataset == "imdb" and self.n > len(data.load_split("imdb", "train")):
            raise ValueError(f"n must be at most {len(data.load_split('imdb', 'train'))} (the size of imdb/train), "
                             f"got {self.n}")

    def classification_config(self) -> RunConfig:
        """Notebook 02's classification run (random tokens, random labels, K = 0) on the same backbone and data: with
        M = 1 and V = 2 it is this task with GPT-2's random score head in place of two rows of the tied LM head."""
        return RunConfig(n=self.n, prompt_len=self.prompt_len, seq_len=self.seq_len, dataset="random_tokens",
                         labels="random", architecture="gpt2", generation_steps=0, num_layers=self.num_layers,
                         hidden_size=self.hidden_size, num_heads=self.num_heads, ffn_size=self.ffn_size,
                         init_scale=self.init_scale, backbone_seed=self.backbone_seed, epochs=self.epochs, lr=self.lr,
                         weight_decay=self.weight_decay, seed=self.seed)


def pairs(config: Seq2SeqConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input token ids (n, N), targets as alphabet indices (n, M), the alphabet's token ids (V,)). Random tokens use
    notebook 02's inputs and label stream: at M = 1, V = 2 the targets are its random labels."""
    if config.dataset == "imdb":
        inputs, targets = data.text_continuations("imdb", config.n, config.seq_len, config.output_len, seed=config.seed)
        return inputs, targets, torch.arange(ROBERTA_VOCAB_SIZE)
    inputs = data.random_tokens(config.n, config.seq_len, seed=config.seed).inputs
    targets = data.random_labels(config.n, config.seed, config.alphabet_size, per_input=config.output_len)
    return inputs, targets, data.FIRST_ORDINARY_TOKEN + torch.arange(config.alphabet_size)


def output_logits(model: SoftPromptModel, alphabet: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The frozen LM head on final hidden states (..., d): logits (..., V) over the alphabet's tokens."""
    return hidden @ model.backbone.word_embeddings.weight[alphabet].to(hidden.dtype).T


def teacher_forced_logits(model: SoftPromptModel, alphabet: torch.Tensor, inputs: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
    """(n, M, V): the logits of each target token given the input and the true earlier targets, in one pass."""
    device = next(model.parameters()).device  # where the model is, wherever the caller's tensors are
    alphabet, inputs, targets = alphabet.to(device), inputs.to(device), targets.to(device)
    embeds = model.embed(torch.cat([inputs, alphabet[targets[:, :-1]]], dim=1))
    return output_logits(model, alphabet, model.backbone.final_states(embeds, targets.shape[1]))


@torch.no_grad()
def greedy_decode(model: SoftPromptModel, alphabet: torch.Tensor, inputs: torch.Tensor,
                  output_len: int) -> torch.Tensor:
    """(n, M) alphabet indices generated freely: each step's arg-max is fed back as the next input token, one
    incremental pass over the key/value cache per step (Backbone.extend, as notebook 02's continuous generation)."""
    device = next(model.parameters()).device  # where the model is, wherever the caller's tensors are
    alphabet, inputs = alphabet.to(device), inputs.to(device)
    hidden, cache = model.backbone.extend(model.embed(inputs))
    generated = []
    for step in range(output_len):
        token = output_logits(model, alphabet, hidden[:, -1]).argmax(-1)
        generated.append(token)
        if step + 1 < output_len:
            hidden, cache = model.backbone.extend(model.backbone.embed_tokens(alphabet[token][:, None]), cache)
    return torch.stack(generated, dim=1)


def exact_matches(model: SoftPromptModel, alphabet: torch.Tensor, inputs: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
    """Per pair (n,): whether greedy decoding generates all M targets. Free generation, not teacher forcing: a prompt
    whose teacher-forced arg-maxes are right only given the true earlier targets does not count."""
    generated = greedy_decode(model, alphabet, inputs, targets.shape[1])  # where the model is
    return (generated == targets.to(generated.device)).all(dim=1)


def training_precision(device: torch.device) -> str:
    """bf16 autocast on a GPU that computes it natively (compute capability 8.0 on); fp32 elsewhere: on a CPU Hugging
    Face's forward under bf16 autocast measured slower than fp32 at width 128 (training.select_precision), and the
    readout decoder in bf16 has not been measured on this task."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "bf16"
    return "fp32"


def fit(config: Seq2SeqConfig, device: torch.device | str | None = None) -> dict:
    """Train the prompt by full-batch AdamW on the teacher-forced cross-entropy until greedy decoding in fp32
    generates every pair's targets (checked whenever the teacher-forced arg-maxes are all right, which it needs) or
    the epochs run out; return the results row, its exact match measured in fp32."""
    config.validate()
    start = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    precision = training_precision(device)
    backbone = backbone_for(config.classification_config()).to(device)
    model = SoftPromptModel(backbone, config.prompt_len, seed=config.seed)
    inputs, targets, alphabet = (tensor.to(device) for tensor in pairs(config))
    optimizer = torch.optim.AdamW([model.prompt], lr=config.lr, weight_decay=config.weight_decay)
    status, epochs_run = "completed", config.epochs
    for epoch in range(config.epochs):
        with autocast(device, precision):
            logits = teacher_forced_logits(model, alphabet, inputs, targets).float()
        # confirmed by free generation in fp32, as the final exact match is measured: a stop is never a false one
        if (logits.argmax(-1) == targets).all() and exact_matches(model, alphabet, inputs, targets).all():
            status, epochs_run = "memorized", epoch
            break
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = teacher_forced_logits(model, alphabet, inputs, targets)
        matches = exact_matches(model, alphabet, inputs, targets)
        row = {"config_id": config.config_id, "results_schema": RESULTS_SCHEMA, **asdict(config),
               "exact_match": float(matches.float().mean()),
               # all M arg-maxes right given the true earlier targets: the same pairs as exact_match in exact
               # arithmetic (greedy decoding then feeds back the targets), kept to check that
               "teacher_forced_match": float((logits.argmax(-1) == targets).all(dim=1).float().mean()),
               "teacher_forced_token_accuracy": float((logits.argmax(-1) == targets).float().mean()),
               "final_loss": float(nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())),
               "epochs_run": epochs_run, "status": status, "precision_used": precision,
               "prompt_numbers": model.prompt.numel(), "output_vocabulary": config.output_vocabulary,
               "target_bits": config.n * config.output_len * math.log2(config.output_vocabulary),
               "device": device_name(device), "torch_version": torch.__version__,
               "seconds": time.perf_counter() - start}
    return row


def run_sweep(configs: list[Seq2SeqConfig], results_path, recompute: bool = False) -> pd.DataFrame:
    """Train every config not yet in the results file (all of them with `recompute`), storing each row as it ends, so
    an interrupted sweep resumes; return the configs' rows in their order."""
    return ResultsStore(results_path).fill(configs, fit, recompute)
