"""Single-image caption latency, from file bytes to caption text: the textbook pipeline
against ours, change by change, measured side by side in one run.

    python -m benchmarks.caption_latency [--images 40] [--encoders resnet152 efficientnet_lite0]

Stages, each adding one change to the one before (all with the models loaded once):

1. textbook: PIL decode at full size, LANCZOS resize, fp32 eager CNN in the default
   memory format, then a Python loop of greedy steps that always runs 20 steps and
   reads each word back with ``.item()``;
2. + fast decode: JPEGs decoded at a reduced scale (``draft``), a cheaper resize;
3. + the CNN in bf16 (weights converted once), channels_last, and every BatchNorm folded
   into its convolution (ResNets; timm's Lite0 cannot be traced, so it keeps them);
4. + our batched greedy decoding, which stops as soon as the caption has ended;
5. ours: + each decoder step as two matrix products instead of oneDNN's RNN kernel
   (the hot spot torch.profiler found: 4 ms per single step at batch 1).

Stages are interleaved image by image, so the machine's noise hits all of them alike.
Also measured: beam 3 against greedy, and the encoder's share of the CPU's bf16 peak
(the larger of the theoretical figure at the clock the OS reports and the best bf16
GEMM measured on the same cores: on a VM the reported clock hides the boost clock).
``efficientnet_lite0`` uses the shipped captioner. ``resnet152`` has no ImageNet
weights on this machine: it runs with random CNN weights and a random projection in
front of the shipped model's trained LSTM decoder, so its captions end where a trained
decoder ends them (the CNN's time does not depend on its weights' values; caption
agreement with the textbook is meaningful for Lite0 only).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import SHARED, load_model, machine, percentiles, require, run_threads, write_results
from captioner.inputs import PhotoInputs
from captioner.model import DEFAULT_CHECKPOINT, Captioner
from lstmkit.devices import PRECISIONS
from lstmkit.images import load_image

STAGES = ("textbook", "fast_decode", "bf16_channels_last", "early_stop", "ours")


def python_loop_greedy(model: Captioner, feature: torch.Tensor, grid: torch.Tensor | None, image=None,
                       max_length: int = 20) -> list[str]:
    """The textbook sampler: feed the image, then <start>, and always take 20 steps, each
    through torch's oneDNN LSTM kernel where the decoder has one, with a ``.item()`` after each."""
    dec = model.network.decoder
    with torch.no_grad(), fused_steps(dec):
        boxes = None
        if model.config.detector:  # the COCO detector runs in every pipeline that has one
            from captioner.detector import summary

            boxes = summary(model.require_detector().detect([image]))
        ctx, classified = model.network.context(PhotoInputs(feature, grid if model.network.needs_grid else None, boxes))
        ctx = dec.prepare(ctx)
        state = dec.init_state(ctx)
        token = torch.tensor([model.vocab.start_id])
        ids = []
        for _ in range(max_length):
            logp, state, _ = dec.step(token, state, ctx)
            token = logp.argmax(1)
            ids.append(token.item())
    objects = model.detected_object_words(feature)[0]
    return model.words_of(ids, objects)


@contextlib.contextmanager
def fused_steps(decoder):
    """Decoder steps through torch's oneDNN LSTM kernel (Show and Tell; the attention
    decoder's hand-written cell has no such kernel)."""
    before = getattr(decoder, "fused_step", None)
    if before is not None:
        decoder.fused_step = True
    try:
        yield
    finally:
        if before is not None:
            decoder.fused_step = before


