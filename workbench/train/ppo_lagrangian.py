"""PPO-Lagrangian (Safe RLHF-V), docs/design.md §6 -- the whole algorithm in one file.

One PPO step, for a batch of prompts x (image + question), in two phases. The rollout phase
(:func:`collect_rollout`, no gradient) gives a :class:`RolloutData` of detached tensors:

1. **Rollout.** ``y ~ π_θ(·|x)`` at ``temperature`` (:func:`rollout`); the response mask
   covers the generated tokens up to and including the first end-of-sequence token.
2. **Old log-probs, values and scores.** ``log π_old`` (the actor as it sampled) and
   ``log π_ref`` (the same weights with the LoRA adapter disabled), both at the sampling
   temperature, so that the ratio and the KL are of the distribution actually sampled; the
   critics' ``V_old,r(t)``, ``V_old,c(t)``; the frozen reward and cost models read
   ``R = r(x, y)`` and ``C = c(x, y)`` at the last real token.
3. **Per-token signals** (the KL split), with ``kl_t = log π_old(y_t) - log π_ref(y_t)`` and
   T = the last *real* response token::

       r_t = clip(-β·kl_t + [t = T]·R, ±c)        c_t = clip(+β·kl_t + [t = T]·C, ±c)

4. **Dual GAE** (γ, λ_gae) on (r, V_old,r) and (c, V_old,c): advantages A^r, A^c and returns
   G^r, G^c (``workbench.kernels.dual_gae``).

5. **λ**, once per rollout, before the updates. The episode costs C enter J_C's window; log λ
   takes one SGD step on ``-(J_C - d)·λ``, or with ``lambda_controller = "pid"`` a PID
   controller on J_C - d sets λ (:mod:`workbench.train.lagrange`), and the actor loss uses the
   new λ (the official trainer's order). The run's metrics add λ's peak and overshoot and how
   often and how far J_C exceeded d (:func:`~workbench.train.lagrange.lambda_metrics`).

Then the update phase (:func:`ppo_update`): ``ppo_epochs`` passes over the rollout, each a
seeded shuffle of its episodes cut into ``num_minibatches`` minibatches; per minibatch, one
forward pass of the actor and both critics with gradient, the losses below, backward,
gradients averaged over ranks and one optimiser step each. π_old, V_old, the advantages and
the returns stay the rollout's, so after the first update the ratio moves and both clips act
(one epoch of one minibatch is the single policy-gradient step of the official default):

6. **Actor.** ``A_t = (A^r_t - λ·A^c_t) / (1 + λ)``, ``ρ_t = exp(log π_θ - log π_old)``,
   ``L = -mean_m(min(ρ_t·A_t, clip(ρ_t, 1 ± ε)·A_t))`` (``workbench.kernels.ppo_lagrangian_loss``).
7. **Critics.** ``L = ½·mean_m(max((V - G)², (V_old + clip(V - V_old, ±ε_v) - G)²))`` each.
8. **PTX** (optional, ``ptx_coeff`` = γ_ptx > 0): the actor's loss adds ``γ_ptx · SFT loss``
   on a batch of demonstrations (``ptx_data``: the SFT data, or the responses annotated safe),
   one batch per PPO step, cut into the same number of minibatches.

The learning-rate schedules count optimiser steps: ``max_steps · ppo_epochs ·
num_minibatches`` in all, the warm-up scaled alike. Logged per PPO step, averaged over its
updates: the losses, ``ppo/ratio`` (its extremes ``ppo/ratio_min``/``_max`` over the updates),
``ppo/clipfrac`` (share of response tokens with ρ outside [1-ε, 1+ε]), ``ppo/approx_kl``
(``mean_m((ρ - 1) - log ρ)``) and ``critic/clipfrac`` (share with ``|V - V_old| > ε_v``, both
critics).

Multi-process (``accelerate launch --num_processes N -m workbench ppo``): each rank rolls out
its share of the batch, episode costs are gathered so every rank holds the same λ, and
gradients are averaged before each optimiser step (:mod:`workbench.train.distributed`).

Robustness: a checkpoint every ``checkpoint_every`` steps (atomic: trainable weights, optimiser
and schedule states, λ and its window, RNG, step) lets a killed run resume and finish with the
same number of steps; a non-finite score or loss skips the rest of its PPO step (logged) and
``max_nonfinite`` such steps in a row stop the run with a message.

Positions: for a sequence ``s`` of length L, everything lives on the shifted frame
``t = 0..L-2`` where position t predicts token ``s[t+1]``: ``log π(s[t+1] | s[:t+1])`` and the
critic's value of the state ``s[:t+1]``; the mask is the response mask shifted by one.

Variants from the same trainer: ``lagrangian`` (learned λ), ``reward_only`` (λ ≡ 0: plain
single-objective RLHF) and ``fixed_lambda`` (reward shaping with a constant λ).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import kernels
from ..config import PPO_KINDS, PPOConfig
from ..data.schema import is_world
from ..data.store import DataSplits, ImageCache
from ..models.adapters import save_policy
from ..models.judge import GoldJudge, evaluate_policy
from ..models.score import ScoreModel, last_token_index, score_texts
from ..models.vlm import encode, sampling_kwargs, sequence_logprobs
from ..runs import append_jsonl, atomic_write_text, read_jsonl, write_jsonl
from .common import (
    backward,
    batches,
    optimizer_and_schedule,
    optimizer_step,
    setup,
    starting_model,
)
from .distributed import distributed
from .lagrange import LagrangeMultiplier, PIDLagrangeMultiplier, lambda_metrics
from .roles import RoleModels, SharedRoles
from .sft import demo_length, demonstrations, encode_demos, sft_loss


# --- formulas ---------------------------------------------------------------------------------
def last_response_index(mask: torch.Tensor) -> torch.Tensor:
    """T per row: the last position with mask 1 (the last real response token)."""
    return last_token_index(mask)


def token_signals(
    kl: torch.Tensor,
    reward: torch.Tensor,
    cost: torch.Tensor,
    mask: torch.Tensor,
    kl_coeff: float,
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``r_t = clip(-β·kl_t + [t=T]·R, ±c)``, ``c_t = clip(+β·kl_t + [t=T]·C, ±c)``, zero off
    the mask.

    kl, mask [B, T]; reward, cost [B]."""
    mask = mask.to(kl.dtype)
    end = torch.zeros_like(kl)
    end.scatter_(1, last_response_index(mask)[:, None], 1.0)
    end = end * mask
    r = torch.clamp(-kl_coeff * kl + end * reward[:, None], -clip, clip) * mask
    c = torch.clamp(kl_coeff * kl + end * cost[:, None], -clip, clip) * mask
    return r, c


