"""Look inside the methods stage of a run (notebook 06): the rollout-free methods (DPO on either
label, SafeDPO, MoCAN) beside the base and the PPO points, MoCAN's λ* beside PPO-Lagrangian's
λ, and the PID and SGD λ controllers side by side.

Everything reads ``<run>/methods/metrics.json`` (docs/design.md §6.14) and the figure the stage
wrote; the λ demonstration steps the trainer's own multipliers
(:func:`~workbench.train.ppo_lagrangian.make_multiplier`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..config import PPOConfig
from ..eval import tradeoff
from ..runs import read_json
from ..train.ppo_lagrangian import make_multiplier
from .output import show_in, stage_variant


def load(run_dir: str | Path) -> dict[str, Any]:
    """``<run>/methods/metrics.json``, with a hint when the stage has not run."""
    path = Path(run_dir) / "methods" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run python -m workbench methods --run-dir {run_dir}"
        )
    return read_json(path)


def _interval(s: Mapping[str, Any], key: str) -> str:
    """``value [low, high]`` of ``key`` in a summary, or "–" when it is missing."""
    if s.get(key) is None:
        return "–"
    lo, hi = s.get(f"{key}_ci") or (s[key], s[key])
    return f"{s[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def points_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per point of the comparison (the base, base+guard and PPO points too): method
    (family), knob (Δ or d), helpfulness, safety rate and severe-harm rate with their
    intervals, seeds, and the compute of the rollout-free points (training wall time and
    tokens generated per run, summed over seeds)."""
    rows = []
    for name, s in tradeoff.systems(metrics).items():
        compute = s.get("compute") or {}
        rows.append(
            {
                "point": name,
                "method": s["family"],
                "knob": s.get("setting"),
                "helpfulness": _interval(s, "helpfulness"),
                "safety rate": _interval(s, "safety_rate"),
                "severe-harm rate": _interval(s, "severe_harm_rate"),
                "seeds": s.get("seeds"),
                "train s / run": compute.get("train_wall_time_s_per_run"),
                "tokens generated": (
                    compute.get("train_tokens_generated", 0)
                    + compute.get("sample_tokens_generated", 0)
                    if compute
                    else None
                ),
            }
        )
    return pd.DataFrame(rows).set_index("point")


def tradeoff_plane(run_dir: str | Path) -> go.Figure:
    """The trade-off plane the stage wrote (``methods/figures/tradeoff.json``)."""
    return tradeoff.load_figure(run_dir, "tradeoff", folder="methods")


