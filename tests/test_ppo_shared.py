"""The shared-backbone layout of PPO (docs/design.md §5): six roles on one frozen backbone give the
scores of the separate models, the reference is the adapter-disabled actor, a PPO step moves
only the trainable adapters and heads, checkpoints round-trip; and the memory benchmark."""

import json

import pytest
import torch
from PIL import Image

from workbench.config import ConfigError, CostConfig, DataConfig, PPOConfig, RewardConfig
from workbench.models.adapters import is_adapter_dir, load_policy
from workbench.models.score import ScoreModel
from workbench.models.vlm import build_tiny_vlm, encode, load_vlm, save_vlm
from workbench.stages.ppo import role_models
from workbench.train.roles import (
    ACTOR,
    SCORE_ROLES,
    SharedBackboneError,
    SharedRoles,
    adapter_parameters,
)

CFG = PPOConfig.smoke().replace(
    shared_backbone=True,
    batch_size=4,
    max_new_tokens=6,
    n_eval_prompts=2,
    checkpoint_every=0,
    lora_targets=("q_proj", "v_proj"),
    lora_r=4,
    lora_alpha=8,
)


def _inputs(cfg, run):
    """What the PPO stage hands the trainer for ``run``: its data and the roles' model folders."""
    import workbench as wb

    return wb.load_data(run), role_models(cfg, run)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """Data, a tiny SFT model, and reward and cost models trained a few steps as LoRA adapters
    through the real stages (``--lora``)."""
    import workbench as wb

    run = tmp_path_factory.mktemp("shared_run")
    torch.set_num_threads(1)
    wb.run_stage("data", run, DataConfig(n_train=40, n_eval=8, n_test=8), progress=False)
    model, processor = build_tiny_vlm(seed=0)
    save_vlm(model, processor, run / "sft" / "model")
    for stage in ("reward", "cost"):
        cfg = RewardConfig.smoke() if stage == "reward" else CostConfig.smoke()
        wb.run_stage(
            stage,
            run,
            cfg.replace(
                lora=True,
                max_steps=3,
                batch_size=4,
                lr=5e-2,
                warmup_steps=0,
                lora_r=4,
                lora_alpha=8,
                threads=1,
            ),
            progress=False,
        )
    return run


def _batch(processor):
    pics = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    batch = encode(
        processor,
        pics,
        ["how do i use this ?", "what is this ?", "count them"],
        ["sure , here is how .", "a knife", "two"],
        padding_side="left",
    )
    return {k: v for k, v in batch.items() if k != "response_mask"}


def _snapshot(roles):
    state = {f"model.{n}": p.detach().clone() for n, p in roles.model.named_parameters()}
    for role in SCORE_ROLES:
        state[f"{role}.head"] = getattr(roles, role).head.weight.detach().clone()
    return state


