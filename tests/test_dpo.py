"""Rollout-free methods (docs/design.md §6.13): DPO, SafeDPO and MoCAN's losses, pairs and dual
against hand-computed values; the log-prob plumbing on a tiny VLM (the reference is the
adapter switched off); a few training steps of each method on the shared smoke run."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import workbench as wb
from workbench.config import ConfigError, DPOConfig, PPOConfig
from workbench.models.adapters import apply_lora
from workbench.models.vlm import TinyVLMSpec, build_tiny_vlm, encode, sequence_logprobs
from workbench.train.dpo import (
    Pair,
    batch_loss,
    dpo_loss,
    helpful_pairs,
    implicit_rewards,
    lagrangian_fixed_point,
    mocan_dual,
    mocan_dual_value,
    mocan_loss,
    mocan_pairs,
    pair_logprobs,
    safe_pairs,
    safedpo_loss,
    safedpo_pairs,
    tilted_means,
    train_dpo,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x)"""
    return math.log1p(math.exp(x))


# Every loss below reads the same four log-prob sums: policy (-10, -12), reference (-11, -11),
# so h = (-10 + 11) - (-12 + 11) = 2 and, with β = 0.1, β·h = 0.2.
LOGPS = (t(-10.0), t(-12.0), t(-11.0), t(-11.0))


# --- losses ---------------------------------------------------------------------------------------
def test_dpo_loss_by_hand():
    # -log σ(0.2) = log(1 + e^-0.2) = log(1.818731) = 0.598139
    assert float(dpo_loss(*LOGPS, beta=0.1)) == pytest.approx(0.598139, abs=1e-6)
    # policy = reference: h = 0, loss log 2 whatever β
    same = (t(-3.0), t(-5.0), t(-3.0), t(-5.0))
    assert float(dpo_loss(*same, beta=0.7)) == pytest.approx(math.log(2))
    # the gradient raises the chosen log-prob: dL/d log π(y_w) = -β·σ(-β·h) = -0.1·σ(-0.2)
    chosen = t(-10.0).requires_grad_()
    dpo_loss(chosen, *LOGPS[1:], beta=0.1).sum().backward()
    assert float(chosen.grad) == pytest.approx(-0.1 / (1 + math.exp(0.2)))
    # per-pair losses: a batch of two pairs gives two numbers
    batch = dpo_loss(t(-10.0, -3.0), t(-12.0, -5.0), t(-11.0, -3.0), t(-11.0, -5.0), beta=0.1)
    assert batch.tolist() == pytest.approx([0.598139, math.log(2)], abs=1e-6)


def test_safedpo_loss_by_hand():
    loss = lambda w, lo, delta: float(  # noqa: E731
        safedpo_loss(*LOGPS, t(float(w)), t(float(lo)), beta=0.1, margin=delta)
    )
    # only the loser unsafe: -log σ(0.2 - Δ); Δ = 1: log(1 + e^0.8) = log(3.225541) = 1.171101
    assert loss(0, 1, 1.0) == pytest.approx(1.171101, abs=1e-6)
    # both safe or both unsafe: no margin, plain DPO
    assert loss(0, 0, 1.0) == pytest.approx(0.598139, abs=1e-6)
    assert loss(1, 1, 1.0) == pytest.approx(0.598139, abs=1e-6)
    # Δ = 0 is DPO on the reordered pairs
    assert loss(0, 1, 0.0) == pytest.approx(0.598139, abs=1e-6)
    # (a winner unsafe against a safe loser cannot come out of T; the formula gives 0.2 + Δ)
    assert loss(1, 0, 1.0) == pytest.approx(softplus(-1.2), abs=1e-6)


