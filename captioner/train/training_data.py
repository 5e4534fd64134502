"""Caption training's data: the captions and photos of a run (photo captions split by
image, more photos with captions for the concept classifiers and familiarity, captions
without photos, photos without captions), and what the frozen encoder and detectors give
each photo, read once from the caches."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from captioner.detector import DetectionCache
from captioner.encoders import build_encoder
from captioner.model import Captioner
from captioner.train.batches import PhotoFindings
from captioner.train.datasets import (
    DATASETS,
    CaptionRecord,
    own_fractions,
    read_dataset,
    read_text_sources,
    split_records,
    unique_images,
)
from captioner.train.features import FeatureCache
from captioner.train.losses import SentenceReward
from captioner.vocabulary import tokenize
from lstmkit.runtools import Timer, UserError, seed_everything

log = logging.getLogger(__name__)


def repeats_of(items: Sequence[str]) -> dict[str, int]:
    """``--repeat`` and ``--sample-repeat``'s KIND:N items as {kind: N}."""
    return {kind: int(n) for kind, n in (item.split(":") for item in items)}


def sampled_photos(images: list, records, sample_repeat: Sequence[str]) -> torch.Tensor:
    """Self-critical training's photos for an epoch, as indices into ``images`` (its training
    photos, in order): each once, or N times for a dataset named in ``sample_repeat`` (KIND:N)."""
    repeats = repeats_of(sample_repeat)
    kind = {r.image: r.dataset for r in records}
    return torch.tensor([i for i, image in enumerate(images) for _ in range(repeats.get(kind[image], 1))],
                        dtype=torch.long)


@dataclass
class DataProvenance:
    """Where a run's training data was, as the model's metadata records it (the training
    command's data flags, given one by one)."""

    datasets: Sequence[tuple[str, Path]]
    coco_split: str = "train2017"
    val_fraction: float = 0.07
    test_fraction: float = 0.13
    dataset_split: Sequence[str] = ()
    repeat: Sequence[str] = ()
    sample_repeat: Sequence[str] = ()
    text_captions: Sequence[str] = ()
    reward_captions: Sequence[str] = ()
    concept_photos: Sequence[str] = ()
    concept_val_fraction: float = 0.4
    unpaired_photos: Sequence[Path] = ()

    def to_dict(self) -> dict:
        return {"datasets": [[kind, str(Path(root).resolve())] for kind, root in self.datasets],
                "coco_split": self.coco_split, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "dataset_split": list(self.dataset_split), "repeat": list(self.repeat),
                "sample_repeat": list(self.sample_repeat), "text_captions": list(self.text_captions),
                "reward_captions": list(self.reward_captions), "concept_photos": list(self.concept_photos),
                "concept_val_fraction": self.concept_val_fraction,
                "unpaired_photos": [str(Path(p).resolve()) for p in self.unpaired_photos]}


def load_records(datasets: Sequence[tuple[str, Path]], *, coco_split: str, val_fraction: float,
                 test_fraction: float, dataset_split: Sequence[str] = (), repeat: Sequence[str] = (),
                 dry_run: bool = False) -> dict[str, list[CaptionRecord]]:
    """The photo captions of ``datasets`` ((kind, root) pairs), each record knowing its kind,
    split by image into train, val and test: each dataset by its own fractions
    (``dataset_split``, KIND:VAL:TEST) or by ``val_fraction`` and ``test_fraction``; the
    training captions of a dataset named in ``repeat`` (KIND:N) N times."""
    repeats = repeats_of(repeat)
    fractions = own_fractions(dataset_split)
    splits = {"train": [], "val": [], "test": []}
    for kind, root in datasets:
        found = read_dataset(kind, root, coco_split)  # the reader reports skipped captions
        records = [replace(r, dataset=kind) for r in found.records]
        for name, part in split_records(records, *fractions.get(kind, (val_fraction, test_fraction)),
                                        given=found.splits).items():
            splits[name] += part * (repeats.get(kind, 1) if name == "train" else 1)
    if not splits["train"] and not splits["val"]:
        raise UserError("the datasets hold no captions with images")
    if dry_run:
        train_images = unique_images(splits["train"])[:16]
        val_images = set(unique_images(splits["val"])[:8])
        splits = {"train": [r for r in splits["train"] if r.image in set(train_images)],
                  "val": [r for r in splits["val"] if r.image in val_images], "test": []}
    if not splits["train"] or not splits["val"]:
        raise UserError("too few images to carve a validation split; lower --val-fraction or add data")
    return splits


