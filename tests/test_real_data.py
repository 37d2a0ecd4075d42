"""Real data end to end: the package's BeaverTails-V-shaped example file (the real column names,
images as bytes, all four severity levels) through data -> sft -> reward -> cost -> guard ->
ppo -> analyze with a real VLM family's tiny model (byte-level BPE tokenizer, its own chat
template) trained through LoRA, and no gold judge anywhere: the world's oracle knows nothing
of these records, so every figure must come from the run's own models.

The run is ``python -m workbench bench real`` itself (:mod:`workbench.bench.real`), so the
test and the command that measures the real-data pipeline's time and memory are one code
path. Its settings are the smallest that still run every code path; the point is that the
path holds, not what the models learn from 48 records."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import workbench as wb
from workbench.bench import real
from workbench.config import DataConfig
from workbench.data.beavertails import example_records, import_beavertails, write_example_file
from workbench.data.schema import CATEGORIES, SEVERITY_LEVELS
from workbench.eval.analyze import judge_label

#: The family of the end-to-end run: byte-level BPE, the fastest of llava_next and idefics3.
FAMILY = "idefics3"
MODEL_STAGES = ("sft", "reward", "cost", "guard", "ppo")


def test_example_file_imports_without_rejects(tmp_path: Path) -> None:
    source = write_example_file(tmp_path / "bt" / "example.parquet", n=24, seed=1)
    out = tmp_path / "data.partial"
    out.mkdir()
    metrics = import_beavertails(DataConfig(source=str(source)), out, progress=False)
    assert metrics["n_input"] == 24 and metrics["n_rejected"] == 0 and metrics["n_flagged"] == 0
    assert set(metrics["by_severity"]) == set(SEVERITY_LEVELS)
    assert len(metrics["by_category"]) >= 4 and set(metrics["by_category"]) <= set(CATEGORIES)
    records = example_records(24, seed=1)
    assert records == example_records(24, seed=1) != example_records(24, seed=2)
    # the dataset's loose types: ids and flags as strings, the image a {bytes, path} struct
    first = records[0]
    assert isinstance(first["safer_response_id"], str) and first["is_response_1_safe"] in (
        "True",
        "False",
    )
    assert Image.open(io.BytesIO(first["image"]["bytes"])).format == "PNG"
    # both kinds of pair: one unsafe answer, and both safe
    kinds = {(r["is_response_1_safe"], r["is_response_2_safe"]) for r in records}
    assert ("True", "True") in kinds and kinds & {("True", "False"), ("False", "True")}


@pytest.mark.parametrize(
    ("fake", "message"),
    [
        ("raise", "stage data failed: RuntimeError: disk full"),
        ("gold", "stage data reported gold figures on real data: ['gold/safety']"),
    ],
)
def test_bench_real_fails_loudly(tmp_path, monkeypatch, capsys, fake, message) -> None:
    def run_stage(stage: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if fake == "raise":
            raise RuntimeError("disk full")
        return {"wall_time_s": 0.1, "peak_rss_mib": 1.0, "gold/safety": 1.0}

    monkeypatch.setattr(real, "run_stage", run_stage)
    assert real.main(["--out", str(tmp_path), "--family", FAMILY, "--n-records", "8"]) == 1
    assert f"error: bench real: {message}" in capsys.readouterr().err
    assert message in (tmp_path / "real.md").read_text()
    assert json.loads((tmp_path / "real.json").read_text())["error"] == message


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    argv = ["--out", str(out), "--family", FAMILY, "--threads", "1", "--device", "cpu"]
    assert real.main(argv) == 0
    report = json.loads((out / "real.json").read_text())
    return Path(report["run_dir"]), report, (out / "real.md").read_text()


@pytest.mark.slow
def test_real_data_runs_every_stage_without_a_gold_judge(real_run) -> None:
    run, report, table = real_run
    metrics = {
        stage: json.loads((run / stage / "metrics.json").read_text())
        for stage in ("data", *MODEL_STAGES, "analyze")
    }
    data = metrics["data"]
    assert data["n_rejected"] == 0 and data["source"].endswith(real.EXAMPLE_FILE)
    assert set(data["by_severity"]) == set(SEVERITY_LEVELS)
    assert all(count > 0 for count in data["by_severity"].values())
    for stage, saved in metrics.items():
        assert wb.runs.is_complete(run, stage), stage
        assert not [k for k in saved if "gold" in k], (stage, "a gold figure on real data")
    for stage in MODEL_STAGES:
        assert metrics[stage]["device"] == "cpu" and metrics[stage]["peak_rss_mib"] > 0
    # LoRA all the way: the policy, reward and cost models are adapters over the family's base
    for stage in ("sft", "reward", "cost"):
        assert (run / stage / "model" / "adapter_config.json").is_file(), stage
    analysis = metrics["analyze"]
    assert analysis["judge"] != "gold"
    assert any("judge" in note.lower() for note in analysis["notes"])
    assert "lagrangian" in analysis["variants"]
    report_html = (run / "analyze" / "report.html").read_text()
    assert "gold" not in report_html.lower() or "no gold" in report_html.lower()
    # the over-optimisation figure has no empty gold panel on real data
    assert "gold helpfulness vs kl" not in report_html.lower()
    assert html.escape(judge_label(analysis)) in report_html  # the report names its judge

    # the command's report: every stage timed and measured, the family and the judge named
    assert report["error"] is None and report["family"] == FAMILY
    assert [r["stage"] for r in report["rows"]] == list(metrics)
    assert all(r["wall_time_s"] is not None and r["peak_rss_mib"] for r in report["rows"])
    assert report["judge"] == analysis["judge"] and report["n_parameters"] > 0
    assert f"`{FAMILY}`" in table and f"`{analysis['judge']}`" in table
    assert "| ppo |" in table and "no gold judge" in table
