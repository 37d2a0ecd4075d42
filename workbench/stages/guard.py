"""The guard stage: Beaver-Guard-V trained on the data stage's answers and queries, then five
rounds of filter-and-regenerate on the base policy."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..config import GuardConfig
from ..data.schema import SEVERITY_LEVELS, is_world
from ..data.store import ImageCache, load_data
from ..guard.guard import (
    GuardModel,
    classification_metrics,
    decide_levels,
    guard_examples,
)
from ..guard.regenerate import filter_and_regenerate
from ..models.adapters import load_policy
from ..models.device import place
from ..models.judge import GoldJudge
from ..models.score import HEAD_FILE
from ..models.vlm import count_parameters, generate
from ..runs import write_jsonl
from ..train.common import (
    chunks,
    setup,
    starting_model,
)
from ..train.guard import calibrate_answers, evaluate_guard, rounds_curve, train_guard
from .base import Stage


def initial_backbone(cfg: GuardConfig, run_dir: Path) -> Path | None:
    """The run's cost model, else its SFT model (``None`` when ``cfg.policy`` is given)."""
    if cfg.policy:
        return None
    for stage in ("cost", "sft"):
        path = run_dir / stage / "model"
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"the guard starts from the cost (or SFT) model and {run_dir}/cost/model does not exist; "
        f"run: python -m workbench cost --run-dir {run_dir} (or pass --policy DIR)"
    )


def run_guard_stage(
    cfg: GuardConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench guard``: train the guard from the cost model, calibrate its
    severe cut-off, evaluate it on the eval pairs (``eval_predictions.jsonl``) and run the
    filter-and-regenerate rounds on the base policy (``traces.jsonl``)."""
    setup(cfg)
    data = load_data(run_dir)
    if not data.train:
        raise ValueError(f"the data stage in {run_dir} has no training pairs")
    images = ImageCache(data)
    init = initial_backbone(cfg, run_dir)
    backbone, processor = starting_model(cfg, init)
    model = place(GuardModel(backbone, processor, severe_cutoff=cfg.severe_cutoff))
    if init is not None and (init / HEAD_FILE).is_file():  # the cost head seeds the severity head
        with torch.no_grad():
            model.head.weight.copy_(
                load_file(str(init / HEAD_FILE))["weight"].to(model.head.weight.dtype)
            )

    examples, seen = guard_examples(data.train), set[int]()
    start = time.perf_counter()
    losses = train_guard(model, examples, images, cfg, progress, seen)
    train_time = time.perf_counter() - start
    model.severe_cutoff = model.query_severe_cutoff = cfg.severe_cutoff
    calibrated = {}
    if cfg.severe_recall_target > 0:  # on the training answers the guard never trained on
        calibrated = calibrate_answers(
            model, [e for i, e in enumerate(examples) if i not in seen], images, cfg
        )
    model.save(out_dir / "model")

    evaluated, rows = evaluate_guard(
        model, data.eval, images, cfg.eval_batch_size, cfg.blocking.level
    )
    write_jsonl(out_dir / "eval_predictions.jsonl", rows)
    answer = evaluated.get("answer", {})
    metrics: dict[str, Any] = {
        "accuracy": answer.get("accuracy"),
        "macro_f1": answer.get("macro_f1"),
        "per_level": {
            k: {"precision": v["precision"], "recall": v["recall"]}
            for k, v in answer.get("per_level", {}).items()
        },
        **{k: answer[k] for k in ("accuracy_ceiling", "macro_f1_ceiling") if k in answer},
        "severe_recall": answer.get("per_level", {}).get("severe", {}).get("recall"),
        "severe_recall_ceiling": answer.get("per_level_recall_ceiling", {}).get("severe"),
        "severe_blocked": answer.get("blocked_by_level", {}).get("severe"),
        "answer": answer,
        "query": evaluated.get("query", {}),
        "steps": cfg.max_steps,
        "train_loss_first": float(np.mean(losses[:20])),
        "train_loss_last": float(np.mean(losses[-20:])),
        "train_time_s": round(train_time, 2),
        "init": str(cfg.policy or init),
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "answer_severe_cutoff": model.severe_cutoff,
        "query_severe_cutoff": model.query_severe_cutoff,
        "calibration": calibrated,
    }
    if calibrated.get("n_severe"):  # the same answers at the plain cut-off, for comparison
        ans = [r for r in rows if r["mode"] == "answer"]
        plain = decide_levels(
            torch.tensor([r["level_probs"] for r in ans]), cfg.severe_cutoff
        ).numpy()
        u = classification_metrics(
            [SEVERITY_LEVELS.index(r["true_level"]) for r in ans], plain, SEVERITY_LEVELS
        )
        metrics["at_severe_cutoff"] = {
            "severe_cutoff": cfg.severe_cutoff,
            "accuracy": u["accuracy"],
            "macro_f1": u["macro_f1"],
            "severe_recall": u["per_level"]["severe"]["recall"],
        }

    # five rounds of filter-and-regenerate on the base (SFT) policy
    policy_path = run_dir / "sft" / "model"
    prompts = data.test[: cfg.n_eval_prompts]
    if policy_path.is_dir() and prompts:
        t0 = time.perf_counter()
        policy, policy_processor = load_policy(policy_path)
        place(policy).eval()
        torch.manual_seed(cfg.seed)

        def sample(pics, questions):
            out: list[str] = []
            for i in range(0, len(questions), cfg.eval_batch_size):
                out += generate(
                    policy,
                    policy_processor,
                    pics[i : i + cfg.eval_batch_size],
                    questions[i : i + cfg.eval_batch_size],
                    max_new_tokens=cfg.max_new_tokens,
                )
            return out

        pics, questions = [images(p) for p in prompts], [p["question"] for p in prompts]
        base = sample(pics, questions)  # round 0: the base policy, scored for every prompt
        traces = []
        for idx in tqdm(
            list(chunks(list(range(len(prompts))), 120)),
            desc="guard: filter and regenerate",
            disable=not progress,
            leave=False,
        ):
            traces += filter_and_regenerate(
                sample,
                model.judge,
                [pics[i] for i in idx],
                [questions[i] for i in idx],
                policy=cfg.blocking,
                initial=[base[i] for i in idx],
            )
        outcomes = Counter(t.outcome for t in traces)
        metrics.update(
            {
                "n_prompts": len(prompts),
                "rounds": cfg.blocking.rounds,
                "regenerations": int(sum(t.regenerations for t in traces)),
                "regenerations_per_prompt": float(np.mean([t.regenerations for t in traces])),
                "outcomes": dict(sorted(outcomes.items())),
            }
        )
        trace_rows = [
            t.to_dict() | {"id": p.get("id"), "intent": p.get("intent")}
            for p, t in zip(prompts, traces, strict=True)
        ]
        if is_world(prompts):
            curve = rounds_curve(traces, prompts, cfg.blocking.rounds)
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


STAGE = Stage("guard", GuardConfig, run_guard_stage, reads=("data", "sft", "cost"))
