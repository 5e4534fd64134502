"""Choose the beam width and the length normalisation of a captioner on the validation
split (never the test split), and optionally store the choice in the checkpoint.

    python -m training.tune_decoding --checkpoint runs/x/best.safetensors \\
        --dataset flickr8k --data-root ../shared/data/flickr8k [--write]

For every beam width, length exponent and object setting (the top object required in the
caption when the classifier is this sure of it; objects never copied below a probability),
the validation images are captioned and scored with ``metrics.caption_scores`` (the
measure of training's validation and of the test report); the setting with the best
BLEU-4 + CIDEr / 10 + object F1 / 10 - CHAIR_s / 10 wins (averaged over the datasets when several are
given: ``coco_paired`` photos are split as the training run split them, by its
``--concept-val-fraction``). ``--text-world-above`` tries when to describe a photo from its
objects and concepts alone (the share of its nearest reference photos that are of the text
world); ``--back-objects`` when an object word needs a box, a concept or an ImageNet object to
back it. Each row also reports where the captions looked (``grounding_metrics``: flat
captions, pointing game, captions naming an object nothing backs). ``--write`` saves the
checkpoint again with that setting as its default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

from captioner.detector import boxes_for
from captioner.grounding_metrics import grounding_scores
from captioner.model import Captioner
from captioner.train.datasets import DATASETS, captions_by_image, own_fractions, read_dataset, split_records
from captioner.train.features import features_for
from captioner.train.metrics import caption_scores
from lstmkit.checkpoint import atomic_write_text, read_safetensors
from lstmkit.devices import resolve_device
from lstmkit.runtools import UserError, cli, device_flag


def score(row: dict) -> float:
    """What the choice maximises: the usual BLEU-4 + CIDEr / 10, naming the objects that
    are there (object-mention F1 / 10) and not naming objects no person named (CHAIR_s / 10,
    the share of captions that invent one)."""
    return row["bleu4"] + row["cider"] / 10 + row["object_f1"] / 10 - row.get("CHAIR_s", 0.0) / 10


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dataset", action="append", choices=DATASETS, required=True)
    p.add_argument("--data-root", action="append", type=Path, required=True)
    p.add_argument("--beams", type=int, nargs="+", default=[1, 2, 3, 5, 7])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0, 1.25])
    p.add_argument("--require-object-probs", nargs="+", default=["none"],
                   help="try constrained beam search: the top object must be in the caption when the classifier is "
                        "at least this sure ('none': never)")
    p.add_argument("--min-object-probs", type=float, nargs="+", default=[0.0],
                   help="try never copying objects the classifier is less sure of than this")
    p.add_argument("--objects-only-below", default="keep",
                   help="photos less familiar than this are described from their objects alone ('none': never; "
                        "'keep': the checkpoint's). Set, not tuned: the validation photos are the training photos' "
                        "kind, and about 1%% of them fall below any sensible threshold")
    p.add_argument("--text-world-above", nargs="+", default=["keep"],
                   help="try describing photos from their objects and concepts alone when at least this share of "
                        "their nearest reference photos is of the text world ('none': never; 'keep': the "
                        "checkpoint's)")
    p.add_argument("--person-scores", nargs="+", default=["keep"],
                   help="try allowing person words only when the COCO detector's best person box scores at least "
                        "this ('none': always; 'keep': the checkpoint's)")
    p.add_argument("--require-detected", nargs="+", default=["keep"],
                   help="try requiring the detector's surest object (no person) when it scores at least this "
                        "('none': never; 'keep': the checkpoint's)")
    p.add_argument("--ground-detector", choices=["keep", "on", "off", "both"], default="keep",
                   help="grounding on the COCO detector alone ('both': try with and without)")
    p.add_argument("--rules", choices=["keep", "on", "off"], default="keep",
                   help="the caption rules: no word pair twice, no modifier without its noun (rules.py)")
    p.add_argument("--dataset-split", action="append", default=[], metavar="KIND:VAL:TEST",
                   help="a dataset's own validation and test fractions (default: the checkpoint's training run's)")
    p.add_argument("--ground-weights", type=float, nargs="+", default=None,
                   help="try tying COCO category words to the concept classifiers: + weight * log p (default: the "
                        "checkpoint's)")
    p.add_argument("--back-objects", nargs="+", default=["keep"],
                   help="try naming a COCO object only when a box, a concept or an ImageNet object at least this sure "
                        "backs it ('none': always; 'keep': the checkpoint's)")
    p.add_argument("--block-ngrams", type=int, nargs="+", default=None,
                   help="try forbidding repeated n-grams of these lengths (0: none; default: the checkpoint's)")
    p.add_argument("--cache-dir", type=Path, default=Path("data/features"))
    p.add_argument("--json-out", type=Path, default=None, help="every setting's scores")
    p.add_argument("--write", action="store_true", help="store the best setting in the checkpoint")
    p.add_argument("--float32", action="store_true",
                   help="decode with the float32 weights (default: int8 decoder matrices on the CPU, as users get)")
    device_flag(p)
    args = p.parse_args(argv)
    if len(args.dataset) != len(args.data_root):
        raise UserError("give one --data-root for each --dataset")

    model = Captioner.from_checkpoint(args.checkpoint, device=resolve_device(args.device), int8=not args.float32)
    info = model.provenance.get("training_data", {})
    own = own_fractions(list(info.get("dataset_split") or []) + args.dataset_split)
    sets = []
    for kind, root in zip(args.dataset, args.data_root):
        fractions = ((info.get("concept_val_fraction", 0.4), 0.0) if kind == "coco_paired"
                     else own.get(kind, (info.get("val_fraction", 0.07), info.get("test_fraction", 0.13))))
        refs_by_image = captions_by_image(split_records(read_dataset(kind, root).records, *fractions)["val"])
        images = list(refs_by_image)
        features, grid = features_for(model, images, args.cache_dir, progress=False)
        boxes = boxes_for(model, images, args.cache_dir)
        sets.append((kind, images, {str(p): caps for p, caps in refs_by_image.items()}, features, grid, boxes))
    keep = model.decoding

    def choices(values: list[str], current):
        return [current if v == "keep" else None if v == "none" else float(v) for v in values]

    axes = {  # DecodingConfig field -> the values tried
        "beam_size": args.beams, "length_alpha": args.alphas,
        "require_object_prob": [None if r == "none" else float(r) for r in args.require_object_probs],
        "min_object_prob": args.min_object_probs,
        "text_world_above": choices(args.text_world_above, keep.text_world_above),
        "ground_weight": args.ground_weights or [keep.ground_weight],
        "block_ngram": args.block_ngrams if args.block_ngrams is not None else [keep.block_ngram],
        "person_score": choices(args.person_scores, keep.person_score),
        "require_detected": choices(args.require_detected, keep.require_detected),
        "ground_detector": {"keep": [keep.ground_detector], "on": [True], "off": [False],
                            "both": [False, True]}[args.ground_detector],
        "back_objects": choices(args.back_objects, keep.back_objects),
    }
    fixed = {"rules": keep.rules if args.rules == "keep" else args.rules == "on",
             "objects_only_below": choices([args.objects_only_below], keep.objects_only_below)[0]}
    if model.network.objects is None:
        axes.update(require_object_prob=[None], min_object_prob=[0.0])
        fixed["objects_only_below"] = None
    settings = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    settings = [s for s in settings if s["beam_size"] > 1 or s["length_alpha"] == args.alphas[0]]  # greedy: one alpha
    rows = []
    for setting in settings:
        model.decoding = replace(keep, **setting, **fixed)
        row = {**setting, **fixed, "datasets": {}}
        for kind, images, refs, features, grid, boxes in sets:
            results = model.caption_features(features.float(), grid=grid, boxes=boxes)
            scores = caption_scores(refs, {str(p): r.caption for p, r in zip(images, results)}, meteor=False)
            looked = grounding_scores([r.to_dict() for r in results], [refs[str(p)] for p in images])
            row["datasets"][kind] = {"images": len(images), "bleu4": scores["BLEU-4"], "cider": scores["CIDEr"],
                                     "object_f1": scores["object_f1"], "object_precision": scores["object_precision"],
                                     "CHAIR_s": scores["CHAIR_s"], "degenerate": scores["degenerate"],
                                     "person_in_people_free": scores["person_in_people_free"],
                                     "words": sum(len(r.words) for r in results) / len(results),
                                     "flat": looked["flat"], "pointing_game": looked["pointing_game"],
                                     "unbacked": looked["unbacked"]}
        for key in ("bleu4", "cider", "object_f1", "CHAIR_s"):
            row[key] = sum(d[key] for d in row["datasets"].values()) / len(sets)
        rows.append(row)
        print(", ".join(f"{k} {v}" for k, v in setting.items()) + ": "
              + "; ".join(f"{kind} BLEU-4 {d['bleu4']:.4f} CIDEr {d['cider']:.4f} object F1 {d['object_f1']:.4f} "
                          f"CHAIR_s {d['CHAIR_s']:.3f} person/people-free {d['person_in_people_free']:.2f} "
                          f"degenerate {d['degenerate']} unbacked {d['unbacked']} pointing {d['pointing_game']:.3f} "
                          f"flat {d['flat']}"
                          for kind, d in row["datasets"].items()))
    images = [p for _, photos, *_ in sets for p in photos]
    best = max(rows, key=score)
    chosen = {k: best[k] for k in axes}
    print(f"best on {len(images)} validation images by BLEU-4 + CIDEr / 10 + object F1 / 10 - CHAIR_s / 10: "
          + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    if args.json_out:
        criterion = "BLEU-4 + CIDEr / 10 + object F1 / 10 - CHAIR_s / 10"
        atomic_write_text(args.json_out, json.dumps({"checkpoint": str(args.checkpoint), "images": len(images),
                                                     "criterion": criterion, "best": best, "settings": rows}, indent=2))
    if args.write:
        model.decoding = replace(keep, **chosen, **fixed)
        tensors, meta = read_safetensors(args.checkpoint)
        kept = ("format", "kind", "config", "vocabulary", "decoding", "object_words", "concept_words", "provenance")
        stored = next((t.dtype for t in tensors.values() if t.is_floating_point()), None)  # fp16 stays fp16
        model.save(args.checkpoint, dtype=stored,
                   metadata={k: v for k, v in meta.items() if k not in kept})
        print(f"wrote {chosen} into {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
