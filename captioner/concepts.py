"""Visual concepts learned from captions: the words ImageNet has no class for.

ImageNet's classifier (``objects.py``) knows pizzas and zebras but not people, kitchens,
tables, streets or snow. These concepts are learned here from photos that have captions,
as the word detectors of Fang et al. (2015, "From captions to visual concepts and back"):

- **the concepts** are the most frequent content words of the training captions, photo
  captions and text-only captions alike (``concept_vocabulary``): man, woman, people,
  table, kitchen, street, plate, snow, sitting, white...;
- **a photo's labels**: a concept is in a photo when any of its human captions uses the
  word;
- **multiple-instance learning** over the encoder's 7x7 grid: each cell i gives the word
  a probability p_i = sigmoid(w . norm(a_i) + b), and the photo has it unless no cell has
  it (noisy-OR): P = 1 - prod_i (1 - p_i). Trained with binary cross-entropy on the
  cached grids of the training photos (``fit_concept_classifier``).

**Captions without photos** enter training in this same space (as CapDec, Nukrai et al.
2022, meets photos and texts in CLIP's space, with noise on the text side). A text-only
photo's concepts are the words its captions use, and the decoder sees them as a detector
would give them: each concept's probability is drawn from what the detector really gives
that concept on held-out photos that have it (``ConceptNoise``: the quantiles of its
scores on positives and on negatives). So the decoder learns from text to trust the
detector as much as it deserves, person words included: a caption names a person when a
person's concepts are as likely as they are on photos with people.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from captioner.vocabulary import tokenize

log = logging.getLogger(__name__)

# Words that say nothing about what a photo shows (function words, numbers, vague words).
STOPWORDS = frozenset("""
a an the of in on at to with and or is are was were be been being it its it's this that these those there
their they them his her he she him from by for as into onto near next while up down out over under some
other one two three four several many few very has have having who which what where while each another
something side top front around back two large small big little couple lot lots group bunch different
its own very just it's next another view image picture photo shows shown s 's n't not no
""".split())


def concept_vocabulary(captions: Iterable[str], size: int = 300, exclude: Iterable[str] = ()) -> list[str]:
    """The ``size`` most frequent content words of ``captions`` (alphabetic, 3+ letters,
    no stop words), most frequent first."""
    skip = STOPWORDS | set(exclude)
    counts = Counter(w for c in captions for w in dict.fromkeys(tokenize(c)) if len(w) > 2 and w.isalpha()
                     and w not in skip)  # ties in order of first use, whatever the hash seed
    return [w for w, _ in counts.most_common(size)]


def concept_labels(captions_per_photo: Sequence[Sequence[str]], concepts: Sequence[str]) -> torch.Tensor:
    """(photos, concepts) 0/1: the concepts any of a photo's captions uses."""
    index = {w: i for i, w in enumerate(concepts)}
    labels = torch.zeros(len(captions_per_photo), len(concepts))
    for row, captions in enumerate(captions_per_photo):
        for caption in captions:
            for word in tokenize(caption):
                if word in index:
                    labels[row, index[word]] = 1.0
    return labels


