"""The decoding policy: from a network and a photo's inputs to decoded ids. Which words
each caption must hold (constraints), which it may not (the rules), how the words naming
a COCO object are tied to what the detectors see (grounding), greedy or beam: functions
over a ``CaptionNetwork`` and the ``WordTables`` of its vocabulary; the search itself is
``search.py``.

    network.context (features, grid, objects, concepts, the detector's summary)
        -> grounding (a score bias per word) and the required words (constraints)
        -> search.greedy or search.beam_alternatives over the decoder's step, with the rules
        -> every caption found, for the claims check (``claims_seen``: ``model.Captioner``)

Greedy (a beam of one) runs ``search.greedy`` only when no caption must hold a word; with
required words (``require_object_prob``, ``require_detected``: the shipped checkpoint's) it
runs ``search.beam_alternatives`` with a beam of one, which keeps a caption with the word
beside one without it (``decode``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from captioner import search
from captioner.claims import claim_table
from captioner.decoder import select
from captioner.detector import PERSON, category_scores
from captioner.inputs import PhotoInputs
from captioner.network import CaptionNetwork
from captioner.objects import ClassifiedObjects
from captioner.rules import CaptionRules
from captioner.search import Decoded
from captioner.vocabulary import Vocabulary
from captioner.wordlists import category_of_words, coco_categories, coco_synonyms
from lstmkit.checkpoint import config_from_dict

log = logging.getLogger(__name__)


@dataclass
class DecodingConfig:
    """How captions are decoded unless the caller says otherwise: the decoding a checkpoint
    ships, recorded in its metadata (``Captioner.save``) and read from there alone (the app,
    the command line, ``CaptionService.default_beam``). A new model gets these defaults, its
    beam from ``train_captioner --decoding-beam`` (never ``--val-beam``, which only scores
    validation); ``tune_decoding --write`` replaces them with the setting it chose."""

    beam_size: int = 5
    length_alpha: float = 1.0      # beam search length normalisation exponent
    max_length: int = 20
    min_object_prob: float = 0.0   # objects the classifier is less sure of are never copied
    require_object_prob: float | None = None  # the top object, when this sure of it, must be in the caption
    objects_only_below: float | None = None  # photos less familiar than this are described from their objects alone
    text_world_above: float | None = None  # ... and photos whose nearest reference photos are mostly of
    #                                         scenes known from caption text alone (familiarity.text_world)
    person_score: float | None = None  # a caption may name or describe a person only when the detector's best
    #                                    person box scores at least this (rules.py; None: no person rule)
    rules: bool = False  # no word pair twice, no modifier without its noun (rules.py)
    require_detected: float | None = None  # the detector's surest object (no person), when this sure of it,
    #                                        must be named (any word naming its category; with the top object)
    block_ngram: int = 0  # no caption repeats an n-gram of this length ("a cup of coffee and a cup of coffee"; 0: off)
    ground_detector: bool = False  # grounding reads the COCO detector alone (not the concept classifiers too)
    ground_weight: float = 0.0  # a word naming a COCO category gets + ground_weight * log p, p the concept
    #                             classifiers' surest word for that category (0: off; see ``grounding``)
    back_objects: float | None = None  # a word naming a COCO object needs something to back it: a detected box
    #                                    (score >= 0.5) or a concept or ImageNet object at least this sure of it
    #                                    (``unbacked``; None: off)
    claims_seen: int = 0  # every (thing, relation, thing) a caption states must occur at least this often in the
    #                       human captions (claims.py): the beam's best caption whose claims all do, else the best
    #                       cut before its first unseen claim (beam search only; 0: off)
    claims_in_search: bool = False  # ... and the beam search itself refuses such a claim as it is written
    #                                 (search.ClaimBans), so fewer captions are cut afterwards
    claims_count: bool = False  # ... and says no more of a thing than the detector counts (choice.overcounted)
    actions_sure: float | None = None  # ... and states an action ("sitting", "riding") only where the concept
    #                                    classifiers give its verb at least this (claims.Belief; None: off)
    claims_soften: bool = False  # ... and a doubted action is said without its verb before the caption is cut
    #                              (choice.soften: "a man is sitting on a dog" -> "a man with a dog")
    gender_sure: float | None = None  # "a man" stays "a man" only when the concept detectors are this sure of it
    #                                   (claims.ungendered; else "a person"; None: off)

    def updated(self, settings: Sequence[str]) -> DecodingConfig:
        """These settings with ``KEY=VALUE`` items changed (values read as JSON: 2, 0.5, null,
        true); ValueError names a key or value it cannot take."""
        names = {f.name for f in fields(DecodingConfig)}
        changes = {}
        for item in settings:
            key, _, value = item.partition("=")
            if key not in names or not value:
                raise ValueError(f"a decoding setting is KEY=VALUE with KEY one of {', '.join(sorted(names))}, "
                                 f"not {item!r}")
            try:
                changes[key] = json.loads(value)
            except ValueError as err:
                raise ValueError(f"{item!r}: the value is not a number, null, true or false") from err
        return replace(self, **changes)

    @classmethod
    def from_saved(cls, data: dict, path) -> DecodingConfig:
        """The settings a checkpoint's metadata holds, less the fields only older checkpoints
        hold (``RETIRED``; the shipped one saved ``person_below: null``); unknown ones refused."""
        data = dict(data)
        for name, why in RETIRED.items():
            if data.pop(name, None) is not None:
                log.warning("%s sets %s, which this version ignores: %s", path, name, why)
        return config_from_dict(cls, data, path)


# Fields older checkpoints' decoding settings hold and this version reads past, with why.
RETIRED = {"person_below": "the previous release's person ban (no person words when the concept classifiers' "
                           "surest person word was below it), replaced by person_score and the caption rules"}


def category_tokens(vocab: Vocabulary) -> torch.Tensor:
    """(80, S) for each COCO category the vocabulary's single words that name it ("giraffe",
    "giraffes"; ``wordlists.coco_synonyms``), padded with -1."""
    column = {c: i for i, c in enumerate(coco_categories())}
    words: list[list[int]] = [[] for _ in range(80)]
    for phrase, category in coco_synonyms().items():
        if len(phrase) == 1 and phrase[0] in vocab.index:
            words[column[category]].append(vocab.index[phrase[0]])
    table = torch.full((80, max(1, max(map(len, words)))), -1, dtype=torch.long)
    for c, ids in enumerate(words):
        table[c, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return table


@dataclass
class WordTables:
    """What decoding needs to know of a captioner's words, every category in COCO's one
    numbering (0..79, ``wordlists.coco_categories``; -1: none): the category each word, object
    word and concept names (``word_coco``, ``object_coco``, ``concept_coco``), which categories
    the concepts name (``grounded``: grounding ties only those words to what the detectors
    see), each category's words (``category_tokens``, models with the detector), each object
    word's vocabulary id (``object_tokens``), and the rules over the vocabulary."""

    rules: CaptionRules
    words: Sequence[str]
    end_id: int
    word_coco: torch.Tensor
    object_coco: torch.Tensor
    concept_coco: torch.Tensor
    grounding_coco: torch.Tensor  # (concepts,) ``concept_coco`` of the concepts that are a category's single word
    grounded: torch.Tensor  # (80,) bool: the categories such a concept names
    category_tokens: torch.Tensor | None = None
    object_tokens: torch.Tensor | None = None

    @classmethod
    def of(cls, vocab: Vocabulary, object_words: Sequence[str], concept_words: Sequence[str],
           detector: bool) -> WordTables:
        concept_coco = category_of_words(concept_words)
        # a concept grounds its category when it is the category's single-word name ("dog", not "hot dog")
        single = torch.tensor([len(w.split()) == 1 for w in concept_words], dtype=torch.bool)
        grounding_coco = torch.where(single, concept_coco, -1) if len(concept_words) else concept_coco
        grounded = torch.zeros(80, dtype=torch.bool)
        grounded[grounding_coco[grounding_coco >= 0]] = True
        tables = cls(CaptionRules(vocab.words, vocab.end_id), tuple(vocab.words), vocab.end_id,
                     category_of_words(vocab.words),
                     category_of_words(object_words), concept_coco, grounding_coco, grounded,
                     category_tokens(vocab) if detector else None)
        if object_words:
            tables.object_tokens = torch.tensor([vocab.index.get(w, -1) for w in object_words], dtype=torch.long)
        return tables


