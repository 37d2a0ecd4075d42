"""Devices and precision of the stages (docs/design.md §5.7): ``--device`` resolution, every
loader placing its model on the stage's device, bf16/fp16 autocast and fp16 loss scaling.

A CPU-only machine has one real device, so placement is checked on PyTorch's ``meta`` device:
a loader that forgets :func:`workbench.models.device.place` leaves its model on the CPU and the
test fails. (Batches follow their model at each forward; that path runs on CUDA in
``python -m workbench bench gpu``.)"""

from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from workbench.config import ConfigError, PPOConfig, RewardConfig, SFTConfig
from workbench.demo.config import DemoConfig
from workbench.models import device as dev
from workbench.models.device import DeviceError, on_device, resolve_device
from workbench.models.score import ScoreModel
from workbench.train.common import LossScaler, backward, optimizer_step, placement

META = torch.device("meta")


def _devices(model: torch.nn.Module) -> set[torch.device]:
    return {p.device for p in model.parameters()} | {b.device for b in model.buffers()}


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"'cuda'.*no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"'gpu': must be one of"):
        resolve_device("gpu")


def test_auto_asks_accelerate_when_cuda_is_present(monkeypatch):
    """``auto`` is accelerate's device for this process (its GPU under ``accelerate launch``)."""
    import accelerate

    class FakeState:
        device = torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    assert resolve_device("auto") == torch.device("cuda", 1)


def test_device_is_a_checked_config_field():
    assert SFTConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match=r"SFTConfig\.device = 'gpu': must be one of"):
        SFTConfig(device="gpu")
    with pytest.raises(ConfigError, match=r"PPOConfig\.device = 'cuda:x'"):
        PPOConfig(device="cuda:x")
    with pytest.raises(ValueError, match=r"DemoConfig\.device = 'tpu'"):
        DemoConfig(device="tpu")


def test_place_is_a_no_op_outside_a_stage():
    layer = torch.nn.Linear(2, 2)
    assert dev.current_device() is None and dev.place(layer) is layer
    assert _devices(layer) == {torch.device("cpu")}
    with on_device(META):
        assert dev.current_device() == META and _devices(dev.place(layer)) == {META}
    assert dev.current_device() is None


