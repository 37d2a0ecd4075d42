"""The analysis stage: metric formulas by hand, the seed grid, and a smoke stage end to end."""

import json
import re

import numpy as np
import plotly.io as pio
import pytest

from workbench.config import AnalyzeConfig, ConfigError, PPOConfig
from workbench.eval.metrics import (
    bootstrap_ci,
    breakdown,
    pareto_frontier,
    safe,
    summarise_system,
    wins,
)


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
    base = {"helpfulness": np.array([1.0, 2.0, 0.0, 3.0]), "harmlessness": np.array([1.0, -2.0, 2.0, -1.0])}
    other = {"helpfulness": np.array([2.0, 2.0, 0.0, 1.0]), "harmlessness": np.array([2.0, 1.0, 2.0, -3.0])}
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
    seeds = [{"helpfulness": np.array([1.0, 3.0, 2.0]), "harmlessness": np.array([1.0, -1.0, 1.0])},
             {"helpfulness": np.array([3.0, 1.0, 2.0]), "harmlessness": np.array([-1.0, -1.0, 1.0])}]
    out = breakdown(seeds, ["a", "b", "a"])
    assert out["a"] == {"helpfulness": 2.0, "safety_rate": 0.75, "n": 2}
    assert out["b"] == {"helpfulness": 2.0, "safety_rate": 0.0, "n": 1}


def test_pareto_frontier_by_hand():
    points = [(1, 1), (2, 0.5), (0.5, 2), (0.9, 0.9), (1, 1), (2, 0.4)]
    assert pareto_frontier(points) == [2, 0, 1]  # ordered by the first axis; duplicates and dominated out
    assert pareto_frontier([(0, 0)]) == [0]


def test_ppo_seeds_add_variants_with_their_own_seed():
    cfg = PPOConfig(variants="lagrangian,reward_only", thresholds="-1", fixed_lambdas="2", seeds=3, seed=5)
    variants = cfg.variant_configs()
    assert list(variants) == ["lagrangian", "reward_only", "lagrangian_d-1", "fixed_lambda_2",
                              "lagrangian_seed1", "lagrangian_seed2", "reward_only_seed1", "reward_only_seed2",
                              "lagrangian_d-1_seed1", "lagrangian_d-1_seed2", "fixed_lambda_2_seed1",
                              "fixed_lambda_2_seed2"]
    kind, c = variants["lagrangian_d-1_seed2"]
    assert (kind, c.seed, c.cost_threshold) == ("lagrangian", 7, -1.0)
    assert variants["fixed_lambda_2_seed1"][1].lambda_init == 2.0
    with pytest.raises(ConfigError, match="seeds"):
        PPOConfig(seeds=0)


def test_point_name_strips_the_seed_suffix():
    from workbench.eval.analyze import point_name

    assert point_name("lagrangian_d-1_seed2") == "lagrangian_d-1"
    assert point_name("fixed_lambda_0.5") == "fixed_lambda_0.5"


def test_analyze_config_checks():
    with pytest.raises(ConfigError, match="judge"):
        AnalyzeConfig(judge="oracle")
    with pytest.raises(ConfigError, match="confidence"):
        AnalyzeConfig(confidence=1.0)


# --- the stage -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analyzed(smoke_score_runs, tmp_path_factory):
    """A smoke run with a PPO grid over two seeds, then the smoke analysis."""
    import workbench as wb
    from workbench.runs import link_stages

    run = link_stages(smoke_score_runs[0], tmp_path_factory.mktemp("analyze") / "run")
    ppo = wb.resolve_config("ppo", smoke=True, variants="lagrangian", fixed_lambdas="1", seeds=2, max_steps=2)
    wb.run_stage("ppo", run, ppo, progress=False)
    metrics = wb.run_stage("analyze", run, smoke=True, progress=False)
    return run, metrics


def test_analyze_metrics_contract(analyzed):
    run, m = analyzed
    assert m["judge"] == "gold" and m["n_prompts"] == AnalyzeConfig.smoke().n_prompts
    assert set(m["variants"]) == {"lagrangian", "fixed_lambda_1"}
    for name, s in {"base": m["base"], **m["variants"]}.items():
        for key in ("helpfulness", "safety_rate", "win_rate_helpful_vs_base", "win_rate_safe_vs_base",
                    "by_category", "by_severity"):
            assert key in s, (name, key)
        assert s["helpfulness_ci"][0] <= s["helpfulness"] <= s["helpfulness_ci"][1]
    lag = m["variants"]["lagrangian"]
    assert lag["seeds"] == 2 and lag["runs"] == ["lagrangian", "lagrangian_seed1"]
    assert lag["family"] == "lagrangian" and lag["setting"] == PPOConfig().cost_threshold
    assert m["variants"]["fixed_lambda_1"]["setting"] == 1.0
    assert any("guard" in note for note in m["notes"])  # no guard stage in this run: said, not hidden
    assert m["headline"]["system"] == "lagrangian"


