"""The methods stage (docs/design.md §6.14): the grid of runs and its names, the config, the
severe-harm rate, compute and λ bookkeeping by hand; one smoke comparison on the shared smoke
run (every method, one knob value, one seed), then a rerun that reuses its runs."""

import json

import numpy as np
import pytest

import workbench as wb
from workbench.config import ConfigError, DPOConfig, MethodsConfig, PPOConfig
from workbench.eval.analyze import System
from workbench.stages import EXTRA_STAGE_NAMES, STAGE_NAMES, get_stage
from workbench.stages.methods import (
    MethodRun,
    compute_summary,
    matched_safety,
    method_runs,
    mocan_lambda,
    paired_difference,
    ppo_compute,
    ppo_lagrangian,
    severe_harm_rates,
)


# --- the grid -------------------------------------------------------------------------------------
def test_run_names_and_labels():
    assert MethodRun("dpo_safe").name == "dpo_safe"
    assert MethodRun("safedpo", 2.0).point == "safedpo_m2"
    assert MethodRun("mocan", -1.5, 2).name == "mocan_d-1.5_seed2"
    assert MethodRun("mocan", -1.5, 2).point == "mocan_d-1.5"
    assert MethodRun("safedpo", 0.0).label == "safedpo Δ=0"


def test_grid_sweeps_each_method_over_its_own_knob():
    cfg = MethodsConfig(margins=(0.0, 5.0), thresholds=(), seeds=2)
    runs = method_runs(cfg)
    # dpo_helpful, dpo_safe, safedpo x 2 margins, mocan x 3 default thresholds = 7 points
    assert len(runs) == 7 * 2
    assert [r.seed_offset for r in runs] == [0] * 7 + [1] * 7  # every point once first
    assert [r.knob for r in runs if r.method == "mocan"][:3] == [-3.0, -2.0, -1.0]
    # the PPO stage's thresholds, when given, replace the default sweep; the config's win
    assert [r.knob for r in method_runs(cfg, (-2.0, -1.0)) if r.method == "mocan"] == [
        -2.0,
        -1.0,
    ] * 2
    assert cfg.replace(thresholds=(-0.5,)).knob_values("mocan", (-2.0,)) == [-0.5]


def test_run_config_sets_method_knob_and_seed():
    cfg = MethodsConfig(seed=3, threads=1, dpo=DPOConfig(max_steps=7))
    run = cfg.run_config("safedpo", 5.0, 2)
    assert (run.method, run.margin, run.seed, run.max_steps, run.threads) == (
        "safedpo",
        5.0,
        5,
        7,
        1,
    )
    assert cfg.run_config("mocan", -1.0, 0).threshold == -1.0


def test_config_validates_and_round_trips():
    with pytest.raises(ConfigError, match="MethodsConfig.methods"):
        MethodsConfig(methods=("dpo", "safedpo"))
    with pytest.raises(ConfigError, match="MethodsConfig.margins"):
        MethodsConfig(margins=(-1.0,))
    with pytest.raises(ConfigError, match="MethodsConfig.seeds"):
        MethodsConfig(seeds=0)
    with pytest.raises(ConfigError, match="MethodsConfig.prompts"):
        MethodsConfig(prompts="train")
    cfg = MethodsConfig.smoke()
    again = MethodsConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.dpo, DPOConfig)
    assert MethodsConfig.from_dict({"dpo": {"max_steps": 3}}).dpo.max_steps == 3


def test_methods_is_a_stage_that_run_leaves_out():
    assert "methods" in EXTRA_STAGE_NAMES and "methods" not in STAGE_NAMES
    assert get_stage("methods").config is MethodsConfig
    # tuning on eval prompts never writes over the test comparison
    assert get_stage("methods").output(MethodsConfig()) == "methods"
    assert get_stage("methods").output(MethodsConfig(prompts="eval")) == "methods_eval"
    from workbench.cli import COMMANDS

    assert "methods" in COMMANDS


# --- metrics by hand ------------------------------------------------------------------------------
def test_severe_harm_rate_pools_seeds():
    rows = [{"system": "a", "run": "a", "harmlessness": h} for h in (-3.0, 1.0, -1.0, 2.0)] + [
        {"system": "a", "run": "a_seed1", "harmlessness": h} for h in (-3.0, -3.0, 1.0, 1.0)
    ]
    out = severe_harm_rates(rows, n_boot=200)["a"]
    # seed 0: 1/4, seed 1: 2/4 -> mean 3/8
    assert out["severe_harm_rate"] == pytest.approx(0.375)
    assert out["severe_harm_rate_per_seed"] == [0.25, 0.5]
    low, high = out["severe_harm_rate_ci"]
    assert 0 <= low <= 0.375 <= high <= 1


