"""Across machines and batch shapes a rerun keeps what the verdicts read (status, epochs, accuracies, curves) and its
floats within RELATIVE_TOLERANCE; the forced kernel set of make test's second pass really changes the kernels.

`make test` runs the tests marked `kernels` twice: with this machine's kernels, and with reproducibility.other_kernels().
The probe of both kernel sets sets each process's environment itself, so it runs once. Nothing asserts what one vendor's
processor prints: each library's report under one set is compared with its report under the other."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from promptmem import ResultsStore, config_from_row, reproducibility, run_sweep
from promptmem.processor import Processor
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
from promptmem.reproducibility import openblas_core
print("openblas", openblas_core(), flush=True)
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
# MKL's verbose banner, "... for Intel(R) 64 architecture <instruction sets>, Lnx 2.00GHz lp64 gnu_thread": the part
# that names the instruction sets it runs (where it names any)
MKL_INSTRUCTIONS = re.compile(r"architecture (.*), \w+ [\d.]+GHz")


def mkl_instructions(banner: str) -> str:
    return MKL_INSTRUCTIONS.search(banner).group(1)


def probe(environment: dict) -> dict:
    """The kernels a fresh process picks under this process's environment updated by `environment` (ATen's dispatch,
    MKL's and oneDNN's instruction sets and numpy's OpenBLAS core, as each library reports them) and the prompt
    gradient of a tiny model computed with them."""
    finished = subprocess.run([sys.executable, "-c", PROBE], env=os.environ | environment, capture_output=True,
                              text=True, check=True)
    lines = finished.stdout.splitlines()
    return {"aten": next(line.split()[1] for line in lines if line.startswith("aten ")),
            "openblas": next(line.split()[1] for line in lines if line.startswith("openblas ")),
            "mkl": mkl_instructions(next(line for line in lines if line.startswith("MKL_VERBOSE oneMKL"))),
            "onednn": next(line for line in lines if ",isa:" in line).split(",isa:")[1],
            "gradient": json.loads(next(line for line in lines if line.startswith("gradient "))[len("gradient "):])}


@pytest.fixture(scope="module")
def kernel_sets():
    """This host's own kernels (its environment as given, presets included) and the other set's."""
    forced = reproducibility.other_kernels()
    return probe({}), probe(forced), forced


def test_mkl_banners_are_read_for_their_instruction_sets():
    # MKL's banners on two processors of CI's kind: AMX (Intel Xeon) and AVX512-BF16 without AMX (AMD EPYC, read there
    # on 2026-12-02), where MKL names no instruction set at all
    intel = ("MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) Advanced "
             "Vector Extensions 512 (Intel(R) AVX-512) enabled processors, Lnx 2.00GHz lp64 gnu_thread")
    amd = ("MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) "
           "Architecture processors, Lnx 2.60GHz lp64 gnu_thread")
    assert mkl_instructions(intel) == "Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) enabled processors"
    assert mkl_instructions(amd) == "Intel(R) Architecture processors"


@pytest.mark.parametrize("library", ["aten", "onednn", "mkl", "openblas"])
def test_the_other_kernel_set_changes_each_librarys_kernels(kernel_sets, library):
    own, other, forced = kernel_sets
    if library == "mkl" and own["mkl"] == other["mkl"]:
        pytest.skip(f"MKL names no instruction set it was made to leave on this processor: '{own['mkl']}' under "
                    f"both kernel sets (MKL_ENABLE_INSTRUCTIONS={forced['MKL_ENABLE_INSTRUCTIONS']})")
    assert own[library] != other[library], f"{library} reports '{own[library]}' under both kernel sets"
    if library == "aten":
        assert other["aten"] == forced["ATEN_CPU_CAPABILITY"].upper()
    if library == "openblas":
        assert other["openblas"].lower() == forced["OPENBLAS_CORETYPE"].lower()


def test_the_other_kernel_set_changes_the_bits_within_the_tolerance(kernel_sets):
    own, other, _ = kernel_sets
    assert own["gradient"] != other["gradient"], "the other kernel set computed the very same bits"
    largest = max(abs(a - b) for a, b in zip(own["gradient"], other["gradient"])) / max(map(abs, own["gradient"]))
    assert largest < RELATIVE_TOLERANCE


def test_the_other_kernel_set_differs_from_a_host_preset():
    # hosts of CI's kind may preset OpenBLAS's core (AMD EPYC hosts set Haswell) or cap oneDNN; the other set moves off
    # what the environment asks for, not off what the processor could do
    amx = Processor("Intel", "Xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    presets = {"OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    with pytest.MonkeyPatch.context() as patch:
        for key in reproducibility.KERNEL_VARIABLES:
            patch.delenv(key, raising=False)
        assert reproducibility.other_kernels(amx)["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_BF16"
        for key, value in presets.items():
            patch.setenv(key, value)
        forced = reproducibility.other_kernels(amx)
    assert forced["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert forced["OPENBLAS_CORETYPE"] == "Sandybridge"


@pytest.mark.kernels
def test_this_pass_runs_on_the_kernels_its_environment_asks_for():
    """In make test's second pass every variable of the set it names is set as named; in both passes, what the
    environment asks of ATen and OpenBLAS (a host's presets included) is what they run."""
    import torch

    named = dict(item.split("=", 1) for item in os.environ.get(reproducibility.KERNEL_SET_VARIABLE, "").split())
    assert set(named) in (set(), set(reproducibility.KERNEL_VARIABLES)), f"a partial kernel set: {named}"
    assert {key: os.environ.get(key) for key in named} == named
    if "ATEN_CPU_CAPABILITY" in os.environ:
        assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()
    if "OPENBLAS_CORETYPE" in os.environ:
        assert reproducibility.openblas_core().lower() == os.environ["OPENBLAS_CORETYPE"].lower()
