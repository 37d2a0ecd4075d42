"""Look inside the analysis stage of a run (notebook 05): the figures again, recomputed for a
chosen subset of systems, training seeds and harm categories, and the answers of every system
to the same prompts.

Everything reads ``<run>/analyze/metrics.json`` and ``scores.jsonl``; recomputing goes through
the stage's own :func:`~workbench.eval.analyze.summarise_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ..config import AnalyzeConfig
from ..eval import tradeoff
from ..eval.analyze import judge_is_gold, judge_label, summarise_scores
from ..runs import read_json, read_jsonl
from .output import show_in


def scores(run_dir: str | Path) -> pd.DataFrame:
    """Every judged answer of the analysis: system, run (training seed), prompt, answer,
    category, severity, helpfulness, harmlessness."""
    path = Path(run_dir) / "analyze" / "scores.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run python -m workbench analyze --run-dir {run_dir}"
        )
    return pd.DataFrame(read_jsonl(path))


def recompute(run_dir: str | Path, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """The analysis metrics again, keeping only the PPO runs of the given training seed
    offsets (0 = the variant's own seed), with the stage's bootstrap settings."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "analyze" / "metrics.json")
    cfg = AnalyzeConfig.from_json(run_dir / "analyze" / "config.json")
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


__all__ = ["scores", "recompute", "seed_offsets", "answers", "explorer"]
