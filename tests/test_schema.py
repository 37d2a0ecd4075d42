"""Record validation: coercions of the dataset's loose types, and errors naming record + field."""

import io

import pytest
from PIL import Image

from workbench.data.schema import (
    RecordError,
    check_image,
    severity_of_harmless_rate,
    validate_record,
)


def png_bytes(colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def record(**changes):
    rec = {
        "question": "how do i use this ?",
        "image": {"bytes": png_bytes(), "path": None},
        "category": "violence_and_physical_harm",
        "image_severity": 2,
        "response_1": "sorry , i cannot help with that .",
        "response_2": "sure , here is how .",
        "response_1_from": "model_a",
        "response_2_from": "model_b",
        "more_helpful_response_id": "2",
        "response_1_helpful_rate": 1,
        "response_2_helpful_rate": 3,
        "is_response_1_safe": "True",
        "is_response_2_safe": "False",
        "safer_response_id": "1",
        "response_1_harmless_rate": 2,
        "response_2_harmless_rate": -2,
    }
    rec.update(changes)
    return rec


def test_coercions_of_the_real_dataset_types():
    rec, ref = validate_record(record(), 0)
    assert rec["more_helpful_response_id"] == 2 and rec["safer_response_id"] == 1
    assert rec["is_response_1_safe"] is True and rec["is_response_2_safe"] is False
    assert ref.data is not None
    rec, _ = validate_record(
        record(image_severity="moderate", category="Violence And Physical Harm"), 0
    )
    assert rec["image_severity"] == 2 and rec["category"] == "violence_and_physical_harm"
    rec, _ = validate_record(record(response_1_helpful_rate=2.0), 0)
    assert rec["response_1_helpful_rate"] == 2 and isinstance(rec["response_1_helpful_rate"], int)


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"safer_response_id": None}, "safer_response_id", "missing"),
        ({"response_2_harmless_rate": -4}, "response_2_harmless_rate", "out of range"),
        ({"response_1_helpful_rate": 3.5}, "response_1_helpful_rate", "integer"),
        ({"response_1_helpful_rate": "inf"}, "response_1_helpful_rate", "integer"),
        ({"more_helpful_response_id": "3"}, "more_helpful_response_id", "out of range"),
        ({"is_response_1_safe": "maybe"}, "is_response_1_safe", "boolean"),
        ({"category": "cooking"}, "category", "unknown harm category"),
        ({"image_severity": 7}, "image_severity", "out of range"),
        ({"question": "  "}, "question", "empty"),
        ({"image": {"bytes": b"not an image", "path": None}}, "image", "do not decode"),
        ({"image": "/no/such/file.png"}, "image", "not found"),
        ({"safer_response_id": "2"}, "safer_response_id", "inconsistent"),
    ],
)
def test_errors_name_the_record_and_the_field(changes, field, reason):
    with pytest.raises(RecordError) as info:
        validate_record(record(**changes), 7)
    err = info.value
    assert (err.index, err.field) == (7, field)
    assert reason in err.message
    assert f"record 7: field '{field}'" in str(err)
    assert err.to_json() == {"index": 7, "field": field, "error": err.message}


def test_missing_field_entirely():
    rec = record()
    del rec["response_2_helpful_rate"]
    with pytest.raises(RecordError, match="response_2_helpful_rate.*missing"):
        validate_record(rec, 3)


def test_truncated_image_is_rejected(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    with pytest.raises(RecordError, match="image"):
        check_image(0, truncated)
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    assert check_image(0, "a.png", base_dir=tmp_path).path == path
    assert check_image(0, Image.new("RGB", (4, 4))).data  # PIL images are accepted


def test_prompt_only_records_and_severity_levels():
    rec, _ = validate_record(
        {"question": "q ?", "image": png_bytes(), "category": "none", "image_severity": 0},
        0,
        prompt_only=True,
    )
    assert rec["category"] == "none"
    assert [severity_of_harmless_rate(r) for r in (3, 1, 0, -1, -2, -3)] == [
        "safe",
        "safe",
        "safe",
        "minor",
        "moderate",
        "severe",
    ]
