"""PPO memory benchmark (docs/design.md §5): peak memory of one PPO-Lagrangian step in the separate
and the shared-backbone layout, beside the actor's own training memory.

    python -m workbench bench ppo [--smoke] [--out DIR] [--threads N] [--device D]

Three measurements, each in a fresh Python process (no allocator state carried over):

- ``separate`` -- ``PPOConfig()``: the actor (LoRA over the SFT model; reference = adapter
  disabled) beside full reward and cost models and two full critics trained with AdamW;
- ``shared`` -- ``PPOConfig(shared_backbone=True)``: one frozen backbone with five LoRA adapters
  (actor, reward, cost, two critics) and four score heads; reference = adapters disabled;
- ``actor_only`` -- the actor alone: one forward, backward and AdamW step of the LoRA policy on
  a batch of the same shape (prompts + sampled responses) -- the floor any layout pays.

A PPO step is one step of the real trainer (``train_run`` with ``max_steps=1`` on models
loaded beforehand): rollout, the actor, critic, reference, reward and cost passes, the losses,
backward and the optimiser steps; then it saves the actor's adapter and answers one test
prompt (small beside the step).

The model is the tiny LLaVA scaled up (``TinyVLMSpec``) so that weights dominate, with random
weights built here: nothing is downloaded and no run is needed. The reward and cost models
are the same backbone with a random head, as full models (separate layout) and as LoRA
adapters (shared layout).

Memory: the peak during the step above the process's own baseline after its imports, so it
counts the resident models, their gradients and optimiser states, and the activations. CPU:
the resident set -- glibc's mmap threshold pinned (``workbench.bench.kernels``), ``VmRSS``
after the imports is the baseline, the high-water mark is reset after loading (loading
transients do not count) and ``VmHWM`` read after the step. CUDA: ``max_memory_allocated``
(the models live on the GPU; the baseline is 0).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from ..config import DataConfig, PPOConfig
from ..data.store import ImageCache, load_data
from ..models.adapters import apply_lora
from ..models.score import ScoreModel
from ..models.vlm import TinyVLMSpec, build_tiny_vlm, count_parameters, load_vlm, save_vlm
from ..pipeline import run_stage
from ..stages.ppo import role_models
from ..train import ppo_lagrangian as ppo  # every import the step needs, before the baseline
from ..train.common import optimizer_and_schedule, optimizer_step, starting_model
from . import save_report
from .kernels import _cpu_name, _reset_cpu_peak, _status_kb, pin_mmap_threshold

DEFAULT_OUT = Path("runs/bench")
LAYOUTS = ("separate", "shared", "actor_only")
TARGET_SHARED_VS_ACTOR = 2.0
"""Issue 6: the shared layout's peak <= this times the actor's own training memory."""
DESCRIPTION = {
    "separate": "actor (LoRA) + full reward, cost and two full critics (AdamW)",
    "shared": "one frozen backbone + 5 LoRA adapters and 4 heads",
    "actor_only": "the LoRA actor alone: forward, backward, AdamW step",
}


@dataclass
class PPOBenchConfig:
    """Model size and PPO batch of one benchmark run."""

    spec: dict = field(default_factory=dict)
    """``TinyVLMSpec`` fields (the scaled-up tiny LLaVA)"""
    batch_size: int = 8
    """prompts per PPO step"""
    max_new_tokens: int = 16
    """response length limit of the rollout"""
    lora_r: int = 16
    """rank of every adapter"""


def preset(device_type: str, smoke: bool) -> PPOBenchConfig:
    """Smoke: seconds anywhere. CPU: ~0.1B parameters. CUDA: ~0.3B parameters."""
    if smoke:
        # weights (~9 MiB) still well above the few MiB of noise, so the layouts stay apart
        return PPOBenchConfig(
            spec=dict(
                vision_hidden=32,
                vision_layers=1,
                vision_heads=2,
                text_hidden=256,
                text_layers=2,
                text_heads=4,
                text_intermediate=1024,
            ),
            batch_size=2,
            max_new_tokens=4,
            lora_r=4,
        )
    if device_type == "cuda":
        return PPOBenchConfig(
            spec=dict(
                vision_hidden=512,
                vision_layers=8,
                vision_heads=8,
                text_hidden=1024,
                text_layers=16,
                text_heads=16,
                text_intermediate=4096,
            ),
            batch_size=32,
            max_new_tokens=32,
        )
    return PPOBenchConfig(
        spec=dict(
            vision_hidden=256,
            vision_layers=4,
            vision_heads=4,
            text_hidden=1024,
            text_layers=8,
            text_heads=16,
            text_intermediate=2816,
        ),
        batch_size=8,
        max_new_tokens=16,
    )


def _ppo_config(cfg: PPOBenchConfig, layout: str, threads: int):

    return PPOConfig(
        max_steps=1,
        warmup_steps=0,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        n_eval_prompts=1,
        eval_batch_size=1,
        checkpoint_every=0,
        threads=threads,
        kinds=("lagrangian",),
        lora_r=cfg.lora_r,
        lora_alpha=2 * cfg.lora_r,
        shared_backbone=layout == "shared",
    )


# --------------------------------------------------------------------------- the workspace
def build_workspace(root: Path, cfg: PPOBenchConfig) -> dict:
    """Data, a random SFT model, and reward/cost models as full models (``root/separate``) and
    as LoRA adapters (``root/shared``); both run directories share data and SFT model."""

    separate, shared = root / "separate", root / "shared"
    run_stage(
        "data",
        separate,
        DataConfig(n_train=max(8, cfg.batch_size), n_eval=4, n_test=4),
        progress=False,
    )
    model, processor = build_tiny_vlm(TinyVLMSpec(**cfg.spec), seed=0)
    params = count_parameters(model)
    sft = save_vlm(model, processor, separate / "sft" / "model")
    del model
    shared.mkdir(parents=True, exist_ok=True)
    for stage in ("data", "sft"):
        (shared / stage).symlink_to((separate / stage).resolve(), target_is_directory=True)
    targets = list(_ppo_config(cfg, "shared", 1).lora_targets)
    for n, stage in enumerate(("reward", "cost")):
        torch.manual_seed(10 + n)
        ScoreModel(load_vlm(sft)[0], processor, head_std=0.05, kind=stage).save(
            separate / stage / "model"
        )
        lora = apply_lora(load_vlm(sft)[0], targets, r=cfg.lora_r, alpha=2 * cfg.lora_r)
        ScoreModel(lora, processor, head_std=0.05, kind=stage).save(shared / stage / "model")
    return {"parameters": params, "weights_mib": round(params * 4 / 2**20, 1)}


# --------------------------------------------------------------------------- one measurement
def _warm_up_imports(workspace: Path) -> None:
    """Build, wrap and run a minute model once, so that the modules transformers and peft
    import lazily on first use are part of the baseline, not of the measured memory."""

    spec = TinyVLMSpec(
        vision_hidden=8,
        vision_layers=1,
        vision_heads=1,
        text_hidden=8,
        text_layers=1,
        text_heads=1,
        text_intermediate=8,
    )
    model, _ = build_tiny_vlm(spec)
    model = apply_lora(model, ["q_proj"], r=1, alpha=1)
    model(input_ids=torch.zeros(1, 2, dtype=torch.long)).logits.sum().backward()
    _, processor = load_vlm(workspace / "separate" / "sft" / "model")
    del model, processor
    gc.collect()


def _kb(value: int | None, what: str) -> int:
    """A ``/proc/self`` memory figure (kB) that the CPU measurement cannot do without."""
    if value is None:
        raise RuntimeError(f"cannot read {what} from /proc/self: the CPU measurement needs Linux")
    return value


def _worker(
    layout: str, workspace: Path, result: Path, threads: int, device_name: str, cfg: PPOBenchConfig
) -> None:
    """Runs in its own process: load the layout, reset the peak, run one step, write the row."""

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    pinned = not cuda and pin_mmap_threshold()
    torch.set_num_threads(threads)
    _warm_up_imports(workspace)
    baseline = 0 if cuda else _kb(_reset_cpu_peak(), "VmRSS")
    run = workspace / ("shared" if layout == "shared" else "separate")
    ppo_cfg = _ppo_config(cfg, layout, threads)
    start = time.perf_counter()
    if layout == "actor_only":
        actor, processor = starting_model(ppo_cfg.replace(policy=str(run / "sft" / "model")), None)
        actor.to(device)
        data = load_data(run)
        prompts = data.train[: cfg.batch_size]
        images = ImageCache(data)
        torch.manual_seed(0)
        ro = ppo.rollout(
            actor,
            processor,
            [images(p) for p in prompts],
            [p["question"] for p in prompts],
            cfg.max_new_tokens,
        )
        opt, sched = optimizer_and_schedule(actor, ppo_cfg)
        backend = "auto" if cuda else "torch"
    else:
        roles = ppo.make_roles(ppo_cfg, role_models(ppo_cfg, run))
        for name in ("actor", "reference", "reward", "cost", "reward_critic", "cost_critic"):
            module = getattr(roles, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(device)
    load_s = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        resident = _kb(_reset_cpu_peak(), "VmRSS")
    start = time.perf_counter()
    if layout == "actor_only":
        mask = ro["mask"].float().to(device)
        logp = ppo.sequence_logprobs(
            actor, {k: v.to(device) for k, v in ro["batch"].items()}, backend
        )
        loss = -(logp * mask).sum() / mask.sum().clamp_min(1.0)
        loss.backward()
        optimizer_step([p for p in actor.parameters() if p.requires_grad], opt, sched)
        trainable = sum(p.numel() for p in actor.parameters() if p.requires_grad)
    else:
        with tempfile.TemporaryDirectory() as out:
            ppo.train_run(
                "lagrangian",
                ppo_cfg,
                load_data(run),
                role_models(ppo_cfg, run),
                Path(out),
                progress=False,
                roles=roles,
            )
        trainable = sum(
            p.numel() for m in roles.trainable.values() for p in m.parameters() if p.requires_grad
        )
    if cuda:
        torch.cuda.synchronize(device)
        peak_bytes, resident_bytes = torch.cuda.max_memory_allocated(device), resident
    else:
        peak_bytes = (_kb(_status_kb("VmHWM"), "VmHWM") - baseline) * 1024
        resident_bytes = (resident - baseline) * 1024
    step_s = time.perf_counter() - start
    row = {
        "layout": layout,
        "what": DESCRIPTION[layout],
        "peak_mib": round(peak_bytes / 2**20, 1),
        "resident_before_step_mib": round(resident_bytes / 2**20, 1),
        "trainable_parameters": trainable,
        "load_s": round(load_s, 2),
        "step_s": round(step_s, 2),
        "mmap_threshold_pinned": bool(pinned),
    }
    result.write_text(json.dumps(row))


def measure(layout: str, workspace: Path, cfg: PPOBenchConfig, threads: int, device: str) -> dict:
    """One layout in a fresh ``python`` process; its row (with ``error`` when it failed)."""
    result = workspace / f"{layout}.json"
    cmd = [
        sys.executable,
        "-m",
        "workbench.bench.ppo",
        "--worker",
        layout,
        "--workspace",
        str(workspace),
        "--result",
        str(result),
        "--threads",
        str(threads),
        "--device",
        device,
        "--config",
        json.dumps(asdict(cfg)),
    ]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not result.is_file():
        return {
            "layout": layout,
            "what": DESCRIPTION[layout],
            "peak_mib": None,
            "error": (done.stderr or done.stdout)[-2000:],
        }
    return json.loads(result.read_text())


# --------------------------------------------------------------------------- report
def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run_bench(cfg: PPOBenchConfig, device: str, threads: int, mode: str) -> dict:
    """Build the workspace, measure every layout, return the report."""

    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        model = build_workspace(Path(tmp), cfg)
        rows = [measure(layout, Path(tmp), cfg, threads, device) for layout in LAYOUTS]
    peak = {r["layout"]: r.get("peak_mib") for r in rows}
    ratios = {
        "shared_vs_actor_only": _ratio(peak["shared"], peak["actor_only"]),
        "separate_vs_actor_only": _ratio(peak["separate"], peak["actor_only"]),
        "separate_vs_shared": _ratio(peak["separate"], peak["shared"]),
    }
    value = ratios["shared_vs_actor_only"]
    return {
        "mode": mode,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else _cpu_name(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "torch": torch.__version__,
        "threads": threads,
        "model": {**model, "spec": cfg.spec, "dtype": "float32"},
        "config": asdict(cfg),
        "method": (
            "peak of one PPO step above the process baseline after imports, each layout in a "
            "fresh process; "
            + (
                "torch.cuda.max_memory_allocated"
                if device == "cuda"
                else "CPU resident set: VmHWM (reset after loading) minus VmRSS after imports, "
                "glibc mmap threshold pinned at 128 KiB"
            )
        ),
        "rows": rows,
        "ratios": ratios,
        "targets": [
            {
                "name": "shared peak <= 2x actor-only training memory",
                "value": value,
                "target": TARGET_SHARED_VS_ACTOR,
                "passed": None if value is None else value <= TARGET_SHARED_VS_ACTOR,
            }
        ],
    }


def _fmt(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(report: dict) -> str:
    m = report["model"]
    lines = [
        f"# PPO step memory ({report['mode']}, {report['device_name']}, {report['date']})",
        "",
        f"Model: tiny LLaVA scaled up, {m['parameters'] / 1e6:.1f}M parameters "
        f"({m['weights_mib']} MiB of fp32 weights), random init; "
        f"batch {report['config']['batch_size']} "
        f"prompts, {report['config']['max_new_tokens']} new tokens, "
        f"LoRA r={report['config']['lora_r']}; "
        f"torch {report['torch']}, {report['threads']} thread(s).",
        "",
        "| layout | what is trained / resident | peak MiB | × actor-only "
        "| before step MiB | step s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    actor = next((r.get("peak_mib") for r in report["rows"] if r["layout"] == "actor_only"), None)
    for r in report["rows"]:
        lines.append(
            f"| {r['layout']} | {r['what']} | {_fmt(r.get('peak_mib'))} | "
            f"{_fmt(_ratio(r.get('peak_mib'), actor), 2)} | "
            f"{_fmt(r.get('resident_before_step_mib'))} | "
            f"{_fmt(r.get('step_s'), 2)} |"
        )
    lines.append("")
    for t in report["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["passed"]]
        lines.append(f"Target: {t['name']}: {_fmt(t['value'], 2)}x — {verdict}.")
    lines += ["", f"Method: {report['method']}."]
    if report["device"] == "cpu":
        lines += [
            "",
            "safetensors weights are memory-mapped: they join the resident set when first read, "
            "so 'before step' stays low for the layouts loaded just before the step (the "
            "actor-only row has already sampled its batch) and the peak counts every weight the "
            "step reads.",
        ]
    for r in report["rows"]:
        if r.get("error"):
            lines.append(f"\nerror in {r['layout']}:\n```\n{r['error']}\n```")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line
def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m workbench bench ppo", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--smoke", action="store_true", help="a tiny model, seconds on CPU")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory for ppo.json and ppo.md (default {DEFAULT_OUT})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads in each measured process (default 1)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when available",
    )
    p.add_argument("--worker", choices=LAYOUTS, help=argparse.SUPPRESS)
    p.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: measure, print the table, save ``ppo.json`` and ``ppo.md``."""

    args = _parse(list(sys.argv[1:] if argv is None else argv))

    hf_logging.disable_progress_bar()  # loading and saving bars of every model
    if args.worker:
        _worker(
            args.worker,
            args.workspace,
            args.result,
            args.threads,
            args.device,
            PPOBenchConfig(**json.loads(args.config)),
        )
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = (
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    mode = "smoke" if args.smoke else "full"
    report = run_bench(preset(device, args.smoke), device, args.threads, mode)
    save_report(args.out, "ppo", report, render_markdown(report))
    failed = [r for r in report["rows"] if r.get("error")]
    for r in failed:
        print(f"error: {r['layout']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
