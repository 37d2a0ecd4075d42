"""What every trainer shares: seeding and threads, the optimiser schedule, image caching,
batches over records, and the starting model of a stage (tiny VLM, a local HF VLM, LoRA)."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import AnalyzeConfig, ModelStageConfig
from ..models.adapters import apply_lora, load_policy
from ..models.device import on_device, place, resolve_device
from ..models.families import build_tiny_vlm_family


class LossScaler:
    """fp16's dynamic loss scaling (``torch.amp.GradScaler``) spread over the trainers'
    :func:`backward` and :func:`optimizer_step`: the loss is scaled before the backward pass,
    each optimiser's gradients are unscaled before clipping, a step whose gradients overflowed
    is skipped, and the scale is updated once per iteration -- at the next backward pass, after
    every optimiser of the iteration (PPO has three) has stepped with the same scale."""

    def __init__(self, device_type: str):
        self.scaler = torch.amp.GradScaler(device_type)
        self._stepped = False

    def backward(self, loss: torch.Tensor) -> None:
        if self._stepped:
            self.scaler.update()
            self._stepped = False
        self.scaler.scale(loss).backward()

    def step(self, params: list[torch.nn.Parameter], opt, max_norm: float) -> None:
        self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(opt)
        self._stepped = True


_SCALER: ContextVar[LossScaler | None] = ContextVar("workbench_loss_scaler", default=None)


@contextlib.contextmanager
def placement(cfg: Any) -> Iterator[torch.device | None]:
    """Where and in what precision a stage runs (docs/design.md §5.7): its models on the
    config's ``device`` (:func:`workbench.models.device.resolve_device`; every loader of the
    stage calls :func:`~workbench.models.device.place`), and autocast on that device for
    ``mixed_precision`` ``bf16`` or ``fp16`` (fp16 with a :class:`LossScaler`; else fp32).
    The pipeline runs a model stage inside it, so every forward pass of its trainers, of
    generation and of scoring uses both. Yields the device (``None`` for a config without a
    ``device``, e.g. the data stage)."""
    name = getattr(cfg, "device", None)
    if name is None:
        yield None
        return
    device = resolve_device(name)
    mixed = getattr(cfg, "mixed_precision", "no")
    with contextlib.ExitStack() as stack:
        stack.enter_context(on_device(device))
        if mixed in ("bf16", "fp16"):
            # no weight cache: autocast keeps the low-precision copies of the weights until its
            # outermost context exits, and a whole stage runs in one context, so cached copies
            # would hide every optimiser step from the forward passes (training would not move)
            dtype = torch.bfloat16 if mixed == "bf16" else torch.float16
            stack.enter_context(torch.autocast(device.type, dtype=dtype, cache_enabled=False))
        if mixed == "fp16":
            token = _SCALER.set(LossScaler(device.type))
            stack.callback(_SCALER.reset, token)
        yield device


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``, through the stage's loss scaler under fp16."""
    scaler = _SCALER.get()
    if scaler is None:
        loss.backward()
    else:
        scaler.backward(loss)


def setup(cfg: ModelStageConfig | AnalyzeConfig) -> None:
    """Seeds every generator and sets torch's CPU threads from the config."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def optimizer_and_schedule(
    model: torch.nn.Module, cfg: ModelStageConfig, lr_multipliers: dict[str, float] | None = None
):
    """AdamW over the trainable parameters; linear warm-up then cosine decay to 10%.

    ``lr_multipliers`` maps a parameter-name prefix to a factor on ``cfg.lr`` for the
    parameters whose names start with it (e.g. ``{"head.": 20.0}`` for a score head)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            mult = next(
                (m for prefix, m in (lr_multipliers or {}).items() if name.startswith(prefix)), 1.0
            )
            groups.setdefault(mult, []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(
        [{"params": params, "lr": cfg.lr * mult} for mult, params in groups.items()],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def optimizer_step(params, opt, sched, max_norm: float = 1.0) -> None:
    """Clip the gradient norm of ``params`` to ``max_norm``, step the optimiser and its
    schedule, and clear the gradients (after :func:`backward`)."""
    scaler = _SCALER.get()
    if scaler is None:
        torch.nn.utils.clip_grad_norm_(list(params), max_norm)
        opt.step()
    else:  # fp16: unscale, clip, and skip the step if the gradients overflowed
        scaler.step(list(params), opt, max_norm)
    sched.step()
    opt.zero_grad(set_to_none=True)


def batches(
    items: Sequence[Any],
    batch_size: int,
    steps: int,
    seed: int,
    length: Callable[[Any], int] | None = None,
    group: int = 8,
) -> Iterator[list[Any]]:
    """``steps`` batches of ``batch_size`` items, reshuffled every epoch (seeded).

    With ``length``, batches hold items of similar length (less padding, so faster steps):
    each run of ``group`` batches of a fresh shuffle is sorted by ``length``, cut into
    batches, and those come in random order. Every item is still seen once per epoch; only
    which items share a batch changes.
    """
    if not items:
        raise ValueError("batches: nothing to train on (no items)")
    rng = random.Random(seed)
    mega = batch_size * (max(1, group) if length is not None else 1)
    order: list[int] = []
    produced = 0
    while produced < steps:
        while len(order) < mega:
            fresh = list(range(len(items)))
            rng.shuffle(fresh)
            order += fresh
        take, order = order[:mega], order[mega:]
        if length is None:
            cut = [take]
        else:
            take.sort(key=lambda i: length(items[i]))
            cut = [take[i : i + batch_size] for i in range(0, mega, batch_size)]
            rng.shuffle(cut)
        for idx in cut:
            if produced == steps:
                return
            produced += 1
            yield [items[i] for i in idx]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def starting_model(cfg: ModelStageConfig, default_path: Path | None, family: str = "llava"):
    """The model a stage starts from: ``cfg.policy`` if given, else ``default_path`` (e.g. the
    run's SFT model), else a fresh tiny VLM of ``family`` (``SFTConfig.tiny_family``). With
    ``cfg.lora`` it trains through a LoRA
    adapter: the policy's own adapter when it has one (so the saved adapter still sits on the
    saved base), else a new one; without, an adapter policy is merged into full weights."""

    source = cfg.policy or default_path
    if source:
        model, processor = load_policy(source, trainable=cfg.lora)
    else:
        model, processor = build_tiny_vlm_family(family, seed=cfg.seed)
    if hasattr(model, "peft_config"):
        if cfg.lora:
            # keep training the policy's own adapter (its base stays the saved base model)
            return place(model), processor
        model = model.merge_and_unload()  # full training starts from the merged weights
    if cfg.lora:
        # the config's own default (no --lora-targets) gives way to the model's own names
        default = type(cfg).__dataclass_fields__["lora_targets"].default
        model = apply_lora(
            model,
            list(cfg.lora_targets),
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            targets_are_default=cfg.lora_targets == default,
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return place(model), processor
