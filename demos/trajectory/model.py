"""The hand-trajectory predictor: 30 past (x, y) points in, the next 10 out.

Made for a Unity "ghost hand" that runs ahead of the tracked one. Unity's inference
engine (Sentis) has no GRU, so the recurrent core is an LSTM:

    past points -> displacements from the last point, divided by the window's own scale
      -> linear embedding + sinusoidal positional encoding
      -> multi-head self-attention (residual + LayerNorm) -> GEGLU feed-forward
      -> 2-layer bidirectional LSTM
      -> multi-head self-attention (residual + LayerNorm) -> GEGLU feed-forward
      -> head: 10 future displacements from the last point, times the scale, plus the last point

The scale is the mean step length of the past window, so the model works in any units
(pixels, tablet units, metres) and the exported ONNX graph takes and returns raw positions.

Also here: reading the recorded trajectories, sliding windows, the two baselines (last
position, constant velocity), ADE/FDE, and blending overlapping predictions with
exponentially decaying weights.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lstmkit.checkpoint import CHECKPOINTS, Saveable

DEFAULT_CHECKPOINT = CHECKPOINTS / "trajectory.safetensors"
DEFAULT_ONNX = CHECKPOINTS / "trajectory.onnx"


@dataclass
class TrajectoryConfig:
    past: int = 30
    future: int = 10
    d_model: int = 64
    heads: int = 4
    lstm_hidden: int = 64
    lstm_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1
    geglu: str = "split"  # "split": value * GELU(gate); "original": x * GELU(x) as in the first version
    min_scale: float = 1e-6
    blend_decay: float | None = None  # chosen on validation data after training; None: no blending


# ------------------------------------------------------------------------------ model

class GEGLU(nn.Module):
    """``split``: project to 2h, then value * GELU(gate) (Shazeer 2020).
    ``original``: project to h, then h * GELU(h), as the first version of this model did."""

    def __init__(self, dim: int, hidden: int, kind: str = "split"):
        super().__init__()
        if kind not in ("split", "original"):
            raise ValueError("geglu must be 'split' or 'original'")
        self.kind = kind
        self.proj = nn.Linear(dim, 2 * hidden if kind == "split" else hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.kind == "split":
            value, gate = h.chunk(2, dim=-1)
            return value * F.gelu(gate)
        return h * F.gelu(h)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float, geglu: str):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult, geglu), nn.Dropout(dropout), nn.Linear(dim * mult, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + out)


def positional_encoding(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length).float()[:, None]
    freq = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


class TrajectoryPredictor(Saveable, nn.Module):
    kind, config_class, default_checkpoint = "trajectory", TrajectoryConfig, DEFAULT_CHECKPOINT

    def __init__(self, config: TrajectoryConfig | None = None):
        super().__init__()
        self.config = c = config or TrajectoryConfig()
        self.embed = nn.Linear(4, c.d_model)
        self.register_buffer("pe", positional_encoding(c.past, c.d_model), persistent=False)
        self.attn1 = SelfAttention(c.d_model, c.heads, c.dropout)
        self.ff1 = FeedForward(c.d_model, c.ff_mult, c.dropout, c.geglu)
        self.lstm = nn.LSTM(c.d_model, c.lstm_hidden, c.lstm_layers, batch_first=True, bidirectional=True,
                            dropout=c.dropout if c.lstm_layers > 1 else 0.0)
        self.lstm_out = nn.Linear(2 * c.lstm_hidden, c.d_model)
        self.attn2 = SelfAttention(c.d_model, c.heads, c.dropout)
        self.ff2 = FeedForward(c.d_model, c.ff_mult, c.dropout, c.geglu)
        self.head = nn.Sequential(nn.Linear(2 * c.d_model, c.d_model), nn.GELU(), nn.Linear(c.d_model, 2 * c.future))

    def normalise(self, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Past positions (B, T, 2) -> model input (B, T, 4), last point (B, 1, 2), scale (B, 1, 1)."""
        last = past[:, -1:, :]
        steps = past[:, 1:] - past[:, :-1]
        scale = steps.norm(dim=-1).mean(dim=1, keepdim=True)[..., None].clamp_min(self.config.min_scale)
        rel = (past - last) / scale
        vel = torch.cat([torch.zeros_like(steps[:, :1]), steps], dim=1) / scale
        return torch.cat([rel, vel], dim=-1), last, scale

    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input (B, T, 4) -> normalised future displacements (B, future, 2)."""
        h = self.embed(x) + self.pe
        h = self.ff1(self.attn1(h))
        h, _ = self.lstm(h)
        h = self.ff2(self.attn2(self.lstm_out(h)))
        pooled = torch.cat([h[:, -1], h.mean(dim=1)], dim=-1)
        return self.head(pooled).view(-1, self.config.future, 2)

    def forward(self, past: torch.Tensor) -> torch.Tensor:
        """Past positions (B, past, 2) -> predicted future positions (B, future, 2), same units."""
        x, last, scale = self.normalise(past)
        return last + self.forward_normalised(x) * scale

    @torch.inference_mode()
    def predict(self, past: np.ndarray | torch.Tensor) -> np.ndarray:
        """One trajectory (T, 2) or a batch (B, T, 2) of at least ``past`` points each;
        the last ``past`` points are used. Returns the future (.., future, 2) as numpy."""
        x = torch.as_tensor(np.asarray(past, dtype=np.float32))
        single = x.ndim == 2
        x = x[None] if single else x
        if x.shape[1] < self.config.past:
            x = pad_history(x, self.config.past)
        out = self.run_batches(x[:, -self.config.past:])
        return out[0] if single else out

    @torch.no_grad()
    def run_batches(self, past: torch.Tensor, batch_size: int = 2048) -> np.ndarray:
        """The model on (N, past, 2) windows, in batches on its own device -> numpy (N, future, 2)."""
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([self(past[i:i + batch_size].to(device)).cpu() for i in range(0, len(past), batch_size)]
                         ).numpy()


def pad_history(x: torch.Tensor, length: int) -> torch.Tensor:
    """Extend short histories (B, T, 2) at the front, as if the hand had rested at its
    first point before."""
    missing = length - x.shape[1]
    return torch.cat([x[:, :1].expand(-1, missing, -1), x], dim=1) if missing > 0 else x


# ------------------------------------------------------------------------- baselines

def last_position(past: np.ndarray, future: int = 10) -> np.ndarray:
    """(N, T, 2) -> (N, future, 2): stay where you are."""
    return np.repeat(past[:, -1:], future, axis=1)


def constant_velocity(past: np.ndarray, future: int = 10) -> np.ndarray:
    """(N, T, 2) -> (N, future, 2): keep the last step's velocity."""
    velocity = past[:, -1] - past[:, -2]
    return past[:, -1:] + velocity[:, None] * np.arange(1, future + 1)[None, :, None]


