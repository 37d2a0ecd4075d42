"""The notebooks on a real-data run: each one top to bottom on a small BeaverTails-V-shaped run
(the package's example file, a tiny BPE-tokenizer family, no gold judge), the way ``nbmake``
runs them on the smoke run. Cells that need gold scores must say so and skip; nothing may fall
back to the smoke run.

The run is built once for the module (:func:`workbench.bench.real.run_real`, the smallest
settings that run every stage, plus a smoke-sized methods stage for notebook 06). Each notebook
is executed with a cell injected after its ``parameters`` cell, the way papermill does:
``SMOKE = False``, ``RUN_DIR`` = the real run and ``SLOW_EXERCISES = False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from workbench.bench import real
from workbench.config import MethodsConfig
from workbench.pipeline import hf_progress_bars, run_stage

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: The notebooks that run on a real-data run: all of them.
REAL_DATA_NOTEBOOKS = (
    "01_data",
    "02_reward_cost",
    "03_guard",
    "04_ppo_lagrangian",
    "05_analysis",
    "06_methods",
)
#: What a cell prints where it needs the gold judge (world data) and skips.
SKIP_WORDS = ("real data", "skipped")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real-notebooks")
    report = real.run_real(out, family="idefics3", threads=1, device="cpu", n_records=48)
    assert report["error"] is None, report["error"]
    run_dir = Path(report["run_dir"])
    methods = MethodsConfig.smoke().replace(n_prompts=4, bootstrap=50, max_new_tokens=6)
    with hf_progress_bars(False):
        run_stage("methods", run_dir, methods, progress=False)
    return run_dir


def execute(name: str, run_dir: Path) -> nbformat.NotebookNode:
    """Run notebook ``name`` with the real run injected after its parameters cell."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged, f"{name} has no cell tagged 'parameters'"
    injected = f"SMOKE = False\nRUN_DIR = {str(run_dir)!r}\nSLOW_EXERCISES = False\n"
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(injected))
    client = NotebookClient(
        nb,
        timeout=600,
        startup_timeout=300,  # a kernel on a busy 2-core machine can take minutes to start
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return nb


def texts(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook's cells printed or displayed as text or markdown."""
    out: list[str] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            out.append(output.get("text", ""))
            data: dict[str, Any] = output.get("data", {})
            out += [data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join(out)


@pytest.mark.parametrize("name", REAL_DATA_NOTEBOOKS)
def test_notebook_runs_on_a_real_data_run(real_run: Path, name: str) -> None:
    nb = execute(name, real_run)
    shown = texts(nb)
    # the banner names the real run, never the smoke run
    assert f"Showing the run `{real_run}`" in shown and "(real data run)" in shown
    assert "smoke run" not in shown.split("(real data run)")[0]
    if name in ("01_data", "03_guard", "04_ppo_lagrangian"):  # cells that need gold scores
        assert all(word in shown for word in SKIP_WORDS), name
