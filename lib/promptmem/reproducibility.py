"""What a rerun reproduces of a results row, and how closely: rows of two runs of the same configs compared.

Bit-identical: the same config on the same machine with the same batch shapes. torch (MKL, oneDNN) picks one kernel
per instruction set and operand shape, and a kernel sums in one fixed order, so a rerun, or a run resumed from its
checkpoint, gives back the very bits.

Not bit-identical: a run inside a batched pass against the same run alone (other operand shapes), and a run on
another machine (another instruction set, so other kernels). Their rounding differs in the last bits and the
trajectories drift apart. What is promised there, for short fp32 runs, is what the verdicts read: the same status,
epochs and accuracies (`EXACT_COLUMNS`), and every float within `RELATIVE_TOLERANCE` of the other (`FLOAT_COLUMNS`).
The tolerance comes from a measurement (`bench/determinism.py`, the README's reliability section), not from a guess.
bf16 runs agree across batch shapes as closely on some kernel sets (an AMX host's own) and not on others, nor across
machines (bf16 rounding follows the kernel).

    python -m promptmem.reproducibility results build/nbtest/results   # exit status 1 when they disagree
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd
import torch

from .processor import Processor, this_processor
from .rows import ATTENTION_COLUMNS
from .store import ResultsStore

# What the verdicts read: a rerun anywhere must give these exactly (accuracies are counts over n, curves included).
EXACT_COLUMNS = ("status", "epochs_run", "final_accuracy", "test_accuracy", "trainable_params", "evaluations")
# Floats of a row (JSON lists of floats for the spectra and the per-layer attention statistics).
FLOAT_COLUMNS = ("final_loss", "initial_prompt_singular_values", "prompt_singular_values",
                 "prompt_update_singular_values", *ATTENTION_COLUMNS.values())
# Relative difference allowed between two short runs of one config across batch shapes or machines: 10x the largest
# measured (9.5e-6, bench/results/determinism-cpu.json, "reference"), so that a machine a little unlike the measured
# ones still passes. It holds for runs short enough that rounding differences stay small (the tests': 30 epochs at
# most); the notebooks' 100-epoch runs drift further apart (same file, "notebooks", and the README).
RELATIVE_TOLERANCE = 1e-4
# A re-plot computes in float64 from stored numbers only (fits, means, ratios): under other_kernels() numpy's OpenBLAS
# moved a fitted exponent by 2.2e-16; a figure's table may differ from the committed one by this much, no more.
REPLOT_TOLERANCE = dict(rtol=1e-9, atol=1e-12)
# The environment variables that choose each library's kernels: torch's oneDNN, MKL and ATen dispatch, numpy's
# OpenBLAS. make test's second pass sets all four (other_kernels) and names them in KERNEL_SET_VARIABLE.
KERNEL_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE")
KERNEL_SET_VARIABLE = "PROMPTMEM_KERNEL_SET"
# OpenBLAS cores whose sgemm kernels are Haswell's (the Zen cores reuse them): the other set needs an older one there
HASWELL_CORES = ("haswell", "zen")


def own_isa(variable: str, processor: Processor | None = None) -> str:
    """What a library runs here, as 'amx', 'avx512', 'avx2' or 'older': the cap the environment sets for it (hosts
    may preset one), else the processor's widest instruction set."""
    cap = os.environ.get(variable, "").upper()
    if cap in ("", "ALL", "DEFAULT"):
        return (processor or this_processor()).vector_isa
    if "AMX" in cap:
        return "amx"
    return "avx512" if cap.startswith(("AVX512", "AVX10")) else "avx2" if cap == "AVX2" else "older"


def openblas_core() -> str:
    """The core numpy's OpenBLAS runs (its OPENBLAS_CORETYPE, preset or detected), as OpenBLAS names it."""
    import numpy  # noqa: F401 (threadpoolctl sees the libraries loaded)
    from threadpoolctl import threadpool_info

    return next(info["architecture"] for info in threadpool_info() if info["internal_api"] == "openblas")


def other_kernels(processor: Processor | None = None) -> dict[str, str]:
    """A kernel set that differs from this host's own on every library, so that a test run under it meets another
    machine's rounding (make test's second pass). On a host with AMX it is an AMD EPYC host's of CI's kind as far as
    the libraries allow (oneDNN on AVX512-BF16 without AMX, OpenBLAS on Haswell's kernels, which those hosts preset);
    on others, a machine without AVX-512 (AVX2), or without AVX2 where this one already lacks AVX-512. ATen's dispatch
    and MKL go one level down everywhere: no library then runs the same kernels in both passes."""
    processor = processor or this_processor()
    onednn, mkl = own_isa("ONEDNN_MAX_CPU_ISA", processor), own_isa("MKL_ENABLE_INSTRUCTIONS", processor)
    aten = torch.backends.cpu.get_cpu_capability()  # ATen's own report already follows the environment's cap
    core = os.environ.get("OPENBLAS_CORETYPE") or openblas_core()
    return {"ONEDNN_MAX_CPU_ISA": {"amx": "AVX512_CORE_BF16", "avx512": "AVX2"}.get(onednn, "SSE41"),
            "MKL_ENABLE_INSTRUCTIONS": "AVX2" if mkl in ("amx", "avx512") else "SSE4_2",
            "ATEN_CPU_CAPABILITY": "avx2" if aten == "AVX512" else "default",
            "OPENBLAS_CORETYPE": "Sandybridge" if core.lower() in HASWELL_CORES else "Haswell"}


