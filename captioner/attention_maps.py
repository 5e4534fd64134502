"""Pictures of where an attention captioner looked: the photo once per word, with the
word's attention laid over it as a heat map: its weights over the encoder's grid, and
(a decoder with regions) over the detector's boxes, as one map of the whole photo
(``grounding_metrics.word_maps``, the map the pointing game scores), upsampled smoothly
to the photo's size as in Show, Attend and Tell's figures."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner.grounding_metrics import word_maps
from captioner.results import CaptionResult

# a dark-blue -> red -> yellow ramp, so that weak attention stays see-through
_RAMP = np.array([[0, 0, 64], [160, 0, 64], [255, 64, 0], [255, 220, 0]], dtype=np.float32)
FULL_FOCUS = 3.0  # a cell with this many times the uniform weight (1 / cells) is drawn at full heat


def focus(weights: list[float]) -> float:
    """How much more than uniform the most-attended cell gets (1.0: the word looked
    everywhere equally, as a model whose attention collapsed does)."""
    w = np.asarray(weights, dtype=np.float32)
    return float(w.max() * w.size)


def heat(weights: list[float], grid: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    """An RGBA heat map of ``size`` from one word's weights over a ``grid`` (row-major)."""
    w = np.asarray(weights, dtype=np.float32).reshape(grid)
    return heat_of(w * w.size, size)


def heat_of(density: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """An RGBA heat map of ``size`` from a word's attention as a density over the photo
    (1.0: the uniform map's).

    The scale is fixed, not stretched to each word's maximum: a point at the uniform density
    or below is clear, a point at ``FULL_FOCUS`` times it is full heat. So attention that is
    spread evenly shows as no heat at all, instead of as a map that looks focused everywhere."""
    level = np.clip((np.asarray(density, dtype=np.float32) - 1.0) / (FULL_FOCUS - 1.0), 0.0, 1.0)
    smooth = Image.fromarray((level * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    table = _heat_table()  # each channel one lookup in Pillow's C (2.3x numpy's indexing of the whole map)
    return Image.merge("RGBA", [smooth.point(table[:, c].tolist()) for c in range(4)])


@cache
def _heat_table() -> np.ndarray:
    """(256, 4) uint8: the RGBA of each level of the smoothed map (the ramp, and alpha 210 x
    level), computed once: a map is then one table lookup per pixel and channel."""
    smooth = np.arange(256, dtype=np.float32) / 255.0
    position = smooth * (len(_RAMP) - 1)
    low = np.clip(position.astype(int), 0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    alpha = (210 * smooth)[..., None]
    return np.concatenate([rgb, alpha], -1).astype(np.uint8)


def attention_panels(image: Image.Image, result: CaptionResult, size: int = 160) -> list[tuple[Image.Image, str]]:
    """One (picture, "word (p)") per word of an attention model's caption."""
    if result.attention is None or result.grid is None:
        raise ValueError("this caption carries no attention weights (it is not from an attention model)")
    base = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR).convert("RGBA")
    return [(Image.alpha_composite(base, heat_of(m, (size, size))).convert("RGB"),
             f"{word} ({p:.2f}, x{m.max():.1f})")
            for word, p, m in zip(result.words, result.probabilities, word_maps(result.to_dict()))]


def draw_boxes(image: Image.Image, boxes: list[dict] | None, width: int = 2) -> Image.Image:
    """A copy of ``image`` with the COCO detector's boxes (``CaptionResult.boxes``: 0..1
    coordinates) drawn and labelled with their category and score."""
    out = image.convert("RGB")
    if not boxes:
        return out
    out = out.copy()
    draw = ImageDraw.Draw(out)
    for k, b in enumerate(boxes):
        colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
        x0, y0, x1, y1 = (v * s for v, s in zip(b["box"], (out.width, out.height, out.width, out.height)))
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        label = f"{b['category']} {b['score']:.0%}"
        draw.rectangle([x0, y0, x0 + 6 * len(label) + 4, y0 + 12], fill=colour)
        draw.text((x0 + 2, y0), label, fill=(255, 255, 255))
    return out


_BOX_COLOURS = [(220, 38, 38), (37, 99, 235), (22, 163, 74), (217, 119, 6), (147, 51, 234), (8, 145, 178)]


def attention_strip(image: Image.Image, result: CaptionResult, size: int = 160, per_row: int = 6) -> Image.Image:
    """The photo with the detector's boxes, then one panel per word, each labelled, in rows
    of ``per_row``."""
    photo = draw_boxes(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), result.boxes, 1)
    panels = [(photo, "photo, detected objects" if result.boxes else "photo"),
              *attention_panels(image, result, size)]
    label, gap = 18, 4
    rows = (len(panels) + per_row - 1) // per_row
    cols = min(per_row, len(panels))
    sheet = Image.new("RGB", (cols * (size + gap) + gap, rows * (size + label + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (panel, text) in enumerate(panels):
        x, y = gap + (k % per_row) * (size + gap), gap + (k // per_row) * (size + label + gap)
        sheet.paste(panel, (x, y + label))
        draw.text((x + 2, y + 2), text, fill=(20, 20, 20))
    return sheet


def save_attention_maps(image: Image.Image, result: CaptionResult, path: str | os.PathLike) -> Path:
    """The strip as a PNG, written atomically."""
    from lstmkit.checkpoint import atomic_write

    path = Path(path)
    sheet = attention_strip(image, result)
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path
