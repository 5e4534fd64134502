"""Live mode, Read aloud and the page's accessibility, in a real browser (Chromium through
Playwright) whose fake camera plays a slideshow of the app's six example photos
(``benchmarks/slideshow.py`` writes the Y4M video). Speech is spied on, not heard: an init
script replaces ``speechSynthesis.speak`` with one that writes down what it was asked to say.
Every check waits for what it expects (``expect``, ``wait_for_function``)."""

import json
import statistics

import pytest

from tests.conftest import ROOT, running_app, shipped
from tests.test_browser import CHROMIUM, LAPTOP, PHONE, SHOTS, expect

pytestmark = pytest.mark.browser
AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"
SLIDE_SECONDS = 3
# Slide k (the examples in name order) is named when a caption says one of these: what is in the photo.
SLIDES = [("bus.jpg", {"bus"}), ("frisbee.jpg", {"frisbee", "people", "man", "men", "person"}),
          ("horses.jpg", {"horse", "horses"}), ("kitchen.jpg", {"kitchen", "oven", "stove", "refrigerator"}),
          ("pizza.jpg", {"pizza", "food", "wine", "glass", "plate", "table"}),
          ("tennis.jpg", {"tennis", "court", "racket"})]
SPY = """
window.__spoken = []; window.__said = [];
if (!('speechSynthesis' in window)) {
  window.speechSynthesis = {speak() {}, cancel() {}};
  window.SpeechSynthesisUtterance = class { constructor(text) { this.text = text; } };
}
window.speechSynthesis.speak = u => window.__spoken.push({text: u.text, t: performance.now()});
window.speechSynthesis.cancel = () => {};
setInterval(() => {  // what the live region says, each change with its time
  const e = document.querySelector('[aria-live="polite"]'), text = e ? e.textContent.trim() : '';
  const last = window.__said[window.__said.length - 1];
  if (text && (!last || last.text !== text)) window.__said.push({text, t: performance.now()});
}, 50);
"""


@pytest.fixture(scope="module")
def camera_browser(tmp_path_factory):
    """Chromium whose camera plays the examples as a slideshow, ``SLIDE_SECONDS`` each."""
    playwright = pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    from benchmarks.common import write_slideshow

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    video = write_slideshow(tmp_path_factory.mktemp("camera") / "slides.y4m", seconds=SLIDE_SECONDS)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={video}"])
        yield browser
        browser.close()


def open_spied(browser, server, viewport=LAPTOP, **context):
    context = browser.new_context(viewport=viewport, **context)
    context.add_init_script(SPY)
    page = context.new_page()
    page.goto(server["url"], wait_until="networkidle")
    expect(page.get_by_role("button", name="Live")).to_be_visible()
    return page


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An app of these tests' own, with a corrections folder of its own: after the other
    browser tests had saved corrections, the shared app left this module's keyboard and
    accessibility tests failing."""
    feedback = tmp_path_factory.mktemp("live-feedback")
    with running_app(ROOT / "artifacts" / "server_live.log", CAPTIONER_FEEDBACK_DIR=str(feedback)) as app:
        yield app


@pytest.fixture
def live_page(camera_browser, server):
    page = open_spied(camera_browser, server)
    yield page
    page.context.close()


def settled(page) -> None:
    """Wait until no output is pending and nothing on the page is still dimmed: Gradio fades
    an output to 20% while its event runs and back afterwards, and a key pressed or a
    contrast measured meanwhile meets the faded page."""
    page.wait_for_function("""() => !document.querySelector('.pending') &&
        [...document.querySelectorAll('.caption, .familiar, summary, button, .prose p')].every(e => {
          for (let n = e; n && n.nodeType === 1; n = n.parentElement)
            if (parseFloat(getComputedStyle(n).opacity) < 1) return false;
          return true; })""", timeout=60_000)


def axe_violations(page) -> list[dict]:
    """axe-core's serious and critical violations of WCAG 2.1 A and AA on the page, once no
    output is pending (Gradio dims an output to 20% while its event runs, and a moment after
    the answer is drawn: what is dimmed then is the old answer, on its way out)."""
    settled(page)
    if not page.evaluate("!!window.axe"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => {
      const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}});
      return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
                         .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}));
    }""")
    return found


def slide_named(text: str) -> set[int]:
    words = set(text.lower().replace(".", " ").split())
    return {k for k, (_, names) in enumerate(SLIDES) if words & names}


