"""Build the results site: static HTML from the README, the pages in docs/ and the committed, executed notebooks
(Sphinx with MyST-NB). Nothing is executed and nothing is downloaded, so it builds offline.

    python docs/build_site.py [OUTPUT]   # default build/site; open OUTPUT/index.html

The landing page is the README, its results figures shown large, each linking to the notebook that made it; each
notebook is a page with its outputs and inline figures; each page of docs/ (results in detail, reliability,
performance, run costs, ...) is a page. Colab badges become plain links: the badge image lives on
colab.research.google.com, which an offline reader cannot load.
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
# A results row of the README: its notebook link, then (last cell) its figure as a linked thumbnail
RESULTS_ROW = re.compile(r"^(\| .*?\]\(notebooks/([^)]+)\.ipynb\).*\| )<a href=\"[^\"]+\"><img src=\"([^\"]+)\"[^>]*></a>"
                         r"( \|)$", re.M)
PAGES = sorted(path.stem for path in (ROOT / "docs").glob("*.md"))


def offline_links(text: str) -> str:
    """Colab badges as text links, and figure links as plain HTML links into the copied figures/ folder."""
    text = BADGE.sub(r"[Open in Colab](\1)", text)
    return FIGURE_LINK.sub(r'<a href="\2">\1</a>', text)


def landing_page(readme: str, notebooks: list[str]) -> str:
    """The README with its links into docs/ made site links, and each results figure large, linking to its
    notebook's page."""
    readme = re.sub(r"\]\(docs/([^)]+)\)", r"](\1)", readme)
    readme = RESULTS_ROW.sub(r'\1<a href="notebooks/\2.html"><img src="\3" alt="\3" class="results-figure"></a>\4',
                             readme)
    toctree = "\n".join(["```{toctree}", ":hidden:", ":caption: Notebooks", "", *notebooks, "", "```", "",
                         "```{toctree}", ":hidden:", ":caption: Pages", "", *PAGES, "```"])
    return offline_links(f"{readme}\n{toctree}\n")


def page(text: str) -> str:
    """A page of docs/, its links made relative to the site's root, where it lives."""
    for source, target in (("../figures/", "figures/"), ("../notebooks/", "notebooks/"), ("../README.md", "index.md")):
        text = text.replace(source, target)
    return offline_links(text)


def assemble(source: Path = SOURCE) -> None:
    """Write the site's sources: conf.py, index.md, the pages of docs/, the notebooks (badges as links), figures/."""
    shutil.rmtree(source, ignore_errors=True)
    (source / "notebooks").mkdir(parents=True)
    for name in ("conf.py", "favicon.svg"):
        shutil.copy(ROOT / "docs" / name, source / name)
    shutil.copytree(ROOT / "docs" / "static", source / "static")
    shutil.copytree(ROOT / "figures", source / "extra" / "figures")
    for name in PAGES:
        (source / f"{name}.md").write_text(page((ROOT / "docs" / f"{name}.md").read_text()))
    notebooks = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    for path in notebooks:
        content = json.loads(path.read_text())
        for cell in content["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = offline_links("".join(cell["source"]).replace("](../figures/", "](figures/"))
        (source / "notebooks" / path.name).write_text(json.dumps(content, indent=1, ensure_ascii=False))
    readme = (ROOT / "README.md").read_text()
    (source / "index.md").write_text(landing_page(readme, [f"notebooks/{path.stem}" for path in notebooks]))


def build(output: Path) -> None:
    from sphinx.cmd.build import build_main

    assemble()
    status = build_main(["-b", "html", "-q", "-W", "--keep-going", "-E", str(SOURCE), str(output)])
    if status:
        raise SystemExit(f"sphinx-build failed ({status}): see the warnings above")
    print(f"site built: {output / 'index.html'}")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "site")
