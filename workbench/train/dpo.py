"""Rollout-free safe alignment on the preference pairs (docs/design.md §6.13): DPO on either
preference, SafeDPO and MoCAN -- the losses and one trainer.

Every loss reads four sequence log-prob sums per pair: the policy's and the reference's, of the
chosen response w and of the rejected one l, each summed over the response tokens (the
answer and its end-of-sequence token). With

    h = [log π_θ(y_w|x) - log π_ref(y_w|x)] - [log π_θ(y_l|x) - log π_ref(y_l|x)]

- **DPO** (Rafailov et al. 2023, Eq. 7): ``L = -log σ(β·h)``. ``dpo_helpful`` uses the
  more-helpful label (w = more helpful), ``dpo_safe`` the safer label (w = safer): the two
  ends of the trade-off.
- **SafeDPO** (Kim et al., "SafeDPO: A Simple Approach to Direct Preference Optimization with
  Enhanced Safety", arXiv 2505.20065, Eq. 12): the pairs first go through the paper's
  transform T -- w = the more helpful response, swapped with l when w is unsafe and l safe,
  dropped when both are unsafe -- then, with h̃ = 1 for an unsafe response,
  ``L = -log σ(β·h - (h̃_l - h̃_w)·Δ)``: a margin Δ where only the loser is unsafe.
- **MoCAN** (Huang et al., "One-Shot Safety Alignment for Large Language Models via Optimal
  Dualization", NeurIPS 2024, Algorithm MoCAN): first λ* from the one-dimensional convex dual
  of ``max E[R] - β·KL(π || π_ref) s.t. E[C] <= d``, estimated from reference answers scored
  by the run's reward and cost models (:func:`mocan_dual`); then one DPO run on the training
  pairs relabelled by ``R_λ = R - λ*·C`` (the paper's r + λ·g with the safety utility
  g = -C): w = the higher R_λ, and with soft labels p = σ(R_λ(y_w) - R_λ(y_l)),
  ``L = -[p·log σ(β·h) + (1 - p)·log σ(-β·h)]``, whose population minimiser is the
  constrained optimum π ∝ π_ref·exp(R_λ*/β).

The policy is a LoRA adapter over the SFT model and the reference is the same weights with the
adapter switched off (as in PPO), so at step 0 the policy equals the reference and every
implicit reward ``β·(log π_θ - log π_ref)`` is 0. The implicit-reward accuracy of a pair is
``[r̂_w > r̂_l]`` (ties 1/2); its margin ``r̂_w - r̂_l``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import kernels
from ..config import DPO_METHODS, DPOConfig
from ..data.store import DataSplits, ImageCache
from ..models.adapters import save_policy
from ..models.score import ScoreModel, score_texts
from ..models.vlm import encode, generate, sequence_logprobs
from ..runs import append_jsonl, write_jsonl
from .common import (
    backward,
    batches,
    chunks,
    optimizer_and_schedule,
    optimizer_step,
    setup,
    starting_model,
)
from .preference import ranking_accuracy, score_responses


# --- losses -------------------------------------------------------------------------------------
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    margin: torch.Tensor | float = 0.0,
    label: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Per-pair losses ``-[p·log σ(z) + (1 - p)·log σ(-z)]`` with ``z = β·h - m``,
    ``h = (log π_θ(y_w) - log π_ref(y_w)) - (log π_θ(y_l) - log π_ref(y_l))``.

    With the defaults m = 0, p = 1 it is DPO (Rafailov et al. 2023, Eq. 7): ``-log σ(β·h)``.
    Arguments are per-sequence log-prob sums [B]; the batch loss is the mean.

    Example: β = 0.1, h = 2 -> -log σ(0.2) = 0.598."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    z = beta * h - margin
    label = torch.as_tensor(label, dtype=z.dtype, device=z.device)
    return -(label * F.logsigmoid(z) + (1 - label) * F.logsigmoid(-z))


def safedpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_unsafe: torch.Tensor,
    rejected_unsafe: torch.Tensor,
    beta: float,
    margin: float,
) -> torch.Tensor:
    """SafeDPO, Eq. 12 of arXiv 2505.20065: ``-log σ(β·h - (h̃_l - h̃_w)·Δ)`` per pair, on pairs
    already reordered by :func:`safedpo_pairs` (the paper's T); h̃ = 1 for an unsafe response,
    Δ = ``margin`` >= 0. The margin acts only where the chosen response is safe and the
    rejected one unsafe; elsewhere it is plain DPO.

    Example: β = 0.1, h = 2, Δ = 1, loser unsafe -> -log σ(0.2 - 1) = 1.171."""
    unsafe_gap = rejected_unsafe.to(policy_chosen.dtype) - chosen_unsafe.to(policy_chosen.dtype)
    return dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, margin=margin * unsafe_gap
    )


def mocan_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    label: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """MoCAN's pseudo-preference DPO: ``-[p·log σ(β·h) + (1 - p)·log σ(-β·h)]`` per pair, with
    p = P(y_w ≻ y_l) from :func:`mocan_pairs` (σ(R_λ(y_w) - R_λ(y_l)), or 1 for hard labels).

    Example: β = 0.1, h = 2, p = 0.75 -> -(0.75·log σ(0.2) + 0.25·log σ(-0.2)) = 0.648."""
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label=label)


def implicit_rewards(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward of each sequence: ``r̂ = β·(log π_θ(y|x) - log π_ref(y|x))``."""
    return beta * (policy - reference)


# --- pairs ----------------------------------------------------------------------------------------
@dataclass
class Pair:
    """One training pair of a method: the record, which response is chosen (w) and which
    rejected (l), their unsafe indicators h̃ (SafeDPO) and the label p = P(w ≻ l) (MoCAN)."""

    record: dict[str, Any]
    chosen: int
    rejected: int
    chosen_unsafe: bool = False
    rejected_unsafe: bool = False
    label: float = 1.0


def is_unsafe(record: dict[str, Any], response: int) -> bool:
    """The dataset's binary safety label, negated: h = 1 - ``is_response_<i>_safe``."""
    return not bool(record[f"is_response_{response}_safe"])


def _pair(record: dict[str, Any], chosen: int, label: float = 1.0) -> Pair:
    rejected = 3 - chosen
    return Pair(
        record, chosen, rejected, is_unsafe(record, chosen), is_unsafe(record, rejected), label
    )


def helpful_pairs(records: Sequence[dict[str, Any]]) -> list[Pair]:
    """DPO on helpfulness: w = ``more_helpful_response_id``."""
    return [_pair(r, int(r["more_helpful_response_id"])) for r in records]


def safe_pairs(records: Sequence[dict[str, Any]]) -> list[Pair]:
    """DPO on safety: w = ``safer_response_id``."""
    return [_pair(r, int(r["safer_response_id"])) for r in records]


def safedpo_pairs(records: Sequence[dict[str, Any]], both_unsafe: str = "drop") -> list[Pair]:
    """SafeDPO's transform T of the helpfulness pairs: w = the more helpful response, then

    - w safe: unchanged (whatever l is);
    - w unsafe, l safe: swapped, so the safe response wins (the margin applies);
    - both unsafe: dropped (``both_unsafe="drop"``, the paper's T) or kept in helpfulness
      order with no margin (``"keep"``).

    Safety is the dataset's ``is_response_<i>_safe`` label (the paper's binary h)."""
    if both_unsafe not in ("drop", "keep"):
        raise ValueError(f"both_unsafe must be 'drop' or 'keep'; got {both_unsafe!r}")
    out = []
    for pair in helpful_pairs(records):
        if pair.chosen_unsafe and pair.rejected_unsafe:
            if both_unsafe == "keep":
                out.append(pair)
        elif pair.chosen_unsafe:
            out.append(_pair(pair.record, pair.rejected))
        else:
            out.append(pair)
    return out


def mocan_pairs(
    records: Sequence[dict[str, Any]],
    rewards: np.ndarray,
    costs: np.ndarray,
    lagrange_multiplier: float,
    labels: str = "soft",
) -> list[Pair]:
    """MoCAN's pseudo-preferences: each pair relabelled by ``R_λ = R - λ·C`` of its two
    responses (``rewards``, ``costs`` [N, 2], response 1 then 2, from the run's reward and cost
    models). w = the response with the higher R_λ (response 1 on a tie), and the label
    p = σ(R_λ(y_w) - R_λ(y_l)) (``soft``, the Bradley-Terry probability of the relabelled
    preference) or 1 (``hard``; 1/2 on a tie)."""
    if labels not in ("soft", "hard"):
        raise ValueError(f"labels must be 'soft' or 'hard'; got {labels!r}")
    shaped = np.asarray(rewards, dtype=float) - lagrange_multiplier * np.asarray(costs, dtype=float)
    out = []
    for record, (first, second) in zip(records, shaped, strict=True):
        chosen = 1 if first >= second else 2
        gap = abs(first - second)
        label = 1.0 / (1.0 + math.exp(-gap)) if labels == "soft" else (1.0 if gap > 0 else 0.5)
        out.append(_pair(record, chosen, label))
    return out


# --- the MoCAN dual -----------------------------------------------------------------------------
@dataclass
class DualSolution:
    """λ for a cost threshold d from reference samples, and what it predicts.

    ``feasible``: some mix of the sampled answers meets d at all (for MoCAN
    d > mean over prompts of the smallest sampled C); ``at_bound``: λ stopped at
    ``lambda_max`` (always so when infeasible). ``predicted_cost`` and ``predicted_reward``
    are E[C] and E[R] under the tilted policy at λ (the J_C and reward the aligned policy
    should reach, on the reference samples); ``reference_*`` the same under π_ref."""

    lagrange_multiplier: float
    threshold: float
    feasible: bool
    at_bound: bool
    predicted_cost: float
    predicted_reward: float
    reference_cost: float
    reference_reward: float
    dual_value: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_samples(values: np.ndarray | Sequence) -> np.ndarray:
    """Scores as [prompts, samples per prompt] float64 (a 1-D array is one prompt)."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"scores must be [prompts, samples]; got shape {a.shape}")
    return a


def _log_mean_exp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).mean(axis=1, keepdims=True)))[:, 0]


def tilted_means(
    rewards: np.ndarray,
    costs: np.ndarray,
    lagrange_multiplier: float,
    beta: float,
    normalized: bool = False,
) -> tuple[float, float]:
    """``(E[R], E[C])`` under ``q_λ(y|x) ∝ π_ref(y|x)·exp((R - λ·C) / (β·s))`` with the
    reference samples as π_ref, averaged over prompts: the KL-regularised optimum at λ.

    s = 1 for MoCAN; s = 1 + λ (``normalized``) for PPO-Lagrangian, whose actor normalises the
    combined advantage by 1 + λ (docs/design.md §6.7)."""
    r, c = _as_samples(rewards), _as_samples(costs)
    scale = beta * (1.0 + lagrange_multiplier if normalized else 1.0)
    logits = (r - lagrange_multiplier * c) / scale
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return float((weights * r).sum(axis=1).mean()), float((weights * c).sum(axis=1).mean())


def mocan_dual_value(
    rewards: np.ndarray, costs: np.ndarray, lagrange_multiplier: float, d: float, beta: float
) -> float:
    """MoCAN's dual function in this project's sign convention (cost C, constraint E[C] <= d):

        D(λ) = β · mean_x log mean_y exp((R(x,y) - λ·C(x,y)) / β) + λ·d

    with y the reference samples of prompt x. It is the paper's
    D(λ) = β·E_x[log E_{π_ref} exp((r + λ·h)/β)] with safety utility g = -C and
    h = g - E_ref[g] - b, i.e. margin b = E_ref[C] - d: convex in λ, and its minimiser over
    λ >= 0 is the multiplier of the constrained KL-regularised problem."""
    r, c = _as_samples(rewards), _as_samples(costs)
    return float(
        beta * _log_mean_exp((r - lagrange_multiplier * c) / beta).mean() + lagrange_multiplier * d
    )


def _bisect(increasing, low: float, high: float, tol: float, iterations: int = 200) -> float:
    """The root of a non-decreasing function with ``f(low) < 0 <= f(high)``."""
    for _ in range(iterations):
        if high - low <= tol * max(1.0, high):
            break
        mid = 0.5 * (low + high)
        if increasing(mid) < 0:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def mocan_dual(
    rewards: np.ndarray,
    costs: np.ndarray,
    d: float,
    beta: float,
    lambda_max: float = 20.0,
    tol: float = 1e-10,
) -> DualSolution:
    """λ* = argmin_{λ >= 0} D(λ) (:func:`mocan_dual_value`) from reference samples' scores
    ``rewards``, ``costs`` [prompts, samples].

    D is convex with ``D'(λ) = d - E_x E_{q_λ}[C]``, q_λ ∝ π_ref·exp((R - λ·C)/β)
    (:func:`tilted_means`), and D' is non-decreasing (``dE_q[C]/dλ = -Var_q(C)/β``). So:

    - ``D'(0) >= 0`` -- the unconstrained optimum already meets d: λ* = 0;
    - ``d <= mean_x min_y C`` -- no tilt of the samples reaches d (E_q[C] only tends to that
      bound as λ grows): infeasible, λ stops at ``lambda_max``;
    - else bisection on D' in [0, lambda_max] (λ* = ``lambda_max`` if D' < 0 there)."""
    r, c = _as_samples(rewards), _as_samples(costs)
    if r.shape != c.shape:
        raise ValueError(f"rewards {r.shape} and costs {c.shape} must have the same shape")
    if beta <= 0 or lambda_max <= 0:
        raise ValueError("beta and lambda_max must be > 0")

    def slope(lam: float) -> float:
        return d - tilted_means(r, c, lam, beta)[1]

    # rounding slack, so that d equal to a constant cost counts as met
    slack = 1e-9 * max(1.0, abs(d), float(np.abs(c).max()))
    feasible = d > float(c.min(axis=1).mean())
    if slope(0.0) >= -slack:
        lam, feasible = 0.0, True
    elif not feasible or slope(lambda_max) < 0:
        lam = lambda_max
    else:
        lam = _bisect(slope, 0.0, lambda_max, tol)
    reward_at, cost_at = tilted_means(r, c, lam, beta)
    return DualSolution(
        lagrange_multiplier=lam,
        threshold=d,
        feasible=feasible,
        at_bound=lam >= lambda_max,
        predicted_cost=cost_at,
        predicted_reward=reward_at,
        reference_cost=float(c.mean()),
        reference_reward=float(r.mean()),
        dual_value=mocan_dual_value(r, c, lam, d, beta),
    )


def lagrangian_fixed_point(
    rewards: np.ndarray,
    costs: np.ndarray,
    d: float,
    beta: float,
    lambda_max: float = 20.0,
    grid: int = 400,
    tol: float = 1e-10,
) -> DualSolution:
    """The λ where PPO-Lagrangian would stop at threshold d if its policy reached its own
    KL-regularised optimum: the smallest λ >= 0 with ``E_{q̃_λ}[C] <= d``, where
    q̃_λ ∝ π_ref·exp((R - λ·C) / (β·(1 + λ))) (its actor normalises by 1 + λ, §6.7).

    This is the number to compare with the λ a PPO-Lagrangian run ends at; MoCAN's λ* solves
    the unnormalised problem and differs. E_q̃[C] need not fall monotonically in λ (it does
    when Cov(C, R + C) >= 0), so the first crossing is found on a grid of ``grid`` points in
    [0, ``lambda_max``] and refined by bisection. As λ grows q̃ tends to
    π_ref·exp(-C/β), not to the cheapest answers: with λ unbounded the normalised update
    still cannot reach a threshold below that tilt's E[C] (then: infeasible, λ_max)."""
    r, c = _as_samples(rewards), _as_samples(costs)
    if r.shape != c.shape:
        raise ValueError(f"rewards {r.shape} and costs {c.shape} must have the same shape")

    def excess(lam: float) -> float:
        return tilted_means(r, c, lam, beta, normalized=True)[1] - d

    lam, feasible = lambda_max, False
    if excess(0.0) <= 1e-9 * max(1.0, abs(d), float(np.abs(c).max())):  # rounding slack
        lam, feasible = 0.0, True
    else:
        points = np.concatenate([[0.0], np.geomspace(1e-3, lambda_max, grid)])
        for low, high in zip(points[:-1], points[1:], strict=True):
            if excess(high) <= 0:
                lam, feasible = _bisect(lambda x: -excess(x), low, high, tol), True
                break
    reward_at, cost_at = tilted_means(r, c, lam, beta, normalized=True)
    return DualSolution(
        lagrange_multiplier=float(lam),
        threshold=d,
        feasible=feasible,
        at_bound=not feasible,
        predicted_cost=cost_at,
        predicted_reward=reward_at,
        reference_cost=float(c.mean()),
        reference_reward=float(r.mean()),
    )


