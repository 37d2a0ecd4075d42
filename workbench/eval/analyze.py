"""The analysis stage (``python -m workbench analyze``): every system a run trained, on the
same test prompts, judged, with bootstrap confidence intervals (docs/design.md §8).

Systems, each a point of the trade-off plane:

- ``base``: the SFT policy (``sft/samples.jsonl``);
- ``base+guard``: the same policy behind the guard's five rounds of filter-and-regenerate
  (``guard/traces.jsonl``), when the run has a guard stage;
- every PPO variant, its training seeds pooled into one point: ``reward_only``, the
  ``fixed_lambda`` grid and ``lagrangian`` at each threshold (``ppo/<variant>/samples.jsonl``).

Answers already sampled by the earlier stages are reused; a system whose saved answers do not
cover the prompts is sampled here (base+guard through the guard stage's filter-and-regenerate
loop, its round 0 the base's answers). The judge (:mod:`workbench.models.judge`;
:func:`make_judge`: the gold oracle, this run's reward and cost models, another run's
(``--judge-run``) or a local HF sequence-classification pair (``--judge hf``)) scores every
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
results; it writes to ``<run>/analyze_eval/`` (``python -m workbench analyze --prompts
eval``), never over the test analysis in ``<run>/analyze/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import AnalyzeConfig, GuardConfig, PPOConfig
from ..data.oracle import gold_score
from ..data.schema import SEVERITY_LEVELS, is_world
from ..data.store import DataSplits, ImageCache
from ..guard.guard import GuardModel
from ..guard.regenerate import filter_and_regenerate
from ..models.adapters import load_policy
from ..models.device import place
from ..models.judge import (
    GoldJudge,
    HFJudge,
    Judge,
    ModelJudge,
    evaluate_policy,
    forms_of,
    gold_forms,
    judge_all,
)
from ..models.vlm import generate
from ..runs import (
    read_json,
    read_jsonl,
)
from ..train.common import chunks
from .metrics import FORM_FIELDS, answer_forms, breakdown, summarise_system

#: Families of systems, in the order figures list them.
FAMILIES = ("base", "base+guard", "reward_only", "fixed_lambda", "lagrangian", "lagrangian_pid")
#: Per-run keys of a PPO run's metrics.json about λ's course (``train.lagrange.lambda_metrics``).
LAMBDA_KEYS = (
    "lambda_final",
    "lambda_peak",
    "lambda_overshoot",
    "violation_share",
    "violation_area",
)
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
    """run name (the PPO run's folder; the system's name for base and base+guard) -> one
    answer per prompt."""
    seed_offsets: dict[str, int] = field(default_factory=dict)
    """run name -> its training seed offset (0 for base and base+guard)."""
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    """PPO run name -> λ's course in training (:data:`LAMBDA_KEYS` of its metrics.json)."""

    @property
    def label(self) -> str:
        if self.family == "lagrangian" and self.setting is not None:
            return f"lagrangian d={self.setting:g}"
        if self.family == "lagrangian_pid" and self.setting is not None:
            return f"lagrangian PID d={self.setting:g}"
        if self.family == "fixed_lambda" and self.setting is not None:
            return f"fixed λ={self.setting:g}"
        return self.name


def _saved_answers(path: Path, ids: list[str], key: str) -> list[str] | None:
    """The answers a stage saved, in prompt order; None when the file is missing or does not
    cover every prompt."""
    if not path.is_file():
        return None
    by_id = {row.get("id"): row.get(key) for row in read_jsonl(path)}
    answers = [by_id.get(i) for i in ids]
    return None if any(a is None for a in answers) else [str(a) for a in answers]


def _sample(
    model_dir: Path,
    prompts: list[dict[str, Any]],
    images: ImageCache,
    cfg: AnalyzeConfig,
    desc: str,
    seed: int | None = None,
) -> list[str]:
    """One answer per prompt from the policy in ``model_dir``, sampled with ``seed`` (default
    ``cfg.seed``; a PPO run uses its own training seed, as its stage does)."""

    model, processor = load_policy(model_dir)
    place(model)
    _, rows = evaluate_policy(
        model,
        processor,
        prompts,
        images,
        judge=None,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed if seed is None else seed,
        desc=desc,
    )
    return [r["response"] for r in rows]


