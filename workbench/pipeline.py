"""The pipeline: resolve a stage's config, run it into its run directory, resume.

``run_stage`` is what the CLI, ``make run`` and the notebooks call. The stages and their order
come from their declarations (:mod:`workbench.stages`). A stage's run function writes its
artifacts into the stage's partial directory; the pipeline adds ``config.json``,
``metrics.json`` (with the stage's wall time) and moves the directory into place
(the run-directory contract: docs/design.md §2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers.utils import logging as hf_logging

from .config import ConfigError, ModelStageConfig, StageConfig, read_config_file
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
from .stages import STAGE_NAMES, STAGES, Stage, get_stage
from .train.common import placement
from .train.distributed import distributed

#: Written into the partial directory of a resumable stage: the config its checkpoints belong to.
RESUME_CONFIG = "resume_config.json"


def available_stages() -> list[str]:
    """Every stage's name, in pipeline order."""
    return list(STAGE_NAMES)


def config_class(stage: str) -> type[StageConfig]:
    """The config class of ``stage`` (a clear error for an unknown stage)."""
    return get_stage(stage).config


def resolve_config(
    stage: str,
    smoke: bool = False,
    config_file: str | Path | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> StageConfig:
    """Defaults (or the ``smoke()`` preset) < ``config_file`` < ``seed`` and ``overrides``."""
    cls = config_class(stage)
    cfg = cls.smoke() if smoke else cls()
    if config_file is not None:
        cfg = cls.from_json(config_file, base=cfg)
    if seed is not None:
        overrides["seed"] = seed
    return cls.from_dict(overrides, base=cfg) if overrides else cfg


def run_stage(
    stage: str,
    run_dir: str | Path = DEFAULT_RUN_DIR,
    config: StageConfig | None = None,
    *,
    smoke: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``stage`` into ``run_dir/<stage>/`` and return its metrics.

    Skips the work and returns the saved metrics when the stage already finished with the
    same config (resume); ``force`` runs it again. The finished directory appears only when
    the stage completed (it is built in ``<stage>.partial/``). Two processes running the same
    stage into the same run take turns (:func:`stage_lock`).
    """
    spec: Stage = get_stage(stage)
    cfg = config if config is not None else resolve_config(stage, smoke=smoke)
    if not isinstance(cfg, spec.config):
        raise TypeError(
            f"stage '{stage}' takes a {spec.config.__name__}, not a {type(cfg).__name__}"
        )
    run_dir = Path(run_dir)
    folder = spec.output(cfg)  # analyze --prompts eval -> analyze_eval/
    if distributed().enabled:  # every rank runs the stage together (barriers inside)
        return _run_stage(spec, cfg, run_dir, folder, force, progress)
    with stage_lock(run_dir, folder):
        return _run_stage(spec, cfg, run_dir, folder, force, progress)


#: This process's stage locks, one object per lock file (a FileLock is reentrant per object).
_LOCKS: dict[str, FileLock] = {}


def stage_lock(run_dir: str | Path, stage: str) -> FileLock:
    """The inter-process lock of one stage folder of one run directory. Two processes that
    run the same stage into the same run (two notebooks building the shared smoke run, tests
    in parallel workers) take turns, and the second then finds the stage finished with its
    config and reuses it instead of training into the same partial folder. The lock file is
    in the system's temporary directory, never in the run directory."""
    key = hashlib.sha1(str(Path(run_dir).resolve() / stage).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "workbench-locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return _LOCKS.setdefault(str(path), FileLock(str(path)))


def _run_stage(
    spec: Stage, cfg: StageConfig, run_dir: Path, stage: str, force: bool, progress: bool
) -> dict[str, Any]:
    """:func:`run_stage` once the stage's folder is ``stage`` (and, in one process, locked)."""
    cfg_dict = cfg.to_dict()
    if not force and finished_with(run_dir, spec, cfg):
        if progress:
            print(
                f"[{stage}] complete in {stage_dir(run_dir, stage)} (same config): skipped; "
                f"--force reruns it"
            )
        return load_metrics(run_dir, stage)
    dist = distributed()
    if dist.enabled and not spec.distributed:
        raise ValueError(
            f"stage '{spec.name}' runs in one process; launch only multi-process stages (ppo) with "
            f"accelerate, e.g. accelerate launch --num_processes 2 -m workbench ppo"
        )
    progress = progress and dist.is_main
    resumable = spec.resumable
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
        with placement(cfg) as device, hf_progress_bars(progress):
            if device is not None and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            metrics = spec.run(cfg, out_dir, run_dir, progress)
    except Exception:
        if (
            not resumable and dist.is_main
        ):  # a resumable stage keeps its checkpoints: rerun to resume
            _discard_partial(out_dir)
        raise
    metrics["wall_time_s"] = round(time.perf_counter() - start, 2)
    if isinstance(cfg, ModelStageConfig):
        metrics["mixed_precision"] = cfg.mixed_precision
    if device is not None:
        metrics["device"] = str(device)
    metrics.update(peak_memory(device))
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


def finished_with(run_dir: str | Path, spec: Stage, cfg: StageConfig) -> bool:
    """True when ``spec``'s stage finished in ``run_dir`` with a config equal to ``cfg``
    (compared as configs, so a ``config.json`` written with older field names still counts)."""
    folder = spec.output(cfg)
    if is_complete(run_dir, folder, cfg.to_dict()):
        return True
    path = stage_dir(run_dir, folder) / "config.json"
    if not is_complete(run_dir, folder) or not path.is_file():
        return False
    try:
        return spec.config.from_json(path) == cfg
    except (ConfigError, TypeError):
        return False


def saved_config(run_dir: str | Path, stage: str) -> StageConfig | None:
    """The config a finished ``stage`` of ``run_dir`` ran with (None when it has not
    finished), read back as its config class."""
    spec = get_stage(stage)
    path = stage_dir(run_dir, spec.name) / "config.json"
    if not is_complete(run_dir, spec.name) or not path.is_file():
        return None
    return spec.config.from_json(path)


def pipeline_sections(config_file: str | Path | None) -> dict[str, dict[str, Any]]:
    """``run --config FILE``: one JSON object with one section per stage, e.g.
    ``{"data": {"source": "/data/bt"}, "sft": {"policy": "/models/vlm", "lora": true}}``;
    a missing file, a section that is no stage or a section that is not an object is an
    error that says so (never ignored)."""
    if config_file is None:
        return {}
    path = Path(config_file)
    sections = read_config_file(path)
    unknown = sorted(set(sections) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(
            f"run --config {path}: one section per stage ({', '.join(STAGE_NAMES)}); "
            f"not a stage: {', '.join(unknown)} (a single stage's file goes to "
            f"python -m workbench <stage> --config FILE)"
        )
    for stage, values in sections.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: section {stage!r} must be a JSON object")
    return sections


def run_pipeline(
    run_dir: str | Path = DEFAULT_RUN_DIR,
    smoke: bool = False,
    force: bool = False,
    progress: bool = True,
    seed: int | None = None,
    config_file: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Every stage in order (the ``run`` command and ``make run``).

    A stage that already finished in ``run_dir`` keeps the config it ran with (real data, a
    user's own model, any flags it was given): ``run`` never resets it to the defaults. The
    defaults (or the ``smoke`` presets) apply only to stages that have not run yet. A section
    of ``config_file`` (:func:`pipeline_sections`) or ``seed`` changes a stage's config on
    top of that, and a changed config reruns the stage. A stage that finished with its config
    is skipped -- unless ``force``, or a stage it reads (:attr:`Stage.reads`) ran again in
    this call: its outputs were made from the old ones."""
    sections = pipeline_sections(config_file)
    results = {}
    ran: set[str] = set()
    for spec in STAGES:
        stage = spec.name
        saved = saved_config(run_dir, stage)
        base = saved if saved is not None else resolve_config(stage, smoke=smoke)
        overrides = dict(sections.get(stage, {}))
        if seed is not None:
            overrides["seed"] = seed
        cfg = spec.config.from_dict(overrides, base=base) if overrides else base
        if saved is not None and progress:
            kept = "keeps its saved config" if cfg == saved else "changes its saved config"
            print(f"[{stage}] {kept} ({stage_dir(run_dir, stage) / 'config.json'})")
        stale = sorted(ran & set(spec.reads))
        complete = finished_with(run_dir, spec, cfg)
        if force or stale or not complete:
            ran.add(stage)
        if stale and complete and progress and not force:
            print(f"[{stage}] {', '.join(stale)} ran again: rerunning")
        results[stage] = run_stage(
            stage, run_dir, cfg, force=force or bool(stale), progress=progress
        )
    return results


def peak_memory(device: torch.device | None) -> dict[str, float]:
    """The stage's memory high-water marks in MiB: ``peak_rss_mib``, the process's resident
    set so far (the CPU; it includes earlier stages of the same process), and on CUDA
    ``peak_gpu_mib``, ``torch.cuda.max_memory_allocated`` since the stage began."""
    out = {"peak_rss_mib": round(_max_rss_mib(), 1)}
    if device is not None and device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _max_rss_mib() -> float:
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextlib.contextmanager
def hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Switch transformers' own progress bars ("Loading weights", "Writing model shards") on
    or off inside the block; a stage's ``progress=False`` silences only the workbench's bars,
    and in a notebook each of those bars would be one more output widget."""

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    elif enabled and not was_enabled:
        hf_logging.enable_progress_bar()
    try:
        yield
    finally:
        if was_enabled != hf_logging.is_progress_bar_enabled():
            (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def smoke_run(
    run_dir: str | Path, until: str = "analyze", threads: int = 1, progress: bool = False
) -> Path:
    """The smoke pipeline from ``data`` up to and including ``until`` in ``run_dir``: what the
    notebooks and the tests use when no finished run is at hand. Stages that already finished
    there with the same config are reused, so notebooks and tests can share one run.

    With ``progress`` each stage it trains shows its progress bars, and one last line says
    which stages were reused and how long the call took (a cold build of the whole smoke
    pipeline takes a few minutes on 2 CPU cores; a warm call, every stage reused, a second).

    ``threads`` sets torch's CPU threads for the model stages. One is the default on purpose:
    on a small machine shared with other work, torch's spinning intra-op threads made the smoke
    stages about 20x slower with 2 threads than with 1."""
    last = STAGE_NAMES.index(get_stage(until).name)
    run_dir = Path(run_dir)
    start, reused, built = time.perf_counter(), [], []
    with hf_progress_bars(progress):
        for spec in STAGES[: last + 1]:
            names = {f.name for f in dataclasses.fields(spec.config)}
            extra: dict[str, Any] = {"threads": threads} if "threads" in names else {}
            cfg = resolve_config(spec.name, smoke=True, **extra)
            if finished_with(run_dir, spec, cfg):
                reused.append(spec.name)
                continue
            run_stage(spec.name, run_dir, cfg, progress=progress)
            built.append(spec.name)
    if progress:
        took = time.perf_counter() - start
        print(
            f"smoke run {run_dir}: "
            + (f"built {', '.join(built)}" if built else "nothing to build")
            + (f"; reused {', '.join(reused)} (finished earlier)" if reused else "")
            + f" -- {took:.0f} s"
        )
    return run_dir
