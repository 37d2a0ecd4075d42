"""Evaluation: judges (gold oracle now, model judges later) and policy evaluation."""

from .judge import GoldJudge, Judge, evaluate_policy

__all__ = ["Judge", "GoldJudge", "evaluate_policy"]
