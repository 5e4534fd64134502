"""Live mode under load: 1, 2 and 4 viewers streaming a slideshow at once, through the very
path the page uses, while a photo is uploaded and captioned meanwhile.

    python -m benchmarks.live_viewers [--viewers 1 2 4] [--seconds 36] [--slide-seconds 3]

Each viewer is what ``webapp/static/live.js`` does in a browser: a camera frame (the slide on
screen now, letterboxed into the fake camera's 480x360, shrunk to the app's frame side and sent
as a JPEG data URL) posted to ``/gradio_api/component_server`` (``live_frame``), the next one
only once the answer is in and at least ``LIVE_EVERY`` after the last. The slides change every
``--slide-seconds`` (each viewer's show starts at another slide). Per viewer count it reports
captions a second per viewer, the lag from a slide's start to the first caption that names it
(p50, p95), frames dropped, bytes sent a second, and the uploads' latency meanwhile (one
``/caption`` call a second, the one-photo API), beside the same uploads with nobody streaming.

A caption names a slide when it says one of the words that the slide's own caption (its frame
captioned alone, before the run) says and no other slide's does. The machine's load average
(``uptime``) is recorded before and after: on a busy machine the figures are not the app's.
Results go to ``benchmarks/results/live_viewers.json``.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    EXAMPLES,
    call,
    free_port,
    letterboxed,
    load_average,
    percentiles,
    run_threads,
    start_app,
    upload,
    write_results,
)
from webapp.live import LiveSettings, content_words

CAMERA = (480, 360)  # the slideshow's frame: what the fake camera gives the page


def lscpu_model() -> str | None:
    """``lscpu``'s model name (None where there is no lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), None)


def page_frame(path: Path, side: int) -> str:
    """The data URL the page sends for a camera showing ``path``."""
    frame = letterboxed(path, *CAMERA)
    frame.thumbnail((side, side))
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def live_component(client: httpx.Client, base: str) -> int:
    """The id of the live panel's component, as the page knows it (from ``/config``)."""
    config = client.get(base + "/config").json()
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "caption-live")


def live_frame(client: httpx.Client, base: str, component: int, session: str, stream: str, image: str) -> dict:
    r = client.post(base + "/gradio_api/component_server", json={
        "data": {"stream": stream, "image": image}, "component_id": component, "fn_name": "live_frame",
        "session_hash": session})
    r.raise_for_status()
    return r.json()


def distinctive_words(references: list[str]) -> list[set[str]]:
    """Per slide, the content words of its caption that no other slide's caption has."""
    words = [set(content_words(r)) for r in references]
    return [w - set().union(*(o for j, o in enumerate(words) if j != k)) for k, w in enumerate(words)]


