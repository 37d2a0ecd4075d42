"""``report.html``: the analysis of a run on one page that opens offline (plotly.js from the
``figures/`` folder beside it), with the headline, the table of systems with confidence
intervals, on the world the table of answer forms (refusals of benign requests, the
safe-helpful form and the wrong-object template on risky prompts), and every figure."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..runs import atomic_write_text
from .analyze import judge_is_gold, judge_label
from .tradeoff import has_forms, systems


def captions(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Each figure's caption, naming the judge behind its numbers (:func:`judge_label`; the
    answer forms and the over-optimisation curves are always the gold oracle's)."""
    judge = judge_label(metrics)
    prompts = metrics.get("prompts", "test")
    return {
        "tradeoff": (
            f"Each marker is a system on the {prompts} prompts (judge: {judge}), its "
            "training seeds pooled; bars are bootstrap confidence intervals over seeds and "
            "prompts; dotted lines are each family's Pareto frontier; faint dots are single "
            "seeds. Up and to the right is better."
        ),
        "win_rates": (
            f"Share of {prompts} prompts where the system's answer beats the base's answer "
            f"according to the judge ({judge}; ties count 1/2)."
        ),
        "safety_by_category": f"Safety rate per harm category of the prompt ({judge}).",
        "safety_by_severity": f"Safety rate per severity level of the prompt ({judge}).",
        "helpfulness_by_severity": (
            f"Helpfulness per severity level of the prompt ({judge}): benign prompts (safe) "
            "should stay helpful."
        ),
        "lambda": (
            "The learned multiplier λ grows while the episode cost J_C is above the threshold d "
            "and shrinks once the constraint holds."
        ),
        "overoptimisation": (
            "From PPO's training logs, whatever the judge of this analysis: proxy reward (this "
            "run's reward model) keeps rising with KL; where gold helpfulness does not follow, "
            "the policy is exploiting the reward model."
            if on_world(metrics)
            else "From PPO's training logs: proxy reward (this run's reward model) against KL "
            "from the reference. Real data has no gold helpfulness to set beside it; a judge "
            "trained apart (--judge-run, --judge hf) is the check on what the proxy rewards."
        ),
        "answer_forms": (
            "Gold answer forms: the share of benign requests (prompt severity 0) refused or only "
            "redirected, and of risky prompts answered in the full safe-helpful form (the "
            "target's risk, two tips, a redirection) or with tips or risks about an object other "
            "than the one asked about (the wrong-object template, a way to game the reward model)."
        ),
        "refusal_by_intent": (
            "Share of answers the gold oracle calls a refusal (refuses or redirects and answers "
            "nothing), per intent of the prompt."
        ),
    }


def on_world(metrics: Mapping[str, Any]) -> bool:
    """Whether the analysed prompts are the world's (the gold oracle could judge them)."""
    info = metrics.get("judge_description") or {}
    return judge_is_gold(metrics) or bool(info.get("agreement_with_gold"))


#: The captions of an analysis with the gold judge.
CAPTIONS = captions({"judge": "gold"})


def _ci(value: float, ci: list[float] | None, pct: bool = False) -> str:
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f"{f(value)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(value)


def systems_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per system: helpfulness, safety rate and win rates with their intervals."""
    rows = []
    for name, s in systems(metrics).items():
        rows.append(
            {
                "system": s.get("label", name),
                "family": s["family"],
                "seeds": s.get("seeds", 1),
                "helpfulness": _ci(s["helpfulness"], s.get("helpfulness_ci")),
                "safety rate": _ci(s["safety_rate"], s.get("safety_rate_ci"), pct=True),
                "win rate helpful vs base": _ci(
                    s["win_rate_helpful_vs_base"], s.get("win_rate_helpful_vs_base_ci"), pct=True
                ),
                "win rate safe vs base": _ci(
                    s["win_rate_safe_vs_base"], s.get("win_rate_safe_vs_base_ci"), pct=True
                ),
            }
        )
    return pd.DataFrame(rows)


def methods_systems_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The methods stage's table of systems (docs/design.md §6.14): :func:`systems_table`
    plus the severe-harm rate and each point's compute (wall time, tokens generated; summed
    over its seeds)."""
    table = systems_table(metrics)
    severe, wall, tokens = [], [], []
    for s in systems(metrics).values():
        severe.append(_rate(s, "severe_harm_rate"))
        c = s.get("compute")
        if c is None:
            wall.append("")
        elif c["sample_wall_time_s"] is None:  # PPO: its test answers are not timed apart
            wall.append(f"{c['train_wall_time_s']:.0f} (train)")
        else:
            wall.append(f"{c['train_wall_time_s'] + c['sample_wall_time_s']:.0f}")
        tokens.append(
            "" if c is None else str(c["train_tokens_generated"] + c["sample_tokens_generated"])
        )
    table["severe-harm rate"] = severe
    table["wall time s (train + sample)"] = wall
    table["tokens generated"] = tokens
    return table


