"""Retrieval baselines: a caption looked up rather than written.

- ``nearest_consensus``: the consensus caption of a photo's k nearest training photos in
  the encoder's feature space (only photos with captions can be neighbours);
- ``ConceptRetrieval``: the caption, among every caption the model learned from (photos'
  and text-only), whose words best match what the model recognises in the photo. The
  recognised words are the concepts the classifiers give at least ``concept_min`` and the
  objects the classifier gives at least ``object_min``; a caption scores one for each
  recognised word it uses (plus its probability, to break ties) and loses ``penalty`` for
  each matchable word (a concept or an object word) it uses that is not recognised. The
  best total wins.

A decoder that cannot beat these has learned a lookup, not a language.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from captioner.train.metrics import consensus_caption
from captioner.vocabulary import tokenize


def nearest_consensus(query: torch.Tensor, database: torch.Tensor, captions: Sequence[Sequence[str]],
                      k: int = 5, exclude: dict[int, int] | None = None) -> list[str]:
    """The consensus caption of each query's ``k`` nearest database photos (cosine);
    ``exclude``: query row -> a database row it must not use (the query photo itself)."""
    a = torch.nn.functional.normalize(query.float(), dim=1)
    b = torch.nn.functional.normalize(database.float(), dim=1)
    similarity = a @ b.T
    for q, d in (exclude or {}).items():
        similarity[q, d] = float("-inf")
    neighbours = similarity.topk(min(k, len(database)), dim=1).indices.tolist()
    return [consensus_caption([c for j in row for c in captions[j]]) for row in neighbours]


class ConceptRetrieval:
    """The caption whose concept and object words best match a photo's (see above)."""

    def __init__(self, captions: Sequence[str], concept_words: Sequence[str], object_words: Sequence[str]):
        self.captions = list(dict.fromkeys(captions))
        self.words = list(dict.fromkeys([*concept_words, *(w for w in object_words if " " not in w)]))
        self.concepts, self.objects = len(concept_words), {w: i for i, w in enumerate(self.words)}
        index = self.objects
        rows, cols = [], []
        for row, caption in enumerate(self.captions):
            for word in set(tokenize(caption)):
                if word in index:
                    rows.append(row)
                    cols.append(index[word])
        values = torch.ones(len(rows))
        self.matrix = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).view(2, -1), values,
                                              (len(self.captions), len(self.words)),
                                              check_invariants=True).coalesce()

    def word_probabilities(self, concepts: torch.Tensor, objects: Sequence[Sequence[dict]]) -> torch.Tensor:
        """(B, concepts) probabilities and each photo's recognised objects -> (B, words)."""
        probs = torch.zeros(len(concepts), len(self.words))
        probs[:, :self.concepts] = concepts.float()
        for row, found in enumerate(objects):
            for o in found:
                j = self.objects.get(o["word"])
                if j is not None:
                    probs[row, j] = max(float(probs[row, j]), float(o["probability"]))
        return probs

    def __call__(self, concepts: torch.Tensor, objects: Sequence[Sequence[dict]], batch: int = 64,
                 concept_min: float = 0.5, object_min: float = 0.2, penalty: float = 0.5) -> list[str]:
        probs = self.word_probabilities(concepts, objects)
        minimum = torch.full((probs.shape[1],), object_min)
        minimum[:self.concepts] = concept_min
        recognised = probs >= minimum
        weights = torch.where(recognised, 1.0 + probs, torch.full_like(probs, -penalty))
        best = []
        for start in range(0, len(weights), batch):
            scores = self.matrix @ weights[start:start + batch].T  # (captions, B)
            best += scores.argmax(0).tolist()
        return [self.captions[i] for i in best]
