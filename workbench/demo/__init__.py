"""The Gradio demo: base and aligned policies side by side, the guard, the trade-off figure.

``python -m workbench demo`` (:func:`~workbench.demo.app.main`). The logic lives in
:mod:`workbench.demo.logic` (plain functions), model loading in :mod:`workbench.demo.models`,
the shipped fallback checkpoints in :mod:`workbench.demo.assets`; Gradio is imported only
by :mod:`workbench.demo.app`.
"""

from .config import DemoConfig
from .logic import DemoInputError, answer_side, badge_html, compare, moderate, tradeoff_figure
from .models import DemoModelError, DemoModels, find_latest_run, load_models

__all__ = [
    "DemoConfig",
    "DemoInputError",
    "DemoModelError",
    "DemoModels",
    "answer_side",
    "badge_html",
    "compare",
    "moderate",
    "tradeoff_figure",
    "find_latest_run",
    "load_models",
]
