"""The harness itself: a broken notebook cell must fail both the book build and nbval.

A throwaway book with one good and one broken notebook is built with the project's own
``_config.yml`` and tested with the project's own ``conftest.py``. The good notebook is the
control: it shows the failures come from the broken cell, not from the setup.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

GOOD = '''# %% [markdown]
# # A good page
# Some math: $e^{i\\pi} + 1 = 0$.

# %%
x = 6 * 7
print(x)

# %% tags=["remove-cell"]
assert x == 42
'''
BROKEN = GOOD.replace("# # A good page", "# # A broken page").replace("x = 6 * 7", "x = 6 * 7\nraise RuntimeError('deliberately broken cell')")


def _make_book(tmp_path: Path, notebook: str) -> Path:
    book = tmp_path / "book"
    (book / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "_config.yml", book / "_config.yml")
    shutil.copy(REPO / "conftest.py", book / "conftest.py")
    (book / "intro.md").write_text("# Intro\n")
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/page\n")
    (book / "notebooks" / "page.py").write_text(notebook)
    # The project's config names a bibliography and a static folder; keep both resolvable.
    (book / "book" / "_static").mkdir(parents=True)
    shutil.copy(REPO / "book" / "references.bib", book / "book" / "references.bib")
    return book


def _build(book: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "jupyter-book"), "build", str(book), "-W"], capture_output=True, text=True,
                          cwd=book, timeout=600)


def _nbval(book: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-q",
                           "-p", "no:cacheprovider", "notebooks"], capture_output=True, text=True, cwd=book,
                          timeout=600)


@pytest.mark.parametrize("notebook,should_pass", [(GOOD, True), (BROKEN, False)], ids=["good", "broken"])
def test_build_and_nbval_catch_a_broken_cell(tmp_path, notebook, should_pass):
    book = _make_book(tmp_path, notebook)
    build, tests = _build(book), _nbval(book)
    assert (build.returncode == 0) == should_pass, build.stdout[-3000:] + build.stderr[-3000:]
    assert (tests.returncode == 0) == should_pass, tests.stdout[-3000:]
    if should_pass:
        assert "1 passed" in tests.stdout or "passed" in tests.stdout
        assert (book / "_build" / "html" / "notebooks" / "page.html").exists()
    else:
        assert "deliberately broken cell" in build.stdout + build.stderr
        assert "deliberately broken cell" in tests.stdout


def test_execute_keeps_the_cells_that_ran_when_stopped(tmp_path):
    """`timeout` (SIGTERM) stops `python -m labkit.book execute`: the finished cells' outputs stay in
    NAME.failed.ipynb, and the paired .ipynb is not written."""
    import json
    import signal

    page = tmp_path / "slow.py"
    page.write_text("# %%\nprint('first cell ran')\n\n# %%\nimport time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-m", "labkit.book", "execute", "--profile", "quick", str(page)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    for line in proc.stdout:  # wait until the sleeping cell has started
        if "cell 1:" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out
    failed = json.loads((tmp_path / "slow.failed.ipynb").read_text())
    texts = ["".join(o.get("text", "")) for c in failed["cells"] for o in c.get("outputs", [])]
    assert "first cell ran\n" in texts
    assert not (tmp_path / "slow.ipynb").exists()
