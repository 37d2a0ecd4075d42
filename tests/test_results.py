"""``python -m workbench results``: the results table of a finished run, on a small
hand-made analysis whose relative changes are worked out by hand, and the errors of a run
without a finished analysis."""

import json

import pytest

from workbench.cli import main as cli_main
from workbench.eval.results import (
    PAPER_FIGURES,
    check_metrics,
    comparisons,
    load_analysis,
    relative_change,
    render_results,
    render_table,
    results_table,
)


def summary(helpfulness, safety_rate, win_helpful=0.5, win_safe=0.5, **meta):
    """One system's summary as the analysis writes it (intervals ±0.1 around each value)."""
    out = {"seeds": meta.pop("seeds", 1)}
    for key, value in (
        ("helpfulness", helpfulness),
        ("safety_rate", safety_rate),
        ("win_rate_helpful_vs_base", win_helpful),
        ("win_rate_safe_vs_base", win_safe),
    ):
        out[key], out[f"{key}_ci"] = value, [value - 0.1, value + 0.1]
    return {**out, **meta}


def analysis(judge="gold", lagrangian=True):
    """Base: helpfulness 1.0, safety rate 50%. By hand, (system - base) / base:
    base+guard 0.8 / 75% -> -20.0% / +50.0%; reward_only 1.5 / 40% -> +50.0% / -20.0%;
    lagrangian d=-2 1.25 / 60% -> +25.0% / +20.0%; lagrangian d=-1 1.4 / 55% -> +40.0% / +10.0%;
    lagrangian PID d=-2 1.1 / 70% -> +10.0% / +40.0%."""
    variants = {
        "base+guard": summary(0.8, 0.75, 0.3, 0.7, family="base+guard", setting=None),
        "reward_only": summary(1.5, 0.4, 0.8, 0.4, family="reward_only", setting=None, seeds=3),
        "lagrangian_d-1": summary(1.4, 0.55, 0.7, 0.55, family="lagrangian", setting=-1.0),
        "lagrangian_pid": summary(1.1, 0.7, 0.55, 0.65, family="lagrangian_pid", setting=-2.0),
    }
    variants["lagrangian_d-1"]["label"] = "lagrangian d=-1"
    variants["lagrangian_pid"]["label"] = "lagrangian PID d=-2"
    if lagrangian:
        variants["lagrangian"] = summary(
            1.25, 0.6, 0.6, 0.6, family="lagrangian", setting=-2.0, label="lagrangian d=-2", seeds=3
        )
    return {
        "judge": judge,
        "prompts": "test",
        "n_prompts": 40,
        "confidence": 0.95,
        "base": summary(1.0, 0.5),
        "variants": variants,
        "notes": [],
    }


def finished_run(tmp_path, metrics):
    (tmp_path / "analyze").mkdir(parents=True)
    (tmp_path / "analyze" / "metrics.json").write_text(json.dumps(metrics))
    return tmp_path


def test_relative_change_by_hand():
    assert relative_change(0.6, 0.5) == pytest.approx(0.2)
    assert relative_change(0.4, 0.5) == pytest.approx(-0.2)
    assert relative_change(0.3, 0.0) is None


def test_table_has_one_row_per_system_with_intervals_and_relative_changes():
    table = results_table(analysis())
    assert list(table["system"]) == [
        "base",
        "base+guard",
        "reward_only",
        "lagrangian d=-2",
        "lagrangian d=-1",
        "lagrangian PID d=-2",
    ]
    rows = table.set_index("system")
    assert list(rows["safety rate vs base"]) == [
        "-",
        "+50.0%",
        "-20.0%",
        "+20.0%",
        "+10.0%",
        "+40.0%",
    ]
    assert list(rows["helpfulness vs base"]) == [
        "-",
        "-20.0%",
        "+50.0%",
        "+25.0%",
        "+40.0%",
        "+10.0%",
    ]
    assert rows.loc["lagrangian d=-2", "safety rate"] == "60.0% [50.0%, 70.0%]"
    assert rows.loc["lagrangian d=-2", "helpfulness"] == "1.250 [1.150, 1.350]"
    assert rows.loc["reward_only", "win rate helpful vs base"] == "80.0% [70.0%, 90.0%]"
    assert rows.loc["reward_only", "seeds"] == 3


