"""What every notebook shares (workbench/views/output.py): which run a notebook shows, its
banner, and the scratch run directories the exercises train into."""

import json

import pytest

import workbench as wb
from workbench.views.output import run_banner, run_kind, scratch_run, stage_variant


def test_run_kind_and_banner(smoke_run, tmp_path):
    assert run_kind(smoke_run) == "smoke"
    text = run_banner(smoke_run, "No reward hacking at this size.").data
    assert "smoke run" in text and "No reward hacking at this size." in text
    assert "make run" in text and str(smoke_run) in text
    custom = wb.runs.link_stages(smoke_run, tmp_path / "custom", ("data",))
    assert run_kind(custom) == "smoke"  # a symlinked stage is the same stage
    (tmp_path / "mine" / "data").mkdir(parents=True)
    saved = json.loads((smoke_run / "data" / "config.json").read_text())
    (tmp_path / "mine" / "data" / "config.json").write_text(json.dumps({**saved, "n_test": 7}))
    assert run_kind(tmp_path / "mine") == "custom"
    assert "smoke run" not in run_banner(tmp_path / "mine").data
    (tmp_path / "real" / "data").mkdir(parents=True)
    real = {**saved, "source": "beavertails.jsonl"}
    (tmp_path / "real" / "data" / "config.json").write_text(json.dumps(real))
    assert run_kind(tmp_path / "real") == "real data"
    assert "no gold judge" in run_banner(tmp_path / "real").data
    with pytest.raises(FileNotFoundError, match="no finished data stage"):
        run_kind(tmp_path / "nowhere")


def test_scratch_run_links_finished_stages_and_never_is_the_run(smoke_run, tmp_path):
    scratch = scratch_run(smoke_run, "exercise", ("data",), root=tmp_path)
    assert scratch == tmp_path / "exercise" and (scratch / "data").is_symlink()
    assert (scratch / "data").resolve() == (smoke_run / "data").resolve()
    with pytest.raises(ValueError, match="the run itself"):
        scratch_run(smoke_run, smoke_run.name, ("data",), root=smoke_run.parent)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        scratch_run(smoke_run, "exercise2", ("data", "no_such_stage"), root=tmp_path)


def test_stage_variant_reruns_one_stage_with_one_change_in_a_scratch_run(tmp_path):
    """``stage_variant``: the stage's finished config with the overrides on top, trained in a
    scratch run beside the run (never in it), reused by a second call with the same settings."""
    run = tmp_path / "runs" / "mine"
    small = wb.resolve_config("data", smoke=True, n_train=120, n_eval=16, n_test=16)
    wb.run_stage("data", run, small, progress=False)
    before = (run / "data" / "config.json").read_text()
    scratch = stage_variant(run, "data", "more-test", (), n_test=24)
    assert scratch == tmp_path / "runs" / "scratch" / "mine" / "more-test"
    cfg = json.loads((scratch / "data" / "config.json").read_text())
    assert cfg["n_test"] == 24 and cfg["n_train"] == 120  # one change, the rest the run's
    assert (run / "data" / "config.json").read_text() == before
    stamp = (scratch / "data" / "metrics.json").stat().st_mtime_ns
    assert stage_variant(run, "data", "more-test", (), n_test=24) == scratch
    assert (scratch / "data" / "metrics.json").stat().st_mtime_ns == stamp
