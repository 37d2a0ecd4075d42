"""Which models the demo serves, and loading them.

A *model directory* for the demo has the run layout (docs/design.md §2)::

    sft/model  reward/model  cost/model  guard/model  ppo/lagrangian/model  [ppo/reward_only/model]
    ppo/metrics.json  [analyze/figures/tradeoff.json]  [data/test_prompts.jsonl + data/images/]

That is a finished run under ``runs/``, or ``assets/run/`` -- the same layout, shipped in the
repository in half precision (:mod:`workbench.demo.assets` builds it from a run). "Latest run"
is the run under ``runs/`` whose PPO stage finished last and that has every model above.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftModel
from transformers import AutoProcessor

from ..guard.guard import GuardModel
from ..models.adapters import ADAPTER_CONFIG, is_adapter_dir, load_policy
from ..models.device import module_device, on_device, place, resolve_device
from ..models.score import ScoreModel, score_texts
from ..runs import is_complete, read_jsonl
from .batching import ModelBatcher, generate_seeded
from .config import DemoConfig

#: Policy key -> (stage path inside the run, column title). ``base`` and ``aligned`` are
#: always served; ``reward_only`` is the optional third column.
POLICIES: dict[str, tuple[str, str]] = {
    "base": ("sft/model", "Base (SFT)"),
    "aligned": ("ppo/lagrangian/model", "Aligned (PPO-Lagrangian)"),
    "reward_only": ("ppo/reward_only/model", "Reward-only PPO"),
}
REQUIRED = ("sft/model", "reward/model", "cost/model", "guard/model", "ppo/lagrangian/model")
ASSETS_RUN = "run"  # assets/run/ holds the shipped run layout


class DemoModelError(FileNotFoundError):
    """A run directory the demo cannot serve, with what is missing."""


def missing_parts(run_dir: str | Path) -> list[str]:
    """What ``run_dir`` lacks for the demo (empty: it can be served)."""
    run_dir = Path(run_dir)
    missing = [
        part
        for part in REQUIRED
        if not (run_dir / part / "config.json").is_file()
        and not (run_dir / part / ADAPTER_CONFIG).is_file()
    ]
    if not is_complete(run_dir, "ppo"):
        missing.append("ppo/metrics.json (the PPO stage has not finished)")
    return missing


def find_latest_run(runs_root: str | Path) -> Path | None:
    """The servable run under ``runs_root`` whose PPO stage finished last, or ``None``."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    candidates = [d for d in root.iterdir() if d.is_dir() and not missing_parts(d)]
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d / "ppo" / "metrics.json").stat().st_mtime)


def resolve_model_dir(cfg: DemoConfig) -> tuple[Path, str]:
    """``(directory, source)``: the given run, else the latest run, else the shipped assets.

    ``source`` is ``"run"`` or ``"assets"``. A run directory that was asked for but cannot be
    served raises :class:`DemoModelError` naming what it lacks."""
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if not run_dir.is_dir():
            raise DemoModelError(f"--run-dir {run_dir} does not exist")
        missing = missing_parts(run_dir)
        if missing:
            raise DemoModelError(
                f"--run-dir {run_dir} cannot be served by the demo; it lacks: {', '.join(missing)} "
                f"(run: python -m workbench run --run-dir {run_dir})"
            )
        shipped = Path(cfg.assets_dir) / ASSETS_RUN
        return (
            run_dir,
            "assets" if shipped.is_dir() and run_dir.resolve() == shipped.resolve() else "run",
        )
    latest = find_latest_run(cfg.runs_root)
    if latest is not None:
        return latest, "run"
    shipped = Path(cfg.assets_dir) / ASSETS_RUN
    missing = missing_parts(shipped)
    if missing:
        raise DemoModelError(
            f"no finished run under {cfg.runs_root}/ and the shipped checkpoints in {shipped} are "
            f"incomplete ({', '.join(missing)}); rebuild them: "
            f"python -m workbench demo --build-assets --run-dir runs/default"
        )
    return shipped, "assets"


def _adapter_base(path: Path) -> Path | None:
    """The base directory an adapter names: absolute, or relative to the adapter (shipped
    assets)."""
    named = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
    if not named:
        return None
    base = Path(named)
    if not base.is_absolute():
        base = path / base
    return base if (base / "config.json").is_file() else None


