"""Stage overlap: the YouTube pre-training recipe, streamed, against its stages run one after
another, in the same run.

A loopback server (tests/crawl_loopback.py) plays YouTube with 150 ms latency per response, as
in the crawl bench: each video is the real TED-Ed info.json rewritten to serve the real auto-VTT
of the manifesto narration and, as media, the real 88 s manifesto video (byte ranges, so the
media stage downloads sections). The recipe's talking-head stage runs the ASD backend with the
real Light-ASD and SCRFD weights from the fixtures (or is left out with ``--no-talking-head``).

* streamed: ``Pipeline.run()`` of every stage, parts flowing from stage to stage;
* sequential: into a fresh root, ``Pipeline.run([stage])`` for each stage in turn; each stage's
  wall time is summed.

Both use one local Ray with this machine's cores and a fresh executor each (actors start once
per resource shape in both). Prints
``bench stage_overlap: ratio=<streamed wall / sum of stage walls> target=0.6 (...)`` (lower is
better; 1.0 means no overlap).

    python bench/bench_stage_overlap.py [--videos 16] [--part-size 2] [--no-talking-head]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _k, _v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

from tests.conftest import FIXTURES  # noqa: E402
from tests.crawl_loopback import Loopback, fixture_video, make_ids  # noqa: E402

LATENCY_S = 0.15
TARGET = 0.6
VIDEO = FIXTURES / "video" / "videogrep_manifesto_narration.mp4"
VIDEO_S = 88.08
CAPTION = FIXTURES / "captions" / "videogrep_manifesto_auto.en.vtt"


def write_config(path: Path, root: Path, srv, ids: list[str], part_size: int, talking_head: bool) -> Path:
    stages = {
        "crawl": {"ids": ids, "info_json_source": srv.url("/info/{video_id}.info.json"), "requests_per_minute": None,
                  "caption_kinds": ["auto"], "caption_formats": ["vtt"], "archive_dir": str(root / "archive")},
        "pretrain_clip": {"min_clip_sec": 30, "max_clip_sec": 240, "max_empty_sec": 3},
        "media": {"sections": True, "margin_s": 1.0},
        "talking_head": {"enabled": talking_head, "backend": "asd", "mode": "score",
                         "model_dir": str(FIXTURES / "weights")},
        "shard": {"include_mp4": True},
    }
    path.write_text(yaml.safe_dump({"corpus": "overlap", "flow": "youtube_pretrain", "root": str(root),
                                    "part_size": part_size, "stages": stages}))
    return path


def pipeline(cfg_path: Path):
    from pipeline.config import load_config
    from pipeline.pipeline import Pipeline
    from recipes import recipe_stages

    cfg = load_config(cfg_path)
    return Pipeline(cfg, recipe_stages(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--part-size", type=int, default=2)
    ap.add_argument("--no-talking-head", action="store_true")
    args = ap.parse_args()
    from pipeline.executor import RayExecutor, ensure_ray

    ted = json.loads((FIXTURES / "infojson" / "ytdlp_TEDEd_emyi4z-O0ls.info.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="bench_overlap_"))
    with Loopback(latency_s=LATENCY_S) as srv:
        ids = {}
        for tag in ("sq", "st"):
            ids[tag] = make_ids(args.videos, tag)
            for vid in ids[tag]:
                fixture_video(srv, ted, vid, captions={("auto", "en", "vtt"): CAPTION}, media={"18": VIDEO},
                              duration=VIDEO_S)
        seq = pipeline(write_config(work / "seq.yaml", work / "seq", srv, ids["sq"], args.part_size,
                                    not args.no_talking_head))
        ensure_ray(seq.cfg)
        ex = RayExecutor(seq.cfg)
        walls = {}
        try:
            for s in seq.stages:
                t0 = time.perf_counter()
                run = seq.run([s.name], executor=ex, progress=False)
                walls[s.name] = time.perf_counter() - t0
                if run.failed:
                    sys.exit(f"bench stage_overlap: sequential {s.name} failed: {run.failed}")
        finally:
            ex.close()
        streamed = pipeline(write_config(work / "st.yaml", work / "st", srv, ids["st"], args.part_size,
                                         not args.no_talking_head))
        ex = RayExecutor(streamed.cfg)
        try:
            t0 = time.perf_counter()
            run = streamed.run(executor=ex, progress=False)
            wall = time.perf_counter() - t0
        finally:
            ex.close()
        if run.failed:
            sys.exit(f"bench stage_overlap: streamed build failed: {run.failed}")
    samples = (streamed.manifest("shard").finalize or {}).get("summary", {}).get("samples")
    total = sum(walls.values())
    per = ", ".join(f"{k} {v:.1f}" for k, v in walls.items())
    print(f"bench stage_overlap: ratio={wall / total:.2f} target={TARGET:g} (streamed {wall:.1f} s vs sequential "
          f"{total:.1f} s = {per}; {args.videos} videos in parts of {args.part_size}, {samples} samples, "
          f"{LATENCY_S * 1000:.0f} ms loopback latency, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
