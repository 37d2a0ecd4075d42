"""BeaverTails-V record schema and validation (docs/design.md §3).

One record is one (image, question) pair with two responses and the dataset's own labels.
Every record that enters the workbench -- synthetic or read from real files -- goes through
:func:`validate_record`, which coerces the dataset's loose types (ids stored as strings,
``"True"``/``"False"`` safety flags) and raises :class:`RecordError` naming the record and
the field when something is wrong. Callers count and write rejects; nothing is dropped
silently.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

CATEGORIES: tuple[str, ...] = (
    "animal_abuse",
    "dangerous_behavior",
    "deception_in_personal_relationships",
    "discriminatory_depictions",
    "environmental_damage",
    "false_information",
    "financial_and_academic_fraud",
    "hacking_or_digital_crime",
    "harmful_health_content",
    "horror_and_gore",
    "identity_misuse_and_impersonation",
    "insulting_and_harassing_behavior",
    "pornographic_content",
    "privacy_invasion_and_surveillance",
    "psychological_harm_and_manipulation",
    "psychological_horror_and_dark_themes",
    "sensitive_information_in_key_areas",
    "sexual_crimes",
    "terrorism_or_extremism",
    "violence_and_physical_harm",
)
#: Category of a record with no harm at all (benign image, benign question). The guard's
#: category head has the 20 categories plus this one.
NO_CATEGORY = "none"
SEVERITY_LEVELS: tuple[str, ...] = ("safe", "minor", "moderate", "severe")

#: The annotators' labels of a pair: the dual preferences and the per-response rates.
LABEL_FIELDS: tuple[str, ...] = (
    "more_helpful_response_id",
    "response_1_helpful_rate",
    "response_2_helpful_rate",
    "is_response_1_safe",
    "is_response_2_safe",
    "safer_response_id",
    "response_1_harmless_rate",
    "response_2_harmless_rate",
)
#: Fields every pair record must have (the dataset's own names).
PAIR_FIELDS: tuple[str, ...] = (
    "question",
    "image",
    "category",
    "image_severity",
    "response_1",
    "response_2",
    "response_1_from",
    "response_2_from",
    *LABEL_FIELDS,
)
#: Fields a prompt-only record (test prompts) must have.
PROMPT_FIELDS: tuple[str, ...] = ("question", "image", "category", "image_severity")
#: Fields that may be absent in real files; they get these defaults.
OPTIONAL_DEFAULTS: dict[str, Any] = {"response_1_from": "unknown", "response_2_from": "unknown"}

HELPFUL_RANGE = (0, 3)
HARMLESS_RANGE = (-3, 3)


class RecordError(ValueError):
    """A record failed validation. Carries the record index, the field and the reason."""

    def __init__(self, index: int | str, field: str, message: str):
        self.index, self.field, self.message = index, field, message
        super().__init__(f"record {index}: field '{field}': {message}")

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "error": self.message}


def severity_of_harmless_rate(rate: int) -> str:
    """Severity level of a response from its harmless rate: > 0 safe, -1 minor, -2 moderate,
    -3 severe (0 counts as safe: harmless but not positively so)."""
    if rate >= 0:
        return "safe"
    return SEVERITY_LEVELS[min(3, -int(rate))]


@dataclass(frozen=True)
class ImageRef:
    """Where a record's image lives once validated: a path on disk or raw encoded bytes."""

    path: Path | None = None
    data: bytes | None = None


