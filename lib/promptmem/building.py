"""What a run config trains: its frozen backbone and data (cached, so that the runs of a sweep share them), its
held-out pairs, its model and its training arguments (`setup_run`); and training it alone (`train_config`)."""

from __future__ import annotations

import functools

import torch

from . import backbones, data
from .configs import RunConfig
from .model import SoftPromptModel
from .training import TrainResult, default_device, train


def _backbone_arguments(config: RunConfig) -> dict:
    return dict(architecture=config.architecture, init_scale=config.init_scale, seed=config.backbone_seed,
                num_layers=config.num_layers, hidden_size=config.hidden_size, num_heads=config.num_heads,
                ffn_size=config.ffn_size)


@functools.lru_cache(maxsize=4)
def _frozen_backbone(**arguments) -> backbones.Backbone:
    return backbones.random_backbone(**arguments)


@functools.lru_cache(maxsize=4)
def _frozen_checkpoint(model_name: str, weights: str, init_scale: float | None, seed: int) -> backbones.Backbone:
    return backbones.pretrained_backbone(model_name, weights=weights, init_scale=init_scale, seed=seed)


def backbone_for(config: RunConfig) -> backbones.Backbone:
    """The frozen backbone a prompt config tunes; shared by every run of a sweep, as nothing trains it."""
    if config.model_name is not None:
        return _frozen_checkpoint(config.model_name, config.weights,
                                  config.init_scale if config.weights == "random" else None, config.backbone_seed)
    return _frozen_backbone(**_backbone_arguments(config))


@functools.lru_cache(maxsize=16)
def _dataset(dataset, n, seq_len, seed, labels, **options) -> data.PairData:
    return data.make_dataset(dataset, n, seq_len, seed=seed, labels=labels, **options)


def _tokenizer_source(config: RunConfig) -> str | None:
    return None if config.model_name is None else backbones.checkpoint_source(config.model_name)


def data_for(config: RunConfig) -> data.PairData:
    """The pairs a config memorizes, cut by the backbone's tokenizer. Low-rank tokens get the std of the random word
    embeddings (init_scale), as real tokens have."""
    options = dict(rank=config.rank, width=config.hidden_size, scale=config.init_scale) \
        if config.dataset == "low_rank" else dict(tokenizer=_tokenizer_source(config))
    return _dataset(config.dataset, config.n, config.seq_len, config.seed, config.labels, **options)


@functools.lru_cache(maxsize=16)
def _held_out(dataset, test_n, seq_len, seed, tokenizer, train_n) -> data.PairData:
    train_inputs = _dataset(dataset, train_n, seq_len, seed, "true", tokenizer=tokenizer).inputs
    return data.held_out_texts(dataset, test_n, seq_len, train_inputs, seed=seed, tokenizer=tokenizer)


def test_data_for(config: RunConfig) -> data.PairData | None:
    """The config's held-out pairs (None without test_n): none of them equals one of its training inputs."""
    if config.test_n is None:
        return None
    return _held_out(config.dataset, config.test_n, config.seq_len, config.seed, _tokenizer_source(config), config.n)


def build_model(config: RunConfig) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model a config trains and the data it memorizes: (model, inputs, labels)."""
    pairs = data_for(config)
    inputs = pairs.inputs
    if config.method == "prompt":
        model = SoftPromptModel(backbone_for(config), config.prompt_len, generation_steps=config.generation_steps or 0,
                                init=config.prompt_init, seed=config.seed)
    else:
        vocab_size = backbones.ROBERTA_VOCAB_SIZE
        if config.compact_vocab:
            inputs, vocab_size = data.compact_vocabulary(inputs)
        model = backbones.random_backbone(vocab_size=vocab_size, trainable=True, **_backbone_arguments(config))
    return model, inputs, pairs.labels


def setup_run(config: RunConfig) -> tuple[torch.nn.Module, torch.Tensor | None, dict]:
    """The model a config trains, its initial prompt (None for scratch) and its training arguments, data included:
    the same for a run alone (`training.train`) and in a batch (`batched.Run`)."""
    config.validate()
    model, inputs, labels = build_model(config)
    initial_prompt = model.prompt.detach().clone() if config.method == "prompt" else None
    held_out = test_data_for(config)
    arguments = dict(inputs=inputs, labels=labels, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                     weight_decay=config.weight_decay, early_stop=config.early_stop, seed=config.seed,
                     test_data=None if held_out is None else (held_out.inputs, held_out.labels),
                     eval_every=config.eval_every)
    return model, initial_prompt, arguments


def train_config(config: RunConfig, device: torch.device | None = None, progress: bool = False,
                 **checkpointing) -> tuple[torch.nn.Module, torch.Tensor | None, TrainResult]:
    """Build and train one config: (the trained model, its initial prompt or None, the training result). Runs are
    deterministic on the CPU, so training a finished config again gives back its prompt exactly. `checkpointing`:
    `checkpoint` and `checkpoint_every`, as for `train`."""
    model, initial_prompt, arguments = setup_run(config)
    result = train(model, **arguments, precision=config.precision, device=device or default_device(),
                   progress=progress, **checkpointing)
    return model, initial_prompt, result
