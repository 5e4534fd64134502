"""Objects as words: the reviewed ImageNet map, the detector on real photos, slots in
captions and results, and familiarity on real photos."""

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.inputs import PhotoInputs
from captioner.objects import ImageNetClassifier, object_vocabulary, substitute_slots
from captioner.wordlists import imagenet_words, mentioned_categories
from tests.conftest import flickr_sample, shipped


def test_the_imagenet_map_names_every_class_in_the_classifier_order():
    from captioner.encoders import imagenet_categories
    from captioner.wordlists import DATA

    rows = [line.split("\t") for line in (DATA / "imagenet_words.tsv").read_text().splitlines()
            if not line.startswith("#")]
    assert [int(i) for i, _, _ in rows] == list(range(1000))
    assert [name for _, name, _ in rows] == list(imagenet_categories())
    words = imagenet_words()
    assert {words[i] for i in range(151, 269)} == {"dog"}  # every breed
    assert {words[i] for i in range(281, 286)} == {"cat"}
    names = dict(zip(imagenet_categories(), words))
    assert (names["espresso"], names["refrigerator"], names["tripod"], names["broccoli"], names["pizza"]) == (
        "coffee", "refrigerator", "tripod", "broccoli", "pizza")
    assert names["web site"] == "" and 30 < words.count("") < 100  # no plain caption word: nothing
    assert all(w == w.lower() and all(c.isalpha() or c in " -" for c in w) for w in words)
    # a word the map gives is one the object-mention scores understand where COCO has it
    assert mentioned_categories(names["studio couch"].split()) == {"couch"}
    assert mentioned_categories(names["park bench"].split()) == {"bench"}


def test_slots_replace_mentions_of_detected_objects_longest_first():
    tokens = "a dog and a teddy bear on a bench near a dog".split()
    assert substitute_slots(tokens, ["dog", "teddy bear", "bear"]) == \
        "a <obj1> and a <obj2> on a bench near a <obj1>".split()
    assert substitute_slots(tokens, []) == tokens


@pytest.fixture(scope="module")
def wild(lite0):
    """scikit-image's sample photos: a cat, an espresso, a photographer at a tripod, a
    Hubble deep field, a microscope slide."""
    import skimage.data as data

    names = ["chelsea", "coffee", "camera", "hubble_deep_field", "immunohistochemistry"]
    images = [Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB") for n in names]
    return names, lite0.encode(lite0.preprocess.batch(images))


def test_the_encoders_classifier_finds_the_objects_as_words(lite0, wild):
    names, features = wild
    words, class_word = object_vocabulary()
    detector = ImageNetClassifier(1280, len(words), slots=3).fill(lite0.classifier, class_word)
    found = detector(features)
    top = {n: (words[int(w[0])], float(p[0])) for n, w, p in zip(names, found.words, found.probs)}
    assert top["chelsea"][0] == "cat" and top["chelsea"][1] > 0.8
    assert top["coffee"][0] == "coffee" and top["coffee"][1] > 0.6
    assert top["camera"][0] == "tripod" and top["camera"][1] > 0.8
    assert top["hubble_deep_field"][1] < 0.5  # nothing it knows well
    probs = detector.word_probabilities(features)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(names)), atol=0.2, rtol=0)  # a few classes map to nothing


def test_results_write_slots_as_their_objects_words(tiny_captioner):
    model, _, features, _ = tiny_captioner
    first = model.network.decoder.first_slot
    objects = ["orange", "teddy bear"]
    assert model.words_of([1, first, model.vocab.end_id], objects) == ["orange"]
    a = model.vocab.index["a"]
    assert model.words_of([a, first], objects) == ["an", "orange"]  # the article follows the object
    assert model.words_of([a, first + 1], objects) == ["a", "teddy", "bear"]
    for r in model.caption_features(features[:4], beam_size=2):
        assert len(r.objects) == 2 and all(0 < o["probability"] <= 1 for o in r.objects)
        assert len(r.words) == len(r.probabilities) and r.caption == " ".join(r.words)
        assert not any(w.startswith("<obj") for w in r.words)


def test_required_confident_objects_appear_in_the_caption(tiny_captioner):
    from dataclasses import replace

    model, _, features, _ = tiny_captioner
    decoding = model.decoding
    try:
        model.decoding = replace(decoding, require_object_prob=0.0)  # the top object, always
        for beam in (1, 3):
            for r in model.caption_features(features, beam_size=beam):
                assert set(r.objects[0]["word"].split()) <= set(r.words), (r.caption, r.objects[0])
    finally:
        model.decoding = decoding


def test_familiarity_tells_photos_like_the_training_photos_from_telescope_and_microscope_images(wild):
    from captioner.model import Captioner
    from captioner.results import UNFAMILIAR

    model = Captioner.from_checkpoint(shipped("captioner.safetensors"), load_encoder=False)
    assert model.network.familiarity is not None, "the shipped captioner must carry its familiarity references"
    names, features = wild
    familiarity = dict(zip(names, model.network.familiarity(features).tolist()))
    assert familiarity["hubble_deep_field"] < UNFAMILIAR and familiarity["immunohistochemistry"] < UNFAMILIAR
    from captioner.train.datasets import read_dataset, split_records
    from lstmkit.images import load_image

    lite0 = model.require_encoder()
    held_out = split_records(read_dataset("flickr8k", flickr_sample(1)[0][0].parent.parent).records)["test"]
    photos = list(dict.fromkeys(r.image for r in held_out))[:40]
    scores = model.network.familiarity(lite0.encode(lite0.preprocess.batch([load_image(p) for p in photos])))
    assert float(scores.median()) > 0.2 and float((scores < UNFAMILIAR).float().mean()) <= 0.05


def test_shipped_captioner_names_the_cat_the_coffee_and_the_tripod(wild):
    """The photos of the issue: the encoder knows them, so the caption names them."""
    import skimage.data as data

    from captioner.model import Captioner

    model = Captioner.from_checkpoint(shipped("captioner.safetensors"))
    names = wild[0]
    results = dict(zip(names, model.caption([Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB")
                                             for n in names])))
    assert "cat" in results["chelsea"].words, results["chelsea"].caption
    assert {"coffee", "cup"} & set(results["coffee"].words), results["coffee"].caption
    assert {"tripod", "camera"} & set(results["camera"].words), results["camera"].caption
    for name in names:
        r = results[name]
        assert 0.0 <= r.familiarity <= 1.0 and r.objects and len(r.words) == len(r.probabilities)


def test_photos_described_from_their_objects_alone_ignore_everything_else_of_the_features(tiny_captioner):
    model, _, features, _ = tiny_captioner
    network = model.network
    ctx, classified = network.context(PhotoInputs(features[:2]))
    only, same = network.context(PhotoInputs(features[:2], objects_only=torch.tensor([True, False])))
    summary = (classified.probs[..., None] * ctx["objects"]).sum(1)
    torch.testing.assert_close(only["image"][0], summary[0])  # the objects' words, nothing else
    torch.testing.assert_close(only["image"][1], ctx["image"][1])
    assert same.words.tolist() == classified.words.tolist()
