"""The data stage: the synthetic world by default, or real BeaverTails-V files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DataConfig

#: The stage's figures as one HTML page that opens offline.
OVERVIEW_FILE = "overview.html"


def run_data_stage(cfg: DataConfig, out_dir: Path, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    if cfg.is_world:
        from .world import build_world

        metrics = build_world(cfg, out_dir, progress=progress)
    else:
        from .beavertails import import_beavertails

        metrics = import_beavertails(cfg, out_dir, progress=progress)
    from .explore import write_overview
    from .store import load_data

    write_overview(load_data(out_dir), out_dir / OVERVIEW_FILE, metrics)
    return metrics
