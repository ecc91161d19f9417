"""The ``videos`` table's shared rules, used by both sources (``ingest``, ``crawl``), the media
stages and ``category_select``: a row from a yt-dlp info dict, the caption choice, the
category rule and the ffprobe of a media file (docs/recipes.md, "ingest" and "crawl").
"""
from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from typing import Any, Iterable, NamedTuple, Sequence

#: the caption kinds in the default order of preference (unknown: neither the info dict nor
#: the file says whether a person or the recogniser wrote it)
CAPTION_KINDS = ("manual", "unknown", "auto")


class MediaProbeError(RuntimeError):
    """ffprobe could not read the media file (corrupt, truncated or not media)."""


def video_row(info: dict[str, Any], *, video_id: str, source: str, url: str | None = None) -> dict[str, Any]:
    """A :data:`schemas.VIDEOS` row from a yt-dlp info dict (possibly empty); caption and media
    fields are null until a stage fills them. Fields of the wrong type are dropped, not trusted:
    metadata is untrusted input."""
    cats = info.get("categories")
    duration = info.get("duration")
    text = {k: info.get(k) if isinstance(info.get(k), str) else None for k in ("title", "language")}
    return {
        "video_id": video_id, "source": source,
        "url": info.get("webpage_url") or info.get("original_url") or url,
        "title": text["title"],
        "channel": info.get("channel") or info.get("uploader"),
        "categories": [c for c in cats if isinstance(c, str)] if isinstance(cats, list) else None,
        "duration": float(duration) if isinstance(duration, (int, float)) else None,
        "language": text["language"],
        "caption_kind": None, "caption_format": None, "caption_path": None,
        "media_path": None, "media_size_bytes": None, "width": None, "height": None, "fps": None, "has_audio": None,
    }


# -- captions -------------------------------------------------------------------------------

class Caption(NamedTuple):
    """One caption track a source could use: ``kind`` (manual | auto | unknown), ``lang`` (the
    track tag, ``en``, ``en-US``, ``en-orig``), ``fmt`` (json3 | srv3 | vtt | srt), ``lang_rank``
    (the source's order among languages, lower first) and ``path`` (a file, when on disk)."""
    kind: str
    lang: str
    fmt: str
    lang_rank: int = 0
    path: str | None = None


def choose_caption(candidates: Iterable[Caption], kinds: Sequence[str] = CAPTION_KINDS,
                   formats: Sequence[str] = ("json3", "srv3", "vtt", "srt")) -> Caption | None:
    """The caption to use: kinds earlier in ``kinds`` first, then formats earlier in
    ``formats`` (json3 carries word times), then the source's ``lang_rank``, then the tag.
    Candidates of a kind or format not listed are never chosen; None when none is left."""
    usable = [c for c in candidates if c.kind in kinds and c.fmt in formats]
    if not usable:
        return None
    return min(usable, key=lambda c: (list(kinds).index(c.kind), list(formats).index(c.fmt), c.lang_rank, c.lang))


def language_matches(lang: str, languages: Sequence[str] = ("en",)) -> bool:
    """Whether a caption or video language tag is one of ``languages`` (prefix match on
    ``-``: ``en`` matches ``en-US`` and ``en-orig``)."""
    return any(lang == want or lang.startswith(want + "-") for want in languages)


# -- categories -----------------------------------------------------------------------------

def category_rejection(categories: list[str] | None, allow: Sequence[str] | None,
                       deny: Sequence[str] = ()) -> tuple[str, str] | None:
    """The one category rule of the crawl filter and ``category_select``: ``(reason, detail)``
    when the video is dropped, else None. Matching ignores case and surrounding spaces. An
    empty or null ``allow`` keeps every category; ``deny`` wins over ``allow``.

    Reasons: ``category_excluded`` (a denied category, or none of the allowed ones),
    ``no_category`` (an allow list is set and the metadata lists no category).
    """
    have = [c.strip() for c in categories or [] if isinstance(c, str) and c.strip()]
    folded = {c.casefold() for c in have}
    hit = sorted(c for c in deny if c.strip().casefold() in folded)
    if hit:
        return "category_excluded", f"category {hit[0]!r} is excluded"
    if not allow:
        return None
    if not have:
        return "no_category", "the video metadata lists no category"
    if folded & {c.strip().casefold() for c in allow}:
        return None
    return "category_excluded", f"categories {have} not in the selected {len(allow)}"


# -- media ----------------------------------------------------------------------------------

def probe_media(path: str, timeout_s: float = 60) -> dict[str, Any]:
    """ffprobe a media file: ``media_path``, ``media_size_bytes``, ``duration`` (s),
    ``width``/``height`` (pixels), ``fps`` and ``has_audio``.

    Raises:
        MediaProbeError: ffprobe fails or times out, or the file has no decodable stream or
            duration.
    """
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", path]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MediaProbeError(f"{path}: ffprobe timed out after {timeout_s:.0f} s") from None
    except OSError as exc:
        raise MediaProbeError(f"{path}: cannot run ffprobe ({exc}); install ffmpeg") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaProbeError(f"{path}: unreadable media ({msg[-1] if msg else 'ffprobe failed'})")
    data = json.loads(proc.stdout or b"{}")
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and s.get("disposition", {}).get("attached_pic") != 1), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise MediaProbeError(f"{path}: no audio or video stream")
    duration = fmt.get("duration") or (video or audio).get("duration")
    if duration is None:
        raise MediaProbeError(f"{path}: media has no duration (truncated?)")
    fps = None
    if video is not None and video.get("avg_frame_rate") not in (None, "0/0"):
        fps = float(Fraction(video["avg_frame_rate"]))
    size = fmt.get("size")
    return {
        "media_path": path,
        "media_size_bytes": int(size) if size else None,
        "duration": float(duration),
        "width": int(video["width"]) if video else None,
        "height": int(video["height"]) if video else None,
        "fps": fps,
        "has_audio": audio is not None,
    }


def has_audio(path: str, timeout_s: float = 60) -> bool | None:
    """Whether the media file has an audio stream; None when ffprobe cannot tell."""
    try:
        return probe_media(path, timeout_s)["has_audio"]
    except MediaProbeError:
        return None
