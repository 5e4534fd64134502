"""The web app: ``python app.py`` serves every model in one Gradio page.

This file is the UI and nothing else; the work is done by predictors in ``captioner/``.
A tab whose model has not been trained yet shows a clear notice instead.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from captioner.model import DEFAULT_CHECKPOINT  # noqa: E402

NOT_TRAINED = "**Not trained yet.** This tab's model has not been shipped; see the README to train it."


def build_app() -> gr.Blocks:
    with gr.Blocks(title="LSTM Captioner") as demo:
        gr.Markdown("# LSTM Captioner\nA CNN encoder and an LSTM decoder write a caption for your photo.")
        with gr.Tab("Caption"):
            if DEFAULT_CHECKPOINT.is_file():
                _caption_tab()
            else:
                gr.Markdown(NOT_TRAINED)
        with gr.Tab("MNIST digits"):
            gr.Markdown(NOT_TRAINED)
        with gr.Tab("Hand trajectory"):
            gr.Markdown(NOT_TRAINED)
        with gr.Tab("Next frame"):
            gr.Markdown(NOT_TRAINED)
    return demo


def _caption_tab() -> None:
    from captioner.images import load_image
    from captioner.model import Captioner

    model = Captioner.from_checkpoint(DEFAULT_CHECKPOINT)

    def caption(path: str, beam_size: int) -> str:
        if not path:
            raise gr.Error("Please upload an image.")
        return model.caption([load_image(path)], beam_size=int(beam_size))[0].caption

    image = gr.Image(type="filepath", label="Photo")
    beam = gr.Slider(1, 10, value=3, step=1, label="Beam width (1 = greedy)")
    output = gr.Textbox(label="Caption")
    gr.Button("Caption").click(caption, [image, beam], output, api_name="caption")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the captioner and the LSTM demos.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    build_app().queue(max_size=64, default_concurrency_limit=2).launch(
        server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
