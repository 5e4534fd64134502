"""What every tab shares: where models and data are, the services the app is built with,
and small UI helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import gradio as gr

ROOT = Path(__file__).resolve().parent.parent
STATIC = Path(__file__).resolve().parent / "static"
NOT_TRAINED = ("**Not trained yet.** This tab's model has not been shipped in `checkpoints/`; "
               "the README says how to train it.")


@dataclass(frozen=True)
class Places:
    """The models: ``checkpoints/`` (or $CAPTIONER_CHECKPOINTS); the data the side tabs
    show: the few real files shipped in ``demos/samples`` (or $CAPTIONER_SAMPLES), so that
    nothing is downloaded while the app runs."""

    checkpoints: Path
    samples: Path

    @classmethod
    def from_environment(cls) -> Places:
        return cls(Path(os.environ.get("CAPTIONER_CHECKPOINTS", ROOT / "checkpoints")),
                   Path(os.environ.get("CAPTIONER_SAMPLES", ROOT / "demos" / "samples")))


@cache
def static(name: str) -> str:
    """A file of ``webapp/static`` (JavaScript, HTML, CSS), read once."""
    return (STATIC / name).read_text(encoding="utf-8")


def user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), print_exception=False)


def event_value(evt: gr.EventData, name: str, default):
    """A value the page's JavaScript sent with ``trigger(...)``, read through EventData's
    attribute access."""
    try:
        return getattr(evt, name)
    except (AttributeError, TypeError):  # not sent, or nothing sent at all
        return default


def not_trained(available: bool) -> bool:
    """Say so, and return True, when a tab's model is not there."""
    if not available:
        gr.Markdown(NOT_TRAINED)
    return not available


def paths_of(files) -> list[str]:
    """Server paths of what the photo input holds: one file or many (the API takes either)."""
    if files is None:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [f if isinstance(f, str) else getattr(f, "path", None) or getattr(f, "name", str(f)) for f in items]


def beam_of(decoding: str, beam_width: float | None) -> float | None:
    """The beam width the caption controls ask for: greedy decoding is a beam of one (which
    search that runs: ``decoding.decode``)."""
    return 1 if str(decoding).lower().startswith("greedy") else beam_width
