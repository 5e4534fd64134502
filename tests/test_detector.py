"""The COCO object detector (YOLOX-Nano, ONNX): preprocessing, decoding, known photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.detector import (
    DETECTOR_FILE,
    SIZE,
    Boxes,
    DetectionCache,
    category_scores,
    decode_yolox_outputs,
    letterbox,
    nms,
    shipped_detector,
    summary,
)
from captioner.wordlists import coco_categories
from tests.conftest import shared


def test_the_80_categories_are_cocos_in_the_detectors_order():
    names = coco_categories()
    assert len(names) == 80
    assert names[:5] == ("person", "bicycle", "car", "motorcycle", "airplane")
    assert names[15:17] == ("cat", "dog") and names[-1] == "toothbrush"
    assert names.index("dining table") == 60 and names.index("cup") == 41


def test_letterbox_keeps_the_aspect_top_left_in_bgr_with_grey_114():
    image = Image.new("RGB", (200, 100), (255, 0, 0))  # pure red, twice as wide as high
    array, ratio = letterbox(image)
    assert array.shape == (3, SIZE, SIZE) and array.dtype == np.float32
    assert ratio == pytest.approx(SIZE / 200)
    assert (array[2, :208, :] == 255).all() and (array[0, :208, :] == 0).all()  # red is the last channel (BGR)
    assert (array[:, 208:, :] == 114).all()  # below the photo: YOLOX's grey


def test_decoding_puts_a_box_where_its_anchor_says():
    raw = np.zeros((3549, 85), np.float32)
    raw[:, 4] = 0.0  # no objectness anywhere ...
    anchor = 52 * 10 + 20  # ... but at stride-8 cell (x 20, y 10)
    raw[anchor, :4] = [0.5, 0.5, np.log(4.0), np.log(2.0)]  # centre (164, 84), 32 x 16 px in the 416 frame
    raw[anchor, 4], raw[anchor, 5 + 16] = 0.9, 0.8  # a dog
    boxes = decode_yolox_outputs(raw, ratio=1.0, width=416, height=416)
    assert boxes.categories.tolist() == [16] and boxes.scores[0] == pytest.approx(0.72)
    np.testing.assert_allclose(boxes.boxes[0] * 416, [148, 76, 180, 92], atol=1e-3)


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_ones():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.45) == [0, 2]


def test_summary_holds_score_count_and_area_per_category():
    photo = Boxes(np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]], np.float32),
                  np.array([0, 0, 16]), np.array([0.9, 0.6, 0.3], np.float32))
    s = summary([photo, Boxes.empty()])
    assert s.shape == (2, 240) and not s[1].any()
    assert s[0, :3].tolist() == pytest.approx([0.9, np.log(3.0), 0.25])  # two people at >= 0.5
    assert s[0, 48:51].tolist() == pytest.approx([0.3, 0.0, 1.0])  # a dog below 0.5: scored, not counted
    assert category_scores(s)[0, 0] == pytest.approx(0.9)
    assert photo.counts() == {"person": 2}


def test_mirrored_boxes_swap_left_and_right():
    photo = Boxes(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), np.array([2]), np.array([0.9], np.float32))
    np.testing.assert_allclose(photo.mirrored().boxes, [[0.7, 0.2, 0.9, 0.4]], atol=1e-6)


def skimage_photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def test_known_photos_give_their_known_objects():
    """Pinned on the shipped weights: a change of channel order, scaling, padding or decoding
    moves these (with RGB for BGR the cat reads as a dog at 0.35)."""
    assert DETECTOR_FILE.is_file()
    found = shipped_detector().detect([skimage_photo(n) for n in ("chelsea", "coffee", "astronaut",
                                                                    "hubble_deep_field")])
    cat, coffee, astronaut, space = (b.to_list(0.3) for b in found)
    assert [b["category"] for b in cat] == ["cat"] and cat[0]["score"] == pytest.approx(0.635, abs=0.02)
    assert [b["category"] for b in coffee] == ["cup", "dining table"]
    assert coffee[0]["score"] == pytest.approx(0.899, abs=0.02)
    np.testing.assert_allclose(coffee[0]["box"], [0.270, 0.038, 0.704, 0.733], atol=0.02)
    assert [b["category"] for b in astronaut] == ["person"] and astronaut[0]["score"] > 0.9
    assert space == []  # the Hubble deep field: nothing


def test_val2017_photos_the_detector_never_saw():
    root = shared("coco_captions", "val2017")
    if not root.is_dir():
        pytest.skip(f"the COCO val2017 photos are not at {root}")
    found = shipped_detector().detect([Image.open(root / f"{n}.jpg") for n in
                                       ("000000018737", "000000017627", "000000018150")])
    motorcycle, cars, people = (b.counts() for b in found)
    assert motorcycle == {"motorcycle": 1}  # "A motorcycle parked near a fence by a beach."
    assert cars["car"] >= 4  # "Several cars are parked in front of a building."
    assert people.get("person") == 2  # "a man holding a piece of pizza in front of a kid"


def test_the_cache_detects_once_and_gives_the_same_boxes(tmp_path):
    path = tmp_path / "chelsea.jpg"
    skimage_photo("chelsea").save(path)
    cache = DetectionCache(tmp_path / "cache")
    first = cache.get([path, path], progress=False)
    assert cache.file.is_file() and len(cache.table) == 1
    again = DetectionCache(tmp_path / "cache")
    again.detector = None  # a second run never needs the network
    second = again.get([path], progress=False)[0]
    np.testing.assert_allclose(second.boxes, first[0].boxes, atol=1e-6)
    assert second.categories.tolist() == first[1].categories.tolist() and second.categories[0] == 15  # a cat
    assert torch.equal(summary(first[:1]), summary([second]))


def test_boxes_are_drawn_where_the_detector_put_them():
    from captioner.attention_maps import draw_boxes

    picture = draw_boxes(Image.new("RGB", (200, 100), "white"),
                         [{"category": "cat", "score": 0.9, "box": [0.25, 0.5, 0.75, 0.9]}], width=2)
    pixels = np.asarray(picture)
    assert tuple(pixels[70, 50]) == (220, 38, 38)  # the left edge, at x = 0.25 * 200
    assert tuple(pixels[95, 100]) == (255, 255, 255)  # outside the box
    assert tuple(pixels[70, 100]) == (255, 255, 255)  # inside: only the outline


def reference_decode(output, ratio, width, height, min_score=0.1, iou=0.45, most=50):
    """The decoding as YOLOX writes it: every anchor decoded, then NMS per category."""
    from captioner.detector import _grid

    cells, strides = _grid(SIZE)
    centre = (output[:, :2] + cells) * strides
    size = np.exp(output[:, 2:4].clip(max=10)) * strides
    scores = output[:, 4:5] * output[:, 5:]
    anchor, category = np.nonzero(scores >= min_score)
    score = scores[anchor, category]
    xyxy = np.concatenate([centre[anchor] - size[anchor] / 2, centre[anchor] + size[anchor] / 2], 1) / ratio
    xyxy = (xyxy / np.array([width, height, width, height], dtype=np.float32)).clip(0, 1)
    kept = []
    for c in np.unique(category):
        mine = np.nonzero(category == c)[0]
        kept += [mine[k] for k in nms(xyxy[mine], score[mine], iou)]
    kept = np.array(sorted(kept, key=lambda k: -score[k])[:most], dtype=np.int64)
    return xyxy[kept], category[kept], score[kept]


def test_decoding_only_the_anchors_that_can_score_gives_every_box():
    detector = shipped_detector()
    photos = [Image.open(p).convert("RGB") for p in sorted(shared("coco_mini", "train2017").glob("*.jpg"))[:12]]
    for photo in photos:
        array, frame = detector.prepare(photo)
        raw = detector.session.run(None, {detector.input: array[None]})[0][0]
        boxes, categories, scores = reference_decode(raw, *frame)
        found = decode_yolox_outputs(raw, *frame)
        assert len(found) and np.array_equal(found.categories, categories)
        np.testing.assert_array_equal(found.scores, scores)
        np.testing.assert_array_equal(found.boxes, boxes)


def test_the_detector_beside_other_work_finds_the_same_boxes_and_gives_the_threads_back():
    detector = shipped_detector()
    photos = [Image.open(p).convert("RGB") for p in sorted(shared("coco_mini", "train2017").glob("*.jpg"))[:5]]
    alone = detector.detect(photos)
    threads = torch.get_num_threads()
    seen = []
    boxes, out = detector.detect_beside(photos[:3] + [detector.prepare(p) for p in photos[3:]],
                                        lambda: seen.append(torch.get_num_threads()) or "encoded")
    assert out == "encoded" and seen == [max(1, threads - 1)] and torch.get_num_threads() == threads
    for a, b in zip(alone, boxes):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.categories, b.categories)
    with pytest.raises(ZeroDivisionError):  # the work's error reaches the caller, and the threads come back
        detector.detect_beside(photos[:2], lambda: 1 / 0)
    assert torch.get_num_threads() == threads
