"""Honest accounting of a model: parameters, FLOPs, peak memory and throughput.

* :func:`count_parameters` sums ``numel`` over ``model.parameters()``: every parameter, whatever
  its name. :func:`seed_parameter_count` reproduces the rule behind the seed's table (a per-module
  summary that adds up the attributes called ``weight`` and ``bias`` of the sub-modules), which
  misses the class token, the position embedding and every KAN coefficient (``cheby_coeffs``,
  ``base_weight``, ``spline_weight``, ``spline_scaler``): it makes a KAN ViT look *smaller* than
  the MLP ViT.
* :func:`count_flops` runs one forward pass under ``torch.utils.flop_counter.FlopCounterMode``,
  which counts matrix products (``mm``, ``bmm``, ``einsum`` lowered to them, convolutions,
  attention) at 2 FLOPs per multiply-add. The KAN layers are switched to their PyTorch path
  for the count, so their contractions are seen; elementwise work (the Chebyshev or B-spline
  bases, GELU, softmax, LayerNorm) is not counted, for either model.
* :func:`peak_memory_and_throughput` times a full training step (forward, backward, AdamW) with
  bf16 autocast on CUDA and reports the peak memory and images per second.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from labkit.bench.harness import time_fn

__all__ = ["count_parameters", "seed_parameter_count", "count_flops", "torch_backend",
           "peak_memory_and_throughput", "matched_mlp_ratio"]


def count_parameters(model: nn.Module) -> dict:
    """Parameters of ``model`` from the parameters themselves.

    Returns ``dict(total, trainable, frozen, by_module_type)``; ``by_module_type`` maps a module
    class name to the parameters its instances own directly (a module's own parameters, not its
    children's), so its values add up to ``total``. Shared parameters count once.
    """
    seen, by_type = set(), defaultdict(int)
    total = trainable = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            n = param.numel()
            by_type[type(module).__name__] += n
            total += n
            trainable += n if param.requires_grad else 0
    return dict(total=total, trainable=trainable, frozen=total - trainable, by_module_type=dict(by_type))


def matched_mlp_ratio(kind: str, dim: int, mlp_ratio: float = 4.0, ffn_kwargs: dict | None = None) -> float:
    """The ``mlp_ratio`` that gives an ``ffn=kind`` block as many feed-forward parameters as the MLP's.

    A KAN edge carries several parameters (ChebyKAN: ``degree + 1`` coefficients; B-spline KAN:
    ``grid_size + spline_order`` coefficients, a base weight and a scaler), so at the MLP's hidden
    width ``dim * mlp_ratio`` it is several times larger. Every kind's count is linear in the hidden
    width ``h``, so two small builds (``h = 1, 2``) give it, and we solve for the
    ``h`` nearest the MLP's count. The returned ratio gives exactly that ``h`` in
    ``Block``'s ``int(dim * mlp_ratio)``.
    """
    from labkit.vit.model import make_ffn

    def count(k: str, hidden: int, kwargs: dict) -> int:
        return count_parameters(make_ffn(k, dim, hidden, **kwargs))["total"]

    target = count("mlp", int(dim * mlp_ratio), {})
    kwargs = dict(ffn_kwargs or {})
    one, two = count(kind, 1, kwargs), count(kind, 2, kwargs)
    hidden = max(1, round((target - (2 * one - two)) / (two - one)))
    return (hidden + 0.5) / dim


def seed_parameter_count(model: nn.Module) -> dict:
    """The seed's (flawed) count: ``weight`` and ``bias`` attributes of every sub-module, nothing else.

    That is what a hook-based per-layer summary adds up: it visits each module below the root and
    reads ``module.weight`` and ``module.bias``. Parameters with other names (the root's
    ``cls_token``/``pos_embed``, a ChebyKAN layer's ``cheby_coeffs``, a KANLinear's
    ``base_weight``/``spline_weight``/``spline_scaler``) are never seen. Returns
    ``dict(total, trainable, frozen, missed)`` with ``missed`` = the true total minus this total.
    """
    total = trainable = 0
    for module in model.modules():
        if module is model:
            continue
        for name in ("weight", "bias"):
            param = module._parameters.get(name)
            if param is not None:
                total += param.numel()
                trainable += param.numel() if param.requires_grad else 0
    return dict(total=total, trainable=trainable, frozen=total - trainable,
                missed=count_parameters(model)["total"] - total)


@contextlib.contextmanager
def torch_backend(model: nn.Module):
    """Run every KAN layer of ``model`` on its PyTorch path inside the block (restored after).

    Triton kernels are opaque to ``FlopCounterMode``; the PyTorch path computes the same function
    with einsums that it counts.
    """
    saved = [(m, m.backend) for m in model.modules() if hasattr(m, "backend")]
    try:
        for module, _ in saved:
            module.backend = "torch"
        yield model
    finally:
        for module, backend in saved:
            module.backend = backend


def count_flops(model: nn.Module, input_shape: tuple[int, ...], device=None) -> dict:
    """FLOPs of one forward pass of ``model`` on an input of ``input_shape`` (B, C, H, W).

    Runs under ``FlopCounterMode`` (2 FLOPs per multiply-add) with the KAN layers on their PyTorch
    path. ``device`` defaults to the model's; a model built on the meta device (``with
    torch.device("meta"): model = ...``) is counted without memory or compute, which makes the
    ViT-H/14 ChebyKAN cheap to count. Returns ``dict(total, per_image, by_operator)`` with
    ``by_operator`` the totals per aten operator (e.g. ``aten.mm``, ``aten.bmm``).
    """
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(input_shape, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch_backend(model), torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    total = int(counter.get_total_flops())
    return dict(total=total, per_image=total / input_shape[0], by_operator=by_op)


def make_train_step(model: nn.Module, batch: int, device, amp: bool | None = None, lr: float = 1e-4):
    """A closure running one full training step (forward, cross-entropy, backward, AdamW) of ``model``.

    Random images of the model's input size and random labels (fixed across calls); bf16 autocast
    when ``amp`` (default: on CUDA). The model trains in place on ``device``, where it must already be.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    amp = cuda if amp is None else amp
    embed = model.patch_embed
    g = torch.Generator().manual_seed(0)
    # proj.in_channels: labkit's PatchEmbed and timm's both have it (timm's has no in_c)
    x = torch.randn(batch, embed.proj.in_channels, *embed.img_size, generator=g).to(device)
    y = torch.randint(0, max(model.num_classes, 1), (batch,), generator=g).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True if cuda else None)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            if isinstance(out, tuple):
                out = (out[0] + out[1]) / 2
            loss = nn.functional.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def peak_memory_and_throughput(model: nn.Module, batch: int, device, steps: int = 10, warmup: int = 3,
                               amp: bool | None = None, lr: float = 1e-4) -> dict:
    """Time ``steps`` full training steps (:func:`make_train_step`) at ``batch`` images.

    The model is trained in place (its weights change). Returns ``dict(median_ms, p20_ms, p80_ms,
    images_per_s, peak_mib, peak_gib)``: the peak is the CUDA allocator's peak over the timed steps
    (weights, gradients, optimizer state and activations all included); None on the CPU.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    step = make_train_step(model, batch, device, amp, lr)
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_fn(step, device, warmup=0, repeats=steps)  # warmed up above, before the peak reset
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    median = timing["median_ms"]
    return dict(median_ms=median, p20_ms=timing["p20_ms"], p80_ms=timing["p80_ms"],
                images_per_s=batch / (median / 1e3),
                peak_mib=peak, peak_gib=peak / 1024 if peak is not None else None)
