"""The hand-trajectory tab: draw a stroke (or pick a held-out recording), and the model
continues it beside constant velocity; the ``/predict_trajectory`` API endpoint."""

from __future__ import annotations

import json

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from demos.trajectory.service import TrajectoryService
from lstmkit.service import InputError
from webapp.common import event_value, not_trained, static, user_error


def trajectory_picture(stroke: np.ndarray, result: dict, truth: np.ndarray | None = None) -> Image.Image:
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


class TrajectoryTab:
    def __init__(self, service: TrajectoryService):
        self.service = service

    def predict_trajectory(self, points):
        """Predict the next points of a stroke (10 for the shipped model). ``points``: a
        JSON list of [x, y] pairs, oldest first (screen coordinates; the model uses the last
        30). Returns a picture and the model's and the constant-velocity guesses as JSON."""
        try:
            result = self.service.predict(points)
        except InputError as err:
            raise user_error(err) from err
        return trajectory_picture(np.asarray(TrajectoryService.parse_points(points)), result), result

    def on_stroke(self, evt: gr.EventData):
        points = json.dumps(event_value(evt, "points", []))
        picture, result = self.predict_trajectory(points)
        return points, picture, result

    def recording_labels(self) -> dict[str, np.ndarray]:
        return {f"pen trajectory #{i}" + (f" (letter '{letter}')" if letter else ""): points
                for i, letter, points in self.service.recordings()}

    def from_recording(self, name: str, cut: float):
        recordings = self.recording_labels()
        if name not in recordings:
            raise gr.Error("Choose one of the recordings first." if recordings else
                           "No recorded trajectories were found next to the app (demos/samples).",
                           print_exception=False)
        seq = recordings[name]
        config = self.service.config()
        end = int(np.clip(round(cut / 100 * (len(seq) - config.future)), config.past, len(seq) - config.future))
        points = json.dumps(np.round(seq[:end], 4).tolist())
        result = self.service.predict(points)
        truth = seq[end:end + config.future]
        return points, trajectory_picture(seq[:end], result, truth), {**result, "truth": truth.tolist()}

    def build(self) -> None:
        if not_trained(self.service.available):
            return
        config = self.service.config()
        gr.Markdown(f"Draw a stroke with the mouse or a finger. The model ({config.past} past points in, attention "
                    f"and a bidirectional LSTM) continues it with the next {config.future} points, beside the "
                    "constant-velocity guess.")
        labels = list(self.recording_labels())
        with gr.Row(equal_height=False):
            with gr.Column():
                canvas = gr.HTML(static("stroke.html"), js_on_load=static("stroke.js"), elem_id="stroke-canvas-box",
                                 css_template=static("stroke.css"))
                with gr.Accordion("Real recorded pen trajectories", open=True, elem_id="recordings"):
                    recorded = gr.Dropdown(choices=labels, value=labels[0] if labels else None,
                                           label="Recording (held out from training)", elem_id="recording",
                                           info=None if labels else "No recordings were found next to the app.")
                    cut = gr.Slider(0, 100, value=50, step=1, label="Where to cut it (%)")
                    show = gr.Button("Predict from the recording", elem_id="recording-button")
            with gr.Column():
                picture = gr.Image(label="Prediction", interactive=False, elem_id="stroke-picture")
                with gr.Accordion("The points (JSON)", open=False, elem_id="stroke-points-box"):
                    points = gr.Textbox(label="Points in (oldest first)", lines=2, max_lines=4,
                                        elem_id="stroke-points")
                    button = gr.Button("Predict from these points", elem_id="stroke-button")
                    result = gr.JSON(label="Points out: the model's and constant velocity's", elem_id="stroke-result")
        canvas.submit(self.on_stroke, None, [points, picture, result], api_name=False)
        button.click(self.predict_trajectory, [points], [picture, result], api_name="predict_trajectory")
        show.click(self.from_recording, [recorded, cut], [points, picture, result], api_name=False)
