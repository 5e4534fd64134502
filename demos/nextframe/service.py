"""The next-frame demo's predictor for the app (``captioner.service``'s pattern: the model
loaded once, lazily, on first use; untrusted input checked; plain data out)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from lstmkit.service import InputError, Lazy, ModelService, read_upload, whole_number  # noqa: F401


class FrameService(ModelService):
    """``mnist_root``: the folder holding ``MNIST/raw`` (the test digits are enough; the app
    passes the few it ships in ``demos/samples``). Nothing is downloaded here."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, mnist_root: str | os.PathLike = "data"):
        from demos.nextframe.model import DEFAULT_CHECKPOINT, NextFramePredictor

        super().__init__(checkpoint or DEFAULT_CHECKPOINT, NextFramePredictor)
        self.mnist_root = Path(mnist_root)
        self.digits = Lazy(self._load_digits)

    def _load_digits(self) -> torch.Tensor:
        """MNIST test digits, read from ``mnist_root`` (FileNotFoundError when they are not there)."""
        from demos.mnist.model import load_mnist

        return load_mnist(self.mnist_root, train=False, download=False)[0]

    def predict(self, seed) -> dict:
        """A Moving MNIST clip from the test digits for ``seed``: the input frames, the true
        next frames, the model's predicted frames, and the error of each."""
        seed = whole_number(seed, 0, 2 ** 31 - 1, "clip number")
        return self.run(self._predict, seed, self.model.get())

    def _predict(self, seed: int, model) -> dict:
        from demos.nextframe.model import MovingMNIST, copy_last_frame, frame_mse

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
