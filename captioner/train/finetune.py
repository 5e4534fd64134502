"""Fine-tuning a shipped captioner: from the corrections people saved (``--dataset
corrections``), replaying its own training data beside them, and the gate that decides
whether the result may be shipped.

    python -m training.train_captioner --dataset corrections --data-root DIR --out RUN

- **The start**: the checkpoint (``--init``, default the shipped one) with its vocabulary,
  its object words, its concept classifiers and its familiarity as they are; only the
  network's weights move. Words of the corrections it does not know are counted and
  reported (they are learned as ``<unk>``).
- **Replay** (``plan_finetune``): the release's own photo datasets (its metadata names
  them), their training photos beside the corrections (``--repeat corrections:N`` weights
  the corrections), so that it forgets nothing. The release's datasets are always split
  as the release split them, whichever ``--dataset`` is named, and a fine-tune that
  would train or validate on a photo the release holds out for testing is refused
  (``refuse_test_photos``). ``--replay-photos N``: N training photos of each dataset,
  drawn at random with the seed (``replay_sample``).
- **Two kinds of validation photos** (``gate_split``): by a hash of each photo's name,
  half choose the best checkpoint during training, the other half are the gate's alone.
- **The gate** (``judge``, ``gate``): the new model and the shipped one (``--baseline``,
  default ``checkpoints/captioner.safetensors``, whatever ``--init`` was), both with int8
  decoder matrices as the app serves them, caption the gate photos of each replayed
  dataset; each photo's CIDEr difference goes into a paired bootstrap (``RESAMPLES``
  resamples of the photos, seeded). The model is written as the one to ship
  (``RUN/captioner.safetensors``) only if on every dataset the bootstrap's 5th percentile
  of the mean difference is at least ``-TOLERANCE``: on a few hundred photos one caption
  moves a mean by 0.02, so a difference the interval cannot tell from noise is no
  evidence either way, and the gate asks for evidence that nothing got worse.
  ``RUN/gate.json`` holds the baseline's sha256, the precision, the photos per dataset,
  both models' CIDEr, the interval and the reason either way.
- ``check_out``: an ``--out`` holding an earlier run (its ``best.safetensors`` would be
  judged and shipped) or the model judged against (a refusal deletes
  ``RUN/captioner.safetensors``) is refused before anything runs.
- ``extend_from``: starting a model of another vocabulary from an old one (``--init``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from captioner.concepts import concept_probabilities
from captioner.detector import summary as detector_summary
from captioner.feedback import read_corrections
from captioner.model import DEFAULT_CHECKPOINT, Captioner
from captioner.train.datasets import captions_by_image, own_fractions, read_dataset, split_of
from captioner.train.metrics import bootstrap, cider_per_photo
from captioner.train.training_data import Photos, photo_findings
from captioner.train.validation import caption_photos
from captioner.vocabulary import tokenize
from lstmkit.checkpoint import CHECKPOINTS, atomic_write, atomic_write_text, file_sha256, read_metadata
from lstmkit.runtools import UserError

log = logging.getLogger(__name__)

CORRECTIONS = "corrections"
TOLERANCE = 0.005  # CIDEr the bootstrap's lower bound may sit below zero before the gate refuses
RESAMPLES = 1000
PERCENTILES = (5.0, 95.0)  # the interval of the mean difference the gate reports; it judges the lower end
GATE_SHARE = 0.5  # of the validation photos, those the gate judges on (the others choose the best checkpoint)
DEFAULTS = {"lr": 1e-4, "epochs": 2, "select_by": "val_mixed", "warmup_steps": 20}  # for flags not given


# ------------------------------------------------------------------------------ the plan

@dataclass
class Plan:
    """What a fine-tune trains from, on, and is judged against."""

    init: Path
    baseline: Path
    dataset: list[str]
    data_root: list[Path]
    dataset_split: list[str]
    repeat: list[str]
    coco_split: str
    encoder: str
    decoder: str
    concepts: int
    detector: bool
    regions: int


def training_data_of(checkpoint: Path) -> dict:
    """What a checkpoint was trained on, as its provenance records it (``datasets``,
    ``dataset_split``, ``val_fraction``, ``test_fraction``, ``repeat``, ``coco_split``)."""
    return json.loads(read_metadata(checkpoint).get("provenance", "{}")).get("training_data", {})


def release_splits(trained: dict) -> dict[str, tuple[float, float]]:
    """Each of the release's photo datasets' (validation, test) fractions, as it was split."""
    own = own_fractions(trained.get("dataset_split", []))
    default = (trained.get("val_fraction", 0.07), trained.get("test_fraction", 0.13))
    return {kind: own.get(kind, default) for kind, _ in trained.get("datasets", []) if kind != CORRECTIONS}


def _needs(config: dict) -> tuple[bool, bool]:
    return config.get("decoder") == "attention" or config.get("concepts", 0) > 0, bool(config.get("detector", 0))


def plan_finetune(*, init: Path | None, baseline: Path | None, datasets: list[tuple[str, Path]],
                  dataset_split: list[str], repeat: list[str], coco_split: str) -> Plan:
    """``--dataset corrections``: start from ``init`` (default the shipped checkpoint), judge
    against ``baseline`` (default the shipped checkpoint); replay the release's photo
    datasets (from its metadata, where they are on this machine; other ``datasets`` given
    replace them), each split as the release split it (a ``dataset_split`` of a release's
    dataset may hold out more for testing, never less); the corrections train only (split
    0:0), ``corrections:10`` unless ``repeat`` names them."""
    init, baseline = Path(init or DEFAULT_CHECKPOINT), Path(baseline or DEFAULT_CHECKPOINT)
    for flag, path in (("--init", init), ("--baseline", baseline)):
        if not path.is_file():
            raise UserError(f"--dataset corrections needs a trained captioner for {flag}, and there is none at {path}")
    config, judged = (json.loads(read_metadata(p)["config"]) for p in (init, baseline))
    if judged["encoder"] != config["encoder"] or any(b and not i for b, i in zip(_needs(judged), _needs(config))):
        raise UserError(f"the baseline {baseline} needs features ({judged['encoder']}, grid or detector boxes) that "
                        f"{init} does not; judge against a model of the same kind")
    trained = training_data_of(init)
    release = release_splits(trained)
    given = own_fractions(dataset_split)
    for kind, (val, test) in given.items():
        if kind in release and test < release[kind][1]:
            raise UserError(f"--dataset-split {kind}:{val}:{test} would train or validate on photos the released model "
                            f"holds out for testing; keep {kind}'s test fraction at least {release[kind][1]}")
    pairs = [(k, Path(r)) for k, r in datasets if k != CORRECTIONS]
    folders = [Path(r) for k, r in datasets if k == CORRECTIONS]
    replayed_repeat = []
    if not pairs:
        pairs = [(k, Path(r)) for k, r in trained.get("datasets", []) if k != CORRECTIONS and Path(r).exists()]
        replayed_repeat = [r for r in trained.get("repeat", []) if not r.startswith(f"{CORRECTIONS}:")]
    if not pairs:
        raise UserError(f"{init} names no training data found on this machine to replay beside the "
                        "corrections; name it with --dataset KIND --data-root ROOT")
    repeat = replayed_repeat + list(repeat)
    if not any(r.startswith(f"{CORRECTIONS}:") for r in repeat):
        repeat.append(f"{CORRECTIONS}:10")
    splits = [f"{k}:{v:g}:{t:g}" for k, (v, t) in release.items() if k not in given] + list(dataset_split)
    return Plan(init, baseline, [CORRECTIONS] * len(folders) + [k for k, _ in pairs],  # first: a dry run's photos
                folders + [r for _, r in pairs], splits + [f"{CORRECTIONS}:0:0"], repeat,
                trained.get("coco_split", coco_split) if "coco" in release else coco_split,
                config["encoder"], config["decoder"], config.get("concepts", 0), bool(config.get("detector", 0)),
                config.get("regions", 0))


def check_out(out: Path, *, resume: bool, keep: list[Path | None]) -> None:
    """Refuse an ``--out`` a fine-tune must not write to: the shipped models' folder, or one
    holding a model in ``keep`` (``--init``, ``--baseline``: the gate deletes
    ``RUN/captioner.safetensors`` when it refuses), or one holding an earlier run that is not
    being resumed (its ``best.safetensors`` would be judged and shipped)."""
    out = Path(out).resolve()
    ship = out / "captioner.safetensors"
    for path in [DEFAULT_CHECKPOINT, *keep]:
        if out == CHECKPOINTS.resolve() or (path is not None and Path(path).resolve() == ship):
            raise UserError(f"--out {out} holds the shipped model or the one this fine-tune starts from or is judged "
                            "against, which a refused fine-tune would delete; choose a new folder")
    stale = [name for name in ("best.safetensors", "last.safetensors", "captioner.safetensors", "gate.json")
             if (out / name).exists()]
    if stale and not resume:
        raise UserError(f"--out {out} already holds an earlier run ({', '.join(stale)}) whose model the gate could "
                        "judge and ship; choose a new folder, or --resume that run")


def held_out_photos(trained: dict) -> dict[str, set[str]]:
    """The file names of the photos the release held out for testing, by dataset (those of
    its datasets that are on this machine)."""
    fractions, found = release_splits(trained), {}
    for kind, root in trained.get("datasets", []):
        if kind == CORRECTIONS or not Path(root).exists():
            continue
        data = read_dataset(kind, root, trained.get("coco_split", "train2017"))
        found[kind] = {p.name for p in data.images
                       if (data.splits[p] if data.splits else split_of(p, *fractions[kind])) == "test"}
    return found


def refuse_test_photos(splits: dict, held_out: dict[str, set[str]]) -> None:
    """``UserError`` when a photo the release held out for testing would train, choose or
    judge the fine-tune (under any dataset's name: the split follows the file name)."""
    for part in ("train", "val", "gate"):
        for r in splits.get(part, []):
            for kind, names in held_out.items():
                if r.dataset != CORRECTIONS and r.image.name in names:
                    raise UserError(f"{r.image} is one of the photos the released model holds out for testing "
                                    f"({kind}); a fine-tune never trains or validates on them, so split "
                                    f"{r.dataset} as the release did")


def replay_sample(splits: dict, photos: int, seed: int) -> dict:
    """``--replay-photos N``: the training captions of the corrections, and of N training
    photos of each replayed dataset (by dataset, not by folder: two may share one), drawn at
    random with ``seed``; validation and test as they are."""
    if not photos:
        return splits
    by_kind: dict[str, dict] = {}
    for r in splits["train"]:
        if r.dataset != CORRECTIONS:
            by_kind.setdefault(r.dataset, {})[r.image] = None
    rng, keep = random.Random(seed), set()
    for kind in sorted(by_kind):
        images = sorted(by_kind[kind])
        keep.update(rng.sample(images, min(photos, len(images))))
    train = [r for r in splits["train"] if r.dataset == CORRECTIONS or r.image in keep]
    log.info("replaying %d training photos (%d captions with the corrections)", len(keep), len(train))
    return {**splits, "train": train}


def in_gate_part(image: Path, share: float = GATE_SHARE) -> bool:
    """Whether a validation photo is the gate's: from a hash of its name, salted so that it
    does not follow the train/validation/test split's own hash."""
    return int(hashlib.sha1(b"gate:" + image.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def gate_split(splits: dict) -> dict:
    """The validation photos in two: ``val`` chooses the best checkpoint while training,
    ``gate`` is judged on by the gate alone."""
    val = [r for r in splits["val"] if not in_gate_part(r.image)]
    gate = [r for r in splits["val"] if in_gate_part(r.image)]
    if not val or not gate:
        raise UserError(f"{len({r.image for r in splits['val']})} validation photos are too few to split between "
                        "choosing the checkpoint and the gate; give the datasets more validation photos")
    return {**splits, "val": val, "gate": gate}


# ------------------------------------------------------------------------------ the start

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
    """What the model's own frozen classifiers and detector give every training photo (objects, the COCO
    detector's summary, its concept classifiers' scores), as ``training_findings`` returns it,
    without fitting anything: (photo inputs, no concept noise, no detector noise, report)."""
    inputs = photo_findings(model, photos.train_feats, photos.train_flipped)
    if photos.train_boxes is not None:
        inputs.summary = detector_summary(photos.train_boxes)
    if model.config.concepts:
        with torch.no_grad():
            inputs.concepts = concept_probabilities(model.network.concepts, photos.train_grid.float())
            inputs.flipped_concepts = concept_probabilities(model.network.concepts, photos.train_grid_flipped.float())
    return inputs, None, None, {}


# ------------------------------------------------------------------------------ the gate

@dataclass
class Verdict:
    passed: bool
    baseline: dict[str, float]   # mean CIDEr on each dataset's gate photos
    candidate: dict[str, float]
    photos: dict[str, int] = field(default_factory=dict)
    interval: dict[str, tuple[float, float]] = field(default_factory=dict)  # of the mean difference
    reasons: list[str] = field(default_factory=list)
    tolerance: float = TOLERANCE


def per_photo_cider(model: Captioner, feats, grid, boxes, refs: dict[str, list[str]],
                    beam_size: int | None = None) -> dict[str, float]:
    results = caption_photos(model, feats, grid, beam_size, boxes=boxes)
    return cider_per_photo(refs, {image: r.caption for image, r in zip(refs, results)})


def judge(baseline: Captioner, candidate: Captioner, sets: dict[str, tuple], tolerance: float = TOLERANCE,
          beam_size: int | None = None, resamples: int = RESAMPLES, seed: int = 0) -> Verdict:
    """Both models' CIDEr, photo by photo, on each set (name -> (features, grid, boxes,
    refs)); the candidate passes if on no set the paired bootstrap's lower bound of the
    mean difference (candidate - baseline) is below ``-tolerance``."""
    verdict = Verdict(True, {}, {}, tolerance=tolerance)
    for name, (feats, grid, boxes, refs) in sets.items():
        old = per_photo_cider(baseline, feats, grid, boxes, refs, beam_size)
        new = per_photo_cider(candidate, feats, grid, boxes, refs, beam_size)
        low, high = bootstrap([new[i] - old[i] for i in refs], resamples, seed, PERCENTILES)
        verdict.baseline[name], verdict.candidate[name] = float(np.mean(list(old.values()))), \
            float(np.mean(list(new.values())))
        verdict.photos[name], verdict.interval[name] = len(refs), (low, high)
        if low < -tolerance:
            verdict.reasons.append(
                f"{name}: CIDEr {verdict.candidate[name]:.3f} against the baseline's {verdict.baseline[name]:.3f}"
                f" on {len(refs)} photos; the {PERCENTILES[0]:g}th percentile of the difference is {low:+.3f}, "
                f"below -{tolerance}")
    verdict.passed = not verdict.reasons
    return verdict


def gate_sets(records: list, photos: Photos) -> dict[str, tuple]:
    """The gate photos of each replayed dataset, keyed by dataset (never by folder: two
    datasets may share one): name -> (features, grid, boxes, refs)."""
    refs, by_kind = captions_by_image(records), {}
    for r in records:
        if r.dataset != CORRECTIONS:
            by_kind.setdefault(r.dataset, {})[r.image] = None
    sets = {}
    for kind, images in by_kind.items():
        images = list(images)
        grid = photos.grids(images)[0]
        sets[kind] = (photos.pooled(images)[0].cpu(), None if grid is None else grid.cpu(),
                      photos.boxes(images) if photos.boxes else None, {str(p): refs[p] for p in images})
    return sets


def gate(model: Captioner, *, out: Path, init: Path, baseline: Path, sets: dict[str, tuple],
         tolerance: float = TOLERANCE, seed: int = 0) -> Verdict:
    """After fine-tuning: the best model (or, stopped early, the model as it is) against the
    baseline on the gate photos, both served as the app serves them (int8 decoder
    matrices); ``RUN/captioner.safetensors`` is written only when it passes;
    ``RUN/gate.json`` and ``RUN/MODEL_CARD.md`` either way."""
    out, best = Path(out), Path(out) / "best.safetensors"
    if not best.is_file():  # stopped by --max-steps before any validation
        model.save(best, dtype=torch.float16)
    candidate = Captioner.from_checkpoint(best, load_encoder=False, int8=True)
    judged = Captioner.from_checkpoint(baseline, load_encoder=False, int8=True)
    verdict = judge(judged, candidate, sets, tolerance, resamples=RESAMPLES, seed=seed)
    if not verdict.baseline:
        verdict.passed, verdict.reasons = False, ["no gate photos of the replayed datasets to judge it on"]
    ship = out / "captioner.safetensors"
    if verdict.passed:
        atomic_write(ship, lambda tmp: shutil.copyfile(best, tmp))
    else:
        ship.unlink(missing_ok=True)
    report = {"passed": verdict.passed, "reasons": verdict.reasons, "tolerance": verdict.tolerance,
              "precision": "int8", "baseline": {"path": str(baseline), "sha256": file_sha256(baseline)},
              "candidate": {"path": str(best), "sha256": file_sha256(best)}, "started_from": str(init),
              "photos": verdict.photos, "cider": {"baseline": verdict.baseline, "candidate": verdict.candidate},
              "bootstrap": {"resamples": RESAMPLES, "seed": seed, "percentiles": list(PERCENTILES),
                            "interval": {k: list(v) for k, v in verdict.interval.items()}},
              "corrections": candidate.provenance.get("corrections", {})}
    atomic_write_text(out / "gate.json", json.dumps(report, indent=1))
    atomic_write_text(out / "MODEL_CARD.md", model_card(report))
    return verdict


def model_card(report: dict) -> str:
    c, cider, interval = report["corrections"], report["cider"], report["bootstrap"]["interval"]
    rows = "\n".join(f"| {name} | {report['photos'][name]} | {cider['baseline'][name]:.3f} | {value:.3f} | "
                     f"{interval[name][0]:+.3f} to {interval[name][1]:+.3f} |"
                     for name, value in cider["candidate"].items())
    verdict = (f"**Shipped** (`captioner.safetensors`): on no dataset is the lower end of the interval below "
               f"-{report['tolerance']}." if report["passed"] else "**Not shipped**: " + "; ".join(report["reasons"]))
    return (f"# Fine-tuned captioner\n\nStarted from `{report['started_from']}`; learned from "
            f"**{c.get('corrections', 0)} corrections** of {c.get('photos', 0)} photos saved by people in the app "
            f"({c.get('unknown_words', 0)} of their words unknown to its vocabulary), replaying its own training "
            f"data beside them. Judged against `{report['baseline']['path']}` (sha256 "
            f"`{report['baseline']['sha256'][:12]}`), both with int8 decoder matrices as the app serves them, on "
            f"validation photos that did not choose the checkpoint; the interval is the paired bootstrap's "
            f"({report['bootstrap']['resamples']} resamples) {report['bootstrap']['percentiles'][0]:g}th to "
            f"{report['bootstrap']['percentiles'][1]:g}th percentile of the mean CIDEr difference.\n\n"
            f"| dataset | gate photos | CIDEr, baseline | CIDEr, fine-tuned | difference, interval |\n"
            f"| --- | --- | --- | --- | --- |\n{rows}\n\n{verdict}\n")


def extend_from(model: Captioner, old: Captioner) -> None:
    """Start ``model`` from ``old``'s weights: every tensor of the same name and shape,
    and the embedding and output rows of the words both vocabularies hold. Never what belongs
    to the encoder or is fitted to its features: the copy of its ImageNet classifier (``objects.``,
    another encoder's on a warm start), familiarity and the concept classifiers."""
    new_state, old_state = model.network.state_dict(), old.network.state_dict()
    rows = [(i, old.vocab.index[w]) for i, w in enumerate(model.vocab.words) if w in old.vocab.index]
    new_rows, old_rows = (torch.tensor(x) for x in zip(*rows))
    copied = 0
    with torch.no_grad():
        for name, tensor in new_state.items():
            if name.startswith(("familiarity.", "concepts.", "objects.")) or name not in old_state:
                continue  # the encoder's own, or fitted afresh
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
