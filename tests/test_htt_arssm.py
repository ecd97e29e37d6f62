"""AR-SSM layer: the recurrence, causality, bounded state, gate gradients, Gumbel bias, eval-time pruning.

The recurrence runs through ``labkit.htt.scan.linear_scan``; these tests pin its PyTorch path
(``LABKIT_BACKEND=torch``) so that they stay fast on CPU whatever kernel the scan dispatches to
(its own tests compare the kernels with the reference).
"""
import math

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from labkit.htt.arssm import (GATE_MODES, AdaptiveRankSemiseparableLayer, binary_gate, gate_samples,
                              logistic_noise, seed_gumbel_gate)


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    monkeypatch.setenv("LABKIT_BACKEND", "torch")


def make_layer(d=12, r=6, seed=0, **kwargs):
    torch.manual_seed(seed)
    return AdaptiveRankSemiseparableLayer(d, r, **kwargs).double()


def reference_forward(layer, x, gates):
    """The definition, written out with a Python loop over time and over channels."""
    B, L, d = x.shape
    u = x @ layer.u_proj.weight.T
    v = x @ layer.v_proj.weight.T
    a = torch.sigmoid(x @ layer.decay_proj.weight.T + layer.decay_proj.bias)
    h = torch.zeros(B, layer.max_rank, dtype=x.dtype)
    mixed = torch.zeros(B, L, layer.max_rank, dtype=x.dtype)
    for t in range(L):
        h = a[:, t] * h + (1 - a[:, t]) * u[:, t]
        mixed[:, t] = gates * v[:, t] * h
    k = layer.conv_kernel
    w = layer.conv.weight[:, 0]  # (d, k): tap j multiplies x[t - (k - 1) + j]
    padded = F.pad(x, (0, 0, k - 1, 0))
    local = sum(padded[:, j:j + L] * w[:, j] for j in range(k)) + layer.conv.bias
    return local + mixed @ layer.out_proj.weight.T


def test_forward_matches_the_definition():
    layer = make_layer().eval()
    x = torch.randn(3, 17, 12, dtype=torch.float64)
    assert torch.allclose(layer(x), reference_forward(layer, x, torch.sigmoid(layer.gate_logits)), atol=1e-12)


def test_output_shape_and_input_check():
    layer = make_layer()
    assert layer(torch.randn(2, 5, 12, dtype=torch.float64)).shape == (2, 5, 12)
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(2, 5, 11, dtype=torch.float64))


def test_decays_start_between_0_9_and_0_99():
    layer = make_layer(r=16)
    decays = torch.sigmoid(layer.decay_proj.bias.detach())
    assert decays.min().item() == pytest.approx(0.9) and decays.max().item() == pytest.approx(0.99)
    a = torch.sigmoid(layer.decay_proj(torch.randn(4, 50, 12, dtype=torch.float64)))
    assert (a > 0).all() and (a < 1).all() and 0.8 < a.min() and a.max() < 0.995


@pytest.mark.parametrize("mode", ["soft", "ste"])
def test_causal(mode):
    layer = make_layer().set_gate_mode(mode)
    x = torch.randn(2, 30, 12, dtype=torch.float64)
    later = x.clone()
    later[:, 13:] = torch.randn(2, 17, 12, dtype=torch.float64) * 10
    for training in (True, False):
        layer.train(training)
        assert torch.equal(layer(x)[:, :13], layer(later)[:, :13])
        assert not torch.allclose(layer(x)[:, 13:], layer(later)[:, 13:])


def test_state_stays_bounded_for_long_inputs():
    """|h_t| <= max |u| at every length: the state is a weighted average of past inputs."""
    layer = make_layer(d=8, r=4)
    with torch.no_grad():
        layer.decay_proj.bias.fill_(12.0)  # decays of 1 - 6e-6: the seed's cumsum regime
    x = 5 + torch.randn(1, 4096, 8, dtype=torch.float64)  # inputs with a mean: a cumsum grows linearly
    with torch.no_grad():
        h = layer.states(x)
        u = layer.u_proj(x)
    assert torch.isfinite(h).all()
    assert (h.abs().amax(dim=1) <= u.abs().amax(dim=1) + 1e-9).all()
    assert u.cumsum(dim=1).abs().max() > 1000 * u.abs().max()  # what an undecayed state would do


@pytest.mark.parametrize("mode", GATE_MODES)
def test_gradients_reach_the_gate_logits_in_every_mode(mode):
    layer = make_layer().set_gate_mode(mode, gumbel_temperature=0.5).train()
    x = torch.randn(4, 10, 12, dtype=torch.float64)
    torch.manual_seed(1)
    layer(x).square().mean().backward()
    grad = layer.gate_logits.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


