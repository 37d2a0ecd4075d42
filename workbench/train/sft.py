"""SFT: the base ("precursor") policy.

The world's pairs are samples of the precursor mixture (``workbench.data.world``), so
imitating their responses gives a base policy that is useful on benign prompts, sometimes
over-refuses, and often complies with harmful requests -- the starting point that
Safe RLHF-V aligns. Loss: token cross-entropy on the response tokens only,

    L = - (1 / |M|) Σ_{t ∈ M} log π_θ(y_t | x, y_<t),   M = response tokens (+ end of sequence).

On world data three phases run in order: vision pretraining (:func:`pretrain_vision`: object
presence from the projected image features, so that the features tell scenes apart), image
alignment (:func:`captions`: empty question -> the scene's true description) and SFT proper.

The stage trains the tiny VLM (or ``--policy PATH``, optionally through LoRA), saves it under
``sft/model/`` and reports the eval loss and the base policy's gold helpfulness and safety
rate on the test prompts (the number later stages must improve).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import SFTConfig
from ..data.language import describe_sentence, join_sentences
from ..data.render import KINDS
from ..data.store import ImageCache
from ..models.vlm import encode, model_inputs, pooled_image_features
from .common import (
    backward,
    batches,
    chunks,
    optimizer_and_schedule,
    optimizer_step,
)


def demonstrations(
    records: list[dict[str, Any]], which: str = "all"
) -> list[tuple[dict[str, Any], str]]:
    """(prompt record, response) pairs from the training pairs, chosen by their annotations:

    - ``all``: both responses of every pair (the SFT data);
    - ``safe``: the responses annotated safe (``is_response_i_safe``);
    - ``preferred``: per pair, the one response annotated safe, or the more helpful one when
      both are; a pair with no safe response gives none (PPO's PTX data).
    """
    if which == "all":
        return [(r, r[f"response_{i}"]) for r in records for i in (1, 2)]
    if which == "safe":
        return [
            (r, r[f"response_{i}"]) for r in records for i in (1, 2) if r[f"is_response_{i}_safe"]
        ]
    if which == "preferred":
        out = []
        for r in records:
            safe = [i for i in (1, 2) if r[f"is_response_{i}_safe"]]
            if len(safe) == 2:
                safe = [int(r["more_helpful_response_id"])]
            out += [(r, r[f"response_{i}"]) for i in safe]
        return out
    raise ValueError(f"demonstrations: unknown set {which!r}; one of all, safe, preferred")


def captions(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Image-alignment demonstrations, one per scene: an empty question answered with the
    scene's true description (the feature-alignment stage of LLaVA, on the world's scenes).
    The empty question is no template, so no held-out object-template combination leaks."""

    seen: dict[str, tuple[dict[str, Any], str]] = {}
    for r in records:
        if "objects" in r and r["image"] not in seen:
            text = join_sentences(
                [describe_sentence([(o["colour"], o["kind"]) for o in r["objects"]])]
            )
            seen[r["image"]] = ({"image": r["image"], "question": ""}, text)
    return list(seen.values())


def scene_objects(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """One record per scene image (world data only) and ``[n, kinds]`` multi-hot labels of
    the object kinds in it (columns: ``sorted(KINDS)``)."""

    kinds = sorted(KINDS)
    scenes: dict[str, dict[str, Any]] = {}
    for r in records:
        if "objects" in r:
            scenes.setdefault(r["image"], r)
    labels = torch.zeros(len(scenes), len(kinds))
    for j, r in enumerate(scenes.values()):
        for o in r["objects"]:
            labels[j, kinds.index(o["kind"])] = 1.0
    return list(scenes.values()), labels


def presence_accuracy(
    model,
    head: torch.nn.Module,
    processor,
    images: ImageCache,
    scenes,
    labels,
    batch_size: int = 128,
) -> float:
    """Share of scenes whose whole set of objects the presence head gets exactly right."""
    right = 0
    with torch.no_grad():
        for i in range(0, len(scenes), batch_size):
            batch = scene_batch(model, processor, images, scenes[i : i + batch_size])
            logits = head(pooled_image_features(model, batch)).cpu()
            right += int(((logits > 0).float() == labels[i : i + batch_size]).all(1).sum())
    return right / max(1, len(scenes))


def pretrain_vision(
    model, processor, images: ImageCache, records, eval_records, cfg: SFTConfig, progress: bool
) -> dict[str, float]:
    """Object-presence pretraining of the vision tower and projector (world data only).

    Captions and SFT alone do not teach the tiny VLM to see: after them its mean projected
    image features hardly differ between images (their spread across images was 0.10 of their
    size, 0.25 for a fresh model), so the language model had little to read and named the
    wrong objects (gold helpfulness 0.15 on describe prompts). This phase trains a linear head
    on the mean projected features to tell which object kinds a scene holds,

        L = BCE(W · mean_p(proj(vision(x))_p), y),   y = multi-hot object kinds,

    which makes the features say what is in the image before captions and SFT teach the
    language model to put it into words (spread 1.03 after SFT; describe 1.21). The head is
    thrown away afterwards. Returns the presence accuracy (exact object set) on the eval
    scenes and the first and last losses."""
    scenes, labels = scene_objects(records)
    eval_scenes, eval_labels = scene_objects(eval_records)
    param = next(model.parameters())
    head = torch.nn.Linear(_feature_size(model, processor, images, scenes[0]), labels.shape[1]).to(
        param.device
    )
    bundle = torch.nn.ModuleList([model, head])
    vcfg = cfg.replace(
        lr=cfg.vision_lr,
        max_steps=cfg.vision_steps,
        warmup_steps=min(cfg.warmup_steps, cfg.vision_steps),
    )
    opt, sched = optimizer_and_schedule(bundle, vcfg)
    index = list(range(len(scenes)))
    losses: list[float] = []
    bar = tqdm(
        batches(index, cfg.vision_batch_size, cfg.vision_steps, cfg.seed + 3),
        total=cfg.vision_steps,
        desc="sft: vision pretraining",
        disable=not progress,
    )
    for step, idx in enumerate(bar):
        batch = scene_batch(model, processor, images, [scenes[i] for i in idx])
        logits = head(pooled_image_features(model, batch))
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx].to(logits.device))
        backward(loss)
        optimizer_step([p for p in bundle.parameters() if p.requires_grad], opt, sched)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    out = {
        "vision_loss_first": sum(losses[:10]) / max(1, len(losses[:10])),
        "vision_loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])),
    }
    if eval_scenes:
        out["vision_presence_accuracy"] = presence_accuracy(
            model, head, processor, images, eval_scenes, eval_labels
        )
    return out