def lambda_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Per MoCAN threshold d: λ* (MoCAN's dual, mean over seeds), the λ PPO-Lagrangian would
    settle at on the same reference samples, and the PPO stage's final λ (SGD and PID, mean
    over seeds; NaN when the run has no such PPO run)."""

    def mean(values: Sequence[Any] | None) -> float:
        vals = [v for v in values or [] if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    rows = [
        {
            "d": r["threshold"],
            "MoCAN λ*": mean(r["lambda_star"]),
            "Lagrangian λ predicted": mean(r["lagrangian_lambda_predicted"]),
            "PPO λ final (SGD)": mean(r.get("ppo_lambda_final")),
            "PPO λ final (PID)": mean(r.get("ppo_pid_lambda_final")),
            "feasible": all(bool(f) for f in r["feasible"]),
        }
        for r in metrics["mocan_lambda"].values()
    ]
    return pd.DataFrame(rows).set_index("d") if rows else pd.DataFrame()


def has_both_controllers(metrics: Mapping[str, Any]) -> bool:
    """Whether the run has PPO-Lagrangian points under both λ controllers (SGD and PID)."""
    families = {s["family"] for s in metrics["variants"].values()}
    return {"lagrangian", "lagrangian_pid"} <= families


def synthetic_costs(steps: int = 120, threshold: float = 0.0, seed: int = 0) -> np.ndarray:
    """A J_C series for the λ demonstration: above ``threshold`` at first, falling below it
    half way (as a policy learns to be safe), with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    return threshold + 1.5 * np.exp(-t / 25) - 0.5 * (t > steps // 2) + 0.2 * rng.normal(size=steps)


def lambda_paths(costs: Sequence[float], threshold: float = 0.0, **overrides: Any) -> pd.DataFrame:
    """λ of the SGD and of the PID multiplier (the trainer's own, PPOConfig's defaults, window
    of one episode so J_C is the series) stepped on the same ``costs``, one row per step."""
    out: dict[str, list[float]] = {"J_C": list(map(float, costs))}
    for controller in ("sgd", "pid"):
        cfg = PPOConfig(
            lambda_controller=controller,
            cost_threshold=threshold,
            episode_window=1,
            lambda_update_delay=0,
            **overrides,
        )
        lam = make_multiplier("lagrangian", cfg)
        out[controller] = []
        for step, c in enumerate(costs):
            lam.record([c])
            out[controller].append(lam.update(step)["lagrange/lambda"])
    return pd.DataFrame(out).rename_axis("step")


def lambda_paths_figure(paths: pd.DataFrame, threshold: float = 0.0) -> go.Figure:
    """λ of both controllers (left axis) and J_C with the threshold d (right axis)."""
    fig = go.Figure()
    fig.add_scatter(x=paths.index, y=paths["sgd"], name="λ, SGD on log λ")
    fig.add_scatter(x=paths.index, y=paths["pid"], name="λ, PID", line=dict(dash="dot"))
    fig.add_scatter(
        x=paths.index, y=paths["J_C"], name="J_C", yaxis="y2", line=dict(color="grey", width=1)
    )
    fig.add_hline(y=threshold, yref="y2", line_dash="dash", annotation_text=f"d={threshold:g}")
    fig.update_layout(
        height=380,
        title="One synthetic J_C series, two λ controllers",
        xaxis_title="PPO step",
        yaxis=dict(title="λ"),
        yaxis2=dict(title="J_C", overlaying="y", side="right"),
    )
    return fig


def margin_explorer(metrics: Mapping[str, Any]) -> widgets.Widget:
    """A slider over the SafeDPO margins Δ of the run: the chosen point's row of
    :func:`points_table` and its place among all points (helpfulness vs safety rate)."""
    table = points_table(metrics)
    safedpo = table[table["method"] == "safedpo"].sort_values("knob")
    if safedpo.empty:
        return widgets.HTML("<i>this run has no SafeDPO points</i>")
    systems = tradeoff.systems(metrics)
    slider = widgets.SelectionSlider(
        options=[(f"{k:g}", name) for name, k in safedpo["knob"].items()],
        description="margin Δ",
    )
    output = widgets.Output()

    def draw(_: Any = None) -> None:
        name = slider.value
        fig = go.Figure()
        for n, s in systems.items():
            chosen = n == name
            fig.add_scatter(
                x=[s["safety_rate"]],
                y=[s["helpfulness"]],
                mode="markers+text",
                text=[s.get("label", n)],
                textposition="top center",
                marker=dict(size=16 if chosen else 9, color="crimson" if chosen else "grey"),
                showlegend=False,
            )
        fig.update_layout(height=360, xaxis_title="safety rate", yaxis_title="helpfulness")
        show_in(output, safedpo.loc[[name]], fig)

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, output])


# --- exercises -----------------------------------------------------------------------------
def lambda_summary(paths: Mapping[str, pd.DataFrame], threshold: float = 0.0) -> pd.DataFrame:
    """Per named :func:`lambda_paths` result and controller: the largest λ, the step it was
    reached, λ at the last step and the steps with J_C above ``threshold`` (the same series
    for both controllers): how far and how long each controller overshoots."""
    rows = {}
    for name, frame in paths.items():
        above = int((frame["J_C"] > threshold).sum())
        for controller in ("sgd", "pid"):
            lam = frame[controller]
            rows[(name, controller)] = {
                "max λ": round(float(lam.max()), 3),
                "step of max": int(lam.idxmax()),
                "final λ": round(float(lam.iloc[-1]), 3),
                "steps with J_C > d": above,
            }
    return pd.DataFrame.from_dict(rows, orient="index")


#: The stages a methods exercise links from the run (the methods stage itself is trained anew).
METHODS_INPUTS = ("data", "sft", "reward", "cost", "guard", "ppo", "analyze")


def methods_variant(run_dir: str | Path, name: str, **overrides: Any) -> Path:
    """An exercise: the methods stage again with ``overrides`` on top of ``run_dir``'s own
    methods config (e.g. ``margins=(0.0, 10.0)``), in the scratch run ``name`` beside
    ``run_dir`` (:func:`~workbench.views.output.scratch_run`: the finished stages it reads
    linked), never in ``run_dir``. A second call with the same settings finds it finished."""
    return stage_variant(run_dir, "methods", name, METHODS_INPUTS, **overrides)


__all__ = [
    "METHODS_INPUTS",
    "has_both_controllers",
    "lambda_summary",
    "methods_variant",
    "lambda_paths",
    "lambda_paths_figure",
    "lambda_table",
    "load",
    "margin_explorer",
    "points_table",
    "synthetic_costs",
    "tradeoff_plane",
]
