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
world). ``--write`` saves the checkpoint again with that setting as its default.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from captioner.checkpoint import atomic_write_text, read_safetensors
from captioner.datasets import DATASETS, captions_by_image, own_fractions, read_dataset, split_records
from captioner.detector import boxes_for
from captioner.devices import resolve_device
from captioner.features import features_for
from captioner.metrics import caption_scores
from captioner.model import Captioner
from captioner.runtools import UserError, cli, device_flag


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
    p.add_argument("--objects-only-below", default="0.01",
                   help="photos less familiar than this are described from their objects alone ('none': never). "
                        "Set, not tuned: the validation photos are the training photos' kind, and about 1%% of them "
                        "fall below 0.01")
    p.add_argument("--text-world-above", nargs="+", default=["keep"],
                   help="try describing photos from their objects and concepts alone when at least this share of "
                        "their nearest reference photos is of the text world ('none': never; 'keep': the "
                        "checkpoint's)")
    p.add_argument("--person-below", nargs="+", default=["keep"],
                   help="try banning person words when the surest person concept is below this ('none': never; "
                        "'keep': the checkpoint's)")
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
                   help="try tying COCO category words to the concept detectors: + weight * log p (default: the "
                        "checkpoint's)")
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
    worlds = [model.decoding.text_world_above if w == "keep" else None if w == "none" else float(w)
              for w in args.text_world_above]
    persons = [model.decoding.person_below if w == "keep" else None if w == "none" else float(w)
               for w in args.person_below]
    person_scores = [model.decoding.person_score if w == "keep" else None if w == "none" else float(w)
                     for w in args.person_scores]
    rules = model.decoding.rules if args.rules == "keep" else args.rules == "on"
    ground_sources = {"keep": [model.decoding.ground_detector], "on": [True], "off": [False],
                      "both": [False, True]}[args.ground_detector]
    detected = [model.decoding.require_detected if w == "keep" else None if w == "none" else float(w)
                for w in args.require_detected]
    grounds = args.ground_weights or [model.decoding.ground_weight]
    blocks = args.block_ngrams if args.block_ngrams is not None else [model.decoding.block_ngram]
    requires = [None if r == "none" else float(r) for r in args.require_object_probs]
    minimums = args.min_object_probs
    only_below = None if args.objects_only_below == "none" else float(args.objects_only_below)
    if model.network.objects is None:
        requires, minimums, only_below = [None], [0.0], None
    rows = []
    settings = [(beam, alpha, require, minimum, world, person, ground, block, person_score, sure, source)
                for beam in args.beams for alpha in (args.alphas if beam > 1 else [1.0]) for require in requires
                for minimum in minimums for world in worlds for person in persons for ground in grounds
                for block in blocks for person_score in person_scores for sure in detected for source in ground_sources]
    for beam, alpha, require, minimum, world, person, ground, block, person_score, sure, source in settings:
        model.decoding = replace(model.decoding, require_object_prob=require, min_object_prob=minimum,
                                 objects_only_below=only_below, text_world_above=world, person_below=person,
                                 ground_weight=ground, block_ngram=block, person_score=person_score, rules=rules,
                                 require_detected=sure, ground_detector=source)
        row = {"ground_detector": source, "beam": beam, "alpha": alpha, "require_object_prob": require,
               "min_object_prob": minimum,
               "text_world_above": world, "person_below": person, "ground_weight": ground, "block_ngram": block,
               "person_score": person_score, "require_detected": sure, "rules": rules, "datasets": {}}
        for kind, images, refs, features, grid, boxes in sets:
            results = model.caption_features(features.float(), beam_size=beam, length_alpha=alpha, grid=grid,
                                             boxes=boxes)
            scores = caption_scores(refs, {str(p): r.caption for p, r in zip(images, results)}, meteor=False)
            row["datasets"][kind] = {"images": len(images), "bleu4": scores["BLEU-4"], "cider": scores["CIDEr"],
                                     "object_f1": scores["object_f1"], "object_precision": scores["object_precision"],
                                     "CHAIR_s": scores["CHAIR_s"], "degenerate": scores["degenerate"],
                                     "person_in_people_free": scores["person_in_people_free"],
                                     "words": sum(len(r.words) for r in results) / len(results)}
        for key in ("bleu4", "cider", "object_f1", "CHAIR_s"):
            row[key] = sum(d[key] for d in row["datasets"].values()) / len(sets)
        rows.append(row)
        print(f"beam {beam} alpha {alpha:4.2f} require {require} min {minimum} text world {world} person {person} "
              f"ground {ground} block {block} person score {person_score} require detected {sure}: "
              + "; ".join(f"{kind} BLEU-4 {d['bleu4']:.4f} CIDEr {d['cider']:.4f} object F1 {d['object_f1']:.4f} "
                          f"CHAIR_s {d['CHAIR_s']:.3f} person/people-free {d['person_in_people_free']:.2f} "
                          f"degenerate {d['degenerate']}"
                          for kind, d in row["datasets"].items()))
    images = [p for _, photos, *_ in sets for p in photos]
    best = max(rows, key=score)
    print(f"best on {len(images)} validation images by BLEU-4 + CIDEr / 10 + object F1 / 10 - CHAIR_s / 10: "
          f"beam {best['beam']}, "
          f"alpha {best['alpha']}, require_object_prob {best['require_object_prob']}, "
          f"min_object_prob {best['min_object_prob']}, text_world_above {best['text_world_above']}, "
          f"person_below {best['person_below']}, ground_weight {best['ground_weight']}, "
          f"block_ngram {best['block_ngram']}, person_score {best['person_score']}, "
          f"require_detected {best['require_detected']}")
    if args.json_out:
        criterion = "BLEU-4 + CIDEr / 10 + object F1 / 10 - CHAIR_s / 10"
        atomic_write_text(args.json_out, json.dumps({"checkpoint": str(args.checkpoint), "images": len(images),
                                                     "criterion": criterion, "best": best, "settings": rows}, indent=2))
    if args.write:
        model.decoding = replace(model.decoding, beam_size=best["beam"], length_alpha=best["alpha"],
                                 require_object_prob=best["require_object_prob"],
                                 min_object_prob=best["min_object_prob"], objects_only_below=only_below,
                                 text_world_above=best["text_world_above"], person_below=best["person_below"],
                                 ground_weight=best["ground_weight"], block_ngram=best["block_ngram"],
                                 person_score=best["person_score"], rules=rules,
                                 require_detected=best["require_detected"], ground_detector=best["ground_detector"])
        tensors, meta = read_safetensors(args.checkpoint)
        kept = ("format", "kind", "config", "vocabulary", "decoding", "object_words", "concept_words", "provenance")
        stored = next((t.dtype for t in tensors.values() if t.is_floating_point()), None)  # fp16 stays fp16
        model.save(args.checkpoint, dtype=stored,
                   metadata={k: v for k, v in meta.items() if k not in kept})
        print(f"wrote beam {best['beam']}, alpha {best['alpha']}, require_object_prob "
              f"{best['require_object_prob']} into {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
