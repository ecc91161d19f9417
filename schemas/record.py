"""The conversation record: what one shard sample and one JSONL line hold.

Pure and stdlib-only, so ``train/`` can import it without the pipeline.

Conversation (docs/recipes.md#shard; reference ``data/production/to_conversation.py``)::

    [{"role": "user", "content": [
        {"type": "video", "video": <"<clip_id>.mp4", url or video id>, "video_start": s, "video_end": s},
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
     "metadata": {every other clip field except "words" and "media_path": video_id, start,
                  end, previous, title, category, transcript_source, url, media_offset,
                  has_audio, wps, lm_loss, lang, lang_score, talking_head_ratio,
                  talking_head_p_yes, query, query_prompt_tokens, query_completion_tokens, ...},
     "media": {"member": "mp4" | null, "start": <clip start, s on the media clock>}}

``media.member`` names the sample's member holding the clip's media (``"mp4"``) or is
``null`` when the sample has none (then decode ``conversation[0].content[0].video``).
``media.start`` maps the member's clock to the media clock: member time 0 is media-clock
time ``media.start``, so a media-clock time ``t`` (``video_start``, a word's start) is at
member time ``t - media.start``. Non-finite floats in ``metadata`` become ``null`` so the
JSON stays strict.

**What ``video`` holds** (:func:`video_reference`; docs/recipes.md#shard). Shards are
released as they are, so no path of the build machine may be written into them:

1. the sample has an ``mp4`` member: ``"<clip_id>.mp4"``, the member's own file name, i.e. the
   file ``tar -xf <shard>.tar`` writes. The JSONL line of such a sample is the conversation on
   the *member clock* (:func:`on_member_clock`: every time minus ``media.start``), so the
   reference ``train.py``, run in a folder holding the extracted members, decodes exactly the
   clip; the shard's ``json`` keeps media-clock times plus ``media.start``;
2. no member, and the clip has an ``http(s)`` URL (YouTube): that URL;
3. otherwise (caption-only corpora from a local archive): the video id.

``metadata`` never holds ``media_path`` (a path on the build machine) for the same reason.
"""
from __future__ import annotations

import math
from typing import Any

#: Clip fields that do not go into ``metadata``: elsewhere in the record, or (``media_path``) a
#: path on the build machine, which must never reach a released file.
_NOT_METADATA = ("clip_id", "words", "media_path")


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
        video: the media reference for the reader (:func:`video_reference`).

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
        video: the media reference written into the conversation (:func:`video_reference`).
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


def metadata_fields(clip_fields: list[str]) -> list[str]:
    """The keys of a sample's ``metadata``, in order, for clips with these fields."""
    return [f for f in clip_fields if f not in _NOT_METADATA]


def video_reference(clip: dict[str, Any], mp4_member: bool) -> str:
    """The ``video`` of a clip's conversation record: ``"<clip_id>.mp4"`` when the sample holds
    an ``mp4`` member, else the clip's ``http(s)`` URL, else its ``video_id`` (rule and reasons
    in the module docstring). Never a local path.

    Raises:
        KeyError: the clip has no ``clip_id`` / ``video_id``.
    """
    if mp4_member:
        return member_file_name(clip["clip_id"], "mp4")
    url = clip.get("url")
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return url
    return str(clip["video_id"])


def member_file_name(key: str, member: str) -> str:
    """File name of a sample member in a tar shard (and after ``tar -xf``): ``<key>.<member>``."""
    return f"{key}.{member}"


def on_member_clock(record: list[dict[str, Any]], start_s: float) -> list[dict[str, Any]]:
    """A copy of a conversation record with every time moved from the media clock to a
    member's clock, whose time 0 is media-clock ``start_s`` (``media.start``): ``video_start``
    and ``video_end`` (clamped at 0) and each word's start and end, minus ``start_s``, rounded
    to the microsecond. The input is not changed.
    """
    def shift(t: float) -> float:
        return round(float(t) - start_s, 6)

    out = []
    for message in record:
        content = []
        for element in message["content"]:
            element = dict(element)
            if element.get("type") == "video":
                for k in ("video_start", "video_end"):
                    if element.get(k) is not None:
                        element[k] = max(0.0, shift(element[k]))
            elif element.get("type") == "text_stream":
                element["text_stream"] = [[shift(a), shift(b), w] for a, b, w in element["text_stream"]]
            content.append(element)
        out.append({**message, "content": content})
    return out


def jsonl_conversation(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSONL line of a shard sample (its decoded ``json`` member): the conversation, on
    the member's clock when the sample has a media member (its ``video`` names that member)."""
    media = sample.get("media") or {}
    if media.get("member"):
        return on_member_clock(sample["conversation"], float(media.get("start") or 0.0))
    return sample["conversation"]


__all__ = ["conversation", "sample_json", "text_stream", "video_reference", "member_file_name", "on_member_clock",
           "jsonl_conversation", "metadata_fields"]
