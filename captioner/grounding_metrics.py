"""Where a caption looked, scored: does each word that names a COCO object look at it?

Each word's attention is a map of the whole photo: a grid cell's weight spread evenly
over the cell (the encoder squashes the whole photo onto the grid), and, for a decoder
that attends over the detector's boxes too, a box's weight spread evenly over the box.
Per caption and word (``CaptionResult.to_dict``: ``attention``, ``attention_grid``,
``attention_boxes``, ``boxes``), first the honest figures, which read the attention's own
entries and no box's area:

- **flat over the entries**: a caption whose every word gives no entry (a cell, or a box the
  photo has) more than 1.5x an even share (1 / the entries): attention spread evenly over 49
  cells and 3 boxes is flat here, though the map below paints each box's weight over its
  area and makes a small box the hottest spot;
- **the cells alone**: for a word naming a COCO object the detector boxed, whether its most
  attended cell has its centre in a box of that object (chance: the share of the cells whose
  centres those boxes hold), and the cells' mass in those boxes over their share. The cells
  carry no category label, so this is not circular the way the map is (the decoder attends
  over the detector's labelled boxes and is scored against the same boxes);

then the figures of the whole map:

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
EVEN = 1.5  # flat over the entries: no entry above 1.5x an even share


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
    return {**entry_scores(results), "captions": n, "with_attention": with_attention, "flat": flat,
            "flat_rate": flat / with_attention if with_attention else 0.0,
            "pointed_words": len(hits), "pointing_game": float(np.mean(hits)) if hits else 0.0,
            "pointing_chance": float(np.mean(chance)) if chance else 0.0,
            "in_box_ratio_median": median(ratios) if ratios else 0.0,
            "unbacked": unbacked, "unbacked_rate": unbacked / n if n else 0.0}


def _cells_in(box: Sequence[float], gh: int, gw: int) -> np.ndarray:
    """(gh * gw,) whether each cell's centre lies in ``box`` (0..1 of the photo), row-major."""
    ys, xs = (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw
    x0, y0, x1, y1 = box
    return ((ys[:, None] >= y0) & (ys[:, None] <= y1) & (xs[None, :] >= x0) & (xs[None, :] <= x1)).ravel()


def entry_scores(results: Sequence[dict]) -> dict:
    """The honest figures (see the module's docstring): captions flat over the entries, and
    the pointing game and in-box ratio of the grid cells alone."""
    flat = with_attention = 0
    hits, chance, ratios = [], [], []
    for r in results:
        cells = r.get("attention")
        if not cells:
            continue
        with_attention += 1
        gh, gw = r["attention_grid"]
        boxes = r.get("boxes") or []
        on_boxes = r.get("attention_boxes") or [[] for _ in cells]
        entries = [np.concatenate([np.asarray(c, dtype=np.float64), np.asarray(b[:len(boxes)], dtype=np.float64)])
                   for c, b in zip(cells, on_boxes)]
        flat += all(e.max() <= EVEN / len(e) for e in entries)
        for position, category in named_objects(r["words"]):
            if position >= len(cells):
                continue
            inside = np.zeros(gh * gw, dtype=bool)
            for b in boxes:
                if b["category"] == category:
                    inside |= _cells_in(b["box"], gh, gw)
            share = inside.mean()
            if share == 0 or share == 1:
                continue
            weights = np.asarray(cells[position], dtype=np.float64)
            hits.append(float(inside[int(weights.argmax())]))
            chance.append(float(share))
            if weights.sum() > 0:
                ratios.append(float(weights[inside].sum() / weights.sum() / share))
    return {"flat_entries": flat, "cells_pointed_words": len(hits),
            "cells_pointing_game": float(np.mean(hits)) if hits else 0.0,
            "cells_pointing_chance": float(np.mean(chance)) if chance else 0.0,
            "cells_in_box_ratio_median": median(ratios) if ratios else 0.0}
