"""Caption training's classifiers: what the frozen ImageNet classifier and the COCO detector
give every training photo (the encoder's objects, the detector's summary), the concept classifiers fitted on the
training photos' grids (``concepts.fit_concept_classifier``), and how text rows draw both:
the noise tables (``concepts.ConceptNoise``, ``batches.DetectorNoise``)."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from captioner.concepts import ConceptFit, ConceptNoise, concept_labels, concept_probabilities, fit_concept_classifier
from captioner.detector import summary as detector_summary
from captioner.model import Captioner
from captioner.train.batches import DetectorNoise, PhotoFindings, category_labels
from captioner.train.datasets import captions_by_image
from captioner.train.training_data import Data, Photos, photo_findings

log = logging.getLogger(__name__)


def fit_concepts(model: Captioner, train_grids, train_flipped, labels, weights, val_grids, coco_photo: torch.Tensor,
                 fit: ConceptFit):
    """The concept classifiers (on all training photos), the concepts the decoder trains on
    for each training photo (from classifiers that never saw it: two folds), and the noise
    of text rows (the scores of the fold classifiers on the photos they did not see: the last
    ``concept_photos`` photos are COCO's)."""
    classifier = fit_concept_classifier(train_grids, labels, train_flipped, weights, fit)
    model.network.concepts.load_state_dict(classifier.state_dict())
    fold = torch.arange(len(train_grids)) % 2 == 0
    concepts, flipped = torch.zeros(len(labels), labels.shape[1]), torch.zeros(len(labels), labels.shape[1])
    for part in (fold, ~fold):
        rest = ~part
        d = fit_concept_classifier(train_grids[rest], labels[rest], train_flipped[rest], weights[rest],
                                   replace(fit, seed=fit.seed + 1))
        concepts[part] = concept_probabilities(d, train_grids[part])
        flipped[part] = concept_probabilities(d, train_flipped[part])
    val_scores = concept_probabilities(classifier, val_grids)
    # how the classifiers score photos they never saw, per kind of photo: Flickr's (for Flickr30k's
    # text) and COCO's (for COCO's text), from the two folds, so the validation photos stay unused
    noise = {"": ConceptNoise(concepts, labels)}
    if bool(coco_photo.any()) and not bool(coco_photo.all()):
        noise["flickr"] = ConceptNoise(concepts[~coco_photo], labels[~coco_photo])
        noise["coco"] = ConceptNoise(concepts[coco_photo], labels[coco_photo])
    return concepts, flipped, noise, val_scores


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over concepts (with at least one positive) of the average precision."""
    aps = []
    for c in range(labels.shape[1]):
        y = labels[:, c][scores[:, c].argsort(descending=True)]
        if y.sum() == 0:
            continue
        precision = y.cumsum(0) / torch.arange(1, len(y) + 1)
        aps.append(float((precision * y).sum() / y.sum()))
    return sum(aps) / max(1, len(aps))


def training_findings(model: Captioner, data: Data, photos: Photos, *, concept_epochs: int, concept_photo_weight: float,
                      seed: int):
    """What the frozen classifier and detector give every training photo (objects, the COCO detector's
    summary), the concept classifiers fitted, and how text rows draw both (the noise tables).
    Returns (photo inputs, concept noise, detector noise, report)."""
    photo_inputs = photo_findings(model, photos.train_feats, photos.train_flipped)
    noise = boxes_noise = None
    is_coco = torch.tensor(["coco" in str(p) for p in data.train_images])
    if photos.train_boxes is not None:
        photo_inputs.summary = detector_summary(photos.train_boxes)
        labels = category_labels([captions_by_image(data.splits["train"])[p] for p in data.train_images])
        boxes_noise = {"coco": DetectorNoise(photo_inputs.summary[is_coco], labels[is_coco]),
                       "flickr": DetectorNoise(photo_inputs.summary[~is_coco], labels[~is_coco])}
        boxes_noise[""] = boxes_noise["coco"]
    report = {}
    if model.config.concepts:
        noise, report = concept_inputs(model, data, photos, photo_inputs, is_coco, epochs=concept_epochs,
                                       photo_weight=concept_photo_weight, seed=seed)
    return photo_inputs, noise, boxes_noise, report


def concept_inputs(model: Captioner, data: Data, photos: Photos, photo_inputs: PhotoFindings, is_coco, *,
                   epochs: int, photo_weight: float, seed: int):
    """Fit the concept classifiers on the training photos (COCO's weighted ``photo_weight``),
    give each training photo the concepts of the fold that did not see it; the noise tables
    and a report."""
    concept_words = model.concept_words
    concept_grid, concept_grid_flipped = photos.grids(data.concept_train)
    by_image = {**captions_by_image(data.splits["train"]), **captions_by_image(data.concept_splits["train"])}
    labels = concept_labels([by_image[p] for p in data.train_images + data.concept_train], concept_words)
    coco_photo = torch.cat([is_coco, torch.ones(len(data.concept_train), dtype=torch.bool)])
    weights = torch.where(coco_photo, photo_weight, 1.0)
    held = data.val_images + data.concept_val
    held_by_image = {**captions_by_image(data.splits["val"]), **captions_by_image(data.concept_splits["val"])}
    val_labels = concept_labels([held_by_image[p] for p in held], concept_words)
    held_grid = (torch.cat([photos.val_grid, photos.grids(data.concept_val)[0]]) if data.concept_val
                 else photos.val_grid)
    concepts, flipped, noise, held_scores = fit_concepts(
        model, torch.cat([photos.train_grid, concept_grid]),
        torch.cat([photos.train_grid_flipped, concept_grid_flipped]), labels, weights, held_grid, coco_photo,
        ConceptFit(epochs=epochs, seed=seed))
    n = len(data.train_images)
    photo_inputs.concepts, photo_inputs.flipped_concepts = concepts[:n], flipped[:n]
    report = {"concept_words": concept_words, "concept_map_validation": average_precision(held_scores, val_labels),
              "concept_noise": {source: table.summary(concept_words, ["man", "woman", "people", "person", "kitchen",
                                                                      "table", "street", "snow", "plate", "dog"])
                                for source, table in noise.items()}}
    log.info("concept classifiers: mean average precision %.3f on %d validation photos",
             report["concept_map_validation"], len(held))
    return noise, report
