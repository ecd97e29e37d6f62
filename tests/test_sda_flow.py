"""Tests of the Kolmogorov-flow solver ``labkit.sda.KolmogorovFlow`` against exact solutions.

Small grids (32-64) on CPU. Exact solutions used:

* a Taylor-Green vortex / any single Fourier mode of the stream function: advection vanishes,
  so without forcing the velocity decays as exp(-(nu |k|^2 + drag) t);
* the laminar Kolmogorov flow u = U sin(4y), U = A / (nu 16 + drag): forcing balances viscosity
  and drag; started from rest the flow approaches it as U (1 - exp(-(nu 16 + drag) t)) sin(4y);
* a uniform flow: only the drag acts on it.
"""
import math

import pytest
import torch

from labkit.sda import KolmogorovFlow

F64 = torch.float64


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def taylor_green(flow, mode=2, dtype=F64):
    x, y = flow.grid(dtype=dtype)
    u = torch.sin(mode * x) * torch.cos(mode * y)
    v = -torch.cos(mode * x) * torch.sin(mode * y)
    return torch.stack((u, v))


@pytest.mark.parametrize("mode", [1, 3])
def test_taylor_green_decays_at_the_analytic_rate(mode):
    flow = KolmogorovFlow(size=32, dt=0.25, reynolds=20.0, drag=0.1, forcing_amplitude=0.0)
    start = taylor_green(flow, mode)
    states = flow.trajectory(start, 4)
    rate = flow.viscosity * 2 * mode**2 + flow.drag  # |k|^2 = 2 mode^2
    for t in range(4):
        exact = start * math.exp(-rate * flow.dt * (t + 1))
        assert relative_error(states[t], exact) < 1e-5


def test_oblique_single_mode_decays_at_the_analytic_rate():
    flow = KolmogorovFlow(size=32, dt=0.2, reynolds=50.0, drag=0.1, forcing_amplitude=0.0)
    x, y = flow.grid(dtype=F64)
    w = 2.0 * torch.cos(x + 3 * y + 0.3)  # one Fourier mode, |k|^2 = 10
    start = KolmogorovFlow.velocity(w)
    end = flow.trajectory(start, 5)[-1]
    exact = start * math.exp(-(flow.viscosity * 10 + flow.drag) * 1.0)
    assert relative_error(end, exact) < 1e-5


def test_laminar_kolmogorov_flow_is_steady():
    flow = KolmogorovFlow(size=32)  # Re = 1000, drag 0.1, forcing sin(4y)
    _, y = flow.grid(dtype=F64)
    amplitude = 1.0 / (flow.viscosity * 16 + flow.drag)  # 8.62
    laminar = torch.stack((amplitude * torch.sin(4 * y), torch.zeros_like(y)))
    end = flow.trajectory(laminar, 10)[-1]  # 2 time units
    assert (end - laminar).abs().max().item() < 1e-10 * amplitude


@pytest.mark.parametrize("grid_offset", [0.0, 0.5])
def test_flow_from_rest_follows_the_forced_transient(grid_offset):
    # Checks the sign, phase (grid_offset) and size of the forcing.
    flow = KolmogorovFlow(size=32, grid_offset=grid_offset)
    _, y = flow.grid(dtype=F64)
    rest = torch.zeros(2, 32, 32, dtype=F64)
    states = flow.trajectory(rest, 5)
    rate = flow.viscosity * 16 + flow.drag
    for t in range(5):
        u_exact = (1 - math.exp(-rate * flow.dt * (t + 1))) / rate * torch.sin(4 * y)
        assert relative_error(states[t, 0], u_exact) < 1e-6  # time-stepping error ~1e-8
        assert states[t, 1].abs().max().item() < 1e-10


def test_uniform_flow_only_feels_the_drag():
    flow = KolmogorovFlow(size=16, dt=0.5, forcing_amplitude=0.0)
    start = torch.ones(2, 16, 16, dtype=F64) * torch.tensor([1.0, -0.5], dtype=F64)[:, None, None]
    end = flow.trajectory(start, 2)[-1]
    torch.testing.assert_close(end, start * math.exp(-flow.drag * 1.0), rtol=1e-12, atol=1e-12)


def test_turbulent_states_stay_divergence_free_and_bounded():
    flow = KolmogorovFlow(size=32)
    start = flow.prior(2, generator=torch.Generator().manual_seed(1), dtype=F64)
    states = flow.trajectory(start, 5)
    assert states.shape == (2, 5, 2, 32, 32)
    divergence = KolmogorovFlow.divergence(states).abs().max().item()
    vorticity = KolmogorovFlow.vorticity(states, "physical").abs().max().item()
    assert divergence < 1e-12 * vorticity
    assert states.abs().max().item() < 10.0  # started at speed 3; no blow-up


def test_float32_agrees_with_float64():
    flow = KolmogorovFlow(size=32)
    start = flow.prior(2, generator=torch.Generator().manual_seed(2), dtype=F64)
    reference = flow.trajectory(start, 5)  # 1 time unit
    single = flow.trajectory(start.float(), 5)
    assert single.dtype == torch.float32
    assert relative_error(single.double(), reference) < 1e-4


