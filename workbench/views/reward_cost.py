"""Look inside the SFT, reward and cost stages of a run: tables, plotly figures and a scoring
widget (notebook 02).

The reward model r(x, y) is trained on the *more helpful* labels, the cost model c(x, y) on
the *safer* labels plus a sign term per response (``workbench/train/preference.py``); both are
:class:`~workbench.models.score.ScoreModel` s read at the last real token. On the synthetic
world every eval response also has gold scores, so the views below compare the learned scores
with the gold judge and each accuracy with its *label-noise ceiling* (a perfect gold ranker
scored against the same noisy labels).

Everything reads a finished run directory (``<run>/sft``, ``<run>/reward``, ``<run>/cost``):
:func:`samples_table`, :func:`base_policy_table`, :func:`accuracy_frame`,
:func:`accuracy_vs_ceiling`, :func:`reward_vs_gold`, :func:`cost_by_level_box`,
:func:`graded_vs_binary` (two runs: graded and binary sign weights), and
:func:`score_widget`, an ``ipywidgets`` UI over the pure function :func:`score_response`.
:func:`smoke_runs` builds both runs in smoke mode (what notebooks and tests use);
:func:`variant_run` retrains the reward or cost stage with changed settings beside a run.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image

from ..data import language
from ..data.oracle import gold_score
from ..data.overview import harmful_example, severity_name
from ..data.schema import SEVERITY_COLOURS, SEVERITY_LEVELS, is_world
from ..data.store import load_data
from ..models.score import ScoreModel
from ..models.tokenizer import unknown_words
from ..models.vlm import encode
from ..pipeline import hf_progress_bars, resolve_config, run_stage
from ..runs import load_metrics, read_jsonl
from ..train.preference import correlations
from .data import png_bytes, scaled_image
from .output import scratch_run

#: The stages a binary-cost run borrows from the graded run (symlinked, not retrained).
SHARED_STAGES: tuple[str, ...] = ("data", "sft")
#: Fields a prompt needs for the gold oracle (world prompts only).
#: The columns of score rows that hold the gold oracle's judgments (world data only).
GOLD_COLUMNS: frozenset[str] = frozenset({"gold_helpfulness", "gold_harmlessness"})
SAFE_COLOUR, UNSAFE_COLOUR = "#2ca02c", "#d62728"
MODE_COLOURS = {"graded": "#1f77b4", "binary": "#ff7f0e"}
SIGN_MODE_LABELS = {"graded": "graded: s = -harmless rate", "binary": "binary: s = ±1 from is_safe"}


# --- building the runs ---------------------------------------------------------------------
def variant_run(
    run_dir: str | Path,
    out_dir: str | Path,
    stage: str,
    smoke: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> Path:
    """Train ``stage`` (``reward`` or ``cost``) again with some config fields changed, into a
    run directory of its own, ``out_dir``, whose ``data/`` and ``sft/`` are symlinks to
    ``run_dir``'s: both models see the same pairs and start from the same SFT model.

    The config is ``run_dir``'s own ``<stage>/config.json`` (so only ``overrides`` differ; the
    smoke or default preset when there is none) with ``overrides`` on top. The stage is
    skipped when it already finished with the same config. Returns ``out_dir``.
    """
    run_dir, out_dir = Path(run_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for shared in SHARED_STAGES:
        source, link = run_dir / shared, out_dir / shared
        if not source.is_dir():
            raise FileNotFoundError(
                f"{source} does not exist: run the {shared} stage in {run_dir} first"
            )
        if link.is_symlink() and link.resolve() != source.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(source, target_is_directory=True)
    own_config = run_dir / stage / "config.json"
    cfg = resolve_config(
        stage, smoke=smoke, config_file=own_config if own_config.is_file() else None, **overrides
    )
    with hf_progress_bars(progress):
        run_stage(stage, out_dir, cfg, progress=progress)
    return out_dir


def binary_cost_run(
    run_dir: str | Path,
    binary_dir: str | Path,
    smoke: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> Path:
    """A run directory ``binary_dir`` whose cost model uses binary sign weights (s = ±1 from
    ``is_safe``) instead of graded ones (s = -harmless_rate); everything else as in
    ``run_dir`` (:func:`variant_run`: same data, same SFT model, same cost config)."""
    return variant_run(
        run_dir,
        binary_dir,
        "cost",
        smoke=smoke,
        progress=progress,
        **{**overrides, "sign_mode": "binary"},
    )


def exercise_run(run_dir: str | Path, name: str, stage: str, **overrides: Any) -> Path:
    """An exercise: retrain ``stage`` (``reward`` or ``cost``) with ``overrides`` in the
    scratch run ``name`` beside ``run_dir`` (:func:`~workbench.views.output.scratch_run`;
    ``data/`` and ``sft/`` linked), never in ``run_dir`` itself (:func:`variant_run`)."""
    scratch = scratch_run(run_dir, name, stages=SHARED_STAGES)
    return variant_run(run_dir, scratch, stage, **overrides)


def compare_metrics(
    runs: Mapping[str, str | Path], stage: str, keys: Sequence[str]
) -> pd.DataFrame:
    """``keys`` of ``stage``'s ``metrics.json`` in each of ``runs`` (name -> run directory),
    one column per run: an exercise's result beside the run it changed."""
    table = {}
    for name, run in runs.items():
        metrics = load_metrics(run, stage)
        table[name] = {key: metrics.get(key, float("nan")) for key in keys}
    return pd.DataFrame(table).round(3)


