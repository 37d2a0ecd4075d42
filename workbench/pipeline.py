"""Stages and the pipeline: resolve a stage's config, run it into its run directory, resume.

``run_stage`` is what the CLI, ``make run`` and the notebooks call. A stage function has the
signature ``fn(config, out_dir, run_dir, progress) -> metrics`` and writes its artifacts into
``out_dir`` (the stage's partial directory); the pipeline adds ``config.json``,
``metrics.json`` (with the stage's wall time) and moves the directory into place.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import CONFIGS, StageConfig
from .runs import (
    DEFAULT_RUN_DIR,
    atomic_write_json,
    begin_stage,
    finish_stage,
    is_complete,
    load_metrics,
    partial_dir,
    stage_dir,
)

#: Written into the partial directory of a resumable stage: the config its checkpoints belong to.
RESUME_CONFIG = "resume_config.json"
#: Every stage of the design, in pipeline order.
STAGE_ORDER = ("data", "sft", "reward", "cost", "guard", "ppo", "analyze")
#: Stages that exist today: name -> "module:function". Later stages register here.
STAGE_FUNCTIONS: dict[str, str] = {
    "data": "workbench.data.stage:run_data_stage",
    "sft": "workbench.train.sft:run_sft_stage",
    "reward": "workbench.train.preference:run_reward_stage",
    "cost": "workbench.train.preference:run_cost_stage",
    "guard": "workbench.guard.stage:run_guard_stage",
    "ppo": "workbench.train.ppo_lagrangian:run_ppo_stage",
    "analyze": "workbench.eval.analyze:run_analyze_stage",
}


#: The earlier stages whose outputs each stage reads.
READS: dict[str, tuple[str, ...]] = {
    "sft": ("data",), "reward": ("data", "sft"), "cost": ("data", "sft"), "guard": ("data", "sft", "cost"),
    "ppo": ("data", "sft", "reward", "cost"), "analyze": ("data", "sft", "reward", "cost", "guard", "ppo"),
}


class StageUnavailable(RuntimeError):
    """A stage of the design that this version of the workbench does not implement yet."""


def available_stages() -> list[str]:
    return [s for s in STAGE_ORDER if s in STAGE_FUNCTIONS]


def stage_function(stage: str) -> Callable[..., dict[str, Any]]:
    if stage not in STAGE_ORDER:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_ORDER)}")
    if stage not in STAGE_FUNCTIONS:
        raise StageUnavailable(f"stage '{stage}' is not implemented yet; available: {', '.join(available_stages())}")
    module, func = STAGE_FUNCTIONS[stage].split(":")
    return getattr(importlib.import_module(module), func)


def config_class(stage: str) -> type[StageConfig]:
    stage_function(stage)  # the same clear error for unknown / unavailable stages
    return CONFIGS[stage]


def resolve_config(stage: str, smoke: bool = False, config_file: str | Path | None = None,
                   seed: int | None = None, **overrides: Any) -> StageConfig:
    """Defaults (or the ``smoke()`` preset) < ``config_file`` < ``seed`` and ``overrides``."""
    cls = config_class(stage)
    cfg = cls.smoke() if smoke else cls()
    if config_file is not None:
        cfg = cls.from_json(config_file, base=cfg)
    if seed is not None:
        overrides["seed"] = seed
    return cls.from_dict(overrides, base=cfg) if overrides else cfg


def run_stage(stage: str, run_dir: str | Path = DEFAULT_RUN_DIR, config: StageConfig | None = None, *,
              smoke: bool = False, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run ``stage`` into ``run_dir/<stage>/`` and return its metrics.

    Skips the work and returns the saved metrics when the stage already finished with the
    same config (resume); ``force`` runs it again. The finished directory appears only when
    the stage completed (it is built in ``<stage>.partial/``).
    """
    fn = stage_function(stage)
    cfg = config if config is not None else resolve_config(stage, smoke=smoke)
    run_dir = Path(run_dir)
    cfg_dict = cfg.to_dict()
    fn_stage, stage = stage, getattr(cfg, "out_stage", stage)  # analyze --prompts eval -> analyze_eval/
    if not force and is_complete(run_dir, stage, cfg_dict):
        if progress:
            print(f"[{stage}] complete in {stage_dir(run_dir, stage)} (same config): skipped; --force reruns it")
        return load_metrics(run_dir, stage)
    from .train.distributed import distributed

    dist = distributed()
    if dist.enabled and not getattr(fn, "distributed", False):
        raise ValueError(f"stage '{fn_stage}' runs in one process; launch only multi-process stages (ppo) with "
                         f"accelerate, e.g. accelerate launch --num_processes 2 -m workbench ppo")
    progress = progress and dist.is_main
    resumable = getattr(fn, "resumable", False)
    resume = resumable and not force and _partial_config(run_dir, stage) == cfg_dict
    if dist.is_main:  # one process owns the stage directory
        out_dir = begin_stage(run_dir, stage, fresh=not resume)
        if resumable:
            atomic_write_json(out_dir / RESUME_CONFIG, cfg_dict)
    dist.barrier()
    out_dir = partial_dir(run_dir, stage)
    if resume and progress:
        print(f"[{stage}] resuming from the checkpoints in {out_dir}")
    start = time.perf_counter()
    try:
        metrics = fn(cfg, out_dir, run_dir, progress)
    except Exception:
        if not resumable and dist.is_main:  # a resumable stage keeps its checkpoints: rerun to resume
            _discard_partial(out_dir)
        raise
    metrics["wall_time_s"] = round(time.perf_counter() - start, 2)
    if not dist.is_main:
        dist.barrier()
        return metrics
    (out_dir / RESUME_CONFIG).unlink(missing_ok=True)
    final = finish_stage(run_dir, stage, cfg_dict, metrics)
    dist.barrier()
    if progress:
        print(f"[{stage}] done in {metrics['wall_time_s']:.1f}s -> {final}")
    return metrics


def _partial_config(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """The config a resumable stage's partial directory was started with (None if none)."""
    path = partial_dir(run_dir, stage) / RESUME_CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _discard_partial(out_dir: Path) -> None:
    """After a failure keep nothing that looks like a result -- except ``rejects.jsonl``,
    which says what was wrong with a user's input files (the error message points to it)."""
    for child in out_dir.iterdir():
        if child.name == "rejects.jsonl":
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if not any(out_dir.iterdir()):
        out_dir.rmdir()


def run_pipeline(run_dir: str | Path = DEFAULT_RUN_DIR, smoke: bool = False, force: bool = False,
                 progress: bool = True, seed: int | None = None) -> dict[str, dict[str, Any]]:
    """Every available stage in order (the ``run`` command and ``make run``).

    A stage that finished with the same config is skipped -- unless a stage it reads
    (:data:`READS`) ran again in this call: its outputs were made from the old ones."""
    results = {}
    ran: set[str] = set()
    for stage in available_stages():
        cfg = resolve_config(stage, smoke=smoke, seed=seed)
        stale = sorted(ran & set(READS.get(stage, ())))
        complete = is_complete(run_dir, stage, cfg.to_dict())
        if force or stale or not complete:
            ran.add(stage)
        if stale and complete and progress and not force:
            print(f"[{stage}] {', '.join(stale)} ran again: rerunning")
        results[stage] = run_stage(stage, run_dir, cfg, force=force or bool(stale), progress=progress)
    return results
