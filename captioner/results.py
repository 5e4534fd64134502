"""Results: decoded ids -> words (object slots written as their objects, articles fixed),
each word's probability and where it looked, the objects, concepts and boxes, the
familiarity: the ``CaptionResult`` a caller gets back (``to_dict`` is the CLI's and the
API's JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from captioner.choice import choose, overcounted
from captioner.claims import Belief, parse, place, ungendered
from captioner.detector import Boxes
from captioner.objects import ClassifiedObjects
from captioner.rules import describe_objects, problems, trimmed
from captioner.search import Decoded
from captioner.vocabulary import Vocabulary, fix_article
from captioner.wordlists import mentioned_categories

log = logging.getLogger(__name__)

# Below this familiarity fewer than 1% of held-out photos like the training photos look as
# unlike them (familiarity.py); the CLI and the app say so beside the caption.
UNFAMILIAR = 0.01
DETECTED = 0.5  # boxes at least this sure are shown, counted and listed among a result's objects


@dataclass
class CaptionResult:
    caption: str
    words: list[str]
    probabilities: list[float]
    score: float = 0.0
    objects: list[dict] = field(default_factory=list)  # [{"word", "probability"}], most probable first
    familiarity: float | None = None
    attention: list[list[float]] | None = None         # per word, weights over the grid (row-major)
    grid: tuple[int, int] | None = None
    boxes: list[dict] | None = None                     # the COCO detector's boxes (detector.Boxes.to_list)
    attention_boxes: list[list[float]] | None = None   # per word, weights over ``boxes`` (regions; cells + boxes = 1)
    alternatives: list[str] = field(default_factory=list)  # the beam's finished captions, best first, as the search
    #                                     wrote them (``Captioner.keep_alternatives``; not in ``to_dict``)

    def to_dict(self) -> dict:
        out = {"caption": self.caption, "words": self.words, "probabilities": self.probabilities,
               "objects": self.objects, "familiarity": self.familiarity}
        if self.attention is not None:
            out.update(attention=self.attention, attention_grid=list(self.grid))
        if self.boxes is not None:
            out["boxes"] = self.boxes
        if self.attention_boxes is not None:
            out["attention_boxes"] = self.attention_boxes
        return out



@dataclass
class Writer:
    """Writes one captioner's decoded ids as words and results: its vocabulary, where its
    object slots start (``first_slot``), its object and concept words."""

    vocab: Vocabulary
    first_slot: int
    object_words: Sequence[str] = ()
    concept_words: Sequence[str] = ()

    def results(self, decoded: Sequence[Decoded], classified: ClassifiedObjects | None, concepts: list | None,
                familiarity: list | None, grid: tuple[int, int] | None) -> list[CaptionResult]:
        """One result per decoded caption: the classifier's objects (``classified``), the
        concepts the classifiers are sure of (``concepts``: each photo's probabilities)."""
        n = len(decoded)
        objects = ([[{"word": self.object_words[w], "probability": round(p, 4), "kind": "object"}
                     for w, p in zip(ws, ps)]
                    for ws, ps in zip(classified.words.tolist(), classified.probs.tolist())]
                   if classified is not None else [[] for _ in range(n)])
        for row, probs in zip(objects, concepts or []):
            row += self.concepts(probs)
        familiarity = familiarity if familiarity is not None else [None] * n
        return [self.result(*row, grid) for row in zip(decoded, objects, familiarity)]

    def concepts(self, probs: Sequence[float], min_prob: float = 0.5, most: int = 10) -> list[dict]:
        """The concepts the classifiers are sure of, most probable first."""
        ranked = sorted(((p, w) for w, p in zip(self.concept_words, probs) if p >= min_prob), reverse=True)[:most]
        return [{"word": w, "probability": round(p, 4), "kind": "concept"} for p, w in ranked]

    def result(self, decoded: Decoded, objects: list[dict], familiarity: float | None,
                grid: tuple[int, int] | None) -> CaptionResult:
        names = [o["word"] for o in objects]
        words, probs, attention = [], [], [] if decoded.attention is not None else None
        for n, i in enumerate(decoded.ids):  # ids hold no <start>/<pad>/<end>: probabilities align
            had = len(words)
            phrase = self.phrase(i, names, words)
            if len(words) < had:  # an article dropped before a mass noun
                del probs[-1]
                if attention is not None:
                    del attention[-1]
            words += phrase
            probs += [round(decoded.probabilities[n], 6)] * len(phrase)
            if attention is not None:
                attention += [[round(a, 5) for a in decoded.attention[n]]] * len(phrase)
        boxes = None
        if attention is not None and grid is not None and len(attention[0] if attention else []) > grid[0] * grid[1]:
            cells = grid[0] * grid[1]  # a decoder with regions: the boxes' weights follow the cells'
            attention, boxes = [a[:cells] for a in attention], [a[cells:] for a in attention]
        return CaptionResult(" ".join(words), words, probs, decoded.score, objects,
                             None if familiarity is None else round(familiarity, 4), attention, grid,
                             attention_boxes=boxes)

    def phrase(self, token: int, objects: Sequence[str], before: list[str]) -> list[str]:
        """The word(s) of one token: a slot is its object's word, with the article before
        it corrected for that word (``vocabulary.fix_article``)."""
        first_slot = self.first_slot
        if token < first_slot:
            return [self.vocab.words[token]]
        phrase = objects[token - first_slot].split()
        fix_article(before, phrase)
        return phrase

    def truest(self, alternatives: Sequence[Sequence[Decoded]], classified: ClassifiedObjects | None,
               concepts: torch.Tensor | None, belief: Belief, counts: Sequence[dict] | None = None,
               check_counts: bool = False) -> list[Decoded | list[int]]:
        """Each photo's caption among its beam's finished ones (best first): the best that
        states nothing the ``belief`` doubts (claims the human captions state fewer than
        ``belief.least`` times; given ``belief.sure``, actions the photo's ``concepts`` do not
        show), else one said without its doubted actions (``belief.soften``: ``choice.soften``,
        "a man is sitting on a dog" -> "a man with a dog"), else the best cut before its first
        doubted claim, with the place the concepts are surest of where the cut left none
        (``choice.choose``, ``claims.place``): a ``Decoded`` where a caption of the beam
        stands, the word ids to score (``decoding.rescore``) where it was changed. Where no
        place is sure enough, the detector's other objects (``counts``: each photo's detector
        counts) say what is with the subject ("a man with a cup"); ``check_counts``: a caption
        may not say more of a thing than the detector counts."""
        table, least = belief.table, belief.least
        chosen: list[Decoded | list[int]] = []
        for b, alts in enumerate(alternatives):
            names = [] if classified is None else [self.object_words[w] for w in classified.words[b].tolist()]
            tokens = [self.token_words(decoded.ids, names) for decoded in alts]
            shown = {} if concepts is None else dict(zip(self.concept_words, concepts[b].tolist()))
            photo = replace(belief, shown=shown, sure=belief.sure if concepts is not None else None)
            seen = counts[b] if counts is not None and check_counts else None
            n, keep = choose(tokens, photo, seen)
            if isinstance(keep, list) and any(isinstance(k, str) and k not in self.vocab.index for k in keep):
                n, keep = choose(tokens, replace(photo, soften=False), seen)  # a word this vocabulary lacks
            if keep is None:
                chosen.append(alts[n])
                continue
            if isinstance(keep, list):  # said without its doubted actions (choice.soften)
                ids = [alts[n].ids[k] if isinstance(k, int) else self.vocab.index[k] for k in keep]
                kept = [w for k in keep for w in (tokens[n][k] if isinstance(k, int) else [k])]
            else:
                ids = alts[n].ids[:keep]
                kept = [w for token in tokens[n][:keep] for w in token]
            if check_counts and counts is not None and overcounted(kept, counts[b]):
                # every cut says more than the detector sees ("a group of people", one person):
                # the detector's own words for it ("a person")
                said = describe_objects({c: k for c, k in counts[b].items() if c in overcounted(kept, counts[b])})
                if said and all(w in self.vocab.index for w in said):
                    ids, kept = [self.vocab.index[w] for w in said], said
            where = place(kept, list(shown.items()), table, least)
            if not where and counts is not None and not parse(kept).claims:
                where = company(kept, counts[b])
            if where and all(w in self.vocab.index for w in where):
                ids = ids + [self.vocab.index[w] for w in where]
            elif not parse(kept).claims and classified is not None:  # "a man" -> "a man with a tripod"
                ids = ids + self.classified_company(kept, classified.probs[b].tolist(), names)
            chosen.append(ids)
        return chosen

    def classified_company(self, words: Sequence[str], probs: Sequence[float], names: Sequence[str],
                           sure: float = 0.5) -> list[int]:
        """"with" and the ImageNet classifier's surest object (its slot, at least ``sure``)
        that the caption does not name: the ids to add, or none."""
        for k, (name, p) in enumerate(zip(names, probs)):
            if p >= sure and name not in " ".join(words) and {"with", "a"} <= self.vocab.index.keys():
                return [self.vocab.index["with"], self.vocab.index["a"], self.first_slot + k]
        return []

    def ungendered(self, ids: Sequence[int], concepts: torch.Tensor, sure: float) -> list[int] | None:
        """``ids`` with each gendered person word the concepts are unsure of made neutral
        (``claims.ungendered``); None when nothing changes (or a caption with an object slot)."""
        if any(i >= self.first_slot for i in ids):
            return None
        sure_of = dict(zip(self.concept_words, concepts.tolist()))
        words = ungendered([self.vocab.words[i] for i in ids], sure_of, sure)
        if words is None or any(w not in self.vocab.index for w in words):
            return None
        return [self.vocab.index[w] for w in words]

    def token_words(self, ids: Sequence[int], objects: Sequence[str]) -> list[list[str]]:
        """Each token's word(s) (an object slot can be two: "tennis racket")."""
        before: list[str] = []
        out = []
        for i in ids:
            phrase = self.phrase(i, objects, before)
            before += phrase
            out.append(phrase)
        return out

    def words_of(self, ids: Sequence[int], objects: Sequence[str]) -> list[str]:
        """The words of a token sequence (``<start> ... <end> <pad>...`` or bare) for an
        image whose recognised object words are ``objects``."""
        words: list[str] = []
        for i in ids:
            if i == self.vocab.end_id:
                break
            if i not in (self.vocab.start_id, self.vocab.pad_id):
                words += self.phrase(i, objects, words)
        return words


def company(words: Sequence[str], counts: dict[str, int]) -> list[str]:
    """"with" and the detector's objects other than those the caption names (no person: a
    person the caption does not name is left unsaid), two at most: "a man" -> "with a cup"."""
    named = mentioned_categories(words)
    others = describe_objects({c: n for c, n in counts.items() if c not in named}, person_ok=False, most=2)
    return ["with", *others] if others else []


def add_boxes(result: CaptionResult, photo: Boxes, person_ok: bool, rules: bool) -> None:
    """The detector's objects in the result; a caption that breaks a rule (none should
    get through the search, but one cut at the longest length can) becomes the detector's objects alone, or
    with none its longest beginning that breaks no rule (``rules.trimmed``): say less, never nonsense."""
    result.boxes = photo.to_list(DETECTED)
    if result.attention_boxes is not None:  # one weight per box shown (the decoder saw the first ``regions``)
        n = len(result.boxes)
        result.attention_boxes = [(a + [0.0] * n)[:n] for a in result.attention_boxes]
    counts = photo.counts(DETECTED)
    best = {}
    for b in result.boxes:
        best.setdefault(b["category"], b["score"])
    result.objects += [{"word": c, "probability": p, "kind": "detected", "count": counts.get(c, 1)}
                       for c, p in best.items()]
    if rules and (not result.words or problems(result.words, person_ok)):
        words = describe_objects(counts, person_ok) or trimmed(result.words, person_ok) or ["a", "photo"]
        if words:
            log.info("caption %r broke a rule; said %r instead", result.caption, " ".join(words))
            result.caption, result.words = " ".join(words), words
            result.probabilities, result.attention = [0.0] * len(words), None
