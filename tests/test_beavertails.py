"""Reading real BeaverTails-V files: parquet, jsonl, `datasets` directories, the Hub layout.

Every fixture is built in ``tmp_path`` in the dataset's real schema (ids and safety flags as
strings, image as a ``{bytes, path}`` struct: the package's ``write_beavertails_parquet``)
with valid records and corrupt ones of each kind; the tests check that valid records land in
train/eval with coerced types and readable images and that every corrupt record is in
``rejects.jsonl`` with its index and field.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from workbench.config import DataConfig
from workbench.data.beavertails import (
    import_beavertails,
    iter_raw_records,
    split_of_name,
    write_beavertails_parquet,
)
from workbench.data.schema import RecordError
from workbench.data.store import IMAGES_DIR, REJECTS_FILE, SPLIT_FILES, load_data
from workbench.runs import read_jsonl

METRIC_KEYS = {"n_train", "n_eval", "n_test", "n_rejected", "by_category", "by_severity"}


# -- builders ------------------------------------------------------------------------------
def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    rng = random.Random(seed)
    im = Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def valid_record(i: int, **over: Any) -> dict[str, Any]:
    """A valid record in the dataset's own loose types; response 2 is the safer one."""
    rec = {
        "question": f"How do I use the thing in picture {i}?",
        "image": {"bytes": image_bytes(i), "path": f"img_{i}.png"},
        "category": "dangerous_behavior",
        "image_severity": i % 4,
        "response_1": f"Here is how, step {i}.",
        "response_2": "I can't help with that, but here is a safe alternative.",
        "response_1_from": "model-a",
        "response_2_from": "model-b",
        "more_helpful_response_id": "1",
        "is_response_1_safe": "False",
        "is_response_2_safe": "True",
        "safer_response_id": "2",
        "response_1_harmless_rate": -2,
        "response_2_harmless_rate": 2,
        "response_1_helpful_rate": 3,
        "response_2_helpful_rate": 1,
    }
    rec.update(over)
    return rec


def corrupt_records(start: int) -> list[tuple[dict[str, Any], str]]:
    """(record, field that must be reported) for each kind of corruption."""
    return [
        (
            valid_record(start, image={"bytes": random.Random(1).randbytes(64), "path": None}),
            "image",
        ),
        (valid_record(start + 1, safer_response_id=None), "safer_response_id"),
        (valid_record(start + 2, response_1_harmless_rate=5), "response_1_harmless_rate"),
        (valid_record(start + 3, response_2_helpful_rate=-1), "response_2_helpful_rate"),
        (valid_record(start + 4, image={"bytes": None, "path": "no/such/image.png"}), "image"),
        # the safer id points at the response with the lower harmless rate
        (valid_record(start + 5, safer_response_id="1"), "safer_response_id"),
        (valid_record(start + 6, more_helpful_response_id="3"), "more_helpful_response_id"),
        (valid_record(start + 7, category="cooking_accidents"), "category"),
        (valid_record(start + 8, response_1="   "), "response_1"),  # nothing to prefer
    ]


def run_import(tmp_path: Path, source: Path, **cfg: Any) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "data.partial"
    out.mkdir()
    metrics = import_beavertails(DataConfig(source=str(source), **cfg), out, progress=False)
    return metrics, out


