"""Pseudo-captions for photos without captions (training/pseudo_captions.py): the shipped
model's surest captions of real COCO photos, written so that training reads them as COCO."""

import json

from captioner.train.datasets import read_dataset
from tests.conftest import ROOT, shared
from training import pseudo_captions


def test_the_surest_captions_are_kept_and_read_back_as_a_coco_dataset(tmp_path):
    photos = shared("coco_mini") / "train2017"
    out = tmp_path / "pseudo"
    shipped = ROOT / "checkpoints" / "captioner.safetensors"
    assert pseudo_captions.main(["--checkpoint", str(shipped), "--images", str(photos), "--out", str(out),
                                 "--keep", "0.5", "--min-words", "4", "--limit", "6"]) == 0
    report = json.loads((out / "pseudo_captions.json").read_text())
    rows = report["photos"]
    assert len(rows) == 6 and report["kept"] == 3
    kept = sorted((r for r in rows if r["words"] >= 4), key=lambda r: -r["score"])[:3]
    data = read_dataset("coco", out, coco_split="pseudo")
    assert sorted(r.caption for r in data.records) == sorted(r["caption"] for r in kept)
    assert all(r.image.is_file() and r.image.resolve().parent == photos.resolve() for r in data.records)


def test_choose_keeps_a_share_of_all_photos_and_never_a_short_caption():
    rows = [{"caption": "a dog", "score": -0.1, "words": 2},
            {"caption": "a dog on a red couch", "score": -0.5, "words": 6},
            {"caption": "a cat on a bed", "score": -0.3, "words": 5},
            {"caption": "a bus parked by a road", "score": -0.9, "words": 6}]
    assert [r["caption"] for r in pseudo_captions.choose(rows, keep=0.5, min_words=5)] == [
        "a cat on a bed", "a dog on a red couch"]
