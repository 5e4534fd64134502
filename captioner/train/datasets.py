"""Caption datasets: COCO-format json (through pycocotools) and the Flickr8k CSV.

Both readers yield the same ``CaptionRecord(image, caption)`` records. Captions whose image
file is missing are skipped and counted. Splits are by image, deterministic, and do not
depend on the order of the files: an image's split follows from a hash of its name.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionRecord:
    image: Path
    caption: str
    dataset: str = ""  # the kind it was read as (training_data.load_records sets it): two kinds may share a folder


@dataclass
class CaptionSet:
    """Records from one source, with how many captions were skipped for a missing image."""

    records: list[CaptionRecord]
    skipped: int = 0
    splits: dict[Path, str] | None = None  # each image's split, where the dataset defines its own (Karpathy's)

    @property
    def images(self) -> list[Path]:
        return unique_images(self.records)


def read_coco(captions_json: str | Path, images_dir: str | Path) -> CaptionSet:
    """A COCO ``captions_*.json`` and the folder of its images."""
    from pycocotools.coco import COCO

    captions_json, images_dir = Path(captions_json), Path(images_dir)
    if not captions_json.is_file():
        raise FileNotFoundError(f"no COCO captions file at {captions_json}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(captions_json))
    records, skipped = [], 0
    present = _listing(images_dir)
    for image_id in sorted(coco.getImgIds()):
        file_name = coco.loadImgs(image_id)[0]["file_name"]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if file_name not in present:
            skipped += len(annotations)
            continue
        records += [CaptionRecord(images_dir / file_name, a["caption"].strip()) for a in annotations]
    _report(captions_json, records, skipped)
    return CaptionSet(records, skipped)


KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(dataset_json: str | Path, root: str | Path) -> CaptionSet:
    """Karpathy's split of COCO 2014 (``dataset_coco.json``, as every COCO captioning paper
    since 2015 uses it: 113,287 train + restval, 5,000 val, 5,000 test images): each image
    at ``root/<filepath>/<filename>``, its split from its ``split`` field (restval trains),
    its captions the ``raw`` sentences."""
    import json

    dataset_json, root = Path(dataset_json), Path(root)
    if not dataset_json.is_file():
        raise FileNotFoundError(f"no Karpathy split file at {dataset_json} (dataset_coco.json, from "
                                "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip)")
    data = json.loads(dataset_json.read_text(encoding="utf-8"))
    records, splits, skipped = [], {}, 0
    listings: dict[str, set[str]] = {}
    for image in data["images"]:
        folder = image.get("filepath", "")
        if folder not in listings:
            listings[folder] = _listing(root / folder)
        sentences = [s["raw"].strip() for s in image.get("sentences", []) if s.get("raw", "").strip()]
        if image["filename"] not in listings[folder]:
            skipped += len(sentences)
            continue
        path = root / folder / image["filename"]
        splits[path] = KARPATHY_SPLITS.get(image.get("split", "train"), "train")
        records += [CaptionRecord(path, s) for s in sentences]
    _report(dataset_json, records, skipped)
    return CaptionSet(records, skipped, splits)


def read_csv_captions(captions_csv: str | Path, images_dir: str | Path) -> CaptionSet:
    """A folder of photos and a CSV of their captions whose header is ``image,caption`` (one
    row per caption, the image by its file name in ``images_dir``): Flickr8k's
    ``captions.txt`` and ``Images/``, or anyone's own photos (``--dataset csv``). Captions of
    photos that are not in the folder are skipped and counted."""
    captions_csv, images_dir = Path(captions_csv), Path(images_dir)
    if not captions_csv.is_file():
        raise FileNotFoundError(f"no captions file at {captions_csv}")
    present = _listing(images_dir)
    records, skipped = [], 0
    for name, caption in _csv_captions(captions_csv):
        if name not in present:
            skipped += 1
            continue
        records.append(CaptionRecord(images_dir / name, caption))
    _report(captions_csv, records, skipped)
    return CaptionSet(records, skipped)


def _csv_captions(path: Path) -> Iterable[tuple[str, str]]:
    """(image name, caption) of a CSV whose header is ``image,caption`` (commas in captions kept)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise ValueError(f"{path} must be a CSV whose header is 'image,caption'")
        for row in reader:
            if len(row) >= 2 and ",".join(row[1:]).strip():
                yield row[0].strip(), ",".join(row[1:]).strip()


def read_dataset(kind: str, root: str | Path, coco_split: str = "train2017") -> CaptionSet:
    """A dataset by kind and root folder, in its usual layout:
    ``flickr8k``: ``root/captions.txt`` and ``root/Images/``; ``csv``: your own photos,
    ``root/captions.csv`` (header ``image,caption``) and the photos in ``root/images/`` (or
    in ``root`` itself when it has no ``images`` folder);
    ``coco``: ``root/annotations/captions_<split>.json`` and ``root/<split>/`` (COCO's
    official caption files); ``coco-karpathy``: ``root/dataset_coco.json`` and the images at
    ``root/<filepath>/<filename>`` (``read_karpathy``); ``corrections``: a feedback folder as
    the app writes it (``feedback.read_corrections``)."""
    root = Path(root)
    if kind == "flickr8k":
        return read_csv_captions(root / "captions.txt", root / "Images")
    if kind == "csv":
        return read_csv_captions(root / "captions.csv", root / "images" if (root / "images").is_dir() else root)
    if kind == "coco-karpathy":
        return read_karpathy(root / "dataset_coco.json", root)
    if kind == "coco":
        return read_coco(root / "annotations" / f"captions_{coco_split}.json", root / coco_split)
    if kind == "corrections":  # the corrections people saved in the app (feedback.py)
        from captioner.feedback import read_corrections

        return CaptionSet([CaptionRecord(photo, caption) for photo, caption in read_corrections(root)])
    if kind in PAIRED:  # the local copies of COCO photos with their captions (../shared/data/coco_captions)
        return read_coco(root / "annotations" / f"captions_{PAIRED[kind]}_paired.json", root / PAIRED[kind])
    raise ValueError(f"unknown dataset {kind!r}; use {', '.join(DATASETS)}")


