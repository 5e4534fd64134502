"""Who is asking, and what the form promises: the rate limit keys on the address a trusted
proxy added (a made-up X-Forwarded-For gets no one past it), a feedback folder that cannot
be written is refused in one sentence while the app goes on captioning, and the consent
box says where the photo goes."""

import io
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from PIL import Image

from captioner.feedback import CorrectionService, FeedbackStore
from webapp.correction_form import CorrectionForm, client_of, consent_label


def request(forwarded=None, host="10.16.4.2"):
    """A request as gradio hands it over: starlette's headers (a header may come more than once)."""
    from starlette.datastructures import Headers

    values = forwarded if isinstance(forwarded, list) else [] if forwarded is None else [forwarded]
    return SimpleNamespace(headers=Headers(raw=[(b"x-forwarded-for", v.encode()) for v in values]),
                           client=SimpleNamespace(host=host))


@dataclass
class Decoding:
    beam_size: int = 3


class FakeCaptions:
    """The app's caption service as the corrections use it, without a model."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.model = SimpleNamespace(get=lambda: SimpleNamespace(decoding=Decoding()))

    def caption_paths(self, paths, beam_size=None):
        return [{"image": str(paths[0]), "caption": "a red square"}]


def a_photo_file(tmp_path, name="red.jpg"):
    path = tmp_path / name
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return str(path)


@pytest.mark.parametrize("env, forwarded, expected", [
    ({"SPACE_ID": "u/app"}, "203.0.113.9, 198.51.100.7", "198.51.100.7"),  # the Space's proxy added the last
    ({"SPACE_ID": "u/app"}, ["203.0.113.9", "198.51.100.7"], "198.51.100.7"),  # two header lines, one list
    ({"SPACE_ID": "u/app"}, "198.51.100.7", "198.51.100.7"),
    ({"SPACE_ID": "u/app"}, None, "10.16.4.2"),
    ({"SPACE_ID": "u/app", "CAPTIONER_TRUSTED_HOPS": "2"}, "1.2.3.4, 198.51.100.7, 10.0.0.9", "198.51.100.7"),
    ({"SPACE_ID": "u/app", "CAPTIONER_TRUSTED_HOPS": "0"}, "203.0.113.9, 198.51.100.7", "10.16.4.2"),
    ({}, "203.0.113.9, 198.51.100.7", "10.16.4.2"),  # no proxy trusted: the connection's address
    ({"CAPTIONER_TRUSTED_HOPS": "1"}, "203.0.113.9, 198.51.100.7", "198.51.100.7"),
])
def test_the_client_is_the_address_a_trusted_proxy_added(monkeypatch, env, forwarded, expected):
    for name in ("SPACE_ID", "CAPTIONER_TRUSTED_HOPS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert client_of(request(forwarded)) == expected


def test_a_made_up_first_address_on_every_save_gets_no_one_past_120_an_hour(tmp_path, monkeypatch):
    import gradio as gr

    monkeypatch.setenv("SPACE_ID", "someone/captioner")
    monkeypatch.delenv("CAPTIONER_TRUSTED_HOPS", raising=False)
    monkeypatch.delenv("CAPTIONER_FEEDBACK_RATE", raising=False)
    checkpoint = tmp_path / "captioner.safetensors"
    checkpoint.write_bytes(b"weights")
    store = FeedbackStore(tmp_path / "feedback")
    form = CorrectionForm(CorrectionService(FakeCaptions(checkpoint), store))
    photo, refused = a_photo_file(tmp_path), 0
    for i in range(130):
        made_up = f"203.0.{i // 250}.{i % 250 + 1}"  # what the client wrote, a fresh one each time
        try:
            form.correct(photo, f"a red square, take {i}", True, request(f"{made_up}, 198.51.100.7"))
        except gr.Error as err:
            assert "Too many corrections" in str(err)
            refused += 1
    assert len(store.list()) == 120 and refused == 10


def test_a_feedback_folder_that_cannot_be_written_is_one_sentence_and_the_app_goes_on_captioning(tmp_path):
    import gradio as gr

    import app
    from tests.conftest import shipped

    shipped("captioner.safetensors")
    blocked = tmp_path / "feedback"
    blocked.write_text("a file where the folder should be")
    captions = app.make_services().captions
    form = CorrectionForm(CorrectionService(captions, FeedbackStore(blocked)))
    photo = a_photo_file(tmp_path)
    with pytest.raises(gr.Error) as refused:
        form.correct(photo, "a red square on a table", True)
    said = refused.value.message
    assert said.startswith("Nothing was stored: the feedback folder cannot be written") and said.count(". ") == 0
    note = form.save_on_page(0, "red.jpg", [photo], "a red square on a table", True, "greedy", 1)
    assert "Nothing was stored" in note and "correction-note" in note
    assert blocked.read_text() == "a file where the folder should be" and len(list(tmp_path.iterdir())) == 2
    assert captions.caption_paths([photo])[0]["caption"]  # captioning goes on
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 250)).save(buffer, format="PNG")
    (tmp_path / "blue.png").write_bytes(buffer.getvalue())
    assert captions.caption_paths([str(tmp_path / "blue.png")])[0]["caption"]


def test_the_consent_box_says_where_the_photo_goes(tmp_path, monkeypatch):
    local = consent_label(None)
    assert "this app's server" in local and "Hugging Face" not in local
    pushed = consent_label("someone/corrections")
    assert "this app's server" in pushed and "Hugging Face dataset repository someone/corrections" in pushed
    assert "history keeps a copy" in pushed  # a removal does not reach the repository's history
    monkeypatch.setenv("CAPTIONER_FEEDBACK_REPO", "someone/corrections")
    service = CorrectionService(FakeCaptions(tmp_path / "c"), FeedbackStore(tmp_path / "f"))
    assert service.repo == "someone/corrections"  # the form labels its box with consent_label(service.repo)
    monkeypatch.delenv("CAPTIONER_FEEDBACK_REPO")
    assert CorrectionService(FakeCaptions(tmp_path / "c"), FeedbackStore(tmp_path / "f")).repo is None
