"""A finished data stage in tables and plotly figures: the data stage's ``overview.html`` and
notebook 01 (whose record browser is :mod:`workbench.views.data`).

Everything here works on the synthetic world *and* on real BeaverTails-V records. World
records carry extra fields (``intent``, ``prompt_severity``, the gold scores
``response_{1,2}_gold_{helpfulness,harmlessness}``, ...); real records have only the
dataset's schema fields, so every world-only column, figure and table row appears only when
those fields are there (:func:`workbench.data.schema.is_world`). :func:`gold_by_action` and
:func:`annotator_agreement` need the world's gold scores and say so when they are missing.

The functions are pure (records in, a DataFrame / Figure / HTML string out) so that tests can
check them without a browser.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..config import DataConfig
from ..runs import atomic_write_text
from . import language
from .oracle import gold_score
from .schema import CATEGORIES, NO_CATEGORY, SEVERITY_COLOURS, SEVERITY_LEVELS, is_world
from .store import DataSplits
from .world import make_prompt

#: The splits that hold pair records (test holds prompts only).
PAIR_SPLITS: tuple[str, ...] = ("train", "eval")
#: Value of the category / severity filters that keeps everything.
ALL = "all"
#: Order of the world's prompt kinds in figures (``prompt_kind`` column of records_frame).
PROMPT_KINDS: tuple[str, ...] = (
    "describe",
    "count",
    "colour",
    "safe_usage",
    "ambiguous, benign image",
    "ambiguous, risky image",
    "harmful",
)
#: Colours for safe / unsafe responses (severity levels: ``schema.SEVERITY_COLOURS``).
SAFE_COLOUR, UNSAFE_COLOUR = "#2ca02c", "#d62728"


# --- small helpers ------------------------------------------------------------------------
def _pairs_by_split(splits: DataSplits) -> list[tuple[str, dict[str, Any]]]:
    return [(name, rec) for name in PAIR_SPLITS for rec in splits.split(name)]


def severity_name(value: int | str) -> str:
    """Level name (safe / minor / moderate / severe) of an image severity 0..3 or a name."""
    if isinstance(value, str):
        name = value.strip().lower()
        if name not in SEVERITY_LEVELS:
            raise ValueError(f"unknown severity level {value!r}; one of {list(SEVERITY_LEVELS)}")
        return name
    if isinstance(value, bool) or not 0 <= int(value) < len(SEVERITY_LEVELS):
        raise ValueError(f"image severity must be 0..3 or a level name, got {value!r}")
    return SEVERITY_LEVELS[int(value)]


def present_categories(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The categories that occur in ``records``, in the dataset's order (the 20 harm
    categories, then ``none``, then anything unexpected, sorted)."""
    seen = {r["category"] for r in records}
    known = [c for c in (*CATEGORIES, NO_CATEGORY) if c in seen]
    return known + sorted(seen - set(known))


def _prompt_kind(record: Mapping[str, Any]) -> str:
    """The world's intent, with "how do i use this ?" split by the image: the same question
    is harmless beside a flower and harmful beside a knife (cross-modal risk)."""
    intent = str(record["intent"])
    if intent == "ambiguous":
        return (
            "ambiguous, risky image"
            if int(record["prompt_severity"]) > 0
            else "ambiguous, benign image"
        )
    return intent


def _action(response_from: str) -> str:
    """``precursor/comply`` -> ``comply`` (the precursor action that wrote a response)."""
    return str(response_from).split("/", 1)[-1]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- tables ---------------------------------------------------------------------------------
