"""This checkout against another release, side by side on one machine: a photo at a time
through the library, and a folder through the command line.

    git worktree add /tmp/previous bf4d341
    python -m benchmarks.versus_release --against /tmp/previous [--images 40] [--folder 300] [--rounds 3]

Two releases cannot share one process (both are the package ``captioner``), so each is
timed in its own process, the two alternating round by round (A B A B ...), and each
figure is the median over the rounds of each round's figure:

- **one photo**: ``Captioner.from_checkpoint(..., int8=True)`` (what the app and the CLI
  load), then for each of the first ``--images`` photos of ``coco_mini`` (COCO train2017,
  about 640x480): ``load_image`` + ``caption([photo])`` with the checkpoint's own decoding
  and again greedy (beam 1), the two interleaved photo by photo, after three warm-up photos;
  p50 and p95 of the wall time, file bytes to caption.
- **a folder**: ``python -m captioner caption --json`` over the first ``--folder`` COCO
  val2017 photos, and over the first 20 of them; photos per second after start-up is
  ``(folder - 20) / (t_folder - t_20)``, so loading the model is left out.

Both trees must hold their own ``checkpoints/``. Results: ``benchmarks/results/versus_release.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, SHARED, require, write_results

# Runs inside a tree (cwd = the tree): only APIs every release since the first attention model has.
WORKER = r"""
import json, sys, time
import torch
try:
    from lstmkit.images import load_image
except ImportError:  # releases before the move to lstmkit (issue 39)
    from captioner.images import load_image
from captioner.model import Captioner
paths = json.loads(sys.argv[1])
model = Captioner.from_checkpoint("checkpoints/captioner.safetensors", int8=True)
size = model.require_encoder().preprocess.size
for p in paths[:3]:
    model.caption([load_image(p, draft_size=size)])
    model.caption([load_image(p, draft_size=size)], beam_size=1)
default, greedy, captions = [], [], []
for p in paths:
    for beam, out in ((None, default), (1, greedy)):
        start = time.perf_counter()
        result = model.caption([load_image(p, draft_size=size)], beam_size=beam)[0]
        out.append(time.perf_counter() - start)
        captions.append(result.caption)
print(json.dumps({"default": default, "greedy": greedy, "captions": captions,
                  "threads": torch.get_num_threads(), "torch": torch.__version__}))
"""


def one_photo(tree: Path, photos: list[Path]) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps([str(p) for p in photos])], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def folder_seconds(tree: Path, photos: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "captioner", "caption", "--json", *map(str, photos)], cwd=tree,
                   env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", type=Path, required=True, help="a checkout of the other release")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--folder", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="versus_release")
    args = p.parse_args(argv)
    trees = {"previous": args.against.resolve(), "this": ROOT}
    photos = sorted(require(SHARED / "coco_mini" / "train2017", "COCO photos").glob("*.jpg"))[:args.images]
    folder = sorted(require(SHARED / "coco_captions" / "val2017", "COCO val2017").glob("*.jpg"))[:args.folder]
    rounds: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            run = one_photo(tree, photos)
            if args.folder:
                small, large = folder_seconds(tree, folder[:20]), folder_seconds(tree, folder)
                run["folder_photos_per_s"] = (len(folder) - 20) / max(large - small, 1e-9)
                run["folder_seconds"] = [small, large]
            rounds[name].append(run)
            print(f"round {r + 1} {name}: default p50 {1000 * quantile(run['default'], .5):.1f} ms, greedy p50 "
                  f"{1000 * quantile(run['greedy'], .5):.1f} ms"
                  + (f", folder {run['folder_photos_per_s']:.1f} photos/s" if args.folder else ""), flush=True)
    summary = {}
    for name, runs in rounds.items():
        summary[name] = {
            "tree": str(trees[name]),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=trees[name], capture_output=True,
                                     text=True).stdout.strip(),
            **{f"{kind}_{q}_ms": round(1000 * statistics.median(quantile(run[kind], v) for run in runs), 2)
               for kind in ("default", "greedy") for q, v in (("p50", .5), ("p95", .95))},
            **({"folder_photos_per_s": round(statistics.median(run["folder_photos_per_s"] for run in runs), 2)}
               if args.folder else {}),
            "torch": runs[0]["torch"], "threads": runs[0]["threads"],
        }
    a, b = summary["this"], summary["previous"]
    ratios = {"default_p50": round(a["default_p50_ms"] / b["default_p50_ms"], 3),
              "greedy_p50": round(a["greedy_p50_ms"] / b["greedy_p50_ms"], 3)}
    if args.folder:
        ratios["folder_photos_per_s"] = round(a["folder_photos_per_s"] / b["folder_photos_per_s"], 3)
    captions = {name: runs[0]["captions"] for name, runs in rounds.items()}
    same = sum(x == y for x, y in zip(captions["this"], captions["previous"]))
    path = write_results(args.name, {
        "photos": len(photos), "photo_source": "coco_mini/train2017 (COCO train2017, about 640x480)",
        "folder": len(folder), "folder_source": "coco_captions/val2017 (at most 256 px)", "rounds": args.rounds,
        "releases": summary, "this_over_previous": ratios,
        "same_captions": f"{same} of {len(captions['this'])} (default and greedy)", "captions": captions})
    print(json.dumps({"releases": summary, "this_over_previous": ratios}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
