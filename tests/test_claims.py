"""What a caption claims, the human captions' table of claims, and the choice among a
beam's captions that keeps only what people say."""

import gzip
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner import search
from captioner.choice import choose, overcounted, soften
from captioner.claims import Belief, ClaimTable, claim_table, closes_phrase, parse, place, ungendered
from captioner.inputs import PhotoInputs
from captioner.vocabulary import tokenize
from tests.test_decoder import random_captioner

EXAMPLES = Path(__file__).resolve().parent.parent / "webapp" / "examples"


def claims(text):
    return [(c.subject, c.relation, c.object) for c in parse(tokenize(text)).claims]


def test_a_caption_reads_as_subject_relation_object_triples():
    assert claims("a man is sitting on a plate") == [("man", "sitting on", "plate")]
    assert claims("a flag is flying a kite in the air") == [("flag", "flying", "kite"), ("kite", "in", "air")]
    assert claims("a group of people are standing in front of a frisbee") == [
        ("people", "standing in front of", "frisbee")]
    assert claims("a man and a woman are sitting at a groom") == [("man", "sitting at", "groom"),
                                                                   ("woman", "sitting at", "groom")]
    assert claims("a kitchen with a stove and a refrigerator") == [("kitchen", "with", "stove"),
                                                                   ("kitchen", "with", "refrigerator")]
    assert claims("a dog laying on a bed while a man watches tv")[-1] == ("man", "watches", "tv")
    assert parse(tokenize("two giraffes")).subjects == ["giraffe"] and not claims("two giraffes")
    assert parse(tokenize("a close up of a large rock in the air")).subjects == ["rock"]


def test_the_table_counts_what_people_say_and_flags_what_they_never_do(tmp_path):
    table = ClaimTable.of_captions(tokenize(c) for c in ["A man sitting on a bench.", "a man is sitting on a bench",
                                                        "a dog on a beach"])
    assert table.counts["man|sitting on|bench"] == 2
    assert [c.key for c in table.unseen(tokenize("a man is sitting on a plate"))] == ["man|sitting on|plate"]
    assert not table.unseen(tokenize("a man sitting on a bench"), least=2)
    assert table.unseen(tokenize("a dog on a beach"), least=2)
    table.save(tmp_path / "a.tsv.gz")
    table.save(tmp_path / "b.tsv.gz")
    assert (tmp_path / "a.tsv.gz").read_bytes() == (tmp_path / "b.tsv.gz").read_bytes()  # byte-reproducible
    assert ClaimTable.load(tmp_path / "a.tsv.gz").counts == table.counts
    assert gzip.decompress((tmp_path / "a.tsv.gz").read_bytes()).decode().splitlines()[0] == "2\tman|sitting on|bench"


def test_the_shipped_table_knows_benches_from_plates():
    table = claim_table()
    assert table.count(parse(tokenize("a man sitting on a bench")).claims[0]) > 100
    for absurd in ("a man is sitting on a plate", "a flag is flying a kite", "a woman is standing on a sombrero"):
        assert table.unseen(tokenize(absurd), 2), absurd


def words(text):
    return [[w] for w in text.split()]


def test_choose_takes_the_best_caption_whose_claims_people_state_else_cuts_before_the_first_unseen():
    table = ClaimTable.of_captions(tokenize(c) for c in ["a man sitting on a bench"] * 2)
    best, other = words("a man is sitting on a plate"), words("a man sitting on a bench")
    assert choose([best, other], Belief(table, 2)) == (1, None)
    assert choose([best], Belief(table, 2)) == (0, 2)  # "a man"
    # an object slot is one token of two words: the cut counts tokens, not words
    slot = [["a"], ["tennis", "player"], ["is"], ["sitting"], ["on"], ["a"], ["plate"]]
    assert choose([slot], Belief(table, 2)) == (0, 2)
    # the detector counted one person: "a man and a woman" says more than it sees
    pair = words("a man and a woman sitting on a bench")
    assert choose([pair, other], Belief(table, 1), {"person": 1}) == (1, None)
    assert choose([pair, other], Belief(table, 1), {"person": 2})[0] == 1  # the pair's claims are unseen in this table


