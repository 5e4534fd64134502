"""The shape of every ready-made predictor the web app serves (the captioner's and the demos').

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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from lstmkit.images import ImageError, load_image

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


_model_thread: ThreadPoolExecutor | None = None
_model_thread_ident: int | None = None
_model_thread_lock = threading.Lock()


def on_model_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` run on the process's one model thread; its result, or its
    exception raised here. Every model of the app loads and computes on this thread.

    Why one thread: PyTorch's OpenMP (GNU libgomp) gives every thread that runs a parallel
    operation its own team of worker threads, and once the process holds more of them than
    there are cores, each idle worker spins about 100 times instead of some 300,000 before
    it sleeps. A decoder step is hundreds of small operations, each waiting for workers to
    wake: with the model on a batching thread and a photo's preprocessing on the server's,
    one caption took 91 ms instead of 59 on 2 cores (benchmarks.md, issue 38). Callers still
    decode and resize photos on their own threads, in numpy."""
    global _model_thread, _model_thread_ident
    if threading.get_ident() == _model_thread_ident:
        return fn(*args, **kwargs)
    with _model_thread_lock:
        if _model_thread is None:
            def name() -> None:
                global _model_thread_ident
                _model_thread_ident = threading.get_ident()

            _model_thread = ThreadPoolExecutor(1, thread_name_prefix="models", initializer=name)
    return _model_thread.submit(fn, *args, **kwargs).result()


class ModelService(Generic[T]):
    """One model behind the app: ``model_class.from_checkpoint(checkpoint)`` (or ``load``)
    runs on first use, once, on the model thread (``on_model_thread``), where ``run``
    computes too."""

    def __init__(self, checkpoint: str | os.PathLike, model_class: type, load: Callable[[Path], T] | None = None):
        self.checkpoint = Path(checkpoint)
        self.model_class = model_class
        load = load or model_class.from_checkpoint
        self.model: Lazy[T] = Lazy(lambda: on_model_thread(load, self.checkpoint))

    @staticmethod
    def run(fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` on the model thread (``on_model_thread``)."""
        return on_model_thread(fn, *args, **kwargs)

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
