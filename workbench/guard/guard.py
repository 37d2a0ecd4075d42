"""Beaver-Guard-V: a multi-level guard on a score-model backbone (docs/design.md §7).

Two heads read the backbone's hidden state ``h`` at the last real token:

- **severity**, ordinal over safe < minor < moderate < severe: one score ``s = w·h`` and
  three ordered thresholds ``θ_0 < θ_1 < θ_2`` (``θ_k = θ_{k-1} + softplus(ρ_k)``), with
  ``P(level > k) = σ(s - θ_k)`` (the cumulative-logit model). Loss, for a true level y::

      L_sev = Σ_{k=0..2} BCE(σ(s - θ_k), [y > k])

  e.g. s = 0, θ = (-1, 0, 1), y = 2 (moderate): ``-log σ(1) - log σ(0) - log(1 - σ(-1))``.
  Decision: the highest level whose exceedance probability passes its cut-off --
  ``P(level > k) > 0.5`` for minor and moderate, ``> severe_cutoff`` for severe.
- **category**, 21-way softmax over the 20 BeaverTails-V categories and ``none``:
  ``L_cat = CE``. The training loss is ``L_sev + category_weight · L_cat`` (batch means).

A third, auxiliary head reads the image alone -- the mean of the projected image features the
language model receives -- and classifies the image's severity (``image_severity``, 0..3,
which BeaverTails-V records carry too) with cross-entropy, weighted ``image_weight``. It
trains the vision side to see what makes an image risky: "how do I use this?" is harmless
beside a flower and harmful beside a knife, and only the image tells them apart.

One guard serves two modes: *query screening* judges (image, question) before anything is
generated -- the conversation has an empty answer -- and *answer moderation* judges (image,
question, response). Labels come from the data stage: an answer's level from its harmless
rate (-1 minor, -2 moderate, -3 severe; safe otherwise) and its category is the record's
when unsafe, else ``none``; a query's level is the world's ``prompt_severity`` (real
BeaverTails-V: ``image_severity``) with the prompt's category.

On disk a guard is a score-model directory (backbone + ``score_head.safetensors``, the
severity head) plus ``guard_heads.safetensors`` (thresholds, category head) and
``guard_config.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from safetensors.torch import load_file, save_file

from ..data.schema import CATEGORIES, NO_CATEGORY, SEVERITY_LEVELS, severity_of_harmless_rate
from ..data.world import harmless_rate
from ..models.score import ScoreModel, last_token_index
from ..models.vlm import VLMError, encode, pooled_image_features
from .regenerate import Verdict

#: The category head's classes: ``none`` first, then the 20 categories.
LABELS: tuple[str, ...] = (NO_CATEGORY, *CATEGORIES)
GUARD_HEADS = "guard_heads.safetensors"
GUARD_CONFIG = "guard_config.json"


# --- the ordinal severity model ----------------------------------------------------------------
def thresholds_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """Ordered thresholds ``θ_0 = ρ_0``, ``θ_k = θ_{k-1} + softplus(ρ_k)``."""
    return torch.cat([raw[:1], raw[:1] + torch.cumsum(F.softplus(raw[1:]), 0)])


def ordinal_targets(levels: torch.Tensor, n_levels: int = len(SEVERITY_LEVELS)) -> torch.Tensor:
    """``[B, n_levels-1]`` targets ``[y > k]``: minor (1) -> (1, 0, 0), severe (3) -> (1, 1, 1)."""
    ks = torch.arange(n_levels - 1, device=levels.device)
    return (levels[:, None] > ks[None, :]).float()


def ordinal_loss(
    score: torch.Tensor, thresholds: torch.Tensor, levels: torch.Tensor
) -> torch.Tensor:
    """``mean_b Σ_k BCE(σ(s_b - θ_k), [y_b > k])`` (see the module docstring)."""
    logits = score[:, None] - thresholds[None, :]
    bce = F.binary_cross_entropy_with_logits(
        logits, ordinal_targets(levels, thresholds.numel() + 1), reduction="none"
    )
    return bce.sum(dim=1).mean()


def level_probabilities(score: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``[B, 4]`` P(level = j): ``1 - σ(z_0)``, ``σ(z_{j-1}) - σ(z_j)``, ``σ(z_2)``;
    ``z_k = s - θ_k``."""
    above = torch.sigmoid(score[:, None] - thresholds[None, :])  # P(level > k)
    ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
    cum = torch.cat([ones, above, zeros], dim=1)  # P(level > k) for k = -1..3
    return (cum[:, :-1] - cum[:, 1:]).clamp_min(0.0)


