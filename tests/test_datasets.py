"""Dataset readers and the deterministic split."""

import json
from pathlib import Path

from PIL import Image

from captioner.train.datasets import CaptionRecord, read_coco, read_csv_captions, read_dataset, split_records
from tests.conftest import shared


def _images(folder: Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8)).save(folder / n)


def test_flickr_csv_skips_and_counts_captions_of_missing_images(tmp_path):
    _images(tmp_path / "Images", ["a.jpg", "b.jpg"])
    (tmp_path / "captions.txt").write_text(
        "image,caption\na.jpg,A dog runs .\na.jpg,\"A dog, running.\"\nb.jpg,A cat.\nc.jpg,Missing image.\n")
    data = read_csv_captions(tmp_path / "captions.txt", tmp_path / "Images")
    assert data.skipped == 1
    assert data.records == [CaptionRecord(tmp_path / "Images" / "a.jpg", "A dog runs ."),
                            CaptionRecord(tmp_path / "Images" / "a.jpg", "A dog, running."),
                            CaptionRecord(tmp_path / "Images" / "b.jpg", "A cat.")]


def test_your_own_csv_reads_its_photos_from_images_or_beside_it(tmp_path):
    beside, inside = tmp_path / "beside", tmp_path / "inside"
    _images(beside, ["a.jpg"])
    _images(inside / "images", ["a.jpg"])
    for root in (beside, inside):
        (root / "captions.csv").write_text("image,caption\na.jpg,A red kite.\nb.jpg,Not here.\n")
    assert read_dataset("csv", beside).records == [CaptionRecord(beside / "a.jpg", "A red kite.")]
    assert read_dataset("csv", inside).records == [CaptionRecord(inside / "images" / "a.jpg", "A red kite.")]
    assert read_dataset("csv", inside).skipped == 1


def test_coco_json_gives_the_same_records(tmp_path):
    _images(tmp_path / "train2017", ["1.jpg"])
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "A dog runs. "},
                        {"id": 11, "image_id": 2, "caption": "Gone."},
                        {"id": 12, "image_id": 2, "caption": "Gone too."}]}))
    data = read_dataset("coco", tmp_path)
    assert data.records == [CaptionRecord(tmp_path / "train2017" / "1.jpg", "A dog runs.")]
    assert data.skipped == 2


def test_split_is_by_image_deterministic_and_independent_of_order():
    records = [CaptionRecord(Path(f"/x/{i}.jpg"), f"caption {j}") for i in range(500) for j in range(3)]
    a = split_records(records, 0.1, 0.2)
    b = split_records(list(reversed(records)), 0.1, 0.2)
    for name in a:
        assert {r.image for r in a[name]} == {r.image for r in b[name]}
    images = {name: {r.image for r in rs} for name, rs in a.items()}
    assert not images["train"] & images["val"] and not images["train"] & images["test"]
    assert 30 < len(images["val"]) < 70 and 75 < len(images["test"]) < 125


def test_real_data_counts():
    flickr = read_dataset("flickr8k", shared("flickr8k"))
    coco = read_coco(shared("coco_mini", "annotations", "captions_train2017.json"), shared("coco_mini", "train2017"))
    assert (len(flickr.records), len(flickr.images), flickr.skipped) == (37955, 7591, 0)
    assert (len(coco.records), len(coco.images), coco.skipped) == (400, 80, 0)