def test_overcounted_compares_numbers_with_the_detectors_counts():
    assert overcounted(tokenize("two zebras standing in a field"), {"zebra": 1}) == ["zebra"]
    assert overcounted(tokenize("a group of people on a beach"), {"person": 1}) == ["person"]
    assert not overcounted(tokenize("two zebras"), {"zebra": 2})
    assert not overcounted(tokenize("a man on a beach"), {"person": 1})


def test_a_cut_caption_gets_the_place_people_put_its_subject_in():
    table = ClaimTable.of_captions(tokenize(c) for c in ["a man in a kitchen", "a man in a kitchen",
                                                        "a man at a kitchen"])
    assert place(["a", "man"], [("kitchen", 0.9)], table, 2) == ["in", "a", "kitchen"]
    assert place(["a", "man"], [("kitchen", 0.3)], table, 2) == []  # not sure enough
    assert place("a man in a kitchen".split(), [("kitchen", 0.9)], table, 2) == []  # it says where already
    assert place("a man holding a cup".split(), [("kitchen", 0.9)], table, 2) == []  # and what goes on


def test_a_gender_the_concepts_are_unsure_of_becomes_neutral():
    pair = "a man and a woman sitting on a bench".split()
    assert ungendered(pair, {}, 0.5) == "two people sitting on a bench".split()
    assert ungendered("a young boy riding a horse".split(), {"boy": 0.8}, 0.5) is None
    assert ungendered("a woman holding an umbrella".split(), {"man": 0.7, "woman": 0.6}, 0.5) == \
        "a person holding an umbrella".split()


def test_force_gives_the_probabilities_the_search_gave_its_own_caption():
    model = random_captioner(seed=3)
    ctx, _ = model.network.context(PhotoInputs(torch.randn(4, 32)))
    found = search.beam_search(model.network.decoder, ctx, 3, 12)
    forced = search.force(model.network.decoder, ctx, [d.ids for d in found])
    for f, d in zip(forced, found):
        assert f.ids == d.ids
        torch.testing.assert_close(torch.tensor(f.probabilities), torch.tensor(d.probabilities))
        assert f.score == pytest.approx(d.score, abs=1e-5)


def test_the_shipped_model_takes_back_every_claim_when_no_claim_is_known(monkeypatch):
    from captioner import model as model_module
    from captioner.model import Captioner

    captioner = Captioner.from_checkpoint(int8=True)
    photos = [Image.open(EXAMPLES / n).convert("RGB") for n in ("horses.jpg", "kitchen.jpg", "tennis.jpg")]
    plain = captioner.caption(photos)
    monkeypatch.setattr(model_module, "claim_table", lambda: ClaimTable())
    captioner.decoding = replace(captioner.decoding, claims_seen=1)
    cut = captioner.caption(photos)
    greedy = captioner.caption(photos, beam_size=1)  # greedy's caption is checked too
    for before, after in [*zip(plain, cut), *zip(plain, greedy)]:
        # what is left says who or what, and at most where it is or what is with it: no action
        assert all(c.relation in ("in", "on", "at", "near", "by", "with") for c in parse(after.words).claims), after
        assert len(after.words) == len(after.probabilities) == len(after.attention)
        assert len(after.words) <= len(before.words) + 3
    assert any(a.caption != b.caption for a, b in zip(plain, cut))


def test_a_cut_caption_says_no_more_of_a_thing_than_the_detector_counts():
    table = ClaimTable()  # no claim known: every caption with a claim is cut
    group, one = words("a group of people are standing in front of a crowd"), words("a man is standing in a crowd")
    assert choose([group, one], Belief(table, 1), {"person": 1}) == (1, 2)  # "a man", not "a group of people"
    assert choose([group, one], Belief(table, 1), {"person": 5}) == (0, 4)  # "a group of people"
    assert choose([group], Belief(table, 1), {"person": 1}) == (0, 4)  # nothing better: the best, cut


def test_the_shipped_model_says_a_person_where_it_would_have_said_a_group():
    import numpy as np
    import skimage.data as data

    from captioner.model import Captioner

    astronaut = Image.fromarray(np.asarray(data.astronaut())).convert("RGB")  # one person, a flag
    result = Captioner.from_checkpoint(int8=True).caption([astronaut])[0]
    assert [(o["word"], o["count"]) for o in result.objects if o["kind"] == "detected"] == [("person", 1)]
    assert not overcounted(result.words, {"person": 1}), result.caption


