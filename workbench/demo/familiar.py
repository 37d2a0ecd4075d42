"""Is a prompt inside the world the models know? Two cheap checks behind the demo's warnings.

- **Unknown words**: the tiny models' tokenizer knows only the world's closed vocabulary;
  any other word becomes ``<unk>`` and the answer is meaningless. The words are found by
  :func:`workbench.models.tokenizer.unknown_words` (the scoring widget of notebook 02 uses it
  too). Tokenizers without an unknown token (a bring-your-own VLM) report none.
- **Off-palette share** of an image: the world's pictures are flat icons in a few catalogue
  colours (with a little jitter and shading) on a light background, so nearly every pixel of
  a world image has a colour seen in other world images. The statistic is the share of the
  image's pixels (resized to the world's 64 x 64 with nearest-neighbour sampling, so no new
  colours are blended in) whose colour lies more than :data:`OFF_PALETTE_DISTANCE` RGB units
  from every colour cell of :data:`REFERENCE_SCENES` world scenes rendered with seed
  :data:`REFERENCE_SEED` (cells of :data:`COLOUR_CELL` units per channel). An image is *far
  from the world* above :data:`OFF_PALETTE_THRESHOLD`.

  The threshold was chosen on world images only: on 500 scenes rendered with other seeds the
  largest share is 0.000 (the test suite re-checks it on fresh scenes); photo-like test
  images (colour gradients, sky and skin tones) score 0.4-0.85, random noise about 0.75.
  Flat grey, black or white pictures score 0 (those colours are in the world's palette):
  the check catches photos, not every stranger.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image

from ..data.render import render_scene
from ..data.world import sample_scene
from ..models.tokenizer import unknown_words

#: The world's image side (DataConfig.image_size) at which shares are measured.
WORLD_IMAGE_SIZE = 64
#: Width of a colour cell, in RGB units per channel.
COLOUR_CELL = 8
#: A pixel further than this (RGB Euclidean units, between cell centres) from every colour
#: cell of the reference scenes is *off the palette*.
OFF_PALETTE_DISTANCE = 24.0
#: Images with a larger share of off-palette pixels are flagged as far from the world.
OFF_PALETTE_THRESHOLD = 0.05
REFERENCE_SCENES = 200
REFERENCE_SEED = 0


def render_world_scenes(n: int, seed: int, size: int = WORLD_IMAGE_SIZE) -> list[Image.Image]:
    """``n`` scenes of the world drawn as the data stage draws them."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        scene = sample_scene(rng, size)
        images.append(render_scene([o["kind"] for o in scene["objects"]], scene["layout"], size))
    return images


def _cells(image: Image.Image) -> np.ndarray:
    """The colour cells of the image's pixels at the world's size, ``[pixels, 3]``."""
    size = (WORLD_IMAGE_SIZE, WORLD_IMAGE_SIZE)
    small = image.convert("RGB").resize(size, Image.Resampling.NEAREST)
    return np.asarray(small, dtype=np.int64).reshape(-1, 3) // COLOUR_CELL


class WorldPalette:
    """The colour cells the world's images use, and :meth:`off_share` of any image."""

    def __init__(self, images: list[Image.Image]):
        cells = np.unique(np.concatenate([_cells(im) for im in images]), axis=0)
        self.cells = cells.astype(np.float32)

    @classmethod
    def reference(cls) -> WorldPalette:
        return cls(render_world_scenes(REFERENCE_SCENES, REFERENCE_SEED))

    def off_share(self, image: Image.Image) -> float:
        """Share of the image's pixels whose colour is off the world's palette (0..1)."""
        cells, counts = np.unique(_cells(image), axis=0, return_counts=True)
        d2 = ((cells[:, None, :].astype(np.float32) - self.cells[None]) ** 2).sum(-1).min(1)
        off = np.sqrt(d2) * COLOUR_CELL > OFF_PALETTE_DISTANCE
        return float(counts[off].sum() / counts.sum())


_palette: WorldPalette | None = None
_palette_lock = threading.Lock()


def world_palette() -> WorldPalette:
    """The reference palette, built once per process (about a second: 200 scenes drawn)."""
    global _palette
    with _palette_lock:
        if _palette is None:
            _palette = WorldPalette.reference()
        return _palette


def _warm() -> None:
    world_palette()


def warm_up() -> threading.Thread:
    """Build the reference palette in the background (the app calls it at start, so the
    first request does not pay for it)."""
    thread = threading.Thread(target=_warm, name="demo-warm-up", daemon=True)
    thread.start()
    return thread


def familiarity(
    processor, image: Image.Image | None, text: str, world_images: bool = True
) -> dict[str, Any]:
    """``{"unknown_words", "off_palette_share", "warnings"}`` for a prompt (and an answer's
    text, when moderating one). ``off_palette_share`` is ``None`` when ``world_images`` is
    false (a run on real data: its images are photos by design)."""
    unknown = list(dict.fromkeys(unknown_words(processor, text)))
    share = world_palette().off_share(image) if (world_images and image is not None) else None
    warnings = []
    if unknown:
        warnings.append(
            "Unknown word(s) for these models: "
            + ", ".join(f"'{w}'" for w in unknown)
            + ". The world speaks a small closed vocabulary and every other word reaches the "
            "models as <unk>: the answers and scores below mean little. See 'The world's "
            "vocabulary' for the words it knows."
        )
    if share is not None and share > OFF_PALETTE_THRESHOLD:
        warnings.append(
            f"This image looks unlike the world's pictures: {share:.0%} of its pixels have "
            f"colours no world image uses (world images: 0%; warning above "
            f"{OFF_PALETTE_THRESHOLD:.0%}). The models only ever saw flat icons on a light "
            "background: the answers and scores below mean little."
        )
    return {
        "unknown_words": unknown,
        "off_palette_share": None if share is None else round(share, 4),
        "warnings": warnings,
    }


__all__ = [
    "WorldPalette",
    "world_palette",
    "warm_up",
    "familiarity",
    "render_world_scenes",
    "OFF_PALETTE_DISTANCE",
    "OFF_PALETTE_THRESHOLD",
]
