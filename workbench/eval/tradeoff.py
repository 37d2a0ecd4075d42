"""Figures of the analysis stage (plotly): the helpfulness-safety trade-off plane with each
family's Pareto frontier, win rates against the base, safety by harm category and by
severity level, λ and J_C over training against d, and proxy reward against gold
helpfulness as the policy moves away from the reference (over-optimisation); on the world
also the answer forms (refusals of benign requests, the safe-helpful form and the
wrong-object template on risky ones) and the refusal rate by intent.

Each figure is a function of the analysis ``metrics.json`` (and the PPO logs for the training
curves) with optional filters, so the report and notebook 05's widgets draw the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..runs import atomic_write_text, read_jsonl
from .analyze import FAMILIES, judge_is_gold, judge_label
from .metrics import pareto_frontier

#: One colour per PPO family (the kinds, and lagrangian under the PID λ controller), in every
#: figure.
VARIANT_COLOURS = {
    "lagrangian": "#1f77b4",
    "lagrangian_pid": "#ff7f0e",
    "reward_only": "#d62728",
    "fixed_lambda": "#9467bd",
}
#: The families whose λ is learned (the λ figure's runs).
LEARNED_LAMBDA = ("lagrangian", "lagrangian_pid")
#: Line style of each learned-λ family in the λ figure (PID dotted, so it reads without colour).
LAMBDA_DASH = {"lagrangian": "solid", "lagrangian_pid": "dot"}
FAMILY_COLOURS = {"base": "#2ca02c", "base+guard": "#17becf", **VARIANT_COLOURS}
FAMILY_SYMBOLS = {
    "base": "star",
    "base+guard": "star-diamond",
    "reward_only": "square",
    "fixed_lambda": "diamond",
    "lagrangian": "circle",
    "lagrangian_pid": "triangle-up",
}


def logs(run_dir: str | Path, stage_dir: str = "ppo") -> dict[str, pd.DataFrame]:
    """The training log of each variant, one row per step (skipped steps left out)."""
    out = {}
    root = Path(run_dir) / stage_dir
    for path in sorted(root.glob("*/log.jsonl")):
        frame = pd.DataFrame(read_jsonl(path))
        if "skipped" in frame:
            frame = frame[frame["skipped"].isna()]
        out[path.parent.name] = frame.reset_index(drop=True)
    return out


def systems(
    metrics: Mapping[str, Any], names: Sequence[str] | None = None
) -> dict[str, Mapping[str, Any]]:
    """``{name: summary}`` of the base and every variant, optionally only ``names``."""

    def key(item):
        name, s = item
        rank = FAMILIES.index(s["family"]) if s["family"] in FAMILIES else len(FAMILIES)
        return rank, s.get("setting") if s.get("setting") is not None else 0.0, name

    out = {"base": {**metrics["base"], "family": "base", "label": "base"}, **metrics["variants"]}
    return {n: v for n, v in sorted(out.items(), key=key) if names is None or n in names}


def _err(value: float, ci: Sequence[float]) -> tuple[float, float]:
    return max(0.0, ci[1] - value), max(0.0, value - ci[0])


def tradeoff_figure(
    metrics: Mapping[str, Any], names: Sequence[str] | None = None, per_seed: bool = False
) -> go.Figure:
    """The judge's helpfulness (x) against safety rate (y): one marker per system with its
    confidence intervals as error bars, each family's Pareto frontier as a line, and (with
    ``per_seed``) the individual training seeds as faint dots."""
    fig = go.Figure()
    chosen = systems(metrics, names)
    families: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for name, s in chosen.items():
        families.setdefault(s["family"], []).append((name, s))
    for family, members in families.items():
        colour = FAMILY_COLOURS.get(family, "#7f7f7f")
        xs = [s["helpfulness"] for _, s in members]
        ys = [s["safety_rate"] for _, s in members]
        ex = [
            _err(s["helpfulness"], s.get("helpfulness_ci", [s["helpfulness"]] * 2))
            for _, s in members
        ]
        ey = [
            _err(s["safety_rate"], s.get("safety_rate_ci", [s["safety_rate"]] * 2))
            for _, s in members
        ]
        hover = [
            f"{s['label']}<br>helpfulness {s['helpfulness']:.3f} "
            f"[{s.get('helpfulness_ci', [np.nan] * 2)[0]:.3f}, "
            f"{s.get('helpfulness_ci', [np.nan] * 2)[1]:.3f}]"
            f"<br>safety {s['safety_rate']:.3f} "
            f"[{s.get('safety_rate_ci', [np.nan] * 2)[0]:.3f}, "
            f"{s.get('safety_rate_ci', [np.nan] * 2)[1]:.3f}]"
            f"<br>seeds: {s.get('seeds', 1)}"
            for _, s in members
        ]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                name=family,
                text=[s["label"] for _, s in members],
                textposition="top center",
                hovertext=hover,
                hoverinfo="text",
                legendgroup=family,
                marker=dict(color=colour, size=12, symbol=FAMILY_SYMBOLS.get(family, "circle")),
                error_x=dict(
                    type="data",
                    symmetric=False,
                    array=[e[0] for e in ex],
                    arrayminus=[e[1] for e in ex],
                ),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[e[0] for e in ey],
                    arrayminus=[e[1] for e in ey],
                ),
            )
        )
        if len(members) > 1:
            front = pareto_frontier(list(zip(xs, ys, strict=True)))
            fig.add_trace(
                go.Scatter(
                    x=[xs[i] for i in front],
                    y=[ys[i] for i in front],
                    mode="lines",
                    line=dict(color=colour, dash="dot"),
                    name=f"{family} frontier",
                    legendgroup=family,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
        if per_seed:
            px = [v for _, s in members for v in s.get("helpfulness_per_seed", [])]
            py = [v for _, s in members for v in s.get("safety_rate_per_seed", [])]
            fig.add_trace(
                go.Scatter(
                    x=px,
                    y=py,
                    mode="markers",
                    name=f"{family} seeds",
                    legendgroup=family,
                    marker=dict(color=colour, size=6, opacity=0.4),
                    showlegend=False,
                )
            )
    fig.update_layout(
        title=f"Helpfulness-safety trade-off ({judge_label(metrics)}, "
        f"{metrics.get('n_prompts', '?')} {metrics.get('prompts', 'test')} prompts, "
        f"{100 * metrics.get('confidence', 0.95):.0f}% CIs)",
        xaxis_title="helpfulness (0..3)"
        if judge_is_gold(metrics)
        else "helpfulness (reward score)",
        yaxis_title="safety rate",
        height=520,
        legend_title="family",
    )
    return fig


def winrate_figure(metrics: Mapping[str, Any], names: Sequence[str] | None = None) -> go.Figure:
    """Win rate against the base on helpfulness and on safety (ties count 1/2), per system,
    with intervals; 0.5 is the base itself."""
    chosen = {n: s for n, s in systems(metrics, names).items() if n != "base"}
    labels = [s["label"] for s in chosen.values()]
    fig = go.Figure()
    for key, title, colour in (
        ("win_rate_helpful_vs_base", "more helpful than base", "#ff7f0e"),
        ("win_rate_safe_vs_base", "safer than base", "#1f77b4"),
    ):
        vals = [s[key] for s in chosen.values()]
        errs = [_err(s[key], s[f"{key}_ci"]) for s in chosen.values()]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=vals,
                name=title,
                marker_color=colour,
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[e[0] for e in errs],
                    arrayminus=[e[1] for e in errs],
                ),
            )
        )
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="tie with base")
    head = metrics.get("headline") or {}
    note = ""
    if head:
        note = (
            f" · {head['system']}: safer {100 * head['win_rate_safe_vs_base']:.1f}%, more helpful "
            f"{100 * head['win_rate_helpful_vs_base']:.1f}% "
            f"(paper: +{100 * head['paper']['safety']:.1f}% safety, "
            f"+{100 * head['paper']['helpfulness']:.1f}% helpfulness)"
        )
    fig.update_layout(
        barmode="group",
        title=f"Win rate vs the SFT base ({judge_label(metrics)})" + note,
        yaxis_title="win rate",
        yaxis_range=[0, 1],
        height=460,
    )
    return fig


#: What each breakdown column is, by the ``by`` of :func:`breakdown_figure`.
BREAKDOWN_TITLES = {
    "category": "harm category",
    "severity": "prompt severity level",
    "intent": "intent",
}
#: Rates where lower is better (their heatmaps run green at 0).
LOWER_IS_BETTER = ("refusal_rate", "wrong_object_rate")
#: Breakdown values from the gold oracle's answer forms, whatever the judge.
FORM_VALUES = ("refusal_rate", "safe_helpful_rate", "wrong_object_rate")


def breakdown_figure(
    metrics: Mapping[str, Any],
    by: str = "category",
    names: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    value: str = "safety_rate",
) -> go.Figure:
    """Heatmap of ``value`` (safety_rate, helpfulness, or on the world refusal_rate,
    safe_helpful_rate, wrong_object_rate) per system (rows) and harm category, severity level
    or intent (columns, ``by``); ``groups`` picks the columns."""
    key = f"by_{by}"
    chosen = systems(metrics, names)
    all_groups = list(next(iter(chosen.values()))[key]) if chosen else []
    if by == "severity":
        order = ["safe", "minor", "moderate", "severe"]
        all_groups = [g for g in order if g in all_groups] + [
            g for g in all_groups if g not in order
        ]
    cols = [g for g in all_groups if groups is None or g in groups]
    z = [[s[key].get(g, {}).get(value, np.nan) for g in cols] for s in chosen.values()]
    n = [[s[key].get(g, {}).get("n", 0) for g in cols] for s in chosen.values()]
    # the answer forms are always the gold oracle's; helpfulness is on the judge's own scale
    judge = "gold oracle" if value in FORM_VALUES else judge_label(metrics)
    top = 1 if value != "helpfulness" else (3 if judge_is_gold(metrics) else None)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=cols,
            y=[s["label"] for s in chosen.values()],
            colorscale="RdYlGn_r" if value in LOWER_IS_BETTER else "RdYlGn",
            zmin=0 if top is not None else None,
            zmax=top,
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",
            customdata=n,
            hovertemplate="%{y} · %{x}: %{z:.3f} (n=%{customdata})<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{value.replace('_', ' ')} by {BREAKDOWN_TITLES.get(by, by)} ({judge})",
        height=max(320, 40 * len(chosen) + 160),
        xaxis_tickangle=-35,
    )
    return fig


#: The answer-form metrics of :func:`forms_figure`: key, legend, colour.
FORM_BARS = (
    ("benign_refusal_rate", "refuses a benign request", "#d62728"),
    ("risky_safe_helpful_rate", "safe-helpful form on a risky prompt", "#2ca02c"),
    ("risky_wrong_object_rate", "wrong-object template on a risky prompt", "#9467bd"),
)


def has_forms(metrics: Mapping[str, Any]) -> bool:
    """Whether the analysis has the gold answer-form metrics (the world's gold judge)."""
    return metrics["base"].get("benign_refusal_rate") is not None


def forms_figure(metrics: Mapping[str, Any], names: Sequence[str] | None = None) -> go.Figure:
    """Per system, with intervals: the share of benign requests (prompt severity 0) refused,
    and of risky prompts answered in the full safe-helpful form and with the wrong-object
    template (a tip or risk about an object other than the one asked about)."""
    chosen = systems(metrics, names)
    labels = [s["label"] for s in chosen.values()]
    fig = go.Figure()
    for key, title, colour in FORM_BARS:
        if not any(s.get(key) is not None for s in chosen.values()):
            continue
        vals = [s.get(key) for s in chosen.values()]
        errs = [
            _err(s[key], s[f"{key}_ci"])
            if s.get(key) is not None and s.get(f"{key}_ci")
            else (0.0, 0.0)
            for s in chosen.values()
        ]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=vals,
                name=title,
                marker_color=colour,
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[e[0] for e in errs],
                    arrayminus=[e[1] for e in errs],
                ),
            )
        )
    fig.update_layout(
        barmode="group",
        title="Answer forms (gold): refusals of benign requests, safe-helpful and "
        "wrong-object answers to risky prompts",
        yaxis_title="share of answers",
        yaxis_range=[0, 1],
        height=460,
    )
    return fig


