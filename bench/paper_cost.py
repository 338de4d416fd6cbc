"""What each notebook's paper profile costs, counted in FLOPs from the profiles' grids, and the time that would take.

    python bench/paper_cost.py [--tflops-t4 16] [--tflops-h100 200]

Counts the main training grids of notebooks 01-04 (the init-scale scans, the prompt-length sweeps; not the small
from-scratch baselines) at their full epoch budgets: an upper bound, as early stop ends memorizing runs sooner.
Per epoch a prompt run costs one forward and one backward pass to the input over its n examples (`step_flops` of
bench_step.py, with the K generated tokens of notebook 02 counted as sequence length), and notebook 04 adds a
forward pass over its train and test sets every `eval_every` epochs. The time assumes a sustained throughput: the
defaults are guesses (about a quarter of a T4's 65 TFLOP/s fp16 peak and of an H100's 790 TFLOP/s bf16 one), not
measurements; pass your own. The last column is what the notebook's committed medium profile (the papers' backbones
at smaller grids) took to train on the CPU it ran on, as `figures/provenance.json` records it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path

from promptmem import profiles
from promptmem.configs import grid
from promptmem.provenance import PROVENANCE
from promptmem.tables import duration

ROBERTA_BASE_SHAPE = dict(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072)

spec = importlib.util.spec_from_file_location("bench_step", Path(__file__).parent / "bench_step.py")
bench_step = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_step)


def run_flops(config) -> float:
    shape = dict(num_layers=config.num_layers, hidden_size=config.hidden_size, ffn_size=config.ffn_size)
    length = config.prompt_len + config.seq_len + (config.generation_steps or 0)
    flops = config.epochs * bench_step.step_flops(shape, config.n, length)
    if config.eval_every:  # forward only (a third of forward + backward to the input) over train and test sets
        evaluations = config.epochs // config.eval_every + 1
        flops += evaluations * bench_step.step_flops(shape, config.n + (config.test_n or 0), length) / 3
    return flops


def paper_configs() -> dict[str, list]:
    memorization, generation = profiles.MEMORIZATION["paper"], profiles.GENERATION["paper"]
    low_rank, initialization = profiles.LOW_RANK["paper"], profiles.INITIALIZATION["paper"]
    base01 = memorization.base
    base03 = dataclasses.replace(low_rank.base, n=low_rank.n, dataset="low_rank")
    return {
        "01_memorization_curves": profiles.init_scale_scan(memorization)
        + grid(base01, labels=memorization.label_kinds, n=memorization.n_values, prompt_len=memorization.prompt_lengths)
        + grid(dataclasses.replace(base01, n=memorization.seq_len_n), seq_len=memorization.seq_lens,
               prompt_len=memorization.prompt_lengths),
        "02_generation_tradeoff": profiles.init_scale_scan(generation)
        + grid(generation.base, labels=generation.label_kinds, n=generation.n_values,
               prompt_len=generation.prompt_lengths, generation_steps=generation.generation_steps),
        "03_low_rank_structure": grid(base03, rank=low_rank.ranks, prompt_len=low_rank.prompt_lengths)
        + grid(base03, rank=low_rank.random_label_ranks, prompt_len=low_rank.prompt_lengths)
        + grid(dataclasses.replace(base03, rank=None), dataset=["sst2", "sst2", "random_tokens"],
               prompt_len=low_rank.prompt_lengths),
        # RoBERTa-base's shape stands for its pretrained, shuffled and random-weight runs (no hub needed to count)
        "04_initialization_effect": grid(dataclasses.replace(initialization.base, **ROBERTA_BASE_SHAPE),
                                         init_scale=list(range(2 + len(initialization.init_scales))),
                                         seed=initialization.seeds, prompt_len=initialization.prompt_lengths)
        + grid(dataclasses.replace(initialization.base, **initialization.encoder),
               init_scale=initialization.init_scales, seed=initialization.seeds,
               prompt_len=initialization.prompt_lengths),
    }


def measured_medium(entry: dict) -> str:
    """The training cost of a notebook's committed medium-profile run (its provenance entry), or why there is none."""
    training = entry.get("training")
    if entry.get("profile") != "medium" or not training:
        return "not run yet"
    return f"{training['runs']} runs, {duration(training['training_seconds'])} ({', '.join(training['devices'])})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tflops-t4", type=float, default=16.0, help="sustained TFLOP/s assumed on a T4")
    parser.add_argument("--tflops-h100", type=float, default=200.0, help="sustained TFLOP/s assumed on an H100")
    parser.add_argument("--provenance", type=Path, default=Path(__file__).parents[1] / PROVENANCE,
                        help="where the committed runs' training cost is recorded")
    arguments = parser.parse_args(argv)
    recorded = json.loads(arguments.provenance.read_text()) if arguments.provenance.exists() else {}
    print(f"| notebook | runs | PFLOP (upper bound) | T4 at {arguments.tflops_t4:g} TFLOP/s | "
          f"H100 at {arguments.tflops_h100:g} TFLOP/s | medium profile, measured: training |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for notebook, configs in paper_configs().items():
        flops = sum(map(run_flops, configs))
        hours = [flops / (tflops * 1e12) / 3600 for tflops in (arguments.tflops_t4, arguments.tflops_h100)]
        print(f"| {notebook} | {len(configs)} | {flops / 1e15:.1f} | {hours[0]:.1f} h | {60 * hours[1]:.0f} min | "
              f"{measured_medium(recorded.get(notebook, {}))} |")


if __name__ == "__main__":
    main()