def decide_levels(probs: torch.Tensor, severe_cutoff: float | torch.Tensor = 0.5) -> torch.Tensor:
    """The highest level j whose exceedance ``P(level >= j)`` passes its cut-off (0.5 for
    minor and moderate, ``severe_cutoff`` for severe: one number, or one per row); 0 (safe)
    when none does. Severe needs the item to be unsafe at all (``P(level >= minor) > 0.5``),
    so a low severe cut-off turns unsafe answers severe, never safe ones."""
    exceed = probs.flip(1).cumsum(1).flip(1)[:, 1:]  # P(level >= j), j = 1..3
    cutoffs = torch.full_like(exceed, 0.5)
    cutoffs[:, -1] = torch.as_tensor(severe_cutoff, dtype=exceed.dtype, device=exceed.device)
    passed = exceed > cutoffs
    passed[:, -1] &= passed[:, 0]
    ranks = torch.arange(1, exceed.shape[1] + 1, device=probs.device)
    return (passed * ranks).amax(dim=1)


# --- labels --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardExample:
    """One guard example: a query (``response`` None) or an answer, with its labels."""

    record: dict[str, Any]
    response: str | None
    level: int
    category: int

    @property
    def image_level(self) -> int:
        return int(self.record.get("image_severity", 0))

    @property
    def mode(self) -> str:
        return "query" if self.response is None else "answer"


def query_label(record: dict[str, Any]) -> tuple[int, int]:
    """(level, category) of a record's query: world ``prompt_severity``/``prompt_category``,
    real data ``image_severity``/``category``."""
    level = int(record.get("prompt_severity", record.get("image_severity", 0)))
    category = (
        record.get("prompt_category", record.get("category", NO_CATEGORY))
        if level > 0
        else NO_CATEGORY
    )
    return level, LABELS.index(category if category in LABELS else NO_CATEGORY)


def answer_label(record: dict[str, Any], i: int) -> tuple[int, int]:
    """(level, category) of response ``i``: level from its harmless rate; the record's
    category when the answer is unsafe, else ``none``."""
    level = SEVERITY_LEVELS.index(
        severity_of_harmless_rate(int(record[f"response_{i}_harmless_rate"]))
    )
    category = record.get("category", NO_CATEGORY) if level > 0 else NO_CATEGORY
    return level, LABELS.index(category if category in LABELS else NO_CATEGORY)


def guard_examples(
    records: Sequence[dict[str, Any]], queries: bool = True, answers: bool = True
) -> list[GuardExample]:
    """A query example and two answer examples per record (in record order)."""
    out = []
    for r in records:
        if queries:
            out.append(GuardExample(r, None, *query_label(r)))
        if answers:
            out.extend(GuardExample(r, r[f"response_{i}"], *answer_label(r, i)) for i in (1, 2))
    return out


def calibrate_severe_cutoff(p_severe: ArrayLike, target_recall: float) -> float:
    """The largest cut-off on P(level = severe) at which at least ``target_recall`` of the
    given truly severe items are predicted severe (``p > cutoff``): a recall-first operating
    point, chosen on held-out data."""
    p = np.sort(np.asarray(p_severe, dtype=float))
    if p.size == 0:
        raise ValueError("calibrate_severe_cutoff needs at least one severe item")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    missed = int(np.floor((1 - target_recall) * p.size + 1e-9))  # items allowed below the cut-off
    # predicted severe when p > cutoff: the cut-off sits just below the (missed)-th smallest
    # score, one float32 step (the precision the guard compares in)
    if missed >= p.size:
        return float(p[-1])
    return float(np.nextafter(np.float32(p[missed]), np.float32(-np.inf)))


def gold_answer_level(record: dict[str, Any], i: int) -> int:
    """The noise-free level of response ``i`` from the world's gold harmlessness (the label
    a perfect guard would reproduce; the ceiling's reference)."""

    g = float(record[f"response_{i}_gold_harmlessness"])
    return SEVERITY_LEVELS.index(severity_of_harmless_rate(harmless_rate(g, g)))