def _int_in(index, field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or value is None:
        raise RecordError(index, field, f"expected an integer in [{lo}, {hi}], got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RecordError(
                index, field, f"expected an integer in [{lo}, {hi}], got {value!r}"
            ) from None
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise RecordError(
            index, field, f"expected an integer in [{lo}, {hi}], got {value!r}"
        ) from None
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise RecordError(index, field, f"expected an integer in [{lo}, {hi}], got {value!r}")
    out = int(as_float)
    if not lo <= out <= hi:
        raise RecordError(index, field, f"out of range: {out} not in [{lo}, {hi}]")
    return out


def _response_id(index, field: str, value: Any) -> int:
    out = _int_in(index, field, value, 1, 2) if value not in (None, "") else None
    if out is None:
        raise RecordError(index, field, "expected 1 or 2, got an empty value")
    return out


_TRUE = {"true", "yes", "1", "safe"}
_FALSE = {"false", "no", "0", "unsafe"}


def _bool(index, field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RecordError(index, field, f"expected a boolean (True/False), got {value!r}")


def _text(index, field: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(index, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(index, field, "empty string")
    return value


def _severity(index, value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() in SEVERITY_LEVELS:
        return SEVERITY_LEVELS.index(value.strip().lower())
    return _int_in(index, "image_severity", value, 0, 3)


def _category(index, value: Any) -> str:
    text = _text(index, "category", value)
    norm = text.strip().lower().replace(" ", "_").replace("-", "_")
    if norm not in CATEGORIES and norm != NO_CATEGORY:
        raise RecordError(index, "category", f"unknown harm category {text!r}")
    return norm


# Decoding untrusted bytes can fail in many ways (OSError, SyntaxError, ValueError,
# DecompressionBombError, ...): every one of them is a bad image, reported as such.
_DECODE_ERRORS = Exception


def _decode(source) -> None:
    """Fully decode an image (``verify`` alone lets truncated files through)."""

    with Image.open(source) as im:
        im.load()


def check_image(index, image: Any, base_dir: Path | None = None) -> ImageRef:
    """Check that ``image`` decodes, whatever form it takes: encoded bytes, a ``datasets``
    Image dict ``{"bytes", "path"}``, a path (absolute or relative to ``base_dir``) or a PIL
    image. Returns where the bytes are; raises :class:`RecordError` on field ``image``."""

    if isinstance(image, dict):
        if image.get("bytes"):
            image = image["bytes"]
        elif image.get("path"):
            image = image["path"]
        else:
            raise RecordError(index, "image", "image dict has neither 'bytes' nor 'path'")
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return ImageRef(data=buf.getvalue())
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        try:
            _decode(io.BytesIO(data))
        except _DECODE_ERRORS as exc:
            raise RecordError(
                index, "image", f"image bytes do not decode ({exc.__class__.__name__})"
            ) from None
        return ImageRef(data=data)
    if isinstance(image, str | Path):
        if not str(image).strip():
            raise RecordError(index, "image", "empty image path")
        path = Path(image)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise RecordError(index, "image", f"image file not found: {path}")
        try:
            _decode(path)
        except _DECODE_ERRORS as exc:
            raise RecordError(
                index, "image", f"image file {path} does not decode ({exc.__class__.__name__})"
            ) from None
        return ImageRef(path=path)
    if image is None:
        raise RecordError(index, "image", "missing image (None)")
    raise RecordError(index, "image", f"unsupported image type {type(image).__name__}")


def validate_record(
    raw: dict[str, Any],
    index: int | str,
    base_dir: Path | None = None,
    prompt_only: bool = False,
    check_images: bool = True,
) -> tuple[dict[str, Any], ImageRef | None]:
    """Validate and normalise one record.

    Returns ``(record, image_ref)``: the record with coerced types (ids as int 1|2, safety
    flags as bool, rates as int, ``image_severity`` as int 0..3, category in snake case;
    fields not in the schema are kept as they are) and where its image is. Raises
    :class:`RecordError` naming ``index`` and the first bad field.

    An empty response is rejected (there is nothing to prefer or to train on). Label
    consistency: ``safer_response_id`` must not point at the response with the strictly lower
    harmless rate. A safety flag that contradicts its harmless rate is kept, and reported by
    :func:`label_conflicts`.
    """
    if not isinstance(raw, dict):
        raise RecordError(index, "<record>", f"expected a mapping, got {type(raw).__name__}")
    required = PROMPT_FIELDS if prompt_only else PAIR_FIELDS
    rec = dict(raw)
    for field, default in OPTIONAL_DEFAULTS.items():
        if not prompt_only and rec.get(field) is None:
            rec[field] = default
    for field in required:
        if field not in rec or rec[field] is None:
            raise RecordError(index, field, "missing field")

    rec["question"] = _text(index, "question", rec["question"])
    rec["category"] = _category(index, rec["category"])
    rec["image_severity"] = _severity(index, rec["image_severity"])
    image_ref = check_image(index, rec["image"], base_dir) if check_images else None
    if prompt_only:
        return rec, image_ref

    for i in (1, 2):
        rec[f"response_{i}"] = _text(index, f"response_{i}", rec[f"response_{i}"])
        rec[f"response_{i}_from"] = str(rec[f"response_{i}_from"])
        rec[f"response_{i}_helpful_rate"] = _int_in(
            index, f"response_{i}_helpful_rate", rec[f"response_{i}_helpful_rate"], *HELPFUL_RANGE
        )
        rec[f"response_{i}_harmless_rate"] = _int_in(
            index,
            f"response_{i}_harmless_rate",
            rec[f"response_{i}_harmless_rate"],
            *HARMLESS_RANGE,
        )
        rec[f"is_response_{i}_safe"] = _bool(
            index, f"is_response_{i}_safe", rec[f"is_response_{i}_safe"]
        )
    rec["more_helpful_response_id"] = _response_id(
        index, "more_helpful_response_id", rec["more_helpful_response_id"]
    )
    rec["safer_response_id"] = _response_id(index, "safer_response_id", rec["safer_response_id"])

    safer, other = rec["safer_response_id"], 3 - rec["safer_response_id"]
    if rec[f"response_{safer}_harmless_rate"] < rec[f"response_{other}_harmless_rate"]:
        raise RecordError(
            index,
            "safer_response_id",
            f"inconsistent labels: safer_response_id={safer} but response_{safer}_harmless_rate="
            f"{rec[f'response_{safer}_harmless_rate']} < response_{other}_harmless_rate="
            f"{rec[f'response_{other}_harmless_rate']}",
        )
    return rec, image_ref


def label_conflicts(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The labels of a validated pair that contradict each other without making it unusable:
    ``is_response_N_safe`` true with a negative harmless rate, or false with a positive one
    (a rate of 0 fits either). One entry per field: ``field`` and ``error``. The importer keeps
    such records, counts them and lists them in ``flagged.jsonl``."""
    out = []
    for i in (1, 2):
        safe, rate = rec[f"is_response_{i}_safe"], rec[f"response_{i}_harmless_rate"]
        if (safe and rate < 0) or (not safe and rate > 0):
            out.append(
                {
                    "field": f"is_response_{i}_safe",
                    "error": f"is_response_{i}_safe={safe} but response_{i}_harmless_rate={rate}",
                }
            )
    return out


#: The one severity palette (figures, the guard's notebook, the demo's badges): a colour per
#: level, and the text colour that reads on it.
SEVERITY_COLOURS: dict[str, str] = {
    "safe": "#1a7f37",
    "minor": "#d4a72c",
    "moderate": "#e36209",
    "severe": "#cf222e",
}
SEVERITY_TEXT_COLOURS: dict[str, str] = {
    "safe": "#ffffff",
    "minor": "#1f2328",
    "moderate": "#ffffff",
    "severe": "#ffffff",
}


#: What a world prompt carries beyond the BeaverTails-V schema: what the gold oracle needs.
WORLD_PROMPT_FIELDS: tuple[str, ...] = ("objects", "intent", "prompt_severity")
#: What a world pair record carries besides: the gold judgments of its two responses.
WORLD_GOLD_FIELDS: tuple[str, ...] = tuple(
    f"response_{i}_gold_{g}" for i in (1, 2) for g in ("helpfulness", "harmlessness")
)


def is_world(data: Any) -> bool:
    """True when ``data`` comes from the synthetic world, so the gold oracle can judge it.

    ``data`` is one record, a sequence of records, or a ``DataSplits`` (its train and eval
    pairs). Every record must carry :data:`WORLD_PROMPT_FIELDS`, and every pair record (one
    with ``response_1``) the gold judgments :data:`WORLD_GOLD_FIELDS`. Real BeaverTails-V
    records never do; nothing (an empty list, ``None``) is not the world either."""
    if data is None:
        return False
    if isinstance(data, Mapping):
        records: list[Any] = [data]
    elif hasattr(data, "pairs"):
        records = list(data.pairs)
    else:
        records = list(data)

    def world(r: Mapping[str, Any]) -> bool:
        fields = WORLD_PROMPT_FIELDS + (WORLD_GOLD_FIELDS if "response_1" in r else ())
        return all(f in r for f in fields)

    return bool(records) and all(world(r) for r in records)
