"""LoRA adapters through ``peft``, and loading/saving a policy that may carry one.

A policy directory is either a full ``save_pretrained`` VLM (the tiny model after SFT) or a
``peft`` adapter directory (``adapter_config.json``) whose ``base_model_name_or_path`` is a
local VLM directory -- the way a real VLM is trained. Both hold the processor.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoProcessor

from .vlm import VLMError, language_model, load_vlm, save_vlm

ADAPTER_CONFIG = "adapter_config.json"
BASE_DIR = "base"


def module_names(model: torch.nn.Module) -> set[str]:
    """Last path component of every module with weights (what LoRA targets name)."""
    return {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if list(mod.parameters(recurse=False))
    }


def default_lora_targets(model: torch.nn.Module) -> list[str]:
    """LoRA targets read off the model itself: the linear layers inside its language model's
    attention blocks (``q_proj k_proj v_proj o_proj`` for Llama, Mistral, Gemma, Cohere and
    most decoders; ``qkv_proj o_proj`` for Phi-3; ``query_key_value dense`` for GPT-NeoX),
    else every linear layer of its language model. Names match by suffix, as in ``peft``,
    so a vision tower's layers of the same name get adapters too."""
    linear = {
        name: mod
        for name, mod in language_model(model).named_modules()
        if isinstance(mod, torch.nn.Linear)
    }
    attention = {
        name.rsplit(".", 1)[-1]
        for name in linear
        if any(part in name.lower() for part in ("attn", "attention"))
    }
    return sorted(attention or {name.rsplit(".", 1)[-1] for name in linear})


def apply_lora(
    model: torch.nn.Module,
    targets: Sequence[str] | None = None,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    targets_are_default: bool = False,
):
    """Wrap ``model`` with a LoRA adapter on the modules named ``targets``.

    No ``targets``: :func:`default_lora_targets`. ``targets_are_default`` says they are a
    configured default rather than the user's choice (``--lora`` without
    ``--lora-targets``): when one of them does not exist in this model, the model's own
    :func:`default_lora_targets` are used instead (a default written for Llama-style names
    must not stop a model that names its layers otherwise). Otherwise raises
    :class:`VLMError` naming the missing targets and listing the candidates when a target
    does not exist (peft's own message does not say which names would work).
    Note: ``peft`` changes ``model`` in place.
    """

    known = module_names(model)
    targets = list(targets or ())
    missing = [t for t in targets if t not in known]
    if not targets or (missing and targets_are_default):
        targets, missing = default_lora_targets(model), []
    if missing:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, mod in model.named_modules()
                if isinstance(mod, torch.nn.Linear)
            }
        )
        raise VLMError(
            f"LoRA target module(s) {missing} do not exist in {type(model).__name__}; "
            f"linear layers it has: {linear}; the language model's attention projections: "
            f"{default_lora_targets(model)}"
        )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    return get_peft_model(model, config)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_policy(path: str | Path, trainable: bool = False):
    """Load a policy directory (full model or LoRA adapter over a local base): ``(model,
    processor)``.

    An adapter's base is the directory its config names or, when that is gone (the run
    directory moved), the ``base/`` directory next to the adapter that :func:`save_policy`
    writes for a base that had no directory of its own.
    """
    path = Path(path)
    if not is_adapter_dir(path):
        return load_vlm(path)

    base_path = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not (base_path and Path(base_path).is_dir()) and (path / BASE_DIR / "config.json").is_file():
        base_path = str(path / BASE_DIR)
    if not base_path or not Path(base_path).is_dir():
        raise VLMError(
            f"adapter {path} names base model {base_path!r}, which is not a local directory"
        )
    base, _ = load_vlm(base_path)
    model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VLMError(f"cannot load the processor of adapter {path}: {exc}") from exc
    return model, processor


def save_policy(model, processor, path: str | Path, base_path: str | Path | None = None) -> Path:
    """Save a full model or, for a ``peft`` model, just its adapter -- with the processor.

    The adapter config names its base model directory (absolute): ``base_path`` if given,
    else the directory the base was loaded from. A base with no directory (a tiny VLM built
    from config, then wrapped) is saved first, without the adapter, into ``path/base``.
    """
    path = Path(path)
    if not hasattr(model, "peft_config"):
        return save_vlm(model, processor, path)
    path.mkdir(parents=True, exist_ok=True)
    if base_path is not None:
        if not (Path(base_path) / "config.json").is_file():
            raise VLMError(
                f"base model directory {base_path} holds no saved model (no config.json)"
            )
        base = Path(base_path)
    else:
        named = {c.base_model_name_or_path for c in model.peft_config.values()} - {None, ""}
        found = Path(named.pop()) if len(named) == 1 else None
        if found is not None and (found / "config.json").is_file():
            base = found
        else:
            base = save_vlm(copy.deepcopy(model).unload(), processor, path / BASE_DIR)
    for config in model.peft_config.values():
        config.base_model_name_or_path = str(base.resolve())
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path
