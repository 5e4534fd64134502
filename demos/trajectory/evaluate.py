"""ADE and FDE of the trajectory predictor against the last-position and constant-velocity
baselines, with and without blending of overlapping predictions.

    python -m demos.trajectory.evaluate --mat FILE [--checkpoint PATH] [--json-out FILE] [--split test]

Reads only the ``xtrain`` sequences of a .mat laid out like UCI Character Trajectories
(3 x T: x velocity, y velocity, pen force), so it runs on other recordings as well.
``--split test`` keeps only the sequences ``demos.trajectory.train`` held out as test
(meaningful for the file it was trained on); the default evaluates every sequence.
Errors are in the recording's own units (positions are cumulative sums of velocities).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demos.trajectory.model import (
    DEFAULT_CHECKPOINT,
    TrajectoryPredictor,
    evaluate_sequences,
    hand_track_windows,
    read_hand_tracks,
    read_mat_sequences,
    split_sequences,
    windows_report,
)
from lstmkit.devices import resolve_device
from lstmkit.runtools import UserError, cli, evaluation_flags, write_report


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mat", type=Path, required=True)
    p.add_argument("--split", choices=["all", "train", "val", "test"], default="all")
    p.add_argument("--hand-tracks", type=Path, default=None,
                   help="also score MediaPipe fingertip tracks (point_history.csv): 6 points in, 10 out; "
                        "--split picks the tracks held out by track, as in training")
    evaluation_flags(p, DEFAULT_CHECKPOINT)
    args = p.parse_args(argv)

    model = TrajectoryPredictor.from_checkpoint(args.checkpoint).to(resolve_device(args.device))
    try:
        sequences = read_mat_sequences(args.mat)
    except ValueError as err:
        raise UserError(str(err)) from err
    if args.split != "all":
        keep = split_sequences(len(sequences))[args.split]
        sequences = [sequences[i] for i in keep]
    decay = model.config.blend_decay
    report = evaluate_sequences(model, sequences, (decay,) if decay is not None else ())
    if not report["windows"]:
        c = model.config
        raise UserError(f"no sequence in {args.mat} is long enough for {c.past} + {c.future} points")
    cv = report["constant_velocity"]
    rows = [("model", report["model"]), ("last position", report["last_position"]), ("constant velocity", cv)]
    if decay is not None:
        report["model_blended"] = report.pop(f"blend_{decay:g}")
        rows.insert(1, (f"model, blended (decay {decay:g})", report["model_blended"]))
    report.update(checkpoint=str(args.checkpoint), mat=str(args.mat), split=args.split, blend_decay=decay,
                  ade_vs_constant_velocity=report["model"]["ade"] / cv["ade"] - 1,
                  fde_vs_constant_velocity=report["model"]["fde"] / cv["fde"] - 1)
    print(f"{report['sequences']} sequences, {report['windows']} windows ({args.split})")
    print(f"{'':34s} {'ADE':>8s} {'FDE':>8s}")
    for name, r in rows:
        print(f"{name:34s} {r['ade']:8.4f} {r['fde']:8.4f}")
    print(f"model vs constant velocity: ADE {report['ade_vs_constant_velocity']:+.1%}, "
          f"FDE {report['fde_vs_constant_velocity']:+.1%}")
    if args.hand_tracks:
        tracks, _ = read_hand_tracks(args.hand_tracks)
        if args.split != "all":  # the same split by track as demos.trajectory.train
            tracks = [tracks[i] for i in split_sequences(len(tracks), seed=1)[args.split]]
        report["hand_tracks"] = h = windows_report(model, hand_track_windows(tracks, model.config.past,
                                                                             model.config.future))
        print(f"fingertip tracks ({h['windows']} moving tracks, {args.split}; 6 points known, 10 to predict):")
        for name in ("model", "last_position", "constant_velocity"):
            print(f"  {name:32s} {h[name]['ade']:8.4f} {h[name]['fde']:8.4f}")
    write_report(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
