"""One typed bundle per batch of photos: everything the network reads of them, built once
(``Captioner.inputs_of`` at inference, ``batches.mixed_batch`` in training) and passed whole
to the network, the decoding and the loss, rather than as nine loose parameters.

    features (B, D) pooled  +  grid (B, L, D)      the encoder's (``encoders.py``)
    summary (B, 240)  +  regions (up to K boxes)   the COCO detector's (``detector.summary``, ``regions.py``)
    familiarity, text_world (B,)                   how like the training photos (``familiarity.py``)
    classified, concepts                           given instead of computed (training's text rows)
    objects_only (B,), swap (B, K)                 training's dropout and augmentation (``CaptionNetwork.context``)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from captioner.detector import Boxes, summary
from captioner.objects import ClassifiedObjects
from captioner.regions import Regions


@dataclass
class PhotoInputs:
    features: torch.Tensor
    grid: torch.Tensor | None = None
    summary: torch.Tensor | None = None  # the detector's summary of each photo (``detector.summary``)
    regions: Regions | None = None  # the boxes a word may look at besides the cells
    familiarity: torch.Tensor | None = None
    text_world: torch.Tensor | None = None
    classified: ClassifiedObjects | None = None  # the object words, when given rather than found
    concepts: torch.Tensor | None = None  # the concepts, when given rather than found
    objects_only: torch.Tensor | None = None  # rows described from their objects alone
    swap: torch.Tensor | None = None  # object words the copy scores see instead (training)

    @classmethod
    def of(cls, features: torch.Tensor, grid: torch.Tensor | None = None, boxes: Sequence[Boxes] | None = None,
           regions: int = 0) -> PhotoInputs:
        """The bundle of photos' encoder outputs and (models with the detector) their boxes:
        the summary of every photo, and its first ``regions`` boxes to look at."""
        device = features.device
        return cls(features, grid, None if boxes is None else summary(list(boxes)).to(device),
                   Regions.of(boxes, regions).to(device) if regions and boxes is not None else None)

    def __len__(self) -> int:
        return len(self.features)

    def with_(self, **changes) -> PhotoInputs:
        return replace(self, **changes)

    def rows(self, index: torch.Tensor) -> PhotoInputs:
        """These rows of every part (``index`` may repeat rows: self-critical training's samples)."""
        def pick(value):
            if value is None:
                return None
            if isinstance(value, ClassifiedObjects):
                return ClassifiedObjects(value.words[index.to(value.words.device)],
                                         value.probs[index.to(value.probs.device)])
            if isinstance(value, Regions):
                return value.select(index.to(value.boxes.device))
            return value[index.to(value.device)]

        return replace(self, **{f.name: pick(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> PhotoInputs:
        def move(value):
            if value is None:
                return None
            if isinstance(value, ClassifiedObjects):
                return ClassifiedObjects(value.words.to(device), value.probs.to(device))
            return value.to(device)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})
