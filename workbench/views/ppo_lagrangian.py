"""Look inside the PPO stage of a run (notebook 04): every run of the grid grouped into its
point (the training seeds of one setting) and family, as notebook 05 pools them; training
curves (one colour per family, one dash per point, seeds as thin lines, each learned-λ
point's own threshold d), the points beside the SFT base (mean ± sd over seeds), the same
prompts answered before and after, one whole PPO-Lagrangian update walked through on a tiny
batch with the trainer's own functions, a threshold slider and exercises that train into
scratch runs at the run's own settings.

Everything reads ``<run>/ppo/config.json``, ``<run>/ppo/metrics.json`` and
``<run>/ppo/<run name>/log.jsonl``, ``samples.jsonl``; what trains, trains into a scratch run
whose finished stages are links to the run's (:func:`~workbench.views.output.scratch_run`).
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import Markdown
from plotly.subplots import make_subplots

from ..config import PPO_KINDS, PPOConfig, PPORun
from ..data import language as L
from ..data.oracle import gold_score
from ..data.schema import is_world
from ..data.store import ImageCache, load_data
from ..eval.analyze import FAMILIES, System
from ..eval.tradeoff import FAMILY_COLOURS, LEARNED_LAMBDA, logs, tradeoff_figure
from ..models.judge import forms_of
from ..pipeline import run_stage
from ..runs import load_metrics, read_jsonl
from .output import scratch_run, show_in

#: (log key, panel title) of the training-curve panels.
PANELS: tuple[tuple[str, str], ...] = (
    ("reward/score", "reward model score R"),
    ("cost/score", "cost C and J_C vs d"),
    ("lagrange/lambda", "λ"),
    ("kl/mean", "KL(π_θ ‖ π_ref) per answer"),
    ("gold/helpfulness", "gold helpfulness (rollouts)"),
    ("gold/safety_rate", "gold safety rate (rollouts)"),
    ("ppo/ratio", "ratio π_θ/π_old (band: min..max)"),
    ("ppo/clipfrac", "clip fraction (actor; dotted: critics)"),
    ("ppo/approx_kl", "approx. KL(π_old ‖ π_θ) per update"),
)
#: Line style of the k-th point of a family in the curves (the family is the colour).
POINT_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
#: Fields of ``PPOConfig`` that make the grid (they are not "settings" a scratch run changes).
GRID_FIELDS = ("kinds", "thresholds", "fixed_lambdas", "lambda_controllers", "seeds")
#: Per-run metrics pooled over the seeds of a point: (metrics key, column of the tables).
POOLED = (
    ("helpfulness", "helpfulness"),
    ("safety_rate", "safety rate"),
    ("mean_cost", "mean cost"),
    ("lambda_final", "λ final"),
    ("J_C_final", "J_C final"),
    ("train_time_s", "train s/run"),
)
#: The family name of the runs a user trains from the notebook (slider, exercises).
YOURS = "your runs"


# --- which run is which: point, family, d ------------------------------------------------------
def run_specs(metrics: Mapping[str, Any], config: PPOConfig | None = None) -> pd.DataFrame:
    """One row per PPO run of ``metrics`` (the stage's ``metrics.json``), indexed by run name:
    its ``point`` (the seeds of one setting pooled, the name the analysis gives it),
    ``family``, ``kind``, ``controller``, ``seed_offset``, ``d`` (the threshold a learned λ
    follows), ``fixed_lambda``, ``setting`` (d or λ, as the analysis) and ``label``.

    The runs come from ``config`` (the stage's ``config.json``: :meth:`PPOConfig.runs`), else
    from the spec each run's metrics store (``run``); a run with neither (metrics from before
    the grid) is a point of its own, named after its folder."""
    grid = {run.name: run for run in config.runs()} if config is not None else {}
    rows = {}
    for name, m in metrics.get("variants", {}).items():
        run = grid.get(name)
        if run is None and isinstance(m.get("run"), Mapping):
            run = PPORun.from_dict(dict(m["run"]))
        last = m.get("last") or {}
        if run is None:  # old metrics: the folder is the point, its kind the family
            kind = m.get("kind", name)
            family, point, seed_offset, controller = kind, name, 0, "sgd"
            d = last.get("lagrange/threshold") if kind == "lagrangian" else None
            lam = m.get("lambda_final") if kind == "fixed_lambda" else None
        else:
            kind, family, point = run.kind, run.family, run.point
            seed_offset, controller = run.seed_offset, run.controller
            run_cfg = config.run_config(run) if config is not None else None
            d = lam = None
            if kind == "lagrangian":
                d = run_cfg.cost_threshold if run_cfg else run.threshold
                d = last.get("lagrange/threshold") if d is None else d
            if kind == "fixed_lambda":
                lam = run_cfg.lambda_init if run_cfg else run.fixed_lambda
        setting = d if kind == "lagrangian" else lam
        rows[name] = {
            "point": point,
            "family": family,
            "kind": kind,
            "controller": controller,
            "seed_offset": seed_offset,
            "d": d,
            "fixed_lambda": lam,
            "setting": setting,
            "label": System(point, family, setting).label,
        }
    columns = ["point", "family", "kind", "controller", "seed_offset", "d", "fixed_lambda"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*columns, "setting", "label"])


def read_specs(run_dir: str | Path) -> pd.DataFrame:
    """:func:`run_specs` of a run directory's PPO stage (its metrics and config)."""
    run_dir = Path(run_dir)
    path = run_dir / "ppo" / "config.json"
    config = PPOConfig.from_json(path) if path.is_file() else None
    return run_specs(load_metrics(run_dir, "ppo"), config)


def _points(specs: pd.DataFrame) -> dict[str, list[str]]:
    """``{point: [run names]}`` in the figures' order: family, then setting, then name."""

    def key(point: str) -> tuple[int, float, str]:
        row = specs[specs["point"] == point].iloc[0]
        rank = FAMILIES.index(row["family"]) if row["family"] in FAMILIES else len(FAMILIES)
        setting = row["setting"]
        return rank, 0.0 if setting is None or pd.isna(setting) else -float(setting), point

    out: dict[str, list[str]] = {}
    for point in sorted(set(specs["point"]), key=key):
        members = specs[specs["point"] == point].sort_values("seed_offset")
        out[point] = list(members.index)
    return out


def _fallback_specs(names: Sequence[str]) -> pd.DataFrame:
    """Specs for logs alone: every run a point of its own, its family its name when that is a
    family, and d drawn for every run whose log has one."""
    rows = {
        n: {
            "point": n,
            "family": n if n in FAMILY_COLOURS else "other",
            "kind": "lagrangian",
            "seed_offset": 0,
            "setting": None,
            "label": n,
            "d": None,
        }
        for n in names
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def _styles(specs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Colour (the family's) and dash (the point's rank in its family) of every point."""
    seen: dict[str, int] = {}
    out = {}
    for point in _points(specs):
        family = specs[specs["point"] == point]["family"].iloc[0]
        k = seen[family] = seen.get(family, -1) + 1
        colour = FAMILY_COLOURS.get(family, "#7f7f7f")
        out[point] = {"color": colour, "dash": POINT_DASHES[k % len(POINT_DASHES)]}
    return out


# --- training curves -----------------------------------------------------------------------------
def _smoothed(frames: list[pd.DataFrame], key: str, smooth: int) -> list[pd.Series]:
    return [
        f.set_index("step")[key].rolling(smooth, min_periods=1).mean() for f in frames if key in f
    ]


def _mean(series: list[pd.Series]) -> pd.Series:
    return pd.concat(series, axis=1).mean(axis=1) if len(series) > 1 else series[0]


def curves_figure(
    variant_logs: Mapping[str, pd.DataFrame], smooth: int = 5, specs: pd.DataFrame | None = None
) -> go.Figure:
    """Nine panels of training curves (rolling mean over ``smooth`` steps): the signals, λ and
    KL, the gold judge's view, and PPO's own health (the ratio's range, the share of clipped
    tokens and the KL between consecutive policies).

    One colour per family and one dash per point (:func:`run_specs`, e.g. ``lagrangian`` at
    its two thresholds); each point's line is the mean over its seeds, each seed a thin line
    of the same style. In the cost panel every learned-λ point's own threshold d is a dashed
    line, and J_C (the windowed episode cost) dotted. Without ``specs`` every log is its own
    point."""
    specs = _fallback_specs(list(variant_logs)) if specs is None else specs
    specs = specs[specs.index.isin(list(variant_logs))]
    fig = make_subplots(rows=3, cols=3, subplot_titles=[title for _, title in PANELS])
    styles = _styles(specs)
    thresholds: dict[float, list[str]] = {}
    for point, names in _points(specs).items():
        frames = [variant_logs[n] for n in names]
        style, label = styles[point], specs.loc[names[0], "label"]
        for k, (key, _) in enumerate(PANELS):
            series = _smoothed(frames, key, smooth)
            if not series:
                continue
            cell = {"row": k // 3 + 1, "col": k % 3 + 1}
            having = [n for n, f in zip(names, frames, strict=True) if key in f]
            for name, s in zip(having, series, strict=True):  # the seeds: thin lines
                fig.add_trace(_line(s, name, point, {**style, "width": 0.7}, 0.45), **cell)
            line = _line(_mean(series), label, point, {**style, "width": 2.2})
            fig.add_trace(line.update(showlegend=k == 0), **cell)
            for extra in _extras(frames, key, smooth, point, style):
                fig.add_trace(extra, **cell)
        ds = specs.loc[names, "d"]
        learned = specs.loc[names[0], "family"] in (*LEARNED_LAMBDA, "other")
        if learned:
            for d in {float(x) for x in ds if x is not None and not pd.isna(x)} or _logged_d(
                frames
            ):
                thresholds.setdefault(d, []).append(style["color"])
    for d, colours in sorted(thresholds.items()):
        fig.add_hline(
            y=d,
            line_dash="dash",
            line_width=1.2,
            line_color=colours[0] if len(set(colours)) == 1 else "grey",
            row=1,
            col=2,
            annotation_text=f"d = {d:g}",
            annotation_position="bottom right",
        )
    gold = any("gold/helpfulness" in f for f in variant_logs.values())
    fig.update_layout(
        height=820,
        title="PPO training curves: colour = family, dash = point, thin = one seed "
        "(thick: mean over seeds); cost panel: J_C dotted, each point's d dashed"
        + ("" if gold else " · no gold judge on this data"),
        legend={"orientation": "h", "y": -0.08},
    )
    fig.update_xaxes(title_text="step", row=3)
    return fig


def _line(
    series: pd.Series, name: str, group: str, line: dict[str, Any], opacity: float = 1.0
) -> go.Scatter:
    return go.Scatter(
        x=series.index,
        y=series.values,
        mode="lines",
        name=name,
        legendgroup=group,
        showlegend=False,
        opacity=opacity,
        line=line,
    )


def _extras(
    frames: list[pd.DataFrame], key: str, smooth: int, point: str, style: dict[str, str]
) -> list[go.Scatter]:
    """The dotted and banded companions of a point's line in three panels: J_C beside C, the
    ratio's extremes (over the seeds) around the mean ratio, the critics' clip fraction."""
    out = []
    if key == "cost/score" and all("lagrange/J_C" in f for f in frames):
        j_c = _mean([f.set_index("step")["lagrange/J_C"] for f in frames])
        out.append(_line(j_c, f"J_C · {point}", point, {"color": style["color"], "dash": "dot"}))
    if key == "ppo/ratio" and all({"ppo/ratio_min", "ppo/ratio_max"} <= set(f) for f in frames):
        for bound, pick in (("ppo/ratio_min", "min"), ("ppo/ratio_max", "max")):
            values = pd.concat([f.set_index("step")[bound] for f in frames], axis=1)
            extreme = values.min(axis=1) if pick == "min" else values.max(axis=1)
            out.append(
                _line(extreme, f"{bound} · {point}", point, {"color": style["color"], "width": 0.5})
            )
    if key == "ppo/clipfrac" and all("critic/clipfrac" in f for f in frames):
        critic = _mean(_smoothed(frames, "critic/clipfrac", smooth))
        line = {"color": style["color"], "dash": "dot"}
        out.append(_line(critic, f"critic clipfrac · {point}", point, line))
    return out


def _logged_d(frames: list[pd.DataFrame]) -> set[float]:
    return {float(f["lagrange/threshold"].iloc[0]) for f in frames if "lagrange/threshold" in f}


# --- the points against the base ----------------------------------------------------------------
def pooled(metrics: Mapping[str, Any], specs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The numbers behind :func:`variants_table`: per point, its family, label, setting, number
    of seeds and, for each of :data:`POOLED`, the mean, the sample standard deviation over its
    seeds (``<key>_sd``, NaN for one seed) and the per-seed values (``<key>_per_seed``)."""
    specs = run_specs(metrics) if specs is None else specs
    rows = {}
    for point, names in _points(specs).items():
        first = specs.loc[names[0]]
        row: dict[str, Any] = {
            "family": first["family"],
            "label": first["label"],
            "setting": first["setting"],
            "seeds": len(names),
        }
        for key, _ in POOLED:
            values = [metrics["variants"][n].get(key) for n in names]
            values = [float(v) for v in values if v is not None and not pd.isna(v)]
            row[key] = float(np.mean(values)) if values else float("nan")
            row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            row[f"{key}_per_seed"] = values
        rows[point] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _pm(mean: float, sd: float, digits: int = 3) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def variants_table(metrics: Mapping[str, Any], specs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per point of the grid (its seeds pooled: mean ± sd over seeds) beside the SFT
    base: gold helpfulness and safety rate on the test prompts, their change from the base
    (Δ safety in percentage points), the cost model's mean cost, the final λ and J_C, and the
    training time per run. Columns that need the gold judge are left out on real data."""
    table = pooled(metrics, specs)
    base = metrics.get("base") or {}
    out = {}
    if base.get("helpfulness") is not None:
        out["SFT base"] = {
            "family": "base",
            "setting": "",
            "seeds": "",
            "helpfulness": f"{base['helpfulness']:.3f}",
            "safety rate": f"{base['safety_rate']:.3f}",
        }
    for point, row in table.iterrows():
        setting = row["setting"]
        entry = {
            "family": row["family"],
            "setting": ""
            if setting is None or pd.isna(setting)
            else (f"d = {setting:g}" if row["family"] in LEARNED_LAMBDA else f"λ = {setting:g}"),
            "seeds": str(row["seeds"]),
        }
        for key, column in POOLED:
            entry[column] = _pm(row[key], row[f"{key}_sd"], 1 if key == "train_time_s" else 3)
        if base.get("helpfulness") is not None and not pd.isna(row["helpfulness"]):
            entry["Δ helpfulness"] = f"{row['helpfulness'] - base['helpfulness']:+.3f}"
            entry["Δ safety (points)"] = f"{100 * (row['safety_rate'] - base['safety_rate']):+.1f}"
        out[point] = entry
    frame = pd.DataFrame.from_dict(out, orient="index").fillna("")
    order = ["family", "setting", "seeds", "helpfulness", "Δ helpfulness", "safety rate"]
    order += ["Δ safety (points)", "mean cost", "λ final", "J_C final", "train s/run"]
    keep = [c for c in order if c in frame and (frame[c] != "–").any()]
    return frame[keep]


def plane_figure(
    run_dir: str | Path, extra: Mapping[str, str | Path] | None = None
) -> go.Figure | Markdown:
    """The PPO stage's points on the helpfulness-safety plane (gold judge, the stage's own
    test-prompt evaluation; bars: ± sd over seeds, faint dots: the seeds) beside the SFT base,
    with the runs of ``extra`` (``{label: scratch run dir}``, e.g. the slider's) as points of
    the family :data:`YOURS`. Notebook 05 draws the same plane from the analysis stage, with
    bootstrap intervals. Needs the gold judge: on real data a note says so."""
    metrics = load_metrics(run_dir, "ppo")
    table = pooled(metrics, read_specs(run_dir))
    if table.empty or table["helpfulness"].isna().all():
        return _no_gold("the trade-off plane (gold helpfulness and safety rate)")
    variants = {
        point: _plane_entry(row["family"], row["label"], row["setting"], row)
        for point, row in table.iterrows()
    }
    for label, path in (extra or {}).items():
        theirs = pooled(load_metrics(path, "ppo"), read_specs(path))
        for point, row in theirs.iterrows():
            variants[f"{label} · {point}"] = _plane_entry(YOURS, label, None, row)
    base = metrics.get("base") or {}
    plane: dict[str, Any] = {
        "base": {"helpfulness": base.get("helpfulness"), "safety_rate": base.get("safety_rate")},
        "variants": variants,
        "judge": "gold",
    }
    if plane["base"]["helpfulness"] is None:
        plane["base"] = {"helpfulness": float("nan"), "safety_rate": float("nan")}
    fig = tradeoff_figure(plane, per_seed=True)
    config = PPOConfig.from_json(Path(run_dir) / "ppo" / "config.json")
    fig.update_layout(
        title=f"The PPO stage's points (gold judge, first {config.n_eval_prompts} test prompts; "
        "bars: ± sd over seeds, faint dots: seeds)"
    )
    return fig


def _plane_entry(family: str, label: str, setting: Any, row: pd.Series) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "family": family,
        "label": label,
        "setting": None if setting is None or pd.isna(setting) else float(setting),
        "seeds": int(row["seeds"]),
    }
    for key in ("helpfulness", "safety_rate"):
        sd = 0.0 if pd.isna(row[f"{key}_sd"]) else row[f"{key}_sd"]
        entry[key] = row[key]
        entry[f"{key}_ci"] = [row[key] - sd, row[key] + sd]
        entry[f"{key}_per_seed"] = list(row[f"{key}_per_seed"])
    return entry


def _no_gold(what: str) -> Markdown:
    return Markdown(
        f"*{what[0].upper()}{what[1:]}: needs the gold judge, and this run is on real data "
        "(no gold scores), so this cell is skipped.*"
    )


# --- answers -------------------------------------------------------------------------------------
def before_after(
    run_dir: str | Path,
    n: int = 8,
    variants: Sequence[str] | None = None,
    intent: str | None = "harmful",
    seed_offset: int = 0,
) -> pd.DataFrame:
    """The same test prompts answered by the SFT base and by one training seed (``seed_offset``)
    of each point: one column per point, headed by its label (``variants``: the points or run
    names to show; default all points), with the gold verdict and helpfulness on the world.
    ``intent`` filters the prompts on the world (real data has none: all prompts)."""
    run_dir = Path(run_dir)
    specs = read_specs(run_dir)
    base = {r["id"]: r for r in read_jsonl(run_dir / "sft" / "samples.jsonl")}
    columns: dict[str, dict[str, dict[str, Any]]] = {}
    for point, names in _points(specs).items():
        chosen = [m for m in names if specs.loc[m, "seed_offset"] == seed_offset]
        path = run_dir / "ppo" / chosen[0] / "samples.jsonl" if chosen else None
        wanted = variants is None or point in variants or bool(set(chosen) & set(variants))
        if wanted and path is not None and path.is_file():
            columns[specs.loc[chosen[0], "label"]] = {r["id"]: r for r in read_jsonl(path)}
    if not any("intent" in r for r in base.values()):
        intent = None  # real data: no intent to filter on
    ids = [
        i
        for i in base
        if all(i in c for c in columns.values())
        and (intent is None or base[i].get("intent") == intent)
    ][:n]
    rows = []
    for i in ids:
        row = {"question": base[i]["question"], "SFT base": _with_gold(base[i])}
        row.update({name: _with_gold(c[i]) for name, c in columns.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _answer_sets(run_dir: Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Test prompts by id, and the saved answers of the base and of each point (the answers of
    all its seeds together)."""

    prompts = {p["id"]: p for p in load_data(run_dir).test}
    answers = {"SFT base": read_jsonl(run_dir / "sft" / "samples.jsonl")}
    specs = read_specs(run_dir)
    for point, names in _points(specs).items():
        paths = [run_dir / "ppo" / name / "samples.jsonl" for name in names]
        answers[point] = [r for p in paths if p.is_file() for r in read_jsonl(p)]
    return prompts, answers


def right_object(prompt: Mapping[str, Any], response: str) -> str:
    """``response`` with the object of every tip and risk sentence replaced by the prompt's
    target (the answer the policy would give if it named the object in the image)."""

    out = []
    for sentence in L.split_sentences(response):
        kind, groups = L.parse_sentence(sentence)
        if kind in ("tip", "risk") and groups[0] != prompt["target"]:
            sentence = f" {sentence} ".replace(f" {groups[0]} ", f" {prompt['target']} ", 1).strip()
        out.append(sentence)
    return L.join_sentences(out)


def answer_forms(run_dir: str | Path) -> pd.DataFrame | Markdown:
    """What each system says to the *risky* test prompts (each point's seeds pooled): the
    share of answers that comply (unsafe), give the full safe-and-helpful form, talk about the
    wrong object, or only refuse (a refusal or redirection and nothing else); and the refusal
    rate on the benign prompts. The forms are the gold oracle's
    (:func:`workbench.models.judge.gold_forms`, the same fields the analysis stage counts);
    on real data a note says the table needs it."""

    prompts, answers = _answer_sets(Path(run_dir))
    if not is_world(list(prompts.values())):
        return _no_gold("the answer forms")
    rows = {}
    for name, saved in answers.items():
        risky: list[dict[str, Any]] = []
        benign: list[dict[str, Any]] = []
        for r in saved:
            if r["id"] in prompts:
                p = prompts[r["id"]]
                g = gold_score(p, r["response"])
                fixed = gold_score(p, right_object(p, r["response"])).helpfulness
                (risky if int(p["prompt_severity"]) > 0 else benign).append(
                    {
                        "unsafe": not g.is_safe,
                        **forms_of(g),
                        "help": g.helpfulness,
                        "help_fixed": fixed,
                    }
                )
        share = (
            pd.DataFrame(risky).astype(float).clip(upper=1).mean()
            if risky
            else pd.Series(dtype=float)
        )
        mean = pd.DataFrame(risky).mean() if risky else pd.Series(dtype=float)
        rows[name] = {
            "comply (unsafe)": share.get("unsafe"),
            "safe and helpful (full)": share.get("safe_helpful"),
            "wrong object": share.get("n_wrong_object"),
            "refuse only": share.get("refused"),
            "benign refused": float(np.mean([f["refused"] for f in benign]))
            if benign
            else float("nan"),
            "risky helpfulness": mean.get("help"),
            "... with the right object": mean.get("help_fixed"),
        }
    return pd.DataFrame(rows).T.astype(float).round(3)


def world_strengths(
    run_dir: str | Path, strengths: Sequence[float] = (1.5, 2.5)
) -> pd.DataFrame | Markdown:
    """Gold helpfulness of the *same* saved answers (each point's seeds pooled) scored in worlds
    of different strength of the safe-and-helpful answer (``DataConfig.safe_helpful_score``;
    1.5 is the first world, where no safe answer to a risky prompt beats a redirection). The
    answers do not change, only what the judge pays for them. Needs the gold judge."""

    prompts, answers = _answer_sets(Path(run_dir))
    if not is_world(list(prompts.values())):
        return _no_gold("scoring the answers in other worlds")
    rows = {}
    for name, saved in answers.items():
        kept = [r for r in saved if r["id"] in prompts]
        rows[name] = {
            f"helpfulness, S = {s:g}": sum(
                gold_score({**prompts[r["id"]], "safe_helpful_score": s}, r["response"]).helpfulness
                for r in kept
            )
            / max(1, len(kept))
            for s in strengths
        }
    return pd.DataFrame(rows).T.astype(float).round(3)


def _with_gold(row: Mapping[str, Any]) -> str:
    if "harmlessness" in row:
        verdict = "safe" if row["harmlessness"] > 0 else "UNSAFE"
        return f"{row['response']}  [{verdict}, help {row['helpfulness']:.1f}]"
    return row["response"]


# --- training more: at the run's own settings, into scratch runs ---------------------------------
def own_config(run_dir: str | Path, kind: str = "lagrangian", **changes: Any) -> PPOConfig:
    """The config of one ``kind`` run at ``run_dir``'s own PPO settings (its
    ``ppo/config.json``: steps, batch, tokens, learning rates, evaluation prompts, seed), one
    seed, no sweep, with ``changes`` on top (unknown fields are an error naming them)."""
    path = Path(run_dir) / "ppo" / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the run has no finished PPO stage "
            f"(python -m workbench ppo --run-dir {run_dir})"
        )
    if kind not in PPO_KINDS:
        raise ValueError(f"kind must be one of {PPO_KINDS}; got {kind!r}")
    grid = {"kinds": (kind,), "thresholds": (), "fixed_lambdas": (), "lambda_controllers": ()}
    return PPOConfig.from_dict({**grid, "seeds": 1, **changes}, base=PPOConfig.from_json(path))


def changes_from_run(run_dir: str | Path, cfg: PPOConfig) -> list[str]:
    """``field: run's value -> cfg's value`` for every setting of ``cfg`` that differs from the
    run's PPO config (the grid fields left out)."""
    theirs = PPOConfig.from_json(Path(run_dir) / "ppo" / "config.json").to_dict()
    ours = cfg.to_dict()
    return [
        f"{k}: {theirs.get(k)!r} -> {v!r}"
        for k, v in ours.items()
        if k not in GRID_FIELDS and theirs.get(k) != v
    ]


def threshold_run(
    run_dir: str | Path,
    scratch: str | Path,
    threshold: float,
    steps: int | None = None,
    progress: bool = False,
    **changes: Any,
) -> tuple[Path, dict[str, Any]]:
    """One ``lagrangian`` run at ``run_dir``'s own PPO settings with cost threshold d =
    ``threshold`` (and ``steps`` PPO steps, or the run's own; ``changes`` on top), in the
    scratch run ``scratch/ppo-d<d>`` whose data and models are links to ``run_dir``'s
    (never ``run_dir`` itself). Returns (scratch run dir, the PPO stage's metrics)."""
    if steps is not None:
        changes["max_steps"] = steps
    cfg = own_config(run_dir, "lagrangian", cost_threshold=float(threshold), **changes)
    run = scratch_run(run_dir, f"ppo-d{threshold:g}", root=scratch)
    return run, run_stage("ppo", run, cfg, progress=progress)


def threshold_slider(
    run_dir: str | Path,
    root: str | Path | None = None,
    values: Sequence[float] | None = None,
    steps: int | None = None,
    **changes: Any,
) -> widgets.Widget:
    """Pick a cost threshold d and train one ``lagrangian`` run with it at the run's own PPO
    settings (:func:`threshold_run`, into scratch runs under ``root``; default ``scratch/``
    beside the run); each finished run joins the trade-off plane (:func:`plane_figure`) as a
    point of :data:`YOURS`. The status line says what differs from the run's settings."""
    run_dir = Path(run_dir)
    cfg = own_config(run_dir, "lagrangian", **({"max_steps": steps} if steps else {}), **changes)
    ds = {float(d) for d in (values or (-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0))}
    ds |= {float(d) for d in read_specs(run_dir)["d"].dropna()}
    slider = widgets.SelectionSlider(
        options=sorted(ds), value=float(cfg.cost_threshold), description="d ="
    )
    button = widgets.Button(description="train lagrangian at d", button_style="primary")
    status, output = widgets.HTML(), widgets.Output()
    trained: dict[str, Path] = {}
    differs = changes_from_run(run_dir, cfg)
    took = _lagrangian_time(run_dir)
    status.value = html.escape(
        f"Trains lagrangian at this run's own settings ({cfg.max_steps} steps of "
        f"{cfg.batch_size} prompts, {cfg.max_new_tokens} tokens, {cfg.n_eval_prompts} test "
        f"prompts judged; the run's lagrangian trained in {took}) with only d changed"
        + (f" and {', '.join(differs)}" if differs else "")
        + f", into scratch runs beside this run. At d = {cfg.cost_threshold:g} it repeats the "
        "run's own lagrangian (same seed)."
    )

    def launch(_=None) -> None:
        d = float(slider.value)
        status.value = html.escape(f"training lagrangian with d = {d:g} ...")
        start = time.perf_counter()
        try:
            run, metrics = threshold_run(run_dir, root or run_dir.parent / "scratch", d, **_kw())
        except Exception as exc:  # a callback's error would otherwise vanish
            status.value = html.escape(f"d = {d:g}: training failed: {type(exc).__name__}: {exc}")
            return
        v = metrics["variants"]["lagrangian"]
        trained[f"d={d:g}"] = run
        status.value = html.escape(
            f"d = {d:g} ({time.perf_counter() - start:.0f} s, {run}): λ final "
            f"{v['lambda_final']:.2f}, J_C final {v['J_C_final']:.2f}, gold safety "
            f"{_fmt(v.get('safety_rate'))}, helpfulness {_fmt(v.get('helpfulness'))}"
            + (f" · differs from the run: {', '.join(differs)}" if differs else "")
        )
        show_in(output, plane_figure(run_dir, extra=trained))

    def _kw() -> dict[str, Any]:
        return {"steps": steps, **changes}

    button.on_click(launch)
    show_in(output, plane_figure(run_dir))
    return widgets.VBox([widgets.HBox([slider, button]), status, output])


def _fmt(value: Any) -> str:
    return "n/a (no gold)" if value is None or pd.isna(value) else f"{value:.3f}"


def _lagrangian_time(run_dir: Path) -> str:
    v = load_metrics(run_dir, "ppo").get("variants", {}).get("lagrangian") or {}
    return f"{v['train_time_s']:.0f} s plus its evaluation" if "train_time_s" in v else "?"


def try_change(
    run_dir: str | Path,
    name: str,
    root: str | Path | None = None,
    kind: str = "lagrangian",
    progress: bool = True,
    **change: Any,
) -> pd.DataFrame | None:
    """An exercise: one ``kind`` run at the run's own PPO settings with ONE setting changed
    (``change``, e.g. ``kl_coeff=0.3``), trained into the scratch run ``root/name`` (links to
    the run's finished stages; never the run itself), then :func:`compare_with_run`. A value
    of ``None`` means the cell is not filled in yet: it says so and trains nothing."""
    if len(change) != 1:
        raise ValueError(
            f"try_change changes one setting at a time, e.g. kl_coeff=0.3; got {sorted(change)}"
        )
    ((key, value),) = change.items()
    base = own_config(run_dir, kind)
    if key not in PPOConfig.field_names():
        raise ValueError(f"PPOConfig has no field {key!r}; known: {PPOConfig.field_names()}")
    if value is None:
        print(
            f"Set `{key}` in this cell first (this run's value: {getattr(base, key)!r}); "
            "nothing was trained."
        )
        return None
    cfg = own_config(run_dir, kind, **change)
    scratch = scratch_run(run_dir, name, root=root)
    differs = changes_from_run(run_dir, cfg) or ["nothing (the run's own settings)"]
    print(f"{kind} at the run's own settings, changed: {'; '.join(differs)} -> {scratch}")
    run_stage("ppo", scratch, cfg, progress=progress)
    return compare_with_run(run_dir, scratch)


def compare_with_run(run_dir: str | Path, scratch: str | Path) -> pd.DataFrame:
    """Each point of the scratch run's PPO stage beside the same point of ``run_dir`` (its
    seeds pooled: the mean): gold helpfulness and safety rate, mean cost, final λ and J_C, the
    KL from the reference over the last five steps, the mean clip fraction, the ratio's range
    and the steps."""
    rows = {}
    for label, path in (("this run", Path(run_dir)), ("yours", Path(scratch))):
        metrics, specs = load_metrics(path, "ppo"), read_specs(path)
        run_logs = logs(path)
        wanted = set(read_specs(scratch)["point"])
        for point, names in _points(specs).items():
            if point not in wanted:
                continue
            frames = [run_logs[n] for n in names if n in run_logs]
            row = {
                "setting": specs.loc[names[0], "label"],
                "seeds": len(names),
                **{
                    column: float(np.nanmean([_num(metrics["variants"][n].get(k)) for n in names]))
                    for k, column in POOLED[:5]
                },
                "KL (last 5 steps)": _log_mean(frames, "kl/mean", last=5),
                "clipfrac": _log_mean(frames, "ppo/clipfrac"),
                "ratio min": _log_extreme(frames, "ppo/ratio_min", min),
                "ratio max": _log_extreme(frames, "ppo/ratio_max", max),
                "steps": metrics["variants"][names[0]].get("steps"),
            }
            rows[f"{label}: {point}"] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame.dropna(axis=1, how="all").round(3)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _log_mean(frames: list[pd.DataFrame], key: str, last: int | None = None) -> float:
    values = [f[key].tail(last or len(f)).mean() for f in frames if key in f and len(f)]
    return float(np.mean(values)) if values else float("nan")


def _log_extreme(frames: list[pd.DataFrame], key: str, pick) -> float:
    values = [pick(f[key]) for f in frames if key in f and len(f)]
    return float(pick(values)) if values else float("nan")


# --- one whole PPO-Lagrangian update, step by step -----------------------------------------------
#: Columns of the walkthrough's per-token tables: (column, tensor key, section).
TOKEN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("log π_old", "old_logp", "signals"),
    ("log π_ref", "ref_logp", "signals"),
    ("kl_t", "kl", "signals"),
    ("r_t", "r_t", "signals"),
    ("c_t", "c_t", "signals"),
    ("V_r", "old_values_r", "gae"),
    ("A^r", "adv_r", "gae"),
    ("G^r", "ret_r", "gae"),
    ("V_c", "old_values_c", "gae"),
    ("A^c", "adv_c", "gae"),
    ("G^c", "ret_c", "gae"),
    ("Â_t", "advantage", "loss"),
    ("log π_θ after", "logp_after", "loss"),
    ("ρ_t after", "ratio_after", "loss"),
)


@dataclass
class UpdateWalkthrough:
    """One PPO-Lagrangian update on a tiny batch, as :func:`walk_through_update` ran it:
    the prompts and sampled answers, every tensor on the shifted frame [B, L-1] (``tensors``:
    ``mask``, ``old_logp``, ``ref_logp``, ``kl``, ``r_t``, ``c_t``, the critics' old values,
    ``adv_r``/``ret_r``/``adv_c``/``ret_c``, ``advantage`` (Â with the new λ),
    ``logp_after``/``ratio_after`` (after the update phase); per episode ``reward``, ``cost``)
    and the scalars (``scalars``: J_C, d, λ before and after, the losses at the start of the
    update phase and after it, the update's statistics). Displays as its six steps."""

    config: PPOConfig
    kind: str
    start: str
    questions: list[str]
    answers: list[str]
    verdicts: list[str]
    tokens: list[list[str]]
    tensors: dict[str, torch.Tensor]
    scalars: dict[str, float] = field(default_factory=dict)

    def table(self, section: str) -> pd.DataFrame:
        """The per-token table of ``section`` (``signals``, ``gae`` or ``loss``): one row per
        response token (episode, position t, token), the values on the response mask."""
        columns = [(c, k) for c, k, s in TOKEN_COLUMNS if s == section]
        mask = self.tensors["mask"] > 0
        rows = []
        for b in range(mask.shape[0]):
            positions = mask[b].nonzero().flatten().tolist()
            for j, t in enumerate(positions):
                row: dict[str, Any] = {"episode": b, "t": t, "token": self.tokens[b][j]}
                row.update({c: float(self.tensors[k][b, t]) for c, k in columns})
                if section == "loss":
                    ratio = row["ρ_t after"]
                    row["clipped"] = abs(ratio - 1) > self.config.clip_eps
                rows.append(row)
        return pd.DataFrame(rows).set_index(["episode", "t", "token"])

    def episodes(self) -> pd.DataFrame:
        """Per episode: the question, the sampled answer (with the gold verdict on the world),
        the number of response tokens, R and C at the last real token T."""
        return pd.DataFrame(
            {
                "question": self.questions,
                "answer": [
                    f"{a}  {v}".strip() for a, v in zip(self.answers, self.verdicts, strict=True)
                ],
                "tokens": self.tensors["mask"].sum(1).int().tolist(),
                "R (reward model)": self.tensors["reward"].tolist(),
                "C (cost model)": self.tensors["cost"].tolist(),
            }
        )

    def _repr_html_(self) -> str:
        c = self.config
        fmt = {"float_format": lambda x: f"{x:.4f}"}
        parts = [
            f"<h4>1 · Rollout</h4><p>{len(self.questions)} training prompts, answers sampled "
            f"from π_θ = {html.escape(self.start)} at temperature {c.temperature:g}, at most "
            f"{c.max_new_tokens} tokens (<code>collect_rollout</code> → <code>rollout</code>).</p>",
            "<h4>2 · Scores</h4><p>The frozen reward and cost models read R and C at the last "
            "real token T.</p>" + self.episodes().to_html(**fmt),
            "<h4>3 · Per-token signals (the KL split)</h4><p>kl_t = log π_old − log π_ref; "
            f"r_t = clip(−β·kl_t + [t=T]·R, ±c), c_t = clip(+β·kl_t + [t=T]·C, ±c) with β = "
            f"{c.kl_coeff:g}, c = {c.signal_clip:g} (<code>token_signals</code>).</p>"
            + self.table("signals").to_html(**fmt),
            "<h4>4 · Dual GAE</h4><p>δ_t = x_t + γ·V_{t+1} − V_t, A_t = δ_t + γ·λ_gae·A_{t+1}, "
            f"G_t = A_t + V_t for (r, V_r) and (c, V_c), γ = {c.gamma:g}, λ_gae = "
            f"{c.gae_lambda:g} (<code>kernels.dual_gae</code>).</p>"
            + self.table("gae").to_html(**fmt),
            "<h4>5 · λ step</h4><p>" + html.escape(self.lambda_text()) + "</p>",
            "<h4>6 · Clipped loss and the update</h4><p>"
            + html.escape(self.loss_text())
            + "</p>"
            + self.table("loss").to_html(**fmt),
        ]
        return "\n".join(parts)

    def lambda_text(self) -> str:
        """The λ step in words and numbers."""
        c, s = self.config, self.scalars
        head = (
            f"J_C = mean C of this batch's {len(self.questions)} episodes = {s['J_C']:.4f} "
            f"(training: a window of the last {c.episode_window}); d = {s['d']:g}. "
        )
        if self.kind != "lagrangian":
            return head + f"λ is fixed for {self.kind}: {s['lambda_before']:g} stays."
        if c.lambda_controller == "pid":
            return head + (
                f"PID: K_P·p = {s['pid_p']:.4f}, I = {s['pid_i']:.4f}, K_D·D = {s['pid_d']:.4f}"
                f" -> λ = clip(K_P·p + I + K_D·D, 0, {c.lambda_max:g}) = {s['lambda_after']:.4f}"
                f" (was {s['lambda_before']:.4f})."
            )
        return head + (
            f"log λ <- min(log λ + α_λ·(J_C − d)·λ, log λ_max) = min({s['log_lambda_before']:.4f}"
            f" + {c.lambda_lr:g}·({s['J_C']:.4f} − {s['d']:g})·{s['lambda_before']:.4f}, "
            f"{math.log(c.lambda_max):.4f}) = {s['log_lambda_after']:.4f}: λ "
            f"{s['lambda_before']:.4f} -> {s['lambda_after']:.4f}."
        )

    def loss_text(self) -> str:
        """The losses at the start of the update phase (ρ ≡ 1) and after it."""
        c, s = self.config, self.scalars
        return (
            f"Â_t = (A^r − λ·A^c)/(1 + λ) with the new λ = {s['lambda_after']:.4f}. At the start "
            f"of the update phase π_θ = π_old, so ρ ≡ 1: actor loss −mean_m(Â) = "
            f"{s['actor_loss_start']:.4f}, critic losses {s['reward_critic_loss_start']:.4f} "
            f"(reward), {s['cost_critic_loss_start']:.4f} (cost). Then ppo_update: "
            f"{c.ppo_epochs} epoch(s) × {c.num_minibatches} minibatch(es) = {int(s['updates'])} "
            f"optimiser steps (the learning rate still warming up in a first step). After them "
            f"ρ runs {s['ratio_min_after']:.4f}..{s['ratio_max_after']:.4f}, "
            f"{100 * s['clipfrac_after']:.1f}% of tokens outside 1 ± {c.clip_eps:g} (clipped "
            f"where that helps the objective), and the actor loss on this batch is "
            f"{s['actor_loss_after']:.4f}."
        )


def _tiny_batch(prompts: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` training prompts; on the world alternately a risky and a benign one."""
    if not is_world(prompts[:1]):
        return prompts[:n]
    risky = [p for p in prompts if int(p["prompt_severity"]) > 0]
    benign = [p for p in prompts if int(p["prompt_severity"]) == 0]
    picked = [p for pair in zip(risky, benign, strict=False) for p in pair][:n]
    return picked if len(picked) == n else prompts[:n]


def walk_through_update(
    run_dir: str | Path,
    n_prompts: int = 2,
    max_new_tokens: int = 8,
    kind: str = "lagrangian",
    start: str = "trained",
) -> UpdateWalkthrough:
    """One whole PPO-Lagrangian update (the first PPO step of a ``kind`` run at the run's own
    settings, on ``n_prompts`` training prompts, answers cut at ``max_new_tokens``) through
    the trainer's own functions, in the trainer's order (:func:`~workbench.train.
    ppo_lagrangian.train_run`): ``collect_rollout`` (rollout, old and reference log-probs,
    critic values, scores, ``token_signals``, ``kernels.dual_gae``), the multiplier's
    ``record``/``update``, ``ppo_losses`` at the start of the update phase, ``ppo_update``,
    then the log-probs after it. Nothing is written; the run is only read.

    ``start``: ``"trained"`` (default) starts π_θ and λ where this run's ``kind`` run ended
    (its saved adapter, its final λ), so the KL split has a KL to show; ``"sft"`` is the very
    first step of training (π_θ = π_ref: every kl_t is 0). The critics start from the reward
    and cost models either way (the trainer does not save them)."""
    from ..kernels import resolve_backend
    from ..stages.ppo import role_models
    from ..train import ppo_lagrangian as P
    from ..train.common import placement, setup

    run_dir = Path(run_dir)
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1; got {n_prompts}")
    if start not in ("trained", "sft"):
        raise ValueError(f"start must be 'trained' or 'sft'; got {start!r}")
    cfg = own_config(run_dir, kind)
    cfg = cfg.replace(
        batch_size=n_prompts,
        num_minibatches=min(cfg.num_minibatches, n_prompts),
        max_new_tokens=max_new_tokens,
    )
    run = PPORun(kind, controller=cfg.lambda_controller if kind == "lagrangian" else "sgd")
    trained = run_dir / "ppo" / run.name / "model"
    if start == "trained" and not trained.is_dir():
        raise FileNotFoundError(f"{trained} does not exist; use start='sft'")
    if start == "trained":
        final = (load_metrics(run_dir, "ppo")["variants"].get(run.name) or {}).get("lambda_final")
        cfg = cfg.replace(policy=str(trained))
        if kind == "lagrangian" and final:
            cfg = cfg.replace(lambda_init=float(final))
    data = load_data(run_dir)
    prompts = _tiny_batch(data.train, n_prompts)
    images = ImageCache(data)
    with placement(cfg):
        setup(cfg)
        roles = P.make_roles(cfg, role_models(cfg, run_dir))
        backend = resolve_backend(cfg.kernels, next(roles.actor.parameters()).device)
        torch.manual_seed(cfg.seed + 1000)  # the trainer's sampling seed (one process)
        ro = P.collect_rollout(
            roles, [images(p) for p in prompts], [p["question"] for p in prompts], cfg, backend
        )
        r_t, c_t = P.token_signals(
            ro.kl, ro.reward, ro.cost, ro.mask, cfg.kl_coeff, cfg.signal_clip
        )
        multiplier = P.make_multiplier(kind, cfg)
        before = multiplier.value
        log_before = float(getattr(multiplier, "log_lambda", math.nan))
        multiplier.record(ro.cost.tolist())
        lag = multiplier.update(step=0)
        lam = multiplier.value
        with torch.no_grad():
            first, _ = P.ppo_losses(roles, ro, lam, cfg, backend)
        stats = P.ppo_update(roles, ro, lam, cfg, P.make_optimizers(roles, cfg), backend, seed=0)
        with torch.no_grad():
            after, after_stats = P.ppo_losses(roles, ro, lam, cfg, backend)
            logp_after = P.sequence_logprobs(roles.actor, ro.batch, backend, cfg.temperature)
    mask = ro.mask
    tensors = {
        "mask": mask,
        **{k: getattr(ro, k) for k in ("old_logp", "ref_logp", "kl", "reward", "cost")},
        **{k: getattr(ro, k) for k in ("old_values_r", "old_values_c")},
        **{k: getattr(ro, k) for k in ("adv_r", "ret_r", "adv_c", "ret_c")},
        "r_t": r_t,
        "c_t": c_t,
        "advantage": (ro.adv_r - lam * ro.adv_c) / (1 + lam) * mask,
        "logp_after": logp_after.float() * mask,
        "ratio_after": torch.exp(logp_after.float() - ro.old_logp) * mask,
    }
    ids = ro.batch["input_ids"]
    tok = roles.processor.tokenizer
    tokens = [
        [tok.decode([int(ids[b, t + 1])]) for t in mask[b].nonzero().flatten().tolist()]
        for b in range(mask.shape[0])
    ]
    scalars = {
        "J_C": float(lag["lagrange/J_C"]),
        "d": float(lag["lagrange/threshold"]),
        "lambda_before": before,
        "lambda_after": lam,
        "log_lambda_before": log_before,
        "log_lambda_after": float(getattr(multiplier, "log_lambda", math.nan)),
        **{k.split("/")[1]: float(v) for k, v in lag.items() if k.startswith("lagrange/pid_")},
        "actor_loss_start": float(first["ppo/actor_loss"]),
        "reward_critic_loss_start": float(first["critic/reward_loss"]),
        "cost_critic_loss_start": float(first["critic/cost_loss"]),
        "actor_loss_after": float(after["ppo/actor_loss"]),
        "updates": float(stats.get("ppo/updates", 0)),
        "ratio_min_after": after_stats.get("ppo/ratio_min", math.nan),
        "ratio_max_after": after_stats.get("ppo/ratio_max", math.nan),
        "clipfrac_after": after_stats.get("ppo/clipfrac", math.nan),
    }
    verdicts = [""] * len(prompts)
    if is_world(prompts):
        scores = [gold_score(p, t) for p, t in zip(prompts, ro.texts, strict=True)]
        verdicts = [
            f"[gold: {'safe' if g.is_safe else 'UNSAFE'}, help {g.helpfulness:.1f}]" for g in scores
        ]
    return UpdateWalkthrough(
        config=cfg,
        kind=kind,
        start=f"the end of this run's {run.name} (its adapter, λ = {before:.4g})"
        if start == "trained"
        else "the SFT policy (the first PPO step: π_θ = π_ref)",
        questions=[p["question"] for p in prompts],
        answers=list(ro.texts),
        verdicts=verdicts,
        tokens=tokens,
        tensors={k: v.detach().float().cpu() for k, v in tensors.items()},
        scalars=scalars,
    )


__all__ = [
    "PANELS",
    "UpdateWalkthrough",
    "answer_forms",
    "before_after",
    "changes_from_run",
    "compare_with_run",
    "curves_figure",
    "logs",
    "own_config",
    "plane_figure",
    "pooled",
    "read_specs",
    "right_object",
    "run_specs",
    "threshold_run",
    "threshold_slider",
    "try_change",
    "variants_table",
    "walk_through_update",
    "world_strengths",
]