class Pipelines:
    def __init__(self, model: Captioner, textbook_backbone: torch.nn.Module):
        self.model = model
        self.encoder = model.require_encoder()
        self.fp32_backbone = textbook_backbone
        self.pre = self.encoder.preprocess

    def _fp32(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            maps = self.fp32_backbone(x)
        return maps.mean((2, 3)), maps.flatten(2).transpose(1, 2)

    def textbook(self, path: Path) -> list[str]:
        full = Image.open(path).convert("RGB")
        image = full.resize((self.pre.size, self.pre.size), Image.Resampling.LANCZOS)
        x = TF.normalize(TF.to_tensor(image), self.pre.mean, self.pre.std)[None]
        return python_loop_greedy(self.model, *self._fp32(x), full)

    def fast_decode(self, path: Path) -> list[str]:
        image = load_image(path, draft_size=self.pre.size)
        return python_loop_greedy(self.model, *self._fp32(self.pre(image)[None]), image)

    def bf16_channels_last(self, path: Path) -> list[str]:
        image = load_image(path, draft_size=self.pre.size)
        return python_loop_greedy(self.model, *self.encoder.encode(self.pre(image)[None], grid=True), image)

    def early_stop(self, path: Path) -> list[str]:
        with fused_steps(self.model.network.decoder):
            return self.ours(path)

    def ours(self, path: Path, beam_size: int = 1) -> list[str]:
        image = load_image(path, draft_size=self.pre.size)
        return self.model.caption([image], beam_size=beam_size)[0].words


def encoder_flops(backbone: torch.nn.Module, size: int) -> int:
    """FLOPs of one image through the plain float32 backbone (convolutions and matrix products)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        backbone(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def _best_gflops(fn, flops: float, seconds: float) -> float:
    for _ in range(3):
        fn()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return flops * runs / (time.perf_counter() - start) / 1e9


@torch.inference_mode()
def measured_bf16_peak_gflops(seconds: float = 1.0) -> dict:
    """The best bf16 throughput these cores reach on large kernels: square matrix products
    and a 3x3 convolution (256 channels, 56x56, batch 8, channels_last), each timed for
    ``seconds`` after a warm-up."""
    best = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
        best[f"gemm_{n}"] = _best_gflops(lambda: a @ b, 2 * n ** 3, seconds)  # noqa: B023
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(torch.bfloat16, memory_format=torch.channels_last)
    x = torch.randn(8, 256, 56, 56, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    best["conv3x3"] = _best_gflops(lambda: conv(x), 2 * 8 * 256 * 256 * 9 * 56 * 56, seconds)
    return {k: round(v, 1) for k, v in best.items()}


def encoder_throughput(encoder, batch: int, repeats: int) -> float:
    x = torch.randn(batch, 3, encoder.preprocess.size, encoder.preprocess.size)
    encoder.encode(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / batch  # seconds per image


def device_rows(photos: list[Path], checkpoint: Path = DEFAULT_CHECKPOINT) -> dict:
    """The shipped captioner on the CPU and on the GPU of this machine: one photo at a time
    through the app's predictor (file to caption), and batches of 64 photos."""
    from captioner.service import CaptionService
    from lstmkit.devices import synchronize

    rows = {}
    for device in ("cpu", "cuda"):
        service = CaptionService(checkpoint, batching=True, device=device)
        model = service.model.get()
        dev = model.device
        single = {}
        for beam in (1, 3):
            for path in photos[:3]:
                service.caption_paths([str(path)], beam)
            times = []
            for path in photos:
                start = time.perf_counter()
                service.caption_paths([str(path)], beam)
                synchronize(dev)
                times.append(time.perf_counter() - start)
            single[f"beam{beam}"] = {k: round(v, 4) if isinstance(v, float) else v
                                     for k, v in percentiles(times).items()}
        pre = model.require_encoder().preprocess
        batch = [model.prepare(load_image(p, draft_size=pre.size)) for p in (photos * 2)[:64]]
        per_second = {}
        for beam in (1, 5):
            model.caption_prepared(batch, beam)  # warm up
            synchronize(dev)
            start = time.perf_counter()
            for _ in range(3):
                model.caption_prepared(batch, beam)
            synchronize(dev)
            per_second[f"beam{beam}"] = round(3 * len(batch) / (time.perf_counter() - start), 1)
        # 16 clients at once through the micro-batcher, as the app's requests arrive
        clients = [(str(photos[i % len(photos)]),) for i in range(16)]
        run_threads(lambda path: service.caption_paths([path], 1), clients)  # warm up (new batch shapes)
        service.batcher.batches.clear()
        seconds = run_threads(lambda path: service.caption_paths([path], 1), clients)
        rows[device] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else machine()["cpu"],
                        "single_photo_seconds": single, "batch64_photos_per_second": per_second,
                        "concurrent16_photos_per_second": round(16 / seconds, 1),
                        "concurrent16_mean_batch": round(sum(service.batcher.batches)
                                                         / max(1, len(service.batcher.batches)), 1)}
    rows["cuda_vs_cpu"] = {
        "single_photo_p50": {b: round(rows["cpu"]["single_photo_seconds"][b]["p50"]
                                      / rows["cuda"]["single_photo_seconds"][b]["p50"], 2) for b in ("beam1", "beam3")},
        "batch64": {b: round(rows["cuda"]["batch64_photos_per_second"][b] / rows["cpu"]["batch64_photos_per_second"][b],
                             1) for b in ("beam1", "beam5")}}
    return rows


