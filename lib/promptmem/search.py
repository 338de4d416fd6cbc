"""The smallest memorizing prompt of a setting on the integers, not read off a fixed grid: accuracy rises with the
prompt length p, so the search starts at a guess, doubles p until a run memorizes, then bisects between the largest p
that fails and the smallest that memorizes; where the guess memorizes, it steps down one at a time until a run fails
(a memorizing run stops early, a failing one runs its whole epoch budget, so a good guess is cheapest approached from
above). Along n (or N) each value's guess is the last threshold grown in proportion to the value. Every run is an
ordinary sweep row, so a search resumes from the results file (each step is derived from the finished rows alone) and
a rerun recomputes nothing. The guesses change what a search costs, not the bracket it finds."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .configs import RunConfig
from .store import ResultsStore
from .sweeps import run_sweep


@dataclass(frozen=True)
class Bracket:
    fails: int  # the largest prompt length known to fail below `memorizes` (0: none has failed)
    memorizes: int | None  # the smallest known to memorize (None: none up to the search's max_prompt_len)

    @property
    def exact(self) -> bool:
        """Whether the smallest memorizing prompt length is known exactly (one above the largest that fails)."""
        return self.memorizes is not None and self.memorizes == self.fails + 1


def bracket(base: RunConfig, results_path: str | os.PathLike, max_prompt_len: int, target: float = 1.0,
            among: set[str] | None = None) -> Bracket:
    """The bracket the finished rows of `base` at prompt lengths 1…max_prompt_len give (only the rows whose
    config_id is in `among`, where given)."""
    return bracket_of(ResultsStore(results_path).load(), base, max_prompt_len, target, among)


def bracket_of(rows: pd.DataFrame, base: RunConfig, max_prompt_len: int, target: float = 1.0,
               among: set[str] | None = None) -> Bracket:
    """`bracket` from rows already read."""
    ids = {dataclasses.replace(base, prompt_len=p).config_id: p for p in range(1, max_prompt_len + 1)}
    finished = {} if rows.empty else {ids[row.config_id]: row.final_accuracy >= target - 1e-9
                                      for row in rows.itertuples()
                                      if row.config_id in ids and (among is None or row.config_id in among)}
    return bracket_from(finished)


def bracket_from(finished: dict[int, bool]) -> Bracket:
    """The bracket of finished prompt lengths, each mapped to whether it memorized."""
    memorizes = min((p for p, memorized in finished.items() if memorized), default=None)
    fails = max((p for p, memorized in finished.items() if not memorized and (memorizes is None or p < memorizes)),
                default=0)
    return Bracket(fails, memorizes)


def next_prompt_len(found: Bracket, max_prompt_len: int, start: int = 1) -> int | None:
    """The prompt length to run next, or None when the search is over: `start` first, wherever it lies inside the
    bracket; then doubling the largest failing length (capped at max_prompt_len) until one memorizes; while nothing
    has failed and the smallest memorizing length is at most `start`, one below it; then the middle of the bracket."""
    if found.exact or (found.memorizes is None and found.fails >= max_prompt_len) or found.memorizes == 1:
        return None
    if found.fails < start and (found.memorizes is None or start < found.memorizes):
        return start
    if found.memorizes is None:
        return min(2 * found.fails, max_prompt_len)
    if found.fails == 0 and found.memorizes <= start:
        return found.memorizes - 1
    return (found.fails + found.memorizes) // 2


def grown_guess(threshold: int, value: int, next_value: int, max_prompt_len: int, growth: float = 1.0) -> int:
    """The first guess at `next_value` of n (or N, or a rank) from the smallest memorizing prompt length at `value`:
    grown as (next_value / value)^growth (1: in proportion, as the thresholds along n measured so far have grown; 0:
    the same threshold), rounded up, capped at max_prompt_len."""
    # 1e-9: a guess that is an integer in exact arithmetic is not rounded up past it by the power's rounding
    return min(max_prompt_len, math.ceil(threshold * (next_value / value) ** growth - 1e-9))


def check_search(base: RunConfig, max_prompt_len: int, start: int, recompute: bool) -> None:
    """Raise a ValueError naming the first bad argument of a search on the integers, before any run."""
    if not isinstance(max_prompt_len, int) or isinstance(max_prompt_len, bool) or max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be an integer >= 1, got {max_prompt_len!r}")
    if not isinstance(start, int) or isinstance(start, bool) or not 1 <= start <= max_prompt_len:
        raise ValueError(f"start must be an integer in [1, max_prompt_len={max_prompt_len}], got {start!r}")
    if not isinstance(recompute, bool):
        raise ValueError(f"recompute must be True or False, got {recompute!r}")
    dataclasses.replace(base, prompt_len=max_prompt_len).validate()  # the longest prompt fits, before any run


def smallest_memorizing_prompt(base: RunConfig, results_path: str | os.PathLike, max_prompt_len: int, *,
                               start: int = 1, target: float = 1.0, recompute: bool = False,
                               **sweep_options) -> Bracket:
    """Search the smallest prompt length at which `base` (its prompt_len replaced) reaches `target` accuracy, between
    1 and max_prompt_len, storing each run in `results_path`; return the final bracket. With `recompute` every step
    trains anew and reads only the runs of this call. `sweep_options` go to `run_sweep` (device, progress,
    checkpoint_every)."""
    check_search(base, max_prompt_len, start, recompute)
    trained = set() if recompute else None
    while (prompt_len := next_prompt_len(bracket(base, results_path, max_prompt_len, target, trained),
                                         max_prompt_len, start)) is not None:
        config = dataclasses.replace(base, prompt_len=prompt_len)
        run_sweep([config], results_path, recompute=recompute, **sweep_options)
        if trained is not None:
            trained.add(config.config_id)
    return bracket(base, results_path, max_prompt_len, target, trained)


def smallest_memorizing_prompts(base: RunConfig, results_path: str | os.PathLike, field: str,
                                values: Sequence, max_prompt_len: int, *, target: float = 1.0,
                                recompute: bool = False, **sweep_options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The search at each value of `field` (n, seq_len) in ascending order, each starting at the previous value's
    smallest memorizing prompt grown in proportion to the value (`grown_guess`; where the growth is slower, the
    search steps down to the threshold). Returns the brackets (one row per value: `field`, fails, memorizes, exact)
    and the rows of every run the searches made, ordered by value and prompt length."""
    if not hasattr(base, field) or field == "prompt_len":
        raise ValueError(f"field must name a RunConfig field other than prompt_len, got {field!r}")
    settings = [dataclasses.replace(base, **{field: value}) for value in sorted(values)]
    for setting in settings:  # every setting's longest prompt fits, before any run
        dataclasses.replace(setting, prompt_len=max_prompt_len).validate()
    brackets, start = [], 1
    for setting, following in zip(settings, [*settings[1:], None]):
        found = smallest_memorizing_prompt(setting, results_path, max_prompt_len, start=start, target=target,
                                           recompute=recompute, **sweep_options)
        brackets.append({field: getattr(setting, field), **_bracket_fields(found)})
        if found.memorizes and following is not None:
            start = grown_guess(found.memorizes, getattr(setting, field), getattr(following, field), max_prompt_len)
    ids = {dataclasses.replace(setting, prompt_len=p).config_id for setting in settings
           for p in range(1, max_prompt_len + 1)}
    rows = ResultsStore(results_path).load()
    if not rows.empty:
        rows = rows[rows.config_id.isin(ids)].sort_values([field, "prompt_len"]).reset_index(drop=True)
    return pd.DataFrame(brackets), rows