def test_live_follows_the_slideshow_speaks_each_new_caption_once_and_stops_cleanly(live_page):
    shipped("captioner.safetensors")
    page = live_page
    page.get_by_role("button", name="Read aloud").click()
    expect(page.get_by_role("button", name="Read aloud")).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="Live").click()
    expect(page.get_by_role("button", name="Live")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#caption-live video")).to_be_visible()
    # one pass of the slideshow, and one slide more for the last one's caption
    show = len(SLIDES) * SLIDE_SECONDS * 1000
    page.wait_for_function(f"window.captionerLive.started && performance.now() - window.captionerLive.started > "
                           f"{show + SLIDE_SECONDS * 1000}", timeout=show + 60_000, polling=200)
    page.screenshot(path=str(SHOTS / "live.png"))
    said, spoken, stats = page.evaluate("[window.__said, window.__spoken, window.captionerLive]")
    started = stats["started"]
    first = {}  # slide -> seconds from its start to the first caption naming it, in the first pass
    for entry in said:
        at = (entry["t"] - started) / 1000
        for k in slide_named(entry["text"]):
            if k * SLIDE_SECONDS <= at < (k + 2) * SLIDE_SECONDS and k not in first:
                first[k] = at - k * SLIDE_SECONDS
    seconds = (page.evaluate("performance.now()") - started) / 1000
    report = {"said": said, "spoken": spoken, "lags": first, "frames": stats["frames"], "answers": stats["answers"],
              "bytes_per_second": round(stats["bytes"] / seconds), "seconds": round(seconds, 1)}
    (SHOTS / "live_slideshow.json").write_text(json.dumps(report, indent=2))
    assert len(first) >= 5, f"slides named: {sorted(first)}; the live region said {[s['text'] for s in said]}"
    assert statistics.median(first.values()) <= 2 * SLIDE_SECONDS  # within the slide after it, on a busy machine
    # Read aloud: each new caption asked for once, in the order shown, never twice in a row
    texts = [s["text"] for s in spoken]
    assert len(texts) >= 5 and texts == [s["text"] for s in said]
    assert all(a != b for a, b in zip(texts, texts[1:]))
    assert report["bytes_per_second"] < 200_000  # frames shrunk in the page: not megabytes a second
    assert stats["answers"].get("same", 0) > 0  # a scene that stays keeps its words
    # Live off: the camera closes, no frame is sent after, the caption stays
    page.get_by_role("button", name="Live").click()
    expect(page.get_by_role("button", name="Live")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#caption-live video")).to_be_hidden()
    page.wait_for_function("!window.captionerLive.running && document.querySelector('#caption-live video')"
                           ".srcObject === null")
    frames, asked = page.evaluate("[window.captionerLive.frames, window.__spoken.length]")
    page.wait_for_timeout(1500)
    assert page.evaluate("[window.captionerLive.frames, window.__spoken.length]") == [frames, asked]
    expect(page.locator("#caption-output .caption")).to_have_count(1)


def test_no_serious_accessibility_violation_on_any_tab_nor_in_live_mode(live_page):
    shipped("captioner.safetensors")
    page = live_page
    assert axe_violations(page) == []
    page.locator("#caption-examples img").first.click()
    page.locator("#caption-output .caption").wait_for(timeout=60_000)
    assert axe_violations(page) == []
    page.get_by_role("button", name="Live").click()
    page.wait_for_function("window.captionerLive.answers.new >= 1", timeout=60_000)
    assert axe_violations(page) == []
    page.get_by_role("button", name="Live").click()
    for name in ("Digits", "Strokes", "Frames"):
        page.get_by_role("tab", name=name).click()
        expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")
        page.wait_for_timeout(500)  # the tab drawn
        assert axe_violations(page) == [], name


def press_tab_until(page, predicate: str, limit: int = 60, key: str = "Tab") -> None:
    """Press Tab (or ``key``) until ``predicate`` (JavaScript, of ``document.activeElement``
    as ``e``) holds."""
    for _ in range(limit):
        page.keyboard.press(key)
        if page.evaluate(f"(() => {{ const e = document.activeElement; return !!e && ({predicate}); }})()"):
            return
    raise AssertionError(f"{predicate} was never reached with Tab")


def test_the_main_flow_works_from_the_keyboard_alone(live_page):
    shipped("captioner.safetensors")
    page = live_page
    # Playwright intercepts file choosers only while something listens for them, and it turns
    # interception on when the first listener is added without waiting for Chromium to confirm:
    # a key press sent right after it (as expect_file_chooser() then Enter) could reach the
    # page first on a busy machine, and the chooser opened uncaught (headless Chromium cancels
    # it at once). Listening from the start has interception on long before the Enter.
    choosers = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.locator("body").focus()
    press_tab_until(page, "!!e.closest('#caption-examples') && e.tagName === 'BUTTON'")  # the first example
    page.keyboard.press("Enter")
    said = page.locator("#caption-said")
    expect(said).to_contain_text("bus", timeout=60_000)  # the caption, in the live region
    settled(page)
    press_tab_until(page, "e.getAttribute('aria-label') === 'Add photos'", key="Shift+Tab")
    with page.expect_file_chooser() as chooser:  # more photos can be added from the keyboard too
        page.keyboard.press("Enter")
    assert chooser.value.is_multiple() and len(choosers) == 1
    press_tab_until(page, "e.textContent.trim() === 'Read aloud'")
    page.keyboard.press("Space")
    page.wait_for_function("window.__spoken.length === 1 && /bus/i.test(window.__spoken[0].text)")
    press_tab_until(page, "e.textContent.trim() === 'Live'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Live")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function("(window.captionerLive.answers.new || 0) + (window.captionerLive.answers.same || 0) >= 1",
                           timeout=60_000)
    page.keyboard.press("Enter")  # the focus is still on Live
    expect(page.get_by_role("button", name="Live")).to_have_attribute("aria-pressed", "false")
    focused = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focused != "none"  # where the focus is can be seen


def test_on_a_phone_live_asks_for_the_camera_on_the_back(camera_browser, server):
    shipped("captioner.safetensors")
    page = open_spied(camera_browser, server, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page.evaluate("""() => { const ask = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
        navigator.mediaDevices.getUserMedia = c => { window.__asked = c; return ask(c); }; }""")
    page.get_by_role("button", name="Live").tap()
    page.wait_for_function("window.__asked !== undefined")
    assert page.evaluate("window.__asked.video.facingMode") == {"ideal": "environment"}
    page.wait_for_function("(window.captionerLive.answers.new || 0) >= 1", timeout=60_000)
    page.screenshot(path=str(SHOTS / "live_phone.png"))
    page.get_by_role("button", name="Live").tap()
    expect(page.get_by_role("button", name="Live")).to_have_attribute("aria-pressed", "false")
    page.context.close()
