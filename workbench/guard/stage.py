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

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import GuardConfig
from ..data.schema import NO_CATEGORY, SEVERITY_LEVELS
from ..data.store import load_data
from ..eval.judge import GoldJudge, has_gold
from ..models.adapters import load_policy
from ..models.score import HEAD_FILE
from ..models.vlm import count_parameters, generate
from ..runs import write_jsonl
from ..train.common import (
    ImageCache,
    batches,
    chunks,
    optimizer_and_schedule,
    optimizer_step,
    setup,
    starting_model,
)
from .guard import (
    LABELS,
    GuardExample,
    GuardModel,
    calibrate_severe_cutoff,
    classification_metrics,
    decide_levels,
    gold_answer_level,
    guard_examples,
)
from .regenerate import filter_and_regenerate


def initial_backbone(cfg: GuardConfig, run_dir: Path) -> Path | None:
    """The run's cost model, else its SFT model (``None`` when ``cfg.policy`` is given)."""
    if cfg.policy:
        return None
    for stage in ("cost", "sft"):
        path = run_dir / stage / "model"
        if path.is_dir():
            return path
    raise FileNotFoundError(f"the guard starts from the cost (or SFT) model and {run_dir}/cost/model does not exist; "
                            f"run: python -m workbench cost --run-dir {run_dir} (or pass --policy DIR)")


def _length(example: GuardExample) -> int:
    return len(example.record["question"].split()) + len((example.response or "").split())


def _encode(model: GuardModel, images: ImageCache, examples) -> dict[str, torch.Tensor]:
    return model.encode([images(e.record) for e in examples], [e.record["question"] for e in examples],
                        [e.response for e in examples])


def train_guard(model: GuardModel, examples: list[GuardExample], images: ImageCache, cfg: GuardConfig,
                progress: bool, seen: set[int] | None = None) -> list[float]:
    """``cfg.max_steps`` AdamW steps of the ordinal + category loss; returns the losses.
    ``seen`` collects the positions in ``examples`` of those it trained on."""
    position = {id(e): i for i, e in enumerate(examples)}
    opt, sched = optimizer_and_schedule(model, cfg, lr_multipliers={
        "head.": cfg.head_lr_multiplier, "category_head.": cfg.head_lr_multiplier,
        "image_head.": cfg.head_lr_multiplier, "raw_thresholds": cfg.head_lr_multiplier})
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
        loss, sev, cat = model.loss(_encode(model, images, chunk), levels, categories, cfg.category_weight,
                                    image_levels, cfg.image_weight)
        loss.backward()
        optimizer_step(model.parameters(), opt, sched)
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", sev=f"{float(sev.detach()):.3f}",
                            cat=f"{float(cat.detach()):.3f}")
    return losses


def evaluate_guard(model: GuardModel, records: list[dict[str, Any]], images: ImageCache, batch_size: int,
                   blocking_level: str = "minor") -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
        pred = model.predict([images(e.record) for e in examples], [e.record["question"] for e in examples],
                             [e.response for e in examples], batch_size)
        true = np.array([e.level for e in examples])
        m = classification_metrics(true, pred["level"], SEVERITY_LEVELS)
        unsafe = true > 0
        m["unsafe_recall"] = float((pred["level"][unsafe] > 0).mean()) if unsafe.any() else float("nan")
        m["unsafe_precision"] = float((true[pred["level"] > 0] > 0).mean()) if (pred["level"] > 0).any() else 0.0
        # category recall over the truly unsafe items: the best non-"none" class
        best = pred["category_probs"][:, 1:].argmax(-1) + 1
        cats = np.array([e.category for e in examples])
        m["per_category_recall"] = {LABELS[c]: float((best[cats == c] == c).mean())
                                    for c in sorted(set(cats[unsafe].tolist()))}
        m["category_accuracy"] = float((best[unsafe] == cats[unsafe]).mean()) if unsafe.any() else float("nan")
        block = SEVERITY_LEVELS.index(blocking_level)
        m["blocked_by_level"] = {lvl: float((pred["level"][true == j] >= block).mean())
                                 for j, lvl in enumerate(SEVERITY_LEVELS) if (true == j).any()}
        if mode == "answer" and has_gold(records) and all("response_1_gold_harmlessness" in r for r in records):
            gold = np.array([gold_answer_level(e.record, 1 if e.response == e.record["response_1"] else 2)
                             for e in examples])
            ceiling = classification_metrics(true, gold, SEVERITY_LEVELS)
            m["accuracy_ceiling"] = ceiling["accuracy"]
            m["macro_f1_ceiling"] = ceiling["macro_f1"]
            m["per_level_recall_ceiling"] = {k: v["recall"] for k, v in ceiling["per_level"].items()}
            vs_gold = classification_metrics(gold, pred["level"], SEVERITY_LEVELS)
            m["vs_gold"] = {"accuracy": vs_gold["accuracy"], "macro_f1": vs_gold["macro_f1"],
                            "per_level": vs_gold["per_level"],
                            "blocked_by_level": {lvl: float((pred["level"][gold == j] >= block).mean())
                                                 for j, lvl in enumerate(SEVERITY_LEVELS) if (gold == j).any()}}
        metrics[mode] = m
        for e, lv, probs, cat in zip(examples, pred["level"], pred["level_probs"], best, strict=True):
            rows.append({"id": e.record.get("id"), "mode": mode, "question": e.record["question"],
                         "response": e.response, "true_level": SEVERITY_LEVELS[e.level],
                         "pred_level": SEVERITY_LEVELS[int(lv)], "level_probs": [round(float(p), 4) for p in probs],
                         "true_category": LABELS[e.category],
                         "pred_category": LABELS[int(cat)] if int(lv) else NO_CATEGORY})
    return metrics, rows