# --- the model -----------------------------------------------------------------------------------
class GuardModel(ScoreModel):
    """A :class:`ScoreModel` whose head is the severity score, plus ordered thresholds and a
    category head. ``forward(batch) -> (severity score [B], category logits [B, 21])``."""

    def __init__(
        self,
        backbone: torch.nn.Module,
        processor: Any = None,
        head_std: float = 1e-3,
        kind: str = "guard",
        severe_cutoff: float = 0.5,
        query_severe_cutoff: float | None = None,
    ):
        super().__init__(backbone, processor, head_std=head_std, kind=kind)
        self.severe_cutoff = severe_cutoff
        """Cut-off on P(severe) for answers."""
        self.query_severe_cutoff = (
            severe_cutoff if query_severe_cutoff is None else query_severe_cutoff
        )
        """Cut-off on P(severe) for queries (image + question, no answer)."""
        # θ starts at (-1, 0, 1): softplus(ρ) = 1 <=> ρ = log(e - 1)
        step = math.log(math.e - 1.0)
        param = self.head.weight
        self.raw_thresholds = torch.nn.Parameter(
            torch.tensor([-1.0, step, step], dtype=param.dtype, device=param.device)
        )
        self.category_head = torch.nn.Linear(self.head.in_features, len(LABELS)).to(
            param.device, param.dtype
        )
        torch.nn.init.normal_(self.category_head.weight, std=1e-2)
        torch.nn.init.zeros_(self.category_head.bias)
        self.image_head = torch.nn.Linear(self.head.in_features, len(SEVERITY_LEVELS)).to(
            param.device, param.dtype
        )
        torch.nn.init.normal_(self.image_head.weight, std=1e-2)
        torch.nn.init.zeros_(self.image_head.bias)

    @property
    def thresholds(self) -> torch.Tensor:
        return thresholds_from_raw(self.raw_thresholds)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        hidden = self.hidden_states(batch)
        index = last_token_index(batch["attention_mask"]).to(hidden.device)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), index].to(
            self.head.weight.dtype
        )
        return self.head(h).squeeze(-1), self.category_head(h)

    def image_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 4]`` image-severity logits from the mean projected image features of
        ``batch`` (an :meth:`encode` batch: the whole processor output, which every family
        needs to place its image features)."""
        try:
            pooled = pooled_image_features(self.backbone, batch)
        except VLMError as exc:
            raise VLMError(f"{exc}; train the guard with --image-weight 0") from None
        return self.image_head(pooled.to(self.image_head.weight.dtype))

    def loss(
        self,
        batch: dict[str, torch.Tensor],
        levels: torch.Tensor,
        categories: torch.Tensor,
        category_weight: float,
        image_levels: torch.Tensor | None = None,
        image_weight: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, severity loss, category loss)`` of one batch; with ``image_levels`` and
        ``image_weight`` > 0 the total also has the image-severity cross-entropy."""
        score, logits = self(batch)
        sev = ordinal_loss(score, self.thresholds, levels.to(score.device))
        cat = F.cross_entropy(logits, categories.to(score.device))
        total = sev + category_weight * cat
        if image_levels is not None and image_weight > 0:
            total = total + image_weight * F.cross_entropy(
                self.image_logits(batch), image_levels.to(score.device)
            )
        return total, sev, cat

    # -- judging --------------------------------------------------------------------------
    def encode(
        self, images: list[Any], questions: list[str], responses: Sequence[str | None] | None
    ):
        """A batch of conversations; a query has an empty answer (``None`` or no responses)."""
        texts = [("" if r is None else r) for r in (responses or [None] * len(questions))]
        batch = encode(self.processor, images, questions, texts)
        batch.pop("response_mask", None)
        device = self.head.weight.device
        return {k: v.to(device) for k, v in batch.items()}

    @torch.no_grad()
    def predict(
        self,
        images: list[Any],
        questions: list[str],
        responses: Sequence[str | None] | None = None,
        batch_size: int = 64,
    ) -> dict[str, np.ndarray]:
        """Arrays ``level`` [N], ``level_probs`` [N, 4], ``category`` [N], ``category_probs``
        [N, 21]."""
        was_training = self.training
        self.eval()
        out: dict[str, list] = {
            "level": [],
            "level_probs": [],
            "category": [],
            "category_probs": [],
        }
        for start in range(0, len(questions), batch_size):
            stop = start + batch_size
            chunk = (
                [None] * len(questions[start:stop])
                if responses is None
                else list(responses[start:stop])
            )
            batch = self.encode(images[start:stop], questions[start:stop], chunk)
            score, logits = self(batch)
            probs = level_probabilities(score.float(), self.thresholds.float())
            cutoffs = torch.tensor(
                [self.query_severe_cutoff if r is None else self.severe_cutoff for r in chunk],
                device=probs.device,
            )
            out["level"].append(decide_levels(probs, cutoffs).cpu().numpy())
            out["level_probs"].append(probs.float().cpu().numpy())
            cprobs = logits.float().softmax(-1)
            out["category"].append(cprobs.argmax(-1).cpu().numpy())
            out["category_probs"].append(cprobs.float().cpu().numpy())
        self.train(was_training)
        if not out["level"]:
            return {
                "level": np.zeros(0, int),
                "level_probs": np.zeros((0, 4)),
                "category": np.zeros(0, int),
                "category_probs": np.zeros((0, len(LABELS))),
            }
        return {k: np.concatenate(v) for k, v in out.items()}

    def judge(
        self,
        images: list[Any],
        questions: list[str],
        responses: Sequence[str | None] | None = None,
        batch_size: int = 64,
    ) -> list[Verdict]:
        """The :data:`~workbench.guard.regenerate.Guard` protocol: one :class:`Verdict` per item."""
        p = self.predict(list(images), list(questions), responses, batch_size)
        verdicts = []
        for level, probs, cprobs in zip(
            p["level"], p["level_probs"], p["category_probs"], strict=True
        ):
            level = int(level)
            # a safe verdict has no category; an unsafe one names its most likely harm category
            cat = NO_CATEGORY if level == 0 else LABELS[int(cprobs[1:].argmax()) + 1]
            verdicts.append(
                Verdict(
                    level=SEVERITY_LEVELS[level],
                    category=cat,
                    probability=float(probs[level]),
                    p_unsafe=float(1.0 - probs[0]),
                )
            )
        return verdicts

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:

        path = super().save(path)
        tensors = {
            "raw_thresholds": self.raw_thresholds.detach().cpu().contiguous(),
            "category.weight": self.category_head.weight.detach().cpu().contiguous(),
            "category.bias": self.category_head.bias.detach().cpu().contiguous(),
            "image.weight": self.image_head.weight.detach().cpu().contiguous(),
            "image.bias": self.image_head.bias.detach().cpu().contiguous(),
        }
        save_file(tensors, str(path / GUARD_HEADS))
        config = {
            "levels": list(SEVERITY_LEVELS),
            "categories": list(LABELS),
            "severe_cutoff": self.severe_cutoff,
            "query_severe_cutoff": self.query_severe_cutoff,
            "severity": "cumulative logit, P(level > k) = sigmoid(s - theta_k)",
        }
        (path / GUARD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, trainable: bool = False) -> GuardModel:

        path = Path(path)
        if not (path / GUARD_HEADS).is_file() or not (path / GUARD_CONFIG).is_file():
            raise VLMError(
                f"{path} is not a guard directory (needs {GUARD_HEADS} and {GUARD_CONFIG}); "
                f"the guard stage writes one under <run_dir>/guard/model"
            )
        model = super().load(path, trainable=trainable)
        config = json.loads((path / GUARD_CONFIG).read_text())
        if (
            tuple(config.get("categories", ())) != LABELS
            or tuple(config.get("levels", ())) != SEVERITY_LEVELS
        ):
            raise VLMError(f"{path / GUARD_CONFIG}: levels/categories differ from this workbench's")
        tensors = load_file(str(path / GUARD_HEADS))
        with torch.no_grad():
            model.raw_thresholds.copy_(tensors["raw_thresholds"])
            model.category_head.weight.copy_(tensors["category.weight"])
            model.category_head.bias.copy_(tensors["category.bias"])
            if "image.weight" in tensors:
                model.image_head.weight.copy_(tensors["image.weight"])
                model.image_head.bias.copy_(tensors["image.bias"])
        model.severe_cutoff = float(config.get("severe_cutoff", 0.5))
        model.query_severe_cutoff = float(config.get("query_severe_cutoff", model.severe_cutoff))
        return model


