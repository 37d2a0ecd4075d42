"""The embedded default: a synthetic multimodal safety world in the BeaverTails-V schema.

Why it exists: everything runs on a CPU in minutes, and results can be checked against the
*gold* oracle (``oracle.py``), which real data never has.

How a record is made (docs/design.md §4):

1. **Scene** -- 1-3 icons drawn with PIL (``render.py``). With probability
   ``RISKY_SCENE_PROB`` one icon is a risky object (knife, gun, pill, ...) carrying a harm
   category and a base severity; ``image_severity`` is the highest present. The scene's
   *target* (what "{obj}" and "this" refer to) is the risky object, else a random icon.
2. **Question** -- a template (``language.py``) drawn by ``INTENT_WEIGHTS``: benign
   (describe / count / colour), safe usage, ambiguous usage ("how do i use this ?": its
   severity is the image's -- harmless beside a flower, harmful beside a knife) or explicit
   harmful intent at level 1-3 in one harm category (about the image's category with
   probability ``HARM_MATCHES_IMAGE``).
3. **Two responses** -- each drawn independently from the *precursor* mixture
   ``PRECURSOR_MIXTURE`` (a stand-in for the models that answered BeaverTails-V): it is
   mostly useful on benign prompts, sometimes over-refuses them, and often complies with
   harmful ones. Actions are composed from the closed vocabulary in ``compose_response``.
4. **Annotators** -- ``annotate`` samples the labels from the gold scores with documented
   noise: rates are the gold scores plus N(0, ``rate_noise``), rounded and clipped (a
   harmless rate never rounds to 0: it keeps the gold sign); "more helpful" is a
   Bradley-Terry draw, P(1) = σ((h1 - h2)/``helpful_temperature``); "safer" follows the
   harmless rates and, when they tie, a Bradley-Terry draw on the gold harmlessness. So
   learned reward and cost models are imperfect proxies of the gold oracle.
5. **Splits** -- a share ``heldout_fraction`` of all (target object, template) combinations
   is held out: test prompts use only those, train and eval never do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import DataConfig
from . import language as L
from .oracle import SAFE_HELPFUL_SCORE, answer_objects, gold_score
from .render import BENIGN_KINDS, KINDS, RISKY_KINDS, render_scene, sample_layout
from .schema import LABEL_FIELDS, NO_CATEGORY
from .store import IMAGES_DIR, write_data_dir

#: How often each question intent is asked.
INTENT_WEIGHTS: dict[str, float] = {
    "describe": 0.10,
    "count": 0.09,
    "colour": 0.09,
    "safe_usage": 0.12,
    "ambiguous": 0.28,
    "harmful": 0.32,
}
#: Probability that a scene holds one risky object.
RISKY_SCENE_PROB = 0.65
#: Probability that an explicit harmful question on a risky scene is about that object's category.
HARM_MATCHES_IMAGE = 0.8

#: The precursor model: a distribution over response actions per kind of prompt.
PRECURSOR_MIXTURE: dict[str, dict[str, float]] = {
    # describe / count / colour questions
    "benign": {
        "answer": 0.55,
        "hallucinate": 0.15,
        "describe": 0.08,
        "refuse": 0.07,
        "redirect": 0.04,
        "comply": 0.04,
        "degenerate": 0.07,
    },
    "safe_usage": {
        "tips": 0.45,
        "comply": 0.18,
        "warn": 0.05,
        "refuse": 0.12,
        "redirect": 0.08,
        "hallucinate": 0.05,
        "degenerate": 0.07,
    },
    # "how do i use this ?" beside a benign image
    "ambiguous_benign": {
        "answer": 0.40,
        "comply": 0.15,
        "tips": 0.10,
        "refuse": 0.12,
        "redirect": 0.08,
        "describe": 0.05,
        "hallucinate": 0.03,
        "degenerate": 0.07,
    },
    # explicit harmful intent, or an ambiguous question beside a risky image. World v2: the
    # full safe-and-helpful form is rare (8%, so alignment has something to learn), beside
    # its partial forms and the mistakes a policy drifts into -- the same form about another
    # object (absent, or in the scene but not the target) -- so the proxies see them too.
    "harmful": {
        "comply": 0.38,
        "comply_warn": 0.17,
        "refuse": 0.08,
        "redirect": 0.10,
        "tips": 0.05,
        "describe": 0.03,
        "degenerate": 0.04,
        "safe_helpful": 0.08,
        "safe_partial": 0.04,
        "wrong_object": 0.03,
    },
}
for _name, _mix in PRECURSOR_MIXTURE.items():
    assert math.isclose(sum(_mix.values()), 1.0), _name


# --- scenes and prompts -----------------------------------------------------------------------
def sample_scene(rng: np.random.Generator, size: int, risky: bool | None = None) -> dict[str, Any]:
    """A scene: its icons (kind + colour name), the target object and the render layout."""
    if risky is None:
        risky = bool(rng.random() < RISKY_SCENE_PROB)
    n = int(rng.integers(1, 4))
    benign = [k.name for k in BENIGN_KINDS]
    if risky:
        target = RISKY_KINDS[int(rng.integers(len(RISKY_KINDS)))].name
        others = list(rng.choice(benign, size=n - 1, replace=False))
        kinds = others + [target]
        order = rng.permutation(n)
        kinds = [kinds[i] for i in order]
    else:
        kinds = list(rng.choice(benign, size=n, replace=False))
        target = kinds[int(rng.integers(n))]
    kinds = [str(k) for k in kinds]
    risky_objs = [KINDS[k] for k in kinds if KINDS[k].risky]
    top = max(risky_objs, key=lambda k: k.severity) if risky_objs else None
    return {
        "objects": [{"kind": k, "colour": KINDS[k].colour_name} for k in kinds],
        "target": str(target),
        "image_severity": top.severity if top else 0,
        "image_category": top.category if top else NO_CATEGORY,
        "layout": sample_layout(n, size, rng),
    }


def _sample_template(rng: np.random.Generator, scene: dict[str, Any]) -> L.Template:
    intents = list(INTENT_WEIGHTS)
    intent = intents[int(rng.choice(len(intents), p=np.array(list(INTENT_WEIGHTS.values()))))]
    if intent != "harmful":
        options = [t for t in L.BASE_TEMPLATES if t.intent == intent]
        return options[int(rng.integers(len(options)))]
    if scene["image_severity"] > 0 and rng.random() < HARM_MATCHES_IMAGE:
        category = scene["image_category"]
    else:
        cats = list(L.HARM_PHRASES)
        category = cats[int(rng.integers(len(cats)))]
    level = int(rng.integers(1, 4))
    return L.TEMPLATES[f"harm{level}_{category}"]


def make_prompt(
    scene: dict[str, Any], template: L.Template, safe_helpful_score: float = SAFE_HELPFUL_SCORE
) -> dict[str, Any]:
    """The prompt fields of a record: the question, its labels and the world metadata
    (``safe_helpful_score``: the gold helpfulness of the full safe-and-helpful answer)."""
    if template.intent == "harmful":
        severity, p_category = template.level, template.category
    elif template.intent == "ambiguous":
        severity, p_category = scene["image_severity"], scene["image_category"]
    else:
        severity, p_category = 0, NO_CATEGORY
    category = p_category if severity > 0 else scene["image_category"]
    return {
        "question": template.render(scene["target"]),
        "safe_helpful_score": float(safe_helpful_score),
        "category": category,
        "image_severity": scene["image_severity"],
        "intent": template.intent,
        "template": template.id,
        "target": scene["target"],
        "objects": scene["objects"],
        "prompt_severity": severity,
        "prompt_category": p_category if severity > 0 else NO_CATEGORY,
    }


def heldout_combos(seed: int, fraction: float) -> frozenset[tuple[str, str]]:
    """A seeded random share ``fraction`` of all (object kind, template) combinations."""
    universe = sorted((k, t) for k in KINDS for t in L.TEMPLATES)
    rng = np.random.default_rng([seed, 7])
    pick = rng.random(len(universe)) < fraction
    return frozenset(c for c, p in zip(universe, pick, strict=True) if p)


# --- responses -----------------------------------------------------------------------------
def mixture_key(prompt: dict[str, Any]) -> str:
    if prompt["intent"] in L.BENIGN_INTENTS:
        return "benign"
    if prompt["intent"] == "safe_usage":
        return "safe_usage"
    return "harmful" if prompt["prompt_severity"] > 0 else "ambiguous_benign"


def _steps(rng: np.random.Generator, k: int) -> list[str]:
    methods = rng.choice(L.METHOD_TOKENS, size=k, replace=False)
    return [L.step_sentence(i, str(m)) for i, m in enumerate(methods)]


def _tips(rng: np.random.Generator, target: str, k: int) -> list[str]:
    idx = rng.choice(len(L.TIP_TEMPLATES), size=k, replace=False)
    return [L.TIP_TEMPLATES[int(i)].format(obj=target) for i in idx]


def safe_helpful_sentences(rng: np.random.Generator, obj: str, risky: bool = True) -> list[str]:
    """The full safe-and-helpful form about ``obj``: its risk (when it has one), two distinct
    tips on it, a redirection (world v2, docs/design.md §4)."""
    redirect = L.REDIRECTS[int(rng.integers(len(L.REDIRECTS)))]
    return [*([L.risk_sentence(obj)] if risky else []), *_tips(rng, obj, 2), redirect]


def other_object(
    rng: np.random.Generator, prompt: dict[str, Any], absent: bool | None = None
) -> str:
    """An object an answer must not be about (:func:`~workbench.data.oracle.answer_objects`):
    absent from the scene (``absent``), in the scene but not the target (``not absent``; absent
    when the scene holds no such object), or either."""
    about = answer_objects(prompt)
    present = [o["kind"] for o in prompt["objects"] if o["kind"] not in about]
    missing = [k for k in KINDS if k not in {o["kind"] for o in prompt["objects"]}]
    if absent is None:
        absent = not present or bool(rng.random() < 0.5)
    pool = missing if (absent or not present) else present
    return str(pool[int(rng.integers(len(pool)))])


def _description(objects: list[dict]) -> str:
    return L.describe_sentence([(o["colour"], o["kind"]) for o in objects])


def _wrong_fact(rng: np.random.Generator, prompt: dict[str, Any]) -> str:
    """A plausible but wrong answer to the prompt (a hallucination)."""
    objects, present = prompt["objects"], {o["kind"] for o in prompt["objects"]}
    absent = [k for k in KINDS if k not in present]
    if prompt["intent"] == "count":
        wrong = [n for n in range(1, 5) if n != len(objects)]
        return L.count_sentence(int(rng.choice(wrong)))
    if prompt["intent"] == "colour":
        colours = sorted(
            {k.colour_name for k in KINDS.values()} - {KINDS[prompt["target"]].colour_name}
        )
        return L.colour_sentence(prompt["target"], str(rng.choice(colours)))
    swapped = [dict(o) for o in objects]
    swapped[int(rng.integers(len(swapped)))]["kind"] = str(rng.choice(absent))
    return L.describe_sentence([(KINDS[o["kind"]].colour_name, o["kind"]) for o in swapped])


def _answer(rng: np.random.Generator, prompt: dict[str, Any]) -> list[str]:
    intent = prompt["intent"]
    if intent == "describe":
        return [_description(prompt["objects"])]
    if intent == "count":
        return [L.count_sentence(len(prompt["objects"]))]
    if intent == "colour":
        return [L.colour_sentence(prompt["target"], KINDS[prompt["target"]].colour_name)]
    if intent == "safe_usage":
        return _tips(rng, prompt["target"], int(rng.integers(1, 3)))
    return [L.COMPLY_OPEN, *_steps(rng, 2)]


def compose_response(action: str, prompt: dict[str, Any], rng: np.random.Generator) -> str:
    """The text of one precursor action (see ``PRECURSOR_MIXTURE``) for ``prompt``."""
    redirect = L.REDIRECTS[int(rng.integers(len(L.REDIRECTS)))]
    if action == "answer":
        sentences = _answer(rng, prompt)
    elif action in ("comply", "comply_warn"):
        sentences = [L.COMPLY_OPEN, *_steps(rng, int(rng.integers(1, 4)))]
        if action == "comply_warn":
            sentences.append(L.WARNING)
    elif action == "refuse":
        sentences = [L.REFUSAL]
    elif action == "redirect":
        sentences = [L.REFUSAL, redirect]
    elif action == "tips":
        sentences = _tips(rng, prompt["target"], int(rng.integers(1, 3)))
        if rng.random() < 0.5:
            sentences.append(L.WARNING)
    elif action == "warn":
        sentences = [L.WARNING]
    elif action in ("safe_helpful", "safe_partial", "wrong_object"):
        target = prompt["target"] if action != "wrong_object" else other_object(rng, prompt)
        sentences = safe_helpful_sentences(rng, target, KINDS[target].risky)
        if action == "safe_partial":  # one part missing: the risk, a tip or the redirection
            drop = int(rng.integers(len(sentences)))
            sentences = sentences[:drop] + sentences[drop + 1 :]
    elif action == "describe":
        sentences = [_description(prompt["objects"])]
    elif action == "hallucinate":
        sentences = [_wrong_fact(rng, prompt)]
    elif action == "degenerate":
        mode = int(rng.integers(3))
        if mode == 0:  # repetition
            sentences = _answer(rng, prompt)[:1] * int(rng.integers(2, 4))
        elif mode == 1:  # gibberish: words of the vocabulary in no grammatical order
            vocab = [w for w in L.vocabulary() if w not in {".", "?"}]
            return " ".join(str(w) for w in rng.choice(vocab, size=int(rng.integers(4, 10)))) + " ."
        else:  # over-length: everything at once, twice
            sentences = [L.COMPLY_OPEN, *_steps(rng, 3), *_tips(rng, prompt["target"], 3)] * 2
    else:
        raise ValueError(
            f"unknown precursor action {action!r}; "
            f"known: {sorted({a for m in PRECURSOR_MIXTURE.values() for a in m})}"
        )
    return L.join_sentences(sentences)


def sample_response(prompt: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    """One response from the precursor mixture: ``(action, text)``."""
    mix = PRECURSOR_MIXTURE[mixture_key(prompt)]
    actions = list(mix)
    action = actions[int(rng.choice(len(actions), p=np.array(list(mix.values()))))]
    return action, compose_response(action, prompt, rng)


# --- annotators ----------------------------------------------------------------------------
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def harmless_rate(value: float, gold: float) -> int:
    """A harmlessness rate -3..+3 from a (noisy) value; 0 is not a rate, so it takes the side
    of the gold harmlessness. ``harmless_rate(g, g)`` is the noise-free label."""
    rate = min(3, max(-3, _round(value)))
    return rate if rate != 0 else (1 if gold > 0 else -1)


def annotate(gold_1, gold_2, rng: np.random.Generator, cfg: DataConfig) -> dict[str, Any]:
    """BeaverTails-V labels for a pair, sampled from the gold scores with noise (see module doc)."""
    out: dict[str, Any] = {}
    for i, g in ((1, gold_1), (2, gold_2)):
        out[f"response_{i}_helpful_rate"] = min(
            3, max(0, _round(g.helpfulness + rng.normal(0, cfg.rate_noise)))
        )
        out[f"response_{i}_harmless_rate"] = harmless_rate(
            g.harmlessness + rng.normal(0, cfg.rate_noise), g.harmlessness
        )
        out[f"is_response_{i}_safe"] = out[f"response_{i}_harmless_rate"] > 0
    p_help = _sigmoid((gold_1.helpfulness - gold_2.helpfulness) / cfg.helpful_temperature)
    out["more_helpful_response_id"] = 1 if rng.random() < p_help else 2
    r1, r2 = out["response_1_harmless_rate"], out["response_2_harmless_rate"]
    if r1 != r2:
        out["safer_response_id"] = 1 if r1 > r2 else 2
    else:
        p_safe = _sigmoid((gold_1.harmlessness - gold_2.harmlessness) / cfg.safer_tie_temperature)
        out["safer_response_id"] = 1 if rng.random() < p_safe else 2
    return out


def make_pair(prompt: dict[str, Any], rng: np.random.Generator, cfg: DataConfig) -> dict[str, Any]:
    """A full pair record for ``prompt``: two precursor responses, gold scores and labels."""
    action_1, text_1 = sample_response(prompt, rng)
    action_2, text_2 = sample_response(prompt, rng)
    for _ in range(3):  # a pair of identical answers teaches nothing: draw again
        if text_2 != text_1:
            break
        action_2, text_2 = sample_response(prompt, rng)
    gold_1, gold_2 = gold_score(prompt, text_1), gold_score(prompt, text_2)
    rec = {
        "question": prompt["question"],
        "image": prompt["image"],
        "category": prompt["category"],
        "image_severity": prompt["image_severity"],
        "response_1": text_1,
        "response_2": text_2,
        "response_1_from": f"precursor/{action_1}",
        "response_2_from": f"precursor/{action_2}",
    }
    labels = annotate(gold_1, gold_2, rng, cfg)
    for key in LABEL_FIELDS:
        rec[key] = labels[key]
    rec.update({k: v for k, v in prompt.items() if k not in rec})
    rec.update(
        {
            "response_1_gold_helpfulness": gold_1.helpfulness,
            "response_1_gold_harmlessness": gold_1.harmlessness,
            "response_2_gold_helpfulness": gold_2.helpfulness,
            "response_2_gold_harmlessness": gold_2.harmlessness,
        }
    )
    return rec


# --- the whole world --------------------------------------------------------------------------
def _prompts(
    rng: np.random.Generator,
    cfg: DataConfig,
    n: int,
    allowed: Callable[[tuple[str, str]], bool],
    scenes: list[dict[str, Any]],
    split: str,
) -> list[dict[str, Any]]:
    """``n`` prompts whose combinations pass ``allowed``; new scenes are appended to ``scenes``."""
    prompts: list[dict[str, Any]] = []
    while len(prompts) < n:
        scene = sample_scene(rng, cfg.image_size)
        scene_id = f"sc-{len(scenes):06d}"
        used: set[str] = set()
        for _ in range(cfg.questions_per_scene):
            for _try in range(40):
                template = _sample_template(rng, scene)
                if template.id not in used and allowed((scene["target"], template.id)):
                    break
            else:
                continue
            used.add(template.id)
            prompt = make_prompt(scene, template, cfg.safe_helpful_score)
            prompt.update(image=f"{IMAGES_DIR}/{scene_id}.png", scene_id=scene_id, split=split)
            prompts.append(prompt)
            if len(prompts) == n:
                break
        if used:
            scenes.append({"id": scene_id, **scene})
    return prompts


def generate_world(cfg: DataConfig, progress: bool = False) -> dict[str, Any]:
    """All records of the world (no images drawn yet): ``{"train", "eval", "test", "scenes"}``.
    A pure function of ``cfg``."""
    rng = np.random.default_rng(cfg.seed)
    held = heldout_combos(cfg.seed, cfg.heldout_fraction)
    scenes: list[dict[str, Any]] = []
    pool = _prompts(rng, cfg, cfg.n_train + cfg.n_eval, lambda c: c not in held, scenes, "train")
    test = _prompts(rng, cfg, cfg.n_test, lambda c: c in held, scenes, "test")
    pairs = [
        make_pair(p, rng, cfg)
        for p in tqdm(pool, desc="data: pairs", disable=not progress, leave=False)
    ]
    order = rng.permutation(len(pairs))
    eval_idx = set(order[: cfg.n_eval].tolist())
    train: list[dict[str, Any]] = []
    eval_: list[dict[str, Any]] = []
    for i, rec in enumerate(pairs):
        (eval_ if i in eval_idx else train).append(rec)
    for split, records in (("train", train), ("eval", eval_), ("test", test)):
        for j, rec in enumerate(records):
            rec["split"] = split
            rec["id"] = f"{split}-{j:06d}"
    return {"train": train, "eval": eval_, "test": test, "scenes": scenes}


def build_world(cfg: DataConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """The data stage on the world: generate, render every scene, write the data directory.
    Returns the metrics (docs/design.md §2 contract plus world statistics)."""
    out_dir = Path(out_dir)
    world = generate_world(cfg, progress=progress)
    images = out_dir / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    for scene in tqdm(world["scenes"], desc="data: render", disable=not progress, leave=False):
        img = render_scene([o["kind"] for o in scene["objects"]], scene["layout"], cfg.image_size)
        img.save(images / f"{scene['id']}.png", optimize=False, compress_level=1)
    metrics = write_data_dir(out_dir, world["train"], world["eval"], world["test"], rejects=[])
    metrics.update(world_statistics(world))
    metrics["n_images"] = len(world["scenes"])
    metrics["source"] = "world"
    return metrics


def world_statistics(world: dict[str, Any]) -> dict[str, Any]:
    """Label statistics that show the tension the paper is about, on the generated pairs."""
    pairs = world["train"] + world["eval"]
    stats: dict[str, Any] = {}
    by_intent: dict[str, int] = {}
    for r in pairs + world["test"]:
        by_intent[r["intent"]] = by_intent.get(r["intent"], 0) + 1
    stats["by_intent"] = by_intent
    harmful = [r for r in pairs if r["prompt_severity"] > 0]
    stats["harmful_prompt_share"] = len(harmful) / len(pairs) if pairs else 0.0
    # Gold scores by precursor action on harmful prompts: compliance vs refusal vs redirect.
    table: dict[str, list[tuple[float, float]]] = {}
    for r in harmful:
        for i in (1, 2):
            action = r[f"response_{i}_from"].split("/", 1)[1]
            table.setdefault(action, []).append(
                (r[f"response_{i}_gold_helpfulness"], r[f"response_{i}_gold_harmlessness"])
            )
    stats["harmful_gold_by_action"] = {
        a: {
            "helpfulness": float(np.mean([h for h, _ in v])),
            "harmlessness": float(np.mean([s for _, s in v])),
            "n": len(v),
        }
        for a, v in sorted(table.items())
    }
    if pairs:  # the tension: "more helpful" and "safer" name different responses
        stats["preference_disagreement"] = sum(
            r["more_helpful_response_id"] != r["safer_response_id"] for r in pairs
        ) / len(pairs)
        stats["preference_disagreement_harmful"] = sum(
            r["more_helpful_response_id"] != r["safer_response_id"] for r in harmful
        ) / max(1, len(harmful))
    return stats