def check_output(out: Path, metrics: dict[str, Any], n_valid: int, n_bad: int) -> None:
    """Shared checks: counts add up, types are coerced, every image opens with PIL and its
    extension matches its format, ids are unique."""
    assert METRIC_KEYS <= set(metrics)
    assert metrics["n_rejected"] == n_bad == len(read_jsonl(out / REJECTS_FILE))
    assert metrics["n_train"] + metrics["n_eval"] == n_valid
    assert metrics["n_input"] == n_valid + n_bad
    assert sum(metrics["rejects_by_field"].values()) == n_bad
    data = load_data(out)
    assert len(data.train) == metrics["n_train"] and len(data.eval) == metrics["n_eval"]
    assert len(data.test) == metrics["n_test"] >= 1
    ids = [r["id"] for r in data.pairs + data.test]
    assert len(ids) == len(set(ids))
    for r in data.pairs:
        assert r["split"] in ("train", "eval")
        assert r["more_helpful_response_id"] in (1, 2) and r["safer_response_id"] in (1, 2)
        assert isinstance(r["is_response_1_safe"], bool) and isinstance(
            r["is_response_2_safe"], bool
        )
        for k in (
            "response_1_harmless_rate",
            "response_2_harmless_rate",
            "response_1_helpful_rate",
            "response_2_helpful_rate",
            "image_severity",
        ):
            assert type(r[k]) is int
        assert r["image"] == f"{IMAGES_DIR}/{r['id']}.{r['image'].rsplit('.', 1)[1]}"
        with Image.open(out / r["image"]) as im:
            ext = {"PNG": "png", "JPEG": "jpg"}[im.format]
            assert r["image"].endswith("." + ext)
        assert data.image(r).size == (16, 16)
    for t in data.test:
        assert t["split"] == "test" and "response_1" not in t
        assert (out / t["image"]).is_file()


def rejects_by_index(out: Path) -> dict[tuple[str, int], str]:
    return {(r["source"], r["index"]): r["field"] for r in read_jsonl(out / REJECTS_FILE)}


# -- parquet -------------------------------------------------------------------------------
def test_parquet_file_valid_and_corrupt(tmp_path: Path) -> None:
    valid = [valid_record(i) for i in range(6)]
    valid[1]["image"] = {"bytes": image_bytes(1, "JPEG"), "path": "photo.jpg"}  # keep JPEG
    valid[2]["is_response_1_safe"] = "false"  # loose spellings are coerced
    bad = corrupt_records(100)
    rows = valid[:3] + [r for r, _ in bad] + valid[3:]
    src = write_beavertails_parquet(tmp_path / "pairs.parquet", rows)

    metrics, out = run_import(tmp_path, src, eval_fraction=0.05, seed=3)
    check_output(out, metrics, n_valid=6, n_bad=len(bad))
    # every corrupt record is reported at its row with the right field
    expected = {("pairs.parquet", 3 + k): field for k, (_, field) in enumerate(bad)}
    assert rejects_by_index(out) == expected
    assert all(r["split"] == "train" for r in read_jsonl(out / REJECTS_FILE))
    # no eval file (and tmp_path's "test_..." name must not count): one record held out
    assert metrics["eval_from"] == "holdout"
    assert (metrics["n_train"], metrics["n_eval"], metrics["n_test"]) == (5, 1, 1)
    assert metrics["source"] == str(src)
    assert metrics["rejects_by_field"]["image"] == 2
    # by_category counts the pair records (train + eval); test prompts separately
    assert metrics["by_category"] == {"dangerous_behavior": 6}
    assert metrics["test_by_category"] == {"dangerous_behavior": 1}
    assert set(metrics["by_severity"]) == {"safe", "minor", "moderate", "severe"}
    # the JPEG was copied byte for byte, not re-encoded
    jpg = [r for r in load_data(out).pairs if r["image"].endswith(".jpg")]
    assert len(jpg) == 1 and (out / jpg[0]["image"]).read_bytes() == image_bytes(1, "JPEG")


def test_holdout_is_seeded(tmp_path: Path) -> None:
    src = write_beavertails_parquet(
        tmp_path / "in" / "pairs.parquet", [valid_record(i) for i in range(20)]
    )

    def eval_questions(seed: int, name: str) -> list[str]:
        out = tmp_path / name
        out.mkdir()
        m = import_beavertails(
            DataConfig(source=str(src), seed=seed, eval_fraction=0.2), out, progress=False
        )
        assert (m["n_train"], m["n_eval"]) == (16, 4)
        return sorted(r["question"] for r in read_jsonl(out / SPLIT_FILES["eval"]))

    first = eval_questions(0, "a")
    assert first == eval_questions(0, "b")
    assert first != eval_questions(1, "c")