def critic_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """``½·mean_m(max((V - G)², (V_old + clip(V - V_old, ±ε_v) - G)²))``."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    mask = mask.to(loss.dtype)
    return 0.5 * (loss * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(x.dtype)
    return float((x * mask).sum() / mask.sum().clamp_min(1.0))


# --- model plumbing ------------------------------------------------------------------------------
@torch.no_grad()
def rollout(
    policy,
    processor,
    images: list,
    questions: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Sample one answer per prompt; returns ``batch``, the model inputs of the full sequences
    (left-padded prompt + response), ``mask`` [B, L-1] over the response on the shifted frame
    (up to and including the first end-of-sequence token), and the decoded ``texts``."""
    batch = encode(processor, images, questions, padding_side="left")
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    tok = processor.tokenizer
    was_training = policy.training
    policy.eval()
    seq = policy.generate(**batch, **sampling_kwargs(processor, max_new_tokens, temperature))
    policy.train(was_training)
    prompt_len = batch["input_ids"].shape[1]
    gen = seq[:, prompt_len:]
    is_eos = gen == tok.eos_token_id
    after_eos = (torch.cumsum(is_eos.long(), 1) - is_eos.long()) > 0
    response = (~after_eos).long()
    out: dict[str, Any] = {}
    for key, value in batch.items():  # per-token inputs grow by the response; the rest stay
        if key == "input_ids":
            out[key] = seq
        elif key == "attention_mask":
            out[key] = torch.cat([value, response], dim=1)
        elif value.dim() == 2 and value.shape == batch["input_ids"].shape:  # e.g. token_type_ids
            out[key] = torch.cat([value, torch.zeros_like(gen)], dim=1)
        else:
            out[key] = value
    full_mask = torch.cat([torch.zeros_like(batch["attention_mask"]), response], dim=1)
    texts = [
        tok.decode(g[r.bool()], skip_special_tokens=True).strip()
        for g, r in zip(gen, response, strict=True)
    ]
    return {"batch": out, "mask": full_mask[:, 1:], "texts": texts}


