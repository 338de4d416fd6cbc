"""The wall-clock deadline of a training job: PROMPTMEM_DEADLINE, a Unix time (set by `promptmem.allocation run`).
The training loops check it once per epoch; past it a run saves its checkpoint, where it keeps one, and raises
BudgetExhausted, so the job stops before its allocation ends and a later job resumes the run."""

from __future__ import annotations

import os
import time

DEADLINE_ENV = "PROMPTMEM_DEADLINE"


class BudgetExhausted(RuntimeError):
    """The deadline passed while a run trained: it stopped, its state saved where it keeps a checkpoint."""


def from_environment() -> float | None:
    """PROMPTMEM_DEADLINE as a Unix time in seconds, or None where it is not set."""
    value = os.environ.get(DEADLINE_ENV, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{DEADLINE_ENV} must be a Unix time in seconds, got {value!r}") from None


def passed(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def stopped(runs: int, saved: int) -> BudgetExhausted:
    """The exception of `runs` unfinished runs the deadline stopped, `saved` of them with their state saved."""
    return BudgetExhausted(f"{DEADLINE_ENV} passed: {runs} unfinished run(s) stopped, {saved} of them saved in a "
                           f"checkpoint to resume from")
