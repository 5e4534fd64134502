"""The row-by-row LSTM digit classifier, and drawn-digit preprocessing.

The classifier reads a 28x28 digit as a sequence of 28 rows of 28 pixels with our own
``LSTM`` (hand-written ``LSTMCell``s) and classifies the last hidden state with a linear
head. At inference the same weights can run through torch's fused ``nn.LSTM``, which is
faster; ``forward(..., fused=True)`` does that, and the tests pin that the paths agree.

``preprocess_drawing`` turns a drawing (dark on light or light on dark, any size) into
an MNIST-style input: crop to the ink, scale the longer side to 20 pixels, and centre by
centre of mass in a 28x28 frame, the way the MNIST digits were made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from lstmkit.checkpoint import CHECKPOINTS, Saveable
from lstmkit.lstm import LSTM

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DEFAULT_CHECKPOINT = CHECKPOINTS / "mnist.safetensors"


# ------------------------------------------------------------------------------- data

def load_mnist(root: str | Path, train: bool, download: bool = True,
               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits from ``root/MNIST/raw`` as float (N, 28, 28) in [0, 1] and labels (N,).
    Missing files are downloaded there first (``downloads.download_mnist``: MD5-checked,
    resumable, with mirrors) unless ``download`` is False. The one MNIST loader: the
    training scripts, the evaluations and the app's next-frame tab all read through it."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    root = Path(root)
    raw = root / "MNIST" / "raw"
    name = "train" if train else "t10k"
    if not (raw / f"{name}-images-idx3-ubyte").exists() or not (raw / f"{name}-labels-idx1-ubyte").exists():
        if not download:
            raise FileNotFoundError(f"no MNIST {name} files in {raw} (downloading was turned off)")
        from lstmkit.downloads import download_mnist

        download_mnist(root, progress=progress)
    # torchvision's own idx readers, on the one split asked for (its MNIST class wants all four files)
    return (read_image_file(str(raw / f"{name}-images-idx3-ubyte")).float() / 255.0,
            read_label_file(str(raw / f"{name}-labels-idx1-ubyte")))


def split_train_val(images: torch.Tensor, labels: torch.Tensor, n_val: int = 5000, seed: int = 1234):
    """The same 5,000 training digits held out for validation on every run."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    return (images[train], labels[train]), (images[val], labels[val])


@dataclass
class MnistConfig:
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.1


class RowLSTMClassifier(Saveable, nn.Module):
    kind, config_class, default_checkpoint = "mnist", MnistConfig, DEFAULT_CHECKPOINT

    def __init__(self, config: MnistConfig | None = None):
        super().__init__()
        self.config = config or MnistConfig()
        c = self.config
        self.lstm = LSTM(28, c.hidden_size, c.num_layers, dropout=c.dropout)
        self.head = nn.Linear(c.hidden_size, 10)
        self._drop_fused()

    def forward(self, images: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """``images``: (B, 28, 28) or (B, 1, 28, 28), pixels in [0, 1]. Returns logits (B, 10)."""
        rows = (images.reshape(-1, 28, 28) - MNIST_MEAN) / MNIST_STD
        if fused:
            if self.training:
                raise RuntimeError("the fused path is for inference; call eval() first")
            out, _ = self.fused_lstm()(rows)
        else:
            out, _ = self.lstm(rows)
        return self.head(out[:, -1])

    def fused_lstm(self) -> nn.LSTM:
        """The same weights in torch's fused LSTM, built on first use. It is kept outside
        the module's registry, so it never shows up in ``state_dict`` or a checkpoint."""
        cache = self.__dict__["_fused_cache"]
        if not cache:
            cache.append(self.lstm.to_torch().eval().requires_grad_(False))
        return cache[0]

    def _drop_fused(self) -> None:
        self.__dict__["_fused_cache"] = []

    def train(self, mode: bool = True):
        if mode:
            self._drop_fused()  # training changes the weights; rebuild the fused copy on next use
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._drop_fused()
        return super()._load_from_state_dict(*args, **kwargs)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, 10), through the fused LSTM."""
        self.eval()
        return self(images, fused=True).softmax(-1)


@torch.no_grad()
def accuracy(model: RowLSTMClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
             fused: bool = False) -> tuple[float, torch.Tensor]:
    """Accuracy and predictions, through our cells or (``fused``) torch's fused LSTM, on
    the model's device."""
    model.eval()
    device = next(model.parameters()).device
    preds = torch.cat([model(images[i:i + batch_size].to(device), fused=fused).argmax(-1).cpu()
                       for i in range(0, len(images), batch_size)])
    return (preds == labels).float().mean().item(), preds


