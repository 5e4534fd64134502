"""The blind panel: sheets that hide which system wrote a caption, and the scores of the
ratings that come back."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.train.panel import HUMAN, RUBRIC, consensus, normalise, paired, read_ratings, score, sheets
from training import panel as panel_script


def photos(tmp_path, n):
    paths = []
    for i in range(n):
        path = tmp_path / f"photo{i}.jpg"
        Image.new("RGB", (64, 48), (i * 20 % 256, 90, 160)).save(path)
        paths.append(path)
    return paths


def test_sheets_hide_the_systems_and_show_a_shared_caption_once(tmp_path):
    paths = photos(tmp_path, 6)
    systems = {HUMAN: [f"A dog on the beach {i}." for i in range(6)],
               "model": [f"a dog on the beach {i}" for i in range(6)],  # the same as the human's, once normalised
               "other": [f"a cat, {i}!" for i in range(6)]}
    key = sheets(paths, systems, tmp_path / "panel", judges=2, seed=0)
    sheet = (tmp_path / "panel" / "sheet-1.md").read_text()
    assert RUBRIC in sheet and "model" not in sheet and "human" not in sheet
    assert "- A: " in sheet and "!" not in sheet and "," not in sheet.split(RUBRIC)[1].split("## p000")[1]
    assert sorted(key) == [f"p{i:03d}" for i in range(6)]
    assert all(len(letters) == 2 for letters in key.values())  # three systems, two distinct captions
    assert {tuple(sorted(s)) for letters in key.values() for s in letters.values()} == {(HUMAN, "model"), ("other",)}
    assert (tmp_path / "panel" / "photos" / "p005.png").is_file()
    assert "p001" in (tmp_path / "panel" / "sheet-2.md").read_text()  # photos dealt to the judges in turn
    orders = {tuple(sorted(letters, key=lambda a: letters[a])) for letters in key.values()}
    assert len(orders) == 2  # shuffled per photo: the human's caption is not always the same letter


def test_scores_per_system_with_paired_intervals_and_the_calibration_rule():
    key = {f"p{i}": {"A": [HUMAN], "B": ["model"], "C": ["new"]} for i in range(20)}
    lines = []
    for i in range(20):
        lines.append({"photo": f"p{i}", "letter": "A", "verdict": "acceptable" if i else "partly", "absurd": False,
                      "useful": True})
        lines.append({"photo": f"p{i}", "letter": "B", "verdict": "wrong", "absurd": i % 2 == 0, "useful": False})
        lines.append({"photo": f"p{i}", "letter": "C", "verdict": "acceptable" if i < 10 else "partly",
                      "absurd": False, "useful": True})
    result = score(_ratings(lines), key, against="model")
    assert result["photos"] == 20
    assert result["systems"]["new"]["good"] == 0.5 and result["systems"]["model"]["absurd"] == 0.5
    good, low, high = result["differences"]["new"]["good"]
    assert good == 0.5 and low < good < high <= 1.0
    assert result["human_acceptable"] == 0.95 and result["counts"]
    lines[0]["verdict"] = "wrong"
    lines[3]["verdict"] = "partly"
    assert not score(_ratings(lines), key, "model")["counts"]  # 90%: the run is thrown away


def _ratings(lines):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "ratings-1.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\nnot a rating\n")
    return read_ratings([path])


def test_the_paired_interval_holds_the_mean_difference():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.3
    mean, low, high = paired(a, b)
    assert low < mean < high and low > 0


def test_the_consensus_reference_is_the_one_most_like_the_others():
    refs = ["a dog sitting on a sitting", "a dog sits on a couch", "a brown dog on a couch", "a dog on the couch"]
    assert consensus(refs) != "a dog sitting on a sitting" and "couch" in consensus(refs)
    assert normalise("A Dog, on the couch!") == "a dog on the couch"


def test_the_script_prepares_sheets_from_a_report_and_scores_them(tmp_path):
    paths = photos(tmp_path, 4)
    report = {"predictions": [{"image": p.name, "model": f"a thing {i}", "variant:new": f"a thing {i} here",
                               "objects": [], "references": [f"a person {i}", f"a person {i} here"]}
                              for i, p in enumerate(paths)]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    out = tmp_path / "panel"
    assert panel_script.main(["prepare", "--predictions", str(tmp_path / "report.json"), "--images", str(tmp_path),
                              "--system", "model", "--system", "variant:new", "--photos", "4", "--judges", "1",
                              "--out", str(out)]) == 0
    key = json.loads((out / "key.json").read_text())
    rows = [{"photo": p, "letter": letter, "verdict": "acceptable", "absurd": False, "useful": "model" not in s}
            for p, letters in key["key"].items() for letter, s in letters.items()]
    (out / "ratings-1.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert panel_script.main(["score", "--panel", str(out), "--against", "model",
                              "--json-out", str(out / "score.json")]) == 0
    result = json.loads((out / "score.json").read_text())
    assert result["systems"]["variant:new"]["good"] == 1.0 and result["systems"]["model"]["good"] == 0.0
    assert panel_script.main(["prepare", "--predictions", str(tmp_path / "report.json"), "--images", str(tmp_path),
                              "--system", "nope", "--out", str(out)]) == 2
    for name, more in [("half", []), ("fresh", ["--exclude", str(tmp_path / "half")])]:  # fresh: none judged before
        assert panel_script.main(["prepare", "--predictions", str(tmp_path / "report.json"), "--images", str(tmp_path),
                                  "--system", "model", "--photos", "2", "--judges", "1", *more,
                                  "--out", str(tmp_path / name)]) == 0
    half, fresh = (set(json.loads((tmp_path / n / "key.json").read_text())["photos"]) for n in ("half", "fresh"))
    assert len(half) == len(fresh) == 2 and not half & fresh


def candidates_file(tmp_path, paths):
    rows = [{"image": str(p), "references": ["a dog on a beach", "a dog on the sand", "a brown dog"],
             "captions": {"model": "a dog is sitting on a plate", "s3": "a dog on a beach"},
             "beam": ["a dog is sitting on a plate", "a dog is running on a beach", "a dog on a beach"]}
            for p in paths]
    rows[1]["captions"]["s3"] = "a dog"  # a cut caption, in no beam
    path = tmp_path / "cand.json"
    path.write_text(json.dumps({"rules": ["model", "s3"], "photos": rows}))
    return path


def rate(panel, absurd_words=("sitting on a plate",), useless=("a dog",)):
    """Ratings as a judge would write them: what says "sitting on a plate" is wrong and absurd;
    a bare "a dog" acceptable and not useful; the rest acceptable and useful."""
    key = json.loads((panel / "key.json").read_text())
    for n, sheet in enumerate(sorted(panel.glob("sheet-*.md")), 1):
        lines = []
        for pid in sorted(key["key"]):
            if f"## {pid}" not in sheet.read_text():
                continue
            for letter, text in key["texts"][pid].items():
                bad = any(w in text for w in absurd_words)
                lines.append(json.dumps({"photo": pid, "letter": letter, "verdict": "wrong" if bad else "acceptable",
                                         "absurd": bad, "useful": not bad and text not in useless}))
        (panel / f"ratings-{n}.jsonl").write_text("\n".join(lines))


def test_every_caption_of_the_pool_is_judged_once_and_every_rule_scored_from_it(tmp_path):
    from training import panel_candidates

    paths = photos(tmp_path, 2)
    cand = candidates_file(tmp_path, paths)
    panel_candidates.main(["sheets", "--candidates", str(cand), "--judges", "2", "--out", str(tmp_path / "p")])
    key = json.loads((tmp_path / "p" / "key.json").read_text())
    shown = [set(key["texts"][pid].values()) for pid in sorted(key["key"])]
    pool = {"a dog is sitting on a plate", "a dog is running on a beach", "a dog on a beach"}  # and a reference
    assert pool <= shown[0] and len(shown[0]) <= 4 and pool | {"a dog"} <= shown[1]
    rate(tmp_path / "p")
    panel_candidates.main(["score", "--candidates", str(cand), "--panel", str(tmp_path / "p"), "--json-out",
                           str(tmp_path / "score.json")])
    out = json.loads((tmp_path / "score.json").read_text())
    assert out["rules"]["model"]["absurd"] == 1.0 and out["rules"]["model"]["good"] == 0.0
    assert out["rules"]["s3"]["good"] == 0.5 and out["rules"]["s3"]["acceptable"] == 1.0  # "a dog": true, bare
    assert out["rules"]["beam0"]["absurd"] == 1.0
    assert out["best_in_pool"] == 1.0 and out["best_in_beam"] == 1.0 and out["pool_judged"] == 2
    assert out["differences"]["s3"]["absurd"][0] == -1.0
    # a new rule's captions: only those not judged yet go to new sheets
    data = json.loads(cand.read_text())
    data["rules"].append("new")
    for row in data["photos"]:
        row["captions"]["new"] = "a dog on a beach"
    data["photos"][0]["captions"]["new"] = "a brown dog lying on the sand"
    cand.write_text(json.dumps(data))
    panel_candidates.main(["sheets", "--candidates", str(cand), "--after", str(tmp_path / "p"), "--judges", "1",
                           "--out", str(tmp_path / "p2")])
    more = json.loads((tmp_path / "p2" / "key.json").read_text())
    assert len(more["key"]) == 1 and "a brown dog lying on the sand" in more["texts"]["p000"].values()
    rate(tmp_path / "p2")
    panel_candidates.main(["score", "--candidates", str(cand), "--panel", str(tmp_path / "p"), "--panel",
                           str(tmp_path / "p2"), "--json-out", str(tmp_path / "score.json")])
    again = json.loads((tmp_path / "score.json").read_text())
    assert again["rules"]["new"] == {"judged": 2, "good": 1.0, "acceptable": 1.0, "wrong": 0.0, "absurd": 0.0,
                                     "useful": 1.0}
    assert panel_candidates.main(["sheets", "--candidates", str(cand), "--after", str(tmp_path / "p"), "--after",
                                  str(tmp_path / "p2"), "--out", str(tmp_path / "p3")]) != 0  # nothing new to judge


def test_a_photo_with_more_captions_than_letters_is_refused_not_cut(tmp_path):
    import pytest

    paths = photos(tmp_path, 1)
    systems = {f"s{i}": [f"a dog number {i}"] for i in range(27)}
    with pytest.raises(ValueError, match="27 distinct captions"):
        sheets(paths, systems, tmp_path / "panel", judges=1)
    key = sheets(paths, {k: v for k, v in list(systems.items())[:26]}, tmp_path / "panel", judges=1)
    assert len(key["p000"]) == 26


def test_rules_without_a_beam_are_scored_and_beam0_left_unjudged(tmp_path):
    from training import panel_candidates

    paths = photos(tmp_path, 1)
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps({"rules": ["model"], "photos": [
        {"image": str(paths[0]), "references": ["a dog"], "captions": {"model": "a dog on a beach"}, "beam": []}]}))
    panel_candidates.main(["sheets", "--candidates", str(cand), "--judges", "1", "--out", str(tmp_path / "p")])
    rate(tmp_path / "p")
    panel_candidates.main(["score", "--candidates", str(cand), "--panel", str(tmp_path / "p"), "--json-out",
                           str(tmp_path / "s.json")])
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["rules"]["model"]["good"] == 1.0 and out["rules"]["beam0"]["judged"] == 0


def test_the_pool_holds_the_beams_captions_and_each_rules(tmp_path):
    from captioner.model import Captioner
    from training import panel_candidates

    folder = Path(__file__).resolve().parent.parent / "webapp" / "examples"
    examples = sorted(folder.glob("*.jpg"))[:2]
    (tmp_path / "panel").mkdir()
    (tmp_path / "panel" / "key.json").write_text(json.dumps({"photos": [str(p) for p in examples]}))
    coco = {"images": [{"id": i, "file_name": p.name} for i, p in enumerate(examples)],
            "annotations": [{"image_id": i, "caption": "a photo"} for i in range(len(examples))]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    panel_candidates.main(["write", "--photos-of", str(tmp_path / "panel"), "--coco-captions",
                           str(tmp_path / "coco.json"), "--variant", "s1:claims_seen=1", "--out",
                           str(tmp_path / "cand.json")])
    data = json.loads((tmp_path / "cand.json").read_text())
    assert data["rules"] == ["model", "s1"]
    shipped = Captioner.from_checkpoint(int8=True)
    for row, photo in zip(data["photos"], examples):
        assert 1 <= len(row["beam"]) <= shipped.decoding.beam_size and all(row["beam"])
        assert row["captions"]["model"] == shipped.caption([Image.open(photo).convert("RGB")])[0].caption
        assert row["references"] == ["a photo"]
