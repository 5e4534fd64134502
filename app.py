"""The web app: ``python app.py`` serves every model in one Gradio page.

This file is the UI and nothing else: the predictors live in ``captioner/service.py``.
Every tab's function is also an API endpoint with a stable name (``/caption``,
``/classify_digit``, ``/predict_trajectory``, ``/predict_frames``), callable with
``gradio_client``. A tab whose model has not been trained yet says so instead.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from gradio.data_classes import FileData, GradioRootModel, ListFiles  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from captioner.devices import DEVICE_CHOICES, DeviceError  # noqa: E402
from captioner.images import MAX_BYTES, ImageError, load_image  # noqa: E402
from captioner.model import UNFAMILIAR  # noqa: E402
from captioner.service import CaptionService, DigitService, FrameService, InputError, TrajectoryService  # noqa: E402

ROOT = Path(__file__).resolve().parent
NOT_TRAINED = ("**Not trained yet.** This tab's model has not been shipped in `checkpoints/`; "
               "the README says how to train it.")
DOWNLOADS = Path(tempfile.gettempdir()) / "captioner-downloads"
CAPTURES = Path(tempfile.gettempdir()) / "captioner-captures"  # webcam shots and pasted photos
_last_cleanup = [0.0]  # when old downloads were last removed
_cleanup_lock = threading.Lock()

# The models: checkpoints/ by default; CAPTIONER_CHECKPOINTS points elsewhere (tests, other models).
CHECKPOINTS = Path(os.environ.get("CAPTIONER_CHECKPOINTS", ROOT / "checkpoints"))
# Data the side tabs show: $CAPTIONER_DATA (default data/), else what the app downloads into the cache.
DATA = Path(os.environ.get("CAPTIONER_DATA", ROOT / "data"))
CACHE = Path(os.environ.get("CAPTIONER_CACHE", Path.home() / ".cache" / "captioner"))


def _data(*relative: str) -> Path | None:
    return next((root.joinpath(*relative) for root in (DATA, CACHE) if root.joinpath(*relative).exists()), None)


# Where the captioner runs: CAPTIONER_DEVICE or --device (auto: a GPU if there is one).
captions = CaptionService(CHECKPOINTS / "captioner.safetensors",
                          batching=os.environ.get("CAPTIONER_BATCHING", "1") != "0",
                          device=os.environ.get("CAPTIONER_DEVICE", "auto"))
try:  # a Hugging Face Space on ZeroGPU: the GPU is there only inside functions wrapped by spaces.GPU
    import spaces  # noqa: E402

    captions.run_batch = spaces.GPU(captions.run_batch)
except ImportError:
    pass
digits = DigitService(CHECKPOINTS / "mnist.safetensors")
trajectories = TrajectoryService(CHECKPOINTS / "trajectory.safetensors",
                                 recordings=_data("char_trajectories", "trajectories_train.mat")
                                 or _data("char_trajectories", "mixoutALL_shifted.mat"))
frames = FrameService(CHECKPOINTS / "nextframe.safetensors",
                      mnist_root=DATA if _data("MNIST", "raw", "t10k-images-idx3-ubyte") else CACHE)


class OneOrMoreFiles(GradioRootModel):
    root: list[FileData] | FileData


def _user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), print_exception=False)


# ----------------------------------------------------------------------------- caption

def caption(files, decoding: str = "beam search", beam_width: float = 5):
    """Caption one or many images (a list of files, or one file). Returns the shaded
    caption(s) with the objects recognised and how familiar each photo is as HTML, the
    photos with their captions, the attention maps (attention models), a table, CSV and
    JSON downloads, the results as JSON, and how long it took."""
    start = time.perf_counter()
    paths = _paths(files)
    if not paths:
        raise gr.Error("Please choose at least one photo.", print_exception=False)
    beam = 1 if str(decoding).lower().startswith("greedy") else beam_width
    try:
        results = captions.caption_paths(paths, beam, keep_images=True)
    except InputError as err:
        raise _user_error(err) from err
    pictures = [(r.pop("picture"), r) for r in results if "picture" in r]
    seconds = time.perf_counter() - start
    if all("error" in r for r in results):
        raise gr.Error(" ".join(f"{r['image']}: {r['error']}" for r in results)[:1000], print_exception=False)
    good = sum("error" not in r for r in results)
    timing = f"{good} caption{'s' if good != 1 else ''} in {seconds:.2f} s" + (
        f" ({len(results) - good} file{'s' if len(results) - good != 1 else ''} could not be read)"
        if good < len(results) else "")
    gallery = [(_thumbnail(picture), r["caption"]) for picture, r in pictures]
    maps = [(_attention_strip(picture, r), r["caption"]) for picture, r in pictures if "attention" in r]
    return (_shaded_html(results), gallery, maps, _table(results), _downloads(results), results, timing)


def _paths(files) -> list[str]:
    """Server paths of what the photo input holds: one file or many (the API takes either)."""
    if files is None:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [f if isinstance(f, str) else getattr(f, "path", None) or getattr(f, "name", str(f)) for f in items]


def _attention_strip(picture: Image.Image, result: dict) -> Image.Image:
    from captioner.attention_maps import attention_strip
    from captioner.model import CaptionResult

    return attention_strip(picture, CaptionResult(result["caption"], result["words"], result["probabilities"],
                                                  attention=result["attention"], grid=tuple(result["attention_grid"])),
                           size=128, per_row=5)


def preview(files) -> list:
    """Thumbnails of the chosen photos, decoded by the safe loader, before any caption."""
    shown = []
    for path in _paths(files)[:64]:
        try:
            shown.append((_thumbnail(load_image(path, draft_size=256)), Path(path).name))
        except ImageError as err:
            shown.append((_placeholder(), f"{Path(path).name}: {err}"))
    return shown


def _placeholder(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    ImageDraw.Draw(image).text((10, size // 2 - 6), "not a photo", fill=(185, 28, 28))
    return image


def add_captured(files, evt: gr.EventData):
    """A photo from the webcam or the clipboard, sent by the page as a data URL: decoded by
    the safe loader (same limits as uploads), saved as a PNG and added to the photos."""
    import base64

    url = _event_value(evt, "image", "")
    source = str(_event_value(evt, "source", "photo"))[:20]
    if not isinstance(url, str) or not url.startswith("data:image/") or "," not in url:
        raise gr.Error("The captured photo could not be read.", print_exception=False)
    if len(url) > MAX_BYTES * 4 // 3 + 100:
        raise gr.Error(f"The photo is larger than {MAX_BYTES // 1_000_000} MB.", print_exception=False)
    try:
        image = load_image(base64.b64decode(url.split(",", 1)[1], validate=True))
    except (ImageError, ValueError) as err:
        raise gr.Error(f"The captured photo could not be read: {err}", print_exception=False) from err
    CAPTURES.mkdir(parents=True, exist_ok=True)
    path = CAPTURES / f"{'webcam' if source == 'webcam' else 'pasted'}-{time.strftime('%H%M%S')}-{os.getpid()}-" \
                      f"{threading.get_ident() % 10000}-{int(time.time() * 1000) % 1000:03d}.png"
    image.save(path, format="PNG")
    updated = _paths(files) + [str(path)]
    return updated, preview(updated)


def pick_example(files, evt: gr.SelectData):
    """An example photo, clicked in the examples gallery, joins the photos."""
    examples = _example_images()
    if not isinstance(evt.index, int) or not 0 <= evt.index < len(examples):
        raise gr.Error("That example is not there.", print_exception=False)
    updated = _paths(files) + [examples[evt.index]]
    return updated, preview(updated)


def _thumbnail(image: Image.Image, size: int = 256) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((size, size))
    return thumb


def _shaded_html(results: list[dict]) -> str:
    blocks = []
    for r in results:
        name = html.escape(r["image"])
        if "error" in r:
            blocks.append(f"<div class='cap'><b>{name}</b>: <span class='err'>{html.escape(r['error'])}</span></div>")
            continue
        words = "".join(
            f"<span class='w' style='background: rgba(79, 70, 229, {0.12 + 0.6 * p:.2f})' "
            f"title='p = {p:.2f}'>{html.escape(w)}</span> " for w, p in zip(r["words"], r["probabilities"]))
        blocks.append(f"<div class='cap'><b>{name}</b>: {_honesty(r)}<span class='caption'>{words}</span>"
                      f"{_objects_line(r)}</div>")
    legend = ("<div class='legend'>Darker words are the ones the model was surer of (hover for the probability). "
              "<i>Recognised</i>: what the encoder's ImageNet classifier sees, as caption words. <i>Familiarity</i>: "
              "how much the photo resembles the photos the captioner learned from (0.5 is typical of them; below "
              f"{UNFAMILIAR} fewer than 1% of such photos look this unlike them).</div>")
    return "<div class='captions'>" + "".join(blocks) + legend + "</div>"


def _objects_line(r: dict) -> str:
    objects = [o for o in r.get("objects", []) if o["probability"] >= 0.05][:3]
    recognised = ", ".join(f"{html.escape(o['word'])} {o['probability']:.0%}" for o in objects) or "nothing sure"
    familiarity = r.get("familiarity")
    tail = f" &middot; familiarity {familiarity:.3f}" if familiarity is not None else ""
    return f"<div class='objects'>Recognised: {recognised}{tail}</div>"


def _honesty(r: dict) -> str:
    """A plain warning before the caption of a photo unlike the model's training photos."""
    familiarity = r.get("familiarity")
    if familiarity is None or familiarity >= UNFAMILIAR:
        return ""
    top = next(iter(r.get("objects", [])), None)
    if top is not None and top["probability"] >= 0.5:
        note = (f"This photo is unlike the photos the model learned to describe; it does recognise "
                f"{html.escape(_with_article(top['word']))} ({top['probability']:.0%}), but the rest of the caption "
                "may be wrong.")
    else:
        note = ("This photo is unlike anything the model was trained on, and it recognises nothing in it for sure: "
                "the caption below is a guess, not a description.")
    return f"<div class='unfamiliar'>{note}</div>"


