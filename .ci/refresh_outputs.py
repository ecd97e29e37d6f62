"""Re-run the cells of an executed notebook that only read committed result files, in place.

For when a committed result file (e.g. bench/results/<device>/kan.json) changes while the GPU
run behind the notebook's other outputs stays valid: the table and plot cells that read the
file give the same output on any machine, so they are re-executed here (on the CPU) and every
other cell keeps its stored output. The cells' execution counts are kept. An error in a cell
(e.g. a hidden assertion that no longer holds) stops with the traceback and writes nothing.

    .venv/bin/python .ci/refresh_outputs.py notebooks/01_kan.ipynb --prelude 2,3 --cells 13,22

Cell numbers count code cells from 1. The ``--prelude`` cells (imports) run first, their
outputs discarded. Sync markdown edits from the .py pair first (jupytext --update).
"""
import argparse
import copy
import os

import nbformat
from nbclient import NotebookClient


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--prelude", default="", help="code cells to run first, outputs discarded (e.g. 2,3)")
    parser.add_argument("--cells", required=True, help="code cells whose outputs are replaced (e.g. 13,22)")
    args = parser.parse_args()
    numbers = lambda text: [int(n) for n in text.split(",") if n]  # noqa: E731
    nb = nbformat.read(args.notebook, as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(args.notebook))}})
    with client.setup_kernel():
        for n in numbers(args.prelude):  # nbclient stores what it runs into the notebook: put the cell back
            stored = copy.deepcopy(nb.cells[code[n - 1]])
            client.execute_cell(copy.deepcopy(stored), code[n - 1])
            nb.cells[code[n - 1]] = stored
        for n in numbers(args.cells):
            cell = nb.cells[code[n - 1]]
            count = cell.execution_count
            client.execute_cell(cell, code[n - 1])
            cell.execution_count = count
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = count
            print(f"cell {n}: {len(cell.outputs)} output(s)")
    nbformat.write(nb, args.notebook)


if __name__ == "__main__":
    main()
