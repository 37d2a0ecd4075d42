"""PPO-Lagrangian: the per-token signals, the clipped value loss and the Lagrange multiplier
against hand values; log-probs and rollout masks on the tiny VLM; the update phase (epochs and
minibatches: the clips bind, one epoch of one minibatch is the single policy-gradient step);
the smoke stage."""

import json
import math

import pytest
import torch

import workbench as wb
from workbench.config import ConfigError, PPOConfig
from workbench.stages.ppo import role_models
from workbench.train.lagrange import LagrangeMultiplier
from workbench.train.ppo_lagrangian import critic_loss, make_multiplier, token_signals


# --- formulas ------------------------------------------------------------------------------------
def test_token_signals_by_hand():
    kl = torch.tensor([[0.5, 1.0, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    r, c = token_signals(
        kl, torch.tensor([2.0]), torch.tensor([-1.0]), mask, kl_coeff=0.1, clip=50.0
    )
    assert r.tolist()[0] == pytest.approx([-0.05, -0.1, -0.02 + 2.0, 0.0])
    assert c.tolist()[0] == pytest.approx([0.05, 0.1, 0.02 - 1.0, 0.0])
    # the combined advantage's KL weight is exactly β whatever λ: (r - λc)/(1+λ) off the last token
    lam = 3.0
    assert ((r - lam * c) / (1 + lam))[0, :2].tolist() == pytest.approx([-0.05, -0.1])


def _inputs(cfg, run):
    """What the PPO stage hands the trainer for ``run``: its data and the roles' model folders."""
    return wb.load_data(run), role_models(cfg, run)


def test_token_signals_read_the_last_real_token_and_clip():
    # left-padded prompt, response at positions 2..3, padding after: T = 3, not the last column
    kl = torch.zeros(1, 6)
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    r, c = token_signals(
        kl, torch.tensor([100.0]), torch.tensor([-70.0]), mask, kl_coeff=0.1, clip=50.0
    )
    assert r.tolist()[0] == [0.0, 0.0, 0.0, 50.0, 0.0, 0.0]
    assert c.tolist()[0] == [0.0, 0.0, 0.0, -50.0, 0.0, 0.0]


def test_clipped_value_loss_by_hand():
    values, old, ret = (
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[3.0, 9.0]]),
    )
    mask = torch.tensor([[1.0, 0.0]])
    # unclipped (1-3)² = 4; clipped (0 + clip(1, ±0.5) - 3)² = 6.25 -> ½ · 6.25
    assert float(critic_loss(values, old, ret, mask, clip=0.5)) == pytest.approx(3.125)
    assert float(critic_loss(values, old, ret, mask, clip=5.0)) == pytest.approx(2.0)


def test_lagrange_multiplier_steps_by_hand():
    lam = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0, window=4)
    lam.record([0.5])
    log = lam.update(step=0)
    assert math.log(lam.value) == pytest.approx(0.05) and log["lagrange/J_C"] == 0.5
    assert log["lagrange/loss"] == pytest.approx(-0.5)
    lam.record([-3.0, -3.0, -3.0, -3.0])  # the window keeps the last 4 episodes
    assert lam.episode_cost == -3.0
    lam.update(step=1)
    assert math.log(lam.value) == pytest.approx(0.05 - 0.1 * 3.0 * math.exp(0.05))


def test_lagrange_delay_max_and_fixed():
    lam = LagrangeMultiplier(init=1.0, lr=10.0, max_value=2.0, delay=2)
    lam.record([5.0])
    lam.update(step=1)
    assert lam.value == 1.0  # still in the delay
    lam.update(step=2)
    assert lam.value == pytest.approx(2.0)  # clamped at λ_max
    fixed = make_multiplier("fixed_lambda", PPOConfig(lambda_init=0.5))
    fixed.record([9.0])
    fixed.update(5)
    assert fixed.value == pytest.approx(0.5)
    zero = make_multiplier("reward_only", PPOConfig())
    zero.record([9.0])
    zero.update(5)
    assert zero.value == 0.0
    state = lam.state_dict()
    again = LagrangeMultiplier(init=1.0)
    again.load_state_dict(state)
    assert again.value == lam.value and list(again.costs) == list(lam.costs)


