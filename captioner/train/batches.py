"""Caption training's batches: caption tables (photos, and captions of photos that are not
here) and the batches they make.

A batch mixes two kinds of rows:

- **photo rows**: a caption of a training photo with the photo's cached feature and grid
  (or its mirror image's, with "left" and "right" swapped), the objects the encoder's
  classifier finds in it, and the concepts the classifiers give it;
- **text rows** (``TextTable``): a caption of a photo that is not here (COCO's and
  Flickr30k's caption text). There is no feature and no grid: the row is learned from
  the photo's objects and concepts alone (``objects_only``), as the detectors would give
  them: its objects are the object words its captions name (each missed a fifth of the
  time, beside random other objects), with probabilities drawn as a classifier gives them,
  and its concepts are drawn from what the concept classifiers give on held-out photos
  (``concepts.ConceptNoise``). So the language of everyday scenes enters the decoder
  through the same inputs a photo's objects and concepts use.

Every random choice depends on the seed, the epoch and the step alone, so a resumed run
and every DDP rank see the same batches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from captioner.concepts import ConceptNoise, concept_labels
from captioner.detector import Boxes
from captioner.inputs import PhotoInputs
from captioner.objects import ClassifiedObjects, substitute_slots
from captioner.regions import Regions
from captioner.train.datasets import CaptionRecord
from captioner.vocabulary import Vocabulary, tokenize
from captioner.wordlists import mentioned_categories
from lstmkit.loop import epoch_order


def encode_caption(vocab: Vocabulary, tokens: Sequence[str]) -> torch.Tensor:
    return torch.tensor([vocab.start_id, *(vocab.index.get(t, vocab.unk_id) for t in tokens), vocab.end_id])


class CaptionTable:
    """Token ids of every caption, with the index of its image's feature, and the same
    caption with left and right swapped for the mirrored feature. Mentions of the objects
    detected in the image (or in its mirror image) become their slot tokens."""

    def __init__(self, records: list[CaptionRecord], images: list[Path], vocab: Vocabulary, max_words: int,
                 objects: list[list[str]], flipped_objects: list[list[str]] | None = None):
        index = {p: i for i, p in enumerate(images)}
        self.image = torch.tensor([index[r.image] for r in records])
        self.ids, self.mirrored = [], []
        swap = {"left": "right", "right": "left"}
        flipped_objects = flipped_objects or objects
        for r, i in zip(records, self.image.tolist()):
            tokens = tokenize(r.caption)[:max_words]
            self.ids.append(encode_caption(vocab, substitute_slots(tokens, objects[i])))
            mirrored = [swap.get(t, t) for t in tokens]
            self.mirrored.append(encode_caption(vocab, substitute_slots(mirrored, flipped_objects[i])))

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: torch.Tensor, flip: torch.Tensor, features, flipped, grid=None, grid_flipped=None):
        """Features (and grids, for attention), padded captions on the features' device; the
        lengths stay on the CPU (packing wants them there)."""
        feats, grids = self.inputs(rows, flip, features, flipped, grid, grid_flipped)
        caps = self.captions(rows, flip)
        return (feats, pad_sequence(caps, batch_first=True).to(features.device),
                torch.tensor([len(c) for c in caps]), grids)

    def inputs(self, rows: torch.Tensor, flip: torch.Tensor, features, flipped, grid=None, grid_flipped=None):
        """The rows' features (and grids), the mirrored image's where ``flip``, on the features' device."""
        device = features.device
        index = self.image[rows].to(device)
        flip_d = flip.to(device)
        feats = torch.where(flip_d[:, None], flipped[index], features[index]).float()
        grids = None
        if grid is not None:
            grids = torch.where(flip_d[:, None, None], grid_flipped[index], grid[index]).float()
        return feats, grids

    def captions(self, rows: torch.Tensor, flip: torch.Tensor) -> list[torch.Tensor]:
        """The rows' token ids, the mirrored caption where ``flip``."""
        return [self.mirrored[r] if f else self.ids[r] for r, f in zip(rows.tolist(), flip.tolist())]


