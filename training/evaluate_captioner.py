"""Score a trained captioner against human captions, beside two baselines.

    python -m training.evaluate_captioner --checkpoint PATH --images DIR \\
        (--coco-captions JSON | --flickr-captions CSV) [--beam-size N] [--json-out FILE] [--split test]

Reports BLEU-1..4, METEOR (when Java is present), ROUGE-L and CIDEr with pycocoevalcap,
and object-mention precision, recall and F1 (the COCO categories named in at least two
of an image's human captions, against those its caption names; ``objects.py``), for the
model and, in the same run, for

- the best single constant caption: the one caption that, given to every image, scores
  the highest BLEU-4 on these very references (an oracle choice among the training
  captions and the references, so the strongest constant there is);
- nearest-neighbour retrieval: each image gets the consensus caption of its 5 nearest
  training images, by cosine similarity in the same encoder feature space.

The training images for retrieval come from the checkpoint's metadata (or
``--train-data KIND:ROOT``); images being evaluated are never their own neighbours.
``--split test`` keeps only the images the training script held out as test.
The predictions of all three are written to ``--json-out`` with the scores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from captioner.decoding import DecodingConfig
from captioner.detector import boxes_for
from captioner.grounding_metrics import grounding_scores
from captioner.model import DEFAULT_CHECKPOINT, Captioner
from captioner.results import UNFAMILIAR
from captioner.rules import degenerate
from captioner.train.datasets import (
    DATASETS,
    captions_by_image,
    own_fractions,
    read_coco,
    read_csv_captions,
    read_dataset,
    read_text_sources,
    split_of,
    text_source,
)
from captioner.train.features import FeatureCache, features_for
from captioner.train.metrics import best_constant_caption, caption_scores, java_available
from captioner.train.retrieval import ConceptRetrieval, nearest_consensus
from captioner.vocabulary import tokenize
from lstmkit.devices import resolve_device
from lstmkit.runtools import UserError, cli, evaluation_flags, write_report

log = logging.getLogger("evaluate_captioner")


def training_sources(model: Captioner, override: list[str]) -> tuple[list[tuple[str, Path]], dict]:
    info = {"coco_split": "train2017", "val_fraction": 0.07, "test_fraction": 0.13, "dataset_split": []}
    saved = model.provenance.get("training_data", {})
    info.update({k: saved[k] for k in info if k in saved})
    sources = [(kind, Path(root)) for kind, root in saved.get("datasets", [])]
    if override:
        sources = []
        for item in override:
            kind, _, root = item.partition(":")
            if kind not in DATASETS or not root:
                raise UserError(f"--train-data takes KIND:ROOT with KIND one of {', '.join(DATASETS)}, not {item!r}")
            sources.append((kind, Path(root)))
    return [(k, r) for k, r in sources if r.exists()], info


def training_records(sources: list[tuple[str, Path]], info: dict) -> list:
    """The training split of each training dataset, with its own fractions (``--dataset-split``)."""
    fractions = own_fractions(info.get("dataset_split", []))
    records = []
    for kind, root in sources:
        val, test = fractions.get(kind, (info["val_fraction"], info["test_fraction"]))
        records += [r for r in read_dataset(kind, root, info["coco_split"]).records
                    if split_of(r.image, val, test) == "train"]
    return records


def retrieval_captions(cache: FeatureCache, eval_feats: torch.Tensor, eval_refs: dict[Path, list[str]],
                       sources: list[tuple[str, Path]], info: dict, k: int = 5) -> tuple[list[str], str]:
    """The consensus caption of each image's k nearest training images."""
    eval_images = list(eval_refs)
    train = training_records(sources, info)
    how = "training images"
    if not train:  # no training data here: leave-one-out among the evaluated images
        log.warning("no training data found for retrieval; using the other evaluated images instead")
        how = "other evaluated images (leave-one-out)"
        db_images, db_feats = eval_images, eval_feats
        db_captions = [eval_refs[p] for p in eval_images]
    else:
        grouped = captions_by_image(train)
        db_images = list(grouped)
        db_feats, _ = cache.get(db_images)
        db_captions = [grouped[p] for p in db_images]
    eval_index = {p.resolve(): i for i, p in enumerate(eval_images)}
    exclude = {eval_index[p.resolve()]: j for j, p in enumerate(db_images) if p.resolve() in eval_index}
    return nearest_consensus(eval_feats, db_feats, db_captions, k, exclude), how


def concept_retrieval_captions(model: Captioner, results, info: dict, sources: list[tuple[str, Path]]) -> list[str]:
    """The caption the model learned from (photos' and text-only) whose concept and object
    words best match each photo's (``retrieval.ConceptRetrieval``)."""
    captions = [r.caption for r in training_records(sources, info)]
    present = [item for item in info.get("text_captions", []) if text_source(item)[1].is_file()]
    captions += [c for caps in read_text_sources(present).values() for c in caps]
    lookup = ConceptRetrieval(captions, model.concept_words, model.object_words)
    concepts = torch.tensor([[0.0] * len(model.concept_words)] * len(results))
    index = {w: i for i, w in enumerate(model.concept_words)}
    for row, r in enumerate(results):
        for o in r.objects:
            if o.get("kind") == "concept":
                concepts[row, index[o["word"]]] = o["probability"]
    objects = [[o for o in r.objects if o.get("kind") != "concept"] for r in results]
    return lookup(concepts, objects)


