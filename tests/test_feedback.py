"""The corrections people save: every refusal stores nothing, photos lose their EXIF,
concurrent saves and a kill -9 mid-save lose no record, the size cap holds under
concurrent saves and follows removals made elsewhere, a disk that refuses a write leaves
nothing behind, a tampered record is never followed outside the folder, the folder reads
back for training, and the command line lists, removes (here and from the Hub) and exports."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from captioner.feedback import CorrectionError, FeedbackStore, RateLimit, clean_caption, read_corrections
from captioner.feedback_hub import sync_to_hub
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


def test_a_failed_record_write_says_so_in_one_sentence_and_leaves_no_photo_behind(tmp_path, monkeypatch):
    import errno

    import captioner.feedback as feedback

    store = FeedbackStore(tmp_path)
    real = feedback.atomic_write_bytes

    def full_on_records(path, data):
        if "records" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(feedback, "atomic_write_bytes", full_on_records)
    with pytest.raises(CorrectionError, match=r"^Nothing was stored: .*No space left on device.*\.$"):
        save(store)
    assert stored_files(tmp_path) == [] and store.orphans() == [] and store.size() == 0
    monkeypatch.setattr(feedback, "atomic_write_bytes", real)
    save(store)
    assert len(store.list()) == 1 and store.orphans() == []
    assert store.size() == sum((tmp_path / f).stat().st_size for f in stored_files(tmp_path))


def test_a_feedback_folder_that_is_a_file_refuses_in_one_sentence_and_stores_nothing(tmp_path):
    blocked = tmp_path / "feedback"
    blocked.write_text("not a folder")
    with pytest.raises(CorrectionError, match=r"^Nothing was stored: the feedback folder cannot be written"):
        save(FeedbackStore(blocked))
    assert blocked.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["feedback"]


def test_a_photo_a_crashed_save_left_is_counted_and_deleted_once_it_is_old(tmp_path):
    store = FeedbackStore(tmp_path)
    kept = save(store, photo=a_photo((5, 5, 5)))
    (tmp_path / "photos").joinpath("0123456789abcdef.jpg").write_bytes(a_photo((9, 9, 9)))  # a crash's, an hour ago
    os.utime(tmp_path / "photos" / "0123456789abcdef.jpg", (time.time() - 7200, time.time() - 7200))
    (tmp_path / "photos").joinpath("fedcba9876543210.jpg").write_bytes(a_photo((8, 8, 8)))  # a save in flight
    running = FeedbackStore(tmp_path)  # a running app counts the folder first
    assert running.size() == sum((tmp_path / f).stat().st_size for f in stored_files(tmp_path))
    assert stored_files(tmp_path) == sorted([kept.photo, "photos/fedcba9876543210.jpg", f"records/{kept.id}.json"])


def test_a_folder_over_its_size_cap_refuses_and_stores_nothing(tmp_path):
    save(FeedbackStore(tmp_path), photo=a_photo((1, 2, 3)))
    before = stored_files(tmp_path)
    used = sum((tmp_path / f).stat().st_size for f in before)
    store = FeedbackStore(tmp_path, max_bytes=used + 100)  # the folder's size is counted from the disk
    with pytest.raises(CorrectionError, match="full"):
        save(store, photo=a_photo((250, 250, 3), size=(200, 200)))
    assert stored_files(tmp_path) == before


def test_sixteen_saves_at_once_never_pass_the_size_cap(tmp_path, monkeypatch):
    import captioner.feedback as feedback

    real = feedback.atomic_write_bytes
    monkeypatch.setattr(feedback, "atomic_write_bytes", lambda path, data: (time.sleep(0.02), real(path, data)))
    photos = [a_photo((i * 15, 90, 200 - i * 10), size=(96, 96)) for i in range(16)]
    one = FeedbackStore(tmp_path / "one")
    save(one, photo=photos[0])
    cap = 5 * one.size() + 100  # room for five
    store = FeedbackStore(tmp_path / "many", max_bytes=cap)

    def attempt(i):
        try:
            return save(store, photo=photos[i], caption=f"photo number {i}")
        except CorrectionError:
            return None

    stored = [c for c in all_at_once(16, attempt) if c is not None]
    on_disk = sum(p.stat().st_size for p in (tmp_path / "many").rglob("*") if p.is_file())
    assert on_disk <= cap and 4 <= len(stored) <= 5 and len(store.list()) == len(stored)
    assert store.size() == on_disk


def test_a_removal_by_another_process_frees_its_bytes_for_the_running_store(tmp_path):
    running = FeedbackStore(tmp_path)
    kept, gone = save(running, photo=a_photo((1, 1, 1))), save(running, photo=a_photo((250, 1, 1), size=(300, 300)))
    elsewhere = FeedbackStore(tmp_path)  # captioner corrections remove, in its own process
    elsewhere.remove(gone.id)
    assert running.size() == sum((tmp_path / f).stat().st_size for f in stored_files(tmp_path))
    assert [c.id for c in running.list()] == [kept.id]


@pytest.mark.parametrize("photo", ["../outside.txt", "ABSOLUTE", "photos/../../outside.txt",
                                   "photos/0123456789abcdef.png", "records/x.json", 42])
def test_a_tampered_record_is_never_followed_outside_the_photos_folder(tmp_path, caplog, photo):
    folder = tmp_path / "feedback"
    store = FeedbackStore(folder)
    kept = save(store)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    photo = str(outside) if photo == "ABSOLUTE" else photo
    record = json.loads((folder / "records" / f"{kept.id}.json").read_text())
    tampered = "20260101T120000123456Z-0a1b2c3d"
    (folder / "records" / f"{tampered}.json").write_text(json.dumps({**record, "id": tampered, "photo": photo}))
    assert [c.id for c in store.list()] == [kept.id] and "skipped" in caplog.text
    assert read_corrections(folder) == [(folder / kept.photo, "a red square on a table")]  # what training reads
    with pytest.raises(CorrectionError, match="not a correction record of this folder"):
        store.remove(tampered)
    assert outside.read_text() == "precious" and (folder / "records" / f"{tampered}.json").is_file()
    assert (folder / kept.photo).is_file()


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
    from captioner.train.datasets import read_dataset

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
    from captioner.train.datasets import read_coco

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


class FakeHub:
    """huggingface_hub's HfApi as far as the corrections use it, holding a repository's files
    (these machines cannot reach the Hub)."""

    def __init__(self, files=(), down: bool = False):
        self.files, self.down, self.commits, self.squashed = set(files), down, [], []

    def list_repo_files(self, repo_id, repo_type=None):
        if self.down:
            raise ConnectionError("the Hub cannot be reached")
        assert repo_type == "dataset"
        return sorted(self.files)

    def create_commit(self, repo_id, repo_type, operations, commit_message):
        self.commits.append((repo_id, repo_type, [(type(o).__name__, o.path_in_repo) for o in operations]))
        self.files -= {o.path_in_repo for o in operations}

    def super_squash_history(self, repo_id, repo_type, commit_message=None):
        self.squashed.append((repo_id, repo_type))


def test_remove_deletes_a_correction_from_the_dataset_repository_too_and_says_its_history_keeps_it(
        tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from captioner.__main__ import main

    store = FeedbackStore(tmp_path)
    first, again = save(store, caption="a red square"), save(store, caption="a red block")  # one photo, two records
    other = save(store, photo=a_photo((1, 200, 1)), caption="a green square")
    hub = FakeHub(stored_files(tmp_path))
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    monkeypatch.setenv("CAPTIONER_FEEDBACK_REPO", "someone/corrections")
    cli = ["corrections", "--folder", str(tmp_path)]
    assert main([*cli, "remove", first.id]) == 0
    assert hub.commits[-1] == ("someone/corrections", "dataset",
                               [("CommitOperationDelete", f"records/{first.id}.json")])
    assert "its photo stays" in capsys.readouterr().out  # the other correction still names it
    assert main([*cli, "remove", other.id]) == 0
    said = capsys.readouterr().out
    assert [p for _, p in hub.commits[-1][2]] == [f"records/{other.id}.json", other.photo]
    assert "someone/corrections" in said and "git history still holds them until it is squashed" in said
    assert hub.files == {f"records/{again.id}.json", again.photo} and stored_files(tmp_path) == sorted(hub.files)
    assert main([*cli, "squash"]) == 0 and hub.squashed == [("someone/corrections", "dataset")]
    assert "squashed the history" in capsys.readouterr().out


def test_when_the_hub_cannot_be_reached_remove_removes_nothing_unless_told_local_only(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from captioner.__main__ import main

    store = FeedbackStore(tmp_path)
    kept = save(store)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: FakeHub(down=True))
    cli = ["corrections", "--folder", str(tmp_path), "--repo", "someone/corrections"]
    assert main([*cli, "remove", kept.id]) == 2
    assert "someone/corrections could not be changed" in capsys.readouterr().err
    assert [c.id for c in store.list()] == [kept.id]
    assert main([*cli, "remove", "--local-only", kept.id]) == 0 and store.list() == []
