"""What every notebook view shares: redrawing an ``ipywidgets.Output``, the banner that says
which run a notebook shows, and scratch run directories for exercises.

Views never use ``with output:`` (the widget capturing the kernel's output by message id).
Under nbclient -- ``nbmake``, the notebook tests -- a cell that drew into a capturing
``Output`` at execution time sometimes left the client waiting for ever on a cell the kernel
had finished (seen in notebook 05's explorer: the kernel idle, the client idle, no timeout).
:func:`show_in` sets the widget's outputs through its state instead, which a live notebook
renders the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..runs import link_stages, read_json


def show_in(output: widgets.Output, *items: Any) -> None:
    """Replace what ``output`` shows by ``items``, in order: a string is printed text, anything
    else is displayed (plotly figures, DataFrames, HTML)."""
    output.outputs = ()
    for item in items:
        if isinstance(item, str):
            output.append_stdout(item if item.endswith("\n") else item + "\n")
        elif hasattr(item, "_repr_mimebundle_"):  # plotly figures display themselves otherwise
            bundle = item._repr_mimebundle_()
            data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
            output.outputs += ({"output_type": "display_data", "data": data, "metadata": metadata},)
        else:
            output.append_display_data(item)


# --- what a notebook shows -----------------------------------------------------------------
#: Wall time of ``make run`` (the default run) on the 2-core VM the README's table names.
MAKE_RUN_TIME = "about 25-35 minutes on 2 CPU cores; the README has the time table"


def run_kind(run_dir: str | Path) -> str:
    """What ``run_dir`` holds: ``"smoke"`` (the smoke presets), ``"default"`` (the defaults of
    ``make run``), ``"custom"`` (other settings) or ``"real data"`` (a BeaverTails-V file: no
    gold judge). Read from its data and SFT stages' saved configs."""
    from ..pipeline import resolve_config  # views sit above the pipeline

    data_cfg = Path(run_dir) / "data" / "config.json"
    if not data_cfg.is_file():
        raise FileNotFoundError(f"{run_dir} has no finished data stage ({data_cfg})")
    saved = read_json(data_cfg)
    if saved.get("source", "world") != "world":
        return "real data"
    kinds = []
    for stage in ("data", "sft"):
        path = Path(run_dir) / stage / "config.json"
        if not path.is_file():
            continue
        saved = {k: v for k, v in read_json(path).items() if k != "threads"}
        for kind, smoke in (("smoke", True), ("default", False)):
            preset = resolve_config(stage, smoke=smoke).to_dict()
            preset.pop("threads", None)
            if json.loads(json.dumps(preset)) == saved:
                kinds.append(kind)
                break
        else:
            kinds.append("custom")
    return kinds[0] if len(set(kinds)) == 1 else "custom"


def run_banner(run_dir: str | Path, smoke_cannot_show: str = "") -> Any:
    """A banner for the top of a notebook: which run it shows (the path as given, never the
    server's absolute path), what kind of run that is (:func:`run_kind`) and, for a smoke
    run, ``smoke_cannot_show`` -- the effects the prose describes that small models may not
    show -- and how to get the full run."""
    from IPython.display import Markdown

    kind = run_kind(run_dir)
    lines = [f"**Showing the run `{run_dir}`** ({kind} run)."]
    if kind == "smoke":
        lines.append(
            "This is the **smoke run**: tiny data and a few training steps, built once and "
            "shared by notebooks 02-05, so the numbers are noisy and some effects the text "
            f"describes may not appear. {smoke_cannot_show} "
            f"For the real thing run `make run` ({MAKE_RUN_TIME}) and re-run this notebook."
        )
    elif kind == "real data":
        lines.append(
            "This run is on a BeaverTails-V file: there is no gold judge, so cells that need "
            "gold scores say so and skip."
        )
    return Markdown(" ".join(lines))


def scratch_run(
    run_dir: str | Path,
    name: str,
    stages: tuple[str, ...] = ("data", "sft", "reward", "cost"),
    root: str | Path | None = None,
) -> Path:
    """A scratch run directory for an exercise, ``<root>/<name>`` (``root`` defaults to
    ``scratch/<run name>/`` beside ``run_dir``, so two runs' exercises never share a folder),
    whose ``stages`` are symlinks to ``run_dir``'s finished ones
    (:func:`~workbench.runs.link_stages`): the exercise trains its own later stage there and
    never touches ``run_dir`` (which the demo and the analysis read). A link left pointing at
    another run's stage is replaced; a real stage folder where a link belongs is an error."""
    run_dir = Path(run_dir)
    base = Path(root) if root is not None else run_dir.parent / "scratch" / run_dir.name
    scratch = base / name
    if scratch.resolve() == run_dir.resolve():
        raise ValueError(f"scratch_run: {scratch} is the run itself; pick another name")
    for stage in stages:
        link = scratch / stage
        if link.is_symlink() and link.resolve() != (run_dir / stage).resolve():
            link.unlink()
        elif link.exists() and not link.is_symlink():
            raise ValueError(
                f"scratch_run: {link} is a folder of its own, not a link to {run_dir / stage}; "
                f"pick another name"
            )
    return link_stages(run_dir, scratch, stages)


def stage_variant(
    run_dir: str | Path, stage: str, name: str, inputs: tuple[str, ...], **overrides: Any
) -> Path:
    """An exercise: ``stage`` again with ``overrides`` on top of the config it finished with
    in ``run_dir``, in the scratch run ``name`` beside ``run_dir`` (:func:`scratch_run`, with
    those of ``inputs`` that finished there linked), never in ``run_dir``. A second call with
    the same settings finds the stage finished and reuses it."""
    from ..pipeline import config_class, run_stage  # views sit above the pipeline

    run_dir = Path(run_dir)
    cls = config_class(stage)
    cfg = cls.from_json(run_dir / stage / "config.json")
    stages = tuple(s for s in inputs if (run_dir / s / "metrics.json").is_file())
    scratch = scratch_run(run_dir, name, stages=stages)
    run_stage(stage, scratch, cls.from_dict(overrides, base=cfg), progress=False)
    return scratch


__all__ = ["MAKE_RUN_TIME", "run_banner", "run_kind", "scratch_run", "stage_variant", "show_in"]