# --- model plumbing -------------------------------------------------------------------------------
def pair_logprobs(
    model, processor, images: ImageCache, pairs: Sequence[Pair], backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log π(y_w|x)``, ``log π(y_l|x)`` [B]: token log-probs summed over each response (its
    tokens and closing end-of-sequence token: ``encode``'s ``response_mask`` on the shifted
    frame). Both sides go through the model in one forward pass."""
    pics = [images(p.record) for p in pairs]
    questions = [p.record["question"] for p in pairs]
    responses = [p.record[f"response_{p.chosen}"] for p in pairs] + [
        p.record[f"response_{p.rejected}"] for p in pairs
    ]
    batch = encode(processor, pics + pics, questions + questions, responses)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch["response_mask"][:, 1:].float()
    sums = (sequence_logprobs(model, batch, backend) * mask).sum(-1)
    return sums[: len(pairs)], sums[len(pairs) :]


class _Reference:
    """π_ref: the policy with its LoRA adapter disabled, or a frozen copy of a fully trained
    policy."""

    def __init__(self, model):
        self.model = model
        self.copy = None
        if not hasattr(model, "disable_adapter"):
            self.copy = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, processor, images, pairs, backend) -> tuple[torch.Tensor, torch.Tensor]:
        if self.copy is not None:
            return pair_logprobs(self.copy, processor, images, pairs, backend)
        with self.model.disable_adapter():
            return pair_logprobs(self.model, processor, images, pairs, backend)

    @torch.no_grad()
    def generate(self, processor, pics, questions, max_new_tokens, temperature) -> list[str]:
        if self.copy is not None:
            return generate(self.copy, processor, pics, questions, max_new_tokens, temperature)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return generate(self.model, processor, pics, questions, max_new_tokens, temperature)
        finally:
            self.model.train(was_training)


def batch_loss(cfg: DPOConfig, pairs: Sequence[Pair], pc, pr, rc, rr) -> torch.Tensor:
    """The method's per-pair losses from the policy (p*) and reference (r*) log-prob sums of
    the chosen (*c) and rejected (*r) responses."""
    if cfg.method == "safedpo":
        flags = torch.tensor(
            [[p.chosen_unsafe, p.rejected_unsafe] for p in pairs], device=pc.device
        ).float()
        return safedpo_loss(pc, pr, rc, rr, flags[:, 0], flags[:, 1], cfg.beta, cfg.margin)
    if cfg.method == "mocan":
        labels = torch.tensor([p.label for p in pairs], device=pc.device, dtype=pc.dtype)
        return mocan_loss(pc, pr, rc, rr, labels, cfg.beta)
    return dpo_loss(pc, pr, rc, rr, cfg.beta)


def method_pairs(
    cfg: DPOConfig,
    records: Sequence[dict[str, Any]],
    scores: tuple[np.ndarray, np.ndarray] | None = None,
    lagrange_multiplier: float = 0.0,
) -> list[Pair]:
    """The pairs ``cfg.method`` trains on (MoCAN: ``scores`` = (rewards, costs) [N, 2])."""
    if cfg.method == "dpo_helpful":
        return helpful_pairs(records)
    if cfg.method == "dpo_safe":
        return safe_pairs(records)
    if cfg.method == "safedpo":
        return safedpo_pairs(records, cfg.both_unsafe)
    if cfg.method == "mocan":
        if scores is None:
            raise ValueError("mocan pairs need the reward and cost scores of both responses")
        return mocan_pairs(records, *scores, lagrange_multiplier, cfg.mocan_labels)
    raise ValueError(f"unknown method {cfg.method!r}; one of {DPO_METHODS}")


def _pair_length(record: dict[str, Any]) -> int:
    return len(record["question"].split()) + max(
        len(record["response_1"].split()), len(record["response_2"].split())
    )


@torch.no_grad()
def response_implicit_rewards(
    model,
    reference: _Reference,
    processor,
    images: ImageCache,
    records: Sequence[dict[str, Any]],
    cfg: DPOConfig,
    backend: str,
) -> np.ndarray:
    """``r̂ = β·(log π_θ - log π_ref)`` of both responses of every record, [N, 2]."""
    out = np.zeros((len(records), 2))
    was_training = model.training
    model.eval()
    for start, chunk in zip(
        range(0, len(records), cfg.eval_batch_size),
        chunks(list(records), cfg.eval_batch_size),
        strict=True,
    ):
        pairs = [Pair(r, 1, 2) for r in chunk]
        p1, p2 = pair_logprobs(model, processor, images, pairs, backend)
        r1, r2 = reference.logprobs(processor, images, pairs, backend)
        rewards = implicit_rewards(torch.stack([p1, p2], 1), torch.stack([r1, r2], 1), cfg.beta)
        out[start : start + len(chunk)] = rewards.float().cpu().numpy()
    model.train(was_training)
    return out


def pair_metrics(
    implicit: np.ndarray, records: Sequence[dict[str, Any]], pairs: list[Pair]
) -> dict:
    """Implicit-reward accuracy and margin on ``pairs`` (of ``records``, whose [N, 2] implicit
    rewards are ``implicit``)."""
    row = {id(r): n for n, r in enumerate(records)}
    chosen = np.array([implicit[row[id(p.record)], p.chosen - 1] for p in pairs])
    rejected = np.array([implicit[row[id(p.record)], p.rejected - 1] for p in pairs])
    if not len(pairs):
        return {"accuracy": float("nan"), "margin": float("nan"), "n": 0}
    return {
        "accuracy": ranking_accuracy(chosen, rejected),
        "margin": float((chosen - rejected).mean()),
        "chosen_reward": float(chosen.mean()),
        "rejected_reward": float(rejected.mean()),
        "n": len(pairs),
    }


def reference_scores(
    reference: _Reference,
    processor,
    images: ImageCache,
    prompts: Sequence[dict[str, Any]],
    reward_model: ScoreModel,
    cost_model: ScoreModel,
    cfg: DPOConfig,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """MoCAN's offline data: ``n_reference_samples`` answers of π_ref per prompt, scored by the
    reward and cost models. Returns R, C [prompts, samples] and one row per answer."""
    k = cfg.n_reference_samples
    expanded = [p for p in prompts for _ in range(k)]
    texts: list[str] = []
    for chunk in chunks(expanded, cfg.eval_batch_size):
        texts += reference.generate(
            processor,
            [images(p) for p in chunk],
            [p["question"] for p in chunk],
            cfg.max_new_tokens,
            cfg.temperature,
        )
    pics, questions = [images(p) for p in expanded], [p["question"] for p in expanded]
    rewards = score_texts(reward_model, pics, questions, texts, cfg.eval_batch_size)
    costs = score_texts(cost_model, pics, questions, texts, cfg.eval_batch_size)
    rows = [
        {
            "prompt": n // k,
            "question": p["question"],
            "response": t,
            "reward": float(r),
            "cost": float(c),
        }
        for n, (p, t, r, c) in enumerate(zip(expanded, texts, rewards, costs, strict=True))
    ]
    return rewards.reshape(len(prompts), k), costs.reshape(len(prompts), k), rows


# --- the trainer ---------------------------------------------------------------------------------
def train_dpo(
    cfg: DPOConfig,
    data: DataSplits,
    policy_dir: str | Path | None,
    reward_dir: str | Path | None = None,
    cost_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``cfg.method`` on ``data``'s training pairs from the policy in ``policy_dir`` (the
    run's SFT model; ``cfg.policy`` wins when set) and return the policy and its metrics.

    MoCAN also needs the reward and cost model folders: it samples ``n_reference_samples``
    answers of π_ref for ``n_reference_prompts`` training prompts, scores them, solves the dual
    at ``threshold`` (:func:`mocan_dual`) and relabels the pairs it trains on by R - λ*·C.

    ``out_dir`` (optional) receives ``log.jsonl`` (one line per step), ``model/`` (the adapter
    or the full policy, with its processor) and for MoCAN ``reference_samples.jsonl``.

    Metrics: the loss curve, the last steps' loss and accuracy, and on the first
    ``n_eval_pairs`` eval pairs the implicit-reward accuracy and margin of the method's own
    pairs (``eval_accuracy``, ``eval_margin``), of the more-helpful and the safer labels, and
    of safe against unsafe responses; for MoCAN the dual's solution (``lambda_star``,
    ``mocan``) and the λ PPO-Lagrangian would end at on the same samples
    (``lagrangian_lambda_predicted``)."""
    if cfg.method not in DPO_METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; one of {DPO_METHODS}")
    if not data.train:
        raise ValueError(f"the data stage in {data.root} has no training pairs")
    if cfg.method == "mocan" and (reward_dir is None or cost_dir is None):
        raise ValueError(
            "method 'mocan' needs the reward and cost model folders (reward_dir, cost_dir)"
        )
    setup(cfg)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").unlink(missing_ok=True)
    images = ImageCache(data)
    model, processor = starting_model(cfg, Path(policy_dir) if policy_dir else None)
    model.train()
    reference = _Reference(model)
    device = next(model.parameters()).device
    backend = kernels.resolve_backend(cfg.kernels, device)
    metrics: dict[str, Any] = {"method": cfg.method, "beta": cfg.beta}

    records = list(data.train)
    stream_items: Sequence[Any]
    scores_of = None
    if cfg.method == "mocan":
        assert reward_dir is not None and cost_dir is not None  # checked above
        reward_model = ScoreModel.load(reward_dir).eval().requires_grad_(False)
        cost_model = ScoreModel.load(cost_dir).eval().requires_grad_(False)
        rng = np.random.default_rng([cfg.seed, 17])
        picked = rng.choice(len(records), min(cfg.n_reference_prompts, len(records)), replace=False)
        prompts = [records[int(i)] for i in sorted(picked)]
        rewards, costs, rows = reference_scores(
            reference, processor, images, prompts, reward_model, cost_model, cfg
        )
        dual = mocan_dual(rewards, costs, cfg.threshold, cfg.beta, cfg.lambda_max)
        lagrangian = lagrangian_fixed_point(rewards, costs, cfg.threshold, cfg.beta, cfg.lambda_max)
        if not dual.feasible:
            warnings.warn(
                f"mocan: threshold d = {cfg.threshold} is below what any mix of the reference "
                f"answers reaches (mean smallest cost {float(costs.min(1).mean()):.3f}); "
                f"λ* stops at lambda_max = {cfg.lambda_max}",
                stacklevel=2,
            )
        metrics.update(
            lambda_star=dual.lagrange_multiplier,
            mocan=dual.to_dict(),
            mocan_margin_b=dual.reference_cost - cfg.threshold,
            lagrangian_lambda_predicted=lagrangian.lagrange_multiplier,
            lagrangian_prediction=lagrangian.to_dict(),
        )
        if out is not None:
            write_jsonl(out / "reference_samples.jsonl", rows)

        def scores_of(recs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
            r = score_responses(reward_model, images, recs, cfg.eval_batch_size, desc="mocan: R")
            c = score_responses(cost_model, images, recs, cfg.eval_batch_size, desc="mocan: C")
            return r, c

        stream_items = records  # relabelled once the stream's records are known (below)
    else:
        pairs_all = method_pairs(cfg, records)
        if not pairs_all:
            raise ValueError(
                f"{cfg.method}: no training pairs left (SafeDPO drops pairs whose responses are "
                f"both unsafe; both_unsafe='keep' keeps them)"
            )
        if cfg.method == "safedpo":
            metrics["n_pairs_dropped"] = len(records) - len(pairs_all)
            metrics["n_pairs_swapped"] = sum(
                p.chosen != int(p.record["more_helpful_response_id"]) for p in pairs_all
            )
        stream_items = pairs_all
    metrics["n_train_pairs"] = len(stream_items)

    def length(item: Any) -> int:
        return _pair_length(item.record if isinstance(item, Pair) else item)

    stream = list(batches(stream_items, cfg.batch_size, cfg.max_steps, cfg.seed, length=length))
    if scores_of is not None:  # MoCAN: score the records the steps will see, once each
        used = list({id(r): r for batch in stream for r in batch}.values())
        pair_of = {
            id(p.record): p
            for p in method_pairs(cfg, used, scores_of(used), metrics["lambda_star"])
        }
        stream = [[pair_of[id(r)] for r in batch] for batch in stream]
        metrics["mocan_label_mean"] = float(np.mean([p.label for p in pair_of.values()]))

    opt, sched = optimizer_and_schedule(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    accuracies: list[float] = []
    start = time.perf_counter()
    bar = tqdm(stream, total=cfg.max_steps, desc=f"dpo: {cfg.method}", disable=not progress)
    for step, pairs in enumerate(bar):
        pc, pr = pair_logprobs(model, processor, images, pairs, backend)
        rc, rr = reference.logprobs(processor, images, pairs, backend)
        loss = batch_loss(cfg, pairs, pc, pr, rc, rr).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"dpo {cfg.method}: non-finite loss at step {step}; lower --lr or --beta"
            )
        backward(loss)
        optimizer_step(trainable, opt, sched)
        chosen = implicit_rewards(pc.detach(), rc, cfg.beta).float().cpu().numpy()
        rejected = implicit_rewards(pr.detach(), rr, cfg.beta).float().cpu().numpy()
        losses.append(float(loss.detach()))
        accuracies.append(ranking_accuracy(chosen, rejected))
        entry = {
            "step": step,
            "dpo/loss": losses[-1],
            "dpo/accuracy": accuracies[-1],
            "dpo/margin": float((chosen - rejected).mean()),
            "dpo/chosen_reward": float(chosen.mean()),
            "dpo/rejected_reward": float(rejected.mean()),
            "lr": sched.get_last_lr()[0],
        }
        if out is not None:
            append_jsonl(out / "log.jsonl", entry)
        if step % 10 == 0 or step == cfg.max_steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{accuracies[-1]:.2f}")
    train_time = time.perf_counter() - start

    window = max(1, min(20, len(losses) // 5))
    bins = np.array_split(np.asarray(losses), min(50, len(losses)))
    metrics.update(
        steps=cfg.max_steps,
        train_time_s=round(train_time, 2),
        train_loss_first=float(np.mean(losses[:window])),
        train_loss_last=float(np.mean(losses[-window:])),
        train_accuracy_last=float(np.mean(accuracies[-window:])),
        train_loss_curve=[round(float(b.mean()), 5) for b in bins],
    )

    eval_records = list(data.eval[: cfg.n_eval_pairs])
    if eval_records:
        implicit = response_implicit_rewards(
            model, reference, processor, images, eval_records, cfg, backend
        )
        own = method_pairs(
            cfg,
            eval_records,
            scores_of(eval_records) if scores_of is not None else None,
            metrics.get("lambda_star", 0.0),
        )
        mixed = [p for p in safe_pairs(eval_records) if p.chosen_unsafe != p.rejected_unsafe]
        for name, pairs in (
            ("", own),
            ("_helpful", helpful_pairs(eval_records)),
            ("_safe", safe_pairs(eval_records)),
            ("_safe_vs_unsafe", mixed),
        ):
            found = pair_metrics(implicit, eval_records, pairs)
            metrics[f"eval{name}_accuracy"] = found["accuracy"]
            metrics[f"eval{name}_margin"] = found["margin"]
        metrics["n_eval_pairs"] = len(eval_records)
    if out is not None:
        save_policy(model, processor, out / "model")
    return model, metrics


__all__ = [
    "dpo_loss",
    "safedpo_loss",
    "mocan_loss",
    "implicit_rewards",
    "Pair",
    "helpful_pairs",
    "safe_pairs",
    "safedpo_pairs",
    "mocan_pairs",
    "DualSolution",
    "tilted_means",
    "mocan_dual_value",
    "mocan_dual",
    "lagrangian_fixed_point",
    "pair_logprobs",
    "train_dpo",
]
