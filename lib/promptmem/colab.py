"""Colab: the cells that open every notebook there. The repository's address lives here and nowhere else.

In Colab the setup cell clones this repository (so the committed `results/` come along), installs it next to Colab's
own torch, works from its `notebooks/` folder, and makes `profile = "auto"` mean the profile the committed figures
were made in (`figures/provenance.json`): "Run all" re-plots from the finished runs and trains only what is missing.
Outside Colab the cell does nothing.

    python -m promptmem.colab notebooks/*.ipynb   # write the badge, the note and the setup cell into each notebook
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

REPOSITORY = "https://github.com/promptmem/promptmem"
BRANCH = "main"
SOURCE_ENV = "PROMPTMEM_REPOSITORY"  # clone from here instead (a test clones from a local copy)
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")

NOTE = """**In Colab** the next cell clones this repository with its committed results, installs it (Colab's torch
is kept) and works from its `notebooks/` folder; `profile = "auto"` then means the profile the committed figures were
made in (`figures/provenance.json`), so "Run all" re-plots from the finished runs in minutes and trains only what is
missing. For the paper's setup set `profile = "paper"` in the parameters cell: hours per notebook on a T4 (the
README's run-time table estimates them from FLOPs); an interrupted run resumes where it stopped (finished runs stay
in `results/`, the running one is saved every `checkpoint_every` epochs) as long as the Colab runtime keeps its
files. `recompute = True` trains finished runs again."""


def badge(notebook: str) -> str:
    """The 'Open in Colab' badge of notebooks/<notebook>.ipynb, as Markdown."""
    owner_and_name = REPOSITORY.removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{owner_and_name}/blob/{BRANCH}/notebooks/{notebook}.ipynb"
    return f"[![Open In Colab]({BADGE_IMAGE})]({url})"


def setup_cell(notebook: str) -> str:
    """The first code cell of notebooks/<notebook>.ipynb."""
    return f'''# Colab only (see above): this repository with its results, installed beside Colab's torch; the committed profile.
import json, os, subprocess, sys
if "google.colab" in sys.modules and not os.path.isdir("../results"):
    if not os.path.isdir("promptmem"):
        source = os.environ.get("{SOURCE_ENV}", "{REPOSITORY}")
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "{BRANCH}", source, "promptmem"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "./promptmem"], check=True)
    os.chdir("promptmem/notebooks")
    with open("../figures/provenance.json") as provenance:
        os.environ.setdefault("PROMPTMEM_PROFILE", json.load(provenance)["{notebook}"]["profile"])'''


def write_cells(path: str | Path) -> None:
    """Put the badge into the notebook's title cell, and the note and the setup cell right after it."""
    import nbformat

    path = Path(path)
    content = nbformat.read(path, as_version=4)
    title = content.cells[0]
    if not BADGE.search(title.source):
        raise ValueError(f"{path}: its first cell has no 'Open In Colab' badge to update")
    title.source = BADGE.sub(lambda _: badge(path.stem), title.source)
    code = next(i for i, cell in enumerate(content.cells) if cell.cell_type == "code")
    old = content.cells[1:code + 1]  # the note (if there) and the setup cell, replaced with their ids kept
    note = nbformat.v4.new_markdown_cell(NOTE)
    setup = nbformat.v4.new_code_cell(setup_cell(path.stem))
    if len(old) == 2:
        note.id, setup.id = old[0].id, old[1].id
    elif len(old) == 1:
        setup.id = old[0].id
    content.cells[1:code + 1] = [note, setup]
    nbformat.write(content, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="write the Colab badge, note and setup cell into notebooks")
    parser.add_argument("notebooks", nargs="+")
    for notebook in parser.parse_args(argv).notebooks:
        write_cells(notebook)


if __name__ == "__main__":
    main()
