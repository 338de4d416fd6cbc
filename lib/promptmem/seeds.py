"""A threshold over seeds: whether a prompt of length p memorizes is a coin flip near its threshold (the data draw,
the random labels and the initial prompt decide, `RunConfig.seed`), so each (setting, p) trains m seeds and its
outcome is a success rate k/m with a Wilson score interval. p50 is the smallest p whose rate reaches 1/2; the rates'
intervals bracket it: p50 > `below`, the largest p whose interval lies wholly under 1/2, and p50 <= `above`, the
smallest p whose interval lies wholly at or over 1/2 (with fewer than 4 seeds no rate is that sure at 95%, and the
bracket stays open). The exponent of p50 along n gets an interval from a bootstrap over seeds: each replicate draws
every (setting, p)'s success probability from its Jeffreys posterior Beta(k + 1/2, m - k + 1/2) (a plain resampling
of the seeds would give one seed a zero-width interval), finds where the draws cross 1/2 (interpolated on log p
between adjacent prompt lengths: integer thresholds alone bias the exponent by their rounding, which is largest at
the smallest p) and fits log p50 on log n by least squares. On a synthetic logistic success model (tests/test_seeds.py)
the 95% interval covered the true exponent in 191 of 200 draws with 8 seeds per point, and it is four times as wide
with one seed as with eight.

The search is `promptmem.search`'s on the integers (a guess, doubling, bisection), each step training the m seeds of
one p together, on three monotone questions in turn: does the rate reach 1/2 (p50), is it surely over 1/2 (`above`),
is it surely under (`below`). Every run is an ordinary results row (its seed a field of its config), so a search
resumes from the results file and a rerun recomputes nothing."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .configs import RunConfig
from .search import bracket_from, check_search, grown_guess, next_prompt_len
from .store import ResultsStore
from .sweeps import run_sweep

Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson_interval(successes, trials, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (low, high) of a binomial rate: successes of trials (arrays alike)."""
    successes, trials = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    if (trials < 1).any() or (successes < 0).any() or (successes > trials).any():
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got successes={successes.tolist()}, "
                         f"trials={trials.tolist()}")
    rate = successes / trials
    centre = (rate + z ** 2 / (2 * trials)) / (1 + z ** 2 / trials)
    half = z / (1 + z ** 2 / trials) * np.sqrt(rate * (1 - rate) / trials + z ** 2 / (4 * trials ** 2))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def student_t_975(df: int) -> float:
    """The 97.5th percentile of Student's t with `df` degrees of freedom: tabulated to df = 10, beyond it the
    Cornish–Fisher expansion (within 0.001 there)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    if df in table:
        return table[df]
    z = Z_95
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Rate:
    """The success rate of one (setting, p) over its seeds."""
    successes: int
    trials: int

    @property
    def value(self) -> float:
        return self.successes / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        low, high = wilson_interval(self.successes, self.trials)
        return float(low), float(high)

    def reaches_half(self) -> bool:
        return 2 * self.successes >= self.trials

    def surely_over_half(self) -> bool:
        return self.interval[0] >= 0.5

    def surely_under_half(self) -> bool:
        return self.interval[1] < 0.5


def can_be_sure(seeds: int) -> bool:
    """Whether m seeds can put a rate's interval wholly on one side of 1/2 (unanimous: m > z², so m >= 4)."""
    return seeds > Z_95 ** 2


@dataclass(frozen=True)
class SeededBracket:
    below: int  # the largest p whose rate lies surely under 1/2 (0: none): p50 > below
    p50: int | None  # the smallest p whose rate reaches 1/2 (None: none up to the search's limit)
    above: int | None  # the smallest p whose rate lies surely at or over 1/2 (None: none): p50 <= above
    seeds: int

    @property
    def exact(self) -> bool:
        """Whether the rates pin p50 to one integer (its interval bracket holds one value)."""
        return self.above is not None and self.above == self.below + 1


def seeded_bracket_from(rates: dict[int, Rate], seeds: int) -> SeededBracket:
    """The bracket of the rates of finished prompt lengths."""
    return SeededBracket(below=bracket_from({p: not rate.surely_under_half() for p, rate in rates.items()}).fails,
                         p50=bracket_from({p: rate.reaches_half() for p, rate in rates.items()}).memorizes,
                         above=bracket_from({p: rate.surely_over_half() for p, rate in rates.items()}).memorizes,
                         seeds=seeds)


