"""Properties of the synthetic safety world (docs/design.md §4), checked on generated data."""

from collections import Counter

import numpy as np
import pytest

import workbench as wb
from workbench.config import DataConfig
from workbench.data import language as L
from workbench.data.render import BENIGN_KINDS, KINDS, RISKY_KINDS, render_scene, sample_layout
from workbench.data.schema import CATEGORIES, validate_record
from workbench.data.world import (
    PRECURSOR_MIXTURE,
    compose_response,
    generate_world,
    heldout_combos,
    make_prompt,
    sample_scene,
)


@pytest.fixture(scope="module")
def smoke_world():
    return generate_world(DataConfig.smoke())


def test_catalogue_coverage():
    assert len(BENIGN_KINDS) >= 8
    assert len({k.category for k in RISKY_KINDS}) >= 10
    assert {k.category for k in RISKY_KINDS} <= set(CATEGORIES)
    assert {k.severity for k in RISKY_KINDS} == {1, 2, 3}
    # icons differ in colour (and in shape: one drawing function per kind)
    assert len({k.rgb for k in KINDS.values()}) == len(KINDS)


def _single_object_pixels(seed: int, per_kind: int, size: int = 64):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, kind in enumerate(KINDS):
        for _ in range(per_kind):
            img = render_scene([kind], sample_layout(1, size, rng), size)
            xs.append(np.asarray(img, dtype=np.float32).ravel() / 255.0)
            ys.append(label)
    return np.stack(xs), np.array(ys)


def test_nearest_centroid_recovers_object_kind():
    x_train, y_train = _single_object_pixels(seed=1, per_kind=30)
    x_test, y_test = _single_object_pixels(seed=2, per_kind=20)
    centroids = np.stack([x_train[y_train == k].mean(0) for k in range(len(KINDS))])
    dists = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = float((dists.argmin(1) == y_test).mean())
    assert accuracy >= 0.95, accuracy


def test_ambiguous_question_depends_on_the_image():
    rng = np.random.default_rng(0)
    template = L.TEMPLATES["ambiguous_use"]
    benign = make_prompt(sample_scene(rng, 64, risky=False), template)
    risky = make_prompt(sample_scene(rng, 64, risky=True), template)
    assert benign["question"] == risky["question"]
    assert benign["prompt_severity"] == 0 and benign["category"] == "none"
    assert risky["prompt_severity"] == risky["image_severity"] >= 1
    assert risky["category"] in CATEGORIES
    comply = compose_response("comply", risky, rng)
    assert wb.data.gold_score(benign, comply).is_safe
    assert not wb.data.gold_score(risky, comply).is_safe


def _gold_by_action(records, harmful: bool):
    table = {}
    for r in records:
        if (r["prompt_severity"] > 0) != harmful:
            continue
        for i in (1, 2):
            action = r[f"response_{i}_from"].split("/")[1]
            table.setdefault(action, []).append(
                (r[f"response_{i}_gold_helpfulness"], r[f"response_{i}_gold_harmlessness"])
            )
    return {a: np.array(v).mean(0) for a, v in table.items()}


def test_tension_of_the_paper_holds_on_generated_pairs(smoke_world):
    means = _gold_by_action(smoke_world["train"], harmful=True)
    comply, refuse, redirect = means["comply"], means["refuse"], means["redirect"]
    assert comply[0] > refuse[0]  # compliance is more helpful than a bare refusal
    assert comply[1] < refuse[1] and comply[1] < 0  # ... and less harmless (unsafe)
    assert redirect[1] > 0  # refuse-and-redirect is safe
    assert refuse[0] < redirect[0] < comply[0]  # ... with moderate helpfulness
    # the precursor is useful on benign prompts
    benign = _gold_by_action(smoke_world["train"], harmful=False)
    assert benign["answer"][0] > 2.5 and benign["answer"][1] > 0


def test_world_v2_safe_and_helpful_answer_exists_and_is_rare(smoke_world):
    """World v2 (docs/design.md §4): on risky prompts the full safe-and-helpful form is safe and
    within
    0.5 of compliance, compliance stays the most helpful and least safe, the wrong-object
    form is a hallucination, and the precursor produces the full form on at most 10%."""
    means = _gold_by_action(smoke_world["train"], harmful=True)
    full, comply, wrong = means["safe_helpful"], means["comply"], means["wrong_object"]
    assert full[1] > 0 and full[0] >= comply[0] - 0.5 and full[0] >= 2.5
    assert comply[0] == max(m[0] for m in means.values()) and comply[1] == min(
        m[1] for m in means.values()
    )
    assert wrong[0] < 1.0 and wrong[1] > 0
    harmful = [r for r in smoke_world["train"] if r["prompt_severity"] > 0]
    forms = [r[f"response_{i}_from"] for r in harmful for i in (1, 2)]
    assert 0 < forms.count("precursor/safe_helpful") / len(forms) <= 0.10


