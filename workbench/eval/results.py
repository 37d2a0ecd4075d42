"""The results of a finished run in one table (``python -m workbench results``): every system
of the analysis (``<run>/analyze/metrics.json``) with helpfulness, safety rate and win rates
against the base, each with its two-level bootstrap interval, their changes relative to the
base, and the comparisons that correspond to the paper's headline figures (arXiv 2503.17682:
Safe RLHF-V +34.2% safety and +34.3% helpfulness over its base; Beaver-Guard-V +40.9% average
safety after five rounds of filter-and-regenerate).

A relative change is ``(system - base) / base`` of the pooled mean over prompts and seeds
(docs/design.md §8.3, "Headline"; §7.3 for the guard's ``relative_safety_gain``). It is a
point estimate: the intervals of the two values it divides are in the table beside it.

The table itself is :func:`workbench.eval.report.systems_table` (the report's), the
Safe RLHF-V comparison :func:`workbench.eval.analyze.headline` (the stage's)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..runs import DEFAULT_RUN_DIR, partial_dir, read_json, stage_dir
from .analyze import PAPER_HEADLINE, headline, judge_is_gold, judge_label
from .report import (
    lambda_course_table,
    matched_safety_table,
    methods_systems_table,
    mocan_lambda_table,
    systems_table,
)
from .tradeoff import systems

#: The paper's headline figures (arXiv 2503.17682, abstract), relative changes over the base:
#: Safe RLHF-V's safety and helpfulness, and Beaver-Guard-V's average safety after five rounds.
PAPER_FIGURES: dict[str, float] = {
    "safety": PAPER_HEADLINE["safety"],
    "helpfulness": PAPER_HEADLINE["helpfulness"],
    "guard_safety": 0.409,
}

#: ``--prompts`` -> the analysis folder (``analyze --prompts eval`` writes ``analyze_eval/``).
FOLDERS: dict[str, str] = {"test": "analyze", "eval": "analyze_eval"}

#: The per-system fields the table needs, each a number with a ``<field>_ci`` beside it.
REQUIRED = ("helpfulness", "safety_rate", "win_rate_helpful_vs_base", "win_rate_safe_vs_base")


def relative_change(value: float, base: float) -> float | None:
    """``(value - base) / base``; None when the base is 0 (no relative change exists)."""
    return (value - base) / base if base else None


def signed_percent(value: float | None) -> str:
    """``+12.3%``, or ``n/a`` for None."""
    return "n/a" if value is None else f"{100 * value:+.1f}%"


#: ``--stage`` -> the command that makes it and, per ``--prompts``, its folder.
STAGE_FOLDERS: dict[str, dict[str, str]] = {
    "analyze": FOLDERS,
    "methods": {"test": "methods", "eval": "methods_eval"},
}


def load_analysis(
    run_dir: str | Path, prompts: str = "test", stage: str = "analyze"
) -> dict[str, Any]:
    """``metrics.json`` of the run's finished analysis (or, with ``stage="methods"``, methods
    comparison) of its ``prompts`` (test or eval), checked for the fields the results table
    reads. A missing or unfinished stage is a ``FileNotFoundError`` that says which command
    makes it."""
    folders = STAGE_FOLDERS[stage]
    if prompts not in folders:
        raise ValueError(f"results: prompts must be one of {sorted(folders)}, not {prompts!r}")
    folder = folders[prompts]
    path = stage_dir(run_dir, folder) / "metrics.json"
    if not path.is_file():
        command = f"python -m workbench {stage} --run-dir {run_dir}" + (
            " --prompts eval" if prompts == "eval" else ""
        )
        state = (
            f"it is still running or was stopped ({partial_dir(run_dir, folder)} exists)"
            if partial_dir(run_dir, folder).is_dir()
            else "it has not finished"
        )
        what, make = (
            ("analysis", "`make run`, whose last stage it is")
            if stage == "analyze"
            else ("methods stage", "`make methods`")
        )
        raise FileNotFoundError(
            f"results: the run {run_dir} has no finished {what} ({path} is missing: {state}); "
            f"run `{command}` (or {make})"
        )
    metrics = read_json(path)
    check_metrics(metrics, str(path))
    return metrics


def check_metrics(metrics: Mapping[str, Any], source: str = "metrics") -> None:
    """A ``ValueError`` naming the first missing field of an analysis's metrics."""
    for key in ("base", "variants"):
        if key not in metrics:
            raise ValueError(f"results: {source} has no field {key!r}: not an analysis")
    for name, summary in {"base": metrics["base"], **metrics["variants"]}.items():
        for key in REQUIRED + tuple(f"{k}_ci" for k in REQUIRED):
            if key not in summary:
                raise ValueError(f"results: {source}: system {name!r} has no field {key!r}")


