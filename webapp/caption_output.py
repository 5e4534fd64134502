"""How the caption tab shows results: the caption as a sentence, familiarity in words,
the details folded away (each word's confidence, what was recognised), the table, and
CSV/JSON downloads (kept small: old ones are removed)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.results import UNFAMILIAR
from captioner.vocabulary import with_article


def shaded_html(results: list[dict], photos: list[Image.Image] | None = None) -> str:
    """Each photo's caption as a plain sentence (the file name above it when there are
    several), what its familiarity means in words, the details folded away (each word's
    confidence, what was detected and recognised, the familiarity score) and, on the page,
    the photo itself: ``photos`` holds one picture per photo that was read, in order."""
    many, pictures = len(results) > 1, iter(photos or [])
    blocks = []
    for r in results:
        name = f"<div class='name'>{html.escape(r['image'])}</div>" if many or "error" in r else ""
        if "error" in r:
            blocks.append(f"<div class='cap'>{name}<div class='err'>{html.escape(r['error'])}</div></div>")
            continue
        picture = next(pictures, None)
        blocks.append(f"<div class='cap'>{name}<div class='caption'>{html.escape(sentence(r['caption']))}</div>"
                      f"{familiarity_line(r)}{details(r)}{figure_html(picture, r['caption']) if picture else ''}</div>")
    return "<div class='captions'>" + "".join(blocks) + "</div>"


def figure_html(picture: Image.Image, caption: str) -> str:
    """A photo with the detector's boxes as it is, whole and never cropped (a JPEG data
    URL: the page shows each at most about 800 px)."""
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<figure><img src='data:image/jpeg;base64,{data}' width='{picture.width}' height='{picture.height}' "
            f"alt='{html.escape(caption, quote=True)}'></figure>")


def message_html(text: str) -> str:
    """One sentence in the caption area (a refused file, nothing chosen yet)."""
    return f"<div class='captions'><div class='note'>{html.escape(text)}</div></div>"


def sentence(caption: str) -> str:
    caption = caption.strip()
    return caption[:1].upper() + caption[1:] + ("." if caption and caption[-1] not in ".!?" else "")


def familiarity_line(r: dict) -> str:
    """Said in words: the photo looks like the photos the model learned from, or it does
    not and the caption is a guess (naming what it does recognise for sure)."""
    familiarity = r.get("familiarity")
    if familiarity is None:
        return ""
    if familiarity >= UNFAMILIAR:
        return "<div class='familiar'>This photo looks like the photos it learned from.</div>"
    top = next(iter(o for o in r.get("objects", []) if o.get("kind", "object") in ("object", "detected")
                    and o["probability"] >= 0.5), None)
    sure = (f" It does recognise {html.escape(with_article(top['word']))} ({top['probability']:.0%})."
            if top is not None else "")
    return f"<div class='unfamiliar'>Unlike the photos it learned from: treat the caption as a guess.{sure}</div>"


def details(r: dict) -> str:
    """The folded details: each word shaded by the model's confidence with its
    probability, then what the detector, the classifier and the concepts found."""
    words = "".join(f"<span class='w' style='background: rgba(79, 70, 229, {0.08 + 0.5 * p:.2f})' "
                    f"title='p = {p:.2f}'>{html.escape(w)}<small>{p:.0%}</small></span> "
                    for w, p in zip(r["words"], r["probabilities"]))
    found = r.get("objects", [])
    listed = lambda items: ", ".join(  # noqa: E731
        html.escape(o["word"]) + (f" &times;{o['count']}" if o.get("count", 1) > 1 else "")
        + f" ({o['probability']:.0%})" for o in items) or "nothing for sure"
    rows = [("How sure it was of each word", f"<div class='words'>{words}</div>"),
            ("Boxed by the object detector", listed([o for o in found if o.get("kind") == "detected"][:6])),
            ("Seen by the image classifier", listed([o for o in found if o.get("kind", "object") == "object"
                                                     and o["probability"] >= 0.05][:3])),
            ("Concepts learned from captions", listed([o for o in found if o.get("kind") == "concept"][:6]))]
    if r.get("familiarity") is not None:
        rows.append(("Familiarity", f"{r['familiarity']:.3f} (0.5 is typical of the photos it learned from; below "
                                    f"{UNFAMILIAR} fewer than 1% of them look this unlike them)"))
    body = "".join(f"<dt>{title}</dt><dd>{text}</dd>" for title, text in rows)
    return f"<details class='more'><summary>How sure it was, and what it saw</summary><dl>{body}</dl></details>"


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