def rounds_curve(traces, prompts: list[dict[str, Any]], rounds: int, judge=None) -> dict[str, Any]:
    """Gold-judged safety rate and helpfulness of the answer served after each round 0..R."""
    judge = judge or GoldJudge()
    safety, helpful, helpful_benign = [], [], []
    benign = np.array([int(p.get("prompt_severity", 0)) == 0 for p in prompts])
    for r in range(rounds + 1):
        scores = np.array([judge(p, t.served(r)) for p, t in zip(prompts, traces, strict=True)], dtype=float)
        safety.append(float((scores[:, 1] > 0).mean()))
        helpful.append(float(scores[:, 0].mean()))
        helpful_benign.append(float(scores[benign, 0].mean()) if benign.any() else float("nan"))
    return {"rounds_safety_rate": safety, "rounds_helpfulness": helpful, "rounds_helpfulness_benign": helpful_benign}


def calibrate_answers(model: GuardModel, held_out: list[GuardExample], images: ImageCache,
                      cfg: GuardConfig) -> dict[str, Any]:
    """Set the model's answer cut-off on P(severe) so that ``cfg.severe_recall_target`` of the
    severe answers among ``held_out`` (examples it did not train on) are predicted severe;
    returns what was found."""
    severe = len(SEVERITY_LEVELS) - 1
    examples = [e for e in held_out if e.response is not None and e.level == severe]
    if not examples:
        return {"n_severe": 0, "cutoff": model.severe_cutoff,
                "note": f"no held-out severe answers: severe_cutoff {cfg.severe_cutoff} kept"}
    pred = model.predict([images(e.record) for e in examples], [e.record["question"] for e in examples],
                         [e.response for e in examples], cfg.eval_batch_size)
    p_severe = pred["level_probs"][:, -1]
    model.severe_cutoff = calibrate_severe_cutoff(p_severe, cfg.severe_recall_target)
    return {"n_severe": len(examples), "target_recall": cfg.severe_recall_target, "cutoff": model.severe_cutoff,
            "recall": float((p_severe > model.severe_cutoff).mean())}


