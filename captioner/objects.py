"""Objects as words: what the encoder's ImageNet classifier recognises, in the words a
caption would use, and the slots through which a caption copies them.

- ``data/imagenet_words.tsv`` maps each of ImageNet's 1,000 classes to a caption word
  (every dog breed to "dog", "espresso" to "coffee", "tripod" to "tripod"; classes with
  no plain caption word to nothing). ``ImageNetClassifier`` turns an image feature into the
  probability of each such word (the summed softmax probabilities of its classes) and
  keeps the top ``slots`` of them: the objects a caption may copy (see ``decoder.py``).
- ``substitute_slots``: the captions as the decoder learns them, each recognised object's
  words replaced by its slot token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from captioner.wordlists import imagenet_words


def object_vocabulary(class_words: Sequence[str] | None = None) -> tuple[list[str], torch.Tensor]:
    """The distinct object words (in order of first appearance) and, for each class, the
    index of its word (-1 for a class with none)."""
    class_words = imagenet_words() if class_words is None else class_words
    words = list(dict.fromkeys(w for w in class_words if w))
    index = {w: i for i, w in enumerate(words)}
    return words, torch.tensor([index.get(w, -1) for w in class_words], dtype=torch.long)


@dataclass
class ClassifiedObjects:
    """The top object words of each image: ``words`` (B, K) indices into the object
    vocabulary and their probabilities ``probs`` (B, K), most probable first."""

    words: torch.Tensor
    probs: torch.Tensor


class ImageNetClassifier(nn.Module):
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
    def fill(self, classifier: nn.Linear, class_word: torch.Tensor) -> ImageNetClassifier:
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

    def forward(self, features: torch.Tensor) -> ClassifiedObjects:
        probs, words = self.word_probabilities(features).topk(self.slots, dim=-1)
        return ClassifiedObjects(words, probs)


# ------------------------------------------------------------------- slots in captions

def slot_token(k: int) -> str:
    """The vocabulary token for the k-th recognised object (0-based), e.g. ``<obj1>``."""
    return f"<obj{k + 1}>"


def slot_tokens(slots: int) -> list[str]:
    """The vocabulary's last words for a decoder with ``slots`` object slots."""
    return [slot_token(k) for k in range(slots)]


def substitute_slots(tokens: Sequence[str], objects: Sequence[str]) -> list[str]:
    """Replace each mention of a recognised object word (a phrase of one or more tokens) by
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
