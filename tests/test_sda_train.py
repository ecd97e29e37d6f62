"""Tests of the SDA training program ``labkit.sda.train`` (CPU, a tiny data set and a tiny U-Net)."""
import csv
import json
import math

import pytest
import torch

from labkit.sda.data import DatasetSpec, generate
from labkit.sda.nn import MCScoreNet
from labkit.sda.train import LearningRateFactor, TrainConfig, load_score, main, train

from torchrun_helper import run_two_processes

# 10 trajectories of 8 states at 16 x 16 (8 train, 1 valid, 1 test); two U-Net levels (16 -> 8).
TINY_DATA = dict(trajectories=10, size=16, factor=1, spinup=1, length=8)
TINY = dict(batch_size=4, hidden_channels=(8, 16), hidden_blocks=(1, 1), embedding=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("kolmogorov")
    generate(out, DatasetSpec(**TINY_DATA), batch=10, device="cpu", progress=False)
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead (and the CPU is shared)
    yield
    torch.set_num_threads(threads)


def test_config_validation():
    assert TrainConfig(hidden_channels=[8, 16], hidden_blocks=[1, 1]).hidden_channels == (8, 16)  # lists -> tuples
    bad = [dict(epochs=0), dict(batch_size=2.5), dict(window=4), dict(lr=-1.0), dict(weight_decay=float("nan")),
           dict(schedule="cosine"), dict(alpha="sqrt"), dict(eta=1.0), dict(hidden_channels=(8, 16)),
           dict(hidden_blocks=(1, -1, 1)), dict(amp="fp16"), dict(compile="yes"), dict(grad_clip=0.0),
           dict(seed=-1), dict(loss="x0"), dict(loss="v"), dict(ema=1.0), dict(ema=0)]
    for kwargs in bad:
        with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
            TrainConfig(**kwargs)


def test_validation_takes_windows_per_trajectory_windows(data, tmp_path, monkeypatch):
    # One window per validation trajectory left the curve's level to a handful of draws of t.
    import labkit.sda.train as training

    seen = []
    original = training._validate

    def spy(sde, model, x_all, *args):
        seen.append(x_all.clone())
        return original(sde, model, x_all, *args)

    monkeypatch.setattr(training, "_validate", spy)
    train(TrainConfig(epochs=2, windows_per_trajectory=3, **TINY), data, tmp_path, device="cpu", progress=False)
    assert [len(x) for x in seen] == [3, 3]  # 1 validation trajectory x 3 windows, every epoch
    assert torch.equal(seen[0], seen[1])  # the same windows every epoch


def test_learning_rate_schedule():
    linear = LearningRateFactor("linear", 100)
    assert [linear(s) for s in (0, 50, 100, 150)] == [1.0, 0.5, 0.0, 0.0]
    assert LearningRateFactor("constant", 100)(99) == 1.0


def test_loss_decreases(data, tmp_path):
    history = train(TrainConfig(epochs=8, lr=3e-3, **TINY), data, tmp_path, device="cpu", progress=False)
    train_loss = [row["train_loss"] for row in history]
    valid_loss = [row["valid_loss"] for row in history]
    print("train", [f"{v:.3f}" for v in train_loss], "\nvalid", [f"{v:.3f}" for v in valid_loss])
    assert valid_loss[-1] < 0.9 * valid_loss[0] and train_loss[-1] < train_loss[0]
    lrs = [row["lr"] for row in history]
    assert lrs[0] == 3e-3 and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))  # linear decay, per step


def test_resume_is_bitwise_identical(data, tmp_path):
    config = TrainConfig(epochs=4, **TINY)
    whole = train(config, data, tmp_path / "whole", device="cpu", progress=False)
    first = train(config, data, tmp_path / "split", device="cpu", progress=False, stop_after=2)
    assert len(first) == 2
    resumed = train(config, data, tmp_path / "split", device="cpu", progress=False)
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("whole", "split"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["rng"][0][k], b["rng"][0][k]) for k in ("torch", "windows"))  # random states too
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(whole) == strip(resumed)
    # a finished run resumed again does nothing
    assert strip(train(config, data, tmp_path / "split", device="cpu", progress=False)) == strip(whole)


