"""What each notebook's paper profile costs, counted in FLOPs from the profiles' grids, and the time that would take.

    python bench/paper_cost.py [--tflops-t4 16] [--tflops-h100 200]

Counts the main training runs of notebooks 01-04 (the init-scale scans, the prompt-length sweeps; not the small
from-scratch baselines) at their full epoch budgets: an upper bound, as early stop ends memorizing runs sooner.
Notebooks 01 and 02 search their smallest memorizing prompts on the integers, so their runs depend on the
thresholds: the search is replayed (`promptmem.search.next_prompt_len`) against each setting's threshold where
`results/` hold it exactly, and elsewhere against the last one's grown in proportion to n (or N), as the medium
profile's grew. Each p the search visits trains the profile's seeds at that n (and notebook 01's backbone seeds at one
n): a replay in which the seeds agree, so seeds that disagree near a threshold add a prompt length or two per n.
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
from promptmem.configs import RunConfig, grid
from promptmem.provenance import PROVENANCE
from promptmem.search import bracket_from, bracket_of, grown_guess, next_prompt_len
from promptmem.seeds import seed_configs
from promptmem.store import ResultsStore
from promptmem.tables import best_setting, duration

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


def searched_prompt_lengths(threshold: int, max_prompt_len: int, start: int) -> list[int]:
    """The prompt lengths a search starting at `start` runs when every p >= `threshold` memorizes."""
    tried: dict[int, bool] = {}
    while (prompt_len := next_prompt_len(bracket_from(tried), max_prompt_len, start)) is not None:
        tried[prompt_len] = prompt_len >= threshold
    return list(tried)


def searched_configs(base: RunConfig, field: str, values, max_prompt_len: int, rows, seeds: dict | None = None,
                     seed_field: str = "seed") -> list[RunConfig]:
    """The runs of notebook 01's search along `field` (n or seq_len) from `base`: each value's threshold as `rows`
    hold it exactly, or else the search's own first guess (the previous threshold grown with `field`); at each p the
    value's seeds (`seeds`: value -> count, one where it is not given) of `seed_field`."""
    configs, threshold, previous = [], 1, None
    for value in sorted(values):
        setting = dataclasses.replace(base, **{field: value})
        found = bracket_of(rows, setting, max_prompt_len)
        guess = 1 if previous is None else grown_guess(threshold, previous, value, max_prompt_len)
        threshold = found.memorizes if found.exact else guess
        configs += [config for p in searched_prompt_lengths(threshold, max_prompt_len, guess)
                    for config in seed_configs(setting, p, (seeds or {}).get(value, 1), seed_field)]
        previous = value
    return configs


def paper_configs(results_dir: Path = Path(__file__).parents[1] / "results") -> dict[str, list]:
    memorization, generation = profiles.MEMORIZATION["paper"], profiles.GENERATION["paper"]
    low_rank, initialization = profiles.LOW_RANK["paper"], profiles.INITIALIZATION["paper"]
    scan01 = profiles.init_scale_scan(memorization)
    rows01 = ResultsStore(results_dir / "01_memorization_curves.csv").load()
    scanned = rows01[rows01.config_id.isin({config.config_id for config in scan01})] if not rows01.empty else rows01
    # the σ the notebook's scan picks, so that the searches' finished rows are found (σ changes no FLOP)
    base01 = (dataclasses.replace(memorization.base, init_scale=best_setting(scanned, "init_scale"))
              if len(scanned) == len(scan01) else memorization.base)
    search_max = memorization.search_max_prompt_len
    seeds01 = dict(zip(memorization.n_values, memorization.seeds or ()))
    runs01 = (scan01 + [config for labels in memorization.label_kinds for config in searched_configs(
        dataclasses.replace(base01, labels=labels), "n", memorization.n_values, search_max, rows01, seeds01)]
        + (searched_configs(dataclasses.replace(base01, labels="random"), "n", [memorization.backbone_seed_n],
                            search_max, rows01, {memorization.backbone_seed_n: memorization.backbone_seeds},
                            "backbone_seed") if memorization.backbone_seed_n else [])
        + searched_configs(dataclasses.replace(base01, n=memorization.seq_len_n, labels="random"), "seq_len",
                           memorization.seq_lens, search_max, rows01))
    rows02 = ResultsStore(results_dir / "02_generation_tradeoff.csv").load()
    runs02 = [config for labels in generation.label_kinds for steps in generation.generation_steps
              for config in searched_configs(dataclasses.replace(generation.base, labels=labels, generation_steps=steps),
                                             "n", generation.n_values, generation.search_max_prompt_len, rows02,
                                             dict.fromkeys(generation.n_values, generation.seeds))]
    base03 = dataclasses.replace(low_rank.base, n=low_rank.n, dataset="low_rank")
    return {
        # each config once: the N panel's runs at N = 8 are the n searches'
        "01_memorization_curves": list({config.config_id: config for config in runs01}.values()),
        "02_generation_tradeoff": profiles.init_scale_scan(generation) + runs02,
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