def _with_article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _table(results: list[dict]) -> list[list]:
    return [[r["image"], r.get("caption", ""),
             round(float(np.mean(r["probabilities"])), 3) if r.get("probabilities") else None, r.get("error", "")]
            for r in results]


def _remove_old_downloads(max_age: float = 3600.0, every: float = 60.0) -> None:
    """Keep the temp folder small: delete downloads older than ``max_age`` seconds, scanning
    the folder at most once every ``every`` seconds (not on every request: under load the
    folder holds thousands of files)."""
    now = time.time()
    with _cleanup_lock:
        if now - _last_cleanup[0] < every:
            return
        _last_cleanup[0] = now
    for old in DOWNLOADS.glob("captions-*"):
        try:
            if now - old.stat().st_mtime > max_age:
                old.unlink(missing_ok=True)
        except OSError:  # removed by another request meanwhile
            pass


def _downloads(results: list[dict]) -> list[str]:
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    _remove_old_downloads()
    stem = DOWNLOADS / f"captions-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{threading.get_ident() % 10000}"
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "words", "probabilities", "error"])
        for r in results:
            writer.writerow([r["image"], r.get("caption", ""), " ".join(r.get("words", [])),
                             " ".join(f"{p:.4f}" for p in r.get("probabilities", [])), r.get("error", "")])
    json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return [str(csv_path), str(json_path)]