def decoding_with(decoding: DecodingConfig, settings: list[str]) -> DecodingConfig:
    try:
        return decoding.updated(settings)
    except ValueError as err:
        raise UserError(str(err)) from err


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True, help="the folder of the images")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco-captions", type=Path, help="a COCO captions_*.json")
    source.add_argument("--flickr-captions", type=Path, help="a Flickr8k-style CSV: image,caption")
    p.add_argument("--beam-size", type=int, default=None, help="default: the checkpoint's own")
    p.add_argument("--length-alpha", type=float, default=None)
    p.add_argument("--split", choices=["all", "train", "val", "test"], default="all")
    p.add_argument("--train-data", action="append", default=[], metavar="KIND:ROOT",
                   help="training data for the retrieval baseline (default: from the checkpoint)")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--float32", action="store_true",
                   help="decode with the float32 weights (default: int8 decoder matrices on the CPU, as users get)")
    p.add_argument("--compare", action="append", type=Path, default=[], metavar="CHECKPOINT",
                   help="another captioner scored in the same run (e.g. the one shipped before), each with its own "
                        "default decoding")
    p.add_argument("--decoding", action="append", default=[], metavar="KEY=VALUE",
                   help="decode the model with this setting of DecodingConfig instead of its checkpoint's "
                        "(e.g. claims_seen=2)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="the model again with other decoding settings, scored in the same run")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="--split: the validation fraction of the split (default: the checkpoint's training data's)")
    p.add_argument("--test-fraction", type=float, default=None, help="--split: likewise, the test fraction")
    p.add_argument("--dataset-split", action="append", default=[], metavar="KIND:VAL:TEST",
                   help="a training dataset's own split fractions, for the retrieval baselines (default: the "
                        "checkpoint's)")
    p.add_argument("--cache-dir", type=Path, default=Path("data/features"))
    p.add_argument("--encoder-weights", default=None)
    evaluation_flags(p, DEFAULT_CHECKPOINT)
    args = p.parse_args(argv)
    if args.beam_size is not None and args.beam_size < 1:
        raise UserError("--beam-size must be at least 1")
    start = time.perf_counter()

    model = Captioner.from_checkpoint(args.checkpoint, encoder_weights=args.encoder_weights, int8=not args.float32,
                                      device=resolve_device(args.device))
    shipped = model.decoding
    model.decoding = decoding_with(shipped, args.decoding)
    variants = {}
    for item in args.variant:
        name, _, settings = item.partition(":")
        if not name or not settings:
            raise UserError(f"--variant takes NAME:KEY=VALUE[,KEY=VALUE], not {item!r}")
        variants[f"variant:{name}"] = decoding_with(shipped, settings.split(","))
    dataset = (read_coco(args.coco_captions, args.images) if args.coco_captions
               else read_csv_captions(args.flickr_captions, args.images))
    sources, info = training_sources(model, args.train_data)
    info["dataset_split"] = list(info.get("dataset_split") or []) + args.dataset_split
    fractions = (info["val_fraction"] if args.val_fraction is None else args.val_fraction,
                 info["test_fraction"] if args.test_fraction is None else args.test_fraction)
    records = dataset.records
    if args.split != "all":
        records = [r for r in records if split_of(r.image, *fractions) == args.split]
    references = captions_by_image(records)
    if not references:
        raise UserError("no captioned images to evaluate")
    images = list(references)
    cache = FeatureCache(args.cache_dir, model.require_encoder())
    features, grid = features_for(model, images, args.cache_dir)
    boxes = boxes_for(model, images, args.cache_dir)
    results = []
    for first in range(0, len(images), 256):
        part = slice(first, first + 256)
        results += model.caption_features(features[part].float(), beam_size=args.beam_size,
                                          length_alpha=args.length_alpha,
                                          grid=None if grid is None else grid[part].float(),
                                          boxes=None if boxes is None else boxes[part])
    ids = [str(p.name) for p in images]
    refs = {i: references[p] for i, p in zip(ids, images)}
    systems = {"model": {i: r.caption for i, r in zip(ids, results)}}
    notes = {}
    full = {"model": results}  # the systems whose whole results (attention, boxes) are known
    for name, decoding in variants.items():
        main_decoding, model.decoding = model.decoding, decoding
        full[name] = [r for first in range(0, len(images), 256)
                      for r in model.caption_features(features[first:first + 256].float(),
                                                      grid=None if grid is None else grid[first:first + 256].float(),
                                                      boxes=None if boxes is None else boxes[first:first + 256])]
        model.decoding = main_decoding
        systems[name] = dict(zip(ids, (r.caption for r in full[name])))
        notes[name] = f"the model with {decoding}"
    for path in args.compare:
        same_eyes = Captioner.read_config(path).encoder == model.config.encoder  # else it builds its own encoder
        other = Captioner.from_checkpoint(path, encoder=model.require_encoder() if same_eyes else None,
                                          int8=not args.float32, device=model.device)  # like with like
        other_feats, other_grid = features_for(other, images, args.cache_dir)
        other_boxes = boxes_for(other, images, args.cache_dir)
        full[f"compare:{path.name}"] = [
            r for first in range(0, len(images), 256)
            for r in other.caption_features(other_feats[first:first + 256].float(),
                                            grid=None if other_grid is None else other_grid[first:first + 256],
                                            boxes=None if other_boxes is None else other_boxes[first:first + 256])]
        systems[f"compare:{path.name}"] = dict(zip(ids, (r.caption for r in full[f"compare:{path.name}"])))
        notes[f"compare:{path.name}"] = (f"{path}, its own default decoding, "
                                         f"{'float32 weights' if args.float32 else 'int8 decoder matrices'}")
    if not args.no_baselines:
        candidates = [c for caps in references.values() for c in caps]
        if sources:
            candidates += [r.caption for r in training_records(sources, info)]
        constant, _ = best_constant_caption(list(refs.values()), candidates)
        systems["constant"] = dict.fromkeys(ids, constant)
        notes["constant"] = constant
        retrieved, how = retrieval_captions(cache, features, references, sources, info)
        systems["retrieval"] = dict(zip(ids, retrieved))
        notes["retrieval"] = f"consensus caption of the 5 nearest {how}"
        if model.concept_words:
            systems["concept_retrieval"] = dict(zip(ids, concept_retrieval_captions(model, results, info, sources)))
            notes["concept_retrieval"] = ("the caption learned from (photos' and text-only) whose concept and object "
                                          "words best match the photo's")
    scores = {name: caption_scores(refs, preds) for name, preds in systems.items()}
    grounding = {name: grounding_scores([r.to_dict() for r in rs], [refs[i] for i in ids]) for name, rs in full.items()}

    beam = args.beam_size or model.decoding.beam_size
    report = {
        "checkpoint": str(args.checkpoint), "images": len(images), "captions": len(records),
        "split": args.split, "beam_size": beam, "encoder": model.config.encoder,
        "skipped_captions_missing_image": dataset.skipped, "java": java_available(),
        "scores": scores, "grounding": grounding, "baselines": notes, "seconds": round(time.perf_counter() - start, 1),
        "predictions": [{"image": i, **{name: preds[i] for name, preds in systems.items() if name != "constant"},
                         "objects": r.objects, "familiarity": r.familiarity, "references": refs[i]}
                        for i, r in zip(ids, results)],
    }
    report["degenerate_captions"] = {name: sorted(c for c in set(preds.values()) if degenerate(tokenize(c)))
                                     for name, preds in systems.items()}
    familiar = [r.familiarity for r in results if r.familiarity is not None]
    if familiar:
        report["familiarity"] = {"median": float(np.median(familiar)),
                                 "share_below_unfamiliar": float(np.mean(np.asarray(familiar) < UNFAMILIAR)),
                                 "unfamiliar_threshold": UNFAMILIAR}
    metrics = [m for m in scores["model"] if not m.startswith("objects_")]
    print(f"{len(images)} images, {len(records)} human captions ({args.split}), beam {beam}")
    short = {"object_precision": "obj-P", "object_recall": "obj-R", "object_f1": "obj-F1"}
    print(f"{'':12s}" + "".join(f"{short.get(m, m):>9s}" for m in metrics))
    for name, s in scores.items():
        print(f"{name:12s}" + "".join(f"{s[m]:9.4f}" for m in metrics))
    for name, g in grounding.items():
        print(f"{name}: where it looked (entries, cells alone): {g['flat_entries']} of {g['with_attention']} captions "
              f"flat over the entries, the cells alone point at the named object {g['cells_pointing_game']:.3f} "
              f"(chance {g['cells_pointing_chance']:.3f}, {g['cells_pointed_words']} words), cells' in-box ratio "
              f"median {g['cells_in_box_ratio_median']:.2f}")
        print(f"{name}: where it looked (the map: cells and boxes painted over their areas): {g['flat']} of "
              f"{g['with_attention']} captions flat, pointing game "
              f"{g['pointing_game']:.3f} (chance {g['pointing_chance']:.3f}, {g['pointed_words']} words), in-box ratio "
              f"median {g['in_box_ratio_median']:.2f}; {g['unbacked']} of {g['captions']} captions name an object "
              "no one backs")
    if "constant" in notes:
        print(f"constant caption: {notes['constant']!r}")
    if familiar:
        print(f"familiarity: median {report['familiarity']['median']:.3f}, "
              f"{report['familiarity']['share_below_unfamiliar']:.1%} below {UNFAMILIAR}")
    write_report(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