class Roles:
    """The six roles in the separate layout: actor (LoRA policy), reference (adapter disabled,
    or a frozen copy for a fully trained policy), frozen reward and cost models, and two
    trainable critics, each a model of its own. ``trainable`` maps the names of
    :data:`TRAINABLE` to the module whose trainable parameters are that role's.
    (``cfg.shared_backbone``: :class:`workbench.train.roles.SharedRoles`, same interface.)"""

    def __init__(self, cfg: PPOConfig, models: RoleModels):
        sft, reward_dir, cost_dir = models.policy, models.reward, models.cost
        self.actor, self.processor = starting_model(cfg.replace(policy=str(sft)), None)
        self.reference = (
            None if hasattr(self.actor, "disable_adapter") else copy.deepcopy(self.actor).eval()
        )
        if self.reference is not None:
            self.reference.requires_grad_(False)
        self.reward = ScoreModel.load(reward_dir).eval().requires_grad_(False)
        self.cost = ScoreModel.load(cost_dir).eval().requires_grad_(False)
        # trainable=True: a critic over a LoRA score model trains its adapter too, not just its head
        self.reward_critic = ScoreModel.load(reward_dir, trainable=True)
        self.cost_critic = ScoreModel.load(cost_dir, trainable=True)
        self.trainable: dict[str, torch.nn.Module] = {
            "actor": self.actor,
            "reward_critic": self.reward_critic,
            "cost_critic": self.cost_critic,
        }

    def save_actor(self, path: Path) -> Path:
        """The trained policy (its adapter, or the full model) with the processor."""
        return save_policy(self.actor, self.processor, path)

    @torch.no_grad()
    def reference_logprobs(self, batch, backend: str, temperature: float = 1.0) -> torch.Tensor:
        """``log π_ref`` at ``temperature``: the adapter disabled, or the frozen copy."""
        if self.reference is not None:
            return sequence_logprobs(self.reference, batch, backend, temperature)
        with self.actor.disable_adapter():
            return sequence_logprobs(self.actor, batch, backend, temperature)


def make_roles(cfg: PPOConfig, models: RoleModels) -> Roles | SharedRoles:
    """The separate layout, or every role on one backbone when ``cfg.shared_backbone``."""
    return SharedRoles(cfg, models) if cfg.shared_backbone else Roles(cfg, models)


def make_multiplier(kind: str, cfg: PPOConfig) -> LagrangeMultiplier:
    """λ of a ``kind`` run: learned (lagrangian) by ``cfg.lambda_controller`` (SGD on log λ
    or PID), ≡ 0 (reward_only) or fixed at ``lambda_init``."""
    if kind not in PPO_KINDS:
        raise ValueError(f"unknown PPO kind {kind!r}; one of {PPO_KINDS}")
    if kind == "lagrangian" and cfg.lambda_controller == "pid":
        return PIDLagrangeMultiplier(
            init=cfg.lambda_init,
            kp=cfg.pid_kp,
            ki=cfg.pid_ki,
            kd=cfg.pid_kd,
            ema_p=cfg.pid_ema_p,
            ema_d=cfg.pid_ema_d,
            derivative_delay=cfg.pid_delay,
            max_value=cfg.lambda_max,
            threshold=cfg.cost_threshold,
            window=cfg.episode_window,
            delay=cfg.lambda_update_delay,
        )
    init = 0.0 if kind == "reward_only" else cfg.lambda_init
    return LagrangeMultiplier(
        init=init,
        lr=cfg.lambda_lr,
        max_value=cfg.lambda_max,
        threshold=cfg.cost_threshold,
        window=cfg.episode_window,
        delay=cfg.lambda_update_delay,
        fixed=kind != "lagrangian",
    )


def ptx_batches(cfg: PPOConfig, records: list[dict[str, Any]]):
    """The PTX term's demonstration batches (one per step), or None when ``ptx_coeff`` is 0."""
    if not cfg.ptx_coeff:
        return None
    demos = demonstrations(records, cfg.ptx_data)
    if not demos:
        raise ValueError(
            f"ppo: ptx_data={cfg.ptx_data!r} selects no demonstration from the training pairs"
        )
    return batches(demos, cfg.ptx_batch_size, cfg.max_steps, cfg.seed + 2, length=demo_length)


