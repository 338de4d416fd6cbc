"""Where the committed figures come from: for each executed notebook, the git commit, profile, device, versions,
the wall time of the run, and what its training cost (figures/provenance.json); and executed notebooks stripped of
what changes from run to run without meaning (papermill's and Jupyter's timestamps, progress-bar widget state).

A sweep may be stopped and resumed many times, so the run that executes a notebook last may only re-plot finished
rows: its wall time says nothing of the training. A notebook therefore shows its runs' training cost (`tables.show_training`: the runs'
own seconds summed, their devices and precisions) and `record` copies it from the executed notebook.

    python -m promptmem.provenance record notebooks/01_memorization_curves.ipynb --profile auto
    python -m promptmem.provenance profile notebooks/01_memorization_curves.ipynb   # the profile to rerun it in
    python -m promptmem.provenance strip notebooks/01_memorization_curves.ipynb
    python -m promptmem.provenance table   # the README's table of what each committed run cost
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

import torch
import transformers

from .profiles import PROFILES, resolve_profile
from .rows import device_name
from .store import write_atomically
from .tables import TRAINING, duration
from .training import default_device

PROVENANCE = Path("figures") / "provenance.json"  # relative to the repository root, where `make` runs
COMMITTED = "committed"  # make reproduce's default profile: each notebook's committed one
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


CODE = ("lib", "Makefile", "pyproject.toml")  # what decides the numbers (a run rewrites notebooks, results, figures)


def _git_commit(folder: Path) -> str:
    """The checked-out commit, with '+changes' when the code in the working tree differs from it."""
    def git(*arguments):
        return subprocess.run(["git", *arguments], cwd=folder, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    top = git("rev-parse", "--show-toplevel")
    changed = git("status", "--porcelain", "--untracked-files=no", "--", *(f"{top}/{path}" for path in CODE))
    return commit + ("+changes" if changed else "")


def _shown_training(notebook: dict) -> dict | None:
    """The training cost the executed notebook showed (its last), or None where it trains nothing."""
    shown = [output["metadata"][TRAINING] for cell in notebook["cells"] for output in cell.get("outputs", [])
             if TRAINING in output.get("metadata", {})]
    return shown[-1] if shown else None


def record(notebook: str | os.PathLike, profile: str, provenance: str | os.PathLike = PROVENANCE) -> dict:
    """Add (or replace) the notebook's entry in the provenance file, from its papermill metadata and this machine."""
    notebook = Path(notebook)
    content = json.loads(notebook.read_text())
    metadata = content["metadata"].get("papermill", {})
    if metadata.get("duration") is None:
        raise ValueError(f"{notebook} has no papermill run to record (execute it with papermill first)")
    device = default_device()
    entry = {"profile": resolve_profile(profile), "git_commit": _git_commit(notebook.parent),
             "device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
             "python": platform.python_version(), "wall_seconds": round(float(metadata["duration"]), 1),
             "training": _shown_training(content)}
    provenance = Path(provenance)
    entries = json.loads(provenance.read_text()) if provenance.exists() else {}
    entries[notebook.stem] = entry
    text = json.dumps(dict(sorted(entries.items())), indent=2) + "\n"
    write_atomically(provenance, lambda handle: handle.write(text))
    return entry


def recorded_profile(notebook: str | os.PathLike, provenance: str | os.PathLike = PROVENANCE) -> str:
    """The profile the notebook's committed figures were made in."""
    entries = json.loads(Path(provenance).read_text()) if Path(provenance).exists() else {}
    stem = Path(notebook).stem
    if stem not in entries:
        raise ValueError(f"{provenance} has no entry for {stem}: run `make reproduce` to make its figures")
    return entries[stem]["profile"]


def recorded_profile_or(notebook: str | os.PathLike, fallback: str, provenance: str | os.PathLike = PROVENANCE) -> str:
    """The profile the notebook's committed figures were made in, or `fallback` where the record has no entry (results
    without committed figures beside them)."""
    try:
        return recorded_profile(notebook, provenance)
    except ValueError:
        return fallback


def profile_to_run(notebook: str | os.PathLike, asked: str = COMMITTED,
                   provenance: str | os.PathLike = PROVENANCE) -> str:
    """The profile `make reproduce` runs the notebook in: a profile asked for by name, or for "committed" (the default)
    the one its committed figures were made in, so a rerun re-plots them from results/ and trains only what is
    missing; "auto" for a notebook without committed figures."""
    if asked not in (COMMITTED, *PROFILES):
        raise ValueError(f"PROFILE must be one of {(COMMITTED, *PROFILES)}, got {asked!r}")
    if asked != COMMITTED:
        return asked
    entries = json.loads(Path(provenance).read_text()) if Path(provenance).exists() else {}
    return entries.get(Path(notebook).stem, {}).get("profile", "auto")


def cost_table(provenance: str | os.PathLike = PROVENANCE) -> str:
    """A markdown table of each committed notebook run: profile, device, training runs and hours, precisions."""
    lines = ["| notebook | profile | device | runs trained | training (their own time, summed) | precisions |",
             "| --- | --- | --- | --- | --- | --- |"]
    for stem, entry in json.loads(Path(provenance).read_text()).items():
        training = entry.get("training")
        if training:
            lines.append(f"| {stem} | {entry['profile']} | {', '.join(training['devices'])} | {training['runs']} | "
                         f"{duration(training['training_seconds'])} | "
                         f"{', '.join(training['precisions']) or 'not recorded'} |")
    return "\n".join(lines)


def strip(notebook: str | os.PathLike) -> None:
    """Remove timestamps, widget state and papermill's injected-parameters cell from an executed notebook, keeping
    every output's text and images. The parameters it ran with stay in its papermill metadata; without the injected
    cell, a reader who opens the notebook (in Colab, say) and edits the parameters cell is not overruled by it."""
    import nbformat

    content = nbformat.read(notebook, as_version=4)
    metadata = content["metadata"]
    metadata.pop("widgets", None)
    for key in ("start_time", "end_time", "duration"):
        metadata.get("papermill", {}).pop(key, None)
    content["cells"] = [cell for cell in content["cells"]
                        if "injected-parameters" not in cell["metadata"].get("tags", [])]
    for cell in content["cells"]:
        cell["metadata"].pop("execution", None)
        cell["metadata"].pop("papermill", None)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
    nbformat.write(content, notebook)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="provenance of the committed figures")
    parser.add_argument("command", choices=("record", "profile", "strip", "table"))
    parser.add_argument("notebook", nargs="?", help="record, profile, strip: the executed notebook")
    parser.add_argument("--profile", help="record: the profile the notebook was run with (default auto); profile: the "
                                          "profile asked for, printed as the one to run in (default committed)")
    arguments = parser.parse_args(argv)
    if arguments.command != "table" and arguments.notebook is None:
        parser.error(f"{arguments.command} needs a notebook")
    if arguments.command == "record":
        print(json.dumps(record(arguments.notebook, arguments.profile or "auto")))
    elif arguments.command == "profile":
        print(profile_to_run(arguments.notebook, arguments.profile or COMMITTED))
    elif arguments.command == "strip":
        strip(arguments.notebook)
    else:
        print(cost_table())


if __name__ == "__main__":
    main()
