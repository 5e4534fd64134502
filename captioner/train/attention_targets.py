"""Grounding as a training signal: where a training photo has a detector box of the object a
caption word names, the word's attention is pulled into it (attention supervision, Liu et
al. 2017; Zhou et al. 2020).

For the step that writes a word naming a COCO category (its synonyms, ``wordlists``; an
object slot counts as the object word it copies) in a photo whose regions hold a box of
that category, the targets are those boxes' entries and the grid cells whose centres lie
in them (the cell under the box's centre for a box too small to hold one). The loss is

    -log(attention on the targets)  -  log(attention on the target cells / attention on all cells)

so that both the whole map and the cells alone point at the object (a reader of the cells
alone sees it too).
"""

from __future__ import annotations

import torch

from captioner.regions import Regions


def cells_in_boxes(boxes: torch.Tensor, side: int) -> torch.Tensor:
    """(..., side * side) whether each cell's centre lies in each box (..., 4) (0..1 of the
    photo); a box holding no centre gets the cell under its own centre."""
    centres = (torch.arange(side, dtype=boxes.dtype, device=boxes.device) + 0.5) / side
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    inside = ((centres[None, :] >= x0) & (centres[None, :] <= x1) & (centres[:, None] >= y0) & (centres[:, None] <= y1))
    inside = inside.flatten(-2)
    cx = ((boxes[..., 0] + boxes[..., 2]) / 2 * side).long().clamp(0, side - 1)
    cy = ((boxes[..., 1] + boxes[..., 3]) / 2 * side).long().clamp(0, side - 1)
    own = torch.nn.functional.one_hot(cy * side + cx, side * side).bool()
    return torch.where(inside.any(-1, keepdim=True), inside, own)


def attention_targets(captions: torch.Tensor, regions: Regions, token_category: torch.Tensor, cells: int,
                      slot_category: torch.Tensor | None = None, first_slot: int | None = None) -> torch.Tensor:
    """(B, T-1, cells + K) bool: the entries each step's attention should fall on (none at a
    step whose word names nothing the photo's boxes hold). ``captions`` (B, T) hold
    ``<start> w1 .. wn <end>``; step t writes ``captions[:, t + 1]``. ``token_category`` (V,)
    the category of each vocabulary word; ``slot_category`` (B, slots) the category of each
    photo's object slots (their words)."""
    words = captions[:, 1:]
    category = token_category.to(words.device)[words.clamp(0, len(token_category) - 1)]
    if slot_category is not None and first_slot is not None:
        slot = (words - first_slot).clamp(0, slot_category.shape[1] - 1)
        category = torch.where(words >= first_slot, slot_category.gather(1, slot), category)
    side = int(round(cells ** 0.5))
    same = (regions.categories[:, None, :] == category[:, :, None]) & regions.mask[:, None, :]  # (B, T-1, K)
    same &= (category >= 0)[:, :, None]
    box_cells = cells_in_boxes(regions.boxes, side)  # (B, K, cells)
    target_cells = (same.float() @ box_cells.float()) > 0  # (B, T-1, cells)
    return torch.cat([target_cells, same], -1)


def attention_loss(weights: torch.Tensor, targets: torch.Tensor, cells: int) -> torch.Tensor:
    """The mean over supervised steps of the loss above (0 when no step is supervised);
    ``weights`` (B, T-1, cells + K) as the decoder's forward gives them."""
    supervised = targets.any(-1)
    if not bool(supervised.any()):
        return weights.sum() * 0.0
    w, t = weights[supervised], targets[supervised].to(weights.dtype)
    tiny = 1e-6
    whole = (w * t).sum(-1).clamp_min(tiny).log()
    on_cells = (w[:, :cells] * t[:, :cells]).sum(-1).clamp_min(tiny) / w[:, :cells].sum(-1).clamp_min(tiny)
    return -(whole + on_cells.log()).mean()
