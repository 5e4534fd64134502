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
import functools
import json
import logging
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from captioner.checkpoint import read_safetensors
from captioner.cider import CiderD
from captioner.datasets import CaptionRecord, captions_by_image, read_dataset, split_records, unique_images
from captioner.decoder import DECODERS, packed_order, packed_targets
from captioner.encoders import ENCODERS, build_encoder
from captioner.features import FeatureCache
from captioner.metrics import caption_scores
from captioner.model import Captioner, CaptionerConfig, DecodingConfig
from captioner.objects import slot_tokens, substitute_slots
from captioner.vocabulary import Vocabulary, tokenize
from training.common import (
    Timer,
    UserError,
    cli,
    close_distributed,
    init_distributed,
    optimizer_step,
    run_flags,
    seed_everything,
    warmup_cosine,
)
from training.loop import Loop, epoch_order

log = logging.getLogger("train_captioner")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", choices=["coco", "flickr8k"], required=True,
                   help="repeat with --data-root to combine datasets")
    p.add_argument("--data-root", action="append", type=Path, required=True)
    p.add_argument("--coco-split", default="train2017", help="COCO images folder and captions_<split>.json")
    p.add_argument("--encoder", default="efficientnet_lite0", choices=ENCODERS)
    p.add_argument("--encoder-weights", default=None, help="local weights file for a ResNet encoder")
    run_flags(p, out=None, epochs=None, batch_size=128, lr=1e-3, warmup_steps=200, save_every=500)
    p.add_argument("--cache-dir", type=Path, default=Path("data/features"))
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine schedule floor, as a fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--decoder", choices=list(DECODERS), default="show_tell")
    p.add_argument("--embed-dim", type=int, default=512)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--attention-reg", type=float, default=1.0,
                   help="attention: weight of the doubly stochastic penalty sum_i (1 - sum_t alpha_ti)^2")
    p.add_argument("--object-slots", type=int, default=5,
                   help="objects of the encoder's ImageNet classifier the decoder may copy (0: none)")
    p.add_argument("--object-swap", type=float, default=0.25,
                   help="chance that the copy score of a detected object sees a random object word instead, so "
                        "the decoder learns to copy objects whatever they are (words no caption holds too)")
    p.add_argument("--objects-only", type=float, default=0.25,
                   help="chance that a training caption is learned from the image's objects alone (no features, no "
                        "grid), as photos unlike the training photos are then described (DecodingConfig)")
    p.add_argument("--familiarity-dim", type=int, default=128, help="familiarity: projected dimensions (0: off)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--min-count", type=int, default=5, help="vocabulary frequency threshold")
    p.add_argument("--max-caption-words", type=int, default=30)
    p.add_argument("--flip-prob", type=float, default=0.5, help="use the mirrored image's feature")
    p.add_argument("--val-fraction", type=float, default=0.07)
    p.add_argument("--test-fraction", type=float, default=0.13, help="held out, never trained or tuned on")
    p.add_argument("--beam-size", type=int, default=3, help="for the validation scores")
    p.add_argument("--length-alpha", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2, help="image decoding workers for feature extraction")
    p.add_argument("--objective", choices=["xe", "scst"], default="xe",
                   help="xe: cross-entropy with teacher forcing; scst: self-critical training with a CIDEr-D "
                        "reward (Rennie et al. 2017), starting from --init")
    p.add_argument("--init", type=Path, default=None, help="start from this model (its config and vocabulary)")
    p.add_argument("--samples", type=int, default=5, help="scst: captions sampled per image")
    p.add_argument("--select-by", choices=["val_bleu4", "val_cider"], default="val_bleu4",
                   help="the validation metric that picks the best model")
    args = p.parse_args(argv)
    if len(args.dataset) != len(args.data_root):
        p.error("give one --data-root for each --dataset")
    return args


# ------------------------------------------------------------------------------ data