def test_reward_and_cost_stages_save_lora_adapters_with_heads(shared_run):
    for stage in ("reward", "cost"):
        model_dir = shared_run / stage / "model"
        assert is_adapter_dir(model_dir) and (model_dir / "score_head.safetensors").is_file()
        assert (model_dir / "adapter_model.safetensors").is_file()
        config = json.loads((model_dir / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str((shared_run / "sft" / "model").resolve())


def test_shared_roles_score_like_the_separate_models(shared_run):
    roles = SharedRoles(CFG, role_models(CFG, shared_run))
    batch = _batch(roles.processor)
    for role, (stage, _) in SCORE_ROLES.items():
        separate = ScoreModel.load(shared_run / stage / "model").eval()
        with torch.no_grad():
            want_scores, want_values = separate(batch)
            scores, values = getattr(roles, role)(batch)
        torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values, want_values, atol=1e-5, rtol=1e-5)
        assert (
            roles.model.active_adapter == ACTOR
        )  # the actor's adapter is back after every role call
    with torch.no_grad():  # the two stages' adapters differ, so the roles really switch
        assert not torch.allclose(roles.reward(batch)[1], roles.cost(batch)[1])


def test_reference_is_the_adapter_disabled_actor(shared_run):
    from workbench.train.ppo_lagrangian import sequence_logprobs

    roles = SharedRoles(CFG, role_models(CFG, shared_run))
    with torch.no_grad():  # make the actor differ from the SFT model
        for p in adapter_parameters(roles.model, ACTOR).values():
            p.normal_(0, 0.2)
    batch = _batch(roles.processor)
    ref = roles.reference_logprobs(batch, "torch")
    sft, _ = load_vlm(shared_run / "sft" / "model")
    with torch.no_grad():
        torch.testing.assert_close(
            ref, sequence_logprobs(sft, batch, "torch"), atol=1e-5, rtol=1e-5
        )
        actor = sequence_logprobs(roles.actor, batch, "torch")
    assert (actor - ref).abs().max() > 1e-3
    trainable = {n for n, p in roles.model.named_parameters() if p.requires_grad}
    assert trainable and all(
        f".{ACTOR}." in n or "_critic." in n for n in trainable
    )  # flags restored


def test_a_shared_ppo_step_moves_only_the_trainable_adapters_and_heads(shared_run, tmp_path):
    from workbench.train.ppo_lagrangian import train_run

    roles = SharedRoles(CFG, role_models(CFG, shared_run))
    before = _snapshot(roles)
    metrics = train_run(
        "lagrangian",
        CFG.replace(max_steps=1),
        *_inputs(CFG, shared_run),
        tmp_path,
        progress=False,
        roles=roles,
    )
    after = _snapshot(roles)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved, "nothing trained"
    for name in moved:  # only the actor's and the critics' adapters, and the critic heads
        assert any(f".{a}." in name for a in (ACTOR, "reward_critic", "cost_critic")) or name in (
            "reward_critic.head",
            "cost_critic.head",
        ), name
    for role in (ACTOR, "reward_critic", "cost_critic"):
        assert any(f".{role}." in n for n in moved), f"adapter {role} did not move"
    assert {"reward_critic.head", "cost_critic.head"} <= moved
    assert metrics["steps"] == 1 and "helpfulness" in metrics
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and "ppo/actor_loss" in log[0]
    # the saved policy is the actor's adapter alone, over the SFT model
    saved = tmp_path / "model"
    assert is_adapter_dir(saved) and not any(p.is_dir() for p in saved.iterdir())
    policy, _ = load_policy(saved)
    batch = _batch(roles.processor)
    with torch.no_grad():
        torch.testing.assert_close(
            policy(**batch).logits, roles.actor(**batch).logits, atol=1e-5, rtol=1e-5
        )


def test_shared_checkpoints_round_trip_and_resume(shared_run, tmp_path):
    from workbench.train.common import optimizer_and_schedule
    from workbench.train.ppo_lagrangian import (
        TRAINABLE,
        Roles,
        _trainable_state,
        load_checkpoint,
        make_multiplier,
        save_checkpoint,
        train_run,
    )

    cfg = CFG.replace(max_steps=3, checkpoint_every=1)
    out = tmp_path / "run"
    out.mkdir()
    # two steps leave the checkpoint written after step 1 (train_run keeps it; the stage deletes it)
    train_run(
        "lagrangian", cfg.replace(max_steps=2), *_inputs(cfg, shared_run), out, progress=False
    )
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 1  # checkpoints are written before the last step only

    def fresh(roles):
        opts = [optimizer_and_schedule(roles.trainable[n], cfg) for n in TRAINABLE]
        return opts, make_multiplier("lagrangian", cfg)

    roles = SharedRoles(cfg, role_models(cfg, shared_run))
    opts, lam = fresh(roles)
    assert load_checkpoint(out / "checkpoint", roles, opts, lam) == 1
    saved = {n: _trainable_state(roles.trainable[n]) for n in TRAINABLE}
    assert saved["actor"] and any(k.startswith("head") for k in saved["reward_critic"])
    save_checkpoint(tmp_path / "again", 1, roles, opts, lam)
    other = SharedRoles(cfg, role_models(cfg, shared_run))
    opts2, lam2 = fresh(other)
    assert load_checkpoint(tmp_path / "again", other, opts2, lam2) == 1
    for n in TRAINABLE:
        got = _trainable_state(other.trainable[n])
        assert set(got) == set(saved[n]) and all(torch.equal(got[k], saved[n][k]) for k in got)
    assert lam2.value == lam.value
    assert opts2[0][0].state_dict()["state"]  # AdamW moments came back too
    # a separate-layout run cannot resume from a shared-layout checkpoint
    separate = Roles(cfg.replace(shared_backbone=False), role_models(cfg, shared_run))
    with pytest.raises(RuntimeError, match="do not match"):
        load_checkpoint(
            out / "checkpoint", separate, fresh(separate)[0], make_multiplier("lagrangian", cfg)
        )
    # and the trainer resumes the shared run from it
    metrics = train_run("lagrangian", cfg, *_inputs(cfg, shared_run), out, progress=False)
    assert metrics["resumed_from_step"] == 1 and metrics["steps"] == 3
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 1, 2]


def test_shared_backbone_needs_lora_score_models(shared_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for stage in ("data", "sft", "cost"):
        (run / stage).symlink_to((shared_run / stage).resolve(), target_is_directory=True)
    backbone, processor = load_vlm(shared_run / "sft" / "model")
    ScoreModel(backbone, processor, kind="reward").save(run / "reward" / "model")  # a full model
    with pytest.raises(SharedBackboneError, match="python -m workbench reward --lora"):
        SharedRoles(CFG, role_models(CFG, run))
    with pytest.raises(ConfigError, match="shared_backbone"):
        PPOConfig(shared_backbone=True, lora=False)


@pytest.mark.slow
def test_bench_ppo_smoke_reports_both_layouts(tmp_path, capsys):
    from workbench.bench import main

    assert main(["ppo", "--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    report = json.loads((tmp_path / "ppo.json").read_text())
    rows = {r["layout"]: r for r in report["rows"]}
    assert set(rows) == {"separate", "shared", "actor_only"}
    for row in rows.values():
        assert row["peak_mib"] > 0 and row["step_s"] > 0
    # five full models (two of them trained with AdamW) against one backbone with adapters
    assert rows["separate"]["peak_mib"] > rows["shared"]["peak_mib"]
    assert report["ratios"]["shared_vs_actor_only"] == pytest.approx(
        rows["shared"]["peak_mib"] / rows["actor_only"]["peak_mib"], rel=1e-3
    )
    assert "shared" in (tmp_path / "ppo.md").read_text() and "separate" in capsys.readouterr().out
