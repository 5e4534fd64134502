"""Objects as words: what the encoder's ImageNet classifier recognises, in the words a
caption would use, and which COCO objects a caption names.

- ``data/imagenet_words.tsv`` maps each of ImageNet's 1,000 classes to a caption word
  (every dog breed to "dog", "espresso" to "coffee", "tripod" to "tripod"; classes with
  no plain caption word to nothing). ``ObjectDetector`` turns an image feature into the
  probability of each such word (the summed softmax probabilities of its classes) and
  keeps the top ``slots`` of them: the objects a caption may copy (see ``decoder.py``).
- ``data/coco_objects.txt`` lists the 80 COCO categories with the words that name them
  (man, woman, people -> person; sofa -> couch; plurals). ``object_mention_scores``
  compares the categories a caption names with those that at least two of the image's
  human captions name: object-mention precision, recall and F1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).resolve().parent / "data"


def _rows(path: Path) -> Iterable[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            yield line


@cache
def imagenet_words() -> tuple[str, ...]:
    """The caption word of each ImageNet class, in the classifier's order ("" for none)."""
    words = [""] * 1000
    for line in _rows(DATA / "imagenet_words.tsv"):
        index, _name, word = line.split("\t")
        words[int(index)] = word.strip()
    return tuple(words)


def object_vocabulary(class_words: Sequence[str] | None = None) -> tuple[list[str], torch.Tensor]:
    """The distinct object words (in order of first appearance) and, for each class, the
    index of its word (-1 for a class with none)."""
    class_words = imagenet_words() if class_words is None else class_words
    words = list(dict.fromkeys(w for w in class_words if w))
    index = {w: i for i, w in enumerate(words)}
    return words, torch.tensor([index.get(w, -1) for w in class_words], dtype=torch.long)


@dataclass
class Detections:
    """The top object words of each image: ``words`` (B, K) indices into the object
    vocabulary and their probabilities ``probs`` (B, K), most probable first."""

    words: torch.Tensor
    probs: torch.Tensor


class ObjectDetector(nn.Module):
    """The frozen ImageNet classifier of the encoder, read as object words.

    Its weights are a copy of the encoder's classifier (so a checkpoint carries everything
    it needs, also to work on cached features), with each class's word index. Each
    word's vector, the mean of its classes' classifier rows, tells the decoder what kind of
    object the word is, including words no training caption contains."""

    def __init__(self, feature_dim: int, num_words: int, slots: int, num_classes: int = 1000):
        super().__init__()
        self.slots = slots
        self.register_buffer("weight", torch.zeros(num_classes, feature_dim))
        self.register_buffer("bias", torch.zeros(num_classes))
        self.register_buffer("class_word", torch.full((num_classes,), -1, dtype=torch.long))
        self.register_buffer("word_vectors", torch.zeros(num_words, feature_dim))

    @torch.no_grad()
    def fill(self, classifier: nn.Linear, class_word: torch.Tensor) -> ObjectDetector:
        """Copy the encoder's classifier and compute each word's vector."""
        self.weight.copy_(classifier.weight.float())
        self.bias.copy_(classifier.bias.float())
        self.class_word.copy_(class_word)
        known = class_word >= 0
        sums = torch.zeros_like(self.word_vectors).index_add_(0, class_word[known], self.weight[known])
        counts = torch.zeros(len(sums)).index_add_(0, class_word[known], torch.ones(int(known.sum())))
        self.word_vectors.copy_(sums / counts.clamp_min(1)[:, None])
        return self

    def word_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) -> (B, words): each word's summed class probability."""
        probs = torch.addmm(self.bias, features.float(), self.weight.t()).softmax(-1)
        known = self.class_word >= 0
        out = probs.new_zeros(len(probs), len(self.word_vectors))
        return out.index_add_(1, self.class_word[known], probs[:, known])

    def forward(self, features: torch.Tensor) -> Detections:
        probs, words = self.word_probabilities(features).topk(self.slots, dim=-1)
        return Detections(words, probs)


