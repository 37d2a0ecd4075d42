"""The Lagrange multiplier of PPO-Lagrangian (docs/design.md §6), kept as log λ.

The constrained problem ``max E[R]  s.t.  J_C = E[C] <= d`` becomes the saddle point of
``E[R] - λ (J_C - d)`` over λ >= 0. λ is updated by one SGD step per PPO update on

    L(log λ) = -(J_C - d) · exp(log λ)        (clamped to ±1e6)

so ``d log λ / dt = lr · (J_C - d) · λ``: log λ grows while the constraint is violated
(J_C > d) and shrinks while it holds. ``J_C`` is the mean sequence cost over a window of the
most recent episodes (in a multi-process run, the windows of all processes together, so that
every process holds the same λ). Updates start after ``delay`` steps; ``log λ <= log λ_max``.

Example: λ = 1, J_C = 0.5, d = 0, lr = 0.1: the gradient is -(0.5)·1, so log λ -> 0.05.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

LOSS_CLAMP = 1e6


class LagrangeMultiplier:
    """log λ with its episode-cost window; :meth:`update` applies one SGD step."""

    def __init__(
        self,
        init: float = 1.0,
        lr: float = 0.1,
        max_value: float = 20.0,
        threshold: float = 0.0,
        window: int = 128,
        delay: int = 0,
        fixed: bool = False,
    ):
        if init < 0 or max_value <= 0 or window < 1 or delay < 0 or lr < 0:
            raise ValueError(
                "LagrangeMultiplier needs init >= 0, max_value > 0, window >= 1, delay >= 0, "
                "lr >= 0"
            )
        self.log_lambda = torch.tensor(
            math.log(max(init, 1e-12)) if init > 0 else -math.inf, dtype=torch.float64
        )
        self.zero = init == 0  # λ ≡ 0: reward-only PPO
        self.lr, self.max_value, self.threshold = lr, max_value, threshold
        self.delay, self.fixed = delay, fixed or init == 0
        self.costs: deque[float] = deque(maxlen=window)
        self.updates = 0

    @property
    def value(self) -> float:
        return 0.0 if self.zero else float(self.log_lambda.exp())

    def record(self, costs: Iterable[float]) -> None:
        """Add episode costs (sequence scores C) to the window."""
        self.costs.extend(float(c) for c in costs)

    @property
    def episode_cost(self) -> float:
        """J_C: the mean cost over the window (NaN before any episode)."""
        return sum(self.costs) / len(self.costs) if self.costs else float("nan")

    def update(self, step: int) -> dict[str, float]:
        """One SGD step on log λ from the window's J_C (none while ``step < delay``, for a
        fixed λ, or with no episodes; in a multi-process run every process records every
        process's costs first). Returns the ``lagrange/`` log entries."""
        j_c = self.episode_cost
        loss = float("nan")
        if not self.fixed and step >= self.delay and not math.isnan(j_c):
            raw = -(j_c - self.threshold) * float(self.log_lambda.exp())  # = d loss / d log λ
            loss = max(-LOSS_CLAMP, min(LOSS_CLAMP, raw))
            grad = raw if abs(raw) < LOSS_CLAMP else 0.0  # the clamp cuts the gradient
            self.log_lambda = torch.clamp(
                self.log_lambda - self.lr * grad, max=math.log(self.max_value)
            )
            self.updates += 1
        return {
            "lagrange/lambda": self.value,
            "lagrange/J_C": j_c,
            "lagrange/threshold": self.threshold,
            "lagrange/loss": loss,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_lambda": float(self.log_lambda),
            "zero": self.zero,
            "costs": list(self.costs),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_lambda = torch.tensor(state["log_lambda"], dtype=torch.float64)
        self.zero = bool(state["zero"])
        self.costs.clear()
        self.costs.extend(state["costs"])
        self.updates = int(state["updates"])


__all__ = ["LagrangeMultiplier", "LOSS_CLAMP"]
