"""yt-dlp plumbing shared by the crawl and media phases: network settings, the archive
folder, a rate-limited and retrying ``YoutubeDL``, and video-id handling.

Every HTTP request yt-dlp makes in-process (page, player API, info JSON, captions, whole
media files) goes through :meth:`PoliteYoutubeDL.urlopen`, which takes a token from the
shared :class:`~stages.ratelimit.RateLimiter` first and retries HTTP 429, 5xx and
transport errors (timeouts, resets) with exponential backoff and jitter; a 429 also holds
every other worker for the ``Retry-After`` time. Interrupted bodies are resumed by yt-dlp's
own downloader (``.part`` files, HTTP Range), whose retries use the same backoff. ffmpeg,
which yt-dlp runs for section downloads, makes its own requests: the media phase charges
``section_request_cost`` tokens per section and retries the section as a whole.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections import deque
from typing import Any, ClassVar

from pydantic import Field, field_validator

from pipeline.stage import StageConfig
from pipeline.storage import Storage
from stages.crawl.errors import InvalidVideoId, RemovedVideo
from stages.ratelimit import RateLimiter, backoff_delay

log = logging.getLogger(__name__)

YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
#: Extractors a crawl may use: YouTube's, plus the generic one for pages embedding videos.
ALLOWED_EXTRACTORS = ["youtube(:.*)?", "generic"]
ARCHIVE_FILE = ".ytdlp-archive.txt"
PARTIAL_DIR = ".partial"

_LOCAL = {"json_schema_extra": {"local_path": True}}


class NetConfig(StageConfig):
    """Network settings shared by the ``crawl`` and ``media`` stages (README "Crawl config").

    The politeness settings (:attr:`runtime_fields`: rate, retries, timeouts, proxies,
    cookies, concurrency) stay out of the config hash: changing them never marks parts stale.
    ``proxies`` entries are URLs (``http://``, ``https://``, ``socks5://`` ...); an empty
    string means a direct connection. ``ytdlp_params`` are extra yt-dlp options applied last
    (e.g. ``{"js_runtimes": {"node": {}}}``); leave ``outtmpl`` and ``paths`` alone.
    """

    archive_dir: str | None = Field(None, **_LOCAL)
    info_json_source: str | None = Field(None, **_LOCAL)
    download_archive: str | None = Field(None, **_LOCAL)
    cookies_file: str | None = Field(None, **_LOCAL)
    proxies: list[str] = Field(default_factory=list)
    requests_per_minute: float | None = Field(60.0, gt=0)
    burst: int = Field(1, ge=1)
    rate_limit_key: str = Field("youtube", pattern=r"^[A-Za-z0-9_.-]+$")
    retries: int = Field(5, ge=0)
    backoff_base_s: float = Field(2.0, ge=0)
    backoff_max_s: float = Field(120.0, ge=0)
    socket_timeout_s: float = Field(30.0, gt=0)
    concurrency: int = Field(4, ge=1)
    ytdlp_params: dict[str, Any] = Field(default_factory=dict)

    #: settings that change how politely we fetch, never what we produce
    runtime_fields: ClassVar[frozenset[str]] = frozenset({
        "download_archive", "cookies_file", "proxies", "requests_per_minute", "burst", "rate_limit_key",
        "retries", "backoff_base_s", "backoff_max_s", "socket_timeout_s", "concurrency"})

    @field_validator("proxies")
    @classmethod
    def _proxy_urls(cls, v: list[str]) -> list[str]:
        for p in v:
            if p and not re.match(r"^(https?|socks4a?|socks5h?)://", p):
                raise ValueError(f"proxy {p!r} must be a URL such as http://host:3128 or socks5://host:1080")
        return v


# -- video ids --------------------------------------------------------------------------------

_ID_IN_URL = [
    re.compile(r"[?&]v=([A-Za-z0-9_-]{11})(?:[&#]|$)"),
    re.compile(r"youtu\.be/([A-Za-z0-9_-]{11})(?:[?&#/]|$)"),
    re.compile(r"/(?:embed|shorts|live|v|e)/([A-Za-z0-9_-]{11})(?:[?&#/]|$)"),
]


def parse_video_ref(ref: str) -> str | None:
    """The 11-character YouTube id in a bare id or a watch/short/embed/youtu.be URL, else None."""
    ref = ref.strip()
    if YOUTUBE_ID.match(ref):
        return ref
    if "://" in ref or ref.startswith(("www.", "youtube.", "youtu.be", "m.youtube.")):
        for pat in _ID_IN_URL:
            m = pat.search(ref)
            if m:
                return m.group(1)
    return None


def check_video_id(video_id: Any) -> str:
    """Return ``video_id`` if it is a YouTube id; raises :class:`InvalidVideoId` otherwise.

    Ids reach file names (``<id>.info.json``), so nothing else is let through.
    """
    if not isinstance(video_id, str) or not YOUTUBE_ID.match(video_id):
        raise InvalidVideoId(f"{str(video_id)[:80]!r} is not an 11-character YouTube video id")
    return video_id


def watch_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


# -- the archive folder -----------------------------------------------------------------------

class Archive:
    """The yt-dlp-named folder both phases write to (and the local ingest reads):
    ``<id>.info.json``, ``<id>.<lang>.<fmt>``, ``<id>.<ext>``, plus ``sections/`` (section
    downloads), ``.rejected/`` (trimmed info dicts of videos the filters dropped),
    ``.partial/`` (unfinished downloads, resumed by the next run) and ``.ytdlp-archive.txt``.

    ``archive_dir`` may be any fsspec URL; when it is not local, yt-dlp writes to a local
    staging folder and finished files are uploaded.
    """

    def __init__(self, storage: Storage, prefix: str):
        self.storage, self.prefix = storage, prefix
        self.local_dir = storage.full(prefix) if storage.local else None
        if self.local_dir:
            os.makedirs(os.path.join(self.local_dir, PARTIAL_DIR), exist_ok=True)
            self.work_dir = self.local_dir
        else:
            self.work_dir = tempfile.mkdtemp(prefix="livecc-archive-")

    @classmethod
    def from_config(cls, cfg: NetConfig, context) -> "Archive":
        if cfg.archive_dir:
            return cls(Storage(cfg.archive_dir, context.build.get("storage_options") if context else None), "")
        return cls(context.storage, "archive")

    def rel(self, name: str) -> str:
        return posixpath.join(self.prefix, name) if self.prefix else name

    def exists(self, name: str) -> bool:
        return self.storage.exists(self.rel(name))

    def url(self, name: str) -> str:
        """What goes into rows: an absolute path for local archives, else a URL."""
        return self.storage.url_of(self.rel(name))

    def read_json(self, name: str) -> Any:
        return self.storage.read_json(self.rel(name))

    def write_json(self, name: str, obj: Any) -> None:
        self.storage.write_bytes(self.rel(name), json.dumps(obj, ensure_ascii=False).encode())

    def ls(self, folder: str = "") -> list[str]:
        return self.storage.ls(self.rel(folder)) if (folder or self.prefix) else self.storage.ls("")

    def publish(self, local_path: str, name: str) -> None:
        """Move a finished file from the work folder into the archive (no-op when already there)."""
        if self.local_dir and os.path.abspath(local_path) == os.path.abspath(os.path.join(self.local_dir, name)):
            return
        self.storage.put_file(local_path, self.rel(name))

    def default_download_archive(self) -> str | None:
        return os.path.join(self.local_dir, ARCHIVE_FILE) if self.local_dir else None


def load_download_archive(path: str | None) -> set[str]:
    """The ids (``"youtube <id>"`` lines) in a yt-dlp download-archive file."""
    if not path or not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


# -- a rate-limited, retrying YoutubeDL ----------------------------------------------------------

class CollectingLogger:
    """yt-dlp logger that keeps the last warnings/errors (for categorising failures)."""

    def __init__(self):
        self.lines: deque[str] = deque(maxlen=40)

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.lines.append(msg)
        log.debug("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        self.lines.append(msg)
        log.debug("yt-dlp: %s", msg)

    def text(self) -> str:
        return "\n".join(self.lines)


def _retry_after_s(err) -> float | None:
    try:
        value = err.response.headers.get("Retry-After")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def make_ydl_class():
    """``PoliteYoutubeDL``: yt-dlp's ``YoutubeDL`` whose every request is rate-limited and
    retried (defined lazily so importing this module does not import yt-dlp)."""
    import yt_dlp
    from yt_dlp.networking.exceptions import HTTPError, TransportError

    class PoliteYoutubeDL(yt_dlp.YoutubeDL):
        def __init__(self, params: dict, limiter: RateLimiter, cfg: NetConfig):
            super().__init__(params)
            self._limiter, self._cfg = limiter, cfg
            self.request_count = 0
            self.retry_count = 0

        def urlopen(self, req):
            attempt = 0
            while True:
                self._limiter.acquire()
                self.request_count += 1
                try:
                    return super().urlopen(req)
                except HTTPError as err:
                    transient = err.status == 429 or 500 <= err.status < 600
                    if not transient or attempt >= self._cfg.retries:
                        raise
                    delay = backoff_delay(attempt, self._cfg.backoff_base_s, self._cfg.backoff_max_s)
                    if err.status == 429:
                        retry_after = _retry_after_s(err)
                        if retry_after is not None:
                            delay = max(delay, min(retry_after, self._cfg.backoff_max_s))
                        self._limiter.penalize(delay)  # everyone slows down, not just us
                    err.close()
                except TransportError:
                    if attempt >= self._cfg.retries:
                        raise
                    delay = backoff_delay(attempt, self._cfg.backoff_base_s, self._cfg.backoff_max_s)
                attempt += 1
                self.retry_count += 1
                time.sleep(delay)

    return PoliteYoutubeDL


_YDL_CLASS = None
_tls = threading.local()


def pick_proxy(cfg: NetConfig, key: str) -> str | None:
    """The proxy for ``key`` (a video id): stable per video, spread over ``cfg.proxies``."""
    return cfg.proxies[zlib.crc32(key.encode()) % len(cfg.proxies)] if cfg.proxies else None


class YdlCache:
    """``PoliteYoutubeDL`` objects reused across items, one per (thread, proxy, mode).

    yt-dlp objects are not thread-safe, but one object serves many videos in turn (the
    yt-dlp CLI uses one per run), and creating one costs ~80 ms of CPU (it loads the CA
    bundle), which would dominate a caption crawl. Per-item options are set on
    ``ydl.params`` by the caller before each use; ``init`` runs once on a new object.
    """

    def __init__(self, cfg: NetConfig, limiter: RateLimiter, init=None):
        self.cfg, self.limiter, self.init = cfg, limiter, init
        self._tls = threading.local()

    def get(self, logger: CollectingLogger, proxy_key: str, mode: str = "", **params):
        cache = getattr(self._tls, "ydls", None)
        if cache is None:
            cache = self._tls.ydls = {}
        proxy = pick_proxy(self.cfg, proxy_key)
        ydl = cache.get((proxy, mode))
        if ydl is None:
            ydl = cache[(proxy, mode)] = new_ydl(self.cfg, self.limiter, logger, proxy=proxy, **params)
            if self.init:
                self.init(ydl)
        ydl.params["logger"] = logger
        return ydl


def new_ydl(cfg: NetConfig, limiter: RateLimiter, logger: CollectingLogger, *, proxy: str | None = None,
            **params):
    """A new ``PoliteYoutubeDL``: ``proxy`` (None: environment settings), ``params`` are
    yt-dlp options; ``cfg.ytdlp_params`` are applied last."""
    global _YDL_CLASS
    if _YDL_CLASS is None:
        _YDL_CLASS = make_ydl_class()

    def sleep_fn(n: int) -> float:
        return backoff_delay(n, cfg.backoff_base_s, cfg.backoff_max_s)

    base = {
        "quiet": True, "no_warnings": False, "noprogress": True, "logger": logger, "color": "no_color",
        "socket_timeout": cfg.socket_timeout_s, "retries": cfg.retries, "fragment_retries": cfg.retries,
        "extractor_retries": cfg.retries, "file_access_retries": 3,
        "retry_sleep_functions": {"http": sleep_fn, "fragment": sleep_fn, "extractor": sleep_fn},
        "allowed_extractors": ALLOWED_EXTRACTORS, "noplaylist": True, "continuedl": True,
    }
    if proxy is not None:
        base["proxy"] = proxy  # "" = direct, ignoring proxy environment variables
    cookie = thread_cookie_file(cfg.cookies_file)
    if cookie:
        base["cookiefile"] = cookie
    base.update(params)
    base.update(cfg.ytdlp_params)
    return _YDL_CLASS(base, limiter, cfg)


def thread_cookie_file(path: str | None) -> str | None:
    """A private copy of the cookies file for this thread: yt-dlp writes cookies back on
    close, and concurrent writers would corrupt a shared file."""
    if not path:
        return None
    copies = getattr(_tls, "cookies", None)
    if copies is None:
        copies = _tls.cookies = {}
    if path not in copies:
        fd, copy = tempfile.mkstemp(prefix="livecc-cookies-", suffix=".txt")
        os.close(fd)
        shutil.copyfile(path, copy)
        copies[path] = copy
    return copies[path]


# -- info dicts ---------------------------------------------------------------------------------

def fetch_info(ydl, cfg: NetConfig, video_id: str, url: str) -> dict[str, Any]:
    """The yt-dlp info dict of one video, not yet processed (no format selection).

    From YouTube (``extract_info(url, process=False)``), or, when ``info_json_source`` is set,
    a pre-extracted ``<id>.info.json`` from that folder / URL template (``{video_id}``), as
    yt-dlp's ``--load-info-json`` does. Raises what yt-dlp raises, or :class:`RemovedVideo`
    when the source has no such file.
    """
    src = cfg.info_json_source
    if not src:
        info = ydl.extract_info(url, download=False, process=False)
    elif re.match(r"^https?://", src):
        info_url = src.format(video_id=urllib.parse.quote(video_id)) if "{video_id}" in src \
            else f"{src.rstrip('/')}/{video_id}.info.json"
        info = _read_json_url(ydl, cfg, info_url)
    else:
        import fsspec
        path = src.format(video_id=video_id) if "{video_id}" in src else posixpath.join(src, f"{video_id}.info.json")
        try:
            with fsspec.open(path, "rb") as f:
                info = json.load(f)
        except FileNotFoundError:
            raise RemovedVideo(f"{video_id}: no info.json at {path}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{video_id}: info is not a JSON object")
    return ydl.sanitize_info(info, remove_private_keys=True)


def _read_json_url(ydl, cfg: NetConfig, url: str) -> Any:
    from yt_dlp.networking.exceptions import TransportError
    attempt = 0
    while True:
        try:
            with ydl.urlopen(url) as resp:  # status retries happen inside urlopen
                return json.loads(resp.read())
        except (TransportError, json.JSONDecodeError):
            # A body cut short (IncompleteRead, or JSON that ends early): fetch it again.
            if attempt >= cfg.retries:
                raise
            time.sleep(backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s))
            attempt += 1
