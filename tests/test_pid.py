"""The PID Lagrangian (docs/design.md §6.10): the controller against hand-computed values, its
checkpoint state, the config and the grid of both controllers, λ's per-run metrics, the λ
figure; and one smoke PPO run under the PID controller."""

import json
import math

import pytest

from workbench.config import ConfigError, PPOConfig, PPORun
from workbench.train.lagrange import LagrangeMultiplier, PIDLagrangeMultiplier, lambda_metrics
from workbench.train.ppo_lagrangian import make_multiplier


def _run(multiplier, costs, start=0):
    """Feed one J_C per step (window 1: J_C is that cost); the λ after each step."""
    out = []
    for step, cost in enumerate(costs, start=start):
        multiplier.record([cost])
        multiplier.update(step)
        out.append(multiplier.value)
    return out


# --- the controller by hand ----------------------------------------------------------------------
def test_pid_steps_by_hand():
    """K_P = 1, K_I = 0.1, K_D = 1, α_p = α_d = 0.5, k = 2, d = 0, λ_init = 1 (window 1)."""
    pid = PIDLagrangeMultiplier(
        init=1.0, kp=1.0, ki=0.1, kd=1.0, ema_p=0.5, ema_d=0.5, derivative_delay=2, window=1
    )
    pid.record([0.5])
    log = pid.update(0)
    # I = 1 + 0.1·0.5; p = 0.5·0 + 0.5·0.5; c_1 = J_C (no derivative at the start)
    assert log["lagrange/pid_i"] == pytest.approx(1.05)
    assert log["lagrange/pid_p"] == pytest.approx(0.25) and log["lagrange/pid_d"] == 0.0
    assert log["lagrange/lambda"] == pytest.approx(1.3) and log["lagrange/J_C"] == 0.5
    lambdas = _run(pid, [1.0, 2.0, 0.0, -20.0, 3.0], start=1)
    # t=2: I 1.15, p 0.625, c 0.75, D = c_2 - c_1 = 0.25
    # t=3: I 1.35, p 1.3125, c 1.375, D = c_3 - c_1 = 0.875 (delay 2)
    # t=4: I 1.35, p 0.65625, c 0.6875, D = max(0, c_4 - c_2) = 0 (only a rising cost counts)
    # t=5: I = max(0, 1.35 - 2) = 0 (clamped), p = -9.671875, λ = max(0, ...) = 0
    # t=6: I 0.3, p -3.3359375, c -3.328125 < c_4: D 0, λ = max(0, -3.04) = 0
    assert lambdas == pytest.approx([2.025, 3.5375, 2.00625, 0.0, 0.0])
    assert pid.integral == pytest.approx(0.3) and pid.updates == 6


def test_pid_derivative_over_the_delay_and_only_on_increases():
    """α_d = 0 (no smoothing), K_D = 1 alone, k = 3: λ_t = max(0, J_C,t - J_C,max(1, t-3))."""
    pid = PIDLagrangeMultiplier(
        init=0.0, kp=0.0, ki=0.0, kd=1.0, ema_d=0.0, derivative_delay=3, window=1
    )
    assert _run(pid, [0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 1.0]) == pytest.approx(
        [0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0]
    )


def test_pid_ema_smoothing_of_the_p_term():
    """K_P alone with α_p = 0.75 on a unit step of J_C - d: p_t = 1 - 0.75^t (from p_0 = 0);
    with α_p = 0 the P term is K_P·(J_C - d) itself."""
    smooth = PIDLagrangeMultiplier(init=0.0, kp=1.0, ki=0.0, kd=0.0, ema_p=0.75, window=1)
    assert _run(smooth, [1.0] * 4) == pytest.approx([1 - 0.75**t for t in range(1, 5)])
    raw = PIDLagrangeMultiplier(init=0.0, kp=2.0, ki=0.0, kd=0.0, ema_p=0.0, window=1)
    assert _run(raw, [1.0, 0.5, -1.0]) == pytest.approx([2.0, 1.0, 0.0])


