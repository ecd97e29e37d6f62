"""Cross-check of :class:`~labkit.sda.flow.KolmogorovFlow` against jax-cfd's pseudo-spectral solver.

jax-cfd (``jax_cfd.spectral``) integrates the same vorticity equation with the same numerics:
2/3-rule de-aliasing of the advection term and the 5-stage Crank-Nicolson / RK4 step
(``crank_nicolson_rk4``). Run from the same initial condition with the same inner step and the
same 2/3 mask (see below), the two solvers must agree to round-off.

jax and jax-cfd are optional (``pip install -e .[jaxcfd]``; jax-cfd 0.2.1 still calls
``jax.tree_map``, removed in jax 0.6, hence its own extra with an older jax). Both are imported
inside the functions, so ``import labkit`` never needs them.

Differences between the two codes:

* jax-cfd's wavenumbers are ordinal frequencies (cycles per unit length) times 2 pi; on
  [0, 2pi]^2 they are the same integers labkit uses. Vorticity is w = dv/dx - du/dy in both.
* **The 2/3 mask.** Both keep |k_y| <= floor(N/3) for N not divisible by 3, but jax-cfd's ``brick_wall_filter_2d`` keeps
  k_x in [-floor(N/3), floor(N/3) - 1]: it drops the row k_x = +floor(N/3) and keeps its mirror
  -floor(N/3) (an asymmetric mask; labkit's |k| <= floor((N - 1)/3) is symmetric and alias-free). jax-cfd also filters only the advection term and keeps whatever the initial
  state holds above the cut, while labkit zeroes it. From the same initial state at Re = 1000,
  that one row changes the vorticity after one time unit by 15 % at 64^2, 8 % at 128^2 and
  0.3 % at 256^2 (the cascade fills the cut within ~0.3 time units; turbulence amplifies the
  difference). ``dealias="labkit"`` (the default) therefore gives jax-cfd labkit's mask, for the
  equation and the initial state; the two codes then agree to round-off (~1e-14 in float64).
  ``dealias="jaxcfd"`` runs jax-cfd untouched.
* jax-cfd has no mean flow (it evolves the vorticity only); compare vorticities.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import numpy as np
import torch

from labkit.sda.flow import KolmogorovFlow

__all__ = ["jaxcfd_vorticity_trajectory", "compare_cpu_speed", "agreement"]


@contextlib.contextmanager
def _x64(enabled: bool):
    """Switch jax's 64-bit mode for one call: jax-cfd builds its wavenumbers in jax's default dtype."""
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def _labkit_mask(flow: KolmogorovFlow):
    """labkit's 2/3 mask on the rfft2 grid, as a numpy array (1 = kept): the solver's own."""
    return flow._ops(torch.device("cpu"), torch.float64)["keep"].numpy()


def _build_stepper(flow: KolmogorovFlow, dealias: str = "labkit"):
    """jax-cfd's spectral Navier-Stokes with labkit's parameters: returns (grid, mask, jitted batched 'advance by dt').

    ``mask`` is the filter to apply to the initial vorticity spectrum (None: leave it as it is).
    """
    import jax
    import jax.numpy as jnp
    import jax_cfd.base as cfd
    import jax_cfd.spectral as spectral

    grid = cfd.grids.Grid((flow.size, flow.size), domain=((0, 2 * math.pi), (0, 2 * math.pi)))
    # f = (A sin(k_f y), 0) sampled where labkit samples it: offset (grid_offset, grid_offset).
    # (jax_cfd.spectral.equations.ForcedNavierStokes2D is this with offset 0, A = 1, k_f = 4.)
    offsets = ((flow.grid_offset,) * 2,) * 2
    forcing = lambda g: cfd.forcings.kolmogorov_forcing(
        g, scale=flow.forcing_amplitude, k=flow.forcing_wavenumber, offsets=offsets)
    equation = spectral.equations.NavierStokes2D(flow.viscosity, grid, drag=flow.drag, smooth=True,
                                                 forcing_fn=forcing)
    if dealias not in ("labkit", "jaxcfd"):
        raise ValueError(f"dealias must be 'labkit' or 'jaxcfd', got {dealias!r}")
    mask = None
    if dealias == "labkit":  # replace jax-cfd's asymmetric 2/3 filter of the advection (module docstring)
        mask = jnp.asarray(_labkit_mask(flow), dtype=equation.filter_.dtype)
        equation.filter_ = mask
    step = spectral.time_stepping.crank_nicolson_rk4(equation, flow.dt / flow.substeps)
    # The equation works on one (N, N//2+1) spectrum (it FFTs over all axes): vmap over the batch.
    advance = jax.jit(jax.vmap(cfd.funcutils.repeated(step, flow.substeps)))
    return grid, mask, advance


def _initial_vorticity_hat(grid, mask, x: torch.Tensor):
    """rfft2 of the physical vorticity dv/dx - du/dy of velocity x (B, 2, N, N), with jax-cfd's own curl."""
    import jax.numpy as jnp
    import jax_cfd.spectral as spectral

    uv_hat = jnp.fft.rfft2(jnp.asarray(x.detach().cpu().numpy()))
    w_hat = spectral.utils.spectral_curl_2d(grid.rfft_mesh(), (uv_hat[:, 0], uv_hat[:, 1]))
    return w_hat if mask is None else w_hat * mask


