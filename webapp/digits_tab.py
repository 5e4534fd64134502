"""The MNIST tab: draw a digit (or upload one), and the row-by-row LSTM classifies it;
the ``/classify_digit`` API endpoint."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from demos.mnist.service import DigitService
from lstmkit.images import ImageError, load_data_url
from lstmkit.service import InputError
from webapp.common import event_value, not_trained, static, user_error


class DigitsTab:
    def __init__(self, service: DigitService):
        self.service = service

    def classify_digit(self, image):
        """Classify a picture of a digit (any size, dark on light or light on dark)."""
        try:
            probs, seen = self.service.classify(image)
        except InputError as err:
            raise user_error(err) from err
        seen_image = Image.fromarray((seen * 255).astype(np.uint8)).resize((168, 168), Image.Resampling.NEAREST)
        return probs, seen_image

    def on_drawn(self, evt: gr.EventData):
        """The canvas sends its drawing as a PNG data URL when the pen lifts."""
        try:
            drawing = load_data_url(event_value(evt, "image", ""), max_bytes=3_000_000)
        except ImageError as err:
            raise gr.Error("The drawing could not be read.", print_exception=False) from err
        return self.classify_digit(np.asarray(drawing))

    def build(self) -> None:
        if not_trained(self.service.available):
            return
        gr.Markdown("Draw a digit (0-9) with the mouse or a finger, or upload a picture of one. It is prepared the "
                    "way MNIST was made: cropped, scaled into 20x20 and centred by mass in 28x28. An LSTM then reads "
                    "it row by row.")
        with gr.Row(equal_height=False):
            with gr.Column():
                canvas = gr.HTML(static("digit.html"), js_on_load=static("digit.js"), elem_id="digit-canvas",
                                 css_template=static("digit.css"))
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="What the LSTM reads", elem_id="digit-label")
                seen = gr.Image(label="What the model saw (28x28)", interactive=False, height=180,
                                elem_id="digit-seen")
        with gr.Accordion("Or upload a picture of a digit", open=False):
            # a plain file: Gradio's Image input would decode the upload itself, before our safe loader
            upload = gr.File(label="A picture of a digit", file_types=["image"], elem_id="digit-upload")
            button = gr.Button("Classify the upload", elem_id="digit-button")
        button.click(self.classify_digit, [upload], [label, seen], api_name="classify_digit")
        canvas.submit(self.on_drawn, None, [label, seen], api_name=False, show_progress="hidden",
                      trigger_mode="always_last").then(None, js=static("digit_scroll.js"))
        canvas.clear(lambda: (None, None), None, [label, seen], api_name=False, queue=False, show_progress="hidden")