# --- one PPO step: the rollout phase (no gradient), then the updates ----------------------------
def select_rows(
    batch: dict[str, torch.Tensor], index: torch.Tensor, size: int
) -> dict[str, torch.Tensor]:
    """Rows ``index`` of every tensor of a model-input batch of ``size`` episodes (per-token
    inputs [B, L], images [B, ...]). A tensor whose first dimension is not the batch's (e.g.
    image patches of several episodes flattened together) cannot be cut by episode: error."""
    out = {}
    for key, value in batch.items():
        if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == size):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"ppo minibatches: input {key!r} ({shape}) is not one row per episode of the batch "
                f"of {size}; use --num-minibatches 1 with this model"
            )
        out[key] = value[index.to(value.device)]
    return out


@dataclass
class RolloutData:
    """One rollout's episodes with everything the updates need, all detached: the model
    inputs of the full sequences (``batch``), and on the shifted frame [B, L-1] the response
    ``mask``, ``old_logp``/``ref_logp`` (at the sampling temperature), the critics' old values,
    the per-token ``kl``, advantages and returns; per episode [B] the ``reward`` and ``cost``
    scores; and the decoded ``texts``."""

    batch: dict[str, torch.Tensor]
    mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    old_values_r: torch.Tensor
    old_values_c: torch.Tensor
    kl: torch.Tensor
    adv_r: torch.Tensor
    ret_r: torch.Tensor
    adv_c: torch.Tensor
    ret_c: torch.Tensor
    reward: torch.Tensor
    cost: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @property
    def scores_finite(self) -> bool:
        return bool(torch.isfinite(self.reward).all() and torch.isfinite(self.cost).all())

    def select(self, index: torch.Tensor) -> RolloutData:
        """The episodes ``index`` (a minibatch)."""
        n = len(self)
        parts: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "batch":
                parts[f.name] = select_rows(value, index, n)
            elif f.name == "texts":
                parts[f.name] = [value[i] for i in index.tolist()]
            else:
                parts[f.name] = value[index.to(value.device)]
        return RolloutData(**parts)

    def log(self) -> dict[str, float]:
        """The rollout's entries of the step log."""
        return {
            "reward/score": float(self.reward.mean()),
            "cost/score": float(self.cost.mean()),
            "cost/unsafe_rate": float((self.cost > 0).float().mean()),
            "kl/mean": float(self.kl.sum(1).mean()),
            "response/length": float(self.mask.sum(1).mean()),
        }


@torch.no_grad()
def collect_rollout(
    roles: Roles | SharedRoles, images: list, questions: list[str], cfg: PPOConfig, backend: str
) -> RolloutData:
    """Steps 1-4: sample answers, then read the old log-probs and values, the reference
    log-probs and the scores, and turn them into per-token signals and dual-GAE advantages
    and returns -- all without gradient."""
    ro = rollout(
        roles.actor, roles.processor, images, questions, cfg.max_new_tokens, cfg.temperature
    )
    batch, mask = ro["batch"], ro["mask"].float()
    old_logp = sequence_logprobs(roles.actor, batch, backend, cfg.temperature)
    old_vr = roles.reward_critic(batch)[1][:, :-1].float()
    old_vc = roles.cost_critic(batch)[1][:, :-1].float()
    ref_logp = roles.reference_logprobs(batch, backend, cfg.temperature)
    reward = roles.reward(batch)[0].float()
    cost = roles.cost(batch)[0].float()
    kl = (old_logp - ref_logp) * mask
    r_t, c_t = token_signals(kl, reward, cost, mask, cfg.kl_coeff, cfg.signal_clip)
    adv_r, ret_r, adv_c, ret_c = kernels.dual_gae(
        r_t, c_t, old_vr, old_vc, mask, cfg.gamma, cfg.gae_lambda, backend=backend
    )
    return RolloutData(
        batch=batch,
        mask=mask,
        old_logp=old_logp,
        ref_logp=ref_logp,
        old_values_r=old_vr,
        old_values_c=old_vc,
        kl=kl,
        adv_r=adv_r,
        ret_r=ret_r,
        adv_c=adv_c,
        ret_c=ret_c,
        reward=reward,
        cost=cost,
        texts=ro["texts"],
    )


