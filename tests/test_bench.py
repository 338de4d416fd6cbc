"""The benchmark runs end to end on tiny shapes and reports; its FLOP count is PyTorch's. (It asserts no speed:
speed is measured by `make bench`, never in a unit test.)"""

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from promptmem.backbones import random_backbone
from promptmem.configs import RunConfig
from promptmem.model import SoftPromptModel
from promptmem.readout import ReadoutEncoder
from promptmem.rows import device_file_stem
from tests.conftest import requires_local_data


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "bench" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


bench = load_script("bench_step")
paper_cost = load_script("paper_cost")
device_check = load_script("device_check")
generation_rounding = load_script("generation_rounding")


def test_a_report_file_is_named_after_its_device():
    assert device_file_stem("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert device_file_stem("cpu (x86_64, 2 threads)") == "cpu-x86-64-2-threads"


def test_the_step_flops_are_what_pytorch_counts():
    shape = dict(num_layers=2, hidden_size=64, num_heads=4, ffn_size=256)
    n, prompt_len, seq_len = 6, 8, 8
    model = SoftPromptModel(random_backbone(vocab_size=100, **shape), prompt_len)
    inputs = torch.randint(4, 100, (n, seq_len))
    # the math attention backend, whose matmuls PyTorch's counter sees (it has no formula for the CPU flash kernel)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(inputs), torch.zeros(n, dtype=torch.long)).backward()
    d = shape["hidden_size"]
    head = 2 * 2 * n * (d * d + 2 * d)  # the classification head (dense d x d, out d x 2), forward and to the input
    assert counter.get_total_flops() == bench.step_flops(shape, n, prompt_len + seq_len) + head


def test_the_readout_step_flops_are_what_pytorch_counts():
    shape = dict(num_layers=2, hidden_size=64, num_heads=4, ffn_size=256)
    n, prompt_len, seq_len = 6, 8, 8
    backbone = random_backbone(vocab_size=100, **shape)
    model = SoftPromptModel(backbone, prompt_len)
    encoder = ReadoutEncoder(backbone)
    embeds = model.embed(torch.randint(4, 100, (n, seq_len)))
    with FlopCounterMode(display=False) as counter:
        hidden = encoder(embeds, prompt_len)
        torch.nn.functional.cross_entropy(backbone.classify(hidden), torch.zeros(n, dtype=torch.long)).backward()
    d = shape["hidden_size"]
    head = 2 * 2 * n * (d * d + 2 * d)
    assert counter.get_total_flops() == bench.step_flops(shape, n, prompt_len + seq_len, readout=True) + head
    assert bench.step_flops(shape, n, 16, readout=True) < bench.step_flops(shape, n, 16)


def test_the_benchmark_runs_and_writes_its_report(tmp_path):
    report = bench.main(["--smoke", "--out", str(tmp_path)])
    written = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert written == json.loads(json.dumps(report))
    assert written["smoke"] and written["peak_matmul_tflops"] > 0 and written["peft"]
    step = written["steps"][0]
    # step times are differences of two timed runs: only finite here (a smoke run on a shared machine)
    assert all(math.isfinite(step[key]) for key in ("peft_best_ms", "before_ms", "now_ms", "now_vs_peft_best"))
    assert step["precision_now"] in ("bf16", "fp32") and step["step_tflop_readout"] < step["step_tflop_full"]
    assert written["sweep"]["configs"] == 4 and written["sweep"]["one_at_a_time_s"] > 0
    decoder = written["decoder_steps"][0]
    assert decoder["generation_steps"] == 2 and decoder["precision"] == "fp32"
    assert all(math.isfinite(decoder[key]) for key in ("hugging_face_ms", "readout_decoder_ms"))
    chunks = written["chunks"]  # on a CPU: the large n's epoch per chunk size against small full batches
    assert chunks["n"] == 64 and set(chunks["epoch_ms_per_chunk_rows"]) == {"64", "16"}
    assert chunks["default_chunk_rows"] == 64 and math.isfinite(chunks["default_vs_small_epochs"])


@requires_local_data
def test_the_generation_rounding_check_compares_bf16_with_fp32_at_each_k(tmp_path):
    report = generation_rounding.main(["--smoke", "--out", str(tmp_path)])
    written = json.loads(next(tmp_path.glob("generation-rounding-*.json")).read_text())
    assert written == json.loads(json.dumps(report)) and written["smoke"]
    assert [row["generation_steps"] for row in written["rows"]] == list(generation_rounding.GENERATION_STEPS)
    # bf16 rounds: its logits differ from fp32's, and by less than their own size at this width
    assert all(0 < row["logits_relative_error"] < 1 and 0 <= row["labels_agreeing"] <= 1 for row in written["rows"])


def test_the_device_check_reruns_the_committed_rows_in_each_precision_and_batched(tmp_path):
    report = device_check.main(["--smoke", "--out", str(tmp_path)])
    written = json.loads(next(tmp_path.glob("device-check-*.json")).read_text())
    assert written == json.loads(json.dumps(report, default=str))
    committed_prompts = [run["prompt_len"] for run in written["committed"]["runs"]]
    assert written["smoke"] and written["committed"]["smallest_memorizing_prompt"] in committed_prompts
    assert set(written["runs"]) == {"fp32 one at a time", "bf16 one at a time", "fp16 one at a time", "bf16 batched"}
    for name, result in written["runs"].items():
        assert [run["prompt_len"] for run in result["runs"]] == committed_prompts[:2]
        assert all(run["precision_used"] == name.split()[0] and 0 <= run["final_accuracy"] <= 1
                   for run in result["runs"])
    assert written["runs"]["fp32 one at a time"]["largest_accuracy_difference_from_fp32"] == 0
    assert written["batched_against_one_at_a_time_bf16"]["configs"] == 2


def test_the_paper_cost_counts_every_training_notebook(capsys):
    configs = paper_cost.paper_configs()
    assert set(configs) == {"01_memorization_curves", "02_generation_tradeoff", "03_low_rank_structure",
                            "04_initialization_effect"}
    assert len(configs["04_initialization_effect"]) == 108  # (2 + 8 + 8 backbones) x 3 seeds x 2 prompt lengths
    one = configs["01_memorization_curves"][0]
    assert paper_cost.run_flops(one) == one.epochs * bench.step_flops(
        dict(num_layers=2, hidden_size=512, ffn_size=2048), one.n, one.prompt_len + one.seq_len)
    paper_cost.main([])
    assert sum(line.startswith("| 0") for line in capsys.readouterr().out.splitlines()) == 4  # a row per notebook


def test_the_paper_cost_replays_the_search_notebook_01_runs():
    # IMDb labels at n = 2500 (p = 6 memorizes, 5 fails): from the guess 4 * 2500 / 1600 -> 7, stepping down; from a
    # guess below the threshold (4, the threshold at n = 1600), doubling, then bisection
    assert paper_cost.searched_prompt_lengths(6, 32, start=7) == [7, 6, 5]
    assert paper_cost.searched_prompt_lengths(6, 32, start=4) == [4, 8, 6, 5]
    assert paper_cost.searched_prompt_lengths(1, 32, start=1) == [1]
    assert paper_cost.searched_prompt_lengths(3, 32, start=4) == [4, 3, 2]  # the start memorizes: down until one fails
    assert paper_cost.searched_prompt_lengths(40, 32, start=1) == [1, 2, 4, 8, 16, 32]  # none memorizes up to the cap


def test_the_paper_cost_takes_exact_thresholds_from_results_and_grows_the_rest_with_n():
    base = RunConfig(n=100, prompt_len=1, epochs=10)
    finished = {2: 0.99, 3: 1.0}  # at n = 100 the threshold is exactly 3
    rows = pd.DataFrame([dict(config_id=dataclasses.replace(base, prompt_len=p).config_id, final_accuracy=accuracy)
                         for p, accuracy in finished.items()])
    configs = paper_cost.searched_configs(base, "n", [200, 100], 32, rows)
    runs = [(config.n, config.prompt_len) for config in configs]
    # n = 100: from 1, doubling to 4, then bisecting to 3 (2 fails); n = 200 assumed at the search's guess,
    # 3 * 200 / 100 = 6, which memorizes, and 5 fails
    assert runs == [(100, 1), (100, 2), (100, 4), (100, 3), (200, 6), (200, 5)]
    seeded = paper_cost.searched_configs(base, "n", [200, 100], 32, rows, seeds={100: 3})
    assert [(config.n, config.prompt_len, config.seed) for config in seeded] == [
        (100, p, seed) for p in (1, 2, 4, 3) for seed in range(3)] + [(200, 6, 0), (200, 5, 0)]
    backbones = paper_cost.searched_configs(base, "n", [100], 32, rows, seeds={100: 2}, seed_field="backbone_seed")
    assert {(config.seed, config.backbone_seed) for config in backbones} == {(0, 0), (0, 1)}


def test_the_paper_cost_shows_what_a_committed_medium_run_took(tmp_path, capsys):
    training = dict(runs=12, training_seconds=5400.0, devices=["cpu (x86_64, 2 threads)"], precisions=["bf16"])
    provenance = tmp_path / "provenance.json"
    provenance.write_text(json.dumps({"01_memorization_curves": dict(profile="medium", training=training),
                                      "03_low_rank_structure": dict(profile="quick", training=training)}))
    paper_cost.main(["--provenance", str(provenance)])
    rows = {line.split(" | ")[0][2:]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["01_memorization_curves"].endswith("| 12 runs, 1.50 h (cpu (x86_64, 2 threads)) |")
    assert rows["03_low_rank_structure"].endswith("| not run yet |")  # its committed run is the quick profile's
