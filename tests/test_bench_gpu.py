"""``bench gpu``: the one-command GPU check, run on the CPU in smoke mode so it cannot rot."""

import json

import pytest

from workbench.bench import gpu


def test_docs_section_is_written_then_replaced(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Kernels\n\nold kernels text\n")
    gpu.write_docs(doc, "table one\n")
    gpu.write_docs(doc, "table two\n")
    text = doc.read_text()
    assert text.count(gpu.DOCS_HEADING) == 1 and "table two" in text and "table one" not in text
    assert text.startswith("# Benchmarks\n\n## Kernels\n\nold kernels text\n")
    doc.write_text(f"# B\n\n{gpu.DOCS_HEADING}\n\nold\n\n## Later\n\nkept\n")
    gpu.write_docs(doc, "new\n")
    assert doc.read_text() == f"# B\n\n{gpu.DOCS_HEADING}\n\nnew\n\n## Later\n\nkept\n"


@pytest.mark.slow
def test_bench_gpu_on_cpu_in_smoke_mode(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    status = gpu.main(["--device", "cpu", "--smoke", "--out", str(tmp_path), "--docs", str(doc)])
    assert status == 0, capsys.readouterr().err[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    pipeline = [r for r in report["rows"] if r["part"] == "pipeline (smoke)"]
    assert [r["item"] for r in pipeline] == [
        "data",
        "sft",
        "reward",
        "cost",
        "guard",
        "ppo",
        "analyze",
    ]
    assert {r["item"] for r in pipeline if r["precision"] == "bf16"} == {
        "sft",
        "reward",
        "cost",
        "guard",
        "ppo",
    }
    metrics = json.loads((tmp_path / "gpu-run" / "sft" / "metrics.json").read_text())
    assert metrics["mixed_precision"] == "bf16"
    parts = {r["part"] for r in report["rows"]}
    assert parts == {"pipeline (smoke)", "kernels", "bench ppo"}
    assert {r["item"] for r in report["rows"] if r["part"] == "bench ppo"} >= {"separate", "shared"}
    assert not [r for r in report["rows"] if r.get("error")]
    assert "| part | item |" in (tmp_path / "gpu.md").read_text()
    assert gpu.DOCS_HEADING in doc.read_text()