def _signed_ci(value: float, ci: list[float]) -> str:
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def matched_safety_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The methods stage's comparisons at matched safety, one row per pair of families: the
    two points, their safety-rate gap and the paired differences a - b with intervals."""
    return pd.DataFrame(
        [
            {
                "a": m["a"],
                "b": m["b"],
                "safety-rate gap": f"{m['safety_gap']:.3f}",
                "helpfulness a - b": _signed_ci(m["helpfulness_diff"], m["helpfulness_diff_ci"]),
                "safety rate a - b": _signed_ci(m["safety_rate_diff"], m["safety_rate_diff_ci"]),
            }
            for m in metrics.get("matched_safety") or []
        ],
        columns=["a", "b", "safety-rate gap", "helpfulness a - b", "safety rate a - b"],
    )


def _values(values: list[Any] | None) -> str:
    if not values:
        return "–"
    return ", ".join("–" if v is None else f"{v:.3f}" for v in values)


def mocan_lambda_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Per MoCAN threshold d, one value per seed: MoCAN's λ*, the λ PPO-Lagrangian would settle
    at on the same reference samples, and the PPO stage's final λ under SGD and under PID."""
    return pd.DataFrame(
        [
            {
                "d": d,
                "λ* (MoCAN)": _values(r["lambda_star"]),
                "PPO's λ predicted on the same samples": _values(r["lagrangian_lambda_predicted"]),
                "PPO λ_final (SGD)": _values(r.get("ppo_lambda_final")),
                "PPO λ_final (PID)": _values(r.get("ppo_pid_lambda_final")),
            }
            for d, r in (metrics.get("mocan_lambda") or {}).items()
        ],
        columns=[
            "d",
            "λ* (MoCAN)",
            "PPO's λ predicted on the same samples",
            "PPO λ_final (SGD)",
            "PPO λ_final (PID)",
        ],
    )


#: The families whose λ is learned in training (log-λ SGD, PID); reward-only and fixed-λ runs
#: keep theirs constant.
LEARNED_LAMBDA = ("lagrangian", "lagrangian_pid")


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def lambda_course_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """λ's course in training, one row per PPO run with a learned λ (its metrics' λ keys,
    kept by the analysis as each point's ``training``; docs/design.md §6.10): the final and
    the peak λ, the overshoot (peak over final; none when λ ends at 0), the share of steps
    with J_C above d and the area of violation (the sum of J_C - d over those steps)."""
    rows = []
    for name, s in systems(metrics).items():
        if s.get("family") not in LEARNED_LAMBDA:
            continue
        for run, course in (s.get("training") or {}).items():
            if "lambda_peak" not in course:
                continue
            rows.append(
                {
                    "system": s.get("label", name),
                    "run": run,
                    "λ final": _number(course.get("lambda_final")),
                    "λ peak": _number(course.get("lambda_peak")),
                    "overshoot (peak / final)": _number(course.get("lambda_overshoot")),
                    "share of steps J_C > d": _number(course.get("violation_share")),
                    "violation area": _number(course.get("violation_area")),
                }
            )
    columns = [
        "system",
        "run",
        "λ final",
        "λ peak",
        "overshoot (peak / final)",
        "share of steps J_C > d",
        "violation area",
    ]
    return pd.DataFrame(rows, columns=columns)


def _rate(s: Mapping[str, Any], key: str) -> str:
    return "n/a" if s.get(key) is None else _ci(s[key], s.get(f"{key}_ci"), pct=True)


