"""Corrections people saved: the feedback folder, its records, and reading it for training.

A person who knows better corrects a caption in the app and ticks the consent box; the
photo and their caption land here, and ``python -m training.train_captioner --dataset
corrections --data-root DIR`` reads the folder as it is. Layout::

    DIR/photos/<sha256 of the file, 16 hex>.jpg   each photo re-encoded: no EXIF (no GPS, no camera
                                                  serial), at most 1024 px on its longer side
    DIR/records/<id>.json                         one correction each: id, photo, the person's caption,
                                                  the model's caption, the checkpoint and decoding that
                                                  wrote it, when (UTC)

Nothing is lost or torn: every file is written to a temporary file in its folder and
renamed into place (``checkpoint.atomic_write``), the photo before its record, so a crash
mid-save leaves at most a photo no record names (ignored, and listed by ``orphans``),
never half a record; each record has a file of its own, so concurrent saves never touch
the same file. A photo is named by its content: the same photo saved twice is stored once.

A caption is refused (``CorrectionError``, one sentence for the person) when it is empty,
longer than ``MAX_CAPTION`` characters, holds markup (``<``, ``>``) or control or
invisible format characters; a photo when ``images.load_image`` refuses it; a save when
the folder would pass its size cap.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import threading
import time
import unicodedata
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from captioner.checkpoint import CHECKPOINTS, atomic_write_bytes, atomic_write_text
from captioner.images import ImageError, load_image

log = logging.getLogger(__name__)

MAX_CAPTION = 200
LONGEST_SIDE = 1024
FORMAT = "captioner-correction/1"
ID = re.compile(r"^[0-9]{8}T[0-9]{6}([0-9]{6})?Z-[0-9a-f]{8}$")  # UTC time (to the microsecond) and 8 random hex


class CorrectionError(ValueError):
    """A correction that is not stored; the message says why, in one sentence."""


def default_folder() -> Path:
    """``$CAPTIONER_FEEDBACK_DIR``; on a Hugging Face Space with persistent storage,
    ``/data/captioner-feedback``; else ``data/feedback`` in the clone (git-ignored), or
    ``~/.cache/captioner/feedback`` where the clone has no ``data/`` folder."""
    if os.environ.get("CAPTIONER_FEEDBACK_DIR"):
        return Path(os.environ["CAPTIONER_FEEDBACK_DIR"])
    if os.environ.get("SPACE_ID") and os.access("/data", os.W_OK):
        return Path("/data/captioner-feedback")
    clone_data = CHECKPOINTS.parent / "data"
    if clone_data.is_dir() and os.access(clone_data, os.W_OK):
        return clone_data / "feedback"
    return Path.home() / ".cache" / "captioner" / "feedback"


def clean_caption(text: object) -> str:
    """The person's caption, whitespace collapsed, or a ``CorrectionError`` saying why not."""
    if not isinstance(text, str):
        raise CorrectionError("The caption must be text.")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") for c in text.replace("\n", " ").replace("\t", " ")):
        raise CorrectionError("The caption holds control or invisible characters; please type plain text.")
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if not text:
        raise CorrectionError("The caption is empty; write what the photo shows.")
    if len(text) > MAX_CAPTION:
        raise CorrectionError(f"The caption is {len(text):,} characters long; the limit is {MAX_CAPTION}.")
    if "<" in text or ">" in text:
        raise CorrectionError("The caption holds markup (< or >); please type plain text.")
    return text


def clean_photo(source) -> bytes:
    """An upload -> JPEG bytes of its pixels alone (orientation applied, then no EXIF, no
    ICC profile, no comments), at most ``LONGEST_SIDE`` px; ``ImageError`` for a non-photo."""
    image = load_image(source)
    image.thumbnail((LONGEST_SIDE, LONGEST_SIDE))
    image.info.clear()  # EXIF, ICC profile, comments, XMP: none of it is written
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, optimize=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Correction:
    id: str
    photo: str          # relative to the folder: photos/<hash>.jpg
    caption: str        # the person's
    model_caption: str  # what the model wrote
    checkpoint: str     # the checkpoint's file name and sha256 prefix
    decoding: dict      # how it decoded (beam width and the checkpoint's defaults)
    created: str        # ISO 8601, UTC
    format: str = FORMAT


