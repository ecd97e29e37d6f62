"""Tests of the ViT training program ``labkit.vit.train`` (CPU, the offline MNIST subset, a tiny ViT)."""
import csv
import json

import pytest
import torch

from labkit.vit.train import TrainConfig, load_model, lr_factor, main, train

from torchrun_helper import run_two_processes

# 2 blocks of width 32 on 7 x 7 patches; 512 training images (16 steps of 32), the 1,000 test images.
TINY = dict(model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0), batch_size=32, limit=512,
            warmup_epochs=1.0, lr=1e-3)


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setenv("LABKIT_BACKEND", "torch")  # KAN layers on their PyTorch path (no Triton interpreter)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_config_validation_and_schedule():
    bad = [dict(epochs=0), dict(model="vit_nope"), dict(ffn="rbf"), dict(dataset="cifar"), dict(lr=0.0),
           dict(amp="fp16"), dict(warmup_epochs=50.0), dict(grad_clip=0.0), dict(limit=0), dict(seed=-1),
           dict(drop_last=1)]
    for kwargs in bad:
        with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
            TrainConfig(**kwargs)
    warm, total = 10, 110
    factors = [lr_factor(s, warm, total, 0.01) for s in range(total + 1)]
    assert factors[0] == 0.1 and factors[9] == 1.0 and abs(factors[60] - 0.505) < 1e-9
    assert abs(factors[-1] - 0.01) < 1e-12 and all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_loss_decreases_and_outputs(tmp_path):
    history = train(TrainConfig(epochs=4, **TINY), tmp_path, device="cpu", progress=False)
    losses = [row["train_loss"] for row in history]
    print("train", [f"{v:.3f}" for v in losses], "test acc", [f"{r['test_acc']:.3f}" for r in history])
    # a from-scratch ViT learns slowly at first (64 steps here): loss down, test accuracy above chance
    assert losses[-1] < losses[0] - 0.08 and history[-1]["test_acc"] > 0.15
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]
    assert [float(r["test_acc"]) for r in rows] == [h["test_acc"] for h in history]
    summary = json.loads((tmp_path / "history.json").read_text())
    assert summary["steps_per_epoch"] == 16 and summary["data"]["train"] == 512 and summary["parameters"] > 0
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp*"))
    model, config = load_model(tmp_path)
    assert config.amp == "none" and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("ffn, augment", [("mlp", "none"), ("chebykan", "none"), ("mlp", "affine")])
