"""Does a memorization outcome depend on where and how the prompt trained? Reruns notebook 03's committed medium
random-token runs (2-layer width-512 encoder, n = 1000, N = 8, random labels, lr 0.005, up to 1000 epochs; trained
on a 2-core CPU in bf16) on this machine: one at a time in fp32, bf16 and fp16 with a GradScaler (the path a T4 or
V100 takes), and batched in bf16 (how `run_sweep` trains on a GPU). Writes bench/results/device-check-<device>.json.

    python bench/device_check.py            # the committed medium rows (minutes on a GPU, hours on a CPU)
    python bench/device_check.py --smoke    # two of the rows, shrunk to a tiny encoder: checks that it runs

Reported per run: status, epochs, final accuracy (always measured in fp32), seconds; per precision the smallest
memorizing prompt; the batched runs against the solo ones in reproducibility's terms (exact columns that differ,
the largest relative difference of the float columns).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from promptmem.configs import config_from_row
from promptmem.profiles import LOW_RANK
from promptmem.reproducibility import compare_rows, summary
from promptmem.rows import device_file_stem, device_name
from promptmem.sweeps import run_sweep
from promptmem.training import default_device

RESULTS = Path(__file__).parents[1] / "results" / "03_low_rank_structure.csv"
PRECISIONS = ("fp32", "bf16", "fp16")
REPORTED = ["prompt_len", "status", "epochs_run", "final_accuracy", "precision_used", "seconds"]
SMOKE = dict(n=16, hidden_size=32, num_heads=2, ffn_size=64, epochs=3)


def committed_rows() -> pd.DataFrame:
    """Notebook 03's medium random-token rows (the profile's encoder and n), by prompt length."""
    rows = pd.read_csv(RESULTS)
    settings = LOW_RANK["medium"]
    medium = rows[(rows.dataset == "random_tokens") & (rows.hidden_size == settings.base.hidden_size)
                  & (rows.n == settings.n)]
    if medium.empty:
        raise SystemExit(f"{RESULTS} holds no medium random-token rows (hidden_size {settings.base.hidden_size}, "
                         f"n {settings.n}): run notebook 03's medium profile first")
    return medium.sort_values("prompt_len")


def smallest_memorizing_prompt(rows: pd.DataFrame) -> int | None:
    memorized = rows[rows.status == "memorized"].prompt_len
    return int(memorized.min()) if len(memorized) else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON report")
    parser.add_argument("--smoke", action="store_true", help="two runs, a tiny encoder, 3 epochs: checks that it runs")
    arguments = parser.parse_args(argv)
    device = default_device()
    committed = committed_rows()
    configs = [config_from_row(row) for _, row in committed.iterrows()]
    if arguments.smoke:
        configs = [dataclasses.replace(config, **SMOKE) for config in configs[:2]]
    print(f"{device_name(device)}: {len(configs)} configs of notebook 03's medium random-token runs", flush=True)

    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        def sweep(name, precision, batched):
            rows = run_sweep([dataclasses.replace(config, precision=precision) for config in configs],
                             Path(folder) / f"{name}.csv", device=device, batched=batched, progress=False)
            runs[name] = rows.sort_values("prompt_len")
            print(f"{name}:\n{runs[name][REPORTED].to_string(index=False)}", flush=True)

        for precision in PRECISIONS:
            sweep(f"{precision} one at a time", precision, batched=False)
        sweep("bf16 batched", "bf16", batched=True)

    # the batched rows against the solo bf16 ones: same configs, so the same config_ids
    batching = summary(compare_rows(runs["bf16 one at a time"], runs["bf16 batched"]))
    fp32 = runs["fp32 one at a time"].set_index("prompt_len").final_accuracy
    report = {
        "device": device_name(device), "torch": torch.__version__, "smoke": arguments.smoke,
        "committed": {"device": committed.device.iloc[0], "precision_used": committed.precision_used.iloc[0],
                      "runs": committed[REPORTED].to_dict("records"),
                      "smallest_memorizing_prompt": smallest_memorizing_prompt(committed)},
        "runs": {name: {"runs": rows[REPORTED].to_dict("records"),
                        "smallest_memorizing_prompt": smallest_memorizing_prompt(rows),
                        "largest_accuracy_difference_from_fp32": float(
                            (rows.set_index("prompt_len").final_accuracy - fp32).abs().max())}
                 for name, rows in runs.items()},
        "batched_against_one_at_a_time_bf16": batching,
    }
    for name, result in [("committed (CPU)", report["committed"]), *report["runs"].items()]:
        print(f"{name}: smallest memorizing p = {result['smallest_memorizing_prompt']}", flush=True)
    folder = Path(arguments.out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"device-check-{device_file_stem(report['device'])}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
