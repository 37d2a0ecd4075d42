"""The data stage: the synthetic world by default, or real BeaverTails-V files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..data.beavertails import import_beavertails
from ..data.overview import write_overview
from ..data.store import load_data
from ..data.world import build_world
from .base import Stage

#: The stage's figures as one HTML page that opens offline.
OVERVIEW_FILE = "overview.html"


def run_data_stage(
    cfg: DataConfig, out_dir: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """``python -m workbench data``: build the world or import real files, then the overview."""
    if cfg.is_world:
        metrics = build_world(cfg, out_dir, progress=progress)
    else:
        metrics = import_beavertails(cfg, out_dir, progress=progress)
    write_overview(load_data(out_dir), out_dir / OVERVIEW_FILE, metrics)
    return metrics


STAGE = Stage("data", DataConfig, run_data_stage)
