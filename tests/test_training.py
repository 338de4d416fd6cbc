import math
from unittest import mock

import pytest
import torch

from promptmem import data
from promptmem.backbones import random_backbone
from promptmem.model import SoftPromptModel
from promptmem.reproducibility import RELATIVE_TOLERANCE
from promptmem.training import (CPU_CHUNK_ELEMENTS, DEVICE_ENV, default_chunk_rows, default_device, evaluate,
                                select_precision, train)
from tests.conftest import TINY, interrupt_at_call


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"),
                                                  ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")])
def test_precision_follows_compute_capability(capability, expected):
    # a T4 (7.5) claims bf16 support by emulation; the choice must not ask is_bf16_supported
    with mock.patch("torch.cuda.get_device_capability", return_value=capability), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True):
        assert select_precision("cuda") == expected


def test_a_prompt_on_a_causal_model_trains_in_fp32_on_every_device():
    # continuous generation amplifies bf16's rounding (training.select_precision)
    causal_model = SoftPromptModel(random_backbone(architecture="gpt2", seed=0, **TINY), 2, generation_steps=1)
    with mock.patch("torch.cuda.get_device_capability", return_value=(9, 0)):
        assert select_precision("cuda", causal_model) == select_precision("cpu", causal_model) == "fp32"


def test_the_device_variable_picks_the_device_and_a_bad_one_is_named(monkeypatch):
    with mock.patch("torch.cuda.is_available", return_value=True):
        monkeypatch.setenv(DEVICE_ENV, "cpu")
        assert default_device() == torch.device("cpu")
        monkeypatch.setenv(DEVICE_ENV, "cuda:1")
        assert default_device() == torch.device("cuda", 1)
        monkeypatch.delenv(DEVICE_ENV)
        assert default_device() == torch.device("cuda")
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(ValueError, match=f"{DEVICE_ENV} must be 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'"):
        default_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_prompt_trained_on_the_gpu_is_evaluated_on_the_callers_cpu_tensors(tiny_backbone, tiny_data):
    # train moves the model to the GPU; the caller's data stays on the CPU (failed on an H200, 2026-12-04)
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=20, lr=0.05, device="cuda", progress=False)
    accuracy, loss = evaluate(model, tiny_data.inputs, tiny_data.labels)
    assert accuracy == pytest.approx(result.final_accuracy) and math.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_t4_path_fp16_with_a_loss_scaler_memorizes_on_the_gpu(tiny_backbone, tiny_data):
    # a T4 has no bf16: fp16 autocast, a GradScaler, the prompt and AdamW in fp32
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=300, lr=0.05, precision="fp16", device="cuda",
                   progress=False)
    assert result.precision == "fp16" and model.prompt.dtype == torch.float32 and model.prompt.device.type == "cuda"
    assert result.status == "memorized" and result.final_accuracy == 1.0


def test_cpu_trains_in_fp32():
    assert select_precision("cpu") == "fp32"


def test_a_tiny_run_memorizes(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=300, lr=0.05, progress=False)
    assert result.status == "memorized" and result.final_accuracy == 1.0
    assert result.epochs < 300
    assert evaluate(model, tiny_data.inputs, tiny_data.labels)[0] == 1.0  # the stopped prompt memorizes
    assert len(result.history["accuracy"]) == result.epochs and result.history["accuracy"][-1] == 1.0
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_minibatches_memorize_too(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=300, lr=0.02, batch_size=8, progress=False)
    assert result.status == "memorized" and result.final_accuracy == 1.0


def test_without_early_stop_all_epochs_run(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=7, lr=0.05, early_stop=False, progress=False)
    assert result.status == "completed" and result.epochs == 7 and len(result.history["loss"]) == 7


@pytest.mark.kernels  # bit-identical on one machine, whatever its kernels
def test_same_seed_same_prompt(tiny_backbone, tiny_data):
    prompts = []
    for _ in range(2):
        model = SoftPromptModel(tiny_backbone, 3, seed=0)
        train(model, tiny_data.inputs, tiny_data.labels, epochs=5, lr=0.05, batch_size=8, early_stop=False,
              progress=False)
        prompts.append(model.prompt.detach().clone())
    assert torch.equal(prompts[0], prompts[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(precision="fp8"), "precision"), (dict(eval_every=0), "eval_every"), (dict(chunk_rows=0), "chunk_rows"),
    (dict(test_data=(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long))), "test_data"),
])
def test_bad_arguments_are_refused_before_training(tiny_backbone, tiny_data, kwargs, message):
    model = SoftPromptModel(tiny_backbone, 2)
    before = model.prompt.detach().clone()
    arguments = dict(epochs=3, lr=0.01, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        train(model, tiny_data.inputs, tiny_data.labels, **arguments)
    assert torch.equal(before, model.prompt.detach())


def test_a_model_without_trainable_parameters_is_refused(tiny_backbone, tiny_data):
    with pytest.raises(ValueError, match="nothing to train"):
        train(tiny_backbone, tiny_data.inputs, tiny_data.labels, epochs=1, lr=0.01, progress=False)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_nonfinite_loss_stops_the_run_without_an_accuracy(tiny_backbone, tiny_data, precision):
    model = SoftPromptModel(tiny_backbone, 2, seed=0)
    with torch.no_grad():
        model.prompt.fill_(float("inf"))
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=50, lr=0.01, precision=precision, progress=False)
    assert result.status == "nonfinite" and result.epochs == 1
    assert result.final_accuracy != result.final_accuracy  # NaN, never the accuracy of arg-max over NaN


