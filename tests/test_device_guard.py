"""The library's functions that take a model and the caller's tensors run with the model on a GPU and the caller's
tensors on the CPU, as after `train` on a CUDA machine; CPU-only CI checks it on a simulated GPU (device_guard.py)."""

import pytest
import torch

from promptmem import attention, seq2seq, spectra
from promptmem.backbones import random_backbone
from promptmem.building import setup_run
from promptmem.configs import RunConfig
from promptmem.model import SoftPromptModel, initial_prompt
from promptmem.rows import results_row
from promptmem.training import TrainResult, evaluate
from tests.conftest import TINY
from tests.device_guard import GPU, on_gpu, on_simulated_gpu

CPU = torch.device("cpu")


def test_the_guard_refuses_what_cuda_refuses_and_lets_moved_tensors_through():
    table = torch.nn.Embedding(10, 4)
    ids = torch.tensor([[1, 2], [3, 4]])
    expected = table(ids)
    with on_simulated_gpu(table):
        assert table.weight.device == GPU and ids.device == CPU
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            table(ids)  # spectra.token_matrix's lookup before it moved the ids (notebook 03 on an H200)
        with pytest.raises(RuntimeError, match="same device"):
            table.weight + torch.zeros(10, 4)  # a fresh tensor made without device=
        embedded = table(ids.to(table.weight.device))
        assert embedded.device == GPU and not on_gpu(ids)  # a move copies: the caller's ids stay on the CPU
        with pytest.raises(TypeError, match="can't convert cuda:0"):
            embedded.detach().numpy()
        assert torch.equal(embedded.cpu(), expected) and embedded.cpu().device == CPU
        assert (table.weight * torch.tensor(2.0)).device == GPU  # a CPU scalar joins a GPU op, as on CUDA
        assert torch.zeros(2, device=table.weight.device).device == GPU
    assert table.weight.device == CPU and torch.equal(table(ids), expected)  # nothing stays marked


def test_token_matrix_embeds_cpu_ids_with_a_table_on_the_gpu(tiny_backbone, tiny_data):
    table = tiny_backbone.word_embeddings
    expected = spectra.token_matrix(tiny_data.inputs, table)
    with on_simulated_gpu(table):
        rows = spectra.token_matrix(tiny_data.inputs, table)
        assert rows.device == CPU  # for the SVD and the notebook's numpy
    assert torch.equal(rows, expected)


def test_evaluate_takes_the_callers_cpu_tensors(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    expected = evaluate(model, tiny_data.inputs, tiny_data.labels)
    with on_simulated_gpu(model):
        assert evaluate(model, tiny_data.inputs, tiny_data.labels, batch_size=10) == pytest.approx(expected)


def test_attention_statistics_take_the_callers_cpu_inputs(tiny_backbone, tiny_data):
    model = SoftPromptModel(tiny_backbone, 3, seed=0)
    expected = attention.prompt_attention_statistics(model, tiny_data.inputs)
    with on_simulated_gpu(model):
        statistics = attention.prompt_attention_statistics(model, tiny_data.inputs, chunk=10)
    for name in expected:
        assert statistics[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("init", ["vocab", "text"])
def test_an_initial_prompt_is_drawn_from_a_table_on_the_gpu_onto_the_cpu(tiny_backbone, init):
    text_ids = torch.tensor([5, 6])
    expected = initial_prompt(tiny_backbone, 3, init, text_ids=text_ids)
    with on_simulated_gpu(tiny_backbone):
        prompt = initial_prompt(tiny_backbone, 3, init, text_ids=text_ids)
        assert prompt.device == CPU
    assert torch.equal(prompt, expected)


def test_sequence_outputs_take_the_callers_cpu_tensors(tiny_data):
    model = SoftPromptModel(random_backbone(architecture="gpt2", seed=0, **TINY), 3, seed=0)
    alphabet = torch.arange(10, 14)
    targets = torch.randint(len(alphabet), (len(tiny_data.inputs), 2), generator=torch.Generator().manual_seed(0))

    def outputs():
        with torch.no_grad():
            return (seq2seq.teacher_forced_logits(model, alphabet, tiny_data.inputs, targets).cpu(),
                    seq2seq.greedy_decode(model, alphabet, tiny_data.inputs, 2).cpu(),
                    seq2seq.exact_matches(model, alphabet, tiny_data.inputs, targets).cpu())

    expected = outputs()
    with on_simulated_gpu(model):
        logits, generated, matches = outputs()
    torch.testing.assert_close(logits, expected[0])
    assert torch.equal(generated, expected[1]) and torch.equal(matches, expected[2])


def test_a_results_row_reads_a_prompt_trained_on_the_gpu():
    # sweeps: the initial prompt was kept on the CPU, `train` moved the model to the GPU, the row's data is the CPU's
    config = RunConfig(n=16, prompt_len=2, seq_len=4, dataset="random_tokens", labels="random", hidden_size=32,
                       num_heads=2, ffn_size=64, init_scale=0.3, epochs=1, lr=0.05)
    model, initial, _ = setup_run(config)
    with torch.no_grad():
        model.prompt.add_(0.1)  # a trained prompt: its update's spectrum is not zero
    result = TrainResult(1.0, 0.1, 1, "memorized", "fp32", 0.5)
    expected = results_row(config, model, initial, result, CPU)
    with on_simulated_gpu(model):
        row = results_row(config, model, initial, result, CPU)  # the device argument only names it in the row
    assert row == expected
