"""Our fast CIDEr-D and constant-caption BLEU-4 against pycocoevalcap's scorers; the one
scoring function; object mentions."""

import contextlib
import io
import math

import pytest

from captioner.train.cider import CiderD
from captioner.train.metrics import best_constant_caption, caption_scores, consensus_caption, object_mention_scores
from captioner.vocabulary import tokenize
from captioner.wordlists import mentioned_categories

REFS = {
    "1": ["a dog runs on the grass", "a brown dog is running through a field", "the dog plays outside"],
    "2": ["a man rides a bike down the street", "a cyclist on a city road", "a man on a bicycle"],
    "3": ["two children play in the water", "kids splash at the beach", "two kids playing in the ocean waves"],
    "4": ["a dog jumps over a log", "a black dog leaps in the woods", "a dog jumping"],
}
PREDS = {"1": "a dog is running on the grass", "2": "a man riding a bike", "3": "two dogs play in the snow",
         "4": "a black dog jumps"}


def _coco(scorer, refs, preds):
    gts = {k: [" ".join(tokenize(c)) for c in v] for k, v in refs.items()}
    res = {k: [" ".join(tokenize(v))] for k, v in preds.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        return scorer.compute_score(gts, res)


def test_cider_d_matches_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider

    expected, per_image = _coco(Cider(), REFS, PREDS)
    ours = CiderD([[tokenize(c) for c in REFS[k]] for k in sorted(REFS)])
    scores = [ours.score(tokenize(PREDS[k]), ours.prepare_refs([tokenize(c) for c in REFS[k]])) for k in sorted(REFS)]
    assert scores == pytest.approx(list(per_image), abs=1e-6)
    assert sum(scores) / len(scores) == pytest.approx(expected, abs=1e-6)


def test_best_constant_caption_scores_what_pycocoevalcap_says():
    from pycocoevalcap.bleu.bleu import Bleu

    candidates = ["a dog", "a dog runs on the grass", "a man on a bicycle", "a dog is running in the water"]
    best, score = best_constant_caption([REFS[k] for k in sorted(REFS)], candidates)
    for candidate in candidates:
        bleu, _ = _coco(Bleu(4), REFS, dict.fromkeys(REFS, candidate))
        assert bleu[3] <= score + 1e-9
        if " ".join(tokenize(candidate)) == best:
            assert bleu[3] == pytest.approx(score, rel=1e-6)


def test_consensus_picks_the_caption_the_others_agree_with():
    captions = ["a dog runs on the grass", "a dog runs on green grass", "a dog is running on the grass",
                "an airplane in the sky"]
    assert consensus_caption(captions) != "an airplane in the sky"
    assert consensus_caption(["a cat"]) == "a cat"


def test_caption_scores_are_pycocoevalcaps_plus_object_mentions():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    scores = caption_scores(REFS, PREDS, meteor=False)
    bleu, _ = _coco(Bleu(4), REFS, PREDS)
    cider, _ = _coco(Cider(), REFS, PREDS)
    # pycocoevalcap's PTB tokenizer (Java) and ours agree on these plain captions
    assert scores["BLEU-4"] == pytest.approx(bleu[3], abs=1e-9)
    assert scores["CIDEr"] == pytest.approx(cider, abs=1e-9)
    assert "METEOR" not in scores
    assert {"object_precision", "object_recall", "object_f1"} <= set(scores)


def test_object_mentions_use_synonyms_plurals_and_the_longest_phrase():
    assert mentioned_categories(tokenize("Two men and a puppy on a sofa")) == {"person", "dog", "couch"}
    assert mentioned_categories(tokenize("a hot dog and a teddy bear")) == {"hot dog", "teddy bear"}
    assert mentioned_categories(tokenize("a plate of broccoli next to a fork")) == {"broccoli", "fork"}


def test_object_mention_scores_count_objects_named_by_two_references():
    refs = {"a": ["a man with a dog", "a person walking a dog", "a dog on a leash near a bench"],
            "b": ["a pizza on a table", "pizza and a glass of wine", "a slice of pizza"]}
    preds = {"a": "a man and a dog on a bench", "b": "a cat sitting on a table"}
    s = object_mention_scores(refs, preds)
    # truth: a = {person, dog} (bench in one caption only), b = {pizza}; said: {person, dog, bench}, {cat, table}
    assert (s["objects_correct"], s["objects_named"], s["objects_true"]) == (2, 5, 3)
    assert s["object_precision"] == pytest.approx(2 / 5) and s["object_recall"] == pytest.approx(2 / 3)
    assert s["object_f1"] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))


def test_the_reward_counts_the_end_of_the_sentence():
    """Self-critical training's reward: a caption that ends scores more than the same words
    cut short, and "... in a a" trailing off scores less than the sentence that ends."""
    from captioner.train.losses import SentenceReward

    refs = [[tokenize(c) for c in REFS[k]] for k in sorted(REFS)]
    reward = SentenceReward([refs[0] + refs[0], *refs[1:]])  # a photo repeated in the data keeps its references once
    assert len(reward.refs[0]) == len(refs[0])
    words = refs[0][0]
    assert reward(0, words, ended=True) > reward(0, words, ended=False) > 0
    assert reward(0, words[:-2], ended=True) > reward(0, words[:-2] + ["in", "a", "a"], ended=False)


