"""The analysis stage (``python -m workbench analyze``): every system a run trained, on the
same test prompts, judged, with bootstrap confidence intervals (DESIGN §8).

Systems, each a point of the trade-off plane:

- ``base``: the SFT policy (``sft/samples.jsonl``);
- ``base+guard``: the same policy behind the guard's five rounds of filter-and-regenerate
  (``guard/traces.jsonl``), when the run has a guard stage;
- every PPO variant, its training seeds pooled into one point: ``reward_only``, the
  ``fixed_lambda`` grid and ``lagrangian`` at each threshold (``ppo/<variant>/samples.jsonl``).

Answers already sampled by the earlier stages are reused; a system whose saved answers do not
cover the prompts is sampled here. The judge (:mod:`workbench.eval.judge`) scores every answer,
then :mod:`workbench.eval.metrics` gives helpfulness, safety rate and win rates against the
base with intervals, and breakdowns by harm category and severity level. The figures
(:mod:`workbench.eval.tradeoff`) and ``report.html`` are written next to ``metrics.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import SEED_SUFFIX, AnalyzeConfig, PPOConfig
from ..data.schema import SEVERITY_LEVELS
from ..data.store import load_data
from ..runs import read_jsonl, write_jsonl
from ..train.common import ImageCache, setup
from .judge import GoldJudge, Judge, ModelJudge, evaluate_policy, has_gold, judge_all
from .metrics import breakdown, summarise_system

#: Families of systems, in the order figures list them.
FAMILIES = ("base", "base+guard", "reward_only", "fixed_lambda", "lagrangian")
#: The paper's headline for Safe RLHF-V against its base (arXiv 2503.17682).
PAPER_HEADLINE = {"safety": 0.342, "helpfulness": 0.343}


@dataclass
class System:
    """One point of the trade-off plane: a family, its setting (d or λ) and, per training
    seed, the answers to the prompts (in prompt order)."""

    name: str
    family: str
    setting: float | None = None
    answers: dict[str, list[str]] = field(default_factory=dict)
    """seed label (the variant directory's name) -> one answer per prompt."""

    @property
    def label(self) -> str:
        if self.family == "lagrangian" and self.setting is not None:
            return f"lagrangian d={self.setting:g}"
        if self.family == "fixed_lambda" and self.setting is not None:
            return f"fixed λ={self.setting:g}"
        return self.name


def point_name(variant: str) -> str:
    """The point a PPO variant belongs to: its name without the ``_seed<k>`` suffix."""
    return re.sub(rf"{re.escape(SEED_SUFFIX)}\d+$", "", variant)


def _saved_answers(path: Path, ids: list[str], key: str) -> list[str] | None:
    """The answers a stage saved, in prompt order; None when the file is missing or does not
    cover every prompt."""
    if not path.is_file():
        return None
    by_id = {row.get("id"): row.get(key) for row in read_jsonl(path)}
    answers = [by_id.get(i) for i in ids]
    return None if any(a is None for a in answers) else [str(a) for a in answers]


def _sample(model_dir: Path, prompts: list[dict[str, Any]], images: ImageCache, cfg: AnalyzeConfig,
            desc: str) -> list[str]:
    from ..models.adapters import load_policy

    model, processor = load_policy(model_dir)
    _, rows = evaluate_policy(model, processor, prompts, images, judge=None, batch_size=cfg.eval_batch_size,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, desc=desc)
    return [r["response"] for r in rows]


def collect_systems(run_dir: Path, prompts: list[dict[str, Any]], images: ImageCache, cfg: AnalyzeConfig,
                    notes: list[str]) -> list[System]:
    """The run's systems with their answers (sampled here when no saved answers cover the
    prompts); what is left out, and why, goes to ``notes``."""
    ids = [p["id"] for p in prompts]
    systems = []
    answers = _saved_answers(run_dir / "sft" / "samples.jsonl", ids, "response")
    if answers is None:
        if not (run_dir / "sft" / "model").is_dir():
            raise FileNotFoundError(f"analyze needs the SFT base policy: run python -m workbench sft --run-dir {run_dir}")
        answers = _sample(run_dir / "sft" / "model", prompts, images, cfg, "analyze: base")
    systems.append(System("base", "base", answers={"base": answers}))

    if (run_dir / "guard" / "metrics.json").is_file():
        answers = _saved_answers(run_dir / "guard" / "traces.jsonl", ids, "final")
        if answers is None:
            notes.append("base+guard left out: guard/traces.jsonl does not cover the analysed prompts "
                         "(rerun the guard stage with at least as many test prompts)")
        else:
            systems.append(System("base+guard", "base+guard", answers={"base+guard": answers}))
    else:
        notes.append("base+guard left out: the run has no guard stage")

    ppo_dir = run_dir / "ppo"
    if not (ppo_dir / "config.json").is_file():
        notes.append("PPO variants left out: the run has no PPO stage")
        return systems
    variants = PPOConfig.from_json(ppo_dir / "config.json").variant_configs()
    points: dict[str, System] = {}
    for variant, (kind, vcfg) in variants.items():
        vdir = ppo_dir / variant
        if not (vdir / "metrics.json").is_file():
            notes.append(f"PPO variant {variant} left out: it has not finished training")
            continue
        answers = _saved_answers(vdir / "samples.jsonl", ids, "response")
        if answers is None:
            answers = _sample(vdir / "model", prompts, images, cfg, f"analyze: {variant}")
        name = point_name(variant)
        setting = {"lagrangian": vcfg.cost_threshold, "fixed_lambda": vcfg.lambda_init}.get(kind)
        point = points.setdefault(name, System(name, kind, setting))
        point.answers[variant] = answers
    systems.extend(points.values())
    return systems


def make_judge(cfg: AnalyzeConfig, run_dir: Path, prompts: list[dict[str, Any]], images: ImageCache) -> tuple[Judge, str]:
    """The configured judge and its name."""
    kind = cfg.judge
    if kind == "auto":
        kind = "gold" if has_gold(prompts) else "models"
    if kind == "gold":
        if not has_gold(prompts):
            raise ValueError("AnalyzeConfig.judge = 'gold' needs the world's prompts (they carry the oracle's "
                             "metadata); on real data use judge = 'models'")
        return GoldJudge(), "gold"
    for stage in ("reward", "cost"):
        if not (run_dir / stage / "model").is_dir():
            raise FileNotFoundError(f"AnalyzeConfig.judge = 'models' needs the run's {stage} model: "
                                    f"run python -m workbench {stage} --run-dir {run_dir}")
    return ModelJudge(run_dir / "reward" / "model", run_dir / "cost" / "model", images, cfg.eval_batch_size), "models"


def prompt_groups(prompts: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each prompt's harm category and severity level (``unknown`` where a record has none)."""
    def level(p):
        s = p.get("prompt_severity", p.get("image_severity"))
        return SEVERITY_LEVELS[int(s)] if s is not None and 0 <= int(s) < len(SEVERITY_LEVELS) else "unknown"

    return {"category": [str(p.get("category") or "unknown") for p in prompts],
            "severity": [level(p) for p in prompts]}


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Safe RLHF-V (the ``lagrangian`` point at the default threshold, else the first
    lagrangian point) against the base, beside the paper's figures (``metrics`` holds
    ``base`` and ``variants``)."""
    variants = metrics["variants"]
    name = "lagrangian" if "lagrangian" in variants else next(
        (n for n, v in variants.items() if v["family"] == "lagrangian"), None)
    if name is None:
        return {}
    v, base = variants[name], metrics["base"]

    def rel(key):
        return (v[key] - base[key]) / base[key] if base[key] else None

    return {"system": name, "win_rate_safe_vs_base": v["win_rate_safe_vs_base"],
            "win_rate_safe_vs_base_ci": v["win_rate_safe_vs_base_ci"],
            "win_rate_helpful_vs_base": v["win_rate_helpful_vs_base"],
            "win_rate_helpful_vs_base_ci": v["win_rate_helpful_vs_base_ci"],
            "safety_rate_relative_change": rel("safety_rate"), "helpfulness_relative_change": rel("helpfulness"),
            "paper": {"safety": PAPER_HEADLINE["safety"], "helpfulness": PAPER_HEADLINE["helpfulness"]}}


def seed_index(run: str) -> int:
    """The training seed offset of a PPO run label (``lagrangian_seed2`` -> 2; no suffix: 0)."""
    m = re.search(rf"{re.escape(SEED_SUFFIX)}(\d+)$", run)
    return int(m.group(1)) if m else 0


def summarise_scores(rows: list[dict[str, Any]], meta: dict[str, dict[str, Any]], n_boot: int = 2000,
                     confidence: float = 0.95, seed: int = 0, seeds: set[int] | None = None) -> dict[str, Any]:
    """``base``, ``variants`` and ``headline`` from per-answer scores (the rows of
    ``scores.jsonl``: system, run, id, helpfulness, harmlessness, category, severity).

    ``meta`` gives each system's family, setting and label; ``seeds`` keeps only the PPO runs
    of those training seed offsets (the base systems are always kept)."""
    by_run: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        by_run.setdefault(row["system"], {}).setdefault(row["run"], []).append(row)
    if "base" not in by_run:
        raise ValueError("summarise_scores: no rows of the base system")

    def arrays(run_rows):
        return {"helpfulness": np.array([r["helpfulness"] for r in run_rows], dtype=float),
                "harmlessness": np.array([r["harmlessness"] for r in run_rows], dtype=float)}

    base_rows = next(iter(by_run["base"].values()))
    base = arrays(base_rows)
    groups = {"category": [r["category"] for r in base_rows], "severity": [r["severity"] for r in base_rows]}
    summaries = {}
    for name, runs in by_run.items():
        kept = {run: r for run, r in runs.items()
                if seeds is None or meta[name]["family"] in ("base", "base+guard") or seed_index(run) in seeds}
        if not kept:
            continue
        per_seed = [arrays(r) for r in kept.values()]
        if any(len(r) != len(base_rows) for r in kept.values()):
            raise ValueError(f"summarise_scores: system {name} was not scored on the same prompts as the base")
        summary = summarise_system(per_seed, base, n_boot, confidence, seed)
        summary.update(meta[name], runs=list(kept), by_category=breakdown(per_seed, groups["category"]),
                       by_severity=breakdown(per_seed, groups["severity"]))
        summaries[name] = summary
    out = {"base": summaries.pop("base"), "variants": summaries}
    out["headline"] = headline(out)
    return out


def run_analyze_stage(cfg: AnalyzeConfig, out_dir: Path, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """``python -m workbench analyze``: judge every system, write ``scores.jsonl``,
    ``metrics.json``, ``figures/`` and ``report.html``."""
    from . import report, tradeoff

    setup(cfg)
    data = load_data(run_dir)
    prompts = data.test[: cfg.n_prompts]
    if not prompts:
        raise ValueError(f"analyze: the run {run_dir} has no test prompts")
    images = ImageCache(data)
    notes: list[str] = []
    systems = collect_systems(run_dir, prompts, images, cfg, notes)
    judge, judge_name = make_judge(cfg, run_dir, prompts, images)
    groups = prompt_groups(prompts)

    rows = []
    bar = tqdm(total=sum(len(s.answers) for s in systems), desc="analyze: judging", disable=not progress)
    for system in systems:
        for seed_label, answers in system.answers.items():
            judged = judge_all(judge, prompts, answers)
            rows.extend({"system": system.name, "run": seed_label, "id": p["id"], "question": p["question"],
                         "response": a, "category": c, "severity": lv, "helpfulness": float(h), "harmlessness": float(s)}
                        for p, a, c, lv, (h, s) in zip(prompts, answers, groups["category"], groups["severity"],
                                                       judged, strict=True))
            bar.update(1)
    bar.close()
    write_jsonl(out_dir / "scores.jsonl", rows)

    meta = {s.name: {"family": s.family, "setting": s.setting, "label": s.label} for s in systems}
    metrics: dict[str, Any] = {"judge": judge_name, "n_prompts": len(prompts), "confidence": cfg.confidence,
                               **summarise_scores(rows, meta, cfg.bootstrap, cfg.confidence, cfg.seed),
                               "notes": notes}
    figures = tradeoff.all_figures(metrics, run_dir)
    tradeoff.write_figures(figures, out_dir / "figures")
    report.write_report(out_dir / "report.html", metrics, figures, run_dir)
    metrics["report"] = "report.html"  # relative to the stage directory
    if progress:
        for note in notes:
            print(f"[analyze] {note}")
    return metrics


__all__ = ["System", "FAMILIES", "PAPER_HEADLINE", "point_name", "seed_index", "collect_systems", "make_judge",
           "prompt_groups", "headline", "summarise_scores", "run_analyze_stage"]
