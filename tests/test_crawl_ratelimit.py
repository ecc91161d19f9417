"""The global request-rate limit holds with several workers: threads in one process, and
Ray workers sharing the named bucket actor. Measured at the server, on real crawls."""
from __future__ import annotations

import os

import pytest

from pipeline.stage import StageContext
from pipeline.storage import Storage
from stages.crawl import CrawlConfig, YoutubeCrawl
from tests.conftest import fixture_path
from tests.crawl_loopback import Loopback, fixture_video, make_ids

# The measured rate may exceed the configured one only by the jitter between a grant and
# its arrival at the server (first vs last request of a window of several seconds). Each
# worker thread crawls warm-up videos first: the first request of a yt-dlp object spends
# ~80 ms loading the CA bundle after its token was granted, which would bunch arrivals.
JITTER = 1.02


def serve_videos(srv, ted, ids):
    caption = fixture_path("captions", "videogrep_manifesto_auto.en.vtt")
    for vid in ids:
        fixture_video(srv, ted, vid, captions={("manual", "en", "vtt"): caption})


def crawl_config(srv, rpm, key, **kw):
    return dict(info_json_source=srv.url("/info/{video_id}.info.json"), requests_per_minute=rpm,
                rate_limit_key=key, backoff_base_s=0.01, **kw)


def measured_rpm(hits, ids=None):
    """Requests per minute over the hits (for ``ids`` only, if given), and their span (s)."""
    times = sorted(h.t for h in hits if ids is None or any(v in h.path for v in ids))
    assert len(times) >= 10
    return (len(times) - 1) / (times[-1] - times[0]) * 60.0, times[-1] - times[0]


def test_rate_limit_holds_across_threads(tmp_path, ted):
    rpm, threads = 600.0, 6
    warm, ids = make_ids(2 * threads, "rw"), make_ids(15, "rt")
    with Loopback() as srv:
        serve_videos(srv, ted, warm + ids)
        ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/crawl")
        stage = YoutubeCrawl(CrawlConfig(**crawl_config(srv, rpm, "threads-test", concurrency=threads)), ctx)
        stage.process_batch([{"video_id": v, "url": "u"} for v in warm])
        out = stage.process_batch([{"video_id": v, "url": "u"} for v in ids])
        assert all(isinstance(r, list) and r[0]["caption_format"] == "vtt" for r in out), out
        rate, _ = measured_rpm(srv.hits, ids)
        _, span = measured_rpm(srv.hits)
    assert len(srv.hits) == 2 * len(warm + ids)  # info + caption per video
    assert rate <= rpm * JITTER, rate
    assert span >= (len(srv.hits) - 1) * 60.0 / rpm * 0.98  # the limit was what paced them


@pytest.mark.slow  # starts Ray
def test_rate_limit_holds_across_ray_workers(tmp_path, ted, services):
    ray = pytest.importorskip("ray")
    rpm, workers, per_worker, threads = 600.0, 3, 6, 2
    ids = make_ids(workers * per_worker, "ry")
    warm = make_ids(workers * threads * 2, "rz")
    started = not ray.is_initialized()
    if started:  # the session's Ray head (2 CPUs): the workers are separate processes, as on a cluster
        ray.init(address=services["RAY_ADDRESS"], log_to_driver=False)
    try:
        with Loopback() as srv:
            serve_videos(srv, ted, warm + ids)
            settings = crawl_config(srv, rpm, f"ray-test-{os.getpid()}", concurrency=threads)

            @ray.remote(num_cpus=1)
            def crawl_part(root, warm_batch, batch):
                # What an engine actor does: build the stage, set it up, process its rows.
                ctx = StageContext(storage=Storage(root), corpus="c", stage_dir="c/crawl")
                stage = YoutubeCrawl(CrawlConfig(**settings), ctx)
                stage.setup()
                stage.process_batch([{"video_id": v, "url": "u"} for v in warm_batch])
                out = stage.process_batch([{"video_id": v, "url": "u"} for v in batch])
                return os.getpid(), stage.limiter.backend, [r[0]["video_id"] if isinstance(r, list) else str(r)
                                                            for r in out]

            results = ray.get([crawl_part.remote(str(tmp_path), warm[i::workers], ids[i::workers])
                               for i in range(workers)])
            rate, _ = measured_rpm(srv.hits, ids)
            _, span = measured_rpm(srv.hits)
    finally:
        if started:
            ray.shutdown()
    assert sorted(v for _, _, got in results for v in got) == sorted(ids)
    assert {backend for _, backend, _ in results} == {"ray"}
    assert len({pid for pid, _, _ in results}) >= 2  # really several processes
    assert len(srv.hits) == 2 * len(warm + ids)
    assert rate <= rpm * JITTER, rate
    assert span >= (len(srv.hits) - 1) * 60.0 / rpm * 0.98
