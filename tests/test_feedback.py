"""The corrections people save: every refusal stores nothing, photos lose their EXIF,
concurrent saves and a kill -9 mid-save lose no record, the folder reads back for
training, the command line lists, removes and exports, and the gate refuses a worse model."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from captioner.feedback import CorrectionError, FeedbackStore, RateLimit, clean_caption, read_corrections, sync_to_hub
from tests.conftest import ROOT, all_at_once


def a_photo(colour=(200, 30, 30), size=(64, 48), **save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def gps_photo() -> bytes:
    """A JPEG whose EXIF holds a GPS position, a camera maker and a body serial number."""
    exif = Image.Exif()
    exif[0x010F] = "SecretCamCorp"
    exif.get_ifd(0x8769)[0xA431] = "SERIAL-0042-XYZ"  # BodySerialNumber
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 29.9), 3: "E", 4: (2.0, 17.0, 40.2)})
    return a_photo(exif=exif)


def save(store, photo=None, caption="a red square on a table"):
    return store.save(a_photo() if photo is None else photo, caption, model_caption="a red wall",
                      checkpoint="captioner.safetensors:0123456789ab", decoding={"beam_size": 3})


def stored_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("caption, reason", [
    ("", "empty"), ("   \n ", "empty"), ("x" * 5000, "5,000 characters long; the limit is 200"),
    ("a dog <script>alert(1)</script>", "markup"), ("<b>a dog</b>", "markup"), ("a dog > a cat", "markup"),
    ("a dog\x00 on grass", "control"), ("a dog\x1b[31m", "control"), ("a\u200bdog", "control or invisible"),
    ("a dog\u202eon grass", "control or invisible"), (None, "text"), (42, "text"),
])
def test_a_refused_caption_stores_nothing(tmp_path, caption, reason):
    store = FeedbackStore(tmp_path)
    with pytest.raises(CorrectionError, match=reason):
        save(store, caption=caption)
    assert stored_files(tmp_path) == []


def test_captions_are_kept_as_typed_but_for_whitespace():
    assert clean_caption("  a boy   reaching\tfor an apple \n") == "a boy reaching for an apple"
    assert clean_caption("café crème, naïve & l'été") == "café crème, naïve & l'été"
    assert clean_caption("x" * 200) == "x" * 200


@pytest.mark.parametrize("data, reason", [(b"just some text, not a photo", "not an image"),
                                          (b"<html><body>hi</body></html>", "HTML"), (b"", "empty")])
def test_a_file_that_is_not_a_photo_stores_nothing(tmp_path, data, reason):
    store = FeedbackStore(tmp_path)
    with pytest.raises(CorrectionError, match=reason):
        save(store, photo=data)
    assert stored_files(tmp_path) == []


def test_a_photo_with_gps_and_a_serial_number_is_stored_without_them(tmp_path):
    original = gps_photo()
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(0x8825)  # the GPS is there to begin with
    correction = save(FeedbackStore(tmp_path), photo=original)
    stored = (tmp_path / correction.photo).read_bytes()
    image = Image.open(io.BytesIO(stored))
    assert not image.getexif() and "exif" not in image.info and "icc_profile" not in image.info
    for secret in (b"SERIAL-0042", b"SecretCamCorp", b"Exif"):
        assert secret not in stored
    assert image.size == (64, 48)


def test_a_photo_is_named_by_its_content_and_stored_once(tmp_path):
    store = FeedbackStore(tmp_path)
    first, second = save(store, caption="a red square"), save(store, caption="a red block")
    assert first.photo == second.photo and first.id != second.id
    assert len(list((tmp_path / "photos").iterdir())) == 1 and len(store.list()) == 2
    import hashlib

    assert hashlib.sha256((tmp_path / first.photo).read_bytes()).hexdigest().startswith(first.photo[7:23])


def test_a_big_photo_is_stored_at_most_1024_pixels_on_its_longer_side(tmp_path):
    correction = save(FeedbackStore(tmp_path), photo=a_photo(size=(3000, 1500)))
    assert Image.open(tmp_path / correction.photo).size == (1024, 512)


def test_sixteen_concurrent_saves_are_all_stored(tmp_path):
    store = FeedbackStore(tmp_path)
    all_at_once(16, lambda i: save(store, photo=a_photo((i * 15, 100, 200 - i * 10)), caption=f"photo number {i}"))
    listed = store.list()
    assert sorted(c.caption for c in listed) == sorted(f"photo number {i}" for i in range(16))
    assert len({c.id for c in listed}) == 16 and len({c.photo for c in listed}) == 16
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


KEEP_SAVING = """
import io, sys
from PIL import Image
from captioner.feedback import FeedbackStore
store = FeedbackStore(sys.argv[1])
i = 0
while True:
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (i % 256, (i * 7) % 256, 90)).save(buffer, format="PNG")
    store.save(buffer.getvalue(), f"photo number {i}", model_caption="m", checkpoint="c", decoding={})
    print(i, flush=True)
    i += 1
