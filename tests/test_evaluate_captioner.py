"""The evaluation script (training/evaluate_captioner.py): a model and the models it is
compared with are decoded the same way, so their scores compare like with like."""

import json

from captioner.model import Captioner
from tests.conftest import shared, shipped
from training import evaluate_captioner


def mini_captions(tmp_path, photos: int):
    """coco_mini's folder and a captions file of its first ``photos`` photos."""
    mini = shared("coco_mini")
    full = json.loads((mini / "annotations" / "captions_train2017.json").read_text())
    keep = {i["id"] for i in full["images"][:photos]}
    small = {**full, "images": [i for i in full["images"] if i["id"] in keep],
             "annotations": [a for a in full["annotations"] if a["image_id"] in keep]}
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(small))
    return mini, captions


def test_a_compared_model_is_decoded_as_the_model_is(tmp_path, monkeypatch):
    checkpoint = shipped("captioner.safetensors")
    mini, captions = mini_captions(tmp_path, 6)
    loaded = []
    load = Captioner.from_checkpoint.__func__

    def spy(cls, path, *args, **kwargs):
        loaded.append(kwargs.get("int8", False))
        return load(cls, path, *args, **kwargs)

    monkeypatch.setattr(Captioner, "from_checkpoint", classmethod(spy))
    out = tmp_path / "report.json"
    assert evaluate_captioner.main(["--checkpoint", str(checkpoint), "--compare", str(checkpoint),
                                    "--images", str(mini / "train2017"), "--coco-captions", str(captions),
                                    "--no-baselines", "--cache-dir", str(tmp_path / "cache"),
                                    "--json-out", str(out)]) == 0
    assert loaded == [True, True]  # int8 decoder matrices for both, as users get them
    report = json.loads(out.read_text())
    assert report["images"] == 6
    assert report["scores"]["model"] == report["scores"]["compare:captioner.safetensors"]
    assert "int8" in report["baselines"]["compare:captioner.safetensors"]


def test_a_variant_is_the_model_with_other_decoding_settings_scored_in_the_same_run(tmp_path):
    mini, captions = mini_captions(tmp_path, 3)
    out = tmp_path / "report.json"
    common = ["--images", str(mini / "train2017"), "--coco-captions", str(captions), "--no-baselines",
              "--cache-dir", str(tmp_path / "cache")]
    assert evaluate_captioner.main([*common, "--variant", "same:beam_size=5", "--variant", "greedy:beam_size=1",
                                    "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["scores"]["variant:same"] == report["scores"]["model"]
    assert [p["variant:greedy"] for p in report["predictions"]] != [p["model"] for p in report["predictions"]]
    assert evaluate_captioner.main([*common, "--variant", "bad:beam_width=3"]) == 2
    assert evaluate_captioner.main([*common, "--decoding", "claims_seen=two"]) == 2
