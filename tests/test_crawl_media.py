"""The media phase on the real yt-dlp + ffmpeg path against the loopback server: section
downloads (duration, offset, frames), whole downloads that resume, audio only, failures."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import schemas
from pipeline.stage import StageContext
from pipeline.storage import Storage
from stages.crawl.media import MediaConfig, MediaDownload
from tests.conftest import fixture_path
from tests.crawl_loopback import fixture_video, make_ids

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg") or not shutil.which("ffprobe"),
                                reason="ffmpeg/ffprobe are not installed")

VIDEO = ("video", "videogrep_manifesto_narration.mp4")   # 88.08 s, keyframes every 10 s, AAC
VIDEO_S = 88.08


def make_media(root, srv, **kw) -> MediaDownload:
    crawl = dict(info_json_source=srv.url("/info/{video_id}.info.json"), requests_per_minute=None,
                 backoff_base_s=0.01, backoff_max_s=0.1, retries=3, socket_timeout_s=2.0)
    ctx = StageContext(storage=Storage(str(root)), corpus="c", stage_dir="c/media", part=0)
    stage = MediaDownload(MediaConfig(**{**crawl, **kw}), ctx)  # as the config loader merges crawl's section
    stage.setup()
    return stage


def clip(vid, start, end):
    return {"clip_id": schemas.clip_id(vid, start, end), "video_id": vid, "start": start, "end": end,
            "url": f"https://www.youtube.com/watch?v={vid}", "title": "t"}


def media_video(srv, ted, vid, fmt="18", file=None):
    # Format 18 of the real TED info dict is progressive H.264 + AAC mp4, as the fixture video.
    return fixture_video(srv, ted, vid, media={fmt: file or fixture_path(*VIDEO)}, duration=VIDEO_S)


def probe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    return float(data["format"]["duration"]), sorted(s["codec_type"] for s in data["streams"])


def gray_frame(path, t):
    """The decoded frame presented at time ``t`` (s) of ``path``, as 64x36 gray bytes."""
    return subprocess.run(["ffmpeg", "-v", "error", "-ss", f"{t:.3f}", "-i", str(path), "-frames:v", "1",
                           "-vf", "scale=64:36", "-pix_fmt", "gray", "-f", "rawvideo", "-"],
                          capture_output=True, check=True).stdout


def test_section_download_duration_offset_and_frames(tmp_path, srv, ted):
    vid = make_ids(1, "ms")[0]
    media_video(srv, ted, vid)
    clips = [clip(vid, 31.0, 45.0), clip(vid, 50.0, 60.0), clip(vid, 75.0, 86.0)]
    stage = make_media(tmp_path, srv, margin_s=2.0, merge_gap_s=10.0)
    out = stage.process_batch(clips)
    rows = [r[0] for r in out]
    schemas.validate_rows(rows, schemas.CLIPS)

    # Two sections: 29-62 s (the first two clips, merged) and 73-88.08 s (clamped to the end).
    sec = tmp_path / "archive" / "sections"
    assert sorted(p.name for p in sec.iterdir()) == [f"{vid}.29000-62000.mp4", f"{vid}.73000-88000.mp4"]
    assert [r["media_offset"] for r in rows] == [29.0, 29.0, 73.0]
    assert rows[0]["media_path"] == rows[1]["media_path"] == str(sec / f"{vid}.29000-62000.mp4")
    assert all(r["has_audio"] for r in rows)
    for name, (a, b) in {f"{vid}.29000-62000.mp4": (29, 62), f"{vid}.73000-88000.mp4": (73, VIDEO_S)}.items():
        duration, streams = probe(sec / name)
        assert abs(duration - (b - a)) <= 1.0, (name, duration)
        assert streams == ["audio", "video"]
    # Clip time t is at t - media_offset in the section: the same picture as t in the source.
    source = fixture_path(*VIDEO)
    for r, t in ((rows[1], 55.0), (rows[2], 80.4)):
        assert gray_frame(r["media_path"], t - r["media_offset"]) == gray_frame(source, t)
    assert gray_frame(rows[1]["media_path"], 1.0) != gray_frame(source, 1.0)  # the check can fail

    # A second run finds the sections and asks the server for nothing.
    n = len(srv.hits)
    again = make_media(tmp_path, srv).process_batch(clips)
    assert [r[0] for r in again] == rows and len(srv.hits) == n


def test_whole_download_resumes_truncated_and_partial_files(tmp_path, srv, ted):
    a, b = make_ids(2, "mw")
    media_video(srv, ted, a)
    media_video(srv, ted, b)
    srv.fail(f"/media/{a}.18", "truncate")           # the body stops half way
    source = fixture_path(*VIDEO).read_bytes()
    partial = tmp_path / "archive" / ".partial"
    partial.mkdir(parents=True)
    (partial / f"{b}.mp4.part").write_bytes(source[:300_000])  # left over by an interrupted run
    stage = make_media(tmp_path, srv, sections=False)
    out = stage.process_batch([clip(a, 10.0, 50.0), clip(b, 0.0, 40.0), clip(a, 55.0, 85.0)])

    for row in (out[0][0], out[1][0], out[2][0]):
        assert row["media_offset"] == 0.0 and open(row["media_path"], "rb").read() == source
    assert out[0][0]["media_path"] == str(tmp_path / "archive" / f"{a}.mp4")
    hits_a = [h for h in srv.hits_for(f"/media/{a}.18") if h.method == "GET"]
    assert hits_a[0].sent_bytes < len(source)         # truncated ...
    resumed_at = int(hits_a[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= hits_a[0].sent_bytes     # ... and continued from what had arrived
    hits_b = [h for h in srv.hits_for(f"/media/{b}.18") if h.method == "GET"]
    assert hits_b[0].range == "bytes=300000-" and sum(h.sent_bytes for h in hits_b) == len(source) - 300_000
    assert not list(partial.iterdir())


def test_audio_only_format(tmp_path, srv, ted):
    vid = make_ids(1, "ma")[0]
    m4a = tmp_path / "audio.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(fixture_path(*VIDEO)), "-vn", "-c:a", "copy", str(m4a)],
                   check=True)
    # The real info dict's format 140 is m4a audio only; here it serves the fixture's own audio track.
    fixture_video(srv, ted, vid, media={"18": fixture_path(*VIDEO), "140": m4a}, duration=VIDEO_S)
    [[row]] = make_media(tmp_path / "root", srv, format="audio", margin_s=1.0).process_batch([clip(vid, 20.0, 50.0)])
    assert row["media_path"].endswith(f"{vid}.19000-51000.m4a") and row["media_offset"] == 19.0
    duration, streams = probe(row["media_path"])
    assert streams == ["audio"] and abs(duration - 32.0) <= 1.0
    assert srv.hits_for(f"/media/{vid}.18") == []


def test_media_failures_retry_then_become_categorised_errors(tmp_path, srv, ted):
    flaky, gone, ok = make_ids(3, "mf")
    for vid in (flaky, gone, ok):
        media_video(srv, ted, vid)
    # The first request (our probe) passes, ffmpeg's first one fails: the section is fetched again.
    srv.fail(f"/media/{flaky}.18", "ok", "500")
    srv.fail(f"/media/{gone}.18", *["404"] * 20)        # the media is gone for good
    stage = make_media(tmp_path, srv, retries=2)
    out = stage.process_batch([clip(flaky, 10.0, 40.0), clip(gone, 10.0, 40.0), clip(gone, 50.0, 80.0),
                              clip(ok, 0.0, 30.0)])
    assert out[0][0]["media_path"].endswith(f"{flaky}.9000-41000.mp4")
    statuses = [h.status for h in srv.hits_for(f"/media/{flaky}.18")]
    assert statuses[:2] == [206, 500] and statuses.count(206) >= 3  # probe, fail, probe, ffmpeg ...
    assert out[3][0]["media_offset"] == 0.0
    for e in (out[1], out[2]):  # every clip of the failed video carries the category
        assert isinstance(e, Exception) and str(e).startswith("[removed] ") and type(e).__name__ == "RemovedVideo"
    assert len([h for h in srv.hits_for(f"/media/{gone}.18") if h.status == 404]) == 1  # not retried
    assert not [p for p in (tmp_path / "archive" / "sections").iterdir() if p.name.startswith(gone)]


def test_whole_video_media_for_the_videos_table(tmp_path, srv, ted):
    from stages.crawl.media import VideoMediaDownload
    vid = make_ids(1, "wv")[0]
    media_video(srv, ted, vid)
    crawl = dict(info_json_source=srv.url("/info/{video_id}.info.json"), requests_per_minute=None,
                 backoff_base_s=0.01, backoff_max_s=0.1, retries=3, socket_timeout_s=2.0)
    ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/video_media", part=0)
    stage = VideoMediaDownload(VideoMediaDownload.Config(**crawl), ctx)
    stage.setup()
    video = {"video_id": vid, "source": "youtube", "url": f"https://www.youtube.com/watch?v={vid}", "title": "t"}
    (row,) = stage.process_batch([video])[0]
    schemas.validate_rows([row], schemas.VIDEOS)
    assert row["media_path"] == str(tmp_path / "archive" / f"{vid}.mp4") and row["has_audio"]
    duration, streams = probe(row["media_path"])
    assert abs(duration - VIDEO_S) < 1.0 and streams == ["audio", "video"]
    hits = len(srv.hits)
    assert stage.process_batch([video])[0][0]["media_path"] == row["media_path"]
    assert len(srv.hits) == hits   # already in the archive: no request
