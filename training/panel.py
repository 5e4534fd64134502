"""A blind judging panel (``captioner/train/panel.py``): prepare the sheets, then score
the ratings that come back.

    python -m training.panel prepare --predictions runs/val.json --images $S/coco_captions/val2017 \\
        --system model --system variant:claims2 --photos 100 --judges 4 --out runs/panel_val
    # each judge rates sheet-N.md against photos/*.png, writing ratings-N.jsonl beside it
    python -m training.panel score --panel runs/panel_val --against model --json-out runs/panel_val/score.json

``--predictions`` is ``evaluate_captioner --json-out``'s report: each photo's caption by
every system scored in that run and its human references, of which one (the one most like
the others, ``--reference consensus``) joins the candidates as the calibration. Every
judge sees every system's caption of the same photos, so the systems are compared photo by
photo.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from captioner.claims import claim_table
from captioner.train.panel import HUMAN, LEAST_HUMAN_ACCEPTABLE, agreement, consensus, read_ratings, score, sheets
from captioner.vocabulary import tokenize
from lstmkit.checkpoint import atomic_write_text
from lstmkit.runtools import UserError, cli


def prepare(args: argparse.Namespace) -> None:
    report = json.loads(args.predictions.read_text())
    rows = report["predictions"]
    missing = [s for s in args.system if s not in rows[0]]
    if missing:
        have = [k for k in rows[0] if k not in ("image", "objects", "familiarity", "references")]
        raise UserError(f"{args.predictions} has no system {missing[0]!r}; it has {', '.join(have)}")
    judged = {Path(photo).name for panel in args.exclude
              for photo in json.loads((panel / "key.json").read_text())["photos"]}
    rows = [r for r in rows if Path(r["image"]).name not in judged]
    rng = random.Random(args.seed)
    rows = sorted(rng.sample(rows, min(args.photos, len(rows))), key=lambda r: r["image"])
    photos = [args.images / r["image"] for r in rows]
    pick = consensus if args.reference == "consensus" else rng.choice
    systems = {HUMAN: [pick(r["references"]) for r in rows]}
    systems.update({s: [r[s] for r in rows] for s in args.system})
    sheets(photos, systems, args.out, args.judges, args.seed)
    print(f"{len(photos)} photos, {len(systems)} candidates each (one human reference), "
          f"{args.judges} sheets in {args.out}")


def score_panel(args: argparse.Namespace) -> None:
    key = json.loads((args.panel / "key.json").read_text())["key"]
    paths = sorted(args.panel.glob("ratings-*.jsonl"))
    if not paths:
        raise UserError(f"no ratings-*.jsonl in {args.panel}")
    result = score(read_ratings(paths), key, args.against)
    print(f"{result['photos']} photos rated by {len(paths)} judges")
    print(f"{'':28s}{'acceptable':>11s}{'partly':>8s}{'wrong':>7s}{'absurd':>8s}{'useful':>8s}{'acc+useful':>11s}")
    for system, s in result["systems"].items():
        print(f"{system:28s}{s['acceptable']:11.1%}{s['partly']:8.1%}{s['wrong']:7.1%}{s['absurd']:8.1%}"
              f"{s['useful']:8.1%}{s['good']:11.1%}")
    for system, d in result["differences"].items():
        good, absurd = d["good"], d["absurd"]
        print(f"{system} - {args.against}: acceptable and useful {good[0]:+.3f} ({good[1]:+.3f} to {good[2]:+.3f}), "
              f"absurd {absurd[0]:+.3f} ({absurd[1]:+.3f} to {absurd[2]:+.3f})")
    if args.proxy:
        texts = json.loads((args.panel / "key.json").read_text())["texts"]
        table = claim_table()
        flagged = {p: {letter: bool(table.unseen(tokenize(text), args.proxy_least)) for letter, text in row.items()}
                   for p, row in texts.items()}
        result["proxy"] = agreement(read_ratings(paths), key, flagged, args.proxy)
        a = result["proxy"]
        print(f"proxy (a claim seen fewer than {args.proxy_least} times in the human captions) against the judges' "
              f"absurd, {a['captions']} captions of {', '.join(args.proxy)}: recall {a['recall']:.2f}, precision "
              f"{a['precision']:.2f}, agreement {a['accuracy']:.2f}")
        for system, row in a["systems"].items():
            print(f"  {system}: flagged {row['flagged']:.1%}, judged absurd {row['absurd']:.1%}")
    if not result["counts"]:
        print(f"the human references scored {result['human_acceptable']} acceptable, under "
              f"{LEAST_HUMAN_ACCEPTABLE:.0%}: this run does not count")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(result, indent=2))


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("prepare", help="write the blind sheets")
    p.add_argument("--predictions", type=Path, required=True, help="evaluate_captioner's --json-out")
    p.add_argument("--images", type=Path, required=True, help="the folder of the photos")
    p.add_argument("--system", action="append", required=True, help="a system of the report (model, variant:NAME...)")
    p.add_argument("--photos", type=int, default=100)
    p.add_argument("--reference", choices=["consensus", "random"], default="consensus",
                   help="which human reference joins the candidates: the one most like the others, or any")
    p.add_argument("--judges", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", type=Path, action="append", default=[], metavar="PANEL",
                   help="a panel folder whose photos are not drawn again (fresh photos for a new report)")
    p.add_argument("--out", type=Path, required=True)
    s = verbs.add_parser("score", help="score the ratings")
    s.add_argument("--panel", type=Path, required=True, help="the folder prepare wrote, with ratings-*.jsonl")
    s.add_argument("--against", default=None, help="the system the others are compared with, photo by photo")
    s.add_argument("--proxy", action="append", default=[], metavar="SYSTEM",
                   help="also score the automatic proxy (claims.ClaimTable.unseen) against the judges on this "
                        "system's captions (one not chosen by the proxy)")
    s.add_argument("--proxy-least", type=int, default=2)
    s.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    prepare(args) if args.verb == "prepare" else score_panel(args)


if __name__ == "__main__":
    sys.exit(main())