# coco_val2017: photos the COCO detector never trained on (it trained on train2017, which holds the others);
# coco_extra: 830 more COCO photos (none of them in val2017), most of them the detector's training photos
PAIRED = {"coco_paired": "val2014", "coco_val2017": "val2017", "coco_train2014": "train2014", "coco_extra": "extra"}
DATASETS = ("coco", "coco-karpathy", "flickr8k", "csv", *PAIRED, "corrections")
TEXT_SOURCES = ("coco", "flickr")


def read_caption_text(kind: str, path: str | Path) -> dict[str, list[str]]:
    """Captions of photos that are not here: photo name -> its captions. ``coco``: a COCO
    captions json (images need not exist); ``flickr``: a CSV ``image,caption`` (Flickr30k's
    layout, Flickr8k's too)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no caption file at {path}")
    grouped: dict[str, list[str]] = {}
    if kind == "coco":
        import json

        data = json.loads(path.read_text(encoding="utf-8"))
        names = {image["id"]: image["file_name"] for image in data["images"]}
        for a in data["annotations"]:
            if a["image_id"] in names and a["caption"].strip():
                grouped.setdefault(names[a["image_id"]], []).append(a["caption"].strip())
    elif kind == "flickr":
        for name, caption in _csv_captions(path):
            grouped.setdefault(name, []).append(caption)
    else:
        raise ValueError(f"unknown caption text {kind!r}; use {' or '.join(TEXT_SOURCES)}")
    log.info("%s: %d captions of %d photos (text only)", path, sum(map(len, grouped.values())), len(grouped))
    return grouped


def split_of(image: Path, val_fraction: float, test_fraction: float = 0.0) -> str:
    """``train``, ``val`` or ``test`` for an image, from a hash of its file name alone."""
    bucket = int(hashlib.sha1(image.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


def own_fractions(items: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``KIND:VAL:TEST`` items (``--dataset-split``) -> each dataset's (validation, test) fractions."""
    fractions = {}
    for item in items:
        kind, val, test = item.split(":")
        fractions[kind] = (float(val), float(test))
    return fractions


def split_records(records: Iterable[CaptionRecord], val_fraction: float = 0.07,
                  test_fraction: float = 0.13, given: dict[Path, str] | None = None) -> dict[str, list[CaptionRecord]]:
    """Deterministic train/val/test split by image (never by caption); ``given``: the
    dataset's own split of each image (Karpathy's), used instead of the hash."""
    splits: dict[str, list[CaptionRecord]] = {"train": [], "val": [], "test": []}
    for record in records:
        split = given[record.image] if given else split_of(record.image, val_fraction, test_fraction)
        splits[split].append(record)
    return splits


def unique_images(records: Sequence[CaptionRecord]) -> list[Path]:
    return list(dict.fromkeys(r.image for r in records))


def captions_by_image(records: Iterable[CaptionRecord]) -> dict[Path, list[str]]:
    grouped: dict[Path, list[str]] = {}
    for r in records:
        grouped.setdefault(r.image, []).append(r.caption)
    return grouped


def _listing(images_dir: Path) -> set[str]:
    if not images_dir.is_dir():
        raise FileNotFoundError(f"no image folder at {images_dir}")
    return {p.name for p in images_dir.iterdir()}


def _report(source: Path, records: list, skipped: int) -> None:
    if skipped:
        log.warning("%s: skipped %d captions whose image is missing", source, skipped)
    log.info("%s: %d captions of %d images", source, len(records), len({r.image for r in records}))


def text_source(item: str) -> tuple[str, Path, int]:
    """``KIND:PATH[:MAX_PHOTOS]`` -> (kind, path, at most this many photos, 0 for all)."""
    kind, _, rest = item.partition(":")
    path, _, limit = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "0")
    if kind not in TEXT_SOURCES or not path:
        raise ValueError(f"a caption text source is KIND:PATH[:MAX_PHOTOS] with KIND one of "
                         f"{', '.join(TEXT_SOURCES)}, not {item!r}")
    return kind, Path(path), int(limit)


def read_text_sources(items: Sequence[str], photos_each: int | None = None) -> dict[str, list[str]]:
    """Captions of every ``KIND:PATH[:MAX_PHOTOS]`` source, keyed ``kind:photo`` (the first
    photos by name where a source is limited, or ``photos_each``)."""
    grouped: dict[str, list[str]] = {}
    for item in items:
        kind, path, limit = text_source(item)
        captions = read_caption_text(kind, path)
        names = sorted(captions)[:limit or None][:photos_each]
        grouped.update({f"{kind}:{name}": captions[name] for name in names})
    return grouped
