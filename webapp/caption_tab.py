"""The caption tab: a photo in (a file, drag and drop, the webcam, the clipboard, or one of
the examples shipped in ``webapp/examples``), its caption out as a plain sentence, with the
detector's boxes on the photo below it and the rest folded away (how sure it was of each
word, what it recognised, where it looked, the table and the downloads); the ``/caption``
API endpoint."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData, GradioRootModel, ListFiles

from captioner.feedback import CorrectionService
from captioner.service import CaptionService
from lstmkit.images import ImageError, load_data_url, load_image
from lstmkit.service import InputError
from webapp import caption_output as output
from webapp.caption_pictures import boxed_photo, says_something, word_pictures
from webapp.common import ROOT, beam_of, event_value, not_trained, paths_of, static, user_error
from webapp.correction_form import CorrectionForm
from webapp.live_panel import LivePanel

CAPTURES = Path(tempfile.gettempdir()) / "captioner-captures"  # webcam shots and pasted photos
EXAMPLES = ROOT / "webapp" / "examples"  # everyday COCO photos, with their credits in CREDITS.md
LARGE = 4  # up to this many photos are shown at about 800 px; more, at half that
# Every event that captions or draws for the caption tab joins one queue with one limit. Gradio
# gives a shared queue the lowest limit of the events that join it, so one event left at the
# app's default (2) would make every caption, the API's too, wait for two at a time.
CAPTION_QUEUE = {"concurrency_id": "caption", "concurrency_limit": 16}


class OneOrMoreFiles(GradioRootModel):
    root: list[FileData] | FileData


def example_images() -> list[str]:
    """The example photos shipped in ``webapp/examples`` (sorted by name)."""
    return sorted(str(p) for p in EXAMPLES.glob("*.jpg"))


def photo_input(**kwargs) -> gr.File:
    """The photo input: Gradio's file box (choose, or drag and drop; our safe loader is the
    only decoder), whose ``/caption`` API takes one file as well as a list of them. (Set on
    the instance: a subclass of a Gradio component makes Gradio write a .pyi stub beside
    this file.)"""
    files = gr.File(file_count="multiple", **kwargs)
    files.data_model = OneOrMoreFiles
    many = files.preprocess

    def preprocess(payload):
        if isinstance(payload, OneOrMoreFiles):
            payload = payload.root
        return many(ListFiles(root=payload) if isinstance(payload, list) else payload)

    files.preprocess = preprocess
    return files


def longest_side(count: int) -> int:
    """How large the page shows ``count`` photos: about 800 px, or half that for many."""
    return 800 if count <= LARGE else 400


def pictures(paths: list[str], results: list[dict]) -> tuple[list, dict]:
    """The photos with the detector's boxes (read again, larger than the model's copy, so
    labels can be read), and the photos so read, by their place in ``results``."""
    longest = longest_side(len(paths))
    boxed, photos = [], {}
    for k, (path, r) in enumerate(zip(paths, results)):
        if "picture" not in r:
            continue
        picture = r.pop("picture")
        try:
            picture = load_image(path, draft_size=longest)
        except ImageError:  # read a moment ago; keep the model's copy
            pass
        photos[k] = picture
        boxed.append((boxed_photo(picture, r.get("boxes"), longest), r["caption"]))
    return boxed, photos


def looked_at(results: list[dict]) -> int | None:
    """The place of the first photo whose attention points somewhere (the one the section
    "Where it looked, word by word" shows), found from the results alone: the page knows
    whether to show the section without drawing its pictures."""
    return next((k for k, r in enumerate(results) if "error" not in r and says_something(r)), None)


def word_by_word(paths: list[str], results: list[dict], photos: dict | None = None) -> list:
    """One picture per word of where the first photo whose attention points somewhere
    looked (``looked_at``): over ``photos[k]`` when the caller read it already (the
    ``/caption`` API), otherwise over the photo read again by the safe loader, at the size
    the caption showed it (the page, when the section is opened). The photos may have
    changed since the caption: the file is found by the name its result holds, and a photo
    no longer there gets no pictures rather than another photo's."""
    k = looked_at(results)
    if k is None:
        return []
    result, name = results[k], results[k]["image"]
    picture = (photos or {}).get(k)
    if picture is None:
        path = paths[k] if k < len(paths) and Path(paths[k]).name == name else next(
            (p for p in paths if Path(p).name == name), None)
        if path is None:
            return []
        try:
            picture = load_image(path, draft_size=longest_side(len(results)))
        except ImageError:
            return []
    return word_pictures(picture, result, name)