def prompt_length_runs(base: RunConfig, results_path: str | os.PathLike, along: tuple[str, Sequence], *,
                       vary: dict[str, Sequence] | None = None, prompt_lengths: Sequence[int] = (),
                       search_max_prompt_len: int | None = None, recompute: bool = False,
                       **sweep_options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs behind "the smallest memorizing prompt against `along`" (("n", values) or ("seq_len", values)) at
    every combination of `vary` (for example {"labels": ("true", "random")}): the grid over `prompt_lengths`, or,
    with `search_max_prompt_len`, the searches on the integers 1…that. Returns the rows (ordered by setting and
    prompt length) and one bracket per setting: the largest failing and the smallest memorizing prompt length among
    its runs, and whether the two are adjacent integers (the threshold is then exact)."""
    field, values = along
    combinations = [dict(zip(vary, chosen)) for chosen in itertools.product(*vary.values())] if vary else [{}]
    keys = [*(vary or {}), field]
    if search_max_prompt_len is None:
        configs = [dataclasses.replace(base, **combination, **{field: value}, prompt_len=p)
                   for combination in combinations for value in values for p in prompt_lengths]
        rows = run_sweep(configs, results_path, recompute=recompute, **sweep_options)
        brackets = pd.DataFrame([
            {**combination, field: value, **_bracket_fields(bracket_of(
                rows, dataclasses.replace(base, **combination, **{field: value}), max(prompt_lengths)))}
            for combination in combinations for value in values])
        return rows.sort_values([*keys, "prompt_len"]).reset_index(drop=True), brackets
    found = [smallest_memorizing_prompts(dataclasses.replace(base, **combination), results_path, field, values,
                                         search_max_prompt_len, recompute=recompute, **sweep_options)
             for combination in combinations]
    brackets = pd.concat([table.assign(**combination) for (table, _), combination in zip(found, combinations)],
                         ignore_index=True)[[*keys, "fails", "memorizes", "exact"]]
    rows = pd.concat([rows for _, rows in found], ignore_index=True)
    return rows.sort_values([*keys, "prompt_len"]).reset_index(drop=True), brackets


def _bracket_fields(found: Bracket) -> dict:
    return {"fails": found.fails, "memorizes": found.memorizes, "exact": found.exact}
