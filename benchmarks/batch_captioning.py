"""Batch captioning through the command line, on the CPU and (when there is one) the GPU
of the same machine, side by side.

    python -m benchmarks.batch_captioning [--photos DIR] [--count 5000] [--beams 1 5]

Runs ``python -m captioner caption --json --device D --beam-size B`` as a user would,
on ``--count`` photo files (the photos of ``--photos``, repeated as links when there are
fewer; each file is decoded and captioned on its own), and reports photos per second
(start-up and model loading included), the time the same command takes for one photo
(mostly start-up), the rate after start-up, the GPU's speed-up over the CPU, and how many
captions the two devices agree on. Without a GPU the GPU rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import SHARED, require, write_results


def photo_files(folder: Path, count: int, into: Path) -> list[Path]:
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = []
    for i in range(count):
        link = into / f"{i:05d}-{photos[i % len(photos)].name}"
        link.symlink_to(photos[i % len(photos)].resolve())
        files.append(link)
    return files


def run_cli(files: list[Path], device: str, beam: int) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "captioner", "caption", "--json", "--device", device,
                             "--beam-size", str(beam), *map(str, files)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: the CLI failed on {device}: {result.stderr[-2000:]}")
    return seconds, [json.loads(line) for line in result.stdout.splitlines()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=SHARED / "flickr8k" / "Images")
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    args = p.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {"photos": args.count, "distinct_photos": None, "devices": devices,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        files = photo_files(require(args.photos, "photos"), args.count, Path(tmp))
        results["distinct_photos"] = len({f.resolve() for f in files})
        for beam in args.beams:
            captions = {}
            for device in devices:
                startup, _ = run_cli(files[:1], device, beam)  # start, load, one photo
                seconds, lines = run_cli(files, device, beam)
                captions[device] = [line.get("caption") for line in lines]
                results["runs"][f"{device}_beam{beam}"] = {
                    "seconds": round(seconds, 2), "photos_per_second": round(len(files) / seconds, 1),
                    "seconds_for_one_photo": round(startup, 2),
                    "photos_per_second_after_start": round((len(files) - 1) / max(seconds - startup, 1e-9), 1)}
                print(f"{device} beam {beam}: {len(files)} photos in {seconds:.1f} s "
                      f"({len(files) / seconds:.1f} photos/s; one photo alone takes {startup:.1f} s)")
            if "cuda" in captions:
                same = sum(a == b for a, b in zip(captions["cpu"], captions["cuda"]))
                run = results["runs"][f"cuda_beam{beam}"]
                cpu = results["runs"][f"cpu_beam{beam}"]
                run["speedup_vs_cpu"] = round(cpu["seconds"] / run["seconds"], 2)
                run["speedup_vs_cpu_after_start"] = round(run["photos_per_second_after_start"]
                                                          / cpu["photos_per_second_after_start"], 2)
                run["same_caption_as_cpu"] = f"{same}/{len(files)}"
                print(f"beam {beam}: the GPU is {run['speedup_vs_cpu']}x the CPU; same caption {same}/{len(files)}")
    print(f"wrote {write_results('batch_captioning', results)}")


if __name__ == "__main__":
    main()
