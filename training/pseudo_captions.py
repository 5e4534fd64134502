"""Caption photos that have no captions with a trained model, and keep the ones it is surest
of as training captions: the pseudo-labels of semi-supervised captioning (SD-FSIC, Chen et
al. 2021, trains on them beside the paired photos).

    python -m training.pseudo_captions --checkpoint checkpoints/captioner.safetensors \\
        --images ../shared/data/coco_captions/unpaired_train2014 --out runs/pseudo [--keep 0.5]

Every photo is captioned under the checkpoint's own decoding (its rules, grounding and
backing: no broken sentence, no person the detector does not see); the ``--keep`` share of
them with the highest length-normalised log-probability, and at least ``--min-words`` words,
are written as a COCO captions file, ``OUT/annotations/captions_pseudo.json``, with the photos
linked into ``OUT/pseudo/``. Train on them beside the paired data with

    --dataset coco --data-root runs/pseudo --coco-split pseudo --dataset-split coco:0:0

(all of them training photos: a pseudo-caption is never a reference to score against).
``OUT/pseudo_captions.json`` lists every photo's caption and score, kept or not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from captioner.model import Captioner
from lstmkit.checkpoint import atomic_write_text
from lstmkit.images import ImageError, load_image
from lstmkit.runtools import UserError, cli

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


def caption_photos(model: Captioner, photos: list[Path], batch_size: int = 16) -> list[dict]:
    """Each readable photo's caption and its score (mean log-probability per word, as the search ranks)."""
    rows = []
    for first in range(0, len(photos), batch_size):
        batch, images = photos[first:first + batch_size], []
        for path in batch:
            try:
                images.append((path, load_image(path)))
            except ImageError as err:
                print(f"{path}: skipped: {err}", file=sys.stderr)
        for (path, _), result in zip(images, model.caption([im for _, im in images])):
            rows.append({"photo": str(path), "caption": result.caption, "score": result.score,
                         "words": len(result.words)})
    return rows


def choose(rows: list[dict], keep: float, min_words: int) -> list[dict]:
    """The ``keep`` share of all rows with the highest scores, among those of ``min_words`` words or more."""
    ranked = sorted((r for r in rows if r["words"] >= min_words and r["caption"]), key=lambda r: -r["score"])
    return ranked[:round(keep * len(rows))]


def write_coco(kept: list[dict], out: Path, split: str = "pseudo") -> Path:
    """A COCO captions file of ``kept`` with the photos linked into ``out/split``; returns the file."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, row in enumerate(kept, 1):
        source = Path(row["photo"]).resolve()
        link = folder / source.name
        if not link.exists():
            os.symlink(source, link)
        images.append({"id": i, "file_name": source.name})
        annotations.append({"id": i, "image_id": i, "caption": row["caption"]})
    path = out / "annotations" / f"captions_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"images": images, "annotations": annotations}))
    return path


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="a folder of photos without captions")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--keep", type=float, default=0.5, help="the share of the photos whose captions are kept")
    p.add_argument("--min-words", type=int, default=5)
    p.add_argument("--limit", type=int, default=None, help="only the first N photos (by name)")
    args = p.parse_args(argv)
    if not 0 < args.keep <= 1:
        raise UserError("--keep is a share of the photos: more than 0, at most 1")
    if not args.images.is_dir():
        raise UserError(f"no folder of photos at {args.images}")
    photos = sorted(q for q in args.images.iterdir() if q.suffix.lower() in PHOTO_SUFFIXES)[:args.limit]
    model = Captioner.from_checkpoint(args.checkpoint, int8=True)
    rows = caption_photos(model, photos)
    kept = choose(rows, args.keep, args.min_words)
    path = write_coco(kept, args.out)
    atomic_write_text(args.out / "pseudo_captions.json", json.dumps(
        {"checkpoint": str(args.checkpoint), "keep": args.keep, "min_words": args.min_words,
         "kept": len(kept), "photos": rows}, indent=1))
    print(f"kept {len(kept)} of {len(rows)} captions: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