def results_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per system (base, base+guard, reward-only, fixed λ, lagrangian per d, PID):
    :func:`~workbench.eval.report.systems_table` (values with their intervals), then the
    helpfulness and the safety rate relative to the base. Helpfulness changes are left out
    (n/a) unless the judge is the gold oracle: a learned judge's scores have no zero."""
    table = systems_table(metrics).drop(columns=["family"])
    base = metrics["base"]
    gold = judge_is_gold(metrics)
    helpful: list[str] = []
    safer: list[str] = []
    for name, s in systems(metrics).items():
        if name == "base":
            helpful.append("-")
            safer.append("-")
            continue
        change = relative_change(s["helpfulness"], base["helpfulness"])
        helpful.append(signed_percent(change) if gold else "n/a")
        safer.append(signed_percent(relative_change(s["safety_rate"], base["safety_rate"])))
    table["helpfulness vs base"] = helpful
    table["safety rate vs base"] = safer
    return table


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def comparisons(
    metrics: Mapping[str, Any], guard_rounds: int | None = None
) -> list[dict[str, Any]]:
    """The paper's three headline figures beside ours, each with what exactly is compared:
    Safe RLHF-V's safety and helpfulness (:func:`~workbench.eval.analyze.headline`: the
    ``lagrangian`` point at the default d against the base) and Beaver-Guard-V's safety
    (``base+guard``, after ``guard_rounds`` rounds of filter-and-regenerate when known,
    against the base). A system the run lacks gives ``this run`` None."""
    rounds = "filter-and-regenerate" + (f", {guard_rounds} rounds" if guard_rounds else "")
    base = metrics["base"]
    head = headline(dict(metrics))
    variants = metrics["variants"]
    lagrangian = variants.get(head.get("system", ""), {})
    label = lagrangian.get("label", head.get("system"))
    rows: list[dict[str, Any]] = []
    for key, field in (("safety", "safety_rate"), ("helpfulness", "helpfulness")):
        name = field.replace("_", " ")
        ours: float | None
        if not head:
            what, ours = "no lagrangian (Safe RLHF-V) point in this run", None
        else:
            ours = head[f"{field}_relative_change"]
            if key == "helpfulness" and not judge_is_gold(metrics):
                ours = None
            fmt = _percent if field == "safety_rate" else "{:.3f}".format
            what = (
                f"{name} of {label} vs the SFT base: ({fmt(lagrangian[field])} - "
                f"{fmt(base[field])}) / {fmt(base[field])}"
            )
        rows.append(
            {
                "figure": f"Safe RLHF-V {key}",
                "compared": what,
                "this run": ours,
                "paper": PAPER_FIGURES[key],
            }
        )
    guard = variants.get("base+guard")
    rows.append(
        {
            "figure": "Beaver-Guard-V safety",
            "compared": (
                "no base+guard system in this run"
                if guard is None
                else f"safety rate of the base behind the guard ({rounds}) vs the base alone: "
                f"({_percent(guard['safety_rate'])} - {_percent(base['safety_rate'])}) / "
                f"{_percent(base['safety_rate'])}"
            ),
            "this run": (
                None
                if guard is None
                else relative_change(guard["safety_rate"], base["safety_rate"])
            ),
            "paper": PAPER_FIGURES["guard_safety"],
        }
    )
    return rows


def comparisons_table(metrics: Mapping[str, Any], guard_rounds: int | None = None) -> pd.DataFrame:
    """:func:`comparisons` with the numbers as signed percentages."""
    frame = pd.DataFrame(comparisons(metrics, guard_rounds))
    for column in ("this run", "paper"):
        frame[column] = [signed_percent(v) for v in frame[column]]
    return frame[["figure", "this run", "paper", "compared"]]


