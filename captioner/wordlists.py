"""The word lists everyone reads (the ground floor): which words name which COCO object,
which caption word each ImageNet class is, which words name or describe a person.

- ``data/coco_objects.txt``: the 80 COCO categories, in the detector's order, with the
  words that name them (man, woman, people -> person; sofa -> couch; plurals).
- ``data/imagenet_words.tsv``: each of ImageNet's 1,000 classes as a caption word (every
  dog breed "dog", "espresso" "coffee"; classes with no plain caption word: nothing).
- ``data/person_words.txt``: the words that describe a person beyond CHAIR's person
  synonyms (nationality, hair, age, gender, pronouns).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def rows(path: Path) -> Iterable[str]:
    """The lines of a word-list file that are neither blank nor comments."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            yield line


@cache
def imagenet_words() -> tuple[str, ...]:
    """The caption word of each ImageNet class, in the classifier's order ("" for none)."""
    words = [""] * 1000
    for line in rows(DATA / "imagenet_words.tsv"):
        index, _name, word = line.split("\t")
        words[int(index)] = word.strip()
    return tuple(words)


@cache
def coco_categories() -> tuple[str, ...]:
    """The 80 COCO categories in the detector's order (``data/coco_objects.txt`` keeps it)."""
    names = tuple(line.partition(":")[0].strip() for line in rows(DATA / "coco_objects.txt"))
    if len(names) != 80:
        raise RuntimeError(f"coco_objects.txt lists {len(names)} categories, not COCO's 80")
    return names


@cache
def coco_synonyms() -> dict[tuple[str, ...], str]:
    """Every naming phrase (as a tuple of tokens) -> its COCO category."""
    table = {}
    for line in rows(DATA / "coco_objects.txt"):
        category, _, names = line.partition(":")
        for name in names.split(","):
            if name.strip():
                table[tuple(name.split())] = category.strip()
    return table


def named_objects(tokens: Sequence[str]) -> list[tuple[int, str]]:
    """(position of the naming word, category) for each COCO object a tokenised caption names,
    longest phrase first (the last word of a phrase: "hot dog" -> the position of "dog")."""
    table = coco_synonyms()
    longest = max(len(p) for p in table)
    found, i = [], 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            category = table.get(tuple(tokens[i:i + n]))
            if category is not None:
                found.append((i + n - 1, category))
                i += n
                break
        else:
            i += 1
    return found


def mentioned_categories(tokens: Sequence[str]) -> set[str]:
    """The COCO categories a tokenised caption names (longest phrase first)."""
    return {category for _, category in named_objects(tokens)}


@cache
def person_words() -> frozenset[str]:
    """Every single word that names or describes a person."""
    words = {p[0] for p, category in coco_synonyms().items() if category == "person" and len(p) == 1}
    for line in rows(DATA / "person_words.txt"):
        words.update(w.strip() for w in line.split(",") if w.strip())
    return frozenset(words)


def category_of_words(words: Sequence[str]):
    """(len(words),) torch.long: the COCO category (0..79, ``coco_categories``' numbering, the one
    every module uses) each word or object phrase names; -1 for none."""
    import torch

    column = {c: i for i, c in enumerate(coco_categories())}
    named = coco_synonyms()
    return torch.tensor([column.get(named.get(tuple(w.split()), ""), -1) for w in words], dtype=torch.long)
