"""Live mode's rules, apart from Gradio so they can be tested alone: the settings (limits a
shared Space needs), when a caption has "not really changed", and the streams, one per
visitor, each captioning only its newest frame.

How a frame travels: the page (``static/live.js``) shrinks the camera's picture to at most
``LiveSettings.frame_side`` pixels, sends it as a JPEG data URL and waits for the answer
before it sends the next, so a frame sent is always what the camera sees now. The server
(``LiveStreams.offer``) captions a stream's frames one at a time: a frame that arrives
while the stream's previous one is still being captioned is dropped at once (answered with
nothing), never queued, so no caption trails the scene by more than one caption's time.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Words that say nothing about what is in the scene: a caption that differs from the last
# only in these (or in one other word) has "not really changed" (``same_scene``).
STOP_WORDS = frozenset("""a an the of on in at to with and or is are was be being its it his her their there this
that these those some two three four several many near next by up down top front side while into onto from over
under for as out other each one""".split())


KEPT = ("caption", "words", "probabilities")  # what a kept caption keeps of the answer that wrote it


def content_words(caption: str) -> frozenset[str]:
    """The words of ``caption`` that name something: lower case, stop words left out, a
    plural's final "s" taken off ("horses" and "horse" are the same thing; not that of
    "glass", "tennis" or "cactus")."""
    words = re.findall(r"[a-z]+", caption.lower())
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "is", "us")) else w
                     for w in words if w not in STOP_WORDS)


def same_scene(previous: str | None, new: str) -> bool:
    """Whether ``new`` says what ``previous`` said, so the page keeps the old words (no
    flicker between near-identical sentences): the same content words, in any order, or
    all but one of them the same when the longer has at least three (one word more or
    less, as "a kitchen with a stove" and "a kitchen with a stove and a sink"). "a man riding
    a wave on a surfboard" and "a man riding a surfboard on a wave" are the same; "a dog on a
    couch" and "a cat on a couch" are not, nor are two that swap one thing for another."""
    if previous is None:
        return False
    old, now = content_words(previous), content_words(new)
    return old == now or (max(len(old), len(now)) >= 3 and len(old ^ now) <= 1)


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class LiveSettings:
    """The limits of live mode, from the environment (docs/usage.md):
    ``LIVE_MAX_SECONDS`` (default 300): how long one stream may run before it stops itself;
    ``LIVE_STREAMS_PER_VISITOR`` (default 1): streams one visitor (one address, as
    ``correction_form.client_of`` finds it) may hold at
    once; a newer one takes over from their oldest; ``LIVE_IDLE_SECONDS`` (default 10): a
    stream that sent nothing for this long is over (a closed tab);
    ``LIVE_FRAME_SIDE`` (default 416, the detector's size): the longest side of the frames
    the page sends; ``LIVE_EVERY`` (default 0.25): the fewest seconds between two frames;
    ``LIVE_BEAM`` (default 1, greedy: with 4 viewers on 2 cores it gave each nearly twice the
    captions a second of the checkpoint's beam, docs/benchmarks.md; 0: the checkpoint's own
    width, as uploads get): the beam width of live captions."""

    max_seconds: float = 300.0
    streams_per_visitor: int = 1
    idle_seconds: float = 10.0
    frame_side: int = 416
    every: float = 0.25
    beam: int = 1

    @classmethod
    def from_environment(cls) -> LiveSettings:
        return cls(max_seconds=_env_number("LIVE_MAX_SECONDS", cls.max_seconds),
                   streams_per_visitor=max(1, int(_env_number("LIVE_STREAMS_PER_VISITOR", cls.streams_per_visitor))),
                   idle_seconds=_env_number("LIVE_IDLE_SECONDS", cls.idle_seconds),
                   frame_side=int(min(1024, max(64, _env_number("LIVE_FRAME_SIDE", cls.frame_side)))),
                   every=max(0.05, _env_number("LIVE_EVERY", cls.every)),
                   beam=int(min(10, max(0, _env_number("LIVE_BEAM", cls.beam)))))


@dataclass
class Stream:
    visitor: str
    started: float
    seen: float
    busy: threading.Lock = field(default_factory=threading.Lock)
    caption: str | None = None  # the words the page shows now
    shown: dict = field(default_factory=dict)  # their words and probabilities, kept with them
    captioned: int = 0
    dropped: int = 0
    ended: str | None = None  # why it is over, once it is