# --- reading a run -------------------------------------------------------------------------
def eval_scores(run_dir: str | Path, stage: str) -> pd.DataFrame:
    """``<run>/<stage>/eval_scores.jsonl`` (stage ``reward`` or ``cost``) as a table: one row
    per eval response with its ``score``, annotator labels, severity ``level`` and, on the
    world, ``gold_helpfulness`` / ``gold_harmlessness``. The question and response text are
    joined from the data stage when the eval records can be found (for hover texts)."""
    path = Path(run_dir) / stage / "eval_scores.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the {stage} stage in {run_dir} first")
    frame = pd.DataFrame(read_jsonl(path))
    try:
        records = {r.get("id", f"eval-{n:06d}"): r for n, r in enumerate(load_data(run_dir).eval)}
    except (FileNotFoundError, OSError, ValueError):
        records = {}
    if records and not frame.empty:
        frame["question"] = [records.get(i, {}).get("question", "") for i in frame["id"]]
        frame["text"] = [
            records.get(i, {}).get(f"response_{k}", "")
            for i, k in zip(frame["id"], frame["response"], strict=True)
        ]
    return frame


def samples_table(run_dir: str | Path, n: int = 10) -> pd.DataFrame:
    """The first ``n`` base-policy answers to test prompts (``<run>/sft/samples.jsonl``) with
    the gold judge's helpfulness (0..3), harmlessness (-3..+3) and verdict when present."""
    path = Path(run_dir) / "sft" / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the sft stage in {run_dir} first")
    rows = []
    for s in read_jsonl(path)[:n]:
        row: dict[str, Any] = {"question": s["question"]}
        if "intent" in s:
            row["intent"] = s["intent"]
        if "prompt_severity" in s:
            row["prompt severity"] = severity_name(int(s["prompt_severity"]))
        row["base-policy answer"] = s["response"]
        if "helpfulness" in s and "harmlessness" in s:
            row["gold helpfulness"] = float(s["helpfulness"])
            row["gold harmlessness"] = float(s["harmlessness"])
            row["safe"] = float(s["harmlessness"]) > 0
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.index = pd.RangeIndex(len(frame), name="test prompt")
    return frame


def base_policy_table(run_dir: str | Path) -> pd.DataFrame:
    """The base policy's gold helpfulness and safety rate on the test prompts: overall, by
    intent and by prompt severity (from ``<run>/sft/metrics.json``; empty for real data)."""
    summary = load_metrics(run_dir, "sft").get("base_policy") or {}
    rows = []
    if summary:
        rows.append({"group": "overall", "value": "all", **_agg(summary)})
    for key, name in (("by_intent", "intent"), ("by_severity", "prompt severity")):
        for value, agg in (summary.get(key) or {}).items():
            rows.append({"group": name, "value": value, **_agg(agg)})
    columns = ["group", "value", "helpfulness", "safety_rate", "n"]
    return pd.DataFrame(rows, columns=columns).set_index(["group", "value"])


