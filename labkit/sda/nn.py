"""Score networks of score-based data assimilation (SDA, Rozet & Louppe 2023) for Kolmogorov flow.

The network predicts the noise ``eps`` of a noised state ``x_t`` (epsilon-parametrised score,
``score = -eps / sigma(t)``). It is built in four layers, smallest first:

* :class:`TimeEmbedding`: diffusion time t in [0, 1] -> a feature vector (sinusoids + MLP);
* :class:`UNet`: a 3-level convolutional U-Net whose residual blocks (:class:`ModResidualBlock`)
  add the time features, with channel LayerNorm, additive skips and circular padding (the flow
  is doubly periodic);
* :class:`ScoreUNet` / :class:`LocalScoreUNet`: the U-Net applied to a *window* of 2k+1
  consecutive states flattened into channels, with the Kolmogorov forcing sin(4y) as an extra
  input channel;
* :class:`MCScoreNet`: the score of a whole trajectory of any length L >= 2k+1, composed from
  the window network (the paper's Algorithm 2). It rests on a Markov assumption of order k: a
  state interacts with its k neighbours on each side only.

:func:`make_score` assembles the original's Kolmogorov configuration: window 5, channels
(96, 192, 384), 3 blocks per level, SiLU; 22.87 M parameters.

Layout of the data (see :mod:`labkit.sda.data`): a trajectory is (..., L, 2, H, W) with
channels (u, v), array axis -2 = x, axis -1 = y.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["TimeEmbedding", "ChannelLayerNorm", "ModResidualBlock", "UNet", "ScoreUNet", "LocalScoreUNet",
           "MCScoreNet", "make_score", "kolmogorov_forcing", "parameter_count"]

CONVOLUTIONS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class TimeEmbedding(nn.Module):
    """t -> [cos(pi n t), sin(pi n t)] for n = 1..16, then Linear(32, 256) -> SiLU -> Linear(256, features).

    t is the raw diffusion time in [0, 1]; the lowest frequency pi makes the map one-to-one on it.
    """

    def __init__(self, features: int = 64, frequencies: int = 16, hidden: int = 256):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, hidden), nn.SiLU(), nn.Linear(hidden, features))

    def forward(self, t: Tensor) -> Tensor:
        # The sinusoids in float32 at least, even under autocast: bf16 would round pi*16*t visibly.
        dtype = torch.promote_types(t.dtype, torch.float32)
        phase = self.freqs.to(dtype) * t.to(dtype).unsqueeze(-1)
        features = torch.cat((phase.cos(), phase.sin()), dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class ChannelLayerNorm(nn.Module):
    """Normalise every pixel over the channel dimension only: (x - mean) / sqrt(var + 1e-5).

    As the original (zuko's LayerNorm): unbiased variance, no learnable scale or shift. Computed in
    float32 and cast back, so that it stays accurate under bf16 autocast.
    """

    def __init__(self, dim: int = -3, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: Tensor) -> Tensor:
        y = x.to(torch.promote_types(x.dtype, torch.float32))
        var, mean = torch.var_mean(y, dim=self.dim, keepdim=True, correction=1)
        return ((y - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


def _conv(c_in: int, c_out: int, kernel_size: int, spatial: int, padding_mode: str, stride: int = 1) -> nn.Module:
    """A 'same' convolution (odd kernel) with the given padding mode, optionally strided."""
    return CONVOLUTIONS[spatial](c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2,
                                 padding_mode=padding_mode)


class ModResidualBlock(nn.Module):
    """x + residue(x + Linear(emb)), residue = LayerNorm -> Conv -> act -> Conv.

    The time features are added to every pixel (a per-channel shift) before the block's
    normalisation: the original's "modulation".
    """

    def __init__(self, channels: int, mod_features: int, kernel_size: int = 3, activation=nn.SiLU,
                 spatial: int = 2, padding_mode: str = "circular"):
        super().__init__()
        self.spatial = spatial
        self.project = nn.Linear(mod_features, channels)
        self.residue = nn.Sequential(
            ChannelLayerNorm(dim=-(spatial + 1)),
            _conv(channels, channels, kernel_size, spatial, padding_mode),
            activation(),
            _conv(channels, channels, kernel_size, spatial, padding_mode),
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift = self.project(emb).reshape(emb.shape[0], -1, *([1] * self.spatial))  # (B, C, 1, 1)
        return x + self.residue(x + shift)


class UNet(nn.Module):
    """U-Net with additive skips; each level i works at resolution / 2**i with hidden_channels[i].

    Descent, level i: head (level 0: conv in -> c_0; else strided conv c_{i-1} -> c_i), then
    hidden_blocks[i] residual blocks; the result is remembered. Ascent, level i (deepest first):
    hidden_blocks[i] more blocks, then a tail (level 0: conv c_0 -> out; else LayerNorm ->
    nearest x2 upsampling -> conv c_i -> c_{i-1}) plus the remembered descent output of level i-1.
    """

    def __init__(self, in_channels: int, out_channels: int, mod_features: int,
                 hidden_channels: Sequence[int] = (96, 192, 384), hidden_blocks: Sequence[int] = (3, 3, 3),
                 kernel_size: int = 3, activation=nn.SiLU, spatial: int = 2, padding_mode: str = "circular"):
        super().__init__()
        if len(hidden_channels) != len(hidden_blocks) or not hidden_channels:
            raise ValueError(f"hidden_channels {tuple(hidden_channels)} and hidden_blocks {tuple(hidden_blocks)} "
                             "must be non-empty and of the same length (one entry per level)")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (a 'same' convolution), got {kernel_size}")
        if spatial not in CONVOLUTIONS:
            raise ValueError(f"spatial must be 1, 2 or 3, got {spatial}")
        self.spatial, self.levels = spatial, len(hidden_channels)
        conv = lambda c_in, c_out, stride=1: _conv(c_in, c_out, kernel_size, spatial, padding_mode, stride)
        block = lambda c: ModResidualBlock(c, mod_features, kernel_size, activation, spatial, padding_mode)

        self.heads, self.tails = nn.ModuleList(), nn.ModuleList()
        self.descent, self.ascent = nn.ModuleList(), nn.ModuleList()
        for i, (c, n) in enumerate(zip(hidden_channels, hidden_blocks)):
            if i == 0:
                self.heads.append(conv(in_channels, c))
                self.tails.append(conv(c, out_channels))
            else:
                self.heads.append(conv(hidden_channels[i - 1], c, stride=2))
                self.tails.append(nn.Sequential(
                    ChannelLayerNorm(dim=-(spatial + 1)),
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    conv(c, hidden_channels[i - 1]),
                ))
            self.descent.append(nn.ModuleList(block(c) for _ in range(n)))
            self.ascent.append(nn.ModuleList(block(c) for _ in range(n)))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, in_channels, *spatial sizes), emb: (B, mod_features) -> (B, out_channels, *sizes)."""
        factor = 2 ** (self.levels - 1)
        if any(s % factor for s in x.shape[-self.spatial:]):
            raise ValueError(f"x's spatial sizes {tuple(x.shape[-self.spatial:])} must be divisible by {factor}: "
                             f"the U-Net halves them {self.levels - 1} times")
        memory = []
        for head, blocks in zip(self.heads, self.descent):
            x = head(x)
            for b in blocks:
                x = b(x, emb)
            memory.append(x)
        memory.pop()  # the deepest level feeds the ascent directly
        for i in reversed(range(self.levels)):
            for b in self.ascent[i]:
                x = b(x, emb)
            x = self.tails[i](x)
            if i > 0:
                x = x + memory.pop()  # additive skip (not concatenation)
        return x


def _channels_last(x: Tensor, d: int) -> bool:
    """Whether x is stored channels-last: its channel dim (-d) innermost in memory."""
    return x.dim() >= d and x.shape[-d] > 1 and x.stride(-d) == 1 and not x.is_contiguous()


def _time_like(t, batch_shape: torch.Size, like: Tensor) -> Tensor:
    """The diffusion time as a float tensor of shape batch_shape (t: a number, a scalar or batch-shaped)."""
    t = torch.as_tensor(t, device=like.device)
    t = t.to(torch.promote_types(like.dtype, torch.float32) if like.is_floating_point() else torch.float32)
    try:
        return t.expand(batch_shape)
    except RuntimeError:
        raise ValueError(f"t of shape {tuple(t.shape)} must be a scalar or match the batch shape "
                         f"{tuple(batch_shape)} of x") from None


class ScoreUNet(nn.Module):
    """eps-network of one (flattened) state: x (..., channels, H, W), t (...) or scalar -> (..., channels, H, W).

    A context c (..., context_channels, H, W), broadcast over the batch, is concatenated to x as
    extra input channels: for Kolmogorov flow, the fixed forcing field.
    """

    def __init__(self, channels: int, context_channels: int = 1, embedding: int = 64, **unet_kwargs):
        super().__init__()
        self.channels, self.context_channels = channels, context_channels
        self.embedding = TimeEmbedding(embedding)
        self.unet = UNet(channels + context_channels, channels, embedding, **unet_kwargs)

    def forward(self, x: Tensor, t, c: Tensor | None = None) -> Tensor:
        d = self.unet.spatial + 1  # channel dim + spatial dims
        if x.dim() < d or x.shape[-d] != self.channels:
            raise ValueError(f"x must be (..., {self.channels}, *spatial) with {self.unet.spatial} spatial dims, "
                             f"got shape {tuple(x.shape)}")
        batch, sizes = x.shape[:-d], x.shape[-d + 1:]
        if self.context_channels:
            if c is None:
                raise ValueError(f"c (context, {self.context_channels} channels) is required")
            if c.dim() < d or c.shape[-d] != self.context_channels or c.shape[-d + 1:] != sizes:
                raise ValueError(f"c must be (..., {self.context_channels}, {', '.join(map(str, sizes))}), "
                                 f"got shape {tuple(c.shape)}")
            try:
                c = c.to(x.dtype).expand(*batch, *c.shape[-d:])
            except RuntimeError:
                raise ValueError(f"c of shape {tuple(c.shape)} does not broadcast over x's batch shape "
                                 f"{tuple(batch)}") from None
            x_in = torch.cat((x, c), dim=-d)
        elif c is not None:
            raise ValueError("c was given but this network has context_channels=0")
        else:
            x_in = x
        x_in = x_in.reshape(-1, *x_in.shape[-d:])  # (B, C_in, *spatial)
        if _channels_last(x, d):
            x_in = x_in.movedim(1, -1).contiguous().movedim(-1, 1)  # keep the caller's layout (cat loses it)
        t = _time_like(t, batch, x).reshape(-1)
        return self.unet(x_in, self.embedding(t)).reshape(x.shape)


def kolmogorov_forcing(size: int = 64, wavenumber: int = 4) -> Tensor:
    """The forcing f_x = sin(4 y) at cell centres y_j = (j + 1/2) 2 pi / size, as a (1, size, size) channel.

    It varies along array axis -1 (y) and is constant along axis -2 (x), like the data.
    """
    y = 2 * math.pi / size * (torch.arange(size, dtype=torch.float64) + 0.5)
    return torch.sin(wavenumber * y).float().expand(1, size, size).clone()


class LocalScoreUNet(ScoreUNet):
    """:class:`ScoreUNet` whose context is always the Kolmogorov forcing channel sin(4y) (a buffer)."""

    def __init__(self, channels: int, size: int = 64, **kwargs):
        super().__init__(channels, 1, **kwargs)
        self.size = size
        self.register_buffer("forcing", kolmogorov_forcing(size), persistent=False)

    def forward(self, x: Tensor, t, c: Tensor | None = None) -> Tensor:
        if c is not None:
            raise ValueError("c must be None: LocalScoreUNet's context is its fixed forcing channel")
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"x's spatial shape {tuple(x.shape[-2:])} must be ({self.size}, {self.size}), "
                             "the size the forcing channel was built for")
        return super().forward(x, t, self.forcing)


