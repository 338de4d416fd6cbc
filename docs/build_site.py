"""Build the results site: static HTML from the README and the committed, executed notebooks (Sphinx with MyST-NB).
Nothing is executed and nothing is downloaded, so it builds offline.

    python docs/build_site.py [OUTPUT]   # default build/site; open OUTPUT/index.html

The landing page is the README's introduction, its results table cut to the claims, verdicts and figures (as
thumbnails) and its list of notebooks; each notebook is a page with its outputs and figures; the whole README is a page too.
Colab badges become plain links: the badge image lives on colab.research.google.com, which an offline reader cannot
load.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "build" / "site-source"
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)")
FIGURE_LINK = re.compile(r"\[([^\]]+)\]\((figures/[^)]+)\)")
THUMBNAIL_WIDTH = 130


def section(readme: str, heading: str) -> str:
    """The README's section under `## heading`, without its heading."""
    start = readme.index(f"\n## {heading}")
    body = readme[readme.index("\n", start + 1) + 1:]
    end = body.find("\n## ")
    return body if end < 0 else body[:end + 1]


def offline_links(text: str) -> str:
    """Colab badges as text links, and figure links as plain HTML links into the copied figures/ folder."""
    text = BADGE.sub(r"[Open in Colab](\1)", text)
    return FIGURE_LINK.sub(r'<a href="\2">\1</a>', text)


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split(" | ")]


def results_table(results: str) -> str:
    """The README's results table cut to the claim, the verdicts and the figures, each figure as a thumbnail."""
    lines = [line for line in results.splitlines() if line.startswith("| ")]
    header = cells(lines[0])
    keep = [i for i, name in enumerate(header) if name == "claim" or name.startswith("verdict") or name == "figures"]
    rows = []
    for line in [lines[0]] + lines[2:]:
        row = [cells(line)[i] for i in keep]
        figures = FIGURE_LINK.findall(row[-1])
        if figures:
            row[-1] = " ".join(f'<a href="{path}"><img src="{path}" alt="{Path(path).stem}" '
                               f'width="{THUMBNAIL_WIDTH}"></a>' for _, path in figures)
        rows.append(row)
    return "\n".join(["| " + " | ".join(row) + " |" for row in rows[:1]] + ["|" + " --- |" * len(keep)]
                     + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"


def landing_page(readme: str, notebooks: list[str]) -> str:
    intro = readme[:readme.index("\n## ")]
    toctree = "\n".join(["```{toctree}", ":hidden:", ":caption: Notebooks", "", *notebooks, "", "```", "",
                         "```{toctree}", ":hidden:", "", "readme", "```"])
    return offline_links(f"{intro}\n\n## Results\n\n{results_table(section(readme, 'Results'))}\n"
                         f"What each claim measured, and how, is in the [README](readme.md)'s results table.\n\n"
                         f"## Notebooks\n\n{section(readme, 'Notebooks')}\n{toctree}\n")


def assemble(source: Path = SOURCE) -> None:
    """Write the site's sources: conf.py, index.md, readme.md, the notebooks (badges as links), figures/."""
    shutil.rmtree(source, ignore_errors=True)
    (source / "notebooks").mkdir(parents=True)
    for name in ("conf.py", "favicon.svg"):
        shutil.copy(ROOT / "docs" / name, source / name)
    shutil.copytree(ROOT / "docs" / "static", source / "static")
    shutil.copytree(ROOT / "figures", source / "extra" / "figures")
    readme = (ROOT / "README.md").read_text()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    for path in notebooks:
        content = json.loads(path.read_text())
        for cell in content["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = offline_links("".join(cell["source"]).replace("](../figures/", "](figures/"))
        (source / "notebooks" / path.name).write_text(json.dumps(content, indent=1, ensure_ascii=False))
    (source / "index.md").write_text(landing_page(readme, [f"notebooks/{path.stem}" for path in notebooks]))
    (source / "readme.md").write_text(offline_links(re.sub(r"^# .*", "# README", readme, count=1)))


def build(output: Path) -> None:
    from sphinx.cmd.build import build_main

    assemble()
    status = build_main(["-b", "html", "-q", "-W", "--keep-going", "-E", str(SOURCE), str(output)])
    if status:
        raise SystemExit(f"sphinx-build failed ({status}): see the warnings above")
    print(f"site built: {output / 'index.html'}")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "site")