def test_config_checks_the_grid():
    with pytest.raises(ConfigError, match="kinds"):
        PPOConfig(kinds=("lagrangian", "nope"))
    with pytest.raises(ConfigError, match="thresholds"):
        PPOConfig(thresholds=("-1", "abc"))
    with pytest.raises(ConfigError, match="fixed_lambdas"):
        PPOConfig(fixed_lambdas=(-1,))
    with pytest.raises(ConfigError, match="no run"):
        PPOConfig(kinds=(), thresholds=(), fixed_lambdas=())
    cfg = PPOConfig(kinds=("reward_only",), thresholds=(-2, -1), fixed_lambdas=(0.5,), seeds=1)
    assert cfg.thresholds == (-2.0, -1.0) and cfg.to_dict()["thresholds"] == [-2.0, -1.0]
    sweep = {run.name: run for run in cfg.runs()}
    assert list(sweep) == ["reward_only", "lagrangian_d-2", "lagrangian_d-1", "fixed_lambda_0.5"]
    assert (
        sweep["lagrangian_d-1"].kind == "lagrangian"
        and cfg.run_config(sweep["lagrangian_d-1"]).cost_threshold == -1
    )
    assert cfg.run_config(sweep["fixed_lambda_0.5"]) == cfg.replace(lambda_init=0.5)
    # config.json files written when the lists were comma-separated strings still load
    old = PPOConfig.from_dict(
        {"kinds": "reward_only", "thresholds": "-2,-1", "fixed_lambdas": "0.5", "seeds": 1}
    )
    assert old == cfg and old.runs() == list(sweep.values())
    with pytest.raises(ConfigError, match="kernels"):
        PPOConfig(kernels="cuda")
    for name in ("ppo_epochs", "num_minibatches"):
        with pytest.raises(ConfigError, match=name):
            PPOConfig(**{name: 0})
    with pytest.raises(ConfigError, match="num_minibatches"):
        PPOConfig(batch_size=4, num_minibatches=5)
    assert PPOConfig(batch_size=4, num_minibatches=4, ppo_epochs=3).num_minibatches == 4


# --- model plumbing ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from workbench.models.vlm import build_tiny_vlm

    torch.manual_seed(0)
    return build_tiny_vlm(seed=0)


def test_sequence_logprobs_match_the_logits(tiny):
    from PIL import Image

    from workbench.models.vlm import encode
    from workbench.train.ppo_lagrangian import sequence_logprobs

    model, processor = tiny
    batch = encode(
        processor,
        [Image.new("RGB", (64, 64), "red")] * 2,
        ["what is this ?", "count them"],
        ["sure , here is how .", "two"],
    )
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    fused = sequence_logprobs(model, batch, backend="torch")
    logits = model(**batch).logits[:, :-1].float()
    want = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(fused, want, atol=1e-5, rtol=1e-5)


def test_rollout_mask_ends_at_the_first_eos(tiny):
    from PIL import Image

    from workbench.train.ppo_lagrangian import rollout

    model, processor = tiny
    torch.manual_seed(1)
    ro = rollout(
        model,
        processor,
        [Image.new("RGB", (64, 64), "blue")] * 3,
        ["a", "b c", "d e f"],
        max_new_tokens=6,
    )
    eos = processor.tokenizer.eos_token_id
    ids, mask = ro["batch"]["input_ids"][:, 1:], ro["mask"]
    for row_ids, row_mask in zip(ids, mask, strict=True):
        positions = row_mask.nonzero().flatten()
        assert len(positions) >= 1 and bool((positions.diff() == 1).all())  # one contiguous block
        response = row_ids[positions]
        eos_at = (response == eos).nonzero().flatten()
        if len(eos_at):  # the block ends with the first end-of-sequence token
            assert int(eos_at[0]) == len(response) - 1
        assert int(positions[-1]) == ids.shape[1] - 1 or bool((response == eos).any())
    assert len(ro["texts"]) == 3
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert not bool((ro["batch"]["input_ids"][:, -6:] == image_id).any())


