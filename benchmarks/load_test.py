"""Load test: many concurrent clients against the running app, mixing good and hostile
requests, on loopback.

    python -m benchmarks.load_test [--clients 32] [--requests 4]

Every client sends ``--requests`` rounds; each round is one request picked from a mix of
good inputs (real photos, drawn digits, strokes, clips) and bad ones (an empty file,
a truncated JPEG, HTML named .jpg, an SVG, a 30000x30000 PNG bomb, a file over the size
limit, an empty stroke, NaN coordinates, huge coordinates, ...). It checks that:

- no good request fails;
- every bad request gets an error (and none of them crashes the server);
- the server's memory stays bounded (its resident set is sampled all along);
- with a small queue, a flood of requests gets a clear "queue is full" error instead
  of piling up (a second server, started with ``--queue-size 4``).

Results go to ``benchmarks/results/load_test.json``; the exit status is 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

from benchmarks.common import PHOTO, SHARED, call, encode, free_port, png_bomb, run_threads, start_app, write_results

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_files(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(good files, bad files) written into ``folder``."""
    good, bad = {}, {}
    photos = sorted((SHARED / "coco_mini" / "train2017").glob("*.jpg"))[:4]
    if not photos:  # without the shared data, photos made here
        photos = []
        for i in range(4):
            path = folder / f"photo{i}.jpg"
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
            photos.append(path)
    for p in photos:
        good[f"photo:{p.name}"] = p
    digit = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(digit).line([(100, 30), (104, 170)], fill=0, width=16)
    (folder / "digit.png").write_bytes(encode(digit, "PNG"))
    good["digit"] = folder / "digit.png"
    rgba = Image.new("RGBA", (64, 48), (255, 0, 0, 0))
    items = {
        "empty.jpg": b"",
        "truncated.jpg": encode(PHOTO, "JPEG")[:300],
        "page.jpg": b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
        "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9"/></svg>',
        "bomb.png": png_bomb(),
        "huge.jpg": encode(PHOTO, "JPEG") + b"\0" * (21 * 1024 * 1024),
        "text.jpg": b"hello, I am not a photo",
    }
    for name, data in items.items():
        (folder / name).write_bytes(data)
        bad[f"file:{name}"] = folder / name
    # unusual but valid: these must get captions
    extras = {"one_pixel.png": encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
              "transparent.png": encode(rgba, "PNG"),
              "cmyk.jpg": encode(Image.new("CMYK", (40, 30), (0, 200, 200, 0)), "JPEG"),
              "animated.gif": encode(Image.new("RGB", (20, 20)), "GIF", save_all=True,
                                     append_images=[Image.new("RGB", (20, 20), (255, 0, 0))]),
              "sixteen_bit.png": encode(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16),
                                        "PNG"),
              "webp.webp": encode(PHOTO, "WEBP")}
    for name, data in extras.items():
        (folder / name).write_bytes(data)
        good[f"photo:{name}"] = folder / name
    return good, bad


def upload(client: httpx.Client, base: str, path: Path) -> dict | str:
    """Upload a file; returns Gradio's file payload, or the error text if the upload is refused."""
    with open(path, "rb") as f:
        r = client.post(base + "/gradio_api/upload", files={"files": (path.name, f, "application/octet-stream")})
    if r.status_code != 200:
        return f"upload refused ({r.status_code}): {r.text[:200]}"
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def requests_mix(good: dict[str, Path], bad: dict[str, Path]) -> list[tuple[str, str, object, bool]]:
    """(name, endpoint, input, should_succeed)."""
    mix = []
    for name, path in good.items():
        if name == "digit":
            mix.append(("digit", "classify_digit", path, True))
        else:
            mix.append((name, "caption", path, True))
    for name, path in bad.items():
        mix.append((name, "caption", path, False))
    mix.append(("digit:bomb", "classify_digit", bad["file:bomb.png"], False))
    circle = [[200 + 80 * math.cos(a / 8), 200 + 80 * math.sin(a / 8)] for a in range(40)]
    mix += [("stroke:circle", "predict_trajectory", json.dumps(circle), True),
            ("stroke:two points", "predict_trajectory", "[[0, 0], [1, 1]]", True),
            ("stroke:empty", "predict_trajectory", "", False),
            ("stroke:one point", "predict_trajectory", "[[3, 4]]", False),
            ("stroke:nan", "predict_trajectory", "[[0, 0], [NaN, 1], [2, 2]]", False),
            ("stroke:inf", "predict_trajectory", "[[0, 0], [Infinity, 1]]", False),
            ("stroke:huge", "predict_trajectory", "[[1e200, 0], [0, 1e200]]", False),
            ("stroke:garbage", "predict_trajectory", "{{{{", False),
            ("frames:7", "predict_frames", 7, True),
            ("frames:-1", "predict_frames", -1, False)]
    return mix


