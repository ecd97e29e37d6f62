"""Kolmogorov flow: 2-D incompressible Navier-Stokes on the periodic square [0, 2pi]^2.

The equations (velocity form, density 1) are

    du/dt + (u . grad) u = -grad p + nu lap u - drag u + f,      div u = 0,
    f = (A sin(k_f y), 0),   nu = 1 / reynolds,  drag = 0.1,  A = 1,  k_f = 4,

the setup of the score-based data assimilation (SDA) paper. Taking the curl gives the
vorticity equation the solver integrates,

    dw/dt + u . grad w = nu lap w - drag w - A k_f cos(k_f y),      w = dv/dx - du/dy.

Numerics (pseudo-spectral, like ``jax_cfd.spectral``; the original SDA data came from
jax-cfd's finite-volume solver, which is more dissipative at small scales):

* the state is the real FFT (``torch.fft.rfft2``) of the vorticity; velocity is recovered from
  the stream function psi (lap psi = -w, u = dpsi/dy, v = -dpsi/dx);
* the advection term is computed on the grid and de-aliased with the 2/3 rule: every mode with
  |k_x| or |k_y| above 2/3 of the Nyquist wavenumber is kept at zero, in the state too;
* time stepping is the 5-stage, 4th-order, low-storage implicit-explicit Runge-Kutta /
  Crank-Nicolson scheme used by jax-cfd (``crank_nicolson_rk4``): advection and forcing are
  explicit, viscosity and drag are implicit (they are diagonal in Fourier space, so the implicit
  solve is a division);
* one call to :meth:`KolmogorovFlow.transition` advances ``dt`` (0.2 time units) in
  ``substeps`` equal steps, chosen from a CFL bound (Courant number x grid spacing / max velocity).

Array conventions (those of the original data set, jax-cfd's ``indexing='ij'``):

* a state is a **velocity** field of shape ``(..., 2, H, W)``: channel 0 is u (x component),
  channel 1 is v (y component); array axis -2 is x, axis -1 is y;
* sample ``(i, j)`` sits at ``((i + offset) dx, (j + offset) dx)`` with dx = 2pi / size and
  ``offset = grid_offset`` (0.5 by default: cell centres, where jax-cfd's finite-volume solver
  evaluates sin(4y) for u; use 0 to match ``jax_cfd.spectral``, which uses the nodes);
* the mean velocity (the k = 0 mode, invisible to the vorticity) is carried along exactly: the
  forcing has zero mean and advection conserves momentum, so it only decays as exp(-drag t).
"""
from __future__ import annotations

import math

import torch

__all__ = ["KolmogorovFlow"]

TWO_PI = 2.0 * math.pi

# 5-stage low-storage IMEX RK / Crank-Nicolson coefficients (Carpenter & Kennedy 1994, as used by
# jax-cfd's crank_nicolson_rk4). Stage s evaluates the explicit term at time alpha[s] of the step,
# accumulates it as h = F(w) + beta[s] h, and moves w by gamma[s] dt h plus a Crank-Nicolson
# half-and-half split of the implicit term over [alpha[s], alpha[s+1]].
RK_ALPHA = (0.0, 0.1496590219993, 0.3704009573644, 0.6222557631345, 0.9582821306748, 1.0)
RK_BETA = (0.0, -0.4178904745, -1.192151694643, -1.697784692471, -1.514183444257)
RK_GAMMA = (0.1496590219993, 0.3792103129999, 0.8229550293869, 0.6994504559488, 0.1530572479681)

FLOAT_DTYPES = (torch.float32, torch.float64)


