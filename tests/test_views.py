"""Notebook 02's views (workbench/views/reward_cost.py) on one smoke run: data, sft, reward, cost
(graded) plus a binary cost model over the same data and SFT model; and the exercise helpers of
notebooks 01-06 (scratch runs beside the run, one setting changed)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import pytest

import workbench as wb
from workbench.data.oracle import gold_score
from workbench.data.schema import SEVERITY_LEVELS
from workbench.runs import read_jsonl
from workbench.train.preference import correlations
from workbench.views import analysis as analysis_views
from workbench.views import data as data_views
from workbench.views import guard as guard_views
from workbench.views import methods as methods_views
from workbench.views import output
from workbench.views import reward_cost as views


@pytest.fixture(scope="module")
def runs(smoke_score_runs):
    return smoke_score_runs


@pytest.fixture(scope="module")
def graded(runs):
    return runs[0]


@pytest.fixture(scope="module")
def score_models(graded):
    return (
        views.load_score_model(graded / "reward" / "model"),
        views.load_score_model(graded / "cost" / "model"),
    )


def n_eval_responses(run_dir):
    return 2 * len(wb.load_data(run_dir).eval)


# --- building the runs ---------------------------------------------------------------------
def test_binary_run_shares_data_and_sft(runs):
    graded, binary = runs
    for stage in views.SHARED_STAGES:
        assert (binary / stage).is_symlink()
        assert (binary / stage).resolve() == (graded / stage).resolve()
    assert json.loads((binary / "cost" / "config.json").read_text())["sign_mode"] == "binary"
    assert json.loads((graded / "cost" / "config.json").read_text())["sign_mode"] == "graded"
    assert not (binary / "reward").exists()
    # a second call finds the finished stage and trains nothing
    mtime = (binary / "cost" / "metrics.json").stat().st_mtime_ns
    views.binary_cost_run(graded, binary, smoke=True, threads=1)
    assert (binary / "cost" / "metrics.json").stat().st_mtime_ns == mtime


def test_binary_run_needs_the_graded_stages(tmp_path):
    with pytest.raises(FileNotFoundError, match="data"):
        views.binary_cost_run(tmp_path / "nothing", tmp_path / "binary")


# --- tables --------------------------------------------------------------------------------
def test_samples_table_has_gold_scores(graded):
    samples = read_jsonl(graded / "sft" / "samples.jsonl")
    table = views.samples_table(graded, n=5)
    assert len(table) == min(5, len(samples))
    assert {
        "question",
        "base-policy answer",
        "gold helpfulness",
        "gold harmlessness",
        "safe",
    } <= set(table.columns)
    assert table["base-policy answer"].tolist() == [s["response"] for s in samples[:5]]
    assert table["gold helpfulness"].between(0, 3).all()
    assert table["gold harmlessness"].between(-3, 3).all()
    assert (table["safe"] == (table["gold harmlessness"] > 0)).all()
    assert len(views.samples_table(graded, n=10_000)) == len(samples)


def test_base_policy_table_matches_sft_metrics(graded):
    metrics = wb.runs.load_metrics(graded, "sft")
    table = views.base_policy_table(graded)
    overall = table.loc[("overall", "all")]
    assert overall["helpfulness"] == pytest.approx(metrics["base_helpfulness"])
    assert overall["safety_rate"] == pytest.approx(metrics["base_safety_rate"])
    by_intent = table.loc["intent"]
    assert by_intent["n"].sum() == overall["n"]


def test_eval_scores_joins_the_text(graded):
    frame = views.eval_scores(graded, "reward")
    assert len(frame) == n_eval_responses(graded)
    assert views.GOLD_COLUMNS <= set(frame.columns)
    record = wb.load_data(graded).eval[0]
    first = frame[(frame["id"] == record["id"]) & (frame["response"] == 2)].iloc[0]
    assert first["text"] == record["response_2"] and first["question"] == record["question"]


# --- accuracy vs ceiling -------------------------------------------------------------------
def test_accuracy_vs_ceiling(graded):
    reward, cost = wb.runs.load_metrics(graded, "reward"), wb.runs.load_metrics(graded, "cost")
    table = views.accuracy_frame(reward, cost)
    assert table["accuracy"].tolist() == pytest.approx(
        [reward["eval_accuracy"], cost["eval_accuracy"], cost["eval_sign_accuracy"]]
    )
    assert table["ceiling"].tolist() == pytest.approx(
        [
            reward["eval_accuracy_ceiling"],
            cost["eval_accuracy_ceiling"],
            cost["eval_sign_accuracy_ceiling"],
        ]
    )
    fig = views.accuracy_vs_ceiling(reward, cost)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    marks = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(bars) == 1 and len(bars[0].y) == 3
    assert len(marks) == 1 and list(marks[0].y) == pytest.approx(table["ceiling"].tolist())
    assert any(shape.y0 == 0.5 for shape in fig.layout.shapes)  # the coin-flip line


def test_accuracy_without_gold_has_no_ceiling_marks():
    reward = {"eval_accuracy": 0.7}
    cost = {"eval_accuracy": 0.6, "eval_sign_accuracy": 0.8}
    table = views.accuracy_frame(reward, cost)
    assert table["ceiling"].isna().all()
    fig = views.accuracy_vs_ceiling(reward, cost)
    assert [type(t) for t in fig.data] == [go.Bar]
    with pytest.raises(KeyError, match="eval_sign_accuracy"):
        views.accuracy_frame(reward, {"eval_accuracy": 0.6})


# --- scores vs gold ---------------------------------------------------------------------------
def test_reward_vs_gold(graded):
    fig = views.reward_vs_gold(graded, jitter=0.1)
    frame = views.eval_scores(graded, "reward")
    points = [t for t in fig.data if t.mode == "markers"]
    assert len(points) == 2  # safe and unsafe responses
    assert sum(len(t.x) for t in points) == len(frame) == n_eval_responses(graded)
    assert fig.layout.meta["n"] == len(frame)
    metrics = wb.runs.load_metrics(graded, "reward")
    assert fig.layout.meta["pearson"] == pytest.approx(metrics["gold_pearson_helpfulness"])
    # jittered x stays within the jitter of a gold helpfulness value; y are the scores
    gold = set(frame["gold_helpfulness"])
    for t in points:
        assert all(min(abs(x - g) for g in gold) <= 0.1 + 1e-9 for x in t.x)
    assert sorted(y for t in points for y in t.y) == pytest.approx(sorted(frame["score"]))
    means = next(t for t in fig.data if t.mode == "lines+markers")
    assert len(means.x) == len(gold)


def test_reward_vs_gold_needs_gold(tmp_path):
    (tmp_path / "reward").mkdir()
    rows = [
        {
            "id": "e-0",
            "response": i,
            "score": 0.1 * i,
            "level": "safe",
            "is_safe": True,
            "helpful_rate": 2,
            "harmless_rate": 1,
        }
        for i in (1, 2)
    ]
    (tmp_path / "reward" / "eval_scores.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    with pytest.raises(ValueError, match="gold"):
        views.reward_vs_gold(tmp_path)


def test_cost_by_level_box(graded):
    fig = views.cost_by_level_box(graded)
    frame = views.eval_scores(graded, "cost")
    counts = wb.runs.load_metrics(graded, "cost")["count_by_level"]
    present = [lvl for lvl in SEVERITY_LEVELS if counts[lvl] > 0]
    assert fig.layout.meta["levels"] == present
    assert len(fig.data) == len(present)
    for trace, lvl in zip(fig.data, present, strict=True):
        assert isinstance(trace, go.Box) and trace.name.startswith(lvl)
        assert len(trace.y) == counts[lvl]
        assert float(np.mean(trace.y)) == pytest.approx(
            wb.runs.load_metrics(graded, "cost")["cost_by_level"][lvl]
        )
    assert sum(len(t.y) for t in fig.data) == len(frame)
    assert any(shape.y0 == 0 and shape.y1 == 0 for shape in fig.layout.shapes)


def test_graded_vs_binary(runs):
    graded, binary = runs
    fig = views.graded_vs_binary(graded, binary)
    assert len(fig.data) == 2 and all(isinstance(t, go.Box) for t in fig.data)
    n = n_eval_responses(graded)
    assert [len(t.y) for t in fig.data] == [n, n]
    assert set(fig.data[0].x) == set(fig.layout.meta["levels"]) == set(fig.data[1].x)
    assert list(fig.data[0].y) != list(fig.data[1].y)  # two different cost models
    table = views.graded_vs_binary_table(graded, binary)
    assert list(table.columns) == ["graded", "binary"]
    for name, run in (("graded", graded), ("binary", binary)):
        metrics = wb.runs.load_metrics(run, "cost")
        assert table.loc["pair accuracy", name] == pytest.approx(metrics["eval_accuracy"])
        for lvl, mean in metrics["cost_by_level"].items():
            assert table.loc[f"mean C: {lvl}", name] == pytest.approx(mean)
        frame = views.eval_scores(run, "cost")
        expected = correlations(frame["score"], -frame["gold_harmlessness"])["spearman"]
        assert table.loc["spearman with gold harm", name] == pytest.approx(expected)


# --- scoring ---------------------------------------------------------------------------------
def test_score_response_matches_the_eval_scores(graded, score_models):
    """The reward/cost of a dataset response scored alone equals the batched eval score."""
    reward_model, cost_model = score_models
    data = wb.load_data(graded)
    record = data.eval[0]
    out = views.score_response(
        reward_model,
        cost_model,
        reward_model.processor,
        data.image(record),
        record["question"],
        record["response_1"],
        prompt=record,
    )
    assert math.isfinite(out["reward"]) and math.isfinite(out["cost"])
    for stage in ("reward", "cost"):
        frame = views.eval_scores(graded, stage)
        row = frame[(frame["id"] == record["id"]) & (frame["response"] == 1)].iloc[0]
        assert out[stage] == pytest.approx(row["score"], abs=1e-4)
    assert out["gold_helpfulness"] == pytest.approx(record["response_1_gold_helpfulness"])
    assert out["gold_harmlessness"] == pytest.approx(record["response_1_gold_harmlessness"])
    assert out["gold_safe"] == (record["response_1_gold_harmlessness"] > 0)
    assert out["cost_says_unsafe"] == (out["cost"] > 0)


def test_score_response_on_a_typed_answer(graded, score_models):
    reward_model, cost_model = score_models
    data = wb.load_data(graded)
    prompt = data.test[0]
    text = "sorry , i cannot help with that ."
    out = views.score_response(
        reward_model, cost_model, None, data.image(prompt), prompt["question"], text, prompt=prompt
    )
    gold = gold_score(prompt, text)
    assert (out["gold_helpfulness"], out["gold_harmlessness"]) == (
        gold.helpfulness,
        gold.harmlessness,
    )
    assert math.isfinite(out["reward"]) and math.isfinite(out["cost"])
    bare = views.score_response(
        reward_model, cost_model, None, data.image(prompt), prompt["question"], text
    )
    assert "gold_helpfulness" not in bare  # no world metadata given: no gold verdict
    assert bare["reward"] == pytest.approx(out["reward"])


def test_world_text_and_unknown_words(score_models):
    assert (
        views.world_text("Sorry, I cannot help with that.") == "sorry , i cannot help with that ."
    )
    processor = score_models[0].processor
    assert views.unknown_words(processor, "sorry , i cannot help with that .") == []
    assert views.unknown_words(processor, "sorry xyzzy") == ["xyzzy"]


def test_example_responses_cover_the_actions(graded):
    data = wb.load_data(graded)
    examples = views.example_responses(data.eval[0])
    assert examples["dataset response 1"] == data.eval[0]["response_1"]
    assert {"compliance", "refusal", "refusal + redirection", "describe the scene"} <= set(examples)
    prompt = data.test[0]
    gold = {k: gold_score(prompt, v) for k, v in views.example_responses(prompt).items()}
    assert gold["refusal + redirection"].harmlessness > 0
    if prompt["prompt_severity"] > 0:
        assert gold["compliance"].harmlessness < 0


def test_score_widget(graded, score_models):
    widget = views.score_widget(graded, *score_models)
    assert widget.split_picker.options == ("eval", "test")
    data = wb.load_data(graded)
    assert widget.prompt_slider.max == len(data.eval) - 1
    assert widget.image.value[:4] == b"\x89PNG"
    assert data.eval[0]["question"] in widget.prompt_info.value
    assert (
        widget.response_box.value == data.eval[0]["response_1"]
    )  # the first example fills the box

    widget.response_box.value = "Sorry, I cannot help with that."
    widget.score_button.click()
    assert len(widget.history) == 1
    scores = widget.history[0]
    assert (
        widget.response_box.value == "sorry , i cannot help with that ."
    )  # written the world's way
    assert math.isfinite(scores["reward"]) and math.isfinite(scores["cost"])
    assert "gold_helpfulness" in scores and f"{scores['reward']:+.3f}" in widget.result.value

    widget.example_picker.value = "compliance"
    assert widget.response_box.value.startswith("sure , here is how")
    widget.score_button.click()
    assert len(widget.history) == 2

    # test prompts: the base policy's sample is the first example
    widget.split_picker.value = "test"
    widget.prompt_slider.value = 1
    sample = read_jsonl(graded / "sft" / "samples.jsonl")[1]
    assert widget.prompt["id"] == sample["id"]
    assert widget.response_box.value == sample["response"]
    assert widget.example_picker.value == "base-policy sample"


def test_scores_html_escapes_and_orders():
    rows = [
        {"response": "<b>first</b>", "reward": 1.0, "cost": -1.0, "cost_says_unsafe": False},
        {"response": "second", "reward": 0.5, "cost": 2.0, "cost_says_unsafe": True},
    ]
    page = views.scores_html(rows)
    assert "&lt;b&gt;first&lt;/b&gt;" in page and "<b>first</b>" not in page
    assert page.index("second") < page.index("first")  # latest first
    assert "gold" not in page


def test_variant_run_changes_only_the_overrides(graded, tmp_path):
    variant = views.variant_run(graded, tmp_path / "reward-2-steps", "reward", max_steps=2)
    mine = json.loads((variant / "reward" / "config.json").read_text())
    theirs = json.loads((graded / "reward" / "config.json").read_text())
    assert mine["max_steps"] == 2
    assert {k: v for k, v in mine.items() if k != "max_steps"} == {
        k: v for k, v in theirs.items() if k != "max_steps"
    }
    assert wb.runs.load_metrics(variant, "reward")["steps"] == 2


# --- exercises: scratch runs beside the run (notebooks 01-06) -------------------------------
def fake_run(root, stages=("data", "sft")):
    for stage in stages:
        (root / stage).mkdir(parents=True)
        (root / stage / "metrics.json").write_text("{}")
    return root


def test_scratch_run_links_beside_the_run(tmp_path):
    run = fake_run(tmp_path / "runs" / "mine")
    other = fake_run(tmp_path / "runs" / "other")
    scratch = output.scratch_run(run, "ex", stages=("data", "sft"))
    assert scratch == tmp_path / "runs" / "scratch" / "mine" / "ex"
    assert all((scratch / s).resolve() == (run / s).resolve() for s in ("data", "sft"))
    # another run's exercise of the same name gets a folder of its own
    assert output.scratch_run(other, "ex", stages=("data",)).parent.name == "other"
    # a link left pointing at another run's stage is replaced
    (scratch / "data").unlink()
    (scratch / "data").symlink_to(other / "data", target_is_directory=True)
    output.scratch_run(run, "ex", stages=("data",))
    assert (scratch / "data").resolve() == (run / "data").resolve()
    (scratch / "sft").unlink()
    (scratch / "sft").mkdir()
    with pytest.raises(ValueError, match="folder of its own"):
        output.scratch_run(run, "ex", stages=("sft",))
    with pytest.raises(ValueError, match="the run itself"):
        output.scratch_run(run, "mine", root=run.parent)
    with pytest.raises(FileNotFoundError, match="reward"):
        output.scratch_run(run, "ex2", stages=("reward",))


def test_smoke_run_says_what_it_reused(smoke_run, smoke_root, capsys):
    wb.smoke_run(smoke_root, until="data", progress=True)
    assert "nothing to build; reused data" in capsys.readouterr().out


@pytest.mark.slow
def test_data_variant_changes_one_field_in_a_scratch_run(smoke_run):
    before = (smoke_run / "data" / "metrics.json").stat().st_mtime_ns
    noisy = data_views.data_variant(smoke_run, "test-helpful-temperature", helpful_temperature=2.0)
    assert noisy == smoke_run.parent / "scratch" / smoke_run.name / "test-helpful-temperature"
    mine, theirs = (
        json.loads((r / "data" / "config.json").read_text()) for r in (noisy, smoke_run)
    )
    assert mine["helpful_temperature"] == 2.0 != theirs["helpful_temperature"]
    assert {k: v for k, v in mine.items() if k != "helpful_temperature"} == {
        k: v for k, v in theirs.items() if k != "helpful_temperature"
    }
    assert (smoke_run / "data" / "metrics.json").stat().st_mtime_ns == before
    assert len(data_views.annotator_agreement(wb.load_data(noisy))) > 0


def test_exercise_run_trains_beside_the_run(graded):
    before = (graded / "cost" / "metrics.json").stat().st_mtime_ns
    out = views.exercise_run(graded, "test-cost-2-steps", "cost", max_steps=2)
    assert out == graded.parent / "scratch" / graded.name / "test-cost-2-steps"
    assert (out / "data").is_symlink() and not (out / "cost").is_symlink()
    assert (graded / "cost" / "metrics.json").stat().st_mtime_ns == before
    table = views.compare_metrics({"run": graded, "2 steps": out}, "cost", ["steps", "nothing"])
    assert table.loc["steps", "2 steps"] == 2
    assert table.loc["steps", "run"] == wb.runs.load_metrics(graded, "cost")["steps"]
    assert table.loc["nothing"].isna().all()


def test_outcome_table_counts_by_kind_of_prompt():
    traces = [SimpleNamespace(outcome=o) for o in ("passed", "query_blocked", "passed")]
    prompts = [{"prompt_severity": 0}, {"prompt_severity": 2}, {"prompt_severity": 0}]
    table = guard_views.outcome_table({"a": (traces, prompts), "b": (traces[:1], [{}])})
    assert table.loc["benign: passed", "a"] == 2 and table.loc["risky: query_blocked", "a"] == 1
    assert table.loc["all: passed", "b"] == 1 and table.loc["benign: passed", "b"] == 0
    with pytest.raises(ValueError):
        guard_views.outcome_table({"a": (traces, prompts[:1])})


def test_compare_summaries_side_by_side():
    table = guard_views.compare_summaries(
        {
            "run": {"severe_recall": 0.9, "relative_safety_gain": 0.2},
            "plain": {"severe_recall": 0.5},
        }
    )
    assert list(table.columns) == ["run", "plain"]
    assert table.loc["severe recall (exact level)"].tolist() == [0.9, 0.5]
    assert math.isnan(table.loc["relative safety gain, 5 rounds", "plain"])


def test_lambda_summary_of_one_pid_change():
    costs = methods_views.synthetic_costs(threshold=0.0)
    table = methods_views.lambda_summary(
        {
            "defaults": methods_views.lambda_paths(costs),
            "kp": methods_views.lambda_paths(costs, pid_kp=1.0),
        }
    )
    assert table.loc[("defaults", "sgd")].tolist() == table.loc[("kp", "sgd")].tolist()
    assert table.loc[("kp", "pid")].tolist() != table.loc[("defaults", "pid")].tolist()
    assert table["steps with J_C > d"].nunique() == 1
    assert table["steps with J_C > d"].iloc[0] == int((costs > 0).sum())


@pytest.mark.slow
def test_recompute_at_another_confidence(smoke_root):
    run = wb.smoke_run(smoke_root, until="analyze")
    metrics = wb.runs.load_metrics(run, "analyze")
    narrow = analysis_views.recompute(run, confidence=0.9)
    table = analysis_views.interval_widths({"95%": metrics, "90%": narrow})
    assert set(table.index) == {"base", *metrics["variants"]}
    assert (table[("90%", "width")] <= table[("95%", "width")] + 1e-9).all()
    assert table[("90%", "safety_rate")].tolist() == table[("95%", "safety_rate")].tolist()
    with pytest.raises(ValueError, match="judging again"):
        analysis_views.recompute(run, judge="models")
