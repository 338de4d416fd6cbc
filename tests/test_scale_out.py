"""Sweeps spread over processes and workers: concurrent writers of one results file lose no row (also when one of them
is killed mid-write), and a sweep on an executor (a local process pool, a real Dask cluster) stores the rows of the
serial sweep."""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from promptmem import ResultsStore, grid, run_sweep
from promptmem.reproducibility import compare_rows, disagreements
from tests.test_sweeps import TINY

WRITER = """
import dataclasses, sys
from promptmem import RunConfig, grid, run_sweep
tiny = RunConfig(n=8, prompt_len=1, seq_len=4, dataset="random_tokens", labels="random", hidden_size=32, num_heads=2,
                 ffn_size=64, init_scale=0.3, epochs=1, lr=0.05)
first = int(sys.argv[2]) * 30
run_sweep(grid(tiny, seed=list(range(first, first + 30))), sys.argv[1], progress=False, batched=False)
"""


def writers(path, count: int = 3) -> list[subprocess.Popen]:
    """`count` processes, each a sweep of 30 different one-epoch configs into the same results file."""
    return [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(index)]) for index in range(count)]


def seeds_of(frame: pd.DataFrame, writer: int) -> set[int]:
    return set(frame.seed[(frame.seed >= 30 * writer) & (frame.seed < 30 * writer + 30)])


def test_concurrent_writers_keep_every_row(tmp_path):
    processes = writers(tmp_path / "r.csv")
    assert [process.wait(timeout=300) for process in processes] == [0, 0, 0]
    rows = ResultsStore(tmp_path / "r.csv").load()
    assert len(rows) == 90 and rows.config_id.is_unique and set(rows.seed) == set(range(90))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_writer_killed_mid_sweep_loses_only_its_unfinished_runs(tmp_path):
    path = tmp_path / "r.csv"
    processes = writers(path)
    deadline = time.monotonic() + 300
    while not (path.exists() and len(ResultsStore(path).load()) >= 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(processes[0].pid, signal.SIGKILL)  # whatever it holds, the lock included
    assert [process.wait(timeout=300) for process in processes[1:]] == [0, 0]  # the lock did not stay taken
    rows = ResultsStore(path).load()
    assert seeds_of(rows, 1) == set(range(30, 60)) and seeds_of(rows, 2) == set(range(60, 90))
    assert rows.config_id.is_unique and rows.status.notna().all()  # readable, no partial row
    assert len(seeds_of(rows, 0)) < 30, "the kill came too late to interrupt the sweep"


@pytest.fixture
def configs():
    fp32 = dataclasses.replace(TINY, precision="fp32")  # the precision every process computes alike
    return grid(fp32, prompt_len=[1, 3], seed=[0, 1]) + [dataclasses.replace(fp32, architecture="gpt2",
                                                                                 generation_steps=1, epochs=5)]


def assert_rows_of_the_serial_sweep(serial, spread, configs):
    assert spread.config_id.tolist() == [config.config_id for config in configs]
    comparison = compare_rows(serial, spread)
    assert comparison.config_id.nunique() == len(configs)
    broken = disagreements(comparison)
    assert broken.empty, broken.to_string()


def test_a_sweep_on_a_process_pool_stores_the_serial_rows(tmp_path, configs):
    serial = run_sweep(configs, tmp_path / "serial.csv", progress=False, batched=False)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        spread = run_sweep(configs, tmp_path / "pool.csv", progress=False, executor=pool)
    assert_rows_of_the_serial_sweep(serial, spread, configs)
    with pytest.raises(ValueError, match="executor must have a submit"):
        run_sweep(configs, tmp_path / "x.csv", executor="dask")
    with pytest.raises(ValueError, match="exclude each other"):
        run_sweep(configs, tmp_path / "x.csv", executor=pool, batched=True)


@pytest.fixture
def environment_restored():
    """Dask sets OMP_NUM_THREADS=1 (and more) in the process that starts a cluster, for its workers: put the
    environment back, so that the processes started after this test (the notebooks' kernels) get every core."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_a_sweep_on_a_dask_cluster_stores_the_serial_rows(tmp_path, configs, environment_restored):
    distributed = pytest.importorskip("distributed")
    serial = run_sweep(configs, tmp_path / "serial.csv", progress=False, batched=False)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        spread = run_sweep(configs, tmp_path / "dask.csv", progress=False, executor=client.get_executor())
    assert_rows_of_the_serial_sweep(serial, spread, configs)
