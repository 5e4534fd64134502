"""What a caption claims: its subject, and each action or relation it states between two
things, read as (thing, relation, thing) triples. "a man is sitting on a plate" claims
(man, sitting on, plate); "a kitchen with a stove and a refrigerator" claims (kitchen,
with, stove) and (kitchen, with, refrigerator).

The reading is shallow on purpose, and the same for a model's caption and for the human
captions it is checked against (``ClaimTable``), so that a triple no person ever wrote
stands out: in a blind panel of 80 held-out COCO photos, 20 of the release's 37 absurd
captions stated a (subject, verb, object) that occurs in none of the ~276k human captions
on the build machine ("man sitting on plate", "flag flying kite").

A noun phrase runs from a determiner (or the caption's start) to the word before a
relation word; its head is its last word, with "group of", "couple of" and their like
skipped ("a group of people": people). A relation is a verb ("-ing" words that are not
nouns, a few finite verbs) with the prepositions after it, or prepositions alone. A verb
relates the sentence's subject to the next noun phrase; a prepositional phrase relates
the noun phrase before it (``parse``).
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

DETERMINERS = frozenset(
    "a an the two three four five six seven eight nine ten several many some few each another one his her "
    "their its this that these those other lots".split())
COPULAS = frozenset("is are was were be being been".split())
# multi-word prepositions first: "in front of", "next to", "on top of"
PREPOSITIONS = (
    ("in", "front", "of"), ("on", "top", "of"), ("in", "the", "middle", "of"), ("on", "the", "side", "of"),
    ("next", "to"), ("out", "of"), ("close", "to"), ("in", "between"), ("on", "top"), ("along", "side"),
    ("on",), ("in",), ("at",), ("with",), ("near",), ("by",), ("under",), ("over",), ("behind",), ("beside",),
    ("inside",), ("outside",), ("around",), ("above",), ("below",), ("across",), ("through",), ("along",),
    ("into",), ("onto",), ("down",), ("up",), ("from",), ("for",), ("against",), ("towards",), ("toward",),
    ("past",), ("off",), ("beneath",), ("between",), ("among",), ("atop",), ("underneath",), ("alongside",),
    ("to",), ("like",), ("of",),
)
LONGEST_PREPOSITION = max(map(len, PREPOSITIONS))
PREPOSITION_SET = frozenset(PREPOSITIONS)
FINITE_VERBS = frozenset(
    "sits sit stands stand holds hold rides ride lays lay lies lie eats eat plays play looks look walks walk "
    "runs run waits wait flies fly jumps jump has have carries carry watches watch talks talk uses use wears "
    "wear drives drive throws throw catches catch swings swing hits hit poses pose smiles smile sleeps sleep "
    "drinks drink reads read cuts cut prepares prepare grazes graze rests rest leans lean stares stare sails "
    "sail floats float hangs hang shows show contains contain surrounds surround".split())
# "-ing" words that are nouns, not verbs ("a building", "the ceiling")
ING_NOUNS = frozenset(
    "building buildings ceiling clothing painting paintings king ring rings thing things wing wings string "
    "strings evening morning railing railings bedding icing frosting stuffing topping toppings pudding "
    "dumpling dumplings awning awnings ping sling spring swing swings sibling siblings wedding ending "
    "crossing crossings parking clearing landing offering seasoning dressing stocking stockings lighting "
    "ceilings shingle shingles duckling ducklings seedling seedlings lightning sing bing ding".split())
# "a group of people": the head is "people"
COLLECTIVES = frozenset(
    "group groups couple pair pairs bunch bunches lot lots herd herds flock flocks crowd number team teams "
    "set sets line lines row rows pile piles stack stacks collection variety assortment bowl plate "
    "plates cup glass box slice slices piece pieces kind type display selection array handful".split())
BREAKS = frozenset({"and", "while", "that", "who", "which", "as", "where", "but", "or"})


def closes_phrase(word: str, after: str = "") -> bool:
    """Whether ``word`` ends the noun phrase before it, whose last word is ``after`` (a
    relation, a break, a copula, a verb): written after "a man is sitting on a plate", it
    makes (man, sitting on, plate) a claim. "of" after a counting word does not: "in front
    of a group of people" claims people, not group."""
    if word == "of" and after in COLLECTIVES:
        return False
    return (word in BREAKS or word in COPULAS or is_verb(word) or (word,) in PREPOSITION_SET
            or any(p[0] == word for p in PREPOSITIONS))