"""


def test_kill_9_mid_save_leaves_no_torn_or_lost_record(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KEEP_SAVING, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    acknowledged = []
    deadline = time.time() + 60
    while len(acknowledged) < 25 and time.time() < deadline:
        acknowledged.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = FeedbackStore(tmp_path)
    records = list((tmp_path / "records").glob("*.json"))
    listed = store.list()
    assert len(listed) == len(records) >= 25  # every record file is whole, and names a photo that is there
    for path in records:
        json.loads(path.read_text())
    captions = {c.caption for c in listed}
    assert all(f"photo number {i}" in captions for i in acknowledged)  # nothing said stored was lost
    assert len(store.orphans()) <= 1  # at most the photo of the save that was killed


def test_a_crash_between_the_photo_and_its_record_leaves_an_orphan_photo_not_a_record(tmp_path, monkeypatch):
    import captioner.feedback as feedback

    store = FeedbackStore(tmp_path)
    real = feedback.atomic_write_bytes

    def crash_on_records(path, data):
        if "records" in str(path):
            raise OSError("disk gone")
        real(path, data)

    monkeypatch.setattr(feedback, "atomic_write_bytes", crash_on_records)
    with pytest.raises(OSError):
        save(store)
    monkeypatch.setattr(feedback, "atomic_write_bytes", real)
    assert store.list() == [] and len(store.orphans()) == 1
    save(store)
    assert len(store.list()) == 1 and store.orphans() == []


def test_a_folder_over_its_size_cap_refuses_and_stores_nothing(tmp_path):
    save(FeedbackStore(tmp_path), photo=a_photo((1, 2, 3)))
    before = stored_files(tmp_path)
    used = sum((tmp_path / f).stat().st_size for f in before)
    store = FeedbackStore(tmp_path, max_bytes=used + 100)  # the folder's size is counted from the disk
    with pytest.raises(CorrectionError, match="full"):
        save(store, photo=a_photo((250, 250, 3), size=(200, 200)))
    assert stored_files(tmp_path) == before


def test_the_rate_limit_counts_each_client_apart():
    limit = RateLimit(count=3, seconds=60)
    for _ in range(3):
        limit.take("1.2.3.4")
    with pytest.raises(CorrectionError, match="Too many corrections"):
        limit.take("1.2.3.4")
    limit.take("5.6.7.8")
    limit.give_back("5.6.7.8")
    limit.take("5.6.7.8")


def test_the_training_reader_and_the_command_line(tmp_path, capsys):
    from captioner.__main__ import main
    from captioner.datasets import read_dataset

    store = FeedbackStore(tmp_path)
    kept = save(store, photo=a_photo((10, 10, 10)), caption="a black square")
    gone = save(store, photo=a_photo((240, 240, 240)), caption="a white square")
    assert read_corrections(tmp_path) == [(tmp_path / kept.photo, "a black square"),
                                          (tmp_path / gone.photo, "a white square")]
    found = read_dataset("corrections", tmp_path)
    assert [(r.image, r.caption) for r in found.records] == read_corrections(tmp_path)
    assert main(["corrections", "--folder", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert kept.id in out and '"a white square"' in out and "2 corrections" in out
    assert main(["corrections", "--folder", str(tmp_path), "remove", gone.id]) == 0
    assert not (tmp_path / gone.photo).exists() and [c.id for c in store.list()] == [kept.id]
    assert main(["corrections", "--folder", str(tmp_path), "remove", "../../etc/passwd"]) == 2
    assert main(["corrections", "--folder", str(tmp_path), "export", "--coco", str(tmp_path / "c.json")]) == 0
    coco = json.loads((tmp_path / "c.json").read_text())
    assert coco["annotations"][0]["caption"] == "a black square"
    assert (tmp_path / "photos" / coco["images"][0]["file_name"]).is_file()
    from captioner.datasets import read_coco

    assert [r.caption for r in read_coco(tmp_path / "c.json", tmp_path / "photos").records] == ["a black square"]


def test_pushing_to_the_hub_is_off_without_a_repo_and_never_stops_local_storage(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CAPTIONER_FEEDBACK_REPO", raising=False)
    assert sync_to_hub(tmp_path) is None
    made = {}

    class Recorder:
        def __init__(self, **kwargs):
            made.update(kwargs)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "CommitScheduler", Recorder)
    monkeypatch.setenv("CAPTIONER_FEEDBACK_REPO", "someone/corrections")
    assert isinstance(sync_to_hub(tmp_path), Recorder)
    assert made["repo_id"] == "someone/corrections" and made["repo_type"] == "dataset" and made["private"]
    assert made["folder_path"] == tmp_path and made["allow_patterns"] == ["photos/*.jpg", "records/*.json"]
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub cannot be reached from here: a warning, no scheduler
    assert sync_to_hub(tmp_path, repo="someone/corrections") is None
    assert "not pushed" in caplog.text
    save(FeedbackStore(tmp_path))
