"""Train the ConvLSTM next-frame predictor on Moving MNIST made from real MNIST digits.

    python -m demos.nextframe.train --data-root ../shared/data --out runs/nextframe

Clips are generated on the fly from a seed (two training digits bouncing in 64x64, 20
frames: 10 in, 10 to predict), so every step sees new clips and a resumed run sees the
same clips it would have seen. Validation clips use 5,000 training digits held out from
training; the test digits are only for ``demos.nextframe.evaluate``. The forecaster
learns with scheduled sampling: it is fed the true previous frame with a probability that
falls from 1 to 0 over the first ``--sampling-steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from demos.mnist.data import mnist_flags, read_mnist
from demos.mnist.model import split_train_val
from demos.nextframe.model import MovingMNIST, NextFrameConfig, NextFramePredictor, copy_last_frame, frame_mse, ssim
from lstmkit.devices import choose_precision, resolve_device
from lstmkit.loop import Loop
from lstmkit.runtools import (
    Timer,
    cli,
    optimizer_step,
    run_flags,
    seed_everything,
    warmup_cosine,
)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_flags(p, out="runs/nextframe", epochs=20, batch_size=16, lr=1e-3, warmup_steps=200, save_every=250)
    p.add_argument("--steps-per-epoch", type=int, default=500)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--kernel-size", type=int, default=3)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--sampling-steps", type=int, default=0, help="default: 40%% of all steps")
    p.add_argument("--val-clips", type=int, default=256)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the convolutions (CPUs with bf16)")
    mnist_flags(p)
    args = p.parse_args(argv)
    seed_everything(args.seed)
    timer = Timer()

    images, labels = read_mnist(args, train=True)
    (train_digits, _), (val_digits, _) = split_train_val(images, labels)
    if args.dry_run:
        args.epochs, args.steps_per_epoch, args.batch_size, args.val_clips, args.save_every = 1, 3, 2, 4, 2
        args.hidden = [8]
    config = NextFrameConfig(hidden=tuple(args.hidden), kernel_size=args.kernel_size, patch=args.patch)
    train_set = MovingMNIST(train_digits, frames=config.clip_frames, size=config.size, seed=args.seed)
    val_set = MovingMNIST(val_digits, frames=config.clip_frames, size=config.size, seed=10_000 + args.seed)
    val_clips = val_set.batch(range(args.val_clips))
    device = resolve_device(args.device)
    model = NextFramePredictor(config).to(device)
    total = args.epochs * args.steps_per_epoch
    sampling_steps = args.sampling_steps or int(0.4 * total)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = min(args.warmup_steps, total // 10 + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, 0.02))
    use_bf16 = args.bf16 and choose_precision(device) == torch.bfloat16

    def train_step(epoch: int, step: int) -> float:
        global_step = epoch * args.steps_per_epoch + step
        first = global_step * args.batch_size
        clips = train_set.batch(range(first, first + args.batch_size)).to(device)
        teacher = max(0.0, 1.0 - global_step / max(1, sampling_steps))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            inputs, truth = config.split(clips)
            pred = model(inputs, truth, teacher_prob=teacher)
        loss = F.mse_loss(pred.float(), truth)
        return optimizer_step(optimizer, loss, model.parameters(), 1.0)

    def validate() -> dict:
        inputs, truth = config.split(val_clips)
        preds = torch.cat([model.predict(inputs[i:i + 32]) for i in range(0, len(inputs), 32)])
        return {"val_mse_per_frame": float(frame_mse(preds, truth).mean()),
                "val_ssim": float(ssim(preds, truth).mean()),
                "val_copy_last_mse": float(frame_mse(copy_last_frame(inputs, config.output_frames), truth).mean())}

    loop = Loop(kind="nextframe-train", config=config, model=model,
                optimizer=optimizer, scheduler=scheduler, timer=timer,
                out=args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, train_step=train_step,
                validate=validate, save_best=lambda: model.save(args.out / "best.safetensors"),
                metric="val_mse_per_frame", higher_is_better=False, save_every=args.save_every,
                max_steps=args.max_steps, seed=args.seed, metadata={"args": json.dumps(vars(args), default=str)},
                curves=(["train_loss"], ["val_mse_per_frame"]), title="ConvLSTM next frame")
    loop.fit(args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
