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
mid-save leaves at most a photo no record names (ignored, listed by ``orphans``, deleted
when a running store first counts the folder once it is an hour old), never half a
record; each record has a file of its own, so concurrent saves never touch the same file.
A photo is named by its content: the same photo saved twice is stored once. Pushing the
folder to a Hugging Face dataset repository, and removing from it: ``feedback_hub.py``.

A caption is refused (``CorrectionError``, one sentence for the person) when it is empty,
longer than ``MAX_CAPTION`` characters, holds markup (``<``, ``>``) or control or
invisible format characters; a photo when ``images.load_image`` refuses it; a save when
the folder would pass its size cap, or when the folder cannot be written (a full disk,
no permission, a file where the folder should be: then nothing of that save is left).

A record is read only if it is what the app writes: its id is its file's name and its
photo is ``photos/<16 hex>.jpg``, a plain file inside the folder; any other (a tampered
record in a downloaded dataset repository, say) is skipped with a warning, so that
neither ``remove`` nor training ever touches a path outside ``photos/``.
"""

from __future__ import annotations

import contextlib
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

from lstmkit.checkpoint import CHECKPOINTS, atomic_write_bytes, atomic_write_text, file_sha256
from lstmkit.images import ImageError, load_image

log = logging.getLogger(__name__)

MAX_CAPTION = 200
LONGEST_SIDE = 1024
FORMAT = "captioner-correction/1"
ID = re.compile(r"^[0-9]{8}T[0-9]{6}([0-9]{6})?Z-[0-9a-f]{8}$")  # UTC time (to the microsecond) and 8 random hex
PHOTO = re.compile(r"^photos/[0-9a-f]{16}\.jpg$")  # a photo as the store names it: relative, inside photos/
ORPHAN_AGE = 3600  # seconds: a photo no record names, older than this, is what a crashed save left


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


def unwritable(err: OSError) -> CorrectionError:
    """A save the disk refused (full, read-only, no permission, a file where a folder should
    be), as one sentence for the person."""
    return CorrectionError(f"Nothing was stored: the feedback folder cannot be written just now "
                           f"({err.strerror or err}); please try again later.")


def read_record(path: Path) -> Correction:
    """One record, checked to be what the store writes; ``ValueError`` saying why not."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        correction = Correction(**data)
    except TypeError as err:
        raise ValueError(str(err)) from err
    if not isinstance(correction.id, str) or correction.id != path.stem or not ID.match(correction.id):
        raise ValueError(f"its id {correction.id!r} is not its file's name")
    if not isinstance(correction.photo, str) or not PHOTO.match(correction.photo):
        raise ValueError(f"its photo {correction.photo!r} is not photos/<16 hex digits>.jpg")
    if not isinstance(correction.caption, str):
        raise ValueError("its caption is not text")
    return correction