def make_optimizers(roles: Roles | SharedRoles, cfg: PPOConfig) -> list:
    """``(AdamW, schedule)`` of each of :data:`TRAINABLE` (the critics at ``critic_lr``). A
    schedule steps once per optimiser step, so it spans ``max_steps · ppo_epochs ·
    num_minibatches`` steps with the warm-up scaled alike (the same curve over PPO steps as
    one update per step)."""
    per_step = cfg.ppo_epochs * cfg.num_minibatches
    sched_cfg = cfg.replace(
        max_steps=cfg.max_steps * per_step, warmup_steps=cfg.warmup_steps * per_step
    )
    return [
        optimizer_and_schedule(
            roles.trainable[name],
            sched_cfg if name == "actor" else sched_cfg.replace(lr=cfg.critic_lr),
        )
        for name in TRAINABLE
    ]


def minibatch_indices(
    size: int, num_minibatches: int, generator: torch.Generator
) -> list[torch.Tensor | None]:
    """One pass's minibatches: a seeded shuffle of the ``size`` episodes cut into
    ``num_minibatches`` (sizes differ by at most one); ``[None]`` (the whole batch as it is)
    for one minibatch."""
    if num_minibatches == 1:
        return [None]
    if size < num_minibatches:
        raise ValueError(
            f"ppo: {size} episodes cannot fill {num_minibatches} minibatches; "
            f"lower --num-minibatches"
        )
    return list(torch.tensor_split(torch.randperm(size, generator=generator), num_minibatches))


def split_rows(
    batch: dict[str, torch.Tensor] | None, parts: int
) -> list[dict[str, torch.Tensor] | None]:
    """A model-input batch cut into ``parts`` consecutive pieces (None for an empty one)."""
    if batch is None:
        return [None] * parts
    if parts == 1:
        return [batch]
    size = int(batch["input_ids"].shape[0])
    return [
        select_rows(batch, idx, size) if len(idx) else None
        for idx in torch.tensor_split(torch.arange(size), parts)
    ]


def update_stats(
    logp: torch.Tensor, values: list[torch.Tensor], data: RolloutData, cfg: PPOConfig
) -> dict[str, float]:
    """One update's diagnostics over the response tokens: the ratio (mean, min, max), the
    share of clipped ratios, the ``(ρ - 1) - log ρ`` estimate of KL(π_old ‖ π_θ), and the
    share of values more than ε_v from V_old (both critics)."""
    with torch.no_grad():
        on = data.mask > 0
        if not bool(on.any()):
            return {}
        log_ratio = (logp.detach().float() - data.old_logp)[on]
        ratio = log_ratio.exp()
        moved = torch.cat(
            [
                (v.detach() - old)[on].abs()
                for v, old in zip(values, (data.old_values_r, data.old_values_c), strict=True)
            ]
        )
        return {
            "ppo/ratio": float(ratio.mean()),
            "ppo/ratio_min": float(ratio.min()),
            "ppo/ratio_max": float(ratio.max()),
            "ppo/clipfrac": float(((ratio - 1).abs() > cfg.clip_eps).float().mean()),
            "ppo/approx_kl": float(((ratio - 1) - log_ratio).mean()),
            "critic/clipfrac": float((moved > cfg.value_clip).float().mean()),
        }