def _example_images() -> list[str]:
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


CAPTURE = """
<div class="capture">
  <button type="button" class="cam-start">Use the webcam</button>
  <button type="button" class="cam-shot" style="display:none">Take the photo</button>
  <span class="paste-hint">or paste a photo (Ctrl+V / Cmd+V) anywhere on this tab</span>
  <video class="cam" autoplay playsinline muted style="display:none"></video>
</div>
"""

CAPTURE_JS = """
const start = element.querySelector('.cam-start'), shot = element.querySelector('.cam-shot');
const video = element.querySelector('video');
let stream = null;
function stop() { if (stream) stream.getTracks().forEach(t => t.stop()); stream = null;
                  video.style.display = 'none'; shot.style.display = 'none'; start.style.display = ''; }
start.addEventListener('click', async () => {
  try { stream = await navigator.mediaDevices.getUserMedia({video: true}); }
  catch (e) { start.textContent = 'No webcam could be opened'; return; }
  video.srcObject = stream; video.style.display = 'block'; shot.style.display = ''; start.style.display = 'none';
});
shot.addEventListener('click', () => {
  const c = document.createElement('canvas');
  c.width = video.videoWidth || 640; c.height = video.videoHeight || 480;
  c.getContext('2d').drawImage(video, 0, 0, c.width, c.height);
  trigger('upload', {image: c.toDataURL('image/jpeg', 0.92), source: 'webcam'});
  stop();
});
document.addEventListener('paste', e => {
  const items = (e.clipboardData && e.clipboardData.items) || [];
  for (const item of items) {
    if (!item.type.startsWith('image/')) continue;
    const reader = new FileReader();
    reader.onload = () => trigger('upload', {image: reader.result, source: 'clipboard'});
    reader.readAsDataURL(item.getAsFile());
    e.preventDefault();
    break;
  }
});
"""


