"""The one-photo API (``/caption``) of this checkout against another release's, side by side:
both apps running at once on loopback, one request at a time, alternating A B A B.

    git worktree add /tmp/base da54508
    python -m benchmarks.api_versus_release --against /tmp/base [--requests 40]

Each request captions one COCO photo (coco_mini train2017, uploaded to both apps first),
with the checkpoint's own beam and greedily, interleaved; the figure is the wall time of the
whole call (upload excluded, the event stream read to its end), p50 and p95 per app and
decoding. ``benchmarks/versus_release.py`` times the library and the command line; this
times what the page and API clients wait for. The load average is recorded before and
after. Results: ``benchmarks/results/api_versus_release.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    SHARED,
    call,
    free_port,
    load_average,
    percentiles,
    require,
    start_app,
    upload,
    write_results,
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", type=Path, required=True, help="a checkout of the other release")
    p.add_argument("--requests", type=int, default=40, help="per app and decoding")
    args = p.parse_args(argv)
    from captioner.model import Captioner

    beam = Captioner.read_settings()[1].beam_size
    photos = sorted(require(SHARED / "coco_mini" / "train2017", "COCO images").glob("*.jpg"))[:8]
    trees = {"this": Path(__file__).resolve().parent.parent, "against": args.against.resolve()}
    report = {"against": str(trees["against"]), "requests": args.requests, "beam": beam,
              "load_average_before": load_average()}
    apps, times = {}, {(tree, d): [] for tree in trees for d in ("beam", "greedy")}
    try:
        for name, tree in trees.items():
            port = free_port()
            apps[name] = (start_app(port, batching=True, tree=tree), f"http://127.0.0.1:{port}")
        with httpx.Client(timeout=300) as client:
            paths = {name: [upload(client, base, photo) for photo in photos] for name, (_, base) in apps.items()}

            def one(name, k, decoding):
                data = [[{"path": paths[name][k % len(photos)], "meta": {"_type": "gradio.FileData"}}],
                        "beam search" if decoding == "beam" else "greedy", beam if decoding == "beam" else 1]
                began = time.perf_counter()
                event, _ = call(client, apps[name][1], "caption", data)
                if event != "complete":
                    raise SystemExit(f"error: {name}'s /caption failed: {event}")
                return time.perf_counter() - began

            for name in apps:  # warm up: the model loads on first use
                for k in range(3):
                    one(name, k, "beam")
            for k in range(args.requests):
                for decoding in ("beam", "greedy"):
                    for name in (("this", "against") if k % 2 == 0 else ("against", "this")):
                        times[(name, decoding)].append(one(name, k, decoding))
    finally:
        for proc, _ in apps.values():
            proc.terminate()
            proc.wait(timeout=30)
    report["load_average_after"] = load_average()
    report["latency_seconds"] = {f"{name}_{decoding}": {k: round(v, 4) if isinstance(v, float) else v
                                                        for k, v in percentiles(samples).items()}
                                 for (name, decoding), samples in times.items()}
    for key, r in report["latency_seconds"].items():
        print(f"{key}: p50 {r['p50'] * 1000:.1f} ms, p95 {r['p95'] * 1000:.1f} ms")
    print(f"load average {report['load_average_before']} -> {report['load_average_after']}")
    print(f"wrote {write_results('api_versus_release', report)}")


if __name__ == "__main__":
    main()
