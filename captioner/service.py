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
import torch

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
                 device: str = "cpu"):
        from captioner.devices import resolve_device
        from captioner.model import DEFAULT_CHECKPOINT, Captioner

        self.device = resolve_device(device)
        super().__init__(checkpoint or DEFAULT_CHECKPOINT, Captioner, self._load)
        self.max_images = max_images
        self._lock = threading.Lock()  # one model run at a time
        self.batcher = MicroBatcher(self._run) if batching else None
        self.run_batch = self._caption_batch

    def attends(self) -> bool:
        """Whether the checkpoint is an attention model (from its metadata alone)."""
        import json

        from captioner.checkpoint import CheckpointError, read_metadata

        try:
            return json.loads(read_metadata(self.checkpoint)["config"]).get("decoder") == "attention"
        except (CheckpointError, KeyError, ValueError):
            return False

    def use_device(self, device: str) -> None:
        """Run on another device (before the model is first used)."""
        from captioner.devices import resolve_device

        if self.model.loaded:
            raise RuntimeError("the captioner is already loaded")
        self.device = resolve_device(device)

    def _load(self, path: Path):
        model = self.model_class.from_checkpoint(path, device=self.device)
        encoder = model.require_encoder()
        if model.device.type == "cuda":  # the first run of each batch size is slow on a GPU: do them now
            size = encoder.preprocess.size
            for batch in (1, 2, 4, 8, 16, 32):
                for beam in (1, model.decoding.beam_size):
                    model.caption_tensors(torch.zeros(batch, 3, size, size), beam_size=beam)
        return model

    def default_beam(self) -> int:
        """The beam width the checkpoint was tuned for, read from its metadata alone."""
        import json

        from captioner.checkpoint import CheckpointError, read_metadata

        try:
            return int(json.loads(read_metadata(self.checkpoint)["decoding"]).get("beam_size", 3))
        except (CheckpointError, KeyError, ValueError):
            return 3

    def _caption_batch(self, batch: torch.Tensor, beam: int) -> list:
        return self.model.get().caption_tensors(batch, beam_size=beam)

    def _run(self, images: list, beam: int) -> list:
        """Caption preprocessed images (each a (3, H, W) tensor) in one model run."""
        model = self.model.get()  # loaded before the lock, so the first run waits for the load only
        batch = torch.stack(images)
        if model.device.type == "cuda":
            batch = batch.pin_memory()
        with self._lock:
            return self.run_batch(batch, beam)

    def caption_paths(self, paths: Sequence[str], beam_size: int = 1, keep_images: bool = False) -> list[dict]:
        """Caption images given by path. Each gets ``{"image", "caption", "words",
        "probabilities", "objects", "familiarity"}`` (and ``"attention"`` from an attention
        model), or ``{"image", "error"}`` when it cannot be read. The images are decoded and
        preprocessed in the caller's thread; the model runs them, together with those of
        any concurrent requests, in one batch. ``keep_images`` adds the decoded
        ``"picture"`` (a PIL image) of each image that was read."""
        beam = whole_number(beam_size, 1, 10, "beam width")
        paths = list(paths or [])
        if len(paths) > self.max_images:
            raise InputError(f"Please send at most {self.max_images} images at once.")
        preprocess = self.model.get().require_encoder().preprocess
        results, images, slots = [], [], []
        for path in paths:
            name = Path(str(path)).name
            try:
                image = load_image(path, draft_size=preprocess.size)
            except ImageError as err:
                results.append({"image": name, "error": str(err)})
                continue
            images.append(preprocess(image))  # here, in parallel across requests, not in the batch
            slots.append(len(results))
            results.append({"image": name, **({"picture": image} if keep_images else {})})
        captions = self.batcher.submit(images, beam) if self.batcher else self._run(images, beam) if images else []
        for slot, result in zip(slots, captions):
            results[slot].update(result.to_dict())
        return results


# --------------------------------------------------------------------------- digits

class DigitService(ModelService):
    def __init__(self, checkpoint: str | os.PathLike | None = None):
        from captioner.mnist import DEFAULT_CHECKPOINT, RowLSTMClassifier

        super().__init__(checkpoint or DEFAULT_CHECKPOINT, RowLSTMClassifier)

    def classify(self, drawing) -> tuple[dict[str, float], np.ndarray]:
        """A drawing (array, PIL image or image path) -> ({digit: probability}, the 28x28
        input the model saw, in [0, 1])."""
        from captioner.mnist import preprocess_drawing

        if drawing is None:
            raise InputError("Draw a digit or upload a picture of one first.")
        if isinstance(drawing, (str, os.PathLike)):
            drawing = read_upload(drawing)
        try:
            x = preprocess_drawing(drawing)
        except ValueError as err:
            raise InputError(str(err)) from err
        probs = self.model.get().predict(x[None])[0]
        return {str(d): float(p) for d, p in enumerate(probs)}, x.numpy()


