"""Phase1ErrorRecovery: the strategy ladder, copied checkpoints, rollback, re-initialisation, NaN injection."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from labkit.htt.arssm import AdaptiveRankSemiseparableLayer
from labkit.htt.presets import get_preset
from labkit.htt.recovery import (STRATEGIES, NumericalInstabilityError, Phase1ErrorRecovery, RecoveryConfig,
                                 clone_state, reinitialize)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 1))


def batch(step, size=64):
    g = torch.Generator().manual_seed(1000 + step)  # batch `step` is the same in every run
    x = torch.randn(size, 8, generator=g)
    return x, torch.sin(x[:, :1] * x[:, 1:2]) + x[:, 2:3]


def closure_for(model, x, y, scale=1.0):
    def closure():
        loss = F.mse_loss(model(x), y) * scale
        loss.backward()
        return loss
    return closure


def held_out_loss(model):
    x, y = batch(10**6, 512)
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


def train(steps=200, inject=None, **kwargs):
    """Train with Adam under recovery; ``inject=(step, module name)`` puts a NaN into that module's weight."""
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer, checkpoint_every=25, **kwargs)
    for step in range(steps):
        if inject is not None and step == inject[0]:
            with torch.no_grad():
                model.get_submodule(inject[1]).weight.view(-1)[0] = float("nan")
        recovery.guarded_step(closure_for(model, *batch(step)))
    return model, recovery


def strategies(log):
    return [(e["action"], e["applied"]) for e in log if e["action"] in STRATEGIES]


def all_finite(state):
    return all(torch.isfinite(t).all() for t in _tensors(state))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


@pytest.fixture(scope="module")
def uninterrupted():
    model, recovery = train()
    assert not strategies(recovery.log)
    return held_out_loss(model)


def test_nan_in_a_weight_mid_training_is_repaired_by_rollback(uninterrupted):
    model, recovery = train(inject=(120, "0"))
    # Strategies 1-3 cannot repair a NaN weight; each is tried once, then the rollback works.
    assert strategies(recovery.log) == [("reduce_lr", True), ("raise_threshold", True), ("enable_clipping", True),
                                        ("rollback", True)]
    assert all(e["step"] == 120 for e in recovery.log if e["action"] in STRATEGIES)
    assert len(recovery.history) == 200 and all(row["ok"] for row in recovery.history)  # no batch skipped
    faulty = recovery.history[120]
    assert faulty["actions"] == list(STRATEGIES[:4]) and len(faulty["attempt_losses"]) == 5
    assert all(l != l for l in faulty["attempt_losses"][:4]) and faulty["loss"] == faulty["attempt_losses"][4]
    final = held_out_loss(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # Lost: 20 steps of progress (rolled back to step 100) and half the learning rate from then on.
    assert abs(final - uninterrupted) < 0.25 * uninterrupted, (final, uninterrupted)
    assert all_finite(recovery.checkpoint) and recovery.checkpoint["step"] >= 175
    assert recovery.lr_scale == 0.5 and recovery.config.grad_clip == 1.0


def test_without_rollback_the_unstable_layer_is_reinitialised(uninterrupted):
    model, recovery = train(inject=(120, "1"), enable_rollback=False)  # NaN in the LayerNorm's weight
    assert strategies(recovery.log) == [("reduce_lr", True), ("raise_threshold", True), ("enable_clipping", True),
                                        ("rollback", False), ("reinit_unstable", True)]
    assert recovery.reinitialized == ["1"]
    assert all(row["ok"] for row in recovery.history) and len(recovery.history) == 200
    final = held_out_loss(model)
    assert abs(final - uninterrupted) < 0.5 * uninterrupted, (final, uninterrupted)


def test_reinitialised_norm_layers_get_weight_one_and_lose_their_optimizer_state():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer, enable_rollback=False)
    for step in range(3):
        recovery.guarded_step(closure_for(model, *batch(step)))
    with torch.no_grad():
        model[1].weight[3] = float("nan")
        model[1].bias[5] = float("inf")
    assert recovery.find_unstable_layers() == ["1"]
    recovery.reinit_layers(["1"])
    assert torch.equal(model[1].weight, torch.ones(32)) and torch.equal(model[1].bias, torch.zeros(32))
    assert model[1].weight not in optimizer.state and model[0].weight in optimizer.state


def test_reinitialize_uses_the_modules_own_initialisation():
    norm = nn.LayerNorm(4)
    custom = nn.Module()
    custom.w = nn.Parameter(torch.full((3, 3), float("nan")))
    custom.b = nn.Parameter(torch.full((3,), float("nan")))
    layer = AdaptiveRankSemiseparableLayer(8, 4)
    for module in (norm, custom, layer):
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(float("nan"))
        reinitialize(module)
        assert all(torch.isfinite(p).all() for p in module.parameters())
    assert torch.equal(norm.weight, torch.ones(4)) and torch.equal(custom.b, torch.zeros(3))
    assert (layer.gate_logits == layer.gate_init).all()  # the AR-SSM's own reset_parameters


