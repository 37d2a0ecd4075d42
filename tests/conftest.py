"""Shared fixtures and the test tiers.

One smoke run serves every test that needs trained models: ``WORKBENCH_SMOKE_RUN`` when set
(``make test`` sets it, and the notebooks read the same variable, so they reuse the run the
tests built), else a folder of the session's temporary directory. ``pipeline.smoke_run``
builds it stage by stage and skips the stages that already finished there.

Tiers: a test is ``slow`` when it trains, runs a stage, starts a subprocess or a server, or
uses a fixture that does (:data:`SLOW_FIXTURES`); ``make test-fast`` runs the others.
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Triton picks its CPU interpreter only when TRITON_INTERPRET=1 is set before it is first
# imported (peft imports it too), so set it here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One torch thread per pytest-xdist worker (make test runs one worker per core): more would
# make the workers' spinning intra-op threads fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

#: Fixtures that train models or run stages: a test that uses one is in the slow tier.
SLOW_FIXTURES = frozenset(
    {
        "smoke_score_runs",
        "guard_run",
        "ppo_run",
        "analyzed",
        "shared_run",
        "run_with_sft",
        "runs",
        "graded",
        "score_models",
        "app",
        "client",
        "app_url",
    }
)


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """The session's one smoke run directory (see the module docstring)."""
    shared = os.environ.get("WORKBENCH_SMOKE_RUN")
    return Path(shared) if shared else tmp_path_factory.mktemp("smoke") / "run"


@pytest.fixture(scope="session")
def smoke_run(smoke_root):
    """The shared smoke run's data stage (the tests that only read data)."""
    import workbench as wb

    return wb.smoke_run(smoke_root, until="data")


@pytest.fixture(scope="session")
def smoke_score_runs(smoke_root):
    """The shared smoke run up to the reward and cost models: ``(graded, binary)`` where
    ``graded`` is the shared run (data, sft, reward, a graded cost model) and ``binary`` a
    binary cost model over symlinks to its data and SFT model (notebook 02's pair, at the
    path notebook 02 uses). One torch thread, which stays set."""
    import workbench as wb
    from workbench.views.reward_cost import binary_cost_run

    graded = wb.smoke_run(smoke_root, until="cost", threads=1)
    return graded, binary_cost_run(graded, f"{graded}-binary-cost", smoke=True, threads=1)
