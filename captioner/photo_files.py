"""Photo files for a ``DataLoader``: each decoded by the safe loader and made ready for the
encoder (and, for models with the COCO detector, letterboxed for it), or the reason it could
not be read. The command line and the feature cache read folders of photos through it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from captioner.detector import CocoDetector
from captioner.encoders import Preprocessing
from lstmkit.images import ImageError, load_image


class PhotoFiles(Dataset):
    """Item ``i``: (i, (the encoder's input, the detector's or None), None), or (i, None, the
    reason in one sentence) for a file that is not a photo it can read."""

    def __init__(self, paths: Sequence[Path], preprocess: Preprocessing, detect: bool = False):
        self.paths, self.preprocess, self.detect = list(paths), preprocess, detect

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.paths[i], draft_size=self.preprocess.size)
        except ImageError as err:
            return i, None, str(err)
        return i, (self.preprocess(image), CocoDetector.prepare(image) if self.detect else None), None
