"""Evaluation: judges (gold oracle, model judge), policy evaluation, metrics, the analysis stage."""

from .judge import GoldJudge, Judge, ModelJudge, evaluate_policy, judge_all

__all__ = ["Judge", "GoldJudge", "ModelJudge", "evaluate_policy", "judge_all"]