def epoch_plan(n: int, epoch: int, seed: int, flip_prob: float, rank: int, world: int):
    """This rank's shuffled rows and whether each uses the mirrored image; they depend only
    on the seed and the epoch, so they are the same on every rank and every resume."""
    rows = epoch_order(n, epoch, seed, rank, world)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 1_000_000)
    return rows, torch.rand(n, generator=g)[rows] < flip_prob


def object_swaps(batch: int, slots: int, words: int, chance: float, generator: torch.Generator) -> torch.Tensor | None:
    """For each image and slot, a random object word to use instead of the detected one
    (with probability ``chance``; -1 keeps the detection)."""
    if not slots or chance <= 0:
        return None
    swap = torch.randint(0, words, (batch, slots), generator=generator)
    return torch.where(torch.rand(batch, slots, generator=generator) < chance, swap, torch.full_like(swap, -1))


# ------------------------------------------------------------- captions without photos

def object_words_named(captions: Sequence[str], object_words: Sequence[str]) -> list[str]:
    """The object words a photo's captions name, the most often named first."""
    phrases = {tuple(w.split()): w for w in object_words}
    longest = max(map(len, phrases))
    counts: Counter[str] = Counter()  # in order of first mention, so that ties keep that order
    for caption in captions:
        tokens, found, i = tokenize(caption), {}, 0
        while i < len(tokens):
            for n in range(min(longest, len(tokens) - i), 0, -1):
                word = phrases.get(tuple(tokens[i:i + n]))
                if word is not None:
                    found[word] = True
                    i += n
                    break
            else:
                i += 1
        counts.update(found)
    return [w for w, _ in counts.most_common()]


class TextTable:
    """Captions of photos that are not here, as rows a decoder can learn from.

    Each photo gets ``slots`` objects once, when the table is built (seeded): the object
    words its captions name, each missed with chance ``miss``, then random object words
    (a classifier's wrong guesses); mentions of its objects in its captions become slot
    tokens. Probabilities are drawn at every batch (``batch``): a named object's from
    U(0.2, 0.95), a wrong guess's from U(0, 0.35), the slots then ranked by them as the
    classifier ranks its objects."""

    def __init__(self, photos: dict[str, list[str]], vocab: Vocabulary, object_words: Sequence[str], slots: int,
                 concepts: Sequence[str], max_words: int, miss: float = 0.2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.slots, self.first_slot = slots, len(vocab) - slots
        word_index = {w: i for i, w in enumerate(object_words)}
        names = list(photos)
        self.objects = torch.empty(len(names), slots, dtype=torch.long)
        self.named = torch.zeros(len(names), slots, dtype=torch.bool)
        self.ids, photo_of = [], []
        for row, name in enumerate(names):
            named = [w for w in object_words_named(photos[name], object_words)
                     if torch.rand(1, generator=g).item() >= miss][:slots]
            others = [object_words[int(i)] for i in torch.randint(len(object_words), (3 * slots,), generator=g)]
            words = (named + [w for w in others if w not in named])[:slots]
            self.objects[row] = torch.tensor([word_index[w] for w in words])
            self.named[row, :len(named)] = True
            for caption in photos[name]:
                tokens = substitute_slots(tokenize(caption)[:max_words], words[:len(named)])
                self.ids.append(encode_caption(vocab, tokens))
                photo_of.append(row)
        self.photo = torch.tensor(photo_of)
        self.labels = concept_labels([photos[n] for n in names], concepts).to(torch.bool)
        self.categories = category_labels([photos[n] for n in names])
        self.sources = sorted({n.partition(":")[0] for n in names if ":" in n} | {""})
        self.source = torch.tensor([self.sources.index(n.partition(":")[0] if ":" in n else "") for n in names])

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: torch.Tensor, noise: dict[str, ConceptNoise] | None, generator: torch.Generator,
              boxes_noise: dict[str, DetectorNoise] | None = None):
        """Captions (list of id tensors), the classifier's objects, concepts (or None) and detector
        summaries (or None) of ``rows``. ``noise``: for each source (the part of a photo's
        key before ':'), how the concept classifiers score photos like that source's
        (``ConceptNoise``; key "" for all others); ``boxes_noise``: likewise, what the COCO
        detector gives such photos (``DetectorNoise``)."""
        photo = self.photo[rows]
        named = self.named[photo]
        probs = torch.where(named, 0.2 + 0.75 * torch.rand(named.shape, generator=generator),
                            0.35 * torch.rand(named.shape, generator=generator))
        probs, order = probs.sort(dim=1, descending=True)
        words = self.objects[photo].gather(1, order)
        rank = order.argsort(dim=1)  # the new rank of each slot the captions were written with
        captions = []
        for k, r in enumerate(rows.tolist()):
            ids = self.ids[r].clone()
            is_slot = ids >= self.first_slot
            ids[is_slot] = self.first_slot + rank[k, ids[is_slot] - self.first_slot]
            captions.append(ids)
        concepts = None
        if noise:
            labels = self.labels[photo].float()
            concepts = torch.empty_like(labels)
            source = self.source[photo]
            for k, name in enumerate(self.sources):
                mine = source == k
                if bool(mine.any()):
                    table = noise.get(name, noise.get(""))
                    concepts[mine] = table.sample(labels[mine], generator)
        return captions, ClassifiedObjects(words, probs), concepts, self._boxes(photo, boxes_noise, generator)

    def _boxes(self, photo: torch.Tensor, noise: dict[str, DetectorNoise] | None, generator: torch.Generator):
        if not noise:
            return None
        out = torch.empty(len(photo), 80 * 3)
        source = self.source[photo]
        for k, name in enumerate(self.sources):
            mine = source == k
            if bool(mine.any()):
                out[mine] = noise.get(name, noise.get("")).sample(self.categories[photo[mine]], generator)
        return out


