"""MSE per frame and SSIM of the ConvLSTM next-frame predictor on Moving MNIST clips made
from the MNIST test digits, against copying the last input frame.

    python -m demos.nextframe.evaluate --data-root ../shared/data [--checkpoint PATH] [--json-out FILE]

MSE per frame is the squared error summed over the 64x64 pixels (values in [0, 1]) and
averaged over clips and the 10 predicted frames, as the Moving MNIST papers report it.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from demos.mnist.data import mnist_flags, read_mnist
from demos.nextframe.model import (
    DEFAULT_CHECKPOINT,
    TEST_SEED,
    MovingMNIST,
    NextFramePredictor,
    copy_last_frame,
    frame_mse,
    ssim,
)
from lstmkit.devices import resolve_device
from lstmkit.runtools import cli, evaluation_flags, write_report


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=50)
    mnist_flags(evaluation_flags(p, DEFAULT_CHECKPOINT))
    args = p.parse_args(argv)

    model = NextFramePredictor.from_checkpoint(args.checkpoint).to(resolve_device(args.device))
    digits, _ = read_mnist(args, train=False)
    test_set = MovingMNIST(digits, frames=model.config.clip_frames, size=model.config.size, seed=TEST_SEED)
    sums = {"model_mse": 0.0, "model_ssim": 0.0, "copy_mse": 0.0, "copy_ssim": 0.0}
    start = time.perf_counter()
    for first in range(0, args.clips, args.batch_size):
        clips = test_set.batch(range(first, min(first + args.batch_size, args.clips)))
        inputs, truth = model.config.split(clips)
        pred, copy = model.predict(inputs), copy_last_frame(inputs, model.config.output_frames)
        n = len(clips)
        sums["model_mse"] += frame_mse(pred, truth) * n
        sums["model_ssim"] += ssim(pred, truth) * n
        sums["copy_mse"] += frame_mse(copy, truth) * n
        sums["copy_ssim"] += ssim(copy, truth) * n
    per_frame = {k: (v / args.clips).tolist() for k, v in sums.items()}
    report = {
        "checkpoint": str(args.checkpoint), "clips": args.clips, "seed": TEST_SEED,
        "mse_per_frame": float(torch.tensor(per_frame["model_mse"]).mean()),
        "ssim": float(torch.tensor(per_frame["model_ssim"]).mean()),
        "copy_last_frame_mse_per_frame": float(torch.tensor(per_frame["copy_mse"]).mean()),
        "copy_last_frame_ssim": float(torch.tensor(per_frame["copy_ssim"]).mean()),
        "by_frame": per_frame, "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"{args.clips} test clips")
    print(f"{'':18s} {'MSE/frame':>10s} {'SSIM':>7s}")
    print(f"{'ConvLSTM':18s} {report['mse_per_frame']:10.1f} {report['ssim']:7.3f}")
    copy_mse, copy_ssim = report["copy_last_frame_mse_per_frame"], report["copy_last_frame_ssim"]
    print(f"{'copy last frame':18s} {copy_mse:10.1f} {copy_ssim:7.3f}")
    print("MSE by predicted frame: " + " ".join(f"{v:.0f}" for v in per_frame["model_mse"]))
    write_report(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
