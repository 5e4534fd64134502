"""Ready-made predictors for the web app.

Every service has one shape (``ModelService``): a checkpoint, ``available`` (is it
there?), the model loaded once, lazily and thread-safely, on first use, and methods that
check untrusted input and answer with plain data (lists, dicts, numpy arrays), so that
``app.py`` only wires them to the UI. A user's bad input raises ``InputError`` with one
sentence to show. Data the services show (MNIST digits, pen recordings) is read from
paths the caller gives; wording and pictures are the app's business.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from captioner.images import ImageError, load_image

log = logging.getLogger(__name__)

T = TypeVar("T")


class InputError(ValueError):
    """Bad input from a user; the message is meant for them."""


class Lazy(Generic[T]):
    """Build a value on first use, once, whatever the number of threads asking."""

    def __init__(self, build: Callable[[], T]):
        self._build, self._value, self._lock = build, None, threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None


class ModelService(Generic[T]):
    """One model behind the app: ``model_class.from_checkpoint(checkpoint)`` (or ``load``)
    runs on first use, once."""

    def __init__(self, checkpoint: str | os.PathLike, model_class: type, load: Callable[[Path], T] | None = None):
        self.checkpoint = Path(checkpoint)
        self.model_class = model_class
        load = load or model_class.from_checkpoint
        self.model: Lazy[T] = Lazy(lambda: load(self.checkpoint))

    @property
    def available(self) -> bool:
        return self.checkpoint.is_file()

    def config(self):
        """The model's config, from the checkpoint's metadata (without loading the model)."""
        if self.model.loaded:
            return self.model.get().config
        return self.model_class.read_config(self.checkpoint)


def whole_number(value, low: int, high: int, what: str) -> int:
    """An untrusted whole number within [low, high], or an ``InputError`` naming ``what``."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"The {what} must be a whole number.") from err
    if not np.isfinite(number) or number != int(number):
        raise InputError(f"The {what} must be a whole number.")
    if not low <= number <= high:
        raise InputError(f"The {what} must be between {low} and {high}.")
    return int(number)


def read_upload(path) -> object:
    """An uploaded image through the safe loader, or an ``InputError``."""
    try:
        return load_image(path)
    except ImageError as err:
        raise InputError(str(err)) from err


# ------------------------------------------------------------------------- captions

class MicroBatcher:
    """Runs concurrent requests together: each caller hands in a list of items and waits;
    one worker thread takes every request waiting in the queue (up to ``max_items``
    items, grouped by ``key``), runs them in one call and hands each caller its share.
    Under load, requests pile up while a batch runs, so batches grow by themselves."""

    def __init__(self, run: Callable[[list, object], list], max_items: int = 32, max_wait: float = 0.002):
        self.run, self.max_items, self.max_wait = run, max_items, max_wait
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches: list[int] = []  # sizes of recent batches, for tests and benchmarks

    def submit(self, items: list, key=None) -> list:
        if not items:
            return []
        future: Future = Future()
        self._queue.put((key, items, future))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, daemon=True, name="micro-batcher")
                self._thread.start()
        return future.result()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            batch, count = [first], len(first[1])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_items:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(item)
                count += len(item[1])
            groups: dict = {}
            for key, items, future in batch:
                groups.setdefault(key, []).append((items, future))
            for key, requests in groups.items():
                everything = [x for items, _ in requests for x in items]
                self.batches = (self.batches + [len(everything)])[-1000:]
                try:
                    results = self.run(everything, key)
                except Exception as err:  # every caller of this group hears of it
                    for _, future in requests:
                        future.set_exception(err)
                    continue
                start = 0
                for items, future in requests:
                    future.set_result(results[start:start + len(items)])
                    start += len(items)


