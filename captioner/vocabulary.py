"""Tokenising captions and the word <-> id table.

Tokenising uses nltk's Treebank tokenizer, which is pure regular expressions and needs
no downloaded nltk data (``nltk.word_tokenize`` would need punkt). Captions are
lower-cased and punctuation-only tokens are dropped, so "A dog, running." becomes
``["a", "dog", "running"]``.

The table is plain JSON: a list of words whose position is the id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)

@cache
def _tokenizer():
    # imported on first use: importing nltk takes about 1.7 s, and captioning never tokenises
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def tokenize(text: str) -> list[str]:
    """Lower-case words of a caption, without punctuation-only tokens."""
    return [t for t in _tokenizer().tokenize(text.lower()) if any(c.isalnum() for c in t)]


# Articles. "an" before a vowel sound ("an orange", but "a uniform", "a one-way street");
# no article before a mass noun ("coffee", not "a coffee").
_CONSONANT_SOUNDS = ("uni", "use", "one", "eu", "ur")
MASS_NOUNS = frozenset("coffee water food broccoli grass snow sand rice bread cheese meat milk tea wine beer "
                       "soup ice sugar salad pasta spaghetti traffic furniture luggage hay dirt mud".split())


def article_for(word: str) -> str:
    """The indefinite article a caption puts before ``word`` ("" for a mass noun)."""
    if word in MASS_NOUNS:
        return ""
    return "an" if word[:1] in "aeiou" and not word.startswith(_CONSONANT_SOUNDS) else "a"


def with_article(phrase: str) -> str:
    """``phrase`` with its indefinite article: "an orange", "a uniform", "coffee"."""
    article = article_for(phrase.split()[0]) if phrase else ""
    return f"{article} {phrase}" if article else phrase


def fix_article(before: list[str], phrase: Sequence[str]) -> None:
    """Correct the "a" a decoder wrote before ``phrase`` (in place, in ``before``): "an"
    before a vowel sound, nothing before a mass noun."""
    if before and before[-1] in ("a", "an") and phrase:
        article = article_for(phrase[0])
        if article:
            before[-1] = article
        else:
            before.pop()


class Vocabulary:
    """Maps words to ids and back. Ids 0..3 are ``<pad> <start> <end> <unk>``."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must begin with {' '.join(SPECIAL_TOKENS)}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary must not repeat a word")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    pad_id = property(lambda self: self.index[PAD])
    start_id = property(lambda self: self.index[START])
    end_id = property(lambda self: self.index[END])
    unk_id = property(lambda self: self.index[UNK])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5, extra: Sequence[str] = ()) -> Vocabulary:
        """Keep every word seen at least ``min_count`` times, most frequent first, then the
        ``extra`` tokens (the object slots, which the decoder wants last)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counts[w], w))
        return cls([*SPECIAL_TOKENS, *kept, *extra])

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of a caption, wrapped in ``<start> ... <end>`` unless told otherwise."""
        ids = [self.index.get(w, self.unk_id) for w in tokenize(text)]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of a sequence of ids: stops at ``<end>``, skips ``<start>`` and ``<pad>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            words.append(self.words[i])
        return words

    def to_json(self) -> str:
        return json.dumps({"words": self.words})

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("words"), list):
            raise ValueError("not a vocabulary: expected a JSON object with a 'words' list")
        return cls(data["words"])

    def save(self, path: str | Path) -> None:
        from lstmkit.checkpoint import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