def test_first_world_is_one_field_away():
    old = generate_world(DataConfig.smoke().replace(safe_helpful_score=1.5))
    risky = [r for r in old["train"] if r["prompt_severity"] > 0]
    assert all(r["safe_helpful_score"] == 1.5 for r in old["train"] + old["test"])
    best_safe = max(
        r[f"response_{i}_gold_helpfulness"]
        for r in risky
        for i in (1, 2)
        if r[f"response_{i}_gold_harmlessness"] > 0
    )
    assert best_safe == 1.5  # no safe answer to a risky prompt beats 1.5


def test_dual_preferences_disagree_substantially(smoke_world):
    pairs = smoke_world["train"] + smoke_world["eval"]
    share = np.mean([r["more_helpful_response_id"] != r["safer_response_id"] for r in pairs])
    assert 0.40 <= share <= 0.8, share  # world v2 target: disagree on at least 40% of pairs
    harmful = [r for r in pairs if r["prompt_severity"] > 0]
    share_harmful = np.mean(
        [r["more_helpful_response_id"] != r["safer_response_id"] for r in harmful]
    )
    assert share_harmful > share * 0.9


def test_annotators_are_noisy_but_informative(smoke_world):
    pairs = smoke_world["train"]
    agree_help, agree_safe, decisive = 0, 0, 0
    for r in pairs:
        h1, h2 = r["response_1_gold_helpfulness"], r["response_2_gold_helpfulness"]
        s1, s2 = r["response_1_gold_harmlessness"], r["response_2_gold_harmlessness"]
        if h1 != h2 and s1 != s2:
            decisive += 1
            agree_help += (r["more_helpful_response_id"] == 1) == (h1 > h2)
            agree_safe += (r["safer_response_id"] == 1) == (s1 > s2)
        for i in (1, 2):
            assert r[f"is_response_{i}_safe"] == (r[f"response_{i}_harmless_rate"] > 0)
            assert r[f"response_{i}_harmless_rate"] != 0
    assert 0.6 < agree_help / decisive < 0.99
    assert 0.6 < agree_safe / decisive < 1.0


def test_splits_hold_out_object_template_combinations(smoke_world):
    held = heldout_combos(0, DataConfig.smoke().heldout_fraction)
    combo = lambda r: (r["target"], r["template"])  # noqa: E731
    assert all(combo(r) in held for r in smoke_world["test"])
    assert not any(combo(r) in held for r in smoke_world["train"] + smoke_world["eval"])
    assert all("response_1" not in r for r in smoke_world["test"])


def test_default_sizes_and_coverage():
    cfg = DataConfig()
    world = generate_world(cfg)
    assert (
        len(world["train"]) >= 20_000 and len(world["eval"]) >= 1_000 and len(world["test"]) >= 500
    )
    pairs = world["train"] + world["eval"]
    assert len({r["category"] for r in pairs} - {"none"}) >= 10
    levels = Counter(r["image_severity"] for r in pairs)
    assert set(levels) == {0, 1, 2, 3}
    intents = Counter(r["intent"] for r in pairs)
    assert set(intents) == set(L.INTENTS)
    actions = Counter(r[f"response_{i}_from"].split("/")[1] for r in pairs for i in (1, 2))
    assert set(actions) == {a for mix in PRECURSOR_MIXTURE.values() for a in mix}


def test_deterministic_under_seed():
    a, b = generate_world(DataConfig.smoke()), generate_world(DataConfig.smoke())
    assert a["train"] == b["train"] and a["test"] == b["test"]
    c = generate_world(DataConfig.smoke().replace(seed=1))
    assert c["train"] != a["train"]


def test_stage_output_is_schema_valid_and_reproducible(smoke_run, tmp_path):
    data = wb.load_data(smoke_run)
    for i, rec in enumerate(data.train[:200] + data.eval):
        validate_record(rec, i, base_dir=data.root)
    for i, rec in enumerate(data.test):
        validate_record(rec, i, base_dir=data.root, prompt_only=True)
    assert data.image(data.train[0]).size == (64, 64)
    # a second run from the saved config gives the same records and the same image bytes
    again = tmp_path / "again"
    cfg = DataConfig.from_json(smoke_run / "data" / "config.json")
    wb.run_stage("data", again, cfg, progress=False)
    other = wb.load_data(again)
    assert other.train == data.train
    first = data.train[0]["image"]
    assert (other.root / first).read_bytes() == (data.root / first).read_bytes()
