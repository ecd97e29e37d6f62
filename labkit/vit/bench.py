"""Benchmark suite ``vit``: a full ViT training step with an MLP or a ChebyKAN feed-forward.

``python -m labkit.bench vit`` measures, at batch 64, 224 x 224 images, bf16 autocast and a full
AdamW step (forward, cross-entropy, backward, optimizer):

* labkit's ViT-B/16 with the MLP feed-forward (attention through SDPA);
* the same with the seed's explicit softmax attention (``attn_impl="explicit"``): the seed's formulation;
* labkit's ViT-B/16 with the ChebyKAN feed-forward (degree 3; Triton kernels on the GPU);
* timm's ``vit_base_patch16_224`` when timm imports (else a row saying why it is skipped).

Each timed row has the median step time (all models resident and timed in turns, round by round,
so that clock and allocator drift falls on all of them alike), the step's time and peak memory
with the model alone on the device, the parameters and the
forward GFLOPs per image (``FlopCounterMode``, 2 FLOPs per multiply-add). Then the seed's table
models (B/16, B/32, L/16, L/32, H/14, each with the MLP and the ChebyKAN ffn) are counted on the
meta device (true parameters against the seed's rule, :func:`seed_parameter_count`, and forward
FLOPs per image) and, on a GPU, each trained for a few steps alone at the same batch: step time and
peak memory, or the reason it did not fit. ``quick`` (or no GPU) uses tiny models at 32 x 32 on the CPU.
"""
from __future__ import annotations

import statistics

import torch

from labkit.bench.harness import time_fn
from labkit.vit.accounting import (count_flops, count_parameters, make_train_step, peak_memory_and_throughput,
                                   seed_parameter_count)
from labkit.vit.model import create_model
from labkit.vit.seed_report import SEED_MODELS, recount


def _timed_variants(quick: bool) -> dict:
    """name -> (builder, ffn) of the models whose training step is timed."""
    if quick:
        base = dict(img_size=32, patch_size=4, in_c=3, embed_dim=64, depth=2, num_heads=2, num_classes=10)
        make = lambda **kw: create_model("vit_tiny_patch4_32", **{**base, **kw})  # noqa: E731
    else:
        make = lambda **kw: create_model("vit_base_patch16_224", **kw)  # noqa: E731
    return {
        "labkit ViT (MLP, SDPA)": (lambda: make(), "mlp"),
        "seed formulation (MLP, explicit softmax attention)": (lambda: make(attn_impl="explicit"), "mlp"),
        "labkit ViT (ChebyKAN degree 3)": (lambda: make(ffn="chebykan", ffn_kwargs=dict(degree=3)), "chebykan"),
    }


