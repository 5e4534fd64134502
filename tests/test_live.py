"""Live mode's rules without a browser: when a caption has not really changed, newest frame
wins (frames that arrive while one is captioned are dropped, never queued), the limits a
shared Space needs, and the page's server function on a real captioner."""

import base64
import io
import threading
import time

import pytest
from PIL import Image

from tests.conftest import all_at_once
from webapp.live import LiveSettings, LiveStreams, content_words, same_scene


def test_content_words_leave_out_stop_words_and_plurals():
    assert content_words("A group of horses are standing in front of a mountain.") == {
        "group", "horse", "standing", "mountain"}
    assert content_words("Two dogs and a glass on a tennis court") == {"dog", "glass", "tennis", "court"}


@pytest.mark.parametrize("old, new", [
    ("a man riding a wave on a surfboard", "a man riding a surfboard on a wave"),  # the same words, reordered
    ("A bus is sitting on a street.", "a bus sitting on the street"),  # only stop words differ
    ("a kitchen with a stove and a sink", "a kitchen with a stove"),  # one word less of four
    ("two horses standing in a field", "a horse standing in a field"),  # a plural
])
def test_a_caption_that_says_the_same_keeps_the_old_words(old, new):
    assert same_scene(old, new)


@pytest.mark.parametrize("old, new", [
    (None, "a bus on a street"),  # nothing shown yet
    ("a dog on a couch", "a cat on a couch"),  # a new thing named
    ("a bus is sitting on a street", "a group of people standing in a field"),
    ("a kitchen with a stove and a sink", "a kitchen with a stove and a refrigerator"),  # one thing swapped
])
def test_a_caption_that_names_something_new_replaces_it(old, new):
    assert not same_scene(old, new)


class SlowCaptioner:
    """Takes ``seconds`` per frame and remembers which frames it captioned."""

    def __init__(self, seconds=0.3, captions=None):
        self.seconds, self.captions, self.seen = seconds, captions or {}, []

    def __call__(self, image):
        self.seen.append(image)
        time.sleep(self.seconds)
        return {"caption": self.captions.get(image, f"a photo of {image}")}


def settings(**kwargs):
    return LiveSettings(**{"max_seconds": 60, "streams_per_visitor": 1, "idle_seconds": 10, **kwargs})


def test_frames_that_arrive_while_one_is_captioned_are_dropped_not_queued():
    captioner = SlowCaptioner(seconds=0.4)
    streams = LiveStreams(captioner, settings())
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", streams.offer("s", "me", "first")))
    first.start()
    time.sleep(0.1)  # the first frame is being captioned
    start = time.perf_counter()
    for k in range(5):  # five more frames while it is: each answered at once, with nothing
        answers[k] = streams.offer("s", "me", f"frame {k}")
    assert time.perf_counter() - start < 0.2
    first.join()
    assert [answers[k].kind for k in range(5)] == ["dropped"] * 5
    assert answers["first"].kind == "new"
    assert captioner.seen == ["first"]  # none of the dropped frames is captioned later
    later = streams.offer("s", "me", "newest")  # the next frame the page sends is the newest
    assert (later.kind, later.caption) == ("new", "a photo of newest")
    assert streams.streams["s"].dropped == 5 and streams.streams["s"].captioned == 2


def test_a_visitor_making_up_stream_names_gets_no_more_captions_at_once_than_allowed():
    captioner = SlowCaptioner(seconds=0.3)
    streams = LiveStreams(captioner, settings(streams_per_visitor=1))
    answers = all_at_once(4, lambda k: streams.offer("abcd"[k], "me", k))
    assert len(captioner.seen) == 1 and [a.kind for a in answers].count("new") == 1  # the rest dropped or ended


def test_each_stream_captions_on_its_own():
    captioner = SlowCaptioner(seconds=0.3)
    streams = LiveStreams(captioner, settings(streams_per_visitor=2))
    answers = all_at_once(2, lambda k: streams.offer("ab"[k], "me", k))
    assert sorted(a.kind for a in answers) == ["new", "new"]


def test_an_unchanged_caption_keeps_its_words_and_a_changed_one_replaces_them_at_once():
    captions = {1: "a man riding a wave on a surfboard", 2: "a man riding a surfboard on a wave",
                3: "a dog sitting on a couch"}
    streams = LiveStreams(SlowCaptioner(0, captions), settings())
    first, same, changed = (streams.offer("s", "me", k) for k in (1, 2, 3))
    assert (first.kind, first.caption) == ("new", captions[1])
    assert (same.kind, same.caption) == ("same", captions[1])  # the old words, not the new order
    assert same.result["caption"] == captions[1]  # the frame's result carries the kept words
    assert (changed.kind, changed.caption) == ("new", captions[3])


