import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One smoke data stage shared by the tests that only read it."""
    import workbench as wb

    run_dir = tmp_path_factory.mktemp("smoke_run")
    wb.run_stage("data", run_dir, smoke=True, progress=False)
    return run_dir
