"""Finished results rows read into what the figures plot: the best setting, the minimal prompt length per setting,
the shortest memorizing run per n, the accuracy curves over epochs, the trained prompts' query/key bounds, and what
the runs cost to train."""

from __future__ import annotations

import json

import pandas as pd

TRAINING = "promptmem_training"  # the output metadata `show_training` leaves for provenance (no renderer sees it)


def best_setting(results: pd.DataFrame, column: str):
    """The value of `column` with the highest final accuracy; ties go to the run that memorized in fewer
    epochs, then to the smaller value."""
    ranked = results.sort_values(["final_accuracy", "epochs_run", column], ascending=[False, True, True])
    return ranked[column].iloc[0].item()


def min_prompt_length(results: pd.DataFrame, by: list[str], target: float = 1.0,
                      column: str = "final_accuracy") -> pd.DataFrame:
    """Per setting (the columns `by`), the smallest prompt length whose accuracy (`column`) reaches `target`.

    Settings where no prompt length reaches it get NaN, and `max_prompt_len_tried` says how far the grid went.
    """
    runs = results[results["method"] == "prompt"] if "method" in results.columns else results
    rows = []
    for key, group in runs.groupby(by, sort=True):
        reached = group.loc[group[column] >= target - 1e-9, "prompt_len"]
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "min_prompt_len": reached.min() if len(reached) else float("nan"),
                     "max_prompt_len_tried": group["prompt_len"].max()})
    return pd.DataFrame(rows)


def prompt_length_brackets(results: pd.DataFrame, by: list[str], target: float = 1.0,
                           column: str = "final_accuracy") -> pd.DataFrame:
    """`min_prompt_length` with each threshold's other end, `max_failing_prompt_len`: the largest prompt length below
    it that falls short of `target` (0 where none ran; below the largest tried where none reached it), so that the
    threshold lies in (max_failing_prompt_len, min_prompt_len]."""
    runs = results[results["method"] == "prompt"] if "method" in results.columns else results
    needed = min_prompt_length(runs, by, target, column)
    short = runs[runs[column] < target - 1e-9].merge(needed[[*by, "min_prompt_len"]], on=by)
    short = short[~(short.prompt_len >= short.min_prompt_len)]  # NaN (none reached it): every run counts
    failing = short.groupby(by).prompt_len.max().rename("max_failing_prompt_len").reset_index()
    needed = needed.merge(failing, on=by, how="left")
    return needed.assign(max_failing_prompt_len=needed.max_failing_prompt_len.fillna(0).astype(int))


def evaluation_curves(rows: pd.DataFrame, keep: list[str]) -> pd.DataFrame:
    """The accuracy curves of runs with `eval_every`: one row per run and evaluated epoch (columns epoch,
    train_accuracy, test_accuracy), with the run's columns `keep` beside them."""
    runs = rows.to_dict("records")
    return pd.concat([pd.DataFrame(json.loads(run["evaluations"])).assign(**{name: run[name] for name in keep})
                      for run in runs], ignore_index=True)


def shortest_memorizing(results: pd.DataFrame, target: float = 1.0, **match) -> pd.DataFrame:
    """Per n, the prompt run of the shortest prompt reaching `target`, among the rows whose columns equal `match`."""
    rows = results[(results["method"] == "prompt") & (results["final_accuracy"] >= target - 1e-9)]
    for column, value in match.items():
        rows = rows[rows[column] == value]
    return rows.sort_values("prompt_len").groupby("n", as_index=False).head(1).sort_values("n")


def prompt_bounds(rows: pd.DataFrame) -> pd.DataFrame:
    """Per prompt run and layer: the max-norm bound B of its trained prompt's queries and keys, as its results row
    stores it (`prompt_qk_bound`, measured by attention.prompt_attention_statistics when the run ended)."""
    measured = [{"config_id": row["config_id"], "dataset": row["dataset"], "labels": row["labels"], "n": row["n"],
                 "prompt_len": row["prompt_len"], "length": row["prompt_len"] + row["seq_len"], "layer": layer,
                 "bound": bound}
                for row in rows.to_dict("records") for layer, bound in enumerate(json.loads(row["prompt_qk_bound"]), 1)]
    return pd.DataFrame(measured, columns=["config_id", "dataset", "labels", "n", "prompt_len", "length", "layer",
                                           "bound"])


def training_cost(*frames: pd.DataFrame) -> dict:
    """What the runs of these results frames cost: how many, their own seconds summed (a resumed run counts each
    stretch it trained in), and the devices and precisions they trained on. A run in several frames counts once."""
    runs = pd.concat(frames, ignore_index=True).drop_duplicates("config_id")

    def values(column):
        return sorted(runs[column].dropna().unique().tolist()) if column in runs else []

    return {"runs": len(runs), "training_seconds": round(float(runs.seconds.sum()), 1), "devices": values("device"),
            "precisions": values("precision_used")}


def duration(seconds: float) -> str:
    """Hours from an hour on, minutes below."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def show_training(*frames: pd.DataFrame) -> dict:
    """Print the training cost of a notebook's runs and leave it in the notebook's outputs, where
    `provenance.record` finds it."""
    from IPython.display import display

    cost = training_cost(*frames)
    text = (f"training: {cost['runs']} runs, {duration(cost['training_seconds'])} (the runs' own seconds, summed), "
            f"on {', '.join(cost['devices'])}"
            + (f", in {', '.join(cost['precisions'])}" if cost["precisions"] else ""))
    display({"text/plain": text}, metadata={TRAINING: cost}, raw=True)
    return cost
