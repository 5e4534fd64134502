"""The row-by-row MNIST classifier, its two inference paths, drawing preprocessing, scripts."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from demos.mnist.model import DEFAULT_CHECKPOINT, MnistConfig, RowLSTMClassifier, preprocess_drawing
from tests.conftest import shared


def test_fused_path_agrees_with_our_cells():
    model = RowLSTMClassifier(MnistConfig(hidden_size=32, num_layers=2)).eval()
    x = torch.rand(16, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x, fused=True), model(x), atol=1e-5, rtol=0)
    assert torch.allclose(model.predict(x).sum(-1), torch.ones(16))
    model.train()
    with pytest.raises(RuntimeError):
        model(x, fused=True)


def test_fused_copy_follows_new_weights(tmp_path):
    model = RowLSTMClassifier(MnistConfig(hidden_size=16, num_layers=1)).eval()
    x = torch.rand(4, 28, 28)
    before = model.predict(x)
    other = RowLSTMClassifier(MnistConfig(hidden_size=16, num_layers=1))
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), other.eval()(x).softmax(-1), atol=1e-5, rtol=0)
    assert not torch.allclose(before, model.predict(x))


def test_fused_copy_never_enters_the_state_dict(tmp_path):
    model = RowLSTMClassifier(MnistConfig(hidden_size=8, num_layers=1)).eval()
    keys = set(model.state_dict())
    model.predict(torch.rand(2, 28, 28))
    assert set(model.state_dict()) == keys
    model.save(tmp_path / "m.safetensors")
    RowLSTMClassifier.from_checkpoint(tmp_path / "m.safetensors")


def test_onnx_export_matches_pytorch(tmp_path):
    from demos.onnx import MnistGraph, export

    model = RowLSTMClassifier(MnistConfig(hidden_size=16, num_layers=2)).eval()
    report = export(MnistGraph(model), "mnist", "digits", "logits", tmp_path / "m.onnx")
    assert report["max_abs_diff"] < 1e-4 and "LSTM" in report["ops"]


def test_checkpoint_round_trip(tmp_path):
    model = RowLSTMClassifier(MnistConfig(hidden_size=24, num_layers=1)).eval()
    model.save(tmp_path / "m.safetensors")
    loaded = RowLSTMClassifier.from_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    x = torch.rand(3, 28, 28)
    torch.testing.assert_close(loaded.predict(x), model.predict(x))


def _canvas_with_a_one(size=300, dark_on_light=True):
    image = Image.new("L", (size, size), 255 if dark_on_light else 0)
    ImageDraw.Draw(image).line([(150, 40), (160, 260)], fill=0 if dark_on_light else 255, width=14)
    return image


def test_drawing_is_cropped_scaled_to_20_and_centred_by_mass():
    x = preprocess_drawing(_canvas_with_a_one())
    assert x.shape == (28, 28) and 0 <= x.min() and x.max() <= 1
    rows = np.flatnonzero(x.numpy().max(axis=1) > 0.1)
    assert 18 <= rows[-1] - rows[0] + 1 <= 21  # the longer side is scaled to 20
    ys, xs = np.indices((28, 28))
    mass = x.numpy().sum()
    assert abs((ys * x.numpy()).sum() / mass - 13.5) <= 1 and abs((xs * x.numpy()).sum() / mass - 13.5) <= 1


def test_drawing_polarity_transparency_and_arrays_give_the_same_digit():
    reference = preprocess_drawing(_canvas_with_a_one())
    inverted = preprocess_drawing(_canvas_with_a_one(dark_on_light=False))
    torch.testing.assert_close(inverted, reference, atol=0.02, rtol=0)
    rgba = np.zeros((300, 300, 4), dtype=np.uint8)  # a transparent canvas with a black stroke
    rgba[..., 3] = 255 - np.asarray(_canvas_with_a_one())
    torch.testing.assert_close(preprocess_drawing(rgba), reference, atol=0.02, rtol=0)
    rgb = np.stack([np.asarray(_canvas_with_a_one())] * 3, axis=-1)
    torch.testing.assert_close(preprocess_drawing(rgb), reference, atol=0.02, rtol=0)


@pytest.mark.parametrize("bad", [np.full((50, 50), 255, np.uint8), np.zeros((50, 50, 4), np.uint8),
                                 np.full((10, 10), np.nan)])
def test_empty_or_invalid_canvas_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="empty|invalid"):
        preprocess_drawing(bad)


def test_real_mnist_digits_survive_the_drawing_pipeline():
    from demos.mnist.model import _shift, load_mnist

    images, _ = load_mnist(shared("MNIST").parent, train=False, download=False)
    scores = []
    for digit in images[:30]:  # drawn 10x larger, dark on light, then brought back
        big = Image.fromarray((255 - digit.numpy() * 255).astype(np.uint8)).resize((280, 280), Image.BILINEAR)
        again = preprocess_drawing(big).numpy()
        # MNIST centred by mass to whole pixels too, so allow a one-pixel offset
        scores.append(max(np.corrcoef(_shift(again, dy, dx).ravel(), digit.numpy().ravel())[0, 1]
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1)))
    assert min(scores) > 0.8 and np.mean(scores) > 0.9


def test_train_dry_run_and_resume(tmp_path):
    from demos.mnist import train as train_mnist

    root = shared("MNIST").parent
    out = tmp_path / "run"
    assert train_mnist.main(["--data-root", str(root), "--out", str(out), "--dry-run", "--no-download"]) == 0
    assert (out / "best.safetensors").is_file() and (out / "metrics.csv").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert train_mnist.main(["--data-root", str(root), "--out", str(out), "--dry-run", "--resume",
                             "--no-download"]) == 0


def test_missing_mnist_is_one_clear_error(tmp_path, capsys):
    from demos.mnist import train as train_mnist

    assert train_mnist.main(["--data-root", str(tmp_path), "--no-download", "--dry-run"]) == 2
    assert "no MNIST" in capsys.readouterr().err


def test_shipped_model_reads_real_test_digits():
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the MNIST model has not been trained and shipped yet")
    from demos.mnist.model import load_mnist

    images, labels = load_mnist(shared("MNIST").parent, train=False, download=False)
    model = RowLSTMClassifier.from_checkpoint()
    preds = model.predict(images[:1000]).argmax(-1)
    assert (preds == labels[:1000]).float().mean() >= 0.985


def test_evaluate_script_reports_accuracy_and_confusion(tmp_path):
    from demos.mnist import evaluate as evaluate_mnist

    root = shared("MNIST").parent
    ckpt = tmp_path / "m.safetensors"
    RowLSTMClassifier(MnistConfig(hidden_size=8, num_layers=1)).save(ckpt)
    out = tmp_path / "r.json"
    assert evaluate_mnist.main(["--data-root", str(root), "--checkpoint", str(ckpt), "--json-out", str(out),
                                "--no-download"]) == 0
    report = json.loads(out.read_text())
    assert sum(map(sum, report["confusion_matrix"])) == 10000 == report["test_digits"]
    assert report["paths_agree"] > 0.999
