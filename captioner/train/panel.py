"""A blind panel: people (or careful helpers) look at each photo and rate each caption of
it without knowing which system wrote it; one human reference is among the candidates, as
the calibration. What it measures is what CIDEr does not: whether a caption is true and
tells someone who cannot see the photo what it is about.

``sheets`` writes, per judge, the photos as PNG files and a sheet listing each photo's
candidates, shuffled per photo, lower case, punctuation dropped, a caption two systems share
shown once; the key (which letter is which system) goes into a separate file the judges
never see. ``read_ratings`` and ``score`` turn the judges' ratings back into each system's
shares, with paired bootstrap intervals between systems over the photos.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.train.metrics import bootstrap

HUMAN = "human"
VERDICTS = ("acceptable", "partly", "wrong")
# the rubric, word for word as the panel that set the goals used it
RUBRIC = (
    "Rate each caption against the photo. verdict: **acceptable** (main subject right, nothing false), "
    "**partly** (one false detail), **wrong** (main subject wrong, or absurd). absurd: yes if it **states a "
    "false or physically absurd relation or action**, else no. useful: yes if it **tells someone who cannot "
    "see the photo what it is about: the subject and what is going on or where**, else no.")
LEAST_HUMAN_ACCEPTABLE = 0.95  # a run whose human references score under this is thrown away
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # one per distinct caption of a photo


def normalise(caption: str) -> str:
    """Lower case, no punctuation, single spaces: no system stands out by its typing."""
    return " ".join(re.sub(r"[^\w\s'-]", " ", caption.lower()).split())


@dataclass
class Rating:
    photo: str
    letter: str
    verdict: str
    absurd: bool
    useful: bool


def sheets(photos: Sequence[Path], systems: Mapping[str, Sequence[str]], out: Path, judges: int,
           seed: int = 0, side: int = 512) -> dict:
    """Write ``judges`` sheets over ``photos`` (split in turn) into ``out``: ``photos/*.png``,
    ``sheet-N.md`` and ``key.json``. ``systems``: each system's caption of every photo, in
    the photos' order, the human reference under ``HUMAN``. Returns the key."""
    rng = random.Random(seed)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    key: dict[str, dict[str, list[str]]] = {}
    shown: dict[str, dict[str, str]] = {}
    pages: list[list[str]] = [[] for _ in range(judges)]
    for n, photo in enumerate(photos):
        pid = f"p{n:03d}"
        image = Image.open(photo).convert("RGB")
        image.thumbnail((side, side))
        image.save(out / "photos" / f"{pid}.png")
        texts: dict[str, list[str]] = {}
        for name, captions in systems.items():
            texts.setdefault(normalise(captions[n]), []).append(name)
        order = list(texts)
        if len(order) > len(LETTERS):
            raise ValueError(f"{photo}: {len(order)} distinct captions, more than a sheet's {len(LETTERS)} letters")
        rng.shuffle(order)
        key[pid], shown[pid] = {}, {}
        lines = [f"## {pid}", f"photo: photos/{pid}.png", ""]
        for letter, text in zip(LETTERS, order):
            key[pid][letter], shown[pid][letter] = texts[text], text
            lines.append(f"- {letter}: {text}")
        pages[n % judges] += lines + [""]
    for j, lines in enumerate(pages):
        head = [f"# Sheet {j + 1}", "", RUBRIC, "",
                "A caption may leave things out: vague but true is acceptable. Do not count as false what the "
                "photo does not let you check. "
                "Look at each photo (open the PNG), then rate every caption listed under it. Write one JSON line "
                'per caption: {"photo": "p000", "letter": "A", "verdict": "acceptable|partly|wrong", '
                '"absurd": true|false, "useful": true|false}', ""]
        (out / f"sheet-{j + 1}.md").write_text("\n".join(head + lines), encoding="utf-8")
    (out / "key.json").write_text(json.dumps({"photos": [str(p) for p in photos], "key": key, "texts": shown},
                                             indent=1))
    return key


def consensus(references: Sequence[str]) -> str:
    """The reference that shares the most words with the others (mean unigram F1): the
    human caption most people would agree with, not the one with a slip in it."""
    bags = [set(normalise(r).split()) for r in references]

    def agreement(i: int) -> float:
        return float(np.mean([2 * len(bags[i] & b) / max(1, len(bags[i]) + len(b))
                              for j, b in enumerate(bags) if j != i] or [0.0]))

    return references[max(range(len(references)), key=agreement)]


def read_ratings(paths: Sequence[Path]) -> list[Rating]:
    """The judges' JSON lines (a line that is not a rating is skipped)."""
    ratings = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.strip().rstrip(",")
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            verdict = str(row["verdict"]).lower()
            if verdict not in VERDICTS:
                raise ValueError(f"{path}: verdict {verdict!r} is not one of {VERDICTS}")
            ratings.append(Rating(row["photo"], row["letter"], verdict, bool(row["absurd"]), bool(row["useful"])))
    return ratings


def per_system(ratings: Sequence[Rating], key: Mapping[str, Mapping[str, Sequence[str]]]
               ) -> dict[str, dict[str, dict[str, float]]]:
    """system -> photo -> {acceptable, partly, wrong, absurd, useful, good} (1.0 or 0.0;
    good: acceptable and useful)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in ratings:
        row = {v: float(r.verdict == v) for v in VERDICTS}
        row.update(absurd=float(r.absurd), useful=float(r.useful),
                   good=float(r.verdict == "acceptable" and r.useful))
        for system in key[r.photo][r.letter]:
            table.setdefault(system, {})[r.photo] = row
    return table


def paired(a: Sequence[float], b: Sequence[float], resamples: int = 10000) -> tuple[float, float, float]:
    """The mean of ``a - b`` (paired by photo) and its 95% bootstrap interval
    (``metrics.bootstrap``)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    return (float(diff.mean()), *bootstrap(diff, resamples))


def score(ratings: Sequence[Rating], key: Mapping[str, Mapping[str, Sequence[str]]],
          against: str | None = None) -> dict:
    """Each system's shares over the photos every system was rated on, the paired
    differences against ``against`` (good and absurd), and whether the run counts (the
    human references at least ``LEAST_HUMAN_ACCEPTABLE`` acceptable)."""
    table = per_system(ratings, key)
    photos = sorted(set.intersection(*(set(rows) for rows in table.values()))) if table else []
    measures = ("acceptable", "partly", "wrong", "absurd", "useful", "good")
    out = {"photos": len(photos), "systems": {}, "differences": {}}
    for system, rows in table.items():
        out["systems"][system] = {m: float(np.mean([rows[p][m] for p in photos])) for m in measures}
    if against in table:
        for system, rows in table.items():
            if system == against:
                continue
            out["differences"][system] = {
                m: paired([rows[p][m] for p in photos], [table[against][p][m] for p in photos])
                for m in ("good", "absurd", "acceptable", "wrong")}
    human = out["systems"].get(HUMAN, {}).get("acceptable")
    out["human_acceptable"] = human
    out["counts"] = human is not None and human >= LEAST_HUMAN_ACCEPTABLE
    return out


def agreement(ratings: Sequence[Rating], key: Mapping[str, Mapping[str, Sequence[str]]],
              flagged: Mapping[str, Mapping[str, bool]], systems: Sequence[str]) -> dict:
    """How well an automatic flag (``flagged``: photo -> letter -> flagged) agrees with the
    judges' "absurd", over the captions of ``systems`` (the ones not chosen by that flag):
    the share of absurd captions it flags (recall), the share of its flags that were judged
    absurd (precision), and each system's flagged and absurd shares side by side."""
    rows = [(flagged[r.photo][r.letter], r.absurd, set(key[r.photo][r.letter]))
            for r in ratings if set(key[r.photo][r.letter]) & set(systems)]
    absurd = [f for f, a, _ in rows if a]
    flags = [a for f, a, _ in rows if f]
    out = {"captions": len(rows), "recall": float(np.mean(absurd)) if absurd else None,
           "precision": float(np.mean(flags)) if flags else None,
           "accuracy": float(np.mean([f == a for f, a, _ in rows])) if rows else None, "systems": {}}
    for system in systems:
        mine = [(f, a) for f, a, names in rows if system in names]
        if mine:
            out["systems"][system] = {"flagged": float(np.mean([f for f, _ in mine])),
                                      "absurd": float(np.mean([a for _, a in mine]))}
    return out
