"""The web app: its functions called directly, and the running server through gradio_client."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import ROOT, free_port, shared, shipped

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def example_photo(tmp_path, name="camera"):
    import skimage.data

    path = tmp_path / f"{name}.jpg"
    Image.fromarray(getattr(skimage.data, name)()).save(path)
    return path


def drawn_digit(tmp_path, digit="1") -> str:
    image = Image.new("L", (280, 280), 255)
    draw = ImageDraw.Draw(image)
    if digit == "1":
        draw.line([(140, 40), (145, 240)], fill=0, width=22)
    else:  # a 7
        draw.line([(70, 60), (210, 60), (120, 240)], fill=0, width=22, joint="curve")
    path = tmp_path / f"digit{digit}.png"
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def tabs():
    """The app's tabs, built on the services ``python app.py`` makes (from the environment)."""
    from types import SimpleNamespace

    import app
    from webapp.caption_tab import CaptionTab
    from webapp.digits_tab import DigitsTab
    from webapp.frames_tab import FramesTab
    from webapp.trajectory_tab import TrajectoryTab

    services = app.make_services()
    return SimpleNamespace(caption=CaptionTab(services.captions), digits=DigitsTab(services.digits),
                           trajectory=TrajectoryTab(services.trajectories), frames=FramesTab(services.frames))


# ------------------------------------------------------------------ direct calls

def test_caption_function_shades_words_and_writes_downloads(tabs, tmp_path):
    shipped("captioner.safetensors")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    html, gallery, maps, table, downloads, results, timing = tabs.caption.caption(
        [str(example_photo(tmp_path)), str(bad)], "beam search", 3)
    assert [caption for _, caption in gallery] == [results[0]["caption"]]
    assert "man" in results[0]["words"]  # scikit-image's cameraman
    assert "error" in results[1] and "not an image" in results[1]["error"]
    assert "rgba(79, 70, 229" in html and "title='p = " in html and "notes.jpg" in html
    assert [row[0] for row in table] == ["camera.jpg", "notes.jpg"]
    csv_text = open(downloads[0]).read()
    assert csv_text.startswith("image,caption") and "camera.jpg" in csv_text
    assert json.loads(open(downloads[1]).read())[0]["caption"] == results[0]["caption"]
    assert "1 caption in" in timing and "could not be read" in timing


def test_old_downloads_are_removed_without_scanning_on_every_request(tmp_path):
    import os
    import time

    from webapp.caption_output import Downloads

    downloads = Downloads(tmp_path)
    old, new = tmp_path / "captions-old.csv", tmp_path / "captions-new.csv"
    for f in (old, new):
        f.write_text("x")
    os.utime(old, (time.time() - 7200,) * 2)
    downloads.remove_old()
    assert not old.exists() and new.exists()
    old.write_text("x")
    os.utime(old, (time.time() - 7200,) * 2)
    downloads.remove_old()  # scanned less than a minute ago: left for the next scan
    assert old.exists()


def test_caption_function_errors(tabs, tmp_path):
    import gradio as gr

    shipped("captioner.safetensors")
    with pytest.raises(gr.Error, match="choose at least one photo"):
        tabs.caption.caption([], "greedy", 1)
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"")
    with pytest.raises(gr.Error, match="empty"):
        tabs.caption.caption([str(bad)], "greedy", 1)
    with pytest.raises(gr.Error, match="beam width"):
        tabs.caption.caption([str(example_photo(tmp_path))], "beam search", 50)


def test_greedy_equals_beam_width_one(tabs, tmp_path):
    shipped("captioner.safetensors")
    photo = str(example_photo(tmp_path, "coffee"))
    assert tabs.caption.caption([photo], "greedy", 7)[5] == tabs.caption.caption([photo], "beam search", 1)[5]


def test_classify_digit_function(tabs, tmp_path):
    shipped("mnist.safetensors")
    probs, seen = tabs.digits.classify_digit(drawn_digit(tmp_path, "1"))
    assert max(probs, key=probs.get) == "1"
    assert seen.size == (168, 168)
    canvas = np.zeros((280, 280, 3), dtype=np.uint8)  # what the canvas sends: white ink on black
    canvas[40:240, 130:152] = 255
    probs, _ = tabs.digits.classify_digit(canvas)
    assert max(probs, key=probs.get) == "1"


