"""workbench.views.data: the tables, figures and browser behind notebook 01.

The smoke world is built once per module; "real" data is simulated by copying its records
with only the BeaverTails-V schema fields (plus ``id``/``split``, which the real importer adds),
so every world-only view must switch itself off.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import ipywidgets as widgets
import plotly.graph_objects as go
import pytest

import workbench as wb
from workbench.data.schema import PAIR_FIELDS, PROMPT_FIELDS, SEVERITY_LEVELS
from workbench.data.store import DataSplits
from workbench.views import data as explore


@pytest.fixture(scope="module")
def world(smoke_run) -> DataSplits:
    return wb.load_data(smoke_run)


@pytest.fixture(scope="module")
def real(world: DataSplits) -> DataSplits:
    """The same records stripped to the real dataset's fields (no gold, no intent)."""

    def strip(records: list[dict], fields: tuple[str, ...]) -> list[dict]:
        return [{k: r[k] for k in (*fields, "id", "split")} for r in records]

    return DataSplits(
        root=Path(world.root),
        train=strip(world.train, PAIR_FIELDS),
        eval=strip(world.eval, PAIR_FIELDS),
        test=strip(world.test, PROMPT_FIELDS),
    )


def direct_disagreement(records: list[dict]) -> float:
    return sum(r["more_helpful_response_id"] != r["safer_response_id"] for r in records) / len(
        records
    )


# -- tables -----------------------------------------------------------------------------------
def test_is_world(world: DataSplits, real: DataSplits) -> None:
    assert explore.is_world(world)
    assert not explore.is_world(real)
    assert not explore.is_world([])


def test_records_frame_world(world: DataSplits) -> None:
    frame = explore.records_frame(world)
    assert len(frame) == len(world.train) + len(world.eval)
    assert Counter(frame["split"]) == {"train": len(world.train), "eval": len(world.eval)}
    assert set(frame["image_severity"].astype(str)) <= set(SEVERITY_LEVELS)
    assert {"intent", "prompt_kind", "prompt_severity", "response_1_gold_helpfulness"} <= set(frame)
    assert frame["disagree"].mean() == pytest.approx(direct_disagreement(world.pairs))
    # the level name matches the record's integer severity, row by row
    first = world.train[0]
    assert frame.iloc[0]["image_severity"] == SEVERITY_LEVELS[first["image_severity"]]
    assert frame.iloc[0]["question"] == first["question"]


def test_records_frame_real_has_no_world_columns(real: DataSplits) -> None:
    frame = explore.records_frame(real)
    assert len(frame) == len(real.pairs)
    assert not {"intent", "prompt_severity", "response_1_gold_helpfulness"} & set(frame)
    assert {"category", "image_severity", "disagree", "mixed_safety"} <= set(frame)


def test_metrics_and_record_frames(world: DataSplits) -> None:
    metrics = wb.runs.load_metrics(world.root.parent, "data")
    table = explore.metrics_frame(metrics)
    assert table.loc["n_train", "value"] == len(world.train)
    assert "by_category" not in table.index  # nested dicts have their own tables
    rec = explore.record_frame(world.train[0])
    assert rec.loc["question", "value"] == world.train[0]["question"]


def test_disagreement_table_matches_records(world: DataSplits, real: DataSplits) -> None:
    table = explore.disagreement_table(world)
    assert table.index.name == "prompt_kind"
    assert table.loc["overall", "disagree"] == pytest.approx(direct_disagreement(world.pairs))
    assert table.loc["overall", "pairs"] == len(world.pairs)
    assert table["pairs"].iloc[1:].sum() == len(world.pairs)
    harmful = [r for r in world.pairs if r["intent"] == "harmful"]
    assert table.loc["harmful", "disagree"] == pytest.approx(direct_disagreement(harmful))
    mixed = [r for r in world.pairs if r["is_response_1_safe"] != r["is_response_2_safe"]]
    assert table.loc["overall", "disagree_mixed"] == pytest.approx(direct_disagreement(mixed))
    # the point of the figure: on pairs with one unsafe response, the more helpful one is
    # mostly the unsafe one
    assert table.loc["overall", "disagree_mixed"] > 0.7
    by_cat = explore.disagreement_table(real)
    assert by_cat.index.name == "category"
    assert by_cat.loc["overall", "disagree"] == pytest.approx(direct_disagreement(real.pairs))


