"""Score models and the reward / cost preference losses and stages (docs/design.md §5, §6)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import workbench as wb
from workbench.config import CostConfig, RewardConfig
from workbench.data.schema import is_world
from workbench.models.adapters import apply_lora, load_policy
from workbench.models.score import ScoreModel, last_token_index
from workbench.models.vlm import TinyVLMSpec, VLMError, build_tiny_vlm, encode, load_vlm, save_vlm
from workbench.runs import read_jsonl
from workbench.train.common import batches
from workbench.train.preference import (
    contrast_pair,
    cost_loss,
    evaluate,
    grounding_loss,
    grounding_prompts,
    high_low,
    mention_labels,
    mention_loss,
    ranking_ceiling,
    reward_loss,
    sign_ceiling,
    sign_weights,
)

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


def nls(x: float) -> float:
    """-log σ(x)"""
    return math.log1p(math.exp(-x))


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture(scope="module")
def small_vlm():
    return build_tiny_vlm(SMALL, seed=0)


def sample_batch(processor, padding_side="right"):
    images = [
        Image.new("RGB", (32, 32), (200, 30, 30)),
        Image.new("RGB", (32, 32), (30, 30, 200)),
        Image.new("RGB", (32, 32), (30, 200, 30)),
    ]
    questions = ["how do i use this ?", "what colour is the cup ?", "describe the image ."]
    responses = [
        "sure , here is how . step one : method_f . step two : method_b .",
        "the cup is red .",
        "i can not help with that .",
    ]
    return encode(processor, images, questions, responses, padding_side=padding_side)


# --- losses --------------------------------------------------------------------------------
def test_reward_loss_by_hand():
    assert float(reward_loss(t(1.0), t(0.0), 0.1)) == pytest.approx(nls(1.0) + 0.1 * (1 + 0) / 2)
    assert float(reward_loss(t(1.0), t(0.0), 0.0)) == pytest.approx(nls(1.0))
    # batch mean of the pair term; η times the mean of all four squared scores
    got = float(reward_loss(t(2.0, -1.0), t(0.5, 1.0), 0.01))
    want = (nls(1.5) + nls(-2.0)) / 2 + 0.01 * (4 + 1 + 0.25 + 1) / 4
    assert got == pytest.approx(want)


def test_cost_loss_by_hand_with_graded_signs():
    # unsafe response rate -2 -> s_u = +2; safer response rate +3 -> s_s = -3
    got = float(cost_loss(t(1.0), t(-1.0), t(2.0), t(-3.0), 0.1))
    want = nls(2.0) + nls(2.0 * 1.0) + nls(-3.0 * -1.0) + 0.1 * (1 + 1) / 2
    assert got == pytest.approx(want)
    # a sign weight of 0 adds no term at all (not log 2)
    got = float(cost_loss(t(0.5, 1.0), t(0.0, -2.0), t(0.0, 1.0), t(-1.0, 0.0), 0.0))
    want = ((nls(0.5) + nls(-1.0 * 0.0)) + (nls(3.0) + nls(1.0))) / 2
    assert got == pytest.approx(want)


def test_cost_sign_terms_push_unsafe_up_and_safe_down():
    c_unsafe = torch.zeros(1, requires_grad=True)
    c_safe = torch.zeros(1, requires_grad=True)
    cost_loss(c_unsafe, c_safe, torch.tensor([2.0]), torch.tensor([-3.0]), 0.0).backward()
    assert c_unsafe.grad.item() < 0 < c_safe.grad.item()  # descent raises C_u, lowers C_s
    # without the pair term's symmetry: a lone sign term moves a score by its sign
    c = torch.zeros(1, requires_grad=True)
    cost_loss(c, torch.zeros(1), torch.tensor([1.0]), torch.tensor([0.0]), 0.0).backward()
    assert c.grad.item() == pytest.approx(-0.5 - 0.5)  # pair term -σ(0) and sign term -σ(0)


def test_sign_weights_graded_and_binary():
    rec = {
        "response_1_harmless_rate": -2,
        "response_2_harmless_rate": 3,
        "is_response_1_safe": False,
        "is_response_2_safe": True,
    }
    assert sign_weights(rec, "graded") == (2.0, -3.0)
    assert sign_weights(rec, "binary") == (1.0, -1.0)
    assert sign_weights({**rec, "response_1_harmless_rate": 0}, "graded") == (0.0, -3.0)
    with pytest.raises(ValueError, match="sign mode"):
        sign_weights(rec, "ternary")
    # binary-mode cost loss on this pair: s_u = +1, s_s = -1
    s1, s2 = sign_weights(rec, "binary")
    got = float(cost_loss(t(0.3), t(-0.2), t(s1), t(s2), 0.0))
    assert got == pytest.approx(nls(0.5) + nls(0.3) + nls(0.2))


# --- score model ---------------------------------------------------------------------------
def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 2]


def test_scores_read_at_last_real_token_same_for_both_paddings(small_vlm):
    model, processor = small_vlm
    score_model = ScoreModel(model, processor, head_std=1.0).eval()
    right, left = sample_batch(processor, "right"), sample_batch(processor, "left")
    assert not torch.equal(right["attention_mask"], left["attention_mask"])  # padding differs
    with torch.no_grad():
        s_right, v_right = score_model(right)
        s_left, v_left = score_model(left)
    assert v_right.shape == right["input_ids"].shape
    last = right["attention_mask"].sum(1) - 1
    assert torch.equal(s_right, v_right[torch.arange(3), last])
    assert torch.equal(s_left, v_left[:, -1])
    assert not torch.allclose(s_right, v_right[:, -1])  # the last column is padding for short rows
    assert torch.allclose(s_right, s_left, atol=1e-5)
    assert s_right.std() > 0


def test_initial_scores_are_small(small_vlm):
    model, processor = small_vlm
    with torch.no_grad():
        scores, _ = ScoreModel(model, processor)(sample_batch(processor))
    assert scores.abs().max() < 0.1


def test_save_load_round_trip(small_vlm, tmp_path):
    model, processor = small_vlm
    score_model = ScoreModel(model, processor, head_std=1.0, kind="cost").eval()
    batch = sample_batch(processor)
    with torch.no_grad():
        before, _ = score_model(batch)
    path = score_model.save(tmp_path / "cost")
    assert (path / "model.safetensors").is_file() and (path / "score_head.safetensors").is_file()
    loaded = ScoreModel.load(path).eval()
    assert loaded.kind == "cost"
    with torch.no_grad():
        after, _ = loaded(sample_batch(loaded.processor))
    assert torch.allclose(before, after, atol=1e-6)
    backbone, _ = load_vlm(path)  # the directory is also a plain VLM
    assert sum(p.numel() for p in backbone.parameters()) == sum(
        p.numel() for p in model.parameters()
    )
    with pytest.raises(VLMError, match="not a score model"):
        ScoreModel.load(tmp_path / "nothing")


def test_lora_score_model_round_trip(tmp_path):
    base_dir = save_vlm(*build_tiny_vlm(SMALL, seed=1), tmp_path / "base")
    backbone, processor = load_policy(base_dir)
    score_model = ScoreModel(
        apply_lora(backbone, ["q_proj", "v_proj"], r=4, alpha=8), processor, head_std=1.0
    ).eval()
    trainable = {n for n, p in score_model.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable and all("lora" in n or n == "head.weight" for n in trainable)
    with torch.no_grad():
        before, _ = score_model(sample_batch(processor))
    path = score_model.save(tmp_path / "reward")
    assert (path / "adapter_config.json").is_file()
    with torch.no_grad():
        after, _ = ScoreModel.load(path).eval()(sample_batch(processor))
    assert torch.allclose(before, after, atol=1e-6)


def test_training_steps_move_weights_and_lower_loss():
    torch.manual_seed(0)
    model, processor = build_tiny_vlm(SMALL, seed=2)
    score_model = ScoreModel(model, processor)
    batch = sample_batch(processor)
    batch = {
        k: torch.cat([v, v]) for k, v in batch.items()
    }  # 3 pairs: (i, i) with different labels
    opt = torch.optim.AdamW(score_model.parameters(), lr=3e-3)
    head0 = score_model.head.weight.detach().clone()
    layer0 = model.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    losses = []
    for _ in range(6):
        scores, _ = score_model(batch)
        # pairs: (seq0 better than seq1), (seq1 better than seq2), (seq0 better than seq2)
        loss = reward_loss(scores[[0, 1, 3]], scores[[1, 2, 5]], 1e-3)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05
    assert not torch.equal(head0, score_model.head.weight)
    assert not torch.equal(layer0, model.model.language_model.layers[0].self_attn.q_proj.weight)


# --- metrics and batches --------------------------------------------------------------------
def pair(
    help_id, safer_id, gold_help=(1.0, 1.0), gold_harm=(1.0, 1.0), safe=(True, True), rates=(2, 2)
):
    return {
        "more_helpful_response_id": help_id,
        "safer_response_id": safer_id,
        "response_1_gold_helpfulness": gold_help[0],
        "response_2_gold_helpfulness": gold_help[1],
        "response_1_gold_harmlessness": gold_harm[0],
        "response_2_gold_harmlessness": gold_harm[1],
        "is_response_1_safe": safe[0],
        "is_response_2_safe": safe[1],
        "response_1_harmless_rate": rates[0],
        "response_2_harmless_rate": rates[1],
        "response_1_helpful_rate": 1,
        "response_2_helpful_rate": 2,
        "category": "none",
        "response_1": "a",
        "response_2": "b",
        "objects": [],
        "intent": "harmful",
        "prompt_severity": 1,
    }


def test_noise_ceilings_count_gold_ties_as_half():
    records = [
        pair(1, 1, gold_help=(3, 1), gold_harm=(2, -1)),  # gold agrees with both labels
        pair(2, 1, gold_help=(3, 1), gold_harm=(-1, 2)),  # gold disagrees with both
        pair(1, 2, gold_help=(2, 2), gold_harm=(1, 1)),
    ]  # gold ties
    assert ranking_ceiling(records, "reward") == pytest.approx((1 + 0 + 0.5) / 3)
    assert ranking_ceiling(records, "cost") == pytest.approx((1 + 0 + 0.5) / 3)
    noisy = [
        pair(1, 1, gold_harm=(2, -1), safe=(True, True))
    ]  # response 2 labelled safe, gold unsafe
    assert sign_ceiling(noisy) == pytest.approx(0.5)


def test_evaluate_without_gold_omits_ceilings_and_correlations():
    records = [
        pair(2, 2, gold_harm=(-2, 1), safe=(False, True), rates=(-2, 1)),
        pair(2, 1, gold_harm=(3, -3), safe=(True, False), rates=(3, -3)),
    ]
    scores = np.array([[1.0, -1.0], [-0.5, 2.0]])
    cfg = CostConfig()
    with_gold, rows = evaluate("cost", scores, records, cfg)
    assert with_gold["eval_accuracy"] == 1.0 and with_gold["eval_sign_accuracy"] == 1.0
    assert {
        "eval_accuracy_ceiling",
        "eval_sign_accuracy_ceiling",
        "gold_pearson_harmlessness",
    } <= set(with_gold)
    assert with_gold["cost_by_level"] == {"safe": -0.75, "moderate": 1.0, "severe": 2.0}
    assert len(rows) == 4 and "gold_harmlessness" in rows[0]
    real = [{k: v for k, v in r.items() if "gold" not in k} for r in records]
    assert is_world(records) and not is_world(real)
    without, rows = evaluate("cost", scores, real, cfg)
    assert not [k for k in without if "ceiling" in k or "gold" in k]
    assert without["eval_accuracy"] == 1.0 and "gold_harmlessness" not in rows[0]
    reward, _ = evaluate("reward", scores, real, RewardConfig())
    assert reward["eval_accuracy"] == 0.5 and "eval_accuracy_ceiling" not in reward


def test_length_grouped_batches_cover_an_epoch_with_similar_lengths():
    items = [{"n": n} for n in range(64)]
    got = list(batches(items, batch_size=8, steps=8, seed=0, length=lambda r: r["n"], group=8))
    assert len(got) == 8 and all(len(b) == 8 for b in got)
    assert sorted(r["n"] for b in got for r in b) == list(range(64))
    assert all(max(r["n"] for r in b) - min(r["n"] for r in b) == 7 for b in got)
    assert (
        len(list(batches(items[:5], batch_size=8, steps=3, seed=0, length=lambda r: r["n"]))) == 3
    )
    plain = list(batches(items, batch_size=8, steps=8, seed=0))
    assert sorted(r["n"] for b in plain for r in b) == list(range(64))
    assert any(max(r["n"] for r in b) - min(r["n"] for r in b) > 7 for b in plain)
    with pytest.raises(ValueError, match="nothing to train on"):
        next(batches([], batch_size=8, steps=1, seed=0))


# --- stages ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_with_sft(smoke_run, tmp_path_factory):
    """The smoke data plus a fresh small VLM standing in for the SFT model."""
    run_dir = tmp_path_factory.mktemp("pref_run")
    shutil.copytree(smoke_run / "data", run_dir / "data")
    save_vlm(*build_tiny_vlm(SMALL, seed=0), run_dir / "sft" / "model")
    return run_dir


@pytest.mark.parametrize("stage", ["reward", "cost"])
def test_smoke_stage_end_to_end(run_with_sft, stage):
    metrics = wb.run_stage(stage, run_with_sft, smoke=True, progress=False)
    keys = {
        "eval_accuracy",
        "eval_accuracy_ceiling",
        "steps",
        "train_loss_first",
        "train_loss_last",
        "wall_time_s",
    }
    if stage == "cost":
        keys |= {
            "eval_sign_accuracy",
            "eval_sign_accuracy_ceiling",
            "cost_by_level",
            "gold_pearson_harmlessness",
            "gold_spearman_harmlessness",
        }
    else:
        keys |= {
            "gold_pearson_helpfulness",
            "gold_spearman_helpfulness",
            "grounding_right_object_rate",
            "grounding_right_object_rate_in_scene",
            "ground_loss_first",
            "ground_loss_last",
        }
        assert 0 <= metrics["grounding_right_object_rate"] <= 1
        # the first metric naming grounding is the right-object rate (readers take the first)
        assert (
            next(k for k in metrics if "ground" in k or "right_object" in k)
            == "grounding_right_object_rate"
        )
    assert keys <= set(metrics), keys - set(metrics)
    # the accuracy is the share of eval pairs ranked as labelled, from the saved scores
    scored = read_jsonl(run_with_sft / stage / "eval_scores.jsonl")
    by_pair = {(r["id"], r["response"]): r["score"] for r in scored}
    pairs = [high_low(r, stage) for r in wb.load_data(run_with_sft).eval]
    ids = [r["id"] for r in wb.load_data(run_with_sft).eval]
    high = np.array([by_pair[(i, h)] for i, (h, _) in zip(ids, pairs, strict=True)])
    low = np.array([by_pair[(i, lo)] for i, (_, lo) in zip(ids, pairs, strict=True)])
    assert metrics["eval_accuracy"] == pytest.approx(
        float(np.mean((high > low) + 0.5 * (high == low)))
    )
    assert 0.5 <= metrics["eval_accuracy_ceiling"] <= 1
    assert metrics["steps"] == (RewardConfig if stage == "reward" else CostConfig).smoke().max_steps
    out = run_with_sft / stage
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]
    rows = read_jsonl(out / "eval_scores.jsonl")
    data = wb.load_data(run_with_sft)
    assert len(rows) == 2 * len(data.eval)
    # the saved model reproduces the reported scores
    model = ScoreModel.load(out / "model").eval()
    first = data.eval[0]
    images = [data.image(first)] * 2
    batch = encode(
        model.processor, images, [first["question"]] * 2, [first["response_1"], first["response_2"]]
    )
    with torch.no_grad():
        scores, _ = model(batch)
    assert scores.tolist() == pytest.approx([rows[0]["score"], rows[1]["score"]], abs=1e-4)


def test_missing_sft_model_is_a_clear_error_unless_policy_given(smoke_run, tmp_path):
    shutil.copytree(smoke_run / "data", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match=r"python -m workbench sft"):
        wb.run_stage("reward", tmp_path, smoke=True, progress=False)
    assert not (tmp_path / "reward").exists()
    policy = save_vlm(*build_tiny_vlm(SMALL, seed=0), tmp_path / "elsewhere")
    cfg = CostConfig.smoke().replace(policy=str(policy), max_steps=2, sign_mode="binary")
    metrics = wb.run_stage("cost", tmp_path, cfg, progress=False)
    assert metrics["steps"] == 2 and metrics["sign_mode"] == "binary"
    assert "reward" in wb.available_stages() and "cost" in wb.available_stages()


def test_head_learning_rate_multiplier(small_vlm):
    from workbench.config import ConfigError
    from workbench.train.common import optimizer_and_schedule

    model, processor = small_vlm
    score_model = ScoreModel(model, processor)
    cfg = RewardConfig(lr=1e-3, head_lr_multiplier=20.0, warmup_steps=0)
    opt, _ = optimizer_and_schedule(
        score_model, cfg, lr_multipliers={"head.": cfg.head_lr_multiplier}
    )
    by_lr = {group["lr"]: group["params"] for group in opt.param_groups}
    assert sorted(by_lr) == pytest.approx([1e-3, 2e-2])
    head_group = by_lr[max(by_lr)]
    assert len(head_group) == 1 and head_group[0] is score_model.head.weight
    assert sum(len(ps) for ps in by_lr.values()) == len(list(score_model.parameters()))
    with pytest.raises(ConfigError, match="head_lr_multiplier"):
        RewardConfig(head_lr_multiplier=0)


# --- grounding -------------------------------------------------------------------------------
def test_grounding_loss_by_hand():
    assert float(grounding_loss(t(2.0, 0.0), t(0.0, 0.0))) == pytest.approx(
        (nls(2.0) + nls(0.0)) / 2
    )


def test_contrast_pairs_differ_only_in_the_object(smoke_run):
    data = wb.load_data(smoke_run)
    prompts = grounding_prompts(data.train)
    assert prompts and all(p["prompt_severity"] > 0 for p in prompts)
    assert (
        grounding_prompts([{k: v for k, v in r.items() if k != "objects"} for r in data.train])
        == []
    )
    rng = np.random.default_rng(0)
    for p in prompts[:50]:
        for absent in (True, False):
            right, other = contrast_pair(p, rng, absent=absent, swap_all=None, varied=0.5)
            g_right, g_other = wb.data.gold_score(p, right), wb.data.gold_score(p, other)
            assert g_right.n_wrong_object == 0 and g_other.n_wrong_object > 0
            assert g_right.helpfulness > g_other.helpfulness and g_right.is_safe and g_other.is_safe
            a, b = right.split(), other.split()
            assert len(a) == len(b)
            diff = {(x, y) for x, y in zip(a, b, strict=True) if x != y}
            assert diff and all(x == p["target"] and y != p["target"] for x, y in diff)
            in_scene = {y in {o["kind"] for o in p["objects"]} for _, y in diff}
            from workbench.data.oracle import answer_objects

            could_be_in_scene = bool({o["kind"] for o in p["objects"]} - answer_objects(p))
            assert in_scene == {not absent} or not could_be_in_scene
    # swapped in some sentences only: the other sentences still name the target
    mixed = 0
    for p in prompts[:50]:
        right, other = contrast_pair(p, rng, absent=True, partial=0.0, swap_all=0.0)
        kept = [s for s in other.split(" . ") if f" {p['target']} " in f" {s} "]
        mixed += bool(kept)
        assert other != right and wb.data.gold_score(p, other).n_wrong_object >= 1
    assert mixed > 10


def test_mention_labels_mark_target_and_other_objects(small_vlm):
    _, processor = small_vlm
    responses = [
        "the knife can be dangerous . handle the gun with care .",
        "sorry , i cannot help with that .",
    ]
    images = [Image.new("RGB", (32, 32))] * 2
    batch = encode(processor, images, ["how do i use the knife ?"] * 2, responses)
    labels = mention_labels(
        processor.tokenizer,
        batch["input_ids"],
        batch["response_mask"],
        ["knife", "knife"],
        ["knife", "gun", "apple"],
    )
    tokens = [processor.tokenizer.convert_ids_to_tokens(int(i)) for i in batch["input_ids"][0]]
    marked = {
        tokens[t].lstrip("Ġ▁"): float(labels[0, t]) for t in range(len(tokens)) if labels[0, t] >= 0
    }
    assert marked == {"knife": 1.0, "gun": 0.0}  # the question's "knife" is not part of the answer
    assert bool((labels[1] < 0).all())
    logits = torch.zeros_like(labels)
    assert float(mention_loss(logits, labels)) == pytest.approx(math.log(2))
    assert float(mention_loss(logits, torch.full_like(labels, -1.0))) == 0.0
