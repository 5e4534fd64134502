"""Train the row-by-row LSTM MNIST classifier.

    python -m demos.mnist.train --data-root ../shared/data --out runs/mnist

Reads MNIST with torchvision's loader from ``--data-root`` (``MNIST/raw/`` inside it),
downloading it there first when it is missing. 5,000 training digits are held out for
validation (the same ones every run); the 10,000 test digits are only for
``demos.mnist.evaluate``. Adam with warm-up and cosine decay, light random affine
augmentation, and the best validation accuracy is kept as ``--out/best.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

from demos.mnist.data import mnist_flags, read_mnist
from demos.mnist.model import MnistConfig, RowLSTMClassifier, accuracy, split_train_val
from lstmkit.devices import resolve_device
from lstmkit.loop import Loop, epoch_order
from lstmkit.runtools import (
    Timer,
    cli,
    optimizer_step,
    run_flags,
    seed_everything,
    warmup_cosine,
)


def augment(x: torch.Tensor, degrees: float = 10.0, scale: float = 0.1, shift_px: float = 2.0) -> torch.Tensor:
    """Random small rotations, scalings and shifts of a batch (B, 28, 28), on the CPU."""
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(degrees)
    s = 1 + (torch.rand(n) * 2 - 1) * scale
    t = (torch.rand(n, 2) * 2 - 1) * (shift_px / 14.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, 28, 28), align_corners=False)
    return F.grid_sample(x[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_flags(p, out="runs/mnist", epochs=20, batch_size=128, lr=2e-3, warmup_steps=300, save_every=200)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--grad-clip", type=float, default=1.0)
    mnist_flags(p)
    args = p.parse_args(argv)
    seed_everything(args.seed)
    timer = Timer()

    images, labels = read_mnist(args, train=True)
    (train_x, train_y), (val_x, val_y) = split_train_val(images, labels)
    if args.dry_run:
        train_x, train_y, val_x, val_y = train_x[:256], train_y[:256], val_x[:128], val_y[:128]
        args.epochs, args.batch_size, args.save_every, args.warmup_steps = 1, 32, 4, 1
    device = resolve_device(args.device)
    config = MnistConfig(args.hidden_size, args.num_layers, args.dropout)
    model = RowLSTMClassifier(config).to(device)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(args.warmup_steps, steps_per_epoch * args.epochs, 0.01))

    def train_step(epoch: int, step: int) -> float:
        rows = epoch_order(len(train_x), epoch, args.seed)[step * args.batch_size:(step + 1) * args.batch_size]
        x = train_x[rows] if args.no_augment else augment(train_x[rows])
        loss = F.cross_entropy(model(x.to(device)), train_y[rows].to(device))
        return optimizer_step(optimizer, loss, model.parameters(), args.grad_clip)

    def validate() -> dict:
        acc, _ = accuracy(model, val_x, val_y)
        return {"val_accuracy": acc}

    loop = Loop(kind="mnist-train", config=config, model=model,
                optimizer=optimizer, scheduler=scheduler, timer=timer,
                out=args.out, epochs=args.epochs, steps_per_epoch=steps_per_epoch, train_step=train_step,
                validate=validate, save_best=lambda: model.save(args.out / "best.safetensors"),
                metric="val_accuracy", save_every=args.save_every, max_steps=args.max_steps, seed=args.seed,
                metadata={"args": json.dumps(vars(args), default=str)},
                curves=(["train_loss"], ["val_accuracy"]), title="MNIST row-by-row LSTM")
    loop.fit(args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
