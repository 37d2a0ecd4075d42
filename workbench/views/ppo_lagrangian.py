"""Look inside the PPO stage of a run (notebook 04): training curves of every variant (reward,
cost, J_C against the threshold d, λ, KL, gold helpfulness and safety), the variants beside
the SFT base, the same prompts answered before and after, and a threshold slider that
launches a short run.

Everything reads ``<run>/ppo/<variant>/log.jsonl``, ``samples.jsonl`` and
``<run>/ppo/metrics.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..data import language as L
from ..data.oracle import gold_score
from ..data.store import load_data
from ..eval.tradeoff import VARIANT_COLOURS, logs
from ..models.judge import forms_of
from ..pipeline import resolve_config, run_stage
from ..runs import link_stages, read_jsonl
from .output import show_in

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


def curves_figure(variant_logs: Mapping[str, pd.DataFrame], smooth: int = 5) -> go.Figure:
    """Nine panels of training curves, one line per variant (rolling mean over ``smooth`` steps):
    the signals, λ and KL, the gold judge's view, and PPO's own health (the ratio's range, the
    share of clipped tokens and the KL between consecutive policies)."""
    fig = make_subplots(rows=3, cols=3, subplot_titles=[title for _, title in PANELS])
    for name, frame in variant_logs.items():
        colour = VARIANT_COLOURS.get(name, "#7f7f7f")
        for k, (key, _) in enumerate(PANELS):
            if key not in frame:
                continue
            row, col = k // 3 + 1, k % 3 + 1
            y = frame[key].rolling(smooth, min_periods=1).mean()
            fig.add_trace(
                go.Scatter(
                    x=frame["step"],
                    y=y,
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=k == 0,
                    line={"color": colour},
                ),
                row=row,
                col=col,
            )
            if key == "ppo/ratio" and {"ppo/ratio_min", "ppo/ratio_max"} <= set(frame):
                for bound in ("ppo/ratio_min", "ppo/ratio_max"):
                    fig.add_trace(
                        go.Scatter(
                            x=frame["step"],
                            y=frame[bound],
                            mode="lines",
                            name=f"{bound} · {name}",
                            legendgroup=name,
                            showlegend=False,
                            line={"color": colour, "width": 0.5},
                        ),
                        row=row,
                        col=col,
                    )
            if key == "ppo/clipfrac" and "critic/clipfrac" in frame:
                fig.add_trace(
                    go.Scatter(
                        x=frame["step"],
                        y=frame["critic/clipfrac"].rolling(smooth, min_periods=1).mean(),
                        mode="lines",
                        name=f"critic clipfrac · {name}",
                        legendgroup=name,
                        showlegend=False,
                        line={"color": colour, "dash": "dot"},
                    ),
                    row=row,
                    col=col,
                )
            if key == "cost/score" and "lagrange/J_C" in frame:
                fig.add_trace(
                    go.Scatter(
                        x=frame["step"],
                        y=frame["lagrange/J_C"],
                        mode="lines",
                        name=f"J_C · {name}",
                        legendgroup=name,
                        showlegend=False,
                        line={"color": colour, "dash": "dot"},
                    ),
                    row=row,
                    col=col,
                )
    threshold = next(
        (
            f["lagrange/threshold"].iloc[0]
            for f in variant_logs.values()
            if "lagrange/threshold" in f and len(f)
        ),
        None,
    )
    if threshold is not None:
        fig.add_hline(
            y=threshold,
            line_dash="dash",
            line_color="grey",
            row=1,
            col=2,
            annotation_text=f"d = {threshold:g}",
            annotation_position="bottom right",
        )
    fig.update_layout(
        height=800,
        title="PPO training curves (dotted: J_C, the windowed episode cost)",
        legend={"orientation": "h", "y": -0.08},
    )
    fig.update_xaxes(title_text="step", row=3)
    return fig


def variants_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Gold helpfulness and safety rate of each variant on the test prompts, beside the base."""
    rows = {}
    base = metrics.get("base") or {}
    if base.get("helpfulness") is not None:
        rows["SFT base"] = {"helpfulness": base["helpfulness"], "safety_rate": base["safety_rate"]}
    for name, m in metrics.get("variants", {}).items():
        rows[name] = {
            k: m.get(k)
            for k in (
                "helpfulness",
                "safety_rate",
                "mean_cost",
                "lambda_final",
                "steps",
                "train_time_s",
            )
        }
    frame = pd.DataFrame(rows).T
    if "SFT base" in frame.index:
        frame["Δ helpfulness"] = frame["helpfulness"] - frame.loc["SFT base", "helpfulness"]
        frame["Δ safety (points)"] = 100 * (
            frame["safety_rate"] - frame.loc["SFT base", "safety_rate"]
        )
    return frame.astype(float).round(3)


