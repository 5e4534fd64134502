"""The hand-trajectory predictor: shapes, units, baselines, blending, real data, ONNX for Unity."""

import json
import math

import numpy as np
import pytest
import torch

from demos.trajectory.model import (
    DEFAULT_CHECKPOINT,
    GEGLU,
    TrajectoryConfig,
    TrajectoryPredictor,
    ade_fde,
    blend_sequence,
    constant_velocity,
    last_position,
    read_hand_tracks,
    read_mat_sequences,
    sliding_windows,
    split_sequences,
)
from tests.conftest import shared

SMALL = TrajectoryConfig(d_model=16, heads=2, lstm_hidden=8, ff_mult=2, dropout=0.0)


def test_shapes_and_that_units_do_not_matter():
    model = TrajectoryPredictor(SMALL).eval()
    past = torch.randn(5, 30, 2).cumsum(1)
    future = model(past)
    assert future.shape == (5, 10, 2)
    # scale and shift the input: the output follows exactly (the model normalises itself)
    torch.testing.assert_close(model(past * 250 + 40), future * 250 + 40, atol=1e-3, rtol=1e-4)


def test_predict_accepts_long_and_short_histories():
    model = TrajectoryPredictor(SMALL)
    long = np.cumsum(np.random.default_rng(0).normal(size=(50, 2)), axis=0)
    np.testing.assert_allclose(model.predict(long), model.predict(long[-30:]), atol=1e-6)
    assert model.predict(long[:5]).shape == (10, 2)  # padded at the front, as if resting


def test_geglu_variants():
    torch.manual_seed(0)
    split, original = GEGLU(4, 6, "split"), GEGLU(4, 6, "original")
    x = torch.randn(3, 4)
    value, gate = split.proj(x).chunk(2, -1)
    torch.testing.assert_close(split(x), value * torch.nn.functional.gelu(gate))
    h = original.proj(x)
    torch.testing.assert_close(original(x), h * torch.nn.functional.gelu(h))
    with pytest.raises(ValueError):
        GEGLU(4, 6, "other")


def test_baselines_and_errors_on_a_straight_line():
    line = np.stack([np.arange(40.0), 2 * np.arange(40.0)], -1)[None]
    past, truth = line[:, :30], line[:, 30:]
    assert ade_fde(constant_velocity(past), truth) == (0.0, 0.0)
    ade, fde = ade_fde(last_position(past), truth)
    step = math.sqrt(5)
    assert ade == pytest.approx(step * 5.5) and fde == pytest.approx(step * 10)


def test_blending_weights_overlapping_forecasts():
    preds = np.zeros((3, 10, 2))
    preds[0] += 1.0  # the forecast made one step earlier says 1, the newest says 0
    blended = blend_sequence(preds, decay=math.log(2))  # weight 1/2 for the older forecast
    # after step 1, the first 9 points are covered by both forecasts: (0 * 1 + 1 * 0.5) / 1.5
    np.testing.assert_allclose(blended[1, :9], 1 / 3)
    np.testing.assert_allclose(blended[1, 9], 0.0)  # only the newest reaches the 10th point
    np.testing.assert_allclose(blend_sequence(preds, math.inf), preds)


def test_sliding_windows_and_split_by_sequence():
    seqs = [np.zeros((45, 2)), np.zeros((39, 2)), np.zeros((40, 2))]
    assert sliding_windows(seqs).shape == (6 + 0 + 1, 40, 2)
    split = split_sequences(100, 0.15, 0.15)
    assert sorted(np.concatenate(list(split.values()))) == list(range(100))
    assert len(split["test"]) == 15 and len(split["val"]) == 15
    assert (split_sequences(100)["test"] == split["test"]).all()


def test_real_trajectories_are_read_as_positions():
    sequences = read_mat_sequences(shared("char_trajectories", "trajectories_train.mat"))
    assert len(sequences) == 1429
    assert all(s.shape[1] == 2 and 50 <= len(s) <= 205 for s in sequences)
    tracks, labels = read_hand_tracks(shared("hand_tracks", "point_history.csv"))
    assert len(tracks) == 5296 and tracks[0].shape == (16, 2) and set(labels) == {0, 1, 2, 3}


def test_training_dry_run_and_evaluation(tmp_path):
    from demos.trajectory import evaluate as evaluate_trajectory
    from demos.trajectory import train as train_trajectory

    mat = shared("char_trajectories", "trajectories_train.mat")
    out = tmp_path / "run"
    assert train_trajectory.main(["--mat", str(mat), "--out", str(out), "--dry-run", "--d-model", "16",
                                  "--lstm-hidden", "8", "--hand-tracks",
                                  str(shared("hand_tracks", "point_history.csv"))]) == 0
    report = tmp_path / "r.json"
    assert evaluate_trajectory.main(["--mat", str(mat), "--checkpoint", str(out / "best.safetensors"),
                                     "--split", "test", "--json-out", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["sequences"] == 214 and r["windows"] > 10000
    assert r["constant_velocity"]["ade"] < r["last_position"]["ade"]


def test_onnx_export_for_unity_matches_pytorch(tmp_path):
    import onnx

    from demos.onnx import export

    model = TrajectoryPredictor(SMALL).eval()
    report = export(model, "trajectory", "past", "future", tmp_path / "t.onnx")
    assert report["opset"] == 15 and "LSTM" in report["ops"] and "GRU" not in report["ops"]
    assert report["max_abs_diff"] < 1e-4
    graph = onnx.load(str(tmp_path / "t.onnx")).graph
    assert graph.input[0].name == "past" and graph.output[0].name == "future"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [30, 2]


def test_shipped_model_beats_constant_velocity_on_held_out_sequences():
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the trajectory model has not been trained and shipped yet")
    from demos.trajectory.model import evaluate_sequences

    sequences = read_mat_sequences(shared("char_trajectories", "trajectories_train.mat"))
    test = [sequences[i] for i in split_sequences(len(sequences))["test"][:40]]
    report = evaluate_sequences(TrajectoryPredictor.from_checkpoint(), test)
    assert report["model"]["ade"] < 0.7 * report["constant_velocity"]["ade"]
    assert report["model"]["fde"] < 0.7 * report["constant_velocity"]["fde"]


def test_shipped_onnx_matches_the_shipped_checkpoint():
    from demos.trajectory.model import DEFAULT_ONNX

    if not DEFAULT_ONNX.is_file():
        pytest.skip("the trajectory ONNX file has not been shipped yet")
    import onnxruntime as ort

    model = TrajectoryPredictor.from_checkpoint()
    past = torch.randn(4, 30, 2).cumsum(1) * 3
    session = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    got = session.run(["future"], {"past": past.numpy()})[0]
    unit = model.normalise(past)[2].numpy()  # compare in the model's units: per unit step length
    assert (np.abs(got - model(past).detach().numpy()) / unit).max() < 1e-4