def _timm_model(quick: bool):
    try:
        import timm
    except Exception as error:  # noqa: BLE001 - any import failure means "skip"
        return None, f"timm does not import ({type(error).__name__}: {error})"
    if quick:
        return timm.create_model("vit_base_patch16_224", img_size=32, patch_size=4, embed_dim=64, depth=2,
                                 num_heads=2, num_classes=10), None
    return timm.create_model("vit_base_patch16_224"), None


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    quick = quick or not on_gpu
    batch = 8 if quick else 64
    steps, warmup = (3, 1) if quick else (20, 5)
    rounds, steps_per_round = (2, 2) if quick else (6, 8)
    table_steps = 10  # the seed-table models, up to ViT-H/14 (0.5 s a step): fewer steps
    timm_model, why = _timm_model(quick)
    builders = {name: (build, ffn) for name, (build, ffn) in _timed_variants(quick).items()}
    if timm_model is not None:
        builders["timm vit_base_patch16_224"] = (lambda: timm_model, "mlp")

    # Pass 1, one model at a time: FLOPs, parameters, the step's peak memory and its time alone.
    rows = []
    for name, (build, ffn) in builders.items():
        torch.manual_seed(0)
        model = build().to(device)
        shape = (1, 3, *model.patch_embed.img_size)
        flops = count_flops(model, shape)["per_image"] if not name.startswith("timm") else \
            _timm_flops(model, shape)
        params = count_parameters(model)
        alone = peak_memory_and_throughput(model, batch, device, steps=steps, warmup=warmup)
        rows.append({"name": name, "case": "train step", "ffn": ffn, "batch": batch, "img_size": shape[-1],
                     "amp": "bf16" if on_gpu else "none", "alone_ms": alone["median_ms"],
                     "peak_mib": alone["peak_mib"], "peak_gib": alone["peak_gib"], "params": params["total"],
                     "seed_rule_params": seed_parameter_count(model)["total"], "gflops_per_image": flops / 1e9})
        del model
        if on_gpu:
            torch.cuda.empty_cache()
    if timm_model is None:
        rows.append({"name": "timm vit_base_patch16_224", "case": "train step", "skipped": why})

    # Pass 2, the times compared: all models resident, timed in turns. A 30 ms step drifts by 10-15%
    # between passes a minute apart (clocks, allocator state), so models timed one after the other
    # swapped places between two runs on one H100; in turns, each sees the same conditions.
    per_round = _time_in_turns(builders, batch, device, warmup, rounds, steps_per_round)
    for row in rows:
        if per_round is None and "alone_ms" in row:  # they did not fit together: the times alone
            row.update(median_ms=row["alone_ms"], timed="alone (the models did not fit on the device together)")
        elif per_round is not None and row["name"] in per_round:
            times = per_round[row["name"]]
            row.update(median_ms=statistics.median(times), min_round_ms=min(times), max_round_ms=max(times),
                       round_ms=times, timed="in turns")
    mlp = next(r for r in rows if r["name"] == "labkit ViT (MLP, SDPA)")
    for row in rows:
        if "median_ms" in row:
            row["images_per_s"] = batch / (row["median_ms"] / 1e3)
            row["x_labkit_mlp"] = row["median_ms"] / mlp["median_ms"]

    # The seed's table: every model counted on the meta device (no memory, no compute), and on the
    # GPU also built for real and timed (one full training step, the model alone on the device).
    for label in SEED_MODELS:
        for ffn in ("mlp", "chebykan"):
            if quick and label != "B/16":
                continue
            ours = recount(label, ffn, num_classes=5)  # the seed trained on tf_flowers' 5 classes
            row = {"name": f"ViT-{label} {ffn}", "case": "seed table", "model": ours["model"], "ffn": ffn,
                   "num_classes": 5, "params": ours["params"], "seed_rule_params": ours["seed_rule_params"],
                   "seed_rule_missed": ours["seed_rule_missed"], "gflops_per_image": ours["flops_per_image"] / 1e9}
            if on_gpu:
                row.update(_time_seed_model(ours["model"], ffn, batch, device, steps=table_steps, warmup=warmup))
            rows.append(row)
    config = {"batch": batch, "img_size": 32 if quick else 224, "steps": steps, "warmup": warmup,
              "rounds": rounds, "steps_per_round": steps_per_round, "table_steps": table_steps,
              "note": "train step = forward + cross-entropy + backward + AdamW (fused on CUDA), bf16 autocast on "
                      "CUDA; median_ms = median over rounds of each round's median step, the models timed in "
                      "turns (round_ms), or alone_ms where they did not fit together (see timed); alone_ms = "
                      "median of steps timed with one model at a time; peak_mib = CUDA allocator peak over the timed "
                      "steps (weights, grads, AdamW state, activations); gflops_per_image = forward FLOPs from "
                      "FlopCounterMode (2 per multiply-add, KAN layers on their PyTorch path for the count); "
                      "seed_rule_params = sum of sub-modules' weight/bias (the seed's table's rule); "
                      "seed-table rows are counted on the meta device with 5 classes (tf_flowers) and, on a GPU, "
                      "timed with the model alone (step_ms, step_peak_gib; step_skipped if it does not fit)"}
    return config, rows


def _time_in_turns(builders: dict, batch: int, device: torch.device, warmup: int, rounds: int,
                   steps_per_round: int) -> dict | None:
    """name -> each round's median step (ms), the models resident together; None if they do not fit."""
    steps_of = {}
    try:
        for name, (build, _) in builders.items():
            torch.manual_seed(0)
            steps_of[name] = make_train_step(build().to(device), batch, device)
            for _ in range(warmup):
                steps_of[name]()
        per_round = {name: [] for name in steps_of}
        for _ in range(rounds):
            for name, step in steps_of.items():
                per_round[name].append(time_fn(step, device, warmup=1, repeats=steps_per_round)["median_ms"])
        return per_round
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        steps_of.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _time_seed_model(factory: str, ffn: str, batch: int, device: torch.device, steps: int, warmup: int) -> dict:
    """step_ms, step_peak_gib and step_batch of one seed-table model's training step (or step_skipped)."""
    model = None
    try:
        torch.manual_seed(0)
        model = create_model(factory, ffn=ffn, num_classes=5).to(device)
        timing = peak_memory_and_throughput(model, batch, device, steps=steps, warmup=warmup)
        return {"step_ms": timing["median_ms"], "step_peak_gib": timing["peak_gib"], "step_batch": batch}
    except torch.cuda.OutOfMemoryError:
        return {"step_skipped": f"out of memory at batch {batch}", "step_batch": batch}
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _timm_flops(model, shape) -> float:
    try:
        return count_flops(model, shape)["per_image"]
    except Exception:  # noqa: BLE001 - a model the counter cannot trace: leave the cell empty
        return float("nan")
