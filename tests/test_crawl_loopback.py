"""The crawl's real yt-dlp path against a loopback server serving real fixture files.

Real info.json fixtures are rewritten to point at the server and loaded the way yt-dlp's
``--load-info-json`` does (``info_json_source``); captions then travel through yt-dlp's
own downloader and ``urlopen`` (our rate-limited, retrying subclass)."""
from __future__ import annotations

import json
import os

import pytest

import schemas
from pipeline.stage import Rejected, StageContext
from pipeline.storage import Storage
from stages.crawl import YoutubeCrawl, CrawlConfig
from tests.conftest import fixture_path
from tests.crawl_loopback import fixture_video, make_ids

JSON3 = ("captions", "ytenglishhub_english_lesson_asr.en.json3")
AUTO_VTT = ("captions", "videogrep_manifesto_auto.en.vtt")


def make_crawl(root, srv, **kw) -> YoutubeCrawl:
    """A crawl stage as the engine builds it, loading info dicts from the loopback server."""
    settings = dict(info_json_source=srv.url("/info/{video_id}.info.json"), requests_per_minute=None,
                    backoff_base_s=0.01, backoff_max_s=0.1, retries=3, socket_timeout_s=1.0)
    settings.update(kw)
    ctx = StageContext(storage=Storage(str(root)), corpus="c", stage_dir="c/crawl", part=0)
    stage = YoutubeCrawl(CrawlConfig(**settings), ctx)
    stage.setup()
    return stage


def ted_video(srv, ted, vid):
    return fixture_video(srv, ted, vid, captions={("manual", "en", "json3"): fixture_path(*JSON3),
                                                  ("auto", "en", "vtt"): fixture_path(*AUTO_VTT)})


def test_captions_arrive_in_ytdlp_naming_and_retries_recover(tmp_path, srv, ted):
    vid = "emyi4z-O0ls"
    ted_video(srv, ted, vid)
    srv.fail(f"/info/{vid}.info.json", "429", "500", "truncate")
    srv.fail(f"/captions/{vid}.en.json3", "500", "429", "slow:1.5")  # slow: beyond the 1 s socket timeout
    stage = make_crawl(tmp_path, srv)
    [row] = stage.process({"video_id": vid, "url": f"https://www.youtube.com/watch?v={vid}"})

    archive = tmp_path / "archive"
    # yt-dlp naming: <id>.info.json and <id>.<lang>.<fmt>; manual json3 chosen over auto vtt.
    names = sorted(p.name for p in archive.iterdir() if not p.name.startswith("."))
    assert names == [f"{vid}.en.json3", f"{vid}.info.json"]
    assert (archive / f"{vid}.en.json3").read_bytes() == fixture_path(*JSON3).read_bytes()
    written = json.loads((archive / f"{vid}.info.json").read_text())
    assert written["id"] == vid and written["title"] == ted["title"]
    assert not [p for p in archive.rglob("*") if p.suffix in (".mp4", ".webm", ".m4a", ".part")]  # no media

    assert row["source"] == "youtube" and row["caption_kind"] == "manual" and row["caption_format"] == "json3"
    assert row["caption_path"] == str(archive / f"{vid}.en.json3") and row["duration"] == 344.0
    schemas.validate_rows([row], schemas.VIDEOS)
    # Every injected fault was met and retried until the real file arrived.
    assert [h.status for h in srv.hits_for(f"/info/{vid}.info.json")] == [429, 500, 200, 200]
    assert [h.status for h in srv.hits_for(f"/captions/{vid}.en.json3")][:2] == [500, 429]
    assert srv.hits_for(f"/captions/{vid}.en.json3")[-1].status == 200
    assert len(srv.hits_for(f"/captions/{vid}.en.json3")) >= 4
    assert srv.hits_for(f"/captions/{vid}.en.vtt") == []  # the auto track was never fetched
    assert (archive / ".ytdlp-archive.txt").read_text().split("\n")[0] == f"youtube {vid}"


