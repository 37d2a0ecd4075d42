import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Triton picks its CPU interpreter only when TRITON_INTERPRET=1 is set before it is first
# imported (peft imports it too), so set it here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One smoke data stage shared by the tests that only read it."""
    import workbench as wb

    run_dir = tmp_path_factory.mktemp("smoke_run")
    wb.run_stage("data", run_dir, smoke=True, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def smoke_score_runs(tmp_path_factory):
    """Smoke runs up to the reward and cost models, shared by the tests that only read them:
    ``(graded, binary)`` where ``graded`` holds data, sft, reward and a graded cost model and
    ``binary`` a binary cost model over symlinks to the same data and SFT model
    (``workbench.smoke_run`` and ``views.reward_cost.binary_cost_run``; one torch thread)."""
    import workbench as wb
    from workbench.views.reward_cost import binary_cost_run

    root = tmp_path_factory.mktemp("smoke_score_runs")
    graded = wb.smoke_run(root / "graded", until="cost", threads=1)
    return graded, binary_cost_run(graded, root / "binary", smoke=True, threads=1)
