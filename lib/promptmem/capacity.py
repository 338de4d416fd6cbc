"""How many bits a trained prompt stores. Uniformly random labels carry 1 bit each and hold nothing to generalize, so
what a model gets right about them beyond chance is stored information:

    likelihood view     n - sum_i -log2 p(y_i | x_i)  = n (1 - loss / ln 2), clipped at 0
                        (loss: the mean cross-entropy in nats; Morris et al., "How much do language models memorize?",
                        2025, measure a model's capacity this way)
    hard-decision view  n (1 - H2(error rate))      (what the arg-max alone transmits: a binary symmetric channel)

Both read a results row's `n`, `final_loss` and `final_accuracy` (fp32, after training), so every row's bits are
recomputed from results/ without a new column. A capacity curve is bits stored against n at a fixed prompt: n
doubles until a run no longer memorizes every pair, then goes `beyond` doublings further; where the bits stop
growing, their maximum is the prompt's capacity C.

Over seeds (`seeded_capacity_curves`): each seed (the data draw, the random labels, the initial prompt) gets its own
curves, so each prompt length has one capacity per seed; the exponent of C in p is each seed's fit of log C on log p
(a seed's curves share its data draw across p), averaged, with a 95% Student t interval over seeds
(`capacity_exponent`)."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pandas as pd

from .configs import RunConfig
from .seeds import ExponentEstimate, check_seeds, student_t_975
from .sweeps import run_sweep
from .theory import fit_power_law

# Anchors, in bits per trained parameter
MORRIS_BITS_PER_PARAMETER = 3.6  # GPT-style models trained on random bit strings (Morris et al. 2025, bf16)
PERCEPTRON_BITS_PER_WEIGHT = 2.0  # 2N random labels on N weights (Cover 1965; Gardner 1988)
FP32_BITS_PER_NUMBER = 32  # what a construction may write into one fp32 number at most
# Bits growing by less than this factor per doubling of n: the curve has flattened (a plateau), else still rising
PLATEAU_GROWTH = 2 ** 0.1


def _check_pairs(n, name_of_n="n"):
    n = np.asarray(n, dtype=float)
    if (n < 1).any() or (n != np.round(n)).any():
        raise ValueError(f"{name_of_n} must be whole numbers >= 1, got {n.tolist() if n.ndim else float(n)}")
    return n


def likelihood_bits(n, mean_loss):
    """n - n * mean_loss / ln 2, clipped at 0: the bits stored about n random binary labels by a model whose mean
    cross-entropy on them is `mean_loss` nats (chance: ln 2, so 0 bits; certain and right: n bits)."""
    n = _check_pairs(n)
    mean_loss = np.asarray(mean_loss, dtype=float)
    if not np.isfinite(mean_loss).all() or (mean_loss < 0).any():
        raise ValueError(f"mean_loss must be finite and >= 0 (nats), got {mean_loss.tolist()}")
    return np.clip(n * (1 - mean_loss / math.log(2)), 0, None)


def binary_entropy(probability):
    """H2(q) in bits, H2(0) = H2(1) = 0."""
    q = np.asarray(probability, dtype=float)
    if ((q < 0) | (q > 1)).any():
        raise ValueError(f"probability must be in [0, 1], got {q.tolist()}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -q * np.log2(q) - (1 - q) * np.log2(1 - q)
    return np.nan_to_num(terms, nan=0.0)


def hard_decision_bits(n, accuracy):
    """n (1 - H2(1 - accuracy)): what the predicted labels alone transmit about n random binary labels (accuracy
    0.5: 0 bits; 1: n bits)."""
    n = _check_pairs(n)
    accuracy = np.asarray(accuracy, dtype=float)
    if ((accuracy < 0) | (accuracy > 1)).any() or np.isnan(accuracy).any():
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy.tolist()}")
    return n * (1 - binary_entropy(1 - accuracy))


def with_bits(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with their bits stored (both views), the numbers trained (p * d for a prompt, every weight from scratch)
    and the bits per trained number. Rows must hold random labels: true labels carry less than a bit each."""
    if len(rows) and (rows["labels"] != "random").any():
        raise ValueError("labels must be 'random' in every row: bits stored are measured on uniformly random labels")
    return rows.assign(
        likelihood_bits=likelihood_bits(rows["n"], rows["final_loss"]),
        hard_decision_bits=hard_decision_bits(rows["n"], rows["final_accuracy"]),
        bits_per_number=lambda frame: frame["likelihood_bits"] / frame["trainable_params"],
    )


def capacity_curve(base: RunConfig, results_path: str | os.PathLike, *, n_start: int, n_max: int, beyond: int = 2,
                   recompute: bool = False, **sweep_options) -> pd.DataFrame:
    """The runs of `base` at n = n_start, 2 n_start, … : doubling while every pair is memorized, then `beyond`
    doublings more (never past n_max). Each step reads the finished row of the one before, so the curve resumes from
    the results file. Returns its rows ordered by n."""
    for name, value in (("n_start", n_start), ("n_max", n_max), ("beyond", beyond)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "beyond" else 1):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'beyond' else 1}, got {value!r}")
    if n_max < n_start:
        raise ValueError(f"n_max must be at least n_start={n_start}, got {n_max}")
    if base.labels != "random":
        raise ValueError(f"base.labels must be 'random' (bits stored are measured on random labels), got "
                         f"{base.labels!r}")
    dataclasses.replace(base, n=n_max).validate()  # the largest n fits the dataset, before any run
    sweep_options.setdefault("progress", False)  # one run per call: a sweep's progress bar would say nothing
    rows, n, past = [], n_start, None
    while n <= n_max and (past is None or past < beyond):
        row = run_sweep([dataclasses.replace(base, n=n)], results_path, recompute=recompute, **sweep_options)
        rows.append(row)
        if past is not None or row.final_accuracy.iloc[0] < 1:
            past = 0 if past is None else past + 1
        n *= 2
    return pd.concat(rows, ignore_index=True).sort_values("n").reset_index(drop=True)