def test_pid_respects_lambda_max_and_the_update_delay():
    pid = PIDLagrangeMultiplier(
        init=1.0, kp=10.0, ki=10.0, kd=0.0, ema_p=0.0, max_value=5.0, delay=2, window=1
    )
    pid.record([1.0])
    log = pid.update(1)  # in the delay: no step, λ stays λ_init
    assert pid.value == 1.0 and math.isnan(log["lagrange/pid_p"]) and pid.updates == 0
    pid.update(2)  # P 10, I = min(5, 1 + 10): λ and I (anti-windup) clipped at λ_max
    assert pid.value == 5.0 and pid.integral == 5.0
    pid.record([-0.1])
    pid.update(3)  # I = 5 - 1, P = -1: λ leaves λ_max at once (without the clip on I: 9 -> 5)
    assert pid.integral == pytest.approx(4.0) and pid.value == pytest.approx(3.0)
    empty = PIDLagrangeMultiplier(init=1.0)
    empty.update(0)  # no episode yet: no step
    assert empty.value == 1.0 and empty.updates == 0
    with pytest.raises(ValueError, match="K_P"):
        PIDLagrangeMultiplier(ema_p=1.0)
    with pytest.raises(ValueError, match="derivative_delay"):
        PIDLagrangeMultiplier(derivative_delay=0)


def test_pid_state_round_trip_resumes_the_same_lambda_sequence():
    costs = [0.5, -1.0, 2.5, 3.0, -0.5, 1.5, 4.0, -2.0]
    kwargs = dict(init=1.0, kp=0.5, ki=0.3, kd=1.0, derivative_delay=3, window=3, max_value=5.0)
    straight = PIDLagrangeMultiplier(**kwargs)
    want = _run(straight, costs)
    first = PIDLagrangeMultiplier(**kwargs)
    _run(first, costs[:4])
    state = json.loads(json.dumps(first.state_dict()))  # as the checkpoint's state.json holds it
    resumed = PIDLagrangeMultiplier(**kwargs)
    resumed.load_state_dict(state)
    assert resumed.value == first.value and list(resumed.costs) == list(first.costs)
    assert _run(first, costs[4:], start=4) == want[4:]
    assert _run(resumed, costs[4:], start=4) == want[4:]
    with pytest.raises(ValueError, match="'pid' λ, not a 'sgd'"):
        LagrangeMultiplier().load_state_dict(state)
    with pytest.raises(ValueError, match="'sgd' λ, not a 'pid'"):
        PIDLagrangeMultiplier().load_state_dict(LagrangeMultiplier().state_dict())
    old_sgd = LagrangeMultiplier().state_dict()
    del old_sgd["controller"]  # a checkpoint from before the PID controller
    LagrangeMultiplier().load_state_dict(old_sgd)


def test_make_multiplier_picks_the_controller():
    cfg = PPOConfig(
        lambda_controller="pid",
        pid_kp=0.2,
        pid_ki=0.3,
        pid_kd=0.4,
        pid_ema_p=0.1,
        pid_ema_d=0.2,
        pid_delay=6,
        lambda_max=3.0,
        cost_threshold=-1.5,
        lambda_update_delay=2,
    )
    pid = make_multiplier("lagrangian", cfg)
    assert isinstance(pid, PIDLagrangeMultiplier)
    assert (pid.kp, pid.ki, pid.kd, pid.ema_p, pid.ema_d) == (0.2, 0.3, 0.4, 0.1, 0.2)
    assert pid.cost_history.maxlen == 6 and pid.max_value == 3.0 and pid.threshold == -1.5
    assert pid.delay == 2 and pid.value == cfg.lambda_init
    assert type(make_multiplier("lagrangian", PPOConfig())) is LagrangeMultiplier
    # λ ≡ 0 and a fixed λ have no controller
    for kind, value in (("reward_only", 0.0), ("fixed_lambda", cfg.lambda_init)):
        fixed = make_multiplier(kind, cfg)
        assert type(fixed) is LagrangeMultiplier
        fixed.record([9.0])
        fixed.update(5)
        assert fixed.value == value