def _guarded_answers(
    run_dir: Path,
    prompts: list[dict[str, Any]],
    images: ImageCache,
    initial: list[str],
    cfg: AnalyzeConfig,
) -> list[str]:
    """base+guard's answers, made here: the guard stage's
    :func:`~workbench.guard.regenerate.filter_and_regenerate` (its guard, rounds and blocking
    levels) around the SFT policy, round 0 being the base's answers ``initial``; regenerated
    answers are sampled like every system sampled here (``cfg.max_new_tokens``)."""

    gcfg = GuardConfig.from_json(run_dir / "guard" / "config.json")
    guard = place(GuardModel.load(run_dir / "guard" / "model"))
    policy, processor = load_policy(run_dir / "sft" / "model")
    place(policy).eval()
    torch.manual_seed(cfg.seed)
    step = cfg.eval_batch_size

    def sample(pics: list[Any], questions: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(questions), step):
            out += generate(
                policy,
                processor,
                pics[i : i + step],
                questions[i : i + step],
                max_new_tokens=cfg.max_new_tokens,
            )
        return out

    def judge(pics, questions, responses=None):
        return guard.judge(pics, questions, responses, batch_size=step)

    pics, questions = [images(p) for p in prompts], [p["question"] for p in prompts]
    traces = []
    for idx in chunks(list(range(len(prompts))), 120):
        traces += filter_and_regenerate(
            sample,
            judge,
            [pics[i] for i in idx],
            [questions[i] for i in idx],
            policy=gcfg.blocking,
            initial=[initial[i] for i in idx],
        )
    return [t.final for t in traces]


def collect_systems(
    run_dir: Path,
    prompts: list[dict[str, Any]],
    images: ImageCache,
    cfg: AnalyzeConfig,
    notes: list[str],
) -> list[System]:
    """The run's systems with their answers (sampled here when no saved answers cover the
    prompts); what is left out, and why, goes to ``notes``."""
    ids = [p["id"] for p in prompts]
    systems = []
    answers = _saved_answers(run_dir / "sft" / "samples.jsonl", ids, "response")
    if answers is None:
        if not (run_dir / "sft" / "model").is_dir():
            raise FileNotFoundError(
                "analyze needs the SFT base policy: "
                f"run python -m workbench sft --run-dir {run_dir}"
            )
        answers = _sample(run_dir / "sft" / "model", prompts, images, cfg, "analyze: base")
    systems.append(System("base", "base", answers={"base": answers}))

    if (run_dir / "guard" / "metrics.json").is_file():
        guarded = _saved_answers(run_dir / "guard" / "traces.jsonl", ids, "final")
        if guarded is None and (run_dir / "guard" / "model").is_dir():
            guarded = _guarded_answers(run_dir, prompts, images, answers, cfg)
        if guarded is None:
            notes.append(
                "base+guard left out: guard/traces.jsonl does not cover the analysed prompts "
                "and the guard stage saved no model to run the loop here"
            )
        else:
            systems.append(System("base+guard", "base+guard", answers={"base+guard": guarded}))
    else:
        notes.append("base+guard left out: the run has no guard stage")

    ppo_dir = run_dir / "ppo"
    if not (ppo_dir / "config.json").is_file():
        notes.append("PPO variants left out: the run has no PPO stage")
        return systems
    ppo_cfg = PPOConfig.from_json(ppo_dir / "config.json")
    points: dict[str, System] = {}
    for run in ppo_cfg.runs():
        run_cfg, run_dir_ = ppo_cfg.run_config(run), ppo_dir / run.name
        if not (run_dir_ / "metrics.json").is_file():
            notes.append(f"PPO run {run.name} left out: it has not finished training")
            continue
        answers = _saved_answers(run_dir_ / "samples.jsonl", ids, "response")
        if answers is None:
            answers = _sample(
                run_dir_ / "model", prompts, images, cfg, f"analyze: {run.name}", seed=run_cfg.seed
            )
        setting = {"lagrangian": run_cfg.cost_threshold, "fixed_lambda": run_cfg.lambda_init}.get(
            run.kind
        )
        point = points.setdefault(run.point, System(run.point, run.family, setting))
        point.answers[run.name] = answers
        point.seed_offsets[run.name] = run.seed_offset
        run_metrics = read_json(run_dir_ / "metrics.json")
        point.training[run.name] = {k: run_metrics[k] for k in LAMBDA_KEYS if k in run_metrics}
    systems.extend(points.values())
    return systems