def _per_category(scores: torch.Tensor, coco: torch.Tensor) -> torch.Tensor:
    """(B, 80): the highest of ``scores`` (B, N) per COCO category ``coco`` (N,) (0 where none)."""
    column = (coco.to(scores.device) % 81)[None].expand(len(scores), -1)  # -1 -> 80, dropped below
    return scores.new_zeros(len(scores), 81).scatter_reduce(1, column, scores, "amax")[:, :80]


def grounding(tables: WordTables, concepts: torch.Tensor, decoding: DecodingConfig,
              summary: torch.Tensor | None = None, classified: ClassifiedObjects | None = None) -> torch.Tensor | None:
    """(B, vocab) additions to the words' scores that tie the words naming a COCO
    category to what the detectors see: ``ground_weight * log p`` (p: the surest concept
    of the word's category, or the COCO detector's score). An object slot whose word names a
    category ("dog" from the ImageNet classifier) is grounded like the word itself (models
    with the COCO detector). None when nothing is asked for."""
    if not decoding.ground_weight:
        return None
    if not bool(tables.grounded.any()):
        return None
    device = concepts.device
    grounded = tables.grounded.to(device)
    groups = _per_category(concepts, tables.grounding_coco)  # (B, 80): the surest concept of each category
    if summary is not None:  # the detector's evidence too: the surer of the two, or the detector's alone
        detected = category_scores(summary).to(groups.dtype)
        groups = detected.clamp_min(0.02) if decoding.ground_detector else torch.maximum(groups, detected)
    word_coco = tables.word_coco.to(device)
    has = (word_coco >= 0) & grounded[word_coco.clamp_min(0)]
    bias = concepts.new_zeros(len(concepts), len(word_coco))
    picked = groups[:, word_coco.clamp_min(0)].clamp_min(1e-6).log()
    bias = torch.where(has[None, :], decoding.ground_weight * picked, bias)
    if classified is not None and summary is not None and len(tables.object_coco):
        slot_coco = tables.object_coco.to(device)[classified.words]  # (B, K)
        slot = groups.gather(1, slot_coco.clamp_min(0)).clamp_min(1e-6).log()
        first = bias.shape[1] - slot_coco.shape[1]
        slot_grounded = (slot_coco >= 0) & grounded[slot_coco.clamp_min(0)]
        bias[:, first:] = torch.where(slot_grounded, decoding.ground_weight * slot, 0.0)
    return bias


