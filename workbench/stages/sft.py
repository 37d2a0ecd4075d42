"""The SFT stage: the base ("precursor") policy imitates the world's demonstrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import SFTConfig
from ..data.store import ImageCache, load_data
from ..models.adapters import save_policy
from ..models.judge import evaluate_policy
from ..models.vlm import count_parameters
from ..runs import write_jsonl
from ..train.common import (
    setup,
    starting_model,
)
from ..train.sft import captions, demonstrations, eval_loss, fit, pretrain_vision
from .base import Stage


def run_sft_stage(
    cfg: SFTConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench sft``: vision pretraining, image alignment, then SFT on the
    world's demonstrations; writes ``model/`` and ``samples.jsonl`` (the base policy's test
    answers, gold-judged)."""
    setup(cfg)
    data = load_data(run_dir)
    images = ImageCache(data)
    model, processor = starting_model(cfg, default_path=None, family=cfg.tiny_family)
    model.train()
    train_demos, eval_demos = demonstrations(data.train), demonstrations(data.eval)
    caption_demos = captions(data.train)
    vision_metrics: dict[str, float] = {}
    if caption_demos and cfg.vision_steps:
        vision_metrics = pretrain_vision(
            model, processor, images, data.train, data.eval, cfg, progress
        )
    if caption_demos and cfg.caption_steps:
        fit(
            model,
            processor,
            images,
            caption_demos,
            cfg.replace(max_steps=cfg.caption_steps),
            "sft: image alignment",
            progress,
        )
    losses = fit(model, processor, images, train_demos, cfg, "sft", progress)
    save_policy(model, processor, out_dir / "model")

    metrics: dict[str, Any] = {
        "eval_loss": eval_loss(model, processor, images, eval_demos, cfg.eval_batch_size),
        "steps": cfg.max_steps,
        "train_loss_first": sum(losses[:10]) / len(losses[:10]),
        "train_loss_last": sum(losses[-10:]) / len(losses[-10:]),
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        **vision_metrics,
    }
    prompts = data.test[: cfg.n_eval_prompts]
    summary, rows = evaluate_policy(
        model,
        processor,
        prompts,
        images,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        progress=progress,
        desc="sft: base policy on test prompts",
    )
    write_jsonl(out_dir / "samples.jsonl", rows)
    if summary:
        metrics["base_helpfulness"] = summary["helpfulness"]
        metrics["base_safety_rate"] = summary["safety_rate"]
        metrics["base_policy"] = summary
    return metrics


STAGE = Stage("sft", SFTConfig, run_sft_stage, reads=("data",))
