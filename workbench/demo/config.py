"""The demo's settings: one dataclass with a ``smoke()`` preset (tests and ``bench demo --smoke``).

It lives here rather than in ``workbench/config.py`` because the demo is not a pipeline
stage: it writes nothing into a run directory and is never resumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import BlockingPolicy, device_problem

#: Where ``build_assets`` writes and where the demo looks when no run exists.
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


@dataclass
class DemoConfig:
    """Settings of ``python -m workbench demo``."""

    run_dir: str = ""
    """Run directory whose models to load; empty: the latest finished run under ``runs_root``,
    else the checkpoints shipped in ``assets/``."""
    runs_root: str = "runs"
    """Where to look for the latest run when ``run_dir`` is empty."""
    assets_dir: str = str(ASSETS_DIR)
    """The shipped fallback checkpoints and gallery (``python -m workbench demo
    --build-assets``)."""
    host: str = "127.0.0.1"
    """Address to bind; loopback unless told otherwise."""
    port: int = 7860
    max_new_tokens: int = 40
    """Longest answer a policy may sample (the policies were trained with 40)."""
    temperature: float = 1.0
    """Sampling temperature (1.0: the policies as trained and as evaluated)."""
    blocking: BlockingPolicy = dataclasses.field(default_factory=BlockingPolicy)
    """When the guard switch is on: the guard stage's blocking policy (levels and rounds)."""
    max_question_chars: int = 300
    max_answer_chars: int = 2000
    max_image_bytes: int = 8 * 1024 * 1024
    """Largest image file accepted (bytes)."""
    max_image_side: int = 4096
    """Largest image width or height accepted (pixels)."""
    concurrency_limit: int = 64
    """Requests the queue runs at once; their model calls meet in the batcher."""
    max_batch: int = 32
    """Largest batch of one model call across concurrent requests (:mod:`workbench.demo.batching`;
    1: model calls one at a time, the demo's former behaviour, what ``bench demo`` measures as
    ``load_unbatched``)."""
    max_queue: int = 256
    """Requests waiting in the queue beyond which new ones are turned away."""
    gallery_size: int = 12
    """Examples shown from the run's test split (or the shipped gallery)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    device: str = "auto"
    """Where the models run: ``auto`` (a GPU when CUDA is present, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        if not isinstance(self.blocking, BlockingPolicy):
            raise ValueError(f"DemoConfig.blocking must be a BlockingPolicy, got {self.blocking!r}")
        for name in (
            "max_new_tokens",
            "max_question_chars",
            "max_answer_chars",
            "max_image_bytes",
            "max_image_side",
            "concurrency_limit",
            "max_batch",
            "max_queue",
            "gallery_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.temperature <= 10:
            raise ValueError(f"DemoConfig.temperature must be in (0, 10], got {self.temperature}")
        problem = device_problem(self.device)
        if problem:
            raise ValueError(f"DemoConfig.device = {self.device!r}: {problem}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"DemoConfig.port must be in 0..65535, got {self.port}")

    @classmethod
    def smoke(cls, **overrides) -> DemoConfig:
        """Short answers, two guard rounds, a small gallery, one torch thread."""
        smoke = {
            "max_new_tokens": 16,
            "blocking": BlockingPolicy(rounds=2),
            "gallery_size": 4,
            "threads": 1,
        }
        return cls(**{**smoke, **overrides})

    def replace(self, **changes) -> DemoConfig:
        return dataclasses.replace(self, **changes)
