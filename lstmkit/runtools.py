"""What every script shares (the caption scripts in ``training/`` and the demos'):
seeding, distributed setup, metrics files, loss curves, and turning a user's mistake into
one clear sentence."""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


class UserError(Exception):
    """A mistake in the command line or the data: reported in one sentence, exit status 2
    (a library's own such errors subclass it: the captioner's encoder weights, its features)."""


def cli(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Run ``main``; known user errors end in one clear sentence and a non-zero exit."""
    from lstmkit.checkpoint import CheckpointError
    from lstmkit.devices import DeviceError
    from lstmkit.downloads import DownloadError
    from lstmkit.images import ImageError

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        try:
            return main(argv) or 0
        except (UserError, CheckpointError, ImageError, FileNotFoundError, DownloadError, DeviceError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def run_flags(parser: argparse.ArgumentParser, *, out: str | None, epochs: int | None, batch_size: int,
              lr: float, warmup_steps: int, save_every: int) -> argparse.ArgumentParser:
    """The flags every training script shares, with each script's own defaults:
    ``--out --epochs --batch-size --lr --warmup-steps --seed --save-every --max-steps
    --resume --dry-run``. ``out=None`` makes ``--out`` required."""
    parser.add_argument("--out", type=Path, required=out is None, default=None if out is None else Path(out),
                        help="run folder" + ("" if out is None else f" (default {out})"))
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"default {epochs}" if epochs else "default 20 (1 with --dry-run)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup-steps", type=int, default=warmup_steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=save_every, help="steps between resumable checkpoints")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in total (0: no limit)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.safetensors")
    parser.add_argument("--dry-run", action="store_true", help="a few steps on a few samples")
    return device_flag(parser)


def evaluation_flags(parser: argparse.ArgumentParser, checkpoint: Path) -> argparse.ArgumentParser:
    """``--checkpoint`` (default: the shipped one), ``--json-out`` and ``--device``, for
    every evaluation script."""
    parser.add_argument("--checkpoint", type=Path, default=checkpoint)
    parser.add_argument("--json-out", type=Path, default=None, help="write the report here as JSON")
    return device_flag(parser)


def write_report(args: argparse.Namespace, report: dict) -> None:
    """The report as JSON in ``--json-out`` (atomically), when one was given."""
    import json

    from lstmkit.checkpoint import atomic_write_text

    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(report, indent=2))


def device_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--device``, for every training and evaluation script."""
    from lstmkit.devices import DEVICE_CHOICES

    parser.add_argument("--device", default="auto",
                        help=f"{DEVICE_CHOICES} (default auto: a GPU if there is one; torchrun: one GPU per process)")
    return parser


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------ distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # this process's device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_mean(self, value: float) -> float:
        if not self.enabled:
            return value
        # nccl reduces tensors on the GPU only
        backend = torch.distributed.get_backend()
        t = torch.tensor([value], dtype=torch.float64, device=self.device if backend == "nccl" else "cpu")
        torch.distributed.all_reduce(t)
        return float(t) / self.world


def init_distributed(device: str = "auto") -> Dist:
    """This process's device (``--device``), and the process group when started by
    ``torchrun``: one GPU per process with nccl, or CPU processes with gloo."""
    from lstmkit.devices import resolve_device

    chosen = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=chosen)
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if chosen.type == "mps":
        raise UserError("torchrun runs one process per GPU with nccl or per CPU share with gloo; Apple's MPS "
                        "has neither: train in one process (python -m ...) or pass --device cpu")
    if chosen.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_world > gpus:
            raise UserError(f"torchrun started {local_world} processes on this machine, which has {gpus} "
                            f"GPU{'s' if gpus != 1 else ''}: use --nproc_per_node {gpus} (one process per GPU), "
                            "or --device cpu")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    torch.distributed.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    dist = Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, chosen)
    if not dist.main:
        logging.getLogger().setLevel(logging.WARNING)
    return dist


def close_distributed(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------- metrics and curves

def write_metrics(path: Path, rows: list[dict]) -> None:
    """The whole history as CSV, rewritten atomically after every epoch."""
    from lstmkit.checkpoint import atomic_write

    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def plot_curves(path: Path, rows: list[dict], left: list[str], right: list[str] = (), title: str = "") -> None:
    """Loss curves (left axis) and a quality metric (right axis) by epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lstmkit.checkpoint import atomic_write

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in left:
        ax.plot(epochs, [r.get(key) for r in rows], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    lines, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for key in right:
            ax2.plot(epochs, [r.get(key) for r in rows], marker="s", linestyle="--", color="tab:green", label=key)
        ax2.set_ylabel(", ".join(right))
        more = ax2.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


class NonFiniteLoss(ArithmeticError):
    """The loss is NaN or infinite; the step was not taken."""


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters, clip: float) -> float:
    """One training step: backward, clip the gradient norm to ``clip``, update. Returns the
    loss. A NaN or infinite loss raises ``NonFiniteLoss`` before anything changes."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    return value


def warmup_cosine(warmup: int, total: int, floor: float):
    """For ``LambdaLR``: linear warm-up over ``warmup`` steps, then cosine decay to
    ``floor`` times the base learning rate at step ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
