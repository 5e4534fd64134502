"""Every benchmark runs as the README shows it, on a couple of photos (a smoke test: the
numbers are not checked, only that each benchmark runs with the shipped model and writes
its results)."""

import json

import pytest

from tests.conftest import shared, shipped


@pytest.fixture
def results(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


def test_caption_latency_with_the_shipped_model_and_a_random_resnet(results):
    from benchmarks import caption_latency

    shipped("captioner.safetensors")
    shared("coco_mini")
    caption_latency.main(["--images", "1", "--encoders", "efficientnet_lite0", "resnet152", "--quick"])
    report = json.loads((results / "caption_latency.json").read_text())
    assert set(report["encoders"]) == {"efficientnet_lite0", "resnet152"}
    assert report["encoders"]["efficientnet_lite0"]["words_per_caption_ours"] > 0


def test_caption_latency_compare_float_and_int8(results):
    from benchmarks import caption_latency

    checkpoint = str(shipped("captioner.safetensors"))
    shared("coco_mini")
    caption_latency.main(["--images", "2", "--compare", checkpoint, checkpoint + "@int8"])
    rows = json.loads((results / "caption_latency_compare.json").read_text())["checkpoints"]
    assert rows[checkpoint + "@int8"]["p50_vs_first"]["greedy"] > 0


def test_batch_captioning_through_the_cli(results, tmp_path):
    from benchmarks import batch_captioning

    shipped("captioner.safetensors")
    batch_captioning.main(["--photos", str(shared("coco_mini", "train2017")), "--count", "2", "--beams", "1"])
    report = json.loads((results / "batch_captioning.json").read_text())
    assert report["runs"]["cpu_beam1"]["photos_per_second"] > 0


def test_serving_throughput_against_the_running_app(results):
    from benchmarks import serving_throughput

    shipped("captioner.safetensors")
    shared("coco_mini")
    serving_throughput.main(["--requests", "2", "--clients", "1", "--beam-size", "1"])
    assert json.loads((results / "serving_throughput.json").read_text())["benchmark"] == "serving_throughput"


def test_training_throughput_textbook_against_cached(results):
    from benchmarks import training_throughput

    shipped("captioner.safetensors")
    shared("flickr8k")
    training_throughput.main(["--encoders", "efficientnet_lite0", "--batch-size", "4", "--textbook-steps", "1",
                              "--cached-steps", "2"])
    assert any(p.name.startswith("training_throughput") for p in results.iterdir())


def test_profile_caption_breaks_a_caption_into_its_stages(results):
    from benchmarks import profile_caption

    shipped("captioner.safetensors")
    shared("coco_mini")
    profile_caption.main(["--images", "4", "--batch", "2"])
    report = json.loads((results / "profile_caption.json").read_text())
    stages = report["default"]["one_photo_p50_ms"]
    assert {"encoder", "detector_network", "decoding_total", "end_to_end"} <= set(stages)
    assert report["default"]["decoding_parts_mean"]["step: network"]["calls_per_photo"] >= 1
    # what a caption costs before its first word: the whole caption less its own search
    assert 0 < stages["end_to_end_without_search"] < stages["end_to_end"]
    assert {"default", "greedy", "eyes_only"} <= set(report["batch"]["ms_per_photo"])
    products = report["step_int8_products_p50_ms"]
    assert set(products) == {"1_rows", "10_rows"} and all(v["sum"] > 0 for v in products.values())


def test_versus_release_times_two_trees_side_by_side(results):
    from benchmarks import versus_release

    shipped("captioner.safetensors")
    shared("coco_mini")
    shared("coco_captions", "val2017")
    versus_release.main(["--against", str(versus_release.ROOT), "--images", "4", "--folder", "22", "--rounds", "1"])
    report = json.loads((results / "versus_release.json").read_text())
    assert set(report["releases"]) == {"previous", "this"}
    assert report["same_captions"] == "8 of 8 (default and greedy)"  # the same tree twice: the same captions
