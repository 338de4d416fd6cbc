import pytest
import torch

from promptmem.model import SoftPromptModel
from promptmem.training import train


def snapshot(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_training_changes_only_the_prompt(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    backbone_before, prompt_before = snapshot(tiny_backbone), model.prompt.detach().clone()
    train(model, tiny_data.inputs, tiny_data.labels, epochs=5, lr=0.05, early_stop=False, progress=False)
    backbone_after = snapshot(tiny_backbone)
    assert backbone_before.keys() == backbone_after.keys()
    for name in backbone_before:  # encoder, embeddings and the classification head, bit for bit
        assert torch.equal(backbone_before[name], backbone_after[name]), name
    assert not torch.equal(prompt_before, model.prompt.detach())


def test_gradients_reach_only_the_prompt(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    loss = torch.nn.functional.cross_entropy(model(tiny_data.inputs), tiny_data.labels)
    loss.backward()
    assert model.prompt.grad is not None and model.prompt.grad.abs().sum() > 0
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["prompt"]
    assert all(p.grad is None for p in tiny_backbone.parameters())


def test_readout_is_the_first_data_token(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 5, seed=0)
    hidden = tiny_backbone.encode(model.embed(tiny_data.inputs))
    expected = tiny_backbone.classify(hidden[:, 5])
    assert model.readout_index == 5
    assert torch.allclose(model(tiny_data.inputs), expected)
    assert not torch.allclose(model(tiny_data.inputs), tiny_backbone.classify(hidden[:, 0]))


def test_prompt_stays_fp32_under_mixed_precision(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=3, lr=0.01, precision="bf16",
                   early_stop=False, progress=False)
    assert result.precision == "bf16"
    assert model.prompt.dtype == torch.float32


@pytest.mark.parametrize("init", ["normal", "vocab", "text"])
def test_prompt_inits(tiny_backbone, init):
    model = SoftPromptModel(tiny_backbone, 6, init=init, text_ids=torch.tensor([7, 8]), seed=1)
    assert model.prompt.shape == (6, 32) and model.prompt.dtype == torch.float32
    table = tiny_backbone.word_embeddings.weight
    if init == "vocab":  # every prompt vector is a row of the vocabulary, no row twice
        matches = (model.prompt[:, None] == table[None]).all(-1)
        assert (matches.sum(1) == 1).all() and len(set(matches.float().argmax(1).tolist())) == 6
    if init == "text":
        assert torch.equal(model.prompt.detach()[:4], table[[7, 8, 7, 8]])


@pytest.mark.parametrize("prompt_len", [0, -1, 2.5, True])
def test_bad_prompt_length_is_refused(tiny_backbone, prompt_len):
    with pytest.raises(ValueError, match="prompt_len"):
        SoftPromptModel(tiny_backbone, prompt_len)


def test_sequence_beyond_the_positions_is_refused(tiny_backbone):
    limit = tiny_backbone.max_sequence_length  # 514 - 2 for RoBERTa
    assert limit == 512
    model = SoftPromptModel(tiny_backbone, 10)
    model(torch.zeros(1, limit - 10, dtype=torch.long) + 5)  # the longest that fits runs
    with pytest.raises(ValueError, match=r"sequence length N must be in \[1, 502\]"):
        model(torch.zeros(1, limit - 9, dtype=torch.long) + 5)


def test_bad_prompt_init_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="prompt init must be one of"):
        SoftPromptModel(tiny_backbone, 2, init="zeros")


def test_embeddings_go_in_where_token_ids_do(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    embedded = tiny_backbone.embed_tokens(tiny_data.inputs)
    assert torch.equal(model(tiny_data.inputs), model(embedded))
    loss = torch.nn.functional.cross_entropy(model(embedded.detach()), tiny_data.labels)
    loss.backward()
    assert model.prompt.grad.abs().sum() > 0
