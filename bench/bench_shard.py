"""Shard write throughput with mp4 members against ffmpeg cutting the same clips, and against a
plain copy of the same bytes (the disk limit).

    python bench/bench_shard.py

Figures (one line each):

* ``shard_write``: clips of a 720p30 H.264/AAC video at a YouTube-typical bitrate
  (about 4 Mbit/s), generated here with ffmpeg (a 4 s encode of noisy test pattern,
  repeated by stream copy to 3 minutes, so generation stays fast). Measured: the shard
  stage's whole ``process_batch`` (stream-copy cuts, json, tar, offsets, sha256, the move
  into place) on 4 clips of 35-45 s. Baseline, same run: ``ffmpeg -ss <start> -to <end> -i
  <media> -c copy <clip>.mp4`` for each clip, the usual way to cut clips into files. ratio =
  ffmpeg seconds / stage seconds. Target 1.0.
* ``shard_write_disk``: the same stage run against ``shutil.copyfile`` of files holding exactly
  the shard's member bytes: how close the stage comes to the disk. No target.
* ``shard_write_low_bitrate``: the ffmpeg comparison on the real narration fixture
  (``videogrep_manifesto_narration.mp4``, 320x180 still cover, 66 kbit/s), where the cost is
  per packet and per process, not per byte.

Each side runs twice and the faster run counts (warm page cache for both).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
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
from stages.shard import Shard, ShardConfig, tar_members  # noqa: E402

FIXTURES = Path(os.environ.get("LIVECC_FIXTURES", REPO.parent / "shared" / "fixtures"))
FIXTURE_VIDEO = FIXTURES / "video" / "videogrep_manifesto_narration.mp4"


def make_media(folder: Path, seconds: int = 180, segment_s: int = 4) -> Path:
    """720p30 H.264 (GOP 2 s) + AAC at about 4 Mbit/s: one short encode, repeated by stream copy."""
    seg = folder / "seg.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=30,noise=alls=12:allf=t,format=yuv420p",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                    "-t", str(segment_s), "-c:v", "libx264", "-preset", "ultrafast", "-g", "60",
                    "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-c:a", "aac", "-b:a", "128k",
                    "-shortest", str(seg)], check=True)
    listing = folder / "list.txt"
    listing.write_text("".join(f"file '{seg}'\n" for _ in range(seconds // segment_s)))
    out = folder / "source.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-c", "copy", str(out)], check=True)
    return out


def clip_rows(media: Path, windows: list[tuple[float, float]]) -> list[dict]:
    rows = []
    for start, end in windows:
        words = [{"start": t, "end": t + 0.4, "text": f"word{int(t)}"} for t in range(int(start) + 1, int(end) - 1)]
        rows.append({"clip_id": schemas.clip_id("bench", start, end), "video_id": "bench", "start": start,
                     "end": end, "words": words, "previous": "", "title": "bench", "category": "Education",
                     "transcript_source": "cc", "url": "https://example.invalid/bench", "media_path": str(media),
                     "media_offset": 0.0, "has_audio": True})
    return rows


def ffmpeg_cuts(media: Path, windows: list[tuple[float, float]], out: Path) -> float:
    """Seconds for ``ffmpeg -ss -to -c copy`` to cut every window into its own mp4."""
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i, (start, end) in enumerate(windows):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{start:.3f}", "-to", f"{end:.3f}", "-i", str(media),
                        "-c", "copy", str(out / f"clip{i}.mp4")], check=True)
    return time.perf_counter() - t0


def measure(name: str, media: Path, windows: list[tuple[float, float]], work: Path, disk: bool = True) -> None:
    rows = clip_rows(media, windows)
    best_stage = float("inf")
    for run in range(2):
        root = work / f"{name}-root{run}"
        stage = Shard(ShardConfig(), StageContext(storage=Storage(str(root)), corpus="b", stage_dir="b/shard", part=0))
        t0 = time.perf_counter()
        results = stage.process_batch(rows)
        best_stage = min(best_stage, time.perf_counter() - t0)
        bad = [r for r in results if isinstance(r, BaseException)]
        if bad:
            raise SystemExit(f"bench {name}: clip failed: {bad[0]!r}")
    shards = sorted((root / "b" / "shards").glob("*.tar"))
    best_ffmpeg = min(ffmpeg_cuts(media, windows, work / f"{name}-ffmpeg{run}") for run in range(2))
    # the same member bytes as plain files, then copied with shutil.copyfile
    src_dir, dst_dir = work / f"{name}-members", work / f"{name}-copy"
    src_dir.mkdir()
    dst_dir.mkdir()
    files, total = [], 0
    for shard in shards:
        raw = shard.read_bytes()
        for m in tar_members(str(shard)):
            p = src_dir / f"{m['key']}.{m['member']}"
            p.write_bytes(raw[m["offset"]:m["offset"] + m["size"]])
            files.append(p)
            total += m["size"]
    best_copy = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for p in files:
            shutil.copyfile(p, dst_dir / p.name)
        best_copy = min(best_copy, time.perf_counter() - t0)
    # for scale: hashing the same bytes once (the shard list needs a sha256 per shard)
    blobs = [p.read_bytes() for p in files]
    best_sha = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        h = hashlib.sha256()
        for b in blobs:
            h.update(b)
        best_sha = min(best_sha, time.perf_counter() - t0)
    clip_s = sum(e - s for s, e in windows)
    print(f"bench {name}: ratio={best_ffmpeg / best_stage:.2f} target=1.0 "
          f"({len(windows)} clips, {clip_s:.0f} s of media, {total / 1e6:.1f} MB of members in {len(shards)} shard(s); "
          f"stage {best_stage:.3f} s = {total / 1e6 / best_stage:.0f} MB/s incl. json, tar, seek offsets and sha256; "
          f"ffmpeg -ss -to -c copy into files {best_ffmpeg:.3f} s)")
    if disk:
        print(f"bench {name}_disk: ratio={best_copy / best_stage:.3f} target=none (the disk limit: copyfile of the "
              f"same member bytes {total / 1e6 / best_copy:.0f} MB/s in {best_copy:.3f} s; sha256 alone "
              f"{total / 1e6 / best_sha:.0f} MB/s)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        work = Path(tmp)
        media = make_media(work)
        measure("shard_write", media, [(3.3, 41.1), (45.7, 83.0), (90.2, 135.6), (137.1, 172.5)], work)
        if FIXTURE_VIDEO.exists():
            measure("shard_write_low_bitrate", FIXTURE_VIDEO, [(1.5, 31.7), (33.3, 58.9), (60.2, 87.4)], work,
                    disk=False)
        else:
            print(f"bench shard_write_low_bitrate: skipped (fixture {FIXTURE_VIDEO} not present)")


if __name__ == "__main__":
    main()
