"""Run a script under torchrun with two CPU processes (gloo), as the DDP tests of every trainer do."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_two_processes(script: str, folder: Path, *args: str, env: dict | None = None, timeout: float = 120) -> str:
    """Write ``script`` into ``folder``, run it as 2 torchrun processes, return their output; fail if it fails."""
    path = folder / "ddp.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(path), *args]
    # its own process group, so that a hang is cleaned up with the workers torchrun started
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, output[-3000:]
    return output
