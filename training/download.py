"""Download the datasets, resuming interrupted downloads and checking what can be checked.

    python -m training.download coco --root data/coco [--year 2017] [--splits train val]
    python -m training.download coco --root data/coco2014 --year 2014 --karpathy   # + Karpathy's split
    python -m training.download mnist --root data
    python -m training.download trajectories --root data

COCO: the official caption annotations and image archives from images.cocodataset.org,
unpacked into ``root/annotations/captions_<split><year>.json`` and ``root/<split><year>/``.
MNIST: the four idx files, checked against the MD5 sums torchvision publishes, unpacked
into ``root/MNIST/raw/``. Run the command again after an interruption and it continues
where it stopped. See ``lstmkit/downloads.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lstmkit.downloads import (
    COCO_URL,
    MNIST_MIRRORS,
    download_coco,
    download_karpathy_split,
    download_mnist,
    download_trajectories,
)
from lstmkit.runtools import UserError, cli


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="dataset", required=True)
    coco = sub.add_parser("coco", help="COCO captions and images")
    coco.add_argument("--root", type=Path, default=Path("data/coco"))
    coco.add_argument("--year", choices=["2014", "2017"], default="2017")
    coco.add_argument("--splits", nargs="+", choices=["train", "val"], default=["train", "val"])
    coco.add_argument("--annotations-only", action="store_true")
    coco.add_argument("--base-url", default=COCO_URL)
    coco.add_argument("--karpathy", action="store_true",
                      help="also Karpathy's split (dataset_coco.json) beside the 2014 images: the split COCO "
                           "captioning papers report on (--year 2014)")
    traj = sub.add_parser("trajectories", help="UCI Character Trajectories (pen trajectories)")
    traj.add_argument("--root", type=Path, default=Path("data"))
    traj.add_argument("--url", default=None)
    mnist = sub.add_parser("mnist", help="the MNIST digits")
    mnist.add_argument("--root", type=Path, default=Path("data"))
    mnist.add_argument("--mirror", action="append", default=None, help="base URL(s) to try first")
    args = p.parse_args(argv)
    if args.dataset == "coco":
        if args.karpathy and args.year != "2014":
            raise UserError("--karpathy splits COCO 2014's photos: add --year 2014")
        download_coco(args.root, args.year, tuple(args.splits), args.base_url, images=not args.annotations_only)
        if args.karpathy:
            print(f"Karpathy's split: {download_karpathy_split(args.root)}")
        print(f"COCO {args.year} is in {args.root}")
    elif args.dataset == "trajectories":
        path = download_trajectories(args.root, *([args.url] if args.url else []))
        print(f"the pen trajectories are in {path}")
    else:
        download_mnist(args.root, (args.mirror or []) + MNIST_MIRRORS)
        print(f"MNIST is in {args.root / 'MNIST' / 'raw'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
