"""Phase-1 presets: the seed's names, aliases and values, immutability, and the model each one builds.

The models are built here at a reduced size (CI has no GPU); the chapter measures the full-size
ones on a GPU with ``measure_preset_memory``.
"""
import dataclasses
import io

import pytest
import torch

from labkit.htt.presets import (ALIASES, PRESETS, Phase1Config, build_model, count_parameters, get_preset,
                                list_presets, measure_preset_memory, preset_table, print_preset_comparison)

NAMES = ("8gb", "10gb", "24gb", "inference", "max_quality", "max_efficiency")
SEED_TABLE = {  # (ar_ssm_max_rank, htt_rank, lns_enabled, target_vram_gb, use_gradient_checkpointing)
    "8gb": (16, 8, False, 8, True), "10gb": (32, 16, False, 10, True), "24gb": (64, 32, False, 24, False),
    "inference": (32, 16, True, 8, False), "max_quality": (128, 64, False, 40, False),
    "max_efficiency": (16, 8, False, 6, True),
}


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    monkeypatch.setenv("LABKIT_BACKEND", "torch")  # the scan's PyTorch path: fast on CPU


def small(config: Phase1Config, **changes) -> Phase1Config:
    values = dict(vocab_size=500, d_model=32, n_layers=2, seq_len=16, batch_size=2, loss_chunk_tokens=8)
    values.update(changes)
    return config.replace(**values)


def test_the_seeds_presets_and_values():
    assert tuple(PRESETS) == NAMES and tuple(list_presets()) == NAMES
    for name, (ar_rank, htt_rank, lns, vram, ckpt) in SEED_TABLE.items():
        c = get_preset(name)
        assert (c.ar_ssm_max_rank, c.htt_rank, c.lns_enabled, c.target_vram_gb, c.use_gradient_checkpointing) == (
            ar_rank, htt_rank, lns, vram, ckpt)
        assert c.name == name and c.purpose == ("inference" if name == "inference" else "train")


@pytest.mark.parametrize("alias, name", [("memory_oriented", "8gb"), ("balanced", "10gb"),
                                         ("speed_oriented", "24gb"), ("quality", "max_quality"),
                                         ("efficiency", "max_efficiency"), ("8GB", "8gb"),
                                         ("Max-Quality", "max_quality"), (" Inference ", "inference"),
                                         ("SPEED_ORIENTED", "24gb")])
def test_aliases_and_spellings_resolve(alias, name):
    assert get_preset(alias) is get_preset(name)


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        get_preset("16gb")
    message = str(error.value)
    assert "16gb" in message
    for valid in (*NAMES, *ALIASES):
        assert valid in message
    with pytest.raises(TypeError):
        get_preset(8)


def test_presets_are_immutable():
    preset = get_preset("8gb")
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.stability_threshold = 1e3
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.grad_clip = 1.0
    with pytest.raises(TypeError):
        PRESETS["8gb"] = preset.replace(d_model=8)
    with pytest.raises(TypeError):
        ALIASES["fast"] = "24gb"
    variant = preset.replace(d_model=64)
    assert variant.d_model == 64 and get_preset("8gb").d_model == 1024 and variant is not preset


def test_replace_validates():
    with pytest.raises(ValueError, match="d_model"):
        get_preset("8gb").replace(d_model=0)
    with pytest.raises(ValueError, match="purpose"):
        get_preset("8gb").replace(purpose="serve")
    with pytest.raises(ValueError, match="gate_mode"):
        get_preset("8gb").replace(gate_mode="hard")


def test_a_recovery_changes_its_copy_not_the_registry():
    from labkit.htt.recovery import Phase1ErrorRecovery

    model = torch.nn.Linear(2, 2)
    recovery = Phase1ErrorRecovery(model, torch.optim.SGD(model.parameters(), lr=0.1), config=get_preset("balanced"))
    for _ in range(3):  # lr, threshold x10, clipping on
        recovery.step_failed("test")
    assert recovery.config.stability_threshold == 1000.0 and recovery.config.grad_clip == 1.0
    assert get_preset("10gb").stability_threshold == 100.0 and get_preset("10gb").grad_clip is None


def test_comparison_table(capsys):
    print_preset_comparison()
    out = capsys.readouterr().out
    for name in (*NAMES, *ALIASES):
        assert name in out
    assert "not used" in out  # the inference preset's LNS flag is recorded, not implemented
    buffer = io.StringIO()
    print_preset_comparison(measured={"8gb": 3.25}, file=buffer)
    assert "peak GiB" in buffer.getvalue() and "3.25" in buffer.getvalue()
    rows = preset_table()
    assert [r["preset"] for r in rows] == list(NAMES)
    assert rows[0]["params_m"] == pytest.approx(count_parameters(get_preset("8gb")) / 1e6)


@pytest.mark.parametrize("name", NAMES)
def test_build_model_at_a_reduced_size(name):
    config = small(get_preset(name))
    torch.manual_seed(0)
    model = build_model(config, embedding_backend="torch")
    assert model.num_parameters() == count_parameters(config)
    assert model.blocks[0].mixer.max_rank == config.ar_ssm_max_rank and model.embedding.rank == config.htt_rank
    ids = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len + 1))
    logits = model(ids[:, :-1])
    assert logits.shape == (config.batch_size, config.seq_len, config.vocab_size)
    loss = model.loss(ids[:, :-1], ids[:, 1:])
    assert torch.isfinite(loss) and 4 < loss.item() < 9  # ~ln(500) = 6.2 at initialisation
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_build_model_by_name_uses_the_preset():
    model = build_model(small(get_preset("max_efficiency")))
    assert model.config.name == "max_efficiency"
    # Full-size counts, computed without building: the head (50,257 x d) is a large share.
    assert 40e6 < count_parameters(get_preset("max_efficiency")) < count_parameters(get_preset("max_quality"))


def test_checkpointing_and_the_chunked_loss_change_nothing_but_memory():
    config = small(get_preset("8gb"), loss_chunk_tokens=5)  # 32 tokens: chunks of 5, the last one short
    torch.manual_seed(0)
    plain = build_model(config.replace(use_gradient_checkpointing=False), embedding_backend="torch").double()
    checkpointed = build_model(config, embedding_backend="torch").double()
    checkpointed.load_state_dict(plain.state_dict())
    ids = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len + 1))
    losses = []
    for model in (plain, checkpointed):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-12)
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


@pytest.mark.parametrize("name", ["8gb", "inference"])
def test_measure_preset_memory_runs_on_cpu(name):
    config = small(get_preset(name))
    report = measure_preset_memory(config, "cpu", embedding_backend="torch")
    assert report["name"] == name and report["purpose"] == config.purpose
    assert report["params"] == count_parameters(config) and report["tokens"] == 32
    assert report["peak_allocated_gib"] is None and report["fits"] is None and report["seconds"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_measure_preset_memory_on_the_gpu():
    report = measure_preset_memory(small(get_preset("8gb"), d_model=64, seq_len=64, batch_size=4), "cuda")
    assert 0 < report["peak_allocated_gib"] <= report["peak_reserved_gib"] and report["fits"]