def relative_difference(reference: float, other: float) -> float:
    """|reference - other| / max(|reference|, |other|): 0 for equal values (NaNs included), inf where only one is
    NaN."""
    if reference == other or (math.isnan(reference) and math.isnan(other)):
        return 0.0
    if math.isnan(reference) or math.isnan(other):
        return math.inf
    return abs(reference - other) / max(abs(reference), abs(other))


def _floats(value) -> list[float]:
    if isinstance(value, str):
        return [float(v) for v in json.loads(value)] if value else []
    return [float(value)]


def _same(reference, other) -> bool:
    missing = pd.isna(reference) if not isinstance(reference, str) else False
    if missing or (not isinstance(other, str) and pd.isna(other)):
        return missing and not isinstance(other, str) and pd.isna(other)
    return reference == other


def compare_rows(reference: pd.DataFrame, rerun: pd.DataFrame) -> pd.DataFrame:
    """Per config in both and per column of EXACT_COLUMNS and FLOAT_COLUMNS: whether the values are equal and, for
    floats, the largest relative difference (0 for equal lists). Columns: config_id, column, equal,
    relative_difference (NaN for exact columns), reference, rerun."""
    reference, rerun = reference.set_index("config_id"), rerun.set_index("config_id")
    rows = []
    for config_id in reference.index.intersection(rerun.index):
        first, second = reference.loc[config_id], rerun.loc[config_id]
        for column in EXACT_COLUMNS:
            rows.append(dict(config_id=config_id, column=column, equal=_same(first[column], second[column]),
                             relative_difference=float("nan"), reference=first[column], rerun=second[column]))
        for column in FLOAT_COLUMNS:
            values, others = _floats(first[column]), _floats(second[column])
            if len(values) != len(others):
                difference = math.inf
            else:
                difference = max((relative_difference(a, b) for a, b in zip(values, others)), default=0.0)
            rows.append(dict(config_id=config_id, column=column, equal=values == others,
                             relative_difference=difference, reference=first[column], rerun=second[column]))
    return pd.DataFrame(rows, columns=["config_id", "column", "equal", "relative_difference", "reference", "rerun"])


def disagreements(comparison: pd.DataFrame, tolerance: float = RELATIVE_TOLERANCE) -> pd.DataFrame:
    """The rows of `compare_rows` that break the promise: an exact column that differs, or a float beyond
    `tolerance`."""
    exact = comparison.column.isin(EXACT_COLUMNS)
    broken = (exact & ~comparison.equal) | (~exact & (comparison.relative_difference > tolerance))
    return comparison[broken]


def summary(comparison: pd.DataFrame) -> dict:
    """Configs compared, exact columns that differed (count per column), and per float column the largest relative
    difference and the share of values that were bit-identical."""
    exact = comparison[comparison.column.isin(EXACT_COLUMNS)]
    floats = comparison[~comparison.column.isin(EXACT_COLUMNS)]
    return {"configs": int(comparison.config_id.nunique()),
            "exact_columns_differing": {column: int((~group.equal).sum()) for column, group in exact.groupby("column")},
            "largest_relative_difference": {column: float(group.relative_difference.max())
                                            for column, group in floats.groupby("column")},
            "bit_identical_share": {column: round(float(group.equal.mean()), 4)
                                    for column, group in floats.groupby("column")}}


def compare_folders(reference: Path, rerun: Path) -> pd.DataFrame:
    """`compare_rows` for every results file of `rerun` that `reference` has too (files of training runs only)."""
    parts = []
    for path in sorted(Path(rerun).glob("*.csv")):
        other = Path(reference) / path.name
        if not other.exists():
            continue
        if "config_id" not in pd.read_csv(path, nrows=0).columns:
            continue  # a stored measurement (timings, error grids), not training runs
        first, second = ResultsStore(other).load(), ResultsStore(path).load()
        parts.append(compare_rows(first, second).assign(file=path.name))
    return pd.concat(parts, ignore_index=True) if parts else compare_rows(pd.DataFrame(columns=["config_id"]),
                                                                          pd.DataFrame(columns=["config_id"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare the rows of two results folders for the same configs: "
                                                 "exact columns equal, floats within the tolerance.")
    parser.add_argument("reference", type=Path)
    parser.add_argument("rerun", type=Path)
    parser.add_argument("--tolerance", type=float, default=RELATIVE_TOLERANCE)
    parser.add_argument("--minimum-configs", type=int, default=1,
                        help="fail unless at least this many configs are in both (a comparison of nothing proves "
                             "nothing)")
    arguments = parser.parse_args(argv)
    comparison = compare_folders(arguments.reference, arguments.rerun)
    print(json.dumps(summary(comparison), indent=2))
    broken = disagreements(comparison, arguments.tolerance)
    if comparison.config_id.nunique() < arguments.minimum_configs:
        print(f"only {comparison.config_id.nunique()} configs in both folders, fewer than --minimum-configs "
              f"{arguments.minimum_configs}")
        return 1
    if len(broken):
        print(f"{len(broken)} values disagree beyond the promise (exact columns, floats within "
              f"{arguments.tolerance:g}):")
        print(broken.to_string(max_colwidth=60))
        return 1
    print(f"{comparison.config_id.nunique()} configs agree: exact columns equal, floats within "
          f"{arguments.tolerance:g} relative")
    return 0


if __name__ == "__main__":
    sys.exit(main())
