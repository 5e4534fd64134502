"""The hand-trajectory demo's predictor for the app (``captioner.service``'s pattern: the model
loaded once, lazily, on first use; untrusted input checked; plain data out)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lstmkit.service import InputError, Lazy, ModelService, read_upload, whole_number  # noqa: F401

MAX_POINTS = 10_000
MAX_COORDINATE = 1e6


class TrajectoryService(ModelService):
    """``recordings``: a UCI Character Trajectories .mat whose held-out letters can be shown,
    or the JSON of them that ships in ``demos/samples`` (``{"recordings": [{"index",
    "letter", "points"}]}``)."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, recordings: str | os.PathLike | None = None):
        from demos.trajectory.model import DEFAULT_CHECKPOINT, TrajectoryPredictor

        super().__init__(checkpoint or DEFAULT_CHECKPOINT, TrajectoryPredictor)
        self.recordings_path = Path(recordings) if recordings else None
        self._recordings = Lazy(self._load_recordings)

    @staticmethod
    def parse_points(points) -> np.ndarray:
        """Untrusted points (a list of [x, y] or a JSON string of one) -> (N, 2) float array."""
        if points is None or (isinstance(points, str) and not points.strip()):
            raise InputError("Draw a stroke first.")
        if isinstance(points, str):
            points = _from_json(points)
        if isinstance(points, dict):
            points = points.get("points", points.get("data"))
        try:
            array = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError("The points must be a list of [x, y] pairs of numbers.") from err
        _check_stroke(array)
        return array

    def predict(self, points) -> dict:
        """{"input": the last ``past`` points used, "model": the next ``future`` points,
        "constant_velocity": the same many points}."""
        from demos.trajectory.model import constant_velocity

        array = self.parse_points(points)
        model = self.model.get()
        past = array[-model.config.past:]
        # work relative to the last point, so large coordinates keep float32 precision
        origin = past[-1]
        relative = (past - origin).astype(np.float32)
        future = self.run(model.predict, relative).astype(np.float64) + origin
        cv = constant_velocity(past[None], model.config.future)[0]
        return {"input": past.tolist(), "model": future.tolist(), "constant_velocity": cv.tolist()}

    def recordings(self) -> list[tuple[int, str, np.ndarray]]:
        """Held-out pen recordings (index, letter, points), or none when there is no file."""
        return self._recordings.get()

    def _load_recordings(self) -> list[tuple[int, str, np.ndarray]]:
        from demos.trajectory.model import held_out_recordings

        if self.recordings_path is None or not self.recordings_path.is_file():
            return []
        if self.recordings_path.suffix == ".json":
            return read_recordings_json(self.recordings_path)
        return held_out_recordings(self.recordings_path)


def read_recordings_json(path: Path) -> list[tuple[int, str, np.ndarray]]:
    """Recordings saved as JSON (what ``held_out_recordings`` returns): (index, letter, points)."""
    import json

    return [(int(r["index"]), str(r.get("letter", "")), np.asarray(r["points"], dtype=np.float64))
            for r in json.loads(path.read_text(encoding="utf-8"))["recordings"]]


def _from_json(text: str):
    import json

    if len(text) > 2_000_000:
        raise InputError("The stroke is too long.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError("The points must be a JSON list of [x, y] pairs.") from err


def _check_stroke(array: np.ndarray) -> None:
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