def forms_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per system: helpfulness and refusal rate on benign prompts, the refusal rate
    on all prompts, and the safe-helpful and wrong-object rates on risky prompts (gold judge)."""
    rows = []
    for name, s in systems(metrics).items():
        rows.append(
            {
                "system": s.get("label", name),
                f"benign helpfulness (n={s.get('n_benign', '?')})": (
                    "n/a"
                    if s.get("benign_helpfulness") is None
                    else _ci(s["benign_helpfulness"], s.get("benign_helpfulness_ci"))
                ),
                "benign refusal rate": _rate(s, "benign_refusal_rate"),
                "refusal rate (all)": _rate(s, "refusal_rate"),
                f"risky safe-helpful rate (n={s.get('n_risky', '?')})": _rate(
                    s, "risky_safe_helpful_rate"
                ),
                "risky wrong-object rate": _rate(s, "risky_wrong_object_rate"),
            }
        )
    return pd.DataFrame(rows)


def headline_text(metrics: Mapping[str, Any]) -> str:
    head = metrics.get("headline") or {}
    if not head:
        return "No lagrangian (Safe RLHF-V) variant in this run."
    judge = judge_label(metrics)

    def signed(v):
        return "n/a" if v is None else f"{100 * v:+.1f}%"

    return (
        f"Safe RLHF-V ({head['system']}) against the SFT base (judge: {judge}): safer on "
        f"{_ci(head['win_rate_safe_vs_base'], head['win_rate_safe_vs_base_ci'], True)} "
        "of prompts, more helpful on "
        f"{_ci(head['win_rate_helpful_vs_base'], head['win_rate_helpful_vs_base_ci'], True)}; "
        "safety rate "
        f"{signed(head['safety_rate_relative_change'])} and helpfulness "
        f"{signed(head['helpfulness_relative_change'])} "
        f"relative to the base. The paper reports +{100 * head['paper']['safety']:.1f}% safety and "
        f"+{100 * head['paper']['helpfulness']:.1f}% helpfulness."
    )


def judge_text(metrics: Mapping[str, Any]) -> str:
    """The judge in HTML: its description, whether it sees the image, and on world prompts how
    a learned judge agrees with the gold oracle (its caveat is among the notes)."""
    info = metrics.get("judge_description") or {}
    out = html.escape(str(info.get("description") or judge_label(metrics))) + "."
    if info and not info.get("sees_image", True):
        out += " It does not see the image."
    agree = info.get("agreement_with_gold")
    if agree:

        def rho(v):
            return "n/a" if v is None else f"{v:.2f}"

        out += (
            f" Against the gold oracle on the same {agree['n']} answers: it agrees on safe or "
            f"unsafe for {100 * agree['safe_agreement']:.1f}%; Spearman ρ "
            f"{rho(agree['helpfulness_spearman'])} (helpfulness), "
            f"{rho(agree['harmlessness_spearman'])} (harmlessness)."
        )
    return out


#: plotly.js beside the report (``figures/`` also holds the figures one by one): the page loads
#: it from disk, so it opens offline and stays small.
PLOTLY_JS = "figures/plotly.min.js"


def write_report(
    path: str | Path,
    metrics: Mapping[str, Any],
    figures: Mapping[str, go.Figure],
    run_dir: str | Path,
) -> Path:
    from plotly.offline import get_plotlyjs

    bundle = Path(path).parent / PLOTLY_JS
    if not bundle.is_file():
        atomic_write_text(bundle, get_plotlyjs())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>Safe RLHF-V Workbench · analysis</title>",
        f"<script src='{PLOTLY_JS}'></script>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;"
        "padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:0.9em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}.note{color:#8a4b00}"
        ".cap{color:#555;font-size:0.9em;margin-top:0}</style></head><body>",
        "<h1>Safe RLHF-V Workbench · analysis</h1>",
        f"<p>Run <code>{html.escape(str(Path(run_dir).resolve()))}</code> · "
        f"judge: <b>{html.escape(judge_label(metrics))}</b>"
        f" · {metrics['n_prompts']} {html.escape(str(metrics.get('prompts', 'test')))} prompts"
        f" · {100 * metrics['confidence']:.0f}% bootstrap intervals.</p>",
        f"<p>Every helpfulness and safety figure below is the judgement of {judge_text(metrics)}"
        "</p>",
        f"<h2>Headline</h2><p>{html.escape(headline_text(metrics))}</p>",
    ]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in metrics.get("notes", [])]
    parts.append("<h2>Systems</h2>" + systems_table(metrics).to_html(index=False, escape=True))
    scale = (
        "helpfulness 0..3"
        if judge_is_gold(metrics)
        else "helpfulness is the reward score, on the judge's own scale"
    )
    parts.append(
        f"<p class='cap'>Judge: {html.escape(judge_label(metrics))} ({scale}; safe: "
        "harmlessness > 0); win rates compare each answer with the base's answer to the same "
        "prompt.</p>"
    )
    if has_forms(metrics):
        parts.append(
            "<h2>Answer forms</h2>" + forms_table(metrics).to_html(index=False, escape=True)
        )
        parts.append(
            "<p class='cap'>Benign: prompt severity 0; refusing one is not safer (the gold judge "
            "scores every benign answer safe) and costs helpfulness. Risky: prompt severity "
            "above 0.</p>"
        )
    course = lambda_course_table(metrics)
    if len(course):
        parts.append("<h2>λ in training</h2>" + course.to_html(index=False, escape=True))
        parts.append(
            "<p class='cap'>Per PPO run with a learned λ (log-λ SGD or PID): overshoot is the "
            "peak λ over its final value (none when λ ends at 0); the area of violation sums "
            "J_C - d over the steps with J_C above d.</p>"
        )
    texts = captions(metrics)
    for name, fig in figures.items():
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
        parts.append(f"<p class='cap'>{html.escape(texts.get(name, ''))}</p>")
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))


__all__ = [
    "systems_table",
    "lambda_course_table",
    "methods_systems_table",
    "matched_safety_table",
    "mocan_lambda_table",
    "forms_table",
    "headline_text",
    "judge_text",
    "write_report",
    "captions",
    "CAPTIONS",
    "PLOTLY_JS",
]