def caption_tab() -> None:
    if not captions.available:
        gr.Markdown(NOT_TRAINED)
        return
    with gr.Row():
        with gr.Column(scale=1):
            files = photo_input(label="Photos (one or many: choose them, or drop them here)", file_types=["image"],
                                elem_id="caption-files")
            capture = gr.HTML(CAPTURE, js_on_load=CAPTURE_JS, elem_id="photo-capture",
                              css_template="button { margin: 4px 6px 4px 0; padding: 2px 12px; border: 1px solid #ccc;"
                                           " border-radius: 4px; } video { width: 100%; max-width: 360px; "
                                           "margin-top: 6px; } .paste-hint { color: #666; font-size: 0.9em; }")
            chosen = gr.Gallery(label="Chosen photos", columns=4, height=170, elem_id="caption-preview",
                                format="jpeg", allow_preview=False, interactive=False)
            decoding = gr.Radio(["beam search", "greedy"], value="beam search", label="Decoding")
            beam = gr.Slider(1, 10, value=captions.default_beam(), step=1, label="Beam width")
            button = gr.Button("Caption", variant="primary", elem_id="caption-button")
            examples = _example_images()
            shown = gr.Gallery(value=[(p, Path(p).stem.replace("_", " ")) for p in examples], columns=6,
                               height=150, allow_preview=False, interactive=False, elem_id="caption-examples",
                               label="Example photos (shipped with scikit-image and Gradio): click one to add it",
                               visible=bool(examples))
        with gr.Column(scale=2):
            shaded = gr.HTML(label="Caption", elem_id="caption-output")
            timing = gr.Markdown(label="Time taken", elem_id="caption-timing")
            maps = gr.Gallery(label=("Where it looked for each word (xN: its most-watched cell got N times an "
                                     "even share; no heat: it looked everywhere alike)"), columns=1, height="auto",
                              elem_id="caption-attention", format="jpeg", visible=captions.attends())
            gallery = gr.Gallery(label="Photos", columns=4, height="auto", elem_id="caption-gallery",
                                 format="jpeg")  # WebP encoding cost more than the thumbnails were worth
            table = gr.Dataframe(headers=["image", "caption", "mean probability", "error"], label="All captions",
                                 interactive=False, wrap=True)
            downloads = gr.File(label="Download (CSV, JSON)", file_count="multiple", interactive=False)
            as_json = gr.JSON(label="Results", visible=False)
    files.change(preview, [files], [chosen], api_name=False, show_progress="hidden")
    capture.upload(add_captured, [files], [files, chosen], api_name=False)
    shown.select(pick_example, [files], [files, chosen], api_name=False)
    button.click(caption, [files, decoding, beam], [shaded, gallery, maps, table, downloads, as_json, timing],
                 api_name="caption", concurrency_limit=16, concurrency_id="caption")


# ------------------------------------------------------------------------------- digits

def classify_digit(image):
    """Classify a picture of a digit (any size, dark on light or light on dark)."""
    try:
        probs, seen = digits.classify(image)
    except InputError as err:
        raise _user_error(err) from err
    seen_image = Image.fromarray((seen * 255).astype(np.uint8)).resize((168, 168), Image.Resampling.NEAREST)
    return probs, seen_image


def _event_value(evt: gr.EventData, name: str, default):
    """A value the page's JavaScript sent with ``trigger(...)``, read through EventData's
    attribute access."""
    try:
        return getattr(evt, name)
    except (AttributeError, TypeError):  # not sent, or nothing sent at all
        return default


def _on_digit_drawn(evt: gr.EventData):
    """The canvas sends its drawing as a PNG data URL when the pen lifts."""
    import base64

    url = _event_value(evt, "image", "")
    if not isinstance(url, str) or not url.startswith("data:image/png;base64,") or len(url) > 5_000_000:
        raise gr.Error("The drawing could not be read.", print_exception=False)
    try:
        drawing = load_image(base64.b64decode(url.split(",", 1)[1], validate=True))
    except (ImageError, ValueError) as err:
        raise gr.Error("The drawing could not be read.", print_exception=False) from err
    return classify_digit(np.asarray(drawing))