def test_placement_sets_device_and_autocast():
    layer = torch.nn.Linear(8, 1)
    x = torch.ones(2, 8)
    for mixed, dtype in (("no", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with placement(SFTConfig.smoke().replace(mixed_precision=mixed, device="cpu")) as where:
            assert where == torch.device("cpu") and dev.current_device() == where
            assert layer(x).dtype == dtype
    with placement(wb.config.DataConfig()) as where:  # a stage without models
        assert where is None and dev.current_device() is None


def test_bf16_precision_sees_every_optimiser_step():
    """Inside ``placement`` (bf16 autocast) matmuls run in bf16, and a forward after an
    optimiser step uses the updated weights: a whole stage runs in one autocast context, so
    autocast's weight cache would otherwise hide every update."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.ones(4, 8)
    with placement(SFTConfig.smoke().replace(mixed_precision="bf16")):
        first = layer(x)
        assert first.dtype == torch.bfloat16
        first.pow(2).mean().backward()
        opt.step()
        second = layer(x)
    assert not torch.equal(first, second)


def test_fp16_loss_scaling_steps_and_skips_overflow():
    """Under fp16 the loss is scaled for the backward pass and unscaled before the step, so
    training follows the fp32 run once the scale has settled (the first steps at the initial
    scale of 2^16 may overflow and be skipped); a step whose gradients overflow is skipped and
    the scale halved at the next backward pass."""
    torch.manual_seed(0)
    plain, scaled = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    scaled.load_state_dict(plain.state_dict())
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    losses = {}
    for model, mixed in ((plain, "no"), (scaled, "fp16")):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        with placement(SFTConfig.smoke().replace(mixed_precision=mixed)):
            for _ in range(40):
                backward((model(x).float() - y).pow(2).mean())
                optimizer_step(model.parameters(), opt, sched)
        losses[mixed] = float((model(x) - y).pow(2).mean().detach())
    assert losses["fp16"] == pytest.approx(losses["no"], rel=0.05)

    scaler = LossScaler("cpu")
    layer = torch.nn.Linear(2, 1)
    before = layer.weight.detach().clone()
    start = scaler.scaler.get_scale()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler.backward(layer(torch.ones(1, 2)).sum() * float("inf"))
    scaler.step(list(layer.parameters()), opt, 1.0)
    assert torch.equal(layer.weight, before)  # skipped
    opt.zero_grad()
    scaler.backward(layer(torch.ones(1, 2)).sum())
    assert scaler.scaler.get_scale() == start / 2


def test_fresh_and_lora_policies_land_on_the_stage_device():
    with on_device(META):
        model, _ = wb.train.common.starting_model(SFTConfig.smoke(), None)
        assert _devices(model) == {META}
        lora, _ = wb.train.common.starting_model(SFTConfig.smoke().replace(lora=True), None)
        assert _devices(lora) == {META}


@pytest.mark.slow
def test_score_models_and_ppo_roles_land_on_the_stage_device(smoke_score_runs):
    from workbench.stages.ppo import role_models
    from workbench.train.ppo_lagrangian import Roles

    run = smoke_score_runs[0]
    with on_device(META):
        assert _devices(ScoreModel.load(run / "reward" / "model")) == {META}
        cfg = PPOConfig.smoke()
        roles = Roles(cfg, role_models(cfg, run))
    for name in ("actor", "reward", "cost", "reward_critic", "cost_critic"):
        assert _devices(getattr(roles, name)) == {META}, name
    assert roles.reference is None or _devices(roles.reference) == {META}


def test_demo_models_land_on_the_demo_device(monkeypatch):
    """Every model the demo serves (the shipped checkpoints) is on ``DemoConfig.device``."""
    from workbench.demo import models as demo_models

    asked = []
    monkeypatch.setattr(demo_models, "resolve_device", lambda name: asked.append(name) or META)
    models = demo_models.load_models(DemoConfig.smoke(device="cuda:3", runs_root="/nonexistent"))
    assert asked == ["cuda:3"] and models.source == "assets"
    for name, (policy, _) in models.policies.items():
        assert _devices(policy) == {META}, name
    for model in (models.reward, models.cost, models.guard):
        assert _devices(model) == {META}
    assert "on meta" in models.describe()


@pytest.mark.slow
def test_reward_stage_in_fp16_records_precision_and_device(smoke_score_runs, tmp_path):
    """``reward --mixed-precision fp16 --device cpu``: the stage trains through the loss scaler,
    and its metrics say where and in what precision it ran. A small data stage of its own
    (fp16 on a CPU is emulated and slow: evaluating the smoke run's eval pairs took a minute);
    the SFT model is the shared smoke run's."""
    run = tmp_path / "run"
    run.mkdir()
    small = wb.resolve_config("data", smoke=True, n_train=200, n_eval=16, n_test=16)
    wb.run_stage("data", run, small, progress=False)
    (run / "sft").symlink_to(smoke_score_runs[0] / "sft")
    cfg = RewardConfig.smoke().replace(
        mixed_precision="fp16", device="cpu", max_steps=4, ground_weight=0.0
    )
    metrics = wb.run_stage("reward", run, cfg, progress=False)
    saved = json.loads((run / "reward" / "metrics.json").read_text())
    assert saved["mixed_precision"] == "fp16" and saved["device"] == "cpu"
    assert metrics["eval_accuracy"] >= 0 and metrics["eval_loss"] == metrics["eval_loss"]


def test_a_half_precision_checkpoint_loads_in_fp32(tmp_path):
    """Real checkpoints are often saved in fp16/bf16 (LLaVA-1.5's config says float16); the
    trainers keep fp32 weights and take low precision from autocast, so loading must not
    inherit the checkpoint's dtype."""
    from workbench.models.families import build_tiny_vlm_family
    from workbench.models.vlm import TinyVLMSpec, load_vlm, save_vlm

    model, processor = build_tiny_vlm_family("llava", spec=TinyVLMSpec(text_layers=1))
    save_vlm(model.half(), processor, tmp_path / "half")
    loaded, _ = load_vlm(tmp_path / "half")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
