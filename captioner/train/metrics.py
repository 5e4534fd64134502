"""Caption metrics and the two baselines every evaluation reports.

- ``caption_scores``: the one way captions are scored, in validation, decoding tuning and
  evaluation alike: BLEU-1..4, METEOR (when Java is present and asked for), ROUGE-L and
  CIDEr with pycocoevalcap's scorers and its PTB tokenizer (our own tokenizer without
  Java), and the object-mention precision, recall and F1 of ``objects.py``.
- ``best_constant_caption``: the single caption that, given to every image, scores the
  highest corpus BLEU-4 against these very references (an oracle choice, so the baseline
  is as strong as a constant caption can be).
  The search ranks candidates with corpus BLEU-4 computed from n-gram tables (thousands of
  candidates in seconds); the chosen caption is then scored by ``caption_scores``.
- ``consensus_caption``: for nearest-neighbour retrieval, the caption among the
  neighbours' captions that agrees most with the others (Devlin et al. 2015).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
from collections import Counter
from collections.abc import Sequence

import numpy as np

from captioner.rules import degenerate
from captioner.train.cider import ngrams
from captioner.vocabulary import tokenize
from captioner.wordlists import mentioned_categories, person_words

log = logging.getLogger(__name__)


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_scores(references: dict[str, list[str]], predictions: dict[str, str],
                   meteor: bool = True) -> dict[str, float]:
    """Corpus scores of ``predictions`` (id -> caption) against ``references`` (id -> captions).
    ``meteor=False`` skips METEOR (its Java process is the slowest part), as validation does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge


    ids = sorted(predictions)
    gts, res = _tokenized(references, predictions)
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print progress
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
        if meteor and java_available():
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
            finally:
                del meteor  # stops the Java process
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    scores.update(object_mention_scores({i: references[i] for i in ids}, predictions))
    return scores


def _tokenized(references: dict[str, list[str]], predictions: dict[str, str]) -> tuple[dict, dict]:
    """References and predictions as pycocoevalcap's scorers take them: PTB-tokenized
    (our own tokenizer without Java), keyed by id, in sorted order."""
    ids = sorted(predictions)
    gts = {i: [{"caption": c} for c in references[i]] for i in ids}
    res = {i: [{"caption": predictions[i] or "."}] for i in ids}
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        return tokenizer.tokenize(gts), tokenizer.tokenize(res)
    return ({i: [" ".join(tokenize(c["caption"])) for c in v] for i, v in gts.items()},
            {i: [" ".join(tokenize(v[0]["caption"]))] for i, v in res.items()})


def cider_per_photo(references: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float]:
    """Each photo's CIDEr, as ``caption_scores`` computes the corpus CIDEr (their mean is
    it): the document frequencies come from the references alone, so two models' captions
    of the same photos are scored on one scale, photo by photo (the gate's paired bootstrap)."""
    from pycocoevalcap.cider.cider import Cider

    gts, res = _tokenized(references, predictions)
    with contextlib.redirect_stdout(io.StringIO()):
        _, each = Cider().compute_score(gts, res)
    return {i: float(c) for i, c in zip(gts, each)}


def object_mention_scores(references: dict[str, list[str]], predictions: dict[str, str],
                          min_references: int = 2) -> dict[str, float]:
    """Micro-averaged object-mention precision, recall and F1 over images: the true objects
    of an image are the COCO categories named in at least ``min_references`` of its human
    captions; the predicted ones those its caption names, where every word that describes a
    person (``wordlists.person_words``: "asian", "blonde", "young", "she"...) names a person too,
    so that a caption cannot hide an invented person behind other words. ``degenerate``: the
    captions no user should read (``rules.degenerate``)."""
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


def best_constant_caption(references: Sequence[Sequence[str]], candidates: Sequence[str]) -> tuple[str, float]:
    """The candidate with the highest corpus BLEU-4 when it is every image's caption.

    Exact corpus BLEU-4 (clipped n-gram precision, brevity penalty against the closest
    reference length) for each candidate, computed from per-n-gram tables so that
    thousands of candidates take seconds."""
    refs = [[tokenize(r) for r in image_refs] for image_refs in references]
    clip = _clip_table(refs)
    ref_lengths = [[len(r) for r in image_refs] for image_refs in refs]
    best, best_score = "", -1.0
    for text in dict.fromkeys(" ".join(tokenize(c)) for c in candidates):
        words = text.split()
        log_precision = _log_precision(words, clip, len(refs)) if words else float("-inf")
        if log_precision == float("-inf"):
            continue
        hyp_len = len(words) * len(refs)
        ref_len = sum(min(lengths, key=lambda x: (abs(x - len(words)), x)) for lengths in ref_lengths)
        bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
        score = bp * math.exp(log_precision)
        if score > best_score:
            best, best_score = text, score
    return best, best_score


def _clip_table(refs: list[list[list[str]]]) -> dict[tuple, list[int]]:
    """clip[g][k]: summed over images, min(k, the most times any reference of that image has g)."""
    clip: dict[tuple, list[int]] = {}
    for image_refs in refs:
        most: Counter = Counter()
        for r in image_refs:
            for n in range(1, 5):
                for g, c in ngrams(r, n).items():
                    most[g] = max(most[g], c)
        for g, c in most.items():
            row = clip.setdefault(g, [0] * 8)
            for k in range(1, 8):
                row[k] += min(k, c)
    return clip


def _log_precision(words: list[str], clip: dict[tuple, list[int]], images: int) -> float:
    """The mean log clipped n-gram precision (n = 1..4) of ``words`` as every image's caption."""
    log_precision = 0.0
    for n in range(1, 5):
        grams = ngrams(words, n)
        total = sum(grams.values()) * images
        matched = sum(clip.get(g, [0] * 8)[min(c, 7)] for g, c in grams.items())
        if total == 0 or matched == 0:
            return float("-inf")
        log_precision += math.log(matched / total) / 4
    return log_precision


def _agreement(a: list[str], b: list[str]) -> float:
    """How much caption ``a`` agrees with caption ``b``: smoothed sentence BLEU-4, the
    re-ranking similarity of Devlin et al. (2015) (it ranks candidates; nothing reported
    is scored with it)."""
    if not a or not b:
        return 0.0
    log_p = 0.0
    for n in range(1, 5):
        ga, gb = ngrams(a, n), ngrams(b, n)
        matched = sum(min(c, gb[g]) for g, c in ga.items())
        log_p += math.log((matched + 1) / (sum(ga.values()) + 1)) / 4
    bp = 1.0 if len(a) > len(b) else math.exp(1 - len(b) / len(a))
    return bp * math.exp(log_p)


def consensus_caption(captions: Sequence[str]) -> str:
    """The caption that agrees most with the other captions."""
    tokens = [tokenize(c) for c in captions]
    if len(tokens) == 1:
        return captions[0]
    scores = [sum(_agreement(t, o) for j, o in enumerate(tokens) if j != i) for i, t in enumerate(tokens)]
    return captions[max(range(len(captions)), key=scores.__getitem__)]


def bootstrap(differences, resamples: int = 1000, seed: int = 0,
              percentiles: tuple[float, float] = (2.5, 97.5)) -> tuple[float, float]:
    """The ``percentiles`` of the mean of paired ``differences`` (one per photo) over
    ``resamples`` resamples of the photos (with replacement, seeded): the one paired
    bootstrap of the gate (``finetune.judge``) and the panel (``panel.score``)."""
    d = np.asarray(differences, dtype=np.float64)
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    low, high = np.percentile(means, percentiles)
    return float(low), float(high)