def ppo_losses(
    roles: Roles | SharedRoles,
    data: RolloutData,
    multiplier: float,
    cfg: PPOConfig,
    backend: str,
    ptx: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Steps 6-8 on a minibatch: a forward pass of the actor and both critics with gradient
    (one role after the other: the shared layout switches adapters between them); returns the
    losses by log key and :func:`update_stats`."""
    logp = sequence_logprobs(roles.actor, data.batch, backend, cfg.temperature)
    values_r = roles.reward_critic(data.batch)[1][:, :-1].float()
    values_c = roles.cost_critic(data.batch)[1][:, :-1].float()
    losses = {
        "ppo/actor_loss": kernels.ppo_lagrangian_loss(
            logp,
            data.old_logp,
            data.adv_r,
            data.adv_c,
            data.mask,
            multiplier,
            cfg.clip_eps,
            backend=backend,
        ),
        "critic/reward_loss": critic_loss(
            values_r, data.old_values_r, data.ret_r, data.mask, cfg.value_clip
        ),
        "critic/cost_loss": critic_loss(
            values_c, data.old_values_c, data.ret_c, data.mask, cfg.value_clip
        ),
    }
    if ptx is not None:  # γ_ptx · SFT loss on this minibatch's share of the demonstrations
        losses["ppo/ptx_loss"] = sft_loss(roles.actor, ptx)
    return losses, update_stats(logp, [values_r, values_c], data, cfg)


def _optimizer_steps(trainable: list[torch.nn.Module], optimizers: list) -> None:
    """Average each role's gradients over the ranks, clip them, step its optimiser and schedule."""
    dist = distributed()
    for model, (opt, sched) in zip(trainable, optimizers, strict=True):
        params = [p for p in model.parameters() if p.requires_grad]
        dist.average_gradients(params)
        optimizer_step(params, opt, sched)


def _mean_stats(updates: list[dict[str, float]]) -> dict[str, float]:
    """The updates' entries averaged (the ratio's extremes: over all of them)."""
    keys = dict.fromkeys(k for u in updates for k in u)
    out = {k: float(np.mean([u[k] for u in updates if k in u])) for k in keys}
    for key, pick in (("ppo/ratio_min", min), ("ppo/ratio_max", max)):
        if key in out:
            out[key] = pick(u[key] for u in updates if key in u)
    out["ppo/updates"] = len(updates)
    return out


def ppo_update(
    roles: Roles | SharedRoles,
    data: RolloutData,
    multiplier: float,
    cfg: PPOConfig,
    optimizers: list,
    backend: str = "torch",
    ptx: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The update phase of one PPO step: ``cfg.ppo_epochs`` passes over ``data``, each a
    shuffle (seeded by ``seed``) cut into ``cfg.num_minibatches`` minibatches, one optimiser
    step per minibatch; ``ptx`` (this step's demonstrations) is cut into as many pieces, piece
    i joining minibatch i. Returns the step's log entries averaged over its updates, or, when
    a loss is not finite on any rank, ``{"skipped": "non-finite loss", <its losses>}`` with
    the gradients cleared and the rest of the step's updates left out."""
    trainable = [roles.trainable[name] for name in TRAINABLE]
    generator = torch.Generator().manual_seed(seed)
    ptx_parts = split_rows(ptx, cfg.num_minibatches)
    updates: list[dict[str, float]] = []
    for _epoch in range(cfg.ppo_epochs):
        for index, ptx_part in zip(
            minibatch_indices(len(data), cfg.num_minibatches, generator), ptx_parts, strict=True
        ):
            minibatch = data if index is None else data.select(index)
            losses, stats = ppo_losses(roles, minibatch, multiplier, cfg, backend, ptx_part)
            total = (
                losses["ppo/actor_loss"] + losses["critic/reward_loss"] + losses["critic/cost_loss"]
            )
            if "ppo/ptx_loss" in losses:
                total = total + cfg.ptx_coeff * losses["ppo/ptx_loss"]
            logged = {key: float(loss.detach()) for key, loss in losses.items()}
            if distributed().any(not bool(torch.isfinite(total))):
                for model in trainable:
                    model.zero_grad(set_to_none=True)
                return {"skipped": "non-finite loss", **logged}
            backward(total)
            _optimizer_steps(trainable, optimizers)
            updates.append({**logged, **stats})
    return _mean_stats(updates)


# --- checkpoints ---------------------------------------------------------------------------------
CHECKPOINT = "checkpoint"
TRAINABLE = ("actor", "reward_critic", "cost_critic")


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().cpu().clone().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    path: Path,
    step: int,
    roles: Roles | SharedRoles,
    optimizers: list,
    multiplier: LagrangeMultiplier,
) -> None:
    """Everything a run needs to go on after ``step`` steps, written atomically: the trainable
    weights of the actor (its adapter) and both critics, optimiser and schedule states, λ and
    its window, and torch's RNG state. Built in ``checkpoint.tmp`` and renamed into place."""

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TRAINABLE:
        save_file(_trainable_state(roles.trainable[name]), str(tmp / f"{name}.safetensors"))
    torch.save(
        {
            "optimizers": [(opt.state_dict(), sched.state_dict()) for opt, sched in optimizers],
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "optim.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, "lagrange": multiplier.state_dict()}))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path, roles: Roles | SharedRoles, optimizers: list, multiplier: LagrangeMultiplier
) -> int:
    """Restore a :func:`save_checkpoint` directory; returns the number of steps done."""

    for name in TRAINABLE:
        model = roles.trainable[name]
        state = load_file(str(path / f"{name}.safetensors"))
        wanted = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != wanted:
            raise RuntimeError(
                f"checkpoint {path}: {name} parameters do not match this model; "
                f"delete {path.parent} (or use --force) to start over"
            )
        model.load_state_dict(state, strict=False)
    saved = torch.load(path / "optim.pt", weights_only=True)
    for (opt, sched), (opt_state, sched_state) in zip(optimizers, saved["optimizers"], strict=True):
        opt.load_state_dict(opt_state)
        sched.load_state_dict(sched_state)
    torch.set_rng_state(saved["torch_rng"])
    state = json.loads((path / "state.json").read_text())
    multiplier.load_state_dict(state["lagrange"])
    return int(state["step"])


def _truncate_log(path: Path, steps: int) -> None:
    """Keep the first ``steps`` step entries of a log (later ones are redone after a resume)."""

    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            break  # a line torn by the kill
        if entry.get("step", 0) >= steps:
            break
        kept.append(line)

    atomic_write_text(path, "".join(line + "\n" for line in kept))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the trainable weights (to check that ranks hold the same model)."""

    digest = hashlib.sha256()
    for name, p in sorted(_trainable_state(model).items()):
        digest.update(name.encode())
        digest.update(p.float().numpy().tobytes())
    return digest.hexdigest()


# --- the trainer ---------------------------------------------------------------------------------
def train_run(
    kind: str,
    cfg: PPOConfig,
    data: DataSplits,
    models: RoleModels,
    out_dir: Path,
    progress: bool = True,
    name: str | None = None,
    roles: Roles | SharedRoles | None = None,
) -> dict[str, Any]:
    """Train one PPO run of ``kind`` (lagrangian, reward_only or fixed_lambda) with ``cfg`` on
    ``data``'s train prompts, its roles started from ``models`` (or ``roles``, already loaded:
    the memory benchmark). ``out_dir`` is the run's working folder: ``log.jsonl``,
    ``checkpoint/`` while training (a rerun resumes from it), then ``model/`` and
    ``samples.jsonl``. ``name`` labels the progress bar. Returns the run's metrics.

    Per PPO step: :func:`collect_rollout`, the λ step, :func:`ppo_update`, the log entry and
    every ``checkpoint_every`` steps a checkpoint; at the end the evaluation."""
    setup(cfg)
    images = ImageCache(data)
    roles = roles if roles is not None else make_roles(cfg, models)
    backend = kernels.resolve_backend(cfg.kernels, next(roles.actor.parameters()).device)
    multiplier = make_multiplier(kind, cfg)
    optimizers = make_optimizers(roles, cfg)
    dist = distributed()
    if cfg.batch_size // dist.world_size < cfg.num_minibatches:
        raise ValueError(
            f"ppo: batch_size {cfg.batch_size} over {dist.world_size} processes leaves a rank "
            f"fewer "
            f"episodes than num_minibatches = {cfg.num_minibatches}"
        )
    torch.manual_seed(
        cfg.seed + 1000 * (dist.rank + 1)
    )  # same initial weights everywhere, own samples
    progress = progress and dist.is_main
    prompts = data.train
    gold = is_world(prompts)
    judge = GoldJudge() if gold else None
    log_path = out_dir / "log.jsonl"
    ckpt = out_dir / CHECKPOINT
    done = (
        load_checkpoint(ckpt, roles, optimizers, multiplier)
        if (ckpt / "state.json").is_file()
        else 0
    )
    dist.barrier()  # every rank has read the checkpoint before the log is cut
    if dist.is_main:
        _truncate_log(log_path, done)
    if done and progress:
        print(f"[ppo: {name or kind}] resuming after step {done} from {ckpt}")
    start = time.perf_counter()
    stream = batches(prompts, cfg.batch_size, cfg.max_steps, cfg.seed + 1)
    ptx_stream = ptx_batches(cfg, data.train)
    for _ in range(done):  # the batches already trained on
        next(stream)
        if ptx_stream is not None:
            next(ptx_stream)
    bar = tqdm(
        stream, total=cfg.max_steps, initial=done, desc=f"ppo: {name or kind}", disable=not progress
    )
    last: dict[str, Any] = {}
    bad_in_a_row = skipped = 0
    for step, global_chunk in enumerate(bar, start=done):
        chunk = dist.shard(global_chunk)  # this rank's episodes
        ro = collect_rollout(
            roles, [images(p) for p in chunk], [p["question"] for p in chunk], cfg, backend
        )
        # this rank's share of a demonstration batch (drawn every step, so a resume stays in line)
        ptx = (
            None
            if ptx_stream is None
            else encode_demos(roles.processor, images, dist.shard(next(ptx_stream)))
        )
        if not dist.any(
            not ro.scores_finite
        ):  # J_C's window takes every rank's costs, then λ steps
            multiplier.record(dist.gather(ro.cost.tolist()))
            lag_log = multiplier.update(step)
            stats = ppo_update(
                roles,
                ro,
                multiplier.value,
                cfg,
                optimizers,
                backend,
                ptx,
                seed=(cfg.seed + 3) * 1_000_003 + step,
            )
        else:
            stats = {"skipped": "non-finite scores"}
        if "skipped" in stats:
            bad_in_a_row, skipped = bad_in_a_row + 1, skipped + 1
            if dist.is_main:
                append_jsonl(log_path, {"step": step, **stats})
            if bad_in_a_row >= cfg.max_nonfinite:
                raise FloatingPointError(
                    f"ppo {name or kind}: {bad_in_a_row} non-finite losses in a row "
                    f"(last at step {step}); stopping. Lower --lr / --critic-lr or --kl-coeff, "
                    f"or check the reward and cost models' scores"
                )
            continue
        bad_in_a_row = 0
        entry: dict[str, Any] = {"step": step, **stats, **ro.log(), **lag_log}
        if judge is not None:
            scores = np.array(
                [judge(p, t) for p, t in zip(chunk, ro.texts, strict=True)], dtype=float
            )
            entry["gold/helpfulness"] = float(scores[:, 0].mean())
            entry["gold/safety_rate"] = float((scores[:, 1] > 0).mean())
        if dist.is_main:
            append_jsonl(log_path, entry)
        last = entry
        bar.set_postfix(
            R=f"{entry['reward/score']:.2f}",
            C=f"{entry['cost/score']:.2f}",
            lam=f"{multiplier.value:.2f}",
            kl=f"{entry['kl/mean']:.2f}",
        )
        if (
            cfg.checkpoint_every
            and (step + 1) % cfg.checkpoint_every == 0
            and step + 1 < cfg.max_steps
        ):
            if dist.is_main:
                save_checkpoint(ckpt, step + 1, roles, optimizers, multiplier)
            dist.barrier()
    train_time = time.perf_counter() - start

    fingerprints = dist.gather_objects(
        {
            "rank": dist.rank,
            "lambda": multiplier.value,
            "actor_sha256": weights_fingerprint(roles.trainable["actor"]),
        }
    )
    if not dist.is_main:
        return {"rank": dist.rank}
    roles.save_actor(out_dir / "model")
    test = data.test[: cfg.n_eval_prompts]
    metrics: dict[str, Any] = {
        "steps": cfg.max_steps,
        "lambda_final": multiplier.value,
        "train_time_s": round(train_time, 2),
        "J_C_final": multiplier.episode_cost,
        "resumed_from_step": done,
        "skipped_steps": skipped,
        # λ's course over the whole log (a resumed run's too): peak, overshoot, violations
        **lambda_metrics(read_jsonl(log_path) if log_path.is_file() else []),
        "last": last,
    }
    if kind == "lagrangian":
        metrics["lambda_controller"] = cfg.lambda_controller
    if dist.enabled:
        metrics["distributed"] = {"world_size": dist.world_size, "ranks": fingerprints}
    if test:
        summary, rows = evaluate_policy(
            roles.actor,
            roles.processor,
            test,
            images,
            batch_size=cfg.eval_batch_size,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            desc=f"ppo: {name or kind} eval",
        )
        costs = score_texts(
            roles.cost,
            [images(p) for p in test],
            [p["question"] for p in test],
            [r["response"] for r in rows],
            cfg.eval_batch_size,
        )
        for row, c in zip(rows, costs, strict=True):
            row["cost"] = float(c)
        write_jsonl(out_dir / "samples.jsonl", rows)
        metrics["mean_cost"] = float(costs.mean())
        if summary:
            metrics.update(
                helpfulness=summary["helpfulness"], safety_rate=summary["safety_rate"], eval=summary
            )
    return metrics


__all__ = [
    "token_signals",
    "critic_loss",
    "sequence_logprobs",
    "rollout",
    "Roles",
    "make_roles",
    "make_multiplier",
    "RolloutData",
    "collect_rollout",
    "make_optimizers",
    "ppo_update",
    "ppo_losses",
    "train_run",
    "save_checkpoint",
    "load_checkpoint",
]
