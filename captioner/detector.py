"""The COCO object detector: YOLOX-Nano (Ge et al. 2021), shipped as ONNX and run by onnxruntime.

    photo -> letterbox to 416 x 416 (longer side 416, top-left, the rest grey 114), BGR, 0..255
          -> (1, 3549, 85): per anchor point [dx, dy, log w, log h, objectness, 80 class probabilities]
          -> boxes (centre = (grid + d) * stride, size = exp(log wh) * stride), score = objectness x class
          -> non-maximum suppression per category (IoU 0.45) -> ``Boxes`` in the photo's own frame (0..1)

That is YOLOX's own preprocessing and decoding (``yolox/data/data_augment.py: preproc``,
``yolox/utils/demo_utils.py: demo_postprocess, multiclass_nms``). The weights
(``checkpoints/yolox_nano_coco.onnx``, 3.7 MB, Apache-2.0: ``checkpoints/yolox_nano_coco.LICENSE.txt``)
were trained on COCO train2017, so its boxes on COCO 2014 photos are optimistic: report
what it helps with on COCO val2017 photos and Flickr8k.

What the captioner takes from the boxes (``summary``): for each of the 80 categories its
best score, how many boxes it has (score >= 0.5, as ``log(1 + n)``) and the area of its
largest box (a share of the photo). A caption should say "a man" when a person is
salient, not when a small person stands in the background; size and score tell the
decoder which.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from captioner.wordlists import coco_categories
from lstmkit.checkpoint import CHECKPOINTS, CheckpointError
from lstmkit.images import image_key, load_image

log = logging.getLogger(__name__)
T = TypeVar("T")

DETECTOR_FILE = CHECKPOINTS / "yolox_nano_coco.onnx"
SIZE = 416
STRIDES = (8, 16, 32)
FEATURES_PER_CATEGORY = 3  # best score, log(1 + boxes at >= 0.5), largest box's area
COUNT_SCORE = 0.5


SUMMARY_DIM = 80 * FEATURES_PER_CATEGORY
PERSON = 0  # COCO's first category


@dataclass
class Boxes:
    """One photo's detections, best first: ``boxes`` (N, 4) as x0, y0, x1, y1 in 0..1 of the
    photo's width and height, ``categories`` (N,) COCO category indices, ``scores`` (N,)."""

    boxes: np.ndarray
    categories: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def mirrored(self) -> Boxes:
        """The boxes of the photo's mirror image."""
        b = self.boxes.copy()
        b[:, [0, 2]] = 1.0 - self.boxes[:, [2, 0]]
        return Boxes(b, self.categories, self.scores)

    def above(self, score: float) -> Boxes:
        keep = self.scores >= score
        return Boxes(self.boxes[keep], self.categories[keep], self.scores[keep])

    def counts(self, score: float = COUNT_SCORE) -> dict[str, int]:
        """How many boxes of each category reach ``score``, by category name."""
        names = coco_categories()
        out: dict[str, int] = {}
        for c in self.categories[self.scores >= score].tolist():
            out[names[c]] = out.get(names[c], 0) + 1
        return out

    def to_list(self, min_score: float = 0.3) -> list[dict]:
        """JSON-ready: [{"category", "score", "box": [x0, y0, x1, y1]}], best first."""
        names = coco_categories()
        return [{"category": names[c], "score": round(float(s), 4), "box": [round(float(v), 4) for v in b]}
                for b, c, s in zip(self.boxes, self.categories.tolist(), self.scores) if s >= min_score]

    @staticmethod
    def empty() -> Boxes:
        return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))


def summary(photos: list[Boxes]) -> torch.Tensor:
    """(B, 240): per category, the best score, log(1 + boxes at >= 0.5) and the largest box's
    area (a share of the photo), category-major ([score, count, area] of person, then of bicycle...)."""
    out = torch.zeros(len(photos), 80, FEATURES_PER_CATEGORY)
    for i, p in enumerate(photos):
        if not len(p):
            continue
        area = (p.boxes[:, 2] - p.boxes[:, 0]).clip(0, 1) * (p.boxes[:, 3] - p.boxes[:, 1]).clip(0, 1)
        for c in np.unique(p.categories):
            mine = p.categories == c
            out[i, c, 0] = float(p.scores[mine].max())
            out[i, c, 1] = float(np.log1p((p.scores[mine] >= COUNT_SCORE).sum()))
            out[i, c, 2] = float(area[mine].max())
    return out.flatten(1)