class FeedbackStore:
    """The feedback folder. ``max_bytes``: the size cap (``$CAPTIONER_FEEDBACK_MAX_MB``,
    default 1024 MB); saves that would pass it are refused.

    The cap is checked and the files written under one lock, so concurrent saves cannot pass
    it together. The folder's size is counted from the disk, and counted again whenever the
    folders changed behind this store's back (their modification times or file counts
    differ from those after its own last write: ``captioner corrections remove`` in another
    process, say)."""

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.folder = Path(folder) if folder is not None else default_folder()
        self.max_bytes = max_bytes if max_bytes is not None else \
            int(float(os.environ.get("CAPTIONER_FEEDBACK_MAX_MB", 1024)) * 1024 * 1024)
        self._lock = threading.Lock()
        self._size: int | None = None  # bytes in the folder when the folders looked like ``_seen``
        self._seen: tuple | None = None
        self._pruned = False

    @property
    def photos(self) -> Path:
        return self.folder / "photos"

    @property
    def records(self) -> Path:
        return self.folder / "records"

    def _stamp(self) -> tuple:
        """The folders' modification times and how many files each holds: a file added,
        renamed or removed changes them (the count, where the clock's tick is coarser than
        the change)."""
        return tuple((p.stat().st_mtime_ns, len(os.listdir(p))) if p.is_dir() else None
                     for p in (self.folder, self.photos, self.records))

    def _used(self) -> int:
        """Bytes in the folder (call with the lock held); the photos a crashed save left
        behind are deleted first, once."""
        if not self._pruned:
            self._pruned = True
            self.prune_orphans()
        stamp = self._stamp()
        if self._size is None or stamp != self._seen:
            self._size = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file()) \
                if self.folder.is_dir() else 0
            self._seen = stamp
        return self._size

    def size(self) -> int:
        with self._lock:
            return self._used()

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
        try:
            with self._lock:
                self._write(self.folder / name, data, self.records / f"{correction.id}.json", record)
        except OSError as err:
            log.warning("correction %s not stored: %s", correction.id, err)
            raise unwritable(err) from err
        log.info("stored correction %s (%s)", correction.id, name)
        return correction

    def _write(self, photo: Path, data: bytes, record: Path, text: bytes) -> None:
        """The photo (unless stored already: it is named by its content), then its record;
        a failure leaves neither behind. Call with the lock held."""
        fresh = not photo.is_file()
        new_bytes = len(text) + (len(data) if fresh else 0)
        if self._used() + new_bytes > self.max_bytes:
            raise CorrectionError("The feedback folder is full; corrections are not being accepted now.")
        try:
            if fresh:
                atomic_write_bytes(photo, data)
            atomic_write_bytes(record, text)  # last: a record's photo is always there
        except BaseException:
            for written in (record, photo) if fresh else (record,):
                with contextlib.suppress(OSError):
                    written.unlink(missing_ok=True)
            self._size = None
            raise
        self._size += new_bytes
        self._seen = self._stamp()

    def list(self) -> list[Correction]:
        """Every complete correction, oldest first (records that are not what the store writes,
        or whose photo is missing, are skipped and logged)."""
        found = []
        for path in sorted(self.records.glob("*.json")) if self.records.is_dir() else []:
            try:
                correction = read_record(path)
            except (OSError, ValueError) as err:
                log.warning("%s is not a correction record of this folder (%s); skipped", path, err)
                continue
            photo = self.folder / correction.photo
            if not photo.is_file() or photo.is_symlink():
                log.warning("%s names %s, which is not there; skipped", path.name, correction.photo)
                continue
            found.append(correction)
        return found

    def orphans(self) -> list[Path]:
        """Photos no record names (a save that stopped between the photo and its record)."""
        named = {c.photo for c in self.list()}
        return sorted(p for p in self.photos.glob("*.jpg") if f"photos/{p.name}" not in named) \
            if self.photos.is_dir() else []

    def prune_orphans(self, older_than: float = ORPHAN_AGE) -> list[Path]:
        """Delete the photos no record names that are older than ``older_than`` seconds (a
        crashed save's; a save in flight is seconds old); returns them."""
        now, gone = time.time(), []
        for path in self.orphans():
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
                    gone.append(path)
        if gone:
            log.warning("deleted %d photos no correction names (left by interrupted saves)", len(gone))
        return gone

    def files_of(self, correction_id: str) -> tuple[Correction, list[str]]:
        """A correction and the files (relative to the folder) its removal deletes: its record,
        and its photo when no other correction names it."""
        if not ID.match(correction_id or ""):
            raise CorrectionError(f"{correction_id!r} is not a correction id (like 20260101T120000123456Z-0a1b2c3d).")
        path = self.records / f"{correction_id}.json"
        if not path.is_file():
            raise CorrectionError(f"There is no correction {correction_id} in {self.folder}.")
        try:
            correction = read_record(path)
        except (OSError, ValueError) as err:
            raise CorrectionError(f"{path} is not a correction record of this folder ({err}); nothing was "
                                  "removed.") from err
        shared = any(c.photo == correction.photo and c.id != correction.id for c in self.list())
        return correction, [f"records/{correction.id}.json"] + ([] if shared else [correction.photo])

    def remove(self, correction_id: str) -> Correction:
        """Delete one correction, and its photo when no other correction names it."""
        correction, files = self.files_of(correction_id)
        with self._lock:
            for name in files:
                (self.folder / name).unlink(missing_ok=True)
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


def checkpoint_name(path: str | os.PathLike) -> str:
    """A checkpoint as a record names it: its file name and the first 12 hex digits of its sha256."""
    return f"{Path(path).name}:{file_sha256(path)[:12]}"


class CorrectionService:
    """What ``/correct`` and the caption tab's Save call: consent, the caption and the rate
    limit checked first, then the photo captioned by the app's own model (so the record
    says truthfully what the model wrote, with which checkpoint and decoding), then stored.
    ``captions``: the app's ``service.CaptionService``; ``repo``: the Hugging Face dataset
    repository the folder is pushed to (default ``$CAPTIONER_FEEDBACK_REPO``; None: none),
    which the consent box names."""

    def __init__(self, captions, store: FeedbackStore | None = None, limit: RateLimit | None = None,
                 repo: str | None = None):
        self.captions, self.store, self.limit = captions, store or FeedbackStore(), limit or RateLimit()
        self.repo = repo if repo is not None else os.environ.get("CAPTIONER_FEEDBACK_REPO") or None
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
