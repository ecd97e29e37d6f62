"""Open every page of the built book in headless Chromium and check that it works.

Usage (from the repository root, after `jupyter-book build . -W`):

    .venv/bin/python .ci/browser_check.py --html _build/html --toc _toc.yml --repo .
        [--screenshot-dir DIR] [--full-page] [--timeout SECONDS] [--allow-remote]

For each page named in _toc.yml (the root and every `file:` entry) it checks:

  console  no console errors, no uncaught page errors, no failed or 4xx/5xx
           request to the local server, and no request to any other host (CI is
           offline, so the browser is kept offline here too, to fail the same way);
  images   every <img> has loaded (complete and naturalWidth > 0);
  math     where the page has math, MathJax started, typeset every math element
           without TeX errors, and no raw \\( \\[ $$ delimiters are left visible;
  widgets  every saved ipywidgets view was rendered by the widget manager;
  colab    the Colab launch link names an .ipynb that exists in the repository
           (required on notebook pages, checked if present on other pages).

It prints a table and exits 0 only if every page passes (1: some page failed,
2: bad arguments or no browser). The browser is Debian's /usr/bin/chromium driven
by Playwright; Playwright's own browser download is not used.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Without --allow-remote, every host name fails to resolve, as in CI, which has
# no internet: a page that needs a CDN fails here as it would there.
OFFLINE_ARG = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Source suffixes a toc entry may carry; the built page drops them.
SOURCE_SUFFIXES = (".md", ".ipynb", ".py", ".rst")
CHECKS = ("console", "images", "math", "widgets", "colab")


# ---------------------------------------------------------------------------
# Pure helpers (no browser): tested in tests/test_browser_check.py
# ---------------------------------------------------------------------------

def strip_source_suffix(name: str) -> str:
    """'notebooks/01_kan.py' -> 'notebooks/01_kan'; names without a suffix are kept."""
    for suffix in SOURCE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def toc_docnames(toc: dict) -> list[str]:
    """Docnames of a jupyter-book 1.x toc, in reading order: root first, then every
    `file:` entry found under parts/chapters/sections/entries at any depth.

    `url:` entries are external links (no page to open) and are skipped; `glob:`
    entries are refused because the pages they stand for are not listed.
    """
    if "root" not in toc:
        raise ValueError("_toc.yml has no 'root:' entry; jupyter-book 1.x needs one")
    names = [strip_source_suffix(str(toc["root"]))]

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if "glob" in node:
                raise ValueError(f"glob entry {node['glob']!r} in _toc.yml is not supported; "
                                 "list the files explicitly")
            if "file" in node:
                names.append(strip_source_suffix(str(node["file"])))
            for key in ("parts", "chapters", "sections", "entries"):
                walk(node.get(key))

    walk({key: toc.get(key) for key in ("parts", "chapters", "sections", "entries")})
    return list(dict.fromkeys(names))  # a page listed twice is checked once


def read_toc(toc_path: Path) -> list[str]:
    """Parse the _toc.yml file at toc_path and return its docnames (see toc_docnames)."""
    return toc_docnames(yaml.safe_load(toc_path.read_text(encoding="utf8")) or {})


def html_path(docname: str) -> str:
    """Relative path of the built page: 'book/intro' -> 'book/intro.html'."""
    return f"{docname}.html"


def colab_url_to_repo_path(url: str) -> str | None:
    """Repository-relative file a Colab link opens, or None if the URL is not of the
    form https://colab.research.google.com/github/<org>/<repo>/blob/<branch>/<path>.

    The branch is taken to be one path segment (no '/' in branch names).
    """
    parsed = urlparse(url)
    if parsed.hostname != "colab.research.google.com":
        return None
    parts = parsed.path.strip("/").split("/")
    # github / org / repo / blob / branch / path...
    if len(parts) < 6 or parts[0] != "github" or parts[3] != "blob":
        return None
    return "/".join(parts[5:])


def is_notebook_source(book_root: Path, docname: str) -> bool:
    """True if the page is built from a notebook: a .ipynb, a .py (jupytext
    py:percent, this book's notebook format) or a MyST .md with a kernelspec."""
    base = book_root / docname
    if base.with_suffix(".ipynb").is_file() or base.with_suffix(".py").is_file():
        return True
    markdown = base.with_suffix(".md")
    if markdown.is_file():
        head = markdown.read_text(encoding="utf8")[:4000]
        return head.startswith("---") and "kernelspec:" in head.split("\n---", 2)[0]
    return False


def is_browser_own_request(url: str) -> bool:
    """The browser asks every site for /favicon.ico by itself; the book has none, and
    that 404 says nothing about the page."""
    return urlparse(url).path == "/favicon.ico"


def is_local_url(url: str) -> bool:
    """Requests the page may make: to our server, or non-network schemes (data:, blob:)."""
    parsed = urlparse(url)
    return parsed.scheme not in ("http", "https", "ws", "wss") or parsed.hostname in LOCAL_HOSTS


# ---------------------------------------------------------------------------
# Serving and browsing
# ---------------------------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that does not log every request to stderr."""

    def log_message(self, format, *args):  # noqa: A002 - name fixed by the base class
        pass


def start_server(html_dir: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve html_dir on 127.0.0.1 (a free port) from a daemon thread; return (server, base URL)."""
    handler = functools.partial(QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@dataclass
class PageResult:
    docname: str
    problems: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHECKS})
    status: dict[str, str] = field(default_factory=lambda: {c: "ok" for c in CHECKS})

    def fail(self, check: str, message: str) -> None:
        message = " ".join(message.split())  # one line per problem, even for display math
        self.problems[check].append(message)
        self.status[check] = "FAIL"

    @property
    def passed(self) -> bool:
        return not any(self.problems.values())


# Runs in the page. Math elements are what MyST and MyST-NB emit for $...$, $$...$$,
# {math} and text/latex outputs. Text inside code, and MathJax's own output, is skipped
# when looking for delimiters that MathJax should have consumed.
MATH_PROBE_JS = r"""() => {
  const mathEls = Array.from(document.querySelectorAll('span.math, div.math'));
  const root = document.querySelector('main') || document.body;
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {acceptNode(n) {
    const p = n.parentElement;
    return (!p || p.closest(skip)) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT; }});
  const raw = [];
  while (walker.nextNode()) {
    const text = walker.currentNode.nodeValue;
    if (/\\\(|\\\[|\$\$/.test(text)) raw.push(text.trim().slice(0, 60));
  }
  return {
    elements: mathEls.length,
    untypeset: mathEls.filter(el => !el.querySelector('mjx-container'))
                      .map(el => el.textContent.trim().slice(0, 60)),
    texErrors: Array.from(document.querySelectorAll('mjx-merror'))
                    .map(el => el.getAttribute('data-mjx-error') || el.textContent.slice(0, 60)),
    // MathJax's noundefined extension prints an unknown macro as red text instead
    // of an error; its MathML copy is an <mtext mathcolor="red"> holding "\name".
    undefinedMacros: Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'))
                          .map(el => el.textContent).filter(text => text.startsWith('\\')),
    raw: raw,
  };
}"""

# Runs in the page once it has loaded. MathJax is a deferred script, so by now it has
# run if it could; its startup.promise settles after the first typesetting pass.
MATHJAX_SETTLED_JS = r"""() => {
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return false;
  MathJax.startup.promise.then(() => { window.__mathjaxSettled = 'ok'; },
                               (error) => { window.__mathjaxSettled = 'error: ' + error; });
  return true;
}"""

# Runs in the page: broken images. Lazy images are made eager first so that images
# below the fold are fetched too; an image still loading after waitMs counts as broken.
IMAGES_PROBE_JS = r"""async (waitMs) => {
  const imgs = Array.from(document.images);
  imgs.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  const settled = Promise.all(imgs.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done); img.addEventListener('error', done); })));
  await Promise.race([settled, new Promise(done => setTimeout(done, waitMs))]);
  return imgs.filter(img => !(img.complete && img.naturalWidth > 0))
             .map(img => img.getAttribute('src') || '(no src)');
}"""

# The html-manager replaces nothing: it inserts the rendered widget next to the
# view's <script> tag, so a rendered view leaves a .jupyter-widgets element beside it.
WIDGETS_DEAD_JS = r"""() => Array.from(document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]'))
  .filter(s => !(s.parentElement && s.parentElement.querySelector('.jupyter-widgets'))).length"""


def check_page(context, base_url: str, html_dir: Path, book_root: Path, repo: Path,
               docname: str, timeout_ms: int, allow_remote: bool,
               screenshot_dir: Path | None, full_page: bool) -> PageResult:
    """Load one page and run every check on it."""
    from playwright.sync_api import Error as PlaywrightError

    result = PageResult(docname)
    http_errors: set[str] = set()  # URLs already reported by status, not to repeat them
    if not (html_dir / html_path(docname)).is_file():
        for check in CHECKS:
            result.status[check] = "-"
        result.fail("console", f"{html_path(docname)} was not built")
        return result

    page = context.new_page()
    page.set_default_timeout(timeout_ms)

    def on_request(request):
        if not is_local_url(request.url) and not allow_remote:
            result.fail("console", f"remote request (offline in CI): {request.url}")

    def on_console(msg):
        if msg.type == "error":
            where = msg.location.get("url", "") if msg.location else ""
            # A failed load also logs "Failed to load resource"; on_response (4xx/5xx)
            # and on_request (other hosts) have reported it already.
            already_reported = msg.text.startswith("Failed to load resource") and (
                where in http_errors or not is_local_url(where))
            if is_browser_own_request(where) or already_reported:
                return
            result.fail("console", f"console error: {msg.text}" + (f" [{where}]" if where else ""))

    def on_response(response):
        if (response.status >= 400 and is_local_url(response.url)
                and not is_browser_own_request(response.url)):
            http_errors.add(response.url)
            result.fail("console", f"HTTP {response.status}: {response.url}")

    def on_request_failed(request):
        if is_local_url(request.url) and request.url not in http_errors:
            result.fail("console", f"request failed ({request.failure}): {request.url}")

    page.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", lambda error: result.fail("console", f"page error: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)

    try:
        page.goto(base_url + html_path(docname), wait_until="load")
        run_content_checks(page, result, book_root, repo, docname, timeout_ms)
        page.wait_for_timeout(200)  # let late errors from deferred scripts arrive
        if screenshot_dir is not None:
            shot = screenshot_dir / (docname.replace("/", "__") + ".png")
            page.screenshot(path=str(shot), full_page=full_page)
    except PlaywrightError as error:
        result.fail("console", f"page did not load: {str(error).splitlines()[0]}")
    finally:
        page.close()
    return result


def run_content_checks(page, result: PageResult, book_root: Path, repo: Path,
                       docname: str, timeout_ms: int) -> None:
    """Images, math, widgets and the Colab link of a loaded page."""
    from playwright.sync_api import Error as PlaywrightError

    for src in page.evaluate(IMAGES_PROBE_JS, timeout_ms):
        result.fail("images", f"image not loaded: {src}")

    # Math: wait for MathJax's first typeset pass (startup.promise) when there is math.
    has_math = page.evaluate(MATH_PROBE_JS)
    if has_math["elements"] or has_math["raw"]:
        if not page.evaluate(MATHJAX_SETTLED_JS):
            result.fail("math", "MathJax is not loaded on a page with math (see console for the script)")
        else:
            try:
                page.wait_for_function("() => window.__mathjaxSettled", timeout=timeout_ms)
                settled = page.evaluate("() => window.__mathjaxSettled")
                if settled != "ok":
                    result.fail("math", f"MathJax startup failed: {settled}")
            except PlaywrightError:
                result.fail("math", f"MathJax did not finish typesetting within {timeout_ms / 1000:g} s")
        math = page.evaluate(MATH_PROBE_JS)
        for text in math["untypeset"]:
            result.fail("math", f"not typeset: {text}")
        for text in math["texErrors"]:
            result.fail("math", f"TeX error: {text}")
        for name in math["undefinedMacros"]:
            result.fail("math", f"undefined TeX macro: {name}")
        for text in math["raw"]:
            result.fail("math", f"raw delimiters visible: {text}")
    else:
        result.status["math"] = "-"

    views = page.evaluate("() => document.querySelectorAll("
                          "'script[type=\"application/vnd.jupyter.widget-view+json\"]').length")
    if views:
        try:
            page.wait_for_function(f"() => ({WIDGETS_DEAD_JS})() === 0", timeout=timeout_ms)
        except PlaywrightError:
            dead = page.evaluate(f"() => ({WIDGETS_DEAD_JS})()")
            result.fail("widgets", f"{dead} of {views} widget views not rendered")
    else:
        result.status["widgets"] = "-"

    check_colab_links(page, result, book_root, repo, docname)


def check_colab_links(page, result: PageResult, book_root: Path, repo: Path, docname: str) -> None:
    """Every Colab link must open an .ipynb present in the repo; notebooks need one."""
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll("
                          "'a[href*=\"colab.research.google.com\"]'), a => a.href)")
    for href in dict.fromkeys(hrefs):
        target = colab_url_to_repo_path(href)
        if target is None:
            result.fail("colab", f"Colab link not of the form .../github/ORG/REPO/blob/BRANCH/PATH: {href}")
        elif not target.endswith(".ipynb"):
            result.fail("colab", f"Colab link opens {target}, not an .ipynb")
        elif not (repo / target).is_file():
            result.fail("colab", f"Colab link opens {target}, which is not in the repository")
    if not hrefs:
        if is_notebook_source(book_root, docname):
            result.fail("colab", "notebook page has no Colab launch link")
        else:
            result.status["colab"] = "-"


# ---------------------------------------------------------------------------
# Report and command line
# ---------------------------------------------------------------------------

def format_table(results: list[PageResult]) -> str:
    """A plain-text table: one row per page, one column per check, then the details."""
    header = ["page", *CHECKS, "result"]
    rows = [[r.docname, *(r.status[c] for c in CHECKS), "PASS" if r.passed else "FAIL"]
            for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header, ["-" * w for w in widths], *rows]]
    for r in results:
        for check in CHECKS:
            lines += [f"{r.docname} [{check}] {msg}" for msg in r.problems[check]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=Path("_build/html"), help="built HTML folder")
    parser.add_argument("--toc", type=Path, default=Path("_toc.yml"), help="jupyter-book _toc.yml")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="repository root, where Colab links' paths must exist")
    parser.add_argument("--screenshot-dir", type=Path, help="save one PNG per page here")
    parser.add_argument("--full-page", action="store_true", help="screenshot whole pages, not the first screen")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per page step")
    parser.add_argument("--allow-remote", action="store_true",
                        help="let the browser reach other hosts, and do not fail pages that do")
    parser.add_argument("--chromium", default=CHROMIUM, help="browser executable")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.html.is_dir():
        print(f"error: --html {args.html} is not a built book folder; run jupyter-book build first",
              file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(f"error: no browser at {args.chromium}; apt-get install -y chromium", file=sys.stderr)
        return 2
    try:
        docnames = read_toc(args.toc)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"error: cannot read --toc {args.toc}: {error}", file=sys.stderr)
        return 2
    if args.screenshot_dir:
        args.screenshot_dir.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    server, base_url = start_server(args.html.resolve())
    results = []
    try:
        with sync_playwright() as playwright:
            launch_args = CHROMIUM_ARGS + ([] if args.allow_remote else [OFFLINE_ARG])
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True,
                                                 args=launch_args, chromium_sandbox=False)
            for docname in docnames:
                # A fresh context per page: every page is checked as a first visit
                # (empty localStorage and cache), whatever order the toc lists them in.
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                results.append(check_page(
                    context, base_url, args.html, args.toc.parent, args.repo, docname,
                    timeout_ms=int(args.timeout * 1000), allow_remote=args.allow_remote,
                    screenshot_dir=args.screenshot_dir, full_page=args.full_page))
                context.close()
            browser.close()
    finally:
        server.shutdown()

    print(format_table(results))
    failed = [r.docname for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)}/{len(results)} pages passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
