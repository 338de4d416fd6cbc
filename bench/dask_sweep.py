"""One notebook's quick-profile sweep on a local Dask cluster against the same sweep run serially, on one machine in one
run: wall times, and how the rows agree. Writes bench/results/dask-sweep-<device>.json.

    python bench/dask_sweep.py    # notebook 01's memorization grid: 56 configs (about 3 minutes on 2 CPU cores)

The cluster has as many single-threaded worker processes as the machine has cores; the serial sweep is one process
with torch's default threads, as `make reproduce` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from distributed import Client, LocalCluster

from promptmem import reproducibility
from promptmem.configs import grid
from promptmem.profiles import MEMORIZATION
from promptmem.rows import device_file_stem, device_name
from promptmem.sweeps import run_sweep


def main() -> dict:
    settings = MEMORIZATION["quick"]
    base = dataclasses.replace(settings.base, init_scale=0.3)  # the init scale notebook 01's scan chose
    configs = grid(base, n=list(settings.n_values), prompt_len=list(settings.prompt_lengths),
                   labels=list(settings.label_kinds))
    workers = os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        serial = run_sweep(configs, Path(folder) / "serial.csv", progress=False, batched=False)
        serial_seconds = time.perf_counter() - start
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            client.run(torch.set_num_threads, 1)
            start = time.perf_counter()
            spread = run_sweep(configs, Path(folder) / "dask.csv", progress=False, executor=client.get_executor())
            dask_seconds = time.perf_counter() - start
    device = device_name(torch.device("cpu"))
    report = {"device": device, "configs": len(configs), "sweep": "notebook 01, quick profile, memorization grid",
              "serial_seconds": serial_seconds, "dask_workers": workers, "dask_threads_per_worker": 1,
              "dask_seconds": dask_seconds, "speedup": serial_seconds / dask_seconds,
              "rows": reproducibility.summary(reproducibility.compare_rows(serial, spread))}
    out = Path(__file__).parent / "results" / f"dask-sweep-{device_file_stem(device)}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
