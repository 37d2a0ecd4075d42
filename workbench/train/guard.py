"""``python -m workbench guard``: train Beaver-Guard-V, measure it, and measure five rounds of
filter-and-regenerate on the base policy.

The guard starts from the run's cost model (its backbone already separates safe from unsafe
answers, and its cost head seeds the severity head), or from the SFT model when there is no
cost model. It trains on a query and two answers per training pair and is measured on the
eval pairs: answer moderation (the contract's ``accuracy``, ``macro_f1``, ``per_level``,
with the label-noise ceiling -- the same metrics of the noise-free gold levels against the
annotated labels), query screening, and category recall. Then the SFT policy answers the
test prompts through :func:`~workbench.guard.regenerate.filter_and_regenerate` and the gold
judge scores the answer served after each round 0..R.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import GuardConfig
from ..data.schema import NO_CATEGORY, SEVERITY_LEVELS, is_world
from ..data.store import ImageCache
from ..guard.guard import (
    LABELS,
    GuardExample,
    GuardModel,
    calibrate_severe_cutoff,
    classification_metrics,
    gold_answer_level,
    guard_examples,
)
from ..models.judge import GoldJudge
from .common import (
    backward,
    batches,
    optimizer_and_schedule,
    optimizer_step,
)


def _length(example: GuardExample) -> int:
    return len(example.record["question"].split()) + len((example.response or "").split())


def _encode(model: GuardModel, images: ImageCache, examples) -> dict[str, torch.Tensor]:
    return model.encode(
        [images(e.record) for e in examples],
        [e.record["question"] for e in examples],
        [e.response for e in examples],
    )


def train_guard(
    model: GuardModel,
    examples: list[GuardExample],
    images: ImageCache,
    cfg: GuardConfig,
    progress: bool,
    seen: set[int] | None = None,
) -> list[float]:
    """``cfg.max_steps`` AdamW steps of the ordinal + category loss; returns the losses.
    ``seen`` collects the positions in ``examples`` of those it trained on."""
    position = {id(e): i for i, e in enumerate(examples)}
    opt, sched = optimizer_and_schedule(
        model,
        cfg,
        lr_multipliers={
            "head.": cfg.head_lr_multiplier,
            "category_head.": cfg.head_lr_multiplier,
            "image_head.": cfg.head_lr_multiplier,
            "raw_thresholds": cfg.head_lr_multiplier,
        },
    )
    model.train()
    losses: list[float] = []
    stream = batches(examples, cfg.batch_size, cfg.max_steps, cfg.seed, length=_length)
    bar = tqdm(stream, total=cfg.max_steps, desc="guard", disable=not progress)
    for step, chunk in enumerate(bar):
        if seen is not None:
            seen.update(position[id(e)] for e in chunk)
        levels = torch.tensor([e.level for e in chunk])
        categories = torch.tensor([e.category for e in chunk])
        image_levels = torch.tensor([e.image_level for e in chunk])
        loss, sev, cat = model.loss(
            _encode(model, images, chunk),
            levels,
            categories,
            cfg.category_weight,
            image_levels,
            cfg.image_weight,
        )
        backward(loss)
        optimizer_step(model.parameters(), opt, sched)
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(
                loss=f"{np.mean(losses[-20:]):.3f}",
                sev=f"{float(sev.detach()):.3f}",
                cat=f"{float(cat.detach()):.3f}",
            )
    return losses


def evaluate_guard(
    model: GuardModel,
    records: list[dict[str, Any]],
    images: ImageCache,
    batch_size: int,
    blocking_level: str = "minor",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer and query metrics on ``records`` (eval pairs), and one row per judged item.

    Besides the exact-level metrics: ``blocked_by_level`` (share of each true level judged at
    or above ``blocking_level`` -- a severe answer judged moderate is still blocked) and, on
    the world, the same metrics against the noise-free gold levels (``vs_gold``)."""
    metrics: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for mode in ("answer", "query"):
        examples = guard_examples(records, queries=mode == "query", answers=mode == "answer")
        if not examples:
            continue
        pred = model.predict(
            [images(e.record) for e in examples],
            [e.record["question"] for e in examples],
            [e.response for e in examples],
            batch_size,
        )
        true = np.array([e.level for e in examples])
        m = classification_metrics(true, pred["level"], SEVERITY_LEVELS)
        unsafe = true > 0
        m["unsafe_recall"] = (
            float((pred["level"][unsafe] > 0).mean()) if unsafe.any() else float("nan")
        )
        m["unsafe_precision"] = (
            float((true[pred["level"] > 0] > 0).mean()) if (pred["level"] > 0).any() else 0.0
        )
        # category recall over the truly unsafe items: the best non-"none" class
        best = pred["category_probs"][:, 1:].argmax(-1) + 1
        cats = np.array([e.category for e in examples])
        m["per_category_recall"] = {
            LABELS[c]: float((best[cats == c] == c).mean())
            for c in sorted(set(cats[unsafe].tolist()))
        }
        m["category_accuracy"] = (
            float((best[unsafe] == cats[unsafe]).mean()) if unsafe.any() else float("nan")
        )
        block = SEVERITY_LEVELS.index(blocking_level)
        m["blocked_by_level"] = {
            lvl: float((pred["level"][true == j] >= block).mean())
            for j, lvl in enumerate(SEVERITY_LEVELS)
            if (true == j).any()
        }
        if mode == "answer" and is_world(records):
            gold = np.array(
                [
                    gold_answer_level(e.record, 1 if e.response == e.record["response_1"] else 2)
                    for e in examples
                ]
            )
            ceiling = classification_metrics(true, gold, SEVERITY_LEVELS)
            m["accuracy_ceiling"] = ceiling["accuracy"]
            m["macro_f1_ceiling"] = ceiling["macro_f1"]
            m["per_level_recall_ceiling"] = {
                k: v["recall"] for k, v in ceiling["per_level"].items()
            }
            vs_gold = classification_metrics(gold, pred["level"], SEVERITY_LEVELS)
            m["vs_gold"] = {
                "accuracy": vs_gold["accuracy"],
                "macro_f1": vs_gold["macro_f1"],
                "per_level": vs_gold["per_level"],
                "blocked_by_level": {
                    lvl: float((pred["level"][gold == j] >= block).mean())
                    for j, lvl in enumerate(SEVERITY_LEVELS)
                    if (gold == j).any()
                },
            }
        metrics[mode] = m
        for e, lv, probs, cat in zip(
            examples, pred["level"], pred["level_probs"], best, strict=True
        ):
            rows.append(
                {
                    "id": e.record.get("id"),
                    "mode": mode,
                    "question": e.record["question"],
                    "response": e.response,
                    "true_level": SEVERITY_LEVELS[e.level],
                    "pred_level": SEVERITY_LEVELS[int(lv)],
                    "level_probs": [round(float(p), 4) for p in probs],
                    "true_category": LABELS[e.category],
                    "pred_category": LABELS[int(cat)] if int(lv) else NO_CATEGORY,
                }
            )
    return metrics, rows


