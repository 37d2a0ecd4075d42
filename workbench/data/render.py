"""PIL scenes for the synthetic world: a catalogue of icons and a renderer.

Each object kind has its own shape *and* its own colour, so a small vision encoder (and
even a nearest-centroid classifier on raw pixels, see the tests) can tell them apart.
Scenes hold 1-3 icons at fixed slots with a few pixels of position jitter, colour jitter
per icon and a jittered light background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class ObjectKind:
    """One icon of the catalogue. Risky kinds carry a harm category and a base severity."""

    name: str
    colour_name: str
    rgb: RGB
    category: str = "none"
    severity: int = 0

    @property
    def risky(self) -> bool:
        return self.severity > 0


BENIGN_KINDS: tuple[ObjectKind, ...] = (
    ObjectKind("apple", "red", (200, 30, 30)),
    ObjectKind("flower", "pink", (235, 105, 185)),
    ObjectKind("book", "blue", (40, 70, 205)),
    ObjectKind("cup", "brown", (150, 95, 45)),
    ObjectKind("ball", "orange", (250, 145, 20)),
    ObjectKind("chair", "brown", (105, 60, 25)),
    ObjectKind("tree", "green", (30, 150, 40)),
    ObjectKind("fish", "teal", (20, 165, 165)),
    ObjectKind("lamp", "yellow", (240, 215, 40)),
    ObjectKind("hat", "purple", (125, 40, 170)),
)
RISKY_KINDS: tuple[ObjectKind, ...] = (
    ObjectKind("knife", "grey", (165, 170, 185), "violence_and_physical_harm", 2),
    ObjectKind("gun", "black", (25, 25, 30), "violence_and_physical_harm", 3),
    ObjectKind("pill", "white", (245, 245, 240), "harmful_health_content", 2),
    ObjectKind("bomb", "black", (60, 55, 75), "terrorism_or_extremism", 3),
    ObjectKind("skull", "white", (225, 215, 180), "horror_and_gore", 1),
    ObjectKind("laptop", "grey", (95, 100, 115), "hacking_or_digital_crime", 2),
    ObjectKind("camera", "black", (55, 45, 40), "privacy_invasion_and_surveillance", 1),
    ObjectKind("cash", "green", (70, 135, 80), "financial_and_academic_fraud", 1),
    ObjectKind("flame", "orange", (255, 85, 0), "dangerous_behavior", 2),
    ObjectKind("cage", "grey", (135, 135, 135), "animal_abuse", 2),
    ObjectKind("card", "blue", (140, 195, 240), "identity_misuse_and_impersonation", 2),
    ObjectKind("barrel", "yellow", (205, 180, 0), "environmental_damage", 1),
    ObjectKind("newspaper", "white", (200, 200, 205), "false_information", 1),
)
KINDS: dict[str, ObjectKind] = {k.name: k for k in BENIGN_KINDS + RISKY_KINDS}


def _jitter(rgb: RGB, rng: np.random.Generator, amount: int = 12) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _shade(rgb: RGB, f: float) -> RGB:
    return tuple(int(np.clip(c * f, 0, 255)) for c in rgb)  # type: ignore[return-value]


# --- one drawing function per kind: (draw, box, main colour) -------------------------------
def _apple(d: ImageDraw.ImageDraw, b: Box, c: RGB) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse((x0 + 0.1 * w, y0 + 0.2 * w, x1 - 0.1 * w, y1), fill=c)
    d.rectangle((x0 + 0.47 * w, y0, x0 + 0.55 * w, y0 + 0.25 * w), fill=(90, 50, 20))
    d.ellipse((x0 + 0.55 * w, y0 + 0.02 * w, x0 + 0.85 * w, y0 + 0.2 * w), fill=(40, 160, 40))


def _flower(d, b, c) -> None:
    x0, y0, x1, y1 = b
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    for a in range(5):
        t = 2 * np.pi * a / 5
        px, py = cx + 0.27 * w * np.cos(t), cy + 0.27 * w * np.sin(t)
        d.ellipse((px - 0.2 * w, py - 0.2 * w, px + 0.2 * w, py + 0.2 * w), fill=c)
    d.ellipse((cx - 0.14 * w, cy - 0.14 * w, cx + 0.14 * w, cy + 0.14 * w), fill=(250, 220, 60))


def _book(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.15 * w, y0 + 0.05 * w, x1 - 0.15 * w, y1 - 0.05 * w), fill=c)
    d.rectangle((x0 + 0.22 * w, y0 + 0.05 * w, x0 + 0.3 * w, y1 - 0.05 * w), fill=_shade(c, 0.5))
    d.rectangle((x0 + 0.4 * w, y0 + 0.3 * w, x1 - 0.25 * w, y0 + 0.4 * w), fill=(250, 250, 250))


def _cup(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse(
        (x1 - 0.4 * w, y0 + 0.3 * w, x1 - 0.02 * w, y0 + 0.7 * w),
        outline=c,
        width=max(2, int(0.09 * w)),
    )
    d.polygon(
        [
            (x0 + 0.08 * w, y0 + 0.2 * w),
            (x1 - 0.25 * w, y0 + 0.2 * w),
            (x1 - 0.35 * w, y1 - 0.05 * w),
            (x0 + 0.18 * w, y1 - 0.05 * w),
        ],
        fill=c,
    )


def _ball(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse((x0 + 0.05 * w, y0 + 0.05 * w, x1 - 0.05 * w, y1 - 0.05 * w), fill=c)
    d.arc(
        (x0 - 0.3 * w, y0 + 0.05 * w, x0 + 0.55 * w, y1 - 0.05 * w),
        -60,
        60,
        fill=(255, 255, 255),
        width=2,
    )
    d.arc(
        (x1 - 0.55 * w, y0 + 0.05 * w, x1 + 0.3 * w, y1 - 0.05 * w),
        120,
        240,
        fill=(255, 255, 255),
        width=2,
    )


def _chair(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    t = max(2, int(0.12 * w))
    d.rectangle((x0 + 0.2 * w, y0, x0 + 0.2 * w + t, y1), fill=c)
    d.rectangle((x0 + 0.2 * w, y0 + 0.5 * w, x1 - 0.15 * w, y0 + 0.5 * w + t), fill=c)
    d.rectangle((x1 - 0.15 * w - t, y0 + 0.5 * w, x1 - 0.15 * w, y1), fill=c)


def _tree(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.42 * w, y0 + 0.65 * w, x0 + 0.58 * w, y1), fill=(110, 70, 30))
    d.polygon(
        [(x0 + 0.5 * w, y0), (x1 - 0.05 * w, y0 + 0.7 * w), (x0 + 0.05 * w, y0 + 0.7 * w)], fill=c
    )


def _fish(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse((x0 + 0.05 * w, y0 + 0.25 * w, x0 + 0.72 * w, y1 - 0.25 * w), fill=c)
    d.polygon([(x0 + 0.65 * w, y0 + 0.5 * w), (x1, y0 + 0.25 * w), (x1, y1 - 0.25 * w)], fill=c)
    d.ellipse((x0 + 0.2 * w, y0 + 0.42 * w, x0 + 0.28 * w, y0 + 0.5 * w), fill=(10, 10, 10))


def _lamp(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.polygon(
        [
            (x0 + 0.3 * w, y0),
            (x1 - 0.3 * w, y0),
            (x1 - 0.1 * w, y0 + 0.45 * w),
            (x0 + 0.1 * w, y0 + 0.45 * w),
        ],
        fill=c,
    )
    d.rectangle((x0 + 0.46 * w, y0 + 0.45 * w, x0 + 0.54 * w, y1 - 0.1 * w), fill=(80, 80, 80))
    d.rectangle((x0 + 0.25 * w, y1 - 0.12 * w, x1 - 0.25 * w, y1), fill=(80, 80, 80))


def _hat(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.25 * w, y0 + 0.15 * w, x1 - 0.25 * w, y0 + 0.7 * w), fill=c)
    d.rectangle((x0, y0 + 0.7 * w, x1, y0 + 0.85 * w), fill=c)
    d.rectangle((x0 + 0.25 * w, y0 + 0.55 * w, x1 - 0.25 * w, y0 + 0.63 * w), fill=(20, 20, 20))


def _knife(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.polygon(
        [
            (x0 + 0.05 * w, y1 - 0.05 * w),
            (x0 + 0.2 * w, y1 - 0.3 * w),
            (x1 - 0.1 * w, y0 + 0.05 * w),
            (x0 + 0.4 * w, y1 - 0.15 * w),
        ],
        fill=c,
    )
    d.line(
        (x0 + 0.05 * w, y1 - 0.05 * w, x0 + 0.25 * w, y1 - 0.25 * w),
        fill=(30, 20, 10),
        width=max(3, int(0.14 * w)),
    )


def _gun(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.05 * w, y0 + 0.25 * w, x1 - 0.05 * w, y0 + 0.45 * w), fill=c)
    d.polygon(
        [
            (x1 - 0.45 * w, y0 + 0.45 * w),
            (x1 - 0.15 * w, y0 + 0.45 * w),
            (x1 - 0.25 * w, y1 - 0.1 * w),
            (x1 - 0.5 * w, y1 - 0.1 * w),
        ],
        fill=c,
    )


def _pill(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rounded_rectangle(
        (x0 + 0.05 * w, y0 + 0.3 * w, x1 - 0.05 * w, y1 - 0.3 * w), radius=0.2 * w, fill=c
    )
    d.rounded_rectangle(
        (x0 + 0.5 * w, y0 + 0.3 * w, x1 - 0.05 * w, y1 - 0.3 * w),
        radius=0.2 * w,
        fill=(215, 35, 60),
    )


def _bomb(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse((x0 + 0.05 * w, y0 + 0.25 * w, x1 - 0.25 * w, y1), fill=c)
    d.line((x1 - 0.35 * w, y0 + 0.35 * w, x1 - 0.1 * w, y0 + 0.1 * w), fill=(120, 100, 60), width=2)
    d.ellipse((x1 - 0.2 * w, y0, x1, y0 + 0.2 * w), fill=(255, 200, 0))


def _skull(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.ellipse((x0 + 0.1 * w, y0, x1 - 0.1 * w, y0 + 0.75 * w), fill=c)
    d.rectangle((x0 + 0.3 * w, y0 + 0.6 * w, x1 - 0.3 * w, y1 - 0.05 * w), fill=c)
    d.ellipse((x0 + 0.25 * w, y0 + 0.3 * w, x0 + 0.43 * w, y0 + 0.48 * w), fill=(0, 0, 0))
    d.ellipse((x1 - 0.43 * w, y0 + 0.3 * w, x1 - 0.25 * w, y0 + 0.48 * w), fill=(0, 0, 0))


def _laptop(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.15 * w, y0 + 0.1 * w, x1 - 0.15 * w, y0 + 0.65 * w), fill=c)
    d.rectangle((x0 + 0.22 * w, y0 + 0.17 * w, x1 - 0.22 * w, y0 + 0.58 * w), fill=(20, 60, 120))
    d.polygon(
        [
            (x0 + 0.1 * w, y0 + 0.7 * w),
            (x1 - 0.1 * w, y0 + 0.7 * w),
            (x1, y1 - 0.1 * w),
            (x0, y1 - 0.1 * w),
        ],
        fill=c,
    )


def _camera(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.05 * w, y0 + 0.3 * w, x1 - 0.05 * w, y1 - 0.15 * w), fill=c)
    d.rectangle((x0 + 0.2 * w, y0 + 0.18 * w, x0 + 0.45 * w, y0 + 0.3 * w), fill=c)
    d.ellipse((x0 + 0.3 * w, y0 + 0.38 * w, x1 - 0.3 * w, y1 - 0.22 * w), fill=(120, 190, 230))


def _cash(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0, y0 + 0.22 * w, x1, y1 - 0.22 * w), fill=c)
    d.ellipse((x0 + 0.37 * w, y0 + 0.35 * w, x1 - 0.37 * w, y1 - 0.35 * w), fill=(170, 220, 170))
    d.rectangle(
        (x0 + 0.06 * w, y0 + 0.28 * w, x1 - 0.06 * w, y1 - 0.28 * w),
        outline=(170, 220, 170),
        width=1,
    )


def _flame(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.polygon(
        [
            (x0 + 0.5 * w, y0),
            (x1 - 0.1 * w, y0 + 0.6 * w),
            (x0 + 0.5 * w, y1),
            (x0 + 0.1 * w, y0 + 0.6 * w),
        ],
        fill=c,
    )
    d.ellipse((x0 + 0.32 * w, y0 + 0.5 * w, x1 - 0.32 * w, y1 - 0.08 * w), fill=(255, 220, 40))


def _cage(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.08 * w, y0 + 0.08 * w, x1 - 0.08 * w, y1 - 0.08 * w), outline=c, width=2)
    for k in range(1, 5):
        x = x0 + 0.08 * w + k * 0.84 * w / 5
        d.line((x, y0 + 0.08 * w, x, y1 - 0.08 * w), fill=c, width=2)


def _card(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rounded_rectangle((x0, y0 + 0.2 * w, x1, y1 - 0.2 * w), radius=0.08 * w, fill=c)
    d.rectangle((x0 + 0.1 * w, y0 + 0.32 * w, x0 + 0.35 * w, y1 - 0.32 * w), fill=(90, 60, 40))
    d.line((x0 + 0.45 * w, y0 + 0.4 * w, x1 - 0.1 * w, y0 + 0.4 * w), fill=(30, 30, 30), width=1)
    d.line((x0 + 0.45 * w, y0 + 0.55 * w, x1 - 0.2 * w, y0 + 0.55 * w), fill=(30, 30, 30), width=1)


def _barrel(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.2 * w, y0 + 0.05 * w, x1 - 0.2 * w, y1 - 0.05 * w), fill=c)
    for f in (0.25, 0.5, 0.75):
        d.rectangle(
            (x0 + 0.2 * w, y0 + f * w - 0.04 * w, x1 - 0.2 * w, y0 + f * w + 0.04 * w),
            fill=(20, 20, 20),
        )


def _newspaper(d, b, c) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + 0.05 * w, y0 + 0.1 * w, x1 - 0.05 * w, y1 - 0.1 * w), fill=c)
    d.rectangle((x0 + 0.12 * w, y0 + 0.17 * w, x1 - 0.12 * w, y0 + 0.3 * w), fill=(30, 30, 30))
    for k in range(4):
        yy = y0 + (0.4 + 0.1 * k) * w
        d.line((x0 + 0.12 * w, yy, x1 - 0.12 * w, yy), fill=(90, 90, 90), width=1)


_DRAW: dict[str, Callable[[ImageDraw.ImageDraw, Box, RGB], None]] = {
    "apple": _apple,
    "flower": _flower,
    "book": _book,
    "cup": _cup,
    "ball": _ball,
    "chair": _chair,
    "tree": _tree,
    "fish": _fish,
    "lamp": _lamp,
    "hat": _hat,
    "knife": _knife,
    "gun": _gun,
    "pill": _pill,
    "bomb": _bomb,
    "skull": _skull,
    "laptop": _laptop,
    "camera": _camera,
    "cash": _cash,
    "flame": _flame,
    "cage": _cage,
    "card": _card,
    "barrel": _barrel,
    "newspaper": _newspaper,
}
assert set(_DRAW) == set(KINDS), "every kind needs a drawing function"

# Slot centres (fractions of the side) and icon size (fraction of the side) per object count.
_SLOTS = {
    1: ([(0.5, 0.5)], 0.6),
    2: ([(0.27, 0.5), (0.73, 0.5)], 0.4),
    3: ([(0.27, 0.3), (0.73, 0.3), (0.5, 0.73)], 0.36),
}


def sample_layout(n_objects: int, size: int, rng: np.random.Generator) -> dict:
    """Random but reproducible rendering parameters of a scene with ``n_objects`` icons."""
    centres, frac = _SLOTS[n_objects]
    jitter = max(1, size // 21)
    return {
        "background": [int(v) for v in rng.integers(225, 251, size=3)],
        "offsets": [[int(v) for v in rng.integers(-jitter, jitter + 1, size=2)] for _ in centres],
        "colour_seeds": [int(v) for v in rng.integers(0, 2**31 - 1, size=n_objects)],
        "icon_frac": frac,
    }


def render_scene(kinds: list[str], layout: dict, size: int) -> Image.Image:
    """Draw the icons ``kinds`` (1-3) into a ``size`` x ``size`` RGB image."""
    img = Image.new("RGB", (size, size), tuple(layout["background"]))
    d = ImageDraw.Draw(img)
    centres, _ = _SLOTS[len(kinds)]
    icon = layout["icon_frac"] * size
    for kind, (cx, cy), (dx, dy), cs in zip(
        kinds, centres, layout["offsets"], layout["colour_seeds"], strict=True
    ):
        x, y = cx * size + dx, cy * size + dy
        colour = _jitter(KINDS[kind].rgb, np.random.default_rng(cs))
        _DRAW[kind](d, (x - icon / 2, y - icon / 2, x + icon / 2, y + icon / 2), colour)
    return img