DIGIT_CANVAS = """
<div class="digit-box">
  <canvas id="digit-pad" width="280" height="280"></canvas>
  <button class="digit-clear" type="button">Clear</button>
</div>
"""

DIGIT_JS = """
const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
let drawing = false, last = null;
function clear() { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, canvas.width, canvas.height); }
function pos(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}
clear();
canvas.style.touchAction = 'none';
canvas.addEventListener('pointerdown', e => { drawing = true; last = pos(e); canvas.setPointerCapture(e.pointerId); });
canvas.addEventListener('pointermove', e => {
  if (!drawing) return;
  const p = pos(e);
  ctx.strokeStyle = '#fff'; ctx.lineWidth = 20; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
  last = p;
});
canvas.addEventListener('pointerup', () => {
  if (!drawing) return;
  drawing = false;
  trigger('submit', {image: canvas.toDataURL('image/png')});
});
element.querySelector('.digit-clear').addEventListener('click', () => clear());
"""


def digit_tab() -> None:
    if not digits.available:
        gr.Markdown(NOT_TRAINED)
        return
    gr.Markdown("Draw a digit (0-9) with the mouse or a finger, or upload a picture of one. It is prepared the "
                "way MNIST was made: cropped, scaled into 20x20 and centred by mass in 28x28. An LSTM then reads "
                "it row by row.")
    with gr.Row():
        with gr.Column():
            canvas = gr.HTML(DIGIT_CANVAS, js_on_load=DIGIT_JS, elem_id="digit-canvas",
                             css_template="canvas { width: 280px; height: 280px; border-radius: 6px; "
                                          "cursor: crosshair; display: block; } "
                                          "button { margin-top: 6px; padding: 2px 12px; border: 1px solid #ccc; "
                                          "border-radius: 4px; }")
            # a plain file: Gradio's Image input would decode the upload itself, before our safe loader
            upload = gr.File(label="...or upload a picture of a digit", file_types=["image"], elem_id="digit-upload")
            button = gr.Button("Classify the upload", elem_id="digit-button")
        with gr.Column():
            label = gr.Label(num_top_classes=10, label="Class probabilities", elem_id="digit-label")
            seen = gr.Image(label="What the model saw (28x28)", interactive=False, height=180)
    button.click(classify_digit, [upload], [label, seen], api_name="classify_digit")
    canvas.submit(_on_digit_drawn, None, [label, seen], api_name=False, show_progress="hidden",
                  trigger_mode="always_last")


# ------------------------------------------------------------------------ trajectories

STROKE_CANVAS = """
<div class="stroke-box">
  <canvas id="stroke-canvas" width="480" height="360"></canvas>
  <div class="stroke-help">Draw one stroke, in one go; the prediction appears when you lift the pen.</div>
</div>
"""

STROKE_JS = """
const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
let points = [], drawing = false, lastTime = 0;
function pos(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}
function clear() { ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height); }
clear();
canvas.style.touchAction = 'none';
canvas.addEventListener('pointerdown', e => {
  drawing = true; points = [pos(e)]; lastTime = performance.now(); clear();
  canvas.setPointerCapture(e.pointerId);
});
canvas.addEventListener('pointermove', e => {
  if (!drawing) return;
  const now = performance.now();
  if (now - lastTime < 15) return;  // sample about every 15 ms, like a tracker would
  lastTime = now;
  const p = pos(e), q = points[points.length - 1];
  points.push(p);
  ctx.strokeStyle = '#222'; ctx.lineWidth = 3; ctx.beginPath(); ctx.moveTo(q[0], q[1]); ctx.lineTo(p[0], p[1]);
  ctx.stroke();
});
canvas.addEventListener('pointerup', e => {
  if (!drawing) return;
  drawing = false;
  if (points.length >= 2) trigger('submit', {points: points.map(p => [Math.round(p[0] * 10) / 10,
                                                                         Math.round(p[1] * 10) / 10])});
});
"""


def predict_trajectory(points):
    """Predict the next points of a stroke (10 for the shipped model). ``points``: a JSON
    list of [x, y] pairs, oldest first (screen coordinates; the model uses the last 30).
    Returns a picture and the model's and the constant-velocity guesses as JSON."""
    try:
        result = trajectories.predict(points)
    except InputError as err:
        raise _user_error(err) from err
    return _trajectory_picture(np.asarray(TrajectoryService.parse_points(points)), result), result