class FeedbackStore:
    """The feedback folder. ``max_bytes``: the size cap (``$CAPTIONER_FEEDBACK_MAX_MB``,
    default 1024 MB); saves that would pass it are refused."""

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.folder = Path(folder) if folder is not None else default_folder()
        self.max_bytes = max_bytes if max_bytes is not None else \
            int(float(os.environ.get("CAPTIONER_FEEDBACK_MAX_MB", 1024)) * 1024 * 1024)
        self._lock = threading.Lock()
        self._size: int | None = None  # bytes in the folder, counted once, then kept up to date

    @property
    def photos(self) -> Path:
        return self.folder / "photos"

    @property
    def records(self) -> Path:
        return self.folder / "records"

    def size(self) -> int:
        with self._lock:
            if self._size is None:
                self._size = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file()) \
                    if self.folder.is_dir() else 0
            return self._size

    def save(self, photo, caption: str, *, model_caption: str, checkpoint: str, decoding: dict) -> Correction:
        """Store one correction (the caller has the person's consent); returns its record."""
        caption = clean_caption(caption)
        try:
            data = clean_photo(photo)
        except ImageError as err:
            raise CorrectionError(f"The photo cannot be stored: {err}") from err
        name = f"photos/{hashlib.sha256(data).hexdigest()[:16]}.jpg"
        now = datetime.now(timezone.utc)
        correction = Correction(f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}", name, caption, str(model_caption),
                                checkpoint, dict(decoding), now.isoformat(timespec="seconds"))
        record = json.dumps(asdict(correction), indent=1, ensure_ascii=False).encode("utf-8")
        path = self.folder / name
        new_bytes = len(record) + (0 if path.is_file() else len(data))
        if self.size() + new_bytes > self.max_bytes:
            raise CorrectionError("The feedback folder is full; corrections are not being accepted now.")
        if not path.is_file():  # named by its content: the same photo is stored once
            atomic_write_bytes(path, data)
        atomic_write_bytes(self.records / f"{correction.id}.json", record)  # last: a record's photo is always there
        with self._lock:
            self._size = (self._size or 0) + new_bytes
        log.info("stored correction %s (%s)", correction.id, name)
        return correction

    def list(self) -> list[Correction]:
        """Every complete correction, oldest first (records whose photo is missing are skipped
        and logged)."""
        found = []
        for path in sorted(self.records.glob("*.json")) if self.records.is_dir() else []:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                correction = Correction(**data)
            except (ValueError, TypeError) as err:
                log.warning("%s is not a correction record (%s); skipped", path, err)
                continue
            if not (self.folder / correction.photo).is_file():
                log.warning("%s names %s, which is not there; skipped", path.name, correction.photo)
                continue
            found.append(correction)
        return found

    def orphans(self) -> list[Path]:
        """Photos no record names (a save that stopped between the photo and its record)."""
        named = {c.photo for c in self.list()}
        return sorted(p for p in self.photos.glob("*.jpg") if f"photos/{p.name}" not in named) \
            if self.photos.is_dir() else []

    def remove(self, correction_id: str) -> Correction:
        """Delete one correction, and its photo when no other correction names it."""
        if not ID.match(correction_id or ""):
            raise CorrectionError(f"{correction_id!r} is not a correction id (like 20260101T120000123456Z-0a1b2c3d).")
        path = self.records / f"{correction_id}.json"
        if not path.is_file():
            raise CorrectionError(f"There is no correction {correction_id} in {self.folder}.")
        correction = Correction(**json.loads(path.read_text(encoding="utf-8")))
        path.unlink()
        if not any(c.photo == correction.photo for c in self.list()):
            (self.folder / correction.photo).unlink(missing_ok=True)
        with self._lock:
            self._size = None
        return correction

    def export_coco(self, out: str | os.PathLike) -> int:
        """The corrections as a COCO captions json (``images``: file names in the folder's
        ``photos/``, which ``info.images_folder`` names; ``annotations``: each person's
        caption, its correction id and the model's caption); returns how many captions."""
        corrections = self.list()
        ids: dict[str, int] = {}
        images, annotations = [], []
        for c in corrections:
            if c.photo not in ids:
                ids[c.photo] = len(ids) + 1
                images.append({"id": ids[c.photo], "file_name": Path(c.photo).name})
            annotations.append({"id": len(annotations) + 1, "image_id": ids[c.photo], "caption": c.caption,
                                "correction_id": c.id, "model_caption": c.model_caption})
        info = {"description": f"corrections from {self.folder}", "images_folder": str(self.photos.resolve())}
        atomic_write_text(out, json.dumps({"info": info, "images": images, "annotations": annotations}, indent=1))
        return len(annotations)