class ConceptClassifier(nn.Module):
    """Noisy-OR word classifiers over the grid cells (Fang et al.'s "word detectors"; see the module docstring)."""

    def __init__(self, feature_dim: int, concepts: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.cell = nn.Linear(feature_dim, concepts)

    def log_not(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, C): log of the probability that no cell shows each concept."""
        z = self.cell((grid.float() - self.mean) / self.std)
        return -F.softplus(z).sum(1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, L, D) grid -> (B, C) probability of each concept."""
        return -torch.expm1(self.log_not(grid))


def _batches(n: int, size: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, size):
        yield order[start:start + size]


@dataclass(frozen=True)
class ConceptFit:
    """How concept classifiers are fitted (``fit_concept_classifier``)."""

    epochs: int = 12
    lr: float = 3e-3
    batch_size: int = 256
    weight_decay: float = 1e-4
    seed: int = 0


def fit_concept_classifier(grids: torch.Tensor, labels: torch.Tensor, flipped: torch.Tensor | None = None,
                           weights: torch.Tensor | None = None, fit: ConceptFit = ConceptFit()) -> ConceptClassifier:
    """Train the classifiers on grids (N, L, D) (fp16 is fine) with labels (N, C); ``flipped``:
    the mirrored photos' grids (half of the batches use them); ``weights`` (N,): each
    photo's weight in the loss."""
    epochs, lr, batch_size, weight_decay, seed = fit.epochs, fit.lr, fit.batch_size, fit.weight_decay, fit.seed
    g = torch.Generator().manual_seed(seed)
    classifier = ConceptClassifier(grids.shape[-1], labels.shape[1])
    sample = grids[torch.randperm(len(grids), generator=g)[:2000]].float().flatten(0, 1)
    classifier.mean.copy_(sample.mean(0))
    classifier.std.copy_(sample.std(0).clamp_min(1e-3))
    # start each word at its base rate, spread over the cells
    rate = labels.mean(0).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        classifier.cell.weight.mul_(0.1)
        classifier.cell.bias.copy_(torch.log(-torch.log1p(-rate) / grids.shape[1]).clamp_min(-12))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(grids) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    weights = torch.ones(len(grids)) if weights is None else weights
    for epoch in range(epochs):
        total = 0.0
        for rows in _batches(len(grids), batch_size, g):
            source = flipped if flipped is not None and torch.rand(1, generator=g).item() < 0.5 else grids
            log_not = classifier.log_not(source[rows])
            y = labels[rows]
            # BCE on P = 1 - exp(log_not), computed from log_not for stability
            log_p = torch.log(-torch.expm1(log_not.clamp_max(-1e-6)))
            loss = -(y * log_p + (1 - y) * log_not).mean(1)
            loss = (loss * weights[rows]).sum() / weights[rows].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(rows)
        log.info("concept classifier epoch %d: loss %.4f", epoch + 1, total / len(grids))
    return classifier.eval()


@torch.no_grad()
def concept_probabilities(classifier: ConceptClassifier, grids: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, L, D) grids -> (N, C) each concept's probability, ``batch_size`` photos at a time."""
    return torch.cat([classifier(grids[i:i + batch_size]) for i in range(0, len(grids), batch_size)])


class ConceptNoise:
    """What the detector gives each concept on held-out photos that have it and on those
    that do not, as quantiles; ``sample(labels)`` draws detector-like probabilities for
    photos known only from their captions."""

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor, quantiles: int = 33, min_photos: int = 5):
        q = torch.linspace(0, 1, quantiles)
        pooled_pos = torch.quantile(scores[labels > 0], q) if bool((labels > 0).any()) else torch.ones(quantiles)
        self.positive = torch.empty(labels.shape[1], quantiles)
        self.negative = torch.empty(labels.shape[1], quantiles)
        for c in range(labels.shape[1]):
            pos, neg = scores[labels[:, c] > 0, c], scores[labels[:, c] == 0, c]
            self.positive[c] = torch.quantile(pos, q) if len(pos) >= min_photos else pooled_pos
            self.negative[c] = torch.quantile(neg, q) if len(neg) >= min_photos else torch.zeros(quantiles)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, C) 0/1 labels -> (B, C) probabilities, each drawn from its concept's
        positive or negative scores (linearly between neighbouring quantiles)."""
        n = self.positive.shape[1] - 1
        u = torch.rand(labels.shape, generator=generator) * n
        low = u.floor().long().clamp_max(n - 1)
        frac = u - low
        table = torch.where(labels[..., None] > 0, self.positive, self.negative)  # (B, C, Q)
        a = table.gather(-1, low[..., None]).squeeze(-1)
        b = table.gather(-1, (low + 1)[..., None]).squeeze(-1)
        return a + (b - a) * frac

    def summary(self, concepts: Sequence[str], words: Sequence[str]) -> dict[str, dict[str, float]]:
        """Median positive and negative score of some concepts (for reports)."""
        index = {w: i for i, w in enumerate(concepts)}
        mid = self.positive.shape[1] // 2
        return {w: {"positive_median": round(float(self.positive[index[w], mid]), 3),
                    "negative_median": round(float(self.negative[index[w], mid]), 3)}
                for w in words if w in index}
