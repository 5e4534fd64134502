"""Ready-made predictors for the web app.

Each service loads its model once, lazily and thread-safely, checks untrusted input and
answers with plain data (lists, dicts, numpy arrays), so that ``app.py`` only wires them
to the UI. A user's bad input raises ``InputError`` with one sentence to show.
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
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CAPTIONER_CACHE", Path.home() / ".cache" / "captioner"))

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


def data_roots() -> list[Path]:
    """Where datasets may already be: ``$CAPTIONER_DATA``, ``data/``, ``../shared/data`` and the cache."""
    roots = [os.environ.get("CAPTIONER_DATA"), os.environ.get("CAPTIONER_SHARED_DATA"), ROOT / "data",
             ROOT.parent / "shared" / "data", CACHE]
    return [Path(r) for r in roots if r]


def find_data(*relative: str) -> Path | None:
    for root in data_roots():
        if root.joinpath(*relative).exists():
            return root
    return None


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


class CaptionService:
    def __init__(self, checkpoint: str | os.PathLike | None = None, max_images: int = 64, batching: bool = True):
        from captioner.model import DEFAULT_CHECKPOINT

        self.checkpoint = Path(checkpoint or DEFAULT_CHECKPOINT)
        self.max_images = max_images
        self.model = Lazy(self._load)
        self._lock = threading.Lock()  # one model run at a time
        self.batcher = MicroBatcher(self._run) if batching else None

    @property
    def available(self) -> bool:
        return self.checkpoint.is_file()

    def _load(self):
        from captioner.model import Captioner

        model = Captioner.from_checkpoint(self.checkpoint)
        model.require_encoder()
        return model

    def default_beam(self) -> int:
        """The beam width the checkpoint was tuned for, read from its metadata alone."""
        import json

        from safetensors import safe_open

        try:
            with safe_open(str(self.checkpoint), "pt") as f:
                return int(json.loads(f.metadata()["config"]).get("beam_size", 3))
        except Exception:
            return 3

    def _run(self, images: list, beam: int) -> list:
        """Caption preprocessed images (each a (3, H, W) tensor) in one model run."""
        with self._lock:
            return self.model.get().caption_tensors(torch.stack(images), beam_size=beam)

    def caption_paths(self, paths: Sequence[str], beam_size: int = 1, thumbnails: int = 0) -> list[dict]:
        """Caption images given by path. Each gets ``{"image", "caption", "words",
        "probabilities"}``, or ``{"image", "error"}`` when it cannot be read. The images are
        decoded and preprocessed in the caller's thread; the model runs them, together with those of any
        concurrent requests, in one batch. ``thumbnails`` > 0 adds a ``"thumbnail"`` (a PIL
        image no larger than that) of each image that was read."""
        beam = _beam(beam_size)
        paths = list(paths or [])
        if len(paths) > self.max_images:
            raise InputError(f"Please send at most {self.max_images} images at once.")
        preprocess = self.model.get().require_encoder().preprocess
        size = preprocess.size
        results, images, slots = [], [], []
        for path in paths:
            name = Path(str(path)).name
            try:
                image = load_image(path, draft_size=size)
            except ImageError as err:
                results.append({"image": name, "error": str(err)})
                continue
            images.append(preprocess(image))  # here, in parallel across requests, not in the batch
            slots.append(len(results))
            results.append({"image": name})
            if thumbnails:
                thumb = image.copy()
                thumb.thumbnail((thumbnails, thumbnails))
                results[-1]["thumbnail"] = thumb
        captions = self.batcher.submit(images, beam) if self.batcher else self._run(images, beam) if images else []
        for slot, result in zip(slots, captions):
            results[slot].update(result.to_dict())
        return results


def _beam(beam) -> int:
    try:
        beam = int(beam)
    except (TypeError, ValueError) as err:
        raise InputError("The beam width must be a whole number.") from err
    if not 1 <= beam <= 10:
        raise InputError("The beam width must be between 1 and 10.")
    return beam


# --------------------------------------------------------------------------- digits

class DigitService:
    def __init__(self, checkpoint: str | os.PathLike | None = None):
        from captioner.mnist import DEFAULT_CHECKPOINT

        self.checkpoint = Path(checkpoint or DEFAULT_CHECKPOINT)
        self.model = Lazy(self._load)

    @property
    def available(self) -> bool:
        return self.checkpoint.is_file()

    def _load(self):
        from captioner.mnist import RowLSTMClassifier

        return RowLSTMClassifier.from_checkpoint(self.checkpoint)

    def classify(self, drawing) -> tuple[dict[str, float], np.ndarray]:
        """A drawing (array, PIL image or image path) -> ({digit: probability}, the 28x28
        input the model saw, in [0, 1])."""
        from captioner.mnist import preprocess_drawing

        if drawing is None:
            raise InputError("Draw a digit or upload a picture of one first.")
        if isinstance(drawing, (str, os.PathLike)):
            try:
                drawing = load_image(drawing)
            except ImageError as err:
                raise InputError(str(err)) from err
        try:
            x = preprocess_drawing(drawing)
        except ValueError as err:
            raise InputError(str(err)) from err
        probs = self.model.get().predict(x[None])[0]
        return {str(d): float(p) for d, p in enumerate(probs)}, x.numpy()


# ----------------------------------------------------------------------- trajectories

MAX_POINTS = 10_000
MAX_COORDINATE = 1e6


class TrajectoryService:
    def __init__(self, checkpoint: str | os.PathLike | None = None):
        from captioner.trajectory import DEFAULT_CHECKPOINT

        self.checkpoint = Path(checkpoint or DEFAULT_CHECKPOINT)
        self.model = Lazy(self._load)
        self._recordings = Lazy(self._load_recordings)

    @property
    def available(self) -> bool:
        return self.checkpoint.is_file()

    def _load(self):
        from captioner.trajectory import TrajectoryPredictor

        return TrajectoryPredictor.from_checkpoint(self.checkpoint)

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
        """{"input": last points used, "model": 10 points, "constant_velocity": 10 points}."""
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

    def recordings(self) -> dict[str, np.ndarray]:
        """Real pen trajectories the model never trained on (the held-out test sequences),
        when the data can be found; an empty dict otherwise."""
        return self._recordings.get()

    def _load_recordings(self) -> dict[str, np.ndarray]:
        from captioner.trajectory import read_mat_sequences, split_sequences

        for name in ("trajectories_train.mat", "mixoutALL_shifted.mat"):
            root = find_data("char_trajectories", name)
            if root is not None:
                path = root / "char_trajectories" / name
                break
        else:
            return {}
        sequences = read_mat_sequences(path)
        letters = _letters(path)
        test = split_sequences(len(sequences))["test"]
        picked = {}
        for i in test[:40]:
            label = f"pen trajectory #{i}" + (f" (letter '{letters[i]}')" if letters else "")
            picked[label] = sequences[i] * np.array([1.0, -1.0])  # tablet y points up, screens down
        return picked


def _letters(path: Path) -> list[str]:
    from scipy.io import loadmat

    try:
        data = loadmat(str(path), variable_names=["ytrain", "key"])
        keys = [str(np.asarray(k).ravel()[0]) for k in data["key"].ravel()]
        return [keys[int(y) - 1] for y in data["ytrain"].ravel()]  # MATLAB counts from 1
    except (KeyError, IndexError, ValueError, OSError):
        return []


# ------------------------------------------------------------------------- next frame

class FrameService:
    def __init__(self, checkpoint: str | os.PathLike | None = None):
        from captioner.nextframe import DEFAULT_CHECKPOINT

        self.checkpoint = Path(checkpoint or DEFAULT_CHECKPOINT)
        self.model = Lazy(self._load)
        self.digits = Lazy(self._load_digits)

    @property
    def available(self) -> bool:
        return self.checkpoint.is_file()

    def _load(self):
        from captioner.nextframe import NextFramePredictor

        return NextFramePredictor.from_checkpoint(self.checkpoint)

    def _load_digits(self) -> torch.Tensor:
        """MNIST test digits: found locally, or downloaded once into the cache folder."""
        from torchvision.datasets import MNIST

        root = find_data("MNIST", "raw", "t10k-images-idx3-ubyte")
        if root is None:
            from captioner.downloads import download_mnist

            download_mnist(CACHE, progress=False)
            root = CACHE
        return MNIST(str(root), train=False, download=False).data.float() / 255.0

    def predict(self, seed) -> dict:
        """A Moving MNIST clip from the test digits for ``seed``: 10 input frames, the 10
        true next frames, the model's 10 predicted frames, and the error of each."""
        from captioner.nextframe import MovingMNIST, copy_last_frame, frame_mse

        try:
            seed = int(seed)
        except (TypeError, ValueError) as err:
            raise InputError("The clip number must be a whole number.") from err
        if not 0 <= seed < 2 ** 31:
            raise InputError("The clip number must be between 0 and 2147483647.")
        clip = MovingMNIST(self.digits.get(), seed=7).batch([seed])
        inputs, truth = clip[:, :10], clip[:, 10:]
        start = time.perf_counter()
        predicted = self.model.get().predict(inputs)
        seconds = time.perf_counter() - start
        return {"inputs": inputs[0, :, 0].numpy(), "truth": truth[0, :, 0].numpy(),
                "predicted": predicted[0, :, 0].numpy(), "seconds": seconds,
                "mse_per_frame": frame_mse(predicted, truth).tolist(),
                "copy_last_mse_per_frame": frame_mse(copy_last_frame(inputs), truth).tolist()}

