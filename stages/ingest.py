"""Local ingest: a folder in yt-dlp naming becomes the ``videos`` table (docs/recipes.md#ingest).

Files are grouped by the id before the first dot of their name:

* ``<id>.info.json``  -- optional metadata (title, categories, duration, channel, language, url)
* ``<id>.<lang>.<fmt>`` -- captions, ``fmt`` in json3 | srv3 | vtt | srt
* ``<id>.<ext>``      -- optional media (mp4, webm, mkv, m4a, ...), probed with ffprobe

Caption choice: English manual over English auto, then json3 > srv3 > vtt > srt. Whether a
caption is manual or auto comes from the info.json (``subtitles`` vs ``automatic_captions``),
else from the file itself (inline word timings mean auto).

Ids come from untrusted names and metadata: they are validated before any path is built
from them. Bad items (unsafe id, unreadable info.json, corrupt media, no caption) become
error or rejected rows; the part goes on.
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal

import fsspec
from pydantic import Field

import schemas
from pipeline.stage import Rejected, Resources, Stage, StageConfig
from stages.videos import Caption, choose_caption, language_matches, probe_media, video_row

#: YouTube ids are 11 chars of [A-Za-z0-9_-]; local archives get the same alphabet, longer.
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CAPTION_FORMATS = ("json3", "srv3", "vtt", "srt")
MEDIA_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "m4a", "mp3", "opus", "ogg", "wav", "flac")


class UnsafeIdError(ValueError):
    """A video id that could escape the corpus root or is not a plain token."""


class LocalIngestConfig(StageConfig):
    path: str = Field(..., description="folder in yt-dlp naming (local path or fsspec URL)",
                      json_schema_extra={"local_path": True})
    languages: list[str] = Field(["en"], description="caption languages accepted (prefix match: en matches en-US)")
    caption_formats: list[Literal["json3", "srv3", "vtt", "srt"]] = list(CAPTION_FORMATS)
    prefer: Literal["manual", "auto"] = "manual"
    require_captions: bool = Field(True, description="False for corpora that re-transcribe (SFT): media alone is enough")
    probe_media: bool = True
    ffprobe_timeout_s: float = Field(60, gt=0)


class LocalIngest(Stage):
    """Source stage: one ``videos`` row per id found in ``path``."""

    name = "ingest"
    Config = LocalIngestConfig
    input_schema = None
    output_schema = schemas.VIDEOS
    resources = Resources(num_cpus=1, batch_size=16)
    replan = True  # listing a folder is cheap: pick up videos added since the last run

    def plan(self) -> list[dict[str, Any]]:
        fs, root = fsspec.core.url_to_fs(self.config.path)
        if not fs.isdir(root):
            raise FileNotFoundError(f"ingest.path {self.config.path!r} is not a folder")
        files = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        return group_files(files, self.config.path)

    def process(self, item: dict[str, Any]):
        cfg = self.config
        vid = item["video_id"]
        check_id(vid)
        info: dict[str, Any] = {}
        if item.get("info"):
            info = read_info(item["info"])
            if info.get("id") is not None and str(info["id"]) != vid:
                check_id(str(info["id"]))  # a hostile id in metadata is an error even if the file name is fine
        row = video_row(info, video_id=vid, source="local")
        if item.get("media") and cfg.probe_media:
            row.update(probe_media(item["media"], cfg.ffprobe_timeout_s))
        kinds = ("manual", "unknown", "auto") if cfg.prefer == "manual" else ("auto", "unknown", "manual")
        caption = choose_caption(caption_files(item.get("captions", []), info, cfg.languages), kinds,
                                 cfg.caption_formats)
        if caption is None and not cfg.require_captions:
            if row.get("media_path"):
                yield row
            else:
                yield Rejected(row, "no_media", "no media file (or probe_media is off) and captions are not used")
            return
        if caption is None:
            langs = sorted({c["lang"] for c in item.get("captions", [])})
            yield Rejected(row, "no_caption", f"no {'/'.join(cfg.languages)} caption in {cfg.caption_formats}"
                           + (f"; found languages {langs}" if langs else "; no caption files"))
            return
        row.update(caption_path=caption.path, caption_format=caption.fmt, caption_kind=caption.kind,
                   language=row.get("language") or caption.lang)
        yield row


# -- pure helpers -----------------------------------------------------------------------

def check_id(video_id: str) -> str:
    """Return ``video_id`` if it is a safe token.

    Raises:
        UnsafeIdError: path separators, dots, empty or overlong ids.
    """
    if not isinstance(video_id, str) or not SAFE_ID.match(video_id):
        raise UnsafeIdError(f"unsafe video id {video_id!r}: ids must match {SAFE_ID.pattern}")
    return video_id


def group_files(names: list[str], folder: str) -> list[dict[str, Any]]:
    """Group yt-dlp-named files by id. Returns items ``{video_id, info, media, captions}``
    with full paths; captions are ``{path, lang, format}``. Names that fit no pattern are ignored."""
    items: dict[str, dict[str, Any]] = {}
    sep = "" if folder.endswith("/") else "/"
    for name in names:
        if name.startswith(".") or ".tmp-" in name or name.endswith((".part", ".ytdl")):
            continue
        vid, _, rest = name.partition(".")
        if not rest:
            continue
        entry = items.setdefault(vid, {"video_id": vid, "info": None, "media": None, "captions": []})
        path = f"{folder}{sep}{name}"
        ext = rest.rsplit(".", 1)[-1].lower()
        if rest == "info.json":
            entry["info"] = path
        elif ext in CAPTION_FORMATS and rest.count(".") >= 1:
            entry["captions"].append({"path": path, "lang": rest.rsplit(".", 1)[0], "format": ext})
        elif ext in MEDIA_EXTENSIONS and rest.count(".") == 0:
            entry["media"] = entry["media"] or path
        else:
            continue
    return [items[k] for k in sorted(items)]


def read_info(path: str) -> dict[str, Any]:
    """Load an info.json. Raises ValueError naming the file when it is not a JSON object."""
    with fsspec.open(path, "rb") as f:
        data = f.read()
    try:
        info = json.loads(data.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: info.json is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: info.json must hold a JSON object")
    return info


def caption_kind(path: str, lang: str, info: dict[str, Any]) -> str:
    """``manual`` | ``auto`` | ``unknown`` for one caption file (info.json first, then content)."""
    if lang in (info.get("subtitles") or {}):
        return "manual"
    if lang in (info.get("automatic_captions") or {}) or lang.endswith("-orig"):
        return "auto"
    try:
        with fsspec.open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return "unknown"
    if b"tOffsetMs" in head or re.search(rb"<\d\d:\d\d:\d\d\.\d\d\d><c", head) or b"<c.color" in head:
        return "auto"
    return "unknown"


def caption_files(captions: list[dict[str, Any]], info: dict[str, Any], languages: list[str]) -> list[Caption]:
    """The caption files (``{path, lang, format}``) in an accepted language, as candidates for
    :func:`stages.videos.choose_caption`; the exact tags of ``languages`` rank first."""
    return [Caption(caption_kind(c["path"], c["lang"], info), c["lang"], c["format"],
                    0 if c["lang"] in languages else 1, c["path"])
            for c in captions if language_matches(c["lang"], languages)]