# -- jsonl ---------------------------------------------------------------------------------
def write_jsonl_with_images(
    path: Path, records: list[dict[str, Any]], lines: list[str] | None = None
) -> None:
    """JSON lines whose images are paths relative to the file (the bytes go beside it)."""
    (path.parent / "imgs").mkdir(parents=True, exist_ok=True)
    out = []
    for r in records:
        r = dict(r)
        if isinstance(r["image"], dict) and r["image"].get("bytes"):
            name = f"imgs/{path.stem}_{len(out)}.png"
            (path.parent / name).write_bytes(r["image"]["bytes"])
            r["image"] = name
        elif isinstance(r["image"], dict):
            r["image"] = r["image"]["path"]
        out.append(json.dumps(r))
    path.write_text("\n".join(out + (lines or [])) + "\n")


def test_jsonl_file_with_relative_image_paths(tmp_path: Path) -> None:
    bad = corrupt_records(50)
    rows = [valid_record(i) for i in range(4)] + [r for r, _ in bad]
    src = tmp_path / "bt" / "pairs.jsonl"
    src.parent.mkdir()
    write_jsonl_with_images(src, rows, lines=['{"question": "cut off', "[1, 2]"])
    n_lines = len(rows) + 2

    metrics, out = run_import(tmp_path, src)
    check_output(out, metrics, n_valid=4, n_bad=len(bad) + 2)
    expected = {("pairs.jsonl", 4 + k): field for k, (_, field) in enumerate(bad)}
    expected[("pairs.jsonl", n_lines - 2)] = "<json>"
    expected[("pairs.jsonl", n_lines - 1)] = "<record>"  # valid JSON but not an object
    assert rejects_by_index(out) == expected
    # the relative path was resolved against the file's directory and the file copied
    first = read_jsonl(out / SPLIT_FILES["train"])[0]
    assert (out / first["image"]).read_bytes() == image_bytes(0)


def test_directory_with_train_and_eval_jsonl(tmp_path: Path) -> None:
    root = tmp_path / "bt"
    root.mkdir()
    write_jsonl_with_images(root / "train.jsonl", [valid_record(i) for i in range(5)])
    # the same prompt twice in eval (two response pairs) -> one test prompt
    twin = valid_record(10, response_1="Another answer.")
    write_jsonl_with_images(
        root / "eval.jsonl", [valid_record(10), twin, valid_record(11)], lines=["not json at all"]
    )
    (root / "notes.txt").write_text("ignored: not a record file")

    metrics, out = run_import(tmp_path, root)
    check_output(out, metrics, n_valid=8, n_bad=1)
    assert (metrics["n_train"], metrics["n_eval"], metrics["n_test"]) == (5, 3, 2)
    assert metrics["eval_from"] == "file"
    assert read_jsonl(out / REJECTS_FILE) == [
        {
            "source": "eval.jsonl",
            "index": 3,
            "split": "eval",
            "field": "<json>",
            "error": read_jsonl(out / REJECTS_FILE)[0]["error"],
        }
    ]
    sources = {r["question"] for r in read_jsonl(out / SPLIT_FILES["eval"])}
    assert sources == {valid_record(10)["question"], valid_record(11)["question"]}


