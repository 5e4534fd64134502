"""Train the caption decoder on cached encoder features.

    python -m training.train_captioner --dataset flickr8k --data-root ../shared/data/flickr8k \\
        --dataset coco --data-root ../shared/data/coco_mini --encoder efficientnet_lite0 --out runs/lite0

The encoder is frozen, so every image's feature (and its mirror image's) is extracted once
into the feature cache; epochs then run on (feature, caption) batches only. Each epoch
ends with the validation loss and BLEU-4 (beam search, nltk) on a validation split carved
deterministically from the training data; the best model is kept.

Files in ``--out``: ``best.safetensors`` (the model, loadable by
``Captioner.from_checkpoint``), ``last.safetensors`` (everything ``--resume`` needs:
weights, optimizer, schedule, epoch, step and RNG states), ``metrics.csv`` and
``loss_curve.png``.

Multi-process: ``torchrun --nproc_per_node 2 -m training.train_captioner ...`` trains with
DistributedDataParallel (gloo on CPU, nccl on GPUs); rank 0 extracts features and writes
the files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from captioner.checkpoint import CheckpointError, load_training_state, save_training_state
from captioner.datasets import CaptionRecord, captions_by_image, read_dataset, split_records, unique_images
from captioner.encoders import ENCODERS, build_encoder
from captioner.features import FeatureCache
from captioner.model import Captioner, CaptionerConfig
from captioner.vocabulary import Vocabulary, tokenize
from training.common import (Timer, UserError, cli, close_distributed, init_distributed, plot_curves,
                             seed_everything, write_metrics)

log = logging.getLogger("train_captioner")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", choices=["coco", "flickr8k"], required=True,
                   help="repeat with --data-root to combine datasets")
    p.add_argument("--data-root", action="append", type=Path, required=True)
    p.add_argument("--coco-split", default="train2017", help="COCO images folder and captions_<split>.json")
    p.add_argument("--encoder", default="efficientnet_lite0", choices=ENCODERS)
    p.add_argument("--encoder-weights", default=None, help="local weights file for a ResNet encoder")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--cache-dir", type=Path, default=Path("data/features"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine schedule floor, as a fraction of --lr")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--embed-dim", type=int, default=512)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--min-count", type=int, default=5, help="vocabulary frequency threshold")
    p.add_argument("--max-caption-words", type=int, default=30)
    p.add_argument("--flip-prob", type=float, default=0.5, help="use the mirrored image's feature")
    p.add_argument("--val-fraction", type=float, default=0.07)
    p.add_argument("--test-fraction", type=float, default=0.13, help="held out, never trained or tuned on")
    p.add_argument("--beam-size", type=int, default=3, help="for the validation BLEU-4")
    p.add_argument("--length-alpha", type=float, default=1.0)
    p.add_argument("--save-every", type=int, default=500, help="steps between resumable checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="image decoding workers for feature extraction")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.safetensors")
    p.add_argument("--dry-run", action="store_true", help="a few steps on a few samples")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in total (0: no limit)")
    args = p.parse_args(argv)
    if len(args.dataset) != len(args.data_root):
        p.error("give one --data-root for each --dataset")
    return args


# ------------------------------------------------------------------------------ data

def load_records(args) -> dict[str, list[CaptionRecord]]:
    records: list[CaptionRecord] = []
    for kind, root in zip(args.dataset, args.data_root):
        dataset = read_dataset(kind, root, args.coco_split)
        if dataset.skipped:
            log.warning("%s: %d captions skipped because their image is missing", root, dataset.skipped)
        records += dataset.records
    if not records:
        raise UserError("the datasets hold no captions with images")
    splits = split_records(records, args.val_fraction, args.test_fraction)
    if args.dry_run:
        train_images = unique_images(splits["train"])[:16]
        val_images = set(unique_images(splits["val"])[:8])
        splits = {"train": [r for r in splits["train"] if r.image in set(train_images)],
                  "val": [r for r in splits["val"] if r.image in val_images], "test": []}
    if not splits["train"] or not splits["val"]:
        raise UserError("too few images to carve a validation split; lower --val-fraction or add data")
    return splits


class CaptionTable:
    """Token ids of every caption, with the index of its image's feature, and the same
    caption with left and right swapped for the mirrored feature."""

    def __init__(self, records: list[CaptionRecord], images: list[Path], vocab: Vocabulary, max_words: int):
        index = {p: i for i, p in enumerate(images)}
        self.image = torch.tensor([index[r.image] for r in records])
        self.ids, self.mirrored = [], []
        swap = {vocab.index.get("left"): vocab.index.get("right"), vocab.index.get("right"): vocab.index.get("left")}
        swap.pop(None, None)
        for r in records:
            ids = vocab.encode(r.caption)
            if len(ids) > max_words + 2:
                ids = ids[: max_words + 1] + [vocab.end_id]
            self.ids.append(torch.tensor(ids))
            self.mirrored.append(torch.tensor([swap.get(i, i) for i in ids]))

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: torch.Tensor, flip: torch.Tensor, features, flipped):
        feats = torch.where(flip[:, None], flipped[self.image[rows]], features[self.image[rows]]).float()
        caps = [self.mirrored[r] if f else self.ids[r] for r, f in zip(rows.tolist(), flip.tolist())]
        return feats, pad_sequence(caps, batch_first=True), torch.tensor([len(c) for c in caps])


def epoch_plan(n: int, epoch: int, seed: int, flip_prob: float, rank: int, world: int):
    """This rank's shuffled rows and flip decisions for an epoch; the same on every rank
    and on every resume, because it depends only on the seed and the epoch."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    flips = torch.rand(n, generator=g) < flip_prob
    per_rank = n // world
    return order[rank::world][:per_rank], flips[rank::world][:per_rank]


