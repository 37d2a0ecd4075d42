"""Multi-process training through ``accelerate`` (``accelerate launch --num_processes N``).

One process per rank, each with a full copy of the models (the tiny VLM, or LoRA roles on a
GPU each). What the PPO trainer needs from the processes, and nothing more:

- :meth:`Distributed.shard` -- this rank's share of the global batch of prompts;
- :meth:`Distributed.gather` -- every rank's episode costs, so that every rank holds the same
  window, the same J_C and hence the same λ;
- :meth:`Distributed.average_gradients` -- gradients averaged over ranks before each
  optimiser step (identical starting weights + identical averaged gradients = identical
  weights on every rank);
- :meth:`Distributed.any` -- a flag set on any rank (a non-finite loss skips the step
  everywhere).

In one process (no ``WORLD_SIZE`` > 1 in the environment) every method is the identity and
accelerate is not even imported. On CPU, accelerate starts torch.distributed with gloo.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch


class Distributed:
    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.state = None
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
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
                p.grad /= self.world_size

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)


_DIST: Distributed | None = None


def distributed() -> Distributed:
    """The process's :class:`Distributed` (created once)."""
    global _DIST
    if _DIST is None:
        _DIST = Distributed()
    return _DIST


__all__ = ["Distributed", "distributed"]