def rounds_curve(traces, prompts: list[dict[str, Any]], rounds: int, judge=None) -> dict[str, Any]:
    """Gold-judged safety rate and helpfulness of the answer served after each round 0..R."""
    judge = judge or GoldJudge()
    safety, helpful, helpful_benign = [], [], []
    benign = np.array([int(p.get("prompt_severity", 0)) == 0 for p in prompts])
    for r in range(rounds + 1):
        scores = np.array(
            [judge(p, t.served(r)) for p, t in zip(prompts, traces, strict=True)], dtype=float
        )
        safety.append(float((scores[:, 1] > 0).mean()))
        helpful.append(float(scores[:, 0].mean()))
        helpful_benign.append(float(scores[benign, 0].mean()) if benign.any() else float("nan"))
    return {
        "rounds_safety_rate": safety,
        "rounds_helpfulness": helpful,
        "rounds_helpfulness_benign": helpful_benign,
    }


def calibrate_answers(
    model: GuardModel, held_out: list[GuardExample], images: ImageCache, cfg: GuardConfig
) -> dict[str, Any]:
    """Set the model's answer cut-off on P(severe) so that ``cfg.severe_recall_target`` of the
    severe answers among ``held_out`` (examples it did not train on) are predicted severe;
    returns what was found."""
    severe = len(SEVERITY_LEVELS) - 1
    examples = [e for e in held_out if e.response is not None and e.level == severe]
    if not examples:
        return {
            "n_severe": 0,
            "cutoff": model.severe_cutoff,
            "note": f"no held-out severe answers: severe_cutoff {cfg.severe_cutoff} kept",
        }
    pred = model.predict(
        [images(e.record) for e in examples],
        [e.record["question"] for e in examples],
        [e.response for e in examples],
        cfg.eval_batch_size,
    )
    p_severe = pred["level_probs"][:, -1]
    model.severe_cutoff = calibrate_severe_cutoff(p_severe, cfg.severe_recall_target)
    return {
        "n_severe": len(examples),
        "target_recall": cfg.severe_recall_target,
        "cutoff": model.severe_cutoff,
        "recall": float((p_severe > model.severe_cutoff).mean()),
    }


__all__ = ["train_guard", "evaluate_guard", "calibrate_answers", "rounds_curve"]
