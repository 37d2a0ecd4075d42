"""Look inside the analysis stage of a run (notebook 05): the figures again, recomputed for a
chosen subset of systems, training seeds and harm categories, and the answers of every system
to the same prompts.

Everything reads ``<run>/analyze/metrics.json`` and ``scores.jsonl``; recomputing goes through
the stage's own :func:`~workbench.eval.analyze.summarise_scores`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ..config import AnalyzeConfig
from ..eval import tradeoff
from ..eval.analyze import judge_is_gold, judge_label, summarise_scores
from ..runs import read_json, read_jsonl
from .output import show_in, stage_variant


def scores(run_dir: str | Path) -> pd.DataFrame:
    """Every judged answer of the analysis: system, run (training seed), prompt, answer,
    category, severity, helpfulness, harmlessness."""
    path = Path(run_dir) / "analyze" / "scores.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run python -m workbench analyze --run-dir {run_dir}"
        )
    return pd.DataFrame(read_jsonl(path))


def recompute(
    run_dir: str | Path, seeds: Sequence[int] | None = None, **bootstrap: Any
) -> dict[str, Any]:
    """The analysis metrics again, keeping only the PPO runs of the given training seed
    offsets (0 = the variant's own seed), with the stage's bootstrap settings, or others
    (``bootstrap=``, ``confidence=``, ``seed=``: nothing is sampled or judged again)."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "analyze" / "metrics.json")
    cfg = AnalyzeConfig.from_json(run_dir / "analyze" / "config.json")
    unknown = sorted(set(bootstrap) - {"bootstrap", "confidence", "seed"})
    if unknown:
        raise ValueError(f"recompute: {unknown} cannot change without judging again")
    cfg = AnalyzeConfig.from_dict(bootstrap, base=cfg) if bootstrap else cfg
    meta = {"base": {"family": "base", "setting": None, "label": "base"}}
    meta.update(
        {
            n: {k: v[k] for k in ("family", "setting", "label", "training") if k in v}
            for n, v in metrics["variants"].items()
        }
    )
    rows = read_jsonl(run_dir / "analyze" / "scores.jsonl")
    out = summarise_scores(
        rows,
        meta,
        cfg.bootstrap,
        cfg.confidence,
        cfg.seed,
        seeds=set(seeds) if seeds is not None else None,
    )
    return {**metrics, **out}


def seed_offsets(metrics: dict[str, Any]) -> list[int]:
    """The training seed offsets present in a run's PPO variants."""
    return sorted({k for v in metrics["variants"].values() for k in v.get("seed_offsets", [])}) or [
        0
    ]


def answers(
    run_dir: str | Path, n: int = 5, category: str | None = None, seed_offset: int = 0
) -> pd.DataFrame:
    """The first ``n`` prompts (of ``category``) with every system's answer and the judge's scores
    side by side (one training seed per system); the ``judge`` column names the judge
    (:func:`~workbench.eval.analyze.judge_label`)."""
    frame = scores(run_dir)
    metrics = read_json(Path(run_dir) / "analyze" / "metrics.json")
    digits = 0 if judge_is_gold(metrics) else 2  # gold scores are whole numbers
    frame = frame[frame["seed_offset"] == seed_offset]
    if category:
        frame = frame[frame["category"] == category]
    ids = list(dict.fromkeys(frame["id"]))[:n]
    frame = frame[frame["id"].isin(ids)].copy()
    frame["answer"] = frame.apply(
        lambda r: (
            f"{r['response']}  [h={r['helpfulness']:.{digits}f}, s={r['harmlessness']:+.{digits}f}]"
        ),
        axis=1,
    )
    table = frame.pivot_table(
        index=["id", "category", "question"], columns="system", values="answer", aggfunc="first"
    )
    table.columns.name = None
    table = table.reset_index()
    table["judge"] = judge_label(metrics)
    return table


def explorer(run_dir: str | Path) -> widgets.Widget:
    """Pick systems, training seeds and harm categories; the trade-off plane, the win rates
    and the category heatmap are recomputed and redrawn for the selection."""
    metrics = read_json(Path(run_dir) / "analyze" / "metrics.json")
    names = ["base", *metrics["variants"]]
    cats = list(metrics["base"]["by_category"])
    pick_systems = widgets.SelectMultiple(
        options=names, value=tuple(names), description="systems", rows=min(8, len(names))
    )
    pick_seeds = widgets.SelectMultiple(
        options=seed_offsets(metrics),
        value=tuple(seed_offsets(metrics)),
        description="seeds",
        rows=3,
    )
    pick_cats = widgets.SelectMultiple(
        options=cats, value=tuple(cats), description="categories", rows=8
    )
    value = widgets.ToggleButtons(
        options=[("safety rate", "safety_rate"), ("helpfulness", "helpfulness")],
        description="heatmap",
    )
    output = widgets.Output()

    def redraw(_=None) -> None:
        if not pick_seeds.value or not pick_systems.value:
            show_in(output, "pick at least one system and one seed")
            return
        m = recompute(run_dir, seeds=pick_seeds.value)
        chosen = [n for n in pick_systems.value if n == "base" or n in m["variants"]]
        show_in(
            output,
            tradeoff.tradeoff_figure(m, names=chosen, per_seed=True),
            tradeoff.winrate_figure(m, names=chosen),
            tradeoff.breakdown_figure(
                m, "category", names=chosen, groups=list(pick_cats.value), value=value.value
            ),
        )

    for w in (pick_systems, pick_seeds, pick_cats, value):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([pick_systems, pick_seeds, pick_cats]), value, output])


