"""A real browser (Chromium through Playwright) against the running app, on a laptop's
screen (1280x900) and a phone's (390x844). Screenshots are kept in artifacts/browser/.

Every check of what the page shows goes through Playwright's ``expect``, which waits (up to
its timeout) for the page to get there: ``is_visible()``, ``count()`` and ``inner_text()``
read the page as it is at that instant, and on a busy machine the page is often a moment
behind the click before it."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, shipped

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "browser"
LAPTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
WAIT = 20_000  # ms: how long a check waits for the page to show what it expects


def expect(locator):
    """Playwright's ``expect``, waiting up to ``WAIT`` unless told otherwise."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=WAIT)
    return playwright_expect(locator)


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


def open_app(browser, server, viewport, **context):
    context = browser.new_context(viewport=viewport, **context)
    page = context.new_page()
    page.goto(server["url"], wait_until="networkidle")
    return page


@pytest.fixture
def page(browser, server):
    page = open_app(browser, server, LAPTOP)
    yield page
    page.context.close()


@pytest.fixture
def phone(browser, server):
    page = open_app(browser, server, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    yield page
    page.context.close()


def in_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and box["x"] >= 0 \
        and box["x"] + box["width"] <= size["width"]


def expect_in_viewport(page, locator, timeout: int = WAIT) -> None:
    """Wait until the whole of ``locator``'s box is on the screen (a scroll may still be under
    way), as ``expect`` waits; fail if it is not within ``timeout`` ms."""
    import time

    deadline = time.monotonic() + timeout / 1000
    while not in_viewport(page, locator):
        if time.monotonic() > deadline:
            raise AssertionError(f"{locator} is not wholly on the screen: {locator.bounding_box()}, "
                                 f"screen {page.viewport_size}")
        page.wait_for_timeout(100)


def a_photo(tmp_path, name="camera"):
    import skimage.data
    from PIL import Image

    path = tmp_path / f"{name}.jpg"
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
    return path


def caption_words(page) -> list[str]:
    return re.findall(r"[a-z]+", page.locator("#caption-output .caption").first.inner_text().lower())


def test_before_any_input_the_examples_are_in_the_first_screen_and_no_output_shows(page):
    shipped("captioner.safetensors")
    examples = page.locator("#caption-examples img")
    expect(examples.nth(3)).to_be_visible(timeout=WAIT)
    for i in range(examples.count()):
        expect_in_viewport(page, examples.nth(i))
    expect_in_viewport(page, page.locator("#caption-button"))
    expect(page.locator("#caption-output .caption")).to_have_count(0)
    for hidden in ("#caption-all", "#caption-looked", "#caption-advanced input[type=range]"):
        expect(page.locator(hidden).first).to_be_hidden()
    page.screenshot(path=str(SHOTS / "caption_start.png"))


def test_upload_a_photo_and_read_its_caption_in_the_first_screen(page, tmp_path):
    shipped("captioner.safetensors")
    page.locator("#caption-files input[type=file]").set_input_files(str(a_photo(tmp_path)))
    page.wait_for_timeout(500)
    page.locator("#caption-button").click()
    caption = page.locator("#caption-output .caption")
    caption.wait_for(timeout=60_000)
    expect_in_viewport(page, caption)
    page.screenshot(path=str(SHOTS / "caption.png"))
    assert "man" in caption_words(page)
    expect(page.locator("#caption-output img")).to_have_count(1)  # the photo, whole, with the detector's boxes
    assert page.locator("#caption-output img").bounding_box()["width"] >= 600
    details = page.locator("#caption-output details.more")
    expect(details).to_have_count(1)
    expect(page.locator("#caption-output .w").first).to_be_hidden()  # folded away
    details.locator("summary").click()
    expect(page.locator("#caption-output .w")).to_have_count(len(caption_words(page)))  # each word's confidence
    expect(page.locator("#caption-timing")).to_contain_text("caption in")
    expect(page.locator("#caption-all")).to_be_visible()  # the table and downloads, folded
    looked, pictures = page.locator("#caption-looked"), page.locator("#caption-attention img")
    expect(looked).to_be_visible()  # where it looked, folded, and not drawn until it is opened
    expect(pictures).to_have_count(0)
    looked.get_by_text("Where it looked, word by word").click()
    expect(pictures).to_have_count(len(caption_words(page)))  # one picture per word
    page.locator("#caption-files button[aria-label=Clear]").click()  # the photo taken away: its caption too
    expect(page.locator("#caption-output .caption, #caption-output img")).to_have_count(0, timeout=10_000)
    expect(page.locator("#caption-all")).to_be_hidden()
    expect(looked).to_be_hidden()
    expect(pictures).to_have_count(0)


def test_on_a_phone_the_caption_comes_into_view_and_every_tab_is_in_sight(phone, tmp_path):
    shipped("captioner.safetensors")
    for name in ("Caption", "Digits", "Strokes", "Frames"):  # none hidden behind a menu
        expect(phone.get_by_role("tab", name=name)).to_be_visible(timeout=WAIT)
    expect(phone.locator("#photo-capture .paste-hint")).to_be_hidden()  # no keyboard-only hint on a touch screen
    examples = phone.locator("#caption-examples img")
    expect(examples.nth(3)).to_be_visible(timeout=WAIT)
    for i in range(examples.count()):  # no sideways scroll either
        expect_in_viewport(phone, examples.nth(i))
    expect_in_viewport(phone, phone.locator("#caption-button"))
    phone.locator("#caption-files input[type=file]").set_input_files(str(a_photo(tmp_path, "coffee")))
    phone.wait_for_timeout(500)
    phone.locator("#caption-button").click()
    caption = phone.locator("#caption-output .caption")
    caption.wait_for(timeout=60_000)
    expect_in_viewport(phone, caption)
    phone.screenshot(path=str(SHOTS / "caption_phone.png"))


def test_clicking_an_example_captions_that_photo_alone(page, tmp_path):
    shipped("captioner.safetensors")
    page.locator("#caption-files input[type=file]").set_input_files(str(a_photo(tmp_path)))
    page.wait_for_timeout(500)
    page.locator("#caption-examples img").first.click()
    page.locator("#caption-output .caption").wait_for(timeout=60_000)
    expect(page.locator("#caption-output .caption")).to_have_count(1)
    expect(page.locator("#caption-files")).not_to_contain_text("camera.jpg")
    expect_in_viewport(page, page.locator("#caption-output .caption"))
    expect(page.locator("#caption-output .unfamiliar")).to_have_count(0)  # an everyday scene, like its training photos


def test_a_file_that_is_not_a_photo_is_refused_when_added_and_an_empty_click_says_so_once(page, tmp_path):
    shipped("captioner.safetensors")
    page.locator("#caption-button").click()
    note = page.locator("#caption-output .note")
    expect(note).to_have_text("Choose a photo first.", timeout=WAIT)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    page.locator("#caption-files input[type=file]").set_input_files([str(a_photo(tmp_path)), str(bad)])
    page.wait_for_function("() => { const n = document.querySelector('#caption-output .note');"
                           " return n && n.textContent.includes('notes.jpg'); }", timeout=20_000)
    expect(note).to_contain_text("left out")
    expect_in_viewport(page, note)
    expect(page.locator("#caption-files")).to_contain_text("camera")
    expect(page.locator("#caption-files")).not_to_contain_text("notes")  # taken out at once
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)  # no red badges
    page.locator("#caption-button").click()
    page.locator("#caption-output .caption").wait_for(timeout=60_000)
    expect(page.locator("#caption-output .caption")).to_have_count(1)