def _on_stroke(evt: gr.EventData):
    points = json.dumps(_event_value(evt, "points", []))
    picture, result = predict_trajectory(points)
    return points, picture, result


def _recording(name: str, cut: float):
    recordings = _recording_labels()
    if name not in recordings:
        raise gr.Error("No recorded trajectory was found; see the README to download them.", print_exception=False)
    seq = recordings[name]
    config = trajectories.config()
    end = int(np.clip(round(cut / 100 * (len(seq) - config.future)), config.past, len(seq) - config.future))
    points = json.dumps(np.round(seq[:end], 4).tolist())
    result = trajectories.predict(points)
    truth = seq[end:end + config.future]
    return points, _trajectory_picture(seq[:end], result, truth), {**result, "truth": truth.tolist()}


def _recording_labels() -> dict[str, np.ndarray]:
    return {f"pen trajectory #{i}" + (f" (letter '{letter}')" if letter else ""): points
            for i, letter, points in trajectories.recordings()}


def _trajectory_picture(stroke: np.ndarray, result: dict, truth: np.ndarray | None = None) -> Image.Image:
    """The stroke in grey, the points the model used in black, the model's points in
    blue, constant velocity in orange, the true continuation (if known) in green."""
    model, cv = np.asarray(result["model"]), np.asarray(result["constant_velocity"])
    everything = np.concatenate([stroke, model, cv] + ([truth] if truth is not None else []))
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    size, margin = 480, 30
    scale = (size - 2 * margin) / max(float((hi - lo).max()), 1e-9)
    offset = (size - scale * (hi - lo)) / 2
    to_px = lambda a: [tuple(map(float, (p - lo) * scale + offset)) for p in np.atleast_2d(a)]  # noqa: E731
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    if len(stroke) > 1:
        draw.line(to_px(stroke), fill=(190, 190, 190), width=3)
        draw.line(to_px(np.asarray(result["input"])), fill=(30, 30, 30), width=3)
    last = to_px(stroke[-1])[0]
    for points, colour in ([truth, (22, 163, 74)], [cv, (234, 88, 12)], [model, (37, 99, 235)]):
        if points is None:
            continue
        px = [last] + to_px(points)
        draw.line(px, fill=colour, width=2)
        for x, y in px[1:]:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    legend = "model (blue), constant velocity (orange)" + (", truth (green)" if truth is not None else "")
    draw.text((10, size - 18), legend, fill=(60, 60, 60))
    return image


def trajectory_tab() -> None:
    if not trajectories.available:
        gr.Markdown(NOT_TRAINED)
        return
    config = trajectories.config()
    gr.Markdown(f"Draw a stroke with the mouse or a finger. The model ({config.past} past points in, attention and "
                f"a bidirectional LSTM) continues it with the next {config.future} points, beside the "
                "constant-velocity guess.")
    with gr.Row():
        with gr.Column():
            canvas = gr.HTML(STROKE_CANVAS, js_on_load=STROKE_JS, elem_id="stroke-canvas-box",
                             css_template="canvas { border: 1px solid #ccc; border-radius: 6px; width: 100%; "
                                          "max-width: 480px; cursor: crosshair; background: #fff; }")
            points = gr.Textbox(label="Points (JSON, oldest first)", lines=2, max_lines=4, elem_id="stroke-points")
            button = gr.Button("Predict from these points", elem_id="stroke-button")
            with gr.Accordion("Real recorded pen trajectories", open=False):
                recorded = gr.Dropdown(choices=[], label="Recording (held out from training)", elem_id="recording")
                cut = gr.Slider(0, 100, value=50, step=1, label="Where to cut it (%)")
                show = gr.Button("Predict from the recording")
        with gr.Column():
            picture = gr.Image(label="Prediction", interactive=False, elem_id="stroke-picture")
            result = gr.JSON(label="Points", elem_id="stroke-result")
    canvas.submit(_on_stroke, None, [points, picture, result], api_name=False)
    button.click(predict_trajectory, [points], [picture, result], api_name="predict_trajectory")
    show.click(_recording, [recorded, cut], [points, picture, result], api_name=False)
    gr.on([recorded.focus], lambda: gr.Dropdown(choices=list(_recording_labels())), None, recorded,
          api_name=False, queue=False)


# ------------------------------------------------------------------------- next frame

