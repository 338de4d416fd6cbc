"""The soft-prompt model: p trainable vectors prepended to the data token embeddings of a frozen backbone.

    encoder:  logits = head( encoder([P; E(x)])[p] )
    causal:   logits = head( h_K ),  h_0 = decoder([P; E(x)])[-1],  h_k = decoder(h_{k-1} | cache)

P (p x d) is the only trainable tensor; E is the backbone's frozen word embedding. An encoder is read at position
p, the first data token, so the frozen head always sees a hidden state that depends on the input. A causal model
is read at its last position, the only one that sees the whole input, after K continuous generation steps
(K = 0: the last data token); gradients flow back through all K steps into the prompt. The prompt is stored in
fp32 and only cast inside autocast regions, so the optimizer state stays fp32 under mixed precision; there the
encoder is read by `Backbone.readout` through the readout encoder (its weights in bf16 or fp16, the last layer at
position p alone).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone

PROMPT_INITS = ("normal", "vocab", "text")


def initial_prompt(backbone: Backbone, prompt_len: int, init: str = "vocab", *, std: float | None = None,
                   text_ids: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """The starting prompt (p x d, fp32).

    normal: N(0, std^2) entries (std defaults to the std of the word embeddings);
    vocab:  p rows of the word-embedding matrix drawn without replacement (Lester et al., 2021);
    text:   the embeddings of `text_ids`, repeated to length p when the text is shorter.
    """
    if init not in PROMPT_INITS:
        raise ValueError(f"prompt init must be one of {PROMPT_INITS}, got {init!r}")
    table = backbone.word_embeddings.weight.detach().float()
    generator = torch.Generator().manual_seed(seed)
    if init == "normal":
        std = float(table.std()) if std is None else std
        if not std > 0:
            raise ValueError(f"prompt init std must be > 0, got {std!r}")
        return torch.randn(prompt_len, table.shape[1], generator=generator) * std
    if init == "vocab":
        rows = torch.randperm(table.shape[0], generator=generator)[:prompt_len]
        return table[rows.to(table.device)].cpu().clone()
    if text_ids is None or len(text_ids) == 0:
        raise ValueError("prompt init 'text' needs text_ids: the token ids of a non-empty text")
    ids = torch.as_tensor(text_ids).repeat(prompt_len // len(text_ids) + 1)[:prompt_len]
    return table[ids.to(table.device)].cpu().clone()


class SoftPromptModel(nn.Module):
    def __init__(self, backbone: Backbone, prompt_len: int, *, generation_steps: int = 0, init: str = "vocab",
                 init_std: float | None = None, text_ids: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        if not isinstance(prompt_len, int) or isinstance(prompt_len, bool) or prompt_len < 1:
            raise ValueError(f"prompt_len must be an integer >= 1, got {prompt_len!r}")
        if not isinstance(generation_steps, int) or generation_steps < 0:
            raise ValueError(f"generation_steps (K) must be an integer >= 0, got {generation_steps!r}")
        if generation_steps and not backbone.is_causal:
            raise ValueError(f"generation_steps (K) must be 0 for an encoder backbone (only causal models "
                             f"generate), got {generation_steps}")
        if prompt_len + generation_steps + 1 > backbone.max_sequence_length:
            raise ValueError(f"prompt_len + generation_steps must be at most {backbone.max_sequence_length - 1} for "
                             f"this backbone (its positions cover {backbone.max_sequence_length} tokens), "
                             f"got {prompt_len} + {generation_steps}")
        self.backbone = backbone
        self.prompt_len = prompt_len
        self.generation_steps = generation_steps
        start = initial_prompt(backbone, prompt_len, init, std=init_std, text_ids=text_ids, seed=seed)
        self.prompt = nn.Parameter(start.to(backbone.word_embeddings.weight.device))

    @property
    def readout_index(self) -> int:
        """Encoders: the position of the first data token, the hidden state the frozen head classifies."""
        return self.prompt_len

    def check_sequence_length(self, seq_len: int) -> None:
        limit = self.backbone.max_sequence_length - self.prompt_len - self.generation_steps
        if not 1 <= seq_len <= limit:
            raise ValueError(f"the data sequence length N must be in [1, {limit}] with prompt_len={self.prompt_len} "
                             f"and generation_steps={self.generation_steps} (N + p + K <= "
                             f"{self.backbone.max_sequence_length} positions), got {seq_len}")

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """[prompt; embeddings of the data] (B, p + N, d); `inputs` are token ids or token embeddings."""
        data = self.backbone.embed_tokens(inputs)
        prompt = self.prompt.to(data.dtype).expand(data.shape[0], -1, -1)
        return torch.cat([prompt, data], dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.check_sequence_length(inputs.shape[1])
        embeds = self.embed(inputs)
        if self.backbone.is_causal:
            return self.backbone.classify(self.backbone.generate(embeds, self.generation_steps))
        return self.backbone.classify(self.backbone.readout(embeds, self.readout_index))