def test_mocan_loss_by_hand():
    # p = 0.75: -(0.75·log σ(0.2) + 0.25·log σ(-0.2)) = 0.75·0.598139 + 0.25·0.798139 = 0.648139
    assert float(mocan_loss(*LOGPS, label=t(0.75), beta=0.1)) == pytest.approx(0.648139, abs=1e-6)
    assert float(mocan_loss(*LOGPS, label=t(1.0), beta=0.1)) == pytest.approx(0.598139, abs=1e-6)
    # p = 1/2 (a tie) pulls h to 0: the gradient at h = 2 lowers the chosen log-prob
    chosen = t(-10.0).requires_grad_()
    mocan_loss(chosen, *LOGPS[1:], label=t(0.5), beta=0.1).sum().backward()
    assert float(chosen.grad) > 0


def test_implicit_rewards():
    assert implicit_rewards(t(-10.0, -12.0), t(-11.0, -11.0), 0.1).tolist() == pytest.approx(
        [0.1, -0.1]
    )


# --- pairs ----------------------------------------------------------------------------------------
def record(helpful, safer, safe1, safe2, rates=(1, 1)):
    return {
        "question": f"q{helpful}{safer}{safe1}{safe2}",
        "response_1": "one",
        "response_2": "two",
        "more_helpful_response_id": helpful,
        "safer_response_id": safer,
        "is_response_1_safe": safe1,
        "is_response_2_safe": safe2,
        "response_1_harmless_rate": rates[0],
        "response_2_harmless_rate": rates[1],
    }


BOTH_SAFE = record(1, 2, True, True)  # kept as is
HELPFUL_UNSAFE = record(1, 2, False, True)  # the more helpful one unsafe, the other safe: swapped
HELPFUL_SAFE = record(2, 2, False, True)  # the more helpful one is the safe one: kept
BOTH_UNSAFE = record(1, 2, False, False, rates=(-1, -2))  # dropped by T
LOSER_UNSAFE = record(1, 1, True, False)  # kept, the margin applies


def ids(pairs):
    return [(p.chosen, p.rejected, p.chosen_unsafe, p.rejected_unsafe) for p in pairs]


def test_safedpo_pairs_reorder_by_safety():
    records = [BOTH_SAFE, HELPFUL_UNSAFE, HELPFUL_SAFE, BOTH_UNSAFE, LOSER_UNSAFE]
    assert ids(safedpo_pairs(records)) == [
        (1, 2, False, False),
        (2, 1, False, True),  # swapped: the safe response beats the unsafe, more helpful one
        (2, 1, False, True),
        (1, 2, False, True),
    ]
    kept = safedpo_pairs(records, both_unsafe="keep")
    assert ids(kept)[3] == (1, 2, True, True) and len(kept) == 5
    with pytest.raises(ValueError, match="both_unsafe"):
        safedpo_pairs(records, both_unsafe="swap")
    # the two ends: helpfulness order and safety order
    assert [p.chosen for p in helpful_pairs(records)] == [1, 1, 2, 1, 1]
    assert [p.chosen for p in safe_pairs(records)] == [2, 2, 2, 2, 1]


def test_safedpo_batch_loss_applies_the_margin_to_safe_over_unsafe_pairs_only():
    cfg = DPOConfig(method="safedpo", beta=0.1, margin=1.0)
    pairs = safedpo_pairs([BOTH_SAFE, HELPFUL_UNSAFE, LOSER_UNSAFE])
    four = [torch.cat([x] * 3) for x in LOGPS]  # h = 2 for every pair
    losses = batch_loss(cfg, pairs, *four).tolist()
    assert losses == pytest.approx([0.598139, 1.171101, 1.171101], abs=1e-6)


def test_mocan_pairs_relabel_by_shaped_reward():
    records = [BOTH_SAFE, LOSER_UNSAFE]
    rewards = np.array([[1.0, 2.0], [0.5, 0.5]])
    costs = np.array([[-1.0, 1.5], [0.0, 0.0]])
    # λ = 1: R - C = [2.0, 0.5] -> response 1, p = σ(1.5) = 0.817574; [0.5, 0.5] a tie: p = 1/2
    soft = mocan_pairs(records, rewards, costs, 1.0)
    assert [(p.chosen, p.rejected) for p in soft] == [(1, 2), (1, 2)]
    assert [p.label for p in soft] == pytest.approx([0.817574, 0.5], abs=1e-6)
    hard = mocan_pairs(records, rewards, costs, 1.0, labels="hard")
    assert [p.label for p in hard] == [1.0, 0.5]
    # λ = 0: reward only, response 2 wins the first pair with p = σ(1) = 0.731059
    plain = mocan_pairs(records, rewards, costs, 0.0)
    assert plain[0].chosen == 2 and plain[0].label == pytest.approx(0.731059, abs=1e-6)
    with pytest.raises(ValueError, match="labels"):
        mocan_pairs(records, rewards, costs, 1.0, labels="fuzzy")


