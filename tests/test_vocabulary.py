import pytest

from captioner.vocabulary import SPECIAL_TOKENS, Vocabulary, tokenize


def test_tokenize_needs_no_nltk_data_and_drops_punctuation():
    assert tokenize("A black dog, jumping over the LOG .") == ["a", "black", "dog", "jumping", "over", "the", "log"]
    assert tokenize("A dog's tri-colored ball!") == ["a", "dog", "'s", "tri-colored", "ball"]


def test_build_keeps_words_at_threshold_most_frequent_first():
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert vocab.words == [*SPECIAL_TOKENS, "a", "dog"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)


def test_encode_decode_round_trip_with_unknown_words():
    vocab = Vocabulary.build(["a dog runs on the grass"] * 3, min_count=1)
    ids = vocab.encode("A dog runs on the beach.")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == ["a", "dog", "runs", "on", "the", "<unk>"]
    assert vocab.decode([vocab.start_id, vocab.index["dog"], vocab.end_id, vocab.index["a"]]) == ["dog"]


def test_json_round_trip(tmp_path):
    vocab = Vocabulary.build(["two dogs play", "two cats play"], min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert Vocabulary.load(path) == vocab
    assert path.read_text().startswith("{")  # JSON, not pickle


@pytest.mark.parametrize("text", ['[1, 2]', '{"words": ["a", "b"]}',
                                  '{"words": ["<pad>", "<start>", "<end>", "<unk>", "a", "a"]}'])
def test_from_json_rejects_bad_tables(text):
    with pytest.raises(ValueError):
        Vocabulary.from_json(text)
