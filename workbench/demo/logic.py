"""The functions behind every button of the demo -- plain Python, no Gradio.

- :func:`load_image`, :func:`clean_question`, :func:`clean_answer` validate user input and
  raise :class:`DemoInputError` naming the field (the app turns it into ``gr.Error``);
- :func:`answer_side` is the one code path every column goes through: sample (or run the
  five-round guard), then the guard's verdict and the reward and cost scores of the answer;
- :func:`compare` calls it for each policy; :func:`moderate` is the guard alone;
- :func:`badge_html`, :func:`side_html`, :func:`comparison_html` render the results;
- :func:`tradeoff_figure` is the Trade-off tab.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..config import BlockingPolicy
from ..data.oracle import gold_score
from ..data.schema import (
    NO_CATEGORY,
    SEVERITY_COLOURS,
    SEVERITY_LEVELS,
    SEVERITY_TEXT_COLOURS,
    is_world,
)
from ..guard.regenerate import Trace, Verdict, filter_and_regenerate
from ..runs import read_json
from .batching import job_seed
from .config import DemoConfig
from .familiar import familiarity
from .models import DemoModels, display_path


class DemoInputError(ValueError):
    """A user mistake; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


# --- input validation -------------------------------------------------------------------------
def _image_source(value: Any) -> tuple[Image.Image | None, Path | None, bytes | None]:
    """``(PIL image, file path, raw bytes)`` -- one of them -- from what a caller passes: a PIL
    image, a path, a Gradio file payload (``{"path": ...}`` or ``{"url": "data:..."}``)."""
    if isinstance(value, Image.Image):
        return value, None, None
    if isinstance(value, str | Path):
        return None, Path(value), None
    if isinstance(value, dict):
        if value.get("path"):
            return None, Path(value["path"]), None
        url = value.get("url") or ""
        if url.startswith("data:") and "," in url:
            try:
                return None, None, base64.b64decode(url.split(",", 1)[1], validate=True)
            except ValueError:
                raise DemoInputError("image", "the uploaded data URL is not valid base64") from None
    raise DemoInputError("image", f"expected an uploaded image file, got {type(value).__name__}")


def load_image(value: Any, cfg: DemoConfig) -> Image.Image:
    """The user's image as RGB, or :class:`DemoInputError` for no image, a file that is not
    an image, or one over ``cfg.max_image_bytes`` / ``cfg.max_image_side``."""
    if value is None or value == "" or value == {}:
        raise DemoInputError("image", "no image: pick a gallery example or upload an image")
    image, path, raw = _image_source(value)
    if image is None:
        if path is not None:
            if not path.is_file():
                raise DemoInputError("image", f"the uploaded file {path.name!r} cannot be found")
            size = path.stat().st_size
        else:
            size = len(raw or b"")
        if size > cfg.max_image_bytes:
            raise DemoInputError(
                "image",
                f"the file is {size / 2**20:.1f} MB; the limit is "
                f"{cfg.max_image_bytes / 2**20:.1f} MB",
            )
        name = path.name if path is not None else "upload"
        try:
            # Image.open reads only the header: the size is checked before any pixel is decoded
            image = Image.open(path if path is not None else io.BytesIO(raw or b""))
        except Image.DecompressionBombError:
            raise DemoInputError(
                "image",
                f"{name!r} has too many pixels (limit {cfg.max_image_side}x{cfg.max_image_side})",
            ) from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise DemoInputError(
                "image", f"{name!r} is not an image (PNG, JPEG, WebP, GIF or BMP expected)"
            ) from None
    width, height = image.size
    if max(width, height) > cfg.max_image_side:
        raise DemoInputError(
            "image",
            f"the image is {width}x{height} pixels; the limit is "
            f"{cfg.max_image_side} pixels per side",
        )
    if min(width, height) < 1:
        raise DemoInputError("image", "the image is empty (0 pixels)")
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DemoInputError("image", f"the image cannot be decoded: {exc}") from None
    finally:
        if image is not value:  # opened here: release the file
            image.close()


_PUNCT = re.compile(r"\s*([?.,!])\s*")


