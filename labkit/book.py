"""Book tooling: the jupytext/.ipynb pairs, notebook execution, and the reader the book build uses.

Every chapter is a jupytext ``py:percent`` file ``notebooks/NN_name.py`` (the source people edit
and review) paired with ``notebooks/NN_name.ipynb`` (the same cells plus the outputs of a
full-profile run on a GPU; Colab opens this one).

Command line::

    python -m labkit.book execute [--profile full] [NOTEBOOK.py ...]   # run, write the .ipynb pairs
    python -m labkit.book check                                         # pairs in sync and executed?

The book build reads the ``.py`` through :func:`read_notebook` (``nb_custom_formats`` in
``_config.yml``). When the paired ``.ipynb`` holds exactly the same cells and a complete run,
its outputs are shown and execution is switched off for that page; otherwise the page is
executed during the build in the current profile, and any error fails the build.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PY_FMT = "py:percent"


# ----------------------------------------------------------------------------- pairs


def _cell_key(cell) -> tuple:
    """What must agree between the two files of a pair: type, source and tags of each cell."""
    tags = tuple(cell.get("metadata", {}).get("tags", ()))
    return (cell["cell_type"], cell["source"].strip(), tags)


def same_cells(nb_a, nb_b) -> bool:
    return [_cell_key(c) for c in nb_a.cells] == [_cell_key(c) for c in nb_b.cells]


def run_problems(nb) -> list[str]:
    """Why the stored outputs of ``nb`` are not a complete, clean full-profile run ([] if they are)."""
    problems = []
    meta = nb.metadata.get("labkit", {})
    if meta.get("profile") != "full":
        problems.append(f"executed in profile {meta.get('profile')!r}, not 'full'")
    for i, cell in enumerate(nb.cells):
        if cell["cell_type"] != "code":
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} was not executed")
        if any(out.get("output_type") == "error" for out in cell.get("outputs", ())):
            problems.append(f"cell {i} stored an error")
    return problems


# A cell draws a figure when it opens one with pyplot or calls a plotting helper such as
# ``labkit.kan.bench.plot_sweeps``: every labkit helper named ``plot_*`` draws one.
_DRAWS_A_FIGURE = re.compile(r"\bplt\.(subplots|figure)\(|(?<!def )\bplot_\w+\(")


def missing_figures(nb) -> list[int]:
    """Indices of the code cells that draw a matplotlib figure but stored no image.

    That happens when a notebook is executed with a non-inline backend (``MPLBACKEND=Agg``).
    Cells that display widgets are skipped: their figures live in the widget state.
    """
    missing = []
    for i, cell in enumerate(nb.cells):
        if cell["cell_type"] != "code" or not _DRAWS_A_FIGURE.search(cell.source):
            continue
        kinds = [key for out in cell.get("outputs", ()) for key in out.get("data", {})]
        if "image/png" not in kinds and "application/vnd.jupyter.widget-view+json" not in kinds:
            missing.append(i)
    return missing


def cpu_full_runs(notebook_dir: Path | None = None) -> list[str]:
    """Full-profile pairs that were executed without a GPU: their outputs are honest (every
    notebook prints its device first) but GPU-only cells show their CPU fallback. ``check``
    reports them as warnings; re-execute them on a GPU when one is available."""
    import nbformat

    notes = []
    for ipynb in sorted(Path(notebook_dir or NOTEBOOK_DIR).glob("*.ipynb")):
        meta = nbformat.read(ipynb, as_version=4).metadata.get("labkit", {})
        if meta.get("profile") == "full" and meta.get("device") == "cpu":
            notes.append(f"{ipynb.name}: full profile executed on the CPU; re-execute it on a GPU "
                         f"(python -m labkit.book execute --profile full notebooks/{ipynb.with_suffix('.py').name})")
    return notes


def paired_ipynb(py_path: Path) -> Path:
    return Path(py_path).with_suffix(".ipynb")


def check_pairs(notebook_dir: Path | None = None) -> list[str]:
    """Every ``.py`` notebook has an ``.ipynb`` with the same cells, a complete full-profile run,
    and an image stored by every cell that draws a figure. Returns the problems ([] if none).

    ``notebook_dir`` defaults to the repository's ``notebooks/``.
    """
    import jupytext
    import nbformat

    notebook_dir = Path(notebook_dir or NOTEBOOK_DIR)
    problems = []
    sources = sorted(notebook_dir.glob("*.py"))
    if not sources:
        problems.append(f"no notebooks found in {notebook_dir}")
    for py in sources:
        ipynb = paired_ipynb(py)
        if not ipynb.exists():
            problems.append(f"{py.name}: paired {ipynb.name} is missing (run: python -m labkit.book execute {py})")
            continue
        src, stored = jupytext.read(py, fmt=PY_FMT), nbformat.read(ipynb, as_version=4)
        if not same_cells(src, stored):
            problems.append(f"{py.name}: cells differ from {ipynb.name} (re-execute it, or jupytext --sync)")
        problems += [f"{ipynb.name}: {p}" for p in run_problems(stored)]
        if missing := missing_figures(stored):
            problems.append(
                f"{ipynb.name}: code cells {missing} (0-based, markdown included) draw a figure but stored no "
                f"image; re-execute it on the GPU with `python -m labkit.book execute --profile full "
                f"notebooks/{py.name}` in an environment without MPLBACKEND=Agg (the inline backend stores images)"
            )
    for ipynb in sorted(notebook_dir.glob("*.ipynb")):
        if not ipynb.with_suffix(".py").exists():
            problems.append(f"{ipynb.name} has no .py source")
    return problems


# ----------------------------------------------------------------------------- book reader


def _candidate_pairs() -> list[Path]:
    """Where a page's paired .ipynb may sit: notebooks/ under the build's cwd and under the repo."""
    dirs = {Path.cwd() / "notebooks", NOTEBOOK_DIR}
    return sorted(p for d in dirs if d.is_dir() for p in d.glob("*.ipynb"))


def read_notebook(text: str):
    """MyST-NB reader for ``.py`` notebooks (see the module docstring).

    MyST-NB hands a custom reader only the file's text, so the pair is found by content:
    an ``.ipynb`` whose cells equal this file's cells and which holds a complete run.
    """
    import jupytext
    import nbformat

    nb = jupytext.reads(text, fmt=PY_FMT)
    for candidate in _candidate_pairs():
        stored = nbformat.read(candidate, as_version=4)
        if same_cells(nb, stored) and not run_problems(stored):
            stored.metadata.setdefault("mystnb", {})["execution_mode"] = "off"
            return stored
    return nb


# ----------------------------------------------------------------------------- execution


READ_SLICE_S = 1.0


def read_in_slices(kernel_client, slice_s: float = READ_SLICE_S) -> None:
    """Make the client's shell and IOPub reads wait in polls of at most ``slice_s`` seconds.

    pyzmq's asyncio poll can miss the wake-up of a message that has arrived; it then finds the
    message only when its timeout fires (nbclient issue #312, seen after cells that open widgets).
    nbclient waits for a cell's reply in one poll of the whole cell timeout, so one missed wake-up
    cost chapter 4b 400 s on an H100 machine after an ipywidgets cell that ran in 0.3 s (the
    kernel's own timestamps: idle at 14:51:56, next cell sent at 14:58:36). Polling again every
    ``slice_s`` bounds such a loss at ``slice_s``; the overall timeout is unchanged.
    """
    from queue import Empty

    for channel in (kernel_client.shell_channel, kernel_client.iopub_channel):
        async def get_msg(timeout=None, _read=channel.get_msg):  # _read: this channel's own reader
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                try:
                    return await _read(timeout=slice_s if left is None else max(0.0, min(slice_s, left)))
                except Empty:
                    if left is not None and left <= slice_s:
                        raise

        channel.get_msg = get_msg


def execute(py_path: Path, profile: str, timeout: int = 600, kernel: str = "python3") -> Path:
    """Execute one ``.py`` notebook in ``profile`` and write its paired ``.ipynb`` with the outputs."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    import labkit
    from labkit.data import atomic_write
    from labkit.runs import sigterm_as_keyboard_interrupt

    py_path = Path(py_path).resolve()
    nb = jupytext.read(py_path, fmt=PY_FMT)
    os.environ["LABKIT_PROFILE"] = profile  # the kernel inherits the environment
    # A non-interactive MPLBACKEND (Agg, set by many CI scripts) would stop the kernel's
    # inline backend from storing figures: the .ipynb would hold "<Figure ...>" text only.
    os.environ.pop("MPLBACKEND", None)
    start = time.perf_counter()

    def progress(cell, cell_index, **_):  # one line per code cell, so that a stall shows where
        if cell.cell_type == "code":
            first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
            print(f"  [{time.perf_counter() - start:7.1f} s] cell {cell_index}: {first}", flush=True)

    client = NotebookClient(
        nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(py_path.parent)}},
        on_cell_start=progress, on_notebook_start=lambda **_: read_in_slices(client.kc),
    )
    # A run stopped from outside (Ctrl-C, or `timeout` sending SIGTERM) also keeps what it ran.
    try:
        with sigterm_as_keyboard_interrupt():
            client.execute()
    except (Exception, KeyboardInterrupt):
        # Keep what ran (outputs up to the failing cell) for diagnosis; the pair stays untouched.
        failed = py_path.with_suffix(".failed.ipynb")
        nbformat.write(nb, failed)
        print(f"{py_path.name}: failed or stopped after {time.perf_counter() - start:.0f} s; the partial run is "
              f"in {failed.name}", flush=True)
        raise
    seconds = time.perf_counter() - start
    nb.metadata["labkit"] = {"profile": profile, "version": labkit.__version__, "seconds": round(seconds, 1),
                             "device": _device_name()}
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    out = paired_ipynb(py_path)
    atomic_write(out, lambda tmp: nbformat.write(nb, tmp))  # never a half-written pair
    print(f"{py_path.name}: {seconds:.1f} s in profile {profile!r} -> {out.name}")
    return out