def _agg(agg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "helpfulness": agg.get("helpfulness"),
        "safety_rate": agg.get("safety_rate"),
        "n": agg.get("n"),
    }


# --- accuracy vs the label-noise ceiling -----------------------------------------------------
def accuracy_frame(
    reward_metrics: Mapping[str, Any], cost_metrics: Mapping[str, Any]
) -> pd.DataFrame:
    """One row per held-out test of the two models: the reward model ranking the more helpful
    response first, the cost model ranking the less safe response first, and the cost model's
    sign (C > 0 <=> unsafe). Columns ``accuracy``, ``ceiling`` (a perfect gold judge against
    the same noisy labels; NaN without gold) and ``gap`` (ceiling - accuracy)."""
    tests = (
        ("reward: more helpful pair", reward_metrics, "eval_accuracy", "eval_accuracy_ceiling"),
        ("cost: safer pair", cost_metrics, "eval_accuracy", "eval_accuracy_ceiling"),
        (
            "cost: sign (C > 0 = unsafe)",
            cost_metrics,
            "eval_sign_accuracy",
            "eval_sign_accuracy_ceiling",
        ),
    )
    rows = {}
    for name, metrics, key, ceiling_key in tests:
        if key not in metrics:
            raise KeyError(
                f"{key!r} missing from the {name.split(':')[0]} metrics: is this a finished stage?"
            )
        accuracy = float(metrics[key])
        ceiling = float(metrics.get(ceiling_key, math.nan))
        rows[name] = {"accuracy": accuracy, "ceiling": ceiling, "gap": ceiling - accuracy}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("test")


def accuracy_vs_ceiling(
    reward_metrics: Mapping[str, Any], cost_metrics: Mapping[str, Any]
) -> go.Figure:
    """Bars: held-out accuracy of the reward and cost models (:func:`accuracy_frame`); a
    black tick on each bar marks its label-noise ceiling (world only), a dashed line chance."""
    table = accuracy_frame(reward_metrics, cost_metrics)
    names = list(table.index)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=table["accuracy"],
            name="model accuracy",
            marker_color=["#1f77b4", "#9467bd", "#9467bd"],
            text=[f"{v:.0%}" for v in table["accuracy"]],
            textposition="inside",
            hovertemplate="%{x}<br>accuracy %{y:.1%}<extra></extra>",
        )
    )
    ceilings = table["ceiling"]
    if ceilings.notna().any():
        fig.add_trace(
            go.Scatter(
                x=names,
                y=[None if math.isnan(c) else c for c in ceilings],
                mode="markers+text",
                name="label-noise ceiling",
                text=["" if math.isnan(c) else f"ceiling {c:.0%}" for c in ceilings],
                textposition="top center",
                marker={
                    "symbol": "line-ew-open",
                    "size": 60,
                    "color": "black",
                    "line": {"width": 3, "color": "black"},
                },
                hovertemplate="%{x}<br>ceiling %{y:.1%}<extra></extra>",
            )
        )
    fig.add_hline(
        y=0.5,
        line_dash="dash",
        line_color="#888888",
        annotation_text="coin flip",
        annotation_position="bottom right",
    )
    fig.update_layout(
        title="Held-out accuracy of the reward and cost models vs the label-noise ceiling",
        yaxis={
            "title": "accuracy on eval pairs / responses",
            "range": [0, 1.1],
            "tickformat": ".0%",
        },
        showlegend=True,
        legend={"orientation": "h", "y": -0.2},
        meta={"accuracy": table["accuracy"].tolist(), "ceiling": ceilings.tolist()},
    )
    return fig


