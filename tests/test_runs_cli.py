"""Configs, the run directory (atomic writes, resume) and the CLI contract (docs/design.md §2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import workbench as wb
from workbench.config import ConfigError, DataConfig
from workbench.runs import atomic_write_json, is_complete, partial_dir

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"n_train", "n_eval", "n_test", "n_rejected", "by_category", "by_severity"}


def cli(*args, cwd=ROOT):
    """``python -m workbench ARGS`` in a subprocess (exit status, stdout and stderr)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "workbench", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"DataConfig.n_train = 0"):
        DataConfig(n_train=0)
    with pytest.raises(ConfigError, match=r"heldout_fraction"):
        DataConfig(heldout_fraction=1.5)
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['n_trian'\]"):
        DataConfig.from_dict({"n_trian": 5})


def test_config_json_round_trip_and_smoke(tmp_path):
    cfg = DataConfig.smoke().replace(seed=3)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert DataConfig.from_json(path) == cfg
    assert DataConfig.smoke().n_train < DataConfig().n_train
    with pytest.raises(ConfigError, match="not found"):
        DataConfig.from_json(tmp_path / "missing.json")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_json(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_a_stage_being_run_is_locked_for_other_processes(tmp_path):
    """Two processes running one stage into one run take turns: while one holds the stage's
    lock another cannot take it (a second file handle, as another process would open); other
    stages and other runs are not locked; the lock file is not in the run directory."""
    from filelock import FileLock, Timeout

    from workbench.pipeline import stage_lock

    lock = stage_lock(tmp_path / "run", "sft")
    assert lock is stage_lock(tmp_path / "run", "sft")  # one object per stage: reentrant
    assert lock.lock_file != stage_lock(tmp_path / "run", "reward").lock_file
    assert lock.lock_file != stage_lock(tmp_path / "other", "sft").lock_file
    assert not Path(lock.lock_file).resolve().is_relative_to(tmp_path.resolve())
    with lock:
        with pytest.raises(Timeout):
            FileLock(lock.lock_file).acquire(timeout=0.2)
        with stage_lock(tmp_path / "run", "sft"):  # the holder may take it again
            pass
    with FileLock(lock.lock_file).acquire(timeout=0.2):
        pass


def test_stage_resume_skips_finished_and_reruns_changed(tmp_path):
    cfg = DataConfig.smoke()
    wb.run_stage("data", tmp_path, cfg, progress=False)
    metrics_file = tmp_path / "data" / "metrics.json"
    stamp = metrics_file.stat().st_mtime_ns
    wb.run_stage("data", tmp_path, cfg, progress=False)
    assert metrics_file.stat().st_mtime_ns == stamp  # skipped
    m = wb.run_stage("data", tmp_path, cfg.replace(n_test=50), progress=False)
    assert m["n_test"] == 50 and is_complete(tmp_path, "data", cfg.replace(n_test=50).to_dict())
    assert not partial_dir(tmp_path, "data").exists()


def test_a_killed_stage_is_not_trusted(tmp_path):
    # a stage killed mid-way leaves only its partial directory, never <stage>/metrics.json
    part = partial_dir(tmp_path, "data")
    part.mkdir(parents=True)
    (part / "train.jsonl").write_text("half a line")
    assert not is_complete(tmp_path, "data")
    wb.run_stage("data", tmp_path, DataConfig.smoke(), progress=False)
    assert is_complete(tmp_path, "data") and not part.exists()


def cli_in_process(capsys, *args) -> tuple[int, str]:
    """``workbench.cli.main(ARGS)`` in this process: its exit status and its output."""
    from workbench.cli import main

    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # tyro exits on a bad flag
        status = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.mark.slow
def test_cli_data_smoke_contract(tmp_path):
    out = cli("data", "--smoke", "--run-dir", tmp_path, "--seed", 4, "--n-test", 77)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "data" / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert all(isinstance(metrics[k], int) for k in ("n_train", "n_eval", "n_test", "n_rejected"))
    assert metrics["n_test"] == 77
    saved = json.loads((tmp_path / "data" / "config.json").read_text())
    assert saved["seed"] == 4 and saved["n_train"] == DataConfig.smoke().n_train
    assert str(tmp_path) in out.stdout  # says where the results are
    overview = (tmp_path / "data" / "overview.html").read_text()
    assert "plotly" in overview and "Pairs by harm category" in overview  # offline plots
    assert "overview.html" in out.stdout


def test_cli_config_file_then_flags(tmp_path, capsys):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"n_train": 300, "n_eval": 40, "n_test": 30, "seed": 9}))
    status, out = cli_in_process(
        capsys, "data", "--config", conf, "--run-dir", tmp_path / "r", "--n-eval", 50, "--quiet"
    )
    assert status == 0, out
    saved = json.loads((tmp_path / "r" / "data" / "config.json").read_text())
    assert (saved["n_train"], saved["n_eval"], saved["seed"]) == (300, 50, 9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "--smoke", "--source", "/no/such/beavertails"], "/no/such/beavertails"),
        (["data", "--smoke", "--image-size", "8"], "image_size"),
        (["data", "--config", "/no/such/config.json"], "config file not found"),
        (["frobnicate"], "unknown command"),
        (["demo"], "cannot be served by the demo"),
    ],
)
def test_cli_errors_are_clear(tmp_path, capsys, args, message):
    status, out = cli_in_process(capsys, *args, "--run-dir", tmp_path)
    assert status != 0
    assert message in out
    assert not (tmp_path / "data" / "metrics.json").exists()