def test_classify_digit_errors(tabs):
    import gradio as gr

    shipped("mnist.safetensors")
    with pytest.raises(gr.Error, match="Draw a digit"):
        tabs.digits.classify_digit(None)
    with pytest.raises(gr.Error, match="empty"):
        tabs.digits.classify_digit(np.zeros((280, 280, 3), dtype=np.uint8))


def test_predict_trajectory_function(tabs):
    shipped("trajectory.safetensors")
    t = np.linspace(0, 1.2 * np.pi, 40)
    points = json.dumps(np.stack([200 + 100 * np.cos(t), 200 + 100 * np.sin(t)], 1).tolist())
    picture, result = tabs.trajectory.predict_trajectory(points)
    assert picture.size == (480, 480)
    assert len(result["model"]) == 10 and len(result["constant_velocity"]) == 10 and len(result["input"]) == 30


@pytest.mark.parametrize("points, message", [
    ("", "Draw a stroke"), ("[[1, 2]]", "at least 2"), ("[[1, 2], [NaN, 3]]", "finite"),
    ("[[1e300, 2], [3, 4]]", "within"), ("not json", "JSON"), ('[["a", "b"], [1, 2]]', "numbers"),
    ("[[1, 2, 3], [4, 5, 6]]", "pairs"), ("[[Infinity, 0], [0, 0]]", "finite"),
])
def test_predict_trajectory_rejects_bad_strokes(tabs, points, message):
    import gradio as gr

    shipped("trajectory.safetensors")
    with pytest.raises(gr.Error, match=message):
        tabs.trajectory.predict_trajectory(points)


def test_predict_frames_function(tabs):
    shipped("nextframe.safetensors")  # from the digits shipped in demos/samples
    picture, summary = tabs.frames.predict_frames(3)
    assert picture.size[0] == 1280
    assert summary["mse_per_frame"] < summary["copy_last_frame_mse_per_frame"]
    import gradio as gr

    with pytest.raises(gr.Error, match="whole number|between"):
        tabs.frames.predict_frames(-5)


def test_untrained_tabs_say_so(tmp_path):
    """With no checkpoints at all, the app still starts and says what is missing."""
    port = free_port()
    env = {**os.environ, "CAPTIONER_CHECKPOINTS": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).read().decode()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert config.count("Not trained yet") == 4
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_every_caption_event_keeps_the_caption_queues_limit_and_a_removed_photo_hides_its_results():
    """Gradio gives a shared queue the lowest limit of the events that join it, so one event
    left at the default (2) would make every caption, the API's too, wait for two at a time."""
    import app
    from tests.conftest import CHECKPOINTS

    if not (CHECKPOINTS / "captioner.safetensors").is_file():
        pytest.skip("no trained captioner: the caption tab is not built")
    demo = app.build_app()
    caption = [fn for fn in demo.fns.values() if fn.concurrency_id == "caption"]
    assert len(caption) >= 4  # the button, the example click, opening "where it looked", the API
    assert {fn.concurrency_limit for fn in caption} == {16}
    # a photo removed hides the results, as clearing does: "where it looked" is never opened over
    # another photo left under the same name (phones call every photo image.jpg)
    files = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "caption-files")
    emptied = {event for fn in demo.fns.values() for block, event in fn.targets if block == files._id
               and any(getattr(o, "elem_id", None) == "caption-looked" for o in fn.outputs)}
    assert {"clear", "delete"} <= emptied


# ------------------------------------------------------------- the running server

@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def test_server_starts_quickly_and_binds_loopback(server):
    assert server["startup_seconds"] < 15
    assert server["url"].startswith("http://127.0.0.1:")