class CaptionTab:
    def __init__(self, service: CaptionService, downloads: Path | None = None,
                 corrections: CorrectionService | None = None):
        self.service = service
        self.corrections = corrections or CorrectionService(service)
        self.downloads = output.Downloads(downloads or Path(tempfile.gettempdir()) / "captioner-downloads")

    def captioned(self, files, decoding: str, beam_width: float | None) -> tuple[list, list, dict, str]:
        """Caption one or many images (a list of files, or one file): the results, the
        photos with the detector's boxes, the photos as read for them (``pictures``) and
        how long it took. Beam search without a width uses the model's own default."""
        start = time.perf_counter()
        paths = paths_of(files)
        if not paths:
            raise gr.Error("Please choose at least one photo.", print_exception=False)
        beam = beam_of(decoding, beam_width)
        try:
            results = self.service.caption_paths(paths, beam, keep_images=True)
        except InputError as err:
            raise user_error(err) from err
        seconds = time.perf_counter() - start
        if all("error" in r for r in results):
            raise gr.Error(" ".join(f"{r['image']}: {r['error']}" for r in results)[:1000], print_exception=False)
        boxed, photos = pictures(paths, results)
        good = sum("error" not in r for r in results)
        timing = f"{good} caption{'s' if good != 1 else ''} in {seconds:.2f} s" + (
            f" ({len(results) - good} file{'s' if len(results) - good != 1 else ''} could not be read)"
            if good < len(results) else "")
        return results, boxed, photos, timing

    def caption(self, files, decoding: str = "beam search", beam_width: float | None = None):
        """The ``/caption`` endpoint: ``answer`` for a program, a mistake raised as an error."""
        return self.answer(files, decoding, beam_width, page=False)

    def caption_on_page(self, files, decoding: str = "beam search", beam_width: float | None = None):
        """The Caption button: ``answer`` for the page, a mistake said in the caption area."""
        return self.answer(files, decoding, beam_width, page=True)

    def answer(self, files, decoding: str, beam_width: float | None, *, page: bool) -> tuple:
        """The one path of the Caption button (``page``) and the ``/caption`` endpoint:
        ``captioned``, then the captions with what was recognised and how familiar each photo
        is as HTML, a table, CSV and JSON downloads, the results as JSON and how long it took.
        The endpoint also gives the photos with the detector's boxes and the first photo's
        word-by-word attention pictures (when its attention points somewhere), and raises a
        mistake. The page shows the boxes in the HTML, says a mistake (nothing chosen, no
        photo among the files, a bad beam width) once in the caption area instead of as an
        error on every output, and leaves the word-by-word pictures out with their section
        folded: drawn with every caption they and Gradio's saving of each cost about 25-30 ms
        of a 150 ms request, for a section most people never open (``looked_on_page`` draws
        them when it is)."""
        try:
            results, boxed, photos, timing = self.captioned(files, decoding, beam_width)
        except gr.Error as err:
            if not page:
                raise
            message = "Choose a photo first." if not paths_of(files) else err.message
            return output.message_html(message), *self.hidden()
        table, downloads = output.table(results), self.downloads.write(results)
        if not page:
            return (output.shaded_html(results), boxed, word_by_word(paths_of(files), results, photos), table,
                    downloads, results, timing)
        return (output.shaded_html(results, [picture for picture, _ in boxed]), None,
                gr.Accordion(visible=looked_at(results) is not None, open=False), table, downloads,
                gr.Accordion(visible=True), results, timing)

    @staticmethod
    def looked_on_page(files, results) -> list:
        """The section "Where it looked, word by word", opened: its pictures, drawn now from
        what the page holds (the photos and the results as JSON). Each new caption empties
        and folds the section, so opening it again draws that caption's pictures; removing a
        photo hides the results, so a photo left under the same name is never drawn instead."""
        return word_by_word(paths_of(files), results or [])

    @staticmethod
    def hidden() -> tuple:
        """Every output but the caption area, emptied (and the folded sections hidden)."""
        return None, gr.Accordion(visible=False), None, None, gr.Accordion(visible=False), None, ""

    def check_added(self, files):
        """Photos just added: each is read by the safe loader now, and a file that is not a
        photo is taken out at once, with one sentence in the caption area. When all are
        photos nothing changes (a caption already asked for is left alone)."""
        kept, refused = [], []
        for path in paths_of(files):
            try:
                load_image(path, draft_size=64)
                kept.append(path)
            except ImageError as err:
                refused.append(f"{Path(path).name} was left out: {err}")
        if not refused:
            return (gr.skip(),) * 9
        return (kept or None), output.message_html(" ".join(refused)), *self.hidden()

    def add_captured(self, files, evt: gr.EventData):
        """A photo from the webcam or the clipboard, sent by the page as a data URL: decoded
        by the safe loader (same limits as uploads), saved as a PNG and added to the photos."""
        source = str(event_value(evt, "source", "photo"))[:20]
        try:
            image = load_data_url(event_value(evt, "image", ""))
        except ImageError as err:
            raise gr.Error(f"The captured photo could not be read: {err}", print_exception=False) from err
        CAPTURES.mkdir(parents=True, exist_ok=True)
        path = CAPTURES / (f"{'webcam' if source == 'webcam' else 'pasted'}-{time.strftime('%H%M%S')}-{os.getpid()}-"
                           f"{threading.get_ident() % 10000}-{int(time.time() * 1000) % 1000:03d}.png")
        image.save(path, format="PNG")
        return paths_of(files) + [str(path)], "", *self.hidden()

    def pick_example(self, evt: gr.SelectData):
        """An example photo, clicked: it replaces the photos, to be captioned alone."""
        examples = example_images()
        if not isinstance(evt.index, int) or not 0 <= evt.index < len(examples):
            raise gr.Error("That example is not there.", print_exception=False)
        return [examples[evt.index]], "", *self.hidden()

    def correction_form(self, files, results: gr.JSON, decoding, beam) -> None:
        """Under the captions: a form to correct each (an editable caption, a consent box,
        Save), and the ``/correct`` endpoint (``correction_form.py``)."""
        CorrectionForm(self.corrections).build(files, results, decoding, beam)

    def build(self) -> None:
        if not_trained(self.service.available):
            return
        examples = example_images()
        with gr.Row(equal_height=False, elem_id="caption-tab"):
            with gr.Column(scale=2, min_width=300):
                files = photo_input(label="Your photo (or several)", file_types=["image"], elem_id="caption-files",
                                    height=120)
                capture = gr.HTML(static("capture.html"), js_on_load=static("capture.js"), elem_id="photo-capture",
                                  css_template=static("capture.css"))
                shown = gr.Gallery(value=[(p, None) for p in examples], columns=3, rows=2, height=320,
                                   allow_preview=False, interactive=False, elem_id="caption-examples",
                                   label="Or try an example (COCO, CC BY / BY-SA)", object_fit="cover", buttons=[],
                                   visible=bool(examples))
                with gr.Accordion("Advanced", open=False, elem_id="caption-advanced"):
                    decoding = gr.Radio(["beam search", "greedy"], value="beam search", label="Decoding")
                    beam = gr.Slider(1, 10, value=self.service.default_beam(), step=1, label="Beam width")
                button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                LivePanel(self.service).build()  # Live and Read aloud (live_panel.py)
            with gr.Column(scale=3, elem_id="caption-results"):
                shaded = gr.HTML(elem_id="caption-output", min_height=0)
                as_json = gr.JSON(label="Results", visible=False)
                self.correction_form(files, as_json, decoding, beam)  # under the captions
                timing = gr.Markdown(elem_id="caption-timing")
                gallery = gr.Gallery(visible=False, format="jpeg")  # the API's photos (the page's are in the HTML)
                with gr.Accordion("Where it looked, word by word", open=False, visible=False,
                                  elem_id="caption-looked") as looked:
                    maps = gr.Gallery(show_label=False, columns=3, height="auto", object_fit="contain",
                                      elem_id="caption-attention", format="jpeg", allow_preview=False, buttons=[])
                with gr.Accordion("All captions: table and downloads", open=False, visible=False,
                                  elem_id="caption-all") as everything:
                    table = gr.Dataframe(headers=["image", "caption", "mean probability", "error"],
                                         label="All captions", interactive=False, wrap=True,
                                         column_widths=["24%", "46%", "15%", "15%"])
                    downloads = gr.File(label="Download (CSV, JSON)", file_count="multiple", interactive=False)
                api = gr.Button(visible=False)  # the /caption endpoint, apart from the page's own button
        outputs = [shaded, maps, looked, table, downloads, everything, as_json, timing]
        reset = [files, shaded, maps, looked, table, downloads, everything, as_json, timing]
        scroll = static("caption_scroll.js")
        files.upload(self.check_added, [files], reset, api_name=False, show_progress="hidden")
        for emptied in (files.clear, files.delete):  # a photo removed: its caption and pictures go with it
            emptied(lambda: ("", *self.hidden()), None, reset[1:], api_name=False, show_progress="hidden")
        capture.upload(self.add_captured, [files], reset, api_name=False)
        button.click(self.caption_on_page, [files, decoding, beam], outputs, api_name=False, **CAPTION_QUEUE,
                     js=static("caption_click.js")).then(None, js=scroll)
        shown.select(self.pick_example, None, reset, api_name=False, show_progress="hidden", js=static(
            "caption_click.js")).success(self.caption_on_page, [files, decoding, beam], outputs, api_name=False,
                                         **CAPTION_QUEUE).then(None, js=scroll)
        looked.expand(self.looked_on_page, [files, as_json], [maps], api_name=False, show_progress="minimal",
                      **CAPTION_QUEUE)
        api.click(self.caption, [files, decoding, beam], [shaded, gallery, maps, table, downloads, as_json, timing],
                  api_name="caption", **CAPTION_QUEUE)
