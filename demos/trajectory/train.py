"""Train the hand-trajectory predictor (30 past points -> 10 future points).

    python -m demos.trajectory.train --mat ../shared/data/char_trajectories/trajectories_train.mat \\
        --out runs/trajectory

Windows of 40 consecutive points slide along every pen trajectory; train, validation and
test are split by sequence, never by window (15% validation, 15% test, the same every
run). The loss is the mean Euclidean error over the 10 future points in the window's own
normalised units. After every epoch the validation ADE and FDE are measured in the data's
units, and the best model is kept. At the end the blending decay is chosen on the
validation sequences and stored with the best model.

``--hand-tracks point_history.csv`` adds MediaPipe fingertip tracks (16 points each) as
extra training data: 6 past points, padded at the front as if the hand had rested, and
10 future points. They are split by track like the pen sequences (seed 1); the
validation tracks are scored every epoch (``val_hand_ade``) but do not pick the model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from demos.trajectory.model import (
    TrajectoryConfig,
    TrajectoryPredictor,
    evaluate_sequences,
    hand_track_windows,
    read_hand_tracks,
    read_mat_sequences,
    sliding_windows,
    split_sequences,
    windows_report,
)
from lstmkit.checkpoint import atomic_write_text
from lstmkit.devices import resolve_device
from lstmkit.loop import Loop, epoch_order
from lstmkit.runtools import Timer, UserError, cli, optimizer_step, run_flags, seed_everything, warmup_cosine

BLEND_DECAYS = (0.25, 0.5, 1.0, 2.0, 4.0)


def rotate(windows: torch.Tensor, max_degrees: float) -> torch.Tensor:
    """Random rotations of whole windows (B, T, 2), for augmentation."""
    if max_degrees <= 0:
        return windows
    angle = (torch.rand(windows.shape[0]) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    return windows @ rot.transpose(1, 2)


def window_loss(model: TrajectoryPredictor, windows: torch.Tensor) -> torch.Tensor:
    past, future = windows[:, :model.config.past], windows[:, model.config.past:]
    x, last, scale = model.normalise(past)
    target = (future - last) / scale
    return (model.forward_normalised(x) - target).norm(dim=-1).mean()


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mat", type=Path, required=True, help="pen trajectories, laid out like trajectories_train.mat")
    p.add_argument("--hand-tracks", type=Path, default=None, help="extra training data: point_history.csv")
    run_flags(p, out="runs/trajectory", epochs=30, batch_size=256, lr=2e-3, warmup_steps=300, save_every=500)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lstm-hidden", type=int, default=64)
    p.add_argument("--lstm-layers", type=int, default=2)
    p.add_argument("--ff-mult", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--geglu", choices=["split", "original"], default="split")
    p.add_argument("--rotate", type=float, default=15.0, help="random rotation augmentation, degrees")
    p.add_argument("--stride", type=int, default=1, help="window stride for training windows")
    args = p.parse_args(argv)
    seed_everything(args.seed)
    timer = Timer()

    sequences = read_mat_sequences(args.mat)
    if len(sequences) < 10:
        raise UserError(f"{args.mat} holds only {len(sequences)} usable sequences")
    split = split_sequences(len(sequences))
    train_seqs = [sequences[i] for i in split["train"]]
    val_seqs = [sequences[i] for i in split["val"]]
    config = TrajectoryConfig(d_model=args.d_model, heads=args.heads, lstm_hidden=args.lstm_hidden,
                              lstm_layers=args.lstm_layers, ff_mult=args.ff_mult, dropout=args.dropout,
                              geglu=args.geglu)
    windows = sliding_windows(train_seqs, config.past, config.future, args.stride)
    hand_val = None
    if args.hand_tracks:
        tracks, _ = read_hand_tracks(args.hand_tracks)
        track_split = split_sequences(len(tracks), seed=1)
        pick = lambda part: [tracks[i] for i in track_split[part]]  # noqa: E731
        windows = np.concatenate([windows, hand_track_windows(pick("train"), config.past, config.future)])
        hand_val = hand_track_windows(pick("val"), config.past, config.future)
    if args.dry_run:
        windows, val_seqs = windows[:512], val_seqs[:4]
        args.epochs, args.batch_size, args.save_every, args.warmup_steps = 1, 64, 4, 1
    windows = torch.from_numpy(windows)
    print(f"{len(train_seqs)} train / {len(val_seqs)} validation / {len(split['test'])} test sequences; "
          f"{len(windows)} training windows", file=sys.stderr)

    device = resolve_device(args.device)
    model = TrajectoryPredictor(config).to(device)
    steps_per_epoch = math.ceil(len(windows) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(args.warmup_steps, steps_per_epoch * args.epochs, 0.02))

    def train_step(epoch: int, step: int) -> float:
        rows = epoch_order(len(windows), epoch, args.seed)[step * args.batch_size:(step + 1) * args.batch_size]
        loss = window_loss(model, rotate(windows[rows], args.rotate).to(device))
        return optimizer_step(optimizer, loss, model.parameters(), 1.0)

    def validate() -> dict:
        report = evaluate_sequences(model, val_seqs)
        metrics = {"val_ade": report["model"]["ade"], "val_fde": report["model"]["fde"],
                   "val_cv_ade": report["constant_velocity"]["ade"]}
        if hand_val is not None:
            hand = windows_report(model, hand_val)
            metrics.update(val_hand_ade=hand["model"]["ade"], val_hand_last_ade=hand["last_position"]["ade"])
        return metrics

    loop = Loop(kind="trajectory-train", config=config, model=model,
                optimizer=optimizer, scheduler=scheduler, timer=timer,
                out=args.out, epochs=args.epochs, steps_per_epoch=steps_per_epoch, train_step=train_step,
                validate=validate, save_best=lambda: model.save(args.out / "best.safetensors"),
                metric="val_ade", higher_is_better=False, save_every=args.save_every, max_steps=args.max_steps,
                seed=args.seed, metadata={"args": json.dumps(vars(args), default=str)},
                curves=(["train_loss"], ["val_ade", "val_fde"]), title="trajectory predictor")
    progress = loop.fit(args.resume)
    if not progress["history"] or progress["epoch"] < args.epochs:
        return 0

    best = TrajectoryPredictor.from_checkpoint(args.out / "best.safetensors")
    report = evaluate_sequences(best, val_seqs, BLEND_DECAYS)
    blends = {d: report[f"blend_{d:g}"]["ade"] for d in BLEND_DECAYS}
    decay = min(blends, key=blends.get)
    best.config.blend_decay = decay if blends[decay] < report["model"]["ade"] else None
    best.save(args.out / "best.safetensors")
    summary = {"best_epoch": progress["best_epoch"], "val": report, "blend_decay": decay,
               "blend_helps": blends[decay] < report["model"]["ade"], "seconds": round(timer(), 1)}
    atomic_write_text(args.out / "validation.json", json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("best_epoch", "blend_decay", "blend_helps", "seconds")}
                     | {"val_ade": report["model"]["ade"], "val_fde": report["model"]["fde"],
                        "val_cv_ade": report["constant_velocity"]["ade"],
                        "val_cv_fde": report["constant_velocity"]["fde"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