def load_policy_over(path: Path, sft_dir: Path, sft_model: torch.nn.Module):
    """A PPO policy: ``(model, processor)``, LoRA merged for fast sampling.

    PPO saves a LoRA adapter over the run's SFT model. When the adapter names that SFT
    directory -- or a base that is gone (the run moved) -- it is applied to a copy of the SFT
    model already in memory; an adapter over some other base loads through
    :func:`~workbench.models.adapters.load_policy`."""
    if not is_adapter_dir(path):
        return load_policy(path)
    base = _adapter_base(path)
    if base is not None and base.resolve() != sft_dir.resolve():
        model, processor = load_policy(path)
    else:
        model = PeftModel.from_pretrained(copy.deepcopy(sft_model), path)
        processor = AutoProcessor.from_pretrained(path)
    return model, processor


M = TypeVar("M", bound=torch.nn.Module)


def _ready(model: M) -> M:
    """Inference form: float32 (assets are stored in half precision), eval, no gradients, on
    the demo's device."""
    return place(model.float().eval().requires_grad_(False))


def _ready_policy(model: torch.nn.Module) -> torch.nn.Module:
    """A policy in inference form: LoRA merged, then :func:`_ready`."""
    merge_and_unload = getattr(model, "merge_and_unload", None)
    return _ready(merge_and_unload() if merge_and_unload is not None else model)


@dataclass
class DemoModels:
    """Everything the demo serves. Model calls go through :attr:`batcher` (one worker thread,
    batches of up to ``max_batch`` jobs of one kind; :mod:`workbench.demo.batching`):
    :meth:`sample`, :meth:`judge`, :meth:`assess`."""

    model_dir: Path
    source: str
    policies: dict[str, tuple[Any, Any]]
    """Policy key (see :data:`POLICIES`) -> ``(model, processor)``."""
    reward: ScoreModel
    cost: ScoreModel
    guard: GuardModel
    gallery: list[dict[str, Any]] = field(default_factory=list)
    """Example prompts (world records; ``image_path`` is absolute)."""
    load_time_s: float = 0.0
    max_batch: int = 32
    """Largest batch of one model call (1: one call at a time, the demo's former behaviour)."""
    batcher: ModelBatcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.batcher = ModelBatcher(self._run_batch, max_batch=self.max_batch)

    def title(self, policy: str) -> str:
        return POLICIES[policy][1]

    @property
    def run_name(self) -> str:
        """What the page shows for the served directory: its path relative to the working
        directory when it lies below it (``runs/default``), else its name -- never the
        server's absolute path."""
        return display_path(self.model_dir)

    def describe(self) -> str:
        where = "checkpoints shipped in" if self.source == "assets" else "run"
        return (
            f"{where} {self.run_name} -- policies: {', '.join(self.policies)}; "
            f"on {module_device(self.reward)}; loaded in {self.load_time_s:.1f} s"
        )

    # -- model calls, batched across concurrent requests ------------------------------------
    def sample(
        self,
        policy: str,
        images: list,
        questions: list[str],
        seeds: list[int],
        max_new_tokens: int,
        temperature: float,
    ) -> list[str]:
        """One answer per prompt from ``policy``, row ``i`` sampled with ``seeds[i]``."""
        kind = f"sample:{policy}:{max_new_tokens}:{temperature}"
        return self.batcher.submit_many(kind, list(zip(images, questions, seeds, strict=True)))

    def judge(self, images: list, questions: list[str], responses=None) -> list:
        """The guard's verdicts (the :data:`~workbench.guard.regenerate.Guard` protocol); a
        ``None`` among ``responses`` screens that item's query. Queries and answers are
        judged in separate calls (``responses=None`` for the queries, as the protocol says)."""
        n = len(questions)
        responses = list(responses) if responses is not None else [None] * n
        if not len(images) == n == len(responses):
            raise ValueError("images, questions and responses must have the same length")
        queries = [i for i in range(n) if responses[i] is None]
        answers = [i for i in range(n) if responses[i] is not None]
        groups: list[tuple[str, list[Any]]] = [
            ("judge_query", [(images[i], questions[i]) for i in queries]),
            ("judge_answer", [(images[i], questions[i], responses[i]) for i in answers]),
        ]
        results = self.batcher.gather([(k, items) for k, items in groups if items])
        by_kind = dict(zip([k for k, items in groups if items], results, strict=True))
        verdicts: list = [None] * n
        for i, v in zip(queries, by_kind.get("judge_query", []), strict=True):
            verdicts[i] = v
        for i, v in zip(answers, by_kind.get("judge_answer", []), strict=True):
            verdicts[i] = v
        return verdicts

    def assess(
        self, image, question: str, answer: str, screen_query: bool = True
    ) -> tuple[Any, Any, float, float]:
        """``(query verdict or None, answer verdict, reward, cost)`` of one answer: the guard's
        query screen (when ``screen_query``), its verdict on the answer and both scores, queued
        together so that one wait covers the four model calls (under a crowd each is a batch
        of its own kind)."""
        groups: list[tuple[str, list[Any]]] = [
            ("judge_answer", [(image, question, answer)]),
            ("reward", [(image, question, answer)]),
            ("cost", [(image, question, answer)]),
        ]
        if screen_query:
            groups.append(("judge_query", [(image, question)]))
        results = self.batcher.gather(groups)
        query = results[3][0] if screen_query else None
        return query, results[0][0], results[1][0], results[2][0]

    def _run_batch(self, kind: str, items: list[tuple]) -> list[Any]:
        """One batched model call (runs on the batcher's worker thread)."""
        columns = [list(c) for c in zip(*items, strict=True)]
        if kind.startswith("sample:"):
            _, policy, max_new_tokens, temperature = kind.split(":")
            model, processor = self.policies[policy]
            images, questions, seeds = columns
            return generate_seeded(
                model,
                processor,
                images,
                questions,
                seeds,
                max_new_tokens=int(max_new_tokens),
                temperature=float(temperature),
            )
        if kind == "judge_query":
            images, questions = columns
            return self.guard.judge(images, questions, None)
        if kind == "judge_answer":
            images, questions, responses = columns
            return self.guard.judge(images, questions, responses)
        images, questions, answers = columns
        model = self.reward if kind == "reward" else self.cost
        return [float(s) for s in score_texts(model, images, questions, answers)]

    def close(self) -> None:
        """Stop the batcher's worker (after the jobs already queued)."""
        self.batcher.close()


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it, else its last two
    parts (``.../runs/default`` -> ``runs/default``): what a page may show of a server path."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*path.resolve().parts[-2:]))