def predict_frames(clip: float = 0):
    """A Moving MNIST clip from the test digits: the input frames, then the true next
    frames above the ConvLSTM's predicted frames (10 of each for the shipped model)."""
    try:
        result = frames.predict(clip)
    except InputError as err:
        raise _user_error(err) from err
    strip = lambda a: np.concatenate(list(a), axis=1)  # noqa: E731
    rows = [strip(result["inputs"]), strip(result["truth"]), strip(result["predicted"])]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=1.0) for r in rows]
    gap = np.ones((4, width))
    grid = np.concatenate([rows[0], gap, rows[1], gap, rows[2]])
    picture = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).resize((2 * width, 2 * grid.shape[0]),
                                                                                   Image.Resampling.NEAREST)
    mse, copy = float(np.mean(result["mse_per_frame"])), float(np.mean(result["copy_last_mse_per_frame"]))
    summary = {"mse_per_frame": round(mse, 1), "copy_last_frame_mse_per_frame": round(copy, 1),
               "seconds": round(result["seconds"], 3),
               "mse_by_frame": [round(m, 1) for m in result["mse_per_frame"]]}
    return picture, summary


def frames_tab() -> None:
    if not frames.available:
        gr.Markdown(NOT_TRAINED)
        return
    config = frames.config()
    gr.Markdown(f"Two real MNIST test digits bounce around a {config.size}x{config.size} frame. Top row: the "
                f"{config.input_frames} frames the ConvLSTM sees. Middle: the true next {config.output_frames} frames. "
                f"Bottom: the {config.output_frames} frames it predicts.")
    with gr.Row():
        clip = gr.Number(value=0, precision=0, label="Clip number", minimum=0, elem_id="clip-number")
        button = gr.Button("Predict", variant="primary", elem_id="frames-button")
    picture = gr.Image(label="Input / truth / prediction", interactive=False, elem_id="frames-picture")
    summary = gr.JSON(label="Error (squared error summed over each frame's pixels)", elem_id="frames-summary")
    button.click(predict_frames, [clip], [picture, summary], api_name="predict_frames")


# ------------------------------------------------------------------------------ layout

CSS = """
.captions .cap { font-size: 1.15em; margin: 0.4em 0; }
.captions .w { border-radius: 4px; padding: 1px 3px; }
.captions .err { color: #b91c1c; }
.captions .legend { font-size: 0.8em; color: #666; margin-top: 0.6em; }
.captions .objects { font-size: 0.8em; color: #444; margin-top: 0.15em; }
.captions .unfamiliar { font-size: 0.9em; color: #92400e; background: #fef3c7; border-radius: 4px;
                        padding: 2px 6px; margin: 0.2em 0; }
"""


def build_app() -> gr.Blocks:
    with gr.Blocks(title="LSTM Captioner", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# LSTM Captioner\nA CNN encoder and an LSTM decoder write a caption for your photo. "
                    "Three more tabs show other LSTMs at work.")
        with gr.Tab("Caption", id="caption"):
            caption_tab()
        with gr.Tab("MNIST digits", id="digits"):
            digit_tab()
        with gr.Tab("Hand trajectory", id="trajectory"):
            trajectory_tab()
        with gr.Tab("Next frame", id="frames"):
            frames_tab()
    return demo


def warm_up() -> None:
    """Load the caption model in the background so the first request is quick; the
    server answers meanwhile."""
    if captions.available:
        threading.Thread(target=captions.model.get, daemon=True, name="warm-up").start()


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           queue_size: int = 64):
    demo = build_app()
    demo.queue(max_size=queue_size, default_concurrency_limit=2)
    warm_up()
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                max_file_size=MAX_BYTES, show_error=False, css=CSS, footer_links=["api"],
                blocked_paths=[str(ROOT / name) for name in ("checkpoints", "runs", "data", ".git", "tests")])
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the captioner and the LSTM demos.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--queue-size", type=int, default=64, help="requests that may wait before 'busy'")
    parser.add_argument("--device", default=None,
                        help=f"where the captioner runs: {DEVICE_CHOICES} (default $CAPTIONER_DEVICE or auto)")
    args = parser.parse_args(argv)
    if args.device:
        try:
            captions.use_device(args.device)
        except DeviceError as err:
            raise SystemExit(f"error: {err}") from err
    launch(args.host, args.port, args.share, queue_size=args.queue_size)


if __name__ == "__main__":
    main()