def test_fp16_keeps_an_fp32_prompt_and_skips_overflowing_steps(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 2, seed=0)
    before = model.prompt.detach().clone()
    # a loss scale of 2^120: every scaled fp16 gradient overflows, so the scaler must skip every step
    scaler_type = torch.amp.GradScaler
    original_init = scaler_type.__init__

    def huge_scale(self, *args, **kwargs):
        original_init(self, *args, **(kwargs | {"init_scale": 2.0 ** 120, "backoff_factor": 0.999}))

    with mock.patch.object(scaler_type, "__init__", huge_scale):
        result = train(model, tiny_data.inputs, tiny_data.labels, epochs=3, lr=0.05, precision="fp16",
                       early_stop=False, progress=False)
    assert result.precision == "fp16" and result.status == "completed"
    assert model.prompt.dtype == torch.float32
    assert torch.equal(model.prompt.detach().cpu(), before.cpu())  # overflowing steps skipped, the prompt intact
    assert result.final_accuracy == result.final_accuracy  # a real accuracy


class Interrupted(Exception):
    pass


@pytest.mark.kernels  # bit-identical on one machine, whatever its kernels
def test_an_interrupted_run_resumes_to_the_same_prompt(tiny_backbone, tiny_data, tmp_path):
    arguments = dict(epochs=10, lr=0.02, batch_size=8, early_stop=False, progress=False)
    uninterrupted = SoftPromptModel(tiny_backbone, 3, seed=0)
    reference = train(uninterrupted, tiny_data.inputs, tiny_data.labels, **arguments)

    checkpoint = tmp_path / "run.pt"
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    interrupt_at_call(model, 7 * 4 + 2, Interrupted)  # 4 minibatches an epoch: the second step of epoch 8
    with pytest.raises(Interrupted):
        train(model, tiny_data.inputs, tiny_data.labels, checkpoint=checkpoint, checkpoint_every=3, **arguments)
    assert checkpoint.exists()  # saved after epoch 6

    resumed_model = SoftPromptModel(tiny_backbone, 3, seed=5)  # a fresh process would start from another prompt
    resumed = train(resumed_model, tiny_data.inputs, tiny_data.labels, checkpoint=checkpoint, checkpoint_every=3,
                    **arguments)
    assert torch.equal(resumed_model.prompt, uninterrupted.prompt)
    assert resumed.history == reference.history and resumed.epochs == 10
    assert not checkpoint.exists()  # removed once the run ended


def test_a_checkpoint_of_another_model_is_refused(tiny_backbone, tiny_data, tmp_path):
    checkpoint = tmp_path / "run.pt"
    torch.save({"trainable": {"weight": torch.zeros(1)}}, checkpoint)
    with pytest.raises(ValueError, match="belongs to another model"):
        train(SoftPromptModel(tiny_backbone, 2), tiny_data.inputs, tiny_data.labels, epochs=2, lr=0.01,
              checkpoint=checkpoint, progress=False)


@pytest.mark.kernels  # bit-identical on one machine, whatever its kernels
def test_accuracy_curves_are_evaluated_every_k_epochs(tiny_backbone, tiny_data):
    held_out = data.random_tokens(16, 4, seed=9, vocab_size=TINY["vocab_size"])
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=7, lr=0.05, early_stop=False, progress=False,
                   test_data=(held_out.inputs, held_out.labels), eval_every=3)
    curves = result.evaluations
    assert curves["epoch"] == [0, 3, 6, 7]  # before training, every 3 epochs, and the last epoch
    assert curves["train_accuracy"][-1] == result.final_accuracy
    assert curves["test_accuracy"][-1] == result.test_accuracy == evaluate(model, held_out.inputs, held_out.labels)[0]
    assert curves["train_accuracy"][0] < curves["train_accuracy"][-1]
    again = SoftPromptModel(tiny_backbone, 4, seed=0)
    silent = train(again, tiny_data.inputs, tiny_data.labels, epochs=7, lr=0.05, early_stop=False, progress=False)
    assert torch.equal(again.prompt, model.prompt)  # evaluating never changes the trajectory
    assert silent.evaluations["epoch"] == [] and math.isnan(silent.test_accuracy)