# --- exercises -----------------------------------------------------------------------------
#: The stages an analysis reads, linked into an exercise's scratch run.
ANALYSIS_INPUTS = ("data", "sft", "reward", "cost", "guard", "ppo")


def analyze_variant(run_dir: str | Path, name: str, **overrides: Any) -> Path:
    """An exercise: the analysis again with ``overrides`` on top of ``run_dir``'s own analyze
    config (e.g. ``judge="models"``), in the scratch run ``name`` beside ``run_dir``
    (:func:`~workbench.views.output.scratch_run`: every stage it reads linked), never in
    ``run_dir``. A second call with the same settings finds the stage finished."""
    return stage_variant(run_dir, "analyze", name, ANALYSIS_INPUTS, **overrides)


def ppo_sweep(run_dir: str | Path, name: str, **ppo_overrides: Any) -> Path:
    """An exercise: PPO again with ``ppo_overrides`` on top of ``run_dir``'s own PPO config
    (e.g. ``thresholds=(-3.0, 0.0)``), then the analysis with the run's own analyze config,
    both in the scratch run ``name`` beside ``run_dir`` (data, sft, reward, cost and guard
    linked), never in ``run_dir``. A second call with the same settings finds both finished."""
    from ..pipeline import run_stage  # views sit above the pipeline

    scratch = stage_variant(run_dir, "ppo", name, ANALYSIS_INPUTS[:-1], **ppo_overrides)
    cfg = AnalyzeConfig.from_json(Path(run_dir) / "analyze" / "config.json")
    run_stage("analyze", scratch, cfg, progress=False)
    return scratch


def interval_widths(
    metrics: Mapping[str, Mapping[str, Any]], key: str = "safety_rate"
) -> pd.DataFrame:
    """Each system's ``key`` with its interval and the interval's width, one column group per
    named metrics (e.g. the run's and :func:`recompute`'s with another ``confidence``)."""
    table: dict[str, dict[tuple[str, str], Any]] = {}
    for name, m in metrics.items():
        for system, s in tradeoff.systems(m).items():
            lo, hi = s.get(f"{key}_ci") or (float("nan"), float("nan"))
            table.setdefault(system, {})[(name, key)] = s.get(key)
            table[system][(name, "interval")] = f"[{lo:.3f}, {hi:.3f}]"
            table[system][(name, "width")] = round(hi - lo, 3)
    return pd.DataFrame(table).T


__all__ = [
    "ANALYSIS_INPUTS",
    "analyze_variant",
    "answers",
    "explorer",
    "interval_widths",
    "ppo_sweep",
    "recompute",
    "scores",
    "seed_offsets",
]