def test_windows_per_trajectory_and_sparse_checkpoints(data, tmp_path):
    """k windows per trajectory make k times the steps; checkpoints every 3 epochs still resume exactly."""
    one = train(TrainConfig(epochs=1, **TINY), data, tmp_path / "one", device="cpu", progress=False)
    config = TrainConfig(epochs=4, windows_per_trajectory=3, checkpoint_every=3, **TINY)
    whole = train(config, data, tmp_path / "whole", device="cpu", progress=False)
    steps = lambda run: json.loads((tmp_path / run / "history.json").read_text())["steps_per_epoch"]
    assert steps("whole") == 3 * steps("one") and len(one) == 1
    assert torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["epoch"] == 4  # the last epoch
    # epoch 3 is a checkpoint epoch; an interruption after epoch 2 loses nothing either (stop_after saves)
    train(config, data, tmp_path / "split", device="cpu", progress=False, stop_after=2)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = train(config, data, tmp_path / "split", device="cpu", progress=False)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(resumed) == strip(whole)
    with open(tmp_path / "split" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_skip_option(data, tmp_path):
    """skip trains inside GaussianSkip; load_score hands back the wrapped trajectory network."""
    from labkit.sda.score import GaussianSkip

    history = train(TrainConfig(epochs=2, skip=True, **TINY), data, tmp_path, device="cpu", progress=False)
    assert all(math.isfinite(row["valid_loss"]) for row in history)
    score, config = load_score(tmp_path)
    assert config.skip and isinstance(score, GaussianSkip) and isinstance(score.net, MCScoreNet)
    with torch.no_grad():
        assert score(torch.randn(1, 7, 2, 16, 16), 1.0).shape == (1, 7, 2, 16, 16)


def test_skip_with_the_data_spectrum(data, tmp_path):
    """skip_spectrum: the skip gets the training states' power spectrum, kept in the checkpoint."""
    from labkit.sda.data import read_split
    from labkit.sda.score import GaussianSkip, power_spectrum

    with pytest.raises(ValueError, match="needs skip=True"):
        TrainConfig(skip_spectrum=True, **TINY)
    history = train(TrainConfig(epochs=1, skip=True, skip_spectrum=True, **TINY), data, tmp_path, device="cpu",
                    progress=False)
    assert math.isfinite(history[-1]["valid_loss"])
    score, config = load_score(tmp_path)
    assert config.skip_spectrum and isinstance(score, GaussianSkip)
    states, _ = read_split(data / "train.h5")
    torch.testing.assert_close(score.spectrum, power_spectrum(torch.as_tensor(states)))
    with torch.no_grad():
        assert torch.isfinite(score(torch.randn(1, 7, 2, 16, 16), 1.0)).all()
    with pytest.raises(ValueError, match="needs skip_spectrum=True"):
        TrainConfig(skip=True, skip_modes=True, **TINY)
    train(TrainConfig(epochs=1, skip=True, skip_spectrum=True, skip_modes=True, **TINY), data, tmp_path / "modes",
          device="cpu", progress=False)
    score, config = load_score(tmp_path / "modes")
    assert config.skip_modes and score.scale_modes


def test_v_loss_and_ema(data, tmp_path):
    """loss='v' with skip trains; the moving average is checkpointed, resumed exactly, and what load_score gives."""
    config = TrainConfig(epochs=3, skip=True, loss="v", ema=0.9, lr=3e-3, **TINY)
    whole = train(config, data, tmp_path / "whole", device="cpu", progress=False)
    assert all(math.isfinite(row["valid_loss"]) for row in whole)
    train(config, data, tmp_path / "split", device="cpu", progress=False, stop_after=1)
    train(config, data, tmp_path / "split", device="cpu", progress=False)
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("whole", "split"))
    assert a["ema"].keys() == b["ema"].keys() and all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    # the average is not the last weights, and it is what the sampler gets
    raw = {k.removeprefix("kernel."): v for k, v in a["model"].items() if k.startswith("kernel.")}
    assert any(not torch.equal(a["ema"][k], raw[k]) for k in a["ema"])
    score, loaded = load_score(tmp_path / "whole")
    assert loaded.ema == 0.9
    assert all(torch.equal(p, a["ema"][k]) for k, p in score.net.kernel.named_parameters())
    # without ema the checkpoint says so, and load_score gives the last weights
    train(TrainConfig(epochs=1, **TINY), data, tmp_path / "plain", device="cpu", progress=False)
    assert torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["ema"] is None


