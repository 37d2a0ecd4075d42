"""Notebook 01 (data): one record as HTML and the record browser, over the tables and figures
of :mod:`workbench.data.overview` (re-exported here, so the notebook imports one module)."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..config import DataConfig
from ..data.overview import (
    ALL,
    PAIR_SPLITS,
    SAFE_COLOUR,
    UNSAFE_COLOUR,
    annotator_agreement,
    category_severity_heatmap,
    disagreement_table,
    gold_by_action,
    gold_by_action_table,
    harmful_example,
    is_world,
    metrics_frame,
    oracle_table,
    preference_disagreement,
    present_categories,
    rate_distributions,
    record_frame,
    records_frame,
    severity_name,
)
from ..data.schema import CATEGORIES, NO_CATEGORY, SEVERITY_LEVELS, severity_of_harmless_rate
from ..data.store import DataSplits
from .output import scratch_run


def filter_records(
    records: Sequence[Mapping[str, Any]], category: str = ALL, severity: str | int = ALL
) -> list[Mapping[str, Any]]:
    """The records of ``category`` (a harm category, ``none`` or ``all``) whose image severity
    is ``severity`` (a level name, 0..3 or ``all``); ``[]`` when nothing matches. A name that
    is no category or level at all raises ValueError (a typo, not an empty result)."""
    if category != ALL and category not in (*CATEGORIES, NO_CATEGORY):
        raise ValueError(
            f"unknown category {category!r}; one of 'all', {list(CATEGORIES)}, {NO_CATEGORY!r}"
        )
    level = None if severity == ALL else severity_name(severity)
    return [
        r
        for r in records
        if (category == ALL or r["category"] == category)
        and (level is None or severity_name(r["image_severity"]) == level)
    ]


_CELL = "padding:2px 8px;border:1px solid #ddd;vertical-align:top;text-align:left"


def _row(label: str, *cells: str, header: bool = False) -> str:
    """A table row: a label cell, then ``cells`` (one cell spans both response columns)."""
    tag = "th" if header else "td"
    span = " colspan='2'" if len(cells) == 1 else ""
    inner = "".join(f"<{tag}{span} style='{_CELL}'>{c}</{tag}>" for c in cells)
    return f"<tr><th style='{_CELL}'>{html.escape(label)}</th>{inner}</tr>"


def _safe_text(value: Any) -> str:
    return html.escape(str(value))


def record_html(record: Mapping[str, Any]) -> str:
    """One record as a small HTML table: the question, the prompt labels, and for a pair
    record both responses side by side with every label (rates, safety flags, which is more
    helpful / safer, and the gold scores when present). Text is HTML-escaped."""
    r = record
    rows = [_row("question", f"<b>{_safe_text(r['question'])}</b>")]
    prompt_bits = [
        f"category: {_safe_text(r['category'])}",
        f"image severity: {_safe_text(severity_name(r['image_severity']))}",
    ]
    if "intent" in r:
        prompt_bits.append(f"intent: {_safe_text(r['intent'])}")
    if "prompt_severity" in r:
        prompt_bits.append(
            f"prompt severity: {_safe_text(severity_name(int(r['prompt_severity'])))}"
        )
    if "id" in r:
        prompt_bits.append(f"id: {_safe_text(r['id'])}")
    rows.append(_row("prompt", " &middot; ".join(prompt_bits)))
    if "objects" in r and isinstance(r["objects"], list):
        objects = ", ".join(
            f"{o.get('colour', '')} {o.get('kind', '')}".strip() for o in r["objects"]
        )
        rows.append(
            _row("scene", _safe_text(objects) + f" (target: {_safe_text(r.get('target', '?'))})")
        )
    head = "<table style='border-collapse:collapse;font-size:13px;max-width:720px'>"
    if "response_1" not in r:  # a test prompt: no responses, no labels
        rows.append(_row("responses", "<i>test prompt: no responses or labels</i>"))
        return head + "".join(rows) + "</table>"

    more_helpful, safer = int(r["more_helpful_response_id"]), int(r["safer_response_id"])

    def both(fn) -> list[str]:
        return [fn(i) for i in (1, 2)]

    def mark(i: int, chosen: int) -> str:
        return "<b>&#9733; yes</b>" if i == chosen else "no"

    def safe_flag(i: int) -> str:
        ok = bool(r[f"is_response_{i}_safe"])
        colour = SAFE_COLOUR if ok else UNSAFE_COLOUR
        return f"<span style='color:{colour}'>{'safe' if ok else 'unsafe'}</span>"

    def harmless(i: int) -> str:
        rate = int(r[f"response_{i}_harmless_rate"])
        return f"{rate:+d} ({severity_of_harmless_rate(rate)})"

    table = [
        _row("", "response 1", "response 2", header=True),
        _row("text", *both(lambda i: _safe_text(r[f"response_{i}"]) or "<i>(empty)</i>")),
        _row("from", *both(lambda i: _safe_text(r.get(f"response_{i}_from", "unknown")))),
        _row("helpful rate (0..3)", *both(lambda i: str(int(r[f"response_{i}_helpful_rate"])))),
        _row("harmless rate (-3..+3)", *both(harmless)),
        _row("safety flag", *both(safe_flag)),
        _row("more helpful", *both(lambda i: mark(i, more_helpful))),
        _row("safer", *both(lambda i: mark(i, safer))),
    ]
    for field in ("helpfulness", "harmlessness"):
        key = f"response_1_gold_{field}"
        if key in r and f"response_2_gold_{field}" in r:
            table.append(
                _row(
                    f"gold {field}",
                    *both(lambda i, f=field: f"{float(r[f'response_{i}_gold_{f}']):+.2f}"),
                )
            )
    verdict = (
        "<span style='color:#d62728'>the preferences disagree: the more helpful response "
        "is not the safer one</span>"
        if more_helpful != safer
        else "the preferences agree"
    )
    table.append(_row("", verdict))
    return head + "".join(rows + table) + "</table>"


def scaled_image(image: Image.Image, size: int = 256) -> Image.Image:
    """``image`` made about ``size`` px on its long side: small scenes are enlarged by an
    integer factor with nearest-neighbour (crisp pixels), large photos shrunk smoothly."""
    longest = max(image.size)
    if longest <= size:
        factor = max(1, size // longest)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    scale = size / longest
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class RecordBrowser(widgets.VBox):
    """Browse records: split, category and severity filters, an index slider, the image and
    :func:`record_html`. The controls are attributes so that code (and tests) can drive it:
    ``split_picker``, ``category_picker``, ``severity_picker``, ``index_slider``; the shown
    content is in ``image`` (PNG bytes), ``details`` (HTML) and ``status`` (HTML)."""

    def __init__(self, splits: DataSplits, image_px: int = 256):
        self.splits = splits
        self.image_px = image_px
        self._matches: list[Mapping[str, Any]] = []
        self._updating = False
        every = [r for name in ("train", "eval", "test") for r in splits.split(name)]
        self.split_picker = widgets.Dropdown(
            options=["train", "eval", "test"], value="train", description="split"
        )
        self.category_picker = widgets.Dropdown(
            options=[ALL, *present_categories(every)], value=ALL, description="category"
        )
        self.severity_picker = widgets.Dropdown(
            options=[ALL, *SEVERITY_LEVELS], value=ALL, description="severity"
        )
        self.index_slider = widgets.IntSlider(
            value=0, min=0, max=0, description="index", continuous_update=False
        )
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png", width=image_px)
        self.details = widgets.HTML()
        for picker in (self.split_picker, self.category_picker, self.severity_picker):
            picker.observe(self._on_filter, names="value")
        self.index_slider.observe(self._on_index, names="value")
        super().__init__(
            [
                widgets.HBox([self.split_picker, self.category_picker, self.severity_picker]),
                widgets.HBox([self.index_slider, self.status]),
                widgets.HBox([self.image, self.details]),
            ]
        )
        self.refresh()

    @property
    def matches(self) -> list[Mapping[str, Any]]:
        """The records that pass the current filters."""
        return self._matches

    def _on_filter(self, _change: dict) -> None:
        self.refresh()

    def _on_index(self, _change: dict) -> None:
        if not self._updating:
            self._show()

    def refresh(self) -> None:
        """Apply the filters again and show the first match."""
        self._matches = filter_records(
            self.splits.split(self.split_picker.value),
            self.category_picker.value,
            self.severity_picker.value,
        )
        self._updating = True
        try:  # max before value: IntSlider clamps value into [min, max]
            self.index_slider.value = 0
            self.index_slider.max = max(0, len(self._matches) - 1)
            self.index_slider.disabled = len(self._matches) <= 1
        finally:
            self._updating = False
        self._show()

    def _show(self) -> None:
        n = len(self._matches)
        if n == 0:
            self.status.value = "<i>0 records match</i>"
            self.details.value = (
                "<p><b>No records match these filters</b> (split "
                f"<code>{html.escape(self.split_picker.value)}</code>, category "
                f"<code>{html.escape(self.category_picker.value)}</code>, severity "
                f"<code>{html.escape(self.severity_picker.value)}</code>). "
                "Pick another category or severity level.</p>"
            )
            self.image.value = b""
            self.image.layout.display = "none"
            return
        index = min(self.index_slider.value, n - 1)
        record = self._matches[index]
        self.status.value = f"record {index + 1} of {n} matching"
        self.details.value = record_html(record)
        try:
            self.image.value = png_bytes(scaled_image(self.splits.image(record), self.image_px))
            self.image.layout.display = None
        except (OSError, ValueError) as exc:  # a missing or unreadable image file
            self.image.value = b""
            self.image.layout.display = "none"
            self.details.value = (
                f"<p style='color:{UNSAFE_COLOUR}'>image "
                f"{html.escape(str(record.get('image')))} cannot be shown: "
                f"{html.escape(str(exc))}</p>" + self.details.value
            )


def browser(splits: DataSplits, image_px: int = 256) -> RecordBrowser:
    """An ipywidgets record browser over ``splits`` (see :class:`RecordBrowser`)."""
    return RecordBrowser(splits, image_px=image_px)


# --- exercises -----------------------------------------------------------------------------
def data_variant(run_dir: str | Path, name: str, **overrides: Any) -> Path:
    """An exercise's world: ``run_dir``'s own data config with ``overrides`` on top (e.g.
    ``helpful_temperature=2.0``), built into the scratch run ``name``
    (:func:`~workbench.views.output.scratch_run`, beside ``run_dir``, which it never touches).
    A second call with the same settings finds the stage finished. World runs only: a real
    data file has no annotator model to change (ValueError)."""
    from ..pipeline import run_stage, saved_config  # views sit above the pipeline

    base = saved_config(run_dir, "data")
    if not isinstance(base, DataConfig):
        raise FileNotFoundError(f"{run_dir} has no finished data stage")
    if base.source != "world":
        raise ValueError(
            f"data_variant: {run_dir} holds a real data file ({base.source}); the world's "
            "settings (rate_noise, helpful_temperature, ...) only apply to the synthetic world"
        )
    scratch = scratch_run(run_dir, name, stages=())
    run_stage("data", scratch, type(base).from_dict(overrides, base=base), progress=False)
    return scratch


__all__ = [
    "ALL",
    "PAIR_SPLITS",
    "RecordBrowser",
    "annotator_agreement",
    "browser",
    "category_severity_heatmap",
    "data_variant",
    "disagreement_table",
    "filter_records",
    "gold_by_action",
    "gold_by_action_table",
    "harmful_example",
    "is_world",
    "metrics_frame",
    "oracle_table",
    "png_bytes",
    "preference_disagreement",
    "present_categories",
    "rate_distributions",
    "record_frame",
    "record_html",
    "records_frame",
    "scaled_image",
    "severity_name",
]
