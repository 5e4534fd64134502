"""Training throughput: the textbook loop, which runs the CNN for every caption of every
batch, against our loop on cached features, at the same batch size, side by side.

    python -m benchmarks.training_throughput [--batch-size 32] [--encoders resnet152 efficientnet_lite0]

Both loops train the same decoder (the shipped model's shape) on real Flickr8k captions
with Adam. The textbook loop decodes each photo, resizes it with LANCZOS and runs the
fp32 CNN before the decoder step; the cached loop reads fp16 features that were
extracted once (bf16, channels_last, batched) and only runs the decoder. Reported:
captions per second of each, their ratio, the one-time extraction cost per image, and
what an epoch over the shipped model's 30,780 training captions costs either way.
``resnet152`` uses random weights here (ImageNet weights cannot be downloaded on this
machine; the time does not depend on their values).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from benchmarks.common import SHARED, load_model, require, write_results
from captioner.inputs import PhotoInputs
from captioner.train.datasets import read_dataset
from captioner.train.features import FeatureCache
from captioner.train.losses import caption_loss
from lstmkit.devices import synchronize

EPOCH_CAPTIONS = 30780  # training captions of the shipped model (Flickr8k + COCO train split)


def batches(records, vocab, batch_size: int, count: int):
    for b in range(count):
        chunk = [records[(b * batch_size + i) % len(records)] for i in range(batch_size)]
        ids = [torch.tensor(vocab.encode(r.caption)) for r in chunk]
        yield chunk, pad_sequence(ids, batch_first=True), torch.tensor([len(i) for i in ids])


def decoder_step(model, optimizer, features, caps, lengths, grid=None) -> None:
    model.network.train()
    device = features.device
    grid = grid if model.network.needs_grid else None  # attention and concept classifiers read the grid
    # a model with the COCO detector trains on cached summaries of its boxes: one (B, 240) row each, timed as zeros
    boxes = torch.zeros(len(features), model.config.detector, device=device) if model.config.detector else None
    loss = caption_loss(model.network, PhotoInputs(features, grid, boxes), caps.to(device), lengths)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def textbook_loop(model, backbone, records, batch_size: int, steps: int) -> float:
    pre = model.require_encoder().preprocess
    optimizer = torch.optim.Adam(model.network.parameters(), lr=1e-4)
    start = time.perf_counter()
    for chunk, caps, lengths in batches(records, model.vocab, batch_size, steps):
        images = [Image.open(r.image).convert("RGB").resize((pre.size, pre.size), Image.Resampling.LANCZOS)
                  for r in chunk]
        x = torch.stack([TF.normalize(TF.to_tensor(im), pre.mean, pre.std) for im in images])
        x = x.to(next(backbone.parameters()).device)
        with torch.no_grad():
            maps = backbone(x)
        decoder_step(model, optimizer, maps.mean((2, 3)), caps, lengths, maps.flatten(2).transpose(1, 2))
    synchronize(x.device)
    return steps * batch_size / (time.perf_counter() - start)


def cached_loop(model, records, features_by_image, batch_size: int, steps: int) -> float:
    optimizer = torch.optim.Adam(model.network.parameters(), lr=1e-4)
    device = model.device
    start = time.perf_counter()
    for chunk, caps, lengths in batches(records, model.vocab, batch_size, steps):
        features = torch.stack([features_by_image[r.image][0] for r in chunk]).to(device).float()
        grid = torch.stack([features_by_image[r.image][1] for r in chunk]).to(device).float()
        decoder_step(model, optimizer, features, caps, lengths, grid)
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def gpu_rows(model, plain, sample, by_image, batch_size: int, textbook_steps: int, cached_steps: int) -> dict:
    """The same two loops on this machine's GPU (the textbook CNN in float32 there too)."""
    model.network.cuda()
    plain = plain.cuda()
    cached_loop(model, sample, by_image, batch_size, 3)  # warm up
    textbook_loop(model, plain, sample, batch_size, 1)
    textbook = textbook_loop(model, plain, sample, batch_size, textbook_steps)
    cached = cached_loop(model, sample, by_image, batch_size, cached_steps)
    model.network.cpu()
    return {"device": torch.cuda.get_device_name(0), "textbook_captions_per_second": round(textbook, 1),
            "cached_captions_per_second": round(cached, 1), "speedup_per_epoch": round(cached / textbook, 1),
            "epoch_minutes_cached": round(EPOCH_CAPTIONS / cached / 60, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--encoders", nargs="+", default=["resnet152", "efficientnet_lite0"])
    p.add_argument("--textbook-steps", type=int, default=3)
    p.add_argument("--cached-steps", type=int, default=60)
    args = p.parse_args(argv)
    records = read_dataset("flickr8k", require(SHARED / "flickr8k", "Flickr8k")).records
    results = {"batch_size": args.batch_size, "data": "Flickr8k photos and captions", "encoders": {}}
    for name in args.encoders:
        model, plain, weights = load_model(name)
        encoder = model.require_encoder()
        n_images = args.batch_size * args.textbook_steps
        sample = records[: n_images * 5 : 5]  # one caption of each of n_images photos
        images = [r.image for r in sample]
        with tempfile.TemporaryDirectory() as cache_dir:
            start = time.perf_counter()
            pooled = FeatureCache(cache_dir, encoder)
            grids, _ = FeatureCache(cache_dir, encoder, grid=True, pooled_too=pooled).get(
                images, batch_size=32, num_workers=2, progress=False)
            feats, _ = pooled.get(images, progress=False)
            extraction = (time.perf_counter() - start) / len(images)  # includes the mirrored image
        by_image = {image: (f, g) for image, f, g in zip(images, feats, grids)}
        cached_loop(model, sample, by_image, args.batch_size, 3)  # warm up
        textbook = textbook_loop(model, plain, sample, args.batch_size, args.textbook_steps)
        cached = cached_loop(model, sample, by_image, args.batch_size, args.cached_steps)
        textbook_again = textbook_loop(model, plain, sample, args.batch_size, 1)  # bracket the cached run
        textbook = (textbook * args.textbook_steps + textbook_again) / (args.textbook_steps + 1)
        results["encoders"][name] = {
            "weights": weights,
            "textbook_captions_per_second": round(textbook, 2),
            "cached_captions_per_second": round(cached, 1),
            "speedup_per_epoch": round(cached / textbook, 1),
            "extraction_seconds_per_image_with_mirror": round(extraction, 4),
            "epoch_minutes_textbook": round(EPOCH_CAPTIONS / textbook / 60, 1),
            "epoch_minutes_cached": round(EPOCH_CAPTIONS / cached / 60, 2),
            "one_time_extraction_minutes_7671_images": round(7671 * extraction / 60, 1),
        }
        r = results["encoders"][name]
        print(f"{name}: textbook {r['textbook_captions_per_second']} captions/s, cached "
              f"{r['cached_captions_per_second']} captions/s: {r['speedup_per_epoch']}x per epoch")
        if torch.cuda.is_available():  # GPU rows only where there is a GPU
            r["gpu"] = gpu_rows(model, plain, sample, by_image, args.batch_size, args.textbook_steps,
                                args.cached_steps)
            print(f"{name} on {r['gpu']['device']}: {r['gpu']}")
    suffix = "_gpu" if torch.cuda.is_available() else ""  # a GPU machine's figures beside this one's
    print(f"wrote {write_results('training_throughput', results, name_suffix=suffix)}")


if __name__ == "__main__":
    main()