def test_gold_tables(world: DataSplits, real: DataSplits) -> None:
    table = explore.gold_by_action_table(world)
    harmful = [r for r in world.pairs if r["prompt_severity"] > 0]
    assert table["n"].sum() == 2 * len(harmful)
    # compliance is helpful but unsafe; refuse-and-redirect is safe and moderately helpful
    assert table.loc["comply", "harmlessness"] < 0 < table.loc["redirect", "harmlessness"]
    assert table.loc["comply", "helpfulness"] > table.loc["redirect", "helpfulness"] > 0
    metrics = wb.runs.load_metrics(world.root.parent, "data")
    for action, row in metrics["harmful_gold_by_action"].items():
        assert table.loc[action, "helpfulness"] == pytest.approx(row["helpfulness"])
        assert table.loc[action, "n"] == row["n"]
    agreement = explore.annotator_agreement(world)
    assert 0.5 < agreement.loc["more helpful", "agreement"] <= 1.0
    # Bradley-Terry annotators: the observed agreement is close to the model's prediction
    assert agreement.loc["more helpful", "agreement"] == pytest.approx(
        agreement.loc["more helpful", "bradley_terry"], abs=0.05
    )
    for fn in (explore.gold_by_action_table, explore.annotator_agreement, explore.gold_by_action):
        with pytest.raises(ValueError, match="gold"):
            fn(real)


def test_oracle_table_orders_responses() -> None:
    prompt = explore.harmful_example(None)
    assert prompt["prompt_severity"] >= 2
    table = explore.oracle_table(
        prompt,
        {
            "compliance": "sure , here is how . step one : method_a . step two : method_b .",
            "refusal": "sorry , i cannot help with that .",
            "redirect": "sorry , i cannot help with that . "
            "instead , please talk to a trusted professional .",
            "gibberish": "knife method_a apple shows careful .",
        },
    )
    assert list(table.index) == ["compliance", "refusal", "redirect", "gibberish"]
    assert not table.loc["compliance", "safe"] and table.loc["redirect", "safe"]
    assert (
        table.loc["compliance", "helpfulness"]
        > table.loc["redirect", "helpfulness"]
        > table.loc["refusal", "helpfulness"]
        >= table.loc["gibberish", "helpfulness"]
    )
    assert table.loc["gibberish", "gibberish"] == 1


def test_harmful_example_from_world(world: DataSplits, real: DataSplits) -> None:
    rec = explore.harmful_example(world)
    assert rec["intent"] == "harmful" and rec["prompt_severity"] >= 2 and "image" in rec
    assert "objects" in explore.harmful_example(real)  # falls back to a built world prompt


# -- figures -----------------------------------------------------------------------------------
def test_heatmap_counts(world: DataSplits) -> None:
    fig = explore.category_severity_heatmap(world)
    assert isinstance(fig, go.Figure) and fig.layout.title.text
    (heat,) = fig.data
    assert list(heat.x) == list(SEVERITY_LEVELS)
    assert sum(sum(row) for row in heat.z) == len(world.pairs)
    cats = list(heat.y)
    animal = cats.index("animal_abuse")
    expected = sum(
        1 for r in world.pairs if r["category"] == "animal_abuse" and r["image_severity"] == 2
    )
    assert heat.z[animal][2] == expected
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_rate_distributions_counts(world: DataSplits) -> None:
    fig = explore.rate_distributions(world)
    bars = {t.name: t for t in fig.data}
    helpful = bars["safe responses"], bars["unsafe responses"]
    assert sum(sum(t.y) for t in helpful) == 2 * len(world.pairs)
    assert list(bars["harmless rate"].x) == list(range(-3, 4))
    assert sum(bars["harmless rate"].y) == 2 * len(world.pairs)
    unsafe_top = sum(
        1
        for r in world.pairs
        for i in (1, 2)
        if not r[f"is_response_{i}_safe"] and r[f"response_{i}_helpful_rate"] == 3
    )
    assert bars["unsafe responses"].y[3] == unsafe_top
    assert bars["harmless rate"].y[3] == 0  # a harmless rate is never 0 in the world