class CaptionService(ModelService):
    """``device``: where the model runs (``auto``: a GPU if there is one). ``run_batch`` is
    the one place the model computes, so a host can wrap it (Hugging Face's ZeroGPU
    attaches a GPU only inside functions wrapped with ``spaces.GPU``)."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, max_images: int = 64, batching: bool = True,
                 device: str = "cpu", precision: str = "auto"):
        from captioner.devices import resolve_device
        from captioner.model import DEFAULT_CHECKPOINT, Captioner

        self.device = resolve_device(device)
        self.precision = precision
        super().__init__(checkpoint or DEFAULT_CHECKPOINT, Captioner, self._load)
        self.max_images = max_images
        self._lock = threading.Lock()  # one model run at a time
        self.batcher = MicroBatcher(self._run) if batching else None
        self.run_batch = self._caption_batch

    def attends(self) -> bool:
        """Whether the checkpoint is an attention model (from its metadata alone)."""
        from captioner.checkpoint import CheckpointError

        try:
            return self.model_class.read_config(self.checkpoint).decoder == "attention"
        except CheckpointError:
            return False

    def use_device(self, device: str) -> None:
        """Run on another device (before the model is first used)."""
        from captioner.devices import resolve_device

        if self.model.loaded:
            raise RuntimeError("the captioner is already loaded")
        self.device = resolve_device(device)

    def _load(self, path: Path):
        model = self.model_class.from_checkpoint(path, device=self.device, int8=True, precision=self.precision)
        encoder = model.require_encoder()
        if model.device.type == "cuda":  # the first run of each batch size is slow on a GPU: do them now
            size = encoder.preprocess.size
            from PIL import Image

            blank = model.prepare(Image.new("RGB", (size, size)))
            for batch in (1, 2, 4, 8, 16, 32):
                for beam in (1, model.decoding.beam_size):
                    model.caption_prepared([blank] * batch, beam_size=beam)
        return model

    def default_beam(self) -> int:
        """The beam width the checkpoint was tuned for, read from its metadata alone."""
        from captioner.checkpoint import CheckpointError
        from captioner.decoding import DecodingConfig

        try:
            return self.model_class.read_settings(self.checkpoint)[1].beam_size
        except CheckpointError:
            return DecodingConfig().beam_size

    def _caption_batch(self, items: list, beam: int) -> list:
        return self.model.get().caption_prepared(items, beam_size=beam)

    def _run(self, images: list, beam: int) -> list:
        """Caption prepared photos (``Captioner.prepare``) in one model run."""
        self.model.get()  # loaded before the lock, so the first run waits for the load only
        with self._lock:
            return self.run_batch(images, beam)

    def caption_paths(self, paths: Sequence[str], beam_size: int | None = None,
                      keep_images: bool = False) -> list[dict]:
        """Caption images given by path. Each gets ``{"image", "caption", "words",
        "probabilities", "objects", "familiarity"}`` (and ``"attention"`` from an attention
        model), or ``{"image", "error"}`` when it cannot be read. The images are decoded and
        preprocessed in the caller's thread; the model runs them, together with those of
        any concurrent requests, in one batch. ``keep_images`` adds the decoded
        ``"picture"`` (a PIL image) of each image that was read. ``beam_size`` None: the
        checkpoint's own decoding (``DecodingConfig``), as everywhere else."""
        beam = None if beam_size is None else whole_number(beam_size, 1, 10, "beam width")  # None: the model's
        paths = list(paths or [])
        if len(paths) > self.max_images:
            raise InputError(f"Please send at most {self.max_images} images at once.")
        model = self.model.get()
        preprocess = model.require_encoder().preprocess
        results, images, slots = [], [], []
        for path in paths:
            name = Path(str(path)).name
            try:
                image = load_image(path, draft_size=preprocess.size)
            except ImageError as err:
                results.append({"image": name, "error": str(err)})
                continue
            images.append(model.prepare(image))  # here, in parallel across requests, not in the batch
            slots.append(len(results))
            results.append({"image": name, **({"picture": image} if keep_images else {})})
        captions = self.batcher.submit(images, beam) if self.batcher else self._run(images, beam) if images else []
        for slot, result in zip(slots, captions):
            results[slot].update(result.to_dict())
        return results
