"""Training within a wall-clock allocation on an offline GPU machine (a Slurm job, a rented GPU), and merging what it
brings back into results/ at home.

    python -m promptmem.allocation run --notebooks 01 02 --profile paper --minutes 50 --out DIR
    python -m promptmem.allocation merge DIR

`run`, from the repository root, executes each notebook with papermill as `make reproduce` does (from notebooks/,
its rows in results/), but from a scratch copy with its figures in a scratch folder, so the committed notebooks and
figures stay as they are: each notebook trains its own missing runs and searches, nothing else. PROMPTMEM_DEADLINE
(promptmem.deadline) is the start + `minutes` - MARGIN_SECONDS; past it the running notebook's runs save their
checkpoints and it fails with BudgetExhausted, and no further notebook starts. DIR then receives at most 7 files: per
results file the rows that were not finished in it at the start (`<results name>.csv`), the unfinished runs'
checkpoints (`checkpoints.tar.gz`) and `allocation.log`.

`merge` checks every returned file before it writes anything, adds the rows through the results store (a config
finished at home keeps its row) and puts each checkpoint in its folder (unless its run has finished at home or the
checkpoint there is further along), so the next allocation, or the notebook at home, resumes the runs from them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import logging
import math
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from .deadline import DEADLINE_ENV, BudgetExhausted
from .profiles import PROFILES
from .rows import RESULTS_SCHEMA, device_name
from .store import ResultsStore, write_atomically
from .training import default_device

# The notebooks whose runs train on a GPU and resume from checkpoints. 05 and 06 train nothing; 07's fits keep no
# checkpoint, and its paper profile is its committed medium one; 08 fits on the CPU whatever the machine.
NOTEBOOKS = ("01", "02", "03", "04", "09")
# Kept free at the end of the allocation: a minute to spare, and 30 s for the epoch under way at the deadline, the
# kernel's shutdown and the packaging.
MARGIN_SECONDS = 90
MIN_MINUTES = 2
NOTEBOOKS_DIR, RESULTS_DIR = Path("notebooks"), Path("results")  # relative to the repository root, as for `make`
LOG, CHECKPOINTS = "allocation.log", "checkpoints.tar.gz"
# A run's checkpoint, relative to results/, as `sweeps.run_sweep` keeps it: .<results name>.checkpoints/<config_id>.pt
CHECKPOINT_PATH = re.compile(r"\.([\w-]+)\.checkpoints/([\w-]+)\.pt")

FINISHED, STOPPED, NOT_STARTED = "finished", "stopped at the deadline", "not started (the deadline had passed)"
PLACED, KEPT, DROPPED = "placed", "kept (the one here has run as long)", "dropped (their runs finished here)"


def check_arguments(notebooks: list[str], profile: str, minutes: float, out: Path,
                    notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks to execute, in the order given; a ValueError naming the first bad argument and what it allows."""
    paths = []
    for number in dict.fromkeys(f"{int(name):02d}" if name.isdigit() else name for name in notebooks):
        if number not in NOTEBOOKS:
            raise ValueError(f"--notebooks: {number!r} is not one that trains here; choose from {', '.join(NOTEBOOKS)} "
                             "(05 and 06 train nothing, 07's fits keep no checkpoint, 08 fits on the CPU)")
        found = sorted(notebooks_dir.glob(f"{number}_*.ipynb"))
        if len(found) != 1:
            raise ValueError(f"--notebooks: no notebook {number} in {notebooks_dir}/ (run from the repository root)")
        paths += found
    if profile not in PROFILES:
        raise ValueError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if not (math.isfinite(minutes) and minutes >= MIN_MINUTES):
        raise ValueError(f"--minutes must be at least {MIN_MINUTES} (the last {MARGIN_SECONDS} s go to stopping the "
                         f"runs and packaging), got {minutes:g}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "not empty" if out.is_dir() else "a file"
        raise ValueError(f"--out must be a new or empty folder, and {out} is {what}")
    if importlib.util.find_spec("papermill") is None:
        raise ValueError("papermill is not installed (with ipykernel): install them, e.g. from a wheelhouse")
    return paths


def results_files(results_dir: Path) -> list[Path]:
    """The results store's files (not the measurement tables that `stored_table` keeps beside them)."""
    def header(path: Path) -> str:
        with open(path) as handle:
            return handle.readline().strip()

    return [path for path in sorted(results_dir.glob("*.csv")) if "config_id" in header(path).split(",")]


def run(notebooks: list[Path], profile: str, deadline: float, out: Path, results_dir: Path = RESULTS_DIR,
        echo: bool = False) -> dict[str, str]:
    """Execute the notebooks one after another until `deadline` (a Unix time), then package into `out` what they
    trained; return each notebook's outcome (finished, stopped at the deadline, failed: its error, not started)."""
    finished_before = {path.name: ResultsStore(path).finished_ids() for path in results_files(results_dir)}
    out.mkdir(parents=True, exist_ok=True)
    outcomes = {}
    with _logging(out / LOG, echo) as log, tempfile.TemporaryDirectory(prefix="promptmem-allocation-") as scratch:
        log.info(f"on {device_name(default_device())}: notebooks {', '.join(path.stem for path in notebooks)}, "
                 f"profile {profile}, deadline {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(deadline))}")
        try:
            with _environment(DEADLINE_ENV, repr(deadline)):
                for notebook in notebooks:
                    if STOPPED in outcomes.values() or time.time() >= deadline:
                        outcomes[notebook.stem] = NOT_STARTED
                    else:
                        started = time.time()
                        outcomes[notebook.stem] = _execute(notebook, profile, results_dir, Path(scratch), log)
                        log.info(f"{notebook.stem}: {outcomes[notebook.stem]} after {time.time() - started:.0f} s")
        finally:  # interrupted too: what finished and the checkpoints come back
            for line in package(finished_before, results_dir, out):
                log.info(line)
        log.info("; ".join(f"{name}: {outcome}" for name, outcome in outcomes.items()))
    return outcomes


def _execute(notebook: Path, profile: str, results_dir: Path, scratch: Path, log: logging.Logger) -> str:
    """Run a notebook from its folder, as `make reproduce` does, its executed copy and figures going to `scratch`."""
    import papermill  # only `run` needs it

    try:
        papermill.execute_notebook(notebook, scratch / notebook.name, kernel_name="python3", cwd=notebook.parent,
                                   parameters=dict(profile=profile, results_dir=str(results_dir.resolve()),
                                                   figures_dir=str(scratch / "figures")),
                                   progress_bar=False, log_output=True)
    except Exception as error:  # papermill re-raises a kernel's error as PapermillExecutionError, naming it
        name = getattr(error, "ename", type(error).__name__)
        if name == BudgetExhausted.__name__:
            return STOPPED
        log.info(f"{notebook.stem} failed:\n{error}")
        return f"failed: {name}: {getattr(error, 'evalue', error)}"
    return FINISHED


def package(finished_before: dict[str, set], results_dir: Path, out: Path) -> list[str]:
    """Into `out`: per results file its rows not finished there at the start, and the checkpoints of the unfinished
    runs in one archive; return what was packed, a line per file."""
    packed = []
    for path in results_files(results_dir):
        rows = ResultsStore(path).load()
        if rows.empty:
            continue
        new = rows[(rows.results_schema.fillna(0) == RESULTS_SCHEMA)
                   & ~rows.config_id.isin(finished_before.get(path.name, set()))]
        if len(new):
            write_atomically(out / path.name, lambda handle: new.to_csv(handle, index=False))  # as the store writes
            packed.append(f"{path.name}: {len(new)} new rows")
    checkpoints = sorted(path for path in results_dir.glob(".*.checkpoints/*.pt")
                         if CHECKPOINT_PATH.fullmatch(path.relative_to(results_dir).as_posix()))
    if checkpoints:
        with tarfile.open(out / CHECKPOINTS, "w:gz") as archive:
            for path in checkpoints:
                archive.add(path, arcname=path.relative_to(results_dir).as_posix())
        packed.append(f"{CHECKPOINTS}: {len(checkpoints)} unfinished runs' checkpoints")
    return packed or ["nothing new to bring back"]


def merge(returned: Path, results_dir: Path = RESULTS_DIR) -> list[str]:
    """Add a returned folder's rows to the results files and put its checkpoints in place, every file checked before
    any is written; return what was merged, a line per file."""
    if not returned.is_dir():
        raise ValueError(f"{returned} is not a folder")
    rows = {path.name: returned_rows(path, results_dir / path.name) for path in sorted(returned.glob("*.csv"))}
    checkpoints = returned_checkpoints(returned / CHECKPOINTS) if (returned / CHECKPOINTS).exists() else {}
    if not rows and not checkpoints:
        raise ValueError(f"{returned} holds no rows (*.csv) and no {CHECKPOINTS}: nothing to merge")
    actions = {name: _checkpoint_action(name, epochs, results_dir) for name, (_, epochs) in checkpoints.items()}
    merged = []
    for name, frame in rows.items():
        store = ResultsStore(results_dir / name)
        there = store.finished_ids()
        fresh = [row for row in frame.to_dict("records") if row["config_id"] not in there]
        for row in fresh:
            store.put(row)
        merged.append(f"{name}: {len(fresh)} rows added, {len(frame) - len(fresh)} finished here already")
    for name, action in actions.items():
        if action == PLACED:
            target = results_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            temporary.write_bytes(checkpoints[name][0])
            os.replace(temporary, target)  # a crash leaves the previous checkpoint, as training's saves do
    if actions:
        counts = collections.Counter(actions.values())
        merged.append(f"{CHECKPOINTS}: " + ", ".join(f"{counts[what]} {what}" for what in (PLACED, KEPT, DROPPED)))
    return merged


def _checkpoint_action(name: str, epochs: int, results_dir: Path) -> str:
    """What merging does with a returned checkpoint: drop it where its run has finished here, keep the one here where
    that has run as long, place it otherwise."""
    results_name, config_id = CHECKPOINT_PATH.fullmatch(name).groups()
    target = results_dir / name
    if config_id in ResultsStore(results_dir / f"{results_name}.csv").finished_ids():
        return DROPPED
    if target.exists() and checkpoint_epochs(target.read_bytes(), target) >= epochs:
        return KEPT
    return PLACED


def returned_rows(path: Path, home: Path) -> pd.DataFrame:
    """A returned rows file, checked against the results file it goes to: it reads whole (the store refuses a damaged
    file and a newer schema), its rows are of this promptmem's schema, each config once, with that file's columns."""
    frame = ResultsStore(path).load()
    if frame.empty:
        return frame
    schemas = sorted({int(schema) for schema in frame["results_schema"].dropna()}) \
        if "results_schema" in frame.columns else []
    if schemas != [RESULTS_SCHEMA] or frame["results_schema"].isna().any():
        raise ValueError(f"{path} holds rows of results schema {schemas or 'none'}, and this promptmem writes schema "
                         f"{RESULTS_SCHEMA}: rerun the allocation with this version. Nothing was merged.")
    repeated = frame.config_id[frame.config_id.duplicated()].tolist()
    if repeated:
        raise ValueError(f"{path} holds config {repeated[0]} more than once. Nothing was merged.")
    there = ResultsStore(home).load()
    current = there[there.results_schema.fillna(0) == RESULTS_SCHEMA] if "results_schema" in there.columns else there
    if len(current):  # every row of this version there fills these columns; any other column is unknown there
        unknown = sorted(set(frame.columns) - set(there.columns))
        missing = [column for column in current.columns if current[column].notna().all() and column not in frame]
        if unknown or missing:
            raise ValueError(f"{path} does not hold rows of {home}: columns missing {missing}, unknown there "
                             f"{unknown}. Nothing was merged.")
    return frame


def returned_checkpoints(path: Path) -> dict[str, tuple[bytes, int]]:
    """A returned checkpoint archive, read whole: per checkpoint (its path in results/) its bytes and epochs run."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = archive.getmembers()
            strays = [member.name for member in members
                      if not member.isfile() or not CHECKPOINT_PATH.fullmatch(member.name)]
            if strays:
                raise ValueError(f"{path} holds {strays[0]!r}, not a run's checkpoint "
                                 f"(.<results name>.checkpoints/<config_id>.pt). Nothing was merged.")
            files = {member.name: archive.extractfile(member).read() for member in members}
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"{path} is damaged ({error}): copy it again. Nothing was merged.") from None
    return {name: (data, checkpoint_epochs(data, f"{path}: {name}")) for name, data in files.items()}


def checkpoint_epochs(data: bytes, name) -> int:
    """The epochs a saved training state (`training.save_checkpoint`) has run."""
    try:
        return int(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")["epochs"])
    except Exception as error:  # unpickling, a missing key: not a checkpoint this version reads
        raise ValueError(f"{name} is not a readable checkpoint ({type(error).__name__}: {error}). "
                         f"Nothing was merged.") from None


@contextlib.contextmanager
def _logging(path: Path, echo: bool):
    """A log into `path` (and stderr with `echo`) of this module's lines and of the notebooks' outputs (papermill)."""
    handlers = [logging.FileHandler(path)] + ([logging.StreamHandler()] if echo else [])
    loggers = [logging.getLogger(__name__), logging.getLogger("papermill")]
    levels = [logger.level for logger in loggers]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for logger in loggers:
        logger.setLevel(logging.INFO)
        for handler in handlers:
            logger.addHandler(handler)
    try:
        yield loggers[0]
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
            for handler in handlers:
                logger.removeHandler(handler)
        for handler in handlers:
            handler.close()


@contextlib.contextmanager
def _environment(name: str, value: str):
    """`name` set to `value` in this process and the kernels it starts, restored afterwards."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def main(argv=None) -> int:
    started = time.time()
    parser = argparse.ArgumentParser(prog="python -m promptmem.allocation", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train the notebooks' missing runs until the allocation ends")
    run_parser.add_argument("--notebooks", nargs="+", required=True, metavar="NN", help=", ".join(NOTEBOOKS))
    run_parser.add_argument("--profile", default="paper", help=f"one of {', '.join(PROFILES)} (default: paper)")
    run_parser.add_argument("--minutes", type=float, required=True,
                            help=f"the allocation's wall-clock minutes, at least {MIN_MINUTES}; the runs stop "
                                 f"{MARGIN_SECONDS} s before they end")
    run_parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for what comes back")
    merge_parser = commands.add_parser("merge", help="merge a folder that `run` filled into results/")
    merge_parser.add_argument("folder", type=Path)
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "merge":
            print("\n".join(merge(arguments.folder)))
            return 0
        try:
            notebooks = check_arguments(arguments.notebooks, arguments.profile, arguments.minutes, arguments.out)
        except ValueError as error:
            run_parser.error(str(error))
        deadline = started + 60 * arguments.minutes - MARGIN_SECONDS
        outcomes = run(notebooks, arguments.profile, deadline, arguments.out, echo=True)
    except ValueError as error:  # a damaged or refused results file
        raise SystemExit(f"{parser.prog} {arguments.command}: {error}") from None
    print(f"bring back {arguments.out}/ and run: python -m promptmem.allocation merge <it>")
    return 1 if any(outcome.startswith("failed") for outcome in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
