"""The real-data smoke pipeline: time and memory of every stage on a BeaverTails-V-shaped file.

    python -m workbench bench real [--family llava_next] [--out runs/bench] [--threads N]
                                   [--device cpu|auto] [--n-records 48]

In a fresh folder ``<out>/real-<family>/`` it writes the example file
(:func:`workbench.data.beavertails.write_example_file`: the dataset's real column names and
loose types, images as PNG bytes, English text, all four severity levels), builds the
family's tiny model (:func:`workbench.models.families.build_tiny_vlm_family`, random weights,
nothing downloaded) and runs data -> sft (``--policy``, LoRA) -> reward (LoRA) -> cost (LoRA)
-> guard -> ppo -> analyze into ``run/`` in this process, with the smallest settings that
still run every code path. No gold judge anywhere: the world's oracle knows nothing of these
records, so the analysis must judge with the run's own reward and cost models; the command
fails if any stage reports a gold figure or the analysis names the gold judge.

It writes ``real.json`` and ``real.md`` into ``--out``: per stage its wall time, the device
its models ran on and the peak memory (``metrics.json``: ``wall_time_s``, ``device``,
``peak_rss_mib`` -- the process's high-water mark so far -- and on CUDA ``peak_gpu_mib``),
with the family, its parameter count, the machine and the analysis's judge.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..config import (
    AnalyzeConfig,
    CostConfig,
    DataConfig,
    GuardConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    StageConfig,
)
from ..data.beavertails import write_example_file
from ..eval.analyze import judge_label
from ..models.families import FAMILIES, FLAT_IMAGE_FAMILIES, build_tiny_vlm_family
from ..models.vlm import TinyVLMSpec, count_parameters, save_vlm
from ..pipeline import hf_progress_bars, run_stage
from . import save_report
from .kernels import _cpu_name, _status_kb

DEFAULT_FAMILY = "llava_next"
#: The tiny model's sizes: two decoder layers, one vision layer.
SPEC = TinyVLMSpec(vision_layers=1, text_layers=2, text_hidden=64, text_intermediate=128)
EXAMPLE_FILE = "beavertails.parquet"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m workbench bench real", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default=DEFAULT_FAMILY,
        help=f"the tiny VLM family (default {DEFAULT_FAMILY}: byte-level BPE tokenizer)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="default runs/bench")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--device",
        choices=("cpu", "auto"),
        default="auto",
        help="where the stages' models run (default auto: a GPU when there is one)",
    )
    p.add_argument("--n-records", type=int, default=48, help="records in the file (default 48)")
    p.add_argument("--seed", type=int, default=0, help="seed of the file and the model")
    args = p.parse_args(argv)
    if args.n_records < 8:
        p.error("--n-records must be >= 8 (every severity level twice: train and held-out pairs)")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def stage_configs(
    family: str, source: Path, policy: Path, threads: int = 1, device: str = "auto"
) -> dict[str, StageConfig]:
    """Each stage's config, in pipeline order: the smallest settings that run every code path
    (LoRA for the policy, reward and cost models; PPO-Lagrangian, one seed, one threshold)."""
    model = {"threads": threads, "device": device, "lora": True, "eval_batch_size": 8}
    return {
        "data": DataConfig(source=str(source), eval_fraction=0.2),
        "sft": SFTConfig.smoke().replace(
            policy=str(policy),
            max_steps=4,
            batch_size=4,
            n_eval_prompts=4,
            max_new_tokens=8,
            **model,
        ),
        "reward": RewardConfig.smoke().replace(max_steps=3, batch_size=4, **model),
        "cost": CostConfig.smoke().replace(max_steps=3, batch_size=4, **model),
        "guard": GuardConfig.smoke().replace(max_steps=3, batch_size=4, n_eval_prompts=2, **model),
        "ppo": PPOConfig.smoke().replace(
            kinds=("lagrangian",),
            thresholds=(0.0,),
            seeds=1,
            max_steps=2,
            batch_size=4,
            max_new_tokens=6,
            n_eval_prompts=2,
            num_minibatches=1 if family in FLAT_IMAGE_FAMILIES else 2,
            **model,
        ),
        "analyze": AnalyzeConfig.smoke().replace(
            n_prompts=4,
            bootstrap=50,
            max_new_tokens=6,
            threads=threads,
            device=device,
        ),
    }


def gold_figures(metrics: dict[str, Any]) -> list[str]:
    """The keys of a stage's metrics that name the gold oracle (none may, on real data)."""
    return sorted(k for k in metrics if "gold" in k.lower())


def machine() -> str:
    """The CPU (model name and cores) and the operating system, from ``platform``."""
    return f"{_cpu_name()}; {platform.system()} {platform.release()} ({platform.machine()})"


