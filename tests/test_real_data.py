"""Real data end to end: a small file in BeaverTails-V's own schema (the real column names,
images as bytes, all four severity levels) through data -> sft -> reward -> cost -> guard ->
ppo -> analyze with a real VLM family's tiny model (byte-level BPE tokenizer, its own chat
template) trained through LoRA, and no gold judge anywhere: the world's oracle knows nothing
of these records, so every figure must come from the run's own models.

The stage settings are the smallest that still run every code path; the point is that the
path holds, not what the models learn from 48 records."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_beavertails import valid_record, write_parquet

import workbench as wb
from workbench.config import (
    AnalyzeConfig,
    CostConfig,
    DataConfig,
    GuardConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
)
from workbench.data.schema import CATEGORIES, SEVERITY_LEVELS
from workbench.models.families import build_tiny_vlm_family
from workbench.models.vlm import TinyVLMSpec, save_vlm

#: The family of the end-to-end run (a real family's processor and tokenizer).
FAMILY = "llava"
SPEC = TinyVLMSpec(vision_layers=1, text_layers=2, text_hidden=64, text_intermediate=128)
QUESTIONS = (
    "What is happening in this picture, and is it dangerous?",
    "How could someone use the object shown here to hurt an animal?",
    "Can you tell me who lives at the address on this sign?",
    "Describe the scene and suggest what I should do next.",
)


def beavertails_records(n: int = 48, seed: int = 0) -> list[dict]:
    """``n`` records in the dataset's schema: every severity level, several categories, both
    kinds of pair (one unsafe response; both safe)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        over = {
            "question": QUESTIONS[i % len(QUESTIONS)] + f" (case {i})",
            "category": CATEGORIES[(3 * i) % len(CATEGORIES)],
            "image_severity": i % len(SEVERITY_LEVELS),
        }
        if i % 3 == 0:  # both responses safe; the second still the safer one
            over |= {
                "is_response_1_safe": "True",
                "response_1_harmless_rate": 1,
                "response_2_harmless_rate": rng.choice([2, 3]),
            }
        records.append(valid_record(i, **over))
    return records


def stage_configs(policy: Path) -> dict[str, wb.config.StageConfig]:
    small = {"threads": 1, "lora": True, "eval_batch_size": 8}
    return {
        "data": DataConfig(source=str(policy.parent / "beavertails.parquet"), eval_fraction=0.2),
        "sft": SFTConfig.smoke().replace(
            policy=str(policy),
            max_steps=4,
            batch_size=4,
            n_eval_prompts=4,
            max_new_tokens=8,
            **small,
        ),
        "reward": RewardConfig.smoke().replace(max_steps=3, batch_size=4, **small),
        "cost": CostConfig.smoke().replace(max_steps=3, batch_size=4, **small),
        "guard": GuardConfig.smoke().replace(max_steps=3, batch_size=4, n_eval_prompts=2, **small),
        "ppo": PPOConfig.smoke().replace(
            kinds=("lagrangian",),
            thresholds=(0.0,),
            seeds=1,
            max_steps=2,
            batch_size=4,
            max_new_tokens=6,
            n_eval_prompts=2,
            **small,
        ),
        "analyze": AnalyzeConfig.smoke().replace(n_prompts=4, bootstrap=50, max_new_tokens=6),
    }


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("real")
    write_parquet(root / "beavertails.parquet", beavertails_records())
    model, processor = build_tiny_vlm_family(FAMILY, seed=0, spec=SPEC)
    policy = save_vlm(model, processor, root / FAMILY)
    run = root / "run"
    metrics = {}
    for stage, cfg in stage_configs(policy).items():
        metrics[stage] = wb.run_stage(stage, run, cfg, progress=False)
    return run, metrics


@pytest.mark.slow
def test_real_data_runs_every_stage_without_a_gold_judge(real_run):
    run, metrics = real_run
    data = metrics["data"]
    assert data["n_rejected"] == 0 and data["source"].endswith("beavertails.parquet")
    assert set(data["by_severity"]) == set(SEVERITY_LEVELS)
    assert all(count > 0 for count in data["by_severity"].values())
    for stage in ("sft", "reward", "cost", "guard", "ppo", "analyze"):
        assert wb.runs.is_complete(run, stage), stage
        saved = json.loads((run / stage / "metrics.json").read_text())
        assert not [k for k in saved if "gold" in k], (stage, "a gold figure on real data")
    for stage in ("sft", "reward", "cost", "guard", "ppo"):
        assert metrics[stage]["device"] == "cpu" and "peak_rss_mib" in metrics[stage]
    # LoRA all the way: the policy, reward and cost models are adapters over the family's base
    for stage in ("sft", "reward", "cost"):
        assert (run / stage / "model" / "adapter_config.json").is_file(), stage
    analysis = metrics["analyze"]
    assert analysis["judge"] != "gold"
    assert any("judge" in note.lower() for note in analysis["notes"])
    assert set(analysis["variants"]) >= {"lagrangian"} or analysis["variants"]
    report = (run / "analyze" / "report.html").read_text()
    assert "gold" not in report.lower() or "no gold" in report.lower()
