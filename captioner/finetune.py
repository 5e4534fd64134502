"""Fine-tuning a shipped captioner: from the corrections people saved (``--dataset
corrections``), replaying its own training data beside them, and the gate that decides
whether the result may be shipped.

    python -m training.train_captioner --dataset corrections --data-root DIR --out RUN

- **The start**: the checkpoint (``--init``, default the shipped one) with its vocabulary,
  its object words, its concept detectors and its familiarity as they are; only the
  network's weights move. Words of the corrections it does not know are counted and
  reported (they are learned as ``<unk>``).
- **Replay**: the checkpoint's own photo datasets (its metadata names them, with their
  splits), their training photos beside the corrections (``--repeat corrections:N``
  weights the corrections), so that it forgets nothing; the same validation photos.
- **The gate** (``judge``): the new model is written as the one to ship
  (``RUN/captioner.safetensors``) only if its CIDEr on each validation set (COCO's and
  Flickr8k's validation photos) is not worse than the starting model's by more than
  ``TOLERANCE``; ``RUN/gate.json`` holds both models' scores and the reason either way.
- ``extend_from``: starting a model of another vocabulary from an old one (``--init``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.checkpoint import atomic_write, atomic_write_text, read_metadata
from captioner.concepts import detect
from captioner.datasets import captions_by_image
from captioner.detector import summary as detector_summary
from captioner.feedback import read_corrections
from captioner.model import DEFAULT_CHECKPOINT, Captioner
from captioner.runtools import UserError
from captioner.training_data import Data, Photos, photo_detections
from captioner.validation import scores_on
from captioner.vocabulary import tokenize

log = logging.getLogger(__name__)

CORRECTIONS = "corrections"
TOLERANCE = 0.005  # CIDEr a validation set may lose before the gate refuses


def corrections_settings(args, argv: list[str]) -> None:
    """``--dataset corrections``: start from ``--init`` (default the shipped checkpoint) and
    replay its own photo datasets (from its metadata, where they are on this machine; other
    ``--dataset``s given replace them), each with its own split; the corrections train only
    (split 0:0), ``--repeat corrections:10`` unless given. Fine-tuning defaults: ``--lr
    1e-4``, 2 epochs, ``--select-by val_mixed``, no warm-up beyond 20 steps."""
    args.init = args.init or DEFAULT_CHECKPOINT
    if not Path(args.init).is_file():
        raise UserError(f"--dataset corrections fine-tunes a trained captioner, and there is none at {args.init}")
    meta = read_metadata(args.init)
    trained = json.loads(meta.get("provenance", "{}")).get("training_data", {})
    config = json.loads(meta["config"])
    pairs = [(k, r) for k, r in zip(args.dataset, args.data_root) if k != CORRECTIONS]
    folders = [r for k, r in zip(args.dataset, args.data_root) if k == CORRECTIONS]
    if not pairs:
        pairs = [(k, Path(r)) for k, r in trained.get("datasets", []) if k != CORRECTIONS and Path(r).exists()]
        args.dataset_split = list(trained.get("dataset_split", [])) + args.dataset_split
        args.repeat = [r for r in trained.get("repeat", []) if not r.startswith(f"{CORRECTIONS}:")] + args.repeat
        args.val_fraction = trained.get("val_fraction", args.val_fraction)
        args.test_fraction = trained.get("test_fraction", args.test_fraction)
        args.coco_split = trained.get("coco_split", args.coco_split)
    if not pairs:
        raise UserError(f"{args.init} names no training data found on this machine to replay beside the "
                        "corrections; name it with --dataset KIND --data-root ROOT")
    args.dataset = [CORRECTIONS] * len(folders) + [k for k, _ in pairs]  # first: a dry run's few photos are theirs
    args.data_root = folders + [Path(r) for _, r in pairs]
    args.dataset_split.append(f"{CORRECTIONS}:0:0")
    if not any(r.startswith(f"{CORRECTIONS}:") for r in args.repeat):
        args.repeat.append(f"{CORRECTIONS}:10")
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for flag, value in (("--lr", 1e-4), ("--epochs", 2), ("--select-by", "val_mixed"), ("--warmup-steps", 20)):
        if flag not in given and not (args.dry_run and flag == "--epochs"):
            setattr(args, flag[2:].replace("-", "_"), value)
    args.encoder, args.decoder = config["encoder"], config["decoder"]
    args.concepts, args.detector = config.get("concepts", 0), bool(config.get("detector", 0))
    args.regions, args.text_captions, args.concept_photos, args.unpaired_photos = config.get("regions", 0), [], [], []
    args.objective, args.finetune = "xe", True


def replay_sample(splits: dict, args) -> dict:
    """``--replay-photos N``: the training captions of the corrections, and of the first N
    training photos (by name) of each replayed dataset; validation and test as they are."""
    if not args.replay_photos:
        return splits
    roots = [Path(r).resolve() for k, r in zip(args.dataset, args.data_root) if k != CORRECTIONS]
    keep = set()
    for root in roots:
        mine = sorted({r.image for r in splits["train"] if r.image.resolve().is_relative_to(root)})
        keep.update(mine[:args.replay_photos])
    corrections = [Path(r).resolve() for k, r in zip(args.dataset, args.data_root) if k == CORRECTIONS]
    train = [r for r in splits["train"] if r.image in keep or any(r.image.resolve().is_relative_to(c)
                                                                  for c in corrections)]
    log.info("replaying %d training photos (%d captions with the corrections)", len(keep), len(train))
    return {**splits, "train": train}


def start_from(path: Path, folders: list[Path]) -> Captioner:
    """The checkpoint to fine-tune, as it is; the words of the corrections (in ``folders``)
    it does not know are counted, logged and recorded in its provenance with how many
    corrections it learns from."""
    model = Captioner.from_checkpoint(path, load_encoder=False)
    corrections = [pair for folder in folders for pair in read_corrections(folder)]
    unknown = Counter(w for _, caption in corrections for w in tokenize(caption) if w not in model.vocab.index)
    if unknown:
        log.warning("the corrections hold %d words the model does not know (learned as <unk>): %s",
                    sum(unknown.values()), ", ".join(f"{w} ({n})" for w, n in unknown.most_common(20)))
    model.provenance["finetuned_from"] = {"checkpoint": Path(path).name, "training_data":
                                          model.provenance.get("training_data", {})}
    model.provenance["corrections"] = {"corrections": len(corrections), "photos": len({p for p, _ in corrections}),
                                       "unknown_words": sum(unknown.values()),
                                       "unknown_top": dict(unknown.most_common(20))}
    return model


def frozen_inputs(model: Captioner, photos: Photos):
    """What the model's own frozen detectors give every training photo (objects, the COCO
    detector's summary, its concept detectors' scores), as ``fit_detectors`` returns it,
    without fitting anything: (photo inputs, no concept noise, no detector noise, report)."""
    inputs = photo_detections(model, photos.train_feats, photos.train_flipped)
    if photos.train_boxes is not None:
        inputs.boxes = detector_summary(photos.train_boxes)
    if model.config.concepts:
        with torch.no_grad():
            inputs.concepts = detect(model.network.concepts, photos.train_grid.float())
            inputs.flipped_concepts = detect(model.network.concepts, photos.train_grid_flipped.float())
    return inputs, None, None, {}


# ------------------------------------------------------------------------------ the gate

@dataclass
class Verdict:
    passed: bool
    shipped: dict[str, float]
    candidate: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    tolerance: float = TOLERANCE


def judge(shipped: Captioner, candidate: Captioner, sets: dict[str, tuple], tolerance: float = TOLERANCE,
          beam_size: int | None = None) -> Verdict:
    """Both models' CIDEr on each validation set (name -> (features, grid, boxes, refs));
    the candidate passes if no set is worse than the shipped model's by more than ``tolerance``."""
    old, new, reasons = {}, {}, []
    for name, (feats, grid, boxes, refs) in sets.items():
        old[name] = scores_on(shipped, feats, grid, refs, beam_size=beam_size, boxes=boxes)["CIDEr"]
        new[name] = scores_on(candidate, feats, grid, refs, beam_size=beam_size, boxes=boxes)["CIDEr"]
        if new[name] < old[name] - tolerance:
            reasons.append(f"{name}: CIDEr {new[name]:.3f} against the shipped model's {old[name]:.3f}, worse by "
                           f"{old[name] - new[name]:.3f} (more than {tolerance})")
    return Verdict(not reasons, old, new, reasons, tolerance)


