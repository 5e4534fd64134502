"""Captioner = image encoder + projection + LSTM decoder + vocabulary.

    upload -> images.load_image -> encoder.preprocess -> encoder (bf16, channels_last)
           -> projection -> decoder (greedy or beam) -> vocabulary.decode -> CaptionResult

Only the projection and the decoder are trained and saved; the checkpoint names the
encoder, which is rebuilt from its own source (torchvision, or the packaged Lite0 weights).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from captioner.checkpoint import CheckpointError, config_from_dict, load_model, load_state_strict, save_model
from captioner.decoder import CaptionDecoder, Decoded
from captioner.encoders import ImageEncoder, build_encoder
from captioner.vocabulary import Vocabulary

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "captioner.safetensors"


@dataclass
class CaptionerConfig:
    encoder: str = "efficientnet_lite0"
    feature_dim: int = 1280
    vocab_size: int = 0
    embed_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.5
    max_length: int = 20
    beam_size: int = 3          # the default for callers that do not choose
    length_alpha: float = 1.0   # beam search length normalisation exponent
    encoder_weights_id: str = ""  # which encoder weights the decoder was trained on


@dataclass
class CaptionResult:
    caption: str
    words: list[str]
    probabilities: list[float]
    score: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"caption": self.caption, "words": self.words, "probabilities": self.probabilities}


class FeatureProjection(nn.Module):
    """Encoder features -> the decoder's word-embedding space (Show and Tell's W_I)."""

    def __init__(self, feature_dim: int, embed_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.linear = nn.Linear(feature_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(self.norm(features)))


class CaptionHead(nn.Module):
    """The trained part: projection + decoder. What checkpoints hold."""

    def __init__(self, config: CaptionerConfig, vocab: Vocabulary):
        super().__init__()
        self.projection = FeatureProjection(config.feature_dim, config.embed_dim, config.dropout)
        self.decoder = CaptionDecoder(len(vocab), config.embed_dim, config.hidden_dim,
                                      config.num_layers, config.dropout,
                                      pad_id=vocab.pad_id, start_id=vocab.start_id, end_id=vocab.end_id,
                                      unk_id=vocab.unk_id)

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.projection(features), captions, lengths)

    def decode(self, features: torch.Tensor, beam_size: int, max_length: int, length_alpha: float) -> list[Decoded]:
        embeddings = self.projection(features)
        if beam_size == 1:
            return self.decoder.greedy(embeddings, max_length)
        return self.decoder.beam_search(embeddings, beam_size, max_length, length_alpha)


class Captioner(nn.Module):
    def __init__(self, config: CaptionerConfig, vocab: Vocabulary, encoder: ImageEncoder | None = None):
        super().__init__()
        if config.vocab_size != len(vocab):
            raise CheckpointError(f"the config expects {config.vocab_size} words, the vocabulary has {len(vocab)}")
        self.config, self.vocab = config, vocab
        self.head = CaptionHead(config, vocab)
        self.encoder = encoder
        if encoder is not None and encoder.feature_dim != config.feature_dim:
            raise CheckpointError(f"encoder {encoder.name} gives {encoder.feature_dim}-d features, "
                                  f"the decoder was trained on {config.feature_dim}-d features")

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def caption_features(self, features: torch.Tensor, beam_size: int | None = None,
                         max_length: int | None = None, length_alpha: float | None = None) -> list[CaptionResult]:
        """Captions of precomputed encoder features (B, feature_dim)."""
        self.head.eval()
        cfg = self.config
        decoded = self.head.decode(features.float(), beam_size or cfg.beam_size, max_length or cfg.max_length,
                                   cfg.length_alpha if length_alpha is None else length_alpha)
        return [self._result(d) for d in decoded]

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image], beam_size: int | None = None,
                max_length: int | None = None) -> list[CaptionResult]:
        """Captions of RGB PIL images, all in one batch."""
        if not images:
            return []
        return self.caption_tensors(self.require_encoder().preprocess.batch(list(images)), beam_size, max_length)

    def caption_tensors(self, batch: torch.Tensor, beam_size: int | None = None,
                        max_length: int | None = None) -> list[CaptionResult]:
        """Captions of images already preprocessed by ``encoder.preprocess`` (B, 3, H, W)."""
        return self.caption_features(self.require_encoder().encode(batch), beam_size, max_length)

    def caption_batches(self, images: Iterator[Image.Image], batch_size: int = 32,
                        beam_size: int | None = None) -> Iterator[CaptionResult]:
        """Captions of a stream of images, encoded and decoded ``batch_size`` at a time."""
        batch: list[Image.Image] = []
        for image in images:
            batch.append(image)
            if len(batch) == batch_size:
                yield from self.caption(batch, beam_size)
                batch = []
        if batch:
            yield from self.caption(batch, beam_size)

    def require_encoder(self) -> ImageEncoder:
        if self.encoder is None:
            self.encoder = build_encoder(self.config.encoder)
        return self.encoder

    def _result(self, decoded: Decoded) -> CaptionResult:
        words = self.vocab.decode(decoded.ids)
        # decode() drops nothing here (ids hold no <start>/<pad>/<end>), so probabilities align
        probs = [round(p, 6) for p in decoded.probabilities[: len(words)]]
        return CaptionResult(" ".join(words), words, probs, decoded.score)

    # ---------------------------------------------------------------- checkpoints

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None,
             metadata: dict[str, str] | None = None) -> None:
        """The projection and decoder weights, with config and vocabulary (and any extra
        string ``metadata``, such as where the training data was) in the file's metadata."""
        config = self.config
        if self.encoder is not None:
            config.encoder_weights_id = self.encoder.weights_id
        save_model(path, "captioner", config, self.head.state_dict(),
                   {**(metadata or {}), "vocabulary": self.vocab.to_json()}, dtype=dtype)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike = DEFAULT_CHECKPOINT, *, encoder: ImageEncoder | None = None,
                        encoder_weights: str | None = None, load_encoder: bool = True) -> Captioner:
        """Rebuild a captioner from its checkpoint on the CPU. The encoder is rebuilt by
        name (``encoder_weights`` may point at a local weights file) unless one is given
        or ``load_encoder`` is False (for work on cached features)."""
        config_dict, tensors, meta = load_model(path, "captioner")
        config = config_from_dict(CaptionerConfig, config_dict, path)
        try:
            vocab = Vocabulary.from_json(meta["vocabulary"])
        except (KeyError, ValueError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} has no readable vocabulary ({err})") from err
        if encoder is None and load_encoder:
            encoder = build_encoder(config.encoder, encoder_weights)
        if encoder is not None and encoder.name != config.encoder:
            raise CheckpointError(f"{path} was trained on {config.encoder} features, not {encoder.name}")
        model = cls(config, vocab, encoder)
        load_state_strict(model.head, tensors, path)
        model.head.eval()
        if encoder is not None and config.encoder_weights_id and encoder.weights_id != config.encoder_weights_id:
            log.warning("%s was trained with encoder weights %s but runs with %s",
                        path, config.encoder_weights_id, encoder.weights_id)
        return model

    def describe(self) -> dict:
        return {**asdict(self.config), "vocabulary": len(self.vocab)}