def run_real(
    out: Path,
    family: str = DEFAULT_FAMILY,
    threads: int = 1,
    device: str = "auto",
    n_records: int = 48,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the example file and the tiny model in a fresh ``<out>/real-<family>/`` and run
    every stage into its ``run/``; the report (``rows``: one per stage; ``error`` when a stage
    failed or a gold figure appeared, the stages after it are not run)."""
    root = Path(out) / f"real-{family}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    start = time.perf_counter()
    source = write_example_file(root / EXAMPLE_FILE, n=n_records, seed=seed)
    model, processor = build_tiny_vlm_family(family, seed=seed, spec=SPEC)
    n_params = count_parameters(model)
    with hf_progress_bars(False):
        policy = save_vlm(model, processor, root / "policy")
    del model, processor
    setup_s = round(time.perf_counter() - start, 2)
    rss_kb = _status_kb("VmRSS")  # the floor under every stage's peak: imports and set-up
    run_dir = root / "run"
    report: dict[str, Any] = {
        "family": family,
        "n_parameters": n_params,
        "n_records": n_records,
        "threads": threads,
        "device": device,
        "machine": machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "run_dir": str(run_dir),
        "setup_s": setup_s,
        "rss_before_stages_mib": None if rss_kb is None else round(rss_kb / 1024, 1),
        "rows": [],
        "judge": None,
        "judge_label": None,
        "error": None,
    }
    if torch.cuda.is_available() and device != "cpu":
        report["gpu"] = torch.cuda.get_device_name(0)
    with hf_progress_bars(False):
        for stage, cfg in stage_configs(family, source, policy, threads, device).items():
            try:
                metrics = run_stage(stage, run_dir, cfg, progress=False)
            except Exception as exc:  # reported with its stage, and the command exits 1
                report["error"] = f"stage {stage} failed: {type(exc).__name__}: {exc}"
                report["traceback"] = traceback.format_exc()
                break
            report["rows"].append(
                {
                    "stage": stage,
                    "wall_time_s": metrics.get("wall_time_s"),
                    "device": metrics.get("device", "-"),
                    "peak_rss_mib": metrics.get("peak_rss_mib"),
                    "peak_gpu_mib": metrics.get("peak_gpu_mib"),
                }
            )
            gold = gold_figures(metrics)
            if gold:
                report["error"] = f"stage {stage} reported gold figures on real data: {gold}"
                break
            if stage == "data":
                report["by_severity"] = metrics.get("by_severity")
                report["n_rejected"] = metrics.get("n_rejected")
            if stage == "analyze":
                report["judge"] = metrics.get("judge")
                report["judge_label"] = judge_label(metrics)
                if report["judge"] == "gold":
                    report["error"] = "the analysis used the gold judge on real data"
    report["total_s"] = round(setup_s + sum(r["wall_time_s"] or 0 for r in report["rows"]), 2)
    return report


def render_markdown(report: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:,.1f}" if isinstance(v, float) else str(v)

    gpu = any(r["peak_gpu_mib"] is not None for r in report["rows"])
    lines = [
        f"Family `{report['family']}` ({report['n_parameters'] / 1e6:.2f}M parameters, tiny, "
        f"random weights), {report['n_records']} records, {report['threads']} thread(s), "
        f"device {report['device']}; {report['machine']}"
        + (f"; GPU {report['gpu']}" if report.get("gpu") else "")
        + f"; torch {report['torch']}, {report['date']}.",
        "",
        "| stage | wall time s | ran on | peak RSS MiB |" + (" peak GPU MiB |" if gpu else ""),
        "|---|---:|---|---:|" + ("---:|" if gpu else ""),
        f"| setup: example file + tiny model | {num(report['setup_s'])} | - | - |"
        + (" - |" if gpu else ""),
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['stage']} | {num(r['wall_time_s'])} | {r['device']} | "
            f"{num(r['peak_rss_mib'])} |" + (f" {num(r['peak_gpu_mib'])} |" if gpu else "")
        )
    lines.append(f"| **total** | {num(report['total_s'])} | | |" + (" |" if gpu else ""))
    judge = f"`{report['judge']}` ({report['judge_label']})" if report["judge"] else "not reached"
    lines += [
        "",
        f"Analysis judge: {judge}"
        + ("" if report["error"] else "; no gold judge anywhere")
        + ". Peak RSS is the process's high-water "
        "mark so far (every stage runs in one process, so it only grows; before the first "
        f"stage, after the imports and the set-up, the process held "
        f"{num(report['rss_before_stages_mib'])} MiB); peak GPU is "
        "torch.cuda.max_memory_allocated since the stage began.",
    ]
    if report["error"]:
        lines += ["", f"**Failed**: {report['error']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run the real-data pipeline, print and save the table; 1 if a stage failed."""
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    report = run_real(
        args.out, args.family, args.threads, args.device, args.n_records, seed=args.seed
    )
    save_report(args.out, "real", report, render_markdown(report))
    print(f"run directory: {report['run_dir']}")
    if report["error"]:
        print(report.get("traceback", ""), end="", file=sys.stderr)
        print(f"error: bench real: {report['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