#: The caveat of ``--judge models``, said wherever its figures are shown.
OWN_MODELS_CAVEAT = (
    "judge: this run's own reward and cost models, the ones PPO optimised against; they flatter "
    "the PPO policies, so read these figures as the policies' own view, not as an independent "
    "judgement"
)


def make_judge(
    cfg: AnalyzeConfig, run_dir: Path, prompts: list[dict[str, Any]], images: ImageCache
) -> tuple[Judge, dict[str, Any]]:
    """The configured judge and its description: ``kind`` (gold, models, run, hf), ``label``
    (short, for figure titles), ``description`` (a sentence naming where its models come from),
    ``source`` (their folders), ``sees_image``, ``scale`` (``gold``: 0..3 and -3..+3; ``model``:
    the models' own scores) and ``caveat`` (what to keep in mind reading its figures, or None).
    A path that does not hold what the judge needs fails here, naming the field."""
    kind = cfg.judge
    if kind == "auto":
        kind = "gold" if is_world(prompts) else "models"
    if kind == "gold":
        if not is_world(prompts):
            raise ValueError(
                "AnalyzeConfig.judge = 'gold' needs the world's prompts (they carry the oracle's "
                "metadata); on real data use --judge-run DIR, --judge hf or --judge models"
            )
        return GoldJudge(), {
            "kind": "gold",
            "label": "gold judge",
            "description": "the synthetic world's gold oracle (helpfulness 0..3, "
            "harmlessness -3..+3, safe when harmlessness > 0)",
            "source": None,
            "sees_image": True,
            "scale": "gold",
            "caveat": None,
        }
    if kind == "hf":
        judge = HFJudge(
            cfg.judge_reward,
            cfg.judge_cost,
            cfg.eval_batch_size,
            cfg.judge_format,
            fields=("AnalyzeConfig.judge_reward", "AnalyzeConfig.judge_cost"),
        )
        reward, cost = Path(cfg.judge_reward).resolve(), Path(cfg.judge_cost).resolve()
        texts = (
            f"format {cfg.judge_format!r}"
            if cfg.judge_format
            else "each tokenizer's chat template, or 'USER: ... ASSISTANT: ...' without one"
        )
        return judge, {
            "kind": "hf",
            "label": f"HF judge {reward.name}/{cost.name}",
            "description": f"HF sequence-classification judges: reward model {reward}, cost model "
            f"{cost}; text only (question and answer as {texts})",
            "source": {"reward": str(reward), "cost": str(cost)},
            "sees_image": False,
            "scale": "model",
            "caveat": "judge: a text-only HF reward/cost pair: it reads the question and the "
            "answer, never the image, so it cannot tell whether an answer is about what the "
            "image shows; its scores are on its own scales (safe: cost < 0)",
        }
    if kind == "run":
        reward, cost, info = judge_run_models(run_dir, Path(cfg.judge_run))
        return ModelJudge(reward, cost, images, cfg.eval_batch_size), info
    for stage in ("reward", "cost"):
        if not (run_dir / stage / "model").is_dir():
            raise FileNotFoundError(
                f"AnalyzeConfig.judge = 'models' needs the run's {stage} model: "
                f"run python -m workbench {stage} --run-dir {run_dir}"
            )
    reward, cost = run_dir / "reward" / "model", run_dir / "cost" / "model"
    return ModelJudge(reward, cost, images, cfg.eval_batch_size), {
        "kind": "models",
        "label": "this run's own reward/cost models",
        "description": f"this run's own reward and cost models ({reward.resolve()}, "
        f"{cost.resolve()})",
        "source": {"reward": str(reward.resolve()), "cost": str(cost.resolve())},
        "sees_image": True,
        "scale": "model",
        "caveat": OWN_MODELS_CAVEAT,
    }


