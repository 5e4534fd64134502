"""Captioner = image encoder + detectors + projection + LSTM decoder + vocabulary.

    upload -> images.load_image -> encoder.preprocess -> encoder (bf16, channels_last: grid + pooled)
           -> objects (the encoder's ImageNet classifier, as words), concepts (learned from
              captions, concepts.py) and familiarity -> a per-image context
           -> search over the decoder's step (greedy or beam, search.py)
           -> ids to words (slots become object words, articles fixed: vocabulary.py)
           -> CaptionResult (text, words, probabilities, objects and concepts, familiarity, attention)

``CaptionNetwork`` holds every trained weight: the projections, the concept detectors and
the decoder are trained; the checkpoint also holds the copy of the encoder's classifier
that finds the objects and the familiarity references, and names the encoder, which is
rebuilt from its own source (torchvision, or the packaged Lite0 weights).

Three kinds of settings, kept apart (as nanoGPT keeps the model's arguments apart from
how a run uses them):

- ``CaptionerConfig``: what the weights are. ``--resume`` compares these fields only
  (``dropout`` is marked as not shaping the weights).
- ``DecodingConfig``: how captions are decoded by default (beam width, length exponent).
- provenance: which encoder weights the decoder was trained on and where the data was,
  as plain metadata.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from PIL import Image
from torch import nn

from captioner import search
from captioner.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    config_from_dict,
    load_model,
    load_state_strict,
    read_metadata,
    save_model,
)
from captioner.concepts import ConceptDetector
from captioner.decoder import DECODERS, Context
from captioner.detector import PERSON, Boxes, category_scores, coco_categories, summary
from captioner.encoders import ImageEncoder, build_encoder
from captioner.familiarity import Familiarity
from captioner.objects import Detections, ObjectDetector
from captioner.rules import CaptionRules, describe_objects, problems
from captioner.search import Decoded
from captioner.vocabulary import Vocabulary, fix_article

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = CHECKPOINTS / "captioner.safetensors"


# Below this familiarity fewer than 1% of held-out photos like the training photos look as
# unlike them (familiarity.py); the CLI and the app say so beside the caption.
UNFAMILIAR = 0.01
DETECTED = 0.5  # boxes at least this sure are shown, counted and listed among a result's objects


@dataclass
class CaptionerConfig:
    """What the trained weights are."""

    encoder: str = "efficientnet_lite0"
    feature_dim: int = 1280
    vocab_size: int = 0            # words, the object slots included
    embed_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 1
    decoder: str = "show_tell"     # or "attention"
    grid_dim: int = 512            # attention: the grid cells' projection
    attention_dim: int = 512
    object_slots: int = 0          # detected objects the decoder may copy (0: none)
    object_words: int = 0          # size of the object vocabulary
    familiarity_dim: int = 0       # familiarity references: projected dimensions,
    familiarity_references: int = 0  # how many training photos,
    familiarity_calibration: int = 0  # and how many held-out photos calibrate it
    familiarity_worlds: int = 0    # 1: each reference photo says whether its world is known from text only
    concepts: int = 0              # visual concepts learned from captions (concepts.py; 0: none)
    detector: int = 0              # the COCO detector's summary of a photo (detector.summary; 0: no detector)
    dropout: float = field(default=0.5, metadata={"weights": False})


@dataclass
class DecodingConfig:
    """How captions are decoded unless the caller says otherwise."""

    beam_size: int = 5
    length_alpha: float = 1.0      # beam search length normalisation exponent
    max_length: int = 20
    min_object_prob: float = 0.0   # objects the classifier is less sure of are never copied
    require_object_prob: float | None = None  # the top object, when this sure of it, must be in the caption
    objects_only_below: float | None = None  # photos less familiar than this are described from their objects alone
    text_world_above: float | None = None  # ... and photos whose nearest reference photos are mostly of
    #                                         scenes known from caption text alone (familiarity.text_world)
    person_below: float | None = None  # the previous release's person ban (no person words when the concept
    #                                    detectors' surest person word is below this); models with the COCO
    #                                    detector use ``person_score`` and the caption rules instead
    person_score: float | None = None  # a caption may name or describe a person only when the detector's best
    #                                    person box scores at least this (rules.py; None: no person rule)
    rules: bool = False  # no word pair twice, no modifier without its noun (rules.py)
    require_detected: float | None = None  # the detector's surest object (no person), when this sure of it,
    #                                        must be named (any word naming its category; with the top object)
    block_ngram: int = 0  # no caption repeats an n-gram of this length ("a cup of coffee and a cup of coffee"; 0: off)
    ground_detector: bool = False  # grounding reads the COCO detector alone (not the concept detectors too)
    ground_weight: float = 0.0  # a word naming a COCO category gets + ground_weight * log p, p the concept
    #                             detectors' surest word for that category (0: off; see CaptionNetwork.grounding)


@dataclass
class CaptionResult:
    caption: str
    words: list[str]
    probabilities: list[float]
    score: float = 0.0
    objects: list[dict] = field(default_factory=list)  # [{"word", "probability"}], most probable first
    familiarity: float | None = None
    attention: list[list[float]] | None = None         # per word, weights over the grid (row-major)
    grid: tuple[int, int] | None = None
    boxes: list[dict] | None = None                     # the COCO detector's boxes (detector.Boxes.to_list)

    def to_dict(self) -> dict:
        out = {"caption": self.caption, "words": self.words, "probabilities": self.probabilities,
               "objects": self.objects, "familiarity": self.familiarity}
        if self.attention is not None:
            out.update(attention=self.attention, attention_grid=list(self.grid))
        if self.boxes is not None:
            out["boxes"] = self.boxes
        return out


class FeatureProjection(nn.Module):
    """Encoder features -> the decoder's space (Show and Tell's W_I)."""

    def __init__(self, feature_dim: int, embed_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.linear = nn.Linear(feature_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(self.norm(features)))


@dataclass
class CategoryIndex:
    """Which caption words name which COCO category, and which concepts do: ``word_category``
    (vocab,) the category of each word (-1: none), ``concepts`` each category's concept
    indices, ``person`` the person category's index (-1: no person concept)."""

    word_category: torch.Tensor
    concepts: list[torch.Tensor]
    person: int
    names: list[str] = field(default_factory=list)  # each category's COCO name


