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
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..data.oracle import gold_score
from ..data.schema import NO_CATEGORY, SEVERITY_COLOURS, SEVERITY_TEXT_COLOURS, is_world
from ..guard.regenerate import Trace, Verdict, filter_and_regenerate
from ..models.score import score_texts
from ..models.vlm import generate
from ..runs import read_json
from .config import DemoConfig
from .models import DemoModels


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
    from here."""
    if policy not in models.policies:
        raise DemoInputError(
            "policy", f"{policy!r} is not loaded; available: {', '.join(models.policies)}"
        )
    model, processor = models.policies[policy]

    def sample(images: list, questions: list[str]) -> list[str]:
        return generate(
            model,
            processor,
            images,
            questions,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
        )

    start = time.perf_counter()
    with models.lock:  # one model call at a time; the seed then makes the sample reproducible
        torch.manual_seed(seed)
        trace = None
        if guard_on:
            trace = filter_and_regenerate(
                sample, models.guard.judge, [image], [question], policy=cfg.blocking
            )[0]
            answer = trace.final
        else:
            answer = sample([image], [question])[0]
        verdict = models.guard.judge([image], [question], [answer])[0]
        reward = float(score_texts(models.reward, [image], [question], [answer])[0])
        cost = float(score_texts(models.cost, [image], [question], [answer])[0])
    side: dict[str, Any] = {
        "policy": policy,
        "title": models.title(policy),
        "answer": answer,
        "verdict": verdict_dict(verdict),
        "blocked": verdict.at_least(cfg.blocking.level),
        "reward": round(reward, 4),
        "cost": round(cost, 4),
        "gold": None,
        "trace": trace_dict(trace) if trace is not None else None,
        "latency_s": round(time.perf_counter() - start, 4),
    }
    if gold_record is not None and is_world([gold_record]):
        gold = gold_score(gold_record, answer)
        side["gold"] = {"helpfulness": gold.helpfulness, "harmlessness": gold.harmlessness}
    return side


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
    prompt, each through :func:`answer_side` with the same seed."""
    picture = load_image(image, cfg)
    text = clean_question(question, cfg)
    policies = ["base", "aligned"] + (["reward_only"] if reward_only else [])
    if reward_only and "reward_only" not in models.policies:
        raise DemoInputError(
            "reward_only",
            f"this run has no reward-only PPO policy ({models.model_dir}/ppo/"
            f"reward_only/model); untick the option",
        )
    record = (gallery or {}).get((image_key(picture), text))
    sides = [
        answer_side(models, p, picture, text, cfg, guard_on=guard_on, seed=seed, gold_record=record)
        for p in policies
    ]
    return {
        "question": text,
        "guard_on": guard_on,
        "rounds": cfg.blocking.rounds if guard_on else 0,
        "seed": seed,
        "gallery_example": record.get("id") if record else None,
        "sides": sides,
    }


def moderate(
    models: DemoModels, image: Any, question: Any, answer: Any, cfg: DemoConfig
) -> dict[str, Any]:
    """The guard's verdict on (image, question) -- query screening -- or, with an answer,
    on (image, question, answer) -- answer moderation."""
    picture = load_image(image, cfg)
    text = clean_question(question, cfg)
    response = clean_answer(answer, cfg)
    with models.lock:
        verdict = models.guard.judge([picture], [text], [response])[0]
    mode = "query" if response is None else "answer"
    threshold = cfg.blocking.query_level if mode == "query" else cfg.blocking.level
    return {
        "mode": mode,
        "question": text,
        "answer": response,
        "verdict": verdict_dict(verdict),
        "blocked": verdict.at_least(threshold),
        "blocking_level": threshold,
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


def side_html(side: dict[str, Any]) -> str:
    """One column of the comparison: title, answer, badge, scores (and the guard trace)."""
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
    return (
        f'<div class="wb-side" data-policy="{side["policy"]}" '
        'style="border:1px solid #8884;border-radius:8px;'
        'padding:10px;min-width:0">'
        f'<h3 style="margin:0 0 6px 0">{html.escape(side["title"])}</h3>'
        '<p class="wb-answer" style="min-height:3em">'
        f"{html.escape(side['answer']) or '<i>(empty answer)</i>'}</p>"
        f"<p>guard: {badge_html(side['verdict'])}</p>"
        '<table class="wb-scores"><tr><td>reward (helpfulness proxy)</td>'
        f"<td>{side['reward']:+.3f}</td></tr>"
        f"<tr><td>cost (&gt; 0: unsafe proxy)</td><td>{side['cost']:+.3f}</td></tr>"
        f"{gold_row}</table>"
        f"{trace}</div>"
    )


def comparison_html(result: dict[str, Any]) -> str:
    """The columns side by side (a CSS grid with one column per policy)."""
    n = len(result["sides"])
    cells = "".join(side_html(s) for s in result["sides"])
    return (
        '<div class="wb-compare" style="display:grid;'
        f'grid-template-columns:repeat({n},minmax(0,1fr));gap:12px">'
        f"{cells}</div>"
    )


def moderation_html(result: dict[str, Any]) -> str:
    action = "would be blocked" if result["blocked"] else "passes"
    return (
        f'<div class="wb-moderation"><p>{result["mode"]} moderation: '
        f"{badge_html(result['verdict'])}</p>"
        f"<p>{action} (blocking level: {result['blocking_level']})</p></div>"
    )


# --- the trade-off tab --------------------------------------------------------------------------
TRADEOFF_FIGURE = Path("analyze") / "figures" / "tradeoff.json"


def tradeoff_figure(model_dir: str | Path):
    """``(plotly figure or None, note)``: the analysis stage's trade-off figure, else a scatter of
    helpfulness vs safety rate from the PPO stage's metrics."""
    import plotly.graph_objects as go
    import plotly.io as pio

    model_dir = Path(model_dir)
    path = model_dir / TRADEOFF_FIGURE
    if path.is_file():
        return pio.read_json(str(path)), f"The trade-off figure of the analysis stage ({path})."
    metrics_path = model_dir / "ppo" / "metrics.json"
    if not metrics_path.is_file():
        return None, f"No PPO metrics in {model_dir}: nothing to plot."
    metrics = read_json(metrics_path)
    points = ([("base (SFT)", metrics["base"])] if "base" in metrics else []) + list(
        metrics.get("variants", {}).items()
    )
    points = [(name, m) for name, m in points if "helpfulness" in m and "safety_rate" in m]
    fig = go.Figure(
        go.Scatter(
            x=[m["helpfulness"] for _, m in points],
            y=[m["safety_rate"] for _, m in points],
            mode="markers+text",
            text=[name for name, _ in points],
            textposition="top center",
            marker={"size": 12},
        )
    )
    fig.update_layout(
        title="Helpfulness vs safety on the test prompts (gold oracle)",
        xaxis_title="mean gold helpfulness (0..3)",
        yaxis_title="safety rate",
        yaxis_range=[0, 1.05],
        height=460,
        margin={"t": 60},
    )
    note = (
        f"The full analysis has not been run for {model_dir} (no {TRADEOFF_FIGURE}); "
        "this is the PPO stage's own measurement, one seed, no error bars. "
        f"Run: python -m workbench analyze --run-dir {model_dir}"
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
    "gallery_index",
    "image_key",
]
