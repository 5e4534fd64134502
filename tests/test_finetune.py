"""Fine-tuning from the corrections people saved: the gate refuses a worse model and says
why, and ``--dataset corrections`` trains from a folder as the app writes it, replaying the
starting model's own data, and records how many corrections it learned from."""

import json

import torch

from captioner.finetune import TOLERANCE, judge
from tests.conftest import shared


def noised(model, scale: float):
    """A copy of ``model`` whose decoder weights are buried in noise: deliberately worse."""
    import copy

    worse = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in worse.network.named_parameters():
            if name.startswith("decoder."):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return worse


def test_the_gate_refuses_a_deliberately_worse_model_and_says_why(tiny_captioner):
    model, sample, features, captions = tiny_captioner
    refs = {str(path): [caption] for (path, _), caption in zip(sample, captions)}
    sets = {"flickr8k": (features[:6], None, None, dict(list(refs.items())[:6])),
            "coco_val2017": (features[6:], None, None, dict(list(refs.items())[6:]))}
    same = judge(model, model, sets, beam_size=1)
    assert same.passed and not same.reasons and same.shipped == same.candidate
    assert same.shipped["flickr8k"] > 1.0  # it memorised these captions
    worse = judge(model, noised(model, 0.5), sets, beam_size=1)
    assert not worse.passed and len(worse.reasons) == 2
    assert all(worse.candidate[k] < worse.shipped[k] - TOLERANCE for k in sets)
    assert "flickr8k: CIDEr" in worse.reasons[0] and f"more than {TOLERANCE}" in worse.reasons[0]


def test_the_gate_allows_a_loss_within_its_tolerance(tiny_captioner):
    model, sample, features, captions = tiny_captioner
    refs = {str(path): [caption] for (path, _), caption in zip(sample, captions)}
    sets = {"flickr8k": (features, None, None, refs)}
    loose = judge(model, noised(model, 0.5), sets, tolerance=100.0, beam_size=1)
    assert loose.passed and loose.candidate["flickr8k"] < loose.shipped["flickr8k"]


def test_fine_tuning_from_a_folder_the_app_wrote_replays_the_models_data_and_gates(tmp_path):
    from captioner.feedback import FeedbackStore
    from captioner.model import Captioner
    from training import train_captioner

    flickr, coco = shared("flickr8k"), shared("coco_mini")
    cache = tmp_path / "features"
    start = tmp_path / "start"
    assert train_captioner.main(["--dataset", "flickr8k", "--data-root", str(flickr), "--dataset", "coco",
                                 "--data-root", str(coco), "--cache-dir", str(cache), "--embed-dim", "32",
                                 "--hidden-dim", "32", "--min-count", "2", "--out", str(start), "--dry-run"]) == 0
    folder = tmp_path / "feedback"
    store = FeedbackStore(folder)
    photos = sorted((coco / "train2017").glob("*.jpg"))[:4]
    for i, photo in enumerate(photos):
        store.save(photo, f"a zanzibarian photo number {i} of a dog", model_caption="a cat",
                   checkpoint="start", decoding={"beam_size": 3})
    out = tmp_path / "tuned"
    assert train_captioner.main(["--dataset", "corrections", "--data-root", str(folder), "--init",
                                 str(start / "best.safetensors"), "--cache-dir", str(cache), "--out", str(out),
                                 "--dry-run"]) == 0
    gate = json.loads((out / "gate.json").read_text())
    assert set(gate["validation_cider"]["shipped"]) <= {"flickr8k", "coco"} and gate["validation_cider"]["shipped"]
    assert (out / "captioner.safetensors").is_file() == gate["passed"]
    assert gate["passed"] or gate["reasons"]
    tuned = Captioner.from_checkpoint(out / "best.safetensors", load_encoder=False)
    started = Captioner.from_checkpoint(start / "best.safetensors", load_encoder=False)
    assert tuned.vocab.words == started.vocab.words  # the same vocabulary
    corrections = tuned.provenance["corrections"]
    assert corrections["corrections"] == 4 and corrections["photos"] == 4
    assert corrections["unknown_top"].get("zanzibarian") == 4  # a word it does not know, counted
    kinds = [kind for kind, _ in tuned.provenance["training_data"]["datasets"]]
    assert kinds == ["corrections", "flickr8k", "coco"]  # its own data replayed beside the corrections
    assert "4 corrections" in (out / "MODEL_CARD.md").read_text()
