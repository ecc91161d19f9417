"""The conversation record: what one shard sample and one JSONL line hold.

Pure and stdlib-only, so ``train/`` can import it without the pipeline.

Conversation (docs/recipes.md#shard; reference ``data/production/to_conversation.py``)::

    [{"role": "user", "content": [
        {"type": "video", "video": <path or url>, "video_start": s, "video_end": s},
        {"type": "text", "text": <query or "">, "previous": <text>, "title": <title>, "category": <cat>}]},
     {"role": "assistant", "content": [
        {"type": "text_stream", "text_stream": [[start, end, word], ...]}]}]

* ``video_start``/``video_end`` are the clip's ``start``/``end``: seconds on the *media
  clock*, the clock of the whole source video (the reference takes the first word's start
  and the last word's end; our clips start and end on those words).
* ``text_stream`` holds one ``[start_s, end_s, word]`` per word, also on the media clock.
* ``text``, ``previous``, ``title`` and ``category`` are strings; a missing value is ``""``
  (the reference's reader concatenates them into the prompt).

Shard sample JSON (the ``json`` member of a sample, :func:`sample_json`)::

    {"clip_id": str,
     "conversation": <as above>,
     "metadata": {every other clip field except "words": video_id, start, end, previous,
                  title, category, transcript_source, url, media_path, media_offset,
                  has_audio, wps, lm_loss, lang, lang_score, talking_head_ratio,
                  talking_head_p_yes, query, query_prompt_tokens, query_completion_tokens, ...},
     "media": {"member": "mp4" | null, "start": <clip start, s on the media clock>}}

``media.member`` names the sample's member holding the clip's media (``"mp4"``) or is
``null`` when the sample has none (then decode ``conversation[0].content[0].video``).
``media.start`` maps the member's clock to the media clock: member time 0 is media-clock
time ``media.start``, so a media-clock time ``t`` (``video_start``, a word's start) is at
member time ``t - media.start``. Non-finite floats in ``metadata`` become ``null`` so the
JSON stays strict.
"""
from __future__ import annotations

import math
from typing import Any

#: Clip fields that do not go into ``metadata`` (they are elsewhere in the record).
_NOT_METADATA = ("clip_id", "words")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def text_stream(words: list[dict[str, Any]] | None) -> list[list]:
    """``[[start_s, end_s, text], ...]`` from clip ``words`` (dicts with start, end, text).

    Raises:
        ValueError: a word has a missing or non-finite time, or no text.
    """
    stream = []
    for k, w in enumerate(words or []):
        start, end, text = w.get("start"), w.get("end"), w.get("text")
        if start is None or end is None or not math.isfinite(start) or not math.isfinite(end):
            raise ValueError(f"words[{k}] has no finite time (start={start!r}, end={end!r})")
        if text is None:
            raise ValueError(f"words[{k}] has no text")
        stream.append([float(start), float(end), str(text)])
    return stream


def conversation(clip: dict[str, Any], video: str) -> list[dict[str, Any]]:
    """The two-turn conversation record of one clip (layout in the module docstring).

    Args:
        clip: a :data:`schemas.CLIPS` row (``start``, ``end`` in seconds on the media clock,
            ``words``, ``query``, ``previous``, ``title``, ``category``).
        video: the media reference for the reader: a path or a URL.

    Raises:
        ValueError: clip start/end missing or non-finite, or a bad word (see :func:`text_stream`).
    """
    start, end = clip.get("start"), clip.get("end")
    if start is None or end is None or not math.isfinite(start) or not math.isfinite(end):
        raise ValueError(f"clip {clip.get('clip_id')!r} has no finite start/end ({start!r}, {end!r})")
    return [
        {"role": "user", "content": [
            {"type": "video", "video": video, "video_start": float(start), "video_end": float(end)},
            {"type": "text", "text": _text(clip.get("query")), "previous": _text(clip.get("previous")),
             "title": _text(clip.get("title")), "category": _text(clip.get("category"))},
        ]},
        {"role": "assistant", "content": [
            {"type": "text_stream", "text_stream": text_stream(clip.get("words"))},
        ]},
    ]


def _strict(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (``json.dumps`` would write invalid ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def sample_json(clip: dict[str, Any], video: str, mp4_member: bool) -> dict[str, Any]:
    """The ``json`` member of a shard sample (layout in the module docstring).

    Args:
        clip: a :data:`schemas.CLIPS` row.
        video: the media reference written into the conversation (path or URL).
        mp4_member: whether the sample also holds an ``mp4`` member whose time 0 is the
            clip start.

    Raises:
        ValueError: as :func:`conversation`.
    """
    return {
        "clip_id": clip["clip_id"],
        "conversation": conversation(clip, video),
        "metadata": _strict({k: v for k, v in clip.items() if k not in _NOT_METADATA}),
        "media": {"member": "mp4" if mp4_member else None, "start": float(clip["start"])},
    }


__all__ = ["conversation", "sample_json", "text_stream"]