def test_a_curve_point_at_the_last_epoch_is_the_final_evaluation(tiny_backbone, tiny_data):
    held_out = data.random_tokens(16, 4, seed=9, vocab_size=TINY["vocab_size"])
    model = SoftPromptModel(tiny_backbone, 4, seed=0)
    with mock.patch("promptmem.training.evaluate", wraps=evaluate) as counted:
        result = train(model, tiny_data.inputs, tiny_data.labels, epochs=6, lr=0.05, early_stop=False,
                       progress=False, test_data=(held_out.inputs, held_out.labels), eval_every=3)
    assert result.evaluations["epoch"] == [0, 3, 6]
    assert counted.call_count == 6  # train and test at epochs 0, 3 and 6; the final accuracies are epoch 6's
    assert (result.final_accuracy, result.final_loss) == evaluate(model, tiny_data.inputs, tiny_data.labels)
    assert result.test_accuracy == evaluate(model, held_out.inputs, held_out.labels)[0]


def test_curves_stop_where_an_early_stop_does(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 8, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=300, lr=0.05, progress=False, eval_every=50)
    assert result.status == "memorized" and result.evaluations["epoch"][-1] == result.epochs
    assert result.evaluations["train_accuracy"][-1] == 1.0


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_the_largest_learning_rate_never_reports_a_wrong_accuracy(tiny_backbone, tiny_data, precision):
    # AdamW moves each entry by about lr per step and the embedding LayerNorm rescales the prompt, so even lr = 9.9
    # does not overflow here (the overflow itself is forced through the loss scale above); whatever happens, the
    # reported accuracy is the prompt's own or NaN
    model = SoftPromptModel(tiny_backbone, 2, seed=0)
    result = train(model, tiny_data.inputs, tiny_data.labels, epochs=60, lr=9.9, precision=precision,
                   early_stop=False, progress=False)
    assert model.prompt.dtype == torch.float32
    if result.status == "nonfinite":
        assert math.isnan(result.final_accuracy)
    else:
        assert torch.isfinite(model.prompt).all() and math.isfinite(result.final_loss)
        # the final accuracy is measured in fp32 whatever the training precision
        assert result.final_accuracy == evaluate(model, tiny_data.inputs, tiny_data.labels, precision="fp32")[0]


def test_a_full_batch_in_chunks_takes_the_full_batch_step(tiny_backbone, tiny_data):
    # the chunks' gradients sum to the full batch's (up to summation order): the same trajectory, early stop included
    results, prompts = [], []
    for chunk_rows in (None, 32, 10, 1):  # 32 pairs: the default and 32 are one chunk, 10 four chunks (the last of 2)
        model = SoftPromptModel(tiny_backbone, 4, seed=0)
        results.append(train(model, tiny_data.inputs, tiny_data.labels, epochs=300, lr=0.05, precision="fp32",
                             progress=False, chunk_rows=chunk_rows))
        prompts.append(model.prompt.detach().clone())
    assert torch.equal(prompts[0], prompts[1])  # one chunk is the unchunked step itself
    assert results[0].status == "memorized"
    for result, prompt in zip(results[2:], prompts[2:]):
        assert (result.status, result.epochs, result.final_accuracy) == (results[0].status, results[0].epochs, 1.0)
        assert result.history["accuracy"] == results[0].history["accuracy"]
        assert (prompt - prompts[0]).abs().max() / prompts[0].abs().max() < RELATIVE_TOLERANCE


def test_a_full_batch_in_chunks_in_bf16_stays_within_bf16_rounding(tiny_backbone, tiny_data):
    prompts = []
    for chunk_rows in (None, 10):
        model = SoftPromptModel(tiny_backbone, 4, seed=0)
        train(model, tiny_data.inputs, tiny_data.labels, epochs=5, lr=0.05, precision="bf16", early_stop=False,
              progress=False, chunk_rows=chunk_rows)
        prompts.append(model.prompt.detach().clone())
    change = (prompts[1] - prompts[0]).abs().max() / prompts[0].abs().max()
    assert 0 < change < 1e-2  # other operand shapes round otherwise, within bf16's 8 bits


def test_a_cpu_chunk_holds_the_measured_activations():
    backbone = random_backbone(seed=0, num_layers=1, hidden_size=512, num_heads=8, ffn_size=64, vocab_size=100)
    model = SoftPromptModel(backbone, 8)
    embeds = torch.zeros(3600, 8, 512)
    assert default_chunk_rows(model, embeds, torch.device("cpu")) == CPU_CHUNK_ELEMENTS // (16 * 512)
    assert default_chunk_rows(model, embeds[:100], torch.device("cpu")) == 100  # a small batch stays whole
    assert default_chunk_rows(model, embeds, torch.device("cuda")) == 3600  # a GPU takes the whole batch
