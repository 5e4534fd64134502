"""The decoding settings a checkpoint carries: read past what only older checkpoints hold,
refuse what no version knows."""

import logging

import pytest

from captioner.decoding import DecodingConfig
from captioner.model import Captioner
from lstmkit.checkpoint import CheckpointError
from tests.conftest import shipped


def test_the_shipped_checkpoint_saved_the_retired_person_ban_off_and_loads_without_it():
    _, decoding = Captioner.read_settings(shipped("captioner.safetensors"))
    assert not hasattr(decoding, "person_below") and decoding.person_score == 0.5


def test_an_old_checkpoints_person_ban_is_read_past_with_a_warning_and_an_unknown_field_refused(caplog):
    with caplog.at_level(logging.WARNING):
        assert DecodingConfig.from_saved({"beam_size": 3, "person_below": None}, "new") == DecodingConfig(beam_size=3)
        assert caplog.text == ""
        assert DecodingConfig.from_saved({"person_below": 0.3}, "old") == DecodingConfig()
    assert "old sets person_below, which this version ignores" in caplog.text
    with pytest.raises(CheckpointError, match="does not know: \\['person_above'\\]"):
        DecodingConfig.from_saved({"person_above": 0.3}, "odd")


def test_set_decoding_stores_the_setting_and_leaves_the_weights_as_they_were(tmp_path):
    import shutil

    from lstmkit.checkpoint import read_safetensors
    from training import set_decoding

    path = tmp_path / "captioner.safetensors"
    shutil.copy(shipped("captioner.safetensors"), path)
    before, meta = read_safetensors(path)
    assert set_decoding.main(["--checkpoint", str(path), "--set", "claims_seen=3", "--set", "beam_size=7"]) == 0
    _, decoding = Captioner.read_settings(path)
    assert (decoding.claims_seen, decoding.beam_size) == (3, 7)
    after, new_meta = read_safetensors(path)
    assert before.keys() == after.keys() and all(before[k].dtype == after[k].dtype for k in before)
    assert all(bool((before[k] == after[k]).all()) for k in before)
    assert new_meta["provenance"] == meta["provenance"] and new_meta["vocabulary"] == meta["vocabulary"]
    assert set_decoding.main(["--checkpoint", str(path), "--set", "claims=3"]) == 2