PASTE_A_PHOTO = """async () => {
  const c = document.createElement('canvas'); c.width = 64; c.height = 48;
  const g = c.getContext('2d'); g.fillStyle = '#c00'; g.fillRect(0, 0, 64, 48);
  const blob = await new Promise(done => c.toBlob(done, 'image/png'));
  const data = new DataTransfer(); data.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
  document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true}));
}"""


def test_photos_from_a_file_the_clipboard_and_the_webcam_are_captioned_together(page, tmp_path):
    shipped("captioner.safetensors")
    page.locator("#caption-files input[type=file]").set_input_files(str(a_photo(tmp_path, "chelsea")))
    page.wait_for_timeout(500)
    page.evaluate(PASTE_A_PHOTO)
    page.wait_for_function("document.querySelector('#caption-files').innerText.includes('pasted-')", timeout=20_000)
    page.locator("#photo-capture .cam-start").click()
    page.locator("#photo-capture .cam-shot").wait_for(state="visible", timeout=20_000)
    page.wait_for_timeout(500)  # a frame of the fake camera
    page.locator("#photo-capture .cam-shot").click()
    page.wait_for_function("document.querySelector('#caption-files').innerText.includes('webcam-')", timeout=20_000)
    page.locator("#caption-button").click()
    page.wait_for_function("document.querySelectorAll('#caption-output .caption').length >= 3", timeout=90_000)
    page.screenshot(path=str(SHOTS / "caption_sources.png"), full_page=True)
    for name in ("chelsea.jpg", "pasted-", "webcam-"):
        expect(page.locator("#caption-output")).to_contain_text(name)
    expect(page.locator("#caption-output img")).to_have_count(3)
    page.locator("#caption-all").click()
    expect(page.locator("#caption-all table").first).to_be_visible(timeout=WAIT)


def _draw(page, box, path, steps=12, delay=20):
    page.mouse.move(box["x"] + path[0][0], box["y"] + path[0][1])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=steps)
        page.wait_for_timeout(delay)
    page.mouse.up()