def test_hard_modes_give_exact_zeros_and_ones():
    logits = torch.linspace(-3, 3, 13, requires_grad=True)
    for mode in ("ste", "gumbel"):
        g = binary_gate(logits, mode, 0.7, training=True)
        assert set(g.detach().unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(binary_gate(logits, mode, training=False), (logits > 0).float())


def test_ste_backward_is_the_sigmoid_gradient():
    logits = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    binary_gate(logits, "ste").sum().backward()
    s = torch.sigmoid(logits.detach())
    assert torch.allclose(logits.grad, s * (1 - s))


def test_gumbel_gate_is_unbiased():
    """P(gate = 1) = sigmoid(logit); n = 200,000 draws give a standard error <= 0.5 / sqrt(n) = 0.0011,
    and we allow 5 of them (a false failure has probability < 1e-6 per logit)."""
    n = 200_000
    logits = torch.tensor([0.0, -2.0, 1.0, 3.0])
    samples = gate_samples(logits, "gumbel", temperature=0.5, n=n, generator=torch.Generator().manual_seed(0))
    p = torch.sigmoid(logits)
    tolerance = 5 * torch.sqrt(p * (1 - p) / n)
    assert ((samples.mean(0) - p).abs() <= tolerance).all(), (samples.mean(0), p)
    assert abs(samples[:, 0].mean().item() - 0.5) < 5 * 0.5 / math.sqrt(n)  # the p = 0.5 case, spelt out


def test_the_seeds_gumbel_gate_is_biased():
    """One Gumbel sample instead of a logistic: at p = 0.5 the gate is on 1 - 1/e = 63.2% of the time."""
    n = 200_000
    relaxed = seed_gumbel_gate(torch.tensor([0.0]), 1.0, n, generator=torch.Generator().manual_seed(0))
    on = (relaxed > 0.5).double().mean().item()
    assert abs(on - (1 - math.exp(-1))) < 5 * math.sqrt(0.25 / n)
    assert on - 0.5 > 0.1


def test_logistic_noise_has_the_logistic_distribution():
    noise = logistic_noise((200_000,), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(noise).all()
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.var().item() - math.pi ** 2 / 3) < 0.05  # variance of the standard logistic


def test_gumbel_training_gates_are_drawn_per_sequence():
    layer = make_layer(r=64).set_gate_mode("gumbel").train()
    with torch.no_grad():
        layer.gate_logits.zero_()
    torch.manual_seed(0)
    gates = layer.gates(batch=3)
    assert gates.shape == (3, 1, 64)
    assert not torch.equal(gates[0], gates[1])


@pytest.mark.parametrize("mode", ["ste", "gumbel"])
def test_eval_pruning_equals_the_masked_full_computation(mode):
    layer = make_layer(r=8).set_gate_mode(mode)
    with torch.no_grad():
        layer.gate_logits.copy_(torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, -0.1, 4.0, -2.0]))
    layer.eval()
    assert layer.active_ranks().tolist() == [0, 2, 4, 6]
    x = torch.randn(2, 19, 12, dtype=torch.float64)
    pruned = layer(x)
    assert torch.allclose(pruned, layer(x, prune=False), atol=1e-12)
    mask = (layer.gate_logits > 0).double()
    assert torch.allclose(pruned, reference_forward(layer, x, mask), atol=1e-12)


def test_pruning_computes_fewer_flops_and_reads_fewer_parameters():
    layer = make_layer(d=32, r=16).set_gate_mode("ste").eval()
    with torch.no_grad():
        layer.gate_logits[4:] = -1.0  # 4 of 16 channels on
    x = torch.randn(2, 20, 32, dtype=torch.float64)

    def flops(**kwargs):
        with FlopCounterMode(display=False) as counter:
            layer(x, **kwargs)
        return counter.get_total_flops()

    full, pruned = flops(prune=False), flops()
    conv = 2 * 2 * 20 * 32 * 3
    # Four projections of B * L * d * k multiply-adds each (U, V, A in; W_o out).
    assert full - conv == 4 * 2 * (2 * 20 * 32 * 16)
    assert pruned - conv == 4 * 2 * (2 * 20 * 32 * 4)
    assert layer.num_active_parameters() == 32 * 3 + 32 + 4 * (4 * 32 + 1)
    layer.set_gate_mode("soft")
    assert layer.num_active_parameters() == 32 * 3 + 32 + 16 * (4 * 32 + 1)


def test_all_channels_off_leaves_the_convolution():
    layer = make_layer().set_gate_mode("ste").eval()
    with torch.no_grad():
        layer.gate_logits.fill_(-1.0)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    assert layer.active_ranks().numel() == 0
    assert torch.allclose(layer(x), layer._local(x)) and torch.allclose(layer(x), layer(x, prune=False))


def test_pruning_needs_hard_gates_and_eval_mode():
    layer = make_layer()
    x = torch.randn(1, 4, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="hard gates"):
        layer.eval()(x, prune=True)
    with pytest.raises(ValueError, match="evaluation"):
        layer.set_gate_mode("ste").train()(x, prune=True)


def test_set_gate_mode_validates_and_keeps_the_temperature():
    layer = make_layer()
    assert layer.set_gate_mode("gumbel", gumbel_temperature=0.3) is layer
    layer.set_gate_mode("ste")
    assert layer.gate_mode == "ste" and layer.gumbel_temperature == 0.3
    with pytest.raises(ValueError, match="gate mode"):
        layer.set_gate_mode("hard")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            layer.set_gate_mode("gumbel", gumbel_temperature=bad)
    assert layer.gate_mode == "ste"  # a rejected call changes nothing


def test_expected_rank_is_a_differentiable_penalty():
    layer = make_layer(r=5)
    penalty = layer.expected_rank()
    assert penalty.item() == pytest.approx(5 * torch.sigmoid(torch.tensor(3.0)).item())
    penalty.backward()
    assert (layer.gate_logits.grad > 0).all()


def test_reset_parameters_restores_the_initialisation():
    layer = make_layer()
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(float("nan"))
    layer.reset_parameters()
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    assert (layer.gate_logits == 3.0).all()


def test_float32_and_bfloat16_inputs():
    torch.manual_seed(0)
    layer = AdaptiveRankSemiseparableLayer(16, 4)
    x = torch.randn(2, 9, 16)
    y = layer(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = layer(x)
    assert torch.allclose(yb.float(), y, atol=0.1)