def category_scores(summaries: torch.Tensor) -> torch.Tensor:
    """(B, 240) summaries -> (B, 80) best score of each category."""
    return summaries.view(len(summaries), 80, FEATURES_PER_CATEGORY)[:, :, 0]


# ------------------------------------------------------------------ running the network

def letterbox(image: Image.Image, size: int = SIZE) -> tuple[np.ndarray, float]:
    """YOLOX's preprocessing: (3, size, size) float32 BGR 0..255, the photo resized (aspect
    kept, longer side ``size``) at the top-left corner, the rest 114; and the resize ratio.
    The canvas is built in uint8 and converted once (the same numbers, a third of the time)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    ratio = min(size / image.width, size / image.height)
    w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    canvas[:h, :w] = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32), ratio


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor point's (x, y) cell and stride, in the network's output order."""
    cells, strides = [], []
    for s in STRIDES:
        n = size // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = scores.argsort()[::-1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = (np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])).clip(0)
        h = (np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])).clip(0)
        overlap = w * h / (area[i] + area[rest] - w * h + 1e-9)
        order = rest[overlap <= iou]
    return keep


def decode_yolox_outputs(output: np.ndarray, ratio: float, width: int, height: int, min_score: float = 0.1,
           iou: float = 0.45, most: int = 50) -> Boxes:
    """One photo's raw output (3549, 85) -> its boxes (YOLOX's decoding, then NMS per category)."""
    cells, strides = _grid(SIZE)
    # the anchors whose best class can reach ``min_score`` (a few dozen of 3549), then only those decoded
    maybe = np.nonzero(output[:, 4] * output[:, 5:].max(1) >= min_score)[0]
    output, cells, strides = output[maybe], cells[maybe], strides[maybe]
    scores = output[:, 4:5] * output[:, 5:]  # objectness x class probability
    anchor, category = np.nonzero(scores >= min_score)
    if not len(anchor):
        return Boxes.empty()
    score = scores[anchor, category]
    centre = (output[anchor, :2] + cells[anchor]) * strides[anchor]
    size = np.exp(output[anchor, 2:4].clip(max=10)) * strides[anchor]
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], 1) / ratio
    xyxy = xyxy / np.array([width, height, width, height], dtype=np.float32)
    xyxy = xyxy.clip(0, 1)
    kept = []
    for c in np.unique(category):
        mine = np.nonzero(category == c)[0]
        kept += [mine[k] for k in nms(xyxy[mine], score[mine], iou)]
    kept = np.array(sorted(kept, key=lambda k: -score[k])[:most], dtype=np.int64)
    return Boxes(xyxy[kept].astype(np.float32), category[kept].astype(np.int64), score[kept].astype(np.float32))


