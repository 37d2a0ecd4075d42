"""Run-directory layout, atomic writes and stage resume (docs/design.md §2).

Layout: ``<run_dir>/<stage>/`` holds a finished stage: its artifacts, ``config.json`` (the
resolved config) and ``metrics.json``. A stage is built in ``<run_dir>/<stage>.partial/``
and renamed into place only when it finished, so a killed stage never leaves a directory a
later stage would trust. A stage is *complete* when its ``metrics.json`` exists and its saved
config equals the config asked for; complete stages are skipped unless forced.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_RUN_DIR = Path("runs/default")
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records one JSON object per line, atomically. Returns the number written."""
    lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line and flush it (a training log written as it goes)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):  # an extra binary column of a user's file
        return base64.b64encode(bytes(obj)).decode("ascii")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage


def partial_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / f"{stage}.partial"


def link_stages(
    src: str | Path, dst: str | Path, stages: Iterable[str] = ("data", "sft", "reward", "cost")
) -> Path:
    """A run directory ``dst`` whose ``stages`` are symlinks to ``src``'s finished ones, so
    a later stage can be tried with another config without retraining what it reads."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        target = stage_dir(src, stage).resolve()
        if not (target / "metrics.json").is_file():
            raise FileNotFoundError(f"cannot link stage '{stage}': it has not finished in {src}")
        link = stage_dir(dst, stage)
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return dst


def is_complete(run_dir: str | Path, stage: str, config: dict[str, Any] | None = None) -> bool:
    """True when ``stage`` finished in ``run_dir`` (and, if given, with this exact config)."""
    d = stage_dir(run_dir, stage)
    if not (d / "metrics.json").is_file():
        return False
    if config is None:
        return True
    try:
        return read_json(d / "config.json") == json.loads(json.dumps(config, default=_json_default))
    except (OSError, json.JSONDecodeError):
        return False


def load_metrics(run_dir: str | Path, stage: str) -> dict[str, Any]:
    path = stage_dir(run_dir, stage) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"stage '{stage}' has not finished in {run_dir} (no {path}); "
            f"run: python -m workbench {stage} --run-dir {run_dir}"
        )
    return read_json(path)


def begin_stage(run_dir: str | Path, stage: str, fresh: bool = True) -> Path:
    """Create (and with ``fresh`` empty) the stage's partial directory and return it."""
    p = partial_dir(run_dir, stage)
    if fresh and p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def finish_stage(
    run_dir: str | Path, stage: str, config: dict[str, Any], metrics: dict[str, Any]
) -> Path:
    """Write config.json and metrics.json into the partial directory, then move it into place."""
    p = partial_dir(run_dir, stage)
    atomic_write_json(p / "config.json", config)
    atomic_write_json(p / "metrics.json", metrics)
    final = stage_dir(run_dir, stage)
    if final.exists():
        old = Path(run_dir) / f"{stage}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(p, final)
        shutil.rmtree(old)
    else:
        os.replace(p, final)
    return final