def singular(word: str) -> str:
    """A crude singular, the same on both sides of a comparison ("dogs" -> "dog", "buses" ->
    "bus", "people" stays)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "uses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def is_verb(word: str) -> bool:
    return (len(word) > 4 and word.endswith("ing") and word not in ING_NOUNS) or word in FINITE_VERBS


def _preposition_at(words: Sequence[str], i: int) -> int:
    """The length of the preposition that starts at ``i`` (0: none), longest first."""
    for n in range(min(LONGEST_PREPOSITION, len(words) - i), 0, -1):
        if tuple(words[i:i + n]) in PREPOSITION_SET:
            return n
    return 0


@dataclass(frozen=True)
class Claim:
    """(thing, relation, thing): "man", "sitting on", "plate". ``start`` and ``end`` span
    the words of the relation and its object in the caption (what to cut to take it back)."""

    subject: str
    relation: str
    object: str
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @property
    def key(self) -> str:
        return f"{self.subject}|{self.relation}|{self.object}"


@dataclass
class Reading:
    """A caption read: its subject heads (one per "and"), its claims, and where the
    subject's noun phrase ends."""

    subjects: list[str]
    claims: list[Claim]
    subject_end: int
    actions: list[int] = field(default_factory=list)  # where each verb read as an action is ("a dog running": 2)


def _noun_phrase(words: Sequence[str], i: int) -> tuple[str | None, int]:
    """The head of the noun phrase starting at ``i`` and the index after it."""
    head, j = None, i
    while j < len(words):
        w = words[j]
        if w in BREAKS or w in COPULAS or _preposition_at(words, j):
            if w == "of" and head in COLLECTIVES:  # "a group of people": go on to "people"
                head, j = None, j + 1
                continue
            if head == "close" and list(words[j:j + 2]) == ["up", "of"]:  # "a close up of a rock": "rock"
                head, j = None, j + 2
                continue
            break
        if is_verb(w) and head is not None:
            break
        if w not in DETERMINERS:
            head = w
        j += 1
    return (singular(head) if head else None), j