def category_labels(captions_per_photo: Sequence[Sequence[str]]) -> torch.Tensor:
    """(photos, 80) bool: the COCO categories any of a photo's captions names."""
    from captioner.wordlists import coco_categories

    column = {c: i for i, c in enumerate(coco_categories())}
    labels = torch.zeros(len(captions_per_photo), 80, dtype=torch.bool)
    for row, captions in enumerate(captions_per_photo):
        for caption in captions:
            for c in mentioned_categories(tokenize(caption)):
                labels[row, column[c]] = True
    return labels


class DetectorNoise:
    """What the COCO detector gives a photo whose captions name (or do not name) a
    category, measured on real photos it never trained on: for a text row, each category's
    (score, boxes, area) is that category's triple on a random real photo with the same
    label, so misses, false alarms, sizes and counts are the detector's own. Categories
    with fewer than ``min_photos`` real photos of a label borrow from all categories."""

    def __init__(self, summaries: torch.Tensor, labels: torch.Tensor, min_photos: int = 3):
        triples = summaries.view(len(summaries), 80, 3)
        self.pools: list[list[torch.Tensor]] = []
        everything = [triples[labels[:, c] == v, c] for v in (False, True) for c in range(80)]
        pooled = [torch.cat(everything[:80]), torch.cat(everything[80:])]
        for c in range(80):
            pair = []
            for v in (False, True):
                own = triples[labels[:, c] == v, c]
                pair.append(own if len(own) >= min_photos else pooled[int(v)])
            self.pools.append(pair)
        self.photos = len(summaries)
        self.rates = {"miss": _rate(triples[..., 0] < 0.3, labels), "false_alarm": _rate(triples[..., 0] >= 0.3,
                                                                                        ~labels)}

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(rows, 80) bool labels -> (rows, 240) summaries."""
        out = torch.zeros(len(labels), 80, 3)
        for c in range(80):
            for v in (False, True):
                rows = (labels[:, c] == v).nonzero().squeeze(1)
                pool = self.pools[c][int(v)]
                if len(rows) and len(pool):  # (no photo of that label at all: the detector's silence)
                    out[rows, c] = pool[torch.randint(len(pool), (len(rows),), generator=generator)]
        return out.flatten(1)


def _rate(event: torch.Tensor, given: torch.Tensor) -> float:
    return float((event & given).sum() / given.sum().clamp_min(1))


@dataclass
class PhotoFindings:
    """What the frozen classifiers and detector give every training photo and its mirror image, computed
    once: the ImageNet classifier's objects and (with concept classifiers) concept probabilities."""

    words: torch.Tensor
    probs: torch.Tensor
    flipped_words: torch.Tensor
    flipped_probs: torch.Tensor
    concepts: torch.Tensor | None = None
    flipped_concepts: torch.Tensor | None = None
    summary: torch.Tensor | None = None  # (photos, 240) the COCO detector's summary (the same for the mirror image)
    regions: Regions | None = None  # the boxes an attention with regions looks at (regions.py), and
    flipped_regions: Regions | None = None  # the mirror image's

    def add_regions(self, photos: Sequence[Boxes], most: int) -> None:
        """The regions of every training photo (``photos``: the detector's boxes) and of its mirror image."""
        self.regions = Regions.of(photos, most)
        self.flipped_regions = Regions.of([b.mirrored() for b in photos], most)

    def regions_of(self, index: torch.Tensor, flip: torch.Tensor) -> Regions:
        mine, mirrored = self.regions.select(index), self.flipped_regions.select(index)
        pick = lambda a, b: torch.where(flip.view(-1, *[1] * (a.dim() - 1)), b, a)  # noqa: E731
        return Regions(*(pick(getattr(mine, f), getattr(mirrored, f)) for f in ("boxes", "categories", "scores",
                                                                              "mask")))

    def photo_rows(self, index: torch.Tensor, features: torch.Tensor, grid: torch.Tensor | None, regions: bool,
                   slots: bool) -> PhotoInputs:
        """The ``PhotoInputs`` of these training photos, not mirrored (``features``, ``grid``:
        every training photo's), as the photo rows of a cross-entropy batch give them; the
        regions and the object slots only where the model has them."""
        flip = torch.zeros(len(index), dtype=torch.bool)
        det, concepts, summary = self.select(index, flip)
        on = index.to(features.device)
        return PhotoInputs(features[on].float(), None if grid is None else grid[on].float(), summary,
                           self.regions_of(index, flip) if regions else None, classified=det if slots else None,
                           concepts=concepts)

    def select(self, index: torch.Tensor, flip: torch.Tensor):
        """(the classifier's objects, concepts or None, detector summaries or None) of these photos."""
        f = flip[:, None]
        det = ClassifiedObjects(torch.where(f, self.flipped_words[index], self.words[index]),
                                torch.where(f, self.flipped_probs[index], self.probs[index]))
        concepts = None
        if self.concepts is not None:
            concepts = torch.where(f, self.flipped_concepts[index], self.concepts[index])
        return det, concepts, None if self.summary is None else self.summary[index]