def test_every_endpoint_has_its_stable_name(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    expected = {"/caption", "/classify_digit", "/predict_trajectory", "/predict_frames"}
    available = {"/caption": "captioner", "/classify_digit": "mnist", "/predict_trajectory": "trajectory",
                 "/predict_frames": "nextframe"}
    from tests.conftest import CHECKPOINTS

    expected = {e for e in expected if (CHECKPOINTS / f"{available[e]}.safetensors").is_file()}
    assert expected <= names


def test_caption_through_gradio_client(client, tmp_path):
    from gradio_client import handle_file

    shipped("captioner.safetensors")
    html, gallery, maps, table, downloads, results, timing = client.predict(
        [handle_file(str(example_photo(tmp_path, "camera"))), handle_file(str(example_photo(tmp_path, "coffee")))],
        "beam search", 3, api_name="/caption")
    assert "man" in results[0]["words"] and len(results) == 2
    assert [m["caption"] for m in maps] == [f"{n}. {w}" + (" (camera.jpg)" if n == 1 else "")
                                            for n, w in enumerate(results[0]["words"], 1)]  # where it looked
    assert all(os.path.isfile(m["image"]) for m in maps)
    assert all(len(r["words"]) == len(r["probabilities"]) for r in results)
    assert all({"objects", "familiarity"} <= set(r) for r in results)


def test_caption_api_takes_one_file_as_well_as_a_list(client, tmp_path):
    from gradio_client import handle_file

    shipped("captioner.safetensors")
    outputs = client.predict(handle_file(str(example_photo(tmp_path, "camera"))), api_name="/caption")
    results = outputs[5]
    assert len(results) == 1 and results[0]["image"] == "camera.jpg" and results[0]["caption"]


def test_a_file_that_is_not_a_photo_is_taken_out_when_added_and_captured_ones_pass_the_safe_loader(tabs, tmp_path):
    import base64
    import io

    import gradio as gr
    from PIL import Image

    shipped("captioner.safetensors")
    bad = tmp_path / "page.jpg"
    bad.write_text("<html>not a photo</html>")
    from webapp.caption_tab import example_images

    good = str(example_photo(tmp_path))
    kept, message, *_ = tabs.caption.check_added([good, str(bad)])
    assert kept == [good] and "page.jpg was left out" in message and "HTML" in message
    unchanged = tabs.caption.check_added([good])  # all photos: nothing changes
    assert len(unchanged) == 9 and all(u == gr.skip() for u in unchanged)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 0, 0)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    files, *_ = tabs.caption.add_captured([good], gr.EventData(None, {"image": url, "source": "webcam"}))
    assert len(files) == 2 and "webcam-" in files[1]
    svg = "data:image/svg+xml;base64," + base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()
    with pytest.raises(gr.Error, match="could not be read"):
        tabs.caption.add_captured([], gr.EventData(None, {"image": svg, "source": "clipboard"}))
    with pytest.raises(gr.Error, match="could not be read"):
        tabs.caption.add_captured([], gr.EventData(None, {"image": "javascript:alert(1)"}))
    files, *_ = tabs.caption.pick_example(gr.SelectData(None, {"index": 0, "value": None}))
    assert files == [example_images()[0]]  # an example replaces the photos: it is captioned alone


def test_the_page_says_a_mistake_once_in_the_caption_area(tabs, tmp_path):
    shipped("captioner.safetensors")
    html, *rest = tabs.caption.caption_on_page(None)
    assert "Choose a photo first." in html and rest[0] is None and rest[-1] == ""
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"")
    html, *_ = tabs.caption.caption_on_page([str(bad)], "greedy", 1)
    assert "x.jpg" in html and "empty" in html
    html, *_ = tabs.caption.caption_on_page([str(example_photo(tmp_path, "coffee"))], "greedy", 1)
    assert "class='caption'" in html and html.count("<img") == 1  # the photo, whole, under its caption


def test_the_button_and_the_api_answer_through_one_path(tabs, tmp_path, monkeypatch):
    """``caption_on_page`` and ``caption`` both call ``answer``: the same captions, table and
    results from one call of ``captioned``; only a mistake is said differently."""
    import gradio as gr

    shipped("captioner.safetensors")
    files = [str(example_photo(tmp_path, "coffee"))]
    page, api = tabs.caption.caption_on_page(files, "greedy", 1), tabs.caption.caption(files, "greedy", 1)
    assert page[-2] == api[-2] and page[3] == api[3]  # the results as JSON and the table
    calls = []
    monkeypatch.setattr(type(tabs.caption), "answer", lambda self, *args, page: calls.append(page))
    tabs.caption.caption_on_page(files), tabs.caption.caption(files)
    assert calls == [True, False]
    monkeypatch.undo()
    with pytest.raises(gr.Error, match="at least one photo"):
        tabs.caption.caption(None)


