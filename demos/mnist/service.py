"""The MNIST demo's predictor for the app (``captioner.service``'s pattern: the model
loaded once, lazily, on first use; untrusted input checked; plain data out)."""

from __future__ import annotations

import os

import numpy as np

from lstmkit.service import InputError, Lazy, ModelService, read_upload, whole_number  # noqa: F401


class DigitService(ModelService):
    def __init__(self, checkpoint: str | os.PathLike | None = None):
        from demos.mnist.model import DEFAULT_CHECKPOINT, RowLSTMClassifier

        super().__init__(checkpoint or DEFAULT_CHECKPOINT, RowLSTMClassifier)

    def classify(self, drawing) -> tuple[dict[str, float], np.ndarray]:
        """A drawing (array, PIL image or image path) -> ({digit: probability}, the 28x28
        input the model saw, in [0, 1])."""
        from demos.mnist.model import preprocess_drawing

        if drawing is None:
            raise InputError("Draw a digit or upload a picture of one first.")
        if isinstance(drawing, (str, os.PathLike)):
            drawing = read_upload(drawing)
        try:
            x = preprocess_drawing(drawing)
        except ValueError as err:
            raise InputError(str(err)) from err
        probs = self.run(self.model.get().predict, x[None])[0]
        return {str(d): float(p) for d, p in enumerate(probs)}, x.numpy()


