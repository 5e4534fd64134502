"""The web app: ``python app.py`` serves every model in one Gradio page.

This file builds the services (``make_services``) and the page (``build_app``, one tab per
module of ``webapp/``) and serves it. Every tab's function is also an API endpoint with a
stable name (``/caption``, ``/classify_digit``, ``/predict_trajectory``,
``/predict_frames``), callable with ``gradio_client``. A tab whose model has not been
trained yet says so instead.
"""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if not os.environ.get("CAPTIONER_FEEDBACK_REPO"):  # the one thing that talks to the Hub: pushing corrections
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from captioner.feedback import CorrectionService  # noqa: E402
from captioner.feedback_hub import sync_to_hub  # noqa: E402
from captioner.service import CaptionService  # noqa: E402
from demos.mnist.service import DigitService  # noqa: E402
from demos.nextframe.service import FrameService  # noqa: E402
from demos.trajectory.service import TrajectoryService  # noqa: E402
from lstmkit.devices import DEVICE_CHOICES, PRECISIONS, DeviceError  # noqa: E402
from lstmkit.images import MAX_BYTES  # noqa: E402
from webapp.caption_tab import CaptionTab  # noqa: E402
from webapp.common import ROOT, Places, static  # noqa: E402
from webapp.digits_tab import DigitsTab  # noqa: E402
from webapp.frames_tab import FramesTab  # noqa: E402
from webapp.trajectory_tab import TrajectoryTab  # noqa: E402


@dataclass
class Services:
    captions: CaptionService
    digits: DigitService
    trajectories: TrajectoryService
    frames: FrameService
    corrections: CorrectionService | None = None  # the caption tab's Save and /correct (feedback.py)


def make_services(places: Places | None = None, device: str | None = None, precision: str | None = None) -> Services:
    """The four predictors (models load lazily, on first use). The captioner runs on
    ``device`` (default $CAPTIONER_DEVICE, else auto: a GPU if there is one), its encoder in
    ``precision`` (default $CAPTIONER_PRECISION, else auto: the faster on this machine)."""
    places = places or Places.from_environment()
    captions = CaptionService(places.checkpoints / "captioner.safetensors",
                              batching=os.environ.get("CAPTIONER_BATCHING", "1") != "0",
                              device=device or os.environ.get("CAPTIONER_DEVICE", "auto"),
                              precision=precision or os.environ.get("CAPTIONER_PRECISION", "auto"))
    try:  # a Hugging Face Space on ZeroGPU: the GPU is there only inside functions wrapped by spaces.GPU
        import spaces

        captions.run_batch = spaces.GPU(captions.run_batch)
    except ImportError:
        pass
    corrections = CorrectionService(captions)  # to $CAPTIONER_FEEDBACK_DIR; pushed to $CAPTIONER_FEEDBACK_REPO if set
    corrections.hub = sync_to_hub(corrections.store.folder, corrections.repo)
    return Services(captions, DigitService(places.checkpoints / "mnist.safetensors"),
                    TrajectoryService(places.checkpoints / "trajectory.safetensors",
                                      recordings=places.samples / "char_trajectories_held_out.json"),
                    FrameService(places.checkpoints / "nextframe.safetensors", mnist_root=places.samples),
                    corrections)


def build_app(services: Services | None = None) -> gr.Blocks:
    services = services or make_services()
    with gr.Blocks(title="LSTM Captioner", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# LSTM Captioner\nA photo in, a sentence out: a CNN sees, an LSTM writes. The other tabs "
                    "show three more LSTMs at work.", elem_id="intro")
        caption_tab = CaptionTab(services.captions, corrections=services.corrections)
        for title, tab_id, tab in (("Caption", "caption", caption_tab),
                                   ("Digits", "digits", DigitsTab(services.digits)),
                                   ("Strokes", "trajectory", TrajectoryTab(services.trajectories)),
                                   ("Frames", "frames", FramesTab(services.frames))):
            with gr.Tab(title, id=tab_id):
                tab.build()
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           queue_size: int = 64, services: Services | None = None) -> gr.Blocks:
    services = services or make_services()
    demo = build_app(services)
    demo.queue(max_size=queue_size, default_concurrency_limit=2)
    if services.captions.available:  # load the caption model meanwhile, so the first request is quick
        threading.Thread(target=services.captions.model.get, daemon=True, name="warm-up").start()
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                max_file_size=MAX_BYTES, show_error=False, css=static("app.css"), js=static("a11y.js"),
                footer_links=["api"],
                blocked_paths=[str(ROOT / name) for name in ("checkpoints", "runs", "data", ".git", "tests")]
                + ([str(services.corrections.store.folder)] if services.corrections else []))
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
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="the encoder's numerics (default $CAPTIONER_PRECISION or auto: bf16 only where this CPU "
                             "has it natively and it measured faster)")
    args = parser.parse_args(argv)
    try:
        services = make_services(device=args.device, precision=args.precision)
    except DeviceError as err:
        raise SystemExit(f"error: {err}") from err
    launch(args.host, args.port, args.share, queue_size=args.queue_size, services=services)


if __name__ == "__main__":
    main()
