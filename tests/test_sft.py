"""The SFT stage end to end in smoke mode: tiny LLaVA, the second family (Gemma-3) through
--policy, and LoRA; plus the loss and the image-alignment demonstrations."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

import workbench as wb
from workbench.config import SFTConfig
from workbench.models.adapters import is_adapter_dir, load_policy
from workbench.models.families import build_tiny_vlm_family
from workbench.models.vlm import TinyVLMSpec, build_tiny_vlm, encode, save_vlm
from workbench.train.sft import captions, demonstrations, sft_loss

SMALL = TinyVLMSpec(
    vision_hidden=64, vision_layers=1, text_hidden=64, text_layers=2, text_intermediate=128
)


@pytest.fixture(scope="module")
def data_run(smoke_run):
    """The shared smoke run's data stage."""
    return smoke_run


def test_sft_loss_counts_only_response_tokens(data_run):
    data = wb.load_data(data_run)
    model, processor = build_tiny_vlm(SMALL)
    rec = data.train[0]
    image = data.image(rec)
    batch = encode(processor, [image], [rec["question"]], [rec["response_1"]])
    logits = model(**{k: v for k, v in batch.items() if k != "response_mask"}).logits[0, :-1]
    targets = batch["input_ids"][0, 1:]
    mask = batch["response_mask"][0, 1:].bool()
    by_hand = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    assert torch.allclose(sft_loss(model, batch), by_hand, atol=1e-5)
    n_response = len(rec["response_1"].split()) + 1  # words + end of sequence
    assert int(mask.sum()) == n_response


def test_demonstrations_and_captions(data_run):
    data = wb.load_data(data_run)
    demos = demonstrations(data.train)
    assert len(demos) == 2 * len(data.train)
    safe = demonstrations(data.train, "safe")
    assert len(safe) == sum(r[f"is_response_{i}_safe"] for r in data.train for i in (1, 2))
    preferred = demonstrations(data.train, "preferred")
    assert len(preferred) == sum(
        r["is_response_1_safe"] or r["is_response_2_safe"] for r in data.train
    )
    both = next(r for r in data.train if r["is_response_1_safe"] and r["is_response_2_safe"])
    one = next(r for r in data.train if r["is_response_1_safe"] != r["is_response_2_safe"])
    assert demonstrations([both], "preferred") == [
        (both, both[f"response_{both['more_helpful_response_id']}"])
    ]
    assert demonstrations([one], "preferred") == [
        (one, one["response_1" if one["is_response_1_safe"] else "response_2"])
    ]
    with pytest.raises(ValueError, match="unknown set 'best'"):
        demonstrations(data.train, "best")
    caps = captions(data.train)
    assert len(caps) == len({r["image"] for r in data.train})
    prompt, text = caps[0]
    assert prompt["question"] == "" and text.startswith("the image shows")
    source = next(r for r in data.train if r["image"] == prompt["image"])
    assert wb.data.gold_score(dict(source, intent="describe"), text).helpfulness == 3.0


@pytest.mark.slow
def test_vision_pretraining_makes_image_features_tell_scenes_apart(data_run):
    """Object presence from the mean projected image features: the labels are each scene's
    object kinds, and training brings the loss below that of the best constant guess (each
    kind's frequency), which only features that differ between scenes can do."""
    from workbench.data.render import KINDS
    from workbench.data.store import ImageCache
    from workbench.train.sft import pretrain_vision, scene_objects

    data = wb.load_data(data_run)
    scenes, labels = scene_objects(data.train)
    assert len(scenes) == len({r["image"] for r in data.train}) and labels.shape == (
        len(scenes),
        len(KINDS),
    )
    for r, y in zip(scenes, labels, strict=True):
        assert {sorted(KINDS)[i] for i in y.nonzero().flatten().tolist()} == {
            o["kind"] for o in r["objects"]
        }
    p = labels.mean(0).clamp(1e-6, 1 - 1e-6)
    constant_guess = float((-(p * p.log() + (1 - p) * (1 - p).log())).mean())
    model, processor = build_tiny_vlm(seed=0)
    cfg = SFTConfig.smoke().replace(vision_steps=200, vision_batch_size=32)
    metrics = pretrain_vision(
        model, processor, ImageCache(data), data.train, data.eval, cfg, progress=False
    )
    assert metrics["vision_loss_first"] > constant_guess
    assert metrics["vision_loss_last"] < 0.85 * constant_guess
    assert 0.0 <= metrics["vision_presence_accuracy"] <= 1.0