def test_paired_difference_pairs_the_prompts():
    rng = np.random.default_rng(0)
    b = rng.normal(size=200)
    # a shift that is the same on every prompt: the paired interval is that shift exactly,
    # however much the prompts differ from each other
    est, low, high = paired_difference([b + 0.25], [b], n_boot=300)
    assert (est, low, high) == pytest.approx((0.25, 0.25, 0.25))
    # two seeds of a, one of b: the estimate is the mean of a's seed means minus b's
    est, low, high = paired_difference([b + 1.0, b + 3.0], [b], n_boot=300)
    # (a replicate that draws the same seed of a twice gives 1 or 3: the seeds' spread)
    assert est == pytest.approx(2.0) and low <= 2.0 <= high
    assert low == pytest.approx(1.0) and high == pytest.approx(3.0)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([b], [b[:10]])


def test_matched_safety_compares_the_closest_points():
    def rows(system, helpful, safe):
        return [
            {"system": system, "run": system, "helpfulness": h, "harmlessness": 1 if s else -1}
            for h, s in zip(helpful, safe, strict=True)
        ]

    scored = (
        rows("dpo_safe", [1, 1, 2, 2], [1, 1, 1, 0])
        + rows("safedpo_m0", [2, 2, 2, 2], [1, 1, 1, 0])
        + rows("safedpo_m5", [0, 0, 0, 0], [1, 1, 1, 1])
        + rows("mocan_d-1", [3, 3, 3, 3], [0, 0, 0, 0])
    )
    points = {
        "dpo_safe": {"family": "dpo_safe", "safety_rate": 0.75},
        "safedpo_m0": {"family": "safedpo", "safety_rate": 0.75},
        "safedpo_m5": {"family": "safedpo", "safety_rate": 1.0},
        "mocan_d-1": {"family": "mocan", "safety_rate": 0.0},
    }
    out = matched_safety(scored, points, tolerance=0.1, n_boot=200)
    # mocan is 0.75 away from everything: left out; dpo_safe meets safedpo at Δ = 0
    assert [(m["a"], m["b"]) for m in out] == [("dpo_safe", "safedpo_m0")]
    m = out[0]
    assert m["safety_gap"] == 0 and m["helpfulness_diff"] == pytest.approx(-0.5)
    assert m["safety_rate_diff_ci"] == [0.0, 0.0]
    assert m["helpfulness_diff_ci"][0] <= -0.5 <= m["helpfulness_diff_ci"][1] <= 0


def test_compute_summary_sums_per_method():
    runs = {
        "mocan_d-1": {
            "method": "mocan",
            "train_wall_time_s": 2.0,
            "sample_wall_time_s": 1.0,
            "train_tokens_generated": 100,
            "sample_tokens_generated": 10,
        },
        "mocan_d-1_seed1": {
            "method": "mocan",
            "train_wall_time_s": 4.0,
            "sample_wall_time_s": 1.0,
            "train_tokens_generated": 50,
            "sample_tokens_generated": 12,
        },
    }
    out = compute_summary(runs)["mocan"]
    assert out["runs"] == 2 and out["train_wall_time_s"] == 6.0
    assert out["train_tokens_generated"] == 150 and out["sample_tokens_generated"] == 22
    assert out["train_wall_time_s_per_run"] == 3.0


def test_mocan_lambda_sits_beside_ppo(tmp_path):
    ppo = tmp_path / "ppo"
    ppo.mkdir()
    cfg = PPOConfig(thresholds=(-1.0,), seeds=1)
    (ppo / "config.json").write_text(json.dumps(cfg.to_dict()))
    variants = {
        run.name: {"kind": run.kind, "run": run.to_dict(), "lambda_final": 0.5 + i}
        for i, run in enumerate(cfg.runs())
    }
    (ppo / "metrics.json").write_text(json.dumps({"variants": variants}))
    ds, finals = ppo_lagrangian(tmp_path)
    assert ds == (-2.0, -1.0)  # cost_threshold (the lagrangian run), then the sweep
    assert finals["-2"]["sgd"] == [0.5] and finals["-1"]["sgd"] == [2.5]
    runs = {
        "mocan_d-1": {"method": "mocan", "knob": -1.0, "lambda_star": 0.3, "mocan": {}},
        "dpo_safe": {"method": "dpo_safe", "knob": None},
    }
    out = mocan_lambda(runs, finals)
    assert list(out) == ["-1"]
    assert out["-1"]["lambda_star"] == [0.3] and out["-1"]["ppo_lambda_final"] == [2.5]
    assert ppo_lagrangian(tmp_path / "nowhere") == ((), {})


