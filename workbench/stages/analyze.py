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
    judge, judge_name = make_judge(cfg, run_dir, prompts, images)
    if judge_name == "models":  # said wherever a figure is shown, never left implicit
        notes.append(
            "judge: this run's own reward and cost models, the ones PPO optimised against; "
            "they flatter the PPO policies, so read these figures as the policies' own view, "
            "not as an independent judgement"
        )
    groups = prompt_groups(prompts)
    # the answer forms come from the gold oracle; the model judge (real data) has none
    forms = judge_name == "gold"
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

    meta = {s.name: {"family": s.family, "setting": s.setting, "label": s.label} for s in systems}
    metrics: dict[str, Any] = {
        "judge": judge_name,
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
