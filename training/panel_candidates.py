"""Judge every caption a choice rule could give, once; then score any rule offline.

A choice rule (the claims check's threshold, a gender rule, softening an action) picks one
caption per photo from a small pool: the beam's finished captions and what the rules make of
them. A panel that judges each of those captions once, blind (``captioner/train/panel.py``'s
sheets and rubric), scores every rule whose captions it holds, and the best any rule could
do: the share of photos with an acceptable and useful caption anywhere in the pool.

    python -m training.panel_candidates write --photos-of runs/panel_val3 \\
        --coco-captions $S/coco_captions/annotations/captions_val2017_paired.json \\
        --variant s3:claims_seen=3 --variant g5:gender_sure=0.5 --out runs/cand_val.json
    python -m training.panel_candidates sheets --candidates runs/cand_val.json --judges 6 --seed 7 \\
        --out runs/panel_cand_val
    # each judge rates sheet-N.md, writing ratings-N.jsonl beside it; captions of new rules later:
    python -m training.panel_candidates sheets --candidates runs/cand_more.json --after runs/panel_cand_val ...
    python -m training.panel_candidates score --candidates runs/cand_val.json --panel runs/panel_cand_val
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.train.panel import HUMAN, consensus, normalise, paired, read_ratings, sheets
from lstmkit.checkpoint import atomic_write_text
from lstmkit.runtools import UserError, cli

MEASURES = ("good", "acceptable", "wrong", "absurd", "useful")


def write(args: argparse.Namespace) -> None:
    from PIL import Image

    from captioner.model import Captioner

    photos = [Path(p) for p in json.loads((args.photos_of / "key.json").read_text())["photos"]]
    coco = json.loads(args.coco_captions.read_text())
    name_of = {im["id"]: im["file_name"] for im in coco["images"]}
    references: dict[str, list[str]] = {}
    for a in coco["annotations"]:
        references.setdefault(name_of[a["image_id"]], []).append(a["caption"].strip())
    model = Captioner.from_checkpoint(args.checkpoint, int8=True)
    model.keep_alternatives = True
    shipped = model.decoding
    rules = {"model": shipped}
    for item in args.variant:
        name, _, settings = item.partition(":")
        if not name or name in rules or name.startswith("beam"):
            raise UserError(f"--variant {item!r}: a new name, not model or beam*")
        try:
            rules[name] = shipped.updated(settings.split(","))
        except ValueError as err:
            raise UserError(str(err)) from err
    rows = []
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        row = {"image": str(photo), "references": references.get(photo.name, []), "captions": {}}
        for name, decoding in rules.items():
            model.decoding = decoding
            result = model.caption([image])[0]
            row["captions"][name] = result.caption
            if name == "model":
                row["beam"] = result.alternatives
        rows.append(row)
    atomic_write_text(args.out, json.dumps({"rules": list(rules), "photos": rows}, indent=1))
    print(f"{len(rows)} photos, {len(rules)} rules and the beam's captions in {args.out}")


def pool(row: dict) -> dict[str, list[str]]:
    """Each distinct caption (normalised) of a photo and the rules (or beam places) that give it."""
    out: dict[str, list[str]] = {}
    for name, caption in row["captions"].items():
        if normalise(caption):
            out.setdefault(normalise(caption), []).append(name)
    for i, caption in enumerate(row.get("beam", [])):
        if normalise(caption):
            out.setdefault(normalise(caption), []).append(f"beam{i}")
    return out


def judged(panels: list[Path]) -> dict[tuple[str, str], dict]:
    """(photo file name, normalised caption) -> its rating, over ``panels`` (first wins; a
    caption the human reference shares is rated as the text it is)."""
    out: dict[tuple[str, str], dict] = {}
    for panel in panels:
        key = json.loads((panel / "key.json").read_text())
        names = {pid: Path(p).name for pid, p in zip(key["key"], key["photos"])}  # the key keeps the photos' order
        for r in read_ratings(sorted(panel.glob("ratings-*.jsonl"))):
            out.setdefault((names[r.photo], key["texts"][r.photo][r.letter]),
                           {"acceptable": r.verdict == "acceptable", "wrong": r.verdict == "wrong",
                            "absurd": r.absurd, "useful": r.useful, "good": r.verdict == "acceptable" and r.useful})
    return out


def write_sheets(args: argparse.Namespace) -> None:
    rows = json.loads(args.candidates.read_text())["photos"]
    done = judged(args.after)
    photos, humans, news = [], [], []
    for row in rows:
        new = [c for c in pool(row) if (Path(row["image"]).name, c) not in done]
        if new:
            photos.append(Path(row["image"]))
            humans.append(consensus(row["references"]))
            news.append(new)
    # one column per place in the pool; a photo with fewer repeats its first (the sheet shows it once)
    width = max((len(n) for n in news), default=0)
    captions = {HUMAN: humans, **{f"c{i}": [n[i] if i < len(n) else n[0] for n in news] for i in range(width)}}
    if not photos:
        raise UserError("every caption of these photos is judged already")
    sheets(photos, captions, args.out, args.judges, args.seed)
    print(f"{len(photos)} photos, {sum(map(len, news))} captions not judged yet, sheets in {args.out}")


def score_rules(args: argparse.Namespace) -> dict:
    data = json.loads(args.candidates.read_text())
    ratings = judged(args.panel)
    rows = data["photos"]
    rules = data["rules"] + ["beam0"]

    def rating(row: dict, rule: str) -> dict | None:
        if rule == "beam0" and not row.get("beam"):
            return None  # a model without the claims check keeps no beam
        caption = row["beam"][0] if rule == "beam0" else row["captions"][rule]
        return ratings.get((Path(row["image"]).name, normalise(caption)))

    out: dict = {"photos": len(rows), "rules": {}, "differences": {}}
    for rule in rules:
        rated = [r for r in (rating(row, rule) for row in rows) if r is not None]
        out["rules"][rule] = {"judged": len(rated), **{m: sum(r[m] for r in rated) / max(1, len(rated))
                                                        for m in MEASURES}}
        both = [(rating(row, rule), rating(row, "model")) for row in rows]
        both = [(a, b) for a, b in both if a is not None and b is not None]
        if rule != "model" and both:
            out["differences"][rule] = {m: paired([a[m] for a, _ in both], [b[m] for _, b in both])
                                        for m in ("good", "absurd")}

    def best(row: dict, beam_only: bool) -> bool:
        names = [c for c, who in pool(row).items() if not beam_only or any(w.startswith("beam") for w in who)]
        return any(ratings.get((Path(row["image"]).name, c), {}).get("good", False) for c in names)

    complete = [row for row in rows if all((Path(row["image"]).name, c) in ratings for c in pool(row))]
    out["pool_judged"] = len(complete)
    out["best_in_pool"] = sum(best(row, False) for row in complete) / max(1, len(complete))
    out["best_in_beam"] = sum(best(row, True) for row in complete) / max(1, len(complete))
    print(f"{'rule':12s}{'judged':>7s}" + "".join(f"{m:>11s}" for m in MEASURES))
    for rule, s in out["rules"].items():
        print(f"{rule:12s}{s['judged']:7d}" + "".join(f"{100 * s[m]:10.1f}%" for m in MEASURES))
    for rule, d in out["differences"].items():
        print(f"{rule} - model: " + ", ".join(f"{m} {v[0]:+.3f} ({v[1]:+.3f} to {v[2]:+.3f})" for m, v in d.items()))
    print(f"the best caption anywhere in the pool is acceptable and useful for {100 * out['best_in_pool']:.0f}% "
          f"of {len(complete)} photos (the beam's captions alone: {100 * out['best_in_beam']:.0f}%)")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(out, indent=1))
    return out


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    w = verbs.add_parser("write", help="every caption the rules give, and the beam's")
    w.add_argument("--photos-of", type=Path, required=True, help="a panel folder (its key.json's photos)")
    w.add_argument("--coco-captions", type=Path, required=True, help="the photos' human captions (COCO json)")
    w.add_argument("--checkpoint", type=Path, default=Path("checkpoints/captioner.safetensors"))
    w.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]")
    w.add_argument("--out", type=Path, required=True)
    s = verbs.add_parser("sheets", help="blind sheets of every caption not judged yet")
    s.add_argument("--candidates", type=Path, required=True)
    s.add_argument("--after", type=Path, action="append", default=[], metavar="PANEL",
                   help="a panel whose judged captions are not shown again")
    s.add_argument("--judges", type=int, default=6)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    c = verbs.add_parser("score", help="score each rule (and the best in the pool) from the ratings")
    c.add_argument("--candidates", type=Path, required=True)
    c.add_argument("--panel", type=Path, action="append", required=True)
    c.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    {"write": write, "sheets": write_sheets, "score": score_rules}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