# --- config and grid -----------------------------------------------------------------------------
def test_pid_config_is_validated():
    for changes, field in (
        ({"lambda_controller": "adam"}, "lambda_controller"),
        ({"lambda_controllers": ("sgd", "sgd")}, "lambda_controllers"),
        ({"lambda_controllers": ("sgd", "pd")}, "lambda_controllers"),
        ({"pid_kp": -0.1}, "pid_kp"),
        ({"pid_ki": -1}, "pid_ki"),
        ({"pid_kd": float("nan")}, "pid_kd"),
        ({"pid_ema_p": 1.0}, "pid_ema_p"),
        ({"pid_ema_d": -0.5}, "pid_ema_d"),
        ({"pid_delay": 0}, "pid_delay"),
        ({"pid_delay": 2.5}, "pid_delay"),
    ):
        with pytest.raises(ConfigError, match=f"PPOConfig.{field} = "):
            PPOConfig(**changes)
    cfg = PPOConfig.from_dict({"lambda_controllers": "sgd,pid"})  # CLI / old-file string form
    assert cfg.lambda_controllers == ("sgd", "pid") and cfg.to_dict()["lambda_controllers"] == [
        "sgd",
        "pid",
    ]


def test_the_default_grid_and_names_do_not_change():
    names = [run.name for run in PPOConfig().runs()]
    assert names == [
        "lagrangian",
        "reward_only",
        "lagrangian_d-1",
        "fixed_lambda_1",
        "lagrangian_seed1",
        "lagrangian_seed2",
        "reward_only_seed1",
        "reward_only_seed2",
        "lagrangian_d-1_seed1",
        "lagrangian_d-1_seed2",
        "fixed_lambda_1_seed1",
        "fixed_lambda_1_seed2",
    ]
    assert all(run.controller == "sgd" for run in PPOConfig().runs())
    # a run stored before the controller existed reads back as an SGD run
    old = PPORun.from_dict({"kind": "lagrangian", "threshold": -1.0, "seed_offset": 0})
    assert old == PPORun("lagrangian", threshold=-1.0) and old.name == "lagrangian_d-1"


def test_grid_of_both_controllers():
    cfg = PPOConfig(
        kinds=("lagrangian", "reward_only"),
        thresholds=(-2.5, -1.0),
        fixed_lambdas=(1.0,),
        lambda_controllers=("sgd", "pid"),
        seeds=2,
    )
    runs = {run.name: run for run in cfg.runs()}
    assert list(runs) == [
        "lagrangian",
        "reward_only",
        "lagrangian_d-2.5",
        "lagrangian_d-1",
        "fixed_lambda_1",
        "lagrangian_pid",
        "lagrangian_pid_d-2.5",
        "lagrangian_pid_d-1",
        *(f"{n}_seed1" for n in ("lagrangian", "reward_only", "lagrangian_d-2.5")),
        *(f"{n}_seed1" for n in ("lagrangian_d-1", "fixed_lambda_1", "lagrangian_pid")),
        "lagrangian_pid_d-2.5_seed1",
        "lagrangian_pid_d-1_seed1",
    ]
    pid = runs["lagrangian_pid_d-1_seed1"]
    assert (pid.kind, pid.controller, pid.family, pid.point) == (
        "lagrangian",
        "pid",
        "lagrangian_pid",
        "lagrangian_pid_d-1",
    )
    run_cfg = cfg.run_config(pid)
    assert (run_cfg.lambda_controller, run_cfg.cost_threshold, run_cfg.seed) == ("pid", -1.0, 1)
    assert cfg.run_config(runs["lagrangian_d-1"]).lambda_controller == "sgd"
    assert cfg.run_config(runs["reward_only"]) == cfg
    assert runs["lagrangian"].family == "lagrangian" and runs["reward_only"].family == "reward_only"
    assert PPORun.from_dict(pid.to_dict()) == pid
    # the single field alone trains every learned λ with PID, the baselines as they were
    alone = [run.name for run in PPOConfig(lambda_controller="pid", seeds=1).runs()]
    assert alone == ["lagrangian_pid", "reward_only", "lagrangian_pid_d-1", "fixed_lambda_1"]
    with pytest.raises(ConfigError, match="only a lagrangian run"):
        PPORun("reward_only", controller="pid")
    with pytest.raises(ConfigError, match="controller must be one of"):
        PPORun("lagrangian", controller="lqr")


