"""Reward and cost models from preference pairs (docs/design.md §6): one trainer, a ``kind``
switch.

Notation: R = r(x, y), C = c(x, y) are sequence scores of a
:class:`~workbench.models.score.ScoreModel`
read at the last real token; cost > 0 means unsafe. Over a batch of pairs:

- reward, w = more helpful, l = the other response::

      L_R = mean_i[ -log σ(R_w,i - R_l,i) ] + η · mean(R²)

- cost, u = less safe, s = safer, with a sign weight per response::

      L_C = mean_i[ -log σ(C_u,i - C_s,i) - log σ(s_u,i · C_u,i) - log σ(s_s,i · C_s,i) ]
            + η · mean(C²)

  ``s = -harmless_rate`` in the graded (multi-level) mode -- an unsafe response (rate -2)
  gets s = +2, which pushes its C up, a safe one (rate +3) gets s = -3, which pushes C down,
  harder the clearer the label -- or ``s = +1`` (unsafe) / ``-1`` (safe) from ``is_safe`` in
  the binary mode. A sign weight of 0 adds no term (not even the constant log 2).

``mean(X²)`` runs over both responses of every pair. Both responses of a pair go through the
model in one forward pass (the batch is the preferred-high responses, then the others).

Evaluation on the eval split: ``eval_accuracy`` = share of pairs ranked like the label
(R_w > R_l; C_u > C_s); for the cost model also ``eval_sign_accuracy`` (unsafe <=> C > 0
against ``is_safe``) and ``cost_by_level`` (mean C by the annotated severity of the
response). On the synthetic world every accuracy comes with its *label-noise ceiling*: the
accuracy of a perfect gold ranker against the same noisy labels (gold ties count 1/2), and
the scores' Pearson / Spearman correlation with the gold judge. Real data has no gold
fields; those entries are then left out.

**Grounding** (docs/design.md §5): a score model must tell a tip about the object in the image from
the same tip about another object, or RL learns to name any object. On the world, the reward
model trains on *contrast pairs* beside the preference pairs: for a risky training prompt, the
safe-and-helpful answer about the target against the very same answer about another object
(absent from the image, or in it but not asked about), with the loss

    L_G = mean_j[ -log σ(R_right,j - R_other,j) ]

Only the object differs (in every sentence, or in some: policies mix objects within one
answer), so the model can lower L_G only by reading the image. Two auxiliary heads, trained
beside and dropped before saving, bind the text to the image more directly: a *mention* head
on the hidden state at each object word of the contrast answers (BCE: is this the object the
prompt is about?) and a *presence* head on the pooled image features (BCE over the object
kinds in the scene, the SFT stage's vision pretraining carried on)::

    L = L_R + ground_weight · L_G + ground_mention_weight · L_mention
            + ground_vision_weight · L_presence

The metric ``grounding_right_object_rate`` is the share of risky eval prompts where two safe
tips about the target (and a redirection) outscore the same tips about an absent object
(chance 0.5).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import CostConfig, RewardConfig
from ..data import language as L
from ..data.oracle import answer_objects
from ..data.render import KINDS as OBJECT_KINDS
from ..data.schema import SEVERITY_LEVELS, is_world, severity_of_harmless_rate
from ..data.store import DataSplits, ImageCache
from ..data.world import other_object, safe_helpful_sentences
from ..models.score import ScoreModel, score_texts
from ..models.vlm import count_parameters, encode, pooled_image_features
from .common import (
    backward,
    batches,
    chunks,
    optimizer_and_schedule,
    optimizer_step,
    setup,
    starting_model,
)

KINDS = ("reward", "cost")
SIGN_MODES = ("graded", "binary")


# --- losses ---------------------------------------------------------------------------------
def reward_loss(r_better: torch.Tensor, r_worse: torch.Tensor, eta: float) -> torch.Tensor:
    """``L = mean[-log σ(R_w - R_l)] + η · mean(R²)``, R² over both responses of every pair.

    Example: R_w = 1, R_l = 0, η = 0.1 -> -log σ(1) + 0.1 · (1² + 0²) / 2.
    """
    pair = -F.logsigmoid(r_better - r_worse).mean()
    return pair + eta * torch.cat([r_better, r_worse]).pow(2).mean()


def cost_loss(
    c_unsafe: torch.Tensor,
    c_safe: torch.Tensor,
    s_unsafe: torch.Tensor,
    s_safe: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """``L = mean[-log σ(C_u - C_s) - log σ(s_u·C_u) - log σ(s_s·C_s)] + η · mean(C²)``.

    ``s_*`` are the sign weights (:func:`sign_weights`); a weight of exactly 0 contributes no
    term. C² is averaged over both responses of every pair.
    """
    s_unsafe = s_unsafe.to(c_unsafe.dtype)
    s_safe = s_safe.to(c_safe.dtype)
    pair = -F.logsigmoid(c_unsafe - c_safe)
    sign_unsafe = -F.logsigmoid(s_unsafe * c_unsafe) * (s_unsafe != 0)
    sign_safe = -F.logsigmoid(s_safe * c_safe) * (s_safe != 0)
    return (pair + sign_unsafe + sign_safe).mean() + eta * torch.cat([c_unsafe, c_safe]).pow(
        2
    ).mean()


def sign_weights(record: dict[str, Any], mode: str = "graded") -> tuple[float, float]:
    """Sign weights ``(s_1, s_2)`` of a pair's two responses for the cost loss.

    ``graded``: ``s_i = -response_i_harmless_rate`` (-3..+3; positive for unsafe responses);
    ``binary``: ``s_i = +1`` if response i is unsafe, ``-1`` if safe (``is_response_i_safe``).
    """
    if mode == "graded":
        return (
            -float(record["response_1_harmless_rate"]),
            -float(record["response_2_harmless_rate"]),
        )
    if mode == "binary":
        return tuple(-1.0 if record[f"is_response_{i}_safe"] else 1.0 for i in (1, 2))  # type: ignore[return-value]
    raise ValueError(f"unknown sign mode {mode!r}; one of {SIGN_MODES}")


def high_low(record: dict[str, Any], kind: str) -> tuple[int, int]:
    """Response ids ``(high, low)``: the one the model should score higher comes first.
    Reward: (more helpful, other); cost: (less safe, safer)."""
    if kind == "reward":
        better = int(record["more_helpful_response_id"])
        return better, 3 - better
    if kind == "cost":
        safer = int(record["safer_response_id"])
        return 3 - safer, safer
    raise ValueError(f"unknown score model kind {kind!r}; one of {KINDS}")


def pair_loss(
    kind: str,
    records: Sequence[dict[str, Any]],
    high: torch.Tensor,
    low: torch.Tensor,
    cfg: RewardConfig,
) -> torch.Tensor:
    """The loss of ``kind`` on a batch of records whose high/low scores are given."""
    if kind == "reward":
        return reward_loss(high, low, cfg.eta)
    mode = cfg.sign_mode if isinstance(cfg, CostConfig) else "graded"
    signs = [sign_weights(r, mode) for r in records]
    ids = [high_low(r, "cost") for r in records]
    s_high = torch.tensor(
        [s[h - 1] for s, (h, _) in zip(signs, ids, strict=True)], device=high.device
    )
    s_low = torch.tensor(
        [s[lo - 1] for s, (_, lo) in zip(signs, ids, strict=True)], device=high.device
    )
    return cost_loss(high, low, s_high, s_low, cfg.eta)


# --- grounding: contrast pairs ------------------------------------------------------------------
def grounding_prompts(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The world's risky prompts (the contrast pairs' prompts); none for real data."""
    return [
        r
        for r in records
        if "objects" in r and "target" in r and int(r.get("prompt_severity", 0)) > 0
    ]


