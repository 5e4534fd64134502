"""The few real files the side tabs ship with (demos/samples) and the caption tab's examples
(webapp/examples): small, licensed, the real data, and enough for the tabs on their own."""

import json

import numpy as np
import pytest

from tests.conftest import ROOT, shared, shipped

SAMPLES = ROOT / "demos" / "samples"


def test_the_shipped_files_are_small_and_say_where_they_come_from():
    files = [p for folder in (SAMPLES, ROOT / "webapp" / "examples") for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3_000_000
    readme = (SAMPLES / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "CC BY 4.0" in readme
    credits = (ROOT / "webapp" / "examples" / "CREDITS.md").read_text()
    assert credits.count("staticflickr.com") == len(list((ROOT / "webapp" / "examples").glob("*.jpg")))


def test_the_shipped_digits_are_the_first_mnist_test_digits():
    import torch

    from demos.mnist.model import load_mnist

    digits, labels = load_mnist(SAMPLES, train=False, download=False)
    assert digits.shape == (500, 28, 28) and labels.shape == (500,)
    full, full_labels = load_mnist(shared(), train=False, download=False)
    assert torch.equal(digits, full[:500]) and torch.equal(labels, full_labels[:500])


def test_the_shipped_recordings_are_the_held_out_pen_trajectories():
    from demos.trajectory.model import held_out_recordings
    from demos.trajectory.service import read_recordings_json

    shipped_ = read_recordings_json(SAMPLES / "char_trajectories_held_out.json")
    assert len(shipped_) == 40
    real = held_out_recordings(shared("char_trajectories", "trajectories_train.mat"))
    assert [(i, letter) for i, letter, _ in shipped_] == [(i, letter) for i, letter, _ in real]
    assert all(np.allclose(a, b, atol=1e-4) for (_, _, a), (_, _, b) in zip(shipped_, real))


def test_the_side_tabs_work_from_the_shipped_files_alone(tmp_path, monkeypatch):
    """No ../shared, no download: the app's services read demos/samples only."""
    import app
    from webapp.frames_tab import FramesTab
    from webapp.trajectory_tab import TrajectoryTab

    shipped("nextframe.safetensors")
    shipped("trajectory.safetensors")
    for name in ("CAPTIONER_SHARED_DATA", "CAPTIONER_SAMPLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    services = app.make_services()
    picture, summary = FramesTab(services.frames).predict_frames(0)
    assert picture.size[0] > 0 and summary["mse_per_frame"] < summary["copy_last_frame_mse_per_frame"]
    tab = TrajectoryTab(services.trajectories)
    labels = list(tab.recording_labels())
    assert len(labels) == 40 and labels[0].startswith("pen trajectory #")
    points, _, result = tab.from_recording(labels[0], 50)
    assert len(json.loads(points)) >= 30 and len(result["truth"]) == len(result["model"])
    assert not any(tmp_path.iterdir())  # nothing was downloaded into the home folder


def test_missing_samples_are_a_readable_message(tmp_path):
    import gradio as gr

    from demos.nextframe.service import FrameService
    from demos.trajectory.service import TrajectoryService
    from webapp.frames_tab import FramesTab
    from webapp.trajectory_tab import TrajectoryTab

    shipped("nextframe.safetensors")
    frames = FramesTab(FrameService(ROOT / "checkpoints" / "nextframe.safetensors", mnist_root=tmp_path))
    with pytest.raises(gr.Error, match="MNIST test digits this tab needs were not found"):
        frames.predict_frames(0)
    shipped("trajectory.safetensors")
    tab = TrajectoryTab(TrajectoryService(ROOT / "checkpoints" / "trajectory.safetensors",
                                          recordings=tmp_path / "none.json"))
    with pytest.raises(gr.Error, match="No recorded trajectories were found"):
        tab.from_recording("pen trajectory #1", 50)