def check_seeds(seeds, name: str = "seeds") -> None:
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"{name} must be an integer >= 1 (seeds 0 … {name} - 1 train at each prompt length), "
                         f"got {seeds!r}")


SEED_FIELDS = ("seed", "backbone_seed")  # the data draw, labels and initial prompt | the frozen backbone's weights


def seed_configs(base: RunConfig, prompt_len: int, seeds: int, seed_field: str = "seed") -> list[RunConfig]:
    """`base` at prompt length p with `seed_field` 0 … seeds - 1."""
    if seed_field not in SEED_FIELDS:
        raise ValueError(f"seed_field must be one of {SEED_FIELDS}, got {seed_field!r}")
    return [dataclasses.replace(base, prompt_len=prompt_len, **{seed_field: seed}) for seed in range(seeds)]


def rates_of(rows: pd.DataFrame, base: RunConfig, seeds: int, max_prompt_len: int, target: float = 1.0,
             among: set[str] | None = None, seed_field: str = "seed") -> dict[int, Rate]:
    """p -> the success rate (final accuracy >= target) of seeds 0 … seeds - 1 (of `seed_field`) of `base` at p, for
    every p in 1 … max_prompt_len whose seeds have all finished (only rows whose config_id is in `among`)."""
    accuracy = {} if rows.empty else dict(zip(rows.config_id, rows.final_accuracy))
    rates = {}
    for p in range(1, max_prompt_len + 1):
        ids = [config.config_id for config in seed_configs(base, p, seeds, seed_field)]
        if all(i in accuracy and (among is None or i in among) for i in ids):
            rates[p] = Rate(sum(accuracy[i] >= target - 1e-9 for i in ids), seeds)
    return rates


def seeded_threshold(base: RunConfig, results_path: str | os.PathLike, max_prompt_len: int, seeds: int, *,
                     start: int = 1, target: float = 1.0, seed_field: str = "seed", recompute: bool = False,
                     **sweep_options) -> SeededBracket:
    """Search p50 of `base` (its prompt_len and `seed_field` replaced) and the bracket its rates' intervals give,
    between 1 and max_prompt_len, the seeds 0 … seeds - 1 of each p in one sweep (batched where `run_sweep` batches:
    on a GPU; `sweep_options` go to it: batched, device, progress, checkpoint_every), storing each run in
    `results_path`. With `recompute` every step trains anew and reads only the runs of this call."""
    check_seeds(seeds)
    seed_configs(base, 1, 1, seed_field)  # checks seed_field
    check_search(base, max_prompt_len, start, recompute)
    trained = set() if recompute else None

    def rates() -> dict[int, Rate]:
        return rates_of(ResultsStore(results_path).load(), base, seeds, max_prompt_len, target, trained, seed_field)

    def search(question: Callable[[Rate], bool], first: int) -> None:
        while (prompt_len := next_prompt_len(bracket_from({p: question(rate) for p, rate in rates().items()}),
                                             max_prompt_len, first)) is not None:
            configs = seed_configs(base, prompt_len, seeds, seed_field)
            run_sweep(configs, results_path, recompute=recompute, **sweep_options)
            if trained is not None:
                trained.update(config.config_id for config in configs)

    search(Rate.reaches_half, start)
    p50 = seeded_bracket_from(rates(), seeds).p50
    if can_be_sure(seeds) and p50 is not None:
        search(Rate.surely_over_half, p50)
        search(lambda rate: not rate.surely_under_half(), p50)
    return seeded_bracket_from(rates(), seeds)


