"""The pipeline's stages, one module each, in pipeline order (docs/design.md §2).

Each module declares its stage once (:class:`~workbench.stages.base.Stage`): name, config
class, what it reads, how it runs, whether it resumes and runs distributed. The pipeline
order here and the CLI's subcommands are derived from these declarations.
"""

from __future__ import annotations

from . import analyze, data, guard, methods, ppo, preference, sft
from .base import Stage

#: Every stage, in pipeline order.
STAGES: tuple[Stage, ...] = (
    data.STAGE,
    sft.STAGE,
    preference.REWARD,
    preference.COST,
    guard.STAGE,
    ppo.STAGE,
    analyze.STAGE,
)
#: The stage names, in pipeline order.
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
#: Stages the CLI runs on their own and ``run`` (``make run``) leaves out: they take longer than
#: the pipeline's budget (``methods``: ``make methods``).
EXTRA_STAGES: tuple[Stage, ...] = (methods.STAGE,)
#: Their names.
EXTRA_STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in EXTRA_STAGES)


def get_stage(name: str) -> Stage:
    """The stage called ``name``; a clear error naming the stages otherwise."""
    for stage in (*STAGES, *EXTRA_STAGES):
        if stage.name == name:
            return stage
    raise ValueError(
        f"unknown stage {name!r}; stages: {', '.join((*STAGE_NAMES, *EXTRA_STAGE_NAMES))}"
    )


__all__ = ["STAGES", "STAGE_NAMES", "EXTRA_STAGES", "EXTRA_STAGE_NAMES", "Stage", "get_stage"]