def before_after(
    run_dir: str | Path,
    n: int = 8,
    variants: Sequence[str] | None = None,
    intent: str | None = "harmful",
) -> pd.DataFrame:
    """The same test prompts answered by the SFT base and by each PPO variant."""
    run_dir = Path(run_dir)
    base = {r["id"]: r for r in read_jsonl(run_dir / "sft" / "samples.jsonl")}
    columns: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted((run_dir / "ppo").glob("*/samples.jsonl")):
        if variants is None or path.parent.name in variants:
            columns[path.parent.name] = {r["id"]: r for r in read_jsonl(path)}
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
    """Test prompts by id, and the saved answers of the base and of each PPO variant (seeds
    are separate columns)."""

    prompts = {p["id"]: p for p in load_data(run_dir).test}
    answers = {"SFT base": read_jsonl(run_dir / "sft" / "samples.jsonl")}
    for path in sorted((run_dir / "ppo").glob("*/samples.jsonl")):
        answers[path.parent.name] = read_jsonl(path)
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


def answer_forms(run_dir: str | Path) -> pd.DataFrame:
    """What each system says to the *risky* test prompts: the share of answers that comply
    (unsafe), give the full safe-and-helpful form, talk about the wrong object, or only refuse
    (a refusal or redirection and nothing else); and the refusal rate on the benign prompts.
    The forms are the gold oracle's (:func:`workbench.models.judge.gold_forms`, the same fields
    the analysis stage counts)."""

    prompts, answers = _answer_sets(Path(run_dir))
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


def world_strengths(run_dir: str | Path, strengths: Sequence[float] = (1.5, 2.5)) -> pd.DataFrame:
    """Gold helpfulness of the *same* saved answers scored in worlds of different strength of
    the safe-and-helpful answer (``DataConfig.safe_helpful_score``; 1.5 is the first world, where
    no safe answer to a risky prompt beats a redirection). The answers do not change, only
    what the judge pays for them."""

    prompts, answers = _answer_sets(Path(run_dir))
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


def threshold_run(
    run_dir: str | Path, scratch: str | Path, threshold: float, steps: int = 20, smoke: bool = True
) -> tuple[Path, dict[str, Any]]:
    """A short ``lagrangian`` run with cost threshold d = ``threshold`` in ``scratch/d<d>``, a
    run directory whose data and models are links to ``run_dir``'s. Returns (run dir, metrics)."""

    run = link_stages(run_dir, Path(scratch) / f"d{threshold:g}")
    cfg = resolve_config(
        "ppo", smoke=smoke, kinds=("lagrangian",), cost_threshold=threshold, max_steps=steps
    )
    return run, run_stage("ppo", run, cfg, progress=False)


def threshold_slider(
    run_dir: str | Path,
    scratch: str | Path,
    steps: int = 20,
    values: Sequence[float] = (-3.0, -2.5, -2.0, -1.0, 0.0),
) -> widgets.Widget:
    """Pick a cost threshold d and launch a short ``lagrangian`` run with it
    (:func:`threshold_run`); its curves are drawn beside the chosen d when it finishes."""
    slider = widgets.SelectionSlider(
        options=list(values), value=values[len(values) // 2], description="d ="
    )
    button = widgets.Button(description=f"train {steps} steps", button_style="primary")
    status, output = widgets.HTML(), widgets.Output()

    def launch(_=None) -> None:
        d = slider.value
        status.value = f"training lagrangian with d = {d:g} for {steps} steps ..."
        run, metrics = threshold_run(run_dir, scratch, d, steps)
        v = metrics["variants"]["lagrangian"]
        status.value = (
            f"d = {d:g}: λ_final {v['lambda_final']:.2f}, gold safety "
            f"{v.get('safety_rate', float('nan')):.1%}, "
            f"helpfulness {v.get('helpfulness', float('nan')):.2f}"
        )
        show_in(output, curves_figure(logs(run)))

    button.on_click(launch)
    return widgets.VBox([widgets.HBox([slider, button]), status, output])


__all__ = [
    "logs",
    "curves_figure",
    "variants_table",
    "before_after",
    "answer_forms",
    "right_object",
    "world_strengths",
    "threshold_run",
    "threshold_slider",
    "PANELS",
]
