"""Serving throughput: captions per second with 1, 4 and 16 concurrent clients against the
running app on loopback, with and without request batching.

    python -m benchmarks.serving_throughput [--requests 64] [--clients 1 4 16]

Starts ``python app.py`` twice (``CAPTIONER_BATCHING=1`` and ``=0``) and drives it with
plain HTTP clients through Gradio's REST API (``/gradio_api/call/caption``), each in its
own thread, every request a real COCO photo uploaded once beforehand. With batching, the
images of concurrent requests go through the CNN and the decoder together.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import SHARED, call, free_port, require, run_threads, start_app, upload, write_results

ROOT = Path(__file__).resolve().parent.parent


def caption_data(server_path: str, beam: int) -> list:
    return [[{"path": server_path, "meta": {"_type": "gradio.FileData"}}],
            "greedy" if beam == 1 else "beam search", beam]


def drive(base: str, paths: list[str], clients: int, requests: int, beam: int) -> dict:
    """``clients`` threads share ``requests`` calls; returns captions/s and failures."""
    counter = iter(range(requests))
    lock, failures, latencies = threading.Lock(), [], []

    def worker():
        with httpx.Client(timeout=300) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                event, payload = call(client, base, "caption", caption_data(paths[i % len(paths)], beam))
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if event != "complete":
                        failures.append(payload)

    seconds = run_threads(worker, [()] * clients)
    latencies.sort()
    return {"captions_per_second": round(requests / seconds, 2), "seconds": round(seconds, 2),
            "failures": len(failures), "latency_p50": round(latencies[len(latencies) // 2], 3)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--beam-size", type=int, default=None, help="default: the shipped checkpoint's")
    args = p.parse_args(argv)
    if args.beam_size is None:
        from captioner.model import Captioner

        args.beam_size = Captioner.read_settings()[1].beam_size
    photos = sorted(require(SHARED / "coco_mini" / "train2017", "COCO images").glob("*.jpg"))[:8]
    results = {"requests_per_setting": args.requests, "beam_size": args.beam_size,
               "images": "8 COCO train2017 photos", "settings": {}}
    for batching in (True, False):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_app(port, batching)
        try:
            with httpx.Client(timeout=300) as client:
                paths = [upload(client, base, photo) for photo in photos]
                for _ in range(3):  # warm up: the model loads on first use
                    call(client, base, "caption", caption_data(paths[0], args.beam_size))
            key = "batching" if batching else "no_batching"
            results.setdefault("startup_seconds", {})[key] = round(proc.startup_seconds, 2)
            results["settings"][key] = {str(c): drive(base, paths, c, args.requests, args.beam_size)
                                        for c in args.clients}
            for c, r in results["settings"][key].items():
                print(f"{key}, {c} clients: {r['captions_per_second']} captions/s "
                      f"(p50 latency {r['latency_p50']} s, {r['failures']} failures)")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    one = results["settings"]["no_batching"]["1"]["captions_per_second"]
    results["speedup_vs_one_at_a_time"] = {
        key: {c: round(r["captions_per_second"] / one, 2) for c, r in setting.items()}
        for key, setting in results["settings"].items()}
    print(f"speed-up over one client at a time: {results['speedup_vs_one_at_a_time']}")
    print(f"wrote {write_results('serving_throughput', results)}")


if __name__ == "__main__":
    main()