def test_resume_is_bitwise_identical(tmp_path, ffn, augment):
    # the augmentation draws from the global RNG, which the checkpoint restores
    config = TrainConfig(epochs=3, ffn=ffn, drop_path=0.1, augment=augment, **{**TINY, "limit": 256})
    whole = train(config, tmp_path / "whole", device="cpu", progress=False)
    assert len(train(config, tmp_path / "split", device="cpu", progress=False, stop_after=1)) == 1
    resumed = train(config, tmp_path / "split", device="cpu", progress=False)
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("whole", "split"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(whole) == strip(resumed)
    with pytest.raises(ValueError, match="another config: lr"):
        train(TrainConfig(epochs=3, ffn=ffn, drop_path=0.1, augment=augment, **{**TINY, "limit": 256, "lr": 2e-3}),
              tmp_path / "split", device="cpu", progress=False)


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    """A failure while saving leaves the previous checkpoint intact (the new one goes to a temporary file)."""
    config = TrainConfig(epochs=2, **{**TINY, "limit": 128})
    train(config, tmp_path, device="cpu", progress=False, stop_after=1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:
            real_save(obj, f, *args, **kwargs)
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(config, tmp_path, device="cpu", progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_command_line(tmp_path, capsys):
    args = ["--out", str(tmp_path / "run"), "--profile", "quick", "--epochs", "1", "--embed-dim", "32",
            "--depth", "1", "--num-heads", "2", "--limit", "256", "--ffn", "chebykan", "--degree", "2",
            "--device", "cpu", "--no-progress"]
    history = main(args)
    assert len(history) == 1 and "epoch 1/1: train loss" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["config"]["ffn_kwargs"] == {"degree": 2} and summary["config"]["model_kwargs"]["depth"] == 1


DDP_SCRIPT = """
    import sys, torch
    from labkit.vit.train import TrainConfig, train
    out = sys.argv[1]
    config = TrainConfig(epochs=2, batch_size=64, limit=256, lr=3e-3, warmup_epochs=1.0,
                         model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0))
    train(config, out + "/whole", device="cpu", progress=False)
    train(config, out + "/split", device="cpu", progress=False, stop_after=1)
    train(config, out + "/split", device="cpu", progress=False)
    torch.distributed.destroy_process_group()  # train() leaves the group open for further calls
"""


def test_data_parallel_two_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo): runs, rank 0 writes, resuming is exact there too."""
    run_two_processes(DDP_SCRIPT, tmp_path, str(tmp_path), env={"LABKIT_BACKEND": "torch"})
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("whole", "split"))
    assert a["world_size"] == 2 and len(a["rng"]) == 2 and a["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert a["history"][0]["test_acc"] >= 0  # evaluated over both processes' shares


def test_config_from_profile_matches_parameter_counts_and_keeps_the_recipe():
    from labkit.profile import profile
    from labkit.vit.accounting import count_parameters
    from labkit.vit.train import build_model, config_from_profile

    sizes = profile("quick").vit
    counts = {}
    for kind in ("mlp", "chebykan", "kan"):
        config = config_from_profile(sizes, ffn=kind, seed=3, match_params=True, epochs=2)
        assert (config.ffn, config.seed, config.epochs, config.augment) == (kind, 3, 2, sizes.augment)
        counts[kind] = count_parameters(build_model(config, 10))["total"]
    assert max(counts.values()) / min(counts.values()) < 1.01, counts
    plain = config_from_profile(sizes, ffn="chebykan")  # without matching: the MLP's hidden width
    assert count_parameters(build_model(plain, 10))["total"] > 1.5 * counts["mlp"]


@pytest.mark.parametrize("kind", ["shift", "affine"])
def test_augment_moves_digits_and_keeps_the_background(kind):
    from labkit.vit.train import _augment

    x = torch.full((64, 1, 28, 28), -0.42)  # MNIST's normalised background
    x[:, :, 10:18, 12:16] = 2.8             # a bright bar in the middle
    torch.manual_seed(0)
    y = _augment(x, kind)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(y[:, :, :2], torch.tensor(-0.42), atol=1e-5)  # the border stays background
    moved = (y - x).abs().flatten(1).amax(1) > 1e-3
    assert moved.float().mean() > 0.5                                   # most images did move
    bright = (y > 1.0).flatten(1).sum(1).float()
    assert bright.min() > 0.5 * 32 and bright.max() < 2.0 * 32          # the bar is moved, not lost or smeared out
    torch.manual_seed(0)
    assert torch.equal(_augment(x, kind), y)                            # the global RNG decides
    assert _augment(x, "none") is x


@pytest.mark.parametrize("drop_last, steps", [(True, 3), (False, 4)])
def test_drop_last_skips_the_smaller_batch(tmp_path, drop_last, steps):
    """100 images in batches of 32: three full batches, and a fourth of 4 unless it is dropped."""
    config = TrainConfig(epochs=1, drop_last=drop_last, **{**TINY, "limit": 100})
    train(config, tmp_path, device="cpu", progress=False)
    assert json.loads((tmp_path / "history.json").read_text())["steps_per_epoch"] == steps


def test_drop_last_needs_one_full_batch(tmp_path):
    with pytest.raises(ValueError, match="drop_last"):
        train(TrainConfig(epochs=1, **{**TINY, "limit": 20}), tmp_path, device="cpu", progress=False)