def viewer(base: str, component: int, frames: list[str], names: list[set[str]], seconds: float,
           slide_seconds: float, first_slide: int, every: float) -> dict:
    """One viewer's stream for ``seconds``: its answers, the lag of each slide change."""
    session, stream = f"bench{random.getrandbits(40):x}", f"s{random.getrandbits(40):x}"
    answers, sent_bytes, lags, pending, timed = {}, 0, [], {}, set()
    with httpx.Client(timeout=120) as client:
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            change = int((now - start) // slide_seconds)
            slide = (first_slide + change) % len(frames)
            if change not in timed:
                timed.add(change)
                pending[change] = (slide, start + change * slide_seconds)
            answer = live_frame(client, base, component, session, stream, frames[slide])
            sent_bytes += len(frames[slide])
            answers[answer["kind"]] = answers.get(answer["kind"], 0) + 1
            got = time.perf_counter()
            said = content_words(answer.get("caption") or "")
            for key, (shown, since) in list(pending.items()):
                if key > 0 and said & names[shown]:  # the first slide has no change to time
                    lags.append(got - since)
                if said & names[shown] or key < change - 1:
                    del pending[key]
            time.sleep(max(0.0, every - (time.perf_counter() - now)))
        client.post(base + "/gradio_api/component_server", json={
            "data": stream, "component_id": component, "fn_name": "live_stop", "session_hash": session})
        elapsed = time.perf_counter() - start
    captioned = answers.get("new", 0) + answers.get("same", 0)
    return {"captions_per_second": captioned / elapsed, "answers": answers, "lags": lags,
            "slides_changed": len(timed) - 1, "bytes_per_second": sent_bytes / elapsed}  # changes it sent a frame of


def caption_call(photo_path: str) -> list:
    """The ``/caption`` API's inputs for one uploaded photo, beam search of the model's width."""
    from captioner.model import Captioner

    return [[{"path": photo_path, "meta": {"_type": "gradio.FileData"}}], "beam search",
            Captioner.read_settings()[1].beam_size]


def uploads_meanwhile(base: str, photo_path: str, stop: threading.Event, latencies: list, failures: list) -> None:
    """One ``/caption`` call a second until ``stop``."""
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            began = time.perf_counter()
            event, result = call(client, base, "caption", caption_call(photo_path))
            (latencies if event == "complete" else failures).append(time.perf_counter() - began)
            stop.wait(max(0.0, 1.0 - (time.perf_counter() - began)))


def rounded(p: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()}


def run_viewers(base, component, frames, names, count, args, photo_path) -> dict:
    stop, latencies, failures, results = threading.Event(), [], [], [None] * count
    uploader = threading.Thread(target=uploads_meanwhile, args=(base, photo_path, stop, latencies, failures))
    uploader.start()

    def one(k):
        results[k] = viewer(base, component, frames, names, args.seconds, args.slide_seconds,
                            k * len(frames) // count, args.every)

    run_threads(one, [(k,) for k in range(count)])
    stop.set()
    uploader.join()
    lags = [lag for r in results for lag in r["lags"]]
    slides = sum(r["slides_changed"] for r in results)
    return {"viewers": count,
            "captions_per_second_per_viewer": [round(r["captions_per_second"], 2) for r in results],
            "captions_per_second_per_viewer_min": round(min(r["captions_per_second"] for r in results), 2),
            "lag_seconds": rounded(percentiles(lags)) if lags else None,
            "slide_changes_named": f"{len(lags)} of {slides}",
            "answers": {k: sum(r["answers"].get(k, 0) for r in results) for k in ("new", "same", "dropped", "ended")},
            "bytes_sent_per_second_per_viewer": round(statistics.fmean(r["bytes_per_second"] for r in results)),
            "uploads_meanwhile": {"captioned": len(latencies), "failed": len(failures),
                                  "latency_seconds": rounded(percentiles(latencies)) if latencies else None}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=36.0, help="how long each viewer count streams")
    p.add_argument("--slide-seconds", type=float, default=3.0)
    p.add_argument("--every", type=float, default=None, help="fewest seconds between frames (default LIVE_EVERY)")
    p.add_argument("--json-out", type=Path, default=None, help="default: benchmarks/results/live_viewers.json")
    args = p.parse_args(argv)
    settings = LiveSettings.from_environment()
    args.every = settings.every if args.every is None else args.every
    photos = sorted(EXAMPLES.glob("*.jpg"))
    frames = [page_frame(path, settings.frame_side) for path in photos]
    report = {"slides": [path.name for path in photos], "slide_seconds": args.slide_seconds,
              "seconds_per_viewer_count": args.seconds, "frame_side": settings.frame_side, "every": args.every,
              "live_beam": settings.beam or "the checkpoint's own",
              "load_average_before": load_average(), "cores": os.cpu_count(), "lscpu_model_name": lscpu_model()}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_app(port, batching=True, env={"LIVE_STREAMS_PER_VISITOR": "16", "LIVE_MAX_SECONDS": "3600"})
    try:
        with httpx.Client(timeout=120) as client:
            component = live_component(client, base)
            photo_path = upload(client, base, photos[0])
            for _ in range(3):  # warm up: the model loads on first use
                call(client, base, "caption", caption_call(photo_path))
            references = [live_frame(client, base, component, "bench-reference", f"reference{k}", frame)["caption"]
                          for k, frame in enumerate(frames)]
        names = distinctive_words(references)
        report["references"] = dict(zip(report["slides"], references))
        report["names"] = {s: sorted(n) for s, n in zip(report["slides"], names)}
        stop, alone, failed = threading.Event(), [], []
        timer = threading.Timer(min(20.0, args.seconds), stop.set)
        timer.start()
        uploads_meanwhile(base, photo_path, stop, alone, failed)
        report["uploads_alone"] = {"captioned": len(alone), "failed": len(failed),
                                   "latency_seconds": rounded(percentiles(alone)) if alone else None}
        report["runs"] = [run_viewers(base, component, frames, names, count, args, photo_path)
                          for count in args.viewers]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report["load_average_after"] = load_average()
    for run in report["runs"]:
        lag = run["lag_seconds"] or {}
        print(f"{run['viewers']} viewer(s): {run['captions_per_second_per_viewer']} captions/s each, lag p50 "
              f"{lag.get('p50')} s p95 {lag.get('p95')} s ({run['slide_changes_named']} changes named), "
              f"{run['bytes_sent_per_second_per_viewer']} B/s sent each; uploads meanwhile "
              f"{run['uploads_meanwhile']['captioned']} ok, {run['uploads_meanwhile']['failed']} failed, p50 "
              f"{(run['uploads_meanwhile']['latency_seconds'] or {}).get('p50')} s")
    print(f"uploads alone: p50 {(report['uploads_alone']['latency_seconds'] or {}).get('p50')} s; load average "
          f"{report['load_average_before']} -> {report['load_average_after']}")
    print(f"wrote {write_results('live_viewers', report, args.json_out)}")


if __name__ == "__main__":
    main()