def test_an_action_needs_the_photo_to_show_it():
    table = ClaimTable.of_captions(tokenize(c) for c in ["a man riding a skateboard on a ramp"] * 3)
    said = tokenize("a man riding a skateboard on a ramp")
    assert not Belief(table, 1).doubts(said)  # people write it: without the photo's word, nothing is doubted
    assert not Belief(table, 1, {"riding": 0.8}, sure=0.3).doubts(said)  # the concepts see riding
    doubted = Belief(table, 1, {"riding": 0.1}, sure=0.3).doubts(said)
    assert [(c.subject, c.relation, c.object) for c in doubted] == [("man", "riding", "skateboard")]
    running = Belief(table, 1, {"running": 0.05}, sure=0.3).doubts(tokenize("a dog running"))
    assert [(c.relation, c.object) for c in running] == [("running", "")]  # an action with no object
    assert not Belief(table, 1, {}, sure=0.3).doubts(tokenize("a man riding a skateboard on a ramp")), \
        "a verb no concept classifier knows is not doubted"


def softened(text, table, shown, counts=None):
    tokens = words(text)
    kept = soften(tokens, Belief(table, 1, shown, sure=0.3, soften=True), counts)
    return None if kept is None else " ".join(w for k in kept for w in (tokens[k] if isinstance(k, int) else [k]))


def test_a_doubted_action_is_said_without_its_verb():
    table = ClaimTable.of_captions(tokenize(c) for c in [
        "several boats sitting in the water", "boats in the water", "a man on a ramp",
        "a man riding a skateboard on a ramp", "a man sitting on a dog", "a man playing tennis"])
    unsure = {"sitting": 0.05, "riding": 0.05, "playing": 0.05, "running": 0.05}
    assert softened("several boats are sitting in the water", table, unsure) == "several boats in the water"
    assert softened("a man is riding a skateboard on a ramp", table, unsure) == "a man with a skateboard on a ramp"
    assert softened("a man is sitting on a dog", table, unsure) == "a man with a dog"
    assert softened("a dog is running", table, unsure) == "a dog"
    assert softened("a man that is sitting on a dog", table, unsure) == "a man with a dog"
    assert softened("a man is playing tennis", table, unsure) is None  # no relation without the verb
    assert softened("a man is riding a skateboard", table, {"riding": 0.9}) is None  # nothing doubted


def test_choose_softens_a_caption_before_it_cuts_one():
    table = ClaimTable.of_captions(tokenize(c) for c in ["a group of sheep standing in a field", "sheep in a field"])
    best, other = words("a group of sheep standing in a field"), words("a group of sheep running in a field")
    shown = {"standing": 0.1, "running": 0.1}
    assert choose([best, other], Belief(table, 1, shown, sure=0.3)) == (0, 4)  # "a group of sheep"
    n, kept = choose([best, other], Belief(table, 1, shown, sure=0.3, soften=True))
    assert n == 0 and [best[k][0] if isinstance(k, int) else k for k in kept] == "a group of sheep in a field".split()
    clean = words("a group of sheep in a field")
    assert choose([best, clean], Belief(table, 1, shown, sure=0.3, soften=True)) == (1, None)  # the beam's clean one


def test_the_shipped_model_says_a_doubted_action_without_its_verb():
    from captioner.model import Captioner

    captioner = Captioner.from_checkpoint(int8=True)
    photos = [Image.open(EXAMPLES / n).convert("RGB") for n in ("horses.jpg", "frisbee.jpg", "pizza.jpg", "bus.jpg")]
    doubting = replace(captioner.decoding, claims_seen=1, actions_sure=1.01)  # no action is shown enough
    captioner.decoding = doubting
    cut = captioner.caption(photos)
    captioner.decoding = replace(doubting, claims_soften=True)
    softened = captioner.caption(photos)
    verbs = set(captioner.writer.concept_words)
    for c, s in zip(cut, softened):
        for result in (c, s):
            actions = parse(result.words).actions
            assert not [result.words[i] for i in actions if result.words[i] in verbs], result.caption
            assert len(result.words) == len(result.probabilities) == len(result.attention)
    assert any(c.caption != s.caption for c, s in zip(cut, softened))



