"""The LiveCC streaming interleave: frames at 2 FPS, each 1 s window followed by the words spoken in it.

Source: docs/recipes.md#training and the reference ``data/lmm_dataset.py``
(``preprocess_conversation_stream``, ``get_phrase_before_timestamp``, ``preprocess_text``).

Given the record's text stream ``[[start_s, end_s, word], ...]`` and the media-clock timestamps
of the decoded frames (strict 2 FPS, even count; see :mod:`train.video`):

* turn 0: user ``Time=0.0-3.0s`` + frames 0-5 + the query; assistant: the words whose end is at
  or before frame 5's timestamp, then ``" ..."``;
* turn k: user ``Time=t-(t+1)s`` (``t = i / fps``) + frames i, i+1; assistant: the words that
  ended since the previous turn, up to frame i+1's timestamp, then ``" ..."``;
* trailing turns with no words are dropped together with their frames.

Words are taken in stream order: the first word that ends after the window's last frame closes
the window (as in the reference's scan). One deliberate difference: once every word has been
used the reference keeps re-emitting the last word (its returned position never passes the end),
so its trailing turns are never empty; here they are empty and dropped, as docs/recipes.md#training states.

``with_context`` appends the previous transcript (or, when there is none, the title) to the
query: ``f"{query}\\n{title}\\n{previous}".strip()`` with the title blanked when previous is set.

Everything here is pure: plain data in, plain data out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

#: Frames in the first window: 3 s at 2 FPS (reference ``initial_fps_frames = int(FPS) * 3``).
INITIAL_FRAMES = 6
#: Frames in every later window: 1 s at 2 FPS (reference ``streaming_fps_frames = int(FPS)``).
STREAMING_FRAMES = 2
#: Appended to every assistant turn: the commentary goes on.
CONTINUATION = " ..."


@dataclass(frozen=True)
class StreamWindow:
    """One user/assistant turn pair of the interleave.

    ``time_start_s``/``time_end_s``: the window on the clip's own clock (what ``Time=`` shows);
    ``frame_start``/``frame_end``: slice [start, end) of the decoded frames;
    ``words``: the words it answers with; ``text``: the assistant text (words + ``" ..."``).
    """

    time_start_s: float
    time_end_s: float
    frame_start: int
    frame_end: int
    words: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"Time={self.time_start_s:.1f}-{self.time_end_s:.1f}s"

    @property
    def text(self) -> str:
        return " ".join(self.words) + CONTINUATION


@dataclass
class Interleaved:
    """A conversation ready for the chat template.

    ``messages``: chat messages; each ``{"type": "video"}`` element is a placeholder for the
    frames in the matching entry of ``frame_slices`` ([start, end) into the decoded frames).
    """

    messages: list[dict[str, Any]]
    frame_slices: list[tuple[int, int]]
    windows: list[StreamWindow]


def is_stream(record: list[dict[str, Any]]) -> bool:
    """True when the record's assistant turn is a ``text_stream`` (a LiveCC clip)."""
    return any(
        element.get("type") == "text_stream"
        for message in record if message.get("role") == "assistant"
        for element in message.get("content", []) if isinstance(element, dict)
    )


def query_text(element: dict[str, Any], with_context: bool) -> str:
    """The user text of ``element``, with the previous transcript or title appended when asked."""
    text = element.get("text") or ""
    if with_context and ("title" in element or "previous" in element):
        previous = element.get("previous") or ""
        title = "" if previous else (element.get("title") or "")
        return f"{text}\n{title}\n{previous}".strip()
    return text


def stream_windows(
    text_stream: Sequence[Sequence[Any]],
    frame_pts_s: Sequence[float],
    *,
    fps: float = 2.0,
    initial_frames: int = INITIAL_FRAMES,
    streaming_frames: int = STREAMING_FRAMES,
) -> list[StreamWindow]:
    """Split ``text_stream`` ([start_s, end_s, word] on the media clock) over the frame windows.

    ``frame_pts_s``: timestamps of the decoded frames, media clock, seconds. Returns the windows
    left after dropping trailing ones without words. Raises ValueError when there are fewer than
    ``initial_frames`` frames or when no word falls inside the clip.
    """
    n = len(frame_pts_s)
    if n < initial_frames:
        raise ValueError(f"clip has {n} frames, fewer than the first window's {initial_frames}")
    bounds = [(0, initial_frames)]
    bounds += [(i, min(i + streaming_frames, n)) for i in range(initial_frames, n, streaming_frames)]
    windows, w = [], 0
    for start, end in bounds:
        last_pts = frame_pts_s[end - 1]
        words = []
        while w < len(text_stream) and float(text_stream[w][1]) <= last_pts:
            words.append(str(text_stream[w][2]).strip())
            w += 1
        span = initial_frames if start == 0 else streaming_frames
        windows.append(StreamWindow(start / fps, (start + span) / fps, start, end, tuple(words)))
    while windows and not windows[-1].words:
        windows.pop()
    if not windows:
        raise ValueError("no word of the text stream ends inside the clip")
    return windows


def stream_conversation(
    record: list[dict[str, Any]],
    frame_pts_s: Sequence[float],
    *,
    with_context: bool = False,
    fps: float = 2.0,
    initial_frames: int = INITIAL_FRAMES,
    streaming_frames: int = STREAMING_FRAMES,
) -> Interleaved:
    """Turn a LiveCC record (user: video + query; assistant: text stream) into the interleave.

    Raises ValueError when the record lacks its video, query or text stream, or via
    :func:`stream_windows`.
    """
    user = next((m for m in record if m.get("role") == "user"), None)
    assistant = next((m for m in record if m.get("role") == "assistant"), None)
    if user is None or assistant is None:
        raise ValueError("a stream record needs a user and an assistant message")
    if not any(e.get("type") == "video" for e in user["content"]):
        raise ValueError("the stream record's user message has no video element")
    query = next((e for e in user["content"] if e.get("type") == "text"), {"text": ""})
    text_stream = next(e["text_stream"] for e in assistant["content"] if e.get("type") == "text_stream")
    windows = stream_windows(
        text_stream, frame_pts_s, fps=fps, initial_frames=initial_frames, streaming_frames=streaming_frames
    )
    messages: list[dict[str, Any]] = []
    for k, window in enumerate(windows):
        content = [{"type": "text", "text": window.label}, {"type": "video"}]
        if k == 0:
            content.append({"type": "text", "text": query_text(query, with_context)})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": window.text}]})
    return Interleaved(messages, [(w.frame_start, w.frame_end) for w in windows], windows)


def plain_conversation(
    record: list[dict[str, Any]], *, with_context: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A non-streaming conversation, unchanged except for ``with_context`` on user texts.

    Returns ``(messages, media)``: ``media`` lists the record's image and video elements in
    order of appearance (the caller loads them); in ``messages`` they become placeholders
    ``{"type": "image"}`` / ``{"type": "video"}``. String contents pass through.
    """
    messages, media = [], []
    for message in record:
        content = message.get("content")
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        out = []
        for element in content:
            kind = element.get("type") or ("image" if "image" in element else "video" if "video" in element else "text")
            if kind in ("image", "video"):
                media.append({**element, "type": kind})
                out.append({"type": kind})
            elif kind == "text":
                text = query_text(element, with_context) if message["role"] == "user" else element.get("text", "")
                out.append({"type": "text", "text": text})
            else:
                raise ValueError(f"unsupported content type {kind!r} in a plain conversation")
        messages.append({"role": message["role"], "content": out})
    return messages, media
