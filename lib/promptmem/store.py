"""The crash-safe results store: a CSV of results rows, one per finished config, rewritten whole into a temporary
file and moved over the old one, so a crash leaves either the old or the new file, never half of one, and each
rewrite made under a file lock, so that concurrent writers (processes on one machine, workers on a shared
filesystem) never drop each other's rows; measurements that are not training runs kept the same way
(`stored_table`); and re-plot mode, in which nothing is computed anew."""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import io
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pandas as pd
from filelock import FileLock

from .rows import JSON_COLUMNS, RESULTS_SCHEMA, column_types, number_columns

# Set (to anything but 0) by `make figures`: notebooks re-plot from results/ and nothing may train or measure anew.
REPLOT_ENV = "PROMPTMEM_REPLOT"


def write_atomically(path: str | os.PathLike, write) -> None:
    """`write(handle)` into a temporary file beside `path`, synced, then renamed over `path`: a crash leaves the old
    file or the new one, never half of one (atomic on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class DamagedResultsError(ValueError):
    """A results file that cannot be read whole: undecodable bytes, a row cut short, a field of the wrong type."""


class ResultsStore:
    """A CSV of results rows, one per finished config, keyed by `config_id`. A file that does not read whole is
    refused (DamagedResultsError) and never written over: `salvage` keeps its whole rows, on request only."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> pd.DataFrame:
        """The rows; an empty DataFrame for a missing file, an empty one (0 bytes) or one of a header alone."""
        if not self.path.exists():
            return pd.DataFrame()
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise self._damaged(f"byte {error.start} is not UTF-8 text ({error.reason})", kept=None) from None
        if not text:
            return pd.DataFrame()
        header, records, problems = _check_records(text)
        if problems:
            line, problem = problems[0]
            more = f" ({len(problems) - 1} more damaged rows)" if len(problems) > 1 else ""
            raise self._damaged(f"line {line}: {problem}{more}", kept=len(records) - len(problems))
        frame = pd.read_csv(io.StringIO(text), dtype=column_types())
        if len(frame) and "config_id" not in frame.columns:
            raise ValueError(f"{self.path} is not a promptmem results file (no config_id column)")
        newest = frame["results_schema"].max() if "results_schema" in frame.columns and len(frame) else None
        if newest is not None and newest > RESULTS_SCHEMA:
            raise ValueError(f"{self.path} holds rows of results schema {newest}, written by a newer promptmem than "
                             f"this one (schema {RESULTS_SCHEMA}): upgrade promptmem, or move the file away")
        return frame

    def _damaged(self, problem: str, kept: int | None) -> DamagedResultsError:
        recover = (f"keep the {kept} rows that read whole and drop the rest (the file as it is now is kept as "
                   f"{self.path.name}.damaged): python -m promptmem.store salvage {self.path}; or restore the file "
                   f"(git checkout -- {self.path}), or move it away" if kept is not None else
                   f"restore the file (git checkout -- {self.path}) or move it away")
        return DamagedResultsError(f"{self.path} is damaged, {problem}. Nothing was trained and the file was not "
                                   f"changed. To go on: {recover}")

    def salvage(self) -> int:
        """Keep the rows of a damaged file that read whole, drop the others, and keep the damaged file beside it as
        `<name>.damaged`; return the number of rows kept. Only ever on request (the CLI's `salvage`)."""
        text = self.path.read_bytes().decode("utf-8", errors="replace")  # undecodable bytes damage their row only
        header, records, problems = _check_records(text)
        if header is None or "\ufffd" in ",".join(header):
            raise DamagedResultsError(f"{self.path}: its header cannot be read, so no row can be kept")
        damaged = {line for line, _ in problems}
        whole = [fields for line, fields in records if line not in damaged and "\ufffd" not in ",".join(fields)]
        shutil.copyfile(self.path, self.path.with_name(f"{self.path.name}.damaged"))

        def write(handle):
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(whole)

        with FileLock(self.path.with_name(f".{self.path.name}.lock")):
            write_atomically(self.path, write)
        return len(whole)

    def finished_ids(self) -> set[str]:
        """The configs whose rows this version wrote (schema RESULTS_SCHEMA): older rows do not count as finished."""
        frame = self.load()
        if not len(frame) or "results_schema" not in frame.columns:
            return set()
        return set(frame.loc[frame["results_schema"].fillna(0) == RESULTS_SCHEMA, "config_id"])

    def older_ids(self) -> set[str]:
        """The configs whose rows an older version wrote (no results_schema, or a lower one)."""
        frame = self.load()
        if not len(frame):
            return set()
        if "results_schema" not in frame.columns:
            return set(frame["config_id"])
        return set(frame.loc[frame["results_schema"].fillna(0) < RESULTS_SCHEMA, "config_id"])

    def unfinished(self, configs: list, recompute: bool = False) -> list:
        """The configs (each once, in order) without a finished row here, or all of them with `recompute`; refused
        while re-plotting, where nothing may be computed. A config is anything with a `config_id`."""
        done = set() if recompute else self.finished_ids()
        todo = [config for config in dict.fromkeys(configs) if config.config_id not in done]
        if todo and replotting():
            raise RuntimeError(f"{REPLOT_ENV} is set (re-plot from results/ only), but {len(todo)} of these configs "
                               f"are not finished in {self.path}: run `make reproduce` (or the notebook) to compute them")
        return todo

    def rows_of(self, configs: list) -> pd.DataFrame:
        """The stored rows of these configs, once each, in their order."""
        wanted = dict.fromkeys(config.config_id for config in configs)
        return self.load().set_index("config_id").loc[list(wanted)].reset_index()

    def fill(self, configs: list, compute, recompute: bool = False, workers: int = 1) -> pd.DataFrame:
        """Compute (`compute(config)` gives its row) and store every config without a finished row here (all of them
        with `recompute`), each row as its config ends, so an interrupted sweep resumes; return the configs' rows in
        order. Every config is validated (`config.validate()`) before the first is computed. With `workers` > 1 the
        configs are computed by that many processes at once (for computations of one thread each: `compute` must be
        importable from a module); the first failure stops the rest."""
        if not isinstance(recompute, bool):
            raise ValueError(f"recompute must be True or False, got {recompute!r}")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        for config in configs:
            config.validate()
        todo = self.unfinished(configs, recompute)
        if workers == 1 or len(todo) < 2:
            for config in todo:
                self.put(compute(config))
            return self.rows_of(configs)
        # spawned, not forked: a fork of a process whose OpenMP threads have run can hang
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            tasks = [pool.submit(compute, config) for config in todo]
            try:
                for task in concurrent.futures.as_completed(tasks):
                    self.put(task.result())
            finally:
                for task in tasks:
                    task.cancel()
        return self.rows_of(configs)

    def put(self, row: dict) -> None:
        """Add a row, replacing any earlier row of the same config: read, change and rewrite (`write_atomically`)
        while holding the file's lock (`.<name>.lock` beside it; the system releases it when its holder dies)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_name(f".{self.path.name}.lock")):
            frame = self.load()
            if len(frame):
                frame = frame[frame["config_id"] != row["config_id"]]
            frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
            write_atomically(self.path, lambda handle: frame.to_csv(handle, index=False))


def _check_records(text: str) -> tuple[list[str] | None, list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """A results file's header, its records (line number, fields) and its damaged records (line number, what is
    wrong): a record cut short or running on, a number or JSON column that does not parse, a last line without the
    line break every write ends with (a truncated file), a quoted field that never closes."""
    lines = io.StringIO(text)
    reader = csv.reader(lines, strict=True)
    records, problems = [], []
    try:
        header = next(reader, None)
        for fields in reader:
            records.append((reader.line_num, fields))
    except csv.Error as error:
        records.append((reader.line_num, []))
        problems.append((reader.line_num, f"a field does not parse as CSV ({error})"))
    if header is None:
        return None, records, problems
    numbers = [(index, name) for index, name in enumerate(header) if name in number_columns()]
    texts = [(index, name) for index, name in enumerate(header) if name in JSON_COLUMNS]
    damaged_lines = {line for line, _ in problems}
    for line, fields in records:
        if line in damaged_lines:
            continue
        problem = None
        if len(fields) != len(header):
            problem = f"the row has {len(fields)} fields, the header {len(header)}"
        else:
            problem = next((f"{name} is {fields[index]!r}, not a number" for index, name in numbers
                            if fields[index] and not _parses(float, fields[index])), None) or \
                next((f"{name} is not JSON ({fields[index][:40]!r})" for index, name in texts
                      if fields[index] and not _parses(json.loads, fields[index])), None)
        if problem:
            problems.append((line, problem))
    if not text.endswith("\n") and records and not any(line == records[-1][0] for line, _ in problems):
        problems.append((records[-1][0], "the last row is cut short (the file does not end with the line break "
                                         "that every write ends with)"))
    return header, records, problems


def _parses(parse, value: str) -> bool:
    try:
        parse(value)
        return True
    except ValueError:
        return False


def replotting() -> bool:
    """Whether PROMPTMEM_REPLOT asks for figures from results/ alone."""
    return os.environ.get(REPLOT_ENV, "").strip() not in ("", "0")


def stored_table(path: str | os.PathLike, compute, settings) -> pd.DataFrame:
    """A measurement that is not a training run (error grids, timings), kept in results/: read back when the file
    holds it for these `settings` (any value with a stable repr: a profile's settings, a device), computed and
    saved otherwise (never while re-plotting)."""
    path = Path(path)
    settings_id = hashlib.sha1(repr(settings).encode()).hexdigest()[:12]
    if path.exists():
        stored = pd.read_csv(path)
        if "settings_id" in stored.columns and (stored.settings_id == settings_id).all():
            return stored.drop(columns="settings_id")
    if replotting():
        raise RuntimeError(f"{REPLOT_ENV} is set (re-plot from results/ only), but {path} does not hold these "
                           f"settings: run `make reproduce` (or the notebook) to measure them")
    table = compute().assign(settings_id=settings_id)
    write_atomically(path, lambda handle: table.to_csv(handle, index=False))
    return pd.read_csv(path).drop(columns="settings_id")  # as a later read gives it: the same figures either way


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="the results store: keep the rows of a damaged results file that "
                                                 "read whole (the damaged file is kept as <name>.damaged)")
    parser.add_argument("command", choices=("salvage",))
    parser.add_argument("path", type=Path)
    arguments = parser.parse_args(argv)
    kept = ResultsStore(arguments.path).salvage()
    print(f"{arguments.path}: kept {kept} whole rows; the damaged file is {arguments.path}.damaged")


def read_results(results_dir: str | os.PathLike, notebook: str) -> pd.DataFrame | None:
    """Another notebook's results table, or None (saying so) when that notebook has not run yet."""
    path = Path(results_dir) / f"{notebook}.csv"
    if not path.exists():
        print(f"{path} is missing (run notebook {notebook}): what needs it shows the theory alone")
        return None
    return ResultsStore(path).load()


if __name__ == "__main__":
    main()