def read_corrections(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """The training reader (``datasets.read_dataset("corrections", folder)``): a feedback
    folder as the app writes it -> (photo path, the person's caption) per correction."""
    folder = Path(folder)
    if not (folder / "records").is_dir():
        raise FileNotFoundError(f"no corrections at {folder} (a feedback folder holds records/ and photos/)")
    pairs = [(folder / c.photo, c.caption) for c in FeedbackStore(folder, max_bytes=0).list()]
    log.info("%s: %d corrections of %d photos", folder, len(pairs), len({p for p, _ in pairs}))
    return pairs


class RateLimit:
    """At most ``count`` events per client in any ``seconds`` (a sliding window), kept in
    memory; ``$CAPTIONER_FEEDBACK_RATE`` is ``COUNT/SECONDS`` (default 120 an hour)."""

    def __init__(self, count: int | None = None, seconds: float | None = None):
        default_count, default_seconds = os.environ.get("CAPTIONER_FEEDBACK_RATE", "120/3600").split("/")
        self.count = int(count if count is not None else default_count)
        self.seconds = float(seconds if seconds is not None else default_seconds)
        self._events: dict[str, deque] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        """Count one event for ``client``, or raise ``CorrectionError`` when over the limit."""
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(client, deque())
            while events and now - events[0] > self.seconds:
                events.popleft()
            if len(events) >= self.count:
                wait = int(self.seconds - (now - events[0])) + 1
                raise CorrectionError(f"Too many corrections from here; try again in {wait} seconds.")
            events.append(now)
            if len(self._events) > 10_000:  # forget clients whose window has passed
                for key in [k for k, v in self._events.items() if not v or now - v[-1] > self.seconds]:
                    del self._events[key]

    def give_back(self, client: str) -> None:
        """Undo the last ``take`` (the correction was refused after all)."""
        with self._lock:
            if self._events.get(client):
                self._events[client].pop()


def sync_to_hub(folder: Path, repo: str | None = None, every_minutes: float = 10):
    """Push the folder to a Hugging Face dataset repo (``$CAPTIONER_FEEDBACK_REPO``) every
    few minutes with huggingface_hub's ``CommitScheduler`` (complete photos and records
    only: temporary files are never pushed). Returns the scheduler, or None when no repo
    is set or the Hub cannot be reached (logged; corrections are still stored locally)."""
    repo = repo or os.environ.get("CAPTIONER_FEEDBACK_REPO")
    if not repo:
        return None
    try:
        from huggingface_hub import CommitScheduler

        return CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=folder, every=every_minutes,
                               private=True, allow_patterns=["photos/*.jpg", "records/*.json"])
    except Exception as err:  # offline, no token, no such repo: keep storing locally
        log.warning("corrections are not pushed to %s: %s", repo, err)
        return None


def checkpoint_name(path: str | os.PathLike) -> str:
    """A checkpoint as a record names it: its file name and the first 12 hex digits of its sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{Path(path).name}:{digest.hexdigest()[:12]}"


class CorrectionService:
    """What ``/correct`` and the caption tab's Save call: consent, the caption and the rate
    limit checked first, then the photo captioned by the app's own model (so the record
    says truthfully what the model wrote, with which checkpoint and decoding), then stored.
    ``captions``: the app's ``service.CaptionService``."""

    def __init__(self, captions, store: FeedbackStore | None = None, limit: RateLimit | None = None):
        self.captions, self.store, self.limit = captions, store or FeedbackStore(), limit or RateLimit()
        self._checkpoint: str | None = None

    def correct(self, photo, caption, consent, client: str = "local", beam_size: int | None = None) -> Correction:
        if consent is not True:
            raise CorrectionError("Nothing was stored: tick the box to agree that the photo and your caption "
                                  "may be stored to improve the captioner.")
        caption = clean_caption(caption)
        if not photo:
            raise CorrectionError("Choose a photo first.")
        self.limit.take(client)
        try:
            result = self.captions.caption_paths([photo], beam_size)[0]
            if "error" in result:
                raise CorrectionError(f"The photo cannot be stored: {result['error']}")
            model = self.captions.model.get()
            decoding = {**asdict(model.decoding), "beam_size": int(beam_size or model.decoding.beam_size)}
            if self._checkpoint is None:
                self._checkpoint = checkpoint_name(self.captions.checkpoint)
            return self.store.save(photo, caption, model_caption=result["caption"], checkpoint=self._checkpoint,
                                   decoding=decoding)
        except Exception:
            self.limit.give_back(client)
            raise
