"""Train the caption decoder on cached encoder features.

    python -m training.train_captioner --dataset flickr8k --data-root ../shared/data/flickr8k \\
        --dataset coco --data-root ../shared/data/coco_mini --encoder efficientnet_lite0 --out runs/lite0
    python -m training.train_captioner --dataset csv --data-root my_photos --out runs/mine  # your own photos

The encoder is frozen: every image's feature (and its mirror image's) is extracted once into
the feature cache, and epochs run on (feature, caption) batches. Each epoch ends with the
validation scores on a split carved deterministically from the data; the best model is kept.

Files in ``--out``: ``best.safetensors`` (the model, loadable by ``Captioner.from_checkpoint``),
``last.safetensors`` (everything ``--resume`` needs: weights, optimizer, schedule, epoch, step
and RNG states), ``metrics.csv`` and ``loss_curve.png``.

Multi-process: ``torchrun --nproc_per_node 2 -m training.train_captioner ...`` trains with
DistributedDataParallel (gloo on CPU, nccl on GPUs); rank 0 extracts features and writes the files.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from captioner.concepts import concept_vocabulary
from captioner.decoder import DECODERS
from captioner.decoding import DecodingConfig
from captioner.detector import SUMMARY_DIM
from captioner.encoders import ENCODERS, feature_dim
from captioner.inputs import PhotoInputs
from captioner.model import Captioner
from captioner.network import CaptionerConfig
from captioner.objects import slot_tokens
from captioner.regions import Regions
from captioner.train import finetune
from captioner.train.attention_targets import attention_targets
from captioner.train.batches import CaptionTable, TextTable, epoch_plan, mixed_batch, object_swaps, text_rows_for
from captioner.train.concept_training import training_findings
from captioner.train.datasets import DATASETS, TEXT_SOURCES, captions_by_image
from captioner.train.losses import SelfCritical, caption_loss
from captioner.train.training_data import (
    Data,
    DataProvenance,
    Extraction,
    Photos,
    extract_features,
    load_concept_photos,
    load_records,
    load_text_captions,
    sampled_photos,
    self_critical_reward,
    unpaired_photos,
)
from captioner.train.validation import coco_metrics, coco_part_scores, scores_on, validate
from captioner.vocabulary import Vocabulary, tokenize
from captioner.wordlists import category_of_words
from lstmkit.checkpoint import read_safetensors
from lstmkit.loop import Loop, epoch_order
from lstmkit.runtools import (
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

log = logging.getLogger("train_captioner")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", choices=DATASETS, required=True, help="repeat with --data-root "
                   "to combine datasets; csv: your own photos, ROOT/captions.csv (image,caption) and ROOT/images/")
    p.add_argument("--dataset-split", action="append", default=[], metavar="KIND:VAL:TEST",
                   help="this dataset's validation and test fractions (default --val-fraction, --test-fraction)")
    p.add_argument("--repeat", action="append", default=[], metavar="KIND:N",
                   help="train on this dataset's training captions N times an epoch (a small dataset of the "
                        "photos the app should describe best, beside a large one)")
    p.add_argument("--sample-repeat", action="append", default=[], metavar="KIND:N",
                   help="--objective scst: sample this dataset's training photos N times an epoch (default once)")
    p.add_argument("--detector", action="store_true", help="the decoder sees the COCO object detector's boxes "
                   "(detector.py), text rows as the detector gives photos like theirs")
    p.add_argument("--data-root", action="append", type=Path, required=True)
    p.add_argument("--replay-photos", type=int, default=0,
                   help="--dataset corrections: replay this many training photos of each dataset (0: all)")
    p.add_argument("--coco-split", default="train2017", help="COCO images folder and captions_<split>.json")
    p.add_argument("--encoder", default=None, choices=ENCODERS, help="default: --init's, else efficientnet_lite0")
    p.add_argument("--encoder-weights", default=None, help="local weights file for a ResNet encoder")
    run_flags(p, out=None, epochs=None, batch_size=128, lr=1e-3, warmup_steps=200, save_every=500)
    p.add_argument("--cache-dir", type=Path, default=Path("data/features"))
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine schedule floor, as a fraction of --lr")
    p.add_argument("--decoder", choices=list(DECODERS), default="show_tell")
    for flag, default in (("--embed-dim", 512), ("--hidden-dim", 512), ("--num-layers", 1), ("--weight-decay", 0.0),
                          ("--grad-clip", 5.0), ("--label-smoothing", 0.0), ("--dropout", 0.5)):
        p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--attention-reg", type=float, default=1.0,
                   help="attention: weight of the doubly stochastic penalty sum_i (1 - sum_t alpha_ti)^2")
    p.add_argument("--regions", type=int, default=None, help="attention: look at up to this many of the detector's "
                   "boxes besides the cells (regions.py; default: --init's, else 0)")
    p.add_argument("--ground-attention", type=float, default=0.0,
                   help="weight of the loss that pulls a word's attention into the boxes of the object it names")
    p.add_argument("--object-slots", type=int, default=5,
                   help="objects of the encoder's ImageNet classifier the decoder may copy (0: none)")
    p.add_argument("--object-swap", type=float, default=0.25,
                   help="chance that the copy score of a detected object sees a random object word instead, so "
                        "the decoder learns to copy objects whatever they are (words no caption holds too)")
    p.add_argument("--objects-only", type=float, default=0.25,
                   help="chance that a training caption is learned from the image's objects alone (no features, no "
                        "grid), as photos unlike the training photos are then described (DecodingConfig)")
    p.add_argument("--familiarity-dim", type=int, default=128, help="familiarity: projected dimensions (0: off)")
    p.add_argument("--min-count", type=int, default=5, help="vocabulary frequency threshold")
    p.add_argument("--max-caption-words", type=int, default=30)
    p.add_argument("--flip-prob", type=float, default=0.5, help="use the mirrored image's feature")
    p.add_argument("--val-fraction", type=float, default=0.07)
    p.add_argument("--test-fraction", type=float, default=0.13, help="held out, never trained or tuned on")
    p.add_argument("--val-beam", type=int, default=3, help="the beam of the validation scores only")
    p.add_argument("--decoding-beam", type=int, default=DecodingConfig.beam_size, help="the beam the checkpoint "
                   "ships: its default decoding, the app's and the command line's (tune_decoding --write may retune)")
    p.add_argument("--length-alpha", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2, help="image decoding workers for feature extraction")
    p.add_argument("--objective", choices=["xe", "scst"], default="xe",
                   help="xe: cross-entropy with teacher forcing; scst: self-critical training with a CIDEr-D "
                        "reward (Rennie et al. 2017), starting from --init")
    p.add_argument("--init", type=Path, default=None, help="start from this model (its config and vocabulary)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="--dataset corrections: the gate judges against this model (default the shipped one)")
    p.add_argument("--gate-tolerance", type=float, default=finetune.TOLERANCE,
                   help="--dataset corrections: the CIDEr the gate's bootstrap lower bound may fall below zero")
    p.add_argument("--samples", type=int, default=5, help="scst: captions sampled per image")
    p.add_argument("--reward-captions", action="append", default=[], metavar="KIND:PATH[:MAX_PHOTOS]", help="scst: "
                   "CIDEr-D's word weights from these captions too, each photo by its family's (KIND coco, flickr)")
    p.add_argument("--unsupported-penalty", type=float, default=0.0, help="scst: less reward per unreferenced action")
    p.add_argument("--xe-weight", type=float, default=0.0, help="scst: plus this weight times the cross-entropy "
                   "of a batch of training captions (keeps the references' language while the reward pulls)")
    p.add_argument("--decoding-from", type=Path, default=None, help="validate (and, scst, sample) under this "
                   "model's decoding policy: its rules, backing, grounding (default: --init's for scst, else plain)")
    p.add_argument("--select-by", choices=["val_bleu4", "val_cider", "val_mixed"], default="val_bleu4",
                   help="the validation metric that picks the best model (val_mixed: mean CIDEr of all and of COCO's)")
    everyday = p.add_argument_group("everyday scenes: captions without photos, concepts learned from captions")
    everyday.add_argument("--text-captions", action="append", default=[], metavar="KIND:PATH[:MAX_PHOTOS]",
                          help=f"captions of photos that are not here (KIND {' or '.join(TEXT_SOURCES)}); at most "
                               "MAX_PHOTOS photos of this source (the first by name)")
    everyday.add_argument("--text-share", type=float, default=0.4,
                          help="the share of every batch that is captions without photos")
    everyday.add_argument("--concepts", type=int, default=0,
                          help="visual concepts learned from captions by MIL over the grid (0: none)")
    everyday.add_argument("--concept-photos", action="append", default=[], metavar="KIND:ROOT",
                          help=f"more photos with captions (KIND one of {', '.join(DATASETS)}) for the concept "
                               "detectors and the familiarity references; split by --concept-val-fraction, the "
                               "validation part scored every epoch (val_coco_*)")
    everyday.add_argument("--concept-val-fraction", type=float, default=0.4)
    everyday.add_argument("--concept-epochs", type=int, default=12)
    everyday.add_argument("--concept-photo-weight", type=float, default=5.0,
                          help="weight of a --concept-photos photo in the concept classifiers' loss")
    everyday.add_argument("--unpaired-photos", action="append", default=[], type=Path, metavar="DIR",
                          help="photos without captions of the scenes the caption text describes: familiarity "
                               "references of the text world")
    everyday.add_argument("--text-world-above", type=float, default=None,
                          help="decoding: describe a photo from its objects and concepts alone when this share of "
                               "its nearest reference photos is of the text world")
    everyday.add_argument("--objects-only-below", type=float, default=None,
                          help="decoding: describe a photo from its objects and concepts alone below this "
                               "familiarity")
    args = p.parse_args(argv)
    if len(args.dataset) != len(args.data_root):
        p.error("give one --data-root for each --dataset")
    return args


def build_model(args, encoder, train_captions: list[str], refs_feats, held_out_feats, text_world,
                concept_words) -> Captioner:
    out, vocab = args.out, None
    if args.resume and (out / "last.safetensors").is_file():  # the vocabulary of the run being resumed
        vocab = Vocabulary.from_json(read_safetensors(out / "last.safetensors")[1]["vocabulary"])
    if vocab is None:
        vocab = Vocabulary.build(train_captions, min_count=args.min_count, extra=slot_tokens(args.object_slots))
    config = CaptionerConfig(encoder=args.encoder, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                             num_layers=args.num_layers, decoder=args.decoder, dropout=args.dropout,
                             object_slots=args.object_slots, concepts=len(concept_words),
                             detector=SUMMARY_DIM if args.detector else 0, regions=args.regions or 0)
    old = None
    if args.init is not None:
        old = Captioner.from_checkpoint(args.init, load_encoder=False)
        if feature_dim(old.config.encoder) != feature_dim(args.encoder):  # same size: a warm start
            raise UserError(f"{args.init} was trained on {old.config.encoder} features: {args.encoder}'s do not fit")
        config = replace(old.config, encoder=args.encoder, concepts=len(concept_words), dropout=args.dropout,
                         detector=SUMMARY_DIM if args.detector else old.config.detector,
                         regions=old.config.regions if args.regions is None else args.regions)
    if config.object_slots and encoder.classifier is None:
        raise UserError(f"{args.encoder} has no ImageNet classifier to find objects with; use --object-slots 0")
    decoding = DecodingConfig(args.decoding_beam, args.length_alpha, objects_only_below=args.objects_only_below,
                              text_world_above=args.text_world_above)
    model = Captioner.new(config, vocab, encoder, decoding=decoding, train_features=refs_feats,
                          held_out_features=held_out_feats, familiarity_dim=args.familiarity_dim,
                          text_world=text_world, concept_words=concept_words)
    if old is not None:
        finetune.extend_from(model, old)
    return model


def settings(argv: list[str] | None) -> argparse.Namespace:
    """The flags, with what a dry run changes and the combinations that cannot work refused."""
    args = parse_args(argv)
    args.finetune = finetune.CORRECTIONS in args.dataset
    if args.finetune:  # fine-tune --init (default the shipped model), replaying its data; judged against --baseline
        finetune.check_out(args.out, resume=args.resume, keep=[args.init, args.baseline])
        plan = finetune.plan_finetune(init=args.init, baseline=args.baseline, datasets=list(zip(
            args.dataset, args.data_root)), dataset_split=args.dataset_split, repeat=args.repeat,
            coco_split=args.coco_split)
        vars(args).update(vars(plan), text_captions=[], concept_photos=[], unpaired_photos=[], objective="xe")
        given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
        for name, value in finetune.DEFAULTS.items():
            if f"--{name.replace('_', '-')}" not in given and not (args.dry_run and name == "epochs"):
                setattr(args, name, value)
    if args.dry_run:
        args.batch_size, args.save_every, args.warmup_steps, args.concept_epochs = 8, 2, 1, 1
    args.epochs = args.epochs or (1 if args.dry_run else 20)
    init_encoder = Captioner.read_config(args.init).encoder if args.init is not None else None
    args.encoder = args.encoder or init_encoder or "efficientnet_lite0"
    if args.objective == "scst" and (init_encoder != args.encoder or args.text_captions or args.concepts):
        raise UserError("--objective scst starts from a trained model (--init), on its encoder, and on photos only")
    if args.reward_captions and args.objective != "scst":
        raise UserError("--reward-captions weighs self-critical training's reward: it needs --objective scst")
    return args


def load_data(args) -> Data:
    """The captions and photos the flags name (a dry run's few)."""
    splits = load_records(list(zip(args.dataset, args.data_root)), coco_split=args.coco_split,
                          val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                          dataset_split=args.dataset_split, repeat=args.repeat, dry_run=args.dry_run)
    if args.finetune:  # never a photo the release held out; half the validation photos are the gate's
        finetune.refuse_test_photos(splits, finetune.held_out_photos(finetune.training_data_of(args.init)))
        splits = finetune.gate_split(finetune.replay_sample(splits, args.replay_photos, args.seed))
    concept = load_concept_photos(args.concept_photos, coco_split=args.coco_split,
                                  val_fraction=args.concept_val_fraction, dry_run=args.dry_run)
    return Data(splits, concept, load_text_captions(args.text_captions, args.dry_run),
                unpaired_photos(args.unpaired_photos, args.dry_run))


def make_model(args, data: Data, photos: Photos) -> Captioner:
    """A new model (or --init's, extended), its familiarity references the training photos
    and the photos of scenes known from text (the text world)."""
    text_world = None
    refs_feats, held_out_feats = photos.train_feats, photos.val_feats
    if data.concept_train or data.unpaired:
        refs_feats = torch.cat([photos.train_feats, photos.pooled(data.concept_train + data.unpaired)[0]])
        held_out_feats = torch.cat([photos.val_feats, photos.pooled(data.concept_val)[0]])
        text_world = torch.cat([torch.zeros(len(data.train_images)),
                                torch.ones(len(data.concept_train) + len(data.unpaired))])
    captions = data.train_captions + data.text_captions
    concept_words = concept_vocabulary(captions, args.concepts) if args.concepts else []
    if args.finetune:
        corrections = [r for k, r in zip(args.dataset, args.data_root) if k == finetune.CORRECTIONS]
        return finetune.start_from(args.init, corrections)
    if args.init is not None and args.objective == "scst":
        return Captioner.from_checkpoint(args.init, load_encoder=False)  # its decoding policy too: samples follow it
    return build_model(args, photos.encoder, captions, refs_feats, held_out_feats, text_world, concept_words)


class Trainer:
    """One run's tables, optimizer and schedule, and the two things the loop calls: a
    training step (photo rows and text rows mixed) and validation."""

    def __init__(self, args, model: Captioner, data: Data, photos: Photos, inputs, dist):
        self.args, self.model, self.data, self.photos, self.dist = args, model, data, photos, dist
        self.photo_inputs, self.noise, self.boxes_noise, self.report = inputs
        vocab, config, device = model.vocab, model.config, dist.device
        if config.regions:
            self.photo_inputs.add_regions(photos.train_boxes, config.regions)
        self.word_coco, self.object_coco = category_of_words(vocab.words), category_of_words(model.object_words)
        self.train_table = CaptionTable(data.splits["train"], data.train_images, vocab, args.max_caption_words,
                                        model.detected_object_words(photos.train_feats),
                                        model.detected_object_words(photos.train_flipped))
        self.val_table = CaptionTable(data.splits["val"], data.val_images, vocab, args.max_caption_words,
                                      model.detected_object_words(photos.val_feats))
        self.text_table = (TextTable(data.text, vocab, model.object_words, config.object_slots, model.concept_words,
                                     args.max_caption_words, seed=args.seed)
                           if data.text and config.object_slots else None)
        self.val_refs = {str(p): caps for p, caps in captions_by_image(data.splits["val"]).items()}
        self.coco_val = None
        if data.concept_val:
            self.coco_val = (photos.pooled(data.concept_val)[0], photos.grids(data.concept_val)[0],
                             {str(p): caps for p, caps in captions_by_image(data.concept_splits["val"]).items()})
        with_slot = sum(bool((ids >= model.network.decoder.first_slot).any()) for ids in self.train_table.ids)
        log.info("%d of %d training captions name a detected object (as a slot); %d captions without photos",
                 with_slot, len(self.train_table), len(self.text_table) if self.text_table else 0)
        photos.to(device, grids=model.config.decoder == "attention")
        by_image = captions_by_image(data.splits["train"])
        self.train_refs = [[tokenize(c) for c in caps] for caps in by_image.values()]
        self.scst_photos = sampled_photos(list(by_image), data.splits["train"], args.sample_repeat)
        self.text_per_step = int(round(args.batch_size * args.text_share)) if self.text_table is not None else 0
        self.photo_per_step = args.batch_size - self.text_per_step
        units = len(self.scst_photos) if args.objective == "scst" else len(self.train_table)  # photos or captions
        per_step = self.photo_per_step if args.objective == "xe" else args.batch_size
        self.steps_per_epoch = math.ceil((units // dist.world) / per_step)
        model.network.to(device)
        self.optimizer = torch.optim.Adam(model.network.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(args.warmup_steps, self.steps_per_epoch * args.epochs, args.min_lr_ratio))
        self.trainer = model.network
        if dist.enabled:
            self.trainer = torch.nn.parallel.DistributedDataParallel(
                model.network, device_ids=[device.index] if device.type == "cuda" else None)
        model.provenance["training_data"] = DataProvenance(list(zip(args.dataset, args.data_root)), **{f.name: getattr(
            args, f.name, ()) for f in fields(DataProvenance)[1:]}).to_dict()  # the data flags, one by one
        self.scst = (SelfCritical(model, self.trainer, self.train_refs, self.photo_rows, args.samples,
                                  args.max_caption_words, self_critical_reward(self.train_refs, list(by_image),
                                  data, args.reward_captions, args.dry_run, args.unsupported_penalty))
                     if args.objective == "scst" else None)

    @functools.lru_cache(maxsize=1)  # noqa: B019 (one Trainer per run)
    def plan(self, epoch: int):
        args, dist = self.args, self.dist
        return epoch_plan(len(self.train_table), epoch, args.seed, args.flip_prob, dist.rank, dist.world)

    def photo_rows(self, images: torch.Tensor) -> PhotoInputs:
        """These training photos' ``PhotoInputs`` (self-critical training's samples)."""
        config = self.model.config
        return self.photo_inputs.photo_rows(images, self.photos.train_feats, self.photos.train_grid,
                                            bool(config.regions), bool(config.object_slots)).to(self.dist.device)

    def step(self, epoch: int, step: int) -> float:
        args = self.args
        if self.scst is not None:
            batch = slice(step * args.batch_size, (step + 1) * args.batch_size)
            images = self.scst_photos[epoch_order(len(self.scst_photos), epoch, args.seed, self.dist.rank,
                                                  self.dist.world)]
            loss = self.scst.loss(images[batch])
            if args.xe_weight:
                loss = loss + args.xe_weight * self.xe_loss(epoch, step)
            return optimizer_step(self.optimizer, loss, self.model.network.parameters(), args.grad_clip)
        return optimizer_step(self.optimizer, self.xe_loss(epoch, step), self.model.network.parameters(),
                              args.grad_clip)

    def xe_loss(self, epoch: int, step: int) -> torch.Tensor:
        """Cross-entropy (with the attention losses) of step ``step``'s batch of this epoch's
        caption rows, photo rows and text rows mixed."""
        args, p, config, device = self.args, self.photos, self.model.config, self.dist.device
        rows, flips = self.plan(epoch)
        part = slice(step * self.photo_per_step, (step + 1) * self.photo_per_step)
        if part.start >= len(rows):  # self-critical epochs are shorter than the caption rows: wrap around
            part = slice(part.start % len(rows), part.start % len(rows) + self.photo_per_step)
        rows, flips = rows[part], flips[part]
        feats, grids_ = self.train_table.inputs(rows, flips, p.train_feats, p.train_flipped, p.train_grid,
                                                p.train_grid_flipped)
        g = torch.Generator().manual_seed(args.seed * 100_003 + epoch * 10_007 + step + 7)  # same on resume
        det, concepts, summary = self.photo_inputs.select(self.train_table.image[rows], flips)
        caps = self.train_table.captions(rows, flips)
        text_part = None
        if self.text_per_step:
            text_rows = text_rows_for(step, epoch, self.text_per_step, len(self.text_table), args.seed,
                                      self.dist.rank, self.dist.world)
            text_part = self.text_table.batch(text_rows, self.noise, g, self.boxes_noise)
        regions = self.photo_inputs.regions_of(self.train_table.image[rows], flips) if config.regions else None
        inputs, caps, lengths = mixed_batch((feats, caps, grids_, det, concepts, summary), text_part, device)
        n = len(caps)
        targets = None
        if regions is not None:  # text rows have no boxes to look at
            regions = Regions.cat([regions, Regions.none(n - len(regions), config.regions)]).to(device)
            targets = attention_targets(caps, regions, self.word_coco, inputs.grid.shape[1],
                                        self.object_coco.to(device)[inputs.classified.words],
                                        self.model.network.decoder.first_slot)
        swap = object_swaps(n, config.object_slots, config.object_words, args.object_swap, g)
        dropped = (torch.rand(n, generator=g) < args.objects_only).to(device) if config.object_slots else None
        inputs = inputs.with_(regions=regions, swap=None if swap is None else swap.to(device),
                              objects_only=inputs.objects_only | dropped if dropped is not None else None,
                              classified=inputs.classified if config.object_slots else None)
        return caption_loss(self.trainer, inputs, caps, lengths, label_smoothing=args.label_smoothing,
                            attention_reg=args.attention_reg, targets=targets, ground_weight=args.ground_attention)

    def validate(self) -> dict:
        args, p, model = self.args, self.photos, self.model
        metrics = validate(model, self.val_table, p.val_feats, self.val_refs, args.val_beam, p.val_grid,
                           boxes=p.val_boxes)
        coco = [i for i, path in enumerate(self.data.val_images) if "coco" in str(path)]
        if coco and len(coco) < len(self.data.val_images):  # COCO's validation photos among the photo rows
            metrics.update(coco_part_scores(self.model, p, self.data.val_images, coco, self.val_refs,
                                            self.args.val_beam))
            metrics["val_mixed"] = (metrics["val_cider"] + metrics["val_coco_cider"]) / 2
        if self.coco_val is not None:  # the validation part of --concept-photos
            scores = scores_on(self.model, *self.coco_val, beam_size=self.args.val_beam)
            metrics.update(coco_metrics(scores))
            metrics["val_mixed"] = (metrics["val_cider"] + scores["CIDEr"]) / 2
        if self.scst is not None:
            metrics["train_reward"] = self.scst.mean_reward()
        metrics.setdefault("val_mixed", metrics["val_cider"])  # no COCO validation photos: Flickr's alone
        return metrics


def train(args, run: Trainer, timer: Timer) -> None:
    """The loop: epochs of steps, validation after each, the best model kept, resumable."""
    model, out = run.model, args.out
    if run.report and run.dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "concepts.json").write_text(json.dumps(run.report, indent=1))
    loop = Loop(kind="captioner-train", config=model.config, model=model.network,
                optimizer=run.optimizer, scheduler=run.scheduler, timer=timer,
                out=out, epochs=args.epochs, steps_per_epoch=run.steps_per_epoch, train_step=run.step,
                validate=run.validate, save_best=lambda: model.save(out / "best.safetensors", dtype=torch.float16),
                metric=args.select_by, save_every=args.save_every, max_steps=args.max_steps, dist=run.dist,
                seed=args.seed, metadata={"vocabulary": model.vocab.to_json(),
                                          "args": json.dumps(vars(args), default=str)},
                curves=(["train_loss", "val_loss"] if args.objective == "xe" else ["train_loss"], ["val_bleu4"]),
                title=f"captioner ({args.encoder}, {args.decoder}, {args.objective})")
    loop.fit(args.resume)


@cli
def main(argv: list[str] | None = None) -> int:
    """The recipe: data, features, the model, its detectors, training (validated every epoch), save."""
    args, timer = settings(argv), Timer()
    dist = init_distributed(args.device)
    seed_everything(args.seed + dist.rank)
    data = load_data(args)
    photos = extract_features(data, dist, timer, Extraction(
        args.encoder, args.encoder_weights, args.cache_dir, args.decoder == "attention" or args.concepts > 0,
        args.workers, args.detector, args.seed))
    model = make_model(args, data, photos)
    if args.decoding_from is not None:
        model.decoding = Captioner.read_settings(args.decoding_from)[1]
    inputs = finetune.frozen_inputs(model, photos) if args.finetune or args.objective == "scst" else training_findings(
        model, data, photos, concept_epochs=args.concept_epochs, concept_photo_weight=args.concept_photo_weight,
        seed=args.seed)
    run = Trainer(args, model, data, photos, inputs, dist)
    train(args, run, timer)
    if args.finetune and dist.main:
        verdict = finetune.gate(model, out=args.out, init=args.init, baseline=args.baseline, seed=args.seed,
                                sets=finetune.gate_sets(data.splits["gate"], photos), tolerance=args.gate_tolerance)
        print(json.dumps({"gate": "passed" if verdict.passed else "refused", "reasons": verdict.reasons,
                          "ship": str(args.out / "captioner.safetensors") if verdict.passed else None,
                          "report": str(args.out / "gate.json")}))
    dist.barrier()
    return close_distributed(dist) or 0


if __name__ == "__main__":
    sys.exit(main())
