"""The shared-backbone memory layout of PPO (docs/design.md §5): six roles on one frozen backbone.

The separate layout (:class:`workbench.train.ppo_lagrangian.Roles`) holds the actor (a LoRA
adapter over the SFT model, whose disabled form is the reference) beside four more full
models: the frozen reward and cost models and the two trainable critics initialised from them.
:class:`SharedRoles` keeps one copy of the backbone and gives every role a ``peft`` adapter::

    backbone (the SFT model's weights, frozen)
      + adapter "default"        the actor, trainable              (reference: all adapters off)
      + adapter "reward"/"cost"  the reward and cost models, frozen, loaded with their heads
      + adapter "reward_critic"/"cost_critic"   trainable copies of those adapters and heads

so the reward and cost models must be LoRA adapters over the same backbone
(``python -m workbench reward --lora``, ``... cost --lora``). The actor keeps peft's
``default`` name so that its saved adapter is a plain policy directory like the separate
layout's.

Switching roles: one adapter is active at a time. The actor's is active outside the role
calls (the trainer samples and scores log-probs through ``roles.actor`` directly); every other
role activates its adapter for its forward pass and re-activates the actor's afterwards. A
forward pass records in autograd only the adapter it used, so the actor's loss reaches only
the actor's LoRA weights and each critic's loss only its own adapter and head. peft's
``set_adapter`` / ``disable_adapter`` also rewrite ``requires_grad`` (the active adapter
becomes trainable, the others frozen); after every switch the flags are set back to ours: the
actor and the critics trainable, the reward and cost adapters and the backbone frozen.

Each trainable role is also a module of its own (:attr:`SharedRoles.trainable`): the very
``Parameter`` objects of its adapter (and head), no copies -- what its optimiser, the
checkpoint and ``zero_grad`` see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import PPOConfig
from ..models.adapters import ADAPTER_CONFIG, BASE_DIR, is_adapter_dir
from ..models.device import place
from ..models.score import HEAD_FILE, ScoreModel, hidden_size_of
from ..models.vlm import sequence_logprobs
from .common import starting_model

ACTOR = "default"
"""The actor's adapter name (peft's default: it saves at the top of a policy directory)."""
#: Score roles on the shared backbone:
#: role -> (stage whose adapter and head it starts from, trainable).
SCORE_ROLES: dict[str, tuple[str, bool]] = {
    "reward": ("reward", False),
    "cost": ("cost", False),
    "reward_critic": ("reward", True),
    "cost_critic": ("cost", True),
}


class SharedBackboneError(ValueError):
    """The run's reward or cost model cannot sit on the policy's backbone (with the fix)."""


@dataclass(frozen=True)
class RoleModels:
    """The model folders the PPO roles start from: the policy (the SFT model, or any policy
    folder), the reward model and the cost model. The PPO stage finds them in the run
    directory (:func:`workbench.stages.ppo.role_models`)."""

    policy: Path
    reward: Path
    cost: Path


def adapter_base(adapter_dir: Path) -> Path:
    """The base model directory an adapter directory sits on, resolved the way
    :func:`workbench.models.adapters.load_policy` does (its config's base, else ``base/``)."""
    named = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not (named and Path(named).is_dir()) and (adapter_dir / BASE_DIR / "config.json").is_file():
        named = str(adapter_dir / BASE_DIR)
    return Path(named or "").resolve()


def adapter_parameters(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of adapter ``adapter`` in a peft model, by name."""
    pattern = re.compile(rf"\.lora_\w+\.{re.escape(adapter)}(\.|$)")
    return {name: p for name, p in model.named_parameters() if pattern.search(name)}


class AdapterParameters(torch.nn.Module):
    """The parameters of one adapter of the shared model as a module of their own (the same
    ``Parameter`` objects): its optimiser, checkpoint and ``zero_grad`` see only them."""

    def __init__(self, params: dict[str, torch.nn.Parameter]):
        super().__init__()
        if not params:
            raise SharedBackboneError("an adapter of the shared backbone has no LoRA parameters")
        self.lora = torch.nn.ParameterDict(
            {name.replace(".", "__"): p for name, p in params.items()}
        )


class AdapterScoreModel(ScoreModel):
    """A score model (reward, cost or a critic) on the shared backbone: its adapter is active
    while it reads hidden states, then its own head gives ``(scores, values)`` exactly as
    :class:`~workbench.models.score.ScoreModel` does (read at the last real token).

    The backbone is *not* a submodule: ``parameters()`` and ``state_dict()`` are the role's
    own, its adapter's LoRA weights (``lora.*``) and its head."""

    _roles: SharedRoles  # set through __dict__: the roles are no submodule

    def __init__(
        self, roles: SharedRoles, adapter: str, head_weight: torch.Tensor, trainable: bool
    ):
        super().__init__(roles.model, roles.processor, kind=adapter)
        del self._modules["backbone"]  # shared by every role, owned by none
        self.__dict__["backbone"] = roles.model
        self.__dict__["_roles"] = roles
        self.adapter = adapter
        self.lora = AdapterParameters(adapter_parameters(roles.model, adapter)).lora
        with torch.no_grad():
            self.head.weight.copy_(head_weight.to(self.head.weight.dtype))
        self.head.requires_grad_(trainable)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._roles.using(self.adapter):
            return super().hidden_states(batch)


def _load_head(model_dir: Path, hidden: int) -> torch.Tensor:

    weight = load_file(str(model_dir / HEAD_FILE))["weight"]
    if tuple(weight.shape) != (1, hidden):
        raise SharedBackboneError(
            f"{model_dir / HEAD_FILE}: head of shape {tuple(weight.shape)} does not fit the "
            f"shared backbone's hidden size {hidden}"
        )
    return weight


class SharedRoles:
    """The six PPO roles on one frozen backbone; the interface of ``Roles``: ``actor``,
    ``processor``, ``reference_logprobs``, ``reward``, ``cost``, ``reward_critic``,
    ``cost_critic``, ``trainable`` (role name -> module of its trainable parameters) and
    ``save_actor``."""

    def __init__(self, cfg: PPOConfig, models: RoleModels):
        if not cfg.lora:
            raise SharedBackboneError(
                "PPOConfig.shared_backbone needs lora = true (the actor is an adapter)"
            )
        sft, reward_dir, cost_dir = models.policy, models.reward, models.cost
        base = adapter_base(sft) if is_adapter_dir(sft) else sft.resolve()
        for stage, model_dir in (("reward", reward_dir), ("cost", cost_dir)):
            fix = (
                f"train it as a LoRA adapter: python -m workbench {stage} --lora --force in its "
                f"run directory (or run ppo without --shared-backbone)"
            )
            if not is_adapter_dir(model_dir):
                raise SharedBackboneError(
                    f"ppo --shared-backbone puts the {stage} model on the policy's backbone as a "
                    f"LoRA adapter, but {model_dir} holds a full model; {fix}"
                )
            if adapter_base(model_dir) != base:
                raise SharedBackboneError(
                    f"the {stage} adapter in {model_dir} sits on {adapter_base(model_dir)}, not on "
                    f"the policy's backbone {base}; {fix}"
                )
        self.base_dir = base
        self.actor, self.processor = starting_model(cfg.replace(policy=str(sft)), None)
        self.model = self.actor  # the one peft model that holds every adapter
        dirs = {"reward": reward_dir, "cost": cost_dir}
        for role, (stage, trainable) in SCORE_ROLES.items():
            self.model.load_adapter(str(dirs[stage]), adapter_name=role, is_trainable=trainable)
        self._trainable_adapters = {ACTOR} | {
            role for role, (_, trainable) in SCORE_ROLES.items() if trainable
        }
        self._flags = [
            (p, adapter in self._trainable_adapters)
            for adapter in (ACTOR, *SCORE_ROLES)
            for p in adapter_parameters(self.model, adapter).values()
        ]
        self.model.set_adapter(ACTOR)
        self._restore_flags()
        hidden = hidden_size_of(self.model)
        heads = {stage: _load_head(d, hidden) for stage, d in dirs.items()}
        self.reward, self.cost, self.reward_critic, self.cost_critic = (
            AdapterScoreModel(self, role, heads[stage], trainable)
            for role, (stage, trainable) in SCORE_ROLES.items()
        )
        self.trainable: dict[str, torch.nn.Module] = {
            "actor": AdapterParameters(adapter_parameters(self.model, ACTOR)),
            "reward_critic": self.reward_critic,
            "cost_critic": self.cost_critic,
        }
        place(self.model)  # the adapters loaded above, on the stage's device with the backbone

    # -- switching adapters ----------------------------------------------------------------
    def _restore_flags(self) -> None:
        """peft's adapter switches rewrite requires_grad; put ours back."""
        for param, trainable in self._flags:
            param.requires_grad_(trainable)

    @contextmanager
    def using(self, adapter: str) -> Iterator[None]:
        """Adapter ``adapter`` active inside the block; the actor's again afterwards."""
        self.model.set_adapter(adapter)
        self._restore_flags()
        try:
            yield
        finally:
            self.model.set_adapter(ACTOR)
            self._restore_flags()

    @torch.no_grad()
    def reference_logprobs(self, batch, backend: str, temperature: float = 1.0) -> torch.Tensor:
        """``log π_ref`` at ``temperature``: the backbone with every adapter disabled."""
        try:
            with self.model.disable_adapter():
                return sequence_logprobs(self.model, batch, backend, temperature)
        finally:
            self._restore_flags()

    def save_actor(self, path: Path) -> Path:
        """The actor's adapter alone (a policy directory
        :func:`~workbench.models.adapters.load_policy`
        reads, over :attr:`base_dir`), with the processor."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.peft_config[ACTOR].base_model_name_or_path = str(self.base_dir)
        self.model.save_pretrained(path, selected_adapters=[ACTOR], safe_serialization=True)
        self.processor.save_pretrained(path)
        return path


__all__ = [
    "SharedRoles",
    "SharedBackboneError",
    "AdapterScoreModel",
    "AdapterParameters",
    "adapter_parameters",
    "adapter_base",
    "RoleModels",
    "ACTOR",
    "SCORE_ROLES",
]
