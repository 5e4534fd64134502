"""Regions: the detector's boxes as things a word can look at (Up-Down, Anderson et al. 2018).

A decoder with ``CaptionerConfig.regions = K`` attends, at every word, over the grid's
cells and over up to K of the photo's boxes: the boxes a result shows (score >= 0.5,
``results.DETECTED``), best first, so that ``attention_boxes`` lines up with ``boxes``.
A box's entry is its feature pooled from the encoder's grid with ``torchvision.ops.roi_align``
(bilinear, 2x2 samples, averaged), plus its category and its place (x0, y0, x1, y1, area,
score), each projected to the grid's width (``network.CaptionNetwork``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captioner.detector import Boxes

REGION_SCORE = 0.5
GEOMETRY = 6  # x0, y0, x1, y1, area, score


@dataclass
class Regions:
    """Up to K boxes per photo: ``boxes`` (B, K, 4) in 0..1 of the photo, ``categories``
    (B, K), ``scores`` (B, K), ``mask`` (B, K) True where a photo has that box."""

    boxes: torch.Tensor
    categories: torch.Tensor
    scores: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, photos: Sequence[Boxes], most: int, min_score: float = REGION_SCORE) -> Regions:
        n = len(photos)
        boxes, scores = torch.zeros(n, most, 4), torch.zeros(n, most)
        categories, mask = torch.zeros(n, most, dtype=torch.long), torch.zeros(n, most, dtype=torch.bool)
        for i, p in enumerate(photos):
            keep = p.scores >= min_score
            k = min(most, int(keep.sum()))
            if k:
                boxes[i, :k] = torch.from_numpy(p.boxes[keep][:k].astype("float32")).clamp(0, 1)
                categories[i, :k] = torch.from_numpy(p.categories[keep][:k].astype("int64"))
                scores[i, :k] = torch.from_numpy(p.scores[keep][:k].astype("float32"))
                mask[i, :k] = True
        return cls(boxes, categories, scores, mask)

    @classmethod
    def none(cls, rows: int, most: int) -> Regions:
        return cls(torch.zeros(rows, most, 4), torch.zeros(rows, most, dtype=torch.long), torch.zeros(rows, most),
                   torch.zeros(rows, most, dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.mask)

    def to(self, device) -> Regions:
        return Regions(*(t.to(device) for t in (self.boxes, self.categories, self.scores, self.mask)))

    def select(self, rows: torch.Tensor) -> Regions:
        return Regions(self.boxes[rows], self.categories[rows], self.scores[rows], self.mask[rows])

    @staticmethod
    def cat(parts: Sequence[Regions]) -> Regions:
        return Regions(*(torch.cat([getattr(p, f) for p in parts]) for f in ("boxes", "categories", "scores", "mask")))

    def geometry(self) -> torch.Tensor:
        """(B, K, 6): each box's corners, area and score."""
        wh = (self.boxes[..., 2:] - self.boxes[..., :2]).clamp_min(0)
        return torch.cat([self.boxes, (wh[..., :1] * wh[..., 1:]), self.scores[..., None]], -1)


def pooled(grid: torch.Tensor, regions: Regions) -> torch.Tensor:
    """(B, K, D): each box's feature, ``roi_align`` over the square grid (B, cells, D)."""
    from torchvision.ops import roi_align

    b, cells, d = grid.shape
    side = int(round(cells ** 0.5))
    fmap = grid.float().transpose(1, 2).reshape(b, d, side, side)
    k = regions.mask.shape[1]
    index = torch.arange(b, device=grid.device, dtype=fmap.dtype).repeat_interleave(k)[:, None]
    rois = torch.cat([index, regions.boxes.reshape(-1, 4).to(fmap.dtype) * side], 1)
    out = roi_align(fmap, rois, output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out.mean((2, 3)).view(b, k, d)