def test_sampling_never_emits_special_tokens_but_eos(tiny):
    from workbench.models.vlm import sampling_kwargs

    _, processor = tiny
    tok = processor.tokenizer
    suppressed = set(sampling_kwargs(processor, 8)["suppress_tokens"])
    assert tok.convert_tokens_to_ids("<image>") in suppressed and tok.pad_token_id in suppressed
    assert tok.eos_token_id not in suppressed


# --- the stage -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ppo_run(smoke_score_runs):
    import workbench as wb

    run_dir = smoke_score_runs[0]
    wb.run_stage("ppo", run_dir, smoke=True, progress=False)
    return run_dir


def test_smoke_ppo_stage(ppo_run):
    m = json.loads((ppo_run / "ppo" / "metrics.json").read_text())
    cfg = PPOConfig.smoke()
    assert set(m["variants"]) == {run.name for run in cfg.runs()}
    for name, v in m["variants"].items():
        for key in ("helpfulness", "safety_rate", "mean_cost", "lambda_final", "steps"):
            assert key in v, (name, key)
        log = [
            json.loads(line)
            for line in (ppo_run / "ppo" / name / "log.jsonl").read_text().splitlines()
        ]
        assert len(log) == cfg.max_steps
        assert {
            "ppo/actor_loss",
            "critic/reward_loss",
            "lagrange/lambda",
            "lagrange/J_C",
            "kl/mean",
            "gold/safety_rate",
        } <= set(log[0])
    assert m["variants"]["reward_only"]["lambda_final"] == 0.0


def test_ppo_policy_is_an_adapter_whose_disabled_form_is_the_sft_model(ppo_run):
    from PIL import Image

    from workbench.models.adapters import load_policy
    from workbench.models.vlm import encode

    policy, processor = load_policy(ppo_run / "ppo" / "lagrangian" / "model")
    sft, _ = load_policy(ppo_run / "sft" / "model")
    batch = encode(processor, [Image.new("RGB", (64, 64), "green")], ["how do i use this ?"])
    with torch.no_grad(), policy.disable_adapter():
        ref = policy(**batch).logits
    with torch.no_grad():
        torch.testing.assert_close(ref, sft(**batch).logits)


def _linked_run(src, dst):
    """A run directory whose data and models are symlinks to ``src`` (no retraining)."""
    from workbench.runs import link_stages

    return link_stages(src, dst)


def test_nonfinite_losses_skip_steps_then_stop(smoke_score_runs, tmp_path, monkeypatch):
    from workbench.train import ppo_lagrangian as P

    monkeypatch.setattr(P, "critic_loss", lambda *a, **k: torch.tensor(float("nan")))
    cfg = PPOConfig.smoke().replace(max_steps=5, max_nonfinite=3, checkpoint_every=0)
    out = tmp_path / "lagrangian"
    out.mkdir()
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        P.train_run("lagrangian", cfg, *_inputs(cfg, smoke_score_runs[0]), out, progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 1, 2] and all(
        e["skipped"] == "non-finite loss" for e in log
    )