def test_resume_with_another_config_is_an_error(data, tmp_path):
    config = TrainConfig(epochs=2, **TINY)
    train(config, data, tmp_path, device="cpu", progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"another config: lr=0.0002 \(now 0.001\)"):
        train(TrainConfig(epochs=2, **{**TINY, "lr": 1e-3}), data, tmp_path, device="cpu", progress=False)
    # layout and compilation are not part of the recipe: they may change on resume
    history = train(TrainConfig(epochs=2, channels_last=True, **TINY), data, tmp_path, device="cpu", progress=False)
    assert [row["epoch"] for row in history] == [1, 2]
    # starting over is allowed
    history = train(TrainConfig(epochs=1, **TINY), data, tmp_path, device="cpu", progress=False, resume=False)
    assert len(history) == 1


def test_outputs(data, tmp_path):
    history = train(TrainConfig(epochs=2, amp="bf16", **TINY), data, tmp_path, device="cpu", progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["valid_loss"]) for r in rows] == [h["valid_loss"] for h in history]
    summary = json.loads((tmp_path / "history.json").read_text())
    assert summary["rows"] == history and summary["config"]["amp"] == "bf16"
    assert summary["config"]["hidden_channels"] == [8, 16] and summary["data"]["size"] == 16
    assert summary["steps_per_epoch"] == 2 and summary["world_size"] == 1 and summary["parameters"] > 0
    assert not list(tmp_path.glob("*.tmp"))
    score, config = load_score(tmp_path)
    assert isinstance(score, MCScoreNet) and config.amp == "bf16"
    with torch.no_grad():
        assert score(torch.randn(1, 7, 2, 16, 16), 0.5).shape == (1, 7, 2, 16, 16)  # a whole trajectory


def test_command_line(data, tmp_path, capsys):
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--profile", "quick", "--epochs", "2",
            "--batch-size", "4", "--hidden-channels", "8,16", "--hidden-blocks", "1,1", "--device", "cpu",
            "--no-progress"]
    history = main(args)
    assert len(history) == 2 and "epoch 2/2: train loss" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["config"]["hidden_blocks"] == [1, 1] and summary["config"]["epochs"] == 2
    config = summary["config"]  # the quick profile's recipe
    assert config["loss"] == "v" and config["skip_spectrum"] and config["ema"] is None
    main(args[:3] + [str(tmp_path / "run_v")] + args[4:] + ["--skip", "--loss", "v", "--ema", "0.9"])
    summary = json.loads((tmp_path / "run_v" / "history.json").read_text())
    assert summary["config"]["loss"] == "v" and summary["config"]["ema"] == 0.9
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run2"), "--profile", "quick"])
    assert f"python -m labkit.sda.generate --out {tmp_path / 'nothing'} --profile quick" in capsys.readouterr().err


DDP_SCRIPT = """
    import sys, torch
    from labkit.sda.train import TrainConfig, train
    data, out = sys.argv[1], sys.argv[2]
    config = TrainConfig(epochs=3, batch_size=4, hidden_channels=(8, 16), hidden_blocks=(1, 1), embedding=16)
    whole = train(config, data, out + "/whole", device="cpu", progress=False)
    train(config, data, out + "/split", device="cpu", progress=False, stop_after=1)
    train(config, data, out + "/split", device="cpu", progress=False)
    torch.distributed.destroy_process_group()  # train() leaves the group open for further calls
"""


def test_data_parallel_two_processes(data, tmp_path):
    """torchrun with 2 CPU processes (gloo): runs, rank 0 writes, and resuming is exact there too (~15 s)."""
    run_two_processes(DDP_SCRIPT, tmp_path, str(data), str(tmp_path))
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("whole", "split"))
    assert a["world_size"] == 2 and len(a["rng"]) == 2 and a["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_config_tag_changes_with_the_recipe_not_the_runtime():
    from labkit.sda.train import config_tag
    base = TrainConfig(epochs=2)
    assert config_tag(base) == config_tag(TrainConfig(epochs=2))
    assert config_tag(base) == config_tag(TrainConfig(epochs=2, channels_last=True, checkpoint_every=5))
    assert config_tag(base) != config_tag(TrainConfig(epochs=2, skip=True, loss="v"))
    assert len(config_tag(base)) == 8


def test_training_curve_names_the_loss():
    import matplotlib

    matplotlib.use("Agg")
    from labkit.sda.plots import training_curve

    history = [dict(epoch=1, train_loss=0.5, valid_loss=0.4), dict(epoch=2, train_loss=0.3, valid_loss=0.3)]
    assert training_curve(history, loss="v").axes[0].get_ylabel().startswith("v loss")
    with pytest.raises(ValueError, match="loss must be one of"):
        training_curve(history, loss="x0")