def validation_sets(data: Data, photos: Photos, datasets: list[tuple[str, Path]]) -> dict[str, tuple]:
    """The validation photos of each replayed dataset: name -> (features, grid, boxes, refs)."""
    sets = {}
    refs = captions_by_image(data.splits["val"])
    for kind, root in datasets:
        root = Path(root).resolve()
        index = [i for i, p in enumerate(data.val_images) if Path(p).resolve().is_relative_to(root)]
        if not index:
            continue
        keep = torch.tensor(index)
        grid = None if photos.val_grid is None else photos.val_grid[keep.to(photos.val_grid.device)]
        boxes = None if photos.val_boxes is None else [photos.val_boxes[i] for i in index]
        sets[kind] = (photos.val_feats[keep.to(photos.val_feats.device)], grid, boxes,
                      {str(data.val_images[i]): refs[data.val_images[i]] for i in index})
    return sets


def gate(args, model: Captioner, data: Data, photos: Photos) -> Verdict:
    """After fine-tuning: the best model (or, stopped early, the model as it is) against the
    one it started from on every validation set; ``RUN/captioner.safetensors`` is written
    only when it passes; ``RUN/gate.json`` and ``RUN/MODEL_CARD.md`` either way."""
    out, best = Path(args.out), Path(args.out) / "best.safetensors"
    if not best.is_file():  # stopped by --max-steps before any validation
        model.save(best, dtype=torch.float16)
    candidate = Captioner.from_checkpoint(best, load_encoder=False)
    shipped = Captioner.from_checkpoint(args.init, load_encoder=False)
    replayed = [(k, r) for k, r in zip(args.dataset, args.data_root) if k != CORRECTIONS]
    verdict = judge(shipped, candidate, validation_sets(data, photos, replayed), beam_size=args.beam_size)
    if not verdict.shipped:
        verdict.passed, verdict.reasons = False, ["no validation photos of the replayed datasets to judge it on"]
    ship = out / "captioner.safetensors"
    if verdict.passed:
        atomic_write(ship, lambda tmp: shutil.copyfile(best, tmp))
    else:
        ship.unlink(missing_ok=True)
    report = {"passed": verdict.passed, "tolerance": verdict.tolerance, "reasons": verdict.reasons,
              "validation_cider": {"shipped": verdict.shipped, "candidate": verdict.candidate},
              "started_from": str(args.init), "candidate": str(best),
              "corrections": candidate.provenance.get("corrections", {})}
    atomic_write_text(out / "gate.json", json.dumps(report, indent=1))
    atomic_write_text(out / "MODEL_CARD.md", model_card(report))
    return verdict


