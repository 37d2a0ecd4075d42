"""What a stage is: the one declaration each stage module makes (docs/design.md §2).

A stage is a name, its config class, the earlier stages whose outputs it reads, and a run
function ``run(config, out_dir, run_dir, progress) -> metrics`` that writes its artifacts into
``out_dir`` (the stage's partial directory). :mod:`workbench.pipeline` runs stages from these
declarations, and the CLI makes one subcommand of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import StageConfig

#: ``run(config, out_dir, run_dir, progress) -> metrics``.
StageRun = Callable[[Any, Path, Path, bool], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once in its module under :mod:`workbench.stages`."""

    name: str
    """The stage's subcommand and the folder it writes under the run directory."""
    config: type[StageConfig]
    """Its config dataclass (CLI flags, ``config.json``)."""
    run: StageRun
    """Does the work into the partial directory and returns the stage's metrics."""
    reads: tuple[str, ...] = ()
    """The earlier stages whose outputs it reads: rerun when one of them ran again."""
    resumable: bool = False
    """A killed run keeps its checkpoints in the partial directory and continues from them."""
    distributed: bool = False
    """It may run in several processes (``accelerate launch``)."""
    folder: Callable[[Any], str] | None = None
    """The output folder for a config when it is not ``name`` (analysis on eval prompts)."""

    def output(self, cfg: StageConfig) -> str:
        """The folder under the run directory that ``cfg``'s results go to."""
        return self.folder(cfg) if self.folder is not None else self.name