# -- datasets save_to_disk -----------------------------------------------------------------
def test_datasets_save_to_disk_dict(tmp_path: Path) -> None:
    import datasets

    def build(records: list[dict[str, Any]]) -> datasets.Dataset:
        columns = {k: [r[k] for r in records] for k in records[0]}
        return datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())

    train_bad = [
        valid_record(20, response_1_harmless_rate=5),
        valid_record(21, image={"bytes": b"not an image", "path": None}),
    ]
    train = [valid_record(i) for i in range(4)] + train_bad
    evaluation = [valid_record(30), valid_record(31, category="unknown_harm"), valid_record(32)]
    dd = datasets.DatasetDict({"train": build(train), "evaluation": build(evaluation)})
    root = tmp_path / "bt_disk"
    dd.save_to_disk(str(root))
    assert (root / "dataset_dict.json").is_file()

    items = list(iter_raw_records(root))
    assert [(s, src) for s, src, *_ in items] == (
        [("train", "bt_disk/train")] * 6 + [("eval", "bt_disk/evaluation")] * 3
    )
    assert isinstance(items[0][3]["image"]["bytes"], bytes)  # not decoded to PIL

    metrics, out = run_import(tmp_path, root)
    check_output(out, metrics, n_valid=6, n_bad=3)
    assert (metrics["n_train"], metrics["n_eval"], metrics["n_test"]) == (4, 2, 2)
    assert rejects_by_index(out) == {
        ("bt_disk/train", 4): "response_1_harmless_rate",
        ("bt_disk/train", 5): "image",
        ("bt_disk/evaluation", 1): "category",
    }


def test_datasets_single_dataset_is_train(tmp_path: Path) -> None:
    import datasets

    records = [valid_record(i) for i in range(3)]
    ds = datasets.Dataset.from_dict({k: [r[k] for r in records] for k in records[0]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "single"))
    metrics, out = run_import(tmp_path, tmp_path / "single")
    check_output(out, metrics, n_valid=3, n_bad=0)
    assert (metrics["n_train"], metrics["n_eval"], metrics["eval_from"]) == (2, 1, "holdout")


# -- the Hub layout ------------------------------------------------------------------------
def test_hub_layout_category_directories(tmp_path: Path) -> None:
    root = tmp_path / "BeaverTails-V"
    cats = ("animal_abuse", "privacy_invasion_and_surveillance")
    n_valid = n_bad = 0
    expected: dict[tuple[str, int], str] = {}
    for c, cat in enumerate(cats):
        bad = corrupt_records(200 + 10 * c)[c::2]  # a different half of the kinds per category
        train = [valid_record(40 + 10 * c + i, category=cat) for i in range(3)]
        train += [dict(r, category=cat) if f != "category" else r for r, f in bad]
        write_beavertails_parquet(root / cat / "train-00000-of-00001.parquet", train)
        write_beavertails_parquet(
            root / cat / "evaluation-00000-of-00001.parquet", [valid_record(60 + c, category=cat)]
        )
        for k, (_, field) in enumerate(bad):
            expected[(f"{cat}/train-00000-of-00001.parquet", 3 + k)] = field
        n_valid, n_bad = n_valid + 4, n_bad + len(bad)
    (root / "README.md").write_text("# card")
    (root / "dataset_infos.json").write_text("{}")  # metadata, not records

    metrics, out = run_import(tmp_path, root)
    check_output(out, metrics, n_valid=n_valid, n_bad=n_bad)
    assert rejects_by_index(out) == expected
    assert (metrics["n_train"], metrics["n_eval"], metrics["n_test"]) == (6, 2, 2)
    # 3 train + 1 eval pair per category (pairs only; test prompts repeat the eval prompts)
    assert metrics["by_category"] == {"animal_abuse": 4, "privacy_invasion_and_surveillance": 4}
    assert {r["category"] for r in read_jsonl(out / SPLIT_FILES["eval"])} == set(cats)


# -- errors --------------------------------------------------------------------------------
def test_strict_raises_naming_record_and_field(tmp_path: Path) -> None:
    rows = [valid_record(0), valid_record(1, response_1_harmless_rate=5), valid_record(2)]
    src = write_beavertails_parquet(tmp_path / "pairs.parquet", rows)
    with pytest.raises(RecordError) as info:
        run_import(tmp_path, src, strict=True)
    assert info.value.field == "response_1_harmless_rate"
    assert "pairs.parquet:1" in str(info.value) and "response_1_harmless_rate" in str(info.value)