def ade_fde(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Average and final displacement error over windows (N, future, 2)."""
    dist = np.linalg.norm(pred - truth, axis=-1)
    return float(dist.mean()), float(dist[:, -1].mean())


# -------------------------------------------------------------------------- blending

def blend_sequence(predictions: np.ndarray, decay: float) -> np.ndarray:
    """Blend the overlapping predictions made along one trajectory.

    ``predictions[t]`` (T, future, 2) is the forecast made after point t for points
    t+1 .. t+future. The blended forecast after point t averages, for each future point,
    every earlier forecast that also covers it, with weight ``exp(-decay * age)``, where age
    is how many steps ago that forecast was made. ``decay = inf`` keeps only the newest.
    """
    steps, future, _ = predictions.shape
    if math.isinf(decay):
        return predictions.copy()
    blended = np.zeros_like(predictions)
    for t in range(steps):
        total = np.zeros((future, 2))
        weight = np.zeros((future, 1))
        for age in range(min(future, t + 1)):
            k = np.arange(future - age)  # the older forecast's entries that still lie ahead
            w = math.exp(-decay * age)
            total[k] += w * predictions[t - age, k + age]
            weight[k] += w
        blended[t] = total / weight
    return blended


# ------------------------------------------------------------------------------ data

def read_mat_sequences(path: str | os.PathLike) -> list[np.ndarray]:
    """The sequences of a .mat laid out like UCI Character Trajectories: ``xtrain`` (or, in
    the UCI archive's ``mixoutALL_shifted.mat``, ``mixout``) cells of 3 x T (x velocity,
    y velocity, pen force), zero padded. Returns positions (T', 2), the cumulative sum of
    the velocities with the all-zero padding at both ends removed."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .mat file at {path}")
    try:
        data = loadmat(str(path), variable_names=["xtrain", "mixout"])
    except Exception as err:
        raise ValueError(f"{path} is not a readable MATLAB file ({err})") from err
    name = "xtrain" if "xtrain" in data else "mixout" if "mixout" in data else None
    if name is None:
        raise ValueError(f"{path} has no 'xtrain' (or 'mixout') variable")
    cells = data[name].ravel()
    sequences = []
    for cell in cells:
        seq = np.asarray(cell, dtype=np.float64)
        if seq.ndim != 2 or seq.shape[0] < 2:
            continue
        active = np.flatnonzero(np.abs(seq).sum(axis=0) > 0)
        if len(active) < 2:
            continue
        velocity = seq[:2, active[0]:active[-1] + 1].T
        sequences.append(np.cumsum(velocity, axis=0))
    return sequences


def read_mat_letters(path: str | os.PathLike) -> list[str]:
    """The letter of each sequence of a UCI Character Trajectories .mat (``ytrain`` labels
    named by ``key``), or an empty list when the file has no labels."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path), variable_names=["ytrain", "key"])
        keys = [str(np.asarray(k).ravel()[0]) for k in data["key"].ravel()]
        return [keys[int(y) - 1] for y in data["ytrain"].ravel()]  # MATLAB counts from 1
    except (KeyError, IndexError, ValueError, OSError):
        return []


def held_out_recordings(path: str | os.PathLike, limit: int = 40) -> list[tuple[int, str, np.ndarray]]:
    """Real pen trajectories the model never trained on (the held-out test sequences of
    ``split_sequences``): (sequence index, its letter or "", positions with y pointing down
    as on a screen; the tablet's y points up)."""
    sequences = read_mat_sequences(path)
    letters = read_mat_letters(path)
    test = split_sequences(len(sequences))["test"][:limit]
    return [(i, letters[i] if letters else "", sequences[i] * np.array([1.0, -1.0])) for i in test]


def read_hand_tracks(path: str | os.PathLike) -> tuple[list[np.ndarray], list[int]]:
    """MediaPipe fingertip tracks: rows of a class id and 16 (x, y) points."""
    tracks, labels = [], []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 33:
                continue
            points = np.asarray([float(v) for v in row[1:33]], dtype=np.float64).reshape(16, 2)
            tracks.append(points)
            labels.append(int(row[0]))
    return tracks, labels


def hand_track_windows(tracks: list[np.ndarray], past: int = 30, future: int = 10,
                       moving_only: bool = True) -> np.ndarray:
    """16-point fingertip tracks as windows (N, past + future, 2): the first 16 - future
    points, padded at the front as if the hand had rested, then ``future`` to predict.
    Tracks whose known points do not move are left out when ``moving_only``."""
    known = 16 - future
    kept = [t for t in tracks if not moving_only or np.abs(np.diff(t[:known], axis=0)).sum() > 0]
    if not kept:
        return np.zeros((0, past + future, 2), np.float32)
    x = torch.from_numpy(np.stack(kept).astype(np.float32))
    return torch.cat([pad_history(x[:, :known], past), x[:, known:]], dim=1).numpy()


def windows_report(model: TrajectoryPredictor, windows: np.ndarray, batch_size: int = 2048) -> dict:
    """ADE/FDE of the model and both baselines on ready-made windows."""
    c = model.config
    if len(windows) == 0:
        return {"windows": 0}
    past, truth = windows[:, :c.past], windows[:, c.past:]
    pred = model.run_batches(torch.from_numpy(past), batch_size)
    report = {"windows": int(len(windows))}
    for name, guess in (("model", pred), ("last_position", last_position(past, c.future)),
                        ("constant_velocity", constant_velocity(past, c.future))):
        ade, fde = ade_fde(guess, truth)
        report[name] = {"ade": ade, "fde": fde}
    return report


def sliding_windows(sequences: list[np.ndarray], past: int = 30, future: int = 10, stride: int = 1) -> np.ndarray:
    """Every window of past + future consecutive points, (N, past + future, 2)."""
    size = past + future
    windows = [seq[start:start + size] for seq in sequences for start in range(0, len(seq) - size + 1, stride)]
    return np.stack(windows).astype(np.float32) if windows else np.zeros((0, size, 2), np.float32)


def split_sequences(n: int, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> dict:
    """Sequence indices for train, val and test: split by sequence, never by window."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


# ------------------------------------------------------------------------ evaluation

@torch.inference_mode()
def forecast_sequence(model: TrajectoryPredictor, seq: np.ndarray, batch_size: int = 1024):
    """Forecasts after every point of one sequence that has ``past`` points before it and
    ``future`` after it: (predictions, truths, pasts), each in consecutive order."""
    c = model.config
    windows = sliding_windows([seq], c.past, c.future)
    if len(windows) == 0:
        return (np.zeros((0, c.future, 2), np.float32),) * 2 + (np.zeros((0, c.past, 2), np.float32),)
    preds = model.run_batches(torch.from_numpy(windows[:, :c.past]), batch_size)
    return preds, windows[:, c.past:], windows[:, :c.past]


def evaluate_sequences(model: TrajectoryPredictor, sequences: list[np.ndarray],
                       decays: tuple[float, ...] = ()) -> dict:
    """ADE and FDE of the model, of each blend decay, and of both baselines, over every
    window of every sequence (all in the sequences' own units)."""
    c = model.config
    collected: dict[str, list[np.ndarray]] = {"model": [], "truth": [], "last_position": [],
                                              "constant_velocity": []}
    collected.update({f"blend_{d:g}": [] for d in decays})
    for seq in sequences:
        preds, truths, pasts = forecast_sequence(model, seq)
        if len(preds) == 0:
            continue
        collected["model"].append(preds)
        collected["truth"].append(truths)
        collected["last_position"].append(last_position(pasts, c.future))
        collected["constant_velocity"].append(constant_velocity(pasts, c.future))
        for d in decays:
            collected[f"blend_{d:g}"].append(blend_sequence(preds, d))
    if not collected["truth"]:
        return {"windows": 0, "sequences": len(sequences)}
    truth = np.concatenate(collected.pop("truth"))
    report = {"windows": int(len(truth)), "sequences": len(sequences)}
    for name, parts in collected.items():
        ade, fde = ade_fde(np.concatenate(parts), truth)
        report[name] = {"ade": ade, "fde": fde}
    return report