def _varied_answer(rng: np.random.Generator, target: str) -> list[str]:
    """A safe answer about ``target`` in a random form: one to three tips, and each of the
    risk, a warning, a refusal and a redirection or not, sometimes shuffled -- the forms a
    policy drifts through, not only the canonical one."""
    sentences = (
        [L.risk_sentence(target)] if OBJECT_KINDS[target].risky and rng.random() < 0.6 else []
    )
    k = int(rng.integers(1, len(L.TIP_TEMPLATES) + 1))
    sentences += [
        L.TIP_TEMPLATES[int(i)].format(obj=target)
        for i in rng.choice(len(L.TIP_TEMPLATES), k, replace=False)
    ]
    if rng.random() < 0.3:
        sentences.append(L.WARNING)
    if rng.random() < 0.6:
        sentences.append(L.REDIRECTS[int(rng.integers(len(L.REDIRECTS)))])
    if rng.random() < 0.3:
        sentences = [sentences[int(i)] for i in rng.permutation(len(sentences))]
    if rng.random() < 0.2:
        sentences.insert(0, L.REFUSAL)
    return sentences


def contrast_pair(
    record: dict[str, Any],
    rng: np.random.Generator,
    absent: bool | None = None,
    partial: float = 0.5,
    swap_all: float | None = 0.5,
    varied: float = 0.0,
    risk: bool = True,
) -> tuple[str, str]:
    """``(right, other)``: a safe answer about the record's target -- the canonical
    safe-and-helpful form (without its risk sentence when not ``risk``), or with probability
    ``varied`` a random form (:func:`_varied_answer`) -- and the same sentences with other
    objects named instead (``absent`` from the scene, in it, or either; drawn per sentence):
    in every sentence that names the target with probability ``swap_all`` (``None``: always),
    else in a random non-empty subset of them -- a policy mixes objects within one answer, so
    the model must check each mention. A risk sentence is swapped only to another risky object
    ("the book can be dangerous" would give the swap away without looking at the image). With
    probability ``partial`` one part of the canonical form is left out of both."""
    target = record["target"]
    if rng.random() < varied:
        right = _varied_answer(rng, target)
    else:
        right = safe_helpful_sentences(rng, target, OBJECT_KINDS[target].risky and risk)
        if rng.random() < partial:
            drop = int(rng.integers(len(right)))
            right = right[:drop] + right[drop + 1 :]
    is_risk = [L.parse_sentence(x)[0] == "risk" for x in right]
    others = [other_object(rng, record, absent) for _ in right]
    naming = [
        i
        for i, x in enumerate(right)
        if f" {target} " in f" {x} " and (not is_risk[i] or OBJECT_KINDS[others[i]].risky)
    ]
    if not naming:  # only a risk sentence names the target: swap it to a risky object
        risky = [
            k
            for k in OBJECT_KINDS
            if OBJECT_KINDS[k].risky
            and k not in answer_objects(record)
            and k not in {o["kind"] for o in record["objects"]}
        ]
        naming = [i for i, x in enumerate(right) if f" {target} " in f" {x} "]
        for i in naming:
            others[i] = str(risky[int(rng.integers(len(risky)))])
    if swap_all is None or rng.random() < swap_all:
        swap = set(naming)
    else:
        swap = set(
            rng.choice(naming, size=int(rng.integers(1, len(naming) + 1)), replace=False).tolist()
        )
    wrong = [
        f" {x} ".replace(f" {target} ", f" {others[i]} ").strip() if i in swap else x
        for i, x in enumerate(right)
    ]
    return L.join_sentences(right), L.join_sentences(wrong)