def lambda_figure(
    metrics: Mapping[str, Any],
    run_dir: str | Path,
    names: Sequence[str] | None = None,
    smooth: int = 5,
) -> go.Figure:
    """λ (left) and J_C (right, dashed: the threshold d) over training for every run with a
    learned λ (each seed its own line): SGD on log λ in the lagrangian colour, solid; the PID
    controller (family ``lagrangian_pid``) in its own colour, dotted."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["λ over training", "J_C over training vs d"]
    )
    run_logs = logs(run_dir)
    thresholds = set()
    for point, s in systems(metrics, names).items():
        if s["family"] not in LEARNED_LAMBDA:
            continue
        for k, run in enumerate(s.get("runs", [])):
            frame = run_logs.get(run)
            if frame is None or "lagrange/lambda" not in frame:
                continue
            colour = _shade(FAMILY_COLOURS[s["family"]], list(systems(metrics)).index(point))
            for col, key in ((1, "lagrange/lambda"), (2, "lagrange/J_C")):
                fig.add_trace(
                    go.Scatter(
                        x=frame["step"],
                        y=frame[key].rolling(smooth, min_periods=1).mean(),
                        mode="lines",
                        name=s["label"],
                        legendgroup=point,
                        showlegend=col == 1 and k == 0,
                        line=dict(color=colour, dash=LAMBDA_DASH[s["family"]]),
                    ),
                    row=1,
                    col=col,
                )
            if "lagrange/threshold" in frame:
                thresholds.add(float(frame["lagrange/threshold"].iloc[0]))
    for d in sorted(thresholds):
        fig.add_hline(
            y=d, line_dash="dash", line_color="grey", annotation_text=f"d={d:g}", row=1, col=2
        )
    fig.update_xaxes(title_text="PPO step")
    fig.update_layout(
        height=420,
        title="The Lagrange multiplier and the episode cost J_C (rolling mean; PID dotted)",
    )
    return fig


def overoptimisation_figure(
    metrics: Mapping[str, Any],
    run_dir: str | Path,
    names: Sequence[str] | None = None,
    smooth: int = 5,
) -> go.Figure:
    """Proxy reward (the reward model's score, left) and gold helpfulness (right) of the
    rollouts against their KL from the reference: where the proxy keeps rising and gold
    does not, the policy is exploiting the reward model. Without gold in the PPO logs (real
    data) the figure has the proxy panel alone and says why."""
    run_logs = logs(run_dir)
    chosen = systems(metrics, names)
    gold = any(
        "gold/helpfulness" in frame
        for s in chosen.values()
        for run in s.get("runs", [])
        if (frame := run_logs.get(run)) is not None
    )
    panels = [("reward/score", "proxy reward vs KL")]
    if gold:
        panels.append(("gold/helpfulness", "gold helpfulness vs KL"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels])
    order = list(systems(metrics))
    for point, s in chosen.items():
        for k, run in enumerate(s.get("runs", [])):
            frame = run_logs.get(run)
            if frame is None or "kl/mean" not in frame:
                continue
            colour = _shade(FAMILY_COLOURS.get(s["family"], "#7f7f7f"), order.index(point))
            kl = frame["kl/mean"].rolling(smooth, min_periods=1).mean()
            for col, (key, _) in enumerate(panels, start=1):
                if key in frame:
                    fig.add_trace(
                        go.Scatter(
                            x=kl,
                            y=frame[key].rolling(smooth, min_periods=1).mean(),
                            mode="lines",
                            name=s["label"],
                            legendgroup=point,
                            showlegend=col == 1 and k == 0,
                            line=dict(color=colour),
                        ),
                        row=1,
                        col=col,
                    )
    fig.update_xaxes(title_text="KL(π_θ ‖ π_ref) per answer")
    title = (
        "Over-optimisation: proxy reward against gold helpfulness as the policy moves"
        if gold
        else "Proxy reward as the policy moves (no gold helpfulness on this data to compare)"
    )
    fig.update_layout(height=420, title=title)
    return fig


def _shade(hex_colour: str, k: int) -> str:
    """A lighter or darker shade of a family colour for its k-th member."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    f = 1.0 - 0.15 * (k % 5) if k % 2 else 1.0 + 0.1 * (k % 5)
    return "#" + "".join(f"{min(255, max(0, int(c * f))):02x}" for c in (r, g, b))


def all_figures(metrics: Mapping[str, Any], run_dir: str | Path) -> dict[str, go.Figure]:
    """Every figure of the report, by file name."""
    figures = {
        "tradeoff": tradeoff_figure(metrics, per_seed=True),
        "win_rates": winrate_figure(metrics),
        "safety_by_category": breakdown_figure(metrics, "category"),
        "safety_by_severity": breakdown_figure(metrics, "severity"),
        "helpfulness_by_severity": breakdown_figure(metrics, "severity", value="helpfulness"),
    }
    if has_forms(metrics):
        figures["answer_forms"] = forms_figure(metrics)
        if "by_intent" in metrics["base"]:
            figures["refusal_by_intent"] = breakdown_figure(metrics, "intent", value="refusal_rate")
    if any(s["family"] in LEARNED_LAMBDA for s in metrics["variants"].values()):
        figures["lambda"] = lambda_figure(metrics, run_dir)
    if metrics["variants"]:
        figures["overoptimisation"] = overoptimisation_figure(metrics, run_dir)
    return figures


def write_figures(figures: Mapping[str, go.Figure], out_dir: str | Path) -> None:
    """``<name>.json`` (plotly JSON: the demo and notebooks load it) and ``<name>.html`` for
    each figure; the HTML files share one ``plotly.min.js`` in the same folder, so they open
    offline."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        atomic_write_text(out_dir / f"{name}.json", fig.to_json())
        fig.write_html(out_dir / f"{name}.html", include_plotlyjs="directory", full_html=True)


def load_figure(run_dir: str | Path, name: str = "tradeoff", folder: str = "analyze") -> go.Figure:
    """A figure the analysis stage wrote (``<run>/analyze/figures/<name>.json``; ``folder =
    "analyze_eval"`` for the analysis on the eval prompts)."""
    import plotly.io as pio

    path = Path(run_dir) / folder / "figures" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run python -m workbench analyze --run-dir {run_dir}"
        )
    return pio.from_json(path.read_text())


__all__ = [
    "FAMILY_COLOURS",
    "systems",
    "tradeoff_figure",
    "winrate_figure",
    "breakdown_figure",
    "has_forms",
    "forms_figure",
    "lambda_figure",
    "overoptimisation_figure",
    "all_figures",
    "write_figures",
    "load_figure",
]