# ------------------------------------------------------------------------ evaluation

@torch.no_grad()
def validate(model: Captioner, table: CaptionTable, features, refs: list[list[list[str]]], beam_size: int,
             batch_size: int = 512) -> tuple[float, float]:
    """Validation loss (teacher forcing) and corpus BLEU-4 of beam-search captions."""
    from nltk.translate.bleu_score import corpus_bleu

    model.head.eval()
    total, count = 0.0, 0
    no_flip = torch.zeros(len(table), dtype=torch.bool)
    for start in range(0, len(table), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(table)))
        feats, caps, lengths = table.batch(rows, no_flip[rows], features, features)
        logits = model.head(feats, caps, lengths)
        targets = model.head.decoder.packed_targets(caps, lengths)
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
    hyps = [r.words for r in model.caption_features(features.float(), beam_size=beam_size)]
    with warnings.catch_warnings():  # nltk warns when a tiny run has no 4-gram overlaps
        warnings.simplefilter("ignore")
        bleu4 = corpus_bleu(refs, hyps) if any(hyps) else 0.0
    return total / count, float(bleu4)


# ------------------------------------------------------------------------------ main

@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        args.epochs, args.batch_size, args.save_every, args.warmup_steps = 1, 8, 2, 1
    dist = init_distributed()
    seed_everything(args.seed + dist.rank)
    out = args.out
    timer = Timer()

    splits = load_records(args)
    train_images, val_images = unique_images(splits["train"]), unique_images(splits["val"])
    encoder = build_encoder(args.encoder, args.encoder_weights)
    cache = FeatureCache(args.cache_dir, encoder)
    if dist.main:  # rank 0 extracts; the others wait, then read the cache
        cache.get(train_images + val_images, num_workers=args.workers)
    dist.barrier()
    train_feats, train_flipped = cache.get(train_images, progress=False)
    val_feats, _ = cache.get(val_images, progress=False)
    log.info("features ready after %.0fs: %d train and %d validation images", timer(), len(train_images),
             len(val_images))

    resume_path = out / "last.safetensors"
    if args.resume:
        if not resume_path.is_file():
            raise UserError(f"nothing to resume: {resume_path} does not exist")
        from captioner.checkpoint import read_safetensors

        vocab = Vocabulary.from_json(read_safetensors(resume_path)[1]["vocabulary"])
    else:
        vocab = Vocabulary.build((r.caption for r in splits["train"]), min_count=args.min_count)
    config = CaptionerConfig(encoder=args.encoder, feature_dim=encoder.feature_dim, vocab_size=len(vocab),
                             embed_dim=args.embed_dim, hidden_dim=args.hidden_dim, num_layers=args.num_layers,
                             dropout=args.dropout, beam_size=args.beam_size, length_alpha=args.length_alpha,
                             encoder_weights_id=encoder.weights_id)
    model = Captioner(config, vocab)
    train_table = CaptionTable(splits["train"], train_images, vocab, args.max_caption_words)
    val_table = CaptionTable(splits["val"], val_images, vocab, args.max_caption_words)
    val_refs = [[tokenize(c) for c in caps] for caps in captions_by_image(splits["val"]).values()]

    steps_per_epoch = math.ceil((len(train_table) // dist.world) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    optimizer = torch.optim.Adam(model.head.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def schedule(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        t = min(1.0, (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps))
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_bleu4": -1.0, "best_epoch": -1,
                "history": [], "loss_sum": 0.0, "loss_count": 0}
    if args.resume:
        saved_config, progress = load_training_state(resume_path, kind="captioner-train", model=model.head,
                                                     optimizer=optimizer, scheduler=scheduler,
                                                     restore_rng=dist.main)
        if saved_config != asdict(config):
            changed = sorted(k for k in saved_config if saved_config[k] != asdict(config).get(k))
            raise UserError(f"--resume needs the same model settings as the saved run; these differ: {changed}")
        if not dist.main:
            torch.manual_seed(args.seed + dist.rank * 7919 + progress["global_step"])
        log.info("resumed from %s at epoch %d, step %d", resume_path, progress["epoch"] + 1,
                 progress["step_in_epoch"])

    trainer = model.head
    if dist.enabled:
        trainer = torch.nn.parallel.DistributedDataParallel(model.head)
    meta = {"vocabulary": vocab.to_json(), "args": json.dumps(vars(args), default=str)}

    def checkpoint() -> None:
        if dist.main:
            save_training_state(resume_path, kind="captioner-train", config=config, model=model.head,
                                optimizer=optimizer, scheduler=scheduler, progress=progress, metadata=meta)

    for epoch in range(progress["epoch"], args.epochs):
        rows, flips = epoch_plan(len(train_table), epoch, args.seed, args.flip_prob, dist.rank, dist.world)
        start_step = progress["step_in_epoch"]
        bar = tqdm(range(start_step, steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not dist.main, initial=start_step, total=steps_per_epoch, leave=False)
        trainer.train()
        for step in bar:
            batch_rows = rows[step * args.batch_size:(step + 1) * args.batch_size]
            feats, caps, lengths = train_table.batch(batch_rows, flips[step * args.batch_size:][:len(batch_rows)],
                                                     train_feats, train_flipped)
            logits = trainer(feats, caps, lengths)
            targets = model.head.decoder.packed_targets(caps, lengths)
            loss = F.cross_entropy(logits, targets, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.head.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            progress["loss_sum"] += loss.item()
            progress["loss_count"] += 1
            progress["global_step"] += 1
            progress["step_in_epoch"] = step + 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if args.save_every and progress["global_step"] % args.save_every == 0 and step + 1 < steps_per_epoch:
                checkpoint()
            if args.max_steps and progress["global_step"] >= args.max_steps:
                break
        bar.close()
        if args.max_steps and progress["global_step"] >= args.max_steps and progress["step_in_epoch"] < steps_per_epoch:
            checkpoint()
            log.info("stopped after --max-steps %d", args.max_steps)
            break

        train_loss = dist.all_mean(progress["loss_sum"] / max(1, progress["loss_count"]))
        val_loss, bleu4 = validate(model, val_table, val_feats, val_refs, args.beam_size)
        row = {"epoch": epoch + 1, "step": progress["global_step"], "train_loss": round(train_loss, 5),
               "val_loss": round(val_loss, 5), "val_bleu4": round(bleu4, 5),
               "lr": scheduler.get_last_lr()[0], "seconds": round(timer(), 1)}
        progress["history"].append(row)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val BLEU-4 %.4f", epoch + 1, train_loss, val_loss, bleu4)
        if bleu4 > progress["best_bleu4"]:
            progress["best_bleu4"], progress["best_epoch"] = bleu4, epoch + 1
            if dist.main:
                model.save(out / "best.safetensors", dtype=torch.float16)
        progress.update(epoch=epoch + 1, step_in_epoch=0, loss_sum=0.0, loss_count=0)
        checkpoint()
        if dist.main:
            write_metrics(out / "metrics.csv", progress["history"])
            plot_curves(out / "loss_curve.png", progress["history"], ["train_loss", "val_loss"], ["val_bleu4"],
                        title=f"captioner ({args.encoder})")
    dist.barrier()
    close_distributed(dist)
    if dist.main and progress["history"]:
        print(json.dumps({"best_val_bleu4": round(progress["best_bleu4"], 5), "best_epoch": progress["best_epoch"],
                          "epochs": progress["epoch"], "seconds": round(timer(), 1), "out": str(out)}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
