"""CIDEr-D (Vedantam et al. 2015), fast enough to be a training reward.

Document frequencies come once from a whole reference corpus (the training captions, or
more: a benchmark's own corpus is far larger than a small training set), as self-critical
training needs; each candidate is then scored against its own image's references: the
mean over n = 1..4 of the clipped tf-idf cosine similarity with each reference, with a
Gaussian penalty on the length difference (sigma 6), times 10.
It matches pycocoevalcap's ``CiderD`` scorer given the same document frequencies.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Ngrams = list[Counter]


def ngrams(words: Sequence[str], n: int) -> Counter:
    """How often each n-gram occurs in ``words``: the one n-gram counter of the project."""
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def ngram_counts(words: Sequence[str], n_max: int = 4) -> Ngrams:
    return [ngrams(words, n) for n in range(1, n_max + 1)]


class CiderD:
    def __init__(self, corpus: Sequence[Sequence[Sequence[str]]], sigma: float = 6.0):
        """``corpus``: for each image (a document), its tokenised reference captions."""
        self.sigma = sigma
        df: Counter = Counter()
        for refs in corpus:
            seen = set()
            for ref in refs:
                for counts in ngram_counts(ref):
                    seen.update(counts)
            df.update(seen)
        self.df = df
        self.log_n = math.log(float(len(corpus)))

    def _vector(self, counts: Ngrams) -> tuple[list[dict], list[float]]:
        vectors, norms = [], []
        for grams in counts:
            vec = {g: tf * (self.log_n - math.log(max(1.0, self.df.get(g, 0.0)))) for g, tf in grams.items()}
            vectors.append(vec)
            norms.append(math.sqrt(sum(v * v for v in vec.values())))
        return vectors, norms

    def prepare_refs(self, refs: Sequence[Sequence[str]]) -> list[tuple[list[dict], list[float], int]]:
        """Reference vectors of one image, computed once and reused for every candidate."""
        return [(*self._vector(ngram_counts(r)), len(r)) for r in refs]

    def score(self, candidate: Sequence[str], prepared_refs) -> float:
        cand_vec, cand_norm = self._vector(ngram_counts(candidate))
        total = [0.0] * 4
        for ref_vec, ref_norm, ref_len in prepared_refs:
            delta = len(candidate) - ref_len
            penalty = math.exp(-(delta * delta) / (2 * self.sigma ** 2))
            for n in range(4):
                if cand_norm[n] == 0 or ref_norm[n] == 0:
                    continue
                dot = sum(min(v, ref_vec[n][g]) * ref_vec[n][g] for g, v in cand_vec[n].items()
                          if g in ref_vec[n])  # CIDEr-D clips the candidate's counts
                total[n] += penalty * dot / (cand_norm[n] * ref_norm[n])
        return 10.0 * sum(total) / (4 * len(prepared_refs))
