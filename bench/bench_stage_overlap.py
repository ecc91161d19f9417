"""Stage overlap: the YouTube pre-training recipe, streamed, against its stages run one after
another, in the same run.

A loopback server (tests/crawl_loopback.py) plays YouTube with 150 ms latency per response, as
in the crawl bench: each video is the real TED-Ed info.json rewritten to serve the real auto-VTT
of the manifesto narration and, as media, the real 88 s manifesto video (byte ranges, so the
media stage downloads sections). The recipe's talking-head stage runs the ASD backend with the
real Light-ASD and SCRFD weights from the fixtures (or is left out with ``--no-talking-head``); the
LM-loss stage is switched off (its Qwen2 weights are not here), the language stage runs.

* streamed: ``Pipeline.run()`` of every stage, parts flowing from stage to stage;
* sequential: into a fresh root, ``Pipeline.run([stage])`` for each stage in turn; each stage's
  wall time is summed.

Both use one local Ray with this machine's cores and a fresh executor each (actors start once
per resource shape in both). Prints
``bench stage_overlap: ratio=<streamed wall / sum of stage walls> target=0.6 (...)`` (lower is
better; 1.0 means no overlap).

    python bench/bench_stage_overlap.py [--videos 48] [--part-size 2] [--talking-head lmm|asd|off]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
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


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (all processes; /proc/stat, Linux), 0 elsewhere."""
    try:
        fields = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def serve(ids: list[str], conn) -> None:
    """The loopback YouTube in its own process (so its threads do not share the driver's GIL):
    every id gets the rewritten TED-Ed info.json, the manifesto's auto-VTT and its video."""
    ted = json.loads((FIXTURES / "infojson" / "ytdlp_TEDEd_emyi4z-O0ls.info.json").read_text())
    with Loopback(latency_s=LATENCY_S) as srv:
        for vid in ids:
            fixture_video(srv, ted, vid, captions={("auto", "en", "vtt"): CAPTION}, media={"18": VIDEO},
                          duration=VIDEO_S)
        conn.send(srv.url("/info/{video_id}.info.json"))
        conn.recv()  # until the bench is done


def write_config(path: Path, root: Path, info_url: str, ids: list[str], part_size: int, talking_head: dict) -> Path:
    stages = {
        "crawl": {"ids": ids, "info_json_source": info_url, "requests_per_minute": None,
                  "caption_kinds": ["auto"], "caption_formats": ["vtt"], "archive_dir": str(root / "archive")},
        "pretrain_clip": {"min_clip_sec": 30, "max_clip_sec": 240, "max_empty_sec": 3},
        "lm_loss": {"enabled": False},  # Qwen2-1.5B is not on this machine
        "media": {"sections": True, "margin_s": 1.0},
        "talking_head": talking_head,
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
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--part-size", type=int, default=2)
    ap.add_argument("--talking-head", choices=["lmm", "asd", "off"], default="lmm")
    args = ap.parse_args()
    from pipeline.executor import RayExecutor, ensure_ray

    work = Path(tempfile.mkdtemp(prefix="bench_overlap_"))
    if args.talking_head == "lmm":
        from train.tiny import save_tiny_checkpoint

        th = {"backend": "lmm", "mode": "score", "lmm_model": save_tiny_checkpoint(work / "tiny-qwen2-vl"),
              "device": "cpu"}
    elif args.talking_head == "asd":
        th = {"backend": "asd", "mode": "score", "model_dir": str(FIXTURES / "weights"), "device": "cpu"}
    else:
        th = {"enabled": False}
    ids = {tag: make_ids(args.videos, tag) for tag in ("sq", "st")}
    here, there = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(ids["sq"] + ids["st"], there),
                                                          daemon=True)
    server.start()
    info_url = here.recv()
    try:
        seq = pipeline(write_config(work / "seq.yaml", work / "seq", info_url, ids["sq"], args.part_size, th))
        ensure_ray(seq.cfg)
        ex = RayExecutor(seq.cfg)
        walls = {}
        cpu0, busy0 = time.process_time(), busy_cpu_s()
        try:
            for s in seq.stages:
                t0 = time.perf_counter()
                run = seq.run([s.name], executor=ex, progress=False)
                walls[s.name] = time.perf_counter() - t0
                if run.failed:
                    sys.exit(f"bench stage_overlap: sequential {s.name} failed: {run.failed}")
        finally:
            ex.close()
        seq_cpu, seq_busy = time.process_time() - cpu0, busy_cpu_s() - busy0
        streamed = pipeline(write_config(work / "st.yaml", work / "st", info_url, ids["st"], args.part_size, th))
        ex = RayExecutor(streamed.cfg)
        try:
            t0, cpu0, busy0 = time.perf_counter(), time.process_time(), busy_cpu_s()
            run = streamed.run(executor=ex, progress=False)
            wall, st_cpu, st_busy = time.perf_counter() - t0, time.process_time() - cpu0, busy_cpu_s() - busy0
        finally:
            ex.close()
        if run.failed:
            sys.exit(f"bench stage_overlap: streamed build failed: {run.failed}")
    finally:
        here.send("done")
        server.join(10)
    from pipeline.report import timeline_report

    report = timeline_report(streamed, run)  # where the streamed build's time went (timeline.png)
    samples = (streamed.manifest("shard").finalize or {}).get("summary", {}).get("samples")
    total = sum(walls.values())
    per = ", ".join(f"{k} {v:.1f}" for k, v in walls.items())
    cores = os.cpu_count() or 1
    # however well stages overlap, the streamed wall time cannot go below the CPU work / cores
    floor = seq_busy / cores / total if seq_busy else 0.0
    print(f"bench stage_overlap: ratio={wall / total:.2f} target={TARGET:g} (streamed {wall:.1f} s vs sequential "
          f"{total:.1f} s = {per}; {args.videos} videos in parts of {args.part_size}, {samples} samples, "
          f"{LATENCY_S * 1000:.0f} ms loopback latency, {cores} cores; the machine's CPUs were busy "
          f"{seq_busy / cores / total:.0%} of the sequential run and {st_busy / cores / wall:.0%} of the streamed one: "
          f"on {cores} cores no overlap can go below ratio {floor:.2f}; driver CPU {st_cpu:.1f} s streamed, "
          f"{seq_cpu:.1f} s sequential; timeline {report['timeline_png']})")


if __name__ == "__main__":
    main()
