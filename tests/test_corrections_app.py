"""``/correct`` on the running app, through gradio_client as anyone would call it: stored one
by one and sixteen at once, each hostile correction refused with an error and nothing
stored, a photo's GPS gone, and the folder the app wrote read back for training."""

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import all_at_once, shipped

FOLDER = Path(os.environ["CAPTIONER_FEEDBACK_DIR"])  # the tests' apps store here (conftest)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    shipped("captioner.safetensors")
    return Client(server["url"], verbose=False)


def photo(tmp_path, name: str, colour=(30, 120, 200), exif=None) -> str:
    import skimage.data

    path = tmp_path / f"{name}.jpg"
    picture = Image.fromarray(skimage.data.coffee()).resize((160, 120))
    picture.paste(colour, (0, 0, 20, 20))  # each photo of its own
    picture.save(path, exif=exif) if exif is not None else picture.save(path)
    return str(path)


def records() -> set[str]:
    return {p.name for p in (FOLDER / "records").glob("*.json")} if (FOLDER / "records").is_dir() else set()


def correct(client, path, caption, consent=True):
    from gradio_client import handle_file

    return client.predict(handle_file(path), caption, consent, api_name="/correct")


def test_corrections_one_by_one_and_sixteen_at_once_are_all_stored(client, tmp_path):
    before = records()
    for i in range(3):
        message, record = correct(client, photo(tmp_path, f"one{i}", (i * 80, 10, 10)), f"a cup of coffee {i}")
        assert f"Stored as correction {record['id']}" in message and record["caption"] == f"a cup of coffee {i}"
        assert record["model_caption"] and record["checkpoint"].startswith("captioner.safetensors:")
        assert record["decoding"]["beam_size"] >= 1
    paths = [photo(tmp_path, f"many{i}", (10, i * 15, 10)) for i in range(16)]
    answers = all_at_once(16, lambda i: correct(client, paths[i], f"coffee number {i} on a saucer"))
    new = records() - before
    assert len(new) == 19 and {f"{record['id']}.json" for _, record in answers} <= new


@pytest.mark.parametrize("what, caption, consent, reason", [
    ("no consent", "a cup of coffee", False, "tick the box"),
    ("empty", "   ", True, "empty"),
    ("5,000 characters", "coffee " * 714 + "xx", True, "5,000 characters"),
    ("markup", "<img src=x onerror=alert(1)>", True, "markup"),
    ("a text file as the photo", "a cup of coffee", True, "not an image"),
])
def test_a_hostile_correction_is_refused_with_an_error_and_nothing_is_stored(client, tmp_path, what, caption,
                                                                             consent, reason):
    path = photo(tmp_path, "hostile")
    if what == "a text file as the photo":
        path = str(tmp_path / "notes.jpg")
        Path(path).write_text("this is not a photo at all")
    before = records()
    photos_before = set((FOLDER / "photos").glob("*")) if (FOLDER / "photos").is_dir() else set()
    with pytest.raises(Exception, match=reason):
        correct(client, path, caption, consent)
    assert records() == before
    assert (set((FOLDER / "photos").glob("*")) if (FOLDER / "photos").is_dir() else set()) == photos_before


def test_a_photo_with_gps_in_its_exif_is_stored_without_it(client, tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.9), 3: "E", 4: (2.0, 17.0, 40.2)})
    exif.get_ifd(0x8769)[0xA431] = "BODY-SERIAL-77"
    path = photo(tmp_path, "located", exif=exif)
    assert Image.open(path).getexif().get_ifd(0x8825)
    _, record = correct(client, path, "a cup of coffee on a table")
    stored = FOLDER / record["photo"]
    assert not Image.open(stored).getexif() and b"BODY-SERIAL-77" not in stored.read_bytes()


def test_the_training_reader_reads_the_folder_the_app_wrote(client, tmp_path):
    from captioner.train.datasets import read_dataset

    _, record = correct(client, photo(tmp_path, "for-training", (200, 200, 0)), "a yellow corner on a coffee cup")
    found = read_dataset("corrections", FOLDER).records
    mine = [r for r in found if r.caption == "a yellow corner on a coffee cup"]
    assert mine and mine[-1].image == FOLDER / record["photo"] and mine[-1].image.is_file()
    assert len(found) == len(records())


def test_a_client_over_its_rate_and_a_full_folder_are_refused_and_store_nothing(tmp_path):
    """The same form the app wires, on the app's caption service, with a tight rate limit and cap."""
    import gradio as gr

    import app
    from captioner.feedback import CorrectionService, FeedbackStore, RateLimit
    from webapp.correction_form import CorrectionForm

    captions = app.make_services().captions
    form = CorrectionForm(CorrectionService(captions, FeedbackStore(tmp_path / "a"), RateLimit(count=2, seconds=3600)))
    for i in range(2):
        form.correct(photo(tmp_path, f"rate{i}", (i * 90, 0, 0)), "a cup of coffee", True)
    with pytest.raises(gr.Error, match="Too many corrections"):
        form.correct(photo(tmp_path, "rate2", (0, 0, 250)), "a cup of coffee", True)
    assert len(list((tmp_path / "a" / "records").glob("*.json"))) == 2
    full = CorrectionForm(CorrectionService(captions, FeedbackStore(tmp_path / "b", max_bytes=1000)))
    with pytest.raises(gr.Error, match="full"):
        full.correct(photo(tmp_path, "big", (0, 250, 0)), "a cup of coffee", True)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*.*"))
    message = form.save_on_page(0, "elsewhere.jpg", [photo(tmp_path, "moved")], "a cup", True, "greedy", 1)
    assert "photos changed" in message  # the page's photos are not the ones captioned


def test_the_saved_photo_is_a_plain_jpeg_of_its_pixels(client, tmp_path):
    _, record = correct(client, photo(tmp_path, "pixels", (5, 250, 5)), "a green corner")
    stored = Image.open(io.BytesIO((FOLDER / record["photo"]).read_bytes()))
    assert stored.format == "JPEG" and stored.size == (160, 120) and stored.mode == "RGB"