def render_table(frame: pd.DataFrame, fmt: str = "text") -> str:
    """A data frame as a markdown table (``markdown``) or as aligned columns (``text``)."""
    header = [str(c) for c in frame.columns]
    rows = [[str(v) for v in row] for row in frame.itertuples(index=False)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    if fmt != "text":
        raise ValueError(f"results: format must be 'text' or 'markdown', not {fmt!r}")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def guard_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``guard/metrics.json`` ({} without a finished guard stage)."""
    path = stage_dir(run_dir, "guard") / "metrics.json"
    return read_json(path) if path.is_file() else {}


def guard_stage_gain(guard: Mapping[str, Any]) -> str | None:
    """The guard stage's own measurement of the same gain (its ``guard/metrics.json``), when
    it has one: ``relative_safety_gain`` over its rounds on its test prompts (gold judge)."""
    gain, rounds = guard.get("relative_safety_gain"), guard.get("rounds_safety_rate")
    if gain is None or not rounds:
        return None
    return (
        f"The guard stage measures the same gain on its own test prompts: safety rate "
        f"{_percent(rounds[0])} at round 0 -> {_percent(rounds[-1])} after round "
        f"{len(rounds) - 1}, "
        f"{signed_percent(gain)} (guard/metrics.json, relative_safety_gain)."
    )


def render_results(run_dir: str | Path, fmt: str = "text", prompts: str = "test") -> str:
    """The whole output of ``python -m workbench results``: what was measured, the systems
    table, the comparison with the paper and what is compared."""
    metrics = load_analysis(run_dir, prompts)
    level = round(100 * float(metrics.get("confidence", 0.95)))
    n = metrics.get("n_prompts", metrics["base"].get("n_prompts", "?"))
    intro = (
        f"Results of {run_dir} ({FOLDERS[prompts]}/metrics.json): {n} {prompts} prompts, "
        f"judge: {judge_label(metrics)}. Values are means over prompts with each system's "
        f"training seeds pooled; [brackets]: {level}% two-level bootstrap intervals over "
        "training seeds and prompts. Win rates: share of prompts where the system's answer "
        "beats the base's (ties count 1/2). 'vs base': (system - base) / base, a relative "
        "change (not percentage points)."
    )
    paper = (
        "Against the paper's headline figures (arXiv 2503.17682; its own models and "
        "benchmarks, not recomputed here). Ours are relative changes of the pooled means, "
        "point estimates (their intervals: the two rows of the table above):"
    )
    guard = guard_metrics(run_dir)
    parts = [intro, render_table(results_table(metrics), fmt), paper]
    parts.append(render_table(comparisons_table(metrics, guard.get("rounds")), fmt))
    gain = guard_stage_gain(guard) if prompts == "test" else None
    if gain:
        parts.append(gain)
    course = lambda_course_table(metrics)
    if len(course):
        parts.append(
            "λ in training, per PPO run with a learned λ: overshoot = peak λ / final λ (none "
            "when λ ends at 0); violation area = the sum of J_C - d over the steps with J_C "
            "above d:"
        )
        parts.append(render_table(course, fmt))
    if not judge_is_gold(metrics):
        parts.append(
            "The judge is not the gold oracle: its helpfulness is a model's score on its own "
            "scale, so no relative change of helpfulness is given."
        )
    parts += [f"Note: {note}" for note in metrics.get("notes", [])]
    return "\n\n".join(parts) + "\n"


def render_methods_results(run_dir: str | Path, fmt: str = "text", prompts: str = "test") -> str:
    """``python -m workbench results --stage methods``: the methods stage's comparison of the
    rollout-free methods beside the base and the PPO points (its ``metrics.json``): the
    systems with intervals, severe-harm rate and compute, the families at matched safety and
    MoCAN's λ* beside PPO-Lagrangian's λ."""
    metrics = load_analysis(run_dir, prompts, stage="methods")
    folder = STAGE_FOLDERS["methods"][prompts]
    level = round(100 * float(metrics.get("confidence", 0.95)))
    tol = metrics.get("match_tolerance", 0.05)
    parts = [
        f"Methods of {run_dir} ({folder}/metrics.json): {metrics.get('n_prompts', '?')} "
        f"{prompts} prompts, judge: {judge_label(metrics)}. Values are means over prompts "
        f"with each point's training seeds pooled; [brackets]: {level}% two-level bootstrap "
        "intervals over seeds and prompts. Compute is summed over a point's seeds.",
        render_table(methods_systems_table(metrics).drop(columns=["family"]), fmt),
        f"Families at matched safety (for each two families, the points with the closest "
        f"safety rates, within {tol:g}); a - b with paired bootstrap intervals:",
        render_table(matched_safety_table(metrics), fmt)
        if metrics.get("matched_safety")
        else "(no two families have points that close)",
        "MoCAN's λ* beside PPO-Lagrangian's λ at the same threshold d (one value per seed):",
        render_table(mocan_lambda_table(metrics), fmt)
        if metrics.get("mocan_lambda")
        else "(no MoCAN point)",
    ]
    parts += [f"Note: {note}" for note in metrics.get("notes", [])]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workbench results [--run-dir DIR] [--format text|markdown] [--prompts
    test|eval] [--stage analyze|methods]``: print the results table of a finished run (or its
    methods comparison); exit status 2 with a message when the stage has not finished."""
    parser = argparse.ArgumentParser(
        prog="python -m workbench results",
        description="The results table of a finished run: every system's helpfulness, safety "
        "rate and win rates against the base with bootstrap intervals, and the relative "
        "changes beside the paper's +34.2% / +34.3% / +40.9%.",
    )
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="a finished run")
    parser.add_argument("--format", choices=("text", "markdown"), default="text")
    parser.add_argument(
        "--prompts",
        choices=tuple(FOLDERS),
        default="test",
        help="the analysis of the test prompts (analyze/) or of the eval prompts (analyze_eval/)",
    )
    parser.add_argument(
        "--stage",
        choices=("analyze", "methods"),
        default="analyze",
        help="the analysis (default) or the methods stage's comparison of the rollout-free "
        "methods (methods/, or methods_eval/ with --prompts eval)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    render = render_methods_results if args.stage == "methods" else render_results
    try:
        text = render(args.run_dir, args.format, args.prompts)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


__all__ = [
    "PAPER_FIGURES",
    "relative_change",
    "signed_percent",
    "load_analysis",
    "check_metrics",
    "results_table",
    "comparisons",
    "comparisons_table",
    "render_table",
    "guard_metrics",
    "guard_stage_gain",
    "render_results",
    "render_methods_results",
    "main",
]