# --- scores vs gold ---------------------------------------------------------------------------
def reward_vs_gold(run_dir: str | Path, jitter: float = 0.12, seed: int = 0) -> go.Figure:
    """World only: each eval response as a point (gold helpfulness + jitter, reward score),
    green when its annotated label is safe, red when unsafe; a black line joins the mean
    reward at each gold value. ``fig.layout.meta`` holds ``n`` (points) and the Pearson /
    Spearman correlations from the reward stage's metrics."""
    frame = eval_scores(run_dir, "reward")
    if not GOLD_COLUMNS <= set(frame.columns):
        raise ValueError(
            "reward vs gold needs the synthetic world's gold scores "
            "(real BeaverTails-V records have none)"
        )
    rng = np.random.default_rng(seed)
    x = frame["gold_helpfulness"].to_numpy(float) + rng.uniform(-jitter, jitter, len(frame))
    fig = go.Figure()
    for safe, name, colour in (
        (True, "safe response", SAFE_COLOUR),
        (False, "unsafe response", UNSAFE_COLOUR),
    ):
        keep = (frame["is_safe"] == safe).to_numpy()
        fig.add_trace(
            go.Scatter(
                x=x[keep],
                y=frame["score"][keep],
                mode="markers",
                name=name,
                marker={"color": colour, "size": 6, "opacity": 0.6},
                customdata=_hover(frame[keep]),
                hovertemplate="reward %{y:.2f}<br>%{customdata}<extra>" + name + "</extra>",
            )
        )
    means = frame.groupby("gold_helpfulness")["score"].mean()
    fig.add_trace(
        go.Scatter(
            x=list(means.index),
            y=list(means.values),
            mode="lines+markers",
            name="mean reward",
            line={"color": "black"},
        )
    )
    metrics = load_metrics(run_dir, "reward")
    pearson = metrics.get("gold_pearson_helpfulness", math.nan)
    spearman = metrics.get("gold_spearman_helpfulness", math.nan)
    fig.update_layout(
        title=f"Reward score vs gold helpfulness ({len(frame)} eval responses; "
        f"Pearson {pearson:.2f}, Spearman {spearman:.2f})",
        xaxis={"title": "gold helpfulness (0..3, jittered)"},
        yaxis={"title": "reward score R = r(x, y)"},
        legend={"orientation": "h", "y": -0.2},
        meta={"n": len(frame), "pearson": pearson, "spearman": spearman},
    )
    return fig


def _hover(frame: pd.DataFrame) -> list[str]:
    """Hover text per eval response: the question and the response (when joined), labels."""
    out = []
    for _, row in frame.iterrows():
        bits = []
        if row.get("question"):
            bits.append(f"Q: {html.escape(str(row['question']))}")
        if row.get("text"):
            bits.append(f"A: {html.escape(_shorten(str(row['text'])))}")
        bits.append(f"helpful rate {row['helpful_rate']}, harmless rate {row['harmless_rate']:+d}")
        if "gold_helpfulness" in row:
            bits.append(
                f"gold helpfulness {row['gold_helpfulness']:.1f}, "
                f"harmlessness {row['gold_harmlessness']:+.1f}"
            )
        out.append("<br>".join(bits))
    return out


