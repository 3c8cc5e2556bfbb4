"""The bundled offline demo dataset: ten classes of noisy shapes, generated on first use.

Real PNG and JPEG files in an image-folder layout (`<root>/<class>/<file>`), loaded through the
same `imagefolder` path as any local folder. Deterministic: the same files on every machine,
whatever the run's seed (the seed only decides the split).

    python -c "from resnet_exp.data.demo import ensure_demo_dataset; print(ensure_demo_dataset('data'))"
"""

from __future__ import annotations

import colorsys
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from resnet_exp.atomic import build_atomically

# Bump when the generator changes, so stale folders are never reused.
DEMO_VERSION = 1
CLASSES = (
    "arrow",
    "circle",
    "crescent",
    "cross",
    "hexagon",
    "pentagon",
    "ring",
    "square",
    "star",
    "triangle",
)
IMAGES_PER_CLASS = 80  # 800 images: generated in about a second, enough to generalise from
NATIVE_SIZE = 64  # pixels; the pipeline resizes to image_size like any other data
_GENERATOR_SEED = 20261128
HUE_SPREAD = 0.08  # std of a class's hue around its own, as a fraction of the colour wheel


def demo_root(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).expanduser() / f"demo-v{DEMO_VERSION}"


def ensure_demo_dataset(data_dir: str | os.PathLike) -> Path:
    """Generate the demo folder under `data_dir` unless it is already complete; return its path."""
    root = demo_root(data_dir)
    build_atomically(root, _write_images)
    return root


def _write_images(folder: Path) -> None:
    rng = np.random.default_rng(_GENERATOR_SEED)
    for label in CLASSES:
        (folder / label).mkdir()
        for i in range(IMAGES_PER_CLASS):
            image = render_shape(label, rng)
            # Alternate formats so the loader meets both real encodings.
            if i % 2:
                image.save(folder / label / f"{label}_{i:03d}.jpg", quality=90)
            else:
                image.save(folder / label / f"{label}_{i:03d}.png")


def render_shape(label: str, rng: np.random.Generator, size: int = NATIVE_SIZE) -> Image.Image:
    """One image: a randomly coloured, sized, placed and rotated shape on a cluttered background."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    radius = size * rng.uniform(0.22, 0.4)
    cx, cy = rng.uniform(radius, size - radius, 2)
    angle = rng.uniform(0, 2 * math.pi)
    colour = _class_colour(label, rng)
    _draw(draw, label, cx, cy, radius, angle, colour, image.getpixel((int(cx), int(cy))))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    noise = rng.normal(0, 10, (size, size, 3))  # sensor-like noise
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _class_colour(label: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """Each class leans towards its own hue, with a spread that overlaps its neighbours': colour
    is a weak cue a network picks up in the first epochs, the shape is what it must learn to
    get near 100%."""
    hue = (CLASSES.index(label) / len(CLASSES) + rng.normal(0, HUE_SPREAD)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    return tuple(int(255 * c) for c in rgb)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    # Greyish gradients: the background must not drown the shape's colour cue.
    top, bottom = rng.integers(40, 220, (2, 1)) + rng.integers(-20, 21, (2, 3))
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):  # clutter lines that no class owns
        points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(
            points,
            fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
            width=int(rng.integers(1, 3)),
        )
    return image


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * k / n),
            cy + r * math.sin(angle + 2 * math.pi * k / n),
        )
        for k, r in enumerate(radii)
    ]


def _draw(
    draw: ImageDraw.ImageDraw,
    label: str,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    colour: tuple[int, ...],
    background: tuple[int, ...],
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if label == "circle":
        draw.ellipse(box, fill=colour)
    elif label == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif label == "crescent":
        draw.ellipse(box, fill=colour)
        dx, dy = 0.5 * r * math.cos(angle), 0.5 * r * math.sin(angle)
        draw.ellipse((cx - r + dx, cy - r + dy, cx + r + dx, cy + r + dy), fill=background)
    elif label in ("triangle", "square", "pentagon", "hexagon"):
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[label]
        draw.polygon(_polygon(cx, cy, [r] * sides, angle), fill=colour)
    elif label == "star":
        draw.polygon(_polygon(cx, cy, [r, 0.45 * r] * 5, angle), fill=colour)
    elif label == "cross":
        w = r / 3
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            draw.line(
                (cx - r * dx, cy - r * dy, cx + r * dx, cy + r * dy), fill=colour, width=int(2 * w)
            )
    elif label == "arrow":
        shaft = _polygon(cx, cy, [r, 0.5 * r, 0.5 * r], angle)
        draw.polygon(shaft, fill=colour)
        tail = (cx - r * math.cos(angle), cy - r * math.sin(angle))
        draw.line((cx, cy, *tail), fill=colour, width=max(2, int(r / 4)))
    else:
        raise ValueError(f"unknown demo class {label!r}; expected one of {CLASSES}")
