"""The frozen encoder's forward as a soft-prompt model reads it: the last hidden state at one position, computing only
what that position needs.

An encoder classifier is read at one position (the first data token). Every layer but the last runs at all L
positions, as its outputs are the last layer's keys and values; in the last layer only the readout position's query,
attention, output projection, LayerNorms and feed-forward block reach the head, so they run at that position alone.
For the 2-layer width-512 encoder at L = 16 that halves the last layer's work.

Attention is written out (Q K^T, softmax, A V): at the 10 to 60 positions of these experiments the CPU's fused sdpa
kernel is slower, above all in its backward pass (bench/bench_step.py). With `dtype=torch.bfloat16` the frozen
weights are cast once, the matmuls and the feed-forward activation run in bf16 (AMX on CPUs that have it, tensor
cores on GPUs), and the residual stream, LayerNorms and softmax stay fp32.

The architecture is BERT's (RoBERTa's, MiniLM's): post-LayerNorm blocks, learned positions, token type 0. The result
equals the Hugging Face forward's hidden state at that position (tested: fp32 within 1e-5, bf16 within its rounding).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")


class _Layer:
    """One encoder block's frozen weights: the fused Q/K/V projection, the attention output and the feed-forward
    block in the compute dtype, LayerNorm parameters in fp32."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype):
        attention = layer.attention.self

        def cast(*tensors):
            return torch.cat([t.detach() for t in tensors]).to(dtype)

        self.qkv = (cast(attention.query.weight, attention.key.weight, attention.value.weight),
                    cast(attention.query.bias, attention.key.bias, attention.value.bias))
        dense = layer.attention.output.dense
        self.attention_out = (cast(dense.weight), cast(dense.bias))
        self.attention_norm = _norm(layer.attention.output.LayerNorm)
        self.ffn_in = (cast(layer.intermediate.dense.weight), cast(layer.intermediate.dense.bias))
        self.ffn_out = (cast(layer.output.dense.weight), cast(layer.output.dense.bias))
        self.ffn_norm = _norm(layer.output.LayerNorm)


def _norm(layer_norm: nn.LayerNorm):
    return layer_norm.weight.detach().float(), layer_norm.bias.detach().float(), layer_norm.eps


class ReadoutEncoder:
    """`encoder(embeds, position)`: the last hidden state (B, d) at `position` of the frozen encoder of `backbone` (a
    `backbones.Backbone`), in fp32, with every weight in `dtype` for the matmuls. Gradients flow to `embeds` (the
    prompt) only."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype = torch.float32):
        hf_model, config = backbone.hf_model, backbone.config
        if config.model_type not in ENCODER_TYPES:
            raise ValueError(f"a readout encoder needs an encoder of type {ENCODER_TYPES}, got {config.model_type!r}")
        embeddings = hf_model.base_model.embeddings
        self.dtype = dtype
        self.position_table = embeddings.position_embeddings.weight.detach().float()
        self.token_type = embeddings.token_type_embeddings.weight.detach()[0].float()
        self.embedding_norm = _norm(embeddings.LayerNorm)
        self.layers = [_Layer(layer, dtype) for layer in hf_model.base_model.encoder.layer]
        self.heads = config.num_attention_heads
        self.activation = ACT2FN[config.hidden_act]
        self.position_offset = backbone.position_offset

    def __call__(self, embeds: torch.Tensor, position: int, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """`embeds` (B, L, d); `attention_mask` (B, L) of 0/1 hides the 0 positions as keys; `position_ids` (B, L)
        replace the default numbering from the model's first position id."""
        length = embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(length, device=embeds.device) + self.position_offset
        hidden = embeds.float() + self.position_table[position_ids] + self.token_type
        hidden = F.layer_norm(hidden, hidden.shape[-1:], *self.embedding_norm)
        key_bias = None
        if attention_mask is not None:
            key_bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        with torch.autocast(embeds.device.type, enabled=False):
            for layer in self.layers[:-1]:
                hidden = self._block(layer, hidden, hidden, key_bias)
            return self._block(self.layers[-1], hidden[:, position:position + 1], hidden, key_bias)[:, 0]

    def _linear(self, x: torch.Tensor, weights) -> torch.Tensor:
        return F.linear(x.to(self.dtype), *weights)

    def _block(self, layer: _Layer, queries_from: torch.Tensor, hidden: torch.Tensor, key_bias) -> torch.Tensor:
        """One post-LayerNorm block, its outputs at the positions of `queries_from` (a slice of `hidden`, or all of
        it), its keys and values from every position of `hidden`."""
        batch, length, width = hidden.shape
        queries = queries_from.shape[1]
        head_width = width // self.heads
        weight, bias = layer.qkv
        if queries == length:
            q, k, v = self._linear(hidden, layer.qkv).split(width, dim=-1)
        else:
            q = self._linear(queries_from, (weight[:width], bias[:width]))
            k, v = self._linear(hidden, (weight[width:], bias[width:])).split(width, dim=-1)
        q = q.view(batch, queries, self.heads, head_width).transpose(1, 2)
        k = k.view(batch, length, self.heads, head_width).transpose(1, 2)
        v = v.view(batch, length, self.heads, head_width).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).float() * head_width ** -0.5
        if key_bias is not None:
            scores = scores + key_bias
        context = (scores.softmax(-1).to(self.dtype) @ v).transpose(1, 2).reshape(batch, queries, width)
        attended = F.layer_norm(self._linear(context, layer.attention_out).float() + queries_from, (width,),
                                *layer.attention_norm)
        ffn = self._linear(self.activation(self._linear(attended, layer.ffn_in)), layer.ffn_out)
        return F.layer_norm(ffn.float() + attended, (width,), *layer.ffn_norm)
