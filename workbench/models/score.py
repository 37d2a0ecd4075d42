"""Score models: a VLM backbone plus a linear head without bias (docs/design.md §5).

The reward model r(x, y), the cost model c(x, y) and (later) the PPO critics are all one
shape: the backbone's last hidden states ``h_t`` (the language model head is never computed)
and a bias-free linear head ``w``::

    v_t = w · h_t                      per-token values  [B, T]   (the critics' V(t))
    score = v_{t*},   t* = max{t : attention_mask_t = 1}          [B]

``t*`` is the last *real* token -- the closing end-of-sequence token of the response --
whatever side the batch is padded on (reading the last column instead would score a padding
token under right padding; docs/design.md §6 lists that as a known bug of the official trainer).

The backbone is any HF image-text-to-text model, possibly wrapped in a ``peft`` LoRA
adapter. On disk a score model is the backbone's own directory (``save_pretrained``,
safetensors, with the processor; only the adapter for a ``peft`` backbone) plus
``score_head.safetensors`` and ``score_config.json``, so the backbone directory also loads
as a plain VLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .adapters import load_policy, save_policy
from .device import place
from .vlm import VLMError, encode

HEAD_FILE = "score_head.safetensors"
SCORE_CONFIG = "score_config.json"
#: Batch entries that are ours, not the model's (``encode`` adds ``response_mask``).
NON_MODEL_KEYS = frozenset({"response_mask", "labels"})


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row: ``max{t : mask_t = 1}``.

    Right padding ``[1 1 1 0 0]`` -> 2; left padding ``[0 0 1 1 1]`` -> 4. A row without
    any real token gets 0.
    """
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be [batch, time], got shape {tuple(attention_mask.shape)}"
        )
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * (attention_mask > 0)).amax(dim=1)


def hidden_size_of(backbone: torch.nn.Module) -> int:
    """Hidden size of the backbone's language model (``text_config`` for a VLM)."""
    config: Any = backbone.config  # a transformers config (nn.Module types it as Tensor | Module)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"cannot find the hidden size of {type(backbone).__name__} in its config")
    return size


def _unwrap(backbone: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a ``peft`` wrapper (its LoRA layers stay active)."""
    get_base_model = getattr(backbone, "get_base_model", None)
    return get_base_model() if get_base_model is not None else backbone


class ScoreModel(torch.nn.Module):
    """``backbone`` + ``Linear(hidden, 1, bias=False)``; ``forward(batch) -> (scores, values)``.

    ``processor`` is kept beside the model (not a module) so that :meth:`save` writes a
    directory any later stage can load with :meth:`load`. ``head_std`` sets the initial head
    weights ``w ~ N(0, head_std²)``: small, so that initial scores are close to 0.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        processor: Any = None,
        head_std: float = 1e-3,
        kind: str = "score",
    ):
        super().__init__()
        self.backbone = backbone
        self.processor = processor
        self.kind = kind
        self.head = torch.nn.Linear(hidden_size_of(backbone), 1, bias=False)
        torch.nn.init.normal_(self.head.weight, std=head_std)
        param = next(backbone.parameters())
        self.head.to(device=param.device, dtype=param.dtype)

    # -- forward --------------------------------------------------------------------------
    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states ``[B, T, H]`` of the language model, without the LM head.

        Uses the inner base model (``LlavaForConditionalGeneration.model`` and its kin
        return ``last_hidden_state``); falls back to ``output_hidden_states=True`` on the
        full model for architectures without one.
        """
        inputs = {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}
        inner = getattr(_unwrap(self.backbone), "model", None)
        if isinstance(inner, torch.nn.Module):
            out = inner(**inputs, return_dict=True)
            hidden = getattr(out, "last_hidden_state", None)
            if hidden is not None:
                return hidden
        out = self.backbone(**inputs, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1]

    def forward(self, batch: dict[str, torch.Tensor], return_hidden: bool = False):
        """``(scores [B], values [B, T])``: ``values_t = w · h_t``, ``scores = values_{t*}``
        with ``t*`` the last real token (:func:`last_token_index`); ``return_hidden`` adds the
        hidden states ``[B, T, H]`` (auxiliary heads during training)."""
        hidden = self.hidden_states(batch)
        values = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)
        index = last_token_index(batch["attention_mask"]).to(values.device)
        scores = values.gather(1, index[:, None]).squeeze(1)
        return (scores, values, hidden) if return_hidden else (scores, values)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Backbone (``save_pretrained``, safetensors; a ``peft`` backbone saves its adapter)
        with the processor, the head as ``score_head.safetensors``, and ``score_config.json``."""

        if self.processor is None:
            raise ValueError(
                "ScoreModel.save needs the processor (pass processor= when building it)"
            )
        path = Path(path)
        save_policy(self.backbone, self.processor, path)
        save_file({"weight": self.head.weight.detach().cpu().contiguous()}, str(path / HEAD_FILE))
        config = {
            "kind": self.kind,
            "hidden_size": self.head.in_features,
            "bias": False,
            "adapter": hasattr(self.backbone, "peft_config"),
            "read_at": "last_real_token",
        }
        (path / SCORE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, trainable: bool = False) -> Self:
        """A saved score model (backbone + processor + head); ``trainable`` keeps a LoRA
        adapter trainable (full backbones are always trainable)."""

        path = Path(path)
        config_file = path / SCORE_CONFIG
        if not config_file.is_file() or not (path / HEAD_FILE).is_file():
            raise VLMError(
                f"{path} is not a score model directory (needs {SCORE_CONFIG} and {HEAD_FILE}); "
                f"a reward or cost stage writes one under <run_dir>/<stage>/model"
            )
        config = json.loads(config_file.read_text())
        backbone, processor = load_policy(path, trainable=trainable)
        model = cls(backbone, processor, kind=config.get("kind", "score"))
        weight = load_file(str(path / HEAD_FILE))["weight"]
        if tuple(weight.shape) != tuple(model.head.weight.shape):
            raise VLMError(
                f"{path / HEAD_FILE}: head of shape {tuple(weight.shape)} does not fit the "
                f"backbone's hidden size {model.head.in_features}"
            )
        with torch.no_grad():
            model.head.weight.copy_(weight.to(model.head.weight.dtype))
        return place(model)


@torch.no_grad()
def score_texts(
    model: ScoreModel, images: list, questions: list[str], texts: list[str], batch_size: int = 64
) -> np.ndarray:
    """Sequence scores of (image, question, response) triples, in batches."""
    out = []
    for i in range(0, len(texts), batch_size):
        batch = encode(
            model.processor,
            images[i : i + batch_size],
            questions[i : i + batch_size],
            texts[i : i + batch_size],
        )
        device = model.head.weight.device
        scores, _ = model({k: v.to(device) for k, v in batch.items()})
        out.append(scores.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


__all__ = [
    "ScoreModel",
    "last_token_index",
    "hidden_size_of",
    "score_texts",
    "HEAD_FILE",
    "SCORE_CONFIG",
]
