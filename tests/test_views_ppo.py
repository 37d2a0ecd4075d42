"""Notebook 04's views (``workbench/views/ppo_lagrangian.py``).

The grid's runs pooled into points and families, the tables and the curves at the default
grid's shape (18 runs: two controllers, two thresholds, three seeds) from made-up metrics and
logs, without training; then, on the shared smoke run, the walkthrough of one PPO-Lagrangian
update against the trainer's functions and the formulas of docs/design.md §6, the compact
tables, and the exercises' and the slider's scratch runs at the run's own settings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.config import PPOConfig
from workbench.eval.tradeoff import FAMILY_COLOURS
from workbench.views import ppo_lagrangian as views

#: The default grid with both λ controllers (what the default run's analysis compares).
GRID = PPOConfig(lambda_controllers=("sgd", "pid"))


@pytest.fixture(scope="module")
def ppo_run(smoke_root):
    """The shared smoke run with its PPO stage (the same config as ``wb.smoke_run``'s)."""
    import workbench as wb

    run_dir = wb.smoke_run(smoke_root, until="cost")
    wb.run_stage("ppo", run_dir, smoke=True, progress=False)
    return run_dir


def _made_up(config: PPOConfig = GRID) -> tuple[dict, dict[str, pd.DataFrame]]:
    """PPO-stage metrics and training logs for every run of ``config``'s grid: run k scores
    helpfulness 1 + k/10 and safety 0.5 + k/100; its log has 6 steps."""
    variants, run_logs = {}, {}
    for k, run in enumerate(config.runs()):
        run_cfg = config.run_config(run)
        variants[run.name] = {
            "kind": run.kind,
            "run": run.to_dict(),
            "helpfulness": 1 + k / 10,
            "safety_rate": 0.5 + k / 100,
            "mean_cost": -1.0 - k / 10,
            "lambda_final": 0.0 if run.kind == "reward_only" else 1 + k / 10,
            "J_C_final": -1.5,
            "train_time_s": 60.0 + k,
            "steps": 6,
            "last": {"lagrange/threshold": run_cfg.cost_threshold},
        }
        steps = np.arange(6)
        run_logs[run.name] = pd.DataFrame(
            {
                "step": steps,
                "reward/score": steps * 0.1 + k,
                "cost/score": -steps * 0.1,
                "lagrange/J_C": -steps * 0.2,
                "lagrange/threshold": run_cfg.cost_threshold,
                "lagrange/lambda": 1.0 + 0 * steps,
                "kl/mean": steps * 0.01,
                "ppo/ratio": 1.0 + 0 * steps,
                "ppo/ratio_min": 0.9 + 0 * steps,
                "ppo/ratio_max": 1.1 + 0 * steps,
                "ppo/clipfrac": 0.01 + 0 * steps,
                "critic/clipfrac": 0.0 + 0 * steps,
                "ppo/approx_kl": 0.001 + 0 * steps,
            }
        )
    return {"variants": variants, "base": {"helpfulness": 1.5, "safety_rate": 0.6}}, run_logs


def test_runs_pool_into_points_and_families():
    metrics, _ = _made_up()
    specs = views.run_specs(metrics, GRID)
    assert len(specs) == 18
    points = specs.groupby("point").size()
    assert points.to_dict() == {
        p: 3
        for p in (
            "lagrangian",
            "lagrangian_d-1",
            "lagrangian_pid",
            "lagrangian_pid_d-1",
            "reward_only",
            "fixed_lambda_1",
        )
    }
    assert specs.loc["lagrangian_pid_d-1_seed2", "family"] == "lagrangian_pid"
    assert specs.loc["lagrangian_pid_d-1_seed2", "seed_offset"] == 2
    # each learned-λ run has its own d: the config's own for lagrangian, the sweep's for _d-1
    assert specs.loc["lagrangian_seed1", "d"] == GRID.cost_threshold == -2.0
    assert specs.loc["lagrangian_d-1", "d"] == -1.0
    assert (
        pd.isna(specs.loc["reward_only", "d"]) and specs.loc["fixed_lambda_1", "fixed_lambda"] == 1
    )
    assert specs.loc["lagrangian_pid_d-1", "label"] == "lagrangian PID d=-1"
    assert specs.loc["fixed_lambda_1_seed1", "label"] == "fixed λ=1"
    # without the config: the spec each run's metrics store, and the d it logged
    alone = views.run_specs(metrics)
    assert alone[["point", "family", "d"]].equals(specs[["point", "family", "d"]])


def test_variants_table_one_row_per_point_mean_and_sd_over_seeds():
    metrics, _ = _made_up()
    table = views.variants_table(metrics, views.run_specs(metrics, GRID))
    assert len(table) == 7 and table.index[0] == "SFT base"  # the base and 6 points, not 19
    names = [r.name for r in GRID.runs()]
    seeds = [
        names.index(n) for n in ("lagrangian_d-1", "lagrangian_d-1_seed1", "lagrangian_d-1_seed2")
    ]
    helpful = np.array([1 + k / 10 for k in seeds])
    assert table.loc["lagrangian_d-1", "helpfulness"] == (
        f"{helpful.mean():.3f} ± {helpful.std(ddof=1):.3f}"
    )
    assert table.loc["lagrangian_d-1", "setting"] == "d = -1"
    assert table.loc["fixed_lambda_1", "setting"] == "λ = 1"
    assert table.loc["lagrangian_d-1", "seeds"] == "3"
    assert table.loc["lagrangian_d-1", "Δ helpfulness"] == f"{helpful.mean() - 1.5:+.3f}"
    safety = np.array([0.5 + k / 100 for k in seeds])
    assert table.loc["lagrangian_d-1", "Δ safety (points)"] == f"{100 * (safety.mean() - 0.6):+.1f}"
    assert len(table.columns) <= 11
    # one seed: the mean alone, no spread
    one = PPOConfig(seeds=1)
    metrics, _ = _made_up(one)
    assert views.variants_table(metrics).loc["lagrangian", "helpfulness"] == "1.000"


def test_curves_one_colour_per_family_seeds_thin_and_d_per_point():
    metrics, run_logs = _made_up()
    specs = views.run_specs(metrics, GRID)
    fig = views.curves_figure(run_logs, smooth=1, specs=specs)
    legend = [t for t in fig.data if t.showlegend]
    assert sorted(t.name for t in legend) == sorted(set(specs["label"]))  # one entry per point
    for t in legend:
        family = specs[specs["label"] == t.name]["family"].iloc[0]
        assert t.line.color == FAMILY_COLOURS[family]
    # the two lagrangian points share the family's colour and differ by dash
    lag = {t.name: t.line.dash for t in legend if t.name.startswith("lagrangian d=")}
    assert len(set(lag.values())) == 2
    # seeds are thin lines, and a point's thick line is their mean
    panel = [t for t in fig.data if t.xaxis == "x" and t.yaxis == "y"]  # reward/score
    thin = [t for t in panel if t.line.width == 0.7]
    assert sorted(t.name for t in thin) == sorted(specs.index)
    mean = next(t for t in panel if t.name == "lagrangian d=-1")
    seeds = [
        run_logs[n]["reward/score"]
        for n in ("lagrangian_d-1", *[f"lagrangian_d-1_seed{k}" for k in (1, 2)])
    ]
    assert np.allclose(mean.y, np.mean(seeds, axis=0))
    # each learned-λ point's own threshold, in the cost panel
    d_lines = {shape.y0 for shape in fig.layout.shapes}
    assert d_lines == {-2.0, -1.0}


def test_own_config_and_the_exercise_guards(ppo_run, tmp_path, capsys):
    cfg = views.own_config(ppo_run, "lagrangian", kl_coeff=0.3)
    saved = PPOConfig.from_json(ppo_run / "ppo" / "config.json")
    assert cfg.kinds == ("lagrangian",) and cfg.seeds == 1 and cfg.thresholds == ()
    assert cfg.max_steps == saved.max_steps and cfg.batch_size == saved.batch_size
    assert views.changes_from_run(ppo_run, cfg) == [f"kl_coeff: {saved.kl_coeff!r} -> 0.3"]
    with pytest.raises(ValueError, match="one setting at a time"):
        views.try_change(ppo_run, "x", root=tmp_path, kl_coeff=0.3, ppo_epochs=1)
    with pytest.raises(ValueError, match="no field 'kl_coef'"):
        views.try_change(ppo_run, "x", root=tmp_path, kl_coef=0.3)
    assert views.try_change(ppo_run, "x", root=tmp_path, kl_coeff=None) is None
    assert "Set `kl_coeff` in this cell first" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()  # nothing trained, nothing linked
    with pytest.raises(ValueError, match="start must be"):
        views.walk_through_update(ppo_run, start="middle")


def test_smoke_tables_are_pooled_and_compact(ppo_run):
    table = views.before_after(ppo_run, n=3, intent=None)
    assert list(table.columns) == ["question", "SFT base", "reward_only", "lagrangian d=-2"]
    assert len(table) == 3
    forms = views.answer_forms(ppo_run)
    assert set(forms.index) == {"SFT base", "lagrangian", "reward_only"}
    assert set(views.world_strengths(ppo_run).index) == set(forms.index)


def test_walkthrough_is_the_trainers_update(ppo_run):
    """Every number the walkthrough shows is the trainer's, and equals the formulas."""
    from workbench import kernels
    from workbench.kernels.gae import dual_gae_reference
    from workbench.kernels.ppo_loss import ppo_lagrangian_loss_reference
    from workbench.train import ppo_lagrangian as P

    walk = views.walk_through_update(ppo_run, n_prompts=2, max_new_tokens=6)
    t, s, cfg = walk.tensors, walk.scalars, walk.config
    m = t["mask"]
    assert cfg.max_new_tokens == 6 and m.shape[0] == 2 and 0 < m.sum(1).max() <= 6
    # the KL estimate and the KL split: the trainer's function and the formula by hand
    assert torch.allclose(t["kl"], (t["old_logp"] - t["ref_logp"]) * m, atol=1e-6)
    assert float(t["kl"].abs().sum()) > 0  # started from the trained adapter: π_θ ≠ π_ref
    r, c = P.token_signals(t["kl"], t["reward"], t["cost"], m, cfg.kl_coeff, cfg.signal_clip)
    assert torch.equal(r, t["r_t"]) and torch.equal(c, t["c_t"])
    end = torch.zeros_like(m)
    end[torch.arange(2), (m * torch.arange(m.shape[1])).argmax(1)] = 1.0  # T: last real token
    by_hand = (-cfg.kl_coeff * t["kl"] + end * t["reward"][:, None]).clamp(
        -cfg.signal_clip, cfg.signal_clip
    )
    by_hand = by_hand * m
    assert torch.allclose(t["r_t"], by_hand, atol=1e-6)
    # dual GAE: the kernels' loop reference
    gae = dual_gae_reference(
        t["r_t"], t["c_t"], t["old_values_r"], t["old_values_c"], m, cfg.gamma, cfg.gae_lambda
    )
    for key, value in zip(("adv_r", "ret_r", "adv_c", "ret_c"), gae, strict=True):
        assert torch.allclose(t[key], value, atol=1e-5), key
    # the λ step: one SGD step on log λ from J_C = the batch's mean cost
    assert s["J_C"] == pytest.approx(float(t["cost"].mean()), abs=1e-6)
    assert s["d"] == cfg.cost_threshold
    grown = s["lambda_before"] * math.exp(cfg.lambda_lr * (s["J_C"] - s["d"]) * s["lambda_before"])
    assert s["lambda_after"] == pytest.approx(min(grown, cfg.lambda_max), rel=1e-6)
    # the loss at the start of the update phase: π_θ = π_old, ρ ≡ 1, so −mean_m(Â)
    lam = s["lambda_after"]
    advantage = (t["adv_r"] - lam * t["adv_c"]) / (1 + lam) * m
    assert torch.allclose(t["advantage"], advantage, atol=1e-6)
    start = ppo_lagrangian_loss_reference(
        t["old_logp"], t["old_logp"], t["adv_r"], t["adv_c"], m, lam, cfg.clip_eps
    )
    assert s["actor_loss_start"] == pytest.approx(float(start), abs=1e-5)
    assert s["actor_loss_start"] == pytest.approx(-float(advantage.sum() / m.sum()), abs=1e-5)
    for critic, values, returns in (
        ("reward", t["old_values_r"], t["ret_r"]),
        ("cost", t["old_values_c"], t["ret_c"]),
    ):
        loss = P.critic_loss(values, values, returns, m, cfg.value_clip)
        half_mse = 0.5 * float(((values - returns) ** 2 * m).sum() / m.sum())
        assert s[f"{critic}_critic_loss_start"] == pytest.approx(float(loss), abs=1e-5)
        assert s[f"{critic}_critic_loss_start"] == pytest.approx(half_mse, abs=1e-5)
    # after ppo_update: the clipped loss of the ratio the table shows
    logp_after = torch.where(m > 0, t["logp_after"], t["old_logp"])
    after = kernels.ppo_lagrangian_loss(
        logp_after, t["old_logp"], t["adv_r"], t["adv_c"], m, lam, cfg.clip_eps, backend="torch"
    )
    assert s["actor_loss_after"] == pytest.approx(float(after), abs=1e-5)
    ratio = torch.exp(logp_after - t["old_logp"])
    assert torch.allclose(t["ratio_after"], ratio * m, atol=1e-6)
    assert s["updates"] == cfg.ppo_epochs * cfg.num_minibatches
    assert s["ratio_min_after"] == pytest.approx(float(ratio[m > 0].min()), rel=1e-5)
    # what the user sees is those tensors
    signals, loss = walk.table("signals"), walk.table("loss")
    assert len(signals) == int(m.sum()) and list(signals.columns)[-2:] == ["r_t", "c_t"]
    assert np.allclose(signals["r_t"], t["r_t"][m > 0].numpy())
    assert np.allclose(loss["ρ_t after"], ratio[m > 0].numpy(), atol=1e-6)
    assert (loss["clipped"] == ((loss["ρ_t after"] - 1).abs() > cfg.clip_eps)).all()
    page = walk._repr_html_()
    steps = [
        "1 · Rollout",
        "2 · Scores",
        "3 · Per-token",
        "4 · Dual GAE",
        "5 · λ step",
        "6 · Clipped",
    ]
    assert [page.index(h) for h in steps] == sorted(page.index(h) for h in steps)


def test_slider_trains_at_the_runs_settings_into_a_scratch_run(ppo_run, tmp_path):
    before = (ppo_run / "ppo" / "metrics.json").stat().st_mtime_ns
    box = views.threshold_slider(ppo_run, root=tmp_path, max_steps=1, n_eval_prompts=4)
    (slider, button), status, output = box.children[0].children, box.children[1], box.children[2]
    assert "own settings" in status.value and "max_steps: 4 -&gt; 1" in status.value
    assert slider.value == PPOConfig.from_json(ppo_run / "ppo" / "config.json").cost_threshold
    slider.value = -1.0
    button.click()
    assert status.value.startswith("d = -1 (") and "λ final" in status.value, status.value
    scratch = tmp_path / "ppo-d-1"
    assert (scratch / "ppo" / "lagrangian" / "log.jsonl").is_file()
    assert (scratch / "sft").is_symlink()
    assert PPOConfig.from_json(scratch / "ppo" / "config.json").cost_threshold == -1.0
    assert (ppo_run / "ppo" / "metrics.json").stat().st_mtime_ns == before  # the run untouched
    # the new point is on the plane beside the run's own
    assert output.outputs  # the plane, redrawn
    plane = views.plane_figure(ppo_run, extra={"d=-1": scratch})
    assert {"your runs", "lagrangian", "reward_only", "base"} <= {t.name for t in plane.data}
