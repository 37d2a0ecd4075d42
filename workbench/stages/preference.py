"""The reward and cost stages: two score models from the two preference signals (more helpful,
safer) of the data stage's pairs, each starting from the SFT model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import CostConfig, RewardConfig
from ..data.store import load_data
from ..runs import write_jsonl
from ..train.preference import train_preference
from .base import Stage


def initial_policy_path(kind: str, cfg: RewardConfig, run_dir: Path) -> Path | None:
    """The SFT model of the run (``None`` when ``cfg.policy`` names the start instead)."""
    if cfg.policy:
        return None
    path = Path(run_dir) / "sft" / "model"
    if not path.is_dir():
        raise FileNotFoundError(
            f"the {kind} model starts from the SFT model, and {path} does not exist; "
            f"run: python -m workbench sft --run-dir {run_dir} "
            f"(or pass --policy DIR to start from another VLM)"
        )
    return path


def run_preference_stage(
    kind: str, cfg: RewardConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Train the ``kind`` score model on the run's pairs from its SFT model; write
    ``model/`` and ``eval_scores.jsonl``."""
    data = load_data(run_dir)
    init = initial_policy_path(kind, cfg, run_dir)
    model, metrics, rows = train_preference(kind, cfg, data, init, progress)
    model.save(out_dir / "model")
    write_jsonl(out_dir / "eval_scores.jsonl", rows)
    return metrics


def run_reward_stage(
    cfg: RewardConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench reward``: the reward model on the more-helpful pairs."""
    return run_preference_stage("reward", cfg, out_dir, run_dir, progress)


def run_cost_stage(
    cfg: CostConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench cost``: the cost model on the safer pairs with sign terms."""
    return run_preference_stage("cost", cfg, out_dir, run_dir, progress)


REWARD = Stage("reward", RewardConfig, run_reward_stage, reads=("data", "sft"))
COST = Stage("cost", CostConfig, run_cost_stage, reads=("data", "sft"))