def category_indices(vocab: Vocabulary, concept_words: Sequence[str]) -> CategoryIndex | None:
    """The COCO categories (``objects.coco_synonyms``) that both the vocabulary and the
    concepts name; None when no concept names one."""
    from captioner.objects import coco_synonyms

    category_of = {p[0]: c for p, c in coco_synonyms().items() if len(p) == 1}
    by_category: dict[str, list[int]] = {}
    for i, w in enumerate(concept_words):
        if w in category_of:
            by_category.setdefault(category_of[w], []).append(i)
    if not by_category:
        return None
    order = {c: k for k, c in enumerate(by_category)}
    word_category = torch.tensor([order.get(category_of.get(w, ""), -1) for w in vocab.words])
    return CategoryIndex(word_category, [torch.tensor(v) for v in by_category.values()], order.get("person", -1),
                         list(by_category))


def category_tokens(vocab: Vocabulary) -> torch.Tensor:
    """(80, S) for each COCO category the vocabulary's single words that name it ("giraffe",
    "giraffes"; ``objects.coco_synonyms``), padded with -1."""
    from captioner.objects import coco_synonyms

    column = {c: i for i, c in enumerate(coco_categories())}
    words: list[list[int]] = [[] for _ in range(80)]
    for phrase, category in coco_synonyms().items():
        if len(phrase) == 1 and phrase[0] in vocab.index:
            words[column[category]].append(vocab.index[phrase[0]])
    table = torch.full((80, max(1, max(map(len, words)))), -1, dtype=torch.long)
    for c, ids in enumerate(words):
        table[c, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return table


class CaptionNetwork(nn.Module):
    """Every trained weight of a captioner, and what it computes from the encoder's output:
    the feature projection, the object detector, the concept detectors, familiarity, and
    the LSTM decoder. A checkpoint holds exactly this module's state."""

    def __init__(self, config: CaptionerConfig, vocab: Vocabulary):
        super().__init__()
        self.config = config
        self.projection = FeatureProjection(config.feature_dim, config.embed_dim, config.dropout)
        self.objects = (ObjectDetector(config.feature_dim, config.object_words, config.object_slots)
                        if config.object_slots else None)
        self.familiarity = (Familiarity(config.feature_dim, config.familiarity_dim, config.familiarity_references,
                                        config.familiarity_calibration, worlds=bool(config.familiarity_worlds))
                            if config.familiarity_references else None)
        self.concepts = ConceptDetector(config.feature_dim, config.concepts) if config.concepts else None
        # set by the Captioner, which knows the words (``category_indices``, ``category_tokens``)
        self.categories: CategoryIndex | None = None
        self.category_tokens: torch.Tensor | None = None
        self.object_tokens: torch.Tensor | None = None  # each object word's vocabulary id (-1: none)
        self.object_category: torch.Tensor | None = None  # each object word's grounding category (-1: none)
        self.concept_projection = nn.Linear(config.concepts, config.embed_dim) if config.concepts else None
        self.detector_projection = None
        if config.detector:  # starts at zero: a model extended with the detector starts as it was
            self.detector_projection = nn.Linear(config.detector, config.embed_dim)
            nn.init.zeros_(self.detector_projection.weight)
            nn.init.zeros_(self.detector_projection.bias)
        kwargs = {}
        if config.decoder == "attention":
            self.grid_projection = FeatureProjection(config.feature_dim, config.grid_dim, config.dropout)
            kwargs = {"grid_dim": config.grid_dim, "attention_dim": config.attention_dim}
        elif config.decoder not in DECODERS:
            raise CheckpointError(f"unknown decoder {config.decoder!r}; choose one of {', '.join(DECODERS)}")
        self.decoder = DECODERS[config.decoder](
            len(vocab), config.embed_dim, config.hidden_dim, config.num_layers, config.dropout,
            pad_id=vocab.pad_id, start_id=vocab.start_id, end_id=vocab.end_id, unk_id=vocab.unk_id,
            object_slots=config.object_slots, object_dim=config.feature_dim, **kwargs)

    @property
    def attends(self) -> bool:
        return self.config.decoder == "attention"

    @property
    def inference_decoder(self) -> nn.Module:
        """The decoder that captions: the int8 copy after ``use_int8`` (while this module is
        in eval mode), else the decoder itself."""
        fast = self.__dict__.get("_int8_decoder")
        return fast if fast is not None and not self.training else self.decoder

    def use_int8(self, on: bool = True) -> None:
        """Caption with int8 copies of the decoder's matrices (dynamic quantization, one
        scale per output row; the CPU's int8 kernels read a quarter of the bytes, and at
        batch 1 to 10 a decoder step is bound by reading its weights). The float weights
        stay what is trained and saved; call again after changing them."""
        if not on:
            self.__dict__.pop("_int8_decoder", None)
            return
        import copy
        import warnings

        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # torch marks its eager quantization API as moving to torchao
            warnings.simplefilter("ignore")
            fast = quantize_dynamic(copy.deepcopy(self.decoder).cpu().eval(), {nn.Linear: per_channel_dynamic_qconfig},
                                    dtype=torch.qint8)
        self.__dict__["_int8_decoder"] = fast  # not a submodule: checkpoints keep the float weights

    def grounding(self, concepts: torch.Tensor, decoding: DecodingConfig, boxes: torch.Tensor | None = None,
                  detections: Detections | None = None) -> torch.Tensor | None:
        """(B, vocab) additions to the words' scores that tie the words naming a COCO
        category to what the detectors see: ``ground_weight * log p`` (p: the surest concept
        of the word's category, or the COCO detector's score), and -inf for person words when
        the surest person concept is below ``person_below`` (the previous release's ban). An
        object slot whose word names a category ("dog" from the ImageNet classifier) is
        grounded like the word itself (models with the COCO detector). None when nothing is asked for."""
        index = self.categories
        if not decoding.ground_weight and decoding.person_below is None:
            return None
        groups = torch.stack([concepts[:, c].amax(1) for c in index.concepts], 1)  # (B, categories)
        if boxes is not None:  # the detector's evidence too: the surer of the two, or the detector's alone
            column = {name: i for i, name in enumerate(coco_categories())}
            detected = category_scores(boxes)[:, [column[n] for n in index.names]].to(groups.dtype)
            groups = detected.clamp_min(0.02) if decoding.ground_detector else torch.maximum(groups, detected)
        word_category = index.word_category.to(concepts.device)
        has = word_category >= 0
        bias = concepts.new_zeros(len(concepts), len(word_category))
        if decoding.ground_weight:
            picked = groups[:, word_category.clamp_min(0)].clamp_min(1e-6).log()
            bias = torch.where(has[None, :], decoding.ground_weight * picked, bias)
            if detections is not None and boxes is not None and self.object_category is not None:
                slot_category = self.object_category.to(concepts.device)[detections.words]  # (B, K)
                slot = groups.gather(1, slot_category.clamp_min(0)).clamp_min(1e-6).log()
                first = bias.shape[1] - slot_category.shape[1]
                bias[:, first:] = torch.where(slot_category >= 0, decoding.ground_weight * slot, 0.0)
        if decoding.person_below is not None and index.person >= 0:
            unlikely = groups[:, index.person] < decoding.person_below
            person_words = word_category == index.person
            bias = bias.masked_fill(unlikely[:, None] & person_words[None, :], float("-inf"))
        return bias

    @property
    def needs_grid(self) -> bool:
        """Whether captioning needs the encoder's grid (attention, or concept detectors)."""
        return self.attends or self.concepts is not None

    def context(self, features: torch.Tensor, grid: torch.Tensor | None = None, min_object_prob: float = 0.0,
                swap: torch.Tensor | None = None, objects_only: torch.Tensor | None = None,
                detections: Detections | None = None, concepts: torch.Tensor | None = None,
                boxes: torch.Tensor | None = None) -> tuple[Context, Detections | None]:
        """The decoder's per-image context from pooled features (B, D) and, for attention,
        the grid (B, L, D). ``swap`` (B, K): object words whose vectors the copy scores see
        instead of the detected ones', where they are >= 0 (a training augmentation: the
        decoder learns to copy an object whatever it is; see ``train_captioner``).
        ``objects_only`` (B,) bool: images described from their objects alone, without the
        projected features or the grid (trained as a dropout; at inference, the photos too
        unlike the training photos for those to mean anything, see ``DecodingConfig``).
        ``detections`` and ``concepts`` (B, C): given instead of detected (training on
        captions without photos gives them; ``concepts.ConceptNoise``). ``boxes`` (B, 240): the
        COCO detector's summary of each photo (``detector.summary``; a text row's is drawn
        as the detector would give it, ``training.DetectorNoise``)."""
        features = features.float()
        image = self.projection(features)
        keep = None if objects_only is None else (~objects_only).to(image.dtype)
        if keep is not None:
            image = image * keep[:, None]
        ctx: Context = {}
        if self.objects is not None:
            detections = self.objects(features) if detections is None else detections
            image = image + self._object_context(ctx, detections, min_object_prob, swap)
        if self.concepts is not None:
            if concepts is None:
                concepts = self.concepts(self._require(grid, "the concept detectors"))
            ctx["concepts"] = concepts
            image = image + self.concept_projection(concepts)
        if self.detector_projection is not None:
            boxes = self._require(boxes, "models with the COCO detector").float()
            ctx["boxes"] = boxes
            image = image + self.detector_projection(boxes)
        ctx["image"] = image
        if self.attends:
            ctx["grid"] = self.grid_projection(self._require(grid, "the attention decoder").float())
            if keep is not None:
                ctx["grid"] = ctx["grid"] * keep[:, None, None]
        return ctx, detections

    def _object_context(self, ctx: Context, detections: Detections, min_object_prob: float,
                        swap: torch.Tensor | None) -> torch.Tensor:
        """Put the object slots' context in ``ctx``; return the objects' share of the image."""
        probs = detections.probs.masked_fill(detections.probs < min_object_prob, 0.0)
        ctx.update(self.decoder.slots.context(self.objects.word_vectors[detections.words], probs))
        if swap is not None:
            swapped = torch.where(swap >= 0, swap, detections.words)
            ctx["objects_key"] = self.decoder.slots.context(self.objects.word_vectors[swapped], probs)["objects"]
        if min_object_prob > 0:
            ctx["objects_logp"] = ctx["objects_logp"].masked_fill(probs == 0, float("-inf"))
        return (probs[..., None] * ctx["objects"]).sum(1)

    def _required(self, detections: Detections | None, boxes: torch.Tensor | None,
                  decoding: DecodingConfig) -> torch.Tensor | None:
        """(B, S) the words of which each caption must hold one (-1: none; None: no image
        has any): the top object's slot when the classifier is sure of it, and every word
        naming the detector's surest category (no person) when the detector is."""
        parts = []
        if detections is not None and decoding.require_object_prob is not None:
            sure = detections.probs[:, 0] >= decoding.require_object_prob
            parts.append(torch.where(sure, self.decoder.first_slot, -1)[:, None])
        if boxes is not None and decoding.require_detected is not None and self.category_tokens is not None:
            scores = category_scores(boxes).clone()
            scores[:, PERSON] = 0.0
            best, category = scores.max(1)
            words = self.category_tokens.to(boxes.device)[category]
            parts.append(words.masked_fill((best < decoding.require_detected)[:, None], -1))
        if not parts:
            return None
        required = torch.cat(parts, 1)
        return required if bool((required >= 0).any()) else None

    @staticmethod
    def _require(grid: torch.Tensor | None, who: str) -> torch.Tensor:
        if grid is None:
            raise ValueError(f"{who} need the encoder's grid features" if "detector" not in who
                             else f"{who} need the detector's boxes")
        return grid

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                grid: torch.Tensor | None = None, swap: torch.Tensor | None = None,
                objects_only: torch.Tensor | None = None, detections: Detections | None = None,
                concepts: torch.Tensor | None = None, boxes: torch.Tensor | None = None):
        """Teacher forcing: (packed logits, attention weights or None)."""
        ctx, _ = self.context(features, grid, swap=swap, objects_only=objects_only, detections=detections,
                              concepts=concepts, boxes=boxes)
        return self.decoder(captions, lengths, ctx)

    def decode(self, features: torch.Tensor, decoding: DecodingConfig, grid: torch.Tensor | None = None,
               familiarity: torch.Tensor | None = None,
               text_world: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               rules: CaptionRules | None = None) -> tuple[list[Decoded], Detections | None, Context]:
        objects_only = None
        if decoding.objects_only_below is not None and familiarity is not None and self.objects is not None:
            objects_only = familiarity < decoding.objects_only_below
        if decoding.text_world_above is not None and text_world is not None and self.objects is not None:
            by_world = text_world >= decoding.text_world_above
            objects_only = by_world if objects_only is None else objects_only | by_world
        ctx, detections = self.context(features, grid, decoding.min_object_prob, objects_only=objects_only,
                                       boxes=boxes)
        if "concepts" in ctx and self.categories is not None:
            bias = self.grounding(ctx["concepts"], decoding, ctx.get("boxes"), detections)
            if bias is not None:
                ctx["word_bias"] = bias
        required = self._required(detections, ctx.get("boxes"), decoding)
        decoder = self.inference_decoder
        constraints = None
        if rules is not None and (decoding.rules or decoding.person_score is not None):
            person_ok = None
            if decoding.person_score is not None and "boxes" in ctx:
                person_ok = category_scores(ctx["boxes"])[:, PERSON] >= decoding.person_score
            slot_words = None
            if detections is not None and self.object_tokens is not None:
                slot_words = self.object_tokens.to(detections.words.device)[detections.words]
            constraints = search.Constraints(rules, person_ok, decoding.rules, slot_words)
        if decoding.beam_size == 1 and required is None:
            decoded = search.greedy(decoder, ctx, decoding.max_length, decoding.block_ngram, constraints)
        else:
            decoded = search.beam_search(decoder, ctx, decoding.beam_size, decoding.max_length,
                                         decoding.length_alpha, must_include=required,
                                         block_ngram=decoding.block_ngram, constraints=constraints)
        return decoded, detections, ctx




