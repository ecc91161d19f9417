"""Failure categories of the crawl and media phases.

Every failed item becomes one ``_errors`` row whose ``error_type`` is one of the classes
below and whose message starts with the category in brackets, e.g.
``[private] emyi4z-O0ls: Private video. Sign in if you've been granted access``.
Nothing here is fatal to a run; a re-run retries the items that failed (README).

Categories (``CrawlError.category``):

=================  =====================================================================
private            the uploader made the video private
removed            deleted, terminated account, copyright strike, 404/410
geo_blocked        not available from this country (a proxy elsewhere may help)
age_restricted     needs a signed-in adult account (a cookies file may help)
members_only       channel-membership or premium content
rate_limited       HTTP 429 or YouTube's bot check, still failing after the retries
network            timeouts, resets, 5xx, truncated bodies, still failing after the retries
forbidden          HTTP 403 (expired signed URL, blocked client)
upcoming           a scheduled live stream or premiere that has not started
invalid_id         the video id is not an 11-character YouTube id
unknown            anything else (the message says what)
=================  =====================================================================

Filter decisions are not errors: they are ``_rejected`` rows with a reason code
(``no_english_captions``, ``duration_out_of_range``, ...; see :mod:`stages.crawl`).
"""
from __future__ import annotations

import re
import socket


class CrawlError(Exception):
    """Base of the categorised failures; ``str()`` is ``"[<category>] <message>"``."""
    category = "unknown"

    def __str__(self) -> str:
        return f"[{self.category}] {super().__str__()}"


class PrivateVideo(CrawlError):
    category = "private"


class RemovedVideo(CrawlError):
    category = "removed"


class GeoBlocked(CrawlError):
    category = "geo_blocked"


class AgeRestricted(CrawlError):
    category = "age_restricted"


class MembersOnly(CrawlError):
    category = "members_only"


class RateLimited(CrawlError):
    category = "rate_limited"


class NetworkError(CrawlError):
    category = "network"


class Forbidden(CrawlError):
    category = "forbidden"


class Upcoming(CrawlError):
    category = "upcoming"


class InvalidVideoId(CrawlError):
    category = "invalid_id"


class UnknownCrawlError(CrawlError):
    category = "unknown"


ERROR_CLASSES: dict[str, type[CrawlError]] = {
    c.category: c for c in (PrivateVideo, RemovedVideo, GeoBlocked, AgeRestricted, MembersOnly,
                            RateLimited, NetworkError, Forbidden, Upcoming, InvalidVideoId,
                            UnknownCrawlError)
}

# Order matters: YouTube says "Video unavailable. This video is private", so the specific
# causes are tried before the generic "unavailable".
_PATTERNS: list[tuple[str, re.Pattern]] = [(cat, re.compile(p, re.I)) for cat, p in [
    ("private", r"private video|video is private"),
    ("age_restricted", r"confirm your age|age[- ]restrict|inappropriate for some users|age[- ]gate"),
    ("geo_blocked", r"available (in|from) your (country|location)|geo[- ]?restrict|blocked it in your country"),
    ("members_only", r"members[- ]only|join this channel|channel'?s? members|premium members|requires payment"),
    ("upcoming", r"live event will begin|premieres? in|upcoming live|this live event"),
    ("rate_limited", r"\b429\b|too many requests|not a bot|rate[- ]?limit"),
    ("forbidden", r"\b403\b|forbidden"),
    ("removed", r"video unavailable|has been removed|no longer available|does not exist|\b404\b|\b410\b"
                r"|account associated with this video has been terminated|copyright"
                r"|removed by the uploader|not found"),
    ("network", r"timed? ?out|connection (refused|reset|aborted)|incomplete ?read|content too short"
                r"|\b5\d\d\b|server error|service unavailable|bad gateway|remote end closed"
                r"|network is unreachable|name resolution|broken pipe|end of file|ffmpeg exited"
                r"|invalid data found|\b5xx\b|server returned"),
]]


def categorize(exc: BaseException, context: str = "") -> str:
    """The category of a failure, from the exception's type, HTTP status and text.

    ``context`` adds messages yt-dlp logged while failing (ffmpeg's stderr, warnings).
    """
    if isinstance(exc, CrawlError):
        return exc.category
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import GeoRestrictedError

    cause = exc
    for _ in range(5):  # yt-dlp wraps: DownloadError -> ExtractorError -> HTTPError
        if isinstance(cause, GeoRestrictedError):
            return "geo_blocked"
        if isinstance(cause, HTTPError):
            if cause.status == 429:
                return "rate_limited"
            if cause.status in (404, 410):
                return "removed"
            if cause.status == 403:
                return "forbidden"
            if 500 <= cause.status < 600:
                return "network"
        if isinstance(cause, (TransportError, TimeoutError, socket.timeout, ConnectionError)):
            return "network"
        nxt = getattr(cause, "exc_info", None)
        nxt = nxt[1] if nxt else (getattr(cause, "cause", None) or cause.__cause__ or cause.__context__)
        if nxt is None or nxt is cause:
            break
        cause = nxt
    text = f"{exc}\n{context}"
    for cat, pat in _PATTERNS:
        if pat.search(text):
            return cat
    return "unknown"


def as_crawl_error(exc: BaseException, video_id: str, context: str = "") -> CrawlError:
    """Wrap any failure into its categorised :class:`CrawlError` (keeps the original as cause)."""
    if isinstance(exc, CrawlError):
        return exc
    cat = categorize(exc, context)
    msg = re.sub(r"^ERROR:\s*", "", str(exc)).strip() or type(exc).__name__
    err = ERROR_CLASSES[cat](f"{video_id}: {msg}")
    err.__cause__ = exc
    return err