def test_failed_stage_leaves_no_result_but_keeps_rejects(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q ?"}\n')  # every field but one missing
    with pytest.raises(ValueError, match="rejected"):
        wb.run_stage("data", tmp_path / "run", DataConfig(source=str(bad)), progress=False)
    assert not (tmp_path / "run" / "data").exists()
    left = sorted(p.name for p in partial_dir(tmp_path / "run", "data").iterdir())
    assert left == ["rejects.jsonl"]


def test_pipeline_reruns_what_follows_a_stage_that_ran_again(monkeypatch, tmp_path):
    """``run`` skips finished stages, but once one runs again every later stage follows."""
    from workbench import pipeline

    done = {
        "data": True,
        "sft": True,
        "reward": True,
        "cost": False,
        "guard": True,
        "ppo": True,
        "analyze": True,
    }
    calls = []
    monkeypatch.setattr(pipeline, "is_complete", lambda run_dir, stage, cfg=None: done[stage])
    monkeypatch.setattr(
        pipeline,
        "run_stage",
        lambda stage, run_dir, cfg, force, progress: calls.append((stage, force)),
    )
    pipeline.run_pipeline(tmp_path, smoke=True, progress=False)
    # cost runs (not finished); guard, ppo and analyze read it, reward does not
    assert calls == [
        ("data", False),
        ("sft", False),
        ("reward", False),
        ("cost", False),
        ("guard", True),
        ("ppo", True),
        ("analyze", True),
    ]
    calls.clear()
    done.update(cost=True, guard=False)  # only the guard changed: only the analysis reads it
    pipeline.run_pipeline(tmp_path, smoke=True, progress=False)
    assert calls == [
        ("data", False),
        ("sft", False),
        ("reward", False),
        ("cost", False),
        ("guard", False),
        ("ppo", False),
        ("analyze", True),
    ]


def _record_run_stage(monkeypatch, really_run=("data",)):
    """Replace ``pipeline.run_stage`` by one that records each stage's config and runs only
    ``really_run`` for real (the rest would train models)."""
    from workbench import pipeline

    real, seen = pipeline.run_stage, {}

    def run_stage(stage, run_dir, cfg, force=False, progress=True):
        seen[stage] = cfg
        return real(stage, run_dir, cfg, force=force, progress=False) if stage in really_run else {}

    monkeypatch.setattr(pipeline, "run_stage", run_stage)
    return seen


def test_run_keeps_what_the_user_made(monkeypatch, tmp_path):
    """The data-loss trap: after ``data --source <real files>``, ``run`` resolved every stage
    with its default config and replaced the user's data. A finished stage keeps its saved
    config (and its files); only stages that never ran get the defaults."""
    from workbench import pipeline

    mine = DataConfig.smoke().replace(n_test=30, seed=7)  # a user's own data stage
    wb.run_stage("data", tmp_path, mine, progress=False)
    before = {p: p.read_bytes() for p in sorted((tmp_path / "data").rglob("*")) if p.is_file()}
    seen = _record_run_stage(monkeypatch)
    pipeline.run_pipeline(tmp_path, smoke=True, progress=False)
    assert seen["data"] == mine  # not DataConfig.smoke()
    assert seen["sft"] == wb.resolve_config("sft", smoke=True)  # never ran: the preset
    after = {p: p.read_bytes() for p in sorted((tmp_path / "data").rglob("*")) if p.is_file()}
    assert after == before
    assert pipeline.saved_config(tmp_path, "data") == mine
    assert pipeline.saved_config(tmp_path, "sft") is None


def test_run_config_takes_one_section_per_stage(monkeypatch, tmp_path, capsys):
    from workbench import pipeline

    conf = tmp_path / "run.json"
    conf.write_text(json.dumps({"data": {"n_test": 40}, "ppo": {"kinds": ["reward_only"]}}))
    seen = _record_run_stage(monkeypatch, really_run=())
    pipeline.run_pipeline(tmp_path / "r", smoke=True, progress=False, config_file=conf)
    assert seen["data"] == DataConfig.smoke().replace(n_test=40)
    assert seen["ppo"].kinds == ("reward_only",) and seen["ppo"].max_steps == 4  # smoke + section
    conf.write_text(json.dumps({"n_test": 40}))  # a single stage's file is not a run config
    with pytest.raises(ConfigError, match="not a stage: n_test"):
        pipeline.run_pipeline(tmp_path / "r", smoke=True, progress=False, config_file=conf)
    status, out = cli_in_process(
        capsys, "run", "--smoke", "--run-dir", tmp_path / "r", "--config", tmp_path / "missing.json"
    )
    assert status == 2 and "config file not found" in out


def test_configs_written_with_older_field_names_still_load_and_count_as_finished(tmp_path):
    """Runs made before fields were renamed (``variants``, ``score_clip``, the guard's flat
    blocking levels) keep working: their config.json loads, and ``run`` does not retrain them."""
    from workbench import pipeline
    from workbench.config import BlockingPolicy, GuardConfig, PPOConfig
    from workbench.stages import get_stage

    old_ppo = {"variants": "lagrangian,reward_only", "score_clip": 10.0, "thresholds": "-2,-1"}
    ppo = PPOConfig.from_dict(old_ppo)
    assert (ppo.kinds, ppo.signal_clip, ppo.thresholds) == (
        ("lagrangian", "reward_only"),
        10.0,
        (-2.0, -1.0),
    )
    old_guard = {"blocking_level": "moderate", "rounds": 3, "safe_query_blocking_level": ""}
    assert GuardConfig.from_dict(old_guard).blocking == BlockingPolicy(
        level="moderate", rounds=3, safe_query_level=""
    )
    # a finished stage whose config.json has the old names is finished with the new config
    folder = tmp_path / "ppo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**PPOConfig().to_dict(), **old_ppo}))
    (folder / "metrics.json").write_text("{}")
    for key in ("kinds", "signal_clip"):
        data = json.loads((folder / "config.json").read_text())
        del data[key]
        (folder / "config.json").write_text(json.dumps(data))
    assert pipeline.finished_with(tmp_path, get_stage("ppo"), ppo)
    assert not pipeline.finished_with(tmp_path, get_stage("ppo"), ppo.replace(signal_clip=5.0))
