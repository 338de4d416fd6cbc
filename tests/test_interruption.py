"""A sweep killed with SIGKILL at random moments and inside results writes loses nothing and redoes nothing."""

import dataclasses
import io
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from promptmem import building, store, sweeps
from promptmem.configs import grid
from promptmem.store import ResultsStore
from promptmem.sweeps import run_sweep
from tests.test_sweeps import TINY

CONFIGS = grid(TINY, prompt_len=[1, 2, 3, 4], seed=[0, 1])  # 8 configs of a fraction of a second each
TRIALS = 20
# Earlier rows, so that rewriting the file takes about as long as a run and kills often land inside a write.
FILLER_ROWS = 5000


def sweep_in_child(path, batched, stop_in_write=None):
    """Run the sweep. With `stop_in_write` the first results write stops this process (SIGSTOP) "half written" or
    "before the rename", so that the parent's kill lands inside a write for certain, not by luck."""
    torch.set_num_threads(1)
    # This forked child's own modules: the parent's stay untouched.
    if stop_in_write == "half written":
        real_write_atomically = store.write_atomically

        def write_half_then_stop(handle, write):
            text = io.StringIO()
            write(text)
            half = len(text.getvalue()) // 2
            handle.write(text.getvalue()[:half])
            handle.flush()
            os.kill(os.getpid(), signal.SIGSTOP)
            handle.write(text.getvalue()[half:])

        store.write_atomically = lambda target, write: real_write_atomically(
            target, lambda handle: write_half_then_stop(handle, write))
    elif stop_in_write == "before the rename":
        real_replace = os.replace

        def stop_then_replace(source, target):
            os.kill(os.getpid(), signal.SIGSTOP)
            real_replace(source, target)

        os.replace = stop_then_replace
    run_sweep(CONFIGS, path, progress=False, batched=batched)
    os._exit(0)


def wait_until_stopped(pid, timeout=120.0):
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the child never reached its results write"
        time.sleep(0.01)


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
    # Random moments, and two kills inside a write for certain (a write is brief: chance alone may miss it).
    kills = [("at random", None)] * TRIALS
    kills[TRIALS // 3] = ("inside a write", "half written")
    kills[2 * TRIALS // 3] = ("inside a write", "before the rename")
    for moment, stop_in_write in kills:
        child = context.Process(target=sweep_in_child, args=(path, batched, stop_in_write))
        child.start()
        if stop_in_write:
            wait_until_stopped(child.pid)
        else:
            time.sleep(rng.uniform(0, full_time))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        leftovers = list(tmp_path.glob(".results.csv.*.tmp"))  # a temporary file left: killed inside a write
        assert leftovers or not stop_in_write
        interrupted_writes += bool(leftovers)
        for leftover in leftovers:
            leftover.unlink()
        frame = ResultsStore(path).load()  # always readable
        assert frame.config_id.is_unique and len(frame) >= FILLER_ROWS
        ours = frame[frame.config_id.isin(wanted)]
        assert ours[["final_accuracy", "epochs_run", "status", "seconds"]].notna().all().all()  # no partial row
        assert finished_before <= set(ours.config_id)  # nothing finished is ever lost
        assert not stop_in_write or set(ours.config_id) == finished_before  # the write killed never landed
        finished_before = set(ours.config_id)
        interrupted_runs += finished_before != wanted
        if finished_before == wanted:  # all done: start over, so later trials interrupt again
            frame[~frame.config_id.isin(wanted)].to_csv(path, index=False)
            finished_before = set()

    print(f"{TRIALS} kills ({'batched' if batched else 'one at a time'}): {interrupted_runs} interrupted the sweep, "
          f"{interrupted_writes} landed inside a results write")
    assert interrupted_runs >= TRIALS // 2  # the random kills did land mid-sweep
    ran = []
    real_setup = building.setup_run  # what both a solo and a batched run build first
    monkeypatch.setattr(building, "setup_run", lambda config: ran.append(config) or real_setup(config))
    result = run_sweep(CONFIGS, path, progress=False, batched=batched)
    assert {config.config_id for config in ran} == wanted - finished_before  # only the unfinished ones ran
    assert len(result) == len(CONFIGS) and set(result.config_id) == wanted
    assert len(ResultsStore(path).load()) == FILLER_ROWS + len(CONFIGS)
