"""Command line: ``python -m workbench <stage> [--smoke] [--run-dir DIR] [--config FILE]
[--seed N]``.

Common flags are parsed here; every field of the stage's config dataclass becomes a flag of
its own through ``tyro`` (``--n-train 5000``, ``--source PATH``, ``--strict``), documented
with the field's docstring in ``--help``. Precedence: defaults (or ``--smoke``) < ``--config``
file < ``--seed`` and field flags. ``run`` runs every stage in order: a finished stage keeps
its saved config and is skipped, ``run --config FILE`` takes one section per stage
(:func:`workbench.pipeline.run_pipeline`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import tyro

from .bench import main as bench_main
from .config import ConfigError
from .demo.app import main as demo_main
from .eval.results import main as results_main
from .pipeline import config_class, resolve_config, run_pipeline, run_stage
from .runs import DEFAULT_RUN_DIR
from .stages import EXTRA_STAGE_NAMES, STAGE_NAMES, get_stage
from .train.distributed import distributed

COMMANDS = (*STAGE_NAMES, "run", *EXTRA_STAGE_NAMES, "demo", "bench", "results")


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--smoke", action="store_true", help="small preset that finishes in seconds")
    p.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="run directory (default: runs/default)",
    )
    p.add_argument("--config", type=Path, default=None, help="JSON file with config fields")
    p.add_argument("--seed", type=int, default=None, help="seed (overrides the config)")
    p.add_argument("--force", action="store_true", help="rerun a stage that already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _usage() -> str:
    return (
        "usage: python -m workbench <command> [--smoke] [--run-dir DIR] [--config FILE] "
        "[--seed N] [--force]\n"
        f"commands: {', '.join(COMMANDS)} (stages in pipeline order, then run = every stage; "
        f"{', '.join(EXTRA_STAGE_NAMES)}: a stage that run leaves out)\n"
        "per-stage config flags: python -m workbench <stage> --help\n"
        "results: the results table of a finished run (python -m workbench results --help)\n"
        "run: finished stages keep their saved config; run --config FILE takes one JSON "
        'section per stage (e.g. {"ppo": {"device": "cuda", "mixed_precision": '
        '"bf16"}}; configs/ has examples)\n'
        "devices: every model stage runs on --device auto (a GPU when CUDA is present, else the "
        "CPU)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "results":  # the results table of a finished run (its own flags)
        return results_main(rest)
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{_usage()}", file=sys.stderr)
        return 2
    common, rest = _common_parser().parse_known_args(rest)
    try:
        if command == "run":
            if rest in (["-h"], ["--help"]):
                print(_usage())
                return 0
            if rest:
                raise ConfigError(
                    f"'run' takes only the common flags; unexpected: {' '.join(rest)}"
                )
            results = run_pipeline(
                common.run_dir,
                smoke=common.smoke,
                force=common.force,
                progress=not common.quiet,
                seed=common.seed,
                config_file=common.config,
            )
            _print_summary(common.run_dir, results)
            return 0
        if command == "bench":
            return bench_main(argv[1:])
        if command == "demo":
            return demo_main(argv[1:])
        cfg = _stage_config(command, common, rest)
        run_stage(command, common.run_dir, cfg, force=common.force, progress=not common.quiet)
        if distributed().is_main:
            _print_summary(common.run_dir, {get_stage(command).output(cfg): None})
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _stage_config(stage: str, common: argparse.Namespace, rest: list[str]):
    base = resolve_config(stage, smoke=common.smoke, config_file=common.config, seed=common.seed)
    if not rest:
        return base

    cls = config_class(stage)
    description = (
        f"python -m workbench {stage} [--smoke] [--run-dir DIR] [--config FILE] [--seed N] "
        f"[--force] [--quiet] plus the {cls.__name__} fields below. {cls.__doc__ or ''}"
    )
    return tyro.cli(
        cls, args=rest, default=base, prog=f"python -m workbench {stage}", description=description
    )


def _count(stage_dir: Path, key: str) -> int:
    """``metrics.json[key]`` of a stage folder (0 when absent)."""
    try:
        return int(json.loads((stage_dir / "metrics.json").read_text()).get(key, 0))
    except (OSError, ValueError):
        return 0


def _print_summary(run_dir: Path, results: dict) -> None:
    print(f"\nResults are in {run_dir.resolve()}")
    for stage in results:
        d = run_dir / stage
        print(f"  {stage:8s} {d}/  (metrics: {d / 'metrics.json'})")
        rejects = _count(d, "n_rejected")
        if rejects:
            print(
                f"  {'':8s} WARNING: {rejects} input record(s) rejected; "
                f"each is listed with its field in {d / 'rejects.jsonl'}"
            )
        flagged = _count(d, "n_flagged")
        if flagged:
            print(
                f"  {'':8s} NOTE: {flagged} kept record label(s) contradict their harmless rate; "
                f"listed in {d / 'flagged.jsonl'}"
            )
        if (d / "overview.html").is_file():
            print(f"  {'':8s} plots: {d / 'overview.html'} (open in a browser)")
        if stage.removesuffix("_eval") in EXTRA_STAGE_NAMES and (d / "report.html").is_file():
            print(f"  {'':8s} report: {d / 'report.html'} (open in a browser)")
    if "data" in results:
        print(f"  browse the data: make lab -> notebooks/01_data.ipynb (run dir {run_dir})")
    analysis = next(
        (s for s in results if s.startswith("analyze")), "analyze"
    )  # analyze_eval: eval prompts
    report = run_dir / analysis / "report.html"
    if analysis in results and report.is_file():
        print(
            "\nReport (helpfulness-safety trade-off, win rates, categories, λ): "
            f"{report.resolve()}\n"
            f"  plots one by one: {report.parent / 'figures'}/*.html · "
            "notebook: notebooks/05_analysis.ipynb"
        )
