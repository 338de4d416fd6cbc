"""The results site in a real browser: `docs/build_site.py` builds it into build/site, a local server serves it, and
headless Chromium (Debian's package; `make test` installs it) opens every page reachable from the landing page: every
image loads, no internal link is broken (a page's anchors included), the console shows no error, every notebook page
shows each figure its notebook saves, and the landing page each claim's figure. A screenshot of the landing page is
saved as build/site-landing.png."""

import functools
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

from tests.test_notebooks import NOTEBOOKS, shown_and_saved

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "build" / "site"
CHROMIUM = Path("/usr/bin/chromium")
# Headless and offline: no first-run, sync or background connections (this machine's network refuses them).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *arguments):
        pass


@pytest.fixture(scope="module")
def site_url():
    subprocess.run([sys.executable, str(ROOT / "docs" / "build_site.py"), str(SITE)], check=True)
    handler = functools.partial(QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def is_page(url: str) -> bool:
    return urlparse(url).path.endswith((".html", "/"))


def test_every_page_loads_its_images_and_links_without_console_errors(site_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the site extra: pip install -e '.[site]'")
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    problems, status, ids, fragments, shown = [], {}, {}, [], {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda message: message.type == "error" and problems.append(
            f"{page.url}: console error: {message.text}"))
        page.on("pageerror", lambda error: problems.append(f"{page.url}: script error: {error}"))
        page.on("requestfailed", lambda request: problems.append(f"{page.url}: failed to load {request.url}"))
        todo = [site_url]
        while todo:
            url = todo.pop()
            if url in status:
                continue
            if not is_page(url):  # a figure, PDF or CSV: it must exist
                status[url] = page.request.get(url).status
                continue
            status[url] = page.goto(url, wait_until="networkidle").status  # every request of the page done
            if status[url] != 200:
                continue
            broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                                   ".map(i => i.src)")
            problems += [f"{url}: image did not load: {src}" for src in broken]
            ids[url] = set(page.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
            for selector in (".cell_output img", "img.results-figure"):
                shown[url, selector] = page.evaluate(f"Array.from(document.querySelectorAll('{selector}'))"
                                                     ".filter(i => i.complete && i.naturalWidth > 0).length")
            for href in page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                target, fragment = urldefrag(href)
                if urlparse(target).netloc != urlparse(site_url).netloc:
                    continue  # outside the site (GitHub, Colab, the papers): not this test's business
                if fragment:
                    fragments.append((url, target, fragment))
                todo.append(target)
        page.goto(site_url, wait_until="networkidle")
        (SITE.parent / "site-landing.png").write_bytes(page.screenshot(full_page=True))
        browser.close()
    problems += [f"{url}: HTTP {code}" for url, code in status.items() if code != 200]
    problems += [f"{source}: link to a missing anchor {target}#{fragment}" for source, target, fragment in fragments
                 if target in ids and fragment not in ids[target]]
    for path in NOTEBOOKS:
        saved = sum(count for count, _ in shown_and_saved(json.loads(path.read_text())))
        figures = shown.get((f"{site_url}notebooks/{path.stem}.html", ".cell_output img"))
        if figures is None or figures < saved:
            problems.append(f"notebook page {path.stem}: shows {figures} figures, its notebook saves {saved}")
    if shown.get((site_url, "img.results-figure")) != len(NOTEBOOKS):  # one figure per claim, each loaded
        problems.append(f"landing page: {shown.get((site_url, 'img.results-figure'))} results figures loaded")
    pages = [url for url in status if is_page(url)]
    assert len(pages) >= 17, f"the crawl reached only {pages}"  # the landing page, 8 notebooks, 8 pages of docs/
    assert not problems, "\n".join(problems)
