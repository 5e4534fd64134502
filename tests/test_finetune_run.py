"""Fine-tuning end to end, through ``python -m training.train_captioner --dataset
corrections``: a tiny captioner of solid-coloured photos ("a red square"), trained by the
script itself, is fine-tuned from a feedback folder. A run that damages it (a learning rate
of 1, ten thousand times the fine-tune's default) is refused by the gate and ships nothing; a run that leaves it
as it was passes and ships it; ``gate.json`` names the baseline by its sha256, the int8
precision, the gate photos of each dataset (each counted once) and the bootstrap interval.
Last, the real datasets (../shared/data): the model's own data is replayed beside the
corrections and the run's provenance records them."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from captioner.feedback import FeedbackStore
from captioner.train.datasets import split_of
from captioner.train.finetune import in_gate_part
from lstmkit.checkpoint import file_sha256
from tests.conftest import shared

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 220), "yellow": (230, 210, 40)}


def colour_photo(path: Path, rgb, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A Flickr8k-shaped folder of 48 coloured squares (val 40%, test 10%), the captioner the
    script trains on it (the baseline and the start), and four corrections."""
    from training import train_captioner

    work = tmp_path_factory.mktemp("colours")
    root, cache, start = work / "squares", work / "features", work / "start"
    (root / "Images").mkdir(parents=True)
    rows = []
    for c, (colour, rgb) in enumerate(COLOURS.items()):
        for i in range(12):
            colour_photo(root / "Images" / f"{colour}{i:02d}.jpg", rgb, seed=100 * c + i)
            rows.append(f"{colour}{i:02d}.jpg,a {colour} square")
    (root / "captions.txt").write_text("image,caption\n" + "\n".join(rows) + "\n")
    assert train_captioner.main(["--dataset", "flickr8k", "--data-root", str(root), "--val-fraction", "0.4",
                                 "--test-fraction", "0.1", "--cache-dir", str(cache), "--embed-dim", "32",
                                 "--hidden-dim", "32", "--min-count", "1", "--object-slots", "0",
                                 "--familiarity-dim", "8", "--dropout", "0", "--epochs", "12", "--batch-size", "8",
                                 "--lr", "2e-2", "--warmup-steps", "1", "--out", str(start)]) == 0
    folder = work / "feedback"
    store = FeedbackStore(folder)
    for c, (colour, rgb) in enumerate(COLOURS.items()):
        store.save(colour_photo(work / f"fix-{colour}.jpg", rgb, seed=999 + c), f"a {colour} square",
                   model_caption="a square", checkpoint="start", decoding={"beam_size": 3})
    names = [f"{colour}{i:02d}.jpg" for colour in COLOURS for i in range(12)]
    gate_photos = [n for n in names if split_of(Path(n), 0.4, 0.1) == "val" and in_gate_part(Path(n))]
    return SimpleNamespace(root=root, cache=cache, start=start / "best.safetensors", folder=folder,
                           gate_photos=gate_photos)


def fine_tune(colours, out: Path, lr: float) -> tuple[int, dict]:
    from training import train_captioner

    status = train_captioner.main(["--dataset", "corrections", "--data-root", str(colours.folder), "--init",
                                   str(colours.start), "--baseline", str(colours.start), "--cache-dir",
                                   str(colours.cache), "--max-steps", "2", "--epochs", "1", "--batch-size", "16",
                                   "--lr", str(lr), "--warmup-steps", "1", "--out", str(out)])
    return status, json.loads((out / "gate.json").read_text())


def test_a_fine_tune_that_damages_the_model_is_refused_and_ships_nothing(colours, tmp_path):
    status, gate = fine_tune(colours, tmp_path / "damaged", lr=5.0)
    assert status == 0 and not gate["passed"] and not (tmp_path / "damaged" / "captioner.safetensors").exists()
    assert gate["cider"]["baseline"]["flickr8k"] > 1.0  # the start names the colours of photos it never saw
    assert gate["cider"]["candidate"]["flickr8k"] < gate["cider"]["baseline"]["flickr8k"] - 0.5  # much worse
    assert gate["bootstrap"]["interval"]["flickr8k"][0] < -gate["tolerance"]  # which the gate's bound sees
    assert gate["reasons"][0].startswith("flickr8k: CIDEr") and "Not shipped" in \
        (tmp_path / "damaged" / "MODEL_CARD.md").read_text()


def test_a_fine_tune_that_leaves_the_model_as_it_was_passes_and_ships_it(colours, tmp_path):
    out = tmp_path / "unchanged"
    status, gate = fine_tune(colours, out, lr=0.0)
    assert status == 0 and gate["passed"] and not gate["reasons"]
    assert (out / "captioner.safetensors").read_bytes() == (out / "best.safetensors").read_bytes()
    assert gate["bootstrap"]["interval"] == {"flickr8k": [0.0, 0.0]}
    assert gate["baseline"] == {"path": str(colours.start), "sha256": file_sha256(colours.start)}
    assert gate["precision"] == "int8" and gate["bootstrap"]["resamples"] == 1000
    assert gate["photos"] == {"flickr8k": len(colours.gate_photos)}  # the gate's half of the validation photos
    assert gate["corrections"]["corrections"] == 4 and "Shipped" in (out / "MODEL_CARD.md").read_text()
    assert not (out / "metrics.csv").exists()  # stopped by --max-steps before any validation: judged as it was


def test_fine_tuning_from_a_folder_the_app_wrote_replays_the_models_data_and_gates(tmp_path):
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
                                 str(start / "best.safetensors"), "--baseline", str(start / "best.safetensors"),
                                 "--cache-dir", str(cache), "--out", str(out), "--lr", "0", "--dry-run"]) == 0
    gate = json.loads((out / "gate.json").read_text())
    assert set(gate["photos"]) <= {"flickr8k", "coco"} and gate["photos"] and gate["precision"] == "int8"
    assert gate["passed"] and (out / "captioner.safetensors").is_file()  # an unchanged model passes
    tuned = Captioner.from_checkpoint(out / "best.safetensors", load_encoder=False)
    started = Captioner.from_checkpoint(start / "best.safetensors", load_encoder=False)
    assert tuned.vocab.words == started.vocab.words  # the same vocabulary
    corrections = tuned.provenance["corrections"]
    assert corrections["corrections"] == 4 and corrections["photos"] == 4
    assert corrections["unknown_top"].get("zanzibarian") == 4  # a word it does not know, counted
    kinds = [kind for kind, _ in tuned.provenance["training_data"]["datasets"]]
    assert kinds == ["corrections", "flickr8k", "coco"]  # its own data replayed beside the corrections
    assert "4 corrections" in (out / "MODEL_CARD.md").read_text()
