"""The Gradio app: ``build_ui(models, cfg)`` returns the Blocks; :func:`launch` serves it.

Every button calls a function of :mod:`workbench.demo.logic` through :func:`_user_errors`,
which turns a :class:`~workbench.demo.logic.DemoInputError` into ``gr.Error`` (the message
names the field). The image inputs are read with ``preprocess=False``: Gradio's own image
preprocessing would fail on a file that is not an image with a generic processing error
before our check could name the problem; uploads are still confined to Gradio's upload
folder. Endpoints: ``/compare`` and ``/moderate``.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import sys
import time
from pathlib import Path
from typing import Any

from ..data.language import METHOD_TOKENS, vocabulary
from .assets import build_assets
from .config import DemoConfig
from .familiar import warm_up
from .logic import (
    DemoInputError,
    blocking_rule,
    compare,
    comparison_html,
    gallery_index,
    legend_html,
    moderate,
    moderation_html,
    tradeoff_figure,
    vocabulary_markdown,
)
from .models import POLICIES, DemoModelError, DemoModels, load_models


def _user_errors(fn):
    """Run ``fn``; a user mistake becomes ``gr.Error`` with its message."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DemoInputError as exc:
            raise gr.Error(str(exc), title="Invalid input", print_exception=False) from None

    return wrapper


def _seed(value: Any) -> int:
    if value in (None, ""):
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DemoInputError("seed", f"expected a whole number, got {value!r}") from None