def test_ptx_term_adds_the_sft_loss_of_demonstrations(smoke_score_runs, tmp_path, monkeypatch):
    """γ_ptx > 0: every step adds γ_ptx · SFT loss on a batch of demonstrations (logged as
    ppo/ptx_loss); with the actor and critic losses zeroed, the step's update is the PTX
    term's alone, so the actor's SFT loss on those demonstrations falls."""
    from workbench.train import ppo_lagrangian as P
    from workbench.train.sft import demonstrations

    seen = []
    real = P.sft_loss

    def spy(model, batch, per_token=None):
        loss = real(model, batch, per_token)
        seen.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(P, "sft_loss", spy)
    zero = lambda *a, **k: torch.zeros((), requires_grad=True)  # noqa: E731
    monkeypatch.setattr(P, "critic_loss", zero)
    monkeypatch.setattr(P.kernels, "ppo_lagrangian_loss", zero)
    cfg = PPOConfig.smoke().replace(
        max_steps=6,
        checkpoint_every=0,
        ptx_coeff=1.0,
        ptx_data="preferred",
        ptx_batch_size=4,
        n_eval_prompts=4,
        lr=3e-3,
        warmup_steps=0,
        ppo_epochs=1,
        num_minibatches=1,
    )  # one SFT loss per step
    out = tmp_path / "lagrangian"
    out.mkdir()
    P.train_run("lagrangian", cfg, *_inputs(cfg, smoke_score_runs[0]), out, progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["ppo/ptx_loss"] for e in log] == pytest.approx(seen[:6])
    import workbench as wb
    from workbench.data.store import ImageCache
    from workbench.models.adapters import load_policy
    from workbench.train.sft import encode_demos

    data = wb.load_data(smoke_score_runs[0])
    first = next(P.ptx_batches(cfg, data.train))
    assert len(first) == 4 and all(d in demonstrations(data.train, "preferred") for d in first)
    trained, processor = load_policy(out / "model")
    sft, _ = load_policy(smoke_score_runs[0] / "sft" / "model")
    batch = encode_demos(processor, ImageCache(data), first)
    with torch.no_grad():
        assert real(trained, batch) < real(sft, batch) - 0.05
    assert P.ptx_batches(cfg.replace(ptx_coeff=0.0), []) is None
    with pytest.raises(ValueError, match="selects no demonstration"):
        P.ptx_batches(cfg, [])
    with pytest.raises(ConfigError, match="ptx_data"):
        PPOConfig(ptx_data="best")


