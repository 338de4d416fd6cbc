"""The smallest memorizing prompt of a setting on the integers, not read off a fixed grid: accuracy rises with the
prompt length p, so the search doubles p until a run memorizes, then bisects between the largest p that fails and the
smallest that memorizes. Every run is an ordinary sweep row, so a search resumes from the results file (each step
is derived from the finished rows alone) and a rerun recomputes nothing."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

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


def bracket(base: RunConfig, results_path: str | os.PathLike, max_prompt_len: int, target: float = 1.0) -> Bracket:
    """The bracket the finished rows of `base` at prompt lengths 1…max_prompt_len give."""
    rows = ResultsStore(results_path).load()
    ids = {dataclasses.replace(base, prompt_len=p).config_id: p for p in range(1, max_prompt_len + 1)}
    finished = {} if rows.empty else {ids[row.config_id]: row.final_accuracy >= target - 1e-9
                                      for row in rows.itertuples() if row.config_id in ids}
    memorizes = min((p for p, memorized in finished.items() if memorized), default=None)
    fails = max((p for p, memorized in finished.items() if not memorized and (memorizes is None or p < memorizes)),
                default=0)
    return Bracket(fails, memorizes)


def next_prompt_len(found: Bracket, max_prompt_len: int, start: int = 1) -> int | None:
    """The prompt length to run next, or None when the search is over: `start` first, then doubling the largest
    failing length (capped at max_prompt_len) until one memorizes, then the middle of the bracket."""
    if found.exact or (found.memorizes is None and found.fails >= max_prompt_len) or found.memorizes == 1:
        return None
    if found.memorizes is None:
        return start if found.fails == 0 else min(2 * found.fails, max_prompt_len)
    return (found.fails + found.memorizes) // 2


def smallest_memorizing_prompt(base: RunConfig, results_path: str | os.PathLike, max_prompt_len: int, *,
                               start: int = 1, target: float = 1.0, **sweep_options) -> Bracket:
    """Search the smallest prompt length at which `base` (its prompt_len replaced) reaches `target` accuracy, between
    1 and max_prompt_len, storing each run in `results_path`; return the final bracket. `sweep_options` go to
    `run_sweep` (device, progress, checkpoint_every)."""
    if not isinstance(max_prompt_len, int) or isinstance(max_prompt_len, bool) or max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be an integer >= 1, got {max_prompt_len!r}")
    if not isinstance(start, int) or isinstance(start, bool) or not 1 <= start <= max_prompt_len:
        raise ValueError(f"start must be an integer in [1, max_prompt_len={max_prompt_len}], got {start!r}")
    dataclasses.replace(base, prompt_len=max_prompt_len).validate()  # the longest prompt fits, before any run
    while (prompt_len := next_prompt_len(bracket(base, results_path, max_prompt_len, target), max_prompt_len,
                                         start)) is not None:
        run_sweep([dataclasses.replace(base, prompt_len=prompt_len)], results_path, **sweep_options)
    return bracket(base, results_path, max_prompt_len, target)