def load_records(args) -> dict[str, list[CaptionRecord]]:
    records: list[CaptionRecord] = []
    for kind, root in zip(args.dataset, args.data_root):
        records += read_dataset(kind, root, args.coco_split).records  # the reader reports skipped captions
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
    caption with left and right swapped for the mirrored feature. Mentions of the objects
    detected in the image (or in its mirror image) become their slot tokens."""

    def __init__(self, records: list[CaptionRecord], images: list[Path], vocab: Vocabulary, max_words: int,
                 objects: list[list[str]], flipped_objects: list[list[str]] | None = None):
        index = {p: i for i, p in enumerate(images)}
        self.image = torch.tensor([index[r.image] for r in records])
        self.ids, self.mirrored = [], []
        swap = {"left": "right", "right": "left"}
        flipped_objects = flipped_objects or objects
        for r, i in zip(records, self.image.tolist()):
            tokens = tokenize(r.caption)[:max_words]
            self.ids.append(self._encode(vocab, substitute_slots(tokens, objects[i])))
            mirrored = [swap.get(t, t) for t in tokens]
            self.mirrored.append(self._encode(vocab, substitute_slots(mirrored, flipped_objects[i])))

    @staticmethod
    def _encode(vocab: Vocabulary, tokens: list[str]) -> torch.Tensor:
        return torch.tensor([vocab.start_id, *(vocab.index.get(t, vocab.unk_id) for t in tokens), vocab.end_id])

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: torch.Tensor, flip: torch.Tensor, features, flipped, grid=None, grid_flipped=None):
        """Features (and grids, for attention), padded captions on the features' device; the
        lengths stay on the CPU (packing wants them there)."""
        device = features.device
        index = self.image[rows].to(device)
        flip_d = flip.to(device)
        feats = torch.where(flip_d[:, None], flipped[index], features[index]).float()
        grids = None
        if grid is not None:
            grids = torch.where(flip_d[:, None, None], grid_flipped[index], grid[index]).float()
        caps = [self.mirrored[r] if f else self.ids[r] for r, f in zip(rows.tolist(), flip.tolist())]
        return (feats, pad_sequence(caps, batch_first=True).to(device), torch.tensor([len(c) for c in caps]),
                grids)


def epoch_plan(n: int, epoch: int, seed: int, flip_prob: float, rank: int, world: int):
    """This rank's shuffled rows and whether each uses the mirrored image; they depend only
    on the seed and the epoch, so they are the same on every rank and every resume."""
    rows = epoch_order(n, epoch, seed, rank, world)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 1_000_000)
    return rows, torch.rand(n, generator=g)[rows] < flip_prob


def object_swaps(batch: int, slots: int, words: int, chance: float, generator: torch.Generator) -> torch.Tensor | None:
    """For each image and slot, a random object word to use instead of the detected one
    (with probability ``chance``; -1 keeps the detection)."""
    if not slots or chance <= 0:
        return None
    swap = torch.randint(0, words, (batch, slots), generator=generator)
    return torch.where(torch.rand(batch, slots, generator=generator) < chance, swap, torch.full_like(swap, -1))


def caption_loss(trainer, feats, caps, lengths, label_smoothing: float = 0.0, attention_reg: float = 0.0,
                 grid: torch.Tensor | None = None, swap: torch.Tensor | None = None,
                 objects_only: torch.Tensor | None = None):
    """Cross-entropy of the teacher-forced words, plus (attention) the doubly stochastic
    penalty that asks every grid cell to be looked at about once over the caption.
    ``trainer``: the caption head, or its DistributedDataParallel wrapper."""
    logits, weights = trainer(feats, caps, lengths, grid=grid, swap=swap, objects_only=objects_only)
    loss = F.cross_entropy(logits, packed_targets(caps, lengths), label_smoothing=label_smoothing)
    if weights is not None and attention_reg:
        loss = loss + attention_reg * ((1.0 - weights.sum(1)) ** 2).mean()
    return loss


class SelfCritical:
    """Self-critical sequence training: sample captions, reward each with its CIDEr-D
    against the image's references, and push up the log-probability of the captions that
    beat the mean of the other samples of the same image (Rennie et al. 2017; the
    mean-of-others baseline of Luo 2020). Runs without dropout, so that the captions
    sampled are those of the policy whose gradient is taken."""

    def __init__(self, model: Captioner, trainer, refs: list[list[list[str]]], features: torch.Tensor,
                 samples: int, max_words: int, grid: torch.Tensor | None = None):
        self.model, self.trainer, self.features, self.grid = model, trainer, features, grid
        self.samples, self.max_words = samples, max_words
        self.cider = CiderD(refs)
        self.refs = refs
        self._prepared: dict[int, list] = {}
        self.reward_sum, self.reward_count = 0.0, 0

    def rewards(self, images: list[int], ids: torch.Tensor, objects: list[list[str]]) -> torch.Tensor:
        out = []
        for k, seq in enumerate(ids.tolist()):
            image = images[k // self.samples]
            if image not in self._prepared:
                self._prepared[image] = self.cider.prepare_refs(self.refs[image])
            words = self.model.words_of(seq, objects[k // self.samples])
            out.append(self.cider.score(words, self._prepared[image]))
        return torch.tensor(out)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        head, n = self.model.head, self.samples
        head.eval()  # no dropout: sample from and differentiate the same policy
        feats = self.features[images.to(self.features.device)].float()
        grid = None if self.grid is None else self.grid[images.to(self.grid.device)].float()
        with torch.no_grad():
            ctx, _ = head.context(feats, grid)
        ids, lengths = head.decoder.sample(ctx, n, self.max_words)
        lengths = lengths.cpu()
        objects = self.model.detected_object_words(feats)
        reward = self.rewards(images.tolist(), ids, objects).to(feats.device).view(-1, n)
        advantage = (reward - (reward.sum(1, keepdim=True) - reward) / (n - 1)).view(-1)
        logits, _ = self.trainer(feats.repeat_interleave(n, 0), ids, lengths,
                                 grid=None if grid is None else grid.repeat_interleave(n, 0))
        token_logp = -F.cross_entropy(logits, packed_targets(ids, lengths), reduction="none")
        owner, _ = packed_order(lengths - 1)  # each packed token's caption
        seq_logp = torch.zeros(len(ids), device=token_logp.device).index_add(0, owner.to(token_logp.device),
                                                                              token_logp)
        self.reward_sum += float(reward.sum())
        self.reward_count += reward.numel()
        return -(advantage * seq_logp).mean()

    def mean_reward(self) -> float:
        """The mean CIDEr-D reward of the captions sampled since the last call."""
        mean = self.reward_sum / max(1, self.reward_count)
        self.reward_sum, self.reward_count = 0.0, 0
        return mean


# ------------------------------------------------------------------------ evaluation

@torch.no_grad()
def validate(model: Captioner, table: CaptionTable, features, refs: dict[str, list[str]], beam_size: int,
             grid: torch.Tensor | None = None, batch_size: int = 256) -> dict[str, float]:
    """Validation loss (teacher forcing), and the scores of beam-search captions: BLEU-4
    and CIDEr as the test report computes them (``metrics.caption_scores``), and the
    object-mention F1."""
    model.head.eval()
    total, count = 0.0, 0
    no_flip = torch.zeros(len(table), dtype=torch.bool)
    for start in range(0, len(table), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(table)))
        feats, caps, lengths, grids = table.batch(rows, no_flip[rows], features, features, grid, grid)
        logits, _ = model.head(feats, caps, lengths, grid=grids)
        targets = packed_targets(caps, lengths)
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
    results = []
    for start in range(0, len(features), batch_size):
        part = slice(start, start + batch_size)
        results += model.caption_features(features[part].float(), beam_size=beam_size,
                                          grid=None if grid is None else grid[part].float())
    predictions = {image: r.caption for image, r in zip(refs, results)}
    scores = caption_scores(refs, predictions, meteor=False)
    return {"val_loss": total / count, "val_bleu4": scores["BLEU-4"], "val_cider": scores["CIDEr"],
            "val_object_f1": scores["object_f1"]}


# ------------------------------------------------------------------------------ main

@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        args.batch_size, args.save_every, args.warmup_steps = 8, 2, 1
    args.epochs = args.epochs or (1 if args.dry_run else 20)
    dist = init_distributed(args.device)
    seed_everything(args.seed + dist.rank)
    out = args.out
    timer = Timer()

    splits = load_records(args)
    train_images, val_images = unique_images(splits["train"]), unique_images(splits["val"])
    device = dist.device
    encoder = build_encoder(args.encoder, args.encoder_weights, device=device)
    caches = [FeatureCache(args.cache_dir, encoder)]
    if args.decoder == "attention":
        caches.append(FeatureCache(args.cache_dir, encoder, grid=True))
    if dist.main:  # rank 0 extracts; the others wait, then read the cache
        for cache in caches:
            cache.get(train_images + val_images, num_workers=args.workers)
    dist.barrier()
    train_feats, train_flipped = caches[0].get(train_images, progress=False)
    val_feats, _ = caches[0].get(val_images, progress=False)
    train_grid = train_grid_flipped = val_grid = None
    if len(caches) > 1:
        train_grid, train_grid_flipped = caches[1].get(train_images, progress=False)
        val_grid, _ = caches[1].get(val_images, progress=False)
    log.info("features ready after %.0fs: %d train and %d validation images", timer(), len(train_images),
             len(val_images))
    seed_everything(args.seed + dist.rank)  # extracting draws random numbers (DataLoader seeds); reading does not

    if args.objective == "scst" and args.init is None:
        raise UserError("--objective scst starts from a trained model: give it with --init")
    if args.init is not None:
        model = Captioner.from_checkpoint(args.init, load_encoder=False)
        if model.config.encoder != args.encoder:
            raise UserError(f"{args.init} was trained on {model.config.encoder} features, not {args.encoder}")
        model.decoding = DecodingConfig(args.beam_size, args.length_alpha)
    else:
        if args.resume:  # the vocabulary of the run being resumed (Loop.resume checks the rest)
            vocab = Vocabulary.from_json(read_safetensors(out / "last.safetensors")[1]["vocabulary"]) \
                if (out / "last.safetensors").is_file() else None
        if not args.resume or vocab is None:
            vocab = Vocabulary.build((r.caption for r in splits["train"]), min_count=args.min_count,
                                     extra=slot_tokens(args.object_slots))
        config = CaptionerConfig(encoder=args.encoder, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                                 num_layers=args.num_layers, decoder=args.decoder, dropout=args.dropout,
                                 object_slots=args.object_slots)
        if args.object_slots and encoder.classifier is None:
            raise UserError(f"{args.encoder} has no ImageNet classifier to find objects with; use --object-slots 0")
        model = Captioner.new(config, vocab, encoder, decoding=DecodingConfig(args.beam_size, args.length_alpha),
                              train_features=train_feats, held_out_features=val_feats,
                              familiarity_dim=args.familiarity_dim)
    vocab, config = model.vocab, model.config
    train_table = CaptionTable(splits["train"], train_images, vocab, args.max_caption_words,
                               model.detected_object_words(train_feats), model.detected_object_words(train_flipped))
    val_table = CaptionTable(splits["val"], val_images, vocab, args.max_caption_words,
                             model.detected_object_words(val_feats))
    val_refs = {str(p): caps for p, caps in captions_by_image(splits["val"]).items()}
    with_slot = sum(bool((ids >= model.head.decoder.first_slot).any()) for ids in train_table.ids)
    log.info("%d of %d training captions name a detected object (as a slot)", with_slot, len(train_table))
    # fp16 features live on the training device (all of COCO's fit a GPU: 2 x 83k x 2048 x 2 bytes)
    train_feats, train_flipped, val_feats = (t.to(device) for t in (train_feats, train_flipped, val_feats))
    if train_grid is not None:
        train_grid, train_grid_flipped, val_grid = (t.to(device) for t in (train_grid, train_grid_flipped, val_grid))

    train_refs = [[tokenize(c) for c in caps] for caps in captions_by_image(splits["train"]).values()]
    units = len(train_refs) if args.objective == "scst" else len(train_table)  # images or captions
    steps_per_epoch = math.ceil((units // dist.world) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    model.head.to(device)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(args.warmup_steps, total_steps, args.min_lr_ratio))
    trainer = model.head
    if dist.enabled:
        trainer = torch.nn.parallel.DistributedDataParallel(
            model.head, device_ids=[device.index] if device.type == "cuda" else None)
    model.provenance["training_data"] = {
        "datasets": [[kind, str(root.resolve())] for kind, root in zip(args.dataset, args.data_root)],
        "coco_split": args.coco_split, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction}

    @functools.lru_cache(maxsize=1)
    def plan(epoch: int):
        return epoch_plan(len(train_table), epoch, args.seed, args.flip_prob, dist.rank, dist.world)

    scst = (SelfCritical(model, trainer, train_refs, train_feats, args.samples, args.max_caption_words, train_grid)
            if args.objective == "scst" else None)

    def train_step(epoch: int, step: int) -> float:
        batch = slice(step * args.batch_size, (step + 1) * args.batch_size)
        if scst is not None:
            images = epoch_order(len(train_refs), epoch, args.seed, dist.rank, dist.world)
            loss = scst.loss(images[batch])
        else:
            rows, flips = plan(epoch)
            feats, caps, lengths, grids = train_table.batch(rows[batch], flips[batch], train_feats, train_flipped,
                                                            train_grid, train_grid_flipped)
            g = torch.Generator().manual_seed(args.seed * 100_003 + epoch * 10_007 + step + 7)  # same on resume
            swap = object_swaps(len(caps), config.object_slots, config.object_words, args.object_swap, g)
            only = (torch.rand(len(caps), generator=g) < args.objects_only) if config.object_slots else None
            loss = caption_loss(trainer, feats, caps, lengths, args.label_smoothing, args.attention_reg, grids,
                                None if swap is None else swap.to(device), None if only is None else only.to(device))
        return optimizer_step(optimizer, loss, model.head.parameters(), args.grad_clip)

    def val() -> dict:
        metrics = validate(model, val_table, val_feats, val_refs, args.beam_size, val_grid)
        if scst is not None:
            metrics["train_reward"] = scst.mean_reward()
        return metrics

    loop = Loop(kind="captioner-train", config=config, model=model.head,
                optimizer=optimizer, scheduler=scheduler, timer=timer,
                out=out, epochs=args.epochs, steps_per_epoch=steps_per_epoch, train_step=train_step, validate=val,
                save_best=lambda: model.save(out / "best.safetensors", dtype=torch.float16),
                metric=args.select_by,
                save_every=args.save_every, max_steps=args.max_steps, dist=dist, seed=args.seed,
                metadata={"vocabulary": vocab.to_json(), "args": json.dumps(vars(args), default=str)},
                curves=(["train_loss", "val_loss"] if args.objective == "xe" else ["train_loss"], ["val_bleu4"]),
                title=f"captioner ({args.encoder}, {args.decoder}, {args.objective})")
    loop.fit(args.resume)
    dist.barrier()
    close_distributed(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