class Captioner(nn.Module):
    def __init__(self, config: CaptionerConfig, vocab: Vocabulary, encoder: ImageEncoder | None = None, *,
                 decoding: DecodingConfig | None = None, object_words: Sequence[str] = (),
                 concept_words: Sequence[str] = ()):
        super().__init__()
        if config.vocab_size != len(vocab):
            raise CheckpointError(f"the config expects {config.vocab_size} words, the vocabulary has {len(vocab)}")
        if config.object_words != len(object_words):
            raise CheckpointError(f"the config expects {config.object_words} object words, got {len(object_words)}")
        if config.concepts != len(concept_words):
            raise CheckpointError(f"the config expects {config.concepts} concept words, got {len(concept_words)}")
        self.config, self.vocab = config, vocab
        self.decoding = decoding or DecodingConfig()
        self.object_words = list(object_words)
        self.concept_words = list(concept_words)
        self.network = CaptionNetwork(config, vocab)
        self.network.categories = category_indices(vocab, self.concept_words)
        self.rules = CaptionRules(vocab.words, vocab.end_id)
        if config.detector:
            self.network.category_tokens = category_tokens(vocab)
        self.network.object_tokens = torch.tensor([vocab.index.get(w, -1) for w in self.object_words],
                                                  dtype=torch.long) if self.object_words else None
        if self.object_words and self.network.categories is not None:
            from captioner.objects import coco_synonyms

            order = {c: k for k, c in enumerate(self.network.categories.names)}
            named = coco_synonyms()
            self.network.object_category = torch.tensor(
                [order.get(named.get(tuple(w.split()), ""), -1) for w in self.object_words], dtype=torch.long)
        self.detector = None  # the COCO detector (detector.shipped_detector), loaded when a photo needs it
        self.encoder = encoder
        self.provenance: dict[str, str] = {}
        if encoder is not None and encoder.feature_dim != config.feature_dim:
            raise CheckpointError(f"encoder {encoder.name} gives {encoder.feature_dim}-d features, "
                                  f"the decoder was trained on {config.feature_dim}-d features")

    @classmethod
    def new(cls, config: CaptionerConfig, vocab: Vocabulary, encoder: ImageEncoder, *,
            decoding: DecodingConfig | None = None, train_features: torch.Tensor | None = None,
            held_out_features: torch.Tensor | None = None, familiarity_dim: int = 128,
            text_world: torch.Tensor | None = None, concept_words: Sequence[str] = ()) -> Captioner:
        """A fresh captioner to train: its detector copies the encoder's ImageNet classifier
        (with ``config.object_slots``), and its familiarity references are
        ``train_features`` (``text_world``: which of them are photos of scenes known from
        caption text alone), calibrated on ``held_out_features`` (when both are given).
        ``concept_words``: the concepts its detectors will learn (``concepts.py``). The
        caller's config is left as it is."""
        from captioner.objects import object_vocabulary

        object_words, class_word = object_vocabulary() if config.object_slots else ([], None)
        if config.object_slots and encoder.classifier is None:
            raise CheckpointError(f"{encoder.name} has no ImageNet classifier to find objects with")
        familiarity = None
        config = replace(config, feature_dim=encoder.feature_dim, vocab_size=len(vocab),
                         object_words=len(object_words), concepts=len(concept_words))
        if train_features is not None and held_out_features is not None and familiarity_dim:
            familiarity = Familiarity.fit(train_features, held_out_features, familiarity_dim, text_world=text_world)
            config = replace(config, familiarity_dim=familiarity.basis.shape[1],
                             familiarity_references=len(familiarity.reference),
                             familiarity_calibration=len(familiarity.calibration),
                             familiarity_worlds=int(text_world is not None))
        model = cls(config, vocab, decoding=decoding, object_words=object_words, concept_words=concept_words)
        if config.object_slots:
            model.network.objects.fill(encoder.classifier, class_word)
        if familiarity is not None:
            model.network.familiarity.load_state_dict(familiarity.state_dict())
        model.provenance["encoder_weights_id"] = encoder.weights_id
        return model

    @torch.no_grad()
    def detected_object_words(self, features: torch.Tensor, batch_size: int = 1024) -> list[list[str]]:
        """The object words of each image's slots, most probable first (none without slots)."""
        if self.network.objects is None:
            return [[] for _ in range(len(features))]
        words = torch.cat([self.network.objects(features[i:i + batch_size].float()).words
                           for i in range(0, len(features), batch_size)]) if len(features) else []
        return [[self.object_words[w] for w in row] for row in words.tolist()]

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def caption_features(self, features: torch.Tensor, beam_size: int | None = None,
                         max_length: int | None = None, length_alpha: float | None = None,
                         grid: torch.Tensor | None = None, boxes: Sequence[Boxes] | None = None
                         ) -> list[CaptionResult]:
        """Captions of precomputed encoder features (B, feature_dim) (and, for attention,
        grid features (B, L, feature_dim)); ``boxes``: each photo's COCO detections (models
        with the detector need them)."""
        self.network.eval()
        d = self.decoding
        decoding = replace(d, beam_size=beam_size or d.beam_size, max_length=max_length or d.max_length,
                           length_alpha=d.length_alpha if length_alpha is None else length_alpha)
        features = features.to(self.device)
        grid = None if grid is None else grid.to(self.device)
        familiar = text_world = None
        if self.network.familiarity is not None:
            familiar, text_world = self.network.familiarity.score(features)
        if self.config.detector and boxes is None:
            raise ValueError("this captioner needs the COCO detector's boxes of each photo")
        summaries = summary(list(boxes)).to(self.device) if self.config.detector else None
        decoded, detections, ctx = self.network.decode(features, decoding, grid if self.network.needs_grid else None,
                                                    familiar, text_world, summaries, self.rules)
        n = len(decoded)
        familiarity = familiar.tolist() if familiar is not None else [None] * n
        objects = ([[{"word": self.object_words[w], "probability": round(p, 4), "kind": "object"}
                     for w, p in zip(ws, ps)]
                    for ws, ps in zip(detections.words.tolist(), detections.probs.tolist())]
                   if detections is not None else [[] for _ in range(n)])
        if "concepts" in ctx:
            for row, probs in zip(objects, ctx["concepts"].tolist()):
                row += self._concepts(probs)
        grid_size = None
        if grid is not None and self.network.attends:
            side = int(round(grid.shape[1] ** 0.5))
            grid_size = (side, grid.shape[1] // side)
        results = [self._result(*row, grid_size) for row in zip(decoded, objects, familiarity)]
        if boxes is not None:
            person_ok = [True] * n
            if decoding.person_score is not None and summaries is not None:
                person_ok = (category_scores(summaries)[:, PERSON] >= decoding.person_score).tolist()
            for result, photo, ok in zip(results, boxes, person_ok):
                self._add_boxes(result, photo, ok, decoding.rules or decoding.person_score is not None)
        return results

    @staticmethod
    def _add_boxes(result: CaptionResult, photo: Boxes, person_ok: bool, rules: bool) -> None:
        """The detector's objects in the result; a caption that breaks a rule (none should
        get through the search) becomes the detector's objects alone (say less, never nonsense)."""
        result.boxes = photo.to_list(DETECTED)
        counts = photo.counts(DETECTED)
        best = {}
        for b in result.boxes:
            best.setdefault(b["category"], b["score"])
        result.objects += [{"word": c, "probability": p, "kind": "detected", "count": counts.get(c, 1)}
                           for c, p in best.items()]
        if rules and (not result.words or problems(result.words, person_ok)):
            words = describe_objects(counts, person_ok) or (["a", "photo"] if not result.words else None)
            if words is not None:
                log.info("caption %r broke a rule; said %r instead", result.caption, " ".join(words))
                result.caption, result.words = " ".join(words), words
                result.probabilities, result.attention = [0.0] * len(words), None

    def _concepts(self, probs: Sequence[float], min_prob: float = 0.5, most: int = 10) -> list[dict]:
        """The concepts the detectors are sure of, most probable first."""
        ranked = sorted(((p, w) for w, p in zip(self.concept_words, probs) if p >= min_prob), reverse=True)[:most]
        return [{"word": w, "probability": round(p, 4), "kind": "concept"} for p, w in ranked]

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image], beam_size: int | None = None,
                max_length: int | None = None) -> list[CaptionResult]:
        """Captions of RGB PIL images, all in one batch."""
        if not images:
            return []
        batch = self.require_encoder().preprocess.batch(list(images))
        boxes = self.require_detector().detect(list(images)) if self.config.detector else None
        return self.caption_tensors(batch, beam_size, max_length, boxes=boxes)

    def caption_tensors(self, batch: torch.Tensor, beam_size: int | None = None,
                        max_length: int | None = None, boxes: Sequence[Boxes] | None = None) -> list[CaptionResult]:
        """Captions of images already preprocessed by ``encoder.preprocess`` (B, 3, H, W),
        with their COCO detections (``boxes``; models with the detector need them)."""
        encoder = self.require_encoder()
        if self.network.needs_grid:
            pooled, grid = encoder.encode(batch, grid=True)
            return self.caption_features(pooled, beam_size, max_length, grid=grid, boxes=boxes)
        return self.caption_features(encoder.encode(batch), beam_size, max_length, boxes=boxes)

    def prepare(self, image: Image.Image) -> tuple[torch.Tensor, tuple | None]:
        """One photo made ready for ``caption_prepared``: the encoder's input and (models with
        the detector) the detector's, so that callers can prepare photos in parallel."""
        detector = self.require_detector()
        return self.require_encoder().preprocess(image), None if detector is None else detector.prepare(image)

    def caption_prepared(self, items: Sequence[tuple[torch.Tensor, tuple | None]], beam_size: int | None = None,
                         max_length: int | None = None) -> list[CaptionResult]:
        """Captions of photos made ready by ``prepare``, in one batch."""
        if not items:
            return []
        batch = torch.stack([tensor for tensor, _ in items])
        boxes = None
        if self.config.detector:
            boxes = self.require_detector().detect_prepared([d[0] for _, d in items], [d[1] for _, d in items])
        return self.caption_tensors(batch, beam_size, max_length, boxes=boxes)

    def require_detector(self):
        """The COCO detector, loaded on first use (None for a model without one)."""
        if self.detector is None and self.config.detector:
            from captioner.detector import shipped_detector

            self.detector = shipped_detector()
        return self.detector

    def require_encoder(self) -> ImageEncoder:
        if self.encoder is None:
            self.encoder = build_encoder(self.config.encoder, device=self.device)
        return self.encoder

    def _result(self, decoded: Decoded, objects: list[dict], familiarity: float | None,
                grid: tuple[int, int] | None) -> CaptionResult:
        names = [o["word"] for o in objects]
        words, probs, attention = [], [], [] if decoded.attention is not None else None
        for n, i in enumerate(decoded.ids):  # ids hold no <start>/<pad>/<end>: probabilities align
            had = len(words)
            phrase = self._phrase(i, names, words)
            if len(words) < had:  # an article dropped before a mass noun
                del probs[-1]
                if attention is not None:
                    del attention[-1]
            words += phrase
            probs += [round(decoded.probabilities[n], 6)] * len(phrase)
            if attention is not None:
                attention += [[round(a, 5) for a in decoded.attention[n]]] * len(phrase)
        return CaptionResult(" ".join(words), words, probs, decoded.score, objects,
                             None if familiarity is None else round(familiarity, 4), attention, grid)

    def _phrase(self, token: int, objects: Sequence[str], before: list[str]) -> list[str]:
        """The word(s) of one token: a slot is its object's word, with the article before
        it corrected for that word (``vocabulary.fix_article``)."""
        first_slot = self.network.decoder.first_slot
        if token < first_slot:
            return [self.vocab.words[token]]
        phrase = objects[token - first_slot].split()
        fix_article(before, phrase)
        return phrase

    def words_of(self, ids: Sequence[int], objects: Sequence[str]) -> list[str]:
        """The words of a token sequence (``<start> ... <end> <pad>...`` or bare) for an
        image whose detected object words are ``objects``."""
        words: list[str] = []
        for i in ids:
            if i == self.vocab.end_id:
                break
            if i not in (self.vocab.start_id, self.vocab.pad_id):
                words += self._phrase(i, objects, words)
        return words

    # ---------------------------------------------------------------- checkpoints

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None,
             metadata: dict[str, str] | None = None) -> None:
        """Weights, with the config, decoding defaults, vocabulary, object words and
        provenance (and any extra string ``metadata``) in the file's metadata."""
        provenance = dict(self.provenance)
        if self.encoder is not None:
            provenance["encoder_weights_id"] = self.encoder.weights_id
        save_model(path, "captioner", self.config, self.network.state_dict(),
                   {**(metadata or {}), "vocabulary": self.vocab.to_json(),
                    "decoding": json.dumps(asdict(self.decoding)), "object_words": json.dumps(self.object_words),
                    "concept_words": json.dumps(self.concept_words),
                    "provenance": json.dumps(provenance)}, dtype=dtype)

    @staticmethod
    def _settings(meta: dict[str, str], path) -> tuple[CaptionerConfig, DecodingConfig]:
        try:
            config = config_from_dict(CaptionerConfig, json.loads(meta["config"]), path)
            decoding = config_from_dict(DecodingConfig, json.loads(meta.get("decoding", "{}")), path)
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path} has unreadable metadata ({err})") from err
        return config, decoding

    @classmethod
    def read_settings(cls, path: str | os.PathLike = DEFAULT_CHECKPOINT) -> tuple[CaptionerConfig, DecodingConfig]:
        """A checkpoint's config and default decoding, from its metadata alone (cheap)."""
        return cls._settings(read_metadata(path), path)

    @classmethod
    def read_config(cls, path: str | os.PathLike = DEFAULT_CHECKPOINT) -> CaptionerConfig:
        return cls.read_settings(path)[0]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike = DEFAULT_CHECKPOINT, *, encoder: ImageEncoder | None = None,
                        encoder_weights: str | None = None, load_encoder: bool = True,
                        device: torch.device | str = "cpu", int8: bool = False, precision: str = "auto") -> Captioner:
        """Rebuild a captioner from its checkpoint on ``device`` (``devices.resolve_device``
        turns ``auto`` into one). The encoder is rebuilt by name (``encoder_weights`` may
        point at a local weights file) unless one is given or ``load_encoder`` is False (for
        work on cached features). ``int8``: on the CPU, caption with int8 decoder matrices
        (``CaptionNetwork.use_int8``), as the app and the command line do. ``precision``: the
        encoder's (``devices.choose_precision``: auto, fp32 or bf16)."""
        device = torch.device(device)
        _, tensors, meta = load_model(path, "captioner")
        config, decoding = cls._settings(meta, path)
        try:
            vocab = Vocabulary.from_json(meta["vocabulary"])
            object_words = json.loads(meta.get("object_words", "[]"))
            concept_words = json.loads(meta.get("concept_words", "[]"))
            provenance = json.loads(meta.get("provenance", "{}"))
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path} has unreadable metadata ({err})") from err
        if encoder is None and load_encoder:
            encoder = build_encoder(config.encoder, encoder_weights, device=device, precision=precision)
        if encoder is not None and encoder.name != config.encoder:
            raise CheckpointError(f"{path} was trained on {config.encoder} features, not {encoder.name}")
        model = cls(config, vocab, encoder, decoding=decoding, object_words=object_words,
                    concept_words=concept_words)
        model.provenance = provenance
        load_state_strict(model.network, tensors, path)
        model.network.to(device).eval()
        if int8 and device.type == "cpu":
            model.network.use_int8()
        trained_on = provenance.get("encoder_weights_id")
        if encoder is not None and trained_on and encoder.weights_id != trained_on:
            log.warning("%s was trained with encoder weights %s but runs with %s", path, trained_on, encoder.weights_id)
        return model
