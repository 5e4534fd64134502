"""The feature cache: each image's encoder feature, extracted once and kept on disk.

The encoder is frozen, so a training run never needs to run the CNN again. Features are
extracted in batches (images decoded by a DataLoader's workers, the CNN in bf16 +
channels_last), stored in fp16 and keyed by image (its path, size and modification time),
so they are reused across epochs and runs. The horizontally flipped image's feature is
stored beside it, for flip augmentation.

With ``grid=True`` the cache holds each image's grid of features instead (for the
attention decoder: 7x7 cells of 1280 for Lite0, 125 KB per image in fp16), in a folder of
its own.

Layout: ``root/<encoder fingerprint>[-grid]/shard-*.safetensors``. The fingerprint covers
the encoder's name, its weights and its preprocessing; change any of them and the cache
starts afresh in a new folder. Each shard is written atomically as soon as its images
are done, so an interrupted extraction keeps what it finished.

Non-finite numbers are never stored: a feature that is already NaN or infinite stops the
extraction with the image named (broken weights, not a broken cache); one too large for
fp16 (random ResNet-152 weights reach 2.5e8) makes its shard float32 instead, with a
warning.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captioner.encoders import ImageEncoder
from captioner.photo_files import PhotoFiles
from lstmkit.checkpoint import atomic_write, atomic_write_text
from lstmkit.images import ImageError, image_key
from lstmkit.runtools import UserError

log = logging.getLogger(__name__)


def _collate(items):
    return items


class NonFiniteFeatures(UserError, ValueError):
    """The encoder produced NaN or infinite features."""


FP16_MAX = float(torch.finfo(torch.float16).max)


class FeatureCache:
    def __init__(self, root: str | os.PathLike, encoder: ImageEncoder, grid: bool = False,
                 pooled_too: FeatureCache | None = None):
        """``pooled_too``: with ``grid``, a pooled-feature cache of the same encoder that
        the grid extraction fills as well (the pooled feature is the grid's mean, so one
        pass of the CNN serves both)."""
        self.encoder, self.grid, self.pooled_too = encoder, grid, pooled_too
        self.dir = Path(root) / f"{encoder.name}-{encoder.fingerprint()}{'-grid' if grid else ''}"
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._loaded: set[str] = set()

    def _load_shards(self, wanted: set[str]) -> None:
        """Into memory: the shards holding any of the ``wanted`` keys. A shard of photos no
        longer asked for (a dataset since edited or dropped) stays on disk, out of memory."""
        if not self.dir.is_dir():
            return
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            if shard.name in self._loaded:
                continue
            with safe_open(str(shard), "pt") as f:
                keys = json.loads(f.metadata()["keys"])
                if wanted.isdisjoint(keys):
                    continue
                features, flipped = f.get_tensor("features"), f.get_tensor("flipped")
            for row, key in enumerate(keys):
                self._features[key] = (features[row], flipped[row])
            self._loaded.add(shard.name)

    def get(self, paths: Sequence[str | os.PathLike], batch_size: int = 64, num_workers: int = 2,
            shard_size: int = 1024, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, D) and flipped features (N, D) (grids: (N, cells, D)), fp16 unless
        too large for it, in the order of ``paths``. Missing ones are extracted first.
        Unreadable images raise ``ImageError``."""
        paths = [Path(p) for p in paths]
        keys = [image_key(p) for p in paths]
        self._load_shards(set(keys))
        missing = list(dict.fromkeys(p for p, k in zip(paths, keys) if k not in self._features))
        if missing:
            self._extract(missing, batch_size, num_workers, shard_size, progress)
        features = torch.stack([self._features[k][0] for k in keys]) if keys else torch.empty(0)
        flipped = torch.stack([self._features[k][1] for k in keys]) if keys else torch.empty(0)
        return features, flipped

    def _extract(self, paths: list[Path], batch_size: int, num_workers: int, shard_size: int,
                 progress: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "encoder.json", json.dumps({
            "encoder": self.encoder.name, "weights": self.encoder.weights_id,
            "preprocess": self.encoder.preprocess.fingerprint(), "grid": self.grid}))
        loader = DataLoader(PhotoFiles(paths, self.encoder.preprocess), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=_collate, persistent_workers=False)
        pending_keys, pending_feats, pending_flips, errors = [], [], [], []
        pending_pooled, pending_pooled_flips = [], []
        if self.pooled_too is not None:
            self.pooled_too._load_shards({image_key(p) for p in paths})
        bar = tqdm(total=len(paths), desc=f"features {self.encoder.name}", unit="img", disable=not progress)
        for items in loader:
            good = [(i, x[0]) for i, x, err in items if x is not None]
            errors += [f"{paths[i]}: {err}" for i, x, err in items if x is None]
            if good:
                batch = torch.stack([x for _, x in good])
                (feats, pooled), (flips, pooled_flips) = (self._encode(b, [paths[i] for i, _ in good])
                                                          for b in (batch, batch.flip(-1)))
                pending_keys += [image_key(paths[i]) for i, _ in good]
                pending_feats.append(feats)
                pending_flips.append(flips)
                pending_pooled.append(pooled)
                pending_pooled_flips.append(pooled_flips)
            bar.update(len(items))
            if len(pending_keys) >= shard_size:
                self._write_shards(pending_keys, pending_feats, pending_flips, pending_pooled, pending_pooled_flips)
                pending_keys, pending_feats, pending_flips, pending_pooled, pending_pooled_flips = [], [], [], [], []
        bar.close()
        if pending_keys:
            self._write_shards(pending_keys, pending_feats, pending_flips, pending_pooled, pending_pooled_flips)
        if errors:
            raise ImageError(f"{len(errors)} images could not be read, e.g. {errors[0]}")

    def _encode(self, batch: torch.Tensor, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 features (or grids) and pooled features on the CPU, checked: finite, or
        an error naming the image."""
        pooled, grid = self.encoder.encode(batch, grid=True) if self.grid else (self.encoder.encode(batch), None)
        out = (pooled if grid is None else grid).float().cpu()
        bad = ~torch.isfinite(out).flatten(1).all(1)
        if bool(bad.any()):
            raise NonFiniteFeatures(
                f"{self.encoder.name} ({self.encoder.weights_id}) gave NaN or infinite features for "
                f"{paths[int(bad.nonzero()[0])]}: its weights are broken; nothing was cached for it")
        return out, pooled.float().cpu()

    def _write_shards(self, keys, feats, flips, pooled, pooled_flips) -> None:
        self._write_shard(keys, feats, flips)
        if self.pooled_too is not None:
            new = [i for i, k in enumerate(keys) if k not in self.pooled_too._features]
            if new:
                index = torch.tensor(new)
                self.pooled_too._write_shard([keys[i] for i in new], [torch.cat(pooled)[index]],
                                             [torch.cat(pooled_flips)[index]])

    def _write_shard(self, keys: list[str], feats: list[torch.Tensor], flips: list[torch.Tensor]) -> None:
        features, flipped = torch.cat(feats).contiguous(), torch.cat(flips).contiguous()
        largest = max(float(features.abs().max()), float(flipped.abs().max()))
        if largest < FP16_MAX:
            features, flipped = features.half(), flipped.half()
        else:  # fp16 would store inf: keep this shard in float32
            log.warning("features as large as %.3g do not fit fp16 (largest %.3g); %d images cached in float32",
                        largest, FP16_MAX, len(keys))
        path = self.dir / f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        tensors = {"features": features, "flipped": flipped}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"keys": json.dumps(keys)}))
        for row, key in enumerate(keys):
            self._features[key] = (features[row], flipped[row])
        self._loaded.add(path.name)
        log.info("wrote %d features to %s", len(keys), path)


def features_for(model, images: Sequence[str | os.PathLike], cache_dir: str | os.PathLike,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a captioner needs of these images, from the caches (extracted when missing):
    pooled features (N, D) and, for an attention model, grids (N, cells, D)."""
    encoder = model.require_encoder()
    pooled_cache = FeatureCache(cache_dir, encoder)
    grid = None
    if model.network.needs_grid:  # the grid pass fills the pooled cache too
        grid = FeatureCache(cache_dir, encoder, grid=True, pooled_too=pooled_cache).get(images, **kwargs)[0]
    pooled, _ = pooled_cache.get(images, **kwargs)
    return pooled, grid
