"""Pure parts of the crawl: discovery refs, caption choice and metadata filters on the real
info.json fixtures, section planning, error categories, the token bucket."""
from __future__ import annotations

import copy
import json
import random

import pytest

from pipeline.config import load_config, stage_config
from stages.crawl import (
    CrawlConfig, caption_tracks, decide, metadata_rejection, read_ids_file, source_urls, trim_info,
    youtube_video_row,
)
from stages.crawl.errors import ERROR_CLASSES, RateLimited, as_crawl_error, categorize
from stages.crawl.media import (
    MediaConfig, MediaDownload, VideoMediaDownload, covered_fraction, covering, existing_sections, plan_sections, section_name,
)
from stages.ratelimit import TokenBucket, backoff_delay
from stages.crawl.ytdl import check_video_id, parse_video_ref
from stages.videos import Caption, choose_caption as choose_among


def choose_caption(info, kinds=("manual", "auto"), formats=("json3", "srv3", "vtt")):
    """(kind, lang, fmt) of the track the crawl picks, or None."""
    c = choose_among(caption_tracks(info), kinds, formats)
    return None if c is None else (c.kind, c.lang, c.fmt)


def CaptionChoice(kind, lang, fmt):  # noqa: N802 - reads like the tuple it stands for
    return (kind, lang, fmt)


def decided(info, cfg):
    d = decide(info, cfg)
    return (d.kind, d.lang, d.fmt) if isinstance(d, Caption) else d


# -- discovery ------------------------------------------------------------------------------------

def test_parse_video_ref_accepts_ids_and_url_shapes():
    assert parse_video_ref("emyi4z-O0ls") == "emyi4z-O0ls"
    assert parse_video_ref("https://www.youtube.com/watch?v=emyi4z-O0ls&t=30s") == "emyi4z-O0ls"
    assert parse_video_ref("https://youtu.be/N0gZFvpxNhQ?si=abc") == "N0gZFvpxNhQ"
    assert parse_video_ref("https://www.youtube.com/shorts/Ye8mB6VsUHw") == "Ye8mB6VsUHw"
    assert parse_video_ref("https://www.youtube.com/embed/Ye8mB6VsUHw") == "Ye8mB6VsUHw"
    for bad in ("ABC123", "../../x/abcd", "emyi4z-O0ls/", "https://example.com/watch?v=short", ""):
        assert parse_video_ref(bad) is None, bad


def test_check_video_id_refuses_path_like_ids():
    assert check_video_id("emyi4z-O0ls") == "emyi4z-O0ls"
    for bad in ("../../x", "ABC123", ".hiddenid00", "a/b/c/d/e/f", None, 12345678901):
        with pytest.raises(ERROR_CLASSES["invalid_id"]) as err:
            check_video_id(bad)
        assert str(err.value).startswith("[invalid_id]")