def extract_figure(ipynb: Path, source_prefix: str, out: Path) -> Path:
    """Save the first PNG output of the code cell whose source starts with ``source_prefix``.

    This is how the README's figure is made: from the committed run, never redrawn.
    """
    import base64

    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(source_prefix):
            for output in cell.get("outputs", ()):
                png = output.get("data", {}).get("image/png")
                if png:
                    Path(out).write_bytes(base64.b64decode(png))
                    return Path(out)
            raise ValueError(f"the cell starting with {source_prefix!r} in {ipynb} has no PNG output")
    raise ValueError(f"no code cell in {ipynb} starts with {source_prefix!r}")


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute notebooks and refresh their .ipynb pairs")
    ex.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.py")
    ex.add_argument("--profile", default=None, help="quick | full | paper (default: full with CUDA, else quick)")
    ex.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    sub.add_parser("check", help="check that every pair is in sync and holds a full-profile run")
    fig = sub.add_parser("figure", help="save a figure of a committed run as PNG (for the README)")
    fig.add_argument("ipynb", type=Path)
    fig.add_argument("--cell", required=True, help="the beginning of the code cell's source")
    fig.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    if args.command == "figure":
        print(f"wrote {extract_figure(args.ipynb, args.cell, args.out)}")
        return 0

    if args.command == "check":
        problems = check_pairs()
        for note in cpu_full_runs():
            print("WARN", note)
        for p in problems:
            print("FAIL", p)
        print("pairs ok" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0

    from labkit.profile import profile

    name = profile(args.profile).name
    for nb in args.notebooks or sorted(NOTEBOOK_DIR.glob("*.py")):
        execute(nb, name, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------- sphinx extension


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    """Keep the first of any two identical ``<script>`` entries of a page.

    Sphinx 7.4 registers an inline script added with ``app.add_js_file(None, body=...)``
    twice (once with filename None, once with ''); sphinx-thebe's ``THEBE_JS_URL`` is one,
    and its second copy fails in the browser ("Identifier has already been declared").
    """
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    """Sphinx entry point (``sphinx.extra_extensions: [labkit.book]`` in ``_config.yml``)."""
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
