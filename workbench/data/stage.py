"""The data stage: the synthetic world by default, or real BeaverTails-V files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DataConfig


def run_data_stage(cfg: DataConfig, out_dir: Path, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    if cfg.is_world:
        from .world import build_world

        return build_world(cfg, out_dir, progress=progress)
    from .beavertails import import_beavertails

    return import_beavertails(cfg, out_dir, progress=progress)