class CocoDetector:
    """The shipped YOLOX-Nano: ``detect(images)`` gives each photo its ``Boxes``. The
    session is built once and runs on one thread (``threads``): on a small CPU two threads
    barely beat one (11.8 against 12.3 ms a photo on 2 cores), so the other cores are left
    to the encoder, which runs beside it (``detect_beside``)."""

    def __init__(self, path: str | os.PathLike = DETECTOR_FILE, threads: int | None = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no object detector at {path}: it ships in checkpoints/ "
                                  "(yolox_nano_coco.onnx, from the YOLOX releases)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # onnxruntime's threads spin after each run by default, and on a small CPU that spinning took the cores
        # from the encoder and the decoder that run next (both ran 2.3x slower beside it): no spinning
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.path = path

    @staticmethod
    def prepare(image: Image.Image) -> tuple[np.ndarray, tuple[float, int, int]]:
        """The network's input for one photo, and what ``detect_prepared`` needs to map boxes
        back (no session needed: data loader workers can run it)."""
        array, ratio = letterbox(image)
        return array, (ratio, image.width, image.height)

    def detect_one(self, array: np.ndarray, frame: tuple[float, int, int]) -> Boxes:
        """Boxes of one photo letterboxed by ``prepare`` (the session may run in several threads at once)."""
        raw = self.session.run(None, {self.input: array[None]})[0][0]
        return decode_yolox_outputs(raw, *frame)

    def detect_prepared(self, arrays: list[np.ndarray], frames: list[tuple[float, int, int]]) -> list[Boxes]:
        """Boxes of photos already letterboxed by ``prepare``, one network run each (a batch
        of several photos is no faster per photo on a CPU)."""
        return [self.detect_one(a, f) for a, f in zip(arrays, frames)]

    def detect(self, images: list[Image.Image]) -> list[Boxes]:
        return [self.detect_one(*self.prepare(im)) for im in images]

    def detect_beside(self, items: list, work: Callable[[], T]) -> tuple[list[Boxes], T]:
        """The boxes of ``items`` (PIL images, or ``prepare``'s pairs) found on a second thread
        while ``work()`` (the encoder) runs on this one with one core fewer; when ``work`` is
        done this thread takes the photos left. Returns (boxes, what ``work`` returned)."""
        pending = list(enumerate(items))
        boxes: list[Boxes | None] = [None] * len(items)
        lock = threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    i, item = pending.pop(0)
                boxes[i] = self.detect_one(*(self.prepare(item) if isinstance(item, Image.Image) else item))

        helper = _helper().submit(drain)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - 1))
        try:
            out = work()
        finally:
            torch.set_num_threads(threads)
        drain()
        helper.result()
        return boxes, out


@cache
def _helper() -> ThreadPoolExecutor:
    """The thread the detector runs on beside the encoder (one per process, started on first use)."""
    return ThreadPoolExecutor(1, thread_name_prefix="detector")


@cache
def shipped_detector() -> CocoDetector:
    """The shipped detector, loaded once per process."""
    return CocoDetector()


# ------------------------------------------------------------------ the detection cache

class DetectionCache:
    """Every photo's boxes, detected once and kept on disk (training and evaluation run the
    detector on thousands of photos; the boxes of a photo never change). One JSON file per
    detector weights (``root/detections-<sha256 prefix>.json``), keyed by image (path, size,
    modification time), rewritten atomically after each batch of new photos. A mirrored
    photo's boxes are its boxes mirrored (``Boxes.mirrored``)."""

    def __init__(self, root: str | os.PathLike, detector: CocoDetector | None = None):
        import hashlib
        import json

        self.detector = detector or shipped_detector()
        digest = hashlib.sha256(self.detector.path.read_bytes()).hexdigest()[:12]
        self.file = Path(root) / f"detections-{digest}.json"
        self.table: dict[str, list] = json.loads(self.file.read_text()) if self.file.is_file() else {}

    def get(self, paths, progress: bool = True, chunk: int = 512) -> list[Boxes]:
        from tqdm.auto import tqdm

        keys = [image_key(p) for p in paths]
        todo = [(k, p) for k, p in dict(zip(keys, paths)).items() if k not in self.table]
        bar = tqdm(total=len(todo), desc="detector", disable=not progress or not todo)
        with ThreadPoolExecutor(2) as pool:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                found = pool.map(lambda kp: self.detector.detect_one(*self.detector.prepare(load_image(kp[1]))), part)
                for (key, _), b in zip(part, found):
                    self.table[key] = [[*map(float, box), int(c), float(s)]
                                       for box, c, s in zip(b.boxes, b.categories, b.scores)]
                    bar.update(1)
                self._save()
        bar.close()
        return [self._boxes(self.table[k]) for k in keys]

    def _save(self) -> None:
        import json

        from lstmkit.checkpoint import atomic_write_text

        self.file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file, json.dumps(self.table))

    @staticmethod
    def _boxes(rows: list) -> Boxes:
        if not rows:
            return Boxes.empty()
        a = np.array(rows, dtype=np.float64)
        return Boxes(a[:, :4].astype(np.float32), a[:, 4].astype(np.int64), a[:, 5].astype(np.float32))


def boxes_for(model, images, cache_dir: str | os.PathLike) -> list[Boxes] | None:
    """The COCO detector's boxes of these images for a captioner that uses them (None for
    one that does not), from the detection cache."""
    if not model.config.detector:
        return None
    return DetectionCache(cache_dir, model.require_detector()).get(list(images))