# ----------------------------------------------------------------------- trajectories

MAX_POINTS = 10_000
MAX_COORDINATE = 1e6


class TrajectoryService(ModelService):
    """``recordings``: a UCI Character Trajectories .mat whose held-out letters can be shown."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, recordings: str | os.PathLike | None = None):
        from captioner.trajectory import DEFAULT_CHECKPOINT, TrajectoryPredictor

        super().__init__(checkpoint or DEFAULT_CHECKPOINT, TrajectoryPredictor)
        self.recordings_path = Path(recordings) if recordings else None
        self._recordings = Lazy(self._load_recordings)

    @staticmethod
    def parse_points(points) -> np.ndarray:
        """Untrusted points (a list of [x, y] or a JSON string of one) -> (N, 2) float array."""
        import json

        if points is None or (isinstance(points, str) and not points.strip()):
            raise InputError("Draw a stroke first.")
        if isinstance(points, str):
            if len(points) > 2_000_000:
                raise InputError("The stroke is too long.")
            try:
                points = json.loads(points)
            except json.JSONDecodeError as err:
                raise InputError("The points must be a JSON list of [x, y] pairs.") from err
        if isinstance(points, dict):
            points = points.get("points", points.get("data"))
        try:
            array = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError("The points must be a list of [x, y] pairs of numbers.") from err
        if array.ndim != 2 or array.shape[1] != 2:
            raise InputError("The points must be a list of [x, y] pairs of numbers.")
        if len(array) < 2:
            raise InputError("A stroke needs at least 2 points to have a direction.")
        if len(array) > MAX_POINTS:
            raise InputError(f"A stroke may have at most {MAX_POINTS:,} points.")
        if not np.isfinite(array).all():
            raise InputError("The points must be finite numbers (no NaN or infinity).")
        if np.abs(array).max() > MAX_COORDINATE:
            raise InputError(f"The coordinates must lie within ±{MAX_COORDINATE:g}.")
        return array

    def predict(self, points) -> dict:
        """{"input": the last ``past`` points used, "model": the next ``future`` points,
        "constant_velocity": the same many points}."""
        from captioner.trajectory import constant_velocity

        array = self.parse_points(points)
        model = self.model.get()
        past = array[-model.config.past:]
        # work relative to the last point, so large coordinates keep float32 precision
        origin = past[-1]
        relative = (past - origin).astype(np.float32)
        future = model.predict(relative).astype(np.float64) + origin
        cv = constant_velocity(past[None], model.config.future)[0]
        return {"input": past.tolist(), "model": future.tolist(), "constant_velocity": cv.tolist()}

    def recordings(self) -> list[tuple[int, str, np.ndarray]]:
        """Held-out pen recordings (index, letter, points), or none when there is no file."""
        return self._recordings.get()

    def _load_recordings(self) -> list[tuple[int, str, np.ndarray]]:
        from captioner.trajectory import held_out_recordings

        if self.recordings_path is None or not self.recordings_path.is_file():
            return []
        return held_out_recordings(self.recordings_path)


# ------------------------------------------------------------------------- next frame

class FrameService(ModelService):
    """``mnist_root``: the folder holding (or to receive) ``MNIST/raw``."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, mnist_root: str | os.PathLike = "data"):
        from captioner.nextframe import DEFAULT_CHECKPOINT, NextFramePredictor

        super().__init__(checkpoint or DEFAULT_CHECKPOINT, NextFramePredictor)
        self.mnist_root = Path(mnist_root)
        self.digits = Lazy(self._load_digits)

    def _load_digits(self) -> torch.Tensor:
        """MNIST test digits: read, or downloaded once into ``mnist_root``."""
        from captioner.mnist import load_mnist

        return load_mnist(self.mnist_root, train=False, progress=False)[0]

    def predict(self, seed) -> dict:
        """A Moving MNIST clip from the test digits for ``seed``: the input frames, the true
        next frames, the model's predicted frames, and the error of each."""
        from captioner.nextframe import MovingMNIST, copy_last_frame, frame_mse

        seed = whole_number(seed, 0, 2 ** 31 - 1, "clip number")
        model = self.model.get()
        config = model.config
        clip = MovingMNIST(self.digits.get(), frames=config.clip_frames, size=config.size, seed=7).batch([seed])
        inputs, truth = config.split(clip)
        start = time.perf_counter()
        predicted = model.predict(inputs)
        seconds = time.perf_counter() - start
        return {"inputs": inputs[0, :, 0].numpy(), "truth": truth[0, :, 0].numpy(),
                "predicted": predicted[0, :, 0].numpy(), "seconds": seconds,
                "mse_per_frame": frame_mse(predicted, truth).tolist(),
                "copy_last_mse_per_frame": frame_mse(copy_last_frame(inputs, config.output_frames), truth).tolist()}