# ------------------------------------------------------------------- slots in captions

def slot_token(k: int) -> str:
    """The vocabulary token for the k-th detected object (0-based), e.g. ``<obj1>``."""
    return f"<obj{k + 1}>"


def slot_tokens(slots: int) -> list[str]:
    """The vocabulary's last words for a decoder with ``slots`` object slots."""
    return [slot_token(k) for k in range(slots)]


def substitute_slots(tokens: Sequence[str], objects: Sequence[str]) -> list[str]:
    """Replace each mention of a detected object word (a phrase of one or more tokens) by
    its slot token: ["a", "dog", "runs"] with objects ["dog", "ball"] -> ["a", "<obj1>",
    "runs"]. The longest phrase wins where two overlap."""
    phrases = sorted(((tuple(w.split()), k) for k, w in enumerate(objects) if w), key=lambda p: -len(p[0]))
    out, i = [], 0
    while i < len(tokens):
        for phrase, k in phrases:
            if tuple(tokens[i:i + len(phrase)]) == phrase:
                out.append(slot_token(k))
                i += len(phrase)
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


# ------------------------------------------------------------------ mention scores

@cache
def coco_synonyms() -> dict[tuple[str, ...], str]:
    """Every naming phrase (as a tuple of tokens) -> its COCO category."""
    table = {}
    for line in _rows(DATA / "coco_objects.txt"):
        category, _, names = line.partition(":")
        for name in names.split(","):
            if name.strip():
                table[tuple(name.split())] = category.strip()
    return table


def mentioned_categories(tokens: Sequence[str]) -> set[str]:
    """The COCO categories a tokenised caption names (longest phrase first)."""
    table = coco_synonyms()
    longest = max(len(p) for p in table)
    found, i = set(), 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            category = table.get(tuple(tokens[i:i + n]))
            if category is not None:
                found.add(category)
                i += n
                break
        else:
            i += 1
    return found


def object_mention_scores(references: dict[str, list[str]], predictions: dict[str, str],
                          min_references: int = 2) -> dict[str, float]:
    """Micro-averaged object-mention precision, recall and F1 over images: the true objects
    of an image are the COCO categories named in at least ``min_references`` of its human
    captions; the predicted ones those its caption names, where every word that describes a
    person (``rules.person_words``: "asian", "blonde", "young", "she"...) names a person too,
    so that a caption cannot hide an invented person behind other words. ``degenerate``: the
    captions no user should read (``rules.degenerate``)."""
    from captioner.rules import degenerate, person_words
    from captioner.vocabulary import tokenize

    describing = person_words()
    broken = 0
    hits = named = true = invented = captions_inventing = people_free = people_free_with_person = 0
    for image, caption in predictions.items():
        counts: dict[str, int] = {}
        for ref in references[image]:
            for category in mentioned_categories(tokenize(ref)):
                counts[category] = counts.get(category, 0) + 1
        truth = {c for c, n in counts.items() if n >= min_references}
        tokens = tokenize(caption)
        said = mentioned_categories(tokens) | ({"person"} if describing.intersection(tokens) else set())
        broken += degenerate(tokens)
        hits += len(said & truth)
        named += len(said)
        true += len(truth)
        # CHAIR (Rohrbach et al. 2018) against the human captions: an object no caption names is invented
        made_up = said - set(counts)
        invented += len(made_up)
        captions_inventing += bool(made_up)
        if "person" not in counts:
            people_free += 1
            people_free_with_person += "person" in said
    precision = hits / named if named else 0.0
    recall = hits / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"object_precision": precision, "object_recall": recall, "object_f1": f1,
            "objects_named": named, "objects_true": true, "objects_correct": hits,
            "CHAIR_s": captions_inventing / max(1, len(predictions)), "CHAIR_i": invented / max(1, named),
            "people_free_photos": people_free,
            "person_in_people_free": people_free_with_person / people_free if people_free else 0.0,
            "degenerate": broken}
