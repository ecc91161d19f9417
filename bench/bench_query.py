"""Query-stage throughput on loopback: 8 requests in flight per actor against 1.

The loopback server (tests/openai_loopback.py) speaks the OpenAI wire format and adds
``LATENCY_S`` (300 ms, a typical GPT-4o answer time for this short reply) to every chat
answer. Both runs send the same ``CLIPS`` requests, built from real caption transcripts (the
json3 lesson, cut into clips and made distinct so nothing is a cache hit), through
``Query.process_batch`` with the real ``openai`` SDK, request and token budgets unbounded,
each into a fresh corpus (empty response cache). The baseline is ``concurrency: 1``.

Prints one line:
``bench query_throughput: ratio=<requests/s with 8 / with 1> target=5 (...)``.
Run: ``python bench/bench_query.py`` (about 15 s).
"""
from __future__ import annotations

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
from stages.caption_parse import parse_json3  # noqa: E402
from stages.clip import clip_row, pretrain_clips  # noqa: E402
from stages.query import Query, QueryConfig  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402
from tests.openai_loopback import OpenAILoopback  # noqa: E402

CLIPS = int(os.environ.get("BENCH_CLIPS", 32))
LATENCY_S = 0.3
CONCURRENCY = 8
TARGET = 5.0


def clips(n: int) -> list[dict]:
    words = parse_json3((FIXTURES / "captions" / "ytenglishhub_english_lesson_asr.en.json3").read_text(encoding="utf-8"))
    base = [clip_row({"video_id": "lesson00001"}, c) for c in pretrain_clips(words)]
    out = []
    for i in range(n):
        c = base[i % len(base)]
        extra = {"start": c["end"], "end": c["end"] + 0.3, "text": f"part{i}"}  # a distinct transcript
        out.append({**c, "clip_id": f"{c['clip_id']}_{i}", "words": c["words"] + [extra]})
    return out


def run(srv: OpenAILoopback, rows: list[dict], concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        cfg = QueryConfig(base_url=srv.base_url, api_key_env=None, requests_per_minute=None, tokens_per_minute=None,
                          concurrency=concurrency)
        stage = Query(cfg, StageContext(storage=Storage(root), corpus="bench", stage_dir="bench/query", part=0))
        stage.setup()
        first = srv.count("chat")
        t0 = time.perf_counter()
        out = stage.process_batch(rows)
        seconds = time.perf_counter() - t0
    bad = [r for r in out if not isinstance(r, list)]
    if bad or srv.count("chat") - first != len(rows):
        raise SystemExit(f"bench query_throughput: failed items or unexpected request count: {bad[:3]}")
    return seconds


def main() -> None:
    rows = clips(CLIPS)
    with OpenAILoopback(latency_s=LATENCY_S, answer=lambda text: "yes") as srv:
        run(srv, rows[:2], 1)  # warm-up: imports, the first connection
        one_s = run(srv, rows, 1)
        many_s = run(srv, rows, CONCURRENCY)
    ratio = one_s / many_s
    print(f"bench query_throughput: ratio={ratio:.2f} target={TARGET:g} "
          f"({CLIPS} requests, {LATENCY_S * 1000:.0f} ms loopback latency, request and token budgets unbounded; "
          f"concurrency 1: {one_s:.2f}s = {CLIPS / one_s:.2f} requests/s, concurrency {CONCURRENCY}: "
          f"{many_s:.2f}s = {CLIPS / many_s:.2f} requests/s)")


if __name__ == "__main__":
    main()