def capacity_of(curve: pd.DataFrame, bits: str = "likelihood_bits") -> dict:
    """A curve's capacity C (the most bits any of its runs stores), the largest n memorized entirely, and whether the
    curve has flattened: over its last doubling of n the bits grew by less than PLATEAU_GROWTH ("plateau"), or more
    ("rising", with the rate of that growth as a power of n: bits ~ n^rate; C is then a lower bound). A curve whose
    every run memorizes has not reached its capacity ("not reached": C is a lower bound)."""
    curve = curve.sort_values("n")
    memorized = curve[curve.final_accuracy >= 1]
    summary = {"capacity_bits": float(curve[bits].max()),
               "largest_n_memorized": int(memorized.n.max()) if len(memorized) else 0, "rate": float("nan")}
    if len(memorized) == len(curve):
        return summary | {"shape": "not reached"}
    last, before = curve.iloc[-1], curve.iloc[-2] if len(curve) > 1 else None
    if before is None or before[bits] <= 0:
        return summary | {"shape": "too few points"}
    growth = last[bits] / before[bits]
    if growth < PLATEAU_GROWTH:
        return summary | {"shape": "plateau"}
    return summary | {"shape": "rising", "rate": math.log(growth) / math.log(last.n / before.n)}


def capacity_curves(base: RunConfig, results_path: str | os.PathLike, prompt_lengths, *, n_start: int, n_max: int,
                    beyond: int = 2, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`capacity_curve` of `base` at each prompt length in ascending order, each starting at the largest n the
    previous one memorized entirely (a longer prompt stores at least as much). Returns the rows with their bits
    (`with_bits`) and one summary per prompt length (`capacity_of`, with the prompt numbers p * d and the capacity
    per number)."""
    rows, summaries, start = [], [], n_start
    for prompt_len in sorted(prompt_lengths):
        curve = with_bits(capacity_curve(dataclasses.replace(base, prompt_len=prompt_len), results_path,
                                         n_start=start, n_max=n_max, beyond=beyond, **options))
        summary = capacity_of(curve)
        numbers = prompt_len * base.hidden_size
        summaries.append({"prompt_len": prompt_len, "prompt_numbers": numbers, **summary,
                          "bits_per_number": summary["capacity_bits"] / numbers})
        rows.append(curve)
        start = max(start, summary["largest_n_memorized"])
    return pd.concat(rows, ignore_index=True), pd.DataFrame(summaries)


def seeded_capacity_curves(base: RunConfig, results_path: str | os.PathLike, prompt_lengths, seeds: int, *,
                           n_start: int, n_max: int, beyond: int = 2, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`capacity_curves` of `base` at seeds 0 … seeds-1 (seed 0 the base's own rows); rows and summaries carry a
    `seed` column."""
    check_seeds(seeds)
    rows, summaries = [], []
    for seed in range(seeds):
        seeded = dataclasses.replace(base, seed=base.seed + seed)
        curve, summary = capacity_curves(seeded, results_path, prompt_lengths, n_start=n_start, n_max=n_max,
                                         beyond=beyond, **options)
        rows.append(curve.assign(seed=seeded.seed))
        summaries.append(summary.assign(seed=seeded.seed))
    return pd.concat(rows, ignore_index=True), pd.concat(summaries, ignore_index=True)


def capacity_exponent(summaries: pd.DataFrame) -> ExponentEstimate:
    """The exponent a of C ∝ p^a from one backbone's summaries (`seeded_capacity_curves`'s, columns prompt_len,
    seed, capacity_bits): each seed's least-squares fit of log C on log p, their mean, and its 95% Student t
    interval over seeds. On tests/test_capacity.py's synthetic capacities it covered the true exponent in 383 of 400
    draws of 3 seeds (a percentile bootstrap over the seeds: 135 of 200). With one seed there is no interval. Prompt
    lengths at which some seed stored nothing are left out; with fewer than two left, every number is NaN."""
    table = summaries.pivot_table(index="seed", columns="prompt_len", values="capacity_bits", dropna=False)
    if table.isna().any().any() or (table.to_numpy() < 0).any():
        raise ValueError(f"capacity_bits must be a number >= 0 at every (seed, prompt_len); got\n{table}")
    table = table.loc[:, (table > 0).all()]  # a prompt length some seed stored nothing with has no place on log axes
    if table.shape[1] < 2:
        return ExponentEstimate(float("nan"), float("nan"), float("nan"))
    slopes = np.array([fit_power_law(table.columns, bits)[0] for _, bits in table.iterrows()])
    value = float(slopes.mean())
    if len(slopes) == 1:
        return ExponentEstimate(value, float("nan"), float("nan"))
    half_width = student_t_975(len(slopes) - 1) * slopes.std(ddof=1) / math.sqrt(len(slopes))
    return ExponentEstimate(value, value - half_width, value + half_width)