@dataclass(frozen=True)
class Answer:
    """What ``LiveStreams.offer`` gives back for one frame: ``kind`` is "new" (a changed
    caption: show ``caption``), "same" (the scene has not really changed: ``caption`` is
    the old words, kept), "dropped" (the stream was busy with an earlier frame) or "ended"
    (``message`` says why); ``result`` is the captioner's answer for the frame (for "same",
    with the kept caption's text, words and probabilities in place of the frame's)."""

    kind: str
    caption: str | None = None
    result: dict | None = None
    message: str = ""


class LiveStreams:
    """Every live stream of the app: at most ``settings.streams_per_visitor`` per visitor,
    each for at most ``settings.max_seconds``, each captioning one frame at a time with
    ``caption(image) -> result dict``; a visitor never has more frames being captioned at
    once than streams allowed (however many stream names they make up), and the app holds
    at most ``MAX_STREAMS`` streams."""

    MAX_STREAMS = 256

    def __init__(self, caption: Callable[[object], dict], settings: LiveSettings | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.caption, self.settings, self.clock = caption, settings or LiveSettings.from_environment(), clock
        self.streams: dict[str, Stream] = {}
        self.working: dict[str, int] = {}  # visitor -> frames being captioned now
        self.lock = threading.Lock()

    def _open(self, stream_id: str, visitor: str, now: float) -> Stream:
        """The stream, opened if new (the visitor's oldest ends when they hold too many)."""
        with self.lock:
            for key, old in list(self.streams.items()):
                if now - old.seen > self.settings.idle_seconds:  # an ended one stays, to say so
                    del self.streams[key]
            stream = self.streams.get(stream_id)
            if stream is None and len(self.streams) >= self.MAX_STREAMS:
                return Stream(visitor, now, now, ended="Live is full on this machine; try again in a minute.")
            if stream is None:
                stream = self.streams[stream_id] = Stream(visitor, now, now)
                mine = sorted((s for s in self.streams.values() if s.visitor == visitor and not s.ended),
                              key=lambda s: s.started)
                for old in mine[:max(0, len(mine) - self.settings.streams_per_visitor)]:
                    old.ended = "Live moved to your newer window (one live stream at a time per visitor)."
            stream.seen = now
            return stream

    def offer(self, stream_id: str, visitor: str, image) -> Answer:
        """One frame of a stream: captioned now if the stream is free, dropped at once if it
        is still captioning an earlier frame; the caption kept when it has not really changed."""
        now = self.clock()
        stream = self._open(stream_id, visitor, now)
        if not stream.ended and now - stream.started > self.settings.max_seconds:
            stream.ended = (f"Live stopped after {self.settings.max_seconds:g} seconds, the limit on this shared "
                            "machine. Press Live to start again.")
        if stream.ended:
            return Answer("ended", message=stream.ended)
        if not self._start_work(stream):
            stream.dropped += 1
            return Answer("dropped")
        try:
            result = self.caption(image)
            stream.captioned += 1
            text = result.get("caption")
            if text is None:
                return Answer("dropped", result=result)
            if same_scene(stream.caption, text):  # the frame's objects and boxes, the kept words
                return Answer("same", stream.caption, {**result, **stream.shown})
            stream.caption = text
            stream.shown = {k: result[k] for k in KEPT if k in result}
            return Answer("new", text, result)
        finally:
            with self.lock:
                self.working[stream.visitor] -= 1
            stream.busy.release()

    def _start_work(self, stream: Stream) -> bool:
        """Take the stream's one place, and one of its visitor's; False when either is taken."""
        if not stream.busy.acquire(blocking=False):
            return False
        with self.lock:
            if self.working.get(stream.visitor, 0) >= self.settings.streams_per_visitor:
                stream.busy.release()
                return False
            self.working[stream.visitor] = self.working.get(stream.visitor, 0) + 1
        return True

    def stop(self, stream_id: str) -> None:
        """The page's Live pressed off (or the page gone): the stream ends now, and frees
        the visitor's place."""
        with self.lock:
            self.streams.pop(stream_id, None)