# --- metrics -------------------------------------------------------------------------------------
def classification_metrics(
    true: ArrayLike, pred: ArrayLike, names: Sequence[str]
) -> dict[str, Any]:
    """accuracy, macro F1 (over the classes present in ``true``), per-class precision /
    recall / F1 / support, and the confusion matrix (rows true, columns predicted)."""
    true, pred = np.asarray(true, dtype=int), np.asarray(pred, dtype=int)
    k = len(names)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (true, pred), 1)
    per: dict[str, dict[str, float]] = {}
    f1s = []
    for j, name in enumerate(names):
        tp, support, predicted = confusion[j, j], confusion[j].sum(), confusion[:, j].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else float("nan")
        f1 = (
            2 * precision * recall / (precision + recall)
            if support and (precision + recall)
            else 0.0
        )
        per[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
        if support:
            f1s.append(f1)
    return {
        "accuracy": float((true == pred).mean()) if true.size else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "per_level": per,
        "confusion": confusion.tolist(),
    }


__all__ = [
    "GuardModel",
    "GuardExample",
    "LABELS",
    "ordinal_loss",
    "ordinal_targets",
    "level_probabilities",
    "decide_levels",
    "thresholds_from_raw",
    "query_label",
    "answer_label",
    "guard_examples",
    "gold_answer_level",
    "calibrate_severe_cutoff",
    "classification_metrics",
]
