"""Benchmarks: ``python -m workbench bench <name> [options]``.

Each benchmark is a module with a ``main(argv) -> int``; add new ones to :data:`BENCHES`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from ..runs import atomic_write_json, atomic_write_text

BENCHES: dict[str, str] = {
    # Triton kernels vs torch (docs/design.md §9)
    "kernels": "workbench.bench.kernels",
    # peak memory of a PPO step: separate vs shared-backbone layout (docs/design.md §5)
    "ppo": "workbench.bench.ppo",
    # the Gradio demo: start time, 32 concurrent clients, latency percentiles
    "demo": "workbench.bench.demo",
    # the GPU check: bf16 smoke pipeline, kernels, PPO memory, one table
    "gpu": "workbench.bench.gpu",
    # the real-data smoke pipeline: a BeaverTails-V-shaped file, a real VLM family, no gold judge
    "real": "workbench.bench.real",
}
"""Benchmark name -> module with ``main(argv: list[str]) -> int``."""


def save_report(out: Path, name: str, report: dict[str, Any], text: str) -> None:
    """Print a benchmark's markdown table and write ``<out>/<name>.json`` and ``.md``
    (atomically)."""

    print(text)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", report)
    atomic_write_text(out / f"{name}.md", text)
    print(f"saved {out / f'{name}.json'} and {out / f'{name}.md'}")


def _usage() -> str:
    return (
        "usage: python -m workbench bench <name> [--smoke] [options]\n"
        f"benchmarks: {', '.join(BENCHES)}\n"
        "options of one benchmark: python -m workbench bench <name> --help"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named by ``argv[0]`` with the rest of ``argv``; exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHES:
        print(
            f"error: unknown benchmark {name!r}; available: {', '.join(BENCHES)}\n{_usage()}",
            file=sys.stderr,
        )
        return 2
    return int(importlib.import_module(BENCHES[name]).main(rest))
