"""Count every (thing, relation, thing) the human captions on this machine state
(``captioner.claims``), leaving out every caption of a photo held out for validation or
test, and write the table the decoder's claim check reads.

    python -m training.build_claims --shared ../shared/data --out captioner/data/claims.tsv.gz

Sources: COCO's captions (text-only and paired: extra, train2014, the unpaired photos'
newly paired ones, val2017's training split), Flickr8k's training split and Flickr30k's.
Held out: val2017's validation and test photos (``--coco-split 0.15:0.25``, the release's
split), every val2014 photo (they are the fresh check), Flickr8k's validation and test
photos (``--flickr-split 0.07:0.13``) and coco_extra's validation photos (0.1), by the same
hash of the file name the training script splits by; a COCO photo is left out by its id
wherever its captions are.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from captioner.claims import ClaimTable
from captioner.train.datasets import split_of
from captioner.vocabulary import tokenize
from lstmkit.runtools import UserError, cli

log = logging.getLogger("build_claims")


def _fractions(text: str) -> tuple[float, float]:
    val, _, test = text.partition(":")
    return float(val), float(test)


def held_out_coco(shared: Path, coco_split: tuple[float, float], extra_val: float) -> set[int]:
    """COCO ids of every photo held out from training: val2017's validation and test split,
    every val2014 photo, coco_extra's validation split."""
    notes = shared / "coco_captions" / "annotations"
    held = set()
    splits = (("captions_val2017_paired.json", coco_split), ("captions_extra_paired.json", (extra_val, 0)))
    for name, fractions in splits:
        for image in json.loads((notes / name).read_text())["images"]:
            if split_of(Path(image["file_name"]), *fractions) != "train":
                held.add(image["id"])
    held.update(image["id"] for image in json.loads((notes / "captions_val2014_paired.json").read_text())["images"])
    return held


def human_captions(shared: Path, coco_split: tuple[float, float], flickr_split: tuple[float, float],
                   extra_val: float = 0.1) -> list[str]:
    """Every human caption on this machine but those of the held-out photos."""
    held = held_out_coco(shared, coco_split, extra_val)
    notes = shared / "coco_captions" / "annotations"
    captions = []
    for path in sorted(notes.glob("captions_*.json")):
        data = json.loads(path.read_text())
        captions += [a["caption"] for a in data["annotations"] if a["image_id"] not in held]
    flickr8k = shared / "flickr8k" / "captions.txt"
    for line in flickr8k.read_text(encoding="utf-8").splitlines()[1:]:
        name, _, caption = line.partition(",")
        if split_of(Path(name), *flickr_split) == "train":
            captions.append(caption)
    flickr30k = shared / "flickr30k_captions" / "captions.txt"
    captions += [line.partition(",")[2] for line in flickr30k.read_text(encoding="utf-8").splitlines()[1:]]
    return captions


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="the datasets' folder")
    parser.add_argument("--out", type=Path, default=Path("captioner/data/claims.tsv.gz"))
    parser.add_argument("--coco-split", default="0.15:0.25", help="val2017's VAL:TEST fractions")
    parser.add_argument("--flickr-split", default="0.07:0.13", help="Flickr8k's VAL:TEST fractions")
    parser.add_argument("--least", type=int, default=1, help="keep claims seen at least this often")
    args = parser.parse_args(argv)
    if not (args.shared / "coco_captions").is_dir():
        raise UserError(f"no coco_captions folder under {args.shared}")
    captions = human_captions(args.shared, _fractions(args.coco_split), _fractions(args.flickr_split))
    table = ClaimTable.of_captions(tokenize(c) for c in captions)
    table.save(args.out, args.least)
    kept = sum(1 for n in table.counts.values() if n >= args.least)
    print(f"{len(captions)} human captions, {len(table.counts)} distinct claims, {kept} written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