def clean_question(question: Any, cfg: DemoConfig) -> str:
    """The question in the world's spelling (lower case, punctuation as its own word:
    ``"How do I use this?"`` -> ``"how do i use this ?"``), or :class:`DemoInputError` when
    empty or longer than ``cfg.max_question_chars``."""
    return _clean_text("question", question, cfg.max_question_chars, required=True)


def clean_answer(answer: Any, cfg: DemoConfig) -> str | None:
    """An optional answer to moderate, cleaned like a question; ``None`` when empty."""
    text = _clean_text("answer", answer, cfg.max_answer_chars, required=False)
    return text or None


def _clean_text(field: str, value: Any, limit: int, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DemoInputError(field, f"expected text, got {type(value).__name__}")
    if len(value) > limit:
        raise DemoInputError(field, f"{len(value)} characters; the limit is {limit}")
    text = " ".join(_PUNCT.sub(r" \1 ", value.lower()).split())
    if required and not text:
        raise DemoInputError(field, f"the {field} is empty: type a {field} about the image")
    return text


def image_key(image: Image.Image) -> str:
    """A fingerprint of the pixels (finds gallery examples whatever file they came through)."""
    return hashlib.sha1(image.size.__repr__().encode() + image.tobytes()).hexdigest()


def gallery_index(models: DemoModels) -> dict[tuple[str, str], dict[str, Any]]:
    """``(image_key, question) -> record`` for the gallery, so that a comparison run on a
    gallery example also gets the gold oracle's scores."""
    index = {}
    for record in models.gallery:
        with Image.open(record["image_path"]) as im:
            index[(image_key(im.convert("RGB")), record["question"])] = record
    return index


# --- one side ------------------------------------------------------------------------------------
def verdict_dict(verdict: Verdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {
        "level": verdict.level,
        "category": verdict.category,
        "probability": round(verdict.probability, 4),
        "p_unsafe": None if verdict.p_unsafe is None else round(verdict.p_unsafe, 4),
    }


def trace_dict(trace: Trace) -> dict[str, Any]:
    """The five-round guard's trace in plain JSON (what the UI shows and ``/compare`` returns)."""
    return {
        "outcome": trace.outcome,
        "reason": trace.reason,
        "regenerations": trace.regenerations,
        "query_verdict": verdict_dict(trace.query_verdict),
        "steps": [
            {
                "round": s.round,
                "response": s.response,
                "verdict": verdict_dict(s.verdict),
                "blocked": s.blocked,
            }
            for s in trace.steps
        ],
    }


class _Sampler:
    """A request's sampling calls: the ``k``-th call samples with :func:`job_seed` ``(seed, k)``,
    so a request gets the same answers alone or batched with others."""

    def __init__(self, models: DemoModels, policy: str, cfg: DemoConfig, seed: int):
        self.models, self.policy, self.cfg, self.seed, self.calls = models, policy, cfg, seed, 0

    def __call__(self, images: list, questions: list[str]) -> list[str]:
        seeds = [job_seed(self.seed, self.calls + i) for i in range(len(questions))]
        self.calls += len(questions)
        return self.models.sample(
            self.policy,
            list(images),
            list(questions),
            seeds,
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature,
        )


#: Guard outcomes in which the policy's answer is withheld and the refusal served instead.
WITHHELD = ("query_blocked", "fallback", "guard_error")


def blocking_level(policy: BlockingPolicy, query: Verdict | None) -> str:
    """The level at which the guard blocks an answer: ``safe_query_level`` when the query was
    screened safe, else ``level`` (:func:`~workbench.guard.regenerate.filter_and_regenerate`)."""
    if query is not None and query.level == SEVERITY_LEVELS[0]:
        return policy.answer_level_after_safe_query
    return policy.level


def answer_side(
    models: DemoModels,
    policy: str,
    image: Image.Image,
    question: str,
    cfg: DemoConfig,
    guard_on: bool = False,
    seed: int = 0,
    gold_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One column: the policy's answer (through filter-and-regenerate when ``guard_on``), the
    guard's verdict on it, its reward and cost scores (cost > 0: judged unsafe), and the gold
    oracle's scores when the prompt is a world example. Every column of :func:`compare` comes
    from here.

    ``blocked`` is true only when the policy's answer was withheld (the guard was on and the
    refusal was served: query refused, still unsafe after the last round, or guard error);
    ``would_block`` says whether the guard's verdict on the *shown* answer reaches the level
    that blocks it (``blocking_level``: it depends on the query screen's verdict, also
    returned)."""
    if policy not in models.policies:
        raise DemoInputError(
            "policy", f"{policy!r} is not loaded; available: {', '.join(models.policies)}"
        )
    sample = _Sampler(models, policy, cfg, seed)
    start = time.perf_counter()
    trace = None
    if guard_on:
        trace = filter_and_regenerate(
            sample, models.judge, [image], [question], policy=cfg.blocking
        )[0]
        answer = trace.final
        _, verdict, reward, cost = models.assess(image, question, answer, screen_query=False)
        query = trace.query_verdict
    else:
        answer = sample([image], [question])[0]
        # the query screen decides which level would block the answer
        query, verdict, reward, cost = models.assess(image, question, answer)
    level = blocking_level(cfg.blocking, query)
    side: dict[str, Any] = {
        "policy": policy,
        "title": models.title(policy),
        "answer": answer,
        "verdict": verdict_dict(verdict),
        "query_verdict": verdict_dict(query),
        "blocked": trace is not None and trace.outcome in WITHHELD,
        "would_block": verdict.at_least(level),
        "blocking_level": level,
        "reward": round(float(reward), 4),
        "cost": round(float(cost), 4),
        "gold": None,
        "trace": trace_dict(trace) if trace is not None else None,
        "latency_s": round(time.perf_counter() - start, 4),
    }
    if gold_record is not None and is_world([gold_record]):
        gold = gold_score(gold_record, answer)
        side["gold"] = {"helpfulness": gold.helpfulness, "harmlessness": gold.harmlessness}
    return side


def _world_images(models: DemoModels) -> bool:
    """Whether the served run's images are the world's (a run on real data shows photos)."""
    return not models.gallery or is_world(models.gallery)


def compare(
    models: DemoModels,
    image: Any,
    question: Any,
    cfg: DemoConfig,
    reward_only: bool = False,
    guard_on: bool = False,
    seed: int = 0,
    gallery: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Base and aligned (and, with ``reward_only``, the reward-only PPO policy) answer the same
    prompt, each through :func:`answer_side` with the same seed. The columns run side by side
    (one thread each), so their model calls are batched together. ``warnings`` name unknown
    words and an image far from the world's (:mod:`workbench.demo.familiar`)."""
    start = time.perf_counter()
    picture = load_image(image, cfg)
    text = clean_question(question, cfg)
    policies = ["base", "aligned"] + (["reward_only"] if reward_only else [])
    if reward_only and "reward_only" not in models.policies:
        raise DemoInputError(
            "reward_only",
            f"this run has no reward-only PPO policy ({models.run_name}/ppo/"
            f"reward_only/model); untick the option",
        )
    record = (gallery or {}).get((image_key(picture), text))
    checks = familiarity(models.policies["base"][1], picture, text, _world_images(models))

    def column(policy: str) -> dict[str, Any]:
        return answer_side(
            models, policy, picture, text, cfg, guard_on=guard_on, seed=seed, gold_record=record
        )

    with ThreadPoolExecutor(len(policies), thread_name_prefix="demo-column") as pool:
        sides = list(pool.map(column, policies))
    return {
        "question": text,
        "guard_on": guard_on,
        "rounds": cfg.blocking.rounds if guard_on else 0,
        "seed": seed,
        "gallery_example": record.get("id") if record else None,
        **checks,
        "sides": sides,
        "latency_s": round(time.perf_counter() - start, 4),
    }


def moderate(
    models: DemoModels, image: Any, question: Any, answer: Any, cfg: DemoConfig
) -> dict[str, Any]:
    """The guard's verdict on (image, question) -- query screening -- or, with an answer,
    on (image, question, answer) -- answer moderation.

    ``would_block`` applies the guard's rule: a query is refused at ``query_level``; an answer
    is blocked at ``safe_query_level`` when its query is screened safe, else at ``level``
    (so answer moderation also screens the query, returned as ``query_verdict``). Nothing is
    served here, so nothing is ``blocked``."""
    start = time.perf_counter()
    picture = load_image(image, cfg)
    text = clean_question(question, cfg)
    response = clean_answer(answer, cfg)
    checks = familiarity(
        models.policies["base"][1],
        picture,
        text if response is None else f"{text} {response}",
        _world_images(models),
    )
    if response is None:
        query = verdict = models.judge([picture], [text], None)[0]
        threshold = cfg.blocking.query_level
        would_block = bool(threshold) and verdict.at_least(threshold)
    else:
        query, verdict = models.judge([picture, picture], [text, text], [None, response])
        threshold = blocking_level(cfg.blocking, query)
        would_block = verdict.at_least(threshold)
    return {
        "mode": "query" if response is None else "answer",
        "question": text,
        "answer": response,
        "verdict": verdict_dict(verdict),
        "query_verdict": verdict_dict(query),
        "would_block": would_block,
        "blocking_level": threshold or None,
        **checks,
        "latency_s": round(time.perf_counter() - start, 4),
    }


# --- rendering -----------------------------------------------------------------------------------
def badge_html(verdict: dict[str, Any] | None) -> str:
    """A coloured badge: the guard's level and, when unsafe, the harm category."""
    if verdict is None:
        return '<span class="wb-badge wb-level-none">no verdict</span>'
    level = verdict["level"]
    background, colour = SEVERITY_COLOURS[level], SEVERITY_TEXT_COLOURS[level]
    category = verdict.get("category") or NO_CATEGORY
    label = (
        level.upper()
        if category == NO_CATEGORY
        else f"{level.upper()} · {category.replace('_', ' ')}"
    )
    p_unsafe = verdict.get("p_unsafe")
    tip = f' title="P(unsafe) = {p_unsafe:.2f}"' if p_unsafe is not None else ""
    return (
        f'<span class="wb-badge wb-level-{level}" data-level="{level}" '
        f'data-category="{html.escape(category)}"'
        f'{tip} style="background:{background};color:{colour};padding:2px 10px;border-radius:12px;'
        f'font-weight:600;font-size:0.85em;display:inline-block">{html.escape(label)}</span>'
    )


def _trace_html(trace: dict[str, Any]) -> str:
    rows = []
    if trace["query_verdict"] is not None:
        rows.append(f"<li>query screen: {badge_html(trace['query_verdict'])}</li>")
    for step in trace["steps"]:
        state = (
            "" if step["blocked"] is None else (" — blocked" if step["blocked"] else " — served")
        )
        rows.append(
            f"<li>round {step['round']}: <i>{html.escape(step['response'])}</i> "
            f"{badge_html(step['verdict']) if step['verdict'] else ''}{state}</li>"
        )
    reason = f"<br>{html.escape(trace['reason'])}" if trace["reason"] else ""
    return (
        f'<details class="wb-trace" open><summary>guard trace: {html.escape(trace["outcome"])}, '
        f"{trace['regenerations']} regeneration(s){reason}</summary>"
        f'<ol start="0">{"".join(rows)}</ol></details>'
    )


def _state_html(side: dict[str, Any]) -> str:
    """What happened to the answer: withheld, served (and whether the guard would block it)."""
    if side.get("blocked"):
        return (
            '<p class="wb-state wb-withheld"><b>withheld</b>: the guard refused or blocked the '
            "policy's answer; the refusal above was served instead</p>"
        )
    guard = "guard on" if side.get("trace") else "guard off"
    would = (
        f"the guard would block it (verdict at or above <code>{side['blocking_level']}</code>)"
        if side.get("would_block")
        else f"the guard would let it through (blocking level <code>{side['blocking_level']}"
        "</code>)"
    )
    return f'<p class="wb-state">served ({guard}); {would}</p>'


def side_html(side: dict[str, Any]) -> str:
    """One column of the comparison: title, answer, badge, scores, latency (and the trace)."""
    gold = side.get("gold")
    gold_row = (
        (
            f"<tr><td>gold helpfulness / harmlessness</td><td>{gold['helpfulness']:.2f} / "
            f"{gold['harmlessness']:+.0f}</td></tr>"
        )
        if gold
        else ""
    )
    trace = _trace_html(side["trace"]) if side.get("trace") else ""
    latency = side.get("latency_s")
    latency_html = (
        f'<p class="wb-latency" style="opacity:0.75;font-size:0.85em">answered in '
        f"{latency:.2f} s</p>"
        if latency is not None
        else ""
    )
    state = _state_html(side) if "blocking_level" in side else ""
    return (
        f'<div class="wb-side" data-policy="{side["policy"]}" '
        f'data-blocked="{str(bool(side.get("blocked"))).lower()}" '
        'style="border:1px solid #8884;border-radius:8px;'
        'padding:10px;min-width:0">'
        f'<h3 style="margin:0 0 6px 0">{html.escape(side["title"])}</h3>'
        '<p class="wb-answer" style="min-height:3em">'
        f"{html.escape(side['answer']) or '<i>(empty answer)</i>'}</p>"
        f"<p>guard: {badge_html(side['verdict'])}</p>"
        f"{state}"
        '<table class="wb-scores"><tr><td>reward (helpfulness proxy)</td>'
        f"<td>{side['reward']:+.3f}</td></tr>"
        f"<tr><td>cost (&gt; 0: unsafe proxy)</td><td>{side['cost']:+.3f}</td></tr>"
        f"{gold_row}</table>"
        f"{latency_html}{trace}</div>"
    )


def warnings_html(result: dict[str, Any]) -> str:
    """The unknown-word and far-image warnings, one box each (empty when there are none)."""
    return "".join(
        '<div class="wb-warning" role="alert" style="border:1px solid #d9a400;'
        "background:#fff6d5;color:#4a3b00;border-radius:6px;padding:6px 10px;margin:0 0 8px 0"
        f'">&#9888; {html.escape(w)}</div>'
        for w in result.get("warnings", [])
    )


def comparison_html(result: dict[str, Any]) -> str:
    """The warnings, then the columns side by side (a CSS grid with one column per policy)."""
    n = len(result["sides"])
    cells = "".join(side_html(s) for s in result["sides"])
    total = result.get("latency_s")
    footer = (
        f'<p class="wb-latency-total" style="opacity:0.75;font-size:0.85em">whole comparison: '
        f"{total:.2f} s (columns run side by side; under load, requests are batched)</p>"
        if total is not None
        else ""
    )
    return (
        f"{warnings_html(result)}"
        '<div class="wb-compare" style="display:grid;'
        f'grid-template-columns:repeat({n},minmax(0,1fr));gap:12px">'
        f"{cells}</div>{footer}"
    )


def moderation_html(result: dict[str, Any]) -> str:
    if result["mode"] == "query":
        action = (
            "would be refused before any answer is generated"
            if result["would_block"]
            else "would be answered"
        )
        rule = f"queries are refused at <code>{result['blocking_level']}</code> or worse"
    else:
        action = "would be blocked (regenerated)" if result["would_block"] else "would be served"
        screened = result["query_verdict"]["level"] if result.get("query_verdict") else "?"
        rule = (
            f"the query screens <code>{screened}</code>, so answers are blocked at "
            f"<code>{result['blocking_level']}</code> or worse"
        )
    latency = result.get("latency_s")
    return (
        f"{warnings_html(result)}"
        f'<div class="wb-moderation"><p>{result["mode"]} moderation: '
        f"{badge_html(result['verdict'])}</p>"
        f"<p>{action} ({rule})</p>"
        + (
            f'<p class="wb-latency" style="opacity:0.75;font-size:0.85em">answered in '
            f"{latency:.2f} s</p>"
            if latency is not None
            else ""
        )
        + "</div>"
    )


# --- explanations --------------------------------------------------------------------------------
def blocking_rule(policy: BlockingPolicy) -> str:
    """The guard's rule in words (Markdown), from the policy the demo applies."""
    after_safe = policy.answer_level_after_safe_query
    screen = (
        f"1. **Query screen**: a question judged `{policy.query_level}` or worse is refused "
        "before anything is generated.\n"
        if policy.query_level
        else "1. **Query screen**: off (no question is refused up front).\n"
    )
    return (
        screen + f"2. **Answer check**: an answer is blocked when judged `{policy.level}` or "
        f"worse -- but when the query screen judged the question `safe`, only at "
        f"`{after_safe}` or worse (a benign question needs stronger evidence before its answer "
        "is thrown away).\n"
        f"3. **Regenerate**: a blocked answer is sampled again, up to {policy.rounds} times; "
        "an answer still blocked after the last round is replaced by a refusal with a safe "
        "redirection. A guard error also serves the refusal (it fails closed).\n"
    )


def legend_html() -> str:
    """The legend of the Compare tab: badges, scores, states, latency."""
    badges = " ".join(
        badge_html({"level": level, "category": NO_CATEGORY, "p_unsafe": None})
        for level in SEVERITY_LEVELS
    )
    example = badge_html(
        {"level": "moderate", "category": "violence_and_physical_harm", "p_unsafe": 0.8}
    )
    rows = [
        (
            f"{badges}",
            "The guard's verdict on the answer shown, from least to most harmful. An unsafe "
            f"verdict also names the harm category, e.g. {example}. Hover a badge for the "
            "guard's P(unsafe).",
        ),
        (
            "reward",
            "The run's reward model r(x, y): a helpfulness proxy, unbounded; only "
            "differences between answers to the same prompt mean something (higher: more "
            "helpful).",
        ),
        (
            "cost",
            "The run's cost model c(x, y): a harm proxy; cost &gt; 0 means it judges the "
            "answer unsafe, cost &lt; 0 safe (lower: safer).",
        ),
        (
            "gold helpfulness / harmlessness",
            "Gallery examples only: the world's own oracle, which knows the true answer. "
            "Helpfulness 0..3 (3: fully helpful), harmlessness -3..+3 (negative: harmful).",
        ),
        (
            "served / withheld",
            "<i>withheld</i>: the five-round guard was on and the policy's answer was refused "
            "(JSON <code>blocked: true</code>); <i>served</i>: the user sees the answer, and "
            "the line says whether the guard <i>would</i> block it (JSON "
            "<code>would_block</code>).",
        ),
        (
            "answered in",
            "Seconds this column took on the server, queueing and batching included.",
        ),
    ]
    body = "".join(
        f'<tr><td style="padding:3px 10px 3px 0;white-space:nowrap;vertical-align:top">{k}</td>'
        f'<td style="padding:3px 0">{v}</td></tr>'
        for k, v in rows
    )
    return f'<table class="wb-legend" style="font-size:0.9em">{body}</table>'


def vocabulary_markdown(vocabulary: list[str], method_tokens: list[str]) -> str:
    """What the world speaks (Markdown): its closed vocabulary and the placeholder tokens."""
    words = ", ".join(f"`{w}`" for w in vocabulary)
    methods = ", ".join(f"`{m}`" for m in method_tokens)
    return (
        "The models were trained on a small synthetic **world**: pictures of flat icons "
        "(apples, books, knives, pills ...) on a light background, and questions and answers "
        f"written in a closed vocabulary of {len(vocabulary)} words. Words outside it reach "
        "the models as `<unk>` and photos look like nothing they have seen; the demo warns "
        "about both. Questions follow the world's templates, e.g. `what is in the image ?`, "
        "`how many objects are in the image ?`, `how do i use this ?`, `how can i hurt someone "
        "with this ?` (lower case, punctuation as its own word; the demo rewrites your typing "
        "that way).\n\n"
        f"**Placeholder method tokens** ({methods}): when a policy complies with a harmful "
        "request it answers with steps such as `step one : method_c .`; these tokens stand for "
        "instructions and mean nothing by construction -- in this world harm is a label, "
        "never content.\n\n"
        f"<details><summary>All {len(vocabulary)} words</summary>\n\n{words}\n\n"
        "</details>"
    )


# --- the trade-off tab --------------------------------------------------------------------------
TRADEOFF_FIGURE = Path("analyze") / "figures" / "tradeoff.json"


#: Policy key -> the key of its checkpoint in ``ppo/metrics.json`` (``base``: the SFT model).
METRICS_KEYS = {"base": "base", "aligned": "lagrangian", "reward_only": "reward_only"}


def served_points(metrics: dict[str, Any], titles: dict[str, str]) -> list[dict[str, Any]]:
    """The served checkpoints on the trade-off plane: ``{"policy", "label", "helpfulness",
    "safety_rate"}`` for each column whose checkpoint the PPO stage measured (its own
    evaluation of exactly these weights on the test prompts)."""
    points = []
    for policy, title in titles.items():
        key = METRICS_KEYS.get(policy)
        m = metrics.get("base") if key == "base" else metrics.get("variants", {}).get(key)
        if not m or "helpfulness" not in m or "safety_rate" not in m:
            continue
        d = (m.get("last") or {}).get("lagrange/threshold")
        shows_d = policy == "aligned" and d is not None
        label = f"{title} column" + (f" (d = {d:g})" if shows_d else "")
        points.append(
            {
                "policy": policy,
                "label": label,
                "helpfulness": m["helpfulness"],
                "safety_rate": m["safety_rate"],
            }
        )
    return points


def _mark_served(fig, points: list[dict[str, Any]]) -> None:
    import plotly.graph_objects as go

    for p in points:
        aligned = p["policy"] == "aligned"
        fig.add_trace(
            go.Scatter(
                x=[p["helpfulness"]],
                y=[p["safety_rate"]],
                mode="markers+text",
                name=p["label"],
                text=[p["label"]],
                textposition="bottom center",
                marker={
                    "symbol": "star" if aligned else "diamond-open",
                    "size": 22 if aligned else 14,
                    "color": "#d62728" if aligned else "#444",
                    "line": {"width": 2, "color": "#222"},
                },
                meta={"served": p["policy"]},
                hovertemplate=f"{p['label']}<br>helpfulness %{{x:.3f}}<br>safety %{{y:.3f}}"
                "<extra></extra>",
            )
        )


def tradeoff_figure(model_dir: str | Path, titles: dict[str, str] | None = None):
    """``(plotly figure or None, note)``: the analysis stage's trade-off figure, else a scatter of
    helpfulness vs safety rate from the PPO stage's metrics. The checkpoints the demo serves
    (``titles``: policy key -> column title; default: base and aligned) are marked on it --
    the Aligned column as a red star. The note names the run relative to the working
    directory, never by its absolute path."""
    import plotly.graph_objects as go
    import plotly.io as pio

    model_dir = Path(model_dir)
    shown = display_path(model_dir)
    titles = titles or {"base": "Base (SFT)", "aligned": "Aligned (PPO-Lagrangian)"}
    path = model_dir / TRADEOFF_FIGURE
    metrics_path = model_dir / "ppo" / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    points = served_points(metrics, titles)
    marked = (
        " The served checkpoints are marked: the **Aligned column is the red star** (the PPO "
        "stage's own measurement of exactly that checkpoint, one seed)."
        if any(p["policy"] == "aligned" for p in points)
        else ""
    )
    if path.is_file():
        fig = pio.read_json(str(path))
        _mark_served(fig, points)
        return fig, (
            f"The trade-off figure of the analysis stage ({shown}/{TRADEOFF_FIGURE.as_posix()}): "
            "every method pooled over its seeds, with 95% intervals." + marked
        )
    if not metrics:
        return None, f"No PPO metrics in {shown}: nothing to plot."
    others = ([("base (SFT)", metrics["base"])] if "base" in metrics else []) + list(
        metrics.get("variants", {}).items()
    )
    others = [(name, m) for name, m in others if "helpfulness" in m and "safety_rate" in m]
    fig = go.Figure(
        go.Scatter(
            x=[m["helpfulness"] for _, m in others],
            y=[m["safety_rate"] for _, m in others],
            mode="markers+text",
            text=[name for name, _ in others],
            textposition="top center",
            marker={"size": 12},
            name="PPO stage checkpoints",
        )
    )
    _mark_served(fig, points)
    fig.update_layout(
        title="Helpfulness vs safety on the test prompts (gold oracle)",
        xaxis_title="mean gold helpfulness (0..3)",
        yaxis_title="safety rate",
        yaxis_range=[0, 1.05],
        height=460,
        margin={"t": 60},
    )
    note = (
        f"The full analysis has not been run for {shown} (no {TRADEOFF_FIGURE.as_posix()}); "
        "this is the PPO stage's own measurement, one seed, no error bars. "
        f"Run: python -m workbench analyze --run-dir {shown}." + marked
    )
    return fig, note


__all__ = [
    "DemoInputError",
    "load_image",
    "clean_question",
    "clean_answer",
    "answer_side",
    "compare",
    "moderate",
    "badge_html",
    "side_html",
    "comparison_html",
    "moderation_html",
    "tradeoff_figure",
    "served_points",
    "legend_html",
    "vocabulary_markdown",
    "blocking_rule",
    "warnings_html",
    "blocking_level",
    "gallery_index",
    "image_key",
]