class MCScoreNet(nn.Module):
    """eps-network of whole trajectories x (..., L, channels, H, W), L >= 2 order + 1, t (...) or scalar.

    All L - 2k windows of w = 2k + 1 consecutive states (k = order) go through the window network
    ``kernel`` in one batch. State i's output is taken from the window centred on it; the first k
    states come from the first window and the last k from the last one (Algorithm 2).
    """

    def __init__(self, channels: int = 2, order: int = 2, **kwargs):
        super().__init__()
        self.channels, self.order = channels, order
        self.window = 2 * order + 1
        self.kernel = LocalScoreUNet(channels * self.window, **kwargs)

    def forward(self, x: Tensor, t, c: Tensor | None = None) -> Tensor:
        k, w, C = self.order, self.window, self.channels
        if c is not None:
            raise ValueError("c must be None: the forcing channel is built into the network")
        if x.dim() < 4 or x.shape[-3] != C:
            raise ValueError(f"x must be a trajectory (..., L, {C}, H, W), got shape {tuple(x.shape)}")
        L = x.shape[-4]
        if L < w:
            raise ValueError(f"x has L = {L} states, fewer than the window 2 * order + 1 = {w}")
        batch, n = x.shape[:-4], L - w + 1
        t = _time_like(t, batch, x).unsqueeze(-1).expand(*batch, n)  # the same t for all windows

        # (..., L, C, H, W) -> windows (..., n, C, H, W, w) -> (..., n, w*C, H, W), state-major channels
        # (state s, channel j) -> s*C + j, as the training windows are flattened.
        windows = x.unfold(-4, w, 1).movedim(-1, -4)  # (..., n, w, C, H, W), a view
        if _channels_last(x, 3):  # copy with the channels innermost: (..., n, H, W, w*C), viewed back
            windows = windows.movedim((-4, -3), (-2, -1)).contiguous().flatten(-2, -1).movedim(-1, -3)
        else:
            windows = windows.flatten(-4, -3)
        eps = self.kernel(windows, t).unflatten(-3, (w, C))  # (..., n, w, C, H, W)

        first = eps[..., 0, :k, :, :, :]        # states 0..k-1 from the first window
        centre = eps[..., :, k, :, :, :]        # states k..L-k-1, each from its own window
        last = eps[..., -1, w - k:, :, :, :]    # states L-k..L-1 from the last window
        return torch.cat((first, centre, last), dim=-4)


def make_score(window: int = 5, embedding: int = 64, hidden_channels: Sequence[int] = (96, 192, 384),
               hidden_blocks: Sequence[int] = (3, 3, 3), kernel_size: int = 3, activation: str = "SiLU",
               size: int = 64) -> MCScoreNet:
    """The original's Kolmogorov score network: MCScoreNet(2, order=window // 2) over a circular U-Net."""
    if window < 1 or window % 2 != 1:
        raise ValueError(f"window must be odd and >= 1 (2 * order + 1), got {window}")
    act = getattr(nn, activation, None)
    if not (isinstance(act, type) and issubclass(act, nn.Module)):
        raise ValueError(f"activation must name a torch.nn module such as 'SiLU', got {activation!r}")
    return MCScoreNet(2, order=window // 2, size=size, embedding=embedding, hidden_channels=tuple(hidden_channels),
                      hidden_blocks=tuple(hidden_blocks), kernel_size=kernel_size, activation=act, spatial=2,
                      padding_mode="circular")


def parameter_count(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) number of parameters."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