@pytest.mark.slow
def test_sft_smoke_stage(data_run):
    metrics = wb.run_stage("sft", data_run, smoke=True, progress=False)
    for key in (
        "eval_loss",
        "steps",
        "base_helpfulness",
        "base_safety_rate",
        "parameters",
        "vision_presence_accuracy",
    ):
        assert key in metrics
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    model_dir = data_run / "sft" / "model"
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    fresh, _ = build_tiny_vlm(seed=SFTConfig.smoke().seed)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    ]
    assert any(changed)
    samples = [json.loads(line) for line in open(data_run / "sft" / "samples.jsonl")]
    assert len(samples) == SFTConfig.smoke().n_eval_prompts
    assert metrics["base_safety_rate"] == pytest.approx(
        np.mean([s["harmlessness"] > 0 for s in samples])
    )
    assert metrics["base_helpfulness"] == pytest.approx(
        np.mean([s["helpfulness"] for s in samples])
    )


def test_the_tiny_family_is_a_config_choice():
    """``--tiny-family gemma3`` builds the second architecture when SFT starts from scratch."""
    from workbench.config import ConfigError
    from workbench.train.common import starting_model

    cfg = SFTConfig.smoke().replace(tiny_family="gemma3")
    model, _ = starting_model(cfg, None, family=cfg.tiny_family)
    assert type(model).__name__.startswith("Gemma3")
    model, _ = starting_model(SFTConfig.smoke(), None)
    assert type(model).__name__.startswith("Llava")
    with pytest.raises(ConfigError, match="tiny_family"):
        SFTConfig(tiny_family="qwen")


@pytest.mark.parametrize("family", ["gemma3"])
def test_sft_on_a_second_family_with_lora(data_run, tmp_path, family):
    model, processor = build_tiny_vlm_family(family, spec=SMALL)
    base = save_vlm(model, processor, tmp_path / family)
    cfg = SFTConfig.smoke().replace(
        policy=str(base),
        lora=True,
        lora_targets=("q_proj", "v_proj"),
        max_steps=6,
        caption_steps=2,
        n_eval_prompts=8,
        lr=1e-2,
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "data").symlink_to(data_run / "data")
    metrics = wb.run_stage("sft", run, cfg, progress=False)
    assert metrics["trainable_parameters"] < metrics["parameters"]
    assert is_adapter_dir(run / "sft" / "model")
    loaded, _ = load_policy(run / "sft" / "model")
    assert type(loaded.get_base_model()).__name__.startswith("Gemma3")


def test_lora_stage_after_a_lora_policy_keeps_its_weights(data_run, tmp_path):
    """SFT with LoRA, then a second stage with LoRA from that adapter: what the second stage
    saves must reload to the SFT policy's outputs (it continues the same adapter)."""
    from workbench.models.adapters import save_policy
    from workbench.train.common import starting_model

    model, processor = build_tiny_vlm(SMALL)
    base = save_vlm(model, processor, tmp_path / "base")
    cfg = SFTConfig.smoke().replace(policy=str(base), lora=True, max_steps=1)
    first, processor = starting_model(cfg, None)
    with torch.no_grad():
        for name, p in first.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # an adapter that changes the outputs
    save_policy(first, processor, tmp_path / "sft")
    second, processor = starting_model(cfg.replace(policy=str(tmp_path / "sft")), None)
    save_policy(second, processor, tmp_path / "second")
    data = wb.load_data(data_run)
    rec = data.train[0]
    batch = encode(processor, [data.image(rec)], [rec["question"]])
    reference, _ = load_policy(tmp_path / "sft")
    reloaded, _ = load_policy(tmp_path / "second")
    with torch.no_grad():
        want = reference(**batch).logits
        got = reloaded(**batch).logits
    assert torch.allclose(want, got, atol=1e-4)


def test_gradient_checkpointing_is_a_config_switch():
    from workbench.train.common import starting_model

    model, _ = starting_model(SFTConfig.smoke().replace(gradient_checkpointing=True), None)
    assert model.is_gradient_checkpointing
    model, _ = starting_model(SFTConfig.smoke(), None)
    assert not model.is_gradient_checkpointing


@pytest.mark.slow
def test_sft_smoke_stage_in_bf16_learns_like_fp32(smoke_run, tmp_path):
    """``sft --mixed-precision bf16``: the stage runs under bf16 autocast, learns, and ends
    where the same stage in fp32 ends (same data, seed and steps). A short stage: on a CPU
    without native bf16 (AVX2 only) bf16 autocast is about 7x slower than fp32."""
    short = SFTConfig.smoke().replace(
        max_steps=20, vision_steps=0, caption_steps=0, n_eval_prompts=8
    )
    ends = {}
    for precision in ("no", "bf16"):
        run = tmp_path / precision
        run.mkdir()
        (run / "data").symlink_to(smoke_run / "data")
        cfg = short.replace(mixed_precision=precision)
        ends[precision] = wb.run_stage("sft", run, cfg, progress=False)
    bf16, fp32 = ends["bf16"], ends["no"]
    assert bf16["mixed_precision"] == "bf16" and fp32["mixed_precision"] == "no"
    assert bf16["train_loss_last"] < 0.9 * bf16["train_loss_first"]
    assert abs(bf16["eval_loss"] - fp32["eval_loss"]) < 0.05
    assert abs(bf16["train_loss_last"] - fp32["train_loss_last"]) < 0.05
