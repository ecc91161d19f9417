"""The media phase: download only what surviving clips need (docs/recipes.md#media).

Runs after clipping and the text filters, on :data:`schemas.CLIPS` rows. The clips of a
part are grouped by video; a video is downloaded only if it still has clips and no media
yet, and with ``sections: true`` (default) only the time ranges those clips cover, through
yt-dlp's ``download_ranges`` (ffmpeg reads just those byte ranges over HTTP).

Sections (:func:`plan_sections`): each clip's ``[start - margin_s, end + margin_s]``,
clamped to ``[0, duration]``, merged when they overlap or lie closer than ``merge_gap_s``
(one request pays for the moov atom once; fewer files). When the sections would cover
more than ``whole_above_fraction`` (0.8) of a video whose duration the archive knows, the
whole file is downloaded instead (ffmpeg's per-section index and probe reads would cost
more than they save). A section is saved as
``<archive>/sections/<id>.<start_ms>-<end_ms>.<ext>``; a clip whose range an existing
section (or the whole ``<id>.<ext>``) already covers is never downloaded again, so the
finished files are the media phase's archive.

Offsets: each clip row gets ``media_path`` and ``media_offset`` (seconds: the media-clock
time of the file's first presented sample), so clip time ``t`` is at ``t - media_offset``
in the file. A stream-copied section starts at the keyframe before the section start, and
the mp4 edit list yt-dlp's ffmpeg call writes hides the frames before the start, so the
file presents from exactly the section start: ``media_offset = section start``. ffmpeg,
PyAV and browsers honour edit lists; for readers that do not, ``precise_cuts: true``
re-encodes at the cut (yt-dlp's ``force_keyframes_at_cuts``; slower). Whole files have
``media_offset = 0``.

Format (``format``): ``"video"`` -- at most 480p H.264 mp4 with AAC audio (merged into
mp4 when video and audio are separate streams); ``"audio"`` -- audio only (m4a preferred),
for transcription; anything else is passed to yt-dlp as a format spec.

Resume: whole downloads keep ``.part`` files in ``<archive>/.partial/`` and continue with
HTTP Range requests, within a run (truncated responses) and across runs. A failed section
is fetched again as a whole (sections are small).
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

from pydantic import Field

import schemas
from pipeline.stage import Resources, Stage
from stages.crawl.errors import NetworkError, UnknownCrawlError, as_crawl_error
from stages.ratelimit import RateLimiter, backoff_delay
from stages.videos import has_audio
from stages.crawl.ytdl import (
    PARTIAL_DIR, Archive, CollectingLogger, NetConfig, YdlCache, check_video_id, fetch_info, watch_url,
)

log = logging.getLogger(__name__)

#: At most 480p H.264 with AAC; separate streams are merged into mp4.
VIDEO_FORMAT = ("bv[height<=480][vcodec^=avc1]+ba[acodec^=mp4a]"
                "/b[height<=480][vcodec^=avc1][acodec^=mp4a]"
                "/bv[height<=480]+ba/b[height<=480]/b")
AUDIO_FORMAT = "ba[acodec^=mp4a]/ba/b"
MEDIA_EXTS = ("mp4", "mkv", "webm", "m4a", "mp3", "opus", "ogg", "wav")
SECTIONS_DIR = "sections"
TRANSIENT = {"network", "rate_limited"}


class MediaConfig(NetConfig):
    """``stages.media``. Network settings (archive_dir, info_json_source, cookies, proxies,
    rate limit, retries ...) not set here take ``stages.crawl``'s values when the config loads."""
    inherits: ClassVar[dict[str, frozenset[str]]] = {"crawl": frozenset(NetConfig.model_fields) - {"resources"}}

    sections: bool = True
    margin_s: float = Field(1.0, ge=0)
    merge_gap_s: float = Field(10.0, ge=0)
    format: str = "video"
    precise_cuts: bool = False
    section_request_cost: int = Field(4, ge=1)
    whole_above_fraction: float = Field(0.8, ge=0, le=1)