def seeded_thresholds(base: RunConfig, results_path: str | os.PathLike, field: str, values: Sequence,
                      max_prompt_len: int, seeds: int | Sequence[int], *, target: float = 1.0,
                      seed_field: str = "seed", start_growth: float = 1.0, recompute: bool = False,
                      **sweep_options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`seeded_threshold` at each value of `field` (n, seq_len, rank) in ascending order, with `seeds` seeds (one
    count, or one per value), each search starting at the last value's p50 grown as the value's ratio to the power
    `start_growth` (1: in proportion, 0: the last p50; `search.grown_guess`). Returns `thresholds_of`'s tables."""
    if not isinstance(start_growth, (int, float)) or isinstance(start_growth, bool) or not 0 <= start_growth <= 1:
        raise ValueError(f"start_growth must be a number in [0, 1], got {start_growth!r}")
    settings, counts = _settings(base, field, values, seeds, max_prompt_len)
    start = 1
    for index, (setting, count) in enumerate(zip(settings, counts)):
        found = seeded_threshold(setting, results_path, max_prompt_len, count, start=start, target=target,
                                 seed_field=seed_field, recompute=recompute, **sweep_options)
        if found.p50 is not None and index + 1 < len(settings):
            start = grown_guess(found.p50, getattr(setting, field), getattr(settings[index + 1], field),
                                max_prompt_len, start_growth)
    return thresholds_of(base, results_path, field, values, max_prompt_len, seeds, target=target,
                         seed_field=seed_field)


def thresholds_of(base: RunConfig, results_path: str | os.PathLike, field: str, values: Sequence,
                  max_prompt_len: int, seeds: int | Sequence[int], *, target: float = 1.0,
                  seed_field: str = "seed") -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the finished rows say at each value of `field`, training nothing (a laxer criterion `target` reads
    the runs a search made): one bracket per value (`field`, seeds, below, p50, above, exact) and the rates of every
    prompt length whose seeds have all finished (`field`, prompt_len, successes, trials, rate, low, high: its Wilson
    interval)."""
    settings, counts = _settings(base, field, values, seeds, max_prompt_len)
    rows = ResultsStore(results_path).load()
    rated, found = [], []
    for setting, count in zip(settings, counts):
        rates = rates_of(rows, setting, count, max_prompt_len, target, None, seed_field)
        value = getattr(setting, field)
        rated += [{field: value, "prompt_len": p, "successes": rate.successes, "trials": rate.trials,
                   "rate": rate.value, "low": rate.interval[0], "high": rate.interval[1]} for p, rate in rates.items()]
        found.append({field: value, **dataclasses.asdict(seeded_bracket_from(rates, count))})
    rates = pd.DataFrame(rated, columns=[field, "prompt_len", "successes", "trials", "rate", "low", "high"])
    return _bracket_table(found), rates


def _bracket_table(found: list[dict]) -> pd.DataFrame:
    brackets = pd.DataFrame(found)
    above = brackets.above.astype("Int64")  # None where no p is sure to reach 1/2
    return brackets.assign(above=above, exact=(above == brackets.below + 1).fillna(False).astype(bool))


def rates_of_runs(rows: pd.DataFrame, by: Sequence[str], column: str = "final_accuracy",
                  target: float = 1.0) -> pd.DataFrame:
    """The success rate (`column` >= target) over the seeds of finished rows at each (by…, prompt_len), for runs
    that are no `RunConfig` (notebook 07's): columns by…, prompt_len, successes, trials, rate, low, high (its Wilson
    interval), as `thresholds_of`'s rates."""
    keys = [*by, "prompt_len"]
    rated = rows.assign(success=rows[column] >= target - 1e-9).groupby(keys, as_index=False).agg(
        successes=("success", "sum"), trials=("success", "size"))
    low, high = wilson_interval(rated.successes.to_numpy(), rated.trials.to_numpy())
    return rated.assign(rate=rated.successes / rated.trials, low=low, high=high).sort_values(keys, ignore_index=True)


def brackets_of_rates(rates: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One bracket per value of `by` from a rate table (`rates_of_runs`'): by…, below, p50, above, seeds (the
    fewest seeds of its prompt lengths), exact, as `thresholds_of`'s brackets."""
    found = []
    for key, group in rates.groupby(list(by), sort=True):
        seeds = int(group.trials.min())
        bracket = seeded_bracket_from({int(p): Rate(int(k), int(m)) for p, k, m in
                                       zip(group.prompt_len, group.successes, group.trials)}, seeds)
        found.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), **dataclasses.asdict(bracket)})
    return _bracket_table(found)