def test_batch_members_evolve_independently():
    flow = KolmogorovFlow(size=32)
    batch = flow.prior((3,), generator=torch.Generator().manual_seed(3), dtype=F64)
    together = flow.trajectory(batch, 2)
    for i in range(3):
        alone = flow.trajectory(batch[i], 2)
        torch.testing.assert_close(together[i], alone, rtol=0, atol=1e-12)
    assert flow.transition(batch).shape == batch.shape


def test_prior_statistics():
    flow = KolmogorovFlow(size=64)
    x = flow.prior((4, 2), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 2, 2, 64, 64) and x.dtype == torch.float32
    speed = x.pow(2).sum(dim=-3).sqrt().amax(dim=(-2, -1))
    torch.testing.assert_close(speed, torch.full_like(speed, 3.0))
    assert x.mean(dim=(-2, -1)).abs().max().item() < 1e-5
    assert KolmogorovFlow.divergence(x).abs().max().item() < 1e-4  # float32 round-off; |w| ~ 15
    # Kinetic energy by integer wavenumber shell peaks near the peak wavenumber 4.
    energy = torch.fft.fft2(x.double()).abs().pow(2).sum(dim=-3).mean(dim=(0, 1))
    k = torch.fft.fftfreq(64, 1 / 64, dtype=F64)
    shell = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long()
    spectrum = torch.zeros(int(shell.max()) + 1, dtype=F64).index_add_(0, shell.flatten(), energy.flatten())
    assert 2 <= int(spectrum.argmax()) <= 5
    # Reproducible with a seeded generator, different without reseeding.
    again = flow.prior((4, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, again, rtol=0, atol=0)
    assert not torch.equal(x, flow.prior((4, 2)))


def test_coarsen_is_a_block_mean():
    x = torch.arange(2 * 8 * 8, dtype=F64).reshape(2, 8, 8)
    coarse = KolmogorovFlow.coarsen(x, 4)
    assert coarse.shape == (2, 2, 2)
    assert coarse[1, 0, 1].item() == x[1, 0:4, 4:8].mean().item()
    # A field constant on blocks is recovered exactly after up-sampling by repetition.
    blocks = torch.randn(3, 2, 4, 4, dtype=F64)
    fine = blocks.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
    torch.testing.assert_close(KolmogorovFlow.coarsen(fine, 4), blocks)
    with pytest.raises(ValueError, match="factor"):
        KolmogorovFlow.coarsen(x, 3)


def test_vorticity_velocity_round_trip_and_conventions():
    flow = KolmogorovFlow(size=64)
    x = flow.prior(2, generator=torch.Generator().manual_seed(4), dtype=F64)
    w = KolmogorovFlow.vorticity(x, "physical")
    torch.testing.assert_close(KolmogorovFlow.velocity(w), x, rtol=0, atol=1e-12)
    # Sign: u = sin(y) has w = dv/dx - du/dy = -cos(y).
    _, gy = flow.grid(dtype=F64)
    shear = torch.stack((torch.sin(gy), torch.zeros_like(gy)))
    torch.testing.assert_close(KolmogorovFlow.vorticity(shear, "physical"), -torch.cos(gy), rtol=0, atol=1e-12)
    # SDA's plotting convention: -dx * w from central differences with unit spacing;
    # for sin(y) that is (sin(y + dx) - sin(y - dx)) / 2 = sin(dx) cos(y), i.e. ~ +dx cos(y).
    sda = KolmogorovFlow.vorticity(shear)
    torch.testing.assert_close(sda, math.sin(flow.dx) * torch.cos(gy), rtol=0, atol=1e-12)
    assert relative_error(KolmogorovFlow.vorticity(x), -flow.dx * w) < 0.1  # O((k dx)^2); a sign error gives 2
    # A mean velocity is restored when given.
    mean = torch.tensor([[0.5, -1.0], [0.0, 2.0]], dtype=F64)
    torch.testing.assert_close(KolmogorovFlow.velocity(w, mean).mean(dim=(-2, -1)), mean)


def test_bad_inputs_raise_clear_errors():
    flow = KolmogorovFlow(size=16)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, H, W\)"):
        flow.trajectory(torch.zeros(3, 16, 16), 1)
    with pytest.raises(ValueError, match="16x16"):
        flow.trajectory(torch.zeros(2, 32, 32), 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        flow.trajectory(torch.zeros(2, 16, 16, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="NaN"):
        flow.trajectory(torch.full((2, 16, 16), float("nan")), 1)
    with pytest.raises(ValueError, match="length"):
        flow.trajectory(torch.zeros(2, 16, 16), 0)
    with pytest.raises(ValueError, match="size"):
        KolmogorovFlow(size=15)
    with pytest.raises(ValueError, match="convention"):
        KolmogorovFlow.vorticity(torch.zeros(2, 16, 16), "clockwise")


def test_time_stepping_converges_at_high_order():
    # Halving the inner step should cut the error ~16x (4th-order explicit part; the implicit
    # Crank-Nicolson part is 2nd order but its terms are small at Re = 1000).
    start = KolmogorovFlow(size=32).prior(2, generator=torch.Generator().manual_seed(5), dtype=F64,
                                          max_velocity=1.0)
    reference = KolmogorovFlow(size=32, substeps=64).transition(start)
    coarse, fine = (relative_error(KolmogorovFlow(size=32, substeps=n).transition(start), reference) for n in (2, 4))
    assert fine < 1e-6
    assert coarse / fine > 10  # measured ~16
