"""How closely a rerun reproduces finished results rows, measured three ways on one machine in one run:

    across machines     the stored rows (made where they were made) against the same configs rerun here, alone
    across kernel sets  rerun here alone, with this machine's kernels against another machine's
                        (reproducibility.other_kernels: AMD's oneDNN and OpenBLAS paths on an AMX host, AVX2 elsewhere)
    across batch shapes rerun here alone against the same configs trained together in batched passes

for three sets of rows: the short fp32 runs of tests/reference_rows.csv (the tests' tiny encoder and decoder, 30 epochs
at most); the same prompt runs on the encoder trained in bf16 through the readout encoder ("reference-bf16", each
compared with its fp32 row: across precisions, then across kernel sets and batch shapes in bf16); and every row in
results/ (the notebooks' quick profile: up to 100 epochs). For each: how many configs, how
many differed in a column that must be exact (status, epochs, accuracies, curves), and per float column the largest
relative difference and the share of bit-identical values. Writes bench/results/determinism-cpu.json;
reproducibility.RELATIVE_TOLERANCE and the README's reliability section come from it.

    python bench/determinism.py                     # every set (about 30 min on 2 CPU cores)
    python bench/determinism.py --set reference     # the short runs alone (a minute)
    python bench/determinism.py --write-reference   # make tests/reference_rows.csv anew, on this machine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
import transformers

from promptmem import reproducibility
from promptmem.configs import RunConfig, config_from_row, grid
from promptmem.rows import device_name
from promptmem.store import ResultsStore
from promptmem.sweeps import run_sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
REFERENCE = ROOT / "tests" / "reference_rows.csv"
# The short runs: random tokens through the tests' tiny encoder, as the tests train it, and one of each other path
# (minibatches, continuous low-rank inputs, a causal decoder generating 2 steps, a model trained from scratch).
# fp32: the precision every machine computes alike (bf16 runs only where it is native, so never across kernel sets).
TINY = RunConfig(n=16, prompt_len=2, seq_len=4, dataset="random_tokens", labels="random", hidden_size=32,
                 num_heads=2, ffn_size=64, init_scale=0.3, epochs=30, lr=0.05, precision="fp32")
REFERENCE_CONFIGS = [
    *grid(TINY, n=[16, 24], prompt_len=[1, 2, 4], seed=[0, 1]),
    dataclasses.replace(TINY, batch_size=8, epochs=10),
    dataclasses.replace(TINY, dataset="low_rank", labels="true", rank=4),
    dataclasses.replace(TINY, architecture="gpt2", generation_steps=2, epochs=10),
    dataclasses.replace(TINY, method="scratch", prompt_len=0, lr=0.01, epochs=10),
]


def stored_rows(which: str) -> dict[str, Path]:
    """Results file name -> the stored file, for the set `which`."""
    if which.startswith("reference"):
        return {REFERENCE.name: REFERENCE}
    return {path.name: path for path in sorted(RESULTS.glob("0*.csv"))
            if "config_id" in pd.read_csv(path, nrows=0).columns}


def rerun(which: str, out: Path, batched: bool) -> None:
    """Worker: every stored config of the set again into `out`, alone or batched. The set "reference-bf16" takes the
    reference's prompt runs on the encoder in bf16 (the readout encoder) and files each row under its fp32 config's
    id, so that it is compared with the fp32 row."""
    for name, path in stored_rows(which).items():
        configs = [config_from_row(row) for row in ResultsStore(path).load().to_dict("records")]
        if which == "reference-bf16":
            fp32 = [c for c in configs if c.method == "prompt" and c.architecture == "roberta"]
            configs = [dataclasses.replace(c, precision="bf16") for c in fp32]
        rows = run_sweep(configs, out / name, batched=batched, progress=False)
        if which == "reference-bf16":
            rows.assign(config_id=[c.config_id for c in fp32]).to_csv(out / name, index=False)
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability()}))


def worker(which: str, out: Path, batched: bool, environment: dict) -> str:
    command = [sys.executable, __file__, "--worker", str(out), "--set", which] + (["--batched"] if batched else [])
    finished = subprocess.run(command, env=os.environ | environment, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])["cpu_capability"]


def measure(which: str) -> dict:
    """The three comparisons for one set of stored rows."""
    other_kernels = reproducibility.other_kernels()
    with tempfile.TemporaryDirectory() as folder:
        stored = Path(folder) / "stored"
        stored.mkdir()
        for name, path in stored_rows(which).items():
            (stored / name).write_bytes(path.read_bytes())
        alone, kernels, together = (Path(folder) / name for name in ("alone", "other-kernels", "batched"))
        capabilities = {"here": worker(which, alone, False, {}),
                        "other kernels": worker(which, kernels, False, other_kernels)}
        worker(which, together, True, {})
        comparisons = {"stored rows against a rerun here (across machines where they were made elsewhere)":
                       (stored, alone),
                       "across kernel sets (here, against the other kernel set)": (alone, kernels),
                       "across batch shapes (alone, against batched)": (alone, together)}
        return {"cpu_capability": capabilities,
                "stored_rows_made_on": sorted({device for path in stored.glob("*.csv")
                                               for device in ResultsStore(path).load()["device"]}),
                **{name: reproducibility.summary(reproducibility.compare_folders(*folders))
                   for name, folders in comparisons.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("reference", "reference-bf16", "notebooks", "all"), default="all")
    parser.add_argument("--write-reference", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batched", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker is not None:
        return rerun(arguments.set, arguments.worker, arguments.batched)
    if arguments.write_reference:
        REFERENCE.unlink(missing_ok=True)
        run_sweep(REFERENCE_CONFIGS, REFERENCE, batched=False, progress=False)
        return print(f"{len(REFERENCE_CONFIGS)} rows written to {REFERENCE}")

    out = ROOT / "bench" / "results" / "determinism-cpu.json"
    record = json.loads(out.read_text()) if out.exists() else {}
    record |= {"device": device_name(torch.device("cpu")), "other_kernels": reproducibility.other_kernels(),
               "torch": torch.__version__, "transformers": transformers.__version__}
    for which in ("reference", "reference-bf16", "notebooks") if arguments.set == "all" else (arguments.set,):
        record[which] = measure(which)
        out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
