"""How much a photo resembles the photos the captioner was trained on.

A caption can only be as good as the model's experience of photos like this one. The
score is the nearest-neighbour out-of-distribution test of Sun et al. (2022), made into a
calibrated number:

1. the photo's encoder feature is L2-normalised and projected onto the top ``dim``
   right singular vectors of the (normalised) training features. The projection is not
   normalised again: a photo unlike the training photos has most of its feature outside
   that subspace, and a short projection;
2. its similarity ``s`` is the mean dot product with its ``k`` nearest training photos
   (projected the same way): their cosine similarity, up to what the projection drops;
3. ``familiarity = (1 + #{held-out photos with similarity <= s}) / (n + 1)``, a conformal
   p-value against ``n`` held-out photos from the training distribution (the validation
   split): a photo as typical as the typical held-out photo scores about 0.5. Below the
   least similar held-out photo the score falls on linearly, ``s / s_min / (n + 1)``, so
   the farthest photos still differ.

So ``familiarity < 0.01`` says: fewer than 1% of photos like the training photos look this
unlike them. Measured with EfficientNet-Lite0 on Flickr8k (``dim`` 128, ``k`` 5): 0.5% of
held-out Flickr8k test photos score below 0.01; a Hubble deep field, a microscope slide,
a retina scan, a page of text all do. Projecting and then normalising again (the usual
PCA whitening) let the Hubble image through at 0.05. Everything lives in buffers, saved
with the captioner's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Familiarity(nn.Module):
    def __init__(self, feature_dim: int, dim: int, references: int, calibration: int, k: int = 5,
                 worlds: bool = False):
        super().__init__()
        self.k = k
        if worlds:  # 1 for a reference photo whose kind of scene the captioner knows from caption text alone
            self.register_buffer("world", torch.zeros(references))
        else:
            self.world = None
        self.register_buffer("basis", torch.zeros(feature_dim, dim))
        self.register_buffer("reference", torch.zeros(references, dim))
        self.register_buffer("calibration", torch.zeros(calibration))  # sorted similarities

    @classmethod
    @torch.no_grad()
    def fit(cls, train: torch.Tensor, held_out: torch.Tensor, dim: int = 128, k: int = 5,
            text_world: torch.Tensor | None = None) -> Familiarity:
        """Reference photos ``train`` (N, D) and calibration photos ``held_out`` (M, D)
        (never the same photos); ``text_world`` (N,) bool: the references whose kind of
        scene is known from caption text alone."""
        dim = min(dim, *train.shape)
        _, _, v = torch.linalg.svd(F.normalize(train.float(), dim=1), full_matrices=False)
        model = cls(train.shape[1], dim, len(train), len(held_out), k, worlds=text_world is not None)
        if text_world is not None:
            model.world.copy_(text_world.float())
        model.basis.copy_(v[:dim].T)
        model.reference.copy_(model._project(train))
        model.calibration.copy_(model.similarity(held_out).sort().values)
        return model

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=1) @ self.basis.float()

    def _nearest(self, features: torch.Tensor):
        sims = self._project(features) @ self.reference.float().T
        return sims.topk(min(self.k, sims.shape[1]), dim=1)

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B,) mean similarity to the k nearest reference photos."""
        return self._nearest(features).values.mean(1)

    def text_world(self, features: torch.Tensor) -> torch.Tensor | None:
        """(B, D) -> (B,): the share of the k nearest reference photos whose kind of scene
        is known from caption text alone (None without that record)."""
        return self.score(features)[1]

    def score(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, D) -> familiarity (B,) and the text world's share of the neighbours (B,) or
        None, from one nearest-neighbour search."""
        nearest = self._nearest(features)
        world = None if self.world is None else self.world.float()[nearest.indices].mean(1)
        return self._p_value(nearest.values.mean(1)), world

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B,) familiarity in [0, 1]."""
        return self._p_value(self.similarity(features))

    def _p_value(self, s: torch.Tensor) -> torch.Tensor:
        calibration = self.calibration.float().contiguous()
        s = s.contiguous()
        n = len(calibration) + 1.0
        p_value = (1.0 + torch.searchsorted(calibration, s, right=True).float()) / n
        tail = (s / calibration[0]).clamp(0.0, 1.0) / n  # below every held-out photo
        return torch.where(s < calibration[0], tail, p_value)
