"""MNIST for the demo: the flags that say where it is, and reading it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def mnist_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--data-root`` (the folder holding MNIST/raw) and ``--no-download``."""
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="folder holding MNIST/raw (default data)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading when MNIST is missing")
    return parser


def read_mnist(args: argparse.Namespace, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from demos.mnist.model import load_mnist

    return load_mnist(args.data_root, train=train, download=not args.no_download)