def test_analyze_scores_agree_with_the_ppo_stage(analyzed):
    """The analysis re-judges the answers PPO saved: the same gold numbers."""
    run, m = analyzed
    for variant in ("lagrangian", "lagrangian_seed1"):
        rows = [json.loads(line) for line in (run / "ppo" / variant / "samples.jsonl").read_text().splitlines()]
        rows = rows[: m["n_prompts"]]
        ours = [json.loads(line) for line in (run / "analyze" / "scores.jsonl").read_text().splitlines()
                if json.loads(line)["run"] == variant]
        assert [r["response"] for r in ours] == [r["response"] for r in rows]
        assert [r["helpfulness"] for r in ours] == [r["helpfulness"] for r in rows]
    per_seed = m["variants"]["lagrangian"]["helpfulness_per_seed"]
    assert m["variants"]["lagrangian"]["helpfulness"] == pytest.approx(np.mean(per_seed))


def test_report_and_figures_open_offline(analyzed):
    run, m = analyzed
    report = run / "analyze" / m["report"]
    text = report.read_text()
    assert "Safe RLHF-V" in text and "Headline" in text
    assert not re.search(r"<script[^>]*\bsrc=[\"']?(https?:)?//", text)  # no script from the network
    assert "cdn.plot.ly" not in text and "https://cdn" not in text
    sources = re.findall(r"<script[^>]*\bsrc='([^']+)'", text)
    assert sources == ["figures/plotly.min.js"] and (report.parent / sources[0]).stat().st_size > 1_000_000
    assert "Plotly.newPlot" in text
    for name in ("tradeoff", "win_rates", "safety_by_category", "safety_by_severity", "lambda", "overoptimisation"):
        fig = pio.from_json((run / "analyze" / "figures" / f"{name}.json").read_text())
        assert fig.data, name
        assert (run / "analyze" / "figures" / f"{name}.html").is_file()
    assert (run / "analyze" / "figures" / "plotly.min.js").is_file()


def test_model_judge_for_data_without_gold(analyzed, tmp_path):
    import workbench as wb
    from workbench.runs import link_stages

    run = link_stages(analyzed[0], tmp_path / "run", ("data", "sft", "reward", "cost", "ppo"))
    m = wb.run_stage("analyze", run, wb.resolve_config("analyze", smoke=True, judge="models"), progress=False)
    assert m["judge"] == "models"
    # the model judge's harmlessness is minus the cost model's score: its safety rate is the share
    # of answers the cost model scores below zero
    assert 0.0 <= m["base"]["safety_rate"] <= 1.0
    assert m["variants"]["lagrangian"]["win_rate_safe_vs_base_ci"][0] <= m["variants"]["lagrangian"]["win_rate_safe_vs_base"]


def test_analyze_views(analyzed):
    from workbench.eval import tradeoff

    run, m = analyzed
    fig = tradeoff.tradeoff_figure(m, names=["base", "lagrangian"], per_seed=True)
    assert {t.name for t in fig.data} >= {"base", "lagrangian"}
    fig = tradeoff.breakdown_figure(m, "category", groups=list(m["base"]["by_category"])[:2])
    assert len(fig.data[0].x) == 2
    assert tradeoff.load_figure(run, "tradeoff").data


def test_recompute_keeps_chosen_seeds(analyzed):
    from workbench.eval import analysis_views

    run, m = analyzed
    again = analysis_views.recompute(run)
    assert again["variants"]["lagrangian"]["helpfulness"] == pytest.approx(m["variants"]["lagrangian"]["helpfulness"])
    first = analysis_views.recompute(run, seeds=[0])
    lag = first["variants"]["lagrangian"]
    assert lag["runs"] == ["lagrangian"] and lag["seeds"] == 1
    assert lag["helpfulness"] == pytest.approx(m["variants"]["lagrangian"]["helpfulness_per_seed"][0])
    assert first["base"]["helpfulness"] == pytest.approx(m["base"]["helpfulness"])  # the base has no training seeds
    assert analysis_views.seed_offsets(m) == [0, 1]
    table = analysis_views.answers(run, n=3)
    assert len(table) == 3 and {"base", "lagrangian", "fixed_lambda_1", "question"} <= set(table.columns)
    box = analysis_views.explorer(run)
    box.children[0].children[1].value = (1,)  # seed offset 1 only: redraws without error
