"""Command line: ``captioner caption IMAGE [IMAGE ...]`` (or ``python -m captioner ...``).

Images are decoded on a few threads and captioned ``--batch-size`` at a time, so 500
images mean 500 / batch-size model runs. A file that cannot be read gets an error line of
its own and the others are still captioned; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from captioner.checkpoint import CheckpointError
from captioner.encoders import EncoderWeightsError
from captioner.images import ImageError, load_image
from captioner.model import DEFAULT_CHECKPOINT, UNFAMILIAR, Captioner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captioner", description="Caption photos with an LSTM.")
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("caption", help="write a caption for each image")
    cap.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    cap.add_argument("--checkpoint", type=Path, default=None,
                     help="a trained captioner (default: checkpoints/captioner.safetensors)")
    cap.add_argument("--beam-size", type=int, default=None,
                     help="1 for greedy decoding; default: the checkpoint's own (3)")
    cap.add_argument("--json", action="store_true",
                     help="print one JSON object per line: caption, words, probabilities, objects, familiarity")
    cap.add_argument("--batch-size", type=int, default=32, help="images per model run (default 32)")
    cap.add_argument("--encoder-weights", default=None,
                     help="a local weights file for the checkpoint's encoder (ResNets without internet)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.beam_size is not None and args.beam_size < 1:
        parser.error("--beam-size must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    if args.checkpoint is None and not checkpoint.is_file():
        print(f"error: there is no trained model at {checkpoint} yet; train one with "
              "python -m training.train_captioner, or pass --checkpoint PATH", file=sys.stderr)
        return 2
    try:
        model = Captioner.from_checkpoint(checkpoint, encoder_weights=args.encoder_weights)
    except (CheckpointError, EncoderWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return caption_files(model, args.images, args.beam_size, args.batch_size, args.json)


def caption_files(model: Captioner, paths: list[Path], beam_size: int | None, batch_size: int,
                  as_json: bool, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    failures = 0
    size = model.require_encoder().preprocess.size
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            loaded = list(pool.map(lambda p: _try_load(p, size), chunk))
            images = [im for im in loaded if not isinstance(im, ImageError)]
            results = iter(model.caption(images, beam_size=beam_size))
            for path, image in zip(chunk, loaded):
                if isinstance(image, ImageError):
                    failures += 1
                    if as_json:
                        print(json.dumps({"image": str(path), "error": str(image)}), file=out, flush=True)
                    else:
                        print(f"{path}: error: {image}", file=err, flush=True)
                    continue
                result = next(results)
                if as_json:
                    print(json.dumps({"image": str(path), **result.to_dict()}), file=out, flush=True)
                else:
                    note = (f"  [unlike the photos it was trained on: familiarity {result.familiarity:.3f}]"
                            if result.familiarity is not None and result.familiarity < UNFAMILIAR else "")
                    print(f"{path}: {result.caption}{note}", file=out, flush=True)
    return 1 if failures else 0


def _try_load(path: Path, size: int):
    try:
        return load_image(path, draft_size=size)
    except ImageError as err:
        return err


if __name__ == "__main__":
    sys.exit(main())