# --- the MoCAN dual -----------------------------------------------------------------------------
# One prompt, two reference answers with R = (0, 0) and C = (-1, +1), β = 1: the tilt
# q_λ ∝ exp(-λ·C) = (e^λ, e^-λ) gives E_q[C] = -tanh λ, so D'(λ) = d + tanh λ and
# D(λ) = log cosh λ + λ·d.
R0, C0 = np.array([[0.0, 0.0]]), np.array([[-1.0, 1.0]])


def test_mocan_dual_by_hand():
    sol = mocan_dual(R0, C0, d=-0.5, beta=1.0)
    assert sol.lagrange_multiplier == pytest.approx(math.atanh(0.5), abs=1e-8)  # 0.549306
    assert sol.feasible and not sol.at_bound
    assert sol.predicted_cost == pytest.approx(-0.5, abs=1e-8)
    assert sol.reference_cost == 0.0
    # D(λ*) = log cosh(0.549306) - 0.5·0.549306 = 0.143841 - 0.274653 = -0.130812
    assert sol.dual_value == pytest.approx(-0.5 * math.log(0.75) - 0.5 * math.atanh(0.5))
    grid = np.linspace(0, 3, 3001)
    values = [mocan_dual_value(R0, C0, lam, -0.5, 1.0) for lam in grid]
    assert grid[int(np.argmin(values))] == pytest.approx(sol.lagrange_multiplier, abs=1e-3)


def test_mocan_dual_trades_reward_for_cost():
    # R = (1, 0), C = (1, -1), β = 1: q ∝ (e^(1-λ), e^λ), E_q[C] = tanh(1/2 - λ)
    rewards, costs = np.array([[1.0, 0.0]]), np.array([[1.0, -1.0]])
    assert tilted_means(rewards, costs, 0.0, 1.0)[1] == pytest.approx(math.tanh(0.5))
    assert mocan_dual(rewards, costs, d=0.0, beta=1.0).lagrange_multiplier == pytest.approx(0.5)
    sol = mocan_dual(rewards, costs, d=-0.5, beta=1.0)
    assert sol.lagrange_multiplier == pytest.approx(0.5 + math.atanh(0.5))  # 1.049306
    assert sol.predicted_reward < tilted_means(rewards, costs, 0.0, 1.0)[0]


def test_mocan_dual_edge_cases():
    # the constraint already holds for the unconstrained optimum: λ* = 0
    held = mocan_dual(R0, C0, d=0.5, beta=1.0)
    assert held.lagrange_multiplier == 0.0 and held.feasible and held.predicted_cost == 0.0
    # d at or below the mean smallest sampled cost: infeasible, λ stops at lambda_max
    infeasible = mocan_dual(R0, C0, d=-1.0, beta=1.0, lambda_max=7.0)
    assert not infeasible.feasible and infeasible.at_bound
    assert infeasible.lagrange_multiplier == 7.0
    # feasible but past lambda_max: at the bound, still flagged feasible
    capped = mocan_dual(R0, C0, d=-0.999, beta=1.0, lambda_max=2.0)
    assert capped.feasible and capped.at_bound and capped.lagrange_multiplier == 2.0
    assert mocan_dual(R0, C0, d=-0.999, beta=1.0).lagrange_multiplier == pytest.approx(
        math.atanh(0.999)
    )
    # ties: every answer costs the same, so no λ moves E[C]
    tied = mocan_dual(np.array([[0.0, 3.0]]), np.array([[1.0, 1.0]]), d=0.0, beta=1.0)
    assert not tied.feasible and tied.lagrange_multiplier == 20.0
    assert mocan_dual(np.array([[0.0, 3.0]]), np.array([[1.0, 1.0]]), 1.0, 1.0).feasible
    # prompts average: a second prompt whose answers cost 0 halves E_q[C] = -tanh(λ)/2
    two_r, two_c = np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[-1.0, 1.0], [0.0, 0.0]])
    assert mocan_dual(two_r, two_c, -0.25, 1.0).lagrange_multiplier == pytest.approx(
        math.atanh(0.5)
    )
    assert not mocan_dual(two_r, two_c, -0.5, 1.0).feasible  # mean of the minima is -1/2
    # β scales λ*: with β = 2 the tilt is exp(-λC/2), E[C] = -tanh(λ/2)
    assert mocan_dual(R0, C0, -0.5, 2.0).lagrange_multiplier == pytest.approx(2 * math.atanh(0.5))
    with pytest.raises(ValueError, match="shape"):
        mocan_dual(R0, np.array([[1.0, 2.0, 3.0]]), 0.0, 1.0)