def unbacked(tables: WordTables, decoding: DecodingConfig, summary: torch.Tensor | None,
             concepts: torch.Tensor | None, classified: ClassifiedObjects | None) -> torch.Tensor:
    """(B, vocab) True for each word (object slots included) that names a COCO object nothing
    backs: no box of it at 0.5 or more, and no concept or ImageNet object word of it at
    ``back_objects`` or more (``CHAIR``'s invented objects, refused while searching)."""
    rows = len(summary) if summary is not None else len(concepts)
    device = (summary if summary is not None else concepts).device
    backed = torch.zeros(rows, 81, device=device)  # 1: backed; column 80: "names no object"
    backed[:, 80] = 1.0
    if summary is not None:
        backed[:, :80] = (category_scores(summary) >= 0.5).float()
    sure = decoding.back_objects
    if concepts is not None and len(tables.concept_coco):
        column = tables.concept_coco.to(device).clamp_min(-1) % 81  # -1 -> 80
        backed.scatter_reduce_(1, column[None].expand(rows, -1), (concepts >= sure).float(), "amax")
    if classified is not None and tables.object_coco is not None and len(tables.object_coco):
        column = tables.object_coco.to(device)[classified.words] % 81
        backed.scatter_reduce_(1, column, (classified.probs >= sure).float(), "amax")
    backed = backed > 0
    words = tables.word_coco.to(device) % 81
    banned = ~backed[:, words]  # (B, vocab)
    if classified is not None and tables.object_coco is not None and len(tables.object_coco):
        slots = tables.object_coco.to(device)[classified.words] % 81  # (B, K)
        first = banned.shape[1] - slots.shape[1]
        banned[:, first:] = ~backed.gather(1, slots)
    return banned


def required_words(tables: WordTables, first_slot: int, classified: ClassifiedObjects | None,
                   summary: torch.Tensor | None, decoding: DecodingConfig) -> torch.Tensor | None:
    """(B, S) the words of which each caption must hold one (-1: none; None: no image
    has any): the top object's slot when the classifier is sure of it, and every word
    naming the detector's surest category (no person) when the detector is."""
    parts = []
    if classified is not None and decoding.require_object_prob is not None:
        sure = classified.probs[:, 0] >= decoding.require_object_prob
        parts.append(torch.where(sure, first_slot, -1)[:, None])
    if summary is not None and decoding.require_detected is not None and tables.category_tokens is not None:
        scores = category_scores(summary).clone()
        scores[:, PERSON] = 0.0
        best, category = scores.max(1)
        words = tables.category_tokens.to(summary.device)[category]
        parts.append(words.masked_fill((best < decoding.require_detected)[:, None], -1))
    if not parts:
        return None
    required = torch.cat(parts, 1)
    return required if bool((required >= 0).any()) else None


@dataclass
class DecodedBatch:
    """What decoding a batch gives: each photo's decoded ids, the classifier's objects, the
    concepts' probabilities, and whether each photo may name a person (None: all may)."""

    captions: list[Decoded]
    classified: ClassifiedObjects | None
    concepts: torch.Tensor | None
    person_ok: torch.Tensor | None
    alternatives: list[list[Decoded]] | None = None  # each photo's finished captions, best first (``claims_seen``)
    ctx: dict | None = None  # the policy's context the search ran over (``claims_seen``: for ``rescore``)


