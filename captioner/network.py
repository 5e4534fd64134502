"""The captioning network: every trained weight of a captioner, and what it computes
from the encoder's output. Weights and forward only: how captions are decoded from it is
``decoding.py``, how ids become words and results ``results.py``, the front that loads a
checkpoint and captions photos ``model.py``.

    pooled feature -> W_I (``FeatureProjection``)  + objects (the ImageNet classifier's words)
                                                    + W_C concepts + W_D the detector's summary
                   -> the decoder's initial context; the grid (attention) -> ``grid_projection``

``CaptionerConfig`` is what the weights are; ``--resume`` compares these fields only
(``dropout`` is marked as not shaping the weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from captioner.concepts import ConceptClassifier
from captioner.decoder import DECODERS, Context
from captioner.familiarity import Familiarity
from captioner.inputs import PhotoInputs
from captioner.objects import ClassifiedObjects, ImageNetClassifier
from captioner.regions import GEOMETRY, Regions, pooled
from captioner.vocabulary import Vocabulary
from lstmkit.checkpoint import CheckpointError


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
    object_slots: int = 0          # recognised objects the decoder may copy (0: none)
    object_words: int = 0          # size of the object vocabulary
    familiarity_dim: int = 0       # familiarity references: projected dimensions,
    familiarity_references: int = 0  # how many training photos,
    familiarity_calibration: int = 0  # and how many held-out photos calibrate it
    familiarity_worlds: int = 0    # 1: each reference photo says whether its world is known from text only
    concepts: int = 0              # visual concepts learned from captions (concepts.py; 0: none)
    detector: int = 0              # the COCO detector's summary of a photo (detector.summary; 0: no detector)
    regions: int = 0               # attention: the most detector boxes a word may look at besides the cells
    #                                (regions.py; 0: the cells alone)
    dropout: float = field(default=0.5, metadata={"weights": False})



class FeatureProjection(nn.Module):
    """Encoder features -> the decoder's space (Show and Tell's W_I)."""

    def __init__(self, feature_dim: int, embed_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.linear = nn.Linear(feature_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(self.norm(features)))



class CaptionNetwork(nn.Module):
    """Every trained weight of a captioner, and what it computes from the encoder's output:
    the feature projection, the object detector, the concept classifiers, familiarity, and
    the LSTM decoder. A checkpoint holds exactly this module's state."""

    def __init__(self, config: CaptionerConfig, vocab: Vocabulary):
        super().__init__()
        self.config = config
        self.projection = FeatureProjection(config.feature_dim, config.embed_dim, config.dropout)
        self.objects = (ImageNetClassifier(config.feature_dim, config.object_words, config.object_slots)
                        if config.object_slots else None)
        self.familiarity = (Familiarity(config.feature_dim, config.familiarity_dim, config.familiarity_references,
                                        config.familiarity_calibration, worlds=bool(config.familiarity_worlds))
                            if config.familiarity_references else None)
        self.concepts = ConceptClassifier(config.feature_dim, config.concepts) if config.concepts else None
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
            if config.regions:  # a box's entry: its pooled feature (grid_projection) + its category + its place
                self.region_category = nn.Embedding(80, config.grid_dim)
                self.region_geometry = nn.Linear(GEOMETRY, config.grid_dim)
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

        fast = copy.deepcopy(self.decoder).cpu().eval()
        fast.fuse_for_inference()  # fewer, larger products per step: the same numbers (per-row scales)
        with warnings.catch_warnings():  # torch marks its eager quantization API as moving to torchao
            warnings.simplefilter("ignore")
            fast = quantize_dynamic(fast, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self.__dict__["_int8_decoder"] = fast  # not a submodule: checkpoints keep the float weights


    @property
    def needs_grid(self) -> bool:
        """Whether captioning needs the encoder's grid (attention, or concept classifiers)."""
        return self.attends or self.concepts is not None

    def context(self, inputs: PhotoInputs, min_object_prob: float = 0.0) -> tuple[Context, ClassifiedObjects | None]:
        """The decoder's per-image context from a batch of photos' inputs (``inputs.PhotoInputs``):
        the pooled features (B, D) and, for attention, the grid (B, L, D). ``inputs.swap`` (B, K):
        object words whose vectors the copy scores see instead of the detected ones', where
        they are >= 0 (a training augmentation: the decoder learns to copy an object whatever
        it is; see ``train_captioner``). ``inputs.objects_only`` (B,) bool: images described
        from their objects alone, without the projected features or the grid (trained as a
        dropout; at inference, the photos too unlike the training photos for those to mean
        anything, see ``DecodingConfig``). ``inputs.classified`` and ``inputs.concepts``
        (B, C): given instead of detected (training on captions without photos gives them;
        ``concepts.ConceptNoise``). ``inputs.summary`` (B, 240): the COCO detector's summary of
        each photo (``detector.summary``; a text row's is drawn as the detector would give it,
        ``batches.DetectorNoise``). ``inputs.regions``: the boxes the attention looks at besides
        the cells (``regions.Regions``; with ``config.regions``)."""
        features = inputs.features.float()
        image = self.projection(features)
        keep = None if inputs.objects_only is None else (~inputs.objects_only).to(image.dtype)
        if keep is not None:
            image = image * keep[:, None]
        ctx: Context = {}
        classified = inputs.classified
        if self.objects is not None:
            classified = self.objects(features) if classified is None else classified
            image = image + self._object_context(ctx, classified, min_object_prob, inputs.swap)
        if self.concepts is not None:
            concepts = inputs.concepts
            if concepts is None:
                concepts = self.concepts(self._require(inputs.grid, "the concept classifiers"))
            ctx["concepts"] = concepts
            image = image + self.concept_projection(concepts)
        if self.detector_projection is not None:
            summary = self._require(inputs.summary, "models with the COCO detector").float()
            ctx["detector_summary"] = summary
            image = image + self.detector_projection(summary)
        ctx["image"] = image
        if self.attends:
            grid = self._require(inputs.grid, "the attention decoder").float()
            ctx["grid"] = self.grid_projection(grid)
            if self.config.regions:
                self._add_regions(ctx, grid, inputs.regions)
            if keep is not None:
                ctx["grid"] = ctx["grid"] * keep[:, None, None]
        return ctx, classified

    def _add_regions(self, ctx: Context, grid: torch.Tensor, regions: Regions | None) -> None:
        """The detector's boxes after the cells in ``ctx["grid"]``; ``ctx["grid_mask"]`` says
        which entries a photo has (a photo without boxes, or a caption without a photo,
        looks at the cells alone)."""
        regions = (Regions.none(len(grid), self.config.regions) if regions is None else regions).to(grid.device)
        boxes = (self.grid_projection(pooled(grid, regions)) + self.region_category(regions.categories)
                 + self.region_geometry(regions.geometry()))
        ctx["grid"] = torch.cat([ctx["grid"], boxes], 1)
        cells = torch.ones(grid.shape[:2], dtype=torch.bool, device=grid.device)
        ctx["grid_mask"] = torch.cat([cells, regions.mask], 1)

    def _object_context(self, ctx: Context, classified: ClassifiedObjects, min_object_prob: float,
                        swap: torch.Tensor | None) -> torch.Tensor:
        """Put the object slots' context in ``ctx``; return the objects' share of the image."""
        probs = classified.probs.masked_fill(classified.probs < min_object_prob, 0.0)
        ctx.update(self.decoder.slots.context(self.objects.word_vectors[classified.words], probs))
        if swap is not None:
            swapped = torch.where(swap >= 0, swap, classified.words)
            ctx["objects_key"] = self.decoder.slots.context(self.objects.word_vectors[swapped], probs)["objects"]
        if min_object_prob > 0:
            ctx["objects_logp"] = ctx["objects_logp"].masked_fill(probs == 0, float("-inf"))
        return (probs[..., None] * ctx["objects"]).sum(1)

    @staticmethod
    def _require(grid: torch.Tensor | None, who: str) -> torch.Tensor:
        if grid is None:
            raise ValueError(f"{who} need the encoder's grid features" if "detector" not in who
                             else f"{who} need the detector's boxes")
        return grid

    def forward(self, inputs: PhotoInputs, captions: torch.Tensor, lengths: torch.Tensor):
        """Teacher forcing: (packed logits, attention weights or None)."""
        ctx, _ = self.context(inputs)
        return self.decoder(captions, lengths, ctx)