def test_strict_raises_on_invalid_json_line(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_jsonl_with_images(src, [valid_record(0)], lines=["{oops"])
    with pytest.raises(RecordError, match=r"pairs\.jsonl:1.*<json>"):
        run_import(tmp_path, src, strict=True)


def test_missing_path_and_unsupported_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "bt.parquet"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        iter_raw_records(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_import(tmp_path, missing)
    csv = tmp_path / "bt.csv"
    csv.write_text("question,image\n")
    with pytest.raises(ValueError, match=r"bt\.csv"):
        iter_raw_records(csv)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "notes.txt").write_text("no records here")
    with pytest.raises(ValueError, match="empty_dir"):
        iter_raw_records(empty)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ValueError, match=r"broken\.parquet"):
        list(iter_raw_records(broken))


def test_all_rejected_raises_after_writing_rejects(tmp_path: Path) -> None:
    bad = corrupt_records(0)
    src = write_beavertails_parquet(tmp_path / "bad.parquet", [r for r, _ in bad])
    out = tmp_path / "data.partial"
    out.mkdir()
    with pytest.raises(ValueError, match=rf"all {len(bad)} records .* rejected.*rejects\.jsonl"):
        import_beavertails(DataConfig(source=str(src)), out, progress=False)
    assert len(read_jsonl(out / REJECTS_FILE)) == len(bad)


def test_odd_value_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    # "inf" is not an integer rate: a reject naming the field, not a crash
    src = tmp_path / "pairs.jsonl"
    write_jsonl_with_images(src, [valid_record(0), valid_record(1), valid_record(2)])
    lines = src.read_text().splitlines()
    lines[1] = lines[1].replace('"response_1_helpful_rate": 3', '"response_1_helpful_rate": "inf"')
    src.write_text("\n".join(lines) + "\n")
    metrics, out = run_import(tmp_path, src)
    assert metrics["n_rejected"] == 1 and metrics["n_train"] + metrics["n_eval"] == 2
    assert rejects_by_index(out) == {("pairs.jsonl", 1): "response_1_helpful_rate"}


def test_split_names() -> None:
    assert split_of_name("evaluation-00000-of-00001.parquet") == "eval"
    assert split_of_name("eval.jsonl") == "eval"
    assert split_of_name("test_prompts.jsonl") == "eval"
    assert split_of_name("validation") == "eval"
    assert split_of_name("train-00000-of-00001.parquet") == "train"
    assert split_of_name("contest.jsonl") == "train"
    assert split_of_name("animal_abuse") == "train"


def test_contradicting_safety_labels_are_kept_flagged(tmp_path: Path) -> None:
    """A safety flag that disagrees with its harmless rate is kept, counted and listed."""
    records = [valid_record(i) for i in range(6)]
    records[2] = valid_record(2, is_response_2_safe="False")  # rate +2 but "unsafe"
    records[4] = valid_record(4, is_response_1_safe="True", is_response_2_safe="False")
    metrics, out = run_import(tmp_path, write_beavertails_parquet(tmp_path / "bt.parquet", records))
    assert metrics["n_rejected"] == 0 and metrics["n_flagged"] == 3
    flagged = [json.loads(line) for line in (out / "flagged.jsonl").read_text().splitlines()]
    assert [(f["index"], f["field"]) for f in flagged] == [
        (2, "is_response_2_safe"),
        (4, "is_response_1_safe"),
        (4, "is_response_2_safe"),
    ]
    assert "harmless_rate=2" in flagged[0]["error"]
    (tmp_path / "clean").mkdir()
    clean, out = run_import(
        tmp_path / "clean", write_beavertails_parquet(tmp_path / "ok.parquet", records[:2])
    )
    assert clean["n_flagged"] == 0 and (out / "flagged.jsonl").read_text() == ""