def test_a_stream_stops_itself_at_its_time_limit():
    now = [0.0]
    streams = LiveStreams(SlowCaptioner(0), settings(max_seconds=30, idle_seconds=1000), clock=lambda: now[0])
    assert streams.offer("s", "me", 1).kind == "new"
    now[0] = 29
    assert streams.offer("s", "me", 2).kind == "same"
    now[0] = 31
    ended = streams.offer("s", "me", 3)
    assert ended.kind == "ended" and "30 seconds" in ended.message


def test_one_stream_per_visitor_the_newer_takes_over_and_other_visitors_are_untouched():
    streams = LiveStreams(SlowCaptioner(0), settings())
    assert streams.offer("old", "me", 1).kind == "new"
    assert streams.offer("theirs", "someone else", 1).kind == "new"
    assert streams.offer("new", "me", 2).kind == "new"
    assert streams.offer("old", "me", 3).kind == "ended"
    assert streams.offer("theirs", "someone else", 2).kind == "same"


def test_a_stopped_or_idle_stream_frees_its_place():
    now = [0.0]
    streams = LiveStreams(SlowCaptioner(0), settings(idle_seconds=5), clock=lambda: now[0])
    streams.offer("s", "me", 1)
    streams.stop("s")
    assert "s" not in streams.streams
    streams.offer("t", "me", 1)
    now[0] = 6
    streams.offer("u", "another", 1)  # any frame sweeps the streams that went quiet
    assert set(streams.streams) == {"u"}


def test_settings_come_from_the_environment_and_stay_in_bounds(monkeypatch):
    monkeypatch.setenv("LIVE_MAX_SECONDS", "90")
    monkeypatch.setenv("LIVE_STREAMS_PER_VISITOR", "0")
    monkeypatch.setenv("LIVE_FRAME_SIDE", "99999")
    monkeypatch.setenv("LIVE_EVERY", "nonsense")
    monkeypatch.setenv("LIVE_BEAM", "1")
    s = LiveSettings.from_environment()
    assert (s.max_seconds, s.streams_per_visitor, s.frame_side, s.every, s.beam) == (90, 1, 1024, 0.25, 1)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_page_s_frame_is_captioned_with_its_boxes_and_a_bad_frame_is_refused_in_a_sentence():
    from tests.conftest import shipped

    shipped("captioner.safetensors")
    from captioner.service import CaptionService
    from webapp.caption_tab import example_images
    from webapp.live_panel import LivePanel

    panel = LivePanel(CaptionService(device="cpu"), settings())
    photo = Image.open(next(p for p in example_images() if p.endswith("bus.jpg"))).convert("RGB")
    photo.thumbnail((416, 416))
    answer = panel.live_frame({"stream": "s", "image": data_url(photo)})
    assert answer["kind"] == "new" and "bus" in answer["caption"].lower()
    assert "<img" in answer["html"] and "class='caption'" in answer["html"]
    bad = panel.live_frame({"stream": "s", "image": "data:image/jpeg;base64,AAAA"})
    assert bad["kind"] == "dropped" and "could not be read" in bad["message"]
    assert panel.live_stop("s") and panel.live_frame({"stream": "", "image": ""})["kind"] == "ended"


def test_the_slideshow_is_a_y4m_video_chromium_can_play(tmp_path):
    from benchmarks.slideshow import main

    out = tmp_path / "slides.y4m"
    main([str(out), "--seconds", "1", "--fps", "2", "--size", "64x48"])
    data = out.read_bytes()
    header, _, rest = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W64 H48 F2:1 Ip A1:1 C420jpeg"
    frame = b"FRAME\n" + bytes(64 * 48 * 3 // 2)
    assert rest.count(b"FRAME\n") == 12 and len(rest) == 12 * len(frame)  # 6 slides, 2 frames each
    with pytest.raises(SystemExit, match="no such photo"):
        main([str(out), str(tmp_path / "missing.jpg")])


def test_the_live_viewers_benchmark_streams_through_the_page_s_path(tmp_path):
    from tests.conftest import shipped

    shipped("captioner.safetensors")
    import json

    from benchmarks import live_viewers

    out = tmp_path / "live_viewers.json"
    live_viewers.main(["--viewers", "1", "2", "--seconds", "3", "--slide-seconds", "1", "--json-out", str(out)])
    report = json.loads(out.read_text())
    assert [run["viewers"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["answers"]["new"] >= 1 and run["answers"]["ended"] == 0
        assert run["uploads_meanwhile"]["failed"] == 0
    assert report["machine"]["cpu"] and len(report["load_average_before"]) == 3
