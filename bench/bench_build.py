"""End-to-end build of a caption-only archive of 10,000 videos (the real caption fixtures repeated
under new ids) with `livecc build` (Prefect flow, Ray on this machine's cores, parts streaming
from stage to stage) against a plain single-process loop over the same stage functions, in the
same run. Then the time of a re-run with nothing to do.

Figures:

* ``e2e_build_warm``: ``livecc build`` with a Prefect server and a Ray head already running
  (``PREFECT_API_URL``, ``RAY_ADDRESS``), as scheduled builds and cluster runs see it. Target
  1.5 on 2 cores.
* ``e2e_build``: the same build cold, into a fresh root: the command starts its own temporary
  Prefect server and a local Ray, as on a workstation (Prefect's database exists already: it is
  created once per machine, before the timing). Target 1.2.
* ``e2e_noop_rerun``: the cold command again with nothing to do. Target under 5 s.

    python bench/bench_build.py [--videos 10000] [--part-size 200] [--keep DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = Path(os.environ.get("LIVECC_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()
CAPTIONS = [
    ("en.json3", "captions/ytenglishhub_english_lesson_asr.en.json3"),
    ("en.vtt", "captions/videogrep_manifesto_auto.en.vtt"),
    ("en.vtt", "captions/longson_jackaskew_N0gZFvpxNhQ_manual.en.vtt"),
    ("en.srt", "captions/ytenglishhub_cookiemonster_Ye8mB6VsUHw_manual.en.srt"),
    ("en.srt", "captions/videogrep_manifesto.en.srt"),
    ("en.vtt", "captions/subtest2_birthday_party_auto.en.vtt"),
    ("en.vtt", "captions/vtttojson_meow_auto.en.vtt"),
    ("en.vtt", "captions/subtest2_short_music_only_auto.en.vtt"),
]


def make_archive(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        suffix, rel = CAPTIONS[i % len(CAPTIONS)]
        dst = folder / f"bench{i:06d}.{suffix}"
        if not dst.exists():
            os.symlink(FIXTURES / rel, dst)


def loop_baseline(archive: Path, out: Path) -> tuple[float, int]:
    """The same stage classes and settings, called in a plain loop in this process."""
    from recipes.pretrain import STAGES
    from pipeline.config import load_config
    from pipeline.pipeline import Pipeline
    from pipeline.stage import Rejected
    from pipeline.worker import run_batches

    cfg_path = write_config(out.parent / "loop.yaml", archive, out)
    pipe = Pipeline(load_config(cfg_path), STAGES)
    stages = [pipe.instantiate(s) for s in pipe.stages]
    for s in stages:
        s.setup()
    t0 = time.perf_counter()
    items = list(stages[0].plan())
    rows = items
    for s in stages[:-1]:
        # the one batch hook, as the executor calls it; errors are dropped (the build records them)
        rows = [r for res in run_batches(s, rows) if not isinstance(res, BaseException)
                for r in res if not isinstance(r, Rejected)]
    shard = stages[-1]
    shard.context.part = 0
    results = shard.process_batch(rows)
    import schemas.seek_index as si
    from pipeline.storage import part_name
    table_rows = [r for res in results if not isinstance(res, BaseException) for r in res]
    pipe.storage.write_table(f"{shard.context.stage_dir}/{part_name(0)}", __import__("schemas").rows_to_table(table_rows, si.SEEK_INDEX))
    shard.finalize([0])
    return time.perf_counter() - t0, len(rows)


PART_SIZE = 200


def write_config(path: Path, archive: Path, root: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "corpus": "bench", "flow": "pretrain", "root": str(root), "part_size": PART_SIZE,
        "stages": {"ingest": {"path": str(archive), "probe_media": False}, "lm_loss": {"enabled": False},
                   "shard": {"include_mp4": False}},
    }))
    return path


@contextlib.contextmanager
def running_services(work: Path, cores: int):
    """A Ray head and a Prefect server on loopback (``tests/services.py``), left to settle;
    yields the environment that points ``livecc`` at them."""
    from tests.services import running_services as services

    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-warm"), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    tmp = work / "services-warm"
    tmp.mkdir(exist_ok=True)
    try:
        with services(tmp, env, num_cpus=cores) as urls:
            env = {**env, **urls}
            probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(); ray.shutdown()"], env=env,
                                   capture_output=True, text=True, timeout=240)
            if probe.returncode != 0:
                sys.exit(f"bench e2e_build_warm: the Ray head did not start:\n{probe.stderr[-2000:]}")
            time.sleep(10)  # a long-running server is idle; freshly started ones still run start-up work
            yield env
    except RuntimeError as exc:
        sys.exit(f"bench e2e_build_warm: {exc}")


def main() -> None:
    global PART_SIZE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=10000)
    ap.add_argument("--part-size", type=int, default=PART_SIZE)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    args = ap.parse_args()
    PART_SIZE = args.part_size
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_build_"))
    archive = work / "archive"
    make_archive(archive, args.videos)

    # the loop runs before and after the builds and the ratios use the mean: this machine's speed
    # drifts by a fifth over minutes, and a baseline taken once would carry that drift
    loop_first, n_clips = loop_baseline(archive, work / "loop_root")

    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "PREFECT_HOME": str(work / "prefect")}
    env.pop("RAY_ADDRESS", None)
    # Prefect creates and migrates its database on the first start in a new PREFECT_HOME (once
    # per machine, 5-10 s): done here, outside the timing, as on any workstation after day one
    subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                   env=env, capture_output=True, timeout=600)
    cores = os.cpu_count()
    with running_services(work, cores) as warm_env:
        warm_cfg = write_config(work / "warm.yaml", archive, work / "root-warm")
        t0 = time.perf_counter()
        warm = subprocess.run([sys.executable, "-m", "livecc", "build", str(warm_cfg), "--no-progress"],
                              env=warm_env, capture_output=True, text=True)
        warm_s = time.perf_counter() - t0
    if warm.returncode != 0:
        sys.exit(f"livecc build (warm) failed:\n{warm.stderr[-3000:]}")
    cfg = write_config(work / "build.yaml", archive, work / "root")
    cmd = [sys.executable, "-m", "livecc", "build", str(cfg), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    build_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"livecc build failed:\n{proc.stderr[-3000:]}")
    t0 = time.perf_counter()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    noop_s = time.perf_counter() - t0
    if "Nothing to do" not in again.stdout:
        sys.exit(f"the re-run did work:\n{again.stdout[-2000:]}")
    loop_last, _ = loop_baseline(archive, work / "loop_root_again")
    loop_s = (loop_first + loop_last) / 2
    print(f"bench e2e_build_warm: ratio={loop_s / warm_s:.2f} target=1.5 (livecc build {warm_s:.1f} s with a "
          f"Prefect server and a Ray head already running, single-process loop {loop_s:.1f} s (mean of {loop_first:.1f} "
          f"before and {loop_last:.1f} after); {args.videos} "
          f"caption-only videos, {n_clips} clips, parts of {PART_SIZE}, {cores} cores)")
    print(f"bench e2e_build: ratio={loop_s / build_s:.2f} target=1.2 (livecc build {build_s:.1f} s incl. local Ray "
          f"and Prefect start, loop {loop_s:.1f} s; same archive)")
    print(f"bench e2e_noop_rerun: ratio={5.0 / noop_s:.2f} target=1.0 (re-run with nothing to do took {noop_s:.2f} s; "
          f"target under 5 s)")


if __name__ == "__main__":
    main()
