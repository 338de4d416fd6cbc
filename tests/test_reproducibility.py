"""Across machines and batch shapes a rerun keeps what the verdicts read (status, epochs, accuracies, curves) and its
floats within RELATIVE_TOLERANCE; the forced kernel set of make test's second pass really changes the kernels.

`make test` runs the tests marked `kernels` twice: with this machine's kernels, and with reproducibility.OTHER_KERNELS.
The probe of both kernel sets sets each process's environment itself, so it runs once."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from promptmem import ResultsStore, config_from_row, reproducibility, run_sweep
from promptmem.reproducibility import RELATIVE_TOLERANCE, compare_rows, disagreements

# Short runs (30 epochs at most) of the tiny encoder and decoder, made on another machine by bench/determinism.py
REFERENCE = Path(__file__).parent / "reference_rows.csv"


@pytest.mark.kernels
@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_rows_made_on_another_machine_are_reproduced_here(tmp_path, batched):
    reference = ResultsStore(REFERENCE).load()
    configs = [config_from_row(row) for row in reference.to_dict("records")]
    rerun = run_sweep(configs, tmp_path / "rerun.csv", batched=batched, progress=False)
    comparison = compare_rows(reference, rerun)
    assert comparison.config_id.nunique() == len(configs) == 16
    broken = disagreements(comparison)
    assert broken.empty, broken.to_string()


def row(**values):
    base = {"config_id": "a", "status": "memorized", "epochs_run": 12, "final_accuracy": 1.0,
            "test_accuracy": float("nan"), "trainable_params": 64, "evaluations": "", "final_loss": 0.25,
            "initial_prompt_singular_values": "[2.0, 1.0]", "prompt_singular_values": "[3.0, 1.5]",
            "prompt_update_singular_values": "[1.0, 0.5]", "attention_entropy": "[0.5, 0.25]",
            "prompt_attention_mass": "[0.1, 0.2]", "prompt_attention_spread": "[0.01, 0.02]",
            "prompt_qk_bound": "[9.11562, 8.0]"}
    return pd.DataFrame([base | values])


def test_the_comparison_holds_exact_columns_exactly_and_floats_within_the_tolerance():
    reference = row()
    assert disagreements(compare_rows(reference, row())).empty  # NaN test accuracy equals NaN
    within = row(final_loss=0.25 * (1 + RELATIVE_TOLERANCE / 2), prompt_qk_bound="[9.11561, 8.0]")
    assert disagreements(compare_rows(reference, within)).empty
    comparison = compare_rows(reference, within).set_index("column")
    assert comparison.loc["prompt_qk_bound", "relative_difference"] == pytest.approx(1e-5 / 9.11562)
    assert not comparison.loc["prompt_qk_bound", "equal"] and comparison.loc["prompt_singular_values", "equal"]
    for broken, column in ((row(final_loss=0.25 * (1 + 2 * RELATIVE_TOLERANCE)), "final_loss"),
                           (row(final_accuracy=0.96875), "final_accuracy"), (row(epochs_run=13), "epochs_run"),
                           (row(status="completed"), "status"), (row(test_accuracy=0.5), "test_accuracy"),
                           (row(prompt_singular_values="[3.0]"), "prompt_singular_values"),
                           (row(attention_entropy="[NaN, 0.25]"), "attention_entropy")):
        assert disagreements(compare_rows(reference, broken)).column.tolist() == [column]
    assert compare_rows(reference, row(config_id="b")).empty  # only configs in both are compared
    assert math.isinf(reproducibility.relative_difference(1.0, float("nan")))


PROBE = """
import numpy
import torch
print("aten", torch.backends.cpu.get_cpu_capability(), flush=True)
from torch.backends import mkl, mkldnn
with mkldnn.verbose(mkldnn.VERBOSE_ON), mkl.verbose(mkl.VERBOSE_ON):
    torch.randn(64, 64) @ torch.randn(64, 64)
    torch.nn.functional.gelu(torch.randn(64, 64))  # an elementwise op that torch hands to oneDNN
from promptmem.backbones import random_backbone
from promptmem.model import SoftPromptModel
backbone = random_backbone(seed=0, num_layers=2, hidden_size=32, num_heads=2, ffn_size=64, vocab_size=100,
                           init_scale=0.3)
model = SoftPromptModel(backbone, 3)
torch.manual_seed(0)
inputs = torch.randint(4, 100, (16, 4))
torch.nn.functional.cross_entropy(model(inputs), torch.zeros(16, dtype=torch.long)).backward()
print("gradient", model.prompt.grad.flatten().tolist(), flush=True)
"""


def probe(environment: dict) -> dict:
    """The kernels a fresh process picks under `environment` (ATen's dispatch, MKL's and oneDNN's instruction sets and
    numpy's OpenBLAS core, as their verbose modes report them) and the prompt gradient of a tiny model computed with
    them."""
    clean = {key: value for key, value in os.environ.items() if key not in reproducibility.OTHER_KERNELS}
    finished = subprocess.run([sys.executable, "-c", PROBE], env=clean | {"OPENBLAS_VERBOSE": "2"} | environment,
                              capture_output=True, text=True, check=True)
    lines = (finished.stdout + finished.stderr).splitlines()  # OpenBLAS reports on stderr
    return {"aten": next(line.split()[1] for line in lines if line.startswith("aten ")),
            "mkl": next(line for line in lines if line.startswith("MKL_VERBOSE oneMKL")),
            "onednn": next(line for line in lines if ",isa:" in line).split(",isa:")[1],
            "openblas": next(line for line in lines if line.startswith("Core: "))[len("Core: "):],
            "gradient": json.loads(next(line for line in lines if line.startswith("gradient "))[len("gradient "):])}


def test_the_other_kernel_set_takes_effect_and_changes_the_bits_within_the_tolerance():
    own, other = probe({}), probe(reproducibility.OTHER_KERNELS)
    assert other["aten"] == "AVX2" and "(Intel(R) AVX2)" in other["mkl"] and other["onednn"] == "Intel AVX2"
    assert other["openblas"] == "Haswell"
    if own["aten"] == "AVX2":
        pytest.skip("this machine's own kernels are the AVX2 set: there is no other machine to simulate")
    assert own["gradient"] != other["gradient"], "the other kernel set computed the very same bits"
    largest = max(abs(a - b) for a, b in zip(own["gradient"], other["gradient"])) / max(map(abs, own["gradient"]))
    assert largest < RELATIVE_TOLERANCE


@pytest.mark.kernels
def test_this_pass_runs_on_the_kernels_its_environment_asks_for():
    import torch

    forced = {key: os.environ[key] for key in reproducibility.OTHER_KERNELS if key in os.environ}
    assert forced in ({}, reproducibility.OTHER_KERNELS), f"a partial kernel set: {forced}"
    if forced:
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"