def run_one(client, base, item, uploaded) -> tuple[bool, str]:
    name, endpoint, value, _ = item
    if endpoint in ("caption", "classify_digit"):
        payload = uploaded[str(value)]
        if isinstance(payload, str):  # refused at upload: that is its error
            return False, payload
        data = [[payload], "beam search", 3] if endpoint == "caption" else [payload]
    else:
        data = [value]
    event, result = call(client, base, endpoint, data)
    if event != "complete":
        return False, str(result)
    if endpoint == "caption":
        captions = result[5]  # the results JSON
        errors = [r["error"] for r in captions if "error" in r]
        if errors:
            return False, errors[0]
    return True, ""


def load(base: str, pid: int, items, uploaded, clients: int, rounds: int) -> dict:
    results, lock, samples = [], threading.Lock(), []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.2)

    def worker(seed: int):
        rng = random.Random(seed)
        with httpx.Client(timeout=600) as client:
            for _ in range(rounds):
                item = rng.choice(items)
                start = time.perf_counter()
                try:
                    ok, message = run_one(client, base, item, uploaded)
                except Exception as err:  # a broken connection is a failure too
                    ok, message = False, f"client error: {err}"
                with lock:
                    results.append((item, ok, message, time.perf_counter() - start))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds = run_threads(worker, [(i,) for i in range(clients)])
    stop.set()
    good_failed = [(i[0], m) for i, ok, m, _ in results if i[3] and not ok]
    bad_passed = [i[0] for i, ok, _, _ in results if not i[3] and ok]
    bad_messages = {i[0]: m for i, ok, m, _ in results if not i[3] and not ok}
    return {"requests": len(results), "seconds": round(seconds, 1), "good_failed": good_failed,
            "bad_without_error": bad_passed, "bad_error_examples": bad_messages,
            "rss_mb_max": round(max(samples), 1) if samples else None,
            "rss_mb_first_half_max": round(max(samples[: len(samples) // 2] or [0]), 1),
            "rss_mb_second_half_max": round(max(samples[len(samples) // 2:] or [0]), 1)}


def flood(base: str, payload: dict, clients: int = 24) -> dict:
    """Many slow requests at once against a server with a 4-place queue."""
    outcomes, lock = [], threading.Lock()

    def worker():
        with httpx.Client(timeout=600) as client:
            event, result = call(client, base, "caption", [[payload], "beam search", 10])
            with lock:
                outcomes.append((event, str(result)))

    run_threads(worker, [()] * clients)
    busy = [m for e, m in outcomes if e != "complete" and "queue" in m.lower() and "full" in m.lower()]
    return {"clients": clients, "completed": sum(e == "complete" for e, _ in outcomes), "busy": len(busy),
            "busy_message": busy[0] if busy else None,
            "other_errors": [m for e, m in outcomes if e != "complete" and m not in busy]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="rounds per client")
    p.add_argument("--no-flood", action="store_true")
    p.add_argument("--json-out", type=Path, default=None, help="default: benchmarks/results/load_test.json")
    args = p.parse_args(argv)
    report: dict = {"clients": args.clients, "rounds_per_client": args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        good, bad = make_files(Path(tmp))
        items = requests_mix(good, bad)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_app(port, batching=True)
        try:
            with httpx.Client(timeout=600) as client:
                uploaded = {str(v): upload(client, base, v) for _, e, v, _ in items
                            if e in ("caption", "classify_digit")}
                alone = {}
                for item in items:  # every request once, alone: warm up and check each kind
                    ok, message = run_one(client, base, item, uploaded)
                    alone[item[0]] = {"expected_success": item[3], "succeeded": ok, "error": message}
            report["each_request_alone"] = alone
            report["idle_rss_mb"] = round(rss_mb(proc.pid), 1)
            report["load"] = load(base, proc.pid, items, uploaded, args.clients, args.requests)
            report["server_alive_after_load"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if not args.no_flood:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start_app(port, batching=True, args=["--queue-size", "4"])
            try:
                with httpx.Client(timeout=600) as client:
                    payload = upload(client, base, next(iter(good.values())))
                    call(client, base, "caption", [[payload], "greedy", 1])
                report["flood"] = flood(base, payload)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    load_report = report["load"]
    alone = report["each_request_alone"]
    checks = {
        "each_kind_alone_behaves": all(r["succeeded"] == r["expected_success"] for r in alone.values()),
        "no_good_request_failed": not load_report["good_failed"],
        "every_bad_request_got_an_error": not load_report["bad_without_error"],
        "server_survived": report["server_alive_after_load"],
        "memory_bounded": (load_report["rss_mb_max"] or 0) < 4096
        and load_report["rss_mb_second_half_max"] <= 1.25 * load_report["rss_mb_first_half_max"] + 200,
        "busy_error_when_queue_full": args.no_flood or report["flood"]["busy"] > 0,
    }
    report["checks"] = checks
    path = write_results("load_test", report, args.json_out)
    print(f"{load_report['requests']} requests from {args.clients} clients in {load_report['seconds']} s; "
          f"server memory peaked at {load_report['rss_mb_max']} MB (idle {report['idle_rss_mb']} MB)")
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if load_report["good_failed"]:
        print("good requests that failed:", load_report["good_failed"][:5])
    if load_report["bad_without_error"]:
        print("bad requests without an error:", load_report["bad_without_error"][:5])
    print(f"wrote {path}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