def test_auto_captions_when_no_manual_ones(tmp_path, srv, ted):
    vid = make_ids(1)[0]
    fixture_video(srv, ted, vid, captions={("auto", "en", "vtt"): fixture_path(*AUTO_VTT)})
    [row] = make_crawl(tmp_path, srv).process({"video_id": vid, "url": "u"})
    assert (row["caption_kind"], row["caption_format"]) == ("auto", "vtt")
    assert (tmp_path / "archive" / f"{vid}.en.vtt").read_bytes() == fixture_path(*AUTO_VTT).read_bytes()


def test_second_run_skips_what_the_archive_holds(tmp_path, srv, ted, pinchflat):
    good, german = make_ids(2)
    ted_video(srv, ted, good)
    # Pinchflat's real info dict: German manual captions only; here its automatic tracks are gone too.
    fixture_video(srv, pinchflat, german, captions={("manual", "de", "json3"): fixture_path(*JSON3)})
    items = [{"video_id": good, "url": "u"}, {"video_id": german, "url": "u"}]
    first = make_crawl(tmp_path, srv).process_batch(items)
    assert first[0][0]["caption_format"] == "json3"
    assert isinstance(first[1][0], Rejected) and first[1][0].reason == "no_english_captions"
    assert srv.hits and not any(p.suffix for p in (tmp_path / "archive").glob(f"{german}.*.*"))  # nothing kept
    n = len(srv.hits)

    second = make_crawl(tmp_path, srv).process_batch(items)  # a new run: new stage object
    assert len(srv.hits) == n, "an archived id was requested again"
    assert second[0] == first[0]
    assert second[1][0].reason == "no_english_captions" and second[1][0].row == first[1][0].row

    # A caption deleted from the archive is fetched again, not silently missing.
    os.unlink(tmp_path / "archive" / f"{good}.en.json3")
    [row] = make_crawl(tmp_path, srv).process({"video_id": good, "url": "u"})
    assert row == first[0][0] and len(srv.hits) > n


def test_permanent_failures_become_categorised_errors(tmp_path, srv, ted):
    ok, gone, limited, forbidden, dropped = make_ids(5)
    for vid in (ok, limited, forbidden, dropped):
        ted_video(srv, ted, vid)
    srv.fail(f"/info/{limited}.info.json", *["429"] * 10)
    srv.fail(f"/captions/{forbidden}.en.json3", "403")
    srv.fail(f"/captions/{dropped}.en.json3", *["drop"] * 20)
    stage = make_crawl(tmp_path, srv, retries=2)
    items = [{"video_id": v, "url": "u"} for v in ("../../x", ok, gone, limited, forbidden, dropped)]
    out = stage.process_batch(items)

    assert out[1][0]["video_id"] == ok  # one good video among the failures
    expected = {0: ("InvalidVideoId", "invalid_id"), 2: ("RemovedVideo", "removed"),
                3: ("RateLimited", "rate_limited"), 4: ("Forbidden", "forbidden"), 5: ("NetworkError", "network")}
    for i, (cls, cat) in expected.items():
        assert isinstance(out[i], Exception), (i, out[i])
        assert type(out[i]).__name__ == cls and str(out[i]).startswith(f"[{cat}] "), str(out[i])
    assert len(srv.hits_for(f"/info/{limited}.info.json")) == 3  # 1 try + 2 retries, then given up
    # The engine turns each into an _errors row; the rows fit the schema.
    rows = [{"stage": "crawl", "part": 0, "item_key": items[i]["video_id"], "error_type": type(out[i]).__name__,
             "message": str(out[i])} for i in expected]
    schemas.validate_rows(rows, schemas.ERRORS)
    # Nothing of the failed videos is left in the archive, and none is recorded as done.
    archive = tmp_path / "archive"
    assert sorted(p.name for p in archive.glob("*.*") if not p.name.startswith(".")) == \
        [f"{ok}.en.json3", f"{ok}.info.json"]
    assert (archive / ".ytdlp-archive.txt").read_text().split() == ["youtube", ok]