def test_a_phrase_closed_into_an_unseen_claim_is_refused_as_it_is_written():
    table = ClaimTable(Counter({"man|sitting on|bench": 3}))
    assert table.closed_unseen("a man is sitting on a plate".split(), 1)
    assert not table.closed_unseen("a man is sitting on a bench".split(), 3)
    assert table.closed_unseen("a man is sitting on a bench".split(), 5)  # stated, but too rarely
    assert not table.closed_unseen("a man is sitting on a".split(), 1)  # no object yet
    assert not table.closed_unseen("a man is sitting on a plate with".split(), 1)  # closed earlier, not now
    assert [closes_phrase(w) for w in ("on", "is", "and", "sitting", "next", "plate", "wooden", "tennis", "of")] == \
        [True, True, True, True, True, False, False, False, True]
    assert not closes_phrase("of", after="group")  # "in front of a group of people" claims people

    vocab = ["<pad>", "<start>", "<end>", "a", "man", "is", "sitting", "on", "plate", "bench", "tennis", "court"]
    bans = search.ClaimBans(vocab, 2, table, 1)
    ids = {w: i for i, w in enumerate(vocab)}
    seqs = torch.tensor([[ids[w] for w in f"a man is sitting on a {end}".split()] for end in ("plate", "bench")])
    ban = torch.zeros(2, len(vocab) + 2)  # two object slots after the words
    bans.add_bans(ban, seqs, None)
    closing = {w for w in vocab if ban[0, ids[w]] > 0}
    assert closing == {"<end>", "is", "sitting", "on"}  # the phrase may go on ("plate ..."), not close
    assert not ban[1].any() and not ban[0, len(vocab):].any()
    # object slots are read as the word they are written as; one with no word here leaves its row unchecked
    slot_words = torch.tensor([[ids["plate"], -1], [ids["plate"], -1]])
    seqs = torch.tensor([[ids[w] for w in "a man is sitting on a".split()] + [slot] for slot in (12, 13)])
    ban = torch.zeros(2, len(vocab) + 2)
    bans.add_bans(ban, seqs, slot_words)
    assert ban[0, ids["<end>"]] > 0 and not ban[1].any()
    # "a man is sitting on a group" may go on with "of" ("... of people"), not end there
    counted = ["<pad>", "<start>", "<end>", "a", "man", "is", "sitting", "on", "group", "of", "bed"]
    ban = torch.zeros(2, len(counted))
    seqs = torch.tensor([[counted.index(w) for w in f"a man is sitting on a {end}".split()]
                         for end in ("group", "bed")])
    search.ClaimBans(counted, 2, table, 1).add_bans(ban, seqs, None)
    assert ban[0, counted.index("<end>")] > 0 and ban[0, counted.index("of")] == 0
    assert ban[1, counted.index("of")] > 0  # "a bed of ...": the claim on bed is made


def test_the_shipped_model_refuses_unseen_claims_inside_its_beam(monkeypatch):
    from captioner.model import Captioner

    captioner = Captioner.from_checkpoint(int8=True)
    names = ("horses.jpg", "kitchen.jpg", "tennis.jpg", "bus.jpg", "frisbee.jpg", "pizza.jpg")
    photos = [Image.open(EXAMPLES / n).convert("RGB") for n in names]
    table = claim_table()
    found = []
    truer = Captioner._truer

    def keep(self, out, boxes, decoding):
        shown = [[self.object_words[w] for w in row] for row in out.classified.words.tolist()]
        found.append([[self.writer.words_of(d.ids, shown[b]) for d in alts] for b, alts in enumerate(out.alternatives)])
        return truer(self, out, boxes, decoding)

    monkeypatch.setattr(Captioner, "_truer", keep)
    captioner.decoding = replace(captioner.decoding, claims_seen=5, claims_in_search=False)
    before = captioner.caption(photos)
    unseen_before = sum(bool(table.unseen(w, 5)) for alts in found[-1] for w in alts)
    captioner.decoding = replace(captioner.decoding, claims_in_search=True)
    after = captioner.caption(photos)
    finished = [w for alts in found[-1] for w in alts if len(w) < captioner.decoding.max_length - 1]
    assert finished and all(not table.unseen(w, 5) for w in finished), finished
    assert unseen_before > 0  # the check had something to refuse on these photos
    assert all(len(a.words) == len(a.probabilities) for a in after) and len(after) == len(before)
