"""Sweeps: run configs, one alone (`run_config`) or many (`run_sweep`, batched where they can share a pass, or spread
over the workers of an executor), storing each finished config as one row of a results file. Rerunning a sweep skips
the configs already in the file."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import building
from .batched import Run, train_together
from .chunking import default_tokens_per_pass, plan_chunks, shared_pass_groups, shared_pass_key
from .configs import RunConfig
from .rows import RESULTS_SCHEMA, results_row
from .store import ResultsStore
from .training import TrainResult, default_device


def run_config(config: RunConfig, device: torch.device | None = None, progress: bool = False,
               **checkpointing) -> dict:
    """Train one config and return its results row."""
    device = device or default_device()
    model, initial_prompt, result = building.train_config(config, device, progress, **checkpointing)
    return results_row(config, model, initial_prompt, result, device)


def batches_by_default(device: torch.device) -> bool:
    """Whether a sweep trains the runs that share a pass together when its caller does not say: on a CUDA GPU,
    where one pass over many prompts costs about what one costs; on a CPU batching measured slower than one run at a
    time."""
    return device.type == "cuda"


def run_sweep(configs: list[RunConfig], results_path: str | os.PathLike, *, recompute: bool = False,
              device: torch.device | None = None, progress: bool = True, checkpoint_every: int | None = None,
              batched: bool | None = None, tokens_per_pass: int | None = None, executor=None) -> pd.DataFrame:
    """Run every config not yet in the results file (all of them with `recompute`); return their rows.

    All configs are validated before the first one trains. With `batched` (the default on a CUDA GPU), the prompt
    configs that can share a pass (`shared_pass_key`) train together (`batched.train_together`, which never waits
    for the host inside an epoch, so a lone encoder run goes there too), in chunks of at most `tokens_per_pass`
    tokens per pass (default: what the GPU's free memory holds, `default_tokens_per_pass`); each run's row is
    stored as soon as it ends. Others (causal models, training from scratch) train one at a time. With
    `checkpoint_every`, each run saves its state that often into `.<results name>.checkpoints/<config_id>.pt`
    beside the results file, and a rerun of an interrupted sweep continues the interrupted run from there instead
    of from epoch 0.

    With an `executor` (anything with `submit(fn, *args)` returning a future or job with `done()` and `result()`: a
    `concurrent.futures` pool, a Dask `Client.get_executor()`, a submitit Slurm executor), each config is one task:
    a worker builds and trains it on its own default device (one GPU per worker where it has one), and this process
    stores each row as its task ends. The first failed task stops the sweep (the rest are cancelled); the rows
    stored so far stay, and a rerun resumes.
    """
    if not isinstance(recompute, bool):
        raise ValueError(f"recompute must be True or False, got {recompute!r}")
    if batched is not None and not isinstance(batched, bool):
        raise ValueError(f"batched must be None (on a CUDA GPU only), True or False, got {batched!r}")
    if tokens_per_pass is not None and (not isinstance(tokens_per_pass, int) or tokens_per_pass < 1):
        raise ValueError(f"tokens_per_pass must be None or an integer >= 1, got {tokens_per_pass!r}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise ValueError(f"executor must have a submit(fn, *args) method (a concurrent.futures.Executor, a Dask "
                         f"client's get_executor(), a submitit executor), got {executor!r}")
    if executor is not None and batched:
        raise ValueError("batched=True and an executor exclude each other: with an executor each config is a task")
    for config in configs:
        config.validate()
    device = device or default_device()
    batched = batches_by_default(device) if batched is None else batched
    store = ResultsStore(results_path)
    todo = store.unfinished(configs, recompute)
    older = store.older_ids() & {config.config_id for config in todo}
    if older and not recompute:
        print(f"{len(older)} rows of {results_path} were written by an older promptmem (results schema below "
              f"{RESULTS_SCHEMA}, columns missing): they run again")
    checkpoints = Path(results_path).parent / f".{Path(results_path).stem}.checkpoints"

    def checkpointing(config: RunConfig) -> dict:
        return {} if checkpoint_every is None else dict(checkpoint=checkpoints / f"{config.config_id}.pt",
                                                        checkpoint_every=checkpoint_every)

    bar = tqdm(total=len(todo), desc=f"{Path(results_path).stem}: {len(todo)} to run", disable=not progress)
    if executor is not None:
        _run_on(executor, todo, store, checkpointing, bar)
    groups = [] if executor is not None else shared_pass_groups(todo) if batched else [[config] for config in todo]
    for group in groups:
        if shared_pass_key(group[0]) is None or not batched:
            store.put(run_config(group[0], device, **checkpointing(group[0])))
            bar.update(1)
            continue
        budget = tokens_per_pass or default_tokens_per_pass(group[0], device)
        chunks = plan_chunks(group, budget)
        if len(group) > 1:
            sizes = ", ".join(str(len(chunk)) for chunk in chunks)
            print(f"{len(group)} runs on one backbone (N = {group[0].seq_len}) train together: {len(chunks)} "
                  f"chunk(s) of {sizes} runs, at most {budget} tokens per pass")
        for chunk in chunks:
            _train_together(chunk, store, device, checkpointing, bar)
    bar.close()
    return store.rows_of(configs)


def _run_on(executor, configs: list[RunConfig], store: ResultsStore, checkpointing, bar) -> None:
    """Each config a task of `executor`; each row stored here as its task ends."""
    pending = {executor.submit(run_config, config, None, False, **checkpointing(config)): config
               for config in configs}
    try:
        while pending:
            if all(isinstance(task, concurrent.futures.Future) for task in pending):
                ended = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED).done
            else:  # submitit jobs are not concurrent.futures futures: ask them
                ended = [task for task in pending if task.done()]
                if not ended:
                    time.sleep(1)
            for task in ended:
                store.put(task.result())
                del pending[task]
                bar.update(1)
    finally:
        for task in pending:
            task.cancel()


def _train_together(configs: list[RunConfig], store: ResultsStore, device: torch.device, checkpointing, bar) -> None:
    """Train configs that share a pass together, storing each run's row as it ends."""
    models, initial_prompts, runs = [], [], []
    for config in configs:
        model, initial_prompt, arguments = building.setup_run(config)
        models.append(model)
        initial_prompts.append(initial_prompt)
        runs.append(Run(model=model, **arguments, **checkpointing(config)))

    def store_row(index: int, result: TrainResult) -> None:
        store.put(results_row(configs[index], models[index], initial_prompts[index], result, device))
        bar.update(1)

    train_together(runs, precision=configs[0].precision, device=device, progress=False, on_finish=store_row)
