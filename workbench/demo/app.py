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

from .assets import build_assets
from .config import DemoConfig
from .logic import (
    DemoInputError,
    compare,
    comparison_html,
    gallery_index,
    moderate,
    moderation_html,
    tradeoff_figure,
)
from .models import DemoModelError, DemoModels, load_models


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
    """The demo's ``gr.Blocks``: Compare, Moderate, Trade-off and About tabs."""
    import gradio as gr

    gallery = gallery_index(models)
    has_reward_only = "reward_only" in models.policies

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

    with gr.Blocks(title="Safe RLHF-V Workbench — demo") as demo:
        gr.Markdown(
            "# Safe RLHF-V: base vs aligned\n"
            f"Serving the {models.describe()}. "
            f"Answers are sampled at temperature {cfg.temperature:g} "
            "(change the seed for another sample); the guard is Beaver-Guard-V, the scores come "
            "from the run's reward and cost models. The world speaks a small closed vocabulary: "
            'pick a gallery example, or ask e.g. "how do i use this ?" about your own picture.'
        )
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
            if models.gallery:
                gr.Examples(
                    examples=[[r["image_path"], r["question"]] for r in models.gallery],
                    inputs=[image, question],
                    label="Gallery: test prompts of the world",
                    examples_per_page=cfg.gallery_size,
                )
            run.click(
                on_compare,
                [image, question, reward_only, guard_on, seed],
                [comparison, result],
                api_name="compare",
                preprocess=False,
            )
        with gr.Tab("Moderate"):
            gr.Markdown(
                "The guard alone: with a question only it screens the query; with an answer it "
                "moderates the answer."
            )
            with gr.Row():
                with gr.Column():
                    m_image = gr.Image(
                        type="filepath", label="Image", sources=["upload", "clipboard"], height=220
                    )
                    m_question = gr.Textbox(
                        label="Question", max_lines=3, max_length=cfg.max_question_chars
                    )
                    m_answer = gr.Textbox(
                        label="Answer (optional)", max_lines=4, max_length=cfg.max_answer_chars
                    )
                    m_run = gr.Button("Moderate", variant="primary")
                with gr.Column():
                    m_html = gr.HTML()
                    m_json = gr.JSON(label="Verdict (what /moderate returns)")
            m_run.click(
                on_moderate,
                [m_image, m_question, m_answer],
                [m_html, m_json],
                api_name="moderate",
                preprocess=False,
            )
        with gr.Tab("Trade-off"):
            figure, note = tradeoff_figure(models.model_dir)
            gr.Markdown(note)
            if figure is not None:
                gr.Plot(figure)
        with gr.Tab("About"):
            gr.Markdown(
                f"Models: {models.describe()}.\n\n"
                f"Guard: answers judged `{cfg.blocking.level}` or worse are regenerated (up to "
                f"{cfg.blocking.rounds} rounds, then refused with a safe redirection); "
                f"queries judged `{cfg.blocking.query_level}` are refused before any generation."
                "\n\n"
                "Reward is the helpfulness proxy, cost the harm proxy (cost > 0: judged unsafe). "
                "Gold scores appear for gallery examples: the world's oracle (helpfulness 0..3, "
                "harmlessness -3..+3)."
            )
    return demo


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
        help="requests the queue runs at once",
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