def mention_labels(
    tokenizer,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    targets: Sequence[str],
    words: Sequence[str],
) -> torch.Tensor:
    """Per-token labels of object mentions in the responses: 1 at the last token of a mention
    of the row's target, 0 at a mention of any other object word, -1 elsewhere. Mentions are
    found as token subsequences (the word with and without a leading space), so any tokenizer
    works."""
    labels = torch.full(input_ids.shape, -1.0)
    ids = input_ids.tolist()
    patterns = {}
    for word in words:
        patterns[word] = {
            tuple(tokenizer.encode(w, add_special_tokens=False)) for w in (word, " " + word)
        } - {()}
    for row, (seq, target) in enumerate(zip(ids, targets, strict=True)):
        span = [t for t, m in enumerate(response_mask[row].tolist()) if m]
        if not span:
            continue
        lo, hi = span[0], span[-1] + 1
        for word, pats in patterns.items():
            for pat in pats:
                n = len(pat)
                for start in range(lo, hi - n + 1):
                    if tuple(seq[start : start + n]) == pat:
                        labels[row, start + n - 1] = float(word == target)
    return labels


def mention_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE of the mention head at the labelled positions (``labels`` >= 0), 0 when none."""
    keep = labels >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], labels.to(logits.device)[keep])


def grounding_loss(right: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``L_G = mean[-log σ(R_right - R_other)]``."""
    return -F.logsigmoid(right - other).mean()


