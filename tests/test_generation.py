import pytest
import torch

from promptmem.backbones import random_backbone
from promptmem.model import SoftPromptModel

CAUSAL = dict(architecture="gpt2", num_layers=2, hidden_size=32, num_heads=2, ffn_size=64, vocab_size=100,
              init_scale=0.3, max_positions=40)


@pytest.fixture
def causal_backbone():
    return random_backbone(seed=0, **CAUSAL)


@pytest.fixture
def ids():
    return torch.randint(4, 100, (6, 5), generator=torch.Generator().manual_seed(0))


def recompute_generation(backbone, embeds, steps):
    """K full passes, no cache: the definition the cached generation must match."""
    for _ in range(steps):
        embeds = torch.cat([embeds, backbone.encode(embeds)[:, -1:]], dim=1)
    return backbone.encode(embeds)[:, -1]


def test_zero_steps_is_the_plain_forward(causal_backbone, ids):
    model = SoftPromptModel(causal_backbone, 3, generation_steps=0, seed=0)
    embeds = model.embed(ids)
    assert torch.allclose(model(ids), causal_backbone.classify(causal_backbone.encode(embeds)[:, -1]), atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_cached_generation_equals_recomputing(causal_backbone, ids, steps):
    model = SoftPromptModel(causal_backbone, 3, generation_steps=steps, seed=0)
    embeds = model.embed(ids)
    cached = causal_backbone.generate(embeds, steps)
    assert torch.allclose(cached, recompute_generation(causal_backbone, embeds, steps), atol=1e-5)
    assert not torch.allclose(cached, causal_backbone.generate(embeds, 0), atol=1e-3)  # generating changes it


def test_gradients_reach_the_prompt_through_the_steps(causal_backbone, ids):
    model = SoftPromptModel(causal_backbone, 3, generation_steps=4, seed=0)
    model(ids).sum().backward()
    assert model.prompt.grad is not None and model.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in causal_backbone.parameters())


@pytest.mark.parametrize("steps, message", [(-1, "generation_steps"), (1.5, "generation_steps"),
                                            (37, "prompt_len \\+ generation_steps must be at most 39")])
def test_bad_generation_steps_are_refused(causal_backbone, steps, message):
    with pytest.raises(ValueError, match=message):
        SoftPromptModel(causal_backbone, 3, generation_steps=steps)


def test_data_beyond_the_positions_with_generation_is_refused(causal_backbone):
    model = SoftPromptModel(causal_backbone, 3, generation_steps=30)
    model(torch.zeros(1, 7, dtype=torch.long) + 5)  # 3 + 7 + 30 = 40 positions: fits
    with pytest.raises(ValueError, match="N \\+ p \\+ K"):
        model(torch.zeros(1, 8, dtype=torch.long) + 5)


def test_encoders_do_not_generate():
    encoder = random_backbone(num_layers=1, hidden_size=16, num_heads=2, ffn_size=32, vocab_size=50)
    with pytest.raises(ValueError, match="must be 0 for an encoder"):
        SoftPromptModel(encoder, 2, generation_steps=1)


def test_causal_backbone_is_frozen_and_scored_by_its_linear_head(causal_backbone):
    assert causal_backbone.is_causal and causal_backbone.num_trainable_parameters() == 0
    assert causal_backbone.max_sequence_length == 40
    features = torch.randn(3, 32)
    assert torch.equal(causal_backbone.classify(features), causal_backbone.hf_model.score(features))
