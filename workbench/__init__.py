"""Safe RLHF-V Workbench: build, train, probe and demo safety-constrained RLHF for
vision-language models. ``import workbench as wb``.
"""

from __future__ import annotations

from . import config, data, runs
from .config import ConfigError, DataConfig
from .data import load_data
from .pipeline import available_stages, resolve_config, run_pipeline, run_stage, smoke_run

__version__ = "0.1.0"
__all__ = [
    "config",
    "data",
    "runs",
    "ConfigError",
    "DataConfig",
    "load_data",
    "available_stages",
    "resolve_config",
    "run_pipeline",
    "run_stage",
    "smoke_run",
]
