"""Tests of the SDA score networks ``labkit.sda.nn`` (CPU, tiny widths except for the parameter count)."""
import math

import pytest
import torch

from labkit.sda.nn import (ChannelLayerNorm, LocalScoreUNet, MCScoreNet, ScoreUNet, TimeEmbedding, UNet,
                           kolmogorov_forcing, make_score, parameter_count)

TINY = dict(hidden_channels=(8, 16, 32), hidden_blocks=(1, 1, 1), embedding=16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_mc(order=2, size=16):
    return MCScoreNet(channels=2, order=order, size=size, **TINY)


def test_make_score_parameter_count():
    total, trainable = parameter_count(make_score())
    print(f"make_score(): {total:,} parameters")
    # Time embedding 24,896 + heads/tails 1,677,994 + 18 residual blocks (18 c^2 + 67 c each, 6 per level)
    # 21,172,032. The seed's "~6.5M" is wrong.
    assert total == trainable == 22_874_922
    assert abs(total / 22.87e6 - 1) < 0.005
    assert parameter_count(make_score(hidden_channels=(64, 128, 256)))[0] == 10_244_746  # the qg-branch width


def test_layer_norm_is_over_channels_without_affine():
    x = torch.randn(2, 5, 3, 4)
    y = ChannelLayerNorm()(x)
    expected = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True, unbiased=True) + 1e-5).sqrt()
    torch.testing.assert_close(y, expected)
    assert not list(ChannelLayerNorm().parameters())


def test_forcing_channel():
    f = kolmogorov_forcing(8)
    y = (torch.arange(8) + 0.5) * 2 * math.pi / 8
    assert f.shape == (1, 8, 8)
    torch.testing.assert_close(f[0, 3], torch.sin(4 * y).float())  # varies along axis -1 (y)
    torch.testing.assert_close(f[0], f[0, :1].expand(8, 8))  # constant along axis -2 (x)


def test_output_shapes():
    emb = TimeEmbedding(16)
    assert emb(torch.rand(3)).shape == (3, 16)
    unet = UNet(3, 5, 16, hidden_channels=(8, 16, 32), hidden_blocks=(1, 1, 1))
    assert unet(torch.randn(2, 3, 16, 8), emb(torch.rand(2))).shape == (2, 5, 16, 8)
    net = ScoreUNet(4, context_channels=1, **TINY)
    c = torch.randn(1, 16, 16)
    assert net(torch.randn(3, 4, 16, 16), torch.rand(3), c).shape == (3, 4, 16, 16)
    assert net(torch.randn(2, 3, 4, 16, 16), 0.5, c).shape == (2, 3, 4, 16, 16)  # any batch dims, scalar t
    mc = tiny_mc()
    for shape in [(2, 7, 2, 16, 16), (5, 2, 16, 16), (2, 3, 9, 2, 16, 16)]:
        assert mc(torch.randn(shape), torch.tensor(0.3)).shape == shape


def test_shape_errors_name_the_argument():
    mc = tiny_mc(size=16)
    with pytest.raises(ValueError, match="x must be a trajectory"):
        mc(torch.randn(1, 7, 3, 16, 16), 0.5)  # 3 channels
    with pytest.raises(ValueError, match="L = 4 states"):
        mc(torch.randn(1, 4, 2, 16, 16), 0.5)  # shorter than the window
    with pytest.raises(ValueError, match="must be \\(16, 16\\)"):
        mc(torch.randn(1, 7, 2, 32, 32), 0.5)  # not the forcing's size
    with pytest.raises(ValueError, match="t of shape"):
        mc(torch.randn(2, 7, 2, 16, 16), torch.rand(3))
    net = ScoreUNet(2, context_channels=1, **TINY)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 2, 18, 16), 0.5, torch.randn(1, 18, 16))  # 18 cannot be halved twice
    with pytest.raises(ValueError, match="c must be"):
        net(torch.randn(1, 2, 16, 16), 0.5, torch.randn(2, 16, 16))
    with pytest.raises(ValueError, match="c .*required"):
        net(torch.randn(1, 2, 16, 16), 0.5)
    with pytest.raises(ValueError, match="hidden_channels"):
        UNet(2, 2, 16, hidden_channels=(8, 16), hidden_blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="window"):
        make_score(window=4)


def test_translation_equivariance_along_periodic_axes():
    # Circular padding + stride-2 convs + nearest upsampling: the net commutes with rolls by multiples of
    # 2**(levels - 1) = 4 pixels, given the forcing channel rolls too. Along x it is constant; along y,
    # a roll by size / 4 is one period of sin(4y).
    net = LocalScoreUNet(10, size=16, **TINY).eval()
    x, t = torch.randn(2, 10, 16, 16), torch.rand(2)
    with torch.no_grad():
        y = net(x, t)
        for shift, dim in [(4, -2), (8, -2), (4, -1)]:
            rolled = net(x.roll(shift, dim), t)
            torch.testing.assert_close(rolled, y.roll(shift, dim), atol=1e-5, rtol=1e-5)
        assert (net(x.roll(2, -2), t) - y.roll(2, -2)).abs().max() > 1e-3  # not for a 2-pixel roll


def slow_mc(mc, x, t):
    """Algorithm 2 one state at a time: window start clamp(i - k, 0, L - w), pick state i - start."""
    k, w, L = mc.order, mc.window, x.shape[1]
    out = []
    for i in range(L):
        start = min(max(i - k, 0), L - w)
        eps = mc.kernel(x[:, start:start + w].flatten(1, 2), t)  # (B, w*C, H, W), state-major channels
        out.append(eps.unflatten(1, (w, -1))[:, i - start])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("order,L", [(2, 5), (2, 9), (1, 6), (0, 3)])
def test_mcscorenet_matches_a_loop_over_windows(order, L):
    mc = tiny_mc(order).eval()
    x, t = torch.randn(2, L, 2, 16, 16), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(mc(x, t), slow_mc(mc, x, t), atol=1e-5, rtol=1e-5)


def test_channels_last_and_bf16_autocast():
    mc = tiny_mc().eval()
    x, t = torch.randn(2, 7, 2, 16, 16), torch.rand(2)
    with torch.no_grad():
        reference = mc(x, t)
        # channels-last model and input (channel dim innermost in memory)
        mc_cl = tiny_mc().eval()
        mc_cl.load_state_dict(mc.state_dict())
        mc_cl = mc_cl.to(memory_format=torch.channels_last)
        x_cl = x.movedim(-3, -1).contiguous().movedim(-1, -3)
        torch.testing.assert_close(mc_cl(x_cl, t), reference, atol=1e-5, rtol=1e-5)
        net = LocalScoreUNet(10, size=16, **TINY).eval().to(memory_format=torch.channels_last)
        z = torch.randn(2, 10, 16, 16).contiguous(memory_format=torch.channels_last)
        assert net(z, t).is_contiguous(memory_format=torch.channels_last)
        # bf16 autocast, also channels-last
        for model, inp in [(mc, x), (mc_cl, x_cl)]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = model(inp, t)
            assert y.dtype == torch.bfloat16 and y.shape == x.shape
            assert ((y.float() - reference).norm() / reference.norm()) < 0.05


def test_gradients_reach_every_parameter():
    mc = tiny_mc()
    x, t = torch.randn(2, 6, 2, 16, 16), torch.rand(2)
    ((mc(x, t) - torch.randn_like(x)) ** 2).mean().backward()
    for name, p in mc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