def compare_checkpoints(photos: list[Path], checkpoints: list[str], precision: str = "auto") -> dict:
    """The same photos, one at a time (file bytes to caption), through each checkpoint on the
    CPU, interleaved photo by photo: greedy and the checkpoint's own decoding. A checkpoint
    named ``PATH@int8`` runs with int8 decoder matrices (as the app and the CLI run it)."""
    models = [Captioner.from_checkpoint(c.removesuffix("@int8"), int8=c.endswith("@int8"), precision=precision)
              for c in checkpoints]
    pre = models[0].require_encoder().preprocess
    times = {str(c): {"greedy": [], "default": []} for c in checkpoints}
    for path in photos[:2] + photos:  # the first two warm up
        for c, model in zip(checkpoints, models):
            for mode, beam in (("greedy", 1), ("default", None)):
                start = time.perf_counter()
                model.caption([load_image(path, draft_size=pre.size)], beam_size=beam)
                times[str(c)][mode].append(time.perf_counter() - start)
    rows = {}
    for c, model in zip(checkpoints, models):
        rows[str(c)] = {"decoder": model.config.decoder, "object_slots": model.config.object_slots,
                        "default_beam": model.decoding.beam_size,
                        **{mode: {k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in percentiles(t[2:]).items()} for mode, t in times[str(c)].items()}}
    first = str(checkpoints[0])
    for c in map(str, checkpoints[1:]):
        rows[c]["p50_vs_first"] = {mode: round(rows[c][mode]["p50"] / rows[first][mode]["p50"], 2)
                                   for mode in ("greedy", "default")}
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--encoders", nargs="*", default=["resnet152", "efficientnet_lite0"],
                   help="encoders whose CPU stages to time (none: only the GPU rows, where there is a GPU)")
    p.add_argument("--compare", nargs="+", default=None, metavar="CHECKPOINT",
                   help="time these captioners against each other, one photo at a time (the first is the reference; "
                        "PATH@int8: with int8 decoder matrices)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="--compare: the encoder's numerics (auto: what this machine is fastest at)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: the peak kernels timed briefly, the encoder's throughput twice")
    args = p.parse_args(argv)
    if args.compare:
        photos = sorted(require(SHARED / "coco_mini" / "train2017", "COCO images").glob("*.jpg"))[:args.images]
        rows = compare_checkpoints(photos, args.compare, args.precision)
        for c, r in rows.items():
            print(f"{c}: greedy p50 {r['greedy']['p50'] * 1000:.1f} ms, beam {r['default_beam']} p50 "
                  f"{r['default']['p50'] * 1000:.1f} ms {r.get('p50_vs_first', '')}")
        path = write_results("caption_latency", {"images": len(photos), "checkpoints": rows}, name_suffix="_compare")
        print(f"wrote {path}")
        return
    photos = sorted(require(SHARED / "coco_mini" / "train2017", "COCO images").glob("*.jpg"))[:args.images]
    results = {"images": len(photos), "image_source": "COCO train2017 photos (about 640x480 JPEG)",
               "stages": list(STAGES), "encoders": {}}
    if args.encoders:
        kernels = measured_bf16_peak_gflops(0.05 if args.quick else 1.0)
        results["bf16_kernels_gflops_measured"] = kernels
        results["bf16_peak_gflops_theoretical_at_reported_clock"] = machine()["bf16_peak_gflops_theoretical"]
    for name in args.encoders:
        model, plain, weights = load_model(name)
        pipes = Pipelines(model, plain)
        for path in photos[:2]:  # warm up every path
            for stage in STAGES:
                getattr(pipes, stage)(path)
            pipes.ours(path, beam_size=3)
        times: dict[str, list[float]] = {s: [] for s in (*STAGES, "ours_beam3")}
        agree = {s: {"textbook": 0, "fast_decode": 0} for s in STAGES}
        words_ours = 0
        for path in photos:
            words = {}
            for stage in STAGES:
                start = time.perf_counter()
                words[stage] = getattr(pipes, stage)(path)
                times[stage].append(time.perf_counter() - start)
            start = time.perf_counter()
            pipes.ours(path, beam_size=3)
            times["ours_beam3"].append(time.perf_counter() - start)
            for s in STAGES:
                for reference in ("textbook", "fast_decode"):
                    agree[s][reference] += words[s] == words[reference]
            words_ours += len(words["ours"])
        stats = {s: percentiles(t) for s, t in times.items()}
        flops = encoder_flops(pipes.fp32_backbone, pipes.pre.size)
        repeats = 2 if args.quick else 5 if name == "resnet152" else 20
        per_image = {b: encoder_throughput(pipes.encoder, b, repeats) for b in (1, 8)}
        # the VM reports the nominal clock, and real kernels beat the figure computed from it
        peak = max(machine()["bf16_peak_gflops_theoretical"] or 0.0, *kernels.values())
        results["encoders"][name] = {
            "weights": weights,
            "latency_seconds": {s: {k: round(v, 4) if isinstance(v, float) else v for k, v in st.items()}
                                for s, st in stats.items()},
            "speedup_p50_vs_textbook": {s: round(stats["textbook"]["p50"] / stats[s]["p50"], 2) for s in STAGES},
            "beam3_cost_vs_greedy_p50": round(stats["ours_beam3"]["p50"] / stats["ours"]["p50"], 2),
            # fast_decode is the float32 model on our decoding and resizing: against it, the
            # later stages differ by bf16 (and BatchNorm folding) only
            "same_caption_as": {s: {r: f"{n}/{len(photos)}" for r, n in a.items()} for s, a in agree.items()},
            "encoder_gflops_per_image": round(flops / 1e9, 2),
            "encoder_bf16_gflops_achieved": {f"batch{b}": round(flops / t / 1e9, 1) for b, t in per_image.items()},
            "bf16_peak_gflops": round(peak, 1),
            "encoder_fraction_of_peak": {f"batch{b}": round(flops / t / 1e9 / peak, 3) for b, t in per_image.items()},
            "words_per_caption_ours": round(words_ours / len(photos), 1),
        }
        r = results["encoders"][name]
        print(f"{name} ({weights}): p50 " + ", ".join(f"{s} {stats[s]['p50'] * 1000:.0f} ms" for s in STAGES)
              + f"; speed-up {r['speedup_p50_vs_textbook']['ours']}x; beam 3 costs {r['beam3_cost_vs_greedy_p50']}x "
              f"greedy; encoder at {r['encoder_fraction_of_peak']} of bf16 peak")
    if torch.cuda.is_available():  # GPU rows only where there is a GPU
        results["gpu"] = device_rows(photos)
        print(f"GPU: {results['gpu']['cuda_vs_cpu']}")
    path = write_results("caption_latency", results, name_suffix="_gpu" if not args.encoders else "")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
