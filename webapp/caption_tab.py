"""The caption tab: photos in (files, drag and drop, webcam, clipboard, examples), captions
out (shaded by probability, with objects, concepts, familiarity and attention maps), and
the ``/caption`` API endpoint."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData, GradioRootModel, ListFiles
from PIL import Image, ImageDraw

from captioner.attention_maps import draw_boxes
from captioner.images import ImageError, load_data_url, load_image
from captioner.service import CaptionService, InputError
from webapp import caption_output as output
from webapp.common import event_value, not_trained, static, thumbnail, user_error

CAPTURES = Path(tempfile.gettempdir()) / "captioner-captures"  # webcam shots and pasted photos


class OneOrMoreFiles(GradioRootModel):
    root: list[FileData] | FileData


def paths_of(files) -> list[str]:
    """Server paths of what the photo input holds: one file or many (the API takes either)."""
    if files is None:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [f if isinstance(f, str) else getattr(f, "path", None) or getattr(f, "name", str(f)) for f in items]


def attention_strip(picture: Image.Image, result: dict) -> Image.Image:
    from captioner.attention_maps import attention_strip
    from captioner.model import CaptionResult

    return attention_strip(picture, CaptionResult(result["caption"], result["words"], result["probabilities"],
                                                  attention=result["attention"], grid=tuple(result["attention_grid"]),
                                                  boxes=result.get("boxes")),
                           size=128, per_row=5)


def placeholder(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    ImageDraw.Draw(image).text((10, size // 2 - 6), "not a photo", fill=(185, 28, 28))
    return image


def example_images() -> list[str]:
    """A few photos that ship inside installed packages (scikit-image, Gradio), never
    from the datasets: a cat, an espresso, a photographer at a tripod, an astronaut, a lion,
    and a Hubble deep field (a photo unlike anything the model learned from)."""
    folder = Path(tempfile.gettempdir()) / "captioner-examples"
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    try:
        import skimage.data as data

        for name in ("chelsea", "coffee", "camera", "astronaut", "hubble_deep_field"):
            path = folder / f"{name}.jpg"
            if not path.exists():
                Image.fromarray(getattr(data, name)()).convert("RGB").save(path, quality=92)
            examples.append(str(path))
    except Exception:  # scikit-image missing, or a sample it would have to download
        pass
    lion = Path(gr.__file__).parent / "media_assets" / "images" / "lion.jpg"
    if lion.is_file():
        examples.insert(-1, str(lion))
    return examples


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


class CaptionTab:
    def __init__(self, service: CaptionService, downloads: Path | None = None):
        self.service = service
        self.downloads = output.Downloads(downloads or Path(tempfile.gettempdir()) / "captioner-downloads")

    def caption(self, files, decoding: str = "beam search", beam_width: float | None = None):
        """Caption one or many images (a list of files, or one file). Returns the shaded
        caption(s) with the objects and concepts recognised and how familiar each photo is
        as HTML, the photos with their captions, the attention maps (attention models), a
        table, CSV and JSON downloads, the results as JSON, and how long it took. Beam
        search without a width uses the model's own default."""
        start = time.perf_counter()
        paths = paths_of(files)
        if not paths:
            raise gr.Error("Please choose at least one photo.", print_exception=False)
        beam = 1 if str(decoding).lower().startswith("greedy") else beam_width
        try:
            results = self.service.caption_paths(paths, beam, keep_images=True)
        except InputError as err:
            raise user_error(err) from err
        pictures = [(r.pop("picture"), r) for r in results if "picture" in r]
        seconds = time.perf_counter() - start
        if all("error" in r for r in results):
            raise gr.Error(" ".join(f"{r['image']}: {r['error']}" for r in results)[:1000], print_exception=False)
        good = sum("error" not in r for r in results)
        timing = f"{good} caption{'s' if good != 1 else ''} in {seconds:.2f} s" + (
            f" ({len(results) - good} file{'s' if len(results) - good != 1 else ''} could not be read)"
            if good < len(results) else "")
        gallery = [(thumbnail(draw_boxes(picture, r.get("boxes"), max(2, max(picture.size) // 200))), r["caption"])
                   for picture, r in pictures]
        maps = [(attention_strip(picture, r), r["caption"]) for picture, r in pictures if "attention" in r]
        return (output.shaded_html(results), gallery, maps, output.table(results), self.downloads.write(results),
                results, timing)

    @staticmethod
    def preview(files) -> list:
        """Thumbnails of the chosen photos, decoded by the safe loader, before any caption."""
        shown = []
        for path in paths_of(files)[:64]:
            try:
                shown.append((thumbnail(load_image(path, draft_size=256)), Path(path).name))
            except ImageError as err:
                shown.append((placeholder(), f"{Path(path).name}: {err}"))
        return shown

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
        updated = paths_of(files) + [str(path)]
        return updated, self.preview(updated)

    def pick_example(self, files, evt: gr.SelectData):
        """An example photo, clicked in the examples gallery, joins the photos."""
        examples = example_images()
        if not isinstance(evt.index, int) or not 0 <= evt.index < len(examples):
            raise gr.Error("That example is not there.", print_exception=False)
        updated = paths_of(files) + [examples[evt.index]]
        return updated, self.preview(updated)

    def build(self) -> None:
        if not_trained(self.service.available):
            return
        with gr.Row():
            with gr.Column(scale=1):
                files = photo_input(label="Photos (one or many: choose them, or drop them here)",
                                    file_types=["image"], elem_id="caption-files")
                capture = gr.HTML(static("capture.html"), js_on_load=static("capture.js"), elem_id="photo-capture",
                                  css_template=static("capture.css"))
                chosen = gr.Gallery(label="Chosen photos", columns=4, height=170, elem_id="caption-preview",
                                    format="jpeg", allow_preview=False, interactive=False)
                decoding = gr.Radio(["beam search", "greedy"], value="beam search", label="Decoding")
                beam = gr.Slider(1, 10, value=self.service.default_beam(), step=1, label="Beam width")
                button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                examples = example_images()
                shown = gr.Gallery(value=[(p, Path(p).stem.replace("_", " ")) for p in examples], columns=6,
                                   height=150, allow_preview=False, interactive=False, elem_id="caption-examples",
                                   label="Example photos (shipped with scikit-image and Gradio): click one to add it",
                                   visible=bool(examples))
            with gr.Column(scale=2):
                shaded = gr.HTML(label="Caption", elem_id="caption-output")
                timing = gr.Markdown(label="Time taken", elem_id="caption-timing")
                maps = gr.Gallery(label=("Where it looked for each word (xN: its most-watched cell got N times an "
                                         "even share; no heat: it looked everywhere alike)"), columns=1,
                                  height="auto", elem_id="caption-attention", format="jpeg",
                                  visible=self.service.attends())
                gallery = gr.Gallery(label="Photos", columns=4, height="auto", elem_id="caption-gallery",
                                     format="jpeg")  # WebP encoding cost more than the thumbnails were worth
                table = gr.Dataframe(headers=["image", "caption", "mean probability", "error"],
                                     label="All captions", interactive=False, wrap=True)
                downloads = gr.File(label="Download (CSV, JSON)", file_count="multiple", interactive=False)
                as_json = gr.JSON(label="Results", visible=False)
        files.change(self.preview, [files], [chosen], api_name=False, show_progress="hidden")
        capture.upload(self.add_captured, [files], [files, chosen], api_name=False)
        shown.select(self.pick_example, [files], [files, chosen], api_name=False)
        button.click(self.caption, [files, decoding, beam], [shaded, gallery, maps, table, downloads, as_json, timing],
                     api_name="caption", concurrency_limit=16, concurrency_id="caption")