def test_pid_point_is_its_own_family_in_the_analysis():
    from workbench.eval.analyze import FAMILIES, System, headline

    assert "lagrangian_pid" in FAMILIES
    assert System("lagrangian_pid_d-1", "lagrangian_pid", -1.0).label == "lagrangian PID d=-1"
    assert System("lagrangian_d-1", "lagrangian", -1.0).label == "lagrangian d=-1"
    ci = {
        f"win_rate_{k}_vs_base{s}": (0.5 if not s else [0.4, 0.6])
        for k in ("safe", "helpful")
        for s in ("", "_ci")
    }
    point = {"helpfulness": 1.0, "safety_rate": 0.9, **ci}
    metrics = {
        "base": {"helpfulness": 1.0, "safety_rate": 0.8},
        "variants": {"lagrangian_pid": {**point, "family": "lagrangian_pid"}},
    }
    assert headline(metrics)["system"] == "lagrangian_pid"  # no SGD point: PID's
    metrics["variants"]["lagrangian_d-1"] = {**point, "family": "lagrangian"}
    assert headline(metrics)["system"] == "lagrangian_pid"  # the first learned-λ point
    metrics["variants"] = {"lagrangian": {**point, "family": "lagrangian"}, **metrics["variants"]}
    assert headline(metrics)["system"] == "lagrangian"


# --- λ's per-run metrics -------------------------------------------------------------------------
def _entries(lambdas, costs, d=-2.0):
    return [
        {"step": t, "lagrange/lambda": lam, "lagrange/J_C": c, "lagrange/threshold": d}
        for t, (lam, c) in enumerate(zip(lambdas, costs, strict=True))
    ]


def test_lambda_metrics_by_hand():
    # d = -2: J_C - d = 0.5, -0.2, 0.1, -1.0 -> 2 of 4 above d, area 0.5 + 0.1
    log = _entries([1.0, 2.0, 1.6, 0.8], [-1.5, -2.2, -1.9, -3.0])
    log.insert(1, {"step": 1, "skipped": "non-finite scores"})  # left out
    log.insert(0, {"step": -1, "lagrange/lambda": 9.0, "lagrange/J_C": float("nan")})  # no J_C
    m = lambda_metrics(log)
    assert m == pytest.approx(
        {
            "lambda_peak": 2.0,
            "lambda_overshoot": 2.5,
            "violation_share": 0.5,
            "violation_area": 0.6,
        }
    )
    # J_C exactly at d is not a violation; λ that ends at 0 after a peak: overshoot None (∞)
    m = lambda_metrics(_entries([0.5, 0.0], [-2.0, -2.5]))
    assert m["violation_share"] == 0.0 and m["violation_area"] == 0.0
    assert m["lambda_overshoot"] is None and m["lambda_peak"] == 0.5
    # λ ≡ 0 (reward_only): no overshoot, and its violations of the unenforced d still count
    m = lambda_metrics(_entries([0.0, 0.0], [1.0, 0.0]))
    assert m == {
        "lambda_peak": 0.0,
        "lambda_overshoot": 1.0,
        "violation_share": 1.0,
        "violation_area": 5.0,
    }
    assert lambda_metrics([]) == dict.fromkeys(
        ("lambda_peak", "lambda_overshoot", "violation_share", "violation_area")
    )