def test_ids_file_comments_and_urls(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("\ufeff# talks\nemyi4z-O0ls  # TED-Ed\n\nhttps://youtu.be/N0gZFvpxNhQ\n  # nothing\nnot-an-id\n")
    assert read_ids_file(str(f)) == ["emyi4z-O0ls", "https://youtu.be/N0gZFvpxNhQ", "not-an-id"]


def test_source_urls_for_searches_channels_playlists():
    cfg = CrawlConfig(searches=["street food tour", "ytsearch5:cooking"], search_results=20,
                      channels=["@TED-Ed", "UCsooa4yRKGN_zEE8iknghZA", "https://www.youtube.com/c/x/videos"],
                      playlists=["PLJicmE8fK0EiFRt1Hm5a_7SJFaikIFW30", "https://www.youtube.com/playlist?list=PLx"])
    assert source_urls(cfg) == [
        ("search:street food tour", "ytsearch20:street food tour"),
        ("search:ytsearch5:cooking", "ytsearch5:cooking"),
        ("channel:@TED-Ed", "https://www.youtube.com/@TED-Ed/videos"),
        ("channel:UCsooa4yRKGN_zEE8iknghZA", "https://www.youtube.com/channel/UCsooa4yRKGN_zEE8iknghZA/videos"),
        ("channel:https://www.youtube.com/c/x/videos", "https://www.youtube.com/c/x/videos"),
        ("playlist:PLJicmE8fK0EiFRt1Hm5a_7SJFaikIFW30",
         "https://www.youtube.com/playlist?list=PLJicmE8fK0EiFRt1Hm5a_7SJFaikIFW30"),
        ("playlist:https://www.youtube.com/playlist?list=PLx", "https://www.youtube.com/playlist?list=PLx"),
    ]


# -- caption choice on the real info dicts --------------------------------------------------------

def test_ted_manual_english_json3_wins(ted):
    assert choose_caption(ted) == CaptionChoice("manual", "en", "json3")
    assert choose_caption(ted, formats=["srv3", "vtt"]) == CaptionChoice("manual", "en", "srv3")
    # Only automatic captions allowed: TED's auto "en" is the original ASR (no tlang=), vtt only.
    assert choose_caption(ted, kinds=["auto"]) == CaptionChoice("auto", "en", "vtt")
    assert choose_caption(ted, kinds=["auto"], formats=["json3"]) is None


def test_pinchflat_auto_original_not_translations(pinchflat):
    # Manual captions are German only; automatic: en-orig (original ASR), en, and translations.
    assert choose_caption(pinchflat, kinds=["manual"]) is None
    choice = choose_caption(pinchflat)
    assert choice == CaptionChoice("auto", "en-orig", "json3")
    # Without en-orig, "en" is still the original ASR (no tlang=) ...
    p = copy.deepcopy(pinchflat)
    del p["automatic_captions"]["en-orig"]
    assert choose_caption(p) == CaptionChoice("auto", "en", "json3")
    # ... but an "en" track that is a machine translation is not English speech.
    for t in p["automatic_captions"]["en"]:
        t["url"] += "&tlang=en"
    assert choose_caption(p) is None


# -- metadata filters on the real info dicts --------------------------------------------------------

def test_ted_passes_default_filters(ted):
    cfg = CrawlConfig()
    assert metadata_rejection(ted, cfg) is None
    assert decided(ted, cfg) == CaptionChoice("manual", "en", "json3")


@pytest.mark.parametrize("change, cfg_kwargs, reason", [
    ({}, {"max_duration_s": 300}, "duration_out_of_range"),          # 344 s
    ({}, {"min_duration_s": 400}, "duration_out_of_range"),
    ({"duration": None}, {}, "duration_out_of_range"),
    ({}, {"categories": ["Gaming", "Music"]}, "category_excluded"),  # Education
    ({}, {"exclude_categories": ["Education"]}, "category_excluded"),
    ({"language": "de"}, {}, "language_mismatch"),
    ({}, {"require_language": True}, "language_mismatch"),           # TED has no language field
    ({"live_status": "is_upcoming"}, {}, "live_or_upcoming"),
    ({"live_status": "is_live", "is_live": True}, {}, "live_or_upcoming"),
    ({"age_limit": 18}, {}, "age_limit"),
    ({"availability": "subscriber_only"}, {}, "availability"),
    ({"subtitles": {}, "automatic_captions": {}}, {}, "no_english_captions"),
])
def test_ted_filter_reasons(ted, change, cfg_kwargs, reason):
    info = {**ted, **change}
    got = decide(info, CrawlConfig(**cfg_kwargs))
    assert isinstance(got, tuple) and got[0] == reason, got
    assert got[1]  # a detail says why


def test_filters_that_let_videos_through(ted, pinchflat):
    assert decided({**ted, "language": "en-US"}, CrawlConfig()) == CaptionChoice("manual", "en", "json3")
    assert decided({**ted, "live_status": "was_live"}, CrawlConfig()) == CaptionChoice("manual", "en", "json3")
    assert decided({**ted, "age_limit": 18}, CrawlConfig(max_age_limit=None)) == CaptionChoice("manual", "en", "json3")
    assert decided(pinchflat, CrawlConfig(categories=["Development"])) == CaptionChoice("auto", "en-orig", "json3")
    assert decide(pinchflat, CrawlConfig(caption_kinds=["manual"]))[0] == "no_english_captions"


def test_trimmed_info_gives_the_same_decision(ted, pinchflat):
    for info in (ted, pinchflat, {**ted, "age_limit": 18}, {**ted, "subtitles": {}, "automatic_captions": {}}):
        cfg = CrawlConfig()
        small = trim_info(info)
        assert len(json.dumps(small)) < len(json.dumps(info)) / 5
        assert decide(small, cfg) == decide(info, cfg)


def test_video_row_fields(ted):
    row = youtube_video_row(ted, Caption("manual", "en", "json3"), "/a/emyi4z-O0ls.en.json3")
    assert row["source"] == "youtube" and row["video_id"] == "emyi4z-O0ls"
    assert row["duration"] == 344.0 and row["categories"] == ["Education"] and row["channel"] == "TED-Ed"
    assert row["caption_kind"] == "manual" and row["caption_format"] == "json3"
    import schemas
    schemas.validate_rows([row], schemas.VIDEOS)


# -- sections ---------------------------------------------------------------------------------------

def test_plan_sections_margin_clamp_merge():
    spans = [(31.0, 45.0), (50.0, 60.0), (100.0, 130.0), (0.5, 10.0), (170.0, 185.0)]
    assert plan_sections(spans, margin_s=2, merge_gap_s=5, duration_s=180.0) == [
        (0.0, 12.0), (29.0, 62.0), (98.0, 132.0), (168.0, 180.0)]
    assert plan_sections(spans, margin_s=0, merge_gap_s=0) == [
        (0.5, 10.0), (31.0, 45.0), (50.0, 60.0), (100.0, 130.0), (170.0, 185.0)]


def test_covered_fraction_decides_whole_downloads():
    assert covered_fraction([(0.6, 88.08)], 88.08) > MediaConfig().whole_above_fraction  # -> whole file
    assert covered_fraction([(28.4, 59.7)], 88.08) == pytest.approx(31.3 / 88.08)
    assert covered_fraction([(0, 10)], None) == 0.0  # unknown duration: sections


def test_existing_sections_and_covering():
    names = [section_name("emyi4z-O0ls", 29, 62, "mp4"), section_name("emyi4z-O0ls", 0, 88.08, "mp4"),
             "emyi4z-O0ls.1000-2000.part", "other000000.0-9000.mp4", "emyi4z-O0ls.info.json"]
    secs = existing_sections(names, "emyi4z-O0ls")
    assert sorted(secs) == [(0.0, 88.08, "emyi4z-O0ls.0-88080.mp4"), (29.0, 62.0, "emyi4z-O0ls.29000-62000.mp4")]
    assert covering(secs, 31, 45)[2] == "emyi4z-O0ls.29000-62000.mp4"  # the tightest
    assert covering(secs, 70, 80)[2] == "emyi4z-O0ls.0-88080.mp4"
    assert covering(secs, 80, 90) is None


def test_media_inherits_network_settings_from_crawl(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "b.yaml"
    crawl = {"archive_dir": "../archive", "cookies_file": "c.txt", "proxies": ["http://p:3128"],
             "requests_per_minute": 30, "ids": ["emyi4z-O0ls"]}
    path.write_text(json.dumps({"corpus": "c", "flow": "youtube_pretrain", "root": "r",
                                "stages": {"crawl": crawl, "media": {"retries": 1}, "video_media": {}}}))
    cfg = load_config(path)
    m = stage_config(cfg, MediaDownload)
    assert m.proxies == ["http://p:3128"] and m.requests_per_minute == 30
    assert m.retries == 1  # set in the media section: kept
    # relative paths in the crawl section mean "next to the build file", as everywhere
    assert (m.archive_dir, m.cookies_file) == (str(tmp_path / "archive"), str(tmp_path / "configs" / "c.txt"))
    # politeness settings never enter the config hash; the archive does
    assert "proxies" not in m.hash_payload() and m.hash_payload()["archive_dir"] == str(tmp_path / "archive")
    # video_media inherits the same way, and is whole files by declaration (in its hash)
    v = stage_config(cfg, VideoMediaDownload)
    assert v.archive_dir == m.archive_dir and v.sections is False and v.hash_payload()["sections"] is False
    with pytest.raises(Exception, match="sections"):
        VideoMediaDownload.Config(sections=True)


# -- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("message, category", [
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video", "private"),
    ("ERROR: [youtube] abc: Video unavailable. This video is private", "private"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "removed"),
    ("ERROR: [youtube] abc: Video unavailable. This video is no longer available because the YouTube "
     "account associated with this video has been terminated.", "removed"),
    ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users.",
     "age_restricted"),
    ("ERROR: [youtube] abc: Video unavailable. The uploader has not made this video available in your country",
     "geo_blocked"),
    ("ERROR: [youtube] abc: Join this channel to get access to members-only content like this video", "members_only"),
    ("ERROR: [youtube] abc: Sign in to confirm you\u2019re not a bot.", "rate_limited"),
    ("ERROR: Unable to download video subtitles for 'en': HTTP Error 429: Too Many Requests", "rate_limited"),
    ("ERROR: [youtube] abc: This live event will begin in 3 hours.", "upcoming"),
    ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "forbidden"),
    ("ERROR: ffmpeg exited with code 1", "network"),
    ("ERROR: something nobody has seen", "unknown"),
])
def test_categories_from_real_messages(message, category):
    from yt_dlp.utils import DownloadError
    exc = DownloadError(message)
    assert categorize(exc) == category
    err = as_crawl_error(exc, "abc")
    assert str(err).startswith(f"[{category}] abc: ")
    assert type(err).__name__ == ERROR_CLASSES[category].__name__


