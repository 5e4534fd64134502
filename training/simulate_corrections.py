"""Simulate people correcting captions: COCO photos the shipped model's decoder never trained
on, each corrected with one of its real human captions, stored exactly as the app stores a
correction (``feedback.CorrectionService``: the app's own model captions the photo, the
photo is re-encoded without EXIF, one record each).

    python -m training.simulate_corrections --photos 200 --out runs/simulated-feedback

Photos: ``coco_captions/train2014`` (``captions_train2014_paired.json``; the shipped
captioner's decoder trained on Flickr8k and COCO val2017 photos only), those with 5
captions, the first ``--photos`` by a hash of their file names; the correction is each
photo's first human caption. Besides the feedback folder, ``--out`` gets
``all_captions.json``: every human caption of those photos, COCO format, named as the
folder names them, to score against the captions nobody typed into the app.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from captioner.feedback import CorrectionService, FeedbackStore, RateLimit
from captioner.model import DEFAULT_CHECKPOINT
from captioner.service import CaptionService
from lstmkit.checkpoint import atomic_write_text
from lstmkit.runtools import UserError, cli


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco-root", type=Path, default=Path("../shared/data/coco_captions"))
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, required=True, help="the feedback folder to write")
    args = p.parse_args(argv)
    captions_json = args.coco_root / "annotations" / "captions_train2014_paired.json"
    if not captions_json.is_file():
        raise UserError(f"no COCO train2014 captions at {captions_json}")
    data = json.loads(captions_json.read_text())
    names = {image["id"]: image["file_name"] for image in data["images"]}
    captions: dict[int, list[str]] = {}
    for a in sorted(data["annotations"], key=lambda a: a["id"]):
        captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    chosen = sorted((i for i, c in captions.items() if len(c) >= 5),
                    key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())[:args.photos]
    if len(chosen) < args.photos:
        raise UserError(f"only {len(chosen)} photos with 5 captions at {args.coco_root}")
    service = CorrectionService(CaptionService(args.checkpoint, batching=False),
                                FeedbackStore(args.out), RateLimit(count=10**9, seconds=1))
    images, annotations = [], []
    for n, image_id in enumerate(chosen, 1):
        correction = service.correct(str(args.coco_root / "train2014" / names[image_id]), captions[image_id][0], True)
        images.append({"id": image_id, "file_name": Path(correction.photo).name, "coco_file_name": names[image_id]})
        annotations += [{"id": len(annotations) + k, "image_id": image_id, "caption": c}
                        for k, c in enumerate(captions[image_id], 1)]
        if n % 50 == 0:
            print(f"{n} corrections stored", file=sys.stderr)
    atomic_write_text(args.out / "all_captions.json", json.dumps({"images": images, "annotations": annotations}))
    print(json.dumps({"corrections": len(chosen), "folder": str(args.out), "all_captions": len(annotations)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
