"""A sweep killed with SIGKILL at random moments, results writes included, loses nothing and redoes nothing."""

import dataclasses
import multiprocessing
import os
import random
import signal
import time

import pandas as pd
import pytest
import torch

from promptmem import building, sweeps
from promptmem.configs import grid
from promptmem.store import ResultsStore
from promptmem.sweeps import run_sweep
from tests.test_sweeps import TINY

CONFIGS = grid(TINY, prompt_len=[1, 2, 3, 4], seed=[0, 1])  # 8 configs of a fraction of a second each
TRIALS = 20
# Earlier rows, so that rewriting the file takes about as long as a run and kills often land inside a write.
FILLER_ROWS = 5000


def sweep_in_child(path, batched):
    torch.set_num_threads(1)
    run_sweep(CONFIGS, path, progress=False, batched=batched)
    os._exit(0)


def prefill(path):
    row = sweeps.run_config(dataclasses.replace(TINY, epochs=1, seed=999))
    filler = pd.DataFrame([row] * FILLER_ROWS).assign(config_id=[f"filler{i:07d}" for i in range(FILLER_ROWS)])
    filler.to_csv(path, index=False)


@pytest.mark.parametrize("batched", [False, True], ids=["one at a time", "batched"])
def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path, monkeypatch, batched):
    context = multiprocessing.get_context("fork")
    rng = random.Random(0)
    path = tmp_path / "results.csv"
    prefill(path)
    started = time.perf_counter()
    timing = context.Process(target=sweep_in_child, args=(tmp_path / "timing.csv", batched))
    timing.start()
    timing.join()
    full_time = time.perf_counter() - started
    wanted = {config.config_id for config in CONFIGS}
    finished_before = set()
    interrupted_runs = interrupted_writes = 0
    for trial in range(TRIALS):
        child = context.Process(target=sweep_in_child, args=(path, batched))
        child.start()
        time.sleep(rng.uniform(0, full_time))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        leftovers = list(tmp_path.glob(".results.csv.*.tmp"))  # a temporary file left: killed inside a write
        interrupted_writes += bool(leftovers)
        for leftover in leftovers:
            leftover.unlink()
        frame = ResultsStore(path).load()  # always readable
        assert frame.config_id.is_unique and len(frame) >= FILLER_ROWS
        ours = frame[frame.config_id.isin(wanted)]
        assert ours[["final_accuracy", "epochs_run", "status", "seconds"]].notna().all().all()  # no partial row
        assert finished_before <= set(ours.config_id)  # nothing finished is ever lost
        finished_before = set(ours.config_id)
        interrupted_runs += finished_before != wanted
        if finished_before == wanted:  # all done: start over, so later trials interrupt again
            frame[~frame.config_id.isin(wanted)].to_csv(path, index=False)
            finished_before = set()

    print(f"{TRIALS} kills ({'batched' if batched else 'one at a time'}): {interrupted_runs} interrupted the sweep, "
          f"{interrupted_writes} landed inside a results write")
    assert interrupted_runs >= TRIALS // 2 and interrupted_writes >= 1  # the kills did land mid-sweep and mid-write
    ran = []
    real_setup = building.setup_run  # what both a solo and a batched run build first
    monkeypatch.setattr(building, "setup_run", lambda config: ran.append(config) or real_setup(config))
    result = run_sweep(CONFIGS, path, progress=False, batched=batched)
    assert {config.config_id for config in ran} == wanted - finished_before  # only the unfinished ones ran
    assert len(result) == len(CONFIGS) and set(result.config_id) == wanted
    assert len(ResultsStore(path).load()) == FILLER_ROWS + len(CONFIGS)
