"""Cross-check of ``labkit.sda.KolmogorovFlow`` against jax-cfd's pseudo-spectral solver.

Runs only where jax-cfd is installed (``pip install -e .[jaxcfd]``: jax-cfd 0.2.1 needs an old
jax, hence its own extra). Both codes integrate the same vorticity equation (Re 1000, drag 0.1,
forcing sin(4y)) with 2/3 de-aliasing and jax-cfd's Crank-Nicolson / RK4 step; the adapter gives
jax-cfd labkit's symmetric 2/3 mask (jax-cfd's own drops one wavenumber row, see
``labkit/sda/jaxcfd.py``), so the two must agree to round-off.
"""
import pytest
import torch

pytest.importorskip("jax_cfd", reason="jax-cfd not installed: pip install -e .[jaxcfd]")

from labkit.sda import KolmogorovFlow  # noqa: E402
from labkit.sda.jaxcfd import jaxcfd_vorticity_trajectory  # noqa: E402

REQUIRED = 1e-3  # the issue: relative L2 error of vorticity after one time unit, float64


@pytest.fixture
def one_torch_thread():
    # 64^2 FFTs are too small to split across threads: on a busy 2-core machine two threads
    # made labkit's part take 17 s instead of 0.3 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_vorticity_matches_jaxcfd_spectral_after_one_time_unit():
    # 64^2 keeps it to a few seconds; grid_offset=0: jax_cfd.spectral samples at the nodes.
    flow = KolmogorovFlow(size=64, grid_offset=0.0)
    x = flow.prior(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    length = round(1.0 / flow.dt)  # 5 transitions = 1 time unit, flow.substeps inner steps each

    ours = KolmogorovFlow.vorticity(flow.trajectory(x, length), "physical")
    theirs = jaxcfd_vorticity_trajectory(flow, x, length)  # same step dt / substeps, float64

    error = ((ours - theirs).norm(dim=(-2, -1)) / theirs.norm(dim=(-2, -1)))[:, -1]
    assert error.max().item() <= REQUIRED
    # Identical numerics: the codes in fact agree to round-off (~2e-14 measured).
    assert error.max().item() < 1e-10