def test_the_reward_takes_off_for_each_action_the_photos_references_never_state():
    """--unsupported-penalty: "a man is sitting on a plate" of a man frying a sandwich costs
    the penalty ("sitting" is no reference's); "riding" meets "rides", "running" meets "runs"."""
    from captioner.train.losses import SentenceReward, action_stem

    refs = [[tokenize(c) for c in ("a man frying a sandwich in a pan", "a man rides a horse", "a dog runs")]] * 2
    plain, strict = SentenceReward(refs), SentenceReward(refs, unsupported=0.5)
    assert strict.unsupported_actions(0, tokenize("a man is sitting on a plate")) == ["sitting"]
    assert not strict.unsupported_actions(0, tokenize("a man riding a horse while a dog is running"))
    sitting = tokenize("a man is sitting on a sandwich")
    assert strict(0, sitting, ended=True) == pytest.approx(plain(0, sitting, ended=True) - 0.5)
    frying = tokenize("a man frying a sandwich")
    assert strict(0, frying, ended=True) == plain(0, frying, ended=True)
    assert {action_stem(w) for w in ("flying", "flies")} == {"fly"}


def test_the_reward_weighs_words_by_its_familys_captions(tmp_path):
    """``--reward-captions``: a word every caption of a family uses ("food") is worth little
    in that family's photos' rewards beside the specific word ("broccoli"), where before
    both scored the same; a
    photo of the other family keeps the weights of its own captions alone."""
    import json

    from captioner.train.losses import SentenceReward
    from captioner.train.training_data import reward_corpora

    refs = [[tokenize(c) for c in caps] for caps in (
        ["a plate of food with broccoli", "a plate of broccoli and food"], REFS["1"], REFS["2"], REFS["4"])]
    families = ["coco", "flickr", "coco", "flickr"]
    path = tmp_path / "captions.json"
    names = [{"id": i, "file_name": f"{i}.jpg"} for i in range(40)]
    captions = [{"id": i, "image_id": i, "caption": f"some food on a table number {i}"} for i in range(40)]
    path.write_text(json.dumps({"images": names, "annotations": captions}))
    by_name = reward_corpora([f"coco:{path}"])
    assert set(by_name) == {"coco"} and len(by_name["coco"]) == 40
    assert by_name["coco"]["0.jpg"] == [tokenize("some food on a table number 0")]
    corpora = {family: list(photos.values()) for family, photos in by_name.items()}
    before, after = SentenceReward(refs), SentenceReward(refs, families, corpora)
    food, broccoli = tokenize("a plate of food"), tokenize("a plate of broccoli")
    assert before(0, broccoli, ended=True) == pytest.approx(before(0, food, ended=True))
    assert after(0, broccoli, ended=True) > 1.05 * after(0, food, ended=True)
    dog = tokenize("a dog is running on the grass")  # the flickr family has no corpus: all photos' weights
    assert after(1, dog, ended=True) == pytest.approx(before(1, dog, ended=True))
    flickr = SentenceReward(refs, families, {**corpora, "flickr": [[tokenize("a dog")]]})
    alone = SentenceReward([refs[1], refs[3], [tokenize("a dog")]])  # its own photos and its corpus
    assert flickr(1, dog, ended=True) == pytest.approx(alone(0, dog, ended=True))
    assert flickr(1, dog, ended=True) != pytest.approx(before(1, dog, ended=True))


def test_the_rewards_corpus_leaves_out_the_training_photos_and_knows_each_dataset(tmp_path):
    """A training photo's captions count once in the word weights, even when the corpus
    holds it too; every COCO part is the coco family, Flickr8k the flickr one."""
    from captioner.train.datasets import CaptionRecord
    from captioner.train.training_data import Data, family_of, self_critical_reward

    assert {family_of(k) for k in ("coco", "coco-karpathy", "coco_val2017", "coco_extra", "coco_train2014")} == {"coco"}
    assert family_of("flickr8k") == "flickr" and family_of("corrections") == "corrections"
    corpus = tmp_path / "flickr.txt"
    corpus.write_text("image,caption\nshared.jpg,a dog runs\nother.jpg,a cat sleeps\n")
    images = [tmp_path / "shared.jpg", tmp_path / "mine.jpg"]
    records = [CaptionRecord(images[0], "a dog runs", "flickr8k"), CaptionRecord(images[1], "a man walks", "flickr8k")]
    data = Data({"train": records, "val": [], "test": []}, {"train": [], "val": []}, {}, [])
    reward = self_critical_reward([[tokenize("a dog runs")], [tokenize("a man walks")]], images, data,
                                  [f"flickr:{corpus}"])
    assert reward.scorers[0] is reward.scorers[1]
    assert math.isclose(reward.scorers[0].log_n, math.log(3))  # the two photos and other.jpg, not shared.jpg again
