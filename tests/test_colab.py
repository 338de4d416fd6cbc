"""Colab: every notebook opens with the badge, the note and the setup cell of `promptmem.colab`; and that cell, run as
in Colab (a stand-in `google.colab` module, the repository cloned from a local copy, a fresh environment that has
torch), installs the clone without touching torch, after which notebook 01 finishes from the committed results."""

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from promptmem import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_opens_with_the_badge_the_note_and_the_setup_cell(path):
    cells = nbformat.read(path, as_version=4).cells
    assert colab.badge(path.stem) in cells[0].source
    assert cells[1].source == colab.NOTE, "run `python -m promptmem.colab notebooks/*.ipynb`"
    assert cells[2].source == colab.setup_cell(path.stem), "run `python -m promptmem.colab notebooks/*.ipynb`"
    assert "parameters" in cells[3].metadata.get("tags", [])
    assert not [cell for cell in cells if "injected-parameters" in cell.metadata.get("tags", [])]


def test_the_readme_badges_are_the_notebooks_badges():
    readme = (ROOT / "README.md").read_text()
    assert sorted(colab.BADGE.findall(readme)) == sorted(colab.badge(path.stem) for path in NOTEBOOKS)


def git(*arguments, cwd=ROOT) -> str:
    return subprocess.run(["git", *arguments], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_in_colab_the_setup_cell_installs_the_clone_beside_torch_and_notebook_01_replots(tmp_path, monkeypatch):
    # The repository as GitHub would serve it: a bare copy whose branch holds this checkout's commit.
    origin = tmp_path / "origin.git"
    git("clone", "-q", "--bare", str(ROOT), str(origin))
    git("--git-dir", str(origin), "update-ref", f"refs/heads/{colab.BRANCH}", git("rev-parse", "HEAD").strip())
    # Colab's Python: a fresh environment that sees this one's packages (torch among them) but installs into its own
    # site-packages, and where google.colab is imported at start-up.
    colab_python = tmp_path / "colab-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(colab_python)], check=True)
    site_packages = Path(subprocess.run([colab_python / "bin" / "python", "-c", "import sysconfig; "
                                         "print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    (site_packages / "preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site_packages / "sitecustomize.py").write_text(
        "import importlib.machinery, sys, types\n"
        "sys.modules['google.colab'] = module = types.ModuleType('google.colab')\n"
        "module.__spec__ = importlib.machinery.ModuleSpec('google.colab', None)\n")
    content = tmp_path / "content"  # Colab's working folder
    content.mkdir()
    monkeypatch.setenv(colab.SOURCE_ENV, origin.as_uri())
    monkeypatch.delenv("PROMPTMEM_PROFILE", raising=False)  # Colab sets none; the setup cell must

    executed = tmp_path / "01_memorization_curves.ipynb"
    subprocess.run([colab_python / "bin" / "python", "-m", "papermill", "--cwd", str(content), "--kernel", "python3",
                    "--no-progress-bar", str(ROOT / "notebooks" / executed.name), str(executed)], check=True)

    clone = content / "promptmem"
    installed = {re.sub(r"-[^-]*\.dist-info$", "", path.name).lower() for path in site_packages.glob("*.dist-info")}
    assert "promptmem" in installed and "torch" not in installed, installed
    committed = git("show", "HEAD:results/01_memorization_curves.csv")
    assert (clone / "results" / "01_memorization_curves.csv").read_text() == committed, "notebook 01 trained"
    profile = json.loads((clone / "figures" / "provenance.json").read_text())["01_memorization_curves"]["profile"]
    outputs = "".join(output.get("text", "") for cell in nbformat.read(executed, as_version=4).cells
                      for output in cell.get("outputs", []))
    assert f"profile auto -> {profile} (set by PROMPTMEM_PROFILE)" in outputs
    assert f"VERDICT ({profile} profile" in outputs
    assert (clone / "figures" / "01a_memorization_curves.png").stat().st_mtime > origin.stat().st_mtime