def test_plan_lists_ids_file_and_pages(tmp_path, srv):
    page = "".join(f'<iframe src="https://www.youtube.com/embed/{v}"></iframe>'
                   for v in ("N0gZFvpxNhQ", "Ye8mB6VsUHw", "emyi4z-O0ls", "GJLlxj_dtq8"))
    srv.add_bytes("/talks.html", f"<html><head><title>t</title></head><body>{page}</body></html>".encode(),
                  "text/html")
    ids = tmp_path / "ids.txt"
    ids.write_text("emyi4z-O0ls\nhttps://youtu.be/N0gZFvpxNhQ\n../../etc\n")
    stage = make_crawl(tmp_path, srv, ids_file=str(ids), playlists=[srv.url("/talks.html")],
                       max_videos_per_source=3)
    items = list(stage.plan())
    assert items == [
        {"video_id": "emyi4z-O0ls", "url": "https://www.youtube.com/watch?v=emyi4z-O0ls"},
        {"video_id": "N0gZFvpxNhQ", "url": "https://www.youtube.com/watch?v=N0gZFvpxNhQ"},
        {"video_id": "../../etc", "url": "../../etc"},  # kept: process() makes it an invalid_id error
        {"video_id": "Ye8mB6VsUHw", "url": "https://www.youtube.com/watch?v=Ye8mB6VsUHw"},
    ]
    assert [h.path for h in srv.hits] == ["/talks.html"]  # listing only: no video was fetched
    with pytest.raises(Exception, match=r"^\[invalid_id\]"):
        stage.process(items[2])


def test_cookies_file_and_proxy_list(tmp_path, srv, ted):
    vid = make_ids(1)[0]
    ted_video(srv, ted, vid)
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tCONSENT\tYES+livecc\n")
    # The loopback server also answers as an HTTP proxy (absolute-form request targets).
    stage = make_crawl(tmp_path, srv, cookies_file=str(cookies), proxies=[f"http://{srv.address}"])
    [row] = stage.process({"video_id": vid, "url": "u"})
    assert row["caption_format"] == "json3"
    assert srv.hits and all(h.proxied for h in srv.hits)
    assert all("CONSENT=YES+livecc" in (h.cookie or "") for h in srv.hits)
    assert "CONSENT" in cookies.read_text()  # the user's file is left as it was


def test_a_used_stage_travels_to_another_process(tmp_path, srv, ted):
    import pickle
    vid = make_ids(1, "pk")[0]
    ted_video(srv, ted, vid)
    stage = make_crawl(tmp_path, srv, concurrency=2)
    first = stage.process_batch([{"video_id": vid, "url": "u"}])
    clone = pickle.loads(pickle.dumps(stage))  # what Ray does with a stage object
    assert clone.process_batch([{"video_id": vid, "url": "u"}]) == first


def test_archive_on_an_fsspec_root(tmp_path, srv, ted):
    """A non-local archive (here fsspec's memory://, as s3:// would be): yt-dlp writes to a
    local staging folder, finished files are uploaded, and the files are the archive record."""
    import shutil
    import uuid

    import fsspec
    from tests.test_crawl_media import clip, make_media, media_video
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg is not installed")
    vid, media_vid = make_ids(1, "fs")[0], make_ids(1, "fm")[0]
    ted_video(srv, ted, vid)
    media_video(srv, ted, media_vid)
    archive = f"memory://livecc-{uuid.uuid4().hex[:8]}"
    [row] = make_crawl(tmp_path, srv, archive_dir=archive).process({"video_id": vid, "url": "u"})
    assert row["caption_path"] == f"{archive.replace('://', ':///')}/{vid}.en.json3"
    mem = fsspec.filesystem("memory")
    assert mem.cat_file(row["caption_path"]) == fixture_path(*JSON3).read_bytes()
    n = len(srv.hits)
    assert make_crawl(tmp_path, srv, archive_dir=archive).process({"video_id": vid, "url": "u"}) == [row]
    assert len(srv.hits) == n
    [[media]] = make_media(tmp_path, srv, archive_dir=archive).process_batch([clip(media_vid, 10.0, 40.0)])
    assert media["media_path"].endswith(f"/sections/{media_vid}.9000-41000.mp4") and media["has_audio"] is True
    assert mem.exists(media["media_path"])
