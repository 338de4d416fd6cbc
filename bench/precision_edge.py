"""Does notebook 01's smallest memorizing prompt depend on the precision it trains in? Reruns the paper-profile runs
that failed just below their threshold at n = 1600, 2500 and 3600 (2-layer width-512 encoder, σ = 0.1, N = 8, AdamW
lr 0.005, up to 1000 epochs; trained on the CPU in bf16, which `select_precision` takes wherever bf16 is native) in
fp32, what a T4 computes without autocast, and two of them in the precision they trained in, as a same-device control.
Writes bench/results/precision-edge.csv, a results file like notebook 01's (each row names its device): a second run,
on any machine, trains only what is missing, and a run cut short resumes from its checkpoint.

    python bench/precision_edge.py      # minutes on a GPU (batched); about an hour per run on a 2-core CPU in fp32
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from promptmem.configs import config_from_row
from promptmem.sweeps import run_sweep

RESULTS = Path(__file__).parents[1] / "results" / "01_memorization_curves.csv"
# (labels, n, prompt length): each a committed paper-profile run that failed in bf16 next to its threshold
FP32_RUNS = [("random", 3600, 7), ("random", 3600, 8), ("random", 2500, 5), ("true", 3600, 6), ("true", 2500, 5),
             ("random", 1600, 3), ("true", 1600, 3)]
CONTROL_RUNS = [("random", 3600, 8), ("true", 3600, 6)]
REPORTED = ["labels", "n", "prompt_len", "precision_used", "status", "epochs_run", "final_accuracy", "seconds",
            "device"]


def paper_row(rows: pd.DataFrame, labels: str, n: int, prompt_len: int) -> pd.Series:
    match = rows[(rows.method == "prompt") & (rows.hidden_size == 512) & (rows.seq_len == 8) & (rows.labels == labels)
                 & (rows.n == n) & (rows.prompt_len == prompt_len)]
    if match.empty:
        raise SystemExit(f"{RESULTS} holds no paper-profile run with {labels} labels, n = {n}, p = {prompt_len}")
    return match.iloc[0]


def main() -> pd.DataFrame:
    rows = pd.read_csv(RESULTS)
    committed = pd.DataFrame([paper_row(rows, *run) for run in FP32_RUNS])
    configs = ([dataclasses.replace(config_from_row(row), precision="fp32") for _, row in committed.iterrows()]
               + [config_from_row(paper_row(rows, *run)) for run in CONTROL_RUNS])
    path = Path(__file__).parent / "results" / "precision-edge.csv"
    reruns = run_sweep(configs, path, progress=False, checkpoint_every=25)  # on `default_device()`
    table = pd.concat([committed.assign(precision_used="committed " + committed.precision_used), reruns])
    print(table[REPORTED].sort_values(["labels", "n", "prompt_len", "precision_used"]).to_string(index=False))
    print(f"wrote {path}")
    return table


if __name__ == "__main__":
    main()