@torch.no_grad()
def grounding_rate(
    model: ScoreModel,
    images: ImageCache,
    records: Sequence[dict[str, Any]],
    batch_size: int,
    seed: int = 0,
) -> dict[str, float]:
    """On the risky eval prompts: the share where two safe tips about the target and a
    redirection outscore the same tips about an absent object (``grounding_right_object_rate``),
    about an object in the scene the prompt is not about (``..._in_scene``), and with an absent
    object in one of the tips only (``..._one_sentence``: a mixed answer); ties count 1/2."""
    prompts = grounding_prompts(records)
    if not prompts:
        return {}
    out: dict[str, float] = {}
    for name, absent, swap_all in (
        ("grounding_right_object_rate", True, None),
        ("grounding_right_object_rate_in_scene", False, None),
        ("grounding_right_object_rate_one_sentence", True, 0.0),
    ):
        rng = np.random.default_rng([seed, 11])
        usable = [
            p for p in prompts if absent or {o["kind"] for o in p["objects"]} - answer_objects(p)
        ]
        pairs = [
            contrast_pair(p, rng, absent=absent, partial=0.0, swap_all=swap_all, risk=False)
            for p in usable
        ]
        if not pairs:
            continue
        pics = [images(p) for p in usable]
        questions = [p["question"] for p in usable]
        right = score_texts(model, pics, questions, [a for a, _ in pairs], batch_size)
        other = score_texts(model, pics, questions, [b for _, b in pairs], batch_size)
        out[name] = ranking_accuracy(right, other)
        if absent:
            out["grounding_margin"] = float(np.mean(right - other))
    out["grounding_n_prompts"] = len(prompts)
    return out


# --- batches --------------------------------------------------------------------------------
def _pair_length(record: dict[str, Any]) -> int:
    """Rough token count of the longer sequence of a pair (words; the tiny tokenizer is
    word-level, real tokenizers are close to proportional)."""
    return len(record["question"].split()) + max(
        len(record["response_1"].split()), len(record["response_2"].split())
    )