@dataclass
class Policy:
    """What the decoding policy fixes for a batch before any word is searched: the
    network's context with the grounding and backing biases in it, the classifier's
    objects, the words each caption must hold (None: none), the rules (None: none) and
    whether each photo may name a person (None: all may)."""

    ctx: dict
    classified: ClassifiedObjects | None
    required: torch.Tensor | None
    constraints: search.Constraints | None
    person_ok: torch.Tensor | None


def policy(network: CaptionNetwork, tables: WordTables, inputs: PhotoInputs, decoding: DecodingConfig) -> Policy:
    """The decoding policy in one place, for the search (``decode``) and for self-critical
    training's samples alike: which photos are described from their objects alone
    (familiarity), grounding, backing, the required words and the rules."""
    objects_only = None
    if decoding.objects_only_below is not None and inputs.familiarity is not None and network.objects is not None:
        objects_only = inputs.familiarity < decoding.objects_only_below
    if decoding.text_world_above is not None and inputs.text_world is not None and network.objects is not None:
        by_world = inputs.text_world >= decoding.text_world_above
        objects_only = by_world if objects_only is None else objects_only | by_world
    ctx, classified = network.context(inputs.with_(objects_only=objects_only), decoding.min_object_prob)
    summary = ctx.get("detector_summary")
    if "concepts" in ctx:
        bias = grounding(tables, ctx["concepts"], decoding, summary, classified)
        if bias is not None:
            ctx["word_bias"] = bias
    if decoding.back_objects is not None:
        banned = unbacked(tables, decoding, summary, ctx.get("concepts"), classified)
        bias = ctx.get("word_bias", torch.zeros(banned.shape, device=banned.device))
        ctx["word_bias"] = bias.masked_fill(banned, float("-inf"))
    required = required_words(tables, network.decoder.first_slot, classified, summary, decoding)
    constraints = person_ok = None
    if decoding.person_score is not None and summary is not None:
        person_ok = category_scores(summary)[:, PERSON] >= decoding.person_score
    claims = None
    if decoding.claims_in_search and decoding.claims_seen > 0:
        claims = search.ClaimBans(tables.words, tables.end_id, claim_table(), decoding.claims_seen)
    if decoding.rules or decoding.person_score is not None or claims is not None:
        slot_words = None
        if classified is not None and tables.object_tokens is not None:
            slot_words = tables.object_tokens.to(classified.words.device)[classified.words]
        constraints = search.Constraints(tables.rules, person_ok, decoding.rules, slot_words, claims)
    return Policy(ctx, classified, required, constraints, person_ok)


def decode(network: CaptionNetwork, tables: WordTables, inputs: PhotoInputs, decoding: DecodingConfig
           ) -> DecodedBatch:
    """Decode a batch of photos' captions: the decoding policy (``policy``), then greedy or
    beam search."""
    # a beam of one is search.greedy without required words, else search.beam_alternatives (constrained, one wide)
    fixed = policy(network, tables, inputs, decoding)
    decoder, ctx, required, constraints = network.inference_decoder, fixed.ctx, fixed.required, fixed.constraints
    if decoding.beam_size == 1 and required is None:
        decoded = search.greedy(decoder, ctx, decoding.max_length, decoding.block_ngram, constraints)
        found = [[d] for d in decoded]  # greedy's one caption is checked like a beam's (claims_seen)
    else:
        found = search.beam_alternatives(decoder, ctx, decoding.beam_size, decoding.max_length,
                                         decoding.length_alpha, must_include=required,
                                         block_ngram=decoding.block_ngram, constraints=constraints)
    checked = decoding.claims_seen > 0
    return DecodedBatch([alts[0] for alts in found], fixed.classified, ctx.get("concepts"), fixed.person_ok,
                        alternatives=found if checked else None,
                        ctx=ctx if checked or decoding.gender_sure is not None else None)


def rescore(network: CaptionNetwork, ctx: dict, rows: list[int], seqs: list[list[int]],
            length_alpha: float) -> list[Decoded]:
    """Given captions (``seqs``: word ids) of some photos (``rows`` of the decoded batch) as
    the decoder scores them in the context its search ran over (``DecodedBatch.ctx``): each
    word's probability and where it looked (``search.force``)."""
    index = torch.tensor(rows, device=next(iter(ctx.values())).device)
    return search.force(network.inference_decoder, select(ctx, index), seqs, length_alpha)
