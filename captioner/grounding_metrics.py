"""Where a caption looked, scored: does each word that names a COCO object look at it?

Each word's attention is a map of the whole photo: a grid cell's weight spread evenly
over the cell (the encoder squashes the whole photo onto the grid), and, for a decoder
that attends over the detector's boxes too, a box's weight spread evenly over the box.
Per caption and word (``CaptionResult.to_dict``: ``attention``, ``attention_grid``,
``attention_boxes``, ``boxes``):

- **flat**: a caption whose every word looks everywhere alike (the map's hottest point
  below 1.05x a uniform map's);
- **pointing game** (Zhang et al. 2016): for a word naming a COCO object the detector
  boxed, whether the map's hottest point lies inside a box of that object (where several
  points tie, the share of them inside: a flat map scores its chance); its chance
  level is the share of the photo those boxes cover (a hottest point dropped at random);
- **in-box ratio**: the attention mass inside the named object's boxes over their share
  of the photo (1.0: no more on the dog than on the grass);
- **unbacked**: a caption naming an object that no human caption of the photo names and
  the detector did not find.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

import numpy as np

from captioner.vocabulary import tokenize
from captioner.wordlists import mentioned_categories, named_objects

RESOLUTION = 56  # the map's side: 8 points a cell of a 7x7 grid
FLAT = 1.05


def word_maps(result: dict, side: int = RESOLUTION) -> list[np.ndarray] | None:
    """Each word's attention as a density over the photo (side x side, mean 1 for a map
    whose weights sum to 1); None for a result without attention."""
    cells = result.get("attention")
    if not cells:
        return None
    gh, gw = result["attention_grid"]
    boxes = result.get("boxes") or []
    box_weights = result.get("attention_boxes")
    ys = (np.arange(side) + 0.5) / side
    inside = [_inside(b["box"], ys) for b in boxes]
    maps = []
    for n, weights in enumerate(cells):
        grid = np.asarray(weights, dtype=np.float64).reshape(gh, gw) * gh * gw
        dense = grid[(ys * gh).astype(int)][:, (ys * gw).astype(int)]
        if box_weights:
            for k, w in enumerate(box_weights[n][:len(inside)]):
                share = inside[k].mean()
                if share > 0:
                    dense = dense + inside[k] * (w / share)
        maps.append(dense)
    return maps


def _inside(box: Sequence[float], ys: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    return ((ys[:, None] >= y0) & (ys[:, None] <= y1) & (ys[None, :] >= x0) & (ys[None, :] <= x1)).astype(float)


def grounding_scores(results: Sequence[dict], references: Sequence[Sequence[str]] | None = None,
                     side: int = RESOLUTION) -> dict:
    """The figures above over a set of results (``references``: each photo's human captions,
    for the unbacked count)."""
    ys = (np.arange(side) + 0.5) / side
    flat = with_attention = 0
    hits, chance, ratios = [], [], []
    unbacked = 0
    for i, r in enumerate(results):
        detected = {b["category"] for b in r.get("boxes") or []}
        if references is not None:
            said = mentioned_categories(tokenize(r["caption"]))
            named = set().union(*(mentioned_categories(tokenize(c)) for c in references[i])) if references[i] else set()
            unbacked += bool(said - named - detected)
        maps = word_maps(r, side)
        if maps is None:
            continue
        with_attention += 1
        flat += all(m.max() < FLAT for m in maps)
        for position, category in named_objects(r["words"]):
            if position >= len(maps):
                continue
            region = np.zeros((side, side))
            for b in r.get("boxes") or []:
                if b["category"] == category:
                    region = np.maximum(region, _inside(b["box"], ys))
            share = region.mean()
            if share == 0 or share == 1:
                continue
            m = maps[position]
            hottest = m >= m.max() - 1e-9 * max(1.0, m.max())  # ties (a flat map): the share of them inside
            hits.append(float(region[hottest].mean()))
            chance.append(share)
            ratios.append(float((m * region).sum() / m.sum() / share))
    n = len(results)
    return {"captions": n, "with_attention": with_attention, "flat": flat,
            "flat_rate": flat / with_attention if with_attention else 0.0,
            "pointed_words": len(hits), "pointing_game": float(np.mean(hits)) if hits else 0.0,
            "pointing_chance": float(np.mean(chance)) if chance else 0.0,
            "in_box_ratio_median": median(ratios) if ratios else 0.0,
            "unbacked": unbacked, "unbacked_rate": unbacked / n if n else 0.0}