def parse_source(item: str, kinds: tuple[str, ...], flag: str) -> tuple[str, Path]:
    kind, _, root = item.partition(":")
    if kind not in kinds or not root:
        raise UserError(f"{flag} takes KIND:ROOT with KIND one of {', '.join(kinds)}, not {item!r}")
    return kind, Path(root)


def load_text_captions(sources: Sequence[str], dry_run: bool = False,
                       flag: str = "--text-captions") -> dict[str, list[str]]:
    """Captions of photos that are not here, keyed by source and photo name."""
    try:
        return read_text_sources(sources, 16 if dry_run else None)
    except ValueError as err:
        raise UserError(f"{flag}: {err}") from err


def family_of(kind: str) -> str:
    """A dataset's family, whose captions weigh the reward's words: flickr8k's is flickr,
    every COCO part's coco (the kinds of ``--reward-captions``); any other kind is a family
    of its own."""
    return "flickr" if kind.startswith("flickr") else "coco" if kind.startswith("coco") else kind


def reward_corpora(sources: Sequence[str], dry_run: bool = False) -> dict[str, dict[str, list[list[str]]]]:
    """``--reward-captions``: captions of photos that are not here (KIND:PATH[:MAX_PHOTOS]),
    tokenised, by family (the source's kind) and photo name."""
    corpora: dict[str, dict[str, list[list[str]]]] = {}
    for key, captions in load_text_captions(sources, dry_run, "--reward-captions").items():
        family, name = key.split(":", 1)
        corpora.setdefault(family, {})[name] = [tokenize(c) for c in captions]
    return corpora


def self_critical_reward(refs: list[list[list[str]]], images: list[Path], data: Data, sources: Sequence[str],
                         dry_run: bool = False, unsupported: float = 0.0) -> SentenceReward:
    """Self-critical training's reward over its photos (``images``, their tokenised ``refs``):
    with ``--reward-captions`` (``sources``), each photo's words weighed by its family's
    captions (``data``'s training captions know each photo's dataset). A corpus photo that
    is also a training photo (by file name) is left out: its captions count once.
    ``unsupported``: taken off the reward for each action no reference of the photo states
    (``SentenceReward.unsupported_actions``)."""
    kind = {r.image: r.dataset for r in data.splits["train"]}
    here = {image.name for image in images}
    corpora = {family: [caps for name, caps in photos.items() if name not in here]
               for family, photos in reward_corpora(sources, dry_run).items()}
    return SentenceReward(refs, [family_of(kind[i]) for i in images], corpora, unsupported)


def load_concept_photos(sources: Sequence[str], *, coco_split: str, val_fraction: float,
                        dry_run: bool = False) -> dict[str, list[CaptionRecord]]:
    """More photos with captions (``sources``: KIND:ROOT), split by image into train and val."""
    records: list[CaptionRecord] = []
    for item in sources:
        kind, root = parse_source(item, DATASETS, "--concept-photos")
        records += read_dataset(kind, root, coco_split).records
    splits = split_records(records, val_fraction, 0.0)
    if dry_run:
        for name in ("train", "val"):
            keep = set(unique_images(splits[name])[:6])
            splits[name] = [r for r in splits[name] if r.image in keep]
    return splits


def unpaired_photos(folders: Sequence[Path], dry_run: bool = False) -> list[Path]:
    """The photos (jpg, png) in these folders, each folder's sorted by name."""
    photos = []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"--unpaired-photos: no folder at {folder}")
        photos += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return photos[:12] if dry_run else photos


@dataclass
class Data:
    """The captions and photos of a run: photo captions split by image (train, val, test, and
    for a fine-tune, gate), more COCO photos for the concept classifiers and familiarity,
    captions without photos, photos without captions."""

    splits: dict[str, list[CaptionRecord]]
    concept_splits: dict[str, list[CaptionRecord]]
    text: dict[str, list[str]]
    unpaired: list[Path]

    def __post_init__(self):
        self.train_images, self.val_images = unique_images(self.splits["train"]), unique_images(self.splits["val"])
        self.gate_images = unique_images(self.splits.get("gate", []))  # a fine-tune's gate photos (finetune.py)
        self.concept_train = unique_images(self.concept_splits["train"])
        self.concept_val = unique_images(self.concept_splits["val"])
        self.train_captions = [r.caption for r in self.splits["train"] + self.concept_splits["train"]]
        self.text_captions = [c for captions in self.text.values() for c in captions]