def test_comparisons_beside_the_paper_say_what_is_compared():
    safety, helpfulness, guard = comparisons(analysis(), guard_rounds=5)
    assert safety["this run"] == pytest.approx(0.2)
    assert safety["paper"] == PAPER_FIGURES["safety"] == pytest.approx(0.342)
    assert (
        "safety rate of lagrangian d=-2 vs the SFT base: (60.0% - 50.0%) / 50.0%"
        in (safety["compared"])
    )
    assert helpfulness["this run"] == pytest.approx(0.25)
    assert helpfulness["paper"] == pytest.approx(0.343)
    assert "(1.250 - 1.000) / 1.000" in helpfulness["compared"]
    assert guard["this run"] == pytest.approx(0.5)
    assert guard["paper"] == pytest.approx(0.409)
    assert "5 rounds" in guard["compared"] and "(75.0% - 50.0%) / 50.0%" in guard["compared"]


def test_without_a_lagrangian_default_the_first_lagrangian_point_is_the_headline():
    safety, _, _ = comparisons(analysis(lagrangian=False))
    assert "lagrangian d=-1" in safety["compared"]
    assert safety["this run"] == pytest.approx(0.1)


def test_a_learned_judge_gets_no_relative_helpfulness():
    metrics = analysis(judge="models")
    assert set(results_table(metrics)["helpfulness vs base"]) == {"-", "n/a"}
    _, helpfulness, _ = comparisons(metrics)
    assert helpfulness["this run"] is None
    safety, _, _ = comparisons(metrics)
    assert safety["this run"] == pytest.approx(0.2)


def test_render_markdown_and_text(tmp_path):
    run = finished_run(tmp_path / "run", analysis())
    (run / "guard").mkdir()
    (run / "guard" / "metrics.json").write_text(
        json.dumps(
            {"rounds": 5, "rounds_safety_rate": [0.5, 0.6, 0.7], "relative_safety_gain": 0.4}
        )
    )
    text = render_results(run, "markdown")
    assert "| lagrangian d=-2 | 3 | 1.250 [1.150, 1.350] | 60.0% [50.0%, 70.0%] |" in text
    assert "| Safe RLHF-V safety | +20.0% | +34.2% |" in text
    assert "| Safe RLHF-V helpfulness | +25.0% | +34.3% |" in text
    assert "| Beaver-Guard-V safety | +50.0% | +40.9% |" in text
    assert "40 test prompts" in text and "95% two-level bootstrap" in text
    assert "50.0% at round 0 -> 70.0% after round 2, +40.0%" in text
    plain = render_results(run, "text")
    assert "|" not in plain.splitlines()[2] and "lagrangian PID d=-2" in plain
    with pytest.raises(ValueError, match="format"):
        render_table(results_table(analysis()), "html")


def test_a_run_without_a_finished_analysis_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "ppo").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match="no finished analysis.*python -m workbench analyze"
    ):
        load_analysis(run)
    (run / "analyze.partial").mkdir()
    with pytest.raises(FileNotFoundError, match="still running or was stopped"):
        load_analysis(run)
    assert cli_main(["results", "--run-dir", str(run)]) == 2
    assert "no finished analysis" in capsys.readouterr().err


def test_an_analysis_without_a_field_names_it(tmp_path):
    metrics = analysis()
    del metrics["variants"]["reward_only"]["safety_rate_ci"]
    with pytest.raises(ValueError, match="'reward_only' has no field 'safety_rate_ci'"):
        check_metrics(metrics)
    with pytest.raises(ValueError, match="no field 'variants'"):
        check_metrics({"base": {}})


def test_cli_prints_the_table(tmp_path, capsys):
    run = finished_run(tmp_path / "run", analysis())
    assert cli_main(["results", "--run-dir", str(run), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| ") >= 6 + 3  # six systems and three comparisons
    assert "+34.3%" in out


def test_lambda_course_of_each_learned_lambda_run(tmp_path):
    metrics = analysis()
    course = {
        "lambda_final": 0.5,
        "lambda_peak": 2.0,
        "lambda_overshoot": 4.0,
        "violation_share": 0.25,
        "violation_area": 3.5,
    }
    metrics["variants"]["lagrangian_pid"]["training"] = {
        "lagrangian_pid": course,
        "lagrangian_pid_seed1": {**course, "lambda_final": 0.0, "lambda_overshoot": None},
    }
    metrics["variants"]["reward_only"]["training"] = {"reward_only": course}  # λ not learned
    text = render_results(finished_run(tmp_path / "run", metrics), "markdown")
    assert (
        "| lagrangian PID d=-2 | lagrangian_pid | 0.500 | 2.000 | 4.000 | 0.250 | 3.500 |" in text
    )
    assert "| lagrangian PID d=-2 | lagrangian_pid_seed1 | 0.000 | 2.000 | – |" in text
    assert "| reward_only | reward_only |" not in text and "λ in training" in text
    plain = render_results(finished_run(tmp_path / "plain", analysis()), "markdown")
    assert "λ in training" not in plain  # no run with a λ course: no table