def test_checkpoints_are_copies_not_references():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer, checkpoint_device=None)  # same device: aliasing possible
    for step in range(5):
        recovery.guarded_step(closure_for(model, *batch(step)))
    # What the seed saved: Optimizer.state_dict() hands out the live moment tensors.
    live = optimizer.state_dict()["state"][0]["exp_avg"]
    assert live.data_ptr() == optimizer.state[model[0].weight]["exp_avg"].data_ptr()

    assert recovery.save_checkpoint()
    frozen = clone_state(recovery.checkpoint)
    for step in range(5, 10):
        recovery.guarded_step(closure_for(model, *batch(step)))
    assert not torch.equal(model[0].weight, recovery.checkpoint["model"]["0.weight"])  # training moved on
    for a, b in zip(_tensors(recovery.checkpoint), _tensors(frozen)):
        assert torch.equal(a, b)

    recovery.rollback()  # restore, then train again: the checkpoint must still not move
    assert torch.equal(model[0].weight, frozen["model"]["0.weight"])
    assert torch.equal(optimizer.state[model[0].weight]["exp_avg"], frozen["optimizer"]["state"][0]["exp_avg"])
    for step in range(10, 13):
        recovery.guarded_step(closure_for(model, *batch(step)))
    for a, b in zip(_tensors(recovery.checkpoint), _tensors(frozen)):
        assert torch.equal(a, b)


def test_rollback_keeps_the_lowered_learning_rate():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer)
    recovery.guarded_step(closure_for(model, *batch(0)))
    recovery.step_failed("test")  # strategy 1
    recovery.rollback()
    assert optimizer.param_groups[0]["lr"] == 5e-3


def test_a_non_finite_state_is_never_checkpointed():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer)
    good = clone_state(recovery.checkpoint)
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    assert not recovery.save_checkpoint()
    assert torch.equal(recovery.checkpoint["model"]["3.weight"], good["model"]["3.weight"])
    assert recovery.log[-1]["action"] == "checkpoint" and not recovery.log[-1]["applied"]


def test_checkpoint_on_disk_is_written_atomically_and_reloads(tmp_path):
    path = tmp_path / "ckpt" / "recovery.pt"
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer, checkpoint_every=2, checkpoint_path=path)
    for step in range(4):
        recovery.guarded_step(closure_for(model, *batch(step)))
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = Phase1ErrorRecovery.load_checkpoint(path)
    assert loaded["step"] == recovery.checkpoint["step"]
    for a, b in zip(_tensors(loaded), _tensors(recovery.checkpoint)):
        assert torch.equal(a, b)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    recovery.rollback(loaded)
    assert torch.equal(model[0].weight, loaded["model"]["0.weight"])


def test_a_gradient_spike_is_skipped_without_retry():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer)
    for step in range(15):
        assert recovery.guarded_step(closure_for(model, *batch(step)))["ok"]
    before = clone_state(model.state_dict())
    row = recovery.guarded_step(closure_for(model, *batch(15), scale=1e4), retry=False)
    assert not row["ok"] and row["actions"] == ["reduce_lr"]
    assert "spike" in recovery.log[-1]["reason"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])  # the spiky update was not applied
    assert recovery.guarded_step(closure_for(model, *batch(16)))["ok"] and recovery.level == 0
    assert optimizer.param_groups[0]["lr"] == 5e-3


def test_raising_the_threshold_lets_a_moderate_spike_through():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer)
    for step in range(15):
        recovery.guarded_step(closure_for(model, *batch(step)))
    optimizer.zero_grad(set_to_none=True)
    plain = recovery.check(closure_for(model, *batch(15))()).grad_norm  # what batch 15's gradient norm is
    scale = 300 * recovery.grad_norm_avg / plain  # 300x the average: over the threshold 100, under 1000
    row = recovery.guarded_step(closure_for(model, *batch(15), scale=scale))
    assert row["ok"] and row["actions"] == ["reduce_lr", "raise_threshold"]
    assert recovery.config.stability_threshold == 1000.0


def test_the_ladder_ends_in_an_error_when_nothing_helps():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recovery = Phase1ErrorRecovery(model, optimizer)
    x, y = batch(0)
    x[0, 0] = float("nan")  # bad data: no strategy can fix it, and no layer is to blame
    with pytest.raises(NumericalInstabilityError) as error:
        recovery.guarded_step(closure_for(model, x, y))
    assert strategies(error.value.log) == [("reduce_lr", True), ("raise_threshold", True), ("enable_clipping", True),
                                           ("rollback", True), ("reinit_unstable", False)]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN update was applied


def test_the_origin_of_an_overflow_is_found_from_the_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        model[2].weight.fill_(3e38)  # finite, but its output overflows to inf
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recovery = Phase1ErrorRecovery(model, optimizer, enable_rollback=False)
    closure = closure_for(model, torch.randn(8, 4), torch.randn(8, 1))
    assert recovery.find_unstable_layers() == []
    assert recovery.find_unstable_layers(closure) == ["2"]


def test_the_recovery_changes_its_own_copy_of_the_config():
    preset = get_preset("8gb")
    model = make_model()
    recovery = Phase1ErrorRecovery(model, torch.optim.Adam(model.parameters()), config=preset)
    assert recovery.config.stability_threshold == preset.stability_threshold == 100.0
    recovery.step_failed("test")
    recovery.step_failed("test")
    recovery.step_failed("test")
    assert recovery.config.stability_threshold == 1000.0 and recovery.config.grad_clip == 1.0
    assert get_preset("8gb").stability_threshold == 100.0 and get_preset("8gb").grad_clip is None

    mine = RecoveryConfig(stability_threshold=7.0)
    other = Phase1ErrorRecovery(model, torch.optim.Adam(model.parameters()), config=mine)
    other.step_failed("test")
    other.step_failed("test")
    assert other.config.stability_threshold == 70.0 and mine.stability_threshold == 7.0


def test_the_scheduler_keeps_the_lowered_learning_rate():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    recovery = Phase1ErrorRecovery(model, optimizer, scheduler=scheduler)
    recovery.step_failed("test")
    recovery.guarded_step(closure_for(model, *batch(0)))
    scheduler.step()  # LambdaLR sets lr = base_lr * lambda: the base was lowered too
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