class MediaDownload(Stage):
    """CLIPS -> CLIPS with ``media_path``, ``media_offset`` and ``has_audio`` filled in."""

    name = "media"
    Config = MediaConfig
    input_schema = schemas.CLIPS
    output_schema = schemas.CLIPS
    # network-bound (its threads wait on downloads): no CPU reserved, so its actors run beside the
    # CPU stages' (at most 4 parts in flight)
    resources = Resources(num_cpus=0, batch_size=None, concurrency=4)
    key_field = "clip_id"

    config: MediaConfig

    def setup(self) -> None:
        cfg = self.config
        self.archive = Archive.from_config(cfg, self.context)
        self.limiter = RateLimiter(cfg.rate_limit_key, cfg.requests_per_minute, cfg.burst)
        self._ydls = YdlCache(cfg, self.limiter)
        self._pool: ThreadPoolExecutor | None = None
        self._has_audio: dict[str, bool | None] = {}
        self.bytes_downloaded = 0

    def _ready(self) -> None:
        if not hasattr(self, "archive"):
            self.setup()

    def __getstate__(self):
        # Ship settings only; thread pools and yt-dlp objects are rebuilt by setup().
        return {"config": self.config, "context": self.context}

    def process_batch(self, rows: list[dict[str, Any]]) -> list:
        """The clips (by default a whole part), grouped by video; videos run ``concurrency`` at
        a time."""
        self._ready()
        self._section_names = self.archive.ls(SECTIONS_DIR)  # one listing per part, not per video
        groups: OrderedDict[str, list[int]] = OrderedDict()
        out: list = [None] * len(rows)
        for i, row in enumerate(rows):
            if row.get("media_path") and _readable(row["media_path"]):
                out[i] = [row]  # media already there (e.g. the local source): nothing to do
            else:
                groups.setdefault(str(row.get("video_id")), []).append(i)

        def one(item):
            vid, idx = item
            try:
                return idx, self.download_video(vid, [rows[i] for i in idx])
            except Exception as exc:  # noqa: BLE001 - every clip of this video records it
                return idx, exc

        if self._pool is None:  # kept across parts: its threads keep their yt-dlp objects
            self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="media")
        for idx, res in self._pool.map(one, groups.items()):
            for k, i in enumerate(idx):
                out[i] = res if isinstance(res, BaseException) else [res[k]]
        return out

    # -- one video ----------------------------------------------------------------------------
    def download_video(self, video_id: str, clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The clips of one video with media fields set; downloads what is missing.

        Raises a :class:`~stages.crawl.errors.CrawlError` subclass (category first)."""
        self._ready()
        cfg = self.config
        vid = check_video_id(video_id)
        whole = self._existing_whole(vid)
        if whole:
            return [self._with_media(c, whole, 0.0) for c in clips]
        if not cfg.sections:
            name = self._fetch(vid, clips[0].get("url"), None)[0][0]
            return [self._with_media(c, name, 0.0) for c in clips]
        names = getattr(self, "_section_names", None)
        existing = existing_sections(names if names is not None else self.archive.ls(SECTIONS_DIR), vid)
        spans = [(float(c["start"]), float(c["end"])) for c in clips]
        todo = [s for s in spans if covering(existing, *s) is None]
        if todo:
            info_dur = self._known_duration(vid)
            wanted = plan_sections(todo, cfg.margin_s, cfg.merge_gap_s, info_dur)
            if not existing and covered_fraction(wanted, info_dur) > cfg.whole_above_fraction:
                # Nearly all of it is needed: one plain download beats ffmpeg's per-section reads.
                name = self._fetch(vid, clips[0].get("url"), None)[0][0]
                return [self._with_media(c, name, 0.0) for c in clips]
            for name, a, b in self._fetch(vid, clips[0].get("url"), wanted):
                existing.append((a, b, name))
        out = []
        for c, span in zip(clips, spans):
            hit = covering(existing, *span)
            if hit is None:
                raise UnknownCrawlError(f"{vid}: no section covers clip {span[0]:.1f}-{span[1]:.1f}s")
            a, _b, name = hit
            out.append(self._with_media(c, f"{SECTIONS_DIR}/{name}", a))
        return out

    def _with_media(self, clip: dict[str, Any], name: str, offset_s: float) -> dict[str, Any]:
        row = dict(clip)
        row["media_path"] = self.archive.url(name)
        row["media_offset"] = float(offset_s)
        if name not in self._has_audio:  # probed before upload when we downloaded it
            self._has_audio[name] = has_audio(row["media_path"])
        row["has_audio"] = self._has_audio[name]
        return row

    def _existing_whole(self, vid: str) -> str | None:
        for ext in MEDIA_EXTS:
            if self.archive.exists(f"{vid}.{ext}"):
                return f"{vid}.{ext}"
        return None

    def _known_duration(self, vid: str) -> float | None:
        info = self.archive.read_json(f"{vid}.info.json")
        dur = info.get("duration") if isinstance(info, dict) else None
        return float(dur) if isinstance(dur, (int, float)) else None

    def _fetch(self, vid: str, url: str | None, sections: list[tuple[float, float]] | None) -> list[tuple[str, float, float]]:
        """Download the whole video (``sections`` None) or the given sections, retrying
        transient failures as a whole; returns ``(archive name, start_s, end_s)`` per file
        (the name relative to ``sections/`` for sections)."""
        cfg = self.config
        attempt = 0
        remaining = list(sections) if sections is not None else None
        done: list[tuple[str, float, float]] = []
        while True:
            logger = CollectingLogger()
            try:
                done += self._fetch_once(vid, url or watch_url(vid), remaining, logger)
                return done
            except Exception as exc:  # noqa: BLE001 - categorised below
                err = as_crawl_error(exc, vid, logger.text())
                if err.category not in TRANSIENT or attempt >= cfg.retries:
                    raise err from exc
                if remaining is not None:  # keep what finished; retry the rest
                    got = existing_sections(self.archive.ls(SECTIONS_DIR), vid)
                    remaining = [s for s in remaining if covering(got, *s) is None]
                log.info("media %s: retrying after %s", vid, err)
                time.sleep(backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s))
                attempt += 1

    def _fetch_once(self, vid: str, url: str, sections: list[tuple[float, float]] | None,
                    logger: CollectingLogger) -> list[tuple[str, float, float]]:
        cfg = self.config
        fmt = {"video": VIDEO_FORMAT, "audio": AUDIO_FORMAT}.get(cfg.format, cfg.format)
        work = self.archive.work_dir
        staging = os.path.join(work, PARTIAL_DIR)
        params: dict[str, Any] = {
            "format": fmt, "paths": {"home": staging if sections is not None else work, "temp": staging},
            "outtmpl": {"default": "%(id)s.%(ext)s"}, "overwrites": False,
        }
        if cfg.format == "video":
            params["merge_output_format"] = "mp4"
        if sections is not None:
            params["force_keyframes_at_cuts"] = cfg.precise_cuts
            params["outtmpl"] = {"default": "%(id)s.sec%(section_start)s-%(section_end)s.%(ext)s"}
        ydl = self._ydls.get(logger, vid, mode="sections" if sections is not None else "whole", **params)
        info = fetch_info(ydl, cfg, vid, url)
        if info.get("id") != vid:
            raise UnknownCrawlError(f"{vid}: the info dict is for {info.get('id')!r}")
        if sections is not None:
            duration = info.get("duration")
            if isinstance(duration, (int, float)) and duration > 0:  # name files by what they hold
                sections = [(a, round(min(b, float(duration)), 3)) for a, b in sections if a < duration]
            ranges = [{"start_time": a, "end_time": b} for a, b in sections]
            ydl.params["download_ranges"] = lambda _info, _ydl: ranges
            # ffmpeg's own requests bypass urlopen: charge them to the shared limit here,
            # and probe each chosen format through urlopen first (ffmpeg runs with
            # -loglevel quiet, so its failures would say nothing about the cause).
            self.limiter.acquire(cfg.section_request_cost * len(sections))
            ensure_preflight(ydl)
        result = ydl.process_ie_result(info, download=True)
        downloads = result.get("requested_downloads") or []
        if sections is None:
            path = downloads[0].get("filepath") if downloads else None
            if not path or not os.path.exists(path):
                raise NetworkError(f"{vid}: yt-dlp finished without a file: {logger.text()[-300:]}")
            name = os.path.basename(path)
            self.bytes_downloaded += os.path.getsize(path)
            self._has_audio[name] = has_audio(path)
            self.archive.publish(path, name)
            return [(name, 0.0, float(info.get("duration") or 0.0))]
        out = []
        for a, b in sections:
            d = next((d for d in downloads if abs(float(d.get("section_start") or 0.0) - a) < 1e-6), None)
            path = d.get("filepath") if d else None
            if not path or not os.path.exists(path):
                raise NetworkError(f"{vid}: section {a:.1f}-{b:.1f}s did not arrive: {logger.text()[-300:]}")
            name = section_name(vid, a, b, os.path.splitext(path)[1].lstrip("."))
            self.bytes_downloaded += os.path.getsize(path)
            self._has_audio[f"{SECTIONS_DIR}/{name}"] = has_audio(path)
            if self.archive.local_dir:
                os.makedirs(os.path.join(self.archive.local_dir, SECTIONS_DIR), exist_ok=True)
            self.archive.publish(path, f"{SECTIONS_DIR}/{name}")
            out.append((name, a, b))
        return out


def _preflight_class():
    from yt_dlp.networking import Request
    from yt_dlp.postprocessor.common import PostProcessor

    class Preflight(PostProcessor):
        """A yt-dlp ``before_dl`` post-processor that requests the first byte of every chosen
        format through ``ydl.urlopen`` (rate-limited; 429/5xx retried), so a section download
        fails with the server's real status (404 -> removed, 403 -> forbidden) instead of
        ffmpeg's bare exit code."""

        def __init__(self, downloader=None):
            super().__init__(downloader)
            self.checked: set[str] = set()

        def run(self, info):
            for fmt in info.get("requested_formats") or [info]:
                url = fmt.get("url") or ""
                if url.startswith(("http://", "https://")) and url not in self.checked:
                    headers = {**(fmt.get("http_headers") or {}), "Range": "bytes=0-0"}
                    with self._downloader.urlopen(Request(url, headers=headers)) as resp:
                        resp.read(1)
                    self.checked.add(url)
            return [], info

    return Preflight


_PREFLIGHT_CLS = None


def ensure_preflight(ydl) -> None:
    """Attach one :class:`Preflight` post-processor to ``ydl`` (once) and reset its memory."""
    global _PREFLIGHT_CLS
    pp = getattr(ydl, "_livecc_preflight", None)
    if pp is None:
        if _PREFLIGHT_CLS is None:
            _PREFLIGHT_CLS = _preflight_class()
        pp = ydl._livecc_preflight = _PREFLIGHT_CLS(ydl)
        ydl.add_post_processor(pp, when="before_dl")
    pp.checked.clear()


# -- pure functions ---------------------------------------------------------------------------

def plan_sections(spans: list[tuple[float, float]], margin_s: float, merge_gap_s: float,
                  duration_s: float | None = None) -> list[tuple[float, float]]:
    """Sections (seconds) to download for clip spans ``(start, end)``: each widened by
    ``margin_s``, clamped to ``[0, duration_s]``, merged when closer than ``merge_gap_s``.
    Sorted, disjoint; values rounded to the millisecond (they become file names)."""
    wide = []
    for a, b in spans:
        lo, hi = max(0.0, a - margin_s), b + margin_s
        if duration_s:
            hi = min(hi, duration_s)
        if hi > lo:
            wide.append((lo, hi))
    wide.sort()
    merged: list[list[float]] = []
    for lo, hi in wide:
        if merged and lo - merged[-1][1] <= merge_gap_s:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(round(lo, 3), round(hi, 3)) for lo, hi in merged]


