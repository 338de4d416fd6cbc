"""The frozen backbone's forward as a soft-prompt model reads it: the last hidden state at one position, computing only
what that position needs.

An encoder classifier is read at one position (the first data token). Every layer but the last runs at all L
positions, as its outputs are the last layer's keys and values; in the last layer only the readout position's query,
attention, output projection, LayerNorms and feed-forward block reach the head, so they run at that position alone.
For the 2-layer width-512 encoder at L = 16 that halves the last layer's work.

A causal decoder (GPT-2) is read at its last position, after K continuous tokens generated from it (each the last
final hidden state fed back as the next input, one incremental pass over the key/value cache; `Backbone.generate`).
Each pass runs every layer but the last at its new positions; the last layer takes keys and values there too, for
the passes after it, and its query, attention output and feed-forward block at the last position alone.

Attention is written out (Q K^T, softmax, A V): at the 10 to 60 positions of these experiments the CPU's fused sdpa
kernel is slower, above all in its backward pass (bench/bench_step.py). With `dtype=torch.bfloat16` the frozen
weights are cast once, the matmuls and the feed-forward activation run in bf16 (AMX on CPUs that have it, tensor
cores on GPUs), and the residual stream, LayerNorms and softmax stay fp32.

The encoder's architecture is BERT's (RoBERTa's, MiniLM's): post-LayerNorm blocks, learned positions, token type 0;
the decoder's is GPT-2's: pre-LayerNorm blocks, learned positions from 0, a final LayerNorm. Each result equals the
Hugging Face forward's hidden state at that position (tested: fp32 within 1e-5, bf16 within its rounding).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
DECODER_TYPES = ("gpt2",)


class _EncoderLayer:
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


def _activation(name: str):
    """The feed-forward activation of a transformers config; GPT-2's gelu_new (the tanh approximation, in Python ops
    there) as torch's fused kernel of the same formula (equal within 3e-7; a quick-profile K = 8 step measured 17%
    shorter)."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return functools.partial(F.gelu, approximate="tanh")
    return ACT2FN[name]


def _linear(x: torch.Tensor, weights) -> torch.Tensor:
    """x W^T + b in the weights' dtype."""
    return F.linear(x.to(weights[0].dtype), *weights)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, heads, L, d / heads)."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head width) + bias) v, the scores and softmax in fp32; heads merged back: (B, Lq, d)."""
    batch, heads, queries, head_width = q.shape
    scores = (q @ k.transpose(-1, -2)).float() * head_width ** -0.5
    if bias is not None:
        scores = scores + bias
    context = scores.softmax(-1).to(v.dtype) @ v
    return context.transpose(1, 2).reshape(batch, queries, heads * head_width)