def test_lagrangian_fixed_point_by_hand():
    # PPO-Lagrangian's normalised tilt exp(-λ·C/(β(1+λ))): E[C] = -tanh(λ/(1+λ)), so at
    # d = -1/2: λ/(1+λ) = atanh(1/2) = 0.549306, λ = 0.549306 / 0.450694 = 1.218794
    sol = lagrangian_fixed_point(R0, C0, d=-0.5, beta=1.0)
    kappa = math.atanh(0.5)
    assert sol.lagrange_multiplier == pytest.approx(kappa / (1 - kappa), rel=1e-6)
    assert sol.predicted_cost == pytest.approx(-0.5, abs=1e-6)
    assert lagrangian_fixed_point(R0, C0, d=0.5, beta=1.0).lagrange_multiplier == 0.0
    # λ → ∞ only reaches -tanh(1) = -0.7616: d = -0.8 is out of PPO's reach, not MoCAN's
    beyond = lagrangian_fixed_point(R0, C0, d=-0.8, beta=1.0, lambda_max=50.0)
    assert not beyond.feasible and beyond.lagrange_multiplier == 50.0
    assert mocan_dual(R0, C0, d=-0.8, beta=1.0).feasible


# --- config ---------------------------------------------------------------------------------------
def test_config_checks_its_fields():
    for bad, field in (
        ({"method": "ppo"}, "method"),
        ({"beta": 0.0}, "beta"),
        ({"margin": -1.0}, "margin"),
        ({"threshold": float("nan")}, "threshold"),
        ({"both_unsafe": "swap"}, "both_unsafe"),
        ({"mocan_labels": "fuzzy"}, "mocan_labels"),
        ({"n_reference_samples": 0}, "n_reference_samples"),
        ({"lambda_max": 0}, "lambda_max"),
        ({"kernels": "cuda"}, "kernels"),
    ):
        with pytest.raises(ConfigError, match=f"DPOConfig.{field}"):
            DPOConfig(**bad)
    smoke = DPOConfig.smoke()
    assert smoke.lora and smoke.threads == 1 and smoke.max_steps < DPOConfig().max_steps
    assert DPOConfig.from_dict(smoke.to_dict()) == smoke
    # MoCAN's default threshold is PPO-Lagrangian's, so the two sweeps line up
    assert DPOConfig().threshold == PPOConfig().cost_threshold


# --- log-probs on a tiny VLM ----------------------------------------------------------------------
SMALL = TinyVLMSpec(
    image_size=32,
    patch_size=16,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=2,
    text_heads=2,
    text_intermediate=64,
    max_positions=256,
)


def tiny_pairs():
    red, blue = Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))
    records = [
        {
            "question": "how do i use this ?",
            "response_1": "sure , here is how . step one : method_f .",
            "response_2": "i can not help with that .",
            "image": red,
        },
        {
            "question": "what colour is the cup ?",
            "response_1": "the cup is red .",
            "response_2": "the cup is blue and the book is red .",
            "image": blue,
        },
    ]
    return [Pair(r, 1, 2) for r in records], lambda rec: rec["image"]