@dataclass
class Photos:
    """What the frozen encoder and the detector give each photo, read from the caches."""

    pooled: Callable
    grids: Callable
    train_feats: torch.Tensor
    train_flipped: torch.Tensor
    val_feats: torch.Tensor
    train_grid: torch.Tensor | None
    train_grid_flipped: torch.Tensor | None
    val_grid: torch.Tensor | None
    train_boxes: list | None
    val_boxes: list | None
    encoder: object
    boxes: Callable | None = None  # paths -> the detector's boxes of each (with the detector)

    def to(self, device, grids: bool) -> None:
        """The fp16 features on the training device (all of COCO's fit a GPU: 2 x 83k x 2048 x
        2 bytes); ``grids`` False: the grids served the concept classifiers only, and go."""
        self.train_feats, self.train_flipped, self.val_feats = (t.to(device) for t in (
            self.train_feats, self.train_flipped, self.val_feats))
        if self.train_grid is not None:
            self.train_grid, self.train_grid_flipped, self.val_grid = (t.to(device) for t in (
                self.train_grid, self.train_grid_flipped, self.val_grid))
        if not grids:
            self.train_grid = self.train_grid_flipped = self.val_grid = None


@dataclass(frozen=True)
class Extraction:
    """What ``extract_features`` computes, and where it keeps it."""

    encoder_name: str
    encoder_weights: str | None
    cache_dir: Path
    needs_grid: bool
    workers: int
    detector: bool
    seed: int


def extract_features(data: Data, dist, timer: Timer, extraction: Extraction) -> Photos:
    """Every photo's feature (and grid, if ``needs_grid``) through the frozen encoder, once
    into the cache (rank 0 extracts, the others read), and (``detector``) the detector's
    boxes of the photo rows. Reseeds every generator with ``seed`` + rank after."""
    x = extraction
    encoder_name, encoder_weights, cache_dir = x.encoder_name, x.encoder_weights, x.cache_dir
    needs_grid, workers, detector, seed = x.needs_grid, x.workers, x.detector, x.seed
    encoder = build_encoder(encoder_name, encoder_weights, device=dist.device)
    pooled_cache = FeatureCache(cache_dir, encoder)
    grid_cache = FeatureCache(cache_dir, encoder, grid=True, pooled_too=pooled_cache)
    every = data.train_images + data.val_images + data.gate_images + data.concept_train + data.concept_val + \
        data.unpaired
    if dist.main:
        (grid_cache if needs_grid else pooled_cache).get(every, num_workers=workers)
    dist.barrier()

    def pooled(paths):
        return pooled_cache.get(paths, progress=False)

    def grids(paths):
        return grid_cache.get(paths, progress=False) if needs_grid else (None, None)

    train_feats, train_flipped = pooled(data.train_images)
    train_grid, train_grid_flipped = grids(data.train_images)
    photos = Photos(pooled, grids, train_feats, train_flipped, pooled(data.val_images)[0], train_grid,
                    train_grid_flipped, grids(data.val_images)[0], None, None, encoder)
    log.info("features ready after %.0fs: %d train and %d validation images", timer(), len(data.train_images),
             len(data.val_images))
    if detector:  # every rank detects what rank 0 cached
        boxes_cache = DetectionCache(cache_dir)
        photos.train_boxes, photos.val_boxes = boxes_cache.get(data.train_images), boxes_cache.get(data.val_images)
        photos.boxes = functools.partial(boxes_cache.get, progress=False)
        log.info("detections ready after %.0fs", timer())
    seed_everything(seed + dist.rank)  # extracting draws random numbers (DataLoader seeds); reading does not
    return photos


def photo_findings(model: Captioner, feats: torch.Tensor, flipped: torch.Tensor) -> PhotoFindings:
    """The frozen object detector's output on every training photo and its mirror image."""
    empty = torch.zeros(len(feats), max(1, model.config.object_slots))
    if model.network.objects is None:
        return PhotoFindings(empty.long(), empty, empty.long(), empty)
    with torch.no_grad():
        a = [model.network.objects(feats[i:i + 1024].float()) for i in range(0, len(feats), 1024)]
        b = [model.network.objects(flipped[i:i + 1024].float()) for i in range(0, len(feats), 1024)]
    cat = lambda ds, f: torch.cat([getattr(d, f) for d in ds])  # noqa: E731
    return PhotoFindings(cat(a, "words"), cat(a, "probs"), cat(b, "words"), cat(b, "probs"))
