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


class _MissedWakeUp:
    """A channel whose poll notices a message only when the poll's own timeout fires, the way
    pyzmq's asyncio poll behaves after a missed wake-up; the message arrives ``arrival`` s in."""

    def __init__(self, arrival):
        self.arrival, self.polls = arrival, []

    async def get_msg(self, timeout=None):
        import asyncio
        import time
        from queue import Empty

        self.polls.append(timeout)
        if timeout is None:
            await asyncio.Event().wait()  # never woken
        await asyncio.sleep(timeout)
        if time.monotonic() >= self.arrival:
            return {"msg": "reply"}
        raise Empty


def test_read_in_slices_bounds_a_missed_wake_up():
    import asyncio
    import time
    from queue import Empty
    from types import SimpleNamespace

    from labkit.book import read_in_slices

    async def timed(channel, timeout):
        start = time.monotonic()
        try:
            result = await channel.get_msg(timeout=timeout)
        except Empty:
            result = "empty"
        return result, time.monotonic() - start

    now = time.monotonic()
    shell, iopub = _MissedWakeUp(now + 0.2), _MissedWakeUp(now + 0.2)
    read_in_slices(SimpleNamespace(shell_channel=shell, iopub_channel=iopub), slice_s=0.05)
    reply, seconds = asyncio.run(timed(shell, 30.0))  # unsliced: 30 s
    assert reply == {"msg": "reply"} and seconds < 1.0, seconds
    assert max(shell.polls) <= 0.05
    reply, seconds = asyncio.run(timed(iopub, None))  # unsliced: never
    assert reply == {"msg": "reply"} and seconds < 1.0, seconds
    never = _MissedWakeUp(float("inf"))
    read_in_slices(SimpleNamespace(shell_channel=never, iopub_channel=_MissedWakeUp(0)), slice_s=0.05)
    reply, seconds = asyncio.run(timed(never, 0.3))  # the overall timeout still holds
    assert reply == "empty" and 0.25 < seconds < 1.0, seconds


def test_execute_runs_a_widget_cell_without_stalling(tmp_path):
    """An ipywidgets cell (the pattern of chapters 1, 3 and 4b) executes and stores its figure in
    the widget state, and the next cell starts promptly."""
    import json

    page = tmp_path / "widget.py"
    page.write_text(
        "# %%\nimport ipywidgets as widgets\nimport matplotlib.pyplot as plt\n\n\n"
        "def show(n=3):\n    plt.plot(range(n))\n    plt.show()\n\n\n"
        "widgets.interact(show, n=widgets.IntSlider(3, 1, 9));\n\n"
        "# %%\nprint('after the widget')\n")
    out = subprocess.run([sys.executable, "-m", "labkit.book", "execute", "--profile", "quick", "--timeout", "60",
                          str(page)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    nb = json.loads((tmp_path / "widget.ipynb").read_text())
    state = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    outputs = [o for w in state.values() if w["model_name"] == "OutputModel" for o in w["state"]["outputs"]]
    assert any("image/png" in o.get("data", {}) for o in outputs), outputs
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "after the widget" in "".join(cells[1]["outputs"][0]["text"])