def test_pair_logprobs_sum_the_response_tokens_and_the_reference_is_the_adapter_off():
    torch.manual_seed(0)
    model, processor = build_tiny_vlm(SMALL, seed=1)
    pairs, images = tiny_pairs()
    chosen, rejected = pair_logprobs(model, processor, images, pairs, "torch")
    # by hand: the response tokens' log-probs of each sequence on its own
    for i, pair in enumerate(pairs):
        for side, got in ((pair.chosen, chosen), (pair.rejected, rejected)):
            one = encode(
                processor, [images(pair.record)], [pair.record["question"]],
                [pair.record[f"response_{side}"]],
            )  # fmt: skip
            logp = sequence_logprobs(model, one, "torch")[0]
            assert float(got[i].detach()) == pytest.approx(
                float((logp * one["response_mask"][0, 1:]).sum().detach()), abs=1e-4
            )
    # LoRA starts at zero: policy = reference, implicit rewards 0, DPO loss log 2
    model = apply_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    pc, pr = pair_logprobs(model, processor, images, pairs, "torch")
    with torch.no_grad(), model.disable_adapter():
        rc, rr = pair_logprobs(model, processor, images, pairs, "torch")
    assert torch.allclose(pc, rc) and torch.allclose(pr, rr)
    loss = dpo_loss(pc, pr, rc, rr, beta=0.1).mean()
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
    # a few steps on the adapter lower the loss; the reference (adapter off) does not move
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        pc, pr = pair_logprobs(model, processor, images, pairs, "torch")
        loss = dpo_loss(pc, pr, rc, rr, beta=0.1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    pc, pr = pair_logprobs(model, processor, images, pairs, "torch")
    assert float(dpo_loss(pc, pr, rc, rr, beta=0.1).mean().detach()) < math.log(2) - 0.01
    with torch.no_grad(), model.disable_adapter():
        again = pair_logprobs(model, processor, images, pairs, "torch")
    assert torch.allclose(again[0], rc) and torch.allclose(again[1], rr)


# --- a few steps of each method on the smoke run ----------------------------------------------
@pytest.mark.parametrize("method", ["dpo_helpful", "dpo_safe", "safedpo", "mocan"])
def test_each_method_trains_on_the_smoke_run(smoke_score_runs, method, tmp_path):
    run = smoke_score_runs[0]
    # d = -1: a threshold the smoke run's reference answers can meet (-2, the default, they
    # cannot), so MoCAN's dual has an interior λ*
    cfg = DPOConfig.smoke().replace(method=method, max_steps=10, lr=2e-3, threshold=-1.0)
    model, metrics = train_dpo(
        cfg,
        wb.load_data(run),
        run / "sft" / "model",
        reward_dir=run / "reward" / "model",
        cost_dir=run / "cost" / "model",
        out_dir=tmp_path,
        progress=False,
    )
    # the policy learned its own pairs: loss down from log 2 (Δ-shifted for SafeDPO), implicit
    # rewards ordered like the pairs on held-out eval pairs
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert metrics["eval_accuracy"] > 0.5
    assert (tmp_path / "model").is_dir() and (tmp_path / "log.jsonl").is_file()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == cfg.max_steps
    if method == "safedpo":
        assert metrics["n_pairs_swapped"] > 0 and metrics["n_train_pairs"] > 0
    if method == "mocan":
        mocan = metrics["mocan"]
        assert metrics["lambda_star"] >= 0 and mocan["threshold"] == cfg.threshold
        assert (tmp_path / "reference_samples.jsonl").is_file()
        if mocan["feasible"] and not mocan["at_bound"] and metrics["lambda_star"] > 0:
            assert mocan["predicted_cost"] == pytest.approx(cfg.threshold, abs=1e-4)
        assert type(metrics["lagrangian_lambda_predicted"]) is float