def mixed_batch(photo_part, text_part, device: torch.device) -> tuple[PhotoInputs, torch.Tensor, torch.Tensor]:
    """One batch of photo rows then text rows: (their ``PhotoInputs``, captions, lengths), the
    text rows marked ``objects_only``. ``photo_part``: (features, caption ids, grid or None,
    classified, concepts or None, summaries or None); ``text_part``: (caption ids, classified,
    concepts or None, summaries or None) or None."""
    feats, caps, grid, det, concepts, summary = photo_part  # features and grid may already be on the device
    only = torch.zeros(len(caps), dtype=torch.bool)
    if text_part is not None:
        text_caps, text_det, text_concepts, text_summary = text_part
        if summary is not None:
            summary = torch.cat([summary, text_summary])
        n = len(text_caps)
        feats = torch.cat([feats, feats.new_zeros(n, feats.shape[1])])
        if grid is not None:
            grid = torch.cat([grid, grid.new_zeros(n, *grid.shape[1:])])
        caps = list(caps) + list(text_caps)
        only = torch.cat([only, torch.ones(n, dtype=torch.bool)])
        det = ClassifiedObjects(torch.cat([det.words, text_det.words]), torch.cat([det.probs, text_det.probs]))
        if concepts is not None:
            concepts = torch.cat([concepts, text_concepts])
    lengths = torch.tensor([len(c) for c in caps])
    inputs = PhotoInputs(feats, grid, summary, classified=det, concepts=concepts, objects_only=only).to(device)
    return inputs, pad_sequence(caps, batch_first=True).to(device), lengths


def text_rows_for(step: int, epoch: int, per_step: int, n: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """The text rows of a step: a slice of this epoch's shuffled order of all text rows
    (a different random share of them every epoch), wrapping around."""
    order = epoch_order(n, 1_000 + epoch, seed, rank, world)
    return order[(torch.arange(per_step) + step * per_step) % len(order)]
