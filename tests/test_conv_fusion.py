"""Fused oneDNN convolutions (``captioner.conv_fusion``): every convolution of the encoders we
ship fused with its activation, computing what the network computes."""

import pytest
import torch

from captioner import conv_fusion
from captioner.encoders import build_encoder, fold_batchnorm

pytestmark = pytest.mark.skipif(not conv_fusion.available(), reason="this PyTorch has no oneDNN (mkldnn) build")


def _randomised_batchnorm(backbone):
    for m in backbone.modules():  # statistics that are not the identity, so folding is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return backbone


def test_every_convolution_of_efficientnet_lite0_is_fused_and_computes_the_same():
    torch.manual_seed(0)
    plain = _randomised_batchnorm(build_encoder("efficientnet_lite0", weights="random", optimize=False).backbone)
    folded, ok = fold_batchnorm(plain)
    fused, count = conv_fusion.fuse_convolutions(folded)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in folded.modules())
    assert ok and count == convs == 49
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU6)) for m in fused.modules())
    assert fused.conv_stem.weight is folded.conv_stem.weight  # the copy shares the weights
    x = torch.randn(3, 3, 96, 96)  # odd sizes at stride 2: the "same" padding is asymmetric
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), folded(x), atol=1e-4, rtol=1e-4)
        cl = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        want, got = folded.to(torch.bfloat16)(cl), fused(cl)
    # ReLU6 commutes with bf16 rounding: fused into the convolution it changes no bit
    assert torch.equal(got, want)


def test_resnet_relu_of_conv_plus_identity_is_one_call_and_computes_the_same():
    torch.manual_seed(0)
    plain = _randomised_batchnorm(build_encoder("resnet18", weights="random", optimize=False).backbone)
    folded, _ = fold_batchnorm(plain)
    fused, count = conv_fusion.fuse_convolutions(folded)
    binary = [m for m in fused.modules() if isinstance(m, conv_fusion.FusedConv) and m.add]
    assert count == 17 and len(binary) == 8  # the stem, 8 blocks' first conv, 8 blocks' add + relu
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), folded(x), atol=1e-4, rtol=1e-4)


def test_a_single_photos_packed_weights_follow_the_thread_count():
    torch.manual_seed(0)
    folded, _ = fold_batchnorm(build_encoder("efficientnet_lite0", weights="random", optimize=False).backbone)
    fused, _ = conv_fusion.fuse_convolutions(folded)
    x = torch.randn(1, 3, 64, 64)
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = fused(x)
            torch.set_num_threads(2)
            two = fused(x)
            want = folded(x)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(two, want, atol=1e-4, rtol=1e-4)
    assert {key[1] for key in fused.conv_stem.packed} == {1, 2}  # packed once per thread count


def test_a_fused_encoder_can_be_copied_and_follows_its_weights_to_another_dtype():
    import copy

    from captioner.encoders import build_encoder

    encoder = build_encoder("resnet18", weights="random", precision="fp32", runtime="onednn")
    x = torch.randn(1, 3, 224, 224)
    first = encoder.encode(x)  # packs the weights for one photo
    clone = copy.deepcopy(encoder)
    torch.testing.assert_close(clone.encode(x), first)
    clone.backbone.to(torch.bfloat16)
    torch.testing.assert_close(clone.encode(x), first, atol=0.05 * float(first.abs().max()), rtol=0.05)
