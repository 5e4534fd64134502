"""Correcting a caption as a person would, in a real browser (Chromium through Playwright)
on a laptop's screen and a phone's: the caption under the photo is an editable box; Save
without the consent box stores nothing and says why; with it, the correction is stored and
its id shown; the consent box says where the photo goes. Screenshots in artifacts/browser/."""

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import shipped
from tests.test_browser import SHOTS, a_photo, browser, expect, expect_in_viewport, page, phone  # noqa: F401
from webapp.correction_form import consent_label

pytestmark = pytest.mark.browser
FOLDER = Path(os.environ["CAPTIONER_FEEDBACK_DIR"])  # where the tests' app stores corrections (conftest)


@pytest.mark.parametrize("screen", ["page", "phone"])
def test_correct_a_caption_in_the_browser_and_find_it_stored(screen, request, tmp_path):
    shipped("captioner.safetensors")
    tab = request.getfixturevalue(screen)
    tab.locator("#caption-files input[type=file]").set_input_files(str(a_photo(tmp_path, "coffee")))
    tab.wait_for_timeout(500)
    tab.locator("#caption-button").click()
    tab.locator("#caption-output .caption").wait_for(timeout=60_000)
    box = tab.locator(".correction-caption textarea").first
    box.wait_for(timeout=30_000)
    written = tab.locator("#caption-output .caption").first.inner_text().lower()
    expect(box).not_to_have_value("")
    assert box.input_value().lower() in written  # the model's caption, ready to edit
    expect(tab.locator(".correction-consent").first).to_contain_text(consent_label(None))  # where the photo goes
    box.scroll_into_view_if_needed()
    tab.screenshot(path=str(SHOTS / f"correction_{screen}.png"))
    box.fill("a cup of coffee on a saucer with a spoon")
    before = set((FOLDER / "records").glob("*.json")) if (FOLDER / "records").is_dir() else set()
    save = tab.locator(".correction-save").first
    save.click()
    note = tab.locator(".correction-note").first
    expect(note).to_contain_text("tick the box", timeout=30_000)
    expect_in_viewport(tab, note)  # the note is scrolled into view
    assert (set((FOLDER / "records").glob("*.json")) if (FOLDER / "records").is_dir() else set()) == before
    tab.locator(".correction-consent input[type=checkbox]").first.check()
    save.click()
    expect(note).to_contain_text("Stored as correction", timeout=30_000)
    tab.screenshot(path=str(SHOTS / f"correction_{screen}_stored.png"))
    said = note.inner_text()
    correction_id = re.search(r"correction (\S+):", said).group(1)
    record = json.loads((FOLDER / "records" / f"{correction_id}.json").read_text())
    assert record["caption"] == "a cup of coffee on a saucer with a spoon"
    assert record["model_caption"].lower() in written and (FOLDER / record["photo"]).is_file()