def run_guard_stage(cfg: GuardConfig, out_dir: Path, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    setup(cfg)
    data = load_data(run_dir)
    if not data.train:
        raise ValueError(f"the data stage in {run_dir} has no training pairs")
    images = ImageCache(data)
    init = initial_backbone(cfg, run_dir)
    backbone, processor = starting_model(cfg, init)
    model = GuardModel(backbone, processor, severe_cutoff=cfg.severe_cutoff)
    if init is not None and (init / HEAD_FILE).is_file():  # the cost head seeds the severity head
        from safetensors.torch import load_file

        with torch.no_grad():
            model.head.weight.copy_(load_file(str(init / HEAD_FILE))["weight"].to(model.head.weight.dtype))

    examples, seen = guard_examples(data.train), set()
    start = time.perf_counter()
    losses = train_guard(model, examples, images, cfg, progress, seen)
    train_time = time.perf_counter() - start
    model.severe_cutoff = model.query_severe_cutoff = cfg.severe_cutoff
    calibrated = {}
    if cfg.severe_recall_target > 0:  # on the training answers the guard never trained on
        calibrated = calibrate_answers(model, [e for i, e in enumerate(examples) if i not in seen], images, cfg)
    model.save(out_dir / "model")

    evaluated, rows = evaluate_guard(model, data.eval, images, cfg.eval_batch_size, cfg.blocking_level)
    write_jsonl(out_dir / "eval_predictions.jsonl", rows)
    answer = evaluated.get("answer", {})
    metrics: dict[str, Any] = {
        "accuracy": answer.get("accuracy"), "macro_f1": answer.get("macro_f1"),
        "per_level": {k: {"precision": v["precision"], "recall": v["recall"]}
                      for k, v in answer.get("per_level", {}).items()},
        **{k: answer[k] for k in ("accuracy_ceiling", "macro_f1_ceiling") if k in answer},
        "severe_recall": answer.get("per_level", {}).get("severe", {}).get("recall"),
        "severe_recall_ceiling": answer.get("per_level_recall_ceiling", {}).get("severe"),
        "severe_blocked": answer.get("blocked_by_level", {}).get("severe"),
        "answer": answer, "query": evaluated.get("query", {}),
        "steps": cfg.max_steps, "train_loss_first": float(np.mean(losses[:20])),
        "train_loss_last": float(np.mean(losses[-20:])), "train_time_s": round(train_time, 2),
        "init": str(cfg.policy or init), "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "answer_severe_cutoff": model.severe_cutoff, "query_severe_cutoff": model.query_severe_cutoff,
        "calibration": calibrated,
    }
    if calibrated.get("n_severe"):  # the same answers at the plain cut-off, for comparison
        ans = [r for r in rows if r["mode"] == "answer"]
        plain = decide_levels(torch.tensor([r["level_probs"] for r in ans]), cfg.severe_cutoff).numpy()
        u = classification_metrics([SEVERITY_LEVELS.index(r["true_level"]) for r in ans], plain, SEVERITY_LEVELS)
        metrics["at_severe_cutoff"] = {"severe_cutoff": cfg.severe_cutoff, "accuracy": u["accuracy"],
                                       "macro_f1": u["macro_f1"], "severe_recall": u["per_level"]["severe"]["recall"]}

    # five rounds of filter-and-regenerate on the base (SFT) policy
    policy_path = run_dir / "sft" / "model"
    prompts = data.test[: cfg.n_eval_prompts]
    if policy_path.is_dir() and prompts:
        t0 = time.perf_counter()
        policy, policy_processor = load_policy(policy_path)
        policy.eval()
        torch.manual_seed(cfg.seed)

        def sample(pics, questions):
            out: list[str] = []
            for i in range(0, len(questions), cfg.eval_batch_size):
                out += generate(policy, policy_processor, pics[i: i + cfg.eval_batch_size],
                                questions[i: i + cfg.eval_batch_size], max_new_tokens=cfg.max_new_tokens)
            return out

        pics, questions = [images(p) for p in prompts], [p["question"] for p in prompts]
        base = sample(pics, questions)  # round 0: the base policy, scored for every prompt
        traces = []
        for idx in tqdm(list(chunks(list(range(len(prompts))), 120)), desc="guard: filter and regenerate",
                        disable=not progress, leave=False):
            traces += filter_and_regenerate(sample, model.judge, [pics[i] for i in idx], [questions[i] for i in idx],
                                            rounds=cfg.rounds, blocking_level=cfg.blocking_level,
                                            query_blocking_level=cfg.query_blocking_level,
                                            safe_query_blocking_level=cfg.safe_query_blocking_level or None,
                                            initial=[base[i] for i in idx])
        outcomes = Counter(t.outcome for t in traces)
        metrics.update({"n_prompts": len(prompts), "rounds": cfg.rounds,
                        "regenerations": int(sum(t.regenerations for t in traces)),
                        "regenerations_per_prompt": float(np.mean([t.regenerations for t in traces])),
                        "outcomes": dict(sorted(outcomes.items()))})
        trace_rows = [t.to_dict() | {"id": p.get("id"), "intent": p.get("intent")} for p, t in zip(prompts, traces,
                                                                                                   strict=True)]
        if has_gold(prompts):
            curve = rounds_curve(traces, prompts, cfg.rounds)
            metrics.update(curve)
            r = curve["rounds_safety_rate"]
            metrics["relative_safety_gain"] = (r[-1] - r[0]) / r[0] if r[0] else float("nan")
            judge = GoldJudge()
            for row, p, t in zip(trace_rows, prompts, traces, strict=True):
                row["gold_first"] = judge(p, t.served(0))
                row["gold_final"] = judge(p, t.final)
        metrics["rounds_time_s"] = round(time.perf_counter() - t0, 2)
        write_jsonl(out_dir / "traces.jsonl", trace_rows)
    return metrics


__all__ = ["run_guard_stage", "train_guard", "evaluate_guard", "calibrate_answers", "rounds_curve", "initial_backbone"]
