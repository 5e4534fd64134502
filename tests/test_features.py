"""The feature cache: extracted once, fp16, flipped too, invalidated when the encoder changes."""

import os

import pytest
import torch

from captioner.encoders import Preprocessing, build_encoder
from captioner.train.features import FeatureCache
from lstmkit.images import ImageError, load_image
from tests.conftest import flickr_sample


@pytest.fixture(scope="module")
def small_encoder():
    encoder = build_encoder("resnet18", weights="random")
    encoder.preprocess = Preprocessing(size=64)
    return encoder


def _count_calls(encoder, calls):
    original = encoder.encode
    encoder.encode = lambda batch: calls.append(len(batch)) or original(batch)
    return lambda: delattr(encoder, "encode")


def test_features_are_extracted_once_and_reused_across_runs(tmp_path, small_encoder):
    paths = [p for p, _ in flickr_sample(6)]
    calls = []
    restore = _count_calls(small_encoder, calls)
    try:
        feats, flipped = FeatureCache(tmp_path, small_encoder).get(paths, batch_size=4, num_workers=0,
                                                                    progress=False)
        assert calls == [4, 4, 2, 2]  # each batch, and its mirror image
        again, again_flipped = FeatureCache(tmp_path, small_encoder).get(paths[::-1], num_workers=0,
                                                                         progress=False)
        assert calls == [4, 4, 2, 2]  # a new cache object reads the shards, runs nothing
    finally:
        restore()
    assert feats.dtype == torch.float16 and feats.shape == (6, 512)
    torch.testing.assert_close(again, feats.flip(0))
    torch.testing.assert_close(again_flipped, flipped.flip(0))


def test_cached_features_are_the_encoder_features_and_its_mirror(tmp_path, small_encoder):
    path = flickr_sample(1)[0][0]
    feats, flipped = FeatureCache(tmp_path, small_encoder).get([path], num_workers=0, progress=False)
    x = small_encoder.preprocess(load_image(path))[None]
    torch.testing.assert_close(feats.float(), small_encoder.encode(x), atol=0.05, rtol=0.01)
    torch.testing.assert_close(flipped.float(), small_encoder.encode(x.flip(-1)), atol=0.05, rtol=0.01)


def test_changed_preprocessing_or_weights_start_a_new_cache(tmp_path, small_encoder):
    other = build_encoder("resnet18", weights="random")
    other.preprocess = Preprocessing(size=64)
    bigger = build_encoder("resnet18", weights="random")
    bigger.preprocess = Preprocessing(size=96)
    dirs = {FeatureCache(tmp_path, e).dir for e in (small_encoder, bigger)}
    assert len(dirs) == 2
    assert FeatureCache(tmp_path, other).dir == FeatureCache(tmp_path, small_encoder).dir  # both "random"
    lite = build_encoder("efficientnet_lite0", weights="random")
    assert FeatureCache(tmp_path, lite).dir != FeatureCache(tmp_path, small_encoder).dir


def test_an_edited_image_is_extracted_again(tmp_path, small_encoder):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(path)
    cache = FeatureCache(tmp_path / "cache", small_encoder)
    red, _ = cache.get([path], num_workers=0, progress=False)
    Image.new("RGB", (40, 40), (0, 0, 255)).save(path)
    os.utime(path, ns=(1, 1))
    blue, _ = cache.get([path], num_workers=0, progress=False)
    assert not torch.equal(red, blue)


def test_unreadable_images_are_named(tmp_path, small_encoder):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.jpg"):
        FeatureCache(tmp_path / "c", small_encoder).get([bad], num_workers=0, progress=False)


def test_compute_dtype_is_part_of_the_cache_key(tmp_path, small_encoder):
    import copy

    as_fp32 = copy.deepcopy(small_encoder)
    as_fp32.backbone.float()
    as_bf16 = copy.deepcopy(small_encoder)
    as_bf16.backbone.to(torch.bfloat16)
    assert FeatureCache(tmp_path, as_fp32).dir != FeatureCache(tmp_path, as_bf16).dir


def test_a_copied_dataset_keeps_its_features_and_shards_of_other_photos_stay_on_disk(tmp_path, small_encoder):
    import shutil

    from PIL import Image

    first, second = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(first)
    Image.new("RGB", (40, 40), (0, 255, 0)).save(second)
    cache = tmp_path / "cache"
    red, _ = FeatureCache(cache, small_encoder).get([first], num_workers=0, progress=False)
    FeatureCache(cache, small_encoder).get([second], num_workers=0, progress=False)
    shards = sorted(FeatureCache(cache, small_encoder).dir.glob("shard-*.safetensors"))
    assert len(shards) == 2
    moved = tmp_path / "copy" / "a.png"  # the dataset copied elsewhere, with a new modification time
    moved.parent.mkdir()
    shutil.copy(first, moved)
    os.utime(moved, ns=(5, 5))
    again = FeatureCache(cache, small_encoder)
    same, _ = again.get([moved], num_workers=0, progress=False)
    assert torch.equal(same, red)
    assert len(list(again.dir.glob("shard-*.safetensors"))) == 2  # nothing extracted again
    assert len(again._features) == 1  # the other photo's shard was never read into memory
