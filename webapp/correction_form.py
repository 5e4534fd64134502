"""Correcting a caption: under each caption the page shows it as an editable text box, a
consent box and Save; the ``/correct`` API endpoint takes (photo, caption, consent). Both
call ``feedback.CorrectionService``, which checks everything and stores nothing it
refuses: the page says why in the form, a client gets a ``gr.Error``."""

from __future__ import annotations

import html
import os
from functools import partial
from pathlib import Path

import gradio as gr

from captioner.feedback import MAX_CAPTION, Correction, CorrectionError, CorrectionService, unwritable
from lstmkit.service import InputError
from webapp.common import beam_of, paths_of

SHOW_NOTE = """() => { let form = document.activeElement;
  while (form && !(form.querySelector && form.querySelector('.correction-note'))) form = form.parentElement;
  const note = form && form.querySelector('.correction-note');
  if (note) note.scrollIntoView({block: 'center'}); }"""  # what Save just said, in view


def consent_label(repo: str | None) -> str:
    """The consent box, saying where the photo and caption go: this app's server, and where
    ``$CAPTIONER_FEEDBACK_REPO`` is set, a Hugging Face dataset repository whose history
    keeps them after a removal (until squashed)."""
    if not repo:
        return "Store this photo and my caption on this app's server to improve the captioner"
    return (f"Store this photo and my caption to improve the captioner, on this app's server and in the Hugging "
            f"Face dataset repository {repo} (its history keeps a copy even after they are removed)")


def trusted_hops() -> int:
    """How many proxies in front of the app append to X-Forwarded-For and are trusted:
    ``$CAPTIONER_TRUSTED_HOPS``, else 1 on a Hugging Face Space (``$SPACE_ID``), else 0."""
    try:
        return max(0, int(os.environ.get("CAPTIONER_TRUSTED_HOPS", "1" if os.environ.get("SPACE_ID") else "0")))
    except ValueError:
        return 1 if os.environ.get("SPACE_ID") else 0


def client_of(request: gr.Request | None) -> str:
    """Who is asking, for the rate limit. A proxy appends the address it saw to
    X-Forwarded-For, after whatever the client sent, so only the last ``trusted_hops()``
    addresses were written by proxies we trust: the client is the one the outermost
    trusted proxy added (on a Space, the last). With no trusted proxy: the connection's
    address (uvicorn already takes it from the header of a proxy on the loopback address)."""
    if request is None:
        return "local"
    socket = getattr(request.client, "host", None) or "unknown"
    hops = trusted_hops()
    headers = request.headers or {}
    values = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else \
        [headers.get("x-forwarded-for", "")]
    forwarded = [a.strip() for value in values for a in str(value).split(",") if a.strip()]
    if not hops or not forwarded:
        return socket
    return forwarded[-min(hops, len(forwarded))][:64]


def stored_message(correction: Correction) -> str:
    return (f"Stored as correction {correction.id}: your caption \u201c{correction.caption}\u201d and the photo "
            f"(re-encoded, without its EXIF data), beside the model's caption. Thank you.")


def path_of(file) -> str | None:
    if file is None:
        return None
    return file if isinstance(file, str) else getattr(file, "path", None) or getattr(file, "name", None)


class CorrectionForm:
    def __init__(self, corrections: CorrectionService):
        self.corrections = corrections

    def correct(self, photo, caption: str, consent: bool, request: gr.Request = None) -> tuple[str, dict]:
        """Store a correction: the photo, the person's caption, their consent (must be
        true). Returns a sentence saying what was stored and the record (its ``id``,
        ``photo``, ``caption``, ``model_caption``, ``checkpoint``, ``decoding``,
        ``created``). A refusal raises ``gr.Error`` with the reason and stores nothing."""
        try:
            correction = self.corrections.correct(path_of(photo), caption, consent, client_of(request))
        except (CorrectionError, InputError) as err:
            raise gr.Error(str(err), print_exception=False) from err
        except OSError as err:  # the store says why in its own words; this is what it did not foresee
            raise gr.Error(unwritable(err).args[0], print_exception=False) from err
        return stored_message(correction), correction.__dict__

    def save_on_page(self, index: int, name: str, files, caption: str, consent: bool, decoding: str,
                     beam_width, request: gr.Request = None) -> str:
        """Save under the ``index``-th caption (of the photo called ``name``), decoded as the
        page asked; the answer, stored or refused, is said in the form."""
        paths = paths_of(files)
        if index >= len(paths) or Path(paths[index]).name != name:
            return note("The photos changed since this caption was written; caption them again first.", False)
        beam = beam_of(decoding, beam_width)
        try:
            correction = self.corrections.correct(paths[index], caption, consent, client_of(request), beam)
        except (CorrectionError, InputError) as err:
            return note(str(err), False)
        except OSError as err:
            return note(unwritable(err).args[0], False)
        return note(stored_message(correction), True)

    def build(self, files: gr.File, results: gr.JSON, decoding: gr.Radio, beam: gr.Slider) -> None:
        """The forms, one under each caption of ``results`` (redrawn whenever they change),
        and the hidden ``/correct`` endpoint."""

        @gr.render(inputs=[results], triggers=[results.change])
        def forms(items):
            good = [(i, r) for i, r in enumerate(items or []) if isinstance(r, dict) and r.get("caption")]
            for i, r in good:
                with gr.Group(elem_classes=["correction"]):
                    label = "Wrong? Correct the caption" + (f" of {r['image']}" if len(items) > 1 else "")
                    text = gr.Textbox(value=r["caption"], label=label, max_lines=3, max_length=MAX_CAPTION,
                                      interactive=True, elem_classes=["correction-caption"])
                    consent = gr.Checkbox(value=False, label=consent_label(self.corrections.repo), interactive=True,
                                          elem_classes=["correction-consent"])
                    save = gr.Button("Save", size="sm", elem_classes=["correction-save"])
                    said = gr.HTML(elem_classes=["correction-said"], min_height=0)
                save.click(partial(self.save_on_page, i, r["image"]), [files, text, consent, decoding, beam], said,
                           api_name=False, concurrency_id="correct", concurrency_limit=16).then(None, js=SHOW_NOTE)

        photo = gr.File(visible=False, file_count="single", label="photo")
        caption, consent = gr.Textbox(visible=False, label="caption"), gr.Checkbox(visible=False, label="consent")
        message, record = gr.Markdown(visible=False, label="message"), gr.JSON(visible=False, label="record")
        api = gr.Button(visible=False)
        api.click(self.correct, [photo, caption, consent], [message, record], api_name="correct",
                  concurrency_id="correct", concurrency_limit=16)


def note(text: str, stored: bool) -> str:
    colour = "#166534" if stored else "#b91c1c"
    return f"<div class='correction-note' style='color: {colour}'>{html.escape(text)}</div>"