def test_preference_disagreement_overall(world: DataSplits, real: DataSplits) -> None:
    for splits in (world, real):
        fig = explore.preference_disagreement(splits)
        bars = {t.name: t for t in fig.data}
        overall = direct_disagreement(splits.pairs)
        assert bars["all pairs"].x[0] == "overall"
        assert bars["all pairs"].y[0] == pytest.approx(overall)
        assert fig.layout.meta["overall"] == pytest.approx(overall)
        line = next(t for t in fig.data if t.name.startswith("overall share"))
        assert list(line.y) == pytest.approx([overall] * len(line.y))
    world_fig = explore.preference_disagreement(world)
    assert "harmful" in world_fig.data[0].x
    assert "animal_abuse" in explore.preference_disagreement(world, by="category").data[0].x
    with pytest.raises(ValueError, match="no column"):
        explore.preference_disagreement(real, by="intent")


def test_gold_by_action_figure(world: DataSplits) -> None:
    fig = explore.gold_by_action(world)
    (scatter,) = fig.data
    points = dict(zip(scatter.text, zip(scatter.x, scatter.y, strict=True), strict=True))
    assert points["comply"][0] < 0 < points["redirect"][0]
    assert points["comply"][1] > points["redirect"][1]
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


# -- filters, HTML, browser -------------------------------------------------------------------
def test_filter_records(world: DataSplits) -> None:
    records = world.train
    assert explore.filter_records(records) == records
    violent = explore.filter_records(records, "violence_and_physical_harm")
    assert violent and all(r["category"] == "violence_and_physical_harm" for r in violent)
    severe = explore.filter_records(records, severity="severe")
    assert severe and all(r["image_severity"] == 3 for r in severe)
    assert explore.filter_records(records, severity=3) == severe
    both = explore.filter_records(records, "violence_and_physical_harm", "moderate")
    assert both == [r for r in violent if r["image_severity"] == 2]
    # "none" (no harm) only occurs beside a safe image in the world
    assert explore.filter_records(records, "none", "severe") == []
    assert explore.filter_records([], "none") == []
    with pytest.raises(ValueError, match="unknown category"):
        explore.filter_records(records, "no_such_category")
    with pytest.raises(ValueError, match="severity"):
        explore.filter_records(records, severity="extreme")


def test_record_html(world: DataSplits, real: DataSplits) -> None:
    rec = world.train[0]
    page = explore.record_html(rec)
    for text in (rec["question"], rec["response_1"], rec["response_2"]):
        assert text in page
    assert "gold helpfulness" in page and "intent" in page
    plain = explore.record_html(real.train[0])
    assert real.train[0]["response_2"] in plain
    assert "gold" not in plain and "intent" not in plain
    evil = dict(real.train[0], question="<script>alert(1)</script> & more")
    assert "<script>" not in explore.record_html(evil)
    assert "test prompt" in explore.record_html(world.test[0])


@pytest.mark.parametrize("kind", ["world", "real"])
def test_browser(kind: str, world: DataSplits, real: DataSplits) -> None:
    splits = world if kind == "world" else real
    ui = explore.browser(splits)
    assert isinstance(ui, widgets.Widget)
    assert ui.index_slider.max == len(splits.train) - 1
    assert splits.train[0]["question"] in ui.details.value
    assert ui.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("gold" in ui.details.value) == (kind == "world")

    ui.index_slider.value = 3
    assert splits.train[3]["question"] in ui.details.value

    ui.category_picker.value = "none"
    ui.severity_picker.value = "severe"  # no match: a message, not an exception
    assert ui.matches == []
    assert "No records match" in ui.details.value
    assert ui.image.value == b"" and ui.index_slider.max == 0

    ui.severity_picker.value = "safe"
    expected = explore.filter_records(splits.train, "none", "safe")
    assert ui.matches == expected and ui.index_slider.max == len(expected) - 1
    assert expected[0]["question"] in ui.details.value and ui.image.value

    ui.split_picker.value = "test"
    assert "test prompt" in ui.details.value
