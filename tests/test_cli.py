"""python -m captioner caption: real photos, a tiny model trained on their real captions."""

import io
import json
import subprocess
import sys

import pytest

from captioner import __main__ as cli
from captioner.vocabulary import tokenize
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def checkpoint(tiny_captioner, tmp_path_factory):
    model = tiny_captioner[0]
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    model.save(path)
    return path


def test_tiny_model_learned_its_captions(tiny_captioner):
    model, sample, features, captions = tiny_captioner
    results = model.caption([__import__("lstmkit.images").images.load_image(p) for p, _ in sample], beam_size=3)
    exact = sum(r.words == tokenize(c) for r, c in zip(results, captions))
    assert exact >= 10, [r.caption for r in results]


def test_json_lines_with_errors_of_their_own(checkpoint, tiny_captioner, tmp_path, capsys):
    _, sample, _, captions = tiny_captioner
    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>not an image</html>")
    missing = tmp_path / "missing.jpg"
    paths = [sample[0][0], missing, sample[1][0], bad, sample[2][0]]
    code = cli.main(["caption", *map(str, paths), "--checkpoint", str(checkpoint), "--json", "--beam-size", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    assert "No such file" in lines[1]["error"] and "HTML" in lines[3]["error"]
    for line in (lines[0], lines[2], lines[4]):
        assert set(line) == {"image", "caption", "words", "probabilities", "objects", "familiarity"}
        assert len(line["objects"]) == 2 and 0 <= line["familiarity"] <= 1
        assert line["caption"] == " ".join(line["words"])
        assert len(line["probabilities"]) == len(line["words"])
    assert lines[0]["words"] == tokenize(captions[0])


def test_many_images_are_captioned_in_batches(tiny_captioner):
    model, sample, _, _ = tiny_captioner
    paths = [p for p, _ in sample] * 3  # 36 images
    calls = []
    encoder = model.require_encoder()
    original = encoder.encode
    encoder.encode = lambda batch: calls.append(len(batch)) or original(batch)
    try:
        out = io.StringIO()
        assert cli.caption_files(model, paths, beam_size=1, batch_size=16, as_json=False, out=out) == 0
    finally:
        del encoder.encode
    assert calls == [16, 16, 4]
    assert len(out.getvalue().splitlines()) == 36


def test_real_subprocess_and_plain_output(checkpoint, tiny_captioner):
    _, sample, _, captions = tiny_captioner
    run = subprocess.run([sys.executable, "-m", "captioner", "caption", str(sample[3][0]),
                          "--checkpoint", str(checkpoint)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{sample[3][0]}: {' '.join(tokenize(captions[3]))}"


def test_missing_default_model_is_one_clear_sentence(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "DEFAULT_CHECKPOINT", tmp_path / "none.safetensors")
    assert cli.main(["caption", "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert "no trained model" in err and "Traceback" not in err


def test_bad_checkpoint_is_one_clear_sentence(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert cli.main(["caption", "x.jpg", "--checkpoint", str(junk)]) == 2
    assert "not a readable" in capsys.readouterr().err


def test_shipped_model_captions_hundreds_of_real_photos(tmp_path):
    """The default model, batched, on 300 real held-out photos: every one gets a caption."""
    from captioner.model import DEFAULT_CHECKPOINT
    from captioner.train.datasets import read_dataset, split_records
    from tests.conftest import shared

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the captioner has not been trained and shipped yet")
    records = split_records(read_dataset("flickr8k", shared("flickr8k")).records)["test"]
    photos = list(dict.fromkeys(r.image for r in records))[:300]
    out = io.StringIO()
    model = cli.Captioner.from_checkpoint()
    assert cli.caption_files(model, photos, beam_size=None, batch_size=64, as_json=True, out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    # a caption whose claims no person states is cut back to who or what is there ("a diver"): rare
    assert len(lines) == 300 and all(len(line["words"]) >= 2 for line in lines)
    assert sum(len(line["words"]) < 3 for line in lines) < 30
    assert sum("dog" in line["words"] for line in lines) > 30  # Flickr8k is full of dogs


def test_batches_read_ahead_arrive_in_order_and_a_reading_error_reaches_the_caller():
    from captioner.__main__ import ahead

    assert list(ahead(iter(range(7)))) == list(range(7))

    def broken():
        yield 1
        raise OSError("the disk went away")

    got = []
    with pytest.raises(OSError, match="went away"):
        for batch in ahead(broken()):
            got.append(batch)
    assert got == [1]