# --- the λ figure --------------------------------------------------------------------------------
def test_lambda_figure_tells_pid_from_sgd(tmp_path):
    from workbench.eval.tradeoff import FAMILY_COLOURS, lambda_figure
    from workbench.runs import write_jsonl

    for run, lam in (("lagrangian", 1.0), ("lagrangian_pid", 2.0), ("lagrangian_pid_seed1", 3.0)):
        (tmp_path / "ppo" / run).mkdir(parents=True)
        write_jsonl(tmp_path / "ppo" / run / "log.jsonl", _entries([lam, lam], [-1.0, -3.0]))
    base = {"helpfulness": 1.0, "safety_rate": 0.5}
    metrics = {
        "base": base,
        "variants": {
            "lagrangian": {**base, "family": "lagrangian", "setting": -2.0, "runs": ["lagrangian"]},
            "lagrangian_pid": {
                **base,
                "family": "lagrangian_pid",
                "setting": -2.0,
                "label": "lagrangian PID d=-2",
                "runs": ["lagrangian_pid", "lagrangian_pid_seed1"],
            },
        },
    }
    metrics["variants"]["lagrangian"]["label"] = "lagrangian d=-2"
    fig = lambda_figure(metrics, tmp_path)
    lam = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in lam] == [
        "lagrangian d=-2",
        "lagrangian PID d=-2",
        "lagrangian PID d=-2",
    ]
    sgd, pid = lam[0], lam[1]
    assert sgd.line.dash == "solid" and pid.line.dash == "dot"
    assert sgd.line.color != pid.line.color
    assert FAMILY_COLOURS["lagrangian_pid"] != FAMILY_COLOURS["lagrangian"]
    del metrics["variants"]["lagrangian"]  # PID points alone
    assert [t.name for t in lambda_figure(metrics, tmp_path).data if t.xaxis == "x"] == [
        "lagrangian PID d=-2",
        "lagrangian PID d=-2",
    ]


# --- one PPO run under the PID controller (slow) -------------------------------------------------
@pytest.mark.slow
def test_smoke_ppo_run_with_the_pid_controller(smoke_score_runs, tmp_path):
    import workbench as wb
    from workbench.stages.ppo import role_models
    from workbench.train.ppo_lagrangian import train_run

    run_dir = smoke_score_runs[0]
    cfg = PPOConfig.smoke().replace(
        lambda_controller="pid", max_steps=3, checkpoint_every=2, n_eval_prompts=4
    )
    out = tmp_path / "lagrangian_pid"
    out.mkdir()
    m = train_run(
        "lagrangian", cfg, wb.load_data(run_dir), role_models(cfg, run_dir), out, progress=False
    )
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3
    assert {"lagrange/pid_p", "lagrange/pid_i", "lagrange/pid_d", "lagrange/lambda"} <= set(log[0])
    for e in log:  # λ is the clipped sum of its three logged terms
        total = e["lagrange/pid_p"] + e["lagrange/pid_i"] + e["lagrange/pid_d"]
        assert e["lagrange/lambda"] == pytest.approx(min(cfg.lambda_max, max(0.0, total)))
    assert m["lambda_controller"] == "pid" and m["lambda_final"] == log[-1]["lagrange/lambda"]
    assert m["lambda_peak"] == max(e["lagrange/lambda"] for e in log)
    excess = [e["lagrange/J_C"] - cfg.cost_threshold for e in log]
    assert m["violation_share"] == pytest.approx(sum(x > 0 for x in excess) / 3)
    assert m["violation_area"] == pytest.approx(sum(max(0.0, x) for x in excess))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["lagrange"]["controller"] == "pid"
    assert state["lagrange"]["lambda"] == log[1]["lagrange/lambda"]