def preprocess_drawing(image: Image.Image | np.ndarray, ink_threshold: float = 0.1) -> torch.Tensor:
    """A drawing -> (28, 28) float tensor in [0, 1], white digit on black, MNIST style.

    Raises ``ValueError`` when there is no ink (an empty canvas)."""
    ink = _ink(image)
    if not np.isfinite(ink).all():
        raise ValueError("The drawing contains invalid pixel values.")
    if ink.max() <= ink_threshold:
        raise ValueError("The canvas is empty: draw a digit first.")
    rows = np.flatnonzero((ink > ink_threshold).any(axis=1))
    cols = np.flatnonzero((ink > ink_threshold).any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height, width = crop.shape
    scale = 20.0 / max(height, width)
    digit = Image.fromarray((crop * 255).astype(np.uint8), mode="L")
    width_after = _stroke_width(crop > 0.5) * scale
    if width_after < 1.8:  # thin strokes on a big canvas would fade when shrunk; thicken them as MNIST's
        grow = int(round((2.2 - width_after) / scale))
        size = min(max(3, grow | 1), 31)
        digit = digit.filter(ImageFilter.MaxFilter(size))
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(digit.resize(new_size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    digit = np.clip(digit, 0.0, 1.0)
    frame = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - digit.shape[0]) // 2, (28 - digit.shape[1]) // 2
    frame[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    # centre of mass to the middle, by whole pixels, as MNIST did
    ys, xs = np.indices(frame.shape)
    mass = frame.sum()
    dy, dx = int(round(13.5 - (ys * frame).sum() / mass)), int(round(13.5 - (xs * frame).sum() / mass))
    frame = _shift(frame, dy, dx)
    return torch.from_numpy(frame)


def _stroke_width(mask: np.ndarray) -> float:
    """About how many pixels wide the strokes are: twice the area over the perimeter."""
    area = mask.sum()
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    perimeter = max(1, (mask & ~inner).sum())
    return float(2 * area / perimeter)


def _ink(image: Image.Image | np.ndarray) -> np.ndarray:
    """How much ink each pixel holds, in [0, 1], whatever the colours and transparency."""
    if isinstance(image, np.ndarray):
        array = np.asarray(image)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if array.max() <= 1.0 and array.dtype.kind == "f":
            array = array * 255.0
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim == 3 and array.shape[2] in (3, 4):
            mode = "RGBA" if array.shape[2] == 4 else "RGB"
            image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode=mode)
        elif array.ndim == 2:
            image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")
        else:
            raise ValueError(f"A drawing must be a 2-D image, not an array of shape {array.shape}.")
    if image.width < 1 or image.height < 1:
        raise ValueError("The drawing has no pixels.")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[:, :, 3]
        if alpha.min() < 0.99:  # a transparent canvas: whatever is painted is the ink
            return alpha
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    # dark ink on a light background (a drawing, a scan) or light ink on dark (MNIST itself)
    return 1.0 - grey if np.median(grey) > 0.5 else grey


def _shift(frame: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(frame)
    h, w = frame.shape
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[dst_y, dst_x] = frame[src_y, src_x]
    return out
