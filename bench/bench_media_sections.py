"""Bytes downloaded per kept clip: section downloads against whole-video downloads.

The archive: the two long real fixture videos (the 88 s manifesto narration: 66 kbit/s,
keyframes every 10 s, moov at the end; the 123 s 1080p slides narration: keyframes every
5.3 s, moov first), served by the loopback server behind the real TED-Ed info.json
rewritten to point at it. Each video keeps one clip: the middle third of its length.
The media stage downloads them twice into fresh archives: ``sections: true`` (the clip
range plus the default 1 s margins, via yt-dlp ``download_ranges`` and ffmpeg) and
``sections: false`` (whole files, yt-dlp's HTTP downloader).

Bytes are counted at the server. It paces bodies at ``BANDWIDTH`` with a small send
buffer, so a client that stops reading (ffmpeg seeking or finishing a range) is charged
about what it read, not what a fast loopback would have pushed into its socket buffers.

Prints one line:
``bench media_section_bytes: ratio=<section bytes / whole bytes per kept clip> target=0.5 (...)``.
Run: ``python bench/bench_media_sections.py`` (about 15 s).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _k, _v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

import schemas  # noqa: E402
from pipeline.stage import StageContext  # noqa: E402
from pipeline.storage import Storage  # noqa: E402
from stages.crawl.media import MediaConfig, MediaDownload  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402
from tests.crawl_loopback import Loopback, fixture_video  # noqa: E402

BANDWIDTH = 8e6  # bytes/s, a 64 Mbit/s link
TARGET = 0.5
#: video file, duration (s), clips ((start, end) s) covering a third of it
VIDEOS = {
    "videogrep_manifesto_narration.mp4": (88.08, [(29.36, 58.72)]),
    "v2d_laion_slides_narration_1080p.mp4": (122.67, [(40.89, 81.78)]),
}


def clips_of(vid: str, spans) -> list[dict]:
    return [{"clip_id": schemas.clip_id(vid, a, b), "video_id": vid, "start": a, "end": b,
             "url": f"https://www.youtube.com/watch?v={vid}"} for a, b in spans]


def run(srv, ted, sections: bool, tag: str) -> tuple[dict[str, int], int, float, float]:
    """Downloads the clips' media; returns (bytes served per video file, clips, media
    seconds kept, wall s)."""
    clips, kept_s, names = [], 0.0, {}
    for i, (name, (duration, spans)) in enumerate(VIDEOS.items()):
        vid = f"{tag}{i:0{11 - len(tag)}d}"
        names[vid] = name
        fixture_video(srv, ted, vid, media={"18": FIXTURES / "video" / name}, duration=duration)
        clips += clips_of(vid, spans)
        kept_s += sum(b - a for a, b in spans)
    first = len(srv.hits)
    with tempfile.TemporaryDirectory() as root:
        cfg = MediaConfig(info_json_source=srv.url("/info/{video_id}.info.json"), sections=sections,
                          requests_per_minute=None)
        stage = MediaDownload(cfg, StageContext(storage=Storage(root), corpus="bench", stage_dir="bench/media"))
        stage.setup()
        t0 = time.perf_counter()
        out = stage.process_batch(clips)
        wall = time.perf_counter() - t0
    bad = [r for r in out if not isinstance(r, list)]
    if bad:
        raise SystemExit(f"bench media_section_bytes: failed: {bad[:3]}")
    served = {name: sum(h.sent_bytes for h in srv.hits[first:] if h.path.startswith(f"/media/{vid}."))
              for vid, name in names.items()}
    return served, len(clips), kept_s, wall


def main() -> None:
    ted = json.loads((FIXTURES / "infojson" / "ytdlp_TEDEd_emyi4z-O0ls.info.json").read_text())
    total_s = sum(d for d, _ in VIDEOS.values())
    with Loopback(bandwidth_bps=BANDWIDTH) as srv:
        whole, n, kept_s, whole_wall = run(srv, ted, False, "wh")
        sect, n2, _, sect_wall = run(srv, ted, True, "se")
    assert n == n2
    ratio = (sum(sect.values()) / n) / (sum(whole.values()) / n)
    per_video = ", ".join(f"{name.split('_')[1]} {sect[name] / whole[name]:.2f}" for name in VIDEOS)
    print(f"bench media_section_bytes: ratio={ratio:.3f} target={TARGET:g} "
          f"({len(VIDEOS)} videos, {n} clips keeping {kept_s:.0f} of {total_s:.0f} s; per kept clip "
          f"{sum(sect.values()) / n / 1e6:.2f} MB with sections vs {sum(whole.values()) / n / 1e6:.2f} MB whole; "
          f"per video: {per_video}; wall {sect_wall:.1f}s vs {whole_wall:.1f}s at {BANDWIDTH / 1e6:g} MB/s)")


if __name__ == "__main__":
    main()
