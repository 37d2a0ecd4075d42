"""The GPU check, one command for a machine with a GPU (and, in smoke mode, for CI on a CPU):

    python -m workbench bench gpu [--device cuda|cpu] [--smoke] [--out DIR] [--docs FILE]

1. the smoke pipeline, every model stage in bf16 (``--mixed-precision bf16``): each stage's
   wall time and the peak memory;
2. ``bench kernels`` (the real shapes of docs/benchmarks.md; ``--smoke``: tiny ones);
3. ``bench ppo``, both memory layouts (``--smoke``: a tiny model).

It writes ``gpu.json`` and ``gpu.md`` (one table of all three, with the device's name) into
``--out`` beside ``kernels.*`` and ``ppo.*``; ``--docs docs/benchmarks.md`` also puts the
table into that file's "GPU check" section. The pipeline's stages keep their models on the
CPU for now (docs/design.md §5.7): on a CUDA machine step 1 says so instead of pretending,
steps 2 and 3 run on the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import ModelStageConfig
from ..pipeline import hf_progress_bars, resolve_config, run_stage
from ..runs import atomic_write_text
from ..stages import STAGES
from . import save_report
from .kernels import main as kernels_main
from .ppo import main as ppo_main

#: The heading of the section ``--docs`` writes (and replaces on the next run).
DOCS_HEADING = "## GPU check (`python -m workbench bench gpu`)"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m workbench bench gpu", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default cuda")
    p.add_argument("--smoke", action="store_true", help="tiny kernel and PPO sizes (CI on CPU)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="default runs/bench")
    p.add_argument("--docs", type=Path, default=None, help="also write the table into this file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p.parse_args(argv)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU"


#: ``--smoke`` (the test suite's CPU run, which keeps the command from rotting): each stage's
#: smoke preset cut further, so the whole check takes seconds; every code path still runs.
TINY: dict[str, dict[str, Any]] = {
    "data": {"n_train": 200, "n_eval": 16, "n_test": 16},
    "sft": {"max_steps": 4, "vision_steps": 1, "caption_steps": 1, "n_eval_prompts": 4},
    "reward": {"max_steps": 2},
    "cost": {"max_steps": 2},
    "guard": {"max_steps": 2, "n_eval_prompts": 4},
    "ppo": {
        "max_steps": 2,
        "kinds": ("lagrangian",),
        "thresholds": (),
        "fixed_lambdas": (),
        "seeds": 1,
        "n_eval_prompts": 4,
    },
    "analyze": {"n_prompts": 4, "bootstrap": 50},
}


def smoke_pipeline(
    run_dir: Path, device: str, threads: int, tiny: bool = False
) -> list[dict[str, Any]]:
    """Every stage in smoke mode (``tiny``: cut further, :data:`TINY`), the model stages in
    bf16; a row per stage."""
    shutil.rmtree(run_dir, ignore_errors=True)
    rows = []
    with hf_progress_bars(False):
        for spec in STAGES:
            fields = {f for f in spec.config.field_names()}
            extra: dict[str, Any] = {"threads": threads} if "threads" in fields else {}
            if issubclass(spec.config, ModelStageConfig):
                extra["mixed_precision"] = "bf16"
            if "device" in fields:
                extra["device"] = device
            if tiny:
                extra.update(TINY.get(spec.name, {}))
            cfg = resolve_config(spec.name, smoke=True, **extra)
            start = time.perf_counter()
            metrics = run_stage(spec.name, run_dir, cfg, progress=False)
            rows.append(
                {
                    "part": "pipeline (smoke)",
                    "item": spec.name,
                    "precision": getattr(cfg, "mixed_precision", "-"),
                    "ran_on": metrics.get("device", "cpu"),
                    "time_s": round(time.perf_counter() - start, 2),
                    "peak_mib": metrics.get("peak_gpu_mib", metrics.get("peak_rss_mib")),
                }
            )
    return rows


def _sub_bench(name: str, main, out: Path, device: str, smoke: bool, threads: int) -> dict:
    argv = ["--out", str(out), "--device", device, "--threads", str(threads)]
    status = main(argv + (["--smoke"] if smoke else []))
    report = json.loads((out / f"{name}.json").read_text())
    report["status"] = status
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    rows = smoke_pipeline(args.out / "gpu-run", device, args.threads, tiny=args.smoke)
    kernels = _sub_bench("kernels", kernels_main, args.out, device, args.smoke, args.threads)
    for r in kernels["rows"]:
        rows.append(
            {
                "part": "kernels",
                "item": f"{r['op']}: {r['variant']}",
                "precision": r.get("dtype", "-"),
                "ran_on": kernels.get("device", device),
                "time_s": None if r.get("time_ms") is None else round(r["time_ms"] / 1000, 4),
                "peak_mib": r.get("peak_mib"),
                "error": r.get("error"),
            }
        )
    ppo = _sub_bench("ppo", ppo_main, args.out, device, args.smoke, args.threads)
    for r in ppo["rows"]:
        rows.append(
            {
                "part": "bench ppo",
                "item": r["layout"],
                "precision": "fp32",
                "ran_on": ppo.get("device", device),
                "time_s": r.get("step_s"),
                "peak_mib": r.get("peak_mib"),
                "error": r.get("error"),
            }
        )
    return {
        "device": device,
        "device_name": device_name(device),
        "mode": "smoke" if args.smoke else "full",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "rows": rows,
        "kernels_status": kernels["status"],
        "ppo_status": ppo["status"],
    }


def render_markdown(report: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:,.4g}" if isinstance(v, float) else str(v)

    lines = [
        f"{report['device_name']} ({report['device']}), {report['mode']} sizes, "
        f"torch {report['torch']}, {report['date']}.",
        "",
        "| part | item | precision | ran on | time (s) | peak MiB |",
        "|---|---|---|---|---:|---:|",
    ]
    for r in report["rows"]:
        item = r["item"] + (f" (error: {r['error']})" if r.get("error") else "")
        lines.append(
            f"| {r['part']} | {item} | {r['precision']} | {r['ran_on']} | {num(r['time_s'])} | "
            f"{num(r['peak_mib'])} |"
        )
    lines += [
        "",
        "Pipeline peak memory is the process's high-water mark so far (CPU) or "
        "torch.cuda.max_memory_allocated per stage (GPU); `ran on` is the device the stage "
        "put its models on (its metrics' `device`, docs/design.md §5.7).",
    ]
    return "\n".join(lines) + "\n"


def write_docs(path: Path, text: str) -> None:
    """Put ``text`` under :data:`DOCS_HEADING` in ``path``, replacing that section."""
    old = path.read_text() if path.is_file() else ""
    section = f"{DOCS_HEADING}\n\n{text}"
    if DOCS_HEADING in old:
        start = old.index(DOCS_HEADING)
        end = old.find("\n## ", start + len(DOCS_HEADING))
        new = old[:start] + section + ("\n" + old[end + 1 :] if end != -1 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, new)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run the three parts, print and save the table."""
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available (use --device cpu)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    report = run(args)
    text = render_markdown(report)
    save_report(args.out, "gpu", report, text)
    if args.docs is not None:
        write_docs(args.docs, text)
        print(f"wrote the table into {args.docs}")
    return 0 if report["kernels_status"] == 0 and report["ppo_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