def _settings(base: RunConfig, field: str, values: Sequence, seeds, max_prompt_len: int):
    """`base` at each value of `field` (ascending) with its seed count; checked before any run."""
    if not hasattr(base, field) or field in ("prompt_len", *SEED_FIELDS):
        raise ValueError(f"field must name a RunConfig field other than prompt_len and {SEED_FIELDS}, got {field!r}")
    counts = [seeds] * len(values) if isinstance(seeds, int) else list(seeds)
    if len(counts) != len(values):
        raise ValueError(f"seeds must be one count or one per value of {field} ({len(values)}), got {len(counts)}")
    for count in counts:
        check_seeds(count)
    values, counts = zip(*sorted(zip(values, counts)))
    settings = [dataclasses.replace(base, **{field: value}) for value in values]
    for setting in settings:  # every setting's longest prompt fits, before any run
        dataclasses.replace(setting, prompt_len=max_prompt_len).validate()
    return settings, list(counts)


@dataclass(frozen=True)
class ExponentEstimate:
    """The exponent a of p50 ∝ x^a: the least-squares fit through the p50s, and the bootstrap's interval."""
    value: float
    low: float
    high: float

    def admits(self, exponent: float) -> bool:
        return self.low <= exponent <= self.high

    def formula(self, variable: str = "n", digits: int | None = None) -> str:
        """'p50 ∝ n^a, 95% (low, high)', to no more decimals than the interval's width supports."""
        value, low, high = self._shown(digits)
        return f"p50 ∝ {variable}^{value}, 95% ({low}, {high})"

    def describe(self, theory_exponent: float = 0.5, variable: str = "n", digits: int | None = None) -> str:
        value, low, high = self._shown(digits)
        return (f"p50 ∝ {variable}^{value}, 95% interval ({low}, {high}): "
                f"{'admits' if self.admits(theory_exponent) else 'excludes'} the theory's {theory_exponent:g}, "
                f"{'excludes' if self.high < 1 else 'admits'} linear growth")

    def _shown(self, digits: int | None) -> tuple[str, str, str]:
        digits = digits if digits is not None else significant_digits(self.high - self.low)
        texts = [f"{number:.{digits}f}" for number in (self.value, self.low, self.high)]
        return tuple(text.lstrip("-") if float(text) == 0 else text for text in texts)  # no "-0"


def significant_digits(width: float) -> int:
    """Decimals an interval of this width supports: one digit of the width (0.4 -> 1, 0.04 -> 2), at least 0."""
    if not math.isfinite(width) or width <= 0:
        return 1
    return max(0, -math.floor(math.log10(width)))


def p50_exponent(rates: pd.DataFrame, field: str = "n", replicates: int = 2000,
                 seed: int = 0) -> ExponentEstimate:
    """The exponent of p50 against `field` from a rate table (`thresholds_of`'s): the least-squares fit of
    log p50 on log x through the observed p50s, and the 2.5th and 97.5th percentiles of the fits to `replicates`
    bootstrap draws. A draw gives each (x, p) a success probability from Beta(k + 1/2, m - k + 1/2) and reads p50
    as the smallest p whose draw reaches 1/2 (one above the largest p run where none does)."""
    if not isinstance(replicates, int) or isinstance(replicates, bool) or replicates < 10:
        raise ValueError(f"replicates must be an integer >= 10, got {replicates!r}")
    xs = sorted(rates[field].unique())
    if len(xs) < 2:
        raise ValueError(f"the rates must span at least two values of {field}, got {xs}")
    rng = np.random.default_rng(seed)
    observed, drawn = [], []
    for x in xs:
        group = rates[rates[field] == x].sort_values("prompt_len")
        prompts = group.prompt_len.to_numpy(dtype=float)
        successes, trials = group.successes.to_numpy(dtype=float), group.trials.to_numpy(dtype=float)
        observed.append(crossing(prompts, successes[None] / trials[None])[0])
        drawn.append(crossing(prompts, rng.beta(successes + 0.5, trials - successes + 0.5,
                                                size=(replicates, len(prompts)))))
    log_x = np.log(np.asarray(xs, dtype=float))
    design = np.column_stack([log_x, np.ones_like(log_x)])
    slopes = np.linalg.lstsq(design, np.log(np.column_stack(drawn)).T, rcond=None)[0][0]
    observed = np.asarray(observed)
    value = float(np.linalg.lstsq(design, np.log(observed), rcond=None)[0][0]) if np.isfinite(observed).all() \
        else float("nan")
    low, high = np.percentile(slopes, [2.5, 97.5])
    return ExponentEstimate(value, float(low), float(high))


