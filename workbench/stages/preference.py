"""The reward and cost stages: two score models from the two preference signals (more helpful,
safer) of the data stage's pairs, each starting from the SFT model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import CostConfig, RewardConfig
from ..train.preference import train_preference
from .base import Stage


def run_reward_stage(
    cfg: RewardConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench reward``: the reward model on the more-helpful pairs."""
    return train_preference("reward", cfg, out_dir, run_dir, progress)


def run_cost_stage(
    cfg: CostConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench cost``: the cost model on the safer pairs with sign terms."""
    return train_preference("cost", cfg, out_dir, run_dir, progress)


REWARD = Stage("reward", RewardConfig, run_reward_stage, reads=("data", "sft"))
COST = Stage("cost", CostConfig, run_cost_stage, reads=("data", "sft"))