def model_card(report: dict) -> str:
    c = report["corrections"]
    rows = "\n".join(f"| {name} | {report['validation_cider']['shipped'][name]:.3f} | {cider:.3f} |"
                     for name, cider in report["validation_cider"]["candidate"].items())
    verdict = ("**Shipped** (`captioner.safetensors`): no validation set worse by more than "
               f"{report['tolerance']} CIDEr." if report["passed"] else
               "**Not shipped**: " + "; ".join(report["reasons"]))
    return (f"# Fine-tuned captioner\n\nStarted from `{report['started_from']}`; learned from "
            f"**{c.get('corrections', 0)} corrections** of {c.get('photos', 0)} photos saved by people in the app "
            f"({c.get('unknown_words', 0)} of their words unknown to its vocabulary), replaying its own training "
            f"data beside them.\n\n| validation set | CIDEr, started from | CIDEr, fine-tuned |\n| --- | --- | --- |\n"
            f"{rows}\n\n{verdict}\n")


def extend_from(model: Captioner, old: Captioner) -> None:
    """Start ``model`` from ``old``'s weights: every tensor of the same name and shape,
    and the embedding and output rows of the words both vocabularies hold."""
    new_state, old_state = model.network.state_dict(), old.network.state_dict()
    rows = [(i, old.vocab.index[w]) for i, w in enumerate(model.vocab.words) if w in old.vocab.index]
    new_rows, old_rows = (torch.tensor(x) for x in zip(*rows))
    copied = 0
    with torch.no_grad():
        for name, tensor in new_state.items():
            if name.startswith(("familiarity.", "concepts.")) or name not in old_state:
                continue  # both are fitted afresh
            source = old_state[name].to(tensor.dtype)
            if name in ("decoder.embed.weight", "decoder.out.weight", "decoder.out.bias"):
                tensor[new_rows] = source[old_rows]
                copied += 1
            elif name == "concept_projection.weight":  # columns by concept word
                known = [(i, old.concept_words.index(w)) for i, w in enumerate(model.concept_words)
                         if w in old.concept_words]
                for i, j in known:
                    tensor[:, i] = source[:, j]
                copied += 1
            elif source.shape == tensor.shape:
                tensor.copy_(source)
                copied += 1
    log.info("started from %d tensors of the --init model; %d of %d words known to it", copied, len(rows),
             len(model.vocab))
