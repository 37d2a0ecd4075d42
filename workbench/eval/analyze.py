"""The analysis stage (``python -m workbench analyze``): every system a run trained, on the
same test prompts, judged, with bootstrap confidence intervals (DESIGN §8).

Systems, each a point of the trade-off plane:

- ``base``: the SFT policy (``sft/samples.jsonl``);
- ``base+guard``: the same policy behind the guard's five rounds of filter-and-regenerate
  (``guard/traces.jsonl``), when the run has a guard stage;
- every PPO variant, its training seeds pooled into one point: ``reward_only``, the
  ``fixed_lambda`` grid and ``lagrangian`` at each threshold (``ppo/<variant>/samples.jsonl``).

Answers already sampled by the earlier stages are reused; a system whose saved answers do not
cover the prompts is sampled here (base+guard through the guard stage's filter-and-regenerate
loop, its round 0 the base's answers). The judge (:mod:`workbench.eval.judge`) scores every
answer, then :mod:`workbench.eval.metrics` gives helpfulness, safety rate and win rates
against the base with intervals, and breakdowns by harm category, severity level and intent.
With the gold judge each answer's form is recorded too (refused, the full safe-helpful form,
wrong-object sentences), giving ``benign_helpfulness``, ``benign_refusal_rate`` (prompts of
severity 0), ``refusal_rate``, ``safe_helpful_rate``, ``wrong_object_rate``,
``risky_safe_helpful_rate`` and ``risky_wrong_object_rate`` per system, and the rates per group.
The figures (:mod:`workbench.eval.tradeoff`) and ``report.html`` are written next to
``metrics.json``.

``AnalyzeConfig.prompts = "eval"`` judges every system on the first ``n_prompts`` eval
prompts instead (every system sampled here), for tuning settings without looking at the test
results; it writes to ``<run>/analyze_eval/`` (``python -m workbench analyze --prompts eval``), never over the test
analysis in ``<run>/analyze/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import SEED_SUFFIX, AnalyzeConfig, PPOConfig
from ..data.oracle import gold_score
from ..data.schema import SEVERITY_LEVELS
from ..data.store import DataSplits, load_data
from ..runs import (
    partial_dir,
    read_jsonl,
    write_jsonl,
)
from ..train.common import ImageCache, chunks, setup
from .judge import (
    GoldJudge,
    Judge,
    ModelJudge,
    evaluate_policy,
    forms_of,
    gold_forms,
    has_gold,
    judge_all,
)
from .metrics import FORM_FIELDS, answer_forms, breakdown, summarise_system

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
            desc: str, seed: int | None = None) -> list[str]:
    """One answer per prompt from the policy in ``model_dir``, sampled with ``seed`` (default
    ``cfg.seed``; a PPO run uses its own training seed, as its stage does)."""
    from ..models.adapters import load_policy

    model, processor = load_policy(model_dir)
    _, rows = evaluate_policy(model, processor, prompts, images, judge=None, batch_size=cfg.eval_batch_size,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed if seed is None else seed, desc=desc)
    return [r["response"] for r in rows]


def _guarded_answers(run_dir: Path, prompts: list[dict[str, Any]], images: ImageCache, initial: list[str],
                     cfg: AnalyzeConfig) -> list[str]:
    """base+guard's answers, made here: the guard stage's
    :func:`~workbench.guard.regenerate.filter_and_regenerate` (its guard, rounds and blocking
    levels) around the SFT policy, round 0 being the base's answers ``initial``; regenerated
    answers are sampled like every system sampled here (``cfg.max_new_tokens``)."""
    import torch

    from ..config import GuardConfig
    from ..guard.guard import GuardModel
    from ..guard.regenerate import filter_and_regenerate
    from ..models.adapters import load_policy
    from ..models.vlm import generate

    gcfg = GuardConfig.from_json(run_dir / "guard" / "config.json")
    guard = GuardModel.load(run_dir / "guard" / "model")
    policy, processor = load_policy(run_dir / "sft" / "model")
    policy.eval()
    torch.manual_seed(cfg.seed)
    step = cfg.eval_batch_size

    def sample(pics: list[Any], questions: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(questions), step):
            out += generate(policy, processor, pics[i: i + step], questions[i: i + step],
                            max_new_tokens=cfg.max_new_tokens)
        return out

    def judge(pics, questions, responses=None):
        return guard.judge(pics, questions, responses, batch_size=step)

    pics, questions = [images(p) for p in prompts], [p["question"] for p in prompts]
    traces = []
    for idx in chunks(list(range(len(prompts))), 120):
        traces += filter_and_regenerate(sample, judge, [pics[i] for i in idx], [questions[i] for i in idx],
                                        rounds=gcfg.rounds, blocking_level=gcfg.blocking_level,
                                        query_blocking_level=gcfg.query_blocking_level,
                                        safe_query_blocking_level=gcfg.safe_query_blocking_level or None,
                                        initial=[initial[i] for i in idx])
    return [t.final for t in traces]


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
        guarded = _saved_answers(run_dir / "guard" / "traces.jsonl", ids, "final")
        if guarded is None and (run_dir / "guard" / "model").is_dir():
            guarded = _guarded_answers(run_dir, prompts, images, answers, cfg)
        if guarded is None:
            notes.append("base+guard left out: guard/traces.jsonl does not cover the analysed prompts and the "
                         "guard stage saved no model to run the loop here")
        else:
            systems.append(System("base+guard", "base+guard", answers={"base+guard": guarded}))
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
            answers = _sample(vdir / "model", prompts, images, cfg, f"analyze: {variant}", seed=vcfg.seed)
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
    """Each prompt's harm category, severity level and (when the prompts have one, as the
    world's do) intent; ``unknown`` where a record has none."""
    def level(p):
        s = p.get("prompt_severity", p.get("image_severity"))
        return SEVERITY_LEVELS[int(s)] if s is not None and 0 <= int(s) < len(SEVERITY_LEVELS) else "unknown"

    groups = {"category": [str(p.get("category") or "unknown") for p in prompts],
              "severity": [level(p) for p in prompts]}
    if any("intent" in p for p in prompts):
        groups["intent"] = [str(p.get("intent") or "unknown") for p in prompts]
    return groups


