"""Visual domains of easy-VQA images for the domain-heterogeneity benchmark.

Every domain keeps the answer determinable from the image: the shape's colour is never
changed and the shape stays whole and visible.

* ``clean``: the image as is.
* ``inverted``: only the background is inverted, lifted to stay dark grey rather than black
  (RGB 40-65), so black shapes remain visible; the shape's pixels keep their colour.
* ``noise``: additive Gaussian pixel noise (sigma ``NOISE_SIGMA`` on 0-255).
* ``blur``: low resolution like VizWiz: downscaled to ``BLUR_SIZE`` pixels a side and back up.
* ``rotate``: the shape rotated about its centre by an angle in [30, 330] degrees, moved
  back into the frame if needed, on the original background.

The randomness of an image derives from the seed and a hash of the image's pixels only.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image

DOMAINS = ("clean", "inverted", "noise", "blur", "rotate")
NOISE_SIGMA = 25.0
BLUR_SIZE = 24  # 16 turns the smallest shapes (7-11 px) into blobs of unknown shape
ROTATE_DEGREES = (30.0, 330.0)
_DARK_LIFT = 40.0  # added to the inverted background (easy-VQA backgrounds are 230-255)

ImageTransform = Callable[[Image.Image], Image.Image]


def domain_transform(name: str, seed: int) -> ImageTransform | None:
    """The image transform of domain ``name`` (None for "clean"), deterministic given ``seed``."""
    if name not in DOMAINS:
        raise ValueError(f"Unknown domain {name!r}; allowed: {', '.join(DOMAINS)}")
    if name == "clean":
        return None
    return functools.partial(_seeded, _TRANSFORMS[name], seed)


def _seeded(transform: Callable[[Image.Image, np.random.Generator], Image.Image], seed: int,
            image: Image.Image) -> Image.Image:
    """Apply ``transform`` to the RGB image with an RNG seeded by ``seed`` and its pixels."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(repr(rgb.size).encode() + rgb.tobytes()).digest()
    return transform(rgb, np.random.default_rng([seed, int.from_bytes(digest[:8], "little")]))


class _Layers(NamedTuple):
    """An easy-VQA image as a shape colour over a background colour, mixed by ``alpha``."""

    background: np.ndarray  # [3] float RGB
    shape: np.ndarray  # [3] float RGB
    alpha: np.ndarray  # [H, W] in [0, 1]; 1 on the shape, fractional on anti-aliased edges

    def compose(self, alpha: np.ndarray | None = None, background: np.ndarray | None = None) -> Image.Image:
        alpha = self.alpha if alpha is None else alpha
        background = self.background if background is None else background
        pixels = alpha[..., None] * self.shape + (1 - alpha[..., None]) * background
        return _to_image(pixels)


def _layers(image: Image.Image) -> _Layers:
    """Background = commonest border colour, shape = commonest other colour."""
    pixels = np.asarray(image, dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = _commonest(border)
    others = pixels.reshape(-1, 3)
    others = others[np.any(others != background, axis=1)]
    if len(others) == 0:
        raise ValueError("Image has no shape: every pixel is the background colour")
    shape = _commonest(others)
    direction = shape - background
    alpha = np.clip((pixels - background) @ direction / (direction @ direction), 0.0, 1.0)
    return _Layers(background, shape, alpha)


def _commonest(colors: np.ndarray) -> np.ndarray:
    values, counts = np.unique(colors, axis=0, return_counts=True)
    return values[np.argmax(counts)]


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _inverted(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    layers = _layers(image)
    return layers.compose(background=255.0 - layers.background + _DARK_LIFT)


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    return _to_image(pixels + rng.normal(0.0, NOISE_SIGMA, pixels.shape))


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = image.resize((BLUR_SIZE, BLUR_SIZE), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.BILINEAR)


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate the shape's alpha on a canvas with room around it, then crop it back in frame."""
    layers = _layers(image)
    height, width = layers.alpha.shape
    canvas = np.zeros((3 * height, 3 * width))
    canvas[height:2 * height, width:2 * width] = layers.alpha
    rows, cols = np.nonzero(canvas)
    centre = (float(cols.mean()), float(rows.mean()))
    angle = rng.uniform(*ROTATE_DEGREES)
    turned = np.asarray(Image.fromarray(canvas.astype(np.float32), "F")
                        .rotate(angle, Image.Resampling.BILINEAR, center=centre))
    rows, cols = np.nonzero(turned > 0)
    top = int(np.clip(height, rows.max() + 1 - height, rows.min()))
    left = int(np.clip(width, cols.max() + 1 - width, cols.min()))
    return layers.compose(alpha=np.clip(turned[top:top + height, left:left + width], 0.0, 1.0))


_TRANSFORMS = {"inverted": _inverted, "noise": _noise, "blur": _blur, "rotate": _rotate}
