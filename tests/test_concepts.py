"""Everyday scenes: concepts learned from captions (MIL over the grid), captions without
photos as training rows, the article rule, hallucination counts and the concept-retrieval
baseline."""

import torch

from captioner.concepts import (
    ConceptClassifier,
    ConceptFit,
    ConceptNoise,
    concept_labels,
    concept_vocabulary,
    fit_concept_classifier,
)
from captioner.train.batches import TextTable, object_words_named
from captioner.train.metrics import object_mention_scores
from captioner.train.retrieval import ConceptRetrieval
from captioner.vocabulary import Vocabulary, fix_article, with_article


def test_noisy_or_is_one_minus_the_product_over_cells():
    torch.manual_seed(0)
    detector = ConceptClassifier(8, 3)
    grid = torch.randn(2, 5, 8)
    cells = torch.sigmoid(detector.cell(grid))
    torch.testing.assert_close(detector(grid), 1 - (1 - cells).prod(1), atol=1e-6, rtol=1e-5)


def test_mil_detectors_find_the_cell_that_shows_the_word():
    """A word present in a photo when one of its 49 cells holds a pattern, anywhere: the
    detector learns it from photo-level labels alone."""
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(16, generator=g)
    grids = torch.randn(400, 49, 16, generator=g)
    labels = (torch.rand(400, 1, generator=g) < 0.5).float()
    where = torch.randint(0, 49, (400,), generator=g)
    grids[torch.arange(400), where] += 3 * pattern * labels[:, 0, None]
    detector = fit_concept_classifier(grids[:300], labels[:300], fit=ConceptFit(epochs=30, lr=1e-2, batch_size=64))
    with torch.no_grad():
        p = detector(grids[300:])[:, 0]
    positive, negative = p[labels[300:, 0] > 0], p[labels[300:, 0] == 0]
    assert positive.min() > negative.max(), "every held-out photo with the word scores above every one without"


def test_concepts_are_frequent_content_words_and_labels_are_any_caption():
    captions = ["A man sits at a kitchen table.", "The man in the kitchen.", "A dog on the grass.", "a dog runs"]
    words = concept_vocabulary(captions, size=4)
    assert set(words[:3]) == {"man", "kitchen", "dog"}  # each in two captions
    assert "the" not in words and "a" not in words and "sits" in words
    labels = concept_labels([captions[:2], captions[2:]], ["man", "dog", "kitchen"])
    assert labels.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_text_rows_draw_probabilities_from_the_detectors_real_scores():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.05], [0.2, 0.6], [0.1, 0.7], [0.15, 0.9]])
    labels = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]]).float()
    noise = ConceptNoise(scores, labels, min_photos=3)
    drawn = noise.sample(torch.tensor([[1.0, 0.0]] * 500), torch.Generator().manual_seed(0))
    assert drawn[:, 0].min() >= 0.7 - 1e-6 and drawn[:, 0].max() <= 0.9 + 1e-6  # positives of concept 0
    assert drawn[:, 1].min() >= 0.05 - 1e-6 and drawn[:, 1].max() <= 0.2 + 1e-6  # negatives of concept 1
    again = noise.sample(torch.tensor([[1.0, 0.0]] * 500), torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)


def test_text_table_copies_named_objects_and_keeps_slots_with_their_words():
    photos = {"coco:1.jpg": ["A pizza on a plate next to a cup of coffee.", "a pizza with cheese"],
              "coco:2.jpg": ["two zebras in a field"]}
    object_words = ["pizza", "coffee", "zebra", "dog", "tripod", "cup", "plate", "banana"]
    assert object_words_named(photos["coco:1.jpg"], object_words) == ["pizza", "plate", "cup", "coffee"]
    slots = 3
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "on", "next", "to", "of", "with", "cheese", "two", "zebras",
             "in", "field", "cup", "coffee", "plate", "pizza", "<obj1>", "<obj2>", "<obj3>"]
    vocab = Vocabulary(words)
    table = TextTable(photos, vocab, object_words, slots, ["pizza", "field"], max_words=30, miss=0.0, seed=0)
    assert len(table) == 3 and table.labels.tolist() == [[True, False], [False, True]]
    first = len(vocab) - slots
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        captions, classified, concepts, boxes = table.batch(torch.arange(3), None, g)
        assert concepts is None and boxes is None
        assert bool((classified.probs[:, :-1] >= classified.probs[:, 1:]).all()), "slots ranked by probability"
        for row, ids in enumerate(captions):
            text = " ".join(photos[list(photos)[int(table.photo[row])]]).lower()
            slots_used = [t - first for t in ids.tolist() if t >= first]
            # each slot token, after the slots were re-ranked, still stands for a word the captions named
            assert all(object_words[int(classified.words[row, k])] in text for k in slots_used)
            assert row == 2 or slots_used, "the pizza captions name their objects through slots"