@pytest.mark.parametrize("screen", ["page", "phone"])
def test_draw_a_digit_read_the_answer_in_view_and_clear_it(screen, request):
    shipped("mnist.safetensors")
    page = request.getfixturevalue(screen)
    page.get_by_role("tab", name="Digits").click()
    canvas = page.locator("#digit-canvas canvas").first
    canvas.wait_for(timeout=20_000)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    w, h = box["width"], box["height"]
    _draw(page, box, [(0.30 * w, 0.22 * h), (0.70 * w, 0.22 * h), (0.45 * w, 0.80 * h)])  # a 7
    answer = page.locator("#digit-label h2, #digit-label .output-class").first
    expect(answer).to_have_text("7", timeout=30_000)
    expect_in_viewport(page, answer)
    page.screenshot(path=str(SHOTS / f"digit_{screen}.png"))
    page.locator("#digit-canvas .digit-clear").click()
    page.wait_for_function("() => { const e = document.querySelector('#digit-label h2, #digit-label .output-class');"
                           " return !e || e.textContent.trim() === ''; }", timeout=10_000)


def test_draw_a_stroke_and_see_a_prediction(page):
    shipped("trajectory.safetensors")
    page.get_by_role("tab", name="Strokes").click()
    canvas = page.locator("#stroke-canvas")
    canvas.wait_for(timeout=20_000)
    box = canvas.bounding_box()
    arc = [(box["width"] * (0.5 + 0.3 * math.cos(a / 10)), box["height"] * (0.5 + 0.3 * math.sin(a / 10)))
           for a in range(0, 40)]
    _draw(page, box, arc, steps=2, delay=25)
    page.locator("#stroke-picture img").wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "stroke.png"), full_page=True)
    expect(page.locator("#stroke-result")).to_be_hidden()  # the raw points are folded away
    unfold_points(page, "constant_velocity")
    points = json.loads(page.locator("#stroke-points textarea").input_value())
    assert len(points) >= 20
    expect(page.locator("#stroke-picture img")).to_have_count(1)


def test_a_real_recording_is_listed_and_continued(page):
    shipped("trajectory.safetensors")
    page.get_by_role("tab", name="Strokes").click()
    recording = page.locator("#recording input")
    expect(recording).to_have_value(re.compile("pen trajectory #"), timeout=WAIT)
    page.locator("#recording-button").click()
    page.locator("#stroke-picture img").wait_for(timeout=30_000)
    unfold_points(page, "truth")


def unfold_points(page, expected: str) -> None:
    """Open the folded raw points and wait for ``expected`` among them."""
    page.get_by_text("The points (JSON)").click()
    page.wait_for_function("text => { const e = document.querySelector('#stroke-result');"
                           " return e && e.textContent.includes(text); }", arg=expected, timeout=30_000)


def test_predict_the_next_frames_of_a_clip(page):
    shipped("nextframe.safetensors")
    page.get_by_role("tab", name="Frames").click()
    page.locator("#clip-number input").fill("3")
    page.locator("#frames-button").click()
    page.locator("#frames-picture img").wait_for(timeout=60_000)
    page.wait_for_function("document.querySelector('#frames-said').innerText.includes('better than standing still')",
                           timeout=10_000)  # said in words; the numbers folded
    page.screenshot(path=str(SHOTS / "frames.png"), full_page=True)
    page.get_by_text("The numbers (squared error").click()
    page.wait_for_function("() => { const e = document.querySelector('#frames-summary');"
                           " return e && e.textContent.includes('copy_last_frame_mse_per_frame'); }", timeout=10_000)
    text = page.locator("#frames-summary").inner_text()
    model, copy = (float(re.search(rf"(?<!_){key}\W+([0-9.]+)", text).group(1))
                   for key in ("mse_per_frame", "copy_last_frame_mse_per_frame"))
    assert 0 < model < copy  # the ConvLSTM beats copying the last frame on this clip


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory):
    """``python app.py`` from a copy of only the files the README's Space upload sends (no
    ``../shared``, no ``data/``, no CAPTIONER_ settings, an empty home folder)."""
    from tests.conftest import running_app
    from tests.test_space import copy_space_files

    tree, home = tmp_path_factory.mktemp("bare"), tmp_path_factory.mktemp("home")
    copy_space_files(tree)
    with running_app(tree / "app.log", cwd=tree, bare=True, HOME=str(home)) as app:
        yield app


def test_the_demos_work_from_the_shipped_files_alone(browser, bare_app):
    shipped("nextframe.safetensors")
    shipped("trajectory.safetensors")
    page = open_app(browser, bare_app, PHONE)
    page.get_by_role("tab", name="Frames").click()
    page.locator("#frames-button").click()
    page.locator("#frames-picture img").wait_for(timeout=120_000)  # the first use loads the model (slow when busy)
    page.get_by_role("tab", name="Strokes").click()
    expect(page.locator("#recording input")).to_have_value(re.compile("pen trajectory #"), timeout=WAIT)
    page.locator("#recording-button").click()
    page.locator("#stroke-picture img").wait_for(timeout=30_000)
    page.get_by_role("tab", name="Caption").click()
    expect(page.locator("#caption-examples img").nth(3)).to_be_visible(timeout=WAIT)
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    page.screenshot(path=str(SHOTS / "bare_tree.png"), full_page=True)
    page.context.close()
