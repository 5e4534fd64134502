"""Command line: ``captioner caption IMAGE [IMAGE ...]`` (or ``python -m captioner ...``), and
``captioner corrections list | remove ID | squash | export --coco FILE`` for the corrections
people saved in the app (``feedback.py``; ``remove`` and ``squash`` reach the dataset
repository the app pushes to, ``feedback_hub.py``).

Photos are decoded and preprocessed by a loader (on worker processes with pinned memory
when a GPU runs the model, so the GPU is not left waiting) and captioned ``--batch-size``
at a time (default 32 on the CPU, 256 on a GPU). A file that cannot be read gets an error
line of its own and the others are still captioned; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from captioner.encoders import EncoderWeightsError
from captioner.model import DEFAULT_CHECKPOINT, Captioner
from captioner.photo_files import PhotoFiles
from captioner.results import UNFAMILIAR
from lstmkit.checkpoint import CheckpointError
from lstmkit.devices import DEVICE_CHOICES, PRECISIONS, DeviceError, resolve_device
from lstmkit.images import load_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captioner", description="Caption photos with an LSTM.")
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("caption", help="write a caption for each image")
    cap.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    cap.add_argument("--checkpoint", type=Path, default=None,
                     help="a trained captioner (default: checkpoints/captioner.safetensors)")
    cap.add_argument("--beam-size", type=int, default=None,
                     help="1 for greedy decoding; default: the checkpoint's own")
    cap.add_argument("--json", action="store_true",
                     help="print one JSON object per line: caption, words, probabilities, objects, familiarity "
                          "(and attention, from an attention model)")
    cap.add_argument("--batch-size", type=int, default=None, help="images per model run (default 32, 256 on a GPU)")
    cap.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto: a GPU if there is one)")
    cap.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="the encoder's numerics (auto: bf16 only where this CPU has it natively and it measured "
                          "faster)")
    cap.add_argument("--workers", type=int, default=None,
                     help="processes decoding photos (default: none on the CPU, up to 8 with a GPU)")
    cap.add_argument("--attention-dir", type=Path, default=None,
                     help="attention models: write one PNG per photo with the map of each word into this folder")
    cap.add_argument("--encoder-weights", default=None,
                     help="a local weights file for the checkpoint's encoder (ResNets without internet)")
    corrections_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "corrections":
        return corrections(args)

    if args.beam_size is not None and args.beam_size < 1:
        parser.error("--beam-size must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    if args.checkpoint is None and not checkpoint.is_file():
        print(f"error: there is no trained model at {checkpoint} yet; train one with "
              "python -m training.train_captioner, or pass --checkpoint PATH", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        model = Captioner.from_checkpoint(checkpoint, encoder_weights=args.encoder_weights, device=device, int8=True,
                                          precision=args.precision)
    except (CheckpointError, EncoderWeightsError, DeviceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.attention_dir is not None and not model.network.attends:
        print(f"error: {checkpoint} is a {model.config.decoder} model; only attention models have maps to draw",
              file=sys.stderr)
        return 2
    gpu = device.type != "cpu"
    batch_size = args.batch_size or (256 if gpu else 32)
    workers = args.workers if args.workers is not None else (min(8, max(1, (os.cpu_count() or 2) - 1)) if gpu else 0)
    return caption_files(model, args.images, args.beam_size, batch_size, args.json, workers=workers,
                         attention_dir=args.attention_dir)


def corrections_parser(commands) -> None:
    fix = commands.add_parser("corrections", help="the corrections people saved in the app: list, remove, export")
    fix.add_argument("--folder", type=Path, default=None,
                     help="the feedback folder (default $CAPTIONER_FEEDBACK_DIR, else the app's default)")
    fix.add_argument("--repo", default=None,
                     help="the Hugging Face dataset repository the folder is pushed to (default "
                          "$CAPTIONER_FEEDBACK_REPO): remove deletes from it too, squash rewrites its history")
    what = fix.add_subparsers(dest="action", required=True)
    what.add_parser("list", help="one line per correction: id, photo, the person's caption, the model's")
    remove = what.add_parser("remove", help="delete one correction (and its photo, when no other names it), here "
                                            "and in the dataset repository")
    remove.add_argument("id")
    remove.add_argument("--local-only", action="store_true", help="leave the dataset repository as it is")
    what.add_parser("squash", help="rewrite the dataset repository's history into one commit, so that removed "
                                   "corrections are gone from its history too (irreversible)")
    export = what.add_parser("export", help="write the corrections as a COCO captions json")
    export.add_argument("--coco", type=Path, required=True, metavar="FILE")


def corrections(args) -> int:
    from captioner.feedback import CorrectionError, FeedbackStore
    from captioner.feedback_hub import feedback_repo

    store = FeedbackStore(args.folder)
    repo = args.repo or feedback_repo()
    try:
        if args.action == "list":
            found = store.list()
            for c in found:
                print(f"{c.id}  {c.photo}  {json.dumps(c.caption)}  (model: {json.dumps(c.model_caption)})")
            orphans = store.orphans()
            print(f"{len(found)} corrections in {store.folder}"
                  + (f"; {len(orphans)} photos no record names (an interrupted save)" if orphans else ""))
        elif args.action == "remove":
            print(remove_correction(store, args.id, None if args.local_only else repo))
        elif args.action == "squash":
            if not repo:
                raise CorrectionError("Name the dataset repository to squash: --repo USER/NAME or "
                                      "$CAPTIONER_FEEDBACK_REPO.")
            from captioner.feedback_hub import squash_history

            squash_history(repo)
            print(f"squashed the history of the Hugging Face dataset {repo} into one commit: removed corrections "
                  "are gone from it")
        else:
            print(f"wrote {store.export_coco(args.coco)} captions to {args.coco}; photos in {store.photos}")
    except (CorrectionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def remove_correction(store, correction_id: str, repo: str | None) -> str:
    """Remove a correction from the dataset repository (first: if the Hub cannot be reached,
    nothing is removed), then from the folder; what was done, in words."""
    from captioner.feedback_hub import remove_from_hub

    correction, files = store.files_of(correction_id)
    there = remove_from_hub(repo, files, f"correction {correction.id}") if repo else []
    store.remove(correction_id)
    said = f"removed {correction.id} ({json.dumps(correction.caption)}) from this folder" + (
        "" if correction.photo in files else " (its photo stays: another correction names it)")
    if not repo:
        return said + "; no dataset repository is named (--repo or $CAPTIONER_FEEDBACK_REPO)"
    if not there:
        return said + f"; the Hugging Face dataset {repo} did not hold it (it was never pushed)"
    return (said + f" and from the Hugging Face dataset {repo} ({', '.join(there)}); the repository's git "
            "history still holds them until it is squashed: captioner corrections squash")


def _batch(items):
    """(index, error) of each photo and the prepared good ones (``Captioner.prepare``)."""
    good = [x for _, x, _ in items if x is not None]
    return [(i, err) for i, _, err in items], good or None


def ahead(batches, depth: int = 2):
    """The batches of ``batches``, each read on a second thread while the model captions the one
    before (JPEG decoding and resizing release the GIL): the photos of a folder are decoded beside
    the model instead of between its runs."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(depth)
    end = object()

    def read() -> None:
        try:
            for batch in batches:
                ready.put(batch)
        except BaseException as err:  # noqa: BLE001 - handed to the reader below
            ready.put(err)
        ready.put(end)

    threading.Thread(target=read, daemon=True, name="photos-ahead").start()
    while (batch := ready.get()) is not end:
        if isinstance(batch, BaseException):
            raise batch
        yield batch


