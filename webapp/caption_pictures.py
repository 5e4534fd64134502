"""The caption tab's pictures: the photo with the detector's boxes, large enough to read,
and one picture per word of where the model looked (the whole photo, uncropped, with the
word's heat map over the grid and the boxes it attended glowing)."""

from __future__ import annotations

from functools import cache

from PIL import Image, ImageDraw, ImageFont

from captioner.attention_maps import heat_of
from captioner.grounding_metrics import word_maps

BOX_COLOURS = [(220, 38, 38), (37, 99, 235), (22, 163, 74), (217, 119, 6), (147, 51, 234), (8, 145, 178)]
GLOW = (250, 204, 21)
SAYS_SOMETHING = 1.5  # a word's map 1.5x the even map somewhere: its attention points somewhere


@cache
def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def scaled(image: Image.Image, longest: int) -> Image.Image:
    """The whole photo (never cropped) with its longer side ``longest`` pixels."""
    image = image.convert("RGB")
    ratio = longest / max(image.size)
    return image.resize((max(1, round(image.width * ratio)), max(1, round(image.height * ratio))),
                        Image.Resampling.BILINEAR if ratio < 1 else Image.Resampling.BICUBIC)


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label(draw: ImageDraw.ImageDraw, box, text: str, colour, size: int, bounds, taken: list) -> None:
    """A filled tag with ``text`` at a corner of ``box`` (above it, inside its top, below
    it, inside its bottom: the first that is inside the picture and clear of the tags in
    ``taken``), so that neighbouring boxes' labels stay readable."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font(size))
    w, h = right - left + 8, bottom - top + 6
    x0, y0, x1, y1 = box
    x = min(max(0, x0), bounds[0] - w)
    spots = [(x, y) for y in (y0 - h, y0, y1, y1 - h) if 0 <= y <= bounds[1] - h]
    rect = next((r for r in ((x, y, x + w, y + h) for x, y in spots) if not any(overlaps(r, t) for t in taken)),
                (x, min(max(0, y0 - h), bounds[1] - h), x + w, min(max(0, y0 - h), bounds[1] - h) + h))
    taken.append(rect)
    draw.rectangle(rect, fill=colour)
    draw.text((rect[0] + 4 - left, rect[1] + 3 - top), text, fill=(255, 255, 255), font=font(size))


def boxed_photo(picture: Image.Image, boxes: list[dict] | None, longest: int = 800) -> Image.Image:
    """The photo at about ``longest`` pixels with each detected box drawn whole and
    labelled with its category and score (``boxes``: the results' 0..1 coordinates); the
    boxes first, then their labels over them, surest first."""
    out = scaled(picture, longest)
    draw = ImageDraw.Draw(out)
    line, size = max(2, longest // 250), max(12, longest // 30)
    shown = [(BOX_COLOURS[k % len(BOX_COLOURS)], [v * s for v, s in zip(b["box"], out.size * 2)], b)
             for k, b in enumerate(sorted(boxes or [], key=lambda b: -b["score"]))]
    for colour, xy, _ in shown:
        draw.rectangle(xy, outline=colour, width=line)
    taken = []
    for colour, xy, b in shown:
        label(draw, xy, f"{b['category']} {b['score']:.0%}", colour, size, out.size, taken)
    return out


def says_something(result: dict) -> bool:
    """Whether any word's attention points somewhere: its map over the photo (the grid's
    cells and, with regions, the boxes: ``grounding_metrics.word_maps``) is somewhere
    ``SAYS_SOMETHING`` times the even map, not spread evenly as a model whose attention
    collapsed spreads it."""
    maps = word_maps(result) or []
    return any(float(m.max()) >= SAYS_SOMETHING for m in maps)


def word_pictures(picture: Image.Image, result: dict, name: str = "",
                  longest: int = 360) -> list[tuple[Image.Image, str]]:
    """One (picture, "n. word") per word (the first also naming the photo): the whole
    photo with the word written on it, its heat map (``word_maps``: the grid's cells and
    the boxes it attended, the map the pointing game scores) and, where the result has
    ``attention_boxes``, the boxes it attended glowing (outline and tint in proportion to
    the word's weight on each box)."""
    base = scaled(picture, longest)
    under = base.convert("RGBA")  # once: every word's heat goes over the same photo
    boxes = result.get("boxes") or []
    shown = []
    for k, (word, density) in enumerate(zip(result["words"], word_maps(result))):
        tile = Image.alpha_composite(under, heat_of(density, base.size))
        on_boxes = (result.get("attention_boxes") or [None] * len(result["words"]))[k]
        if on_boxes:
            glow = Image.new("RGBA", base.size, (0, 0, 0, 0))
            draw = ImageDraw.Draw(glow)
            top = max(on_boxes)
            for b, w in zip(boxes, on_boxes):
                strength = w / top if top > 0 else 0.0
                if strength < 0.2:
                    continue
                xy = [v * s for v, s in zip(b["box"], base.size * 2)]
                draw.rectangle(xy, fill=GLOW + (int(70 * strength),), outline=GLOW + (int(255 * strength),),
                               width=max(2, round(5 * strength)))
            tile = Image.alpha_composite(tile, glow)
        tile = tile.convert("RGB")
        label(ImageDraw.Draw(tile), (0, 0, *tile.size), word, (30, 30, 30), max(14, longest // 14), tile.size, [])
        shown.append((tile, f"{k + 1}. {word}" + (f" ({name})" if name and k == 0 else "")))
    return shown
