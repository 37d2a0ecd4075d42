"""The data stage's on-disk layout, shared by the synthetic world and real BeaverTails-V.

``<run_dir>/data/``::

    train.jsonl          pair records (BeaverTails-V fields + extras), image = "images/<file>"
    eval.jsonl           held-out pair records, same schema
    test_prompts.jsonl   prompt-only records (question, image, category, image_severity, ...)
    images/              the images the records point to (paths relative to data/)
    rejects.jsonl        one line per invalid input record: source, index, field, error
    config.json, metrics.json

Later stages read it back with :func:`load_data`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..runs import read_jsonl, stage_dir, write_jsonl
from .schema import CATEGORIES, NO_CATEGORY, SEVERITY_LEVELS, severity_of_harmless_rate

if TYPE_CHECKING:
    from PIL import Image

SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl", "test": "test_prompts.jsonl"}
IMAGES_DIR = "images"
REJECTS_FILE = "rejects.jsonl"
#: Records kept although two of their labels disagree (``schema.label_conflicts``).
FLAGGED_FILE = "flagged.jsonl"


@dataclass
class DataSplits:
    """The three splits as lists of record dicts, plus the directory images are relative to."""

    root: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    test: list[dict[str, Any]] = field(default_factory=list)

    def split(self, name: str) -> list[dict[str, Any]]:
        if name not in SPLIT_FILES:
            raise KeyError(f"unknown split {name!r}; one of {list(SPLIT_FILES)}")
        return getattr(self, name)

    def image(self, record: dict[str, Any]):
        """The record's image as an RGB PIL image."""
        return open_image(record, self.root)

    @property
    def pairs(self) -> list[dict[str, Any]]:
        return self.train + self.eval


def open_image(record: dict[str, Any], root: str | Path):

    with Image.open(Path(root) / record["image"]) as im:
        return im.convert("RGB")


def load_data(path: str | Path) -> DataSplits:
    """Load a finished data stage: ``path`` is a run directory or its ``data/`` directory."""
    path = Path(path)
    root = path if (path / SPLIT_FILES["train"]).is_file() else stage_dir(path, "data")
    if not (root / SPLIT_FILES["train"]).is_file():
        raise FileNotFoundError(
            f"no data stage output in {path} (expected {root / SPLIT_FILES['train']}); "
            f"run: python -m workbench data --run-dir {path}"
        )
    splits = DataSplits(root=root)
    for name, fname in SPLIT_FILES.items():
        f = root / fname
        setattr(splits, name, read_jsonl(f) if f.is_file() else [])
    return splits


def data_metrics(
    train: list[dict], eval_: list[dict], test: list[dict], n_rejected: int
) -> dict[str, Any]:
    """The data stage's metrics contract (docs/design.md §2) plus label statistics.

    ``by_category`` and ``by_severity`` (image severity level) count the pair records
    (train + eval); ``test_by_category`` the test prompts (for real files they repeat the
    eval prompts). ``preference_disagreement`` is the share of pairs whose more-helpful and
    safer responses differ -- the reason Safe RLHF-V keeps two preferences.
    """
    pairs = train + eval_
    by_category = Counter(r["category"] for r in pairs)
    by_severity = Counter(SEVERITY_LEVELS[int(r["image_severity"])] for r in pairs)
    test_by_category = Counter(r["category"] for r in test)
    response_severity: Counter = Counter()
    for r in pairs:
        for i in (1, 2):
            response_severity[severity_of_harmless_rate(r[f"response_{i}_harmless_rate"])] += 1
    disagree = sum(r["more_helpful_response_id"] != r["safer_response_id"] for r in pairs)
    unsafe = sum((not r["is_response_1_safe"]) + (not r["is_response_2_safe"]) for r in pairs)
    return {
        "n_train": len(train),
        "n_eval": len(eval_),
        "n_test": len(test),
        "n_rejected": n_rejected,
        "by_category": {c: by_category[c] for c in (*CATEGORIES, NO_CATEGORY) if by_category[c]},
        "by_severity": {lvl: by_severity[lvl] for lvl in SEVERITY_LEVELS},
        "test_by_category": {
            c: test_by_category[c] for c in (*CATEGORIES, NO_CATEGORY) if test_by_category[c]
        },
        "by_response_severity": {lvl: response_severity[lvl] for lvl in SEVERITY_LEVELS},
        "preference_disagreement": disagree / len(pairs) if pairs else 0.0,
        "unsafe_response_share": unsafe / (2 * len(pairs)) if pairs else 0.0,
    }


def write_data_dir(
    out_dir: str | Path, train: list[dict], eval_: list[dict], test: list[dict], rejects: list[dict]
) -> dict[str, Any]:
    """Write the split files and rejects into ``out_dir`` (images must already be there) and
    return the metrics."""
    out_dir = Path(out_dir)
    for name, records in (("train", train), ("eval", eval_), ("test", test)):
        write_jsonl(out_dir / SPLIT_FILES[name], records)
    write_jsonl(out_dir / REJECTS_FILE, rejects)
    return data_metrics(train, eval_, test, len(rejects))


class ImageCache:
    """The data stage's images, decoded once (the world's are a few KB each)."""

    def __init__(self, data: DataSplits):
        self.data = data
        self._cache: dict[str, Image.Image] = {}

    def __call__(self, record: dict[str, Any]) -> Image.Image:
        key = record["image"]
        if key not in self._cache:
            self._cache[key] = self.data.image(record)
        return self._cache[key]
