"""A real browser (Chromium through Playwright) against the running app. Screenshots are
kept in artifacts/browser/."""

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, shipped

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "browser"


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])  # a fake webcam
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(server["url"], wait_until="networkidle")
    yield page
    context.close()


def test_upload_a_photo_and_read_its_caption(page, tmp_path):
    import skimage.data
    from PIL import Image

    shipped("captioner.safetensors")
    photo = tmp_path / "cameraman.jpg"
    Image.fromarray(skimage.data.camera()).convert("RGB").save(photo)
    page.locator("#caption-files input[type=file]").set_input_files(str(photo))
    page.wait_for_timeout(500)
    page.locator("#caption-button").click()
    caption = page.locator("#caption-output .caption")
    caption.wait_for(timeout=60_000)
    text = caption.inner_text().strip()
    page.screenshot(path=str(SHOTS / "caption.png"), full_page=True)
    assert "man" in text.split()
    assert page.locator("#caption-output .w").count() == len(text.split())  # every word shaded
    assert "caption in" in page.locator("#caption-timing").inner_text()


PASTE_A_PHOTO = """async () => {
  const c = document.createElement('canvas'); c.width = 64; c.height = 48;
  const g = c.getContext('2d'); g.fillStyle = '#c00'; g.fillRect(0, 0, 64, 48);
  const blob = await new Promise(done => c.toBlob(done, 'image/png'));
  const data = new DataTransfer(); data.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
  document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true}));
}"""


def test_photos_from_a_file_the_clipboard_the_webcam_and_the_examples_show_before_their_captions(page, tmp_path):
    import skimage.data
    from PIL import Image

    shipped("captioner.safetensors")
    photo = tmp_path / "cat.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    preview = page.locator("#caption-preview img")
    page.locator("#caption-files input[type=file]").set_input_files(str(photo))
    preview.first.wait_for(timeout=20_000)  # seen at once, before any caption
    assert page.locator("#caption-output .caption").count() == 0
    page.evaluate(PASTE_A_PHOTO)
    page.wait_for_function("document.querySelectorAll('#caption-preview img').length >= 2", timeout=20_000)
    page.locator("#photo-capture .cam-start").click()
    page.locator("#photo-capture .cam-shot").wait_for(state="visible", timeout=20_000)
    page.wait_for_timeout(500)  # a frame of the fake camera
    page.locator("#photo-capture .cam-shot").click()
    page.wait_for_function("document.querySelectorAll('#caption-preview img').length >= 3", timeout=20_000)
    examples = page.locator("#caption-examples img")
    assert examples.count() >= 5  # the examples are pictures
    examples.last.click()  # the Hubble deep field
    page.wait_for_function("document.querySelectorAll('#caption-preview img').length >= 4", timeout=20_000)
    page.locator("#caption-button").click()
    page.wait_for_function("document.querySelectorAll('#caption-output .caption').length >= 4", timeout=90_000)
    page.screenshot(path=str(SHOTS / "caption_sources.png"), full_page=True)
    text = page.locator("#caption-output").inner_text()
    assert "cat.jpg" in text and "pasted-" in text and "webcam-" in text and "hubble_deep_field.jpg" in text
    assert page.locator("#caption-output .objects").count() == 4  # what it recognises, beside each caption
    if "familiarity" in text:  # an object-aware model says when a photo is unlike its training photos
        assert page.locator("#caption-output .unfamiliar").count() >= 1
    if page.locator("#caption-attention").is_visible():  # an attention model shows where it looked
        assert page.locator("#caption-attention img").count() == 4


def _draw(page, box, path, steps=12, delay=20):
    page.mouse.move(box["x"] + path[0][0], box["y"] + path[0][1])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=steps)
        page.wait_for_timeout(delay)
    page.mouse.up()


def test_draw_a_digit_on_the_canvas_and_read_the_prediction(page):
    shipped("mnist.safetensors")
    page.get_by_role("tab", name="MNIST digits").click()
    canvas = page.locator("#digit-canvas canvas").first
    canvas.wait_for(timeout=20_000)
    box = canvas.bounding_box()
    w, h = box["width"], box["height"]
    _draw(page, box, [(0.30 * w, 0.22 * h), (0.70 * w, 0.22 * h), (0.45 * w, 0.80 * h)])  # a 7
    label = page.locator("#digit-label")
    page.wait_for_function("() => { const e = document.querySelector('#digit-label h2, #digit-label .output-class');"
                           " return e && e.textContent.trim().length > 0; }", timeout=30_000)
    page.screenshot(path=str(SHOTS / "digit.png"), full_page=True)
    assert label.locator("h2, .output-class").first.inner_text().strip() == "7"


def test_draw_a_stroke_and_see_a_prediction(page):
    shipped("trajectory.safetensors")
    page.get_by_role("tab", name="Hand trajectory").click()
    canvas = page.locator("#stroke-canvas")
    canvas.wait_for(timeout=20_000)
    box = canvas.bounding_box()
    import math

    arc = [(box["width"] * (0.5 + 0.3 * math.cos(a / 10)), box["height"] * (0.5 + 0.3 * math.sin(a / 10)))
           for a in range(0, 40)]
    _draw(page, box, arc, steps=2, delay=25)
    page.wait_for_function("() => { const e = document.querySelector('#stroke-result');"
                           " return e && e.textContent.includes('constant_velocity'); }", timeout=30_000)
    page.screenshot(path=str(SHOTS / "stroke.png"), full_page=True)
    points = json.loads(page.locator("#stroke-points textarea").input_value())
    assert len(points) >= 20
    assert page.locator("#stroke-picture img").count() == 1


def test_predict_the_next_frames_of_a_clip(page):
    shipped("nextframe.safetensors")
    page.get_by_role("tab", name="Next frame").click()
    page.locator("#clip-number input").fill("3")
    page.locator("#frames-button").click()
    page.wait_for_function("() => { const e = document.querySelector('#frames-summary');"
                           " return e && e.textContent.includes('copy_last_frame_mse_per_frame'); }", timeout=60_000)
    page.locator("#frames-picture img").wait_for(timeout=10_000)
    page.screenshot(path=str(SHOTS / "frames.png"), full_page=True)
    text = page.locator("#frames-summary").inner_text()
    model, copy = (float(re.search(rf"(?<!_){key}\W+([0-9.]+)", text).group(1))
                   for key in ("mse_per_frame", "copy_last_frame_mse_per_frame"))
    assert 0 < model < copy  # the ConvLSTM beats copying the last frame on this clip