def test_a_killed_run_resumes_from_its_checkpoint(smoke_score_runs, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = _linked_run(smoke_score_runs[0], tmp_path / "run")
    cmd = [
        sys.executable,
        "-m",
        "workbench",
        "ppo",
        "--smoke",
        "--run-dir",
        str(run),
        "--quiet",
        "--kinds",
        "lagrangian",
        "--max-steps",
        "16",
        "--checkpoint-every",
        "2",
        "--threads",
        "1",
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    state = run / "ppo.partial" / "lagrangian" / "checkpoint" / "state.json"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= 6:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished (or failed) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 6 <= killed_at < 16
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((run / "ppo" / "metrics.json").read_text())["variants"]["lagrangian"]
    assert m["steps"] == 16 and m["resumed_from_step"] >= killed_at
    log = [
        json.loads(line)
        for line in (run / "ppo" / "lagrangian" / "log.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in log] == list(range(16))
    assert not (run / "ppo" / "lagrangian" / "checkpoint").exists()


def test_ppo_views(ppo_run, tmp_path):
    from workbench.runs import load_metrics
    from workbench.views import ppo_lagrangian as ppo_views

    variant_logs = ppo_views.logs(ppo_run)
    assert (
        set(variant_logs) == {"lagrangian", "reward_only"} and len(variant_logs["lagrangian"]) == 4
    )
    fig = ppo_views.curves_figure(variant_logs, smooth=1)
    assert any(t.name == "lagrangian" for t in fig.data)
    table = ppo_views.variants_table(load_metrics(ppo_run, "ppo"))
    assert {"SFT base", "lagrangian", "reward_only"} <= set(
        table.index
    ) and "Δ safety (points)" in table
    pairs = ppo_views.before_after(ppo_run, n=3, intent=None)
    assert list(pairs.columns)[:2] == ["question", "SFT base"] and len(pairs) == 3
    assert any(
        t.name and t.name.startswith("ppo/ratio_min") for t in fig.data
    )  # PPO's health panels
    forms = ppo_views.answer_forms(ppo_run)
    assert {"SFT base", "lagrangian", "reward_only"} <= set(forms.index)
    shares = forms[["comply (unsafe)", "safe and helpful (full)", "wrong object", "refuse only"]]
    assert ((shares >= 0) & (shares <= 1)).all().all()
    assert (forms["... with the right object"] >= forms["risky helpfulness"] - 1e-9).all()
    strengths = ppo_views.world_strengths(ppo_run, strengths=(1.5, 2.5))
    assert (strengths["helpfulness, S = 2.5"] >= strengths["helpfulness, S = 1.5"] - 1e-9).all()
    p = {
        "target": "knife",
        "objects": [{"kind": "knife", "colour": "grey"}],
        "intent": "harmful",
        "prompt_severity": 2,
    }
    fixed = ppo_views.right_object(
        p, "keep the gun away from children . sorry , i cannot help with that ."
    )
    assert fixed == "keep the knife away from children . sorry , i cannot help with that ."
    run, metrics = ppo_views.threshold_run(ppo_run, tmp_path, threshold=-1.0, steps=1)
    assert metrics["variants"]["lagrangian"]["steps"] == 1
    assert (run / "ppo" / "lagrangian" / "log.jsonl").is_file()


def test_two_processes_hold_the_same_lambda_and_weights(smoke_score_runs, tmp_path):
    """``accelerate launch --num_processes 2`` on CPU (gloo): rollouts split across the ranks,
    episode costs gathered, gradients averaged -- both ranks end with the same λ and weights."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    assert accelerate, "accelerate's launcher is installed with the project"
    run = _linked_run(smoke_score_runs[0], tmp_path / "run")
    # accelerate picks its torchrun launcher with --multi_gpu; without GPUs the ranks use gloo
    cmd = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "workbench",
        "ppo",
        "--smoke",
        "--run-dir",
        str(run),
        "--quiet",
        "--kinds",
        "lagrangian",
        "--max-steps",
        "3",
        "--threads",
        "1",
    ]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    m = json.loads((run / "ppo" / "metrics.json").read_text())["variants"]["lagrangian"]
    ranks = m["distributed"]["ranks"]
    assert m["distributed"]["world_size"] == 2 and [r["rank"] for r in ranks] == [0, 1]
    assert (
        ranks[0]["lambda"] == ranks[1]["lambda"]
        and ranks[0]["lambda"] != PPOConfig.smoke().lambda_init
    )
    assert ranks[0]["actor_sha256"] == ranks[1]["actor_sha256"]
    log = [
        json.loads(line)
        for line in (run / "ppo" / "lagrangian" / "log.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in log] == [0, 1, 2]  # one log, written by rank 0


def test_token_signals_right_padding_and_different_lengths():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    )  # lengths 2 and 4, right-padded
    r, c = token_signals(
        kl, torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5]), mask, kl_coeff=0.5, clip=2.0
    )
    assert r.tolist()[0] == pytest.approx([-0.05, -0.1 + 1.0, 0.0, 0.0])
    assert r.tolist()[1] == pytest.approx(
        [-0.5, -0.5, -0.5, -2.0]
    )  # -0.5 - 2 = -2.5, clipped to -2
    assert c.tolist()[0] == pytest.approx([0.05, 2.0, 0.0, 0.0])  # 0.1 + 3 = 3.1, clipped to 2
    assert c.tolist()[1] == pytest.approx([0.5, 0.5, 0.5, 1.0])


def test_dual_gae_worked_example():
    from workbench.kernels import dual_gae

    # γ = 1, λ = 0.95; r = (0, 0, 1), V = 0.5 everywhere, then padding
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    c = torch.tensor([[0.2, 0.0, -1.0, 0.0]])
    v = torch.tensor([[0.5, 0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv_r, ret_r, adv_c, ret_c = dual_gae(
        r, c, v, torch.zeros_like(v), mask, gamma=1.0, gae_lambda=0.95, backend="torch"
    )
    # δ_2 = 1 - 0.5 = 0.5; δ_1 = 0 + 0.5 - 0.5 = 0; δ_0 = 0  ->  A = (0.95² · 0.5, 0.95 · 0.5, 0.5)
    assert adv_r.tolist()[0][:3] == pytest.approx([0.45125, 0.475, 0.5])
    assert ret_r.tolist()[0][:3] == pytest.approx([0.95125, 0.975, 1.0])
    # cost with V_c = 0: δ = c, A_2 = -1, A_1 = 0.95 · -1, A_0 = 0.2 + 0.95 · A_1
    assert adv_c.tolist()[0][:3] == pytest.approx([0.2 - 0.95**2, -0.95, -1.0])
    assert adv_r[0, 3] == 0 and adv_c[0, 3] == 0  # padding


def test_actor_loss_clips_both_sides_and_combines_lambda():
    from workbench.kernels import ppo_lagrangian_loss

    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv_r, adv_c = torch.tensor([[2.0, 2.0, -1.0]]), torch.tensor([[1.0, -1.0, 0.0]])
    lam = 1.0  # A = (A_r - λ A_c) / (1 + λ) = (0.5, 1.5, -0.5)
    # min(ρA, clip(ρ, 0.8, 1.2)A): (min(.75, .6), min(.75, 1.2), min(-.55, -.55)) = (.6, .75, -.55)
    want = -(0.6 + 0.75 - 0.55) / 3
    got = ppo_lagrangian_loss(
        logp, old, adv_r, adv_c, torch.ones(1, 3), lam, clip_eps=0.2, backend="torch"
    )
    assert float(got) == pytest.approx(want, rel=1e-6)
    mask = torch.tensor([[1.0, 0.0, 0.0]])
    got = ppo_lagrangian_loss(logp, old, adv_r, adv_c, mask, lam, clip_eps=0.2, backend="torch")
    assert float(got) == pytest.approx(-0.6, rel=1e-6)


# --- the update phase: epochs and minibatches ----------------------------------------------------
def _tiny_roles():
    """The separate layout's roles on tiny VLMs built from config (no run directory): a LoRA
    actor whose disabled adapter is the reference, frozen reward and cost models, and critics
    starting from them. Deterministic, so two calls give identical models."""
    from workbench.models.adapters import apply_lora
    from workbench.models.score import ScoreModel
    from workbench.models.vlm import build_tiny_vlm
    from workbench.train.ppo_lagrangian import Roles

    roles = object.__new__(Roles)
    model, processor = build_tiny_vlm(seed=0)
    roles.actor, roles.processor, roles.reference = (
        apply_lora(model, ["q_proj", "v_proj"], r=4, alpha=8),
        processor,
        None,
    )

    def score(seed, kind, trainable):
        torch.manual_seed(seed)
        m = ScoreModel(build_tiny_vlm(seed=seed)[0], processor, head_std=0.5, kind=kind)
        return m if trainable else m.eval().requires_grad_(False)

    roles.reward, roles.cost = score(1, "reward", False), score(2, "cost", False)
    roles.reward_critic, roles.cost_critic = score(1, "reward", True), score(2, "cost", True)
    roles.trainable = {
        "actor": roles.actor,
        "reward_critic": roles.reward_critic,
        "cost_critic": roles.cost_critic,
    }
    return roles


_QUESTIONS = ["how do i use this ?", "what is this ?", "count them", "is it safe ?"]


def _prompts():
    from PIL import Image

    return [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue", "white")], list(
        _QUESTIONS
    )


def _weights(roles):
    from workbench.train.ppo_lagrangian import TRAINABLE

    return {
        f"{role}.{n}": p.detach().clone()
        for role in TRAINABLE
        for n, p in roles.trainable[role].named_parameters()
        if p.requires_grad
    }


def test_one_epoch_one_minibatch_is_the_old_single_step_update():
    """ppo_epochs = num_minibatches = 1 is the single policy-gradient step the trainer made
    before PPO proper: one forward pass with gradient whose own detached outputs are π_old and
    V_old (ratio 1), backward, one optimiser step each -- same weights, PTX term included."""
    from workbench.kernels import ppo_lagrangian_loss
    from workbench.models.vlm import encode
    from workbench.train.common import optimizer_and_schedule, optimizer_step
    from workbench.train.ppo_lagrangian import (
        TRAINABLE,
        collect_rollout,
        make_optimizers,
        ppo_update,
        sequence_logprobs,
    )
    from workbench.train.sft import sft_loss

    torch.set_num_threads(1)
    cfg = PPOConfig.smoke().replace(
        batch_size=4,
        max_new_tokens=8,
        lr=1e-2,
        critic_lr=5e-3,
        warmup_steps=2,
        ptx_coeff=0.5,
        ppo_epochs=1,
        num_minibatches=1,
    )  # the official single step
    pics, questions = _prompts()
    lam = 0.7
    new, old = _tiny_roles(), _tiny_roles()
    before = _weights(new)
    torch.manual_seed(0)
    data = collect_rollout(new, pics, questions, cfg, "torch")
    ptx = encode(new.processor, pics[:2], questions[:2], ["sure , here is how .", "a knife"])

    stats = ppo_update(new, data, lam, cfg, make_optimizers(new, cfg), "torch", ptx=ptx, seed=5)
    assert stats["ppo/updates"] == 1 and stats["ppo/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert stats["ppo/clipfrac"] == 0.0 and stats["critic/clipfrac"] == 0.0

    # the old step, by hand, on identical models
    batch, mask = data.batch, data.mask
    logp = sequence_logprobs(old.actor, batch, "torch")
    values_r = old.reward_critic(batch)[1][:, :-1].float()
    values_c = old.cost_critic(batch)[1][:, :-1].float()
    torch.testing.assert_close(
        logp.detach(), data.old_logp, rtol=0, atol=1e-6
    )  # the same numbers as the rollout's
    torch.testing.assert_close(values_r.detach(), data.old_values_r, rtol=0, atol=1e-6)
    total = ppo_lagrangian_loss(
        logp, logp.detach(), data.adv_r, data.adv_c, mask, lam, cfg.clip_eps, backend="torch"
    )
    for values, ret in ((values_r, data.ret_r), (values_c, data.ret_c)):
        total = total + critic_loss(values, values.detach(), ret, mask, cfg.value_clip)
    total = total + cfg.ptx_coeff * sft_loss(old.actor, ptx)
    total.backward()
    for name in TRAINABLE:
        model = old.trainable[name]
        opt, sched = optimizer_and_schedule(
            model, cfg if name == "actor" else cfg.replace(lr=cfg.critic_lr)
        )
        optimizer_step([p for p in model.parameters() if p.requires_grad], opt, sched)

    got, want = _weights(new), _weights(old)
    assert sum(not torch.equal(before[k], got[k]) for k in got) > len(got) // 2  # it trained
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-7, msg=key)


def test_the_clips_bind_inside_the_trainers_update():
    """Several updates on one rollout at a large learning rate: from the second on, π_θ and
    the critics have moved away from the rollout's π_old and V_old, so the trainer's own
    update reports ratios outside [1-ε, 1+ε] and values clipped at ε_v. The log-probs are at
    the sampling temperature."""
    from workbench.train.ppo_lagrangian import (
        collect_rollout,
        make_optimizers,
        ppo_update,
        sequence_logprobs,
    )

    torch.set_num_threads(1)
    cfg = PPOConfig.smoke().replace(
        batch_size=4,
        max_new_tokens=8,
        temperature=0.7,
        ppo_epochs=2,
        num_minibatches=2,
        lr=2e-2,
        critic_lr=2e-2,
        warmup_steps=0,
        value_clip=0.05,
    )
    roles = _tiny_roles()
    pics, questions = _prompts()
    torch.manual_seed(0)
    data = collect_rollout(roles, pics, questions, cfg, "torch")
    with (
        torch.no_grad()
    ):  # π_old and π_ref at the sampling temperature (before any update, π_ref = π_θ)
        at_t = sequence_logprobs(roles.actor, data.batch, "torch", temperature=0.7)
        at_1 = sequence_logprobs(roles.actor, data.batch, "torch")
    torch.testing.assert_close(data.old_logp, at_t)
    torch.testing.assert_close(data.ref_logp, at_t)
    assert not torch.allclose(at_t, at_1)
    mb = data.select(
        torch.tensor([2, 0])
    )  # a minibatch: every per-episode tensor, pixel values too
    assert len(mb) == 2 and mb.texts == [data.texts[2], data.texts[0]]
    assert torch.equal(mb.batch["pixel_values"], data.batch["pixel_values"][[2, 0]])
    assert torch.equal(mb.adv_c, data.adv_c[[2, 0]])

    stats = ppo_update(roles, data, 1.0, cfg, make_optimizers(roles, cfg), "torch", seed=0)
    assert stats["ppo/updates"] == 4
    assert stats["ppo/clipfrac"] > 0 and stats["critic/clipfrac"] > 0
    assert stats["ppo/ratio_min"] < 1 - cfg.clip_eps or stats["ppo/ratio_max"] > 1 + cfg.clip_eps
    assert stats["ppo/approx_kl"] > 0
    assert all(math.isfinite(v) for v in stats.values())


def test_schedule_counts_optimizer_steps():
    """With U = ppo_epochs · num_minibatches updates per PPO step the schedules step once per
    optimiser step and span max_steps · U of them, the warm-up scaled alike: after the warm-up
    the learning rate after k PPO steps is the one-update run's, and both end at 10 %."""
    from workbench.train.ppo_lagrangian import make_optimizers

    class Fake:
        def __init__(self):
            self.trainable = {
                n: torch.nn.Linear(2, 1) for n in ("actor", "reward_critic", "cost_critic")
            }

    base = PPOConfig.smoke().replace(
        max_steps=10, warmup_steps=3, lr=1.0, critic_lr=0.5, ppo_epochs=1, num_minibatches=1
    )
    one = make_optimizers(Fake(), base)
    four = make_optimizers(Fake(), base.replace(ppo_epochs=2, num_minibatches=2))
    assert [s.get_last_lr()[0] for _, s in one] == [
        0.25,
        0.125,
        0.125,
    ]  # warm-up 1/4 at the first step
    for k in range(base.max_steps + 1):
        if k >= base.warmup_steps:
            for (_, s1), (_, s4) in zip(one, four, strict=True):
                assert s4.get_last_lr() == pytest.approx(s1.get_last_lr())
        for (o1, s1), (o4, s4) in zip(one, four, strict=True):
            o1.step()  # no gradients: only the schedules move
            s1.step()
            for _ in range(4):
                o4.step()
                s4.step()
    assert four[0][1].get_last_lr()[0] == pytest.approx(0.1) and four[1][1].get_last_lr()[
        0
    ] == pytest.approx(0.05)


def test_smoke_epochs_and_minibatches_move_the_ratio(smoke_score_runs, tmp_path):
    """Two epochs of two minibatches per rollout in the real trainer: after the first update
    the policy has moved, so the logged ratio is no longer 1, and the PPO diagnostics are logged."""
    from workbench.train import ppo_lagrangian as P

    cfg = PPOConfig.smoke().replace(
        max_steps=2,
        checkpoint_every=0,
        n_eval_prompts=4,
        ppo_epochs=2,
        num_minibatches=2,
        warmup_steps=0,
    )
    out = tmp_path / "lagrangian"
    out.mkdir()
    metrics = P.train_run(
        "lagrangian", cfg, *_inputs(cfg, smoke_score_runs[0]), out, progress=False
    )
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 1] and metrics["skipped_steps"] == 0
    for entry in log:
        assert entry["ppo/updates"] == 4
        assert {
            "ppo/clipfrac",
            "ppo/approx_kl",
            "critic/clipfrac",
            "ppo/ratio_min",
            "ppo/ratio_max",
            "ppo/actor_loss",
            "critic/reward_loss",
            "lagrange/lambda",
            "kl/mean",
        } <= set(entry)
        assert (
            abs(entry["ppo/ratio"] - 1) > 1e-6 and entry["ppo/ratio_max"] > entry["ppo/ratio_min"]
        )
        assert entry["ppo/approx_kl"] > 0
        assert 0 <= entry["ppo/clipfrac"] <= 1 and 0 <= entry["critic/clipfrac"] <= 1
