"""Where a stage's models live: one device per stage, chosen once (docs/design.md §5.7).

``resolve_device(name)`` turns a config's ``device`` into a ``torch.device``: ``auto`` asks
``accelerate`` (this process's GPU when CUDA is present -- under ``accelerate launch`` each
rank gets its own -- else the CPU); ``cpu``, ``cuda`` or ``cuda:N`` name one. The pipeline runs
every model stage inside :func:`on_device`, and the places that load or build a model call
:func:`place`, so every model of the stage (policy, reference, reward, cost, critics, guard)
lands there; batches follow their model (``batch.to(model.device)`` at each forward).

Outside a stage (a notebook calling a loader directly) no device is set and :func:`place`
leaves a model where ``from_pretrained`` put it: on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TypeVar

import torch

from ..config import device_problem

_CURRENT: ContextVar[torch.device | None] = ContextVar("workbench_device", default=None)

M = TypeVar("M", bound=torch.nn.Module)


class DeviceError(ValueError):
    """A device a config names that this machine does not have."""


def resolve_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` of a config's ``device`` on this machine.

    ``auto``: accelerate's device for this process (``cuda:<local rank>`` with CUDA, else the
    CPU). A CUDA device on a machine without one is an error, not a silent CPU run."""
    problem = device_problem(name)
    if problem:
        raise DeviceError(f"device {name!r}: {problem}")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        from accelerate import PartialState

        return PartialState().device
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r}: this machine has no CUDA GPU that torch can use "
                f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'}); "
                "use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def current_device() -> torch.device | None:
    """The device of the stage running now (``None`` outside a stage)."""
    return _CURRENT.get()


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[torch.device]:
    """Inside the block, :func:`place` puts models on ``device``."""
    token = _CURRENT.set(device)
    try:
        yield device
    finally:
        _CURRENT.reset(token)


def place(model: M) -> M:
    """``model`` on the running stage's device (unchanged outside a stage)."""
    device = _CURRENT.get()
    if device is not None:
        model.to(device)
    return model


def module_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


__all__ = [
    "DeviceError",
    "resolve_device",
    "current_device",
    "on_device",
    "place",
    "module_device",
]
