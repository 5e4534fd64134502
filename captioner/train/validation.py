"""Caption training's validation: the teacher-forced loss and the scores of the model's
captions, each epoch. The validation photos are captioned by one loop
(``caption_photos``), whether for ``validate`` or for ``scores_on``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from captioner.decoder import packed_targets
from captioner.detector import summary as detector_summary
from captioner.inputs import PhotoInputs
from captioner.model import Captioner
from captioner.train.batches import CaptionTable
from captioner.train.metrics import caption_scores


def caption_photos(model: Captioner, features: torch.Tensor, grid: torch.Tensor | None, beam_size: int | None,
                   batch_size: int = 256, boxes: list | None = None) -> list:
    """The model's captions (``caption_features`` results) of these photos' features (and
    grids and COCO detections), ``batch_size`` photos at a time."""
    results = []
    for start in range(0, len(features), batch_size):
        part = slice(start, start + batch_size)
        results += model.caption_features(features[part].float(), beam_size=beam_size,
                                          grid=None if grid is None else grid[part].float(),
                                          boxes=None if boxes is None else boxes[part])
    return results


@torch.no_grad()
def validate(model: Captioner, table: CaptionTable, features, refs: dict[str, list[str]], beam_size: int,
             grid: torch.Tensor | None = None, batch_size: int = 256, boxes: list | None = None) -> dict[str, float]:
    """Validation loss (teacher forcing), and the scores of beam-search captions: BLEU-4
    and CIDEr as the test report computes them (``metrics.caption_scores``), and the
    object-mention F1. ``boxes``: each photo's COCO detections (models with the detector)."""
    model.network.eval()
    total, count = 0.0, 0
    no_flip = torch.zeros(len(table), dtype=torch.bool)
    for start in range(0, len(table), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(table)))
        feats, caps, lengths, grids = table.batch(rows, no_flip[rows], features, features, grid, grid)
        summaries = None
        if boxes is not None and model.config.detector:
            summaries = detector_summary([boxes[i] for i in table.image[rows].tolist()]).to(feats.device)
        logits, _ = model.network(PhotoInputs(feats, grids, summaries), caps, lengths)
        targets = packed_targets(caps, lengths)
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
    results = caption_photos(model, features, grid, beam_size, batch_size, boxes)
    predictions = {image: r.caption for image, r in zip(refs, results)}
    scores = caption_scores(refs, predictions, meteor=False)
    return {"val_loss": total / count, "val_bleu4": scores["BLEU-4"], "val_cider": scores["CIDEr"],
            "val_object_f1": scores["object_f1"]}


def scores_on(model: Captioner, features: torch.Tensor, grid: torch.Tensor | None, refs: dict[str, list[str]],
              beam_size: int | None = None, batch_size: int = 256, boxes: list | None = None) -> dict[str, float]:
    """Caption scores (BLEU, ROUGE-L, CIDEr, object mentions, CHAIR) of the model's
    captions of these photos, in the order of ``refs``."""
    results = caption_photos(model, features, grid, beam_size, batch_size, boxes)
    return caption_scores(refs, {image: r.caption for image, r in zip(refs, results)}, meteor=False)


def coco_metrics(scores: dict) -> dict:
    """The COCO validation photos' scores as the training loop's metrics."""
    return {"val_coco_bleu4": scores["BLEU-4"], "val_coco_cider": scores["CIDEr"],
            "val_coco_object_f1": scores["object_f1"], "val_coco_chair_s": scores["CHAIR_s"],
            "val_coco_person_in_people_free": scores["person_in_people_free"]}


def coco_part_scores(model: Captioner, photos, images: list, coco: list[int], refs: dict[str, list[str]],
                     beam_size: int) -> dict:
    """``coco_metrics`` of the COCO photos among the validation photos (``coco``: their
    places in ``images``; ``photos``: ``training_data.Photos``), read apart from the rest."""
    keep = torch.tensor(coco)
    scores = scores_on(model, photos.val_feats[keep.to(photos.val_feats.device)],
                       None if photos.val_grid is None else photos.val_grid[keep.to(photos.val_grid.device)],
                       {str(images[i]): refs[str(images[i])] for i in coco}, beam_size=beam_size,
                       boxes=None if photos.val_boxes is None else [photos.val_boxes[i] for i in coco])
    return coco_metrics(scores)
