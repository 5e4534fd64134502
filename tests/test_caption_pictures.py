"""The caption tab's pictures: the photo whole with readable boxes, and where each word
looked, shown only when the model's attention points somewhere."""

import numpy as np
from PIL import Image

from webapp.caption_pictures import boxed_photo, says_something, word_pictures

PHOTO = Image.new("RGB", (640, 320), (90, 120, 160))
BOXES = [{"category": "dog", "score": 0.91, "box": [0.0, 0.0, 0.5, 1.0]},
         {"category": "frisbee", "score": 0.62, "box": [0.6, 0.2, 0.9, 0.5]}]


def result(attention, attention_boxes=None):
    r = {"caption": "a dog", "words": ["a", "dog"], "probabilities": [0.9, 0.8], "attention": attention,
         "attention_grid": [2, 2], "boxes": BOXES}
    if attention_boxes is not None:
        r["attention_boxes"] = attention_boxes
    return r


def test_the_boxed_photo_is_whole_at_about_800_px_with_every_box_drawn():
    boxed = boxed_photo(PHOTO, BOXES)
    assert boxed.size == (800, 400)  # the aspect kept: nothing cropped
    pixels = np.asarray(boxed)
    assert (pixels[:, 0] == (220, 38, 38)).all(axis=1).sum() > 300  # the first box's left edge, whole
    assert (pixels[:, 0] != (90, 120, 160)).any()
    assert boxed_photo(PHOTO, None).size == (800, 400)


def test_even_attention_says_nothing_and_is_not_shown():
    even = [[0.25] * 4, [0.25] * 4]
    assert not says_something(result(even))
    assert says_something(result([[0.7, 0.1, 0.1, 0.1], [0.25] * 4]))
    # over cells and boxes (summing to 1): a word that put most of its weight on one box
    assert says_something(result([[0.05] * 4, [0.05] * 4], [[0.7, 0.1], [0.4, 0.4]]))
    assert not says_something(result(even, [[0.0, 0.0], [0.0, 0.0]]))
    assert not says_something({"words": ["a"], "probabilities": [0.5]})  # no attention at all


def test_each_word_gets_the_whole_photo_and_an_attended_box_glows():
    shown = word_pictures(PHOTO, result([[0.1, 0.1, 0.1, 0.7], [0.25] * 4], [[0.0, 0.0], [0.9, 0.0]]), "dog.jpg")
    assert [label for _, label in shown] == ["1. a (dog.jpg)", "2. dog"]
    assert all(picture.size == (360, 180) for picture, _ in shown)
    first, second = (np.asarray(p, dtype=float) for p, _ in shown)
    plain = np.asarray(PHOTO.resize((360, 180)), dtype=float)
    assert abs(second[40, 5] - plain[40, 5]).sum() > 20  # "dog" looked at the dog's box: it glows
    assert abs(first[40, 5] - plain[40, 5]).sum() < 20  # "a" looked elsewhere (bottom right)
    assert abs(first[160, 340] - plain[160, 340]).sum() > 20


def test_neighbouring_boxes_labels_do_not_cover_each_other():
    from PIL import ImageDraw

    from webapp.caption_pictures import label, overlaps

    picture = Image.new("RGB", (800, 400))
    draw, taken = ImageDraw.Draw(picture), []
    for box in ([500, 200, 620, 350], [420, 210, 540, 340], [380, 220, 450, 330]):  # side by side, tops close
        label(draw, box, "horse 88%", (220, 38, 38), 26, picture.size, taken)
    assert len(taken) == 3 and not any(overlaps(a, b) for i, a in enumerate(taken) for b in taken[i + 1:])
