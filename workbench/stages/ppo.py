"""The PPO stage: every PPO run of the grid (PPO-Lagrangian, its baselines, thresholds and
seeds) from the SFT policy against the reward and cost models; resumable and distributed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..config import PPOConfig
from ..data.store import load_data
from ..runs import atomic_write_json
from ..train.distributed import distributed
from ..train.ppo_lagrangian import CHECKPOINT, train_run
from ..train.roles import RoleModels
from .base import Stage


def role_models(cfg: PPOConfig, run_dir: Path) -> RoleModels:
    """The run's SFT model (or ``cfg.policy``), reward model and cost model, with a message
    naming the command that makes a missing one."""
    run_dir = Path(run_dir)
    policy = Path(cfg.policy) if cfg.policy else run_dir / "sft" / "model"
    for stage in ("reward", "cost"):
        if not (run_dir / stage / "model").is_dir():
            raise FileNotFoundError(
                f"PPO needs the {stage} model: run python -m workbench {stage} --run-dir {run_dir}"
            )
    if not policy.is_dir():
        raise FileNotFoundError(
            f"PPO starts from the SFT model and {policy} does not exist; "
            f"run python -m workbench sft --run-dir {run_dir}"
        )
    return RoleModels(policy, run_dir / "reward" / "model", run_dir / "cost" / "model")


def run_ppo_stage(
    cfg: PPOConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench ppo``: every run of the grid (:meth:`PPOConfig.runs`), each under
    ``ppo/<run name>/``; the metrics hold each run's spec (``run``) beside its results.

    Resumable: rerunning a killed stage with the same config skips finished runs and
    continues the unfinished one from its last checkpoint."""
    dist = distributed()
    data = load_data(run_dir)
    runs: dict[str, dict[str, Any]] = {}
    for run in cfg.runs():
        run_out = out_dir / run.name
        done = run_out / "metrics.json"
        if done.is_file():
            runs[run.name] = json.loads(done.read_text())
            continue
        run_out.mkdir(parents=True, exist_ok=True)
        run_cfg = cfg.run_config(run)
        metrics = train_run(
            run.kind, run_cfg, data, role_models(run_cfg, run_dir), run_out, progress, name=run.name
        )
        runs[run.name] = {**metrics, "kind": run.kind, "run": run.to_dict()}
        if dist.is_main:
            atomic_write_json(done, runs[run.name])
            shutil.rmtree(run_out / CHECKPOINT, ignore_errors=True)
        dist.barrier()
    base = {}
    sft_metrics = run_dir / "sft" / "metrics.json"
    if sft_metrics.is_file():
        m = json.loads(sft_metrics.read_text())
        base = {"helpfulness": m.get("base_helpfulness"), "safety_rate": m.get("base_safety_rate")}
    return {"variants": runs, "base": base}


STAGE = Stage(
    "ppo",
    PPOConfig,
    run_ppo_stage,
    reads=("data", "sft", "reward", "cost"),
    resumable=True,
    distributed=True,
)