class ReadoutEncoder:
    """`encoder(embeds, position)`: the last hidden state (B, d) at `position` of the frozen encoder of `backbone` (a
    `backbones.Backbone`), in fp32, with every weight in `dtype` for the matmuls. Gradients flow to `embeds` (the
    prompt) only."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype = torch.float32):
        hf_model, config = backbone.hf_model, backbone.config
        if config.model_type not in ENCODER_TYPES:
            raise ValueError(f"a readout encoder needs an encoder of type {ENCODER_TYPES}, got {config.model_type!r}")
        embeddings = hf_model.base_model.embeddings
        self.position_table = embeddings.position_embeddings.weight.detach().float()
        self.token_type = embeddings.token_type_embeddings.weight.detach()[0].float()
        self.embedding_norm = _norm(embeddings.LayerNorm)
        self.layers = [_EncoderLayer(layer, dtype) for layer in hf_model.base_model.encoder.layer]
        self.heads = config.num_attention_heads
        self.activation = _activation(config.hidden_act)
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

    def _block(self, layer: _EncoderLayer, queries_from: torch.Tensor, hidden: torch.Tensor, key_bias) -> torch.Tensor:
        """One post-LayerNorm block, its outputs at the positions of `queries_from` (a slice of `hidden`, or all of
        it), its keys and values from every position of `hidden`."""
        width = hidden.shape[-1]
        weight, bias = layer.qkv
        if queries_from.shape[1] == hidden.shape[1]:
            q, k, v = _linear(hidden, layer.qkv).split(width, dim=-1)
        else:
            q = _linear(queries_from, (weight[:width], bias[:width]))
            k, v = _linear(hidden, (weight[width:], bias[width:])).split(width, dim=-1)
        context = _attend(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads), key_bias)
        attended = F.layer_norm(_linear(context, layer.attention_out).float() + queries_from, (width,),
                                *layer.attention_norm)
        ffn = _linear(self.activation(_linear(attended, layer.ffn_in)), layer.ffn_out)
        return F.layer_norm(ffn.float() + attended, (width,), *layer.ffn_norm)


class _DecoderLayer:
    """One GPT-2 block's frozen weights: LayerNorm parameters in fp32; the fused Q/K/V projection, the attention output
    and the feed-forward block in the compute dtype, as Linear weights (transformers' Conv1D computes x W + b with W
    of shape (in, out))."""

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        def linear(conv):
            return conv.weight.detach().t().contiguous().to(dtype), conv.bias.detach().to(dtype)

        self.attention_norm = _norm(block.ln_1)
        self.qkv = linear(block.attn.c_attn)
        self.attention_out = linear(block.attn.c_proj)
        self.ffn_norm = _norm(block.ln_2)
        self.ffn_in = linear(block.mlp.c_fc)
        self.ffn_out = linear(block.mlp.c_proj)


class ReadoutDecoder:
    """`decoder(embeds, steps)`: the last final hidden state (B, d) of the frozen GPT-2 decoder of `backbone` (a
    `backbones.Backbone`) over `embeds` (B, L, d), after `steps` continuous tokens generated; in fp32, with every
    weight in `dtype` for the matmuls. Gradients flow to `embeds` (the prompt) only."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype = torch.float32):
        config = backbone.config
        if config.model_type not in DECODER_TYPES:
            raise ValueError(f"a readout decoder needs a decoder of type {DECODER_TYPES}, got {config.model_type!r}")
        if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
            raise ValueError("a readout decoder computes GPT-2's default attention (scores over sqrt(head width)); "
                             "this config changes it (scale_attn_weights, scale_attn_by_inverse_layer_idx or "
                             "reorder_and_upcast_attn)")
        decoder = backbone.hf_model.base_model
        self.position_table = decoder.wpe.weight.detach().float()
        self.layers = [_DecoderLayer(block, dtype) for block in decoder.h]
        self.final_norm = _norm(decoder.ln_f)
        self.heads = config.n_head
        self.activation = _activation(config.activation_function)

    def __call__(self, embeds: torch.Tensor, steps: int) -> torch.Tensor:
        with torch.autocast(embeds.device.type, enabled=False):
            hidden, caches = self._pass(embeds, [None] * len(self.layers), 1)
            for _ in range(steps):
                hidden, caches = self._pass(hidden, caches, 1)
            return hidden[:, 0]

    def last_states(self, embeds: torch.Tensor, count: int) -> torch.Tensor:
        """The final hidden states (B, count, d) at the last `count` positions of `embeds` (B, L, d), in one pass:
        what teacher forcing reads (notebook 07)."""
        with torch.autocast(embeds.device.type, enabled=False):
            return self._pass(embeds, [None] * len(self.layers), count)[0]

    def _pass(self, embeds: torch.Tensor, caches: list, outputs: int) -> tuple[torch.Tensor, list]:
        """One pass over new embeddings (B, T, d) after the positions the caches hold: the final hidden states at the
        last `outputs` new positions (B, outputs, d), and each layer's keys and values extended by the new ones."""
        start = 0 if caches[0] is None else caches[0][0].shape[2]
        hidden = embeds.float() + self.position_table[start:start + embeds.shape[1]]
        extended = []
        for index, (layer, cache) in enumerate(zip(self.layers, caches)):
            last_layer = index == len(self.layers) - 1
            hidden, keys_values = self._block(layer, hidden, cache, outputs if last_layer else hidden.shape[1])
            extended.append(keys_values)
        return F.layer_norm(hidden, hidden.shape[-1:], *self.final_norm), extended

    def _block(self, layer: _DecoderLayer, hidden: torch.Tensor, cache, outputs: int):
        """One pre-LayerNorm block over the new positions of `hidden` (B, T, d), each attending to the cached ones and
        to the new ones up to itself; its outputs at the last `outputs` new positions (all T, or fewer in the last
        layer), and the keys and values (B, heads, positions, d / heads) extended."""
        length, width = hidden.shape[1:]
        normed = F.layer_norm(hidden, (width,), *layer.attention_norm)
        weight, bias = layer.qkv
        if outputs < length:
            hidden = hidden[:, -outputs:]
            q = _linear(normed[:, -outputs:], (weight[:width], bias[:width]))
            k, v = _linear(normed, (weight[width:], bias[width:])).split(width, dim=-1)
        else:
            q, k, v = _linear(normed, layer.qkv).split(width, dim=-1)
        k, v = _heads(k, self.heads), _heads(v, self.heads)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        causal_bias = None
        if outputs > 1:  # query i of the last `outputs` positions sees the keys up to its own position
            first = k.shape[2] - outputs
            later = torch.ones(outputs, k.shape[2], dtype=torch.bool, device=q.device).triu(first + 1)
            causal_bias = torch.zeros(later.shape, device=q.device).masked_fill(later, torch.finfo(torch.float32).min)
        context = _attend(_heads(q, self.heads), k, v, causal_bias)
        attended = hidden + _linear(context, layer.attention_out).float()
        normed = F.layer_norm(attended, (width,), *layer.ffn_norm)
        return attended + _linear(self.activation(_linear(normed, layer.ffn_in)), layer.ffn_out).float(), (k, v)
