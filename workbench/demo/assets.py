"""Build ``assets/run/``: the demo's fallback checkpoints, from a finished run.

``python -m workbench demo --build-assets --run-dir runs/default`` (or
``scripts/build_assets.py``) writes the run layout the demo loads
(:mod:`workbench.demo.models`), small enough to ship in the repository (< 20 MB):

- the SFT, reward, cost and guard models in float16 (``save_pretrained``, safetensors; the
  demo loads them back in float32);
- each PPO policy as its LoRA adapter in float16, naming its base relative to itself
  (``../../../sft/model``), so the directory can move;
- ``ppo/metrics.json`` (and the analysis stage's ``analyze/figures/tradeoff.json`` when the
  run has one) for the Trade-off tab;
- a gallery of test prompts with their images (``data/test_prompts.jsonl``, ``data/images/``);
- ``manifest.json``: source run, date, size of every file.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ..guard.guard import GuardModel
from ..models.adapters import is_adapter_dir, load_policy
from ..models.score import ScoreModel
from ..models.vlm import save_vlm
from ..runs import atomic_write_json, read_jsonl, write_jsonl
from .logic import TRADEOFF_FIGURE
from .models import ASSETS_RUN, POLICIES, missing_parts, select_gallery

#: The repository's promise: everything under assets/ stays below this.
MAX_ASSETS_BYTES = 20 * 1024 * 1024


def _half_policy(src: Path, dst: Path, base_relative: str) -> None:
    model, processor = load_policy(src)
    model = model.half()
    if hasattr(model, "peft_config"):
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_relative
        dst.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(dst, safe_serialization=True)
        processor.save_pretrained(dst)
    else:
        save_vlm(model, processor, dst)


def build_assets(
    run_dir: str | Path,
    assets_dir: str | Path,
    gallery_size: int = 12,
    max_bytes: int = MAX_ASSETS_BYTES,
) -> dict[str, Any]:
    """Write ``<assets_dir>/run/`` from ``run_dir``; returns the manifest.

    Raises ``FileNotFoundError`` naming what the run lacks, and ``ValueError`` when the
    result would exceed ``max_bytes`` (e.g. a run on a large bring-your-own VLM)."""
    run_dir, assets_dir = Path(run_dir), Path(assets_dir)
    missing = missing_parts(run_dir)
    if missing:
        raise FileNotFoundError(
            f"cannot build the demo assets from {run_dir}: it lacks {', '.join(missing)}"
        )
    adapters = [
        stage
        for stage in ("sft", "reward", "cost", "guard")
        if is_adapter_dir(run_dir / stage / "model")
    ]
    if adapters:
        raise ValueError(
            f"{run_dir}: the {', '.join(adapters)} model(s) are LoRA adapters over a separate "
            "base model (a bring-your-own VLM or --shared-backbone run); the shipped assets hold "
            "full tiny models only (serve that run with --run-dir instead)"
        )
    out = assets_dir / f"{ASSETS_RUN}.partial"
    if out.exists():
        shutil.rmtree(out)

    sft = run_dir / "sft" / "model"
    model, processor = load_policy(sft)
    save_vlm(model.half(), processor, out / "sft" / "model")
    for stage in ("reward", "cost"):
        ScoreModel.load(run_dir / stage / "model").half().save(out / stage / "model")
    GuardModel.load(run_dir / "guard" / "model").half().save(out / "guard" / "model")
    for key in ("aligned", "reward_only"):
        part = POLICIES[key][0]
        if (run_dir / part).is_dir():
            # ppo/<variant>/model -> ../../../sft/model
            _half_policy(run_dir / part, out / part, "../" * len(Path(part).parts) + "sft/model")

    (out / "ppo").mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / "ppo" / "metrics.json", out / "ppo" / "metrics.json")
    if (run_dir / TRADEOFF_FIGURE).is_file():
        (out / TRADEOFF_FIGURE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / TRADEOFF_FIGURE, out / TRADEOFF_FIGURE)

    test_prompts = run_dir / "data" / "test_prompts.jsonl"
    gallery = (
        select_gallery(read_jsonl(test_prompts), gallery_size) if test_prompts.is_file() else []
    )
    for record in gallery:
        image = out / "data" / record["image"]
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / "data" / record["image"], image)
    write_jsonl(out / "data" / "test_prompts.jsonl", gallery)

    files = {
        str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
    }
    total = sum(files.values())
    if total > max_bytes:
        shutil.rmtree(out)
        raise ValueError(
            f"the demo assets would take {total / 2**20:.1f} MB, "
            f"over the {max_bytes / 2**20:.0f} MB limit; "
            f"largest: {max(files, key=files.__getitem__)}"
        )
    manifest = {
        "source_run": str(run_dir.resolve()),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dtype": "float16",
        "gallery": len(gallery),
        "total_bytes": total,
        "files": files,
    }
    atomic_write_json(out / "manifest.json", manifest)
    final = assets_dir / ASSETS_RUN
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    return manifest


__all__ = ["build_assets", "MAX_ASSETS_BYTES"]