def crossing(prompts: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Per row of `rates` (success rates at the ascending `prompts`), where the rate crosses 1/2: interpolated on
    log p between the first p that reaches 1/2 and the p run just below it; the first p itself where it is the
    smallest run or the one below it is not its neighbour; one above the largest p where none reaches 1/2."""
    reached = rates >= 0.5
    first = reached.argmax(axis=1)
    result = np.full(len(rates), prompts.max() + 1.0)
    rows = np.flatnonzero(reached.any(axis=1))
    high = prompts[first[rows]]
    result[rows] = high
    inner = rows[first[rows] > 0]
    low_index = first[inner] - 1
    low, top = prompts[low_index], prompts[first[inner]]
    adjacent = top - low == 1
    inner, low, top, low_index = inner[adjacent], low[adjacent], top[adjacent], low_index[adjacent]
    rate_low, rate_high = rates[inner, low_index], rates[inner, low_index + 1]
    fraction = (0.5 - rate_low) / np.maximum(rate_high - rate_low, 1e-12)
    result[inner] = np.exp(np.log(low) + fraction * (np.log(top) - np.log(low)))
    return result


CRITERIA = (1.0, 0.999)  # 100% of the pairs; 99.9% (at n = 3600 one pair decides 100%)


def threshold_runs(base: RunConfig, results_path: str | os.PathLike, along: tuple[str, Sequence], *,
                   seeds: int | Sequence[int], vary: dict[str, Sequence] | None = None,
                   prompt_lengths: Sequence[int] = (), search_max_prompt_len: int | None = None,
                   criteria: Sequence[float] = CRITERIA, seed_field: str = "seed", start_growth: float = 1.0,
                   recompute: bool = False, **sweep_options) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The runs behind "p50 against `along`" (("n", values), ("seq_len", values), ("rank", values)) at every
    combination of `vary`, `seeds` seeds each (one count, or one per value): the grid over `prompt_lengths`, or, with
    `search_max_prompt_len`, the seeded searches for the first criterion (the others read the same runs; each
    search's first guess grows from the last value's p50 as `seeded_thresholds`' `start_growth` says). Returns the
    rows of every run, the brackets (one per combination, value and criterion) and the rates (one per combination,
    value, criterion and prompt length)."""
    field, values = along
    combinations = [dict(zip(vary, chosen)) for chosen in itertools.product(*vary.values())] if vary else [{}]
    max_prompt_len = search_max_prompt_len or max(prompt_lengths)
    options = dict(seed_field=seed_field)
    for combination in combinations:
        setting = dataclasses.replace(base, **combination)
        if search_max_prompt_len is not None:
            seeded_thresholds(setting, results_path, field, values, search_max_prompt_len, seeds,
                              target=criteria[0], start_growth=start_growth, recompute=recompute, **options,
                              **sweep_options)
        else:
            settings, counts = _settings(setting, field, values, seeds, max_prompt_len)
            run_sweep([config for value_setting, count in zip(settings, counts) for p in prompt_lengths
                       for config in seed_configs(value_setting, p, count, seed_field)],
                      results_path, recompute=recompute, **sweep_options)
    brackets, rates = [], []
    for combination in combinations:
        for criterion in criteria:
            found, rated = thresholds_of(dataclasses.replace(base, **combination), results_path, field, values,
                                         max_prompt_len, seeds, target=criterion, seed_field=seed_field)
            brackets.append(found.assign(**combination, criterion=criterion))
            rates.append(rated.assign(**combination, criterion=criterion))
    keys = [*(vary or {}), field]
    ids = {config.config_id for combination in combinations
           for setting, count in zip(*_settings(dataclasses.replace(base, **combination), field, values, seeds,
                                                max_prompt_len))
           for p in range(1, max_prompt_len + 1) for config in seed_configs(setting, p, count, seed_field)}
    rows = ResultsStore(results_path).load()
    rows = rows[rows.config_id.isin(ids)].sort_values([*keys, "prompt_len", seed_field]).reset_index(drop=True)
    order = [*keys, "criterion"]
    brackets = pd.concat(brackets, ignore_index=True)
    rates = pd.concat(rates, ignore_index=True)
    return (rows, brackets[[*order, *(c for c in brackets.columns if c not in order)]],
            rates[[*order, *(c for c in rates.columns if c not in order)]])
