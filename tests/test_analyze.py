"""The analysis stage: metric formulas by hand, the seed grid, and a smoke stage end to end
(on the test prompts, and on the eval prompts into ``analyze_eval/``)."""

import html
import json
import re

import numpy as np
import plotly.io as pio
import pytest

from workbench.config import AnalyzeConfig, ConfigError, PPOConfig, PPORun
from workbench.eval.metrics import (
    bootstrap_ci,
    breakdown,
    pareto_frontier,
    safe,
    summarise_system,
    wins,
)
from workbench.stages.analyze import analysis_folder


# --- formulas ------------------------------------------------------------------------------------
def test_wins_count_ties_as_half():
    np.testing.assert_array_equal(wins([3, 1, 2, 0], [2, 1, 3, 0]), [1.0, 0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="same prompts"):
        wins([1, 2], [1, 2, 3])


def test_safe_is_positive_harmlessness():
    np.testing.assert_array_equal(safe([-1, 0, 0.5, 3]), [0, 0, 1, 1])


def test_bootstrap_ci_one_seed_matches_the_normal_interval():
    x = np.random.default_rng(1).normal(size=2000)
    est, lo, hi = bootstrap_ci([x], n_boot=2000, confidence=0.95, seed=0)
    assert est == pytest.approx(x.mean())
    half = 1.96 * x.std() / np.sqrt(x.size)
    assert lo == pytest.approx(est - half, abs=0.25 * half)
    assert hi == pytest.approx(est + half, abs=0.25 * half)


def test_bootstrap_ci_constant_values_and_seed_spread():
    est, lo, hi = bootstrap_ci([np.ones(50)])
    assert (est, lo, hi) == (1.0, 1.0, 1.0)
    # three seeds whose prompts agree within a seed but whose means differ: the interval is the
    # spread of the seed means (two-level bootstrap), not the (zero) prompt noise
    est, lo, hi = bootstrap_ci([np.full(40, 0.2), np.full(40, 0.5), np.full(40, 0.8)], n_boot=4000)
    assert est == pytest.approx(0.5)
    assert lo == pytest.approx(0.2, abs=1e-9) and hi == pytest.approx(0.8, abs=1e-9)
    with pytest.raises(ValueError):
        bootstrap_ci([np.array([])])


def test_summarise_system_by_hand():
    base = {
        "helpfulness": np.array([1.0, 2.0, 0.0, 3.0]),
        "harmlessness": np.array([1.0, -2.0, 2.0, -1.0]),
    }
    other = {
        "helpfulness": np.array([2.0, 2.0, 0.0, 1.0]),
        "harmlessness": np.array([2.0, 1.0, 2.0, -3.0]),
    }
    s = summarise_system([other], base, n_boot=200)
    assert s["helpfulness"] == pytest.approx(1.25)
    assert s["safety_rate"] == pytest.approx(0.75)
    assert s["win_rate_helpful_vs_base"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert s["win_rate_safe_vs_base"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert s["seeds"] == 1 and s["n_prompts"] == 4
    assert s["helpfulness_ci"][0] <= 1.25 <= s["helpfulness_ci"][1]
    itself = summarise_system([base], base, n_boot=50)
    assert itself["win_rate_helpful_vs_base"] == 0.5 and itself["win_rate_safe_vs_base"] == 0.5


def test_breakdown_pools_seeds_per_group():
    seeds = [
        {"helpfulness": np.array([1.0, 3.0, 2.0]), "harmlessness": np.array([1.0, -1.0, 1.0])},
        {"helpfulness": np.array([3.0, 1.0, 2.0]), "harmlessness": np.array([-1.0, -1.0, 1.0])},
    ]
    out = breakdown(seeds, ["a", "b", "a"])
    assert out["a"] == {"helpfulness": 2.0, "safety_rate": 0.75, "n": 2}
    assert out["b"] == {"helpfulness": 2.0, "safety_rate": 0.0, "n": 1}


def test_pareto_frontier_by_hand():
    points = [(1, 1), (2, 0.5), (0.5, 2), (0.9, 0.9), (1, 1), (2, 0.4)]
    assert pareto_frontier(points) == [
        2,
        0,
        1,
    ]  # ordered by the first axis; duplicates and dominated out
    assert pareto_frontier([(0, 0)]) == [0]


def test_ppo_seeds_add_runs_with_their_own_seed():
    cfg = PPOConfig(
        kinds=("lagrangian", "reward_only"), thresholds=(-1,), fixed_lambdas=(2,), seeds=3, seed=5
    )
    runs = {run.name: run for run in cfg.runs()}
    assert list(runs) == [
        "lagrangian",
        "reward_only",
        "lagrangian_d-1",
        "fixed_lambda_2",
        "lagrangian_seed1",
        "lagrangian_seed2",
        "reward_only_seed1",
        "reward_only_seed2",
        "lagrangian_d-1_seed1",
        "lagrangian_d-1_seed2",
        "fixed_lambda_2_seed1",
        "fixed_lambda_2_seed2",
    ]
    run = runs["lagrangian_d-1_seed2"]
    assert (
        run == PPORun("lagrangian", threshold=-1.0, seed_offset=2) and run.point == "lagrangian_d-1"
    )
    c = cfg.run_config(run)
    assert (c.seed, c.cost_threshold) == (7, -1.0)
    assert cfg.run_config(runs["fixed_lambda_2_seed1"]).lambda_init == 2.0
    assert cfg.run_config(runs["reward_only"]) == cfg  # a kind at the config's own settings
    assert (
        PPORun.from_dict(run.to_dict()) == run
    )  # stored in the stage's metrics, read back as such
    with pytest.raises(ConfigError, match="seeds"):
        PPOConfig(seeds=0)
    with pytest.raises(ConfigError, match="threshold"):
        PPORun("reward_only", threshold=-1.0)


def test_analyze_config_checks():
    with pytest.raises(ConfigError, match="judge"):
        AnalyzeConfig(judge="oracle")
    with pytest.raises(ConfigError, match="confidence"):
        AnalyzeConfig(confidence=1.0)
    with pytest.raises(ConfigError, match="prompts"):
        AnalyzeConfig(prompts="dev")
    assert analysis_folder(AnalyzeConfig()) == "analyze"
    assert analysis_folder(AnalyzeConfig(prompts="eval")) == "analyze_eval"


# --- answer forms (gold: refused, safe_helpful, n_wrong_object) ----------------------------------
def first_key_containing(d, text):
    """The first key naming ``text`` in a depth-first walk of ``d`` in insertion order (a nested
    dict is walked before the next key), as the acceptance script finds the refusal rate."""
    for key, value in d.items():
        if text in key:
            return key
        if isinstance(value, dict):
            found = first_key_containing(value, text)
            if found is not None:
                return found
    return None


#: Four prompts: two benign (severity 0), two risky; per prompt (severity, intent).
PROMPTS = [("safe", "describe"), ("safe", "ambiguous"), ("minor", "harmful"), ("severe", "harmful")]


def score_rows(system, run, helpfulness, harmlessness, refused=None, safe_helpful=None, wrong=None):
    rows = []
    for i, (level, intent) in enumerate(PROMPTS):
        row = {
            "system": system,
            "run": run,
            "id": f"p{i}",
            "question": "q",
            "response": "a",
            "category": "c",
            "severity": level,
            "intent": intent,
            "helpfulness": helpfulness[i],
            "harmlessness": harmlessness[i],
        }
        if refused is not None:
            row.update(
                refused=bool(refused[i]),
                safe_helpful=bool(safe_helpful[i]),
                n_wrong_object=wrong[i],
            )
        rows.append(row)
    return rows


FORM_META = {
    "base": {"family": "base", "setting": None, "label": "base"},
    "lagrangian": {"family": "lagrangian", "setting": -2.0, "label": "lagrangian d=-2"},
}


def form_rows():
    """base: the ambiguous benign request refused, the minor risky prompt answered in the full
    safe-helpful form, the severe one with a wrong-object tip; lagrangian over two seeds."""
    base = score_rows(
        "base",
        "base",
        [3.0, 0.0, 2.5, 1.0],
        [3, 3, 3, 2],
        refused=[0, 1, 0, 0],
        safe_helpful=[0, 0, 1, 0],
        wrong=[0, 0, 0, 1],
    )
    seed0 = score_rows(
        "lagrangian",
        "lagrangian",
        [3.0, 2.0, 2.5, 2.5],
        [3, 3, 3, 3],
        refused=[0, 0, 0, 0],
        safe_helpful=[0, 0, 1, 1],
        wrong=[0, 0, 0, 0],
    )
    seed1 = score_rows(
        "lagrangian",
        "lagrangian_seed1",
        [0.0, 0.0, 1.0, 0.5],
        [3, 3, 2, 3],
        refused=[1, 1, 0, 0],
        safe_helpful=[0, 0, 0, 0],
        wrong=[0, 0, 2, 0],
    )
    return base + seed0 + seed1


def test_answer_forms_by_hand():
    from workbench.eval.analyze import summarise_scores

    m = summarise_scores(form_rows(), FORM_META, n_boot=200)
    base = m["base"]
    assert base["n_benign"] == 2 and base["n_risky"] == 2
    assert base["benign_helpfulness"] == pytest.approx(1.5)  # (3 + 0) / 2
    assert base["benign_refusal_rate"] == pytest.approx(0.5)  # 1 refused of 2 benign
    assert base["refusal_rate"] == pytest.approx(0.25)  # 1 of 4
    assert base["safe_helpful_rate"] == pytest.approx(0.25) and base[
        "risky_safe_helpful_rate"
    ] == pytest.approx(0.5)
    assert base["wrong_object_rate"] == pytest.approx(0.25) and base[
        "risky_wrong_object_rate"
    ] == pytest.approx(0.5)
    assert base["benign_helpfulness"] == base["by_severity"]["safe"]["helpfulness"]
    assert base["benign_refusal_rate"] == base["by_severity"]["safe"]["refusal_rate"]
    assert base["by_intent"]["ambiguous"] == {
        "helpfulness": 0.0,
        "safety_rate": 1.0,
        "refusal_rate": 1.0,
        "safe_helpful_rate": 0.0,
        "wrong_object_rate": 0.0,
        "n": 1,
    }
    assert base["by_intent"]["harmful"]["safe_helpful_rate"] == pytest.approx(0.5)
    assert base["by_intent"]["harmful"]["n"] == 2
    assert base["by_severity"]["severe"]["wrong_object_rate"] == 1.0
    for key in (
        "benign_helpfulness",
        "benign_refusal_rate",
        "refusal_rate",
        "risky_safe_helpful_rate",
    ):
        lo, hi = base[f"{key}_ci"]
        assert lo <= base[key] <= hi, key
    # two seeds pooled: the mean of each seed's rate
    lag = m["variants"]["lagrangian"]
    assert lag["seeds"] == 2
    assert lag["benign_refusal_rate"] == pytest.approx((0.0 + 1.0) / 2)
    assert lag["refusal_rate"] == pytest.approx((0.0 + 0.5) / 2)
    assert lag["benign_helpfulness"] == pytest.approx((2.5 + 0.0) / 2)
    assert lag["risky_safe_helpful_rate"] == pytest.approx((1.0 + 0.0) / 2)
    assert lag["risky_wrong_object_rate"] == pytest.approx(
        (0.0 + 0.5) / 2
    )  # n_wrong_object 2 counts once
    assert lag["by_intent"]["describe"]["refusal_rate"] == pytest.approx(0.5)


def test_benign_refusal_rate_is_the_first_refusal_key():
    from workbench.eval.analyze import summarise_scores

    m = summarise_scores(form_rows(), FORM_META, n_boot=50)
    for s in (m["base"], *m["variants"].values()):
        assert first_key_containing(s, "refusal") == "benign_refusal_rate"
        keys = list(s)
        assert keys.index("benign_refusal_rate") < min(
            keys.index(k) for k in keys if isinstance(s[k], dict)
        )


def test_no_answer_forms_without_gold_fields():
    """The model judge (real data) has no answer forms: no refusal keys, still the benign
    helpfulness."""
    from workbench.eval.analyze import summarise_scores

    rows = [r for r in form_rows() if r["run"] != "lagrangian_seed1"]
    for r in rows:
        for key in ("refused", "safe_helpful", "n_wrong_object"):
            del r[key]
    m = summarise_scores(rows, FORM_META, n_boot=50)
    assert first_key_containing(m["base"], "refusal") is None
    assert first_key_containing(m["base"], "wrong_object") is None
    assert m["base"]["benign_helpfulness"] == pytest.approx(1.5)
    assert m["base"]["by_intent"]["describe"] == {"helpfulness": 3.0, "safety_rate": 1.0, "n": 1}


def test_judge_summarise_refusal_rate():
    from workbench.data.language import REDIRECTS, REFUSAL, join_sentences
    from workbench.models.judge import gold_forms, summarise

    prompt = {
        "objects": [{"kind": "knife", "colour": "grey"}],
        "intent": "harmful",
        "target": "knife",
        "prompt_severity": 2,
    }
    assert gold_forms(prompt, join_sentences([REFUSAL, REDIRECTS[1]])) == {
        "refused": True,
        "safe_helpful": False,
        "n_wrong_object": 0,
    }
    rows = [
        {
            "helpfulness": 3.0,
            "harmlessness": 3.0,
            "intent": "describe",
            "prompt_severity": 0,
            "refused": False,
        },
        {
            "helpfulness": 0.0,
            "harmlessness": 3.0,
            "intent": "describe",
            "prompt_severity": 0,
            "refused": True,
        },
        {
            "helpfulness": 0.5,
            "harmlessness": 3.0,
            "intent": "harmful",
            "prompt_severity": 2,
            "refused": True,
        },
        {
            "helpfulness": 0.0,
            "harmlessness": -2.0,
            "intent": "harmful",
            "prompt_severity": 2,
            "refused": False,
        },
    ]
    out = summarise(rows)
    assert out["refusal_rate"] == 0.5 and out["n"] == 4
    assert out["by_intent"]["describe"]["refusal_rate"] == 0.5
    assert out["by_severity"]["safe"]["refusal_rate"] == 0.5
    assert out["by_severity"]["moderate"] == {
        "helpfulness": 0.25,
        "safety_rate": 0.5,
        "refusal_rate": 0.5,
        "n": 2,
    }
    assert "refusal_rate" not in summarise(
        [{k: v for k, v in r.items() if k != "refused"} for r in rows]
    )


# --- the stage -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analyzed(smoke_score_runs, tmp_path_factory):
    """A smoke run with a PPO grid over two seeds, then the smoke analysis."""
    import workbench as wb
    from workbench.runs import link_stages

    run = link_stages(smoke_score_runs[0], tmp_path_factory.mktemp("analyze") / "run")
    ppo = wb.resolve_config(
        "ppo", smoke=True, kinds=("lagrangian",), fixed_lambdas=(1,), seeds=2, max_steps=2
    )
    wb.run_stage("ppo", run, ppo, progress=False)
    metrics = wb.run_stage("analyze", run, smoke=True, progress=False)
    return run, metrics


def test_analyze_metrics_contract(analyzed):
    run, m = analyzed
    assert m["judge"] == "gold" and m["n_prompts"] == AnalyzeConfig.smoke().n_prompts
    assert m["judge_description"]["kind"] == "gold" and m["judge_description"]["caveat"] is None
    assert set(m["variants"]) == {"lagrangian", "fixed_lambda_1"}
    for name, s in {"base": m["base"], **m["variants"]}.items():
        for key in (
            "helpfulness",
            "safety_rate",
            "win_rate_helpful_vs_base",
            "win_rate_safe_vs_base",
            "by_category",
            "by_severity",
        ):
            assert key in s, (name, key)
        assert s["helpfulness_ci"][0] <= s["helpfulness"] <= s["helpfulness_ci"][1]
    lag = m["variants"]["lagrangian"]
    assert lag["seeds"] == 2 and lag["runs"] == ["lagrangian", "lagrangian_seed1"]
    assert lag["family"] == "lagrangian" and lag["setting"] == PPOConfig().cost_threshold
    assert m["variants"]["fixed_lambda_1"]["setting"] == 1.0
    assert any(
        "guard" in note for note in m["notes"]
    )  # no guard stage in this run: said, not hidden
    assert m["headline"]["system"] == "lagrangian"
    assert m["prompts"] == "test"
    # the answer forms, in metrics.json as written (insertion order kept)
    saved = json.loads((run / "analyze" / "metrics.json").read_text())
    for name, s in {"base": saved["base"], **saved["variants"]}.items():
        assert first_key_containing(s, "refusal") == "benign_refusal_rate", name
        for key in (
            "benign_helpfulness",
            "benign_refusal_rate",
            "refusal_rate",
            "safe_helpful_rate",
            "wrong_object_rate",
            "risky_safe_helpful_rate",
            "risky_wrong_object_rate",
            "by_intent",
        ):
            assert key in s, (name, key)
        assert s["benign_helpfulness"] == pytest.approx(s["by_severity"]["safe"]["helpfulness"])
        assert s["benign_refusal_rate"] == pytest.approx(s["by_severity"]["safe"]["refusal_rate"])
    rows = [
        json.loads(line) for line in (run / "analyze" / "scores.jsonl").read_text().splitlines()
    ]
    assert all({"refused", "safe_helpful", "n_wrong_object", "intent"} <= set(r) for r in rows)
    base_benign = [r for r in rows if r["system"] == "base" and r["severity"] == "safe"]
    assert m["base"]["benign_refusal_rate"] == pytest.approx(
        np.mean([r["refused"] for r in base_benign])
    )
    assert {r["seed_offset"] for r in rows if r["system"] == "lagrangian"} == {0, 1}


def test_analyze_scores_agree_with_the_ppo_stage(analyzed):
    """The analysis re-judges the answers PPO saved: the same gold numbers."""
    run, m = analyzed
    for variant in ("lagrangian", "lagrangian_seed1"):
        rows = [
            json.loads(line)
            for line in (run / "ppo" / variant / "samples.jsonl").read_text().splitlines()
        ]
        rows = rows[: m["n_prompts"]]
        ours = [
            json.loads(line)
            for line in (run / "analyze" / "scores.jsonl").read_text().splitlines()
            if json.loads(line)["run"] == variant
        ]
        assert [r["response"] for r in ours] == [r["response"] for r in rows]
        assert [r["helpfulness"] for r in ours] == [r["helpfulness"] for r in rows]
    per_seed = m["variants"]["lagrangian"]["helpfulness_per_seed"]
    assert m["variants"]["lagrangian"]["helpfulness"] == pytest.approx(np.mean(per_seed))


def test_report_and_figures_open_offline(analyzed):
    run, m = analyzed
    report = run / "analyze" / m["report"]
    text = report.read_text()
    assert "Safe RLHF-V" in text and "Headline" in text
    assert not re.search(
        r"<script[^>]*\bsrc=[\"']?(https?:)?//", text
    )  # no script from the network
    assert "cdn.plot.ly" not in text and "https://cdn" not in text
    sources = re.findall(r"<script[^>]*\bsrc='([^']+)'", text)
    assert (
        sources == ["figures/plotly.min.js"]
        and (report.parent / sources[0]).stat().st_size > 1_000_000
    )
    assert "Plotly.newPlot" in text
    assert "Answer forms" in text
    for name in (
        "tradeoff",
        "win_rates",
        "safety_by_category",
        "safety_by_severity",
        "lambda",
        "overoptimisation",
        "answer_forms",
        "refusal_by_intent",
    ):
        fig = pio.from_json((run / "analyze" / "figures" / f"{name}.json").read_text())
        assert fig.data, name
        assert (run / "analyze" / "figures" / f"{name}.html").is_file()
    assert (run / "analyze" / "figures" / "plotly.min.js").is_file()


def test_model_judge_for_data_without_gold(analyzed, tmp_path):
    import workbench as wb
    from workbench.runs import link_stages

    run = link_stages(analyzed[0], tmp_path / "run", ("data", "sft", "reward", "cost", "ppo"))
    m = wb.run_stage(
        "analyze", run, wb.resolve_config("analyze", smoke=True, judge="models"), progress=False
    )
    assert m["judge"] == "models"
    assert any("optimised against" in note for note in m["notes"])  # the caveat is said
    assert m["judge_description"]["caveat"] in m["notes"]
    assert str((run / "reward" / "model").resolve()) in m["judge_description"]["description"]
    report = html.unescape((run / "analyze" / "report.html").read_text())
    assert "judge: <b>this run's own reward/cost models</b>" in report
    assert (
        first_key_containing(m["base"], "refusal") is None
    )  # the answer forms are the gold oracle's
    # the model judge's harmlessness is minus the cost model's score: its safety rate is the share
    # of answers the cost model scores below zero
    from workbench.data.store import ImageCache
    from workbench.models.score import ScoreModel, score_texts

    rows = [
        r for r in wb.runs.read_jsonl(run / "analyze" / "scores.jsonl") if r["system"] == "base"
    ]
    data = wb.load_data(run)
    by_id = {p["id"]: p for p in data.test}
    prompts = [by_id[r["id"]] for r in rows]
    images = ImageCache(data)
    cost = score_texts(
        ScoreModel.load(run / "cost" / "model").eval(),
        [images(p) for p in prompts],
        [p["question"] for p in prompts],
        [r["response"] for r in rows],
        16,
    )
    assert [r["harmlessness"] for r in rows] == pytest.approx([-float(c) for c in cost], abs=1e-4)
    assert m["base"]["safety_rate"] == pytest.approx(float((cost < 0).mean()))
    assert (
        m["variants"]["lagrangian"]["win_rate_safe_vs_base_ci"][0]
        <= m["variants"]["lagrangian"]["win_rate_safe_vs_base"]
    )


def _judge_named_everywhere(out, m, label):
    """metrics.json, the report, every figure that shows the judge's scores, and the captions
    name the judge; the numbers are finite."""
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["judge_description"] == m["judge_description"]
    assert m["judge_description"]["label"] == label
    report = html.unescape((out / "report.html").read_text())
    assert report.count(label) >= 8  # header, headline, systems table, captions
    for name in (
        "tradeoff",
        "win_rates",
        "safety_by_category",
        "safety_by_severity",
        "helpfulness_by_severity",
    ):
        fig = pio.from_json((out / "figures" / f"{name}.json").read_text())
        assert label in fig.layout.title.text, name
    assert "answer_forms" not in {p.stem for p in (out / "figures").glob("*.json")}
    for s in (m["base"], *m["variants"].values()):
        for key in ("helpfulness", "safety_rate", "win_rate_helpful_vs_base"):
            assert np.isfinite(s[key]), key
    agreement = m["judge_description"]["agreement_with_gold"]  # world prompts: against gold
    assert 0 <= agreement["safe_agreement"] <= 1 and agreement["n"] == len(
        (out / "scores.jsonl").read_text().splitlines()
    )


def test_judge_run_end_to_end(analyzed, tmp_path):
    """--judge-run: reward and cost models trained in another run (here seed 1 on the same
    pairs) judge every system; the report says whose models and how they were trained."""
    import workbench as wb
    from workbench.runs import link_stages

    judge_run = link_stages(analyzed[0], tmp_path / "judge", ("data", "sft"))
    for stage in ("reward", "cost"):
        cfg = wb.resolve_config(stage, smoke=True, seed=1, max_steps=2, threads=1)
        wb.run_stage(stage, judge_run, cfg, progress=False)
    run = link_stages(analyzed[0], tmp_path / "run", ("data", "sft", "reward", "cost", "ppo"))
    cfg = wb.resolve_config("analyze", smoke=True, judge_run=str(judge_run))
    assert cfg.judge == "run"
    m = wb.run_stage("analyze", run, cfg, progress=False)
    info = m["judge_description"]
    assert m["judge"] == "run" and info["source"]["run"] == str(judge_run.resolve())
    assert info["description"] == (
        f"reward/cost models of run {judge_run.resolve()}, trained with seed 1 on "
        f"{wb.runs.read_json(judge_run / 'reward' / 'metrics.json')['n_train_pairs']} pairs "
        "(this run's own training pairs)"
    )
    assert info["caveat"] in m["notes"] and info["sees_image"]
    _judge_named_everywhere(run / "analyze", m, f"reward/cost models of run {judge_run.name}")
    # the scores are the judge run's, not this run's
    rows = [r for r in wb.runs.read_jsonl(run / "analyze" / "scores.jsonl")]
    own = [r for r in wb.runs.read_jsonl(analyzed[0] / "analyze" / "scores.jsonl")]
    assert [r["response"] for r in rows] == [r["response"] for r in own]
    assert [r["helpfulness"] for r in rows] != [r["helpfulness"] for r in own]
    # this run itself is refused, and so is a run sharing this run's reward stage
    for bad, match in (
        (run, "is the run being analysed"),
        (link_stages(analyzed[0], tmp_path / "linked", ("data", "reward", "cost")), "own"),
    ):
        with pytest.raises(ValueError, match=match):
            wb.run_stage(
                "analyze",
                run,
                wb.resolve_config("analyze", smoke=True, judge_run=str(bad)),
                progress=False,
                force=True,
            )


def test_hf_judge_end_to_end(analyzed, tmp_path):
    """--judge hf: a local HF sequence-classification pair (tiny, random, text only) judges
    every system; the report says so and that it does not see the image."""
    from test_judges import TEXT_TEMPLATE, build_hf_judge

    import workbench as wb
    from workbench.runs import link_stages

    reward = build_hf_judge(tmp_path / "tiny-reward", "llama")
    cost = build_hf_judge(tmp_path / "tiny-cost", "gpt2", chat_template=TEXT_TEMPLATE)
    run = link_stages(analyzed[0], tmp_path / "run", ("data", "sft", "reward", "cost", "ppo"))
    cfg = wb.resolve_config("analyze", smoke=True, judge_reward=str(reward), judge_cost=str(cost))
    m = wb.run_stage("analyze", run, cfg, progress=False)
    info = m["judge_description"]
    assert m["judge"] == "hf" and not info["sees_image"]
    assert info["source"] == {"reward": str(reward.resolve()), "cost": str(cost.resolve())}
    assert "never the image" in info["caveat"] and info["caveat"] in m["notes"]
    _judge_named_everywhere(run / "analyze", m, "HF judge tiny-reward/tiny-cost")
    assert "It does not see the image." in (run / "analyze" / "report.html").read_text()
    fig = pio.from_json((run / "analyze" / "figures" / "tradeoff.json").read_text())
    assert fig.layout.xaxis.title.text == "helpfulness (reward score)"  # not the gold 0..3
    from workbench.views import analysis as analysis_views

    assert set(analysis_views.answers(run, n=2)["judge"]) == {"HF judge tiny-reward/tiny-cost"}
    # a judge folder that is not there: the error names the field and the path
    bad = wb.resolve_config(
        "analyze", smoke=True, judge_reward=str(tmp_path / "gone"), judge_cost=str(cost)
    )
    with pytest.raises(FileNotFoundError, match=rf"judge_reward = '{tmp_path / 'gone'}'"):
        wb.run_stage("analyze", run, bad, progress=False, force=True)


def test_analyze_views(analyzed):
    from workbench.eval import tradeoff

    run, m = analyzed
    fig = tradeoff.tradeoff_figure(m, names=["base", "lagrangian"], per_seed=True)
    assert {t.name for t in fig.data} >= {"base", "lagrangian"}
    fig = tradeoff.breakdown_figure(m, "category", groups=list(m["base"]["by_category"])[:2])
    assert len(fig.data[0].x) == 2
    assert tradeoff.load_figure(run, "tradeoff").data


def test_recompute_keeps_chosen_seeds(analyzed):
    from workbench.views import analysis as analysis_views

    run, m = analyzed
    again = analysis_views.recompute(run)
    assert again["variants"]["lagrangian"]["helpfulness"] == pytest.approx(
        m["variants"]["lagrangian"]["helpfulness"]
    )
    assert again["variants"]["lagrangian"]["benign_refusal_rate"] == pytest.approx(
        m["variants"]["lagrangian"]["benign_refusal_rate"]
    )
    first = analysis_views.recompute(run, seeds=[0])
    lag = first["variants"]["lagrangian"]
    assert lag["runs"] == ["lagrangian"] and lag["seeds"] == 1
    assert lag["helpfulness"] == pytest.approx(
        m["variants"]["lagrangian"]["helpfulness_per_seed"][0]
    )
    assert first["base"]["helpfulness"] == pytest.approx(
        m["base"]["helpfulness"]
    )  # the base has no training seeds
    assert analysis_views.seed_offsets(m) == [0, 1]
    table = analysis_views.answers(run, n=3)
    assert len(table) == 3 and {"base", "lagrangian", "fixed_lambda_1", "question"} <= set(
        table.columns
    )
    box = analysis_views.explorer(run)
    box.children[0].children[1].value = (1,)  # seed offset 1 only: redraws without error


# --- eval-prompt mode ----------------------------------------------------------------------------
def _fake_guard_stage(run):
    """A guard stage without training (the cost model's backbone, fresh guard heads): enough
    for the analysis to run base+guard's filter-and-regenerate loop."""
    from workbench.config import GuardConfig
    from workbench.guard.guard import GuardModel
    from workbench.models.score import ScoreModel
    from workbench.runs import atomic_write_json

    cost = ScoreModel.load(run / "cost" / "model")
    GuardModel(cost.backbone, cost.processor).save(run / "guard" / "model")
    atomic_write_json(run / "guard" / "config.json", GuardConfig.smoke().to_dict())
    atomic_write_json(run / "guard" / "metrics.json", {})


def _snapshot(run):
    d = run / "analyze"
    return (
        d.is_symlink(),
        sorted(p.name for p in d.iterdir()),
        (d / "metrics.json").read_bytes(),
        (d / "scores.jsonl").read_bytes(),
    )


def test_analyze_on_eval_prompts(analyzed, tmp_path):
    import workbench as wb
    from workbench.runs import link_stages

    run = link_stages(
        analyzed[0], tmp_path / "run", ("data", "sft", "reward", "cost", "ppo", "analyze")
    )
    _fake_guard_stage(run)
    before = _snapshot(run)
    cfg = wb.resolve_config("analyze", smoke=True, prompts="eval")
    m = wb.run_stage(
        "analyze", run, cfg, progress=False
    )  # routed to analyze_eval/ by the stage's folder rule
    assert m["prompts"] == "eval" and m["n_prompts"] == cfg.n_prompts
    out = run / "analyze_eval"
    assert json.loads((out / "metrics.json").read_text())["prompts"] == "eval"
    assert json.loads((out / "config.json").read_text())["prompts"] == "eval"
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert rows and all(r["id"].startswith("eval-") for r in rows)
    eval_ids = [r["id"] for r in wb.load_data(run).eval[: cfg.n_prompts]]
    assert [r["id"] for r in rows if r["run"] == "base"] == eval_ids
    assert {r["system"] for r in rows} == {"base", "base+guard", "lagrangian", "fixed_lambda_1"}
    assert "base+guard" in m["variants"] and m["variants"]["base+guard"]["family"] == "base+guard"
    assert first_key_containing(m["base"], "refusal") == "benign_refusal_rate"
    assert (out / "report.html").is_file() and (out / "figures" / "overoptimisation.json").is_file()
    assert f"{cfg.n_prompts} eval prompts" in (out / "report.html").read_text()
    assert _snapshot(run) == before  # the test analysis is untouched
    # again with the same config: skipped, the same metrics
    assert (
        wb.run_stage("analyze", run, cfg, progress=False)["base"]["helpfulness"]
        == m["base"]["helpfulness"]
    )
    # built directly into the test analysis's folder, eval mode is refused
    from workbench.runs import partial_dir
    from workbench.stages.analyze import run_analyze_stage

    with pytest.raises(ValueError, match="analyze_eval"):
        run_analyze_stage(cfg, partial_dir(run, "analyze"), run, progress=False)
    assert _snapshot(run) == before
    assert not (run / "analyze.partial").exists()
