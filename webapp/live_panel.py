"""Live mode and Read aloud on the caption tab: the controls (``static/live.html``), the
camera loop and the speech (``static/live.js``, in the browser: nothing to install on the
server), and the two server functions the page calls, ``live_frame`` and ``live_stop``.

The page calls them through Gradio's component server (``POST
/gradio_api/component_server``): one plain request per frame, answered with the caption,
outside the event queue, so the page knows when to send the next frame and a frame never
waits behind another (``webapp.live.LiveStreams`` drops what it has no time for). The
captions themselves go through the same ``CaptionService`` as uploads, in the same batches.
The one-photo endpoints (``/caption``) are unchanged."""

from __future__ import annotations

import html
from functools import cached_property

import gradio as gr

from captioner.service import CaptionService
from lstmkit.images import ImageError, load_data_url
from webapp import caption_output as output
from webapp.caption_pictures import boxed_photo
from webapp.common import static
from webapp.correction_form import client_of
from webapp.live import LiveSettings, LiveStreams

FRAME_BYTES = 2_000_000  # a frame the page sends is about 30 KB (416 px); 1024 px, the largest setting, under 1 MB


class LivePanel:
    """The Live and Read aloud controls, the camera's preview and the live region that
    screen readers announce; ``build`` places them on the caption tab."""

    def __init__(self, service: CaptionService, settings: LiveSettings | None = None):
        self.service = service
        self.settings = settings or LiveSettings.from_environment()
        self.streams = LiveStreams(self.caption_frame, self.settings)

    @cached_property
    def beam(self) -> int:
        """Live captions' beam width: ``LIVE_BEAM`` (greedy by default), or with 0 the
        checkpoint's own, the width the page's uploads get (then frames and uploads share the
        micro-batcher's batches)."""
        return self.settings.beam or self.service.default_beam()

    def caption_frame(self, image) -> dict:
        """One frame's caption, with the frame itself kept for its picture."""
        result = self.service.caption_images([image], self.beam)[0]
        return {**result, "picture": image}

    def live_frame(self, frame: dict, request: gr.Request = None) -> dict:
        """One camera frame from the page (``{"stream", "image"}``, the image a JPEG data
        URL): ``{"kind", "html", "caption", "message"}``, ``kind`` as ``LiveStreams.offer``
        says; ``html`` the caption area (the kept words, over the frame with the
        detector's boxes), none for a dropped frame."""
        frame = frame if isinstance(frame, dict) else {}
        stream = str(frame.get("stream", ""))[:64]
        if not stream:
            return {"kind": "ended", "html": "", "caption": None, "message": "No stream was named."}
        try:
            image = load_data_url(frame.get("image"), max_bytes=FRAME_BYTES, draft_size=self.settings.frame_side)
        except ImageError as err:
            return {"kind": "dropped", "html": "", "caption": None, "message": f"The frame could not be read: {err}"}
        answer = self.streams.offer(stream, client_of(request), image)  # the corrections' rate limit's key
        if answer.kind == "ended":
            return {"kind": "ended", "html": output.message_html(answer.message), "caption": None,
                    "message": answer.message}
        if answer.result is None or answer.caption is None:
            return {"kind": answer.kind, "html": "", "caption": None, "message": answer.message}
        result = {**answer.result, "caption": answer.caption, "image": "camera"}
        picture = boxed_photo(result.pop("picture"), result.get("boxes"), self.settings.frame_side)
        return {"kind": answer.kind, "html": output.shaded_html([result], [picture]), "caption": answer.caption,
                "message": ""}

    def live_stop(self, stream: str) -> bool:
        """Live pressed off: the stream ends (and frees the visitor's place) now."""
        self.streams.stop(str(stream)[:64])
        return True

    def build(self) -> gr.HTML:
        """The controls, under the Caption button; the page (``live.js``) shows each live
        caption in the caption area, mirrors every caption into its live region and speaks
        it when Read aloud is on."""
        settings = self.settings
        data = (f"data-side='{settings.frame_side}' data-every='{int(settings.every * 1000)}' "
                f"data-limit='{html.escape(f'{settings.max_seconds:g}')}'")

        def live_frame(frame: dict, request: gr.Request = None) -> dict:  # Gradio marks the function itself
            return self.live_frame(frame, request)

        def live_stop(stream: str) -> bool:
            return self.live_stop(stream)

        return gr.HTML(static("live.html").replace("data-settings", data), js_on_load=static("live.js"),
                       css_template=static("live.css"), elem_id="caption-live",
                       server_functions=[live_frame, live_stop])
