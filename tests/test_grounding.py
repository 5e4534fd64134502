"""Regions, attention supervision, backing and the grounding figures, pinned on small
cases whose answers are known by hand."""

import numpy as np
import pytest
import torch

from captioner.detector import Boxes
from captioner.grounding_metrics import grounding_scores
from captioner.regions import Regions, pooled
from captioner.train.attention_targets import attention_loss, attention_targets, cells_in_boxes
from captioner.wordlists import category_of_words, coco_categories, named_objects

DOG, CAT = coco_categories().index("dog"), coco_categories().index("cat")


def boxes(*rows):
    """Boxes from (x0, y0, x1, y1, category, score) rows."""
    a = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return Boxes(a[:, :4], a[:, 4].astype(np.int64), a[:, 5])


def test_regions_keep_the_shown_boxes_best_first_and_mask_the_rest():
    r = Regions.of([boxes((0, 0, .5, .5, DOG, .9), (.5, .5, 1, 1, CAT, .7), (0, 0, 1, 1, CAT, .2)), Boxes.empty()], 3)
    assert r.mask.tolist() == [[True, True, False], [False, False, False]]
    assert r.categories[0, :2].tolist() == [DOG, CAT]
    assert r.geometry()[0, 0].tolist() == pytest.approx([0, 0, .5, .5, .25, .9])


def test_roi_align_pools_a_boxs_feature_from_the_grid():
    """On a grid whose features are their cells' centres (x, y), bilinear pooling of a box
    gives the box's centre (a linear map is sampled exactly), in the photo's 0..1 frame * 7."""
    rows, cols = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    grid = torch.stack([cols.flatten() + 0.5, rows.flatten() + 0.5], -1)[None]
    r = Regions.of([boxes((2 / 7, 1 / 7, 5 / 7, 3 / 7, DOG, .9))], 1)
    assert pooled(grid, r)[0, 0].tolist() == pytest.approx([3.5, 2.0], abs=1e-4)


def test_cells_in_a_box_are_those_whose_centres_it_holds_or_the_one_under_a_tiny_box():
    inside = cells_in_boxes(torch.tensor([[0.0, 0.0, 2 / 7, 1 / 7], [0.50, 0.50, 0.51, 0.51]]), 7)
    assert inside[0].nonzero().flatten().tolist() == [0, 1]
    assert inside[1].nonzero().flatten().tolist() == [3 * 7 + 3]


def test_the_step_that_writes_dog_is_pulled_into_the_dogs_box_and_its_region():
    words = ["<pad>", "<start>", "<end>", "a", "dog", "cat", "<obj1>"]
    token_category = category_of_words(words)
    r = Regions.of([boxes((0, 0, 1 / 7, 1 / 7, DOG, .9), (6 / 7, 6 / 7, 1, 1, CAT, .8))], 2)
    captions = torch.tensor([[1, 3, 4, 6, 2]])  # <start> a dog <obj1> <end>; the slot copies "cat"
    targets = attention_targets(captions, r, token_category, 49, slot_category=torch.tensor([[CAT]]), first_slot=6)
    assert targets.shape == (1, 4, 51)
    assert not targets[0, 0].any() and not targets[0, 3].any()  # "a", <end>
    assert targets[0, 1].nonzero().flatten().tolist() == [0, 49]  # "dog": its cell and its region
    assert targets[0, 2].nonzero().flatten().tolist() == [48, 50]  # the slot's cat
    on_target = torch.zeros(1, 4, 51)
    on_target[0, 1, 0], on_target[0, 2, 48] = 1.0, 1.0
    elsewhere = torch.zeros(1, 4, 51)
    elsewhere[0, 1:3, 20] = 1.0
    assert attention_loss(on_target, targets, 49) < 1e-4 < 10 < attention_loss(elsewhere, targets, 49)


def test_grounding_figures_of_a_caption_that_looks_at_its_dog_and_one_that_looks_nowhere():
    uniform = [1 / 49] * 49
    peaked = [0.0] * 49
    peaked[0] = 1.0
    box = [{"category": "dog", "score": .9, "box": [0, 0, 2 / 7, 2 / 7]}]
    looks = {"caption": "a dog", "words": ["a", "dog"], "attention": [uniform, peaked], "attention_grid": [7, 7],
             "boxes": box}
    flat = {**looks, "attention": [uniform, uniform]}
    invents = {**looks, "caption": "a dog and a pizza", "words": "a dog and a pizza".split(),
               "attention": [uniform] * 5}
    g = grounding_scores([looks, flat, invents], [["a dog on a rug"]] * 3)
    assert g["flat"] == 2 and g["pointed_words"] == 3 and g["pointing_game"] == pytest.approx((1 + 2 * 4 / 49) / 3)
    assert g["pointing_chance"] == pytest.approx(4 / 49, abs=0.01)  # a flat map scores its chance
    assert g["unbacked"] == 1
    assert named_objects("a hot dog and a teddy bear".split()) == [(2, "hot dog"), (6, "teddy bear")]