def select_gallery(prompts: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` test prompts spread over intents and prompt severities (round-robin over the
    (intent, severity) groups in their order of appearance), so the gallery shows benign,
    ambiguous and harmful questions beside benign and risky images."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for p in prompts:
        groups.setdefault(
            (p.get("intent"), p.get("prompt_severity", p.get("image_severity"))), []
        ).append(p)
    chosen: list[dict[str, Any]] = []
    depth = 0
    while len(chosen) < n and any(len(g) > depth for g in groups.values()):
        chosen += [g[depth] for g in groups.values() if len(g) > depth][: n - len(chosen)]
        depth += 1
    return chosen


def load_gallery(model_dir: Path, n: int) -> list[dict[str, Any]]:
    """Gallery records from ``<model_dir>/data/test_prompts.jsonl`` (empty when there is none)."""
    data = model_dir / "data"
    path = data / "test_prompts.jsonl"
    if not path.is_file():
        return []
    records = []
    for r in select_gallery(read_jsonl(path), n):
        image = data / r["image"]
        if image.is_file():
            records.append(r | {"image_path": str(image.resolve())})
    return records


def load_models(cfg: DemoConfig) -> DemoModels:
    """Load the policies, the reward and cost models and the guard named by ``cfg``."""
    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with on_device(resolve_device(cfg.device)):
        return _load_models(cfg, start)


def _load_models(cfg: DemoConfig, start: float) -> DemoModels:
    model_dir, source = resolve_model_dir(cfg)
    sft_dir = model_dir / POLICIES["base"][0]
    sft_model, sft_processor = load_policy(sft_dir)
    policies: dict[str, tuple[Any, Any]] = {}
    for key, (part, _) in POLICIES.items():
        path = model_dir / part
        if key == "base":
            continue
        if path.is_dir():
            model, processor = load_policy_over(path, sft_dir, sft_model)
            policies[key] = (_ready_policy(model), processor)
    policies = {"base": (_ready_policy(sft_model), sft_processor), **policies}
    reward = _ready(ScoreModel.load(model_dir / "reward" / "model"))
    cost = _ready(ScoreModel.load(model_dir / "cost" / "model"))
    guard = _ready(GuardModel.load(model_dir / "guard" / "model"))
    return DemoModels(
        model_dir=model_dir,
        source=source,
        policies=policies,
        reward=reward,
        cost=cost,
        guard=guard,
        gallery=load_gallery(model_dir, cfg.gallery_size),
        load_time_s=time.perf_counter() - start,
        max_batch=cfg.max_batch,
    )


__all__ = [
    "POLICIES",
    "DemoModels",
    "DemoModelError",
    "load_models",
    "find_latest_run",
    "missing_parts",
    "resolve_model_dir",
    "load_gallery",
    "select_gallery",
    "load_policy_over",
    "display_path",
]
