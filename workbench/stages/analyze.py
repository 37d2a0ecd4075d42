"""The analysis stage: every trained system on the test (or eval) prompts, judged, with
bootstrap intervals, win rates and breakdowns; writes the report and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import AnalyzeConfig
from ..data.store import ImageCache, load_data
from ..eval import report, tradeoff
from ..eval.analyze import (
    analysis_prompts,
    collect_systems,
    gold_agreement,
    judge_answers,
    make_judge,
    prompt_groups,
    summarise_scores,
)
from ..runs import (
    partial_dir,
    write_jsonl,
)
from ..train.common import setup
from .base import Stage


def analysis_folder(cfg: AnalyzeConfig) -> str:
    """``analyze`` for the test prompts, ``analyze_eval`` for the eval prompts (never over the
    test analysis)."""
    return "analyze" if cfg.prompts == "test" else "analyze_eval"


def run_analyze_stage(
    cfg: AnalyzeConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench analyze``: judge every system, write ``scores.jsonl``,
    ``metrics.json``, ``figures/`` and ``report.html`` into ``out_dir``.

    The judge is ``cfg.judge`` (:func:`~workbench.eval.analyze.make_judge`): metrics.json names
    it (``judge``: the kind; ``judge_description``: where its models come from, whether it sees
    the image, its caveat, and for a learned judge on world prompts its agreement with gold), its
    caveat goes to the notes, and every figure title and caption says it.

    With ``cfg.prompts = "eval"`` the systems are judged on eval prompts; that analysis
    belongs in ``<run>/analyze_eval/`` (:func:`analysis_folder`; ``run_stage`` builds it
    there), and building it in the test analysis's folder is refused."""
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    folder = analysis_folder(cfg)
    if folder != "analyze" and out_dir.resolve() == partial_dir(run_dir, "analyze").resolve():
        raise ValueError(
            f"analyze --prompts {cfg.prompts} belongs in {run_dir / folder}/, "
            f"not {run_dir / 'analyze'}/ where it would replace the test analysis; "
            f"run it with python -m workbench analyze --prompts eval"
        )
    setup(cfg)
    data = load_data(run_dir)
    prompts = analysis_prompts(data, cfg)
    if not prompts:
        raise ValueError(f"analyze: the run {run_dir} has no {cfg.prompts} prompts")
    images = ImageCache(data)
    notes: list[str] = []
    systems = collect_systems(run_dir, prompts, images, cfg, notes)
    judge, judge_info = make_judge(cfg, run_dir, prompts, images)
    if judge_info["caveat"]:  # said wherever a figure is shown, never left implicit
        notes.append(judge_info["caveat"])
    groups = prompt_groups(prompts)
    # the answer forms come from the gold oracle; with another judge they would mix two judges
    forms = judge_info["kind"] == "gold"
    keys: tuple[str, ...] = ("category", "severity", "intent")
    per_prompt: list[dict[str, Any]] = [
        {key: groups[key][i] for key in keys if key in groups} for i in range(len(prompts))
    ]

    rows: list[dict[str, Any]] = []
    bar = tqdm(
        total=sum(len(s.answers) for s in systems), desc="analyze: judging", disable=not progress
    )
    for system in systems:
        for seed_label, answers in system.answers.items():
            judged = judge_answers(judge, prompts, answers, forms)
            offset = system.seed_offsets.get(seed_label, 0)
            rows.extend(
                {
                    "system": system.name,
                    "run": seed_label,
                    "seed_offset": offset,
                    "id": p["id"],
                    "question": p["question"],
                    "response": a,
                    **g,
                    **scores,
                }
                for p, a, g, scores in zip(prompts, answers, per_prompt, judged, strict=True)
            )
            bar.update(1)
    bar.close()
    write_jsonl(out_dir / "scores.jsonl", rows)
    if judge_info["kind"] != "gold":  # a learned judge on the world: how far it is from gold
        agreement = gold_agreement(prompts, rows)
        if agreement is not None:
            judge_info["agreement_with_gold"] = agreement

    meta = {
        s.name: {
            "family": s.family,
            "setting": s.setting,
            "label": s.label,
            **({"training": s.training} if s.training else {}),  # PPO: λ's course per run
        }
        for s in systems
    }
    metrics: dict[str, Any] = {
        "judge": judge_info["kind"],
        "judge_description": judge_info,
        "prompts": cfg.prompts,
        "n_prompts": len(prompts),
        "confidence": cfg.confidence,
        **summarise_scores(rows, meta, cfg.bootstrap, cfg.confidence, cfg.seed),
        "notes": notes,
    }
    figures = tradeoff.all_figures(metrics, run_dir)
    tradeoff.write_figures(figures, out_dir / "figures")
    report.write_report(out_dir / "report.html", metrics, figures, run_dir)
    metrics["report"] = "report.html"  # relative to the stage directory
    if progress:
        for note in notes:
            print(f"[analyze] {note}")
    return metrics


STAGE = Stage(
    "analyze",
    AnalyzeConfig,
    run_analyze_stage,
    reads=("data", "sft", "reward", "cost", "guard", "ppo"),
    folder=analysis_folder,
)
