"""The ConvLSTM next-frame predictor and the Moving MNIST generator.

Moving MNIST (Srivastava et al. 2015): two real MNIST digits bounce inside a 64x64
frame for 20 frames; the first 10 are the input, the last 10 the target. Clips are made
from a seed, from the training digits for training and the test digits for evaluation.

The model is the encoder-forecaster of Shi et al. (2015), built from the ``ConvLSTMCell``
of ``captioner/lstm.py``. Frames are first folded into patches (64x64x1 -> 16x16x16, as
PredRNN does), which keeps the recurrent convolutions cheap enough for a CPU. The encoder
stack reads the 10 input frames; the forecaster stack starts from the encoder's states
and predicts the next frame from the previous one, 10 times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lstmkit.checkpoint import CHECKPOINTS, Saveable
from lstmkit.lstm import ConvLSTMCell

TEST_SEED = 2024  # the held-out Moving MNIST clips: made from the MNIST test digits with this seed
DEFAULT_CHECKPOINT = CHECKPOINTS / "nextframe.safetensors"


# ---------------------------------------------------------------------- Moving MNIST

class MovingMNIST:
    """Clips of ``digits`` moving digits bouncing in a ``size`` x ``size`` frame.

    ``digits``: (N, 28, 28) float in [0, 1]. ``clip(i)`` is a pure function of the seed and
    ``i``, so a dataset is reproducible without storing it."""

    def __init__(self, digits: torch.Tensor, frames: int = 20, size: int = 64, num_digits: int = 2,
                 seed: int = 0, max_speed: float = 3.0):
        self.digits = digits.float()
        self.frames, self.size, self.num_digits, self.seed, self.max_speed = frames, size, num_digits, seed, max_speed

    def clip(self, index: int) -> torch.Tensor:
        """One clip (frames, size, size), pixel values in [0, 1]."""
        rng = np.random.default_rng([self.seed, index])
        frames = np.zeros((self.frames, self.size, self.size), dtype=np.float32)
        limit = self.size - 28
        for _ in range(self.num_digits):
            digit = self.digits[rng.integers(len(self.digits))].numpy()
            x, y = rng.uniform(0, limit, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            speed = rng.uniform(2.0, self.max_speed)
            vx, vy = speed * np.cos(angle), speed * np.sin(angle)
            for t in range(self.frames):
                top, left = int(round(y)), int(round(x))
                frames[t, top:top + 28, left:left + 28] = np.maximum(frames[t, top:top + 28, left:left + 28], digit)
                x, y = x + vx, y + vy
                if not 0 <= x <= limit:  # bounce off the walls
                    vx, x = -vx, float(np.clip(x, 0, limit) * 2 - x)
                if not 0 <= y <= limit:
                    vy, y = -vy, float(np.clip(y, 0, limit) * 2 - y)
        return torch.from_numpy(frames)

    def batch(self, indices) -> torch.Tensor:
        """Clips (B, frames, 1, size, size)."""
        return torch.stack([self.clip(int(i)) for i in indices])[:, :, None]


# ------------------------------------------------------------------------------ model

@dataclass
class NextFrameConfig:
    input_frames: int = field(default=10, metadata={"weights": False})  # frames seen
    output_frames: int = field(default=10, metadata={"weights": False})  # frames predicted
    size: int = 64
    patch: int = 4
    hidden: tuple[int, ...] = (64, 64)
    kernel_size: int = 3

    def __post_init__(self):
        self.hidden = tuple(self.hidden)  # JSON brings it back as a list

    @property
    def clip_frames(self) -> int:
        return self.input_frames + self.output_frames

    def split(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips (B, T, 1, H, W) -> the frames the model sees and the frames it predicts."""
        return clips[:, :self.input_frames], clips[:, self.input_frames:self.clip_frames]