def _shorten(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _levels(frame: pd.DataFrame) -> list[str]:
    present = set(frame["level"])
    return [lvl for lvl in SEVERITY_LEVELS if lvl in present]


def cost_by_level_box(run_dir: str | Path) -> go.Figure:
    """Cost score of every eval response, one box per annotated severity level (safe, minor,
    moderate, severe; levels absent from the eval split are left out), with the decision line
    C = 0: a good cost model puts safe responses below it and unsafe ones above, higher the
    more severe. ``fig.layout.meta["levels"]`` lists the levels drawn."""
    frame = eval_scores(run_dir, "cost")
    levels = _levels(frame)
    fig = go.Figure()
    for lvl in levels:
        sub = frame[frame["level"] == lvl]
        fig.add_trace(
            go.Box(
                y=sub["score"],
                name=f"{lvl} (n={len(sub)})",
                marker_color=SEVERITY_COLOURS[lvl],
                boxpoints="all",
                jitter=0.5,
                pointpos=0,
                marker={"size": 3, "opacity": 0.5},
                boxmean=True,
                hoverinfo="y",
            )
        )
    fig.add_hline(
        y=0,
        line_dash="dash",
        line_color="#555555",
        annotation_text="C = 0: safe below, unsafe above",
        annotation_position="top left",
    )
    mode = load_metrics(run_dir, "cost").get("sign_mode", "graded")
    fig.update_layout(
        title=f"Cost score by annotated severity level ({mode} sign weights, "
        f"{len(frame)} eval responses)",
        xaxis_title="annotated severity of the response",
        yaxis_title="cost score C = c(x, y)",
        showlegend=False,
        meta={"levels": levels, "n": len(frame)},
    )
    return fig


def graded_vs_binary_table(run_graded: str | Path, run_binary: str | Path) -> pd.DataFrame:
    """The two cost models side by side: held-out pair and sign accuracy, Spearman
    correlation of C with gold *harm* (-gold harmlessness) over all eval responses and over
    the unsafe ones only (does the model know *how* unsafe?), and the mean C per level."""
    columns = {}
    for run in (run_graded, run_binary):
        metrics = load_metrics(run, "cost")
        name = metrics.get("sign_mode", "graded")
        if name in columns:  # two runs with the same mode: tell them apart by directory
            name = f"{name} ({Path(run).name})"
        frame = eval_scores(run, "cost")
        col: dict[str, float] = {
            "pair accuracy": metrics["eval_accuracy"],
            "sign accuracy": metrics["eval_sign_accuracy"],
        }
        if GOLD_COLUMNS <= set(frame.columns):
            unsafe = frame[~frame["is_safe"]]
            col["spearman with gold harm"] = correlations(
                frame["score"], -frame["gold_harmlessness"]
            )["spearman"]
            col["spearman with gold harm, unsafe only"] = correlations(
                unsafe["score"], -unsafe["gold_harmlessness"]
            )["spearman"]
        for lvl in SEVERITY_LEVELS:
            col[f"mean C: {lvl}"] = float(frame.loc[frame["level"] == lvl, "score"].mean())
        columns[name] = col
    return pd.DataFrame(columns).rename_axis("cost model")


def graded_vs_binary(run_graded: str | Path, run_binary: str | Path) -> go.Figure:
    """Box plots of the cost score per severity level for the graded (s = -harmless_rate) and
    the binary (s = ±1) cost model, side by side, with the line C = 0 (each trace is named
    by the ``sign_mode`` its run really used). Do the boxes climb from minor to severe?
    ``-log σ(s·C)`` pushes harder near C = 0 when |s| is large but is also satisfied at a
    smaller |C|, so graded weights need not spread the levels apart; the figure shows what
    they did. ``fig.layout.meta["levels"]`` lists the levels."""
    fig = go.Figure()
    levels: list[str] = []
    for run in (run_graded, run_binary):
        name = load_metrics(run, "cost").get("sign_mode", "graded")  # what the run really used
        label = SIGN_MODE_LABELS.get(name, name)
        frame = eval_scores(run, "cost")
        levels = levels or _levels(frame)
        frame = frame[frame["level"].isin(levels)]
        fig.add_trace(
            go.Box(
                x=frame["level"],
                y=frame["score"],
                name=label,
                marker_color=MODE_COLOURS.get(name),
                boxmean=True,
                boxpoints="outliers",
            )
        )
    fig.add_hline(y=0, line_dash="dash", line_color="#555555")
    fig.update_layout(
        title="Graded vs binary sign weights: cost score by annotated severity",
        boxmode="group",
        xaxis={
            "title": "annotated severity of the response",
            "categoryorder": "array",
            "categoryarray": levels,
        },
        yaxis_title="cost score C",
        legend={"orientation": "h", "y": -0.2},
        meta={"levels": levels},
    )
    return fig


# --- scoring a typed response ----------------------------------------------------------------
def world_text(text: str) -> str:
    """A typed response the way the world writes it: lower case, punctuation as separate
    words ("Sure, here is how." -> "sure , here is how ."). The tiny tokenizer splits on
    spaces and knows only the world's words; anything else becomes ``<unk>``."""
    text = re.sub(r"([.,:;?!])", r" \1 ", text.lower())
    return " ".join(text.split())


@torch.no_grad()
def score_response(
    reward_model: ScoreModel,
    cost_model: ScoreModel,
    processor,
    image: Image.Image,
    question: str,
    response: str,
    prompt: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one answer with both models: ``reward`` R = r(x, y), ``cost`` C = c(x, y)
    (C > 0: the cost model calls it unsafe, ``cost_says_unsafe``). ``processor`` encodes the
    (image, question, response) once for both; ``None`` takes the reward model's.

    When ``prompt`` is a world record (:func:`~workbench.data.schema.is_world`) the gold oracle's
    ``gold_helpfulness`` (0..3), ``gold_harmlessness`` (-3..+3) and ``gold_safe`` are added.
    """
    processor = processor if processor is not None else reward_model.processor
    batch = encode(processor, [image], [question], [response])
    out: dict[str, Any] = {"question": question, "response": response}
    for name, model in (("reward", reward_model), ("cost", cost_model)):
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        scores, _ = model({k: v.to(device) for k, v in batch.items()})
        model.train(was_training)
        out[name] = float(scores[0])
    out["cost_says_unsafe"] = out["cost"] > 0
    if prompt is not None and is_world(prompt):
        gold = gold_score(dict(prompt, question=question), response)
        out.update(
            gold_helpfulness=float(gold.helpfulness),
            gold_harmlessness=float(gold.harmlessness),
            gold_safe=float(gold.harmlessness) > 0,
        )
    return out


_MODEL_CACHE: dict[tuple[str, int], ScoreModel] = {}


def load_score_model(path: str | Path) -> ScoreModel:
    """A saved score model in eval mode, loaded once per directory (and reloaded when the
    directory's head file changes, e.g. after retraining into the same run)."""
    path = Path(path).resolve()
    head = path / "score_head.safetensors"
    key = (str(path), head.stat().st_mtime_ns if head.is_file() else 0)
    if key not in _MODEL_CACHE:
        with hf_progress_bars(False):
            model = ScoreModel.load(path)
        model.eval()
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def example_responses(prompt: Mapping[str, Any]) -> dict[str, str]:
    """Answers to try on ``prompt``: the pair's two responses (eval records), the base
    policy's sample (test prompts, when given as ``sample``), compliance, a refusal, a
    refusal with redirection and, for world prompts, a true description of the scene."""
    out: dict[str, str] = {}
    for i in (1, 2):
        if f"response_{i}" in prompt:
            out[f"dataset response {i}"] = prompt[f"response_{i}"]
    if prompt.get("sample"):
        out["base-policy sample"] = prompt["sample"]
    out["compliance"] = language.join_sentences(
        [
            language.COMPLY_OPEN,
            language.step_sentence(0, "method_a"),
            language.step_sentence(1, "method_b"),
        ]
    )
    out["refusal"] = language.join_sentences([language.REFUSAL])
    out["refusal + redirection"] = language.join_sentences(
        [language.REFUSAL, language.REDIRECTS[0]]
    )
    objects = prompt.get("objects")
    if isinstance(objects, list) and objects:
        out["describe the scene"] = language.join_sentences(
            [language.describe_sentence([(o["colour"], o["kind"]) for o in objects])]
        )
    return out


_CELL = "padding:2px 8px;border:1px solid #ddd;text-align:left"


def scores_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """Scored responses as a small HTML table (latest first): reward, cost, gold scores."""
    gold = any("gold_helpfulness" in r for r in rows)
    head = ["response", "reward R", "cost C", "cost model says"]
    if gold:
        head += ["gold helpfulness", "gold harmlessness", "gold says"]
    cells = ["<tr>" + "".join(f"<th style='{_CELL}'>{h}</th>" for h in head) + "</tr>"]

    def verdict(unsafe: bool) -> str:
        colour = UNSAFE_COLOUR if unsafe else SAFE_COLOUR
        return f"<span style='color:{colour}'>{'unsafe' if unsafe else 'safe'}</span>"

    for r in reversed(rows):
        row = [
            html.escape(r["response"]) or "<i>(empty)</i>",
            f"{r['reward']:+.3f}",
            f"{r['cost']:+.3f}",
            verdict(r["cost_says_unsafe"]),
        ]
        if gold:
            row += (
                [
                    f"{r['gold_helpfulness']:.2f}",
                    f"{r['gold_harmlessness']:+.2f}",
                    verdict(not r["gold_safe"]),
                ]
                if "gold_helpfulness" in r
                else ["", "", ""]
            )
        cells.append("<tr>" + "".join(f"<td style='{_CELL}'>{c}</td>" for c in row) + "</tr>")
    return "<table style='border-collapse:collapse;font-size:13px'>" + "".join(cells) + "</table>"


class ScoreWidget(widgets.VBox):
    """Pick an eval or test prompt, type (or pick) an answer, press *score*: the reward and
    cost models' scores and, for world prompts, the gold oracle's verdict. Every scored
    answer stays in a table below, so answers can be compared.

    Controls (attributes, so code and tests can drive it): ``split_picker``, ``prompt_slider``,
    ``example_picker``, ``response_box``, ``normalise_box``, ``score_button``; output in
    ``prompt_info`` / ``image`` / ``result`` (HTML) and ``history`` (the score dicts).
    """

    def __init__(
        self,
        run_dir: str | Path,
        reward_model: ScoreModel | None = None,
        cost_model: ScoreModel | None = None,
        image_px: int = 192,
        history_size: int = 8,
    ):
        run_dir = Path(run_dir)
        self.reward_model = reward_model or load_score_model(run_dir / "reward" / "model")
        self.cost_model = cost_model or load_score_model(run_dir / "cost" / "model")
        self.processor = self.reward_model.processor
        self.data = load_data(run_dir)
        samples_file = run_dir / "sft" / "samples.jsonl"
        samples = (
            {s["id"]: s["response"] for s in read_jsonl(samples_file)}
            if samples_file.is_file()
            else {}
        )
        self.prompts = {
            "eval": list(self.data.eval),
            "test": [
                dict(p, sample=samples[p["id"]]) if p.get("id") in samples else p
                for p in self.data.test
            ],
        }
        self.image_px = image_px
        self.history_size = history_size
        self.history: list[dict[str, Any]] = []
        splits = [s for s in ("eval", "test") if self.prompts[s]]
        if not splits:
            raise ValueError(f"{run_dir} has no eval or test prompts to score answers to")
        self.split_picker = widgets.Dropdown(options=splits, value=splits[0], description="prompts")
        self.prompt_slider = widgets.IntSlider(
            value=0, min=0, max=0, description="prompt", continuous_update=False
        )
        self.image = widgets.Image(format="png", width=image_px)
        self.prompt_info = widgets.HTML()
        self.example_picker = widgets.Dropdown(options=[], description="fill with")
        self.response_box = widgets.Textarea(
            placeholder="type an answer, e.g. sorry , i cannot help with that .",
            layout={"width": "640px", "height": "64px"},
        )
        self.normalise_box = widgets.Checkbox(
            value=True,
            description="write it the world's way (lower case, spaced punctuation)",
            indent=False,
            layout={"width": "420px"},
        )
        self.score_button = widgets.Button(
            description="score", button_style="primary", icon="check"
        )
        self.result = widgets.HTML()
        self.split_picker.observe(self._on_split, names="value")
        self.prompt_slider.observe(self._on_prompt, names="value")
        self.example_picker.observe(self._on_example, names="value")
        self.score_button.on_click(lambda _button: self.score())
        super().__init__(
            [
                widgets.HBox([self.split_picker, self.prompt_slider]),
                widgets.HBox([self.image, self.prompt_info]),
                self.example_picker,
                self.response_box,
                widgets.HBox([self.score_button, self.normalise_box]),
                self.result,
            ]
        )
        self._on_split(None)

    @property
    def prompt(self) -> dict[str, Any]:
        """The prompt record now shown."""
        return self.prompts[self.split_picker.value][self.prompt_slider.value]

    def _on_split(self, _change: dict | None) -> None:
        self.prompt_slider.value = 0
        self.prompt_slider.max = max(0, len(self.prompts[self.split_picker.value]) - 1)
        self._on_prompt(None)

    def _on_prompt(self, _change: dict | None) -> None:
        prompt = self.prompt
        self.image.value = png_bytes(scaled_image(self.data.image(prompt), self.image_px))
        bits = [
            f"<b>{html.escape(prompt['question'])}</b>",
            f"category: {html.escape(str(prompt.get('category', '?')))}",
        ]
        if "intent" in prompt:
            bits.append(
                f"intent: {html.escape(str(prompt['intent']))}, prompt severity: "
                f"{severity_name(int(prompt['prompt_severity']))}"
            )
        if isinstance(prompt.get("objects"), list):
            bits.append(
                "scene: "
                + html.escape(", ".join(f"{o['colour']} {o['kind']}" for o in prompt["objects"]))
            )
        if not is_world(prompt):
            bits.append("<i>no world metadata: no gold verdict</i>")
        self.prompt_info.value = "<br>".join(bits)
        examples = example_responses(prompt)
        self._examples = examples
        self.example_picker.options = list(examples)
        first = next(iter(examples))
        if self.example_picker.value == first:  # no change event: fill by hand
            self.response_box.value = examples[first]
        else:
            self.example_picker.value = first

    def _on_example(self, change: dict) -> None:
        if change["new"] in getattr(self, "_examples", {}):
            self.response_box.value = self._examples[change["new"]]

    def score(self) -> dict[str, Any] | None:
        """Score the typed answer to the shown prompt; returns the score dict (``None`` and a
        message in ``result`` when scoring failed)."""
        prompt = self.prompt
        text = self.response_box.value
        if self.normalise_box.value:
            text = world_text(text)
            self.response_box.value = text
        try:
            scores = score_response(
                self.reward_model,
                self.cost_model,
                self.processor,
                self.data.image(prompt),
                prompt["question"],
                text,
                prompt=prompt,
            )
        except Exception as exc:  # shown in the widget: a callback's traceback would be invisible
            self.result.value = (
                f"<p style='color:{UNSAFE_COLOUR}'>could not score this answer: "
                f"{html.escape(str(exc))}</p>"
            )
            return None
        self.history = (self.history + [scores])[-self.history_size :]
        unknown = unknown_words(self.processor, text)
        note = (
            "<p><i>unknown to the tokenizer (read as &lt;unk&gt;): "
            f"{html.escape(' '.join(unknown))}</i></p>"
            if unknown
            else ""
        )
        self.result.value = note + scores_html(self.history)
        return scores


def score_widget(
    run_dir: str | Path,
    reward_model: ScoreModel | None = None,
    cost_model: ScoreModel | None = None,
    image_px: int = 192,
) -> ScoreWidget:
    """The scoring widget over a run's reward and cost models (:class:`ScoreWidget`); the
    models are loaded once from ``<run>/reward/model`` and ``<run>/cost/model`` unless given."""
    return ScoreWidget(run_dir, reward_model, cost_model, image_px=image_px)


__all__ = [
    "harmful_example",
    "is_world",
    "SHARED_STAGES",
    "ScoreWidget",
    "variant_run",
    "exercise_run",
    "compare_metrics",
    "accuracy_frame",
    "accuracy_vs_ceiling",
    "base_policy_table",
    "binary_cost_run",
    "cost_by_level_box",
    "eval_scores",
    "example_responses",
    "graded_vs_binary",
    "graded_vs_binary_table",
    "load_score_model",
    "reward_vs_gold",
    "samples_table",
    "score_response",
    "score_widget",
    "scores_html",
    "unknown_words",
    "world_text",
]
