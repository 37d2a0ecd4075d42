"""Multi-process training through ``accelerate`` (``accelerate launch --num_processes N``).

One process per rank, each with a full copy of the models (the tiny VLM, or LoRA roles on a
GPU each): data parallelism, DDP in effect. What the PPO trainer needs from the processes,
and nothing more:

- :meth:`Distributed.shard` -- this rank's share of the global batch of prompts;
- :meth:`Distributed.gather` -- every rank's episode costs, so that every rank holds the same
  window, the same J_C and hence the same λ;
- :meth:`Distributed.average_gradients` -- gradients averaged over ranks before each
  optimiser step (identical starting weights + identical averaged gradients = identical
  weights on every rank);
- :meth:`Distributed.any` -- a flag set on any rank (a non-finite loss skips the step
  everywhere).

In one process (no ``WORLD_SIZE`` > 1 in the environment) every method is the identity and
accelerate is not even imported. On CPU, accelerate starts torch.distributed with gloo; on
GPUs, with NCCL (one GPU per rank).

**Sharded models (FSDP, DeepSpeed ZeRO-3).** The trainers never pass their models through
``Accelerator.prepare``, so an accelerate config with ``distributed_type: FSDP`` or
``DEEPSPEED`` would shard nothing: every rank would still hold every model whole. Rather than
run that silently, such a launch is refused (:class:`ShardingNotWired`). The building blocks
for FSDP2 are here -- :meth:`Distributed.fully_shard` (torch's ``fully_shard`` on every
transformer block, then the root; it runs on CPU with gloo too, which accelerate's own FSDP
path does not) and :meth:`Distributed.full_state_dict` -- and a 2-process test trains the
tiny VLM's SFT loss with them; the PPO trainer does not call them yet (configs/README.md lists
what that needs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch


class ShardingNotWired(ValueError):
    """An ``accelerate launch`` config asks for sharded models, which no trainer does yet."""


def _sharding_requested() -> str | None:
    """``FSDP`` or ``DEEPSPEED`` when the accelerate launcher was told to shard models (it
    passes the config's ``distributed_type`` to the ranks as these variables), else None."""
    for name, kind in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if os.environ.get(name, "false").lower() == "true":
            return kind
    return None


class Distributed:
    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.state = None
        sharding = _sharding_requested()
        if sharding is not None:
            raise ShardingNotWired(
                f"accelerate launch with distributed_type {sharding}: the workbench's trainers "
                f"do not pass their models through Accelerator.prepare, so nothing would be "
                f"sharded and every rank would hold every model whole. Use "
                f"configs/accelerate/ddp.yaml (one full copy per GPU; --lora or "
                f"--shared-backbone to fit), see configs/README.md"
            )
        if self.world_size > 1:
            from accelerate import PartialState

            # on a machine without GPUs, accelerate runs the ranks on CPU (gloo) only when asked
            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank = self.state.process_index
            self.world_size = self.state.num_processes

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This rank's device: its GPU under NCCL, the CPU under gloo or in one process."""
        return self.state.device if self.state is not None else torch.device("cpu")

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """Items ``rank, rank + world, ...`` of the global batch."""
        return list(items[self.rank :: self.world_size])

    def gather(self, values: Iterable[float]) -> list[float]:
        """Every rank's values, in rank order (the same list on every rank)."""
        values = [float(v) for v in values]
        if not self.enabled:
            return values
        out: list[list[float]] = [[] for _ in range(self.world_size)]
        torch.distributed.all_gather_object(out, values)
        return [v for part in out for v in part]

    def gather_objects(self, obj: Any) -> list[Any]:
        """One picklable object from every rank, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Mean of every replicated parameter's gradient over the ranks. A sharded (FSDP2,
        DTensor) parameter is skipped: its backward pass already reduce-scattered the mean."""
        if not self.enabled:
            return
        from torch.distributed.tensor import DTensor

        for p in params:
            if p.grad is not None and not isinstance(p.grad, DTensor):
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
                p.grad /= self.world_size

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        # on the rank's device: NCCL reduces only CUDA tensors
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def fully_shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 over the ranks, in place: each transformer block (the classes the model names
        in ``_no_split_modules``, the unit accelerate's TRANSFORMER_BASED_WRAP picks) becomes
        its own unit, then the root takes the rest (embeddings, tied head, projector), with
        parameters re-sharded after each forward (full shard). Build the optimiser afterwards:
        the parameters become DTensors. The identity in one process."""
        if not self.enabled:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules())[1:]:
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Every parameter and buffer whole, on the CPU, on every rank (a collective: every
        rank must call it); a model that is not sharded gives its own state dict."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        if not self.enabled:
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}
        # broadcast_from_rank0 stays off: every rank gathers the full tensors
        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        state = get_model_state_dict(model, options=options)
        return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}


_DIST: Distributed | None = None


def distributed() -> Distributed:
    """The process's :class:`Distributed` (created once)."""
    global _DIST
    if _DIST is None:
        _DIST = Distributed()
    return _DIST


__all__ = ["Distributed", "ShardingNotWired", "distributed"]
