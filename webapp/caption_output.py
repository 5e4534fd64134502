"""How the caption tab shows results: shaded words, what was recognised, the honesty
warning, the table, and CSV/JSON downloads (kept small: old ones are removed)."""

from __future__ import annotations

import csv
import html
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from captioner.model import UNFAMILIAR
from captioner.vocabulary import with_article


def shaded_html(results: list[dict]) -> str:
    blocks = []
    for r in results:
        name = html.escape(r["image"])
        if "error" in r:
            blocks.append(f"<div class='cap'><b>{name}</b>: <span class='err'>{html.escape(r['error'])}</span></div>")
            continue
        words = "".join(
            f"<span class='w' style='background: rgba(79, 70, 229, {0.12 + 0.6 * p:.2f})' "
            f"title='p = {p:.2f}'>{html.escape(w)}</span> " for w, p in zip(r["words"], r["probabilities"]))
        blocks.append(f"<div class='cap'><b>{name}</b>: {honesty(r)}<span class='caption'>{words}</span>"
                      f"{objects_line(r)}</div>")
    legend = ("<div class='legend'>Darker words are the ones the model was surer of (hover for the probability). "
              "<i>Detected</i>: what the COCO object detector finds (boxed on the photo), with how many and its "
              "surest score. <i>Objects</i>: what the encoder's ImageNet classifier sees, as caption words. "
              "<i>Concepts</i>: what "
              "the detectors learned from captions see (people, places, things ImageNet has no class for). "
              "<i>Familiarity</i>: how much the photo resembles the photos the captioner learned from (0.5 is "
              f"typical of them; below {UNFAMILIAR} fewer than 1% of such photos look this unlike them).</div>")
    return "<div class='captions'>" + "".join(blocks) + legend + "</div>"


def objects_line(r: dict) -> str:
    found = r.get("objects", [])
    objects = [o for o in found if o.get("kind", "object") == "object" and o["probability"] >= 0.05][:3]
    concepts = [o for o in found if o.get("kind") == "concept"][:6]
    detected = [o for o in found if o.get("kind") == "detected"][:6]
    listed = lambda items: ", ".join(f"{html.escape(o['word'])} {o['probability']:.0%}" for o in items)  # noqa: E731
    line = ""
    if detected:
        line = "Detected: " + ", ".join(f"{html.escape(o['word'])}" + (f" &times;{o['count']}" if o.get("count", 1) > 1
                                                                       else "") + f" {o['probability']:.0%}"
                                        for o in detected) + " &middot; "
    line += f"Objects: {listed(objects) or 'nothing sure'}"
    if concepts:
        line += f" &middot; concepts: {listed(concepts)}"
    familiarity = r.get("familiarity")
    if familiarity is not None:
        line += f" &middot; familiarity {familiarity:.3f}"
    return f"<div class='objects'>{line}</div>"


def honesty(r: dict) -> str:
    """A plain warning before the caption of a photo unlike the model's training photos."""
    familiarity = r.get("familiarity")
    if familiarity is None or familiarity >= UNFAMILIAR:
        return ""
    top = next(iter(o for o in r.get("objects", []) if o.get("kind", "object") == "object"), None)
    if top is not None and top["probability"] >= 0.5:
        note = (f"This photo is unlike the photos the model learned to describe; it does recognise "
                f"{html.escape(with_article(top['word']))} ({top['probability']:.0%}), but the rest of the caption "
                "may be wrong.")
    else:
        note = ("This photo is unlike anything the model was trained on, and it recognises nothing in it for sure: "
                "the caption below is a guess, not a description.")
    return f"<div class='unfamiliar'>{note}</div>"


def table(results: list[dict]) -> list[list]:
    return [[r["image"], r.get("caption", ""),
             round(float(np.mean(r["probabilities"])), 3) if r.get("probabilities") else None, r.get("error", "")]
            for r in results]


class Downloads:
    """CSV and JSON files of each request's results in ``folder``; files older than
    ``max_age`` seconds are removed, the folder scanned at most once every ``every``
    seconds (not on every request: under load it holds thousands of files)."""

    def __init__(self, folder: Path, max_age: float = 3600.0, every: float = 60.0):
        self.folder, self.max_age, self.every = folder, max_age, every
        self.last_cleanup = 0.0
        self._lock = threading.Lock()

    def remove_old(self) -> None:
        now = time.time()
        with self._lock:
            if now - self.last_cleanup < self.every:
                return
            self.last_cleanup = now
        for old in self.folder.glob("captions-*"):
            try:
                if now - old.stat().st_mtime > self.max_age:
                    old.unlink(missing_ok=True)
            except OSError:  # removed by another request meanwhile
                pass

    def write(self, results: list[dict]) -> list[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.remove_old()
        stem = self.folder / f"captions-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{threading.get_ident() % 10000}"
        csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption", "words", "probabilities", "error"])
            for r in results:
                writer.writerow([r["image"], r.get("caption", ""), " ".join(r.get("words", [])),
                                 " ".join(f"{p:.4f}" for p in r.get("probabilities", [])), r.get("error", "")])
        json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
        return [str(csv_path), str(json_path)]
