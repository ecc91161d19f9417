"""The ``youtube`` source: discovery, metadata and English captions, no media (issue 3).

Source: docs/recipes.md#crawl; LiveCC (CVPR 2025) builds its pre-training
corpus from YouTube closed captions, so captions come first and media only later, for the
videos (and time ranges) that still have clips after the cheap caption filters
(:mod:`stages.crawl.media`).

:meth:`YoutubeCrawl.plan` lists videos from the configured sources through yt-dlp's Python
API with ``extract_flat`` (nothing but the listing is fetched): ids or URLs inline or in a
file, ``ytsearchN:`` queries, channels and playlists (or any page yt-dlp can list). Items
are ``{"video_id": <11-char id>, "url": <watch URL>}``.

:meth:`YoutubeCrawl.process` fetches one video's info dict, applies the metadata filters,
chooses the caption track and lets yt-dlp write ``<id>.info.json`` and ``<id>.<lang>.<fmt>``
into the archive folder (``archive_dir``, default ``<root>/archive``: the layout the local
ingest reads), then yields one :data:`schemas.VIDEOS` row with ``source="youtube"``.

Caption choice (:func:`caption_tracks`, then :func:`stages.videos.choose_caption`, the rule the
local ingest uses too): English manual captions over English automatic ones
(``caption_kinds``), then format json3 > srv3 > vtt (``caption_formats``; json3 carries
per-word ``tOffsetMs``), then the language order below. Manual English is ``en``, then
other ``en-*``; automatic English is the original speech recognition track (``en-orig``, or
``en`` when it is not a machine translation, i.e. its URL has no ``tlang=``).

Metadata filters (:func:`metadata_rejection`), each a ``_rejected`` reason code:
``duration_out_of_range`` (``min_duration_s`` 30 -- no 30 s clip fits in less -- to
``max_duration_s``), ``category_excluded`` / ``no_category`` (``categories`` allow-list,
``exclude_categories``: :func:`stages.videos.category_rejection`, the rule ``category_select``
uses), ``language_mismatch`` (``languages``; a video without a language
field passes unless ``require_language``), ``live_or_upcoming`` (``exclude_live``:
``is_live``, ``is_upcoming``, ``post_live``), ``age_limit`` (``age_limit`` above
``max_age_limit``, default 17), ``availability`` (``exclude_availability``) and
``no_english_captions``.

Re-runs: ids in yt-dlp's download archive (``<archive>/.ytdlp-archive.txt``, shared with
the yt-dlp CLI's ``--download-archive``) are answered from the archive folder without a
request; failures raise categorised errors (:mod:`stages.crawl.errors`).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from pydantic import Field, field_validator

import schemas
from pipeline.stage import Rejected, Resources, Stage
from stages.crawl.errors import CrawlError, UnknownCrawlError, as_crawl_error
from stages.ratelimit import RateLimiter
from stages.videos import Caption, category_rejection, choose_caption, language_matches, video_row
from stages.crawl.ytdl import (
    ARCHIVE_FILE, PARTIAL_DIR, Archive, CollectingLogger, NetConfig, check_video_id,
    YdlCache, fetch_info, load_download_archive, new_ydl, parse_video_ref, pick_proxy, watch_url,
)

log = logging.getLogger(__name__)

CAPTION_KINDS = ("manual", "auto")  # the info dict always says which
CAPTION_FORMATS = ("json3", "srv3", "vtt", "srt")
REJECTED_DIR = ".rejected"


class CrawlConfig(NetConfig):
    """``stages.crawl``: discovery sources, metadata filters, caption preference, plus the
    network settings of :class:`~stages.crawl.ytdl.NetConfig` (README "Crawl config")."""

    # discovery
    ids: list[str] = Field(default_factory=list)
    ids_file: str | None = Field(None, json_schema_extra={"local_path": True})
    searches: list[str] = Field(default_factory=list)
    search_results: int = Field(50, ge=1)
    channels: list[str] = Field(default_factory=list)
    playlists: list[str] = Field(default_factory=list)
    max_videos_per_source: int | None = Field(None, ge=1)
    # metadata filters
    min_duration_s: float | None = Field(30.0, ge=0)
    max_duration_s: float | None = Field(None, gt=0)
    categories: list[str] | None = None
    exclude_categories: list[str] = Field(default_factory=list)
    languages: list[str] | None = Field(default_factory=lambda: ["en"])
    require_language: bool = False
    exclude_live: bool = True
    max_age_limit: int | None = Field(17, ge=0)
    exclude_availability: list[str] = Field(
        default_factory=lambda: ["private", "premium_only", "subscriber_only", "needs_auth"])
    # captions
    caption_kinds: list[str] = Field(default_factory=lambda: list(CAPTION_KINDS))
    caption_formats: list[str] = Field(default_factory=lambda: ["json3", "srv3", "vtt"])

    @field_validator("caption_kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in CAPTION_KINDS]
        if bad or not v:
            raise ValueError(f"caption_kinds must be a non-empty list of {CAPTION_KINDS} (got {v})")
        return v

    @field_validator("caption_formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in CAPTION_FORMATS]
        if bad or not v:
            raise ValueError(f"caption_formats must be a non-empty list of {CAPTION_FORMATS} (got {v})")
        return v


class YoutubeCrawl(Stage):
    """Source stage: YouTube videos -> info.json + English caption in the archive, and a
    :data:`schemas.VIDEOS` row each. No media is downloaded here."""

    name = "crawl"
    Config = CrawlConfig
    input_schema = None
    output_schema = schemas.VIDEOS
    # Network-bound: threads (``concurrency``) overlap requests inside each actor, which mostly
    # waits: it reserves no CPU, so its actors run beside the CPU stages' while parts stream (at
    # most 4 parts in flight)
    resources = Resources(num_cpus=0, batch_size=32, concurrency=4)
    # Discovery costs requests: list sources once per source config, not on every status call.
    replan = False

    config: CrawlConfig

    def setup(self) -> None:
        cfg = self.config
        self.archive = Archive.from_config(cfg, self.context)
        self.limiter = RateLimiter(cfg.rate_limit_key, cfg.requests_per_minute, cfg.burst)
        self.archive_file = cfg.download_archive or self.archive.default_download_archive()
        self.archived = load_download_archive(self.archive_file)
        self._archive_lock = threading.Lock()
        self._ydls = YdlCache(cfg, self.limiter)
        self._pool: ThreadPoolExecutor | None = None

    def _ready(self) -> None:
        if not hasattr(self, "archive"):
            self.setup()

    def __getstate__(self):
        # Ship settings only; thread pools and yt-dlp objects are rebuilt by setup().
        return {"config": self.config, "context": self.context}

    # -- discovery ------------------------------------------------------------------------------
    def plan(self) -> Iterable[dict[str, Any]]:
        """Items ``{"video_id", "url"}`` from every configured source, first seen first, no
        duplicates. Refs that are not YouTube ids are kept (``process`` turns them into
        ``invalid_id`` error rows, so nothing is dropped silently). A source that cannot be
        listed is logged and skipped; if every listed source fails, raises RuntimeError."""
        cfg = self.config
        limiter = RateLimiter(cfg.rate_limit_key, cfg.requests_per_minute, cfg.burst)
        refs: list[str] = list(cfg.ids)
        if cfg.ids_file:
            refs += read_ids_file(cfg.ids_file)
        seen: set[str] = set()
        items: list[dict[str, Any]] = []

        def add(vid: str | None, raw: str) -> None:
            key = vid or raw.strip()
            if key and key not in seen:
                seen.add(key)
                items.append({"video_id": key, "url": watch_url(vid) if vid else raw.strip()})

        for ref in refs:
            add(parse_video_ref(ref), ref)
        sources = source_urls(cfg)
        failures = []
        for label, url in sources:
            logger = CollectingLogger()
            params = {"extract_flat": "in_playlist", "skip_download": True, "noplaylist": False}
            if cfg.max_videos_per_source:
                params["playlist_items"] = f"1:{cfg.max_videos_per_source}"
            try:
                with new_ydl(cfg, limiter, logger, proxy=pick_proxy(cfg, url), **params) as ydl:
                    for vid, raw in list_videos(ydl, url, cfg.max_videos_per_source):
                        add(vid, raw)
            except Exception as exc:  # noqa: BLE001 - one bad source must not stop discovery
                err = as_crawl_error(exc, label, logger.text())
                failures.append(str(err))
                log.warning("discovery: %s failed: %s", label, err)
        if sources and len(failures) == len(sources) and len(items) == len(refs) == 0:
            raise RuntimeError("discovery: every source failed: " + "; ".join(failures))
        return items

    # -- one video ----------------------------------------------------------------------------
    def process_batch(self, rows: list[dict[str, Any]]) -> list:
        """Items run ``concurrency`` at a time on threads (the work is waiting on the network)."""
        self._ready()
        if self.config.concurrency <= 1 or len(rows) <= 1:
            return super().process_batch(rows)

        def one(row):
            try:
                return list(self.process(row))
            except Exception as exc:  # noqa: BLE001 - per-item isolation
                return exc
        if self._pool is None:  # kept across batches: its threads keep their yt-dlp objects
            self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="crawl")
        return list(self._pool.map(one, rows))

    def process(self, row: dict[str, Any]) -> list[dict[str, Any] | Rejected]:
        """One plan item -> a :data:`schemas.VIDEOS` row, or a :class:`Rejected` (metadata
        filters, no English captions). Raises a :class:`~stages.crawl.errors.CrawlError`
        subclass whose message starts with the category."""
        self._ready()
        cfg = self.config
        vid = check_video_id(row.get("video_id"))
        archived = self._is_archived(vid)
        if archived:
            done = self._from_archive(vid)
            if done is not None:
                return done
        logger = CollectingLogger()
        try:
            ydl = self._ydls.get(logger, vid, **{
                "skip_download": True, "writeinfojson": True, "ignore_no_formats_error": True,
                "outtmpl": {"default": "%(id)s.%(ext)s"},
                "paths": {"home": self.archive.work_dir, "temp": os.path.join(self.archive.work_dir, PARTIAL_DIR)},
            })
            # yt-dlp skips ids in this set too; not when an archived id must be fetched again.
            ydl.archive = set() if archived else self.archived
            ydl.params.update(writesubtitles=False, writeautomaticsub=False)
            info = fetch_info(ydl, cfg, vid, row.get("url") or watch_url(vid))
            if info.get("id") != vid:
                raise UnknownCrawlError(f"{vid}: the info dict is for {info.get('id')!r}")
            decision = decide(info, cfg)
            if not isinstance(decision, Caption):
                reason, detail = decision
                self.archive.write_json(f"{REJECTED_DIR}/{vid}.info.json", trim_info(info))
                self._record(vid)
                return [Rejected(youtube_video_row(info), reason, detail)]
            ydl.params.update(
                writesubtitles=decision.kind == "manual", writeautomaticsub=decision.kind == "auto",
                subtitleslangs=[re.escape(decision.lang)], subtitlesformat=decision.fmt)
            ydl.process_ie_result(info, download=True)
        except CrawlError:
            raise
        except Exception as exc:  # noqa: BLE001 - categorised, then recorded by the engine
            raise as_crawl_error(exc, vid, logger.text()) from exc
        caption_name = f"{vid}.{decision.lang}.{decision.fmt}"
        for name in (f"{vid}.info.json", caption_name):
            local = os.path.join(self.archive.work_dir, name)
            if not os.path.exists(local) and not self.archive.exists(name):
                raise UnknownCrawlError(f"{vid}: yt-dlp did not write {name}: {logger.text()[-300:]}")
            if os.path.exists(local):
                self.archive.publish(local, name)
        self._record(vid)
        return [youtube_video_row(info, decision, self.archive.url(caption_name))]

    # -- the download archive -------------------------------------------------------------
    def _is_archived(self, vid: str) -> bool:
        if self.archive_file is not None:
            return archive_id(vid) in self.archived
        # No local archive file (remote archive_dir): the files themselves are the record.
        return self.archive.exists(f"{vid}.info.json") or self.archive.exists(f"{REJECTED_DIR}/{vid}.info.json")

    def _record(self, vid: str) -> None:
        key = archive_id(vid)
        with self._archive_lock:
            if key in self.archived:
                return
            self.archived.add(key)
            if self.archive_file:
                from yt_dlp.utils import locked_file
                with locked_file(self.archive_file, "a", encoding="utf-8") as f:
                    f.write(key + "\n")

    def _from_archive(self, vid: str) -> list | None:
        """The result for an archived id from the files alone, or None when they no longer
        answer it (deleted, or the config now wants another caption): then it is fetched again."""
        cfg = self.config
        info = self.archive.read_json(f"{vid}.info.json")
        if info is None:
            info = self.archive.read_json(f"{REJECTED_DIR}/{vid}.info.json")
        if not isinstance(info, dict):
            return None
        decision = decide(info, cfg)
        if not isinstance(decision, Caption):
            return [Rejected(youtube_video_row(info), *decision)]
        caption_name = f"{vid}.{decision.lang}.{decision.fmt}"
        if self.archive.exists(caption_name):
            return [youtube_video_row(info, decision, self.archive.url(caption_name))]
        return None


# -- pure functions ---------------------------------------------------------------------------

def archive_id(video_id: str) -> str:
    """The download-archive line for a YouTube video (yt-dlp's ``make_archive_id``)."""
    return f"youtube {video_id}"


def read_ids_file(path: str) -> list[str]:
    """Non-empty lines of an ids file, without ``#`` comments (ids or URLs, one per line)."""
    import fsspec
    with fsspec.open(path, "rt", encoding="utf-8-sig") as f:
        lines = [line.split("#", 1)[0].strip() if not line.lstrip().startswith("http") else line.strip()
                 for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def source_urls(cfg: CrawlConfig) -> list[tuple[str, str]]:
    """``(label, url)`` for every search, channel and playlist source, as yt-dlp takes them.

    Searches become ``ytsearch<search_results>:<query>`` (a query already written as
    ``ytsearchN:...`` is kept); a channel ``@handle`` or ``UC...`` id becomes its ``/videos``
    tab; a playlist id becomes ``https://www.youtube.com/playlist?list=<id>``; URLs are kept.
    """
    out = []
    for q in cfg.searches:
        q = q.strip()
        url = q if re.match(r"^ytsearch(\d+|all|date\d*)?:", q) else f"ytsearch{cfg.search_results}:{q}"
        out.append((f"search:{q}", url))
    for ch in cfg.channels:
        ch = ch.strip()
        if ch.startswith("@"):
            url = f"https://www.youtube.com/{ch}/videos"
        elif re.match(r"^UC[A-Za-z0-9_-]{22}$", ch):
            url = f"https://www.youtube.com/channel/{ch}/videos"
        else:
            url = ch
        out.append((f"channel:{ch}", url))
    for pl in cfg.playlists:
        pl = pl.strip()
        url = pl if "://" in pl else f"https://www.youtube.com/playlist?list={pl}"
        out.append((f"playlist:{pl}", url))
    return out


def list_videos(ydl, url: str, limit: int | None = None, depth: int = 2) -> list[tuple[str | None, str]]:
    """``(video_id or None, url)`` of the videos a source lists, via ``extract_flat``.

    Nested lists (a channel's tabs) are expanded up to ``depth`` levels; ``limit`` caps the
    videos taken from this source.
    """
    result = ydl.extract_info(url, download=False)
    return flat_video_refs(ydl, result, limit, depth)


def flat_video_refs(ydl, result: dict[str, Any] | None, limit: int | None, depth: int) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    if not result:
        return out
    if result.get("_type", "video") == "video":
        return [(parse_video_ref(str(result.get("id") or "")) or parse_video_ref(result.get("webpage_url") or ""),
                 result.get("webpage_url") or str(result.get("id")))]
    for entry in result.get("entries") or []:
        if limit is not None and len(out) >= limit:
            break
        if not entry:
            continue
        kind, ie_key = entry.get("_type", "video"), entry.get("ie_key")
        if kind == "playlist" or (kind in ("url", "url_transparent") and ie_key not in (None, "Youtube")):
            if depth > 0:
                nested = entry if kind == "playlist" else ydl.extract_info(entry["url"], download=False)
                out.extend(flat_video_refs(ydl, nested, None if limit is None else limit - len(out), depth - 1))
            continue
        raw = entry.get("url") or entry.get("webpage_url") or str(entry.get("id") or "")
        vid = parse_video_ref(str(entry.get("id") or "")) or parse_video_ref(raw)
        out.append((vid, raw))
    return out


def caption_tracks(info: dict[str, Any]) -> list[Caption]:
    """The English caption tracks an info dict offers, as candidates for
    :func:`stages.videos.choose_caption`. Manual: ``en`` first, then other ``en-*`` keys in
    sorted order. Automatic: ``en-orig``, then ``en`` unless every one of its URLs is a
    machine translation (``tlang=``)."""
    out = []
    for kind, key in (("manual", "subtitles"), ("auto", "automatic_captions")):
        tracks = info.get(key) or {}
        if kind == "manual":
            langs = sorted((k for k in tracks if language_matches(k) and k != "en-orig"), key=lambda k: (k != "en", k))
        else:
            langs = [k for k in ("en-orig", "en") if k in tracks]
            langs = [k for k in langs if k == "en-orig" or not all(
                "tlang=" in (t.get("url") or "") for t in tracks[k] if isinstance(t, dict))]
        for rank, lang in enumerate(langs):
            exts = {t.get("ext") for t in tracks.get(lang) or [] if isinstance(t, dict) and t.get("url")}
            out += [Caption(kind, lang, fmt, rank) for fmt in sorted(e for e in exts if isinstance(e, str))]
    return out


def metadata_rejection(info: dict[str, Any], cfg: CrawlConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` when the info dict fails a metadata filter, else None.

    Fields used (yt-dlp info dict): ``duration`` (s), ``categories``, ``language``,
    ``live_status``/``is_live``, ``age_limit``, ``availability``. A missing field passes,
    except ``language`` under ``require_language`` and ``duration`` when a range is set.
    """
    dur = info.get("duration")
    if cfg.min_duration_s is not None or cfg.max_duration_s is not None:
        if not isinstance(dur, (int, float)):
            return "duration_out_of_range", "duration unknown"
        if cfg.min_duration_s is not None and dur < cfg.min_duration_s:
            return "duration_out_of_range", f"duration={dur:g}s < {cfg.min_duration_s:g}s"
        if cfg.max_duration_s is not None and dur > cfg.max_duration_s:
            return "duration_out_of_range", f"duration={dur:g}s > {cfg.max_duration_s:g}s"
    rejection = category_rejection(info.get("categories"), cfg.categories, cfg.exclude_categories)
    if rejection:
        return rejection
    lang = info.get("language")
    if cfg.languages is not None:
        if not lang:
            if cfg.require_language:
                return "language_mismatch", "language unknown"
        elif not language_matches(lang, cfg.languages):
            return "language_mismatch", f"language={lang!r} not in {cfg.languages}"
    live = info.get("live_status")
    if cfg.exclude_live and (live in ("is_live", "is_upcoming", "post_live") or info.get("is_live")):
        return "live_or_upcoming", f"live_status={live or 'is_live'}"
    age = info.get("age_limit")
    if cfg.max_age_limit is not None and isinstance(age, (int, float)) and age > cfg.max_age_limit:
        return "age_limit", f"age_limit={age} > {cfg.max_age_limit}"
    avail = info.get("availability")
    if avail and avail in cfg.exclude_availability:
        return "availability", f"availability={avail}"
    return None


def decide(info: dict[str, Any], cfg: CrawlConfig) -> Caption | tuple[str, str]:
    """The caption to fetch, or the ``(reason, detail)`` the video is rejected for."""
    rejection = metadata_rejection(info, cfg)
    if rejection:
        return rejection
    choice = choose_caption(caption_tracks(info), cfg.caption_kinds, cfg.caption_formats)
    if choice is None:
        have = sorted({*(info.get("subtitles") or {}), *(f"{k}(auto)" for k in info.get("automatic_captions") or {})})
        return "no_english_captions", f"kinds={cfg.caption_kinds} formats={cfg.caption_formats}; tracks: {', '.join(have[:12]) or 'none'}"
    return choice


def youtube_video_row(info: dict[str, Any], choice: Caption | None = None, caption_path: str | None = None) -> dict[str, Any]:
    """A :data:`schemas.VIDEOS` row from an info dict (media fields stay null until the media phase)."""
    vid = str(info.get("id"))
    row = video_row(info, video_id=vid, source="youtube", url=watch_url(vid))
    if choice is not None:
        row.update(caption_kind=choice.kind, caption_format=choice.fmt, caption_path=caption_path)
    return row


_KEEP_FIELDS = ("id", "title", "channel", "uploader", "webpage_url", "duration", "categories", "language",
                "live_status", "is_live", "was_live", "age_limit", "availability", "extractor", "extractor_key",
                "upload_date")


def trim_info(info: dict[str, Any]) -> dict[str, Any]:
    """The part of an info dict the filters read (kept for rejected videos: a full YouTube
    info dict is ~0.5 MB, mostly format and translated-caption URLs)."""
    out = {k: info[k] for k in _KEEP_FIELDS if k in info}
    for key in ("subtitles", "automatic_captions"):
        tracks = info.get(key) or {}
        out[key] = {lang: [{"ext": t.get("ext"), "url": t.get("url")} for t in fmts if isinstance(t, dict)]
                    for lang, fmts in tracks.items() if language_matches(lang)}
    return out


__all__ = ["YoutubeCrawl", "CrawlConfig", "caption_tracks", "metadata_rejection",
           "decide", "youtube_video_row", "source_urls", "read_ids_file", "list_videos", "archive_id", "ARCHIVE_FILE"]