def test_ppo_compute_from_the_runs_logs(tmp_path):
    """Rollout tokens = batch x each step's mean answer length; answers counted by the
    tokenizer; train time summed over the seeds; the answers' sampling time is not known."""

    class Words:  # a tokenizer of whitespace-separated words
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    ppo = tmp_path / "ppo"
    wb.runs.atomic_write_json(ppo / "config.json", PPOConfig(batch_size=4).to_dict())
    for name, time_s, lengths in (("lagrangian", 10.0, [3.0, 2.5]), ("lagrangian_seed1", 5.5, [4])):
        (ppo / name).mkdir(parents=True)
        (ppo / name / "metrics.json").write_text(json.dumps({"train_time_s": time_s}))
        log = [{"step": i, "response/length": n} for i, n in enumerate(lengths)]
        log.insert(1, {"step": 9, "skipped": "non-finite loss"})  # a skipped step has no length
        (ppo / name / "log.jsonl").write_text("\n".join(json.dumps(e) for e in log))
    point = System("lagrangian", "lagrangian", -1.0)
    point.answers = {"lagrangian": ["a b c", "d"], "lagrangian_seed1": ["e f"]}
    out = ppo_compute(tmp_path, point, Words())
    assert out["runs"] == 2 and out["train_wall_time_s"] == 15.5
    assert out["train_tokens_generated"] == 4 * (3 + 2.5) + 4 * 4  # 38
    assert out["sample_tokens_generated"] == 4 + 2
    assert out["sample_wall_time_s"] is None and out["train_wall_time_s_per_run"] == 7.75
    (ppo / "lagrangian_seed1" / "log.jsonl").unlink()
    assert ppo_compute(tmp_path, point, Words()) is None


# --- the stage on the smoke run ---------------------------------------------------------------
def test_methods_stage_on_the_smoke_run(smoke_score_runs, tmp_path, capsys):
    run = wb.runs.link_stages(smoke_score_runs[0], tmp_path / "run")
    cfg = MethodsConfig.smoke()
    metrics = wb.run_stage("methods", run, cfg, progress=False)
    out = run / "methods"
    assert (out / "report.html").is_file() and (out / "figures" / "tradeoff.html").is_file()
    assert "Rollout-free methods" in (out / "report.html").read_text()
    points = {"dpo_helpful", "dpo_safe", "safedpo_m2", "mocan_d-1"}
    assert set(metrics["variants"]) >= points and set(metrics["points"]) == points
    for name in ("base", *points):
        s = metrics["base"] if name == "base" else metrics["variants"][name]
        for key in (
            "helpfulness",
            "safety_rate",
            "severe_harm_rate",
            *(() if name == "base" else ("win_rate_helpful_vs_base", "win_rate_safe_vs_base")),
        ):
            low, high = s[f"{key}_ci"]
            assert low <= s[key] <= high, (name, key)
        if name != "base":
            assert s["n_prompts"] == cfg.n_prompts and s["seeds"] == 1
            assert s["compute"]["sample_tokens_generated"] > 0
    assert metrics["compute"]["mocan"]["train_tokens_generated"] > 0  # its reference answers
    assert metrics["compute"]["dpo_safe"]["train_tokens_generated"] == 0
    assert metrics["mocan_lambda"]["-1"]["lambda_star"][0] >= 0
    for m in metrics["matched_safety"]:
        assert m["safety_gap"] <= cfg.match_tolerance
        assert m["helpfulness_diff_ci"][0] <= m["helpfulness_diff"] <= m["helpfulness_diff_ci"][1]
    assert not any(r["reused"] for r in metrics["runs"].values())
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == cfg.n_prompts * (1 + len(points))
    # the same tables on the command line: python -m workbench results --stage methods
    from workbench.eval.results import main as results_main

    assert results_main(["--run-dir", str(run), "--stage", "methods", "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "| safedpo Δ=2 | 1 |" in text and "severe-harm rate" in text and "λ* (MoCAN)" in text
    row = next(line for line in text.splitlines() if line.startswith("| mocan d=-1 |"))
    low, high = metrics["variants"]["mocan_d-1"]["helpfulness_ci"]
    assert f"{metrics['variants']['mocan_d-1']['helpfulness']:.3f} [{low:.3f}, {high:.3f}]" in row
    assert results_main(["--run-dir", str(tmp_path / "none"), "--stage", "methods"]) == 2
    assert "no finished methods stage" in capsys.readouterr().err

    # a second seed: the finished runs are reused, only the new seed trains
    more = cfg.replace(seeds=2)
    again = wb.run_stage("methods", run, more, progress=False)
    reused = {name: r["reused"] for name, r in again["runs"].items()}
    assert reused == {**{p: True for p in points}, **{f"{p}_seed1": False for p in points}}
    assert again["variants"]["safedpo_m2"]["seeds"] == 2
    assert np.isfinite(again["variants"]["mocan_d-1"]["severe_harm_rate"])
