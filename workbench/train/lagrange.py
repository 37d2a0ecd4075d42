"""The Lagrange multiplier of PPO-Lagrangian (docs/design.md §6.10), two controllers.

The constrained problem ``max E[R]  s.t.  J_C = E[C] <= d`` becomes the saddle point of
``E[R] - λ (J_C - d)`` over λ >= 0. ``J_C`` is the mean sequence cost over a window of the
most recent episodes (in a multi-process run, the windows of all processes together, so that
every process holds the same λ). Once per PPO step λ follows J_C by one of two controllers:

**SGD on log λ** (:class:`LagrangeMultiplier`, ``lambda_controller = "sgd"``, the default
and the official trainer's): one SGD step on

    L(log λ) = -(J_C - d) · exp(log λ)        (clamped to ±1e6)

so ``d log λ / dt = lr · (J_C - d) · λ``: log λ grows while the constraint is violated
(J_C > d) and shrinks while it holds. ``log λ <= log λ_max``.

Example: λ = 1, J_C = 0.5, d = 0, lr = 0.1: the gradient is -(0.5)·1, so log λ -> 0.05.

**PID** (:class:`PIDLagrangeMultiplier`, ``lambda_controller = "pid"``; Stooke, Achiam &
Abbeel, ICML 2020, Algorithm 2 with the EMA smoothing and delayed derivative of their code).
At the t-th update (t = 1, 2, ...), with Δ_t = J_C,t - d::

    I_t  = clip(I_{t-1} + K_I · Δ_t, 0, λ_max)                  I_0 = λ_init
    p_t  = α_p · p_{t-1} + (1 - α_p) · Δ_t                      p_0 = 0
    c_t  = α_d · c_{t-1} + (1 - α_d) · J_C,t                    c_1 = J_C,1
    D_t  = max(0, c_t - c_{max(1, t - k)})                      k = the delay
    λ_t  = clip(K_P · p_t + I_t + K_D · D_t, 0, λ_max)

The integral is the SGD update's counterpart (λ += K_I·Δ); the proportional term reacts to
the (smoothed) violation now, the derivative term only to a rising cost, so λ climbs before
the cost crosses d. Example: λ_init = 1, d = 0, K_P = 1, K_I = 0.1, K_D = 1, α_p = α_d =
0.5, k = 1, J_C = 0.5 then 1.0: I = 1.05, p = 0.25, D = 0, λ = 1.3; then I = 1.15, p = 0.625,
c = 0.5 -> 0.75, D = 0.25, λ = 2.025.

Both start after ``delay`` PPO steps; a fixed λ (or λ ≡ 0) never moves.
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
            "controller": "sgd",
            "log_lambda": float(self.log_lambda),
            "zero": self.zero,
            "costs": list(self.costs),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_controller(state, "sgd")
        self.log_lambda = torch.tensor(state["log_lambda"], dtype=torch.float64)
        self.zero = bool(state["zero"])
        self.costs.clear()
        self.costs.extend(state["costs"])
        self.updates = int(state["updates"])


class PIDLagrangeMultiplier(LagrangeMultiplier):
    """λ from a PID controller on J_C - d (the module docstring has the update).

    Shares the episode-cost window, the delay and the ``lagrange/`` log of
    :class:`LagrangeMultiplier`; λ itself is :attr:`lambda_value` (log λ is not used).
    Differences from the reference code (rlpyt ``cppo_pid.py``, OmniSafe ``PIDLagrangian``),
    both for a cost scale centred away from 0 (ours runs about -4..+3): the cost EMA and its
    delayed history start at the first J_C, not at 0, so there is no derivative kick at the
    start; and I is clipped to [0, λ_max] (anti-windup, as the reference clips I to λ's range
    [0, 1] in its ``diff_norm`` mode), so that λ leaves λ_max as soon as the cost falls.
    The gains' defaults are ``PPOConfig``'s (``pid_*``)."""

    def __init__(
        self,
        init: float = 1.0,
        kp: float = 0.25,
        ki: float = 0.05,
        kd: float = 2.0,
        ema_p: float = 0.5,
        ema_d: float = 0.5,
        derivative_delay: int = 4,
        max_value: float = 20.0,
        threshold: float = 0.0,
        window: int = 128,
        delay: int = 0,
    ):
        if min(kp, ki, kd) < 0 or not (0 <= ema_p < 1 and 0 <= ema_d < 1):
            raise ValueError("PIDLagrangeMultiplier needs K_P, K_I, K_D >= 0, α_p, α_d in [0, 1)")
        if derivative_delay < 1:
            raise ValueError("PIDLagrangeMultiplier needs derivative_delay >= 1")
        super().__init__(
            init=init, lr=0.0, max_value=max_value, threshold=threshold, window=window, delay=delay
        )
        self.fixed = False  # λ_init = 0 is a valid start for a PID (the integral grows from 0)
        self.kp, self.ki, self.kd = kp, ki, kd
        self.ema_p, self.ema_d = ema_p, ema_d
        self.lambda_value = min(init, max_value)
        self.integral = min(init, max_value)  # I_0 = λ_init: λ starts at λ_init
        self.p_ema = 0.0  # p_0 = 0: the P term starts at 0, no kick at the start
        self.cost_ema: float | None = None  # c_t; None before the first update
        self.cost_history: deque[float] = deque(maxlen=derivative_delay)  # c_{t-k} .. c_{t-1}

    @property
    def value(self) -> float:
        return self.lambda_value

    def update(self, step: int) -> dict[str, float]:
        """One PID step from the window's J_C (none while ``step < delay`` or with no
        episodes). Returns the ``lagrange/`` log entries, with the three terms
        ``lagrange/pid_p`` = K_P·p, ``lagrange/pid_i`` = I, ``lagrange/pid_d`` = K_D·D."""
        j_c = self.episode_cost
        log = {"lagrange/pid_p": math.nan, "lagrange/pid_i": math.nan, "lagrange/pid_d": math.nan}
        if step >= self.delay and not math.isnan(j_c):
            delta = j_c - self.threshold
            self.integral = min(self.max_value, max(0.0, self.integral + self.ki * delta))
            self.p_ema = self.ema_p * self.p_ema + (1 - self.ema_p) * delta
            self.cost_ema = (
                j_c
                if self.cost_ema is None
                else self.ema_d * self.cost_ema + (1 - self.ema_d) * j_c
            )
            earlier = self.cost_history[0] if self.cost_history else self.cost_ema
            derivative = max(0.0, self.cost_ema - earlier)
            self.cost_history.append(self.cost_ema)
            p_term, d_term = self.kp * self.p_ema, self.kd * derivative
            self.lambda_value = min(self.max_value, max(0.0, p_term + self.integral + d_term))
            self.updates += 1
            log = {
                "lagrange/pid_p": p_term,
                "lagrange/pid_i": self.integral,
                "lagrange/pid_d": d_term,
            }
        return {
            "lagrange/lambda": self.value,
            "lagrange/J_C": j_c,
            "lagrange/threshold": self.threshold,
            **log,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": "pid",
            "lambda": self.lambda_value,
            "integral": self.integral,
            "p_ema": self.p_ema,
            "cost_ema": self.cost_ema,
            "cost_history": list(self.cost_history),
            "costs": list(self.costs),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_controller(state, "pid")
        self.lambda_value = float(state["lambda"])
        self.integral = float(state["integral"])
        self.p_ema = float(state["p_ema"])
        self.cost_ema = None if state["cost_ema"] is None else float(state["cost_ema"])
        self.cost_history.clear()
        self.cost_history.extend(float(c) for c in state["cost_history"])
        self.costs.clear()
        self.costs.extend(state["costs"])
        self.updates = int(state["updates"])


def lambda_metrics(entries: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    """How a run's λ and J_C behaved, from its per-step log entries (``log.jsonl``; entries
    without a finite ``lagrange/J_C`` -- skipped steps, steps before any episode -- are left
    out). With λ_t, J_C,t and d_t of the n steps kept::

        lambda_peak      = max_t λ_t
        lambda_overshoot = max_t λ_t / λ_n        (1 when λ stayed 0; None when λ ends at 0
                                                   after a peak above 0: an infinite ratio)
        violation_share  = (1/n) · Σ_t [J_C,t > d_t]
        violation_area   = Σ_t max(0, J_C,t - d_t)   (cost x PPO steps)

    All None for a log with no such step. Example: λ = 1, 2, 1.6 and J_C - d = 0.5, -0.2, 0.1:
    overshoot 1.25, violation share 2/3, area 0.6."""
    kept = [
        e
        for e in entries
        if isinstance(e.get("lagrange/J_C"), int | float) and math.isfinite(e["lagrange/J_C"])
    ]
    if not kept:
        return dict.fromkeys(
            ("lambda_peak", "lambda_overshoot", "violation_share", "violation_area")
        )
    lambdas = [float(e["lagrange/lambda"]) for e in kept]
    excess = [float(e["lagrange/J_C"]) - float(e["lagrange/threshold"]) for e in kept]
    peak, final = max(lambdas), lambdas[-1]
    if final > 0:
        overshoot: float | None = peak / final
    else:
        overshoot = 1.0 if peak == 0 else None
    return {
        "lambda_peak": peak,
        "lambda_overshoot": overshoot,
        "violation_share": sum(x > 0 for x in excess) / len(excess),
        "violation_area": sum(max(0.0, x) for x in excess),
    }


def _check_controller(state: dict[str, Any], wanted: str) -> None:
    """A saved λ state must come from the same controller (states written before the PID
    controller existed have no ``controller`` key: SGD)."""
    saved = state.get("controller", "sgd")
    if saved != wanted:
        raise ValueError(
            f"this checkpoint holds a {saved!r} λ, not a {wanted!r} one: resume with "
            f"lambda_controller = {saved!r}, or delete the checkpoint to start over"
        )


__all__ = ["LagrangeMultiplier", "PIDLagrangeMultiplier", "lambda_metrics", "LOSS_CLAMP"]
