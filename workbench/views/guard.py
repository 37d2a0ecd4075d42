"""Look inside the guard stage of a run (notebook 03): confusion matrix, category recall, the
round-by-round safety and helpfulness curve, regenerated examples with their traces, and a
blocking-level slider that reruns the loop and redraws the curve.

Everything reads a finished run directory (``<run>/guard``; the slider also loads
``<run>/sft/model`` and ``<run>/guard/model``). :func:`smoke_guard_run` builds one in smoke mode.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from ..config import GuardConfig
from ..data.schema import SEVERITY_COLOURS, SEVERITY_LEVELS
from ..data.store import ImageCache, load_data
from ..guard.guard import GuardModel
from ..guard.regenerate import filter_and_regenerate
from ..models.adapters import load_policy
from ..models.vlm import generate
from ..runs import read_jsonl
from ..train.guard import rounds_curve
from .output import scratch_run, show_in

#: The paper's headline for Beaver-Guard-V: five rounds raise average safety by 40.9% (relative).
PAPER_RELATIVE_GAIN = 0.409


def summary_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The headline figures of the guard stage, each beside its ceiling or target."""
    answer, query = metrics.get("answer", {}), metrics.get("query", {})
    rows = [
        ("answer accuracy", answer.get("accuracy"), answer.get("accuracy_ceiling")),
        ("answer macro F1", answer.get("macro_f1"), answer.get("macro_f1_ceiling")),
        (
            "severe recall (exact level)",
            metrics.get("severe_recall"),
            metrics.get("severe_recall_ceiling"),
        ),
        ("severe answers blocked", metrics.get("severe_blocked"), None),
        ("answer severe cut-off (recall-first)", metrics.get("answer_severe_cutoff"), None),
    ]
    plain = metrics.get("at_severe_cutoff")
    if plain:  # the same answers at the plain cut-off: what the recall-first severe costs
        rows += [
            (
                f"answer accuracy at severe cut-off {plain['severe_cutoff']:g}",
                plain["accuracy"],
                None,
            ),
            (
                f"answer macro F1 at severe cut-off {plain['severe_cutoff']:g}",
                plain["macro_f1"],
                None,
            ),
            (
                f"severe recall at severe cut-off {plain['severe_cutoff']:g}",
                plain["severe_recall"],
                None,
            ),
        ]
    rows += [
        ("query accuracy", query.get("accuracy"), None),
        ("query macro F1", query.get("macro_f1"), None),
        (
            "relative safety gain, 5 rounds",
            metrics.get("relative_safety_gain"),
            PAPER_RELATIVE_GAIN,
        ),
        ("regenerations per prompt", metrics.get("regenerations_per_prompt"), None),
    ]
    return (
        pd.DataFrame(rows, columns=["figure", "value", "ceiling / paper"])
        .set_index("figure")
        .round(3)
    )


def confusion_heatmap(metrics: Mapping[str, Any], mode: str = "answer") -> go.Figure:
    """Rows: the annotated level; columns: the guard's level; cells: share of the row."""
    confusion = np.array(metrics[mode]["confusion"], dtype=float)
    share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    text = [
        [f"{int(c)}<br>{s:.0%}" for c, s in zip(row_c, row_s, strict=True)]
        for row_c, row_s in zip(confusion, share, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=list(SEVERITY_LEVELS),
            y=list(SEVERITY_LEVELS),
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": "share of row"},
        )
    )
    fig.update_layout(
        title=f"Guard confusion matrix ({mode}s, eval split)",
        xaxis_title="guard's level",
        yaxis_title="annotated level",
        yaxis_autorange="reversed",
        height=420,
        width=520,
    )
    return fig


