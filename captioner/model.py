"""Captioner: the front that loads a checkpoint and captions photos.

    upload -> images.load_image -> encoder.preprocess -> encoder (grid + pooled)  |  the COCO detector (boxes)
           -> network.context: objects (the ImageNet classifier, as words), concepts, the detector's summary
           -> decoding.decode: constraints, grounding and the rules around search (greedy or beam)
           -> results.Writer: ids to words (slots become object words, articles fixed) -> CaptionResult

The network (``network.py``) holds every trained weight; the checkpoint also names the
encoder, which is rebuilt from its own source (torchvision, or the packaged Lite0
weights). Three kinds of settings, kept apart (as nanoGPT keeps the model's arguments
apart from how a run uses them):

- ``CaptionerConfig`` (``network.py``): what the weights are.
- ``DecodingConfig`` (``decoding.py``): how captions are decoded by default.
- provenance: which encoder weights the decoder was trained on and where the data was,
  as plain metadata.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, replace

import torch
from PIL import Image
from torch import nn

from captioner.claims import Belief, claim_table
from captioner.decoding import DecodedBatch, DecodingConfig, WordTables, decode, rescore
from captioner.detector import Boxes
from captioner.encoders import ImageEncoder, build_encoder
from captioner.familiarity import Familiarity
from captioner.inputs import PhotoInputs
from captioner.network import CaptionerConfig, CaptionNetwork
from captioner.results import DETECTED, CaptionResult, Writer, add_boxes
from captioner.search import Decoded
from captioner.vocabulary import Vocabulary
from lstmkit.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    config_from_dict,
    load_model,
    load_state_strict,
    read_metadata,
    save_model,
)

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = CHECKPOINTS / "captioner.safetensors"


class Captioner(nn.Module):
    # each result keeps the beam's finished captions, the pool the claims check chose from
    # (``CaptionResult.alternatives``; for judging every candidate: training/panel_candidates.py)
    keep_alternatives: bool = False

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
        self.tables = WordTables.of(vocab, self.object_words, self.concept_words, bool(config.detector))
        self.writer = Writer(vocab, self.network.decoder.first_slot, self.object_words, self.concept_words)
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
        ``concept_words``: the concepts its classifiers will learn (``concepts.py``). The
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

    def inputs_of(self, features: torch.Tensor, grid: torch.Tensor | None = None,
                  boxes: Sequence[Boxes] | None = None) -> PhotoInputs:
        """The bundle the network reads of these photos (``inputs.PhotoInputs``), built once:
        the encoder's outputs, the detector's summary and regions, the familiarity."""
        if self.config.detector and boxes is None:
            raise ValueError("this captioner needs the COCO detector's boxes of each photo")
        features = features.to(self.device)
        grid = None if grid is None or not self.network.needs_grid else grid.to(self.device)
        inputs = PhotoInputs.of(features, grid, boxes if self.config.detector or self.config.regions else None,
                                self.config.regions)
        if self.network.familiarity is not None:
            inputs.familiarity, inputs.text_world = self.network.familiarity.score(features)
        return inputs

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
        inputs = self.inputs_of(features, grid, boxes)
        out = decode(self.network, self.tables, inputs, decoding)
        out.captions = self._truer(out, boxes, decoding)
        grid_size = None
        if inputs.grid is not None and self.network.attends:
            side = int(round(inputs.grid.shape[1] ** 0.5))
            grid_size = (side, inputs.grid.shape[1] // side)
        familiar = inputs.familiarity
        results = self.writer.results(out.captions, out.classified,
                                      out.concepts.tolist() if out.concepts is not None else None,
                                      familiar.tolist() if familiar is not None else None, grid_size)
        if boxes is not None:
            person_ok = [True] * len(results) if out.person_ok is None else out.person_ok.tolist()
            for result, photo, ok in zip(results, boxes, person_ok):
                add_boxes(result, photo, ok, decoding.rules or decoding.person_score is not None)
        for b, alts in enumerate(out.alternatives if self.keep_alternatives and out.alternatives else []):
            names = [] if out.classified is None else [self.object_words[w] for w in out.classified.words[b].tolist()]
            results[b].alternatives = [" ".join(self.writer.words_of(d.ids, names)) for d in alts]
        return results

    def _truer(self, out: DecodedBatch, boxes: Sequence[Boxes] | None, decoding: DecodingConfig) -> list[Decoded]:
        """The captions with what they may not claim taken back (``Writer.truest``: claims
        no person writes; ``Writer.ungendered``: a gender the concepts are unsure of); a
        caption changed here is scored again by the decoder (``decoding.rescore``)."""
        chosen: list[Decoded | list[int]] = list(out.captions)
        if out.alternatives is not None:
            counts = None if boxes is None else [b.counts(DETECTED) for b in boxes]
            belief = Belief(claim_table(), decoding.claims_seen, sure=decoding.actions_sure,
                            soften=decoding.claims_soften)
            chosen = self.writer.truest(out.alternatives, out.classified, out.concepts, belief, counts,
                                        decoding.claims_count)
        if decoding.gender_sure is not None and out.concepts is not None:
            for b, caption in enumerate(chosen):
                ids = caption.ids if isinstance(caption, Decoded) else caption
                neutral = self.writer.ungendered(ids, out.concepts[b], decoding.gender_sure)
                if neutral is not None:
                    chosen[b] = neutral
        redo = [b for b, c in enumerate(chosen) if not isinstance(c, Decoded)]
        if redo:
            forced = rescore(self.network, out.ctx, redo, [chosen[b] for b in redo], decoding.length_alpha)
            for b, decoded in zip(redo, forced):
                chosen[b] = decoded
        return chosen

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image], beam_size: int | None = None,
                max_length: int | None = None) -> list[CaptionResult]:
        """Captions of RGB PIL images, all in one batch."""
        if not images:
            return []
        preprocess = self.require_encoder().preprocess
        return self._caption_beside_boxes(lambda: preprocess.batch(list(images)), list(images), beam_size, max_length)

    def caption_tensors(self, batch: torch.Tensor, beam_size: int | None = None,
                        max_length: int | None = None, boxes: Sequence[Boxes] | None = None) -> list[CaptionResult]:
        """Captions of images already preprocessed by ``encoder.preprocess`` (B, 3, H, W),
        with their COCO detections (``boxes``; models with the detector need them)."""
        pooled, grid = self._encode(batch)
        return self.caption_features(pooled, beam_size, max_length, grid=grid, boxes=boxes)

    def _encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoder = self.require_encoder()
        if self.network.needs_grid:
            return encoder.encode(batch, grid=True)
        return encoder.encode(batch), None

    def _caption_beside_boxes(self, batch, photos: list, beam_size: int | None, max_length: int | None
                       ) -> list[CaptionResult]:
        """Encode ``batch()`` while the detector (models with one) finds the boxes of ``photos``
        (PIL images or ``CocoDetector.prepare``'s pairs) beside it, then decode."""
        detector = self.require_detector()
        if detector is None:
            return self.caption_tensors(batch(), beam_size, max_length)
        boxes, (pooled, grid) = detector.detect_beside(photos, lambda: self._encode(batch()))
        return self.caption_features(pooled, beam_size, max_length, grid=grid, boxes=boxes)

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
        return self._caption_beside_boxes(lambda: torch.stack([tensor for tensor, _ in items]), [d for _, d in items],
                                   beam_size, max_length)

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

    def words_of(self, ids: Sequence[int], objects: Sequence[str]) -> list[str]:
        """The words of a token sequence (``<start> ... <end> <pad>...`` or bare) for an
        image whose recognised object words are ``objects`` (``results.Writer.words_of``)."""
        return self.writer.words_of(ids, objects)


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
            decoding = DecodingConfig.from_saved(json.loads(meta.get("decoding", "{}")), path)
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