def records_frame(splits: DataSplits) -> pd.DataFrame:
    """One row per pair record (train + eval) with its labels.

    Columns: ``split``, ``id``, ``category``, ``image_severity`` (level name, ordered),
    ``question``, both ``response_i_from``, both helpful and harmless rates, both
    ``is_response_i_safe`` flags, ``more_helpful_response_id``, ``safer_response_id`` and
    ``disagree`` (the more helpful response is not the safer one), ``mixed_safety`` (one
    response safe, the other unsafe). World records add
    ``intent``, ``prompt_kind`` (intent, with ambiguous questions split by the image),
    ``prompt_severity`` and the four gold scores.
    """
    world = is_world(splits)
    rows = []
    for position, (split, r) in enumerate(_pairs_by_split(splits)):
        row: dict[str, Any] = {
            "split": split,
            "id": r.get("id", f"{split}-{position:06d}"),
            "category": r["category"],
            "image_severity": severity_name(r["image_severity"]),
            "question": r["question"],
        }
        if world:
            row.update(
                intent=r["intent"],
                prompt_kind=_prompt_kind(r),
                prompt_severity=int(r["prompt_severity"]),
            )
        for i in (1, 2):
            row[f"response_{i}_from"] = r.get(f"response_{i}_from", "unknown")
        for field in ("helpful_rate", "harmless_rate"):
            for i in (1, 2):
                row[f"response_{i}_{field}"] = int(r[f"response_{i}_{field}"])
        for i in (1, 2):
            row[f"is_response_{i}_safe"] = bool(r[f"is_response_{i}_safe"])
        row["more_helpful_response_id"] = int(r["more_helpful_response_id"])
        row["safer_response_id"] = int(r["safer_response_id"])
        row["disagree"] = row["more_helpful_response_id"] != row["safer_response_id"]
        row["mixed_safety"] = row["is_response_1_safe"] != row["is_response_2_safe"]
        if world:
            for i in (1, 2):
                for field in ("helpfulness", "harmlessness"):
                    row[f"response_{i}_gold_{field}"] = float(r[f"response_{i}_gold_{field}"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["image_severity"] = pd.Categorical(
            frame["image_severity"], categories=SEVERITY_LEVELS, ordered=True
        )
    return frame


def metrics_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The data stage's scalar metrics (counts, shares, source) as a one-column table;
    nested ones (``by_category``, ...) are left to their own tables."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
    return pd.DataFrame({"value": pd.Series(scalars, dtype=object)}).rename_axis("metric")


def record_frame(record: Mapping[str, Any]) -> pd.DataFrame:
    """One record as a field / value table: schema fields first, then the world's extras."""

    def show(value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(o, dict) for o in value):
            return ", ".join(" ".join(str(v) for v in o.values()) for o in value)
        if isinstance(value, dict | list):
            return json.dumps(value)
        return value

    return pd.DataFrame(
        {"value": pd.Series({k: show(v) for k, v in record.items()}, dtype=object)}
    ).rename_axis("field")


def gold_by_action_table(splits: DataSplits) -> pd.DataFrame:
    """World only: mean gold helpfulness and harmlessness of each precursor action on
    harmful prompts (``prompt_severity > 0``); index ``action``, columns ``helpfulness``,
    ``harmlessness``, ``n``, sorted by harmlessness."""
    if not is_world(splits):
        raise ValueError(
            "gold scores by action need the synthetic world's gold fields "
            "(real BeaverTails-V records have no gold judge)"
        )
    rows = [
        {
            "action": _action(r[f"response_{i}_from"]),
            "helpfulness": float(r[f"response_{i}_gold_helpfulness"]),
            "harmlessness": float(r[f"response_{i}_gold_harmlessness"]),
        }
        for r in splits.pairs
        if int(r["prompt_severity"]) > 0
        for i in (1, 2)
    ]
    if not rows:
        return pd.DataFrame(columns=["helpfulness", "harmlessness", "n"]).rename_axis("action")
    table = (
        pd.DataFrame(rows)
        .groupby("action")
        .agg(
            helpfulness=("helpfulness", "mean"),
            harmlessness=("harmlessness", "mean"),
            n=("helpfulness", "size"),
        )
    )
    return table.sort_values("harmlessness")


def annotator_agreement(
    splits: DataSplits, helpful_temperature: float | None = None
) -> pd.DataFrame:
    """World only: how often the annotators' preferences follow the gold scores.

    Rows ``more helpful`` and ``safer``; columns ``pairs`` (pairs whose gold scores differ on
    that dimension), ``agreement`` (share whose label picks the gold-better response) and
    ``bradley_terry`` (what the annotator model predicts for the more-helpful label: the mean
    of σ(|h1 - h2| / T) over those pairs; the safer label follows the noisy harmless rates,
    which has no closed form, so it is left empty). ``T`` is read from the run's
    ``config.json`` when not given.
    """
    if not is_world(splits):
        raise ValueError("annotator agreement needs the synthetic world's gold scores")
    if helpful_temperature is None:
        cfg_file = Path(splits.root) / "config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        helpful_temperature = float(cfg.get("helpful_temperature", DataConfig.helpful_temperature))
    out = {}
    for name, gold, label in (
        ("more helpful", "helpfulness", "more_helpful_response_id"),
        ("safer", "harmlessness", "safer_response_id"),
    ):
        agree, predicted = [], []
        for r in splits.pairs:
            delta = float(r[f"response_1_gold_{gold}"]) - float(r[f"response_2_gold_{gold}"])
            if delta == 0:
                continue
            agree.append(int(r[label]) == (1 if delta > 0 else 2))
            predicted.append(_sigmoid(abs(delta) / helpful_temperature))
        out[name] = {
            "pairs": len(agree),
            "agreement": sum(agree) / len(agree) if agree else float("nan"),
            "bradley_terry": (
                sum(predicted) / len(predicted)
                if predicted and name == "more helpful"
                else float("nan")
            ),
        }
    return pd.DataFrame.from_dict(out, orient="index")


def harmful_example(splits: DataSplits | None = None) -> dict[str, Any]:
    """A harmful world prompt for the gold oracle: the first explicit harmful request of
    severity >= 2 in ``splits`` when it is world data, else a fixed one (a grey knife and
    "how can i hurt someone with this ?"), so the oracle can be shown beside real data too."""
    if splits is not None and is_world(splits):
        for r in splits.pairs:
            if r["intent"] == "harmful" and int(r["prompt_severity"]) >= 2:
                return dict(r)

    scene = {
        "objects": [{"kind": "apple", "colour": "red"}, {"kind": "knife", "colour": "grey"}],
        "target": "knife",
        "image_severity": 2,
        "image_category": "violence_and_physical_harm",
    }
    return make_prompt(scene, language.TEMPLATES["harm2_violence_and_physical_harm"])


def oracle_table(prompt: Mapping[str, Any], responses: Mapping[str, str]) -> pd.DataFrame:
    """The gold oracle (:func:`workbench.data.oracle.gold_score`) on each labelled response
    to one world prompt: helpfulness 0..3, harmlessness -3..+3, safe, severity and the parse
    counts behind the penalties."""
    rows = {}
    for label, text in responses.items():
        g = gold_score(dict(prompt), text).to_dict()
        rows[label] = {
            "response": text,
            "helpfulness": g["helpfulness"],
            "harmlessness": g["harmlessness"],
            "safe": g["is_safe"],
            "severity": g["severity"],
            "steps": g["n_steps"],
            "hallucinations": g["n_hallucinations"],
            "gibberish": g["n_gibberish"],
            "repeats": g["n_repeats"],
            "tokens": g["n_tokens"],
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("response kind")


# --- figures --------------------------------------------------------------------------------
def category_severity_heatmap(splits: DataSplits) -> go.Figure:
    """Pair records (train + eval) counted by harm category x image severity level."""
    pairs = splits.pairs
    counts = Counter((r["category"], severity_name(r["image_severity"])) for r in pairs)
    categories = present_categories(pairs)
    z = [[counts[(c, lvl)] for lvl in SEVERITY_LEVELS] for c in categories]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(SEVERITY_LEVELS),
            y=categories,
            text=z,
            texttemplate="%{text}",
            colorscale="Blues",
            colorbar={"title": "pairs"},
            hovertemplate="%{y}<br>image severity: %{x}<br>%{z} pairs<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Pairs by harm category and image severity ({len(pairs)} pairs, train + eval)",
        xaxis_title="image severity level",
        yaxis_title="harm category",
        yaxis={"autorange": "reversed"},
        height=max(320, 140 + 24 * len(categories)),
    )
    return fig


def rate_distributions(splits: DataSplits) -> go.Figure:
    """Annotator rates of every response (two per pair): helpfulness 0..3 split by the
    response's safety flag, and harmlessness -3..+3 coloured by severity level."""
    pairs = splits.pairs
    helpful: dict[bool, Counter[int]] = {True: Counter(), False: Counter()}
    harmless: Counter = Counter()
    for r in pairs:
        for i in (1, 2):
            helpful[bool(r[f"is_response_{i}_safe"])][int(r[f"response_{i}_helpful_rate"])] += 1
            harmless[int(r[f"response_{i}_harmless_rate"])] += 1
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("helpfulness rate (0..3)", "harmlessness rate (-3..+3)")
    )
    help_x = list(range(0, 4))
    for safe, name, colour in (
        (True, "safe responses", SAFE_COLOUR),
        (False, "unsafe responses", UNSAFE_COLOUR),
    ):
        fig.add_trace(
            go.Bar(
                x=help_x,
                y=[helpful[safe][v] for v in help_x],
                name=name,
                marker_color=colour,
                legendgroup="safety",
            ),
            row=1,
            col=1,
        )
    harm_x = list(range(-3, 4))
    colours = [
        SEVERITY_COLOURS[SEVERITY_LEVELS[-v]]
        if v < 0
        else (SEVERITY_COLOURS["safe"] if v > 0 else "#999999")
        for v in harm_x
    ]
    fig.add_trace(
        go.Bar(
            x=harm_x,
            y=[harmless[v] for v in harm_x],
            name="harmless rate",
            marker_color=colours,
            showlegend=False,
            hovertemplate="rate %{x}: %{y} responses<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_layout(
        barmode="stack",
        title=f"Annotator rates of {2 * len(pairs)} responses",
        legend_title_text="helpfulness by safety flag",
        bargap=0.15,
    )
    fig.update_xaxes(title_text="helpful rate", tickvals=help_x, row=1, col=1)
    fig.update_xaxes(
        title_text="harmless rate (< 0 unsafe: -1 minor, -2 moderate, -3 severe)",
        tickvals=harm_x,
        row=1,
        col=2,
    )
    fig.update_yaxes(title_text="responses", row=1, col=1)
    fig.update_yaxes(title_text="responses", row=1, col=2)
    return fig


def disagreement_table(splits: DataSplits, by: str | None = None) -> pd.DataFrame:
    """Share of pairs whose more-helpful response is not the safer one, per group of ``by``
    (a column of :func:`records_frame`; default ``prompt_kind`` on the world, ``category`` on
    real data) and ``overall`` (first row).

    Columns: ``pairs``, ``disagree`` (share of all pairs), ``mixed_pairs`` (pairs with one
    safe and one unsafe response) and ``disagree_mixed`` (share of those; NaN without any).
    When both responses are safe, "safer" is a near coin flip, so ``disagree`` sits near 50%;
    on mixed pairs the more helpful response is mostly the unsafe one.
    """
    frame = records_frame(splits)
    if by is None:
        by = "prompt_kind" if "prompt_kind" in frame else "category"
    if not frame.empty and by not in frame:
        raise ValueError(f"no column {by!r} to group by; columns: {list(frame.columns)}")

    def summary(part: pd.DataFrame) -> dict[str, Any]:
        mixed = part[part["mixed_safety"]] if not part.empty else part
        return {
            "pairs": len(part),
            "disagree": float(part["disagree"].mean()) if len(part) else float("nan"),
            "mixed_pairs": len(mixed),
            "disagree_mixed": float(mixed["disagree"].mean()) if len(mixed) else float("nan"),
        }

    rows = {"overall": summary(frame)}
    if not frame.empty:
        groups = {str(k): summary(g) for k, g in frame.groupby(by, observed=True)}
        order = (
            [k for k in PROMPT_KINDS if k in groups]
            if by == "prompt_kind"
            else sorted(groups, key=lambda k: -groups[k]["disagree"])
        )
        rows.update({k: groups[k] for k in order})
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(by)
    return table.astype({"pairs": int, "mixed_pairs": int})


def preference_disagreement(splits: DataSplits, by: str | None = None) -> go.Figure:
    """Bar chart of :func:`disagreement_table`: per group (and ``overall``, first bar), the
    share of all pairs where "more helpful" and "safer" disagree, beside the share among
    pairs with one safe and one unsafe response; a dashed line marks the overall share (also
    in ``fig.layout.meta["overall"]``)."""
    table = disagreement_table(splits, by)
    by = table.index.name or "group"
    overall = float(table.loc["overall", "disagree"]) if table.loc["overall", "pairs"] else 0.0
    fig = go.Figure()
    for column, count, name, colour in (
        ("disagree", "pairs", "all pairs", "#1f77b4"),
        (
            "disagree_mixed",
            "mixed_pairs",
            "pairs with one safe, one unsafe response",
            UNSAFE_COLOUR,
        ),
    ):
        shares = [None if math.isnan(v) else float(v) for v in table[column]]
        fig.add_trace(
            go.Bar(
                x=list(table.index),
                y=shares,
                name=name,
                marker_color=colour,
                customdata=table[count].tolist(),
                textposition="outside",
                text=["" if v is None else f"{v:.0%}" for v in shares],
                hovertemplate="%{x}: %{y:.1%} of %{customdata} pairs disagree<extra>"
                + name
                + "</extra>",
            )
        )
    # The overall share as a dashed line with a legend entry (a text annotation on the plot
    # would collide with the bar labels).
    fig.add_trace(
        go.Scatter(
            x=list(table.index),
            y=[overall] * len(table),
            mode="lines",
            name=f"overall share ({overall:.0%})",
            line={"dash": "dash", "color": "#555555"},
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title="How often 'more helpful' and 'safer' pick different responses",
        xaxis_title=by.replace("_", " "),
        yaxis_title="share of pairs that disagree",
        yaxis={"range": [0, 1.12], "tickformat": ".0%"},
        barmode="group",
        legend={"orientation": "h", "y": -0.3},
        meta={"overall": overall},
    )
    return fig


def gold_by_action(splits: DataSplits) -> go.Figure:
    """World only: each precursor action on harmful prompts as a point (mean gold
    harmlessness, mean gold helpfulness); marker area ~ number of responses. Compliance sits
    top-left (helpful, unsafe), refuse-and-redirect right (safe, moderately helpful)."""
    table = gold_by_action_table(splits)
    safe = table["harmlessness"] > 0
    sizes = [10 + 30 * math.sqrt(n / max(1, table["n"].max())) for n in table["n"]]
    fig = go.Figure(
        go.Scatter(
            x=table["harmlessness"],
            y=table["helpfulness"],
            mode="markers+text",
            text=list(table.index),
            textposition="top center",
            customdata=table["n"],
            marker={
                "size": sizes,
                "color": [SAFE_COLOUR if s else UNSAFE_COLOUR for s in safe],
                "line": {"width": 1, "color": "white"},
            },
            hovertemplate=(
                "%{text}<br>gold harmlessness %{x:.2f}<br>gold helpfulness %{y:.2f}"
                "<br>%{customdata} responses<extra></extra>"
            ),
        )
    )
    fig.add_vline(
        x=0,
        line_dash="dash",
        line_color="#555555",
        annotation_text="unsafe | safe",
        annotation_position="top",
    )
    fig.update_layout(
        title="Precursor actions on harmful prompts: gold helpfulness vs gold harmlessness",
        xaxis={"title": "mean gold harmlessness (-3..+3, > 0 safe)", "range": [-3.3, 3.3]},
        yaxis={"title": "mean gold helpfulness (0..3)", "range": [-0.2, 3.3]},
    )
    return fig


def write_overview(
    splits: DataSplits, path: str | Path, metrics: Mapping[str, Any] | None = None
) -> Path:
    """The stage's figures in one self-contained HTML page (plotly.js inlined once, so it
    opens offline): what a person looks at after ``make run`` without starting Jupyter."""

    figures = [
        category_severity_heatmap(splits),
        rate_distributions(splits),
        preference_disagreement(splits),
    ]
    if is_world(splits):
        figures.append(gold_by_action(splits))
    body = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)
    ]
    table = ""
    if metrics is not None:
        table = metrics_frame(metrics).to_html(border=0)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>Safe RLHF-V Workbench: data</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}</style></head><body>"
        f"<h1>Data stage</h1>{table}{''.join(body)}</body></html>"
    )
    return atomic_write_text(path, page)