def test_the_page_draws_where_it_looked_only_when_the_section_is_opened(tabs, tmp_path):
    """The Caption button shows the section "Where it looked, word by word" folded and
    empty (drawing its pictures cost 25-30 ms of a 150 ms caption); opening it draws them
    from the photos and the results as JSON the page holds: the pictures ``/caption``
    gives, one per word."""
    from webapp.caption_tab import looked_at

    shipped("captioner.safetensors")
    files = [str(example_photo(tmp_path, "coffee")), str(example_photo(tmp_path))]
    _, maps, looked, *_, results, _ = tabs.caption.caption_on_page(files, "greedy", 1)
    assert looked.visible and looked.open is False and maps is None  # shown, folded, not drawn
    assert looked_at(results) == 0  # the coffee's attention points somewhere: its words are the section's
    on_page = tabs.caption.looked_on_page(files, json.loads(json.dumps(results)))
    _, _, from_api, *_ = tabs.caption.caption(files, "greedy", 1)
    assert [label for _, label in on_page] == [label for _, label in from_api] == [
        f"{n}. {w}" + (" (coffee.jpg)" if n == 1 else "") for n, w in enumerate(results[0]["words"], 1)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(on_page, from_api))
    assert tabs.caption.looked_on_page(files[1:], results) == []  # its photo gone: no pictures, not another's
    reordered = tabs.caption.looked_on_page(files[::-1], results)  # found by its name, the same pixels
    assert [label for _, label in reordered] == [label for _, label in on_page]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(reordered, on_page))
    assert tabs.caption.looked_on_page(None, None) == []


def test_the_shipped_examples_are_everyday_scenes_it_describes_as_familiar(tabs):
    """The examples under the upload box: at least 4, each captioned without the
    'unlike the photos it learned from' warning, each credited."""
    from webapp.caption_tab import EXAMPLES, example_images

    shipped("captioner.safetensors")
    examples = example_images()
    assert len(examples) >= 4
    credits = (EXAMPLES / "CREDITS.md").read_text()
    assert all(f"`{os.path.basename(p)}`" in credits for p in examples)
    assert sum(os.path.getsize(p) for p in examples) < 2_000_000
    html, *_, results, _ = tabs.caption.caption(examples)
    assert "unfamiliar" not in html and all(r["caption"] for r in results)


def test_bad_upload_through_gradio_client_is_a_clear_error(client, tmp_path):
    from gradio_client import handle_file

    shipped("captioner.safetensors")
    bad = tmp_path / "page.jpg"
    bad.write_text("<html><body>hi</body></html>")
    with pytest.raises(Exception, match="HTML"):
        client.predict([handle_file(str(bad))], "greedy", 1, api_name="/caption")


def test_other_endpoints_through_gradio_client(client, tmp_path):
    from gradio_client import handle_file

    shipped("mnist.safetensors")
    label, _ = client.predict(handle_file(drawn_digit(tmp_path, "7")), api_name="/classify_digit")
    assert label["label"] == "7"
    shipped("trajectory.safetensors")
    _, result = client.predict("[[0, 0], [1, 1], [2, 2], [3, 3]]", api_name="/predict_trajectory")
    assert np.allclose(result["constant_velocity"][0], [4, 4])
    shipped("nextframe.safetensors")
    _, summary = client.predict(11, api_name="/predict_frames")
    assert summary["mse_per_frame"] > 0


@pytest.mark.parametrize("path", ["checkpoints/mnist.safetensors", "README.md", "app.py", "/etc/passwd",
                                  "../shared/data/README.md", "lstmkit/images.py"])
def test_gradio_serves_none_of_our_files(server, path):
    import urllib.error

    base = server["url"]
    for url in (f"{base}/gradio_api/file={path}", f"{base}/file={path}", f"{base}/gradio_api/file={ROOT / path}"):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read(2000)
            assert response.status != 200 or b"<!doctype html" in body.lower(), f"{url} was served"
        except urllib.error.HTTPError as err:
            assert err.code in (400, 403, 404, 405)


def test_the_caption_tab_lists_objects_and_concepts(tabs):
    """Zebras: the detector's boxes (two zebras), the classifier's object and the concepts
    learned from captions, all under the caption, and all in the API's results."""
    shipped("captioner.safetensors")
    zebras = str(shared("coco_mini", "train2017", "000000281789.jpg"))
    html, gallery, *_, results, _ = tabs.caption.caption([zebras])
    kinds = {o["kind"] for o in results[0]["objects"]}
    assert kinds == {"detected", "object", "concept"}, results[0]["objects"]
    assert "Boxed by the object detector</dt><dd>zebra &times;2" in html
    assert "Seen by the image classifier</dt><dd>zebra" in html and "Concepts learned from captions" in html
    assert [b["category"] for b in results[0]["boxes"]] == ["zebra", "zebra"]