def caption_files(model: Captioner, paths: list[Path], beam_size: int | None, batch_size: int,
                  as_json: bool, out=None, workers: int = 0, attention_dir: Path | None = None) -> int:
    """Caption photo files in batches: one line each on ``out`` (JSON or text); a photo that
    cannot be read is a line of its own (JSON) or a line on standard error."""
    out, err = out or sys.stdout, sys.stderr
    failures = 0
    encoder = model.require_encoder()
    loader = DataLoader(PhotoFiles(list(paths), encoder.preprocess, bool(model.config.detector)),
                        batch_size=batch_size, num_workers=workers, collate_fn=_batch,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    for items, batch in ahead(loader):
        results = iter(model.caption_prepared(batch, beam_size) if batch is not None else [])
        for i, error in items:
            path = paths[i]
            if error is not None:
                failures += 1
                if as_json:
                    print(json.dumps({"image": str(path), "error": error}), file=out, flush=True)
                else:
                    print(f"{path}: error: {error}", file=err, flush=True)
                continue
            result = next(results)
            if attention_dir is not None:
                from captioner.attention_maps import save_attention_maps

                save_attention_maps(load_image(path), result, attention_dir / f"{Path(path).stem}.png")
            if as_json:
                print(json.dumps({"image": str(path), **result.to_dict()}), file=out, flush=True)
            else:
                note = (f"  [unlike the photos it was trained on: familiarity {result.familiarity:.3f}]"
                        if result.familiarity is not None and result.familiarity < UNFAMILIAR else "")
                print(f"{path}: {result.caption}{note}", file=out, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
