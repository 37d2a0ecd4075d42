"""The demo: its logic functions directly, the shipped assets, the launched app through
``gradio_client``, the CLI and a small run of ``bench demo``. Uses the checkpoints shipped in
``assets/run`` (and tiny models built here); nothing is downloaded."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.data.schema import SEVERITY_COLOURS, SEVERITY_LEVELS
from workbench.demo import logic
from workbench.demo.assets import MAX_ASSETS_BYTES, build_assets
from workbench.demo.config import ASSETS_DIR, DemoConfig
from workbench.demo.logic import DemoInputError
from workbench.demo.models import (
    DemoModelError,
    find_latest_run,
    load_models,
    missing_parts,
    resolve_model_dir,
)
from workbench.guard.regenerate import OUTCOMES, SAFE_REFUSAL, Verdict

torch.set_num_threads(1)
SHIPPED = ASSETS_DIR / "run"


@pytest.fixture(scope="module")
def cfg() -> DemoConfig:
    return DemoConfig.smoke(run_dir=str(SHIPPED))


@pytest.fixture(scope="module")
def shipped(cfg):
    return load_models(cfg)


@pytest.fixture(scope="module")
def example(shipped):
    """A gallery example whose prompt is harmful (the interesting case for the guard)."""
    return next(r for r in shipped.gallery if r["intent"] == "harmful")


# --- validation ---------------------------------------------------------------------------------
def _error(fn, *args) -> DemoInputError:
    with pytest.raises(DemoInputError) as info:
        fn(*args)
    return info.value


def test_load_image_accepts_paths_payloads_and_pil(cfg, example, tmp_path):
    from_path = logic.load_image(example["image_path"], cfg)
    from_payload = logic.load_image({"path": example["image_path"], "orig_name": "x.png"}, cfg)
    raw = Path(example["image_path"]).read_bytes()
    from_url = logic.load_image(
        {"url": "data:image/png;base64," + base64.b64encode(raw).decode()}, cfg
    )
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 128))
    assert (
        from_path.mode == "RGB"
        and from_path.tobytes() == from_payload.tobytes() == from_url.tobytes()
    )
    assert logic.load_image(rgba, cfg).mode == "RGB"


def test_image_errors_name_the_field_and_the_problem(cfg, tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not pixels")
    wide = tmp_path / "wide.png"
    Image.new("RGB", (cfg.max_image_side + 1, 2)).save(wide)
    cases = {
        "no image": (None,),
        "is not an image": (str(not_image),),
        "pixels per side": (str(wide),),
        "cannot be found": ({"path": str(tmp_path / "gone.png")},),
        "expected an uploaded image": (42,),
    }
    for needle, args in cases.items():
        err = _error(logic.load_image, *args, cfg)
        assert err.field == "image" and needle in str(err) and str(err).startswith("image: "), str(
            err
        )
    small = cfg.replace(max_image_bytes=100)
    big = tmp_path / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(big)
    assert "MB; the limit is" in str(_error(logic.load_image, str(big), small))


def test_question_and_answer_cleaning(cfg):
    assert logic.clean_question("How do I use THIS?", cfg) == "how do i use this ?"
    assert logic.clean_question("  what colour is the ball ?  ", cfg) == "what colour is the ball ?"
    for bad, needle in (
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        ("x" * (cfg.max_question_chars + 1), "the limit is"),
        (3, "expected text"),
    ):
        err = _error(logic.clean_question, bad, cfg)
        assert err.field == "question" and needle in str(err)
    assert logic.clean_answer("", cfg) is None and logic.clean_answer(None, cfg) is None
    assert logic.clean_answer("Sure, here is how.", cfg) == "sure , here is how ."
    assert _error(logic.clean_answer, "y" * (cfg.max_answer_chars + 1), cfg).field == "answer"


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="blocking"):
        DemoConfig(blocking="minor")
    with pytest.raises(ValueError, match="concurrency_limit"):
        DemoConfig(concurrency_limit=0)
    assert DemoConfig.smoke().blocking.rounds < DemoConfig().blocking.rounds


# --- rendering ----------------------------------------------------------------------------------
def test_badges_colour_by_level_and_name_the_category():
    for level, background in SEVERITY_COLOURS.items():
        category = "none" if level == "safe" else "violence_and_physical_harm"
        badge = logic.badge_html({"level": level, "category": category, "p_unsafe": 0.25})
        assert f"wb-level-{level}" in badge and background in badge and level.upper() in badge
        assert ("violence and physical harm" in badge) == (level != "safe")
        assert "P(unsafe) = 0.25" in badge
    assert len(set(SEVERITY_COLOURS.values())) == len(SEVERITY_LEVELS)
    assert "no verdict" in logic.badge_html(None)


def test_side_html_escapes_the_answer():
    side = {
        "policy": "base",
        "title": "Base (SFT)",
        "answer": "<script>x</script>",
        "reward": 1.0,
        "cost": -2.0,
        "verdict": {"level": "safe", "category": "none", "p_unsafe": 0.0},
        "gold": None,
        "trace": None,
    }
    html = logic.side_html(side)
    assert (
        "<script>" not in html
        and "&lt;script&gt;" in html
        and "+1.000" in html
        and "-2.000" in html
    )


# --- compare and moderate on the shipped models ---------------------------------------------------
def test_compare_runs_every_column_through_one_function(shipped, cfg, example, monkeypatch):
    calls = []
    real = logic.answer_side

    def spy(models, policy, *args, **kwargs):
        calls.append((policy, kwargs["seed"], kwargs["guard_on"]))
        return real(models, policy, *args, **kwargs)

    monkeypatch.setattr(logic, "answer_side", spy)
    result = logic.compare(
        shipped,
        example["image_path"],
        example["question"],
        cfg,
        reward_only=True,
        seed=7,
        gallery=logic.gallery_index(shipped),
    )
    # the columns run side by side (one thread each): every one once, with the same seed
    assert sorted(calls) == [("aligned", 7, False), ("base", 7, False), ("reward_only", 7, False)]
    assert [s["policy"] for s in result["sides"]] == ["base", "aligned", "reward_only"]
    assert result["gallery_example"] == example["id"]
    for side in result["sides"]:
        assert isinstance(side["answer"], str) and side["answer"]
        assert side["verdict"]["level"] in SEVERITY_LEVELS
        assert math.isfinite(side["reward"]) and math.isfinite(side["cost"])
        assert (
            side["gold"] is not None and 0 <= side["gold"]["helpfulness"] <= 3
        )  # a gallery example
        # guard off: the answer is served whatever the guard says; would_block says what it
        # would do, at the level the query screen implies
        assert side["blocked"] is False
        assert side["blocking_level"] == logic.blocking_level(
            cfg.blocking, Verdict(**side["query_verdict"])
        )
        rank = SEVERITY_LEVELS.index(side["verdict"]["level"])
        assert side["would_block"] == (rank >= SEVERITY_LEVELS.index(side["blocking_level"]))
        assert 0 < side["latency_s"] <= result["latency_s"]
    html = logic.comparison_html(result)
    assert html.count('class="wb-side"') == 3 and html.count("wb-badge") == 3
    assert html.count("answered in") == 3 and "whole comparison" in html


def test_compare_is_reproducible_by_seed_and_uploads_get_no_gold(shipped, cfg, example):
    image = Image.open(example["image_path"]).convert("RGB").resize((48, 48))  # not a gallery image
    first = logic.compare(shipped, image, example["question"], cfg, seed=3)
    again = logic.compare(shipped, image, example["question"], cfg, seed=3)
    assert [s["answer"] for s in first["sides"]] == [s["answer"] for s in again["sides"]]
    assert first["gallery_example"] is None and all(s["gold"] is None for s in first["sides"])


def test_five_round_guard_trace(shipped, cfg, example):
    result = logic.compare(
        shipped, example["image_path"], example["question"], cfg, guard_on=True, seed=1
    )
    assert result["rounds"] == cfg.blocking.rounds
    for side in result["sides"]:
        trace = side["trace"]
        assert trace["outcome"] in OUTCOMES and trace["query_verdict"] is not None
        assert trace["regenerations"] <= cfg.blocking.rounds
        if trace["outcome"] in ("passed", "regenerated"):
            assert (
                side["answer"] == trace["steps"][-1]["response"]
                and not trace["steps"][-1]["blocked"]
            )


class _StrictGuard:
    """Lets every query through and blocks every answer as severe."""

    def __init__(self):
        self.calls = 0

    def judge(self, images, questions, responses=None):
        self.calls += 1
        level = "safe" if responses is None else "severe"
        category = "none" if level == "safe" else "violence_and_physical_harm"
        return [
            Verdict(level=level, category=category, p_unsafe=0.0 if level == "safe" else 1.0)
            for _ in questions
        ]


def test_guard_that_blocks_everything_serves_the_refusal_after_the_last_round(
    shipped, cfg, example
):
    strict = dataclasses.replace(shipped, guard=_StrictGuard())
    side = logic.answer_side(
        strict,
        "base",
        logic.load_image(example["image_path"], cfg),
        "how do i use this ?",
        cfg,
        guard_on=True,
    )
    trace = side["trace"]
    assert trace["outcome"] == "fallback" and side["answer"] == SAFE_REFUSAL
    assert side["blocked"] is True  # withheld: the refusal was served instead
    assert 'data-blocked="true"' in logic.side_html(side) and "withheld" in logic.side_html(side)
    assert (
        trace["regenerations"] == cfg.blocking.rounds
        and len(trace["steps"]) == cfg.blocking.rounds + 1
    )
    assert all(step["blocked"] for step in trace["steps"])
    assert "guard trace: fallback" in logic.side_html(side)


def test_moderate_screens_queries_and_moderates_answers(shipped, cfg, example):
    query = logic.moderate(shipped, example["image_path"], example["question"], "", cfg)
    answer = logic.moderate(
        shipped, example["image_path"], example["question"], "Sure, here is how.", cfg
    )
    assert (
        query["mode"] == "query"
        and query["answer"] is None
        and query["blocking_level"] == cfg.blocking.query_level
    )
    assert answer["mode"] == "answer" and answer["answer"] == "sure , here is how ."
    # answer moderation screens the query too: it decides the level that blocks the answer
    screened = Verdict(**answer["query_verdict"])
    assert answer["blocking_level"] == logic.blocking_level(cfg.blocking, screened)
    for r in (query, answer):
        rank = SEVERITY_LEVELS.index(r["verdict"]["level"])
        assert r["would_block"] == (rank >= SEVERITY_LEVELS.index(r["blocking_level"]))
        assert "blocked" not in r  # nothing is served by moderation, so nothing is withheld
        assert "wb-badge" in logic.moderation_html(r)
    assert _error(logic.moderate, shipped, None, "q", "", cfg).field == "image"


def test_reward_only_column_needs_the_policy(shipped, cfg, example):
    without = dataclasses.replace(
        shipped, policies={k: v for k, v in shipped.policies.items() if k != "reward_only"}
    )
    err = _error(logic.compare, without, example["image_path"], example["question"], cfg, True)
    assert err.field == "reward_only"


class _PassingGuard(_StrictGuard):
    """Judges every query and every answer safe."""

    def judge(self, images, questions, responses=None):
        self.calls += 1
        return [Verdict(level="safe", p_unsafe=0.0) for _ in questions]


def test_blocked_means_withheld_and_would_block_follows_the_guard_rule(shipped, cfg, example):
    image = logic.load_image(example["image_path"], cfg)
    strict = dataclasses.replace(shipped, guard=_StrictGuard())
    try:
        served = logic.answer_side(strict, "base", image, "how do i use this ?", cfg)
        # guard off: served although the guard calls it severe; the query was screened safe,
        # so the level that would block it is safe_query_level
        assert served["blocked"] is False and served["would_block"] is True
        assert served["blocking_level"] == cfg.blocking.answer_level_after_safe_query
        assert served["answer"] != SAFE_REFUSAL
    finally:
        strict.close()
    passing = dataclasses.replace(shipped, guard=_PassingGuard())
    try:
        side = logic.answer_side(passing, "base", image, "how do i use this ?", cfg, guard_on=True)
        assert side["trace"]["outcome"] == "passed" and side["blocked"] is False
        assert side["would_block"] is False and "served (guard on)" in logic.side_html(side)
    finally:
        passing.close()
    assert logic.blocking_level(cfg.blocking, Verdict(level="minor")) == cfg.blocking.level
    assert logic.blocking_level(cfg.blocking, None) == cfg.blocking.level


def test_batched_requests_get_the_answers_they_get_alone(shipped, cfg):
    """Concurrent comparisons share model calls (batches > 1) and still get, column by column,
    the answers and scores each gets alone -- guard rounds included."""
    import threading

    prompts = [(r["image_path"], r["question"], seed) for seed, r in enumerate(shipped.gallery)]
    prompts += [(shipped.gallery[0]["image_path"], shipped.gallery[0]["question"], 11)]

    def run(i):
        image, question, seed = prompts[i]
        return logic.compare(shipped, image, question, cfg, guard_on=i % 2 == 1, seed=seed)

    shipped.batcher.stats["largest"] = 0
    alone = [run(i) for i in range(len(prompts))]
    largest = shipped.batcher.stats["largest"]  # alone: the columns' own calls only
    together: list = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def client(i):
        barrier.wait()
        together[i] = run(i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shipped.batcher.stats["largest"] > largest  # the crowd shares model calls
    for a, b in zip(alone, together, strict=True):
        for side_a, side_b in zip(a["sides"], b["sides"], strict=True):
            assert side_a["answer"] == side_b["answer"]
            assert side_a["verdict"]["level"] == side_b["verdict"]["level"]
            assert side_a["reward"] == pytest.approx(side_b["reward"], abs=1e-3)
            assert side_a["cost"] == pytest.approx(side_b["cost"], abs=1e-3)
    # seeds matter: another seed samples other answers for some prompt
    other = [logic.compare(shipped, p[0], p[1], cfg, seed=p[2] + 100) for p in prompts[:4]]
    assert any(
        o["sides"][0]["answer"] != a["sides"][0]["answer"]
        for o, a in zip(other, alone, strict=False)
    )


def test_seeded_sampler_matches_the_softmax_distribution():
    """The Gumbel-max sampler draws from softmax(scores / T): frequencies over many rows."""
    from workbench.demo.batching import SeededSampler

    scores = torch.log(torch.tensor([[0.6, 0.3, 0.1, 0.0]])).repeat(4000, 1)
    generators = [torch.Generator().manual_seed(i) for i in range(4000)]
    picks = SeededSampler(generators)(None, scores).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.03)
    hot = SeededSampler([torch.Generator().manual_seed(i) for i in range(4000)], temperature=2.0)
    freq_hot = torch.bincount(hot(None, scores).argmax(-1), minlength=4).float() / 4000
    flat = torch.tensor([0.6, 0.3, 0.1, 0.0]) ** 0.5
    assert torch.allclose(freq_hot, flat / flat.sum(), atol=0.03)


def test_batcher_hands_errors_to_every_caller_and_rejects_bad_sizes():
    from workbench.demo.batching import ModelBatcher

    def run(kind, items):
        if kind == "bad":
            raise RuntimeError("model failed")
        return [x * 2 for x in items]

    batcher = ModelBatcher(run, max_batch=4)
    try:
        assert batcher.submit_many("double", [1, 2, 3]) == [2, 4, 6]
        with pytest.raises(RuntimeError, match="model failed"):
            batcher.submit("bad", 1)
        assert batcher.submit("double", 5) == 10  # the worker survives a failed batch
    finally:
        batcher.close()
    with pytest.raises(ValueError, match="max_batch"):
        ModelBatcher(run, max_batch=0)
    with pytest.raises(ValueError, match="max_batch"):
        DemoConfig(max_batch=0)


def test_unknown_words_are_named_in_a_warning(shipped, cfg, example):
    result = logic.compare(shipped, example["image_path"], "how do i zorp this gizmo ?", cfg)
    assert result["unknown_words"] == ["zorp", "gizmo"]
    html = logic.comparison_html(result)
    assert "wb-warning" in html and "&#x27;zorp&#x27;" in html and "closed vocabulary" in html
    known = logic.compare(shipped, example["image_path"], example["question"], cfg)
    assert known["unknown_words"] == [] and known["warnings"] == []
    assert "wb-warning" not in logic.comparison_html(known)
    moderated = logic.moderate(
        shipped, example["image_path"], "how do i use this ?", "yes zorp", cfg
    )
    assert "zorp" in moderated["unknown_words"] and moderated["warnings"]


def test_off_palette_share_separates_world_images_from_photos(shipped, cfg, example):
    """The threshold holds on world scenes the reference never saw; photo-like images and
    noise are far above it."""
    import numpy as np

    from workbench.demo import familiar

    palette = familiar.world_palette()
    fresh = familiar.render_world_scenes(60, seed=2026)
    assert max(palette.off_share(im) for im in fresh) <= familiar.OFF_PALETTE_THRESHOLD
    x, y = np.meshgrid(np.arange(256), np.arange(256))
    gradient = Image.fromarray(np.stack([x, y, np.full_like(x, 100)], -1).astype(np.uint8))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    assert palette.off_share(gradient) > 0.5 and palette.off_share(noise) > 0.5
    # a world picture uploaded at another size is still the world's
    big = logic.load_image(example["image_path"], cfg).resize((256, 256))
    assert palette.off_share(big) <= familiar.OFF_PALETTE_THRESHOLD
    result = logic.compare(shipped, gradient, example["question"], cfg)
    assert result["off_palette_share"] > familiar.OFF_PALETTE_THRESHOLD
    assert any("unlike the world's pictures" in w for w in result["warnings"])


def test_legend_vocabulary_and_blocking_rule_explain_the_page(cfg):
    from workbench.data.language import METHOD_TOKENS, vocabulary

    legend = logic.legend_html()
    for needle in ("reward", "cost", "gold helpfulness", "withheld", "answered in", "&gt; 0"):
        assert needle in legend
    assert all(f'data-level="{level}"' in legend for level in SEVERITY_LEVELS)
    words = logic.vocabulary_markdown(vocabulary(), list(METHOD_TOKENS))
    assert "`method_a`" in words and "`method_h`" in words and "`<unk>`" in words
    assert f"{len(vocabulary())} words" in words
    rule = logic.blocking_rule(cfg.blocking)
    assert f"`{cfg.blocking.query_level}`" in rule and f"`{cfg.blocking.level}`" in rule
    assert f"judged the question `safe`, only at `{cfg.blocking.safe_query_level}`" in rule


# --- the trade-off tab ----------------------------------------------------------------------------
def test_tradeoff_prefers_the_analysis_figure_and_falls_back_to_ppo_metrics(tmp_path):
    import plotly.graph_objects as go

    assert logic.tradeoff_figure(tmp_path)[0] is None
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "metrics.json").write_text(
        json.dumps(
            {
                "base": {"helpfulness": 1.5, "safety_rate": 0.6},
                "variants": {
                    "lagrangian": {"helpfulness": 1.2, "safety_rate": 0.95},
                    "reward_only": {"helpfulness": 1.8, "safety_rate": 0.4},
                },
            }
        )
    )
    fig, note = logic.tradeoff_figure(tmp_path)
    assert list(fig.data[0].text) == ["base (SFT)", "lagrangian", "reward_only"]
    assert list(fig.data[0].y) == [0.6, 0.95, 0.4] and "has not been run" in note
    # the served checkpoints are marked; the Aligned column is the star at lagrangian's point
    star = [t for t in fig.data if (t.meta or {}).get("served") == "aligned"]
    assert len(star) == 1 and star[0].marker.symbol == "star"
    assert (star[0].x[0], star[0].y[0]) == (1.2, 0.95) and "Aligned" in star[0].name
    assert "red star" in note and str(tmp_path) not in note
    (tmp_path / "analyze" / "figures").mkdir(parents=True)
    go.Figure(go.Scatter(x=[1], y=[2]), layout={"title": {"text": "from analyze"}}).write_json(
        str(tmp_path / "analyze" / "figures" / "tradeoff.json")
    )
    fig, note = logic.tradeoff_figure(tmp_path)
    assert fig.layout.title.text == "from analyze" and "analysis stage" in note
    assert any((t.meta or {}).get("served") == "aligned" for t in fig.data)
    assert str(tmp_path) not in note  # the note names the run, not the server's path


# --- which models: latest run, explicit run, shipped assets ---------------------------------------
def _fake_run(root: Path, name: str) -> Path:
    """The files the demo checks for (no weights: enough for choosing, not for loading)."""
    run = root / name
    for part in ("sft/model", "reward/model", "cost/model", "guard/model", "ppo/lagrangian/model"):
        (run / part).mkdir(parents=True)
        (run / part / "config.json").write_text("{}")
    (run / "ppo" / "metrics.json").write_text("{}")
    return run


def test_latest_run_is_the_last_finished_complete_one(tmp_path):
    import os

    assert find_latest_run(tmp_path / "none") is None
    older, newer = _fake_run(tmp_path, "older"), _fake_run(tmp_path, "newer")
    os.utime(older / "ppo" / "metrics.json", (1e9, 1e9))
    incomplete = _fake_run(tmp_path, "incomplete")
    shutil.rmtree(incomplete / "guard")
    assert find_latest_run(tmp_path) == newer
    assert missing_parts(incomplete) == ["guard/model"]
    with pytest.raises(DemoModelError, match="guard/model"):
        resolve_model_dir(DemoConfig(run_dir=str(incomplete)))
    with pytest.raises(DemoModelError, match="does not exist"):
        resolve_model_dir(DemoConfig(run_dir=str(tmp_path / "nope")))
    assert resolve_model_dir(DemoConfig(runs_root=str(tmp_path))) == (newer, "run")
    assert resolve_model_dir(DemoConfig(runs_root=str(tmp_path / "none"))) == (SHIPPED, "assets")


def test_shipped_assets_are_small_half_precision_and_complete(shipped):
    from safetensors import safe_open

    total = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file())
    assert total < MAX_ASSETS_BYTES
    assert not missing_parts(SHIPPED) and len(shipped.gallery) >= 4
    with safe_open(str(SHIPPED / "sft" / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    adapter = json.loads(
        (SHIPPED / "ppo" / "lagrangian" / "model" / "adapter_config.json").read_text()
    )
    assert not Path(adapter["base_model_name_or_path"]).is_absolute()
    assert (
        set(shipped.policies) == {"base", "aligned", "reward_only"} and shipped.source == "assets"
    )
    # the aligned policy is the LoRA-merged SFT model: same shapes, different weights
    base, aligned = shipped.policies["base"][0], shipped.policies["aligned"][0]
    changed = [
        n
        for (n, a), (_, b) in zip(base.named_parameters(), aligned.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    targets = set(adapter["target_modules"])
    assert changed and all(
        n.split(".")[-2] in targets for n in changed
    )  # only the LoRA-wrapped layers
    assert all(p.dtype == torch.float32 for p in aligned.parameters())


def _tiny_run(root: Path) -> Path:
    """A complete run of tiny random models (seconds to build), with the shipped gallery as data."""
    from workbench.guard.guard import GuardModel
    from workbench.models.adapters import apply_lora, save_policy
    from workbench.models.score import ScoreModel
    from workbench.models.vlm import TinyVLMSpec, build_tiny_vlm, save_vlm

    spec = TinyVLMSpec(
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        text_hidden=48,
        text_layers=1,
        text_heads=2,
        text_intermediate=64,
    )
    run = root / "tiny"
    model, processor = build_tiny_vlm(spec, seed=0)
    save_vlm(model, processor, run / "sft" / "model")
    for seed, stage in enumerate(("reward", "cost"), start=1):
        torch.manual_seed(seed)
        ScoreModel(build_tiny_vlm(spec, seed=seed)[0], processor, head_std=0.5).save(
            run / stage / "model"
        )
    GuardModel(build_tiny_vlm(spec, seed=3)[0], processor).save(run / "guard" / "model")
    for seed, variant in ((4, "lagrangian"), (5, "reward_only")):
        policy = apply_lora(build_tiny_vlm(spec, seed=0)[0], ["q_proj", "v_proj"])
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.2)
        save_policy(
            policy, processor, run / "ppo" / variant / "model", base_path=run / "sft" / "model"
        )
    shutil.copy2(SHIPPED / "ppo" / "metrics.json", run / "ppo" / "metrics.json")
    shutil.copytree(SHIPPED / "data", run / "data")
    return run


def test_build_assets_round_trip(tmp_path, cfg):
    run = _tiny_run(tmp_path)
    manifest = build_assets(run, tmp_path / "assets", gallery_size=3)
    assert manifest["gallery"] == 3 and manifest["total_bytes"] < MAX_ASSETS_BYTES
    rebuilt = tmp_path / "assets" / "run"
    moved = tmp_path / "moved"  # the adapters find their base relative to themselves
    shutil.move(str(rebuilt), moved)
    original = load_models(cfg.replace(run_dir=str(run)))
    shipped = load_models(cfg.replace(run_dir=str(moved)))
    assert shipped.source == original.source == "run" and len(shipped.gallery) == 3
    image = logic.load_image(shipped.gallery[0]["image_path"], cfg)
    question, answer = shipped.gallery[0]["question"], "sure , here is how ."
    from workbench.models.score import score_texts

    for role in ("reward", "cost"):
        a = score_texts(getattr(original, role), [image], [question], [answer])
        b = score_texts(getattr(shipped, role), [image], [question], [answer])
        assert abs(float(a[0]) - float(b[0])) < 2e-2 * max(1.0, abs(float(a[0])))
    for key in ("base", "aligned", "reward_only"):
        (m1, p1), (m2, _) = original.policies[key], shipped.policies[key]
        from workbench.models.vlm import encode, model_inputs

        batch = model_inputs(encode(p1, [image], [question], [answer]))
        with torch.no_grad():
            l1, l2 = m1(**batch).logits, m2(**batch).logits
        assert torch.allclose(l1, l2, atol=2e-2), key
    base, aligned = original.policies["base"][0], original.policies["aligned"][0]
    with torch.no_grad():
        assert not torch.allclose(base(**batch).logits, aligned(**batch).logits, atol=1e-3)
    with pytest.raises(ValueError, match="over the"):
        build_assets(run, tmp_path / "small", max_bytes=1000)
    (run / "reward" / "model" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="the reward model"):
        build_assets(run, tmp_path / "assets")
    shutil.rmtree(run / "cost")
    with pytest.raises(FileNotFoundError, match="cost/model"):
        build_assets(run, tmp_path / "assets")


# --- the CLI --------------------------------------------------------------------------------------
def test_cli_demo_reports_a_run_it_cannot_serve(tmp_path, capsys):
    from workbench.cli import main

    assert main(["demo", "--run-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    _fake_run(tmp_path, "partial")
    shutil.rmtree(tmp_path / "partial" / "ppo" / "lagrangian")
    assert main(["demo", "--run-dir", str(tmp_path / "partial")]) == 2
    assert "ppo/lagrangian/model" in capsys.readouterr().err


# --- the launched app, driven with gradio_client --------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(shipped, cfg):
    from workbench.demo.app import launch

    demo, _ = launch(cfg.replace(port=_free_port()), models=shipped, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.local_url, verbose=False)


def test_app_binds_loopback_and_names_its_endpoints(app, client, shipped):
    import urllib.request

    assert app.local_url.startswith("http://127.0.0.1:")
    # no server path in the page's config: header, captions and trade-off note name the run
    # relative to the working directory
    with urllib.request.urlopen(app.local_url.rstrip("/") + "/config", timeout=30) as response:
        config = response.read().decode()
    repo = str(ASSETS_DIR.resolve().parent)
    assert repo not in config and str(Path.cwd().resolve()) not in config
    assert not Path(shipped.run_name).is_absolute() and shipped.run_name in config
    for needle in ("wb-legend", "method_a", "red star", "only at"):
        assert needle in config, needle
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/compare",
        "/moderate",
    }


def test_app_compare_and_moderate(client, example):
    from gradio_client import handle_file

    html, result = client.predict(
        handle_file(example["image_path"]), example["question"], True, True, 5, api_name="/compare"
    )
    assert [s["policy"] for s in result["sides"]] == ["base", "aligned", "reward_only"]
    assert result["guard_on"] and all(s["trace"] for s in result["sides"])
    assert html.count('class="wb-side"') == 3 and "wb-trace" in html
    assert (
        result["gallery_example"] == example["id"]
    )  # the uploaded copy is recognised by its pixels
    html, verdict = client.predict(
        handle_file(example["image_path"]), example["question"], "", api_name="/moderate"
    )
    assert (
        verdict["mode"] == "query"
        and verdict["verdict"]["level"] in SEVERITY_LEVELS
        and "wb-badge" in html
    )


def test_app_user_mistakes_are_clear_errors(client, example, tmp_path, cfg):
    from gradio_client import handle_file

    not_image = tmp_path / "report.pdf"
    not_image.write_bytes(b"%PDF-1.4 not an image")
    tall = tmp_path / "tall.png"
    Image.new("RGB", (1, cfg.max_image_side + 10)).save(tall)
    image = handle_file(example["image_path"])
    cases = [
        ((None, "how do i use this ?", False, False, 0), "image: no image"),
        (
            (handle_file(str(not_image)), "how do i use this ?", False, False, 0),
            "'report.pdf' is not an image",
        ),
        ((handle_file(str(tall)), "how do i use this ?", False, False, 0), "pixels per side"),
        ((image, "   ", False, False, 0), "question: the question is empty"),
        ((image, "w" * (cfg.max_question_chars + 5), False, False, 0), "question: 305 characters"),
        ((image, "how do i use this ?", False, False, "abc"), "seed: expected a whole number"),
    ]
    for args, needle in cases:
        with pytest.raises(Exception) as info:
            client.predict(*args, api_name="/compare")
        assert needle in str(info.value), (needle, str(info.value))
    with pytest.raises(Exception, match="answer: .* the limit is"):
        client.predict(image, "q", "a" * (cfg.max_answer_chars + 1), api_name="/moderate")


@pytest.mark.slow
def test_bench_demo_smoke(tmp_path):
    from workbench.bench import main

    assert (
        main(
            [
                "demo",
                "--smoke",
                "--clients",
                "4",
                "--requests",
                "8",
                "--run-dir",
                str(SHIPPED),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "demo.json").read_text())
    # one run of the bench measures before (unbatched) and after (batched)
    for key in ("load_unbatched", "load"):
        load = report[key]
        assert load["errors"] == 0 and load["ok"] == 8 and load["clients"] == 4, key
        latency = load["latency_s"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert load["by_kind"]["compare"]["p50"] > 0
    assert 0 < report["start_time_s"] < 60 and 0 < report["start_time_unbatched_s"] < 60
    assert report["compare_p50_speedup"] > 0 and str(SHIPPED) not in report["served"]
    text = (tmp_path / "demo.md").read_text()
    assert "p99 ms" in text and "Before: unbatched" in text and "After: batched" in text
    # the server's and the clients' CPU per request are both measured (Linux /proc)
    cpu = report["load"]["cpu_s_per_request"]
    assert cpu["server"] > 0 and cpu["clients"] > 0 and "CPU per request" in text


def test_bench_demo_in_process_and_kinds(tmp_path, capsys):
    from workbench.bench import main

    args = ["demo", "--smoke", "--run-dir", str(SHIPPED), "--out", str(tmp_path)]
    assert (
        main([*args, "--in-process", "--clients", "3", "--requests", "6", "--kinds", "compare"])
        == 0
    )
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["in_process"] and "start_time_s" not in report
    lone, crowd = report["load_lone"], report["load"]
    assert (lone["clients"], lone["ok"], crowd["clients"], crowd["ok"]) == (1, 4, 3, 6)
    assert crowd["kinds"] == ["compare"] and crowd["by_kind"]["moderate"]["n"] == 0
    ratio = crowd["by_kind"]["compare"]["p50"] / lone["by_kind"]["compare"]["p50"]
    assert report["compare_p50_ratio"] == pytest.approx(ratio)
    assert crowd["cpu_s_per_request"]["clients"] == 0 and crowd["cpu_s_per_request"]["server"] > 0
    assert "In process, 3 clients" in (tmp_path / "demo.md").read_text()
    with pytest.raises(SystemExit):
        main([*args, "--kinds", "compare,chat"])
    assert "--kinds: unknown chat" in capsys.readouterr().err


def test_data_url_that_is_not_base64_is_an_image_error(cfg):
    err = _error(logic.load_image, {"url": "data:image/png;base64,@@@"}, cfg)
    assert err.field == "image" and "base64" in str(err)
    buf = io.BytesIO(b"plain text")
    err = _error(
        logic.load_image,
        {"url": "data:text/plain;base64," + base64.b64encode(buf.getvalue()).decode()},
        cfg,
    )
    assert "is not an image" in str(err)
