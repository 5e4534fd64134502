"""Fine-tuning from the corrections people saved, in parts: the gate judges photo by photo
with a seeded paired bootstrap (a damaged model refused, the same model passed), the
release's datasets keep the release's splits and its test photos are never trained or
validated on, datasets sharing a folder stay apart in the replay and at the gate, the gate's
photos never choose the checkpoint, and an --out that would ship a stale model or delete
the shipped one is refused. The runs end to end: ``test_finetune_run.py``."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from captioner.train.datasets import CaptionRecord, split_of
from captioner.train.finetune import (
    CORRECTIONS,
    TOLERANCE,
    bootstrap,
    gate_sets,
    gate_split,
    held_out_photos,
    judge,
    plan_finetune,
    refuse_test_photos,
    replay_sample,
)
from lstmkit.runtools import UserError


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


def two_sets(tiny_captioner):
    model, sample, features, captions = tiny_captioner
    refs = {str(path): [caption] for (path, _), caption in zip(sample, captions)}
    return model, {"flickr8k": (features[:6], None, None, dict(list(refs.items())[:6])),
                   "coco_val2017": (features[6:], None, None, dict(list(refs.items())[6:]))}


def test_the_gate_refuses_a_deliberately_damaged_model_photo_by_photo_and_says_why(tiny_captioner):
    model, sets = two_sets(tiny_captioner)
    worse = judge(model, noised(model, 0.5), sets, beam_size=1)
    assert not worse.passed and len(worse.reasons) == 2 and worse.photos == {"flickr8k": 6, "coco_val2017": 6}
    assert all(worse.interval[k][1] < -TOLERANCE for k in sets)  # even the upper end of the interval is worse
    assert worse.baseline["flickr8k"] > 1.0  # it memorised these captions
    assert "flickr8k: CIDEr" in worse.reasons[0] and "5th percentile of the difference" in worse.reasons[0]


def test_the_same_model_passes_with_an_interval_of_zero(tiny_captioner):
    import copy

    model, sets = two_sets(tiny_captioner)
    same = judge(model, copy.deepcopy(model), sets, beam_size=1)
    assert same.passed and not same.reasons and same.baseline == same.candidate
    assert same.interval == {"flickr8k": (0.0, 0.0), "coco_val2017": (0.0, 0.0)}


def test_a_loss_within_the_tolerance_passes(tiny_captioner):
    model, sets = two_sets(tiny_captioner)
    loose = judge(model, noised(model, 0.5), sets, tolerance=100.0, beam_size=1)
    assert loose.passed and loose.candidate["flickr8k"] < loose.baseline["flickr8k"]


def test_the_bootstrap_is_seeded_and_paired():
    noisy = [0.3, -0.2, 0.0, 0.1, -0.4, 0.25, 0.05, -0.1]
    assert bootstrap(noisy, seed=3) == bootstrap(noisy, seed=3) != bootstrap(noisy, seed=4)
    low, high = bootstrap(noisy, seed=3)
    assert low < sum(noisy) / len(noisy) < high
    assert bootstrap([-0.1] * 50) == pytest.approx((-0.1, -0.1)) and bootstrap([0.0] * 50) == (0.0, 0.0)


# ------------------------------------------------------------------ the release's splits

def a_release(tmp_path, training_data: dict, name="release.safetensors", **config) -> Path:
    """A checkpoint file holding only what the plan reads: its config and provenance."""
    from safetensors.torch import save_file

    path = tmp_path / name
    config = {"encoder": "efficientnet_lite0", "decoder": "show_tell", **config}
    save_file({"x": torch.zeros(1)}, str(path), metadata={
        "config": json.dumps(config), "provenance": json.dumps({"training_data": training_data})})
    return path


SHIPPED_LIKE = {"val_fraction": 0.07, "test_fraction": 0.13, "coco_split": "train2017",
                "dataset_split": ["coco_val2017:0.15:0.25", "coco_extra:0.1:0"],
                "repeat": ["coco_val2017:3", "coco_extra:2"]}


def test_naming_a_dataset_still_splits_the_releases_datasets_as_the_release_did(tmp_path):
    coco, flickr = tmp_path / "coco_captions", tmp_path / "flickr8k"
    coco.mkdir(), flickr.mkdir()
    release = a_release(tmp_path, {**SHIPPED_LIKE, "datasets": [["flickr8k", str(flickr)],
                                                                ["coco_val2017", str(coco)],
                                                                ["coco_extra", str(coco)]]})
    plan = plan_finetune(init=release, baseline=release, datasets=[(CORRECTIONS, tmp_path / "fb"),
                                                                   ("coco_val2017", coco)],
                         dataset_split=[], repeat=[], coco_split="train2017")
    assert plan.dataset == [CORRECTIONS, "coco_val2017"] and plan.data_root == [tmp_path / "fb", coco]
    assert {"coco_val2017:0.15:0.25", "flickr8k:0.07:0.13", "coco_extra:0.1:0", "corrections:0:0"} \
        == set(plan.dataset_split)
    replayed = plan_finetune(init=release, baseline=release, datasets=[(CORRECTIONS, tmp_path / "fb")],
                             dataset_split=["coco_val2017:0.05:0.3"], repeat=[], coco_split="train2017")
    assert replayed.dataset == [CORRECTIONS, "flickr8k", "coco_val2017", "coco_extra"]
    assert "coco_val2017:0.05:0.3" in replayed.dataset_split and "coco_val2017:0.15:0.25" not in \
        replayed.dataset_split  # holding out more is allowed
    assert replayed.repeat == ["coco_val2017:3", "coco_extra:2", "corrections:10"]
    with pytest.raises(UserError, match="holds out for testing; keep coco_val2017's test fraction at least 0.25"):
        plan_finetune(init=release, baseline=release, datasets=[(CORRECTIONS, tmp_path / "fb")],
                      dataset_split=["coco_val2017:0.3:0.1"], repeat=[], coco_split="train2017")


def flickr_like(root: Path, n: int = 60) -> list[str]:
    (root / "Images").mkdir(parents=True)
    names = [f"photo{i:03d}.jpg" for i in range(n)]
    for name in names:
        (root / "Images" / name).write_bytes(b"")
    (root / "captions.txt").write_text("image,caption\n" + "".join(f"{n},a photo called {n}\n" for n in names))
    return names


def test_a_photo_the_release_held_out_for_testing_is_refused_under_any_name(tmp_path):
    from captioner.train.training_data import load_records

    names = flickr_like(tmp_path / "flickr")
    trained = {"datasets": [["flickr8k", str(tmp_path / "flickr")]], "val_fraction": 0.2, "test_fraction": 0.3}
    held = held_out_photos(trained)
    assert held == {"flickr8k": {n for n in names if split_of(Path(n), 0.2, 0.3) == "test"}} and held["flickr8k"]
    as_released = load_records([("flickr8k", tmp_path / "flickr")], coco_split="train2017", val_fraction=0.2,
                               test_fraction=0.3)
    refuse_test_photos(as_released, held)  # the release's own split: nothing to refuse
    less_held_out = load_records([("flickr8k", tmp_path / "flickr")], coco_split="train2017", val_fraction=0.2,
                                 test_fraction=0.1)
    with pytest.raises(UserError, match="holds out for testing"):
        refuse_test_photos(less_held_out, held)
    other_name = {"train": [CaptionRecord(tmp_path / "elsewhere" / sorted(held["flickr8k"])[0], "x", "coco")]}
    with pytest.raises(UserError, match="holds out for testing"):
        refuse_test_photos(other_name, held)


# ------------------------------------------------------------------ datasets sharing a folder

def shared_folder(tmp_path, n: int = 40) -> dict:
    """coco_val2017 and coco_extra, both under one coco_captions/ as on this machine, and
    four corrections; every photo in training and validation alike."""
    root = tmp_path / "coco_captions"
    records = [CaptionRecord(root / "val2017" / f"{i:012d}.jpg", f"photo {i}", "coco_val2017") for i in range(n)]
    records += [CaptionRecord(root / "extra" / f"x{i:05d}.jpg", f"extra {i}", "coco_extra") for i in range(n)]
    records += [CaptionRecord(tmp_path / "fb" / "photos" / f"{i:016x}.jpg", f"fixed {i}", CORRECTIONS)
                for i in range(4)]
    return {"train": records, "val": [r for r in records if r.dataset != CORRECTIONS], "test": []}


def test_the_replay_draws_photos_of_each_dataset_at_random_even_when_two_share_a_folder(tmp_path):
    splits = shared_folder(tmp_path)
    sample = replay_sample(splits, 5, seed=0)
    kinds = [r.dataset for r in sample["train"]]
    assert kinds.count("coco_val2017") == 5 and kinds.count("coco_extra") == 5 and kinds.count(CORRECTIONS) == 4
    assert sample["val"] == splits["val"]
    assert sample == replay_sample(splits, 5, seed=0) and sample != replay_sample(splits, 5, seed=1)
    first_five = sorted(r.image for r in splits["train"] if r.dataset == "coco_val2017")[:5]
    assert sorted(r.image for r in sample["train"] if r.dataset == "coco_val2017") != first_five


def test_the_gate_judges_each_dataset_on_its_own_photos_and_never_on_those_that_chose_the_checkpoint(tmp_path):
    splits = gate_split(shared_folder(tmp_path))
    chose, judged = {r.image for r in splits["val"]}, {r.image for r in splits["gate"]}
    assert chose and judged and not chose & judged and len(chose | judged) == 80
    photos = SimpleNamespace(pooled=lambda paths: (torch.arange(len(paths)).float()[:, None], None),
                             grids=lambda paths: (None, None), boxes=None)
    sets = gate_sets(splits["gate"], photos)
    assert set(sets) == {"coco_val2017", "coco_extra"}  # by dataset, not by folder
    val2017, extra = (set(sets[k][3]) for k in ("coco_val2017", "coco_extra"))
    assert not val2017 & extra and len(val2017) + len(extra) == len(judged)
    assert all("/val2017/" in p for p in val2017) and all("/extra/" in p for p in extra)
    assert len(sets["coco_val2017"][0]) == len(val2017)


# ------------------------------------------------------------------ where a run may write

def test_an_out_folder_holding_the_shipped_model_or_an_earlier_run_is_refused(tmp_path, capsys):
    from lstmkit.checkpoint import CHECKPOINTS
    from training import train_captioner

    shipped = sorted(p.name for p in CHECKPOINTS.iterdir())
    corrections = ["--dataset", "corrections", "--data-root", str(tmp_path / "fb")]
    assert train_captioner.main([*corrections, "--out", str(CHECKPOINTS)]) == 2
    assert "which a refused fine-tune would delete" in capsys.readouterr().err
    assert sorted(p.name for p in CHECKPOINTS.iterdir()) == shipped
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"an earlier run's model")
    assert train_captioner.main([*corrections, "--out", str(run)]) == 2
    assert "already holds an earlier run (best.safetensors)" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    init = a_release(tmp_path / "mine", {}, name="captioner.safetensors")  # an earlier fine-tune's, to go on from
    assert train_captioner.main([*corrections, "--init", str(init), "--out", str(tmp_path / "mine")]) == 2
    assert "which a refused fine-tune would delete" in capsys.readouterr().err and init.is_file()