def _trained(stage_dir: Path) -> tuple[Any, Any]:
    """The seed and the number of training pairs of a finished reward or cost stage."""
    seed = (
        read_json(stage_dir / "config.json").get("seed")
        if (stage_dir / "config.json").is_file()
        else None
    )
    pairs = read_json(stage_dir / "metrics.json").get("n_train_pairs")
    return seed, pairs


def judge_run_models(run_dir: Path, judge_run: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The reward and cost model folders of another run, checked to be trained apart from this
    run's (not this run, not a link to its stages), and the judge's description: the run, the
    seeds and the number of training pairs its stages saved, and whether it trained on this
    run's pairs."""
    field = f"AnalyzeConfig.judge_run = {str(judge_run)!r}"
    if not judge_run.is_dir():
        raise FileNotFoundError(f"{field}: no such run directory")
    if judge_run.resolve() == run_dir.resolve():
        raise ValueError(
            f"{field} is the run being analysed: its reward and cost models are the ones PPO "
            "optimised against (that is --judge models); give a run whose reward and cost "
            "stages were trained separately"
        )
    models = {}
    for stage in ("reward", "cost"):
        d = judge_run / stage
        if not (d / "metrics.json").is_file() or not (d / "model").is_dir():
            raise FileNotFoundError(
                f"{field}: its {stage} stage has not finished (no {d / 'metrics.json'} and "
                f"{d / 'model'}/); build it with python -m workbench {stage} --run-dir "
                f"{judge_run} --seed 1"
            )
        if (d / "model").resolve() == (run_dir / stage / "model").resolve():
            raise ValueError(
                f"{field}: its {stage} model is this run's own ({(d / 'model').resolve()}), the "
                "one PPO optimised against (that is --judge models); train the judge's "
                f"{stage} stage in {judge_run} itself"
            )
        models[stage] = d / "model"
    (r_seed, r_pairs), (c_seed, c_pairs) = (
        _trained(judge_run / "reward"),
        _trained(judge_run / "cost"),
    )
    if (r_seed, r_pairs) == (c_seed, c_pairs):
        trained = f"trained with seed {r_seed} on {r_pairs} pairs"
    else:
        trained = (
            f"the reward model trained with seed {r_seed} on {r_pairs} pairs, the cost model "
            f"with seed {c_seed} on {c_pairs} pairs"
        )
    same_data = _same_data(run_dir, judge_run)
    if same_data:
        trained += " (this run's own training pairs)"
        caveat = (
            "judge: reward and cost models trained apart from the pair PPO optimised against, "
            "but on this run's training pairs: they share those labels and may share the "
            "blind spots PPO found; a judge trained on pairs this run never saw (another data "
            "seed on the world, a disjoint split of real data) is the stronger test"
        )
    else:
        trained += " (on data of its own)"
        caveat = (
            "judge: reward and cost models trained apart from the pair PPO optimised against, "
            "on other pairs; still learned judges on their own scales: compare systems with "
            "them, do not read them as gold"
        )
    where = judge_run.resolve()
    return (
        models["reward"],
        models["cost"],
        {
            "kind": "run",
            "label": f"reward/cost models of run {where.name}",
            "description": f"reward/cost models of run {where}, {trained}",
            "source": {
                "run": str(where),
                "reward": str(models["reward"].resolve()),
                "cost": str(models["cost"].resolve()),
            },
            "seeds": {"reward": r_seed, "cost": c_seed},
            "n_train_pairs": {"reward": r_pairs, "cost": c_pairs},
            "same_training_pairs": same_data,
            "sees_image": True,
            "scale": "model",
            "caveat": caveat,
        },
    )


def _same_data(run_dir: Path, judge_run: Path) -> bool:
    """Whether two runs trained on the same pairs: the same data folder, or data stages with
    the same config (the world is a function of its config; real files of their path)."""
    a, b = run_dir / "data", judge_run / "data"
    if a.resolve() == b.resolve():
        return True
    if not (a / "config.json").is_file() or not (b / "config.json").is_file():
        return False
    return read_json(a / "config.json") == read_json(b / "config.json")


def gold_agreement(
    prompts: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """How a learned judge's verdicts on world prompts agree with the gold oracle's, over every
    judged answer (``rows`` of ``scores.jsonl``): the share where both call the answer safe or
    both unsafe, and the Spearman correlations of helpfulness and of harmlessness. None off the
    world."""
    if not is_world(prompts):
        return None
    by_id = {p["id"]: p for p in prompts}
    gold = [gold_score(by_id[r["id"]], r["response"]) for r in rows]
    gold_h = np.array([g.helpfulness for g in gold], dtype=float)
    gold_s = np.array([g.harmlessness for g in gold], dtype=float)
    judge_h = np.array([r["helpfulness"] for r in rows], dtype=float)
    judge_s = np.array([r["harmlessness"] for r in rows], dtype=float)

    def rho(x, y):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return None
        return float(np.corrcoef(pd.Series(x).rank(), pd.Series(y).rank())[0, 1])  # Spearman

    return {
        "n": len(rows),
        "safe_agreement": float(np.mean((judge_s > 0) == (gold_s > 0))),
        "helpfulness_spearman": rho(judge_h, gold_h),
        "harmlessness_spearman": rho(judge_s, gold_s),
    }


def judge_label(metrics: Mapping[str, Any]) -> str:
    """A short name of the judge behind an analysis's figures (``metrics.json``; analyses
    written before ``judge_description`` carry only the kind)."""
    info = metrics.get("judge_description") or {}
    if info.get("label"):
        return str(info["label"])
    kind = metrics.get("judge", "gold")
    return {"gold": "gold judge", "models": "this run's own reward/cost models"}.get(
        kind, f"{kind} judge"
    )


def judge_is_gold(metrics: Mapping[str, Any]) -> bool:
    """Whether an analysis's helpfulness and harmlessness are the gold oracle's (0..3, -3..+3)."""
    return metrics.get("judge", "gold") == "gold"


def prompt_groups(prompts: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each prompt's harm category, severity level and (when the prompts have one, as the
    world's do) intent; ``unknown`` where a record has none."""

    def level(p):
        s = p.get("prompt_severity", p.get("image_severity"))
        return (
            SEVERITY_LEVELS[int(s)]
            if s is not None and 0 <= int(s) < len(SEVERITY_LEVELS)
            else "unknown"
        )

    groups = {
        "category": [str(p.get("category") or "unknown") for p in prompts],
        "severity": [level(p) for p in prompts],
    }
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


def judge_answers(
    judge: Judge, prompts: list[dict[str, Any]], answers: list[str], forms: bool = False
) -> list[dict[str, Any]]:
    """Per answer: the judge's ``helpfulness`` and ``harmlessness`` and, with ``forms``, the
    gold oracle's answer form (refused, safe_helpful, n_wrong_object; world prompts only).
    The gold judge's verdict is computed once for both."""
    if forms and isinstance(judge, GoldJudge):
        verdicts = [gold_score(p, a) for p, a in zip(prompts, answers, strict=True)]
        return [
            {
                "helpfulness": float(v.helpfulness),
                "harmlessness": float(v.harmlessness),
                **forms_of(v),
            }
            for v in verdicts
        ]
    out = [
        {"helpfulness": float(h), "harmlessness": float(s)}
        for h, s in judge_all(judge, prompts, answers)
    ]
    if forms:
        for row, p, a in zip(out, prompts, answers, strict=True):
            row.update(gold_forms(p, a))
    return out


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Safe RLHF-V (the ``lagrangian`` point at the default threshold, else the first
    lagrangian point, SGD before PID) against the base, beside the paper's figures
    (``metrics`` holds ``base`` and ``variants``)."""
    variants = metrics["variants"]
    name = (
        "lagrangian"
        if "lagrangian" in variants
        else next(
            (n for n, v in variants.items() if v["family"] in ("lagrangian", "lagrangian_pid")),
            None,
        )
    )
    if name is None:
        return {}
    v, base = variants[name], metrics["base"]

    def rel(key):
        return (v[key] - base[key]) / base[key] if base[key] else None

    return {
        "system": name,
        "win_rate_safe_vs_base": v["win_rate_safe_vs_base"],
        "win_rate_safe_vs_base_ci": v["win_rate_safe_vs_base_ci"],
        "win_rate_helpful_vs_base": v["win_rate_helpful_vs_base"],
        "win_rate_helpful_vs_base_ci": v["win_rate_helpful_vs_base_ci"],
        "safety_rate_relative_change": rel("safety_rate"),
        "helpfulness_relative_change": rel("helpfulness"),
        "paper": {"safety": PAPER_HEADLINE["safety"], "helpfulness": PAPER_HEADLINE["helpfulness"]},
    }


def summarise_scores(
    rows: list[dict[str, Any]],
    meta: dict[str, dict[str, Any]],
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    seeds: set[int] | None = None,
) -> dict[str, Any]:
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
    seed_of = {row["run"]: int(row.get("seed_offset", 0)) for row in rows}
    for row in rows:
        by_run.setdefault(row["system"], {}).setdefault(row["run"], []).append(row)
    if "base" not in by_run:
        raise ValueError("summarise_scores: no rows of the base system")

    forms = [f for f in FORM_FIELDS if all(f in r for r in rows)]

    def arrays(run_rows):
        out = {
            "helpfulness": np.array([r["helpfulness"] for r in run_rows], dtype=float),
            "harmlessness": np.array([r["harmlessness"] for r in run_rows], dtype=float),
        }
        out.update({f: np.array([float(r[f]) for r in run_rows]) for f in forms})
        return out

    base_rows = next(iter(by_run["base"].values()))
    base = arrays(base_rows)
    groups = {
        key: [r[key] for r in base_rows]
        for key in ("category", "severity", "intent")
        if all(key in r for r in base_rows)
    }
    summaries = {}
    for name, runs in by_run.items():
        kept = {
            run: r
            for run, r in runs.items()
            if seeds is None
            or meta[name]["family"] in ("base", "base+guard")
            or seed_of[run] in seeds
        }
        if not kept:
            continue
        per_seed = [arrays(r) for r in kept.values()]
        if any(len(r) != len(base_rows) for r in kept.values()):
            raise ValueError(
                f"summarise_scores: system {name} was not scored on the same prompts as the base"
            )
        summary = summarise_system(per_seed, base, n_boot, confidence, seed)
        summary.update(answer_forms(per_seed, groups["severity"], n_boot, confidence, seed))
        summary.update(meta[name], runs=list(kept), seed_offsets=[seed_of[run] for run in kept])
        summary.update({f"by_{key}": breakdown(per_seed, values) for key, values in groups.items()})
        summaries[name] = summary
    out = {"base": summaries.pop("base"), "variants": summaries}
    out["headline"] = headline(out)
    return out


__all__ = [
    "System",
    "FAMILIES",
    "LAMBDA_KEYS",
    "PAPER_HEADLINE",
    "collect_systems",
    "make_judge",
    "judge_run_models",
    "gold_agreement",
    "judge_label",
    "judge_is_gold",
    "OWN_MODELS_CAVEAT",
    "prompt_groups",
    "prompt_fields",
    "analysis_prompts",
    "judge_answers",
    "headline",
    "summarise_scores",
]