def test_text_rows_get_detector_summaries_from_real_photos_of_the_same_label():
    """A text row's detector inputs are what the detector gave a real photo whose captions
    name (or do not name) the same categories: its misses and false alarms included."""
    from captioner.train.batches import DetectorNoise, category_labels
    from captioner.wordlists import coco_categories

    real_labels = category_labels([["a pizza on a plate"], ["a pizza"], ["a pizza slice"], ["two zebras in a field"],
                                   ["zebras"], ["a zebra"]])
    pizza, zebra = coco_categories().index("pizza"), coco_categories().index("zebra")
    assert real_labels[:3, pizza].all() and not real_labels[3:, pizza].any() and real_labels[3:, zebra].all()
    summaries = torch.zeros(6, 80, 3)
    summaries[:3, pizza] = torch.tensor([[0.9, 0.69, 0.5], [0.0, 0.0, 0.0], [0.7, 0.69, 0.3]])  # one pizza missed
    summaries[3, pizza] = torch.tensor([0.4, 0.0, 0.1])  # a false alarm on a zebra photo
    summaries[3:, zebra] = torch.tensor([0.95, 1.1, 0.6])
    noise = DetectorNoise(summaries.flatten(1), real_labels)
    assert noise.rates["miss"] > 0 and noise.rates["false_alarm"] > 0
    wanted = category_labels([["a pizza on a table"]] * 300)
    drawn = noise.sample(wanted, torch.Generator().manual_seed(0)).view(300, 80, 3)
    seen = {tuple(round(v, 2) for v in t.tolist()) for t in drawn[:, pizza]}
    assert seen == {(0.9, 0.69, 0.5), (0.0, 0.0, 0.0), (0.7, 0.69, 0.3)}  # the positives' triples, miss included
    assert {round(v, 2) for v in drawn[:, zebra, 0].tolist()} == {0.0}  # no zebra photo without its zebra label


def test_articles_in_one_place():
    assert with_article("orange") == "an orange" and with_article("uniform") == "a uniform"
    assert with_article("coffee") == "coffee" and with_article("hot dog") == "a hot dog"
    before = ["a", "boy", "with", "a"]
    fix_article(before, ["coffee"])
    assert before == ["a", "boy", "with"]
    before = ["an"]
    fix_article(before, ["zebra"])
    assert before == ["a"]


def test_hallucination_counts_against_the_human_captions():
    refs = {"kitchen": ["a kitchen with a stove and an oven", "a white stove in a kitchen"],
            "street": ["a man rides a bike down the street", "a person on a bicycle"]}
    said = {"kitchen": "a man standing in a kitchen with an oven", "street": "a man riding a bike"}
    scores = object_mention_scores(refs, said)
    assert scores["CHAIR_s"] == 0.5 and scores["CHAIR_i"] == 1 / 4  # the man in the kitchen
    assert scores["people_free_photos"] == 1 and scores["person_in_people_free"] == 1.0


def test_concept_retrieval_picks_the_caption_that_matches_what_is_recognised():
    captions = ["a man riding a horse", "a pizza on a plate on a table", "a kitchen with a stove"]
    lookup = ConceptRetrieval(captions, ["man", "table", "kitchen"], ["pizza", "plate", "stove", "horse"])
    concepts = torch.tensor([[0.1, 0.8, 0.2], [0.05, 0.3, 0.9]])
    objects = [[{"word": "pizza", "probability": 0.7}, {"word": "plate", "probability": 0.3}],
               [{"word": "stove", "probability": 0.6}]]
    assert lookup(concepts, objects) == ["a pizza on a plate on a table", "a kitchen with a stove"]


def test_blocked_trigrams_cannot_repeat_and_nothing_else_is_touched():
    from captioner.rules import repeat_bans

    def banned(n):
        ban = torch.zeros(2, 12)
        repeat_bans(ban, seqs, n, first_slot=10)
        return [row.nonzero().flatten().tolist() for row in ban]

    # "a cup of coffee and a cup of": the word after "cup of" was "coffee" (id 9): banned now
    seqs = torch.tensor([[4, 7, 8, 9, 5, 4, 7, 8], [4, 7, 8, 11, 5, 6, 1, 2]])
    # row 0: "of" again, and "coffee" after "cup of"; row 1: the last word, and the slot used once
    assert banned(3) == [[8, 9], [2, 11]]
    assert banned(0) == [[], []]
