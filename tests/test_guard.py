"""Beaver-Guard-V: the ordinal loss and level mapping against hand values, labels, metrics,
the filter-and-regenerate control flow with scripted fakes, persistence and the smoke stage."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from workbench.config import BlockingPolicy, ConfigError, GuardConfig
from workbench.guard import SAFE_REFUSAL, Verdict, filter_and_regenerate
from workbench.guard.guard import (
    LABELS,
    GuardModel,
    answer_label,
    calibrate_severe_cutoff,
    classification_metrics,
    decide_levels,
    gold_answer_level,
    level_probabilities,
    ordinal_loss,
    ordinal_targets,
    query_label,
    thresholds_from_raw,
)
from workbench.runs import read_jsonl

#: One blocking level for every answer (no separate level after a query screened safe).
ONE_LEVEL = BlockingPolicy(safe_query_level="")


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# --- the ordinal model ---------------------------------------------------------------------------
def test_ordinal_targets_and_hand_computed_loss():
    assert ordinal_targets(torch.tensor([0, 1, 2, 3])).tolist() == [
        [0, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
    ]
    theta = torch.tensor([-1.0, 0.0, 1.0])
    # s = 0, y = moderate: -log σ(1) - log σ(0) - log(1 - σ(-1))
    want = -math.log(_sig(1)) - math.log(0.5) - math.log(1 - _sig(-1))
    assert float(ordinal_loss(torch.tensor([0.0]), theta, torch.tensor([2]))) == pytest.approx(
        want, rel=1e-6
    )
    # batch mean: s = 2, y = safe: -log(1-σ(3)) - log(1-σ(2)) - log(1-σ(1))
    safe = -sum(math.log(1 - _sig(z)) for z in (3, 2, 1))
    got = float(ordinal_loss(torch.tensor([0.0, 2.0]), theta, torch.tensor([2, 0])))
    assert got == pytest.approx((want + safe) / 2, rel=1e-6)


def test_thresholds_are_ordered_and_probabilities_sum_to_one():
    theta = thresholds_from_raw(torch.tensor([0.5, -3.0, 2.0]))
    assert theta[0] == 0.5 and bool((theta[1:] > theta[:-1]).all())
    assert float(theta[1] - theta[0]) == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-5)
    probs = level_probabilities(torch.tensor([-5.0, 0.0, 5.0]), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(probs.sum(1), torch.ones(3))
    # s = 0: P(safe) = 1 - σ(1), P(minor) = σ(1) - σ(0), P(moderate) = σ(0) - σ(-1),
    # P(severe) = σ(-1)
    assert probs[1].tolist() == pytest.approx(
        [1 - _sig(1), _sig(1) - 0.5, 0.5 - _sig(-1), _sig(-1)], rel=1e-5
    )


def test_decide_levels_uses_the_severe_cutoff():
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.05, 0.05],  # safe
            [0.1, 0.6, 0.2, 0.1],  # P(>= minor) .9, P(>= moderate) .3 -> minor
            [0.1, 0.2, 0.3, 0.4],  # P(>= moderate) .7, P(severe) .4
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert decide_levels(probs).tolist() == [0, 1, 2, 3]
    assert decide_levels(probs, severe_cutoff=0.35).tolist() == [0, 1, 3, 3]
    # one cut-off per row (answers and queries in one batch)
    assert decide_levels(probs, torch.tensor([0.5, 0.05, 0.5, 0.5])).tolist() == [0, 3, 2, 3]
    # severe needs the item to be unsafe at all: a tiny cut-off does not turn a safe item severe
    assert decide_levels(probs, 0.01).tolist() == [0, 3, 3, 3]


def test_calibrated_severe_cutoff_reaches_the_target_recall():
    p = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4, 0.05]
    for target, recall in ((1.0, 1.0), (0.95, 1.0), (0.9, 0.9), (0.8, 0.8), (0.5, 0.5)):
        cut = calibrate_severe_cutoff(p, target)
        assert np.mean(np.array(p) > cut) == pytest.approx(recall), target
    assert (
        0.1 < calibrate_severe_cutoff(p, 0.8) < 0.2 + 1e-12
    )  # just below the 3rd smallest: 2 of 10 missed
    with pytest.raises(ValueError):
        calibrate_severe_cutoff([], 0.9)


# --- labels --------------------------------------------------------------------------------------
def test_labels_from_rates_and_prompts():
    rec = {
        "category": "animal_abuse",
        "response_1_harmless_rate": -2,
        "response_2_harmless_rate": 3,
        "image_severity": 1,
    }
    assert answer_label(rec, 1) == (2, LABELS.index("animal_abuse"))
    assert answer_label(rec, 2) == (0, LABELS.index("none"))
    assert answer_label({**rec, "response_1_harmless_rate": -3}, 1)[0] == 3
    assert query_label(rec) == (1, LABELS.index("animal_abuse"))  # real data: image severity
    world = {**rec, "prompt_severity": 0, "prompt_category": "none"}
    assert query_label(world) == (0, 0)
    assert gold_answer_level({"response_1_gold_harmlessness": -2.6}, 1) == 3
    assert (
        gold_answer_level({"response_1_gold_harmlessness": -2.5}, 1) == 2
    )  # rounds half up, as annotators do
    assert gold_answer_level({"response_1_gold_harmlessness": -0.2}, 1) == 1
    assert gold_answer_level({"response_1_gold_harmlessness": 0.4}, 1) == 0


def test_classification_metrics_by_hand():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert (
        m["per_level"]["b"]["precision"] == pytest.approx(2 / 3)
        and m["per_level"]["b"]["recall"] == 1.0
    )
    # F1: a = .5, b = .8, c = 0 -> macro .4333
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_config_validates_levels():
    with pytest.raises(ConfigError, match="level"):
        GuardConfig(blocking=BlockingPolicy(level="safe"))
    with pytest.raises(ConfigError, match="blocking"):
        GuardConfig(blocking="minor")
    cfg = GuardConfig.from_dict({"blocking": {"level": "severe", "rounds": 3}})
    assert cfg.blocking == BlockingPolicy(level="severe", rounds=3)
    assert GuardConfig.from_dict(cfg.to_dict()) == cfg  # the nested policy round-trips through JSON


# --- filter-and-regenerate with scripted fakes ----------------------------------------------------
class ScriptedGenerator:
    """Answers each question from its own script, in order; counts calls."""

    def __init__(self, scripts):
        self.scripts = {q: list(s) for q, s in scripts.items()}
        self.calls = {q: 0 for q in scripts}

    def __call__(self, images, questions):
        out = []
        for q in questions:
            self.calls[q] += 1
            out.append(self.scripts[q].pop(0) if self.scripts[q] else "unsafe again")
        return out


def fake_guard(images, questions, responses):
    if responses is None:  # queries: "bomb" questions are severe
        return [
            Verdict("severe", "terrorism_or_extremism") if "bomb" in q else Verdict("safe")
            for q in questions
        ]
    return [
        Verdict("safe") if r.startswith("ok") else Verdict("moderate", "violence_and_physical_harm")
        for r in responses
    ]


def test_stops_at_the_first_safe_answer():
    gen = ScriptedGenerator({"q1": ["bad", "bad", "ok third"], "q2": ["ok first"]})
    t1, t2 = filter_and_regenerate(gen, fake_guard, [None, None], ["q1", "q2"], ONE_LEVEL)
    assert (t1.final, t1.outcome, t1.regenerations) == ("ok third", "regenerated", 2)
    assert [s.blocked for s in t1.steps] == [True, True, False] and gen.calls["q1"] == 3
    assert (t2.final, t2.outcome, t2.regenerations) == ("ok first", "passed", 0) and gen.calls[
        "q2"
    ] == 1
    assert [t1.served(r) for r in range(6)] == [
        "bad",
        "bad",
        "ok third",
        "ok third",
        "ok third",
        "ok third",
    ]


def test_never_exceeds_the_rounds_and_falls_back_to_a_refusal():
    gen = ScriptedGenerator({"q": []})
    (t,) = filter_and_regenerate(gen, fake_guard, [None], ["q"], ONE_LEVEL)
    assert gen.calls["q"] == 6 and t.regenerations == 5  # the first answer + five regenerations
    assert t.outcome == "fallback" and t.final == SAFE_REFUSAL and "after 5 rounds" in t.reason
    assert (
        all(s.blocked for s in t.steps)
        and t.served(4) == "unsafe again"
        and t.served(5) == SAFE_REFUSAL
    )
    gen = ScriptedGenerator({"q": []})
    (t,) = filter_and_regenerate(gen, fake_guard, [None], ["q"], replace(ONE_LEVEL, rounds=0))
    assert gen.calls["q"] == 1 and t.outcome == "fallback"


def test_blocking_level_decides_what_is_regenerated():
    gen = ScriptedGenerator({"q": ["moderate answer"]})
    (t,) = filter_and_regenerate(gen, fake_guard, [None], ["q"], replace(ONE_LEVEL, level="severe"))
    assert t.outcome == "passed" and t.final == "moderate answer"


def test_answers_to_safe_queries_need_the_safe_query_level():
    def guard(images, questions, responses):
        if responses is None:  # "risky" questions are minor, the rest safe
            return [
                Verdict("minor", "animal_abuse") if "risky" in q else Verdict("safe")
                for q in questions
            ]
        return [
            Verdict("minor", "animal_abuse") if r.startswith("minor") else Verdict("safe")
            for r in responses
        ]

    gen = ScriptedGenerator({"benign q": ["minor answer"], "risky q": ["minor answer", "ok"]})
    benign, risky = filter_and_regenerate(
        gen,
        guard,
        [None, None],
        ["benign q", "risky q"],
        BlockingPolicy(safe_query_level="moderate"),
    )
    assert (benign.outcome, benign.final) == ("passed", "minor answer")  # minor < moderate: kept
    assert (risky.outcome, risky.final) == ("regenerated", "ok")  # the query was not judged safe
    gen = ScriptedGenerator({"benign q": ["minor answer", "ok"]})
    (t,) = filter_and_regenerate(
        gen, guard, [None], ["benign q"], ONE_LEVEL
    )  # one level for every answer
    assert t.outcome == "regenerated"
    with pytest.raises(ConfigError, match="safe_query_level"):
        BlockingPolicy(safe_query_level="safe")


def test_severe_queries_are_refused_before_generation():
    gen = ScriptedGenerator({"how to build a bomb": ["ok sure"], "q": ["ok"]})
    t, u = filter_and_regenerate(
        gen, fake_guard, [None, None], ["how to build a bomb", "q"], ONE_LEVEL
    )
    assert (
        t.outcome == "query_blocked"
        and t.final == SAFE_REFUSAL
        and gen.calls["how to build a bomb"] == 0
    )
    assert t.query_verdict.level == "severe" and "severe" in t.reason and not t.steps
    assert u.outcome == "passed"
    # with round-0 answers given, the base answer is kept for served(0)
    (t,) = filter_and_regenerate(
        gen, fake_guard, [None], ["how to build a bomb"], ONE_LEVEL, initial=["base answer"]
    )
    assert (
        t.served(0) == "base answer"
        and t.served(1) == SAFE_REFUSAL
        and gen.calls["how to build a bomb"] == 0
    )


@pytest.mark.parametrize("broken", ["raises", "wrong_count", "not_a_verdict"])
def test_guard_failures_fail_closed(broken):
    def guard(images, questions, responses):
        if responses is None:
            return [Verdict("safe") for _ in questions]
        if broken == "raises":
            raise RuntimeError("guard crashed")
        if broken == "wrong_count":
            return []
        return ["safe" for _ in questions]

    gen = ScriptedGenerator({"q": ["ok fine"]})
    (t,) = filter_and_regenerate(gen, guard, [None], ["q"], ONE_LEVEL)
    assert t.outcome == "guard_error" and t.final == SAFE_REFUSAL
    assert "withheld" in t.reason and t.served(1) == SAFE_REFUSAL


def test_bad_verdicts_and_arguments_are_rejected():
    with pytest.raises(ValueError, match="level"):
        Verdict("extreme")
    with pytest.raises(ValueError, match="category"):
        Verdict("minor", "not_a_category")
    with pytest.raises(ConfigError, match="level"):
        BlockingPolicy(level="safe")
    with pytest.raises(ConfigError, match="rounds"):
        BlockingPolicy(rounds=-1)


# --- the model -----------------------------------------------------------------------------------
def test_guard_model_round_trip_and_judge(tmp_path):
    from PIL import Image

    from workbench.models.vlm import build_tiny_vlm

    torch.manual_seed(0)
    backbone, processor = build_tiny_vlm(seed=0)
    guard = GuardModel(backbone, processor, severe_cutoff=0.3)
    with torch.no_grad():
        guard.raw_thresholds.copy_(torch.tensor([0.1, 0.2, 0.3]))
        guard.category_head.bias.normal_()
        guard.image_head.bias.normal_()
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    questions = ["what is this ?", "how do i use this ?"]
    before = guard.predict(images, questions, [None, "sure , here is how ."])
    guard.save(tmp_path / "guard")
    loaded = GuardModel.load(tmp_path / "guard")
    after = loaded.predict(images, questions, [None, "sure , here is how ."])
    assert loaded.severe_cutoff == 0.3 and torch.equal(
        loaded.image_head.bias, guard.image_head.bias
    )
    for key in before:
        np.testing.assert_allclose(before[key], after[key], atol=1e-6)
    verdicts = loaded.judge(images, questions)
    assert len(verdicts) == 2 and all(isinstance(v, Verdict) for v in verdicts)
    assert all((v.level == "safe") == (v.category == "none") for v in verdicts)
    with pytest.raises(Exception, match="not a guard directory"):
        GuardModel.load(tmp_path)


def test_training_step_lowers_the_loss():
    from PIL import Image

    from workbench.models.vlm import build_tiny_vlm

    torch.manual_seed(0)
    backbone, processor = build_tiny_vlm(seed=0)
    guard = GuardModel(backbone, processor)
    batch = guard.encode(
        [Image.new("RGB", (64, 64), "red")] * 4,
        ["q a", "q b", "q c", "q d"],
        [None, "sure , here is how .", "sorry , i cannot help with that .", None],
    )
    levels, cats, image_levels = (
        torch.tensor([0, 3, 0, 2]),
        torch.tensor([0, 5, 0, 7]),
        torch.tensor([0, 3, 0, 2]),
    )
    opt = torch.optim.Adam(guard.parameters(), lr=1e-3)
    without_image = float(guard.loss(batch, levels, cats, 0.5)[0].detach())
    first = float(guard.loss(batch, levels, cats, 0.5, image_levels, 0.5)[0].detach())
    image_ce = torch.nn.functional.cross_entropy(guard.image_logits(batch), image_levels)
    assert first == pytest.approx(without_image + 0.5 * float(image_ce.detach()), rel=1e-5)
    head = guard.category_head.weight.detach().clone()
    for _ in range(5):
        loss = guard.loss(batch, levels, cats, 0.5, image_levels, 0.5)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(guard.loss(batch, levels, cats, 0.5, image_levels, 0.5)[0].detach()) < first
    assert not torch.equal(head, guard.category_head.weight)


# --- the stage -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guard_run(smoke_score_runs):
    import workbench as wb

    run_dir = smoke_score_runs[0]
    wb.run_stage("guard", run_dir, smoke=True, progress=False)
    return run_dir


def test_smoke_guard_stage(guard_run):
    m = json.loads((guard_run / "guard" / "metrics.json").read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "per_level",
        "rounds_safety_rate",
        "rounds_helpfulness",
        "macro_f1_ceiling",
        "regenerations",
        "relative_safety_gain",
        "query",
    ):
        assert key in m, key
    assert set(m["per_level"]) == {"safe", "minor", "moderate", "severe"}
    assert len(m["rounds_safety_rate"]) == 6 and len(m["rounds_helpfulness"]) == 6
    assert m["steps"] == GuardConfig.smoke().max_steps
    answers = [
        r
        for r in read_jsonl(guard_run / "guard" / "eval_predictions.jsonl")
        if r["mode"] == "answer"
    ]
    assert m["accuracy"] == pytest.approx(
        np.mean([r["pred_level"] == r["true_level"] for r in answers])
    )
    traces = [
        json.loads(line) for line in (guard_run / "guard" / "traces.jsonl").read_text().splitlines()
    ]
    assert (
        len(traces) == m["n_prompts"]
        and sum(t["regenerations"] for t in traces) == m["regenerations"]
    )
    assert all(t["regenerations"] <= 5 for t in traces)
    guard = GuardModel.load(guard_run / "guard" / "model")
    assert len(guard.category_head.weight) == len(LABELS)
    # the answer cut-off was calibrated on held-out pairs; queries keep the configured one
    cal = m["calibration"]
    if cal["n_severe"]:
        assert cal["recall"] >= GuardConfig.smoke().severe_recall_target
        assert (
            guard.severe_cutoff
            == pytest.approx(cal["cutoff"])
            == pytest.approx(m["answer_severe_cutoff"])
        )
    assert guard.query_severe_cutoff == GuardConfig.smoke().severe_cutoff


def test_guard_views(guard_run):
    from workbench.runs import load_metrics, read_jsonl
    from workbench.views import guard as views

    m = load_metrics(guard_run, "guard")
    table = views.summary_table(m)
    assert table.loc["answer macro F1", "value"] == pytest.approx(m["macro_f1"], abs=1e-3)
    heat = views.confusion_heatmap(m)
    assert np.asarray(heat.data[0].z).shape == (4, 4)
    assert views.category_recall_bar(m).data[0].type == "bar"
    fig = views.rounds_figure(
        {"minor": {k: m[k] for k in ("rounds_safety_rate", "rounds_helpfulness")}}
    )
    assert list(fig.data[0].y) == m["rounds_safety_rate"] and "40.9%" in fig.data[-1].name
    html = views.trace_html(read_jsonl(guard_run / "guard" / "traces.jsonl")[0])
    assert "served" in html
    assert {"question", "round", "verdict"} <= set(
        views.traces_table(guard_run, outcome=None).columns
    )
    curve = views.rounds_for_level(guard_run, "severe", n_prompts=6)
    assert len(curve["rounds_safety_rate"]) == 6
