"""Which configs of a sweep can train together in one pass (`shared_pass_key`), and their runs cut into chunks that
fit a pass's token budget without wasting it on padding (`plan_chunks`)."""

from __future__ import annotations

import torch

from .configs import CHECKPOINT_FIELDS, RunConfig
from .training import select_precision


def shared_pass_key(config: RunConfig):
    """Configs with the same key can train in one pass: prompt runs on the same frozen encoder with the same N and
    precision (with minibatches also the same n and batch size, so that their steps line up). None: alone."""
    if config.method != "prompt" or config.architecture == "gpt2":
        return None
    backbone = (config.model_name, config.weights, config.init_scale, config.backbone_seed,
                *(getattr(config, name) for name in CHECKPOINT_FIELDS))
    minibatches = (config.n, config.batch_size) if config.batch_size is not None and config.batch_size < config.n \
        else None
    return backbone, config.seq_len, config.precision, minibatches


def shared_pass_groups(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """The configs grouped by `shared_pass_key`, in the order of their first config; unbatchable ones alone."""
    groups: dict = {}
    for position, config in enumerate(configs):
        key = shared_pass_key(config)
        groups.setdefault(("alone", position) if key is None else key, []).append(config)
    return list(groups.values())


def default_tokens_per_pass(config: RunConfig, device: torch.device) -> int:
    """How many tokens (rows x (p + N)) one training pass may hold. On a GPU: 60% of its free memory over the
    activation memory of a token in forward and backward, per layer about 34 d + 5 heads L bytes in 16 bits
    (Korthikanti et al. 2022), twice that in fp32. On the CPU: 2^16."""
    if device.type != "cuda":
        return 2 ** 16
    free_bytes, _ = torch.cuda.mem_get_info(device)
    length = config.prompt_len + config.seq_len
    per_token = config.num_layers * (34 * config.hidden_size + 5 * config.num_heads * length)
    precision = select_precision(device) if config.precision == "auto" else config.precision
    return int(0.6 * free_bytes / (per_token * (2 if precision == "fp32" else 1)))


# A pass pads every prompt to the longest of its chunk: the real tokens must be at least this share of those computed.
MIN_PASS_EFFICIENCY = 0.75


def plan_chunks(group: list[RunConfig], tokens_per_pass: int) -> list[list[RunConfig]]:
    """The runs of a group, by prompt length, as many per chunk as fit `tokens_per_pass` while padding wastes at most
    1 - MIN_PASS_EFFICIENCY of the pass (a run larger than the budget goes alone)."""
    def rows(config):
        return config.n if config.batch_size is None else min(config.batch_size, config.n)

    def fits(configs):
        padded = sum(map(rows, configs)) * (max(c.prompt_len for c in configs) + configs[0].seq_len)
        real = sum(rows(c) * (c.prompt_len + c.seq_len) for c in configs)
        return padded <= tokens_per_pass and real >= MIN_PASS_EFFICIENCY * padded

    ordered = sorted(group, key=lambda config: config.prompt_len)
    chunks = [[ordered[0]]]
    for config in ordered[1:]:
        if fits(chunks[-1] + [config]):
            chunks[-1].append(config)
        else:
            chunks.append([config])
    return chunks
