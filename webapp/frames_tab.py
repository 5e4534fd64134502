"""The next-frame tab: a Moving MNIST clip, its true next frames and the ConvLSTM's; the
``/predict_frames`` API endpoint."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from demos.nextframe.service import FrameService
from lstmkit.service import InputError
from webapp.common import not_trained, user_error


def in_words(summary: dict) -> str:
    """The summary as a sentence: how far off the model is, beside copying the last frame."""
    model, copy = summary["mse_per_frame"], summary["copy_last_frame_mse_per_frame"]
    return (f"Its frames are off by {model:g} a frame (squared error), against {copy:g} for copying the last frame "
            f"it saw: {'better' if model < copy else 'no better'} than standing still. "
            f"Predicted in {summary['seconds']:.2f} s.")


class FramesTab:
    def __init__(self, service: FrameService):
        self.service = service

    def predict_frames(self, clip: float = 0):
        """A Moving MNIST clip from the test digits: the input frames, then the true next
        frames above the ConvLSTM's predicted frames (10 of each for the shipped model)."""
        try:
            result = self.service.predict(clip)
        except InputError as err:
            raise user_error(err) from err
        except (OSError, ValueError, RuntimeError) as err:  # the shipped digits missing or unreadable
            raise gr.Error("The MNIST test digits this tab needs were not found next to the app "
                           f"(demos/samples/MNIST): {err}", print_exception=False) from err
        strip = lambda a: np.concatenate(list(a), axis=1)  # noqa: E731
        rows = [strip(result["inputs"]), strip(result["truth"]), strip(result["predicted"])]
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=1.0) for r in rows]
        gap = np.ones((4, width))
        grid = np.concatenate([rows[0], gap, rows[1], gap, rows[2]])
        picture = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).resize(
            (2 * width, 2 * grid.shape[0]), Image.Resampling.NEAREST)
        mse, copy = float(np.mean(result["mse_per_frame"])), float(np.mean(result["copy_last_mse_per_frame"]))
        summary = {"mse_per_frame": round(mse, 1), "copy_last_frame_mse_per_frame": round(copy, 1),
                   "seconds": round(result["seconds"], 3),
                   "mse_by_frame": [round(m, 1) for m in result["mse_per_frame"]]}
        return picture, summary

    def build(self) -> None:
        if not_trained(self.service.available):
            return
        config = self.service.config()
        gr.Markdown(f"Two real MNIST test digits bounce around a {config.size}x{config.size} frame. Top row: the "
                    f"{config.input_frames} frames the ConvLSTM sees. Middle: the true next {config.output_frames} "
                    f"frames. Bottom: the {config.output_frames} frames it predicts.")
        with gr.Row():
            clip = gr.Number(value=0, precision=0, label="Clip number", minimum=0, elem_id="clip-number")
            button = gr.Button("Predict", variant="primary", elem_id="frames-button")
        picture = gr.Image(label="Input / truth / prediction", show_label=False, interactive=False,
                           elem_id="frames-picture")
        said = gr.Markdown(elem_id="frames-said")
        with gr.Accordion("The numbers (squared error summed over each frame's pixels)", open=False):
            summary = gr.JSON(show_label=False, elem_id="frames-summary")
        button.click(self.predict_frames, [clip], [picture, summary], api_name="predict_frames").success(
            in_words, summary, said, api_name=False, queue=False)