def test_crawl_errors_survive_pickling():
    import pickle
    err = pickle.loads(pickle.dumps(RateLimited("abc: HTTP Error 429")))
    assert str(err) == "[rate_limited] abc: HTTP Error 429"


# -- rate limit and backoff --------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_token_bucket_spacing_burst_and_penalty():
    clock = FakeClock()
    b = TokenBucket(rate_per_s=2.0, burst=1, clock=clock)
    waits = [b.reserve() for _ in range(4)]
    assert waits == [0.0, 0.5, 1.0, 1.5]          # exactly 1/rate apart
    clock.t += 10                                  # idle: no credit beyond the burst
    assert b.reserve() == 0.0 and b.reserve() == 0.5
    b3 = TokenBucket(rate_per_s=1.0, burst=3, clock=clock)
    assert [b3.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]
    b3.penalize(30)
    assert b3.reserve() == pytest.approx(30.0)


def test_token_bucket_never_exceeds_rate_in_any_window():
    clock = FakeClock()
    b = TokenBucket(rate_per_s=5.0, burst=1, clock=clock)
    grants = []
    rng = random.Random(0)
    for _ in range(300):
        clock.t += rng.random() * 0.3           # callers arrive at random
        grants.append(clock.t + b.reserve())
    for i, g in enumerate(grants):               # any 1 s window holds at most 5 (+1 at the edge)
        assert sum(1 for h in grants[i:] if h < g + 1.0) <= 6


def test_backoff_is_exponential_capped_and_jittered():
    rng = random.Random(1)
    d = [backoff_delay(n, 1.0, 20.0, rng) for n in range(8)]
    for n, x in enumerate(d):
        cap = min(20.0, 2 ** n)
        assert cap * 0.5 <= x <= cap
    assert len({round(backoff_delay(3, 1.0, 20.0, rng), 6) for _ in range(10)}) > 1  # jitter
