"""Crawl throughput on loopback: 4 concurrent crawls per worker against 1, rate limit on.

The loopback server (tests/crawl_loopback.py) serves the real TED-Ed info.json (rewritten to
point at it) and a real json3 caption for every video, adding ``LATENCY_S`` to each
response, as a distant server would; each video costs two requests (info dict, caption).
Both runs crawl the same number of fresh videos through ``YoutubeCrawl.process_batch``
with the global rate limit set to ``RPM``; the measured request rate is checked against it.

Prints one line:
``bench crawl_throughput: ratio=<videos/s with 4 / with 1> target=3 (...)``.
Run: ``python bench/bench_crawl.py`` (about 20 s).
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

from pipeline.stage import StageContext  # noqa: E402
from pipeline.storage import Storage  # noqa: E402
from stages.crawl import CrawlConfig, YoutubeCrawl  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402
from tests.crawl_loopback import Loopback, fixture_video, make_ids  # noqa: E402

VIDEOS = int(os.environ.get("BENCH_VIDEOS", 32))
LATENCY_S = 0.15
RPM = 1500.0
TARGET = 3.0


def run(srv, ted, concurrency: int, prefix: str) -> tuple[float, float]:
    ids = make_ids(VIDEOS, prefix)
    caption = FIXTURES / "captions" / "ytenglishhub_english_lesson_asr.en.json3"
    for vid in ids:
        fixture_video(srv, ted, vid, captions={("manual", "en", "json3"): caption})
    first = len(srv.hits)
    with tempfile.TemporaryDirectory() as root:
        cfg = CrawlConfig(info_json_source=srv.url("/info/{video_id}.info.json"), requests_per_minute=RPM,
                          rate_limit_key=f"bench-{prefix}", concurrency=concurrency)
        stage = YoutubeCrawl(cfg, StageContext(storage=Storage(root), corpus="bench", stage_dir="bench/crawl"))
        stage.setup()
        t0 = time.perf_counter()
        out = stage.process_batch([{"video_id": v, "url": "u"} for v in ids])
        seconds = time.perf_counter() - t0
    bad = [r for r in out if not isinstance(r, list) or r[0].get("caption_format") != "json3"]
    if bad:
        raise SystemExit(f"bench crawl_throughput: failed items: {bad[:3]}")
    hits = sorted(h.t for h in srv.hits[first:])
    rpm = (len(hits) - 1) / (hits[-1] - hits[0]) * 60.0
    return seconds, rpm


def main() -> None:
    ted = json.loads((FIXTURES / "infojson" / "ytdlp_TEDEd_emyi4z-O0ls.info.json").read_text())
    with Loopback(latency_s=LATENCY_S) as srv:
        run(srv, ted, 1, "wu")  # warm-up: imports, first YoutubeDL
        one_s, one_rpm = run(srv, ted, 1, "ba")
        four_s, four_rpm = run(srv, ted, 4, "bb")
    ratio = one_s / four_s
    holds = max(one_rpm, four_rpm) <= RPM * 1.02
    print(f"bench crawl_throughput: ratio={ratio:.2f} target={TARGET:g} "
          f"({VIDEOS} videos x 2 requests, {LATENCY_S * 1000:.0f} ms latency; 1 worker {one_s:.2f}s "
          f"= {VIDEOS / one_s:.1f} videos/s, 4 workers {four_s:.2f}s = {VIDEOS / four_s:.1f} videos/s; "
          f"measured {four_rpm:.0f} requests/min vs limit {RPM:.0f}: {'holds' if holds else 'EXCEEDED'})")


if __name__ == "__main__":
    main()