def encode_pairs(
    processor,
    images: ImageCache,
    records: Sequence[dict[str, Any]],
    kind: str,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """One batch of ``2·B`` sequences: the high responses of ``records``, then the low ones."""
    ids = [high_low(r, kind) for r in records]
    pics = [images(r) for r in records]
    questions = [r["question"] for r in records]
    responses = [r[f"response_{h}"] for r, (h, _) in zip(records, ids, strict=True)] + [
        r[f"response_{lo}"] for r, (_, lo) in zip(records, ids, strict=True)
    ]
    return encode(
        processor, pics + pics, questions + questions, responses, padding_side=padding_side
    )


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def score_responses(
    model: ScoreModel,
    images: ImageCache,
    records: Sequence[dict[str, Any]],
    batch_size: int,
    progress: bool = False,
    desc: str = "score",
) -> np.ndarray:
    """Scores ``[N, 2]`` of both responses of every record (shortest sequences batched together)."""
    items = [(n, i) for n in range(len(records)) for i in (1, 2)]
    items.sort(
        key=lambda item: (
            len(records[item[0]]["question"].split())
            + len(records[item[0]][f"response_{item[1]}"].split())
        )
    )
    out = np.zeros((len(records), 2), dtype=np.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for chunk in tqdm(
        list(chunks(items, batch_size)), desc=desc, disable=not progress, leave=False
    ):
        recs = [records[n] for n, _ in chunk]
        batch = encode(
            model.processor,
            [images(r) for r in recs],
            [r["question"] for r in recs],
            [r[f"response_{i}"] for r, (_, i) in zip(recs, chunk, strict=True)],
        )
        scores, _ = model(_to(batch, device))
        for (n, i), s in zip(chunk, scores.float().cpu().tolist(), strict=True):
            out[n, i - 1] = s
    model.train(was_training)
    return out


# --- metrics --------------------------------------------------------------------------------
def ranking_accuracy(high: np.ndarray, low: np.ndarray) -> float:
    """Share of pairs with ``high > low``; ties count 1/2."""
    high, low = np.asarray(high, dtype=float), np.asarray(low, dtype=float)
    if high.size == 0:
        return float("nan")
    return float(np.mean((high > low) + 0.5 * (high == low)))


def gold_value(record: dict[str, Any], response: int, kind: str) -> float:
    """What the perfect ``kind`` model would score: gold helpfulness (reward) or minus the
    gold harmlessness (cost: higher = less safe)."""
    if kind == "reward":
        return float(record[f"response_{response}_gold_helpfulness"])
    return -float(record[f"response_{response}_gold_harmlessness"])


def ranking_ceiling(records: Sequence[dict[str, Any]], kind: str) -> float:
    """Accuracy of a perfect gold ranker against the noisy preference labels (ties 1/2)."""
    ids = [high_low(r, kind) for r in records]
    high = [gold_value(r, h, kind) for r, (h, _) in zip(records, ids, strict=True)]
    low = [gold_value(r, lo, kind) for r, (_, lo) in zip(records, ids, strict=True)]
    return ranking_accuracy(np.array(high), np.array(low))


def sign_ceiling(records: Sequence[dict[str, Any]]) -> float:
    """Agreement of the ``is_safe`` labels with the gold judge's safety (harmlessness > 0)."""
    agree = [
        (r[f"response_{i}_gold_harmlessness"] > 0) == bool(r[f"is_response_{i}_safe"])
        for r in records
        for i in (1, 2)
    ]
    return float(np.mean(agree))


def correlations(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Pearson and Spearman (Pearson of average ranks) correlation of ``x`` and ``y``."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size < 2 or xs.std() == 0 or ys.std() == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    rx = pd.Series(xs).rank(method="average").to_numpy()
    ry = pd.Series(ys).rank(method="average").to_numpy()
    return {
        "pearson": float(np.corrcoef(xs, ys)[0, 1]),
        "spearman": float(np.corrcoef(rx, ry)[0, 1]),
    }


def evaluate(
    kind: str, scores: np.ndarray, records: Sequence[dict[str, Any]], cfg: RewardConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of ``kind`` from the eval scores ``[N, 2]``, and one row per eval response."""
    ids = [high_low(r, kind) for r in records]
    high = np.array([scores[n, h - 1] for n, (h, _) in enumerate(ids)])
    low = np.array([scores[n, lo - 1] for n, (_, lo) in enumerate(ids)])
    loss = pair_loss(kind, records, torch.tensor(high), torch.tensor(low), cfg)
    metrics: dict[str, Any] = {
        "eval_accuracy": ranking_accuracy(high, low),
        "eval_loss": float(loss),
        "n_eval_pairs": len(records),
        "eval_score_mean": float(scores.mean()),
        "eval_score_std": float(scores.std()),
    }
    gold = is_world(records)
    if gold:
        metrics["eval_accuracy_ceiling"] = ranking_ceiling(records, kind)
    levels = [
        [severity_of_harmless_rate(int(r[f"response_{i}_harmless_rate"])) for i in (1, 2)]
        for r in records
    ]
    if kind == "cost":
        unsafe = np.array([[not r[f"is_response_{i}_safe"] for i in (1, 2)] for r in records])
        metrics["eval_sign_accuracy"] = float(np.mean((scores > 0) == unsafe))
        if gold:
            metrics["eval_sign_accuracy_ceiling"] = sign_ceiling(records)
        flat_levels = np.array(levels).reshape(-1)
        metrics["cost_by_level"] = {
            lvl: float(scores.reshape(-1)[flat_levels == lvl].mean())
            for lvl in SEVERITY_LEVELS
            if (flat_levels == lvl).any()
        }
        metrics["count_by_level"] = {
            lvl: int((flat_levels == lvl).sum()) for lvl in SEVERITY_LEVELS
        }
    else:
        rates = np.array(
            [[int(r[f"response_{i}_helpful_rate"]) for i in (1, 2)] for r in records]
        ).reshape(-1)
        metrics["reward_by_helpful_rate"] = {
            str(k): float(scores.reshape(-1)[rates == k].mean())
            for k in range(4)
            if (rates == k).any()
        }
    if gold:
        target = "helpfulness" if kind == "reward" else "harmlessness"
        gold_values = [r[f"response_{i}_gold_{target}"] for r in records for i in (1, 2)]
        corr = correlations(scores.reshape(-1), gold_values)
        metrics[f"gold_pearson_{target}"] = corr["pearson"]
        metrics[f"gold_spearman_{target}"] = corr["spearman"]

    rows = []
    for n, r in enumerate(records):
        for i in (1, 2):
            row = {
                "id": r.get("id", f"eval-{n:06d}"),
                "response": i,
                "score": float(scores[n, i - 1]),
                "preferred": i == ids[n][0] if kind == "reward" else i == ids[n][1],
                "level": levels[n][i - 1],
                "harmless_rate": int(r[f"response_{i}_harmless_rate"]),
                "helpful_rate": int(r[f"response_{i}_helpful_rate"]),
                "is_safe": bool(r[f"is_response_{i}_safe"]),
                "category": r.get("category"),
            }
            if gold:
                row["gold_helpfulness"] = float(r[f"response_{i}_gold_helpfulness"])
                row["gold_harmlessness"] = float(r[f"response_{i}_gold_harmlessness"])
            rows.append(row)
    return metrics, rows


# --- the trainer ------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _curve(values: Sequence[float], points: int = 50) -> list[float]:
    """``values`` averaged into at most ``points`` consecutive bins (the notebook's loss curve)."""
    if not values:
        return []
    bins = np.array_split(np.asarray(values, dtype=float), min(points, len(values)))
    return [round(float(b.mean()), 5) for b in bins]


def train_preference(
    kind: str, cfg: RewardConfig, data: DataSplits, init: Path | None, progress: bool = True
) -> tuple[ScoreModel, dict[str, Any], list[dict[str, Any]]]:
    """Train a ``kind`` (reward | cost) score model on ``data``'s train pairs, starting from the
    policy in ``init`` (or ``cfg.policy``), and evaluate it on the eval pairs. Returns the
    model, its metrics and the per-response eval scores."""
    if kind not in KINDS:
        raise ValueError(f"unknown score model kind {kind!r}; one of {KINDS}")
    if not data.train:
        raise ValueError(f"the data stage in {data.root} has no training pairs")
    setup(cfg)
    backbone, processor = starting_model(cfg, init)
    model = ScoreModel(backbone, processor, kind=kind)
    model.train()
    device = next(model.parameters()).device
    images = ImageCache(data)
    object_words = sorted(OBJECT_KINDS)
    contrast = grounding_prompts(data.train) if cfg.ground_weight > 0 else []  # world data only
    mention_head = None
    if cfg.ground_mention_weight > 0 and contrast:
        # is the object named at this token the one the prompt is about? (trained beside, not saved)
        mention_head = model.mention_head = torch.nn.Linear(model.head.in_features, 1).to(device)
    presence_head = None
    if cfg.ground_vision_weight > 0 and contrast:
        # which object kinds the image holds, from the pooled image features
        # (SFT's vision pretraining, kept up)
        with torch.no_grad():
            probe = encode(processor, [images(data.train[0])], [data.train[0]["question"]])
            size = pooled_image_features(model.backbone, _to(probe, device)).shape[-1]
        presence_head = model.presence_head = torch.nn.Linear(size, len(object_words)).to(device)
    opt, sched = optimizer_and_schedule(
        model,
        cfg,
        lr_multipliers={
            "head.": cfg.head_lr_multiplier,
            "mention_head.": cfg.head_lr_multiplier,
            "presence_head.": cfg.head_lr_multiplier,
        },
    )

    losses: list[float] = []
    accuracies: list[float] = []
    ground_losses: list[float] = []
    mention_losses: list[float] = []
    start = time.perf_counter()
    stream = batches(data.train, cfg.batch_size, cfg.max_steps, cfg.seed, length=_pair_length)
    contrast_stream = (
        batches(contrast, cfg.ground_batch_size, cfg.max_steps, cfg.seed + 3) if contrast else None
    )
    contrast_rng = np.random.default_rng([cfg.seed, 5])
    bar = tqdm(stream, total=cfg.max_steps, desc=kind, disable=not progress)
    for step, records in enumerate(bar):
        scores, _ = model(_to(encode_pairs(processor, images, records, kind), device))
        high, low = scores[: len(records)], scores[len(records) :]
        loss = pair_loss(kind, records, high, low, cfg)
        if contrast_stream is not None:  # L + ground_weight · L_G on contrast pairs (module doc)
            recs = next(contrast_stream)
            pairs = [contrast_pair(r, contrast_rng, varied=0.5) for r in recs]
            pics, questions = [images(r) for r in recs], [r["question"] for r in recs]
            batch = encode(
                processor,
                pics + pics,
                questions + questions,
                [a for a, _ in pairs] + [b for _, b in pairs],
            )
            g_scores, _, hidden = model(_to(batch, device), return_hidden=True)
            g_loss = grounding_loss(g_scores[: len(recs)], g_scores[len(recs) :])
            loss = loss + cfg.ground_weight * g_loss
            if mention_head is not None:
                labels = mention_labels(
                    processor.tokenizer,
                    batch["input_ids"],
                    batch["response_mask"],
                    [r["target"] for r in recs] * 2,
                    object_words,
                )
                m_loss = mention_loss(
                    mention_head(hidden.to(mention_head.weight.dtype)).squeeze(-1), labels
                )
                loss = loss + cfg.ground_mention_weight * m_loss
                mention_losses.append(float(m_loss.detach()))
            if presence_head is not None:
                present = torch.tensor(
                    [
                        [float(w in {o["kind"] for o in r["objects"]}) for w in object_words]
                        for r in recs
                    ],
                    device=device,
                )
                # the first half's images under their questions (a family may lay the
                # images of a batch out in any way, so no slicing of pixel_values)
                feats = pooled_image_features(
                    model.backbone, _to(encode(processor, pics, questions), device)
                )
                v_loss = F.binary_cross_entropy_with_logits(
                    presence_head(feats.to(presence_head.weight.dtype)), present
                )
                loss = loss + cfg.ground_vision_weight * v_loss
            ground_losses.append(float(g_loss.detach()))
        backward(loss)
        optimizer_step(model.parameters(), opt, sched)
        losses.append(float(loss.detach()))
        accuracies.append(
            ranking_accuracy(
                high.detach().float().cpu().numpy(), low.detach().float().cpu().numpy()
            )
        )
        if step % 10 == 0 or step == cfg.max_steps - 1:
            bar.set_postfix(loss=f"{_mean(losses[-20:]):.3f}", acc=f"{_mean(accuracies[-20:]):.2f}")

    train_time = time.perf_counter() - start
    if mention_head is not None:
        del model.mention_head
    if presence_head is not None:
        del model.presence_head
    eval_scores = score_responses(
        model, images, data.eval, cfg.eval_batch_size, progress, desc=f"{kind}: eval"
    )
    metrics, rows = evaluate(kind, eval_scores, data.eval, cfg) if data.eval else ({}, [])
    if (
        kind == "reward"
    ):  # grounding first among the keys naming it (readers take the first such key)
        metrics = {
            **grounding_rate(model, images, data.eval, cfg.eval_batch_size, cfg.seed),
            **metrics,
        }
    eval_time = time.perf_counter() - start - train_time
    window = max(1, min(20, len(losses) // 10))
    metrics.update(
        {
            "steps": cfg.max_steps,
            "n_train_pairs": len(data.train),
            "train_loss_first": _mean(losses[:window]),
            "train_loss_last": _mean(losses[-window:]),
            "train_accuracy_last": _mean(accuracies[-window:]),
            "train_loss_curve": _curve(losses),
            **(
                {
                    "ground_loss_first": _mean(ground_losses[:window]),
                    "ground_loss_last": _mean(ground_losses[-window:]),
                }
                if ground_losses
                else {}
            ),
            **(
                {
                    "mention_loss_first": _mean(mention_losses[:window]),
                    "mention_loss_last": _mean(mention_losses[-window:]),
                }
                if mention_losses
                else {}
            ),
            "train_time_s": round(train_time, 2),
            "eval_time_s": round(eval_time, 2),
            "init": str(cfg.policy or init),
            "parameters": count_parameters(model),
            "trainable_parameters": count_parameters(model, trainable_only=True),
        }
    )
    if kind == "cost":
        metrics["sign_mode"] = cfg.sign_mode if isinstance(cfg, CostConfig) else "graded"
    return model, metrics, rows


__all__ = [
    "grounding_prompts",
    "contrast_pair",
    "mention_labels",
    "mention_loss",
    "grounding_loss",
    "grounding_rate",
    "reward_loss",
    "cost_loss",
    "sign_weights",
    "high_low",
    "pair_loss",
    "encode_pairs",
    "score_responses",
    "ranking_accuracy",
    "ranking_ceiling",
    "sign_ceiling",
    "correlations",
    "evaluate",
    "train_preference",
]
