"""Checkpoints: round trips, fp16 storage, clear errors for files that do not fit."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from captioner.model import Captioner
from captioner.vocabulary import Vocabulary
from lstmkit.checkpoint import CheckpointError, atomic_write_bytes
from tests.test_decoder import random_captioner


def test_round_trip_gives_identical_captions(tmp_path):
    model = random_captioner(seed=5)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = Captioner.from_checkpoint(path, load_encoder=False)
    assert loaded.vocab == model.vocab and loaded.config == model.config
    features = torch.randn(6, 32)
    for beam in (1, 3):
        a, b = model.caption_features(features, beam), loaded.caption_features(features, beam)
        assert [r.words for r in a] == [r.words for r in b]
        assert [r.probabilities for r in a] == [r.probabilities for r in b]


def test_one_file_with_config_and_vocabulary_in_its_metadata(tmp_path):
    model = random_captioner()
    path = tmp_path / "m.safetensors"
    model.save(path, dtype=torch.float16)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        assert f.get_tensor("decoder.embed.weight").dtype == torch.float16
    assert json.loads(meta["config"])["encoder"] == "efficientnet_lite0"
    assert json.loads(meta["vocabulary"])["words"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert {"projection.linear.weight", "decoder.lstm.weight_ih_l0", "decoder.out.weight"} <= keys
    assert not any(k.startswith("encoder") for k in keys)  # the encoder is rebuilt, not stored


def test_fp16_storage_keeps_the_captions(tmp_path):
    model = random_captioner(seed=6)
    path = tmp_path / "m16.safetensors"
    model.save(path, dtype=torch.float16)
    loaded = Captioner.from_checkpoint(path, load_encoder=False)
    assert loaded.network.decoder.out.weight.dtype == torch.float32
    features = torch.randn(8, 32)
    same = sum(a.words == b.words for a, b in zip(model.caption_features(features, 1),
                                                   loaded.caption_features(features, 1)))
    assert same >= 7


def _rewrite(path, out, *, tensors=None, meta=None):
    with safe_open(str(path), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        m = dict(f.metadata())
    t.update(tensors or {})
    m.update(meta or {})
    save_file(t, str(out), metadata=m)


def test_vocabulary_that_does_not_fit_fails_clearly(tmp_path):
    model = random_captioner()
    path, bad = tmp_path / "m.safetensors", tmp_path / "bad.safetensors"
    model.save(path)
    smaller = Vocabulary(model.vocab.words[:-2])
    _rewrite(path, bad, meta={"vocabulary": smaller.to_json()})
    with pytest.raises(CheckpointError, match="words"):
        Captioner.from_checkpoint(bad, load_encoder=False)
    _rewrite(path, bad, meta={"vocabulary": "not json"})
    with pytest.raises(CheckpointError, match="vocabulary"):
        Captioner.from_checkpoint(bad, load_encoder=False)


def test_shapes_that_do_not_fit_fail_clearly(tmp_path):
    model = random_captioner()
    path, bad = tmp_path / "m.safetensors", tmp_path / "bad.safetensors"
    model.save(path)
    _rewrite(path, bad, tensors={"decoder.out.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=r"decoder.out.weight has shape \(3, 3\)"):
        Captioner.from_checkpoint(bad, load_encoder=False)
    config = json.loads(safe_open(str(path), "pt").metadata()["config"])
    config["hidden_dim"] = 48
    _rewrite(path, bad, meta={"config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="does not fit"):
        Captioner.from_checkpoint(bad, load_encoder=False)


def test_wrong_encoder_and_foreign_files_fail_clearly(tmp_path):
    from captioner.encoders import build_encoder

    model = random_captioner()
    path = tmp_path / "m.safetensors"
    model.save(path)
    with pytest.raises(CheckpointError, match="efficientnet_lite0"):
        Captioner.from_checkpoint(path, encoder=build_encoder("resnet18", weights="random"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable"):
        Captioner.from_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Captioner.from_checkpoint(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        Captioner.from_checkpoint(plain)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    class Boom(Exception):
        pass

    from lstmkit.checkpoint import atomic_write

    def fail(tmp):
        open(tmp, "wb").write(b"half")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_gives_the_usual_mode_without_ever_changing_the_umask(tmp_path, monkeypatch):
    """Setting the umask to read it would, for that instant, let every other thread create
    files and folders with that mask (a concurrent save's records/ world-writable)."""
    import os

    mask = os.umask(0o027)  # this test's own umask, set before the watch begins
    try:
        def changed(_):
            raise AssertionError("atomic_write changed the process's umask")

        monkeypatch.setattr(os, "umask", changed)
        atomic_write_bytes(tmp_path / "a.bin", b"data")
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(mask)


def test_a_safetensors_checkpoint_gets_the_usual_mode_too(tmp_path):
    """safetensors replaces the file it writes to: the mode is set after the writer has run."""
    import os

    from safetensors.torch import save_file

    from lstmkit.checkpoint import atomic_write, current_umask

    atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert os.access(tmp_path / "w.safetensors", os.R_OK)