def scene_batch(model, processor, images: ImageCache, scenes) -> dict[str, torch.Tensor]:
    """The scenes' images under the empty question (the image-alignment prompt), encoded
    for ``model`` and on its device: what :func:`pooled_image_features` reads. The whole
    processor batch, not just the pixels: how an image becomes features (tiles, sizes,
    masks) is the processor's and the model's business."""
    device = next(model.parameters()).device
    batch = encode(processor, [images(r) for r in scenes], [""] * len(scenes))
    return {k: v.to(device) for k, v in batch.items()}


def _feature_size(model, processor, images: ImageCache, record) -> int:
    with torch.no_grad():
        return int(
            pooled_image_features(model, scene_batch(model, processor, images, [record])).shape[-1]
        )


def sft_loss(model, batch: dict[str, torch.Tensor], per_token: float | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens (``response_mask``).

    With ``per_token`` (the average response tokens per sequence), the token sum is divided by
    ``per_token · batch size`` instead of the batch's own token count: every token then
    weighs the same whatever batch it lands in (length-grouped batches of short answers
    would otherwise count each of their tokens more)."""
    out = model(**model_inputs(batch))
    logits = out.logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["response_mask"][:, 1:].to(logits.dtype)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    total = (nll * mask.reshape(-1)).sum()
    if per_token is not None:
        return total / (per_token * mask.shape[0])
    return total / mask.sum().clamp_min(1.0)


def demo_length(demo: tuple[dict[str, Any], str]) -> int:
    """Words in the question and response: the padding key of length-grouped batches."""
    record, text = demo
    return len(record["question"].split()) + len(text.split())


def encode_demos(processor, images: ImageCache, demos) -> dict[str, torch.Tensor]:
    return encode(
        processor,
        [images(r) for r, _ in demos],
        [r["question"] for r, _ in demos],
        [text for _, text in demos],
    )


@torch.no_grad()
def eval_loss(model, processor, images: ImageCache, demos, batch_size: int) -> float:
    model.eval()
    total, weight = 0.0, 0.0
    for chunk in chunks(demos, batch_size):
        batch = encode_demos(processor, images, chunk)
        n = float(batch["response_mask"][:, 1:].sum())
        total += float(sft_loss(model, batch)) * n
        weight += n
    model.train()
    return total / max(weight, 1.0)


def fit(
    model, processor, images: ImageCache, demos, cfg: SFTConfig, desc: str, progress: bool
) -> list[float]:
    """``cfg.max_steps`` AdamW steps of :func:`sft_loss` over ``demos``; returns the losses."""
    opt, sched = optimizer_and_schedule(model, cfg)
    losses: list[float] = []
    stream = batches(demos, cfg.batch_size, cfg.max_steps, cfg.seed, length=demo_length)
    bar = tqdm(stream, total=cfg.max_steps, desc=desc, disable=not progress)
    tokens = sequences = 0.0
    for step, chunk in enumerate(bar):
        batch = encode_demos(processor, images, chunk)
        n = float(batch["response_mask"][:, 1:].sum())
        tokens, sequences = tokens + n, sequences + len(chunk)
        per_token = tokens / sequences  # running mean of response tokens per sequence
        loss = sft_loss(model, batch, per_token=per_token)
        backward(loss)
        optimizer_step(model.parameters(), opt, sched)
        losses.append(loss.item() * per_token * len(chunk) / max(n, 1.0))  # per-token mean
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    return losses