def covered_fraction(sections: list[tuple[float, float]], duration_s: float | None) -> float:
    """Share of the video (0-1) the sections cover; 0 when the duration is unknown."""
    if not duration_s or duration_s <= 0:
        return 0.0
    return min(1.0, sum(b - a for a, b in sections) / duration_s)


def section_name(video_id: str, start_s: float, end_s: float, ext: str) -> str:
    """``<id>.<start_ms>-<end_ms>.<ext>``."""
    return f"{video_id}.{int(round(start_s * 1000))}-{int(round(end_s * 1000))}.{ext}"


def existing_sections(names: list[str], video_id: str) -> list[tuple[float, float, str]]:
    """``(start_s, end_s, name)`` of the finished section files of ``video_id`` among ``names``."""
    pat = re.compile(rf"^{re.escape(video_id)}\.(\d+)-(\d+)\.([A-Za-z0-9]+)$")
    out = []
    for n in names:
        m = pat.match(n)
        if m and m.group(3) in MEDIA_EXTS:
            out.append((int(m.group(1)) / 1000.0, int(m.group(2)) / 1000.0, n))
    return out


def covering(sections: list[tuple[float, float, str]], start_s: float, end_s: float):
    """The tightest section ``(a, b, name)`` with ``a <= start_s`` and ``end_s <= b``, or None."""
    fits = [s for s in sections if s[0] <= start_s + 1e-6 and end_s <= s[1] + 1e-6]
    return min(fits, key=lambda s: s[1] - s[0]) if fits else None


def _readable(path: str) -> bool:
    return "://" in path or os.path.exists(path)


__all__ = ["MediaDownload", "MediaConfig", "plan_sections", "covered_fraction", "section_name", "existing_sections", "covering",
           "VIDEO_FORMAT", "AUDIO_FORMAT"]


class VideoMediaConfig(MediaConfig):
    """``stages.video_media``: as ``stages.media``, but always whole files."""
    sections: Literal[False] = Field(False, description="whole videos: there are no clip ranges yet")


class VideoMediaDownload(MediaDownload):
    """VIDEOS -> VIDEOS with the whole video's ``media_path`` and ``has_audio``: the media phase
    of flows that need whole videos before any clip exists (SFT: transcription precedes
    clipping, docs/recipes.md#video_media). Same network settings, archive and failure categories as
    ``media``; ``sections`` does not apply (there are no clip ranges yet)."""

    name = "video_media"
    Config = VideoMediaConfig
    input_schema = schemas.VIDEOS
    output_schema = schemas.VIDEOS
    key_field = "video_id"

    def download_video(self, video_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = super().download_video(video_id, rows)
        return [{k: v for k, v in r.items() if k != "media_offset"} for r in out]  # videos have no offset