def build_ui(models: DemoModels, cfg: DemoConfig):
    """The demo's ``gr.Blocks``: Compare, Moderate, Trade-off and About tabs.

    Nothing on the page names a server path: the served run appears relative to the working
    directory (:attr:`~workbench.demo.models.DemoModels.run_name`)."""
    import gradio as gr

    warm_up()  # the reference palette of the far-image check, built in the background
    gallery = gallery_index(models)
    has_reward_only = "reward_only" in models.policies
    gallery_rows = [[r["image_path"], r["question"]] for r in models.gallery]

    @_user_errors
    def on_compare(image, question, reward_only, guard_on, seed):
        result = compare(
            models,
            image,
            question,
            cfg,
            reward_only=bool(reward_only),
            guard_on=bool(guard_on),
            seed=_seed(seed),
            gallery=gallery,
        )
        return comparison_html(result), result

    @_user_errors
    def on_moderate(image, question, answer):
        result = moderate(models, image, question, answer, cfg)
        return moderation_html(result), result

    vocabulary_md = vocabulary_markdown(vocabulary(), list(METHOD_TOKENS))
    with gr.Blocks(title="Safe RLHF-V Workbench — demo") as demo:
        gr.Markdown(
            "# Safe RLHF-V: base vs aligned\n"
            f"Serving the {models.describe()}. "
            f"Answers are sampled at temperature {cfg.temperature:g} "
            "(change the seed for another sample); the guard is Beaver-Guard-V, the scores come "
            "from the run's reward and cost models. The world speaks a small closed vocabulary: "
            '**click a gallery example to run it**, or ask e.g. "how do i use this ?" about '
            "your own picture (unknown words and unfamiliar pictures get a warning).",
            elem_id="wb-header",
        )
        with gr.Accordion("Legend: badges, scores, served / withheld", open=True):
            gr.HTML(legend_html(), elem_id="wb-legend")
        with gr.Accordion("The world's vocabulary and the placeholder tokens", open=False):
            gr.Markdown(vocabulary_md, elem_id="wb-vocabulary")
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    image = gr.Image(
                        type="filepath",
                        label="Image",
                        sources=["upload", "clipboard"],
                        height=220,
                        elem_id="wb-image",
                    )
                    question = gr.Textbox(
                        label="Question",
                        max_lines=3,
                        max_length=cfg.max_question_chars,
                        placeholder="how do i use this ?",
                        elem_id="wb-question",
                    )
                    reward_only = gr.Checkbox(
                        label="Add reward-only PPO as a third column",
                        value=False,
                        interactive=has_reward_only,
                        elem_id="wb-reward-only",
                    )
                    guard_on = gr.Checkbox(
                        label="Five-round guard: filter and regenerate "
                        f"({cfg.blocking.rounds} rounds), trace shown",
                        value=False,
                        elem_id="wb-guard",
                    )
                    seed = gr.Number(label="Sampling seed", value=0, precision=0, elem_id="wb-seed")
                    run = gr.Button("Compare", variant="primary", elem_id="wb-compare-button")
                with gr.Column(scale=3):
                    comparison = gr.HTML(elem_id="wb-comparison")
                    result = gr.JSON(label="Result (what /compare returns)", open=False)
            compare_inputs = [image, question, reward_only, guard_on, seed]
            if gallery_rows:
                examples = gr.Examples(
                    examples=gallery_rows,
                    inputs=[image, question],
                    label="Gallery: test prompts of the world (click one to run it with the "
                    "options above)",
                    examples_per_page=cfg.gallery_size,
                    api_visibility="private",
                    elem_id="wb-examples",
                )
                examples.load_input_event.then(
                    on_compare,
                    compare_inputs,
                    [comparison, result],
                    preprocess=False,
                    api_visibility="private",
                )
            run.click(
                on_compare,
                compare_inputs,
                [comparison, result],
                api_name="compare",
                preprocess=False,
            )
        with gr.Tab("Moderate"):
            gr.Markdown(
                "The guard alone: with a question only it screens the query; with an answer it "
                "moderates the answer (screening the query too, which decides the blocking "
                "level). Click an example to run it."
            )
            with gr.Row():
                with gr.Column():
                    m_image = gr.Image(
                        type="filepath",
                        label="Image",
                        sources=["upload", "clipboard"],
                        height=220,
                        elem_id="wb-m-image",
                    )
                    m_question = gr.Textbox(
                        label="Question",
                        max_lines=3,
                        max_length=cfg.max_question_chars,
                        elem_id="wb-m-question",
                    )
                    m_answer = gr.Textbox(
                        label="Answer (optional)",
                        max_lines=4,
                        max_length=cfg.max_answer_chars,
                        elem_id="wb-m-answer",
                    )
                    m_run = gr.Button("Moderate", variant="primary", elem_id="wb-moderate-button")
                with gr.Column():
                    m_html = gr.HTML(elem_id="wb-moderation")
                    m_json = gr.JSON(label="Verdict (what /moderate returns)")
            if gallery_rows:
                m_examples = gr.Examples(
                    examples=moderation_examples(models),
                    inputs=[m_image, m_question, m_answer],
                    label="Examples: gallery queries, and answers of the kinds the world knows "
                    "(click one to run it)",
                    examples_per_page=cfg.gallery_size,
                    api_visibility="private",
                    elem_id="wb-m-examples",
                )
                m_examples.load_input_event.then(
                    on_moderate,
                    [m_image, m_question, m_answer],
                    [m_html, m_json],
                    preprocess=False,
                    api_visibility="private",
                )
            m_run.click(
                on_moderate,
                [m_image, m_question, m_answer],
                [m_html, m_json],
                api_name="moderate",
                preprocess=False,
            )
        with gr.Tab("Trade-off"):
            titles = {k: POLICIES[k][1] for k in models.policies}
            figure, note = tradeoff_figure(models.model_dir, titles)
            gr.Markdown(note, elem_id="wb-tradeoff-note")
            if figure is not None:
                gr.Plot(figure)
        with gr.Tab("About"):
            gr.Markdown(
                f"Models: {models.describe()}.\n\n"
                "**The guard's blocking rule** (Beaver-Guard-V, as the guard stage applies it; "
                "the Compare tab's five-round switch and the Moderate tab use it):\n\n"
                f"{blocking_rule(cfg.blocking)}\n"
                "With the switch off the policy's answer is always served; the JSON's "
                "`blocked` is then `false` and `would_block` says what the guard would have "
                "done. `blocked` is `true` only when the answer was withheld.\n\n"
                "Reward is the helpfulness proxy, cost the harm proxy (cost > 0: judged unsafe). "
                "Gold scores appear for gallery examples: the world's oracle (helpfulness 0..3, "
                "harmlessness -3..+3).\n\n"
                f"Throughput: concurrent requests are batched through the models (up to "
                f"{cfg.max_batch} per model call), each answer sampled from its own seed, so a "
                "request gets the same answer alone or in a crowd. "
                "User guide: docs/demo.md in the repository.",
                elem_id="wb-about",
            )
    return demo


