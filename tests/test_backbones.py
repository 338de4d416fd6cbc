import pytest
import torch

from promptmem.backbones import random_backbone


@pytest.mark.parametrize("scale", [0.02, 0.3, 1.0])
def test_init_scale_sets_the_weight_std(scale):
    backbone = random_backbone(init_scale=scale, num_layers=1, hidden_size=64, num_heads=2, ffn_size=128,
                               vocab_size=500)
    for name, weight in backbone.named_parameters():
        if weight.dim() == 2:  # Linear and Embedding weights, the head's included
            assert abs(weight.std().item() / scale - 1) < 0.1, name


def test_seed_fixes_the_backbone():
    first, second, other = (random_backbone(seed=s, num_layers=1, hidden_size=16, num_heads=2, ffn_size=32,
                                            vocab_size=50) for s in (3, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


def test_backbone_is_frozen_and_paper_shaped():
    backbone = random_backbone()
    assert backbone.num_trainable_parameters() == 0
    config = backbone.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == \
        (2, 512, 8, 2048)
    assert backbone.hf_model.config._attn_implementation == "sdpa"


def test_trainable_backbone_reads_the_first_token():
    backbone = random_backbone(num_layers=1, hidden_size=16, num_heads=2, ffn_size=32, vocab_size=50, trainable=True)
    ids = torch.randint(4, 50, (3, 5))
    assert backbone.num_trainable_parameters() == sum(p.numel() for p in backbone.parameters())
    hidden = backbone.encode(backbone.embed_tokens(ids))
    assert torch.allclose(backbone(ids), backbone.classify(hidden[:, 0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(init_scale=0), "init_scale"), (dict(init_scale="big"), "init_scale"), (dict(num_layers=0), "num_layers"),
    (dict(hidden_size=30, num_heads=4), "divisible"),
])
def test_bad_backbone_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_backbone(**kwargs)


def test_pretrained_from_a_local_folder_bert_style(tmp_path):
    # A BERT checkpoint saved to a folder: loads by path, pooler + classifier read the chosen position.
    from transformers import BertConfig, BertForSequenceClassification

    from promptmem.backbones import pretrained_backbone

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    backbone = pretrained_backbone(str(tmp_path))
    assert backbone.num_trainable_parameters() == 0 and backbone.max_sequence_length == 40
    features = torch.randn(3, 16)
    hf = backbone.hf_model
    assert torch.allclose(backbone.classify(features), hf.classifier(hf.bert.pooler(features[:, None])))