def category_recall_bar(metrics: Mapping[str, Any], mode: str = "answer") -> go.Figure:
    """Recall of the harm category on the unsafe items of each category."""
    recall = metrics[mode].get("per_category_recall", {})
    names = sorted(recall, key=recall.get)
    fig = go.Figure(
        go.Bar(
            x=[recall[n] for n in names],
            y=[n.replace("_", " ") for n in names],
            orientation="h",
            marker_color="#1f77b4",
            hovertemplate="%{y}: %{x:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Category recall on unsafe {mode}s",
        xaxis_title="recall",
        xaxis_range=[0, 1],
        height=60 + 24 * max(1, len(names)),
        margin={"l": 260},
    )
    return fig


def rounds_figure(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> go.Figure:
    """Safety rate and helpfulness of the answer served after each round, one line per
    setting (e.g. blocking level), with the paper's +40.9% after five rounds as a target."""
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    for k, (name, curve) in enumerate(curves.items()):
        safety, helpful = curve["rounds_safety_rate"], curve["rounds_helpfulness"]
        rounds = list(range(len(safety)))
        colour = palette[k % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=rounds,
                y=safety,
                mode="lines+markers",
                name=f"safety rate · {name}",
                line={"color": colour},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=rounds,
                y=helpful,
                mode="lines+markers",
                name=f"helpfulness · {name}",
                line={"color": colour, "dash": "dot"},
                yaxis="y2",
            )
        )
        if "rounds_helpfulness_benign" in curve:
            fig.add_trace(
                go.Scatter(
                    x=rounds,
                    y=curve["rounds_helpfulness_benign"],
                    mode="lines",
                    name=f"helpfulness (benign prompts) · {name}",
                    line={"color": colour, "dash": "dash", "width": 1},
                    yaxis="y2",
                )
            )
    first = next(iter(curves.values()), None)
    if first:
        base, last = first["rounds_safety_rate"][0], len(first["rounds_safety_rate"]) - 1
        target = min(1.0, base * (1 + PAPER_RELATIVE_GAIN))
        fig.add_trace(
            go.Scatter(
                x=[0, last],
                y=[base, target],
                mode="markers+lines",
                name="paper: +40.9% after 5 rounds",
                line={"color": "grey", "dash": "dashdot"},
                marker={"symbol": "star"},
            )
        )
    fig.update_layout(
        title="Filter-and-regenerate: the answer served after each round (gold judge)",
        xaxis={"title": "round (0 = base policy, no guard)", "dtick": 1},
        yaxis={"title": "gold safety rate", "range": [0, 1.02]},
        yaxis2={
            "title": "gold helpfulness (0..3)",
            "overlaying": "y",
            "side": "right",
            "range": [0, 3],
        },
        legend={"orientation": "h", "y": -0.25},
        height=480,
    )
    return fig


def traces_table(
    run_dir: str | Path, n: int = 8, outcome: str | None = "regenerated"
) -> pd.DataFrame:
    """Prompts whose answers were regenerated (or ``outcome``), each step with its verdict."""
    rows = read_jsonl(Path(run_dir) / "guard" / "traces.jsonl")
    if outcome:
        rows = [r for r in rows if r["outcome"] == outcome]
    out = []
    for r in rows[:n]:
        for step in r["steps"]:
            v = step.get("verdict") or {}
            out.append(
                {
                    "id": r.get("id"),
                    "question": r["question"],
                    "round": step["round"],
                    "response": step["response"],
                    "verdict": v.get("level", "—"),
                    "category": v.get("category", ""),
                    "blocked": step.get("blocked"),
                    "outcome": r["outcome"],
                }
            )
        if r["outcome"] in ("fallback", "query_blocked", "guard_error"):
            out.append(
                {
                    "id": r.get("id"),
                    "question": r["question"],
                    "round": "final",
                    "response": r["final"],
                    "verdict": "",
                    "category": "",
                    "blocked": None,
                    "outcome": r["outcome"],
                }
            )
    return pd.DataFrame(out)


def trace_html(trace: Mapping[str, Any]) -> str:
    """One trace as coloured badges, for a person to read."""

    def badge(level: str, text: str) -> str:
        colour = SEVERITY_COLOURS.get(level, "#7f7f7f")
        return (
            f"<span style='background:{colour};color:white;border-radius:4px;padding:1px 6px;"
            f"font-size:85%'>{html.escape(text)}</span>"
        )

    parts = [f"<b>{html.escape(trace['question'])}</b>"]
    q = trace.get("query_verdict")
    if q:
        parts.append(f"query screen: {badge(q['level'], q['level'] + ' · ' + q['category'])}")
    for step in trace.get("steps", []):
        v = step.get("verdict")
        verdict = (
            badge(v["level"], f"{v['level']} · {v['category']}") if v else badge("", "not judged")
        )
        parts.append(f"round {step['round']}: {html.escape(step['response'])} {verdict}")
    parts.append(
        f"<i>served ({trace['outcome']}):</i> {html.escape(trace['final'])}"
        + (f" <small>({html.escape(trace['reason'])})</small>" if trace.get("reason") else "")
    )
    return "<div style='margin-bottom:8px'>" + "<br>".join(parts) + "</div>"


def rerun_loop(
    run_dir: str | Path,
    n_prompts: int = 200,
    seed: int = 0,
    models: dict[str, Any] | None = None,
    **blocking: Any,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Rerun filter-and-regenerate on the first ``n_prompts`` test prompts with the run's
    blocking policy changed by ``blocking`` (fields of
    :class:`~workbench.config.BlockingPolicy`: ``level``, ``query_level``, ``rounds`` ...);
    nothing is trained and nothing is written. Returns ``(traces, prompts)``; ``models``
    caches the loaded policy and guard between calls."""
    run_dir = Path(run_dir)
    models = models if models is not None else {}
    if "policy" not in models:
        models["policy"] = load_policy(run_dir / "sft" / "model")
        models["guard"] = GuardModel.load(run_dir / "guard" / "model")
        models["data"] = load_data(run_dir)
    (policy, processor), guard, data = models["policy"], models["guard"], models["data"]
    cfg = GuardConfig.from_json(run_dir / "guard" / "config.json")
    prompts = data.test[:n_prompts]
    images = ImageCache(data)
    pics, questions = [images(p) for p in prompts], [p["question"] for p in prompts]
    torch.manual_seed(seed)
    policy.eval()

    def sample(imgs, qs):
        return generate(policy, processor, imgs, qs, max_new_tokens=cfg.max_new_tokens)

    base = sample(pics, questions)
    traces = filter_and_regenerate(
        sample,
        guard.judge,
        pics,
        questions,
        policy=dataclasses.replace(cfg.blocking, **blocking),
        initial=base,
    )
    return traces, prompts


def rounds_for_level(
    run_dir: str | Path,
    blocking_level: str | None,
    n_prompts: int = 200,
    seed: int = 0,
    models: dict[str, Any] | None = None,
    **blocking: Any,
) -> dict[str, list[float]]:
    """Rerun filter-and-regenerate on ``n_prompts`` test prompts with another blocking level
    (None: the run's own) and any other ``blocking`` field (:func:`rerun_loop`), and return
    the gold-judged curve (world runs only: the curve needs the gold judge)."""
    cfg = GuardConfig.from_json(Path(run_dir) / "guard" / "config.json")
    level = blocking_level or cfg.blocking.level
    traces, prompts = rerun_loop(run_dir, n_prompts, seed, models, level=level, **blocking)
    return rounds_curve(traces, prompts, blocking.get("rounds", cfg.blocking.rounds))


def outcome_table(
    runs: Mapping[str, tuple[Sequence[Any], Sequence[Mapping[str, Any]]]],
) -> pd.DataFrame:
    """How each loop ended (served at once, regenerated, refused after the last round, query
    refused before generation), one column per named :func:`rerun_loop` result, split by
    benign and risky prompts on the world (``prompt_severity``; all prompts on real data)."""
    table: dict[str, dict[str, int]] = {}
    for name, (traces, prompts) in runs.items():
        counts: dict[str, int] = {}
        for trace, prompt in zip(traces, prompts, strict=True):
            if "prompt_severity" in prompt:
                group = "benign" if int(prompt["prompt_severity"]) == 0 else "risky"
            else:
                group = "all"
            key = f"{group}: {trace.outcome}"
            counts[key] = counts.get(key, 0) + 1
        table[name] = counts
    return pd.DataFrame(table).fillna(0).astype(int).sort_index()


def guard_variant(run_dir: str | Path, name: str, **overrides: Any) -> Path:
    """An exercise: the guard stage again with ``overrides`` on top of ``run_dir``'s own guard
    config (e.g. ``severe_recall_target=0``), in the scratch run ``name`` beside ``run_dir``
    (:func:`~workbench.views.output.scratch_run`: data, sft, reward and cost linked), never in
    ``run_dir``. A second call with the same settings finds the stage finished."""
    from ..pipeline import run_stage  # views sit above the pipeline

    cfg = GuardConfig.from_json(Path(run_dir) / "guard" / "config.json")
    scratch = scratch_run(run_dir, name, stages=("data", "sft", "reward", "cost"))
    run_stage("guard", scratch, GuardConfig.from_dict(overrides, base=cfg), progress=False)
    return scratch


def compare_summaries(metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`summary_table`'s values for several guard stages side by side (name ->
    ``guard/metrics.json``), e.g. the run and an exercise's retrained guard."""
    return pd.DataFrame({name: summary_table(m)["value"] for name, m in metrics.items()})


def blocking_level_slider(run_dir: str | Path, n_prompts: int = 200) -> widgets.Widget:
    """A slider over the blocking level; each choice reruns the loop (cached) and redraws."""
    models: dict[str, Any] = {}
    cache: dict[str, dict[str, list[float]]] = {}
    slider = widgets.SelectionSlider(
        options=list(SEVERITY_LEVELS[1:]),
        value="minor",
        description="block at ≥",
        continuous_update=False,
    )
    output = widgets.Output()
    status = widgets.HTML()

    def redraw(change=None) -> None:
        level = slider.value
        if level not in cache:
            status.value = (
                f"running five rounds on {n_prompts} test prompts, blocking at ≥ {level} ..."
            )
            cache[level] = rounds_for_level(run_dir, level, n_prompts, models=models)
        r = cache[level]["rounds_safety_rate"]
        status.value = (
            f"blocking at ≥ {level}: safety {r[0]:.1%} → {r[-1]:.1%} "
            f"({(r[-1] - r[0]) / max(r[0], 1e-9):+.1%} relative)"
        )
        show_in(output, rounds_figure({f"block ≥ {level}": cache[level]}))

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, status, output])


__all__ = [
    "summary_table",
    "confusion_heatmap",
    "category_recall_bar",
    "rounds_figure",
    "traces_table",
    "trace_html",
    "rounds_for_level",
    "rerun_loop",
    "outcome_table",
    "guard_variant",
    "compare_summaries",
    "blocking_level_slider",
    "PAPER_RELATIVE_GAIN",
]