def test_a_box_the_word_attended_counts_in_the_map():
    box = [{"category": "dog", "score": .9, "box": [0.5, 0.5, 1.0, 1.0]}]
    result = {"caption": "a dog", "words": ["a", "dog"], "attention": [[1 / 49] * 49, [0.1 / 49] * 49],
              "attention_grid": [7, 7], "boxes": box, "attention_boxes": [[0.0], [0.9]]}
    g = grounding_scores([result])
    assert g["flat"] == 0 and g["pointing_game"] == 1.0 and g["in_box_ratio_median"] > 3


def test_attention_spread_evenly_over_cells_and_boxes_is_flat_and_the_cells_alone_point_honestly():
    """Even weights over 49 cells and 3 boxes: the map paints a small box's weight over its small
    area and calls it the hottest spot, pointing 1.0; over the entries the caption is flat, and
    the cells alone point where their own weights do."""
    boxes = [{"category": "dog", "score": .9, "box": [0.0, 0.0, 0.15, 0.15]},
             {"category": "cat", "score": .8, "box": [0.5, 0.5, 1.0, 1.0]},
             {"category": "cup", "score": .7, "box": [0.3, 0.0, 0.6, 0.3]}]
    even = {"caption": "a dog", "words": ["a", "dog"], "attention": [[1 / 52] * 49] * 2, "attention_grid": [7, 7],
            "boxes": boxes, "attention_boxes": [[1 / 52] * 3] * 2}
    g = grounding_scores([even])
    assert g["flat"] == 0 and g["pointing_game"] == 1.0  # the map is fooled
    assert g["flat_entries"] == 1  # no entry above 1.5x an even share
    peaked = [0.0] * 49
    peaked[0] = 0.9  # the top-left cell: its centre (1/14, 1/14) lies in the dog's box
    looks = {**even, "attention": [[1 / 52] * 49, peaked], "attention_boxes": [[1 / 52] * 3, [0.05, 0.05, 0.0]]}
    away = {**looks, "attention": [[1 / 52] * 49, peaked[::-1]]}  # the bottom-right cell: not the dog
    h = grounding_scores([looks, away])
    assert h["flat_entries"] == 0 and h["cells_pointed_words"] == 2 and h["cells_pointing_game"] == 0.5
    assert h["cells_pointing_chance"] == pytest.approx(1 / 49)


def tiny_region_captioner(**decoding):
    from captioner.decoding import DecodingConfig
    from captioner.model import Captioner
    from captioner.network import CaptionerConfig
    from captioner.objects import slot_tokens
    from captioner.vocabulary import Vocabulary

    vocab = Vocabulary.build(["a dog on a rug", "a cat and a dog", "a pizza on a table"], min_count=1,
                             extra=slot_tokens(2))
    config = CaptionerConfig(feature_dim=16, vocab_size=len(vocab), embed_dim=16, hidden_dim=16, decoder="attention",
                             grid_dim=16, attention_dim=16, detector=240, regions=3, dropout=0.0)
    torch.manual_seed(0)
    return Captioner(config, vocab, decoding=DecodingConfig(beam_size=2, max_length=6, **decoding))


def test_a_decoder_with_regions_weighs_cells_and_the_boxes_a_result_shows():
    """Each word's cell and box weights sum to 1; a box the photo lacks gets none; the
    boxes' weights line up with ``boxes`` (the shown ones, score >= 0.5)."""
    model = tiny_region_captioner()
    photos = [boxes((0, 0, .5, .5, DOG, .9), (.5, .5, 1, 1, CAT, .6), (0, 0, 1, 1, CAT, .3)), Boxes.empty()]
    results = model.caption_features(torch.randn(2, 16), grid=torch.randn(2, 49, 16), boxes=photos)
    first, second = (r.to_dict() for r in results)
    assert len(first["boxes"]) == 2 and all(len(a) == 2 for a in first["attention_boxes"])
    for r in (first, second):
        for cells, seen in zip(r["attention"], r["attention_boxes"]):
            assert len(cells) == 49 and sum(cells) + sum(seen) == pytest.approx(1.0, abs=1e-3)
    assert second["attention_boxes"] == [[] for _ in second["words"]]


def test_an_object_word_nothing_backs_is_never_written():
    """With ``back_objects``, a word naming a COCO object needs a box (or a concept or an
    ImageNet object) of it: the same network never writes "pizza" or "dog" without one."""
    model = tiny_region_captioner(back_objects=0.5)
    with torch.no_grad():  # a network that loves "pizza" and "dog"
        for word in ("pizza", "dog"):
            model.network.decoder.out.bias[model.vocab.index[word]] += 20.0
    feats, grid = torch.randn(2, 16), torch.randn(2, 49, 16)
    photos = [boxes((0, 0, .5, .5, DOG, .9)), Boxes.empty()]
    backed, bare = model.caption_features(feats, grid=grid, boxes=photos)
    assert "dog" in backed.words and "pizza" not in backed.words
    assert not {"dog", "pizza"} & set(bare.words)
    model.decoding.back_objects = None
    assert "pizza" in model.caption_features(feats, grid=grid, boxes=photos)[1].words
