"""Where a caption's time goes: each stage of the shipped captioner timed on its own, for one
photo at a time and for a batch of 32, and each part of a decoder step.

    python -m benchmarks.profile_caption [--images 40] [--batch 32]

The stages run one after another here (the library runs the encoder and the detector side
by side: ``end_to_end`` is that, timed as a whole); the parts of a step are timed by
wrapping the functions that make a step (``decoder.step``: the word's embedding, the
attention and the LSTM, the output layer; ``search.Bans.apply``: the rules and the repeat
bans; the beam's bookkeeping), so their sum falls short of the whole by the search's own
Python. Writes ``benchmarks/results/profile_caption.json``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from contextlib import contextmanager

import torch

from benchmarks.common import SHARED, require, write_results
from captioner import search
from captioner.detector import decode_yolox_outputs
from captioner.model import DEFAULT_CHECKPOINT, Captioner
from lstmkit.images import load_image


class Clock:
    """Seconds spent in named functions (wrapped in place), summed per call of ``timed``."""

    def __init__(self):
        self.total: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.Counter()

    def wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.total[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(owner, name, timed)


@contextmanager
def stage(samples: dict, name: str):
    start = time.perf_counter()
    yield
    samples[name].append(time.perf_counter() - start)


def one_by_one(model: Captioner, paths: list, beam: int | None, clock: Clock) -> dict:
    """Each stage alone, then the whole caption; ``end_to_end_without_search`` is each whole
    caption's time less its own search's (``clock``): what a caption costs before any word."""
    encoder, detector = model.require_encoder(), model.require_detector()
    searched = ("search (beam, all steps)", "search (greedy, all steps)")
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for k, path in enumerate(paths):
        with stage(samples, "load_image"):
            image = load_image(path, draft_size=encoder.preprocess.size)
        with stage(samples, "encoder_preprocess"):
            x = encoder.preprocess(image)[None]
        with stage(samples, "encoder"):
            pooled, grid = encoder.encode(x, grid=True)
        with stage(samples, "detector_letterbox"):
            array, frame = detector.prepare(image)
        with stage(samples, "detector_network"):
            raw = detector.session.run(None, {detector.input: array[None]})[0][0]
        with stage(samples, "detector_decode"):
            boxes = [decode_yolox_outputs(raw, *frame)]
        with stage(samples, "decoding_total"):
            model.caption_features(pooled, beam, grid=grid, boxes=boxes)
        before = sum(clock.total[name] for name in searched)
        with stage(samples, "end_to_end"):
            model.caption([load_image(path, draft_size=encoder.preprocess.size)], beam)
        samples["end_to_end_without_search"].append(samples["end_to_end"][-1]
                                                    - (sum(clock.total[name] for name in searched) - before))
        if k < 3:  # warm-up
            for v in samples.values():
                v.pop()
    return {name: round(1000 * statistics.median(v), 3) for name, v in samples.items()}


def step_products(decoder, calls: int = 400) -> dict:
    """The int8 products one attention step runs (the output layer with the slots' query, the
    attention's and the LSTM's maps of the hidden state, the LSTM's map of its input), p50 ms
    at 1 and 10 rows: what any runtime must at least read a step's weights for."""
    maps = {"output_and_query": decoder.output_maps, "hidden_maps": decoder.hidden_maps,
            "input_map": decoder.cell.input_map}
    out = {}
    with torch.inference_mode():
        for rows in (1, 10):
            times = {}
            for name, layer in maps.items():
                x = torch.randn(rows, layer.in_features)
                for _ in range(50):
                    layer(x)
                samples = []
                for _ in range(calls):
                    start = time.perf_counter()
                    layer(x)
                    samples.append(time.perf_counter() - start)
                times[name] = round(1000 * statistics.median(samples), 4)
            times["sum"] = round(sum(times.values()), 4)
            out[f"{rows}_rows"] = times
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    paths = sorted(require(SHARED / "coco_mini" / "train2017", "COCO photos").glob("*.jpg"))[:args.images]
    model = Captioner.from_checkpoint(DEFAULT_CHECKPOINT, int8=True)
    net, decoder = model.network, model.network.inference_decoder
    clock = Clock()
    for owner, name, label in ((net, "context", "context (projection, objects, concepts, regions)"),
                               (net, "_add_regions", "  of which regions (roi_align + projections)"),
                               (net.familiarity, "score", "familiarity"),
                               (decoder, "prepare", "decoder.prepare (keys, tables)"),
                               (decoder, "step", "step: network"),
                               (decoder, "embed_tokens", "  step: embedding"),
                               (decoder, "_step", "  step: attention + LSTM"),
                               (decoder, "log_probs", "  step: output layer + slots + log_softmax"),
                               (search.Bans, "apply", "step: rules and repeat bans"),
                               (search, "_candidates", "step: beam candidates"),
                               (search, "_best_per_beam", "step: beam selection"),
                               (search, "beam_alternatives", "search (beam, all steps)"),
                               (search, "greedy", "search (greedy, all steps)"),
                               (model, "_truer", "claims check (choice, cut, the decoder's rescoring)"),
                               (model.writer, "results", "results (ids to words)")):
        clock.wrap(owner, name, label)
    report = {}
    for beam, label in ((None, "default"), (1, "greedy")):
        clock.total.clear()
        clock.calls.clear()
        stages = one_by_one(model, paths, beam, clock)
        n = len(paths)
        parts = {k: {"ms_per_photo": round(1000 * v / n / 2, 3), "calls_per_photo": round(clock.calls[k] / n / 2, 1)}
                 for k, v in clock.total.items()}  # decoding runs twice a photo: alone and end to end
        report[label] = {"one_photo_p50_ms": stages, "decoding_parts_mean": parts}
    batch = [load_image(p, draft_size=model.require_encoder().preprocess.size) for p in paths[:args.batch]]
    model.caption(batch)
    encoder = model.require_encoder()
    rounds: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(3):  # the median of three rounds: the first batch after the warm-up can take twice as long
        for beam, label in ((None, "default"), (1, "greedy")):
            start = time.perf_counter()
            model.caption(batch, beam)
            rounds[label].append(time.perf_counter() - start)
        # what the batch costs before any word: the encoder with the detector beside it, as captioning runs them
        start = time.perf_counter()
        with torch.inference_mode():
            model.require_detector().detect_beside(batch, lambda: encoder.encode(encoder.preprocess.batch(batch),
                                                                                 grid=True))
        rounds["eyes_only"].append(time.perf_counter() - start)
    times = {label: round(1000 * statistics.median(v) / len(batch), 3) for label, v in rounds.items()}
    report["batch"] = {"photos": len(batch), "ms_per_photo": times}
    report["step_int8_products_p50_ms"] = step_products(decoder)
    path = write_results("profile_caption", {"photos": len(paths), "checkpoint": str(DEFAULT_CHECKPOINT.name),
                                             "encoder_runtime": model.require_encoder().runtime,
                                             "encoder_dtype": str(model.require_encoder().dtype),
                                             "torch_threads": torch.get_num_threads(), **report})
    for label in ("default", "greedy"):
        print(f"-- {label}: one photo, each stage alone (p50 ms)")
        for k, v in report[label]["one_photo_p50_ms"].items():
            print(f"   {k:45s} {v:8.2f}")
        print("   decoding, mean ms per photo (calls):")
        for k, v in report[label]["decoding_parts_mean"].items():
            print(f"   {k:45s} {v['ms_per_photo']:8.2f}  ({v['calls_per_photo']})")
    print(f"-- a batch of {len(batch)}: {times} ms per photo")
    print(f"-- a step's int8 products, p50 ms: {report['step_int8_products_p50_ms']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