def moderation_examples(models: DemoModels) -> list[list[str]]:
    """Moderate-tab examples: each gallery query alone (query screening), then a few gallery
    prompts with an answer of each kind the world writes (a refusal, a compliance with
    placeholder steps, a safe usage tip) for answer moderation."""
    from ..data.language import COMPLY_OPEN, REFUSAL, WARNING, join_sentences, step_sentence

    rows = [[r["image_path"], r["question"], ""] for r in models.gallery]
    comply = join_sentences(
        [COMPLY_OPEN, step_sentence(0, METHOD_TOKENS[0]), step_sentence(1, METHOD_TOKENS[1])]
    )
    answers = [comply, join_sentences([REFUSAL]), join_sentences([WARNING])]
    risky = [r for r in models.gallery if r.get("intent") in ("harmful", "ambiguous")]
    for record, answer in zip(risky or models.gallery, answers, strict=False):
        rows.append([record["image_path"], record["question"], answer])
    return rows


def _allowed_paths(models: DemoModels) -> list[str]:
    return sorted({str(Path(r["image_path"]).parent) for r in models.gallery})


def launch(cfg: DemoConfig, models: DemoModels | None = None, quiet: bool = False):
    """Load the models (unless given), build the UI, queue it and serve it on ``cfg.host:cfg.port``
    in the background. Returns ``(demo, models)``; ``demo.local_url`` is the address,
    ``demo.block_thread()`` waits, ``demo.close()`` stops it."""
    models = models or load_models(cfg)
    demo = build_ui(models, cfg)
    demo.queue(default_concurrency_limit=cfg.concurrency_limit, max_size=cfg.max_queue)
    demo.launch(
        max_threads=max(40, cfg.concurrency_limit + 8),
        server_name=cfg.host,
        server_port=cfg.port,
        prevent_thread_lock=True,
        allowed_paths=_allowed_paths(models),
        max_file_size=2 * cfg.max_image_bytes,
        quiet=quiet,
        footer_links=["api"],
    )
    return demo, models


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench demo [--run-dir DIR] [--host H] [--port P] [--smoke]
    [--build-assets]``."""
    started = time.perf_counter()
    defaults = DemoConfig()
    p = argparse.ArgumentParser(
        prog="python -m workbench demo",
        description="Gradio demo: base vs aligned side by side (binds 127.0.0.1).",
    )
    p.add_argument(
        "--run-dir",
        default="",
        help="run to serve (default: the latest finished run under runs/, "
        "else the checkpoints shipped in assets/)",
    )
    p.add_argument("--host", default=defaults.host, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=defaults.port)
    p.add_argument(
        "--smoke", action="store_true", help="short answers, two guard rounds, small gallery"
    )
    p.add_argument(
        "--build-assets",
        action="store_true",
        help="instead of serving: rebuild assets/run from --run-dir (default runs/default)",
    )
    p.add_argument("--assets-dir", default=defaults.assets_dir)
    p.add_argument("--runs-root", default=defaults.runs_root)
    p.add_argument(
        "--concurrency",
        type=int,
        default=defaults.concurrency_limit,
        help=f"requests the queue runs at once (default {defaults.concurrency_limit})",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help=f"largest batch of one model call across concurrent requests (default "
        f"{defaults.max_batch}; 1: one model call at a time, no batching)",
    )
    p.add_argument(
        "--device",
        default=defaults.device,
        help="where the models run: auto (a GPU when CUDA is present, else the CPU), cpu, cuda, "
        "cuda:N",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.build_assets:
            source = args.run_dir or "runs/default"
            manifest = build_assets(source, args.assets_dir, gallery_size=defaults.gallery_size)
            print(
                f"demo assets rebuilt from {source} in {Path(args.assets_dir) / 'run'}: "
                f"{manifest['total_bytes'] / 2**20:.1f} MB, {manifest['gallery']} gallery examples"
            )
            return 0
        make = DemoConfig.smoke if args.smoke else DemoConfig
        cfg = make(
            run_dir=args.run_dir,
            host=args.host,
            port=args.port,
            assets_dir=args.assets_dir,
            runs_root=args.runs_root,
            concurrency_limit=args.concurrency,
            max_batch=args.max_batch,
            device=args.device,
        )
        if not _is_loopback(cfg.host):
            print(
                f"warning: binding {cfg.host}: the demo is reachable from other machines",
                file=sys.stderr,
            )
        demo, models = launch(cfg, quiet=args.quiet)
        print(
            f"demo ready at {demo.local_url} in {time.perf_counter() - started:.1f} s "
            f"(after imports); models: {models.describe()}",
            flush=True,
        )
        demo.block_thread()
        return 0
    except (DemoModelError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = ["build_ui", "launch", "main"]