class _Reader:
    """The state of one left-to-right reading (``parse``)."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.subjects: list[str] = []
        self.claims: list[Claim] = []
        head, i = _noun_phrase(self.words, 0)
        if head:
            self.subjects.append(head)
        while i < len(self.words) - 1 and self.words[i] == "and":  # "a man and a woman ..."
            more, i = _noun_phrase(self.words, i + 1)
            if more:
                self.subjects.append(more)
        self.i = self.subject_end = self.start = i
        self.previous = self.subjects[-1] if self.subjects else None  # the last noun phrase read
        self.relation: list[str] = []
        self.said_of = self.subjects  # whom the pending relation is said of
        self.last: tuple[list[str], list[str]] = ([], self.subjects)  # the last relation that took an object
        self.actors, self.clause = self.subjects, False  # who the current clause's verbs are said of
        self.actions: list[int] = []

    def on_break(self, word: str) -> None:
        # "a stove and a refrigerator": the object's relation again; "... while a dog
        # watches": a new clause, whose subject is its own first noun phrase
        self.relation, self.said_of = self.last if word == "and" else ([], self.subjects)
        self.clause = word != "and"
        self.i += 1

    def on_relation(self, word: str, n: int) -> None:
        if not self.relation:
            self.start = self.i
        if is_verb(word):
            self.relation, self.said_of = [word], self.actors
            self.actions.append(self.i)
            self.i += 1
            return
        preposition = list(self.words[self.i:self.i + n])
        # "sitting on": the verb's; a preposition alone is the noun phrase before it's
        self.relation = self.relation + preposition if self.relation and is_verb(self.relation[-1]) else preposition
        if not is_verb(self.relation[0]):
            self.said_of = [self.previous] if self.previous else []
        self.i += n

    def on_phrase(self) -> None:
        obj, j = _noun_phrase(self.words, self.i)
        if obj is None:
            self.i = max(j, self.i + 1)
            return
        if not self.relation and self.clause:  # "while a man watches tv": the clause's own subject
            self.actors, self.clause = [obj], False
        if self.relation:
            self.claims += [Claim(s, " ".join(self.relation), obj, self.start, j) for s in self.said_of]
        # a phrase after the object is the object's ("riding a horse on a beach": horse on beach)
        self.last, self.relation = (self.relation, self.said_of), []
        self.previous, self.i = obj, j

    def read(self) -> Reading:
        while self.i < len(self.words):
            word = self.words[self.i]
            n = _preposition_at(self.words, self.i)
            if word in COPULAS:
                self.i += 1
            elif word in BREAKS:
                self.on_break(word)
            elif is_verb(word) or n:
                self.on_relation(word, n)
            else:
                self.on_phrase()
        return Reading(self.subjects, self.claims, self.subject_end, self.actions)


def parse(words: Sequence[str]) -> Reading:
    """Read a tokenised, lower-case caption (``vocabulary.tokenize``)."""
    return _Reader(words).read()


class ClaimTable:
    """How often each (thing, relation, thing) occurs in a body of human captions: the
    language's own sense of what can be said at all."""

    def __init__(self, counts: Counter | None = None):
        self.counts = counts if counts is not None else Counter()

    @classmethod
    def of_captions(cls, captions: Iterable[Sequence[str]]) -> ClaimTable:
        """From tokenised captions."""
        counts = Counter()
        for words in captions:
            counts.update({c.key for c in parse(words).claims})
        return cls(counts)

    def count(self, claim: Claim) -> int:
        return self.counts.get(claim.key, 0)

    def unseen(self, words: Sequence[str], least: int = 1) -> list[Claim]:
        """The caption's claims that occur fewer than ``least`` times."""
        return [c for c in parse(words).claims if self.count(c) < least]

    def closed_unseen(self, words: Sequence[str], least: int) -> bool:
        """Whether the caption so far ends in the object of a claim stated fewer than
        ``least`` times, so that a word that closes the phrase (``closes_phrase``) or the
        caption's end would make that claim ("a man is sitting on a tennis": (man, sitting
        on, tennis); "court" may still make it a claim people write)."""
        return any(c.end == len(words) and self.count(c) < least for c in parse(words).claims)

    def save(self, path: str | Path, least: int = 1) -> None:
        """A gzipped ``count<TAB>subject|relation|object`` file, most frequent first, of the
        claims seen at least ``least`` times; written whole, then renamed."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        rows = (f"{n}\t{k}\n" for k, n in sorted(self.counts.items(), key=lambda kn: (-kn[1], kn[0])) if n >= least)
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write("".join(rows).encode("utf-8"))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ClaimTable:
        counts = Counter()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                n, _, key = line.rstrip("\n").partition("\t")
                counts[key] = int(n)
        return cls(counts)


@dataclass(frozen=True)
class Belief:
    """What a caption may state of one photo: every (thing, relation, thing) the human
    captions state at least ``least`` times, and, given ``sure``, only actions the photo
    shows: a verb that is one of the concept classifiers' words ("sitting", "riding") needs
    at least ``sure`` of them for this photo (``shown``: the photo's concept probabilities).
    People write "a man sitting on a bed" a thousand times; whether this man sits is the
    photo's to say: on the validation panels a caption stating an action was judged absurd
    42% of the time, one stating none 4%."""

    table: ClaimTable
    least: int
    shown: Mapping[str, float] = field(default_factory=dict)
    sure: float | None = None
    soften: bool = False  # a doubted action is said without its verb before the caption is cut (``soften``)

    def doubts(self, words: Sequence[str]) -> list[Claim]:
        """The claims of the caption it may not make: those the table has seen too rarely,
        and each action the photo does not show (a claim of the verb alone, "running")."""
        reading = parse(words)
        doubted = [c for c in reading.claims if self.table.count(c) < self.least]
        if self.sure is not None:
            subject = reading.subjects[0] if reading.subjects else ""
            for i in reading.actions:
                if self.shown.get(words[i], 1.0) < self.sure and not any(c.start == i for c in doubted):
                    said = [c for c in reading.claims if c.start == i]  # its relation and object, if it has one
                    doubted += said[:1] or [Claim(subject, words[i], "", i, i + 1)]
        return sorted(doubted, key=lambda c: c.start)


SHIPPED_TABLE = Path(__file__).resolve().parent / "data" / "claims.tsv.gz"


@cache
def claim_table(path: str | Path = SHIPPED_TABLE) -> ClaimTable:
    """The table built by ``training/build_claims.py``, read once."""
    return ClaimTable.load(path)


# where a photo is: the scene words a caption can end on ("in a kitchen", "on the beach")
PLACES = frozenset(
    "street field water grass room snow kitchen beach city road park sidewalk ocean ground dirt sky floor court "
    "hill mountain track tracks river pool lake station airport restaurant store house slope bathroom bedroom "
    "yard lot parking runway zoo desert forest woods farm market shop office library classroom stadium "
    "highway intersection bridge harbor dock pasture sand wave waves".split())
MASS_PLACES = frozenset("water grass snow dirt sand sky ground floor ocean traffic".split())
WHERE = ("in", "on", "at", "near", "by")


def place(words: Sequence[str], concepts: Sequence[tuple[str, float]], table: ClaimTable, least: int,
          sure: float = 0.4) -> list[str]:
    """Words that say where a cut caption's subject is ("in", "a", "kitchen"), from the
    surest scene concept (at least ``sure``) that the human captions put that subject in,
    with their most frequent preposition for it; none where the caption already says
    where, or states a verb, or no scene concept is sure enough."""
    reading = parse(words)
    if not reading.subjects or reading.subjects[0] in PLACES:
        return []
    if any(c.object in PLACES or is_verb(c.relation.split()[0]) for c in reading.claims):
        return []
    subject = reading.subjects[0]
    for word, p in sorted(concepts, key=lambda item: -item[1]):
        if p < sure or word not in PLACES:
            continue
        counts = [(table.counts.get(f"{subject}|{w}|{singular(word)}", 0), w) for w in WHERE]
        n, where = max(counts)
        if n >= max(least, 1):
            return [where, "the" if word in MASS_PLACES else "a", word]
    return []


# who a caption says a person is: the gender only where the concept detectors are sure of it
MALE = {"man": "person", "men": "people", "boy": "child", "boys": "children", "guy": "person", "guys": "people",
        "gentleman": "person"}
FEMALE = {"woman": "person", "women": "people", "girl": "child", "girls": "children", "lady": "person",
          "ladies": "people"}
MALE_CONCEPTS = ("man", "men", "boy", "boys", "guy", "male")
FEMALE_CONCEPTS = ("woman", "women", "girl", "girls", "lady")


def ungendered(words: Sequence[str], concepts: Mapping[str, float], sure: float) -> list[str] | None:
    """The caption with each gendered person word made neutral ("a man" -> "a person", "a
    man and a woman" -> "two people") unless the concept detectors are at least ``sure`` of
    that gender and surer of it than of the other; None when nothing changes. A gender
    guessed is a false detail as often as not: the release said "man" for 114 of 273
    validation photos and the references agreed on 67."""
    male = max((concepts.get(w, 0.0) for w in MALE_CONCEPTS), default=0.0)
    female = max((concepts.get(w, 0.0) for w in FEMALE_CONCEPTS), default=0.0)
    keep_male = male >= sure and male > female
    keep_female = female >= sure and female > male
    out = list(words)
    pairs = {("a", "man", "and", "a", "woman"), ("a", "woman", "and", "a", "man")}
    for i in range(len(out) - 4):
        if tuple(out[i:i + 5]) in pairs and not (keep_male and keep_female):
            out[i:i + 5] = ["two", "people"]
            break
    for i, w in enumerate(out):
        if (w in MALE and not keep_male) or (w in FEMALE and not keep_female):
            out[i] = (MALE | FEMALE)[w]
    return None if out == list(words) else out