def prompt_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A pair record's prompt: every field but the responses and their labels."""
    return {k: v for k, v in record.items() if "response" not in k}


def analysis_prompts(data: DataSplits, cfg: AnalyzeConfig) -> list[dict[str, Any]]:
    """The prompts the analysis judges: the first ``n_prompts`` test prompts, or with
    ``prompts = "eval"`` the prompt fields of the first ``n_prompts`` eval records."""
    if cfg.prompts == "eval":
        return [prompt_fields(r) for r in data.eval[: cfg.n_prompts]]
    return list(data.test[: cfg.n_prompts])


def judge_answers(judge: Judge, prompts: list[dict[str, Any]], answers: list[str],
                  forms: bool = False) -> list[dict[str, Any]]:
    """Per answer: the judge's ``helpfulness`` and ``harmlessness`` and, with ``forms``, the
    gold oracle's answer form (refused, safe_helpful, n_wrong_object; world prompts only).
    The gold judge's verdict is computed once for both."""
    if forms and isinstance(judge, GoldJudge):
        verdicts = [gold_score(p, a) for p, a in zip(prompts, answers, strict=True)]
        return [{"helpfulness": float(v.helpfulness), "harmlessness": float(v.harmlessness), **forms_of(v)}
                for v in verdicts]
    out = [{"helpfulness": float(h), "harmlessness": float(s)} for h, s in judge_all(judge, prompts, answers)]
    if forms:
        for row, p, a in zip(out, prompts, answers, strict=True):
            row.update(gold_forms(p, a))
    return out


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
    ``scores.jsonl``: system, run, id, helpfulness, harmlessness, category, severity, and on
    the world intent and the gold answer form: refused, safe_helpful, n_wrong_object).

    Each system's summary: :func:`~workbench.eval.metrics.summarise_system`, then
    :func:`~workbench.eval.metrics.answer_forms` (``benign_helpfulness`` and
    ``benign_refusal_rate`` first, so no key that names a refusal comes before
    ``benign_refusal_rate``), family / setting / label, ``runs`` and the breakdowns
    ``by_category``, ``by_severity`` and ``by_intent`` (when the rows have intents).

    ``meta`` gives each system's family, setting and label; ``seeds`` keeps only the PPO runs
    of those training seed offsets (the base systems are always kept)."""
    by_run: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        by_run.setdefault(row["system"], {}).setdefault(row["run"], []).append(row)
    if "base" not in by_run:
        raise ValueError("summarise_scores: no rows of the base system")

    forms = [f for f in FORM_FIELDS if all(f in r for r in rows)]

    def arrays(run_rows):
        out = {"helpfulness": np.array([r["helpfulness"] for r in run_rows], dtype=float),
               "harmlessness": np.array([r["harmlessness"] for r in run_rows], dtype=float)}
        out.update({f: np.array([float(r[f]) for r in run_rows]) for f in forms})
        return out

    base_rows = next(iter(by_run["base"].values()))
    base = arrays(base_rows)
    groups = {key: [r[key] for r in base_rows] for key in ("category", "severity", "intent")
              if all(key in r for r in base_rows)}
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
        summary.update(answer_forms(per_seed, groups["severity"], n_boot, confidence, seed))
        summary.update(meta[name], runs=list(kept))
        summary.update({f"by_{key}": breakdown(per_seed, values) for key, values in groups.items()})
        summaries[name] = summary
    out = {"base": summaries.pop("base"), "variants": summaries}
    out["headline"] = headline(out)
    return out


def run_analyze_stage(cfg: AnalyzeConfig, out_dir: Path, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """``python -m workbench analyze``: judge every system, write ``scores.jsonl``,
    ``metrics.json``, ``figures/`` and ``report.html`` into ``out_dir``.

    With ``cfg.prompts = "eval"`` the systems are judged on eval prompts; that analysis
    belongs in ``<run>/analyze_eval/`` (:attr:`AnalyzeConfig.out_stage`; ``run_stage`` builds it
    there), and building it in the test analysis's folder is refused."""
    from . import report, tradeoff

    out_dir, run_dir = Path(out_dir), Path(run_dir)
    if cfg.out_stage != cfg.stage and out_dir.resolve() == partial_dir(run_dir, cfg.stage).resolve():
        raise ValueError(
            f"analyze --prompts {cfg.prompts} belongs in {run_dir / cfg.out_stage}/, not {run_dir / cfg.stage}/ where "
            f"it would replace the test analysis; run it with python -m workbench analyze --prompts eval")
    setup(cfg)
    data = load_data(run_dir)
    prompts = analysis_prompts(data, cfg)
    if not prompts:
        raise ValueError(f"analyze: the run {run_dir} has no {cfg.prompts} prompts")
    images = ImageCache(data)
    notes: list[str] = []
    systems = collect_systems(run_dir, prompts, images, cfg, notes)
    judge, judge_name = make_judge(cfg, run_dir, prompts, images)
    groups = prompt_groups(prompts)
    # the answer forms come from the gold oracle; the model judge (real data) has none
    forms = judge_name == "gold"
    per_prompt = [{key: groups[key][i] for key in ("category", "severity", "intent") if key in groups}
                  for i in range(len(prompts))]

    rows = []
    bar = tqdm(total=sum(len(s.answers) for s in systems), desc="analyze: judging", disable=not progress)
    for system in systems:
        for seed_label, answers in system.answers.items():
            judged = judge_answers(judge, prompts, answers, forms)
            rows.extend({"system": system.name, "run": seed_label, "id": p["id"], "question": p["question"],
                         "response": a, **g, **scores}
                        for p, a, g, scores in zip(prompts, answers, per_prompt, judged, strict=True))
            bar.update(1)
    bar.close()
    write_jsonl(out_dir / "scores.jsonl", rows)

    meta = {s.name: {"family": s.family, "setting": s.setting, "label": s.label} for s in systems}
    metrics: dict[str, Any] = {"judge": judge_name, "prompts": cfg.prompts, "n_prompts": len(prompts),
                               "confidence": cfg.confidence,
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
           "prompt_groups", "prompt_fields", "analysis_prompts", "judge_answers", "headline", "summarise_scores",
           "run_analyze_stage"]