def jaxcfd_vorticity_trajectory(flow: KolmogorovFlow, x: torch.Tensor, length: int,
                                dealias: str = "labkit") -> torch.Tensor:
    """Run jax-cfd's spectral solver from labkit velocity states; return the physical vorticity.

    Uses labkit's parameters (viscosity, drag, forcing, grid offset) and its time step
    ``flow.dt / flow.substeps``. Computes in ``x.dtype`` (float64 switches jax's x64 mode on
    inside this call only).

    Args:
        flow: the labkit solver whose settings to copy.
        x: velocity (..., 2, size, size), float32 or float64.
        length: number of states, ``flow.dt`` apart.
        dealias: "labkit" (labkit's symmetric 2/3 mask, also applied to x, as labkit does) or
            "jaxcfd" (jax-cfd's own filter, x unfiltered); see the module docstring.
    Returns:
        vorticity w = dv/dx - du/dy, (..., length, size, size), like
        ``KolmogorovFlow.vorticity(flow.trajectory(x, length), "physical")``.
    """
    import jax.numpy as jnp

    batch = x.shape[:-3]
    with _x64(x.dtype == torch.float64):
        grid, mask, advance = _build_stepper(flow, dealias)
        w_hat = _initial_vorticity_hat(grid, mask, x.reshape(-1, 2, flow.size, flow.size))
        states = []
        for _ in range(length):
            w_hat = advance(w_hat)
            states.append(np.asarray(jnp.fft.irfft2(w_hat, s=(flow.size, flow.size))))
    w = torch.from_numpy(np.stack(states, axis=1)).to(x.dtype)
    return w.reshape(*batch, length, flow.size, flow.size)


def compare_cpu_speed(size: int = 256, batch: int = 4, repeats: int = 3, threads: int | None = 1,
                      seed: int = 0) -> list[dict]:
    """Time one transition (0.2 time units) of labkit (torch) and jax-cfd (jax/XLA) on the CPU, float32.

    Both advance the same ``batch`` random states with the same step (labkit's default
    substeps); each is timed ``repeats`` times after a warm-up (jit compilation excluded) and the
    median is reported, with the throughput in simulated time units per second. ``threads`` sets
    torch's intra-op threads; XLA has no thread-count knob, so ``threads=1`` makes it
    single-threaded (if jax is not imported yet) and any other value leaves it at its default.
    Returns one row per solver, as the benchmark harness expects.
    """
    import statistics
    import sys

    if threads is not None:
        torch.set_num_threads(threads)
    if threads == 1 and "jax" not in sys.modules:  # XLA reads its flags once, when jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import jax

    flow = KolmogorovFlow(size=size)
    x = flow.prior(batch, generator=torch.Generator().manual_seed(seed))

    def median_seconds(fn):
        fn()  # warm-up: operators cached / jit compiled
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times), min(times)

    labkit_s, labkit_min = median_seconds(lambda: flow.transition(x))
    with _x64(False):
        grid, mask, advance = _build_stepper(flow)
        w_hat = _initial_vorticity_hat(grid, mask, x)
        jaxcfd_s, jaxcfd_min = median_seconds(lambda: jax.block_until_ready(advance(w_hat)))
    common = dict(size=size, batch=batch, dtype="float32", substeps=flow.substeps, repeats=repeats,
                  torch_threads=torch.get_num_threads(), xla_flags=os.environ.get("XLA_FLAGS", "").strip())
    return [dict(name=name, median_ms=1e3 * sec, min_ms=1e3 * low, peak_mib=None,
                 time_units_per_s=batch * flow.dt / sec, **common)
            for name, sec, low in (("labkit", labkit_s, labkit_min), ("jax-cfd spectral", jaxcfd_s, jaxcfd_min))]


def agreement(size: int, dealias: str = "labkit", time_units: float = 1.0, batch: int = 1, seed: int = 0) -> float:
    """Largest relative L2 difference of labkit's and jax-cfd's vorticity after ``time_units``, float64."""
    flow = KolmogorovFlow(size=size, grid_offset=0.0)  # jax_cfd.spectral samples at the nodes
    x = flow.prior(batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    length = round(time_units / flow.dt)
    ours = KolmogorovFlow.vorticity(flow.trajectory(x, length)[..., -1, :, :, :], "physical")
    theirs = jaxcfd_vorticity_trajectory(flow, x, length, dealias=dealias)[..., -1, :, :]
    return ((ours - theirs).norm(dim=(-2, -1)) / theirs.norm(dim=(-2, -1))).max().item()
