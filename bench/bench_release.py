"""Release upload throughput against a raw ``PUT`` of the same bytes.

    python bench/bench_release.py

``release_upload``: a release folder of real shards (clips of a 720p30 H.264/AAC video at about
4 Mbit/s, generated with ffmpeg as ``bench_shard.py`` does, cut by the shard stage, one shard
per clip) plus its shard list and a card, uploaded by ``release.hub.upload_release`` -- create
the repo, validate the card, list, pre-upload in batches (preupload + LFS batch + ``PUT`` +
verify), commit, list and verify -- to the Hub stand-in (``tests/hub_loopback.py``) running in
its own process on loopback. Baseline, same run: one ``requests.put`` per file of the same
bytes to the same server's upload endpoint (which reads, hashes and stores a body exactly as
for the release). Each side gets a fresh server (a server that holds an object makes the
release skip it) and runs twice; the faster run counts. ratio = baseline seconds / release
seconds (= release bytes/s over raw PUT bytes/s). Target 0.5. ``HF_HUB_DISABLE_XET=1``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _k, _v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}.items():
    os.environ[_k] = _v

import requests  # noqa: E402

import schemas  # noqa: E402
from pipeline.stage import StageContext  # noqa: E402
from pipeline.storage import Storage, part_name  # noqa: E402
from release.config import ReleaseConfig  # noqa: E402
from release.folder import load_staged  # noqa: E402
from release.hub import upload_release  # noqa: E402
from schemas.seek_index import SEEK_INDEX  # noqa: E402
from stages.shard import Shard, ShardConfig  # noqa: E402

TOKEN = "hf_bench_token"
WINDOWS = [(3.3, 41.1), (45.7, 83.0), (90.2, 135.6), (137.1, 172.5), (5.0, 44.0), (60.0, 99.0)]


def _bench_shard():
    spec = importlib.util.spec_from_file_location("bench_shard", REPO / "bench" / "bench_shard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_release(work: Path) -> Path:
    """A release folder: one real shard per clip, shardlist.json with repo paths, a card."""
    from huggingface_hub import DatasetCard, DatasetCardData

    bs = _bench_shard()
    media = bs.make_media(work)
    rows = bs.clip_rows(media, WINDOWS)
    for i, r in enumerate(rows):   # distinct keys for the repeated windows
        r["clip_id"] = f"{r['clip_id']}-{i}"
    storage = Storage(str(work / "root"))
    ctx = StageContext(storage=storage, corpus="b", stage_dir="b/shard", part=0)
    results = Shard(ShardConfig(max_samples_per_shard=1), ctx).process_batch(rows)
    bad = [r for r in results if isinstance(r, BaseException)]
    if bad:
        raise SystemExit(f"bench release_upload: clip failed: {bad[0]!r}")
    storage.write_table(f"b/shard/{part_name(0)}", schemas.rows_to_table([x for r in results for x in r], SEEK_INDEX))
    Shard(ShardConfig(max_samples_per_shard=1), StageContext(storage=storage, corpus="b", stage_dir="b/shard")).finalize([0])
    shard_dir = work / "root" / "b" / "shards"
    folder = work / "release"
    (folder / "data" / "train").mkdir(parents=True)
    listing = json.loads((shard_dir / "shardlist.json").read_text())
    for s in listing["shardlist"]:
        os.link(shard_dir / s["url"], folder / "data" / "train" / s["url"])
        s["url"] = f"data/train/{s['url']}"
    (folder / "shardlist.json").write_text(json.dumps(listing, indent=1))
    data = DatasetCardData(license="unknown", task_categories=["video-text-to-text"], size_categories=["n<1K"],
                           configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train/*.tar"}]}])
    DatasetCard(f"---\n{data.to_yaml()}\n---\n\n# bench\n").save(folder / "README.md")
    return folder


class Server:
    """tests/hub_loopback.py in a process of its own (a fresh store each time)."""

    def __enter__(self) -> "Server":
        self.store = tempfile.TemporaryDirectory(prefix="bench-hub-")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.hub_loopback", "--token", TOKEN, "--store", self.store.name],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("HF_ENDPOINT="):
            raise SystemExit(f"bench release_upload: the Hub stand-in did not start ({line!r})")
        self.url = line.split("=", 1)[1]
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.store.cleanup()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        folder = make_release(Path(tmp))
        staged = load_staged(str(folder))
        total = staged.size_bytes
        rcfg = ReleaseConfig()
        best_release = best_put = float("inf")
        for run in range(2):
            with Server() as srv:
                t0 = time.perf_counter()
                result = upload_release(staged, f"bench/rel{run}", token=TOKEN, rcfg=rcfg, message="bench",
                                        endpoint=srv.url, progress=False)
                best_release = min(best_release, time.perf_counter() - t0)
                if result["verified"]["files"] != len(staged.files):
                    raise SystemExit("bench release_upload: the release did not verify")
            with Server() as srv:
                session = requests.Session()
                t0 = time.perf_counter()
                for f in staged.files:
                    oid = f.sha256 or hashlib.sha256(Path(f.local).read_bytes()).hexdigest()
                    with open(f.local, "rb") as fh:
                        session.put(f"{srv.url}/lfs/upload/{oid}", data=fh).raise_for_status()
                best_put = min(best_put, time.perf_counter() - t0)
        mb = total / 1e6
        print(f"bench release_upload: ratio={best_put / best_release:.3f} target=0.5 "
              f"({len(staged.files)} files, {mb:.1f} MB, {len(WINDOWS)} shards; release {mb / best_release:.0f} MB/s in "
              f"{best_release:.2f} s with {sum(result['requests'].values())} requests; raw PUT {mb / best_put:.0f} MB/s in "
              f"{best_put:.2f} s; loopback stand-in in its own process, shared 2-core machine)")


if __name__ == "__main__":
    main()