def fold(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, patch*patch, H/patch, W/patch)."""
    return F.pixel_unshuffle(frames, patch)


def unfold(patches: torch.Tensor, patch: int) -> torch.Tensor:
    return F.pixel_shuffle(patches, patch)


class ConvLSTMStack(nn.Module):
    def __init__(self, in_channels: int, hidden: tuple[int, ...], kernel_size: int):
        super().__init__()
        channels = [in_channels, *hidden]
        self.cells = nn.ModuleList(ConvLSTMCell(channels[i], channels[i + 1], kernel_size) for i in range(len(hidden)))

    def forward(self, x: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        new_states = []
        for cell, state in zip(self.cells, states):
            h, c = cell(x, state)
            new_states.append((h, c))
            x = h
        return x, new_states

    def init_states(self, batch: int, grid: tuple[int, int], device, dtype) -> list:
        return [cell.init_hidden(batch, grid, device, dtype) for cell in self.cells]


class NextFramePredictor(Saveable, nn.Module):
    kind, config_class, default_checkpoint = "nextframe", NextFrameConfig, DEFAULT_CHECKPOINT

    def __init__(self, config: NextFrameConfig | None = None):
        super().__init__()
        self.config = c = config or NextFrameConfig()
        channels = c.patch * c.patch
        self.encoder = ConvLSTMStack(channels, c.hidden, c.kernel_size)
        self.forecaster = ConvLSTMStack(channels, c.hidden, c.kernel_size)
        self.output = nn.Conv2d(sum(c.hidden), channels, kernel_size=1)

    def forward(self, frames: torch.Tensor, targets: torch.Tensor | None = None,
                teacher_prob: float = 0.0) -> torch.Tensor:
        """``frames`` (B, T_in, 1, H, W) in [0, 1] -> predicted next frames (B, T_out, 1, H, W).
        During training, ``targets`` with ``teacher_prob`` > 0 feeds true frames to the
        forecaster in place of its own predictions (scheduled sampling)."""
        c = self.config
        batch = frames.shape[0]
        grid = (c.size // c.patch, c.size // c.patch)
        states = self.encoder.init_states(batch, grid, frames.device, frames.dtype)
        for t in range(frames.shape[1]):
            _, states = self.encoder(fold(frames[:, t], c.patch), states)
        previous = fold(frames[:, -1], c.patch)
        outputs = []
        for t in range(c.output_frames):
            _, states = self.forecaster(previous, states)
            # the forecaster reads all its layers' states, as in Shi et al.
            prediction = torch.sigmoid(self.output(torch.cat([h for h, _ in states], dim=1)))
            outputs.append(prediction)
            previous = prediction
            if targets is not None and teacher_prob > 0:
                use_truth = (torch.rand(batch, 1, 1, 1, device=frames.device) < teacher_prob).to(prediction.dtype)
                previous = use_truth * fold(targets[:, t], c.patch) + (1 - use_truth) * prediction
        return torch.stack([unfold(o, c.patch) for o in outputs], dim=1)

    @torch.inference_mode()
    @torch.no_grad()
    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        """The predicted frames of ``frames``, computed on the model's device, on the CPU."""
        self.eval()
        return self(frames.to(next(self.parameters()).device)).cpu()


# ---------------------------------------------------------------------------- metrics

def frame_mse(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Squared error summed over a frame's pixels, per frame: (B, T, 1, H, W) -> (T,), the
    mean over the batch (the "MSE per frame" of the Moving MNIST papers)."""
    return ((pred - truth) ** 2).sum(dim=(2, 3, 4)).mean(dim=0)


def ssim(pred: torch.Tensor, truth: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean structural similarity per frame, (B, T, 1, H, W) -> (T,), data range 1
    (Wang et al. 2004 with a uniform window, as scikit-image computes it by default)."""
    b, t = pred.shape[:2]
    x = pred.reshape(b * t, 1, *pred.shape[-2:]).double()
    y = truth.reshape(b * t, 1, *truth.shape[-2:]).double()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    n = window * window
    mean = lambda z: F.avg_pool2d(z, window, stride=1)  # noqa: E731
    mx, my = mean(x), mean(y)
    cov = n / (n - 1)  # sample covariance, as scikit-image
    vx, vy = cov * (mean(x * x) - mx * mx), cov * (mean(y * y) - my * my)
    vxy = cov * (mean(x * y) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(b, t).mean(dim=0).float()


def copy_last_frame(frames: torch.Tensor, output_frames: int = 10) -> torch.Tensor:
    """The baseline: the last input frame, repeated."""
    return frames[:, -1:].expand(-1, output_frames, -1, -1, -1)