def _check_velocity(x: torch.Tensor, name: str = "x", size: int | None = None) -> None:
    """Raise a clear error unless ``x`` is a finite float32/float64 tensor of shape (..., 2, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., 2, H, W), got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}; convert it with {name}.float()")
    if x.dim() < 3 or x.shape[-3] != 2:
        raise ValueError(f"{name} must have shape (..., 2, H, W) (channels u, v), got {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{name} must be on the solver's {size}x{size} grid, got {tuple(x.shape[-2:])}; "
                         f"build KolmogorovFlow(size={x.shape[-1]}) or coarsen/upsample the field")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values (a blown-up simulation? try more substeps)")


def _wavenumbers(size: int, device, dtype):
    """Integer angular wavenumbers of an rfft2 on [0, 2pi]^2: kx (size, 1) on axis -2, ky (1, size//2+1)."""
    kx = torch.fft.fftfreq(size, d=1.0 / size, device=device, dtype=dtype)[:, None]
    ky = torch.fft.rfftfreq(size, d=1.0 / size, device=device, dtype=dtype)[None, :]
    return kx, ky


class KolmogorovFlow:
    """Batched pseudo-spectral solver of 2-D Kolmogorov flow (see the module docstring).

    Args:
        size: grid points per side (even); the domain is [0, 2pi]^2.
        dt: time between two states returned by :meth:`transition` / :meth:`trajectory`.
        reynolds: Reynolds number; the viscosity is 1 / reynolds.
        drag: linear drag coefficient (-drag u in the momentum equation).
        forcing_amplitude, forcing_wavenumber: f = (A sin(k_f y), 0).
        grid_offset: sample (i, j) sits at ((i + grid_offset) dx, (j + grid_offset) dx).
        max_velocity, courant: the inner step is at most courant * dx / max_velocity
            (jax-cfd's spectral example uses 7 and 0.5: 115 steps per dt at 256^2). The flow's
            speed stays below ~5 at 256^2; courant=1.0 (58 steps) is still stable and changes the
            velocity after one time unit by only ~2e-7 (relative, float64), so it halves the cost.
        substeps: override the number of inner steps per ``dt``.

    The solver holds no tensors of its own state: it follows the device and dtype (float32 or
    float64) of its input, so one instance serves CPU and GPU alike.
    """

    def __init__(self, size: int = 256, dt: float = 0.2, reynolds: float = 1000.0, drag: float = 0.1,
                 forcing_amplitude: float = 1.0, forcing_wavenumber: int = 4, grid_offset: float = 0.5,
                 max_velocity: float = 7.0, courant: float = 0.5, substeps: int | None = None):
        if int(size) != size or size < 8 or size % 2:
            raise ValueError(f"size must be an even integer >= 8, got {size}")
        if not dt > 0 or not reynolds > 0 or drag < 0:
            raise ValueError(f"need dt > 0, reynolds > 0 and drag >= 0; got dt={dt}, reynolds={reynolds}, drag={drag}")
        self.size = int(size)
        self.dt = float(dt)
        self.reynolds = float(reynolds)
        self.viscosity = 1.0 / float(reynolds)
        self.drag = float(drag)
        self.forcing_amplitude = float(forcing_amplitude)
        self.forcing_wavenumber = int(forcing_wavenumber)
        self.grid_offset = float(grid_offset)
        self.dx = TWO_PI / self.size
        if substeps is None:
            step_bound = courant * self.dx / max_velocity
            substeps = max(1, math.ceil(self.dt / step_bound - 1e-9))
        if int(substeps) != substeps or substeps < 1:
            raise ValueError(f"substeps must be a positive integer, got {substeps}")
        self.substeps = int(substeps)
        self._operators = {}  # (device, dtype) -> precomputed Fourier-space arrays

    def __repr__(self) -> str:
        return (f"KolmogorovFlow(size={self.size}, dt={self.dt}, reynolds={self.reynolds}, drag={self.drag}, "
                f"forcing={self.forcing_amplitude}*sin({self.forcing_wavenumber}y), substeps={self.substeps})")

    # ------------------------------------------------------------------ grid and operators
    def grid(self, device=None, dtype=torch.float32):
        """Sample coordinates (x, y), each of shape (size, size): x varies along axis -2, y along -1."""
        line = (torch.arange(self.size, device=device, dtype=dtype) + self.grid_offset) * self.dx
        return torch.meshgrid(line, line, indexing="ij")

    def _ops(self, device, dtype):
        """Fourier-space arrays for one (device, dtype), built once: wavenumbers, 2/3 mask, forcing, RK factors."""
        key = (torch.device(device), dtype)
        if key not in self._operators:
            kx, ky = _wavenumbers(self.size, device, dtype)
            k2 = kx**2 + ky**2
            # The 2/3 rule: a product of modes |k| <= K reaches 2K, which aliases onto
            # 2K - size; that stays outside the kept band when 3K < size.
            k_keep = (self.size - 1) // 3
            keep = ((kx.abs() <= k_keep) & (ky.abs() <= k_keep)).to(dtype)
            _, y = self.grid(device, dtype)
            k_f = self.forcing_wavenumber
            curl_forcing = -self.forcing_amplitude * k_f * torch.cos(k_f * y)  # curl of (A sin(k_f y), 0)
            linear = -self.viscosity * k2 - self.drag  # implicit part: L w_hat = linear * w_hat
            h = self.dt / self.substeps
            explicit, implicit = [], []
            for s in range(len(RK_GAMMA)):
                half = 0.5 * h * (RK_ALPHA[s + 1] - RK_ALPHA[s])
                explicit.append(1.0 + half * linear)       # (1 + mu L): the explicit half of Crank-Nicolson
                implicit.append(1.0 / (1.0 - half * linear))  # (1 - mu L)^-1: the implicit half
            inv_k2 = torch.where(k2 > 0, 1.0 / k2.clamp_min(1.0), torch.zeros_like(k2))
            # Each stage turns w_hat into four fields with one broadcast multiply: u_hat, v_hat
            # (from the stream function psi_hat = w_hat / k^2) and the two derivatives of w.
            to_fields = torch.stack(torch.broadcast_tensors(1j * ky * inv_k2, -1j * kx * inv_k2, 1j * kx, 1j * ky))
            self._operators[key] = dict(
                kx=kx, ky=ky, inv_k2=inv_k2, keep=keep, forcing_hat=torch.fft.rfft2(curl_forcing) * keep,
                to_fields=to_fields, explicit=explicit,
                # The 2/3 mask rides on the implicit factor: every update of w_hat ends with it, so
                # the explicit term itself need not be masked (its aliased modes never reach w).
                implicit_masked=[factor * keep for factor in implicit])
        return self._operators[key]

    # ------------------------------------------------------------------ velocity <-> vorticity (spectral)
    def _velocity_hat_from_vorticity_hat(self, w_hat, ops):
        """Stream function psi_hat = w_hat / k^2; u_hat = i ky psi_hat, v_hat = -i kx psi_hat."""
        psi_hat = w_hat * ops["inv_k2"]
        return 1j * ops["ky"] * psi_hat, -1j * ops["kx"] * psi_hat

    def _explicit_term(self, w_hat, ops):
        """Fourier transform of -u . grad w + curl f (the part treated explicitly), not de-aliased."""
        fields = w_hat.unsqueeze(-3) * ops["to_fields"]  # (..., 4, N, N/2+1): u, v, dw/dx, dw/dy
        u, v, dw_dx, dw_dy = torch.fft.irfft2(fields, s=(self.size, self.size)).unbind(-3)  # one batched FFT
        advection = torch.fft.rfft2(torch.addcmul(u * dw_dx, v, dw_dy))
        return ops["forcing_hat"] - advection

    def _advance(self, w_hat, ops):
        """Advance the vorticity spectrum by dt (substeps IMEX RK / Crank-Nicolson steps)."""
        h = self.dt / self.substeps
        for _ in range(self.substeps):
            acc = None
            for s in range(len(RK_GAMMA)):
                term = self._explicit_term(w_hat, ops)
                acc = term if acc is None else term.add_(acc, alpha=RK_BETA[s])  # h = F(w) + beta h
                w_hat = torch.add(ops["explicit"][s] * w_hat, acc, alpha=RK_GAMMA[s] * h).mul_(ops["implicit_masked"][s])
        return w_hat

    def _to_spectral(self, x):
        """Velocity (..., 2, N, N) -> (de-aliased vorticity spectrum, mean velocity (..., 2))."""
        ops = self._ops(x.device, x.dtype)
        uv_hat = torch.fft.rfft2(x)
        w_hat = 1j * ops["kx"] * uv_hat[..., 1, :, :] - 1j * ops["ky"] * uv_hat[..., 0, :, :]
        return w_hat * ops["keep"], x.mean(dim=(-2, -1)), ops

    def _to_velocity(self, w_hat, mean, ops):
        u_hat, v_hat = self._velocity_hat_from_vorticity_hat(w_hat, ops)
        uv = torch.fft.irfft2(torch.stack((u_hat, v_hat), dim=-3), s=(self.size, self.size))
        return uv + mean[..., None, None]

    # ------------------------------------------------------------------ public API
    def transition(self, x: torch.Tensor) -> torch.Tensor:
        """Advance velocity states x (..., 2, size, size) by ``dt``; returns the same shape and dtype.

        The divergent part of ``x`` (if any) and modes beyond the 2/3 cut are discarded on entry.
        """
        return self.trajectory(x, 1)[..., 0, :, :, :]

    def trajectory(self, x: torch.Tensor, length: int, transform=None) -> torch.Tensor:
        """States after 1, 2, ..., ``length`` transitions from x (the initial state is not included).

        Args:
            x: velocity (..., 2, size, size), float32 or float64, any device.
            length: number of snapshots, ``dt`` apart.
            transform: applied to each snapshot as soon as it is computed, e.g.
                ``lambda s: KolmogorovFlow.coarsen(s, 4)``: a long batched run then never holds
                its full-resolution snapshots (1,024 of them at 256^2 for 128 steps is 34 GB).
        Returns:
            (..., length, *snapshot shape), by default (..., length, 2, size, size). (SDA's
            ``trajectory`` stacks time first; for a single state (2, H, W) both give (length, 2, H, W).)
        """
        _check_velocity(x, "x", self.size)
        if int(length) != length or length < 1:
            raise ValueError(f"length must be a positive integer, got {length}")
        w_hat, mean, ops = self._to_spectral(x)
        decay = math.exp(-self.drag * self.dt)  # the mean velocity only feels the drag
        states = []
        for _ in range(int(length)):
            w_hat = self._advance(w_hat, ops)
            mean = mean * decay
            state = self._to_velocity(w_hat, mean, ops)
            states.append(state if transform is None else transform(state))
        out = torch.stack(states, dim=x.dim() - 3)
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"the simulation blew up (non-finite values); increase substeps "
                                     f"(now {self.substeps}) or lower the input speed")
        return out

    def prior(self, batch=(), generator: torch.Generator | None = None, device=None,
              dtype: torch.dtype = torch.float32, max_velocity: float = 3.0, peak_wavenumber: float = 4.0,
              variance: float = 0.25) -> torch.Tensor:
        """Random divergence-free initial velocity fields, shape (*batch, 2, size, size).

        The recipe of jax-cfd's ``filtered_velocity_field`` (the original data's prior): white
        noise per component, its Fourier amplitudes multiplied by lognormal(k; mode, variance) / k
        with k = |wavenumber| (an unnormalised log-normal density peaking near ``peak_wavenumber``,
        zero at k = 0), projected onto divergence-free fields (exactly, in Fourier space), then
        scaled so that the largest speed sqrt(u^2 + v^2) of each field is ``max_velocity``.
        """
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        batch = (batch,) if isinstance(batch, int) else tuple(batch)
        if generator is not None and device is None:
            device = generator.device
        noise = torch.randn(*batch, 2, self.size, self.size, generator=generator, device=device, dtype=dtype)
        kx, ky = _wavenumbers(self.size, noise.device, dtype)
        k = torch.sqrt(kx**2 + ky**2)
        safe_k = k.clamp_min(1e-12)
        log_k = torch.log(safe_k)
        mu = math.log(peak_wavenumber) + variance  # log-normal whose mode is peak_wavenumber
        density = torch.exp(-(mu - log_k) ** 2 / (2 * variance) - log_k) / safe_k
        # Zero the k = 0 mode and the Nyquist row/column: a real field's Nyquist mode has no
        # well-defined derivative, so it could not be projected exactly (its weight is ~1e-5 anyway).
        nyquist = self.size // 2
        density = torch.where((k > 0) & (kx.abs() < nyquist) & (ky < nyquist), density, torch.zeros_like(density))
        uv_hat = torch.fft.rfft2(noise) * density
        # Leray projection: remove the component along k (the gradient part).
        k_dot_u = (kx * uv_hat[..., 0, :, :] + ky * uv_hat[..., 1, :, :]) / safe_k**2
        uv_hat = torch.stack((uv_hat[..., 0, :, :] - kx * k_dot_u, uv_hat[..., 1, :, :] - ky * k_dot_u), dim=-3)
        uv = torch.fft.irfft2(uv_hat, s=(self.size, self.size))
        speed = torch.sqrt((uv**2).sum(dim=-3)).amax(dim=(-2, -1))
        return uv * (max_velocity / speed)[..., None, None, None]

    # ------------------------------------------------------------------ static helpers (any grid size)
    @staticmethod
    def coarsen(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
        """Block mean over ``factor`` x ``factor`` cells of the last two axes: (..., H, W) -> (..., H/f, W/f).

        The original data are ``coarsen(velocity_256, 4)`` -> 64 x 64 (no anti-aliasing filter).
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError("x must be a tensor of shape (..., H, W)")
        *batch, h, w = x.shape
        if int(factor) != factor or factor < 1 or h % factor or w % factor:
            raise ValueError(f"factor must be a positive integer dividing H and W = {h}, {w}; got {factor}")
        return x.reshape(*batch, h // factor, factor, w // factor, factor).mean(dim=(-3, -1))

    @staticmethod
    def vorticity(x: torch.Tensor, convention: str = "sda") -> torch.Tensor:
        """Vorticity of velocity fields x (..., 2, H, W) -> (..., H, W) on [0, 2pi]^2.

        convention:
            ``"sda"`` (default; the original's plots and observation operators): central
            differences with circular padding and **unit** grid spacing, du/dy - dv/dx, i.e.
            -dx * w: sign-flipped (positive = clockwise) and in grid units (dx = 2pi / W).
            ``"physical"``: w = dv/dx - du/dy, exact spectral derivatives (the solver's w).
        """
        _check_velocity(x, "x")
        u, v = x[..., 0, :, :], x[..., 1, :, :]
        if convention == "sda":
            du_dy = 0.5 * (torch.roll(u, -1, dims=-1) - torch.roll(u, 1, dims=-1))
            dv_dx = 0.5 * (torch.roll(v, -1, dims=-2) - torch.roll(v, 1, dims=-2))
            return du_dy - dv_dx
        if convention == "physical":
            h, w = x.shape[-2:]
            if h != w:
                raise ValueError(f"physical vorticity needs a square grid, got {h}x{w}")
            kx, ky = _wavenumbers(h, x.device, x.dtype)
            uv_hat = torch.fft.rfft2(x)
            w_hat = 1j * kx * uv_hat[..., 1, :, :] - 1j * ky * uv_hat[..., 0, :, :]
            return torch.fft.irfft2(w_hat, s=(h, w))
        raise ValueError(f"convention must be 'sda' or 'physical', got {convention!r}")

    @staticmethod
    def velocity(w: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
        """Divergence-free velocity (..., 2, H, W) whose physical vorticity is w (..., H, W).

        Inverse of ``vorticity(x, "physical")``; the mean velocity (..., 2), which the vorticity
        cannot know, defaults to zero. The k = 0 mode of w is ignored (a periodic w has zero mean).
        """
        if not isinstance(w, torch.Tensor) or w.dtype not in FLOAT_DTYPES or w.dim() < 2:
            raise TypeError("w must be a float32/float64 tensor of shape (..., H, W)")
        h, width = w.shape[-2:]
        if h != width:
            raise ValueError(f"w must be on a square grid, got {h}x{width}")
        kx, ky = _wavenumbers(h, w.device, w.dtype)
        k2 = kx**2 + ky**2
        psi_hat = torch.fft.rfft2(w) * torch.where(k2 > 0, 1.0 / k2.clamp_min(1.0), torch.zeros_like(k2))
        uv = torch.fft.irfft2(torch.stack((1j * ky * psi_hat, -1j * kx * psi_hat), dim=-3), s=(h, width))
        if mean is not None:
            uv = uv + mean[..., None, None]
        return uv

    @staticmethod
    def divergence(x: torch.Tensor) -> torch.Tensor:
        """Spectral divergence du/dx + dv/dy of x (..., 2, H, H) on [0, 2pi]^2 -> (..., H, H)."""
        _check_velocity(x, "x")
        kx, ky = _wavenumbers(x.shape[-1], x.device, x.dtype)
        uv_hat = torch.fft.rfft2(x)
        return torch.fft.irfft2(1j * kx * uv_hat[..., 0, :, :] + 1j * ky * uv_hat[..., 1, :, :], s=x.shape[-2:])
