"""The captioner behind the web app (``lstmkit.service``'s shape): the model loaded once,
photos of concurrent requests captioned together (``MicroBatcher``), untrusted paths read by
the safe loader, answers as plain data. The model loads and runs on the process's model
thread (``lstmkit.service.on_model_thread``); photos are decoded and prepared, in numpy, on
the callers' threads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lstmkit.images import ImageError, load_image
from lstmkit.service import InputError, MicroBatcher, ModelService, whole_number


class CaptionService(ModelService):
    """``device``: where the model runs (``auto``: a GPU if there is one). ``run_batch`` is
    the one place the model computes, so a host can wrap it (Hugging Face's ZeroGPU
    attaches a GPU only inside functions wrapped with ``spaces.GPU``)."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, max_images: int = 64, batching: bool = True,
                 device: str = "cpu", precision: str = "auto"):
        from captioner.model import DEFAULT_CHECKPOINT, Captioner
        from lstmkit.devices import resolve_device

        self.device = resolve_device(device)
        self.precision = precision
        super().__init__(checkpoint or DEFAULT_CHECKPOINT, Captioner, self._load)
        self.max_images = max_images
        self.batcher = MicroBatcher(self._run) if batching else None
        self.run_batch = self._caption_prepared

    def attends(self) -> bool:
        """Whether the checkpoint is an attention model (from its metadata alone)."""
        from lstmkit.checkpoint import CheckpointError

        try:
            return self.model_class.read_config(self.checkpoint).decoder == "attention"
        except CheckpointError:
            return False

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
        from captioner.decoding import DecodingConfig
        from lstmkit.checkpoint import CheckpointError

        try:
            return self.model_class.read_settings(self.checkpoint)[1].beam_size
        except CheckpointError:
            return DecodingConfig().beam_size

    def _caption_prepared(self, items: list, beam: int) -> list:
        return self.model.get().caption_prepared(items, beam_size=beam)

    def _run(self, images: list, beam: int) -> list:
        """Caption prepared photos (``Captioner.prepare``) in one model run, on the model thread."""
        return self.run(self.run_batch, images, beam)  # one thread: one model run at a time

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
        preprocess = self.model.get().require_encoder().preprocess
        results, images, slots = [], [], []
        for path in paths:
            name = Path(str(path)).name
            try:
                image = load_image(path, draft_size=preprocess.size)
            except ImageError as err:
                results.append({"image": name, "error": str(err)})
                continue
            images.append(image)
            slots.append(len(results))
            results.append({"image": name, **({"picture": image} if keep_images else {})})
        for slot, caption in zip(slots, self.caption_images(images, beam)):
            results[slot].update(caption)
        return results

    def caption_images(self, images: Sequence, beam: int | None = None) -> list[dict]:
        """Caption photos already read by the safe loader (``caption_paths``, the live
        camera's frames): each prepared here, on the caller's thread (in parallel across
        requests), then run with those of any concurrent requests in one batch. One result
        dict (``CaptionResult.to_dict``) per photo."""
        if not images:
            return []
        model = self.model.get()
        prepared = [model.prepare(image) for image in images]
        captions = self.batcher.submit(prepared, beam) if self.batcher else self._run(prepared, beam)
        return [caption.to_dict() for caption in captions]
