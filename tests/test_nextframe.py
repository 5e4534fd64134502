"""Moving MNIST from real digits, the ConvLSTM encoder-forecaster, metrics and scripts."""

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from demos.nextframe.model import (
    DEFAULT_CHECKPOINT,
    MovingMNIST,
    NextFrameConfig,
    NextFramePredictor,
    copy_last_frame,
    frame_mse,
    ssim,
)
from tests.conftest import shared


def digits(n=50, train=True):
    from demos.mnist.model import load_mnist

    images, _ = load_mnist(shared("MNIST").parent, train=train, download=False)
    return images[:n]


def test_clips_are_two_real_digits_bouncing_and_seeded():
    data = MovingMNIST(digits())
    clip = data.clip(3)
    assert clip.shape == (20, 64, 64) and 0 <= clip.min() and clip.max() <= 1
    assert torch.equal(clip, MovingMNIST(digits(), seed=0).clip(3))
    assert not torch.equal(clip, MovingMNIST(digits(), seed=1).clip(3))
    assert not torch.equal(clip, data.clip(4))
    ink = (clip > 0.3).float().sum(dim=(1, 2))
    assert ink.min() > 50  # digits stay inside the frame
    moved = (clip[1:] - clip[:-1]).abs().sum(dim=(1, 2))
    assert (moved > 0).all()  # they move every frame
    assert data.batch([0, 1]).shape == (2, 20, 1, 64, 64)


def test_model_shapes_and_scheduled_sampling():
    model = NextFramePredictor(NextFrameConfig(hidden=(8, 8))).eval()
    clips = MovingMNIST(digits()).batch(range(2))
    out = model(clips[:, :10])
    assert out.shape == (2, 10, 1, 64, 64) and 0 <= out.min() and out.max() <= 1
    teacher = model(clips[:, :10], clips[:, 10:], teacher_prob=1.0)
    assert teacher.shape == out.shape and not torch.allclose(teacher, out)
    torch.testing.assert_close(model(clips[:, :10], clips[:, 10:], teacher_prob=0.0), out)


def test_checkpoint_round_trip(tmp_path):
    model = NextFramePredictor(NextFrameConfig(hidden=(4,)))
    model.save(tmp_path / "n.safetensors")
    loaded = NextFramePredictor.from_checkpoint(tmp_path / "n.safetensors")
    x = torch.rand(1, 10, 1, 64, 64)
    torch.testing.assert_close(loaded.predict(x), model.predict(x))


def _ssim_reference(x, y, win=7):
    """scikit-image's structural_similarity (uniform window, sample covariance), in numpy."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    n = win * win
    f = lambda z: uniform_filter(z, size=win)  # noqa: E731
    mx, my = f(x), f(y)
    cov = n / (n - 1)
    vx, vy, vxy = cov * (f(x * x) - mx * mx), cov * (f(y * y) - my * my), cov * (f(x * y) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s[pad:-pad, pad:-pad].mean()


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.random((3, 4, 1, 64, 64))).float()
    pred = (truth + 0.1 * torch.from_numpy(rng.standard_normal((3, 4, 1, 64, 64))).float()).clamp(0, 1)
    mse = frame_mse(pred, truth)
    torch.testing.assert_close(mse, ((pred - truth) ** 2).sum(dim=(2, 3, 4)).mean(0))
    ours = ssim(pred, truth)
    ref = np.mean([[_ssim_reference(pred[b, t, 0].double().numpy(), truth[b, t, 0].double().numpy())
                    for b in range(3)] for t in range(4)], axis=1)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
    torch.testing.assert_close(ssim(truth, truth), torch.ones(4))
    assert copy_last_frame(truth[:, :2], 5).shape == (3, 5, 1, 64, 64)


def test_train_dry_run_and_evaluate(tmp_path):
    from demos.nextframe import evaluate as evaluate_nextframe
    from demos.nextframe import train as train_nextframe

    root = str(shared("MNIST").parent)
    out = tmp_path / "run"
    assert train_nextframe.main(["--data-root", root, "--out", str(out), "--dry-run", "--no-download"]) == 0
    # the config holds a tuple (hidden sizes), which comes back from the checkpoint as a list
    assert train_nextframe.main(["--data-root", root, "--out", str(out), "--dry-run", "--no-download",
                                 "--resume"]) == 0
    report = tmp_path / "r.json"
    assert evaluate_nextframe.main(["--data-root", root, "--checkpoint", str(out / "best.safetensors"),
                                    "--clips", "8", "--batch-size", "4", "--json-out", str(report),
                                    "--no-download"]) == 0
    r = json.loads(report.read_text())
    assert len(r["by_frame"]["model_mse"]) == 10 and r["copy_last_frame_mse_per_frame"] > 0


def test_shipped_model_beats_copying_the_last_frame():
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the next-frame model has not been trained and shipped yet")
    from demos.nextframe.model import TEST_SEED
    from demos.nextframe.model import MovingMNIST as MM

    clips = MM(digits(10000, train=False), seed=TEST_SEED).batch(range(16))
    model = NextFramePredictor.from_checkpoint()
    pred = model.predict(clips[:, :10])
    assert frame_mse(pred, clips[:, 10:]).mean() < 0.8 * frame_mse(copy_last_frame(clips[:, :10]), clips[:, 10:]).mean()
