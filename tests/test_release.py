"""`livecc release` (release/, flows/release.py) on a corpus built by the pipeline from the real
fixtures, against a Hub stand-in on loopback (tests/hub_loopback.py) that speaks
huggingface_hub's wire format and injects faults.

The corpus is built once with ``python -m livecc build`` (the session's Ray head and Prefect
server); CLI tests run ``python -m livecc release`` as a subprocess with ``HF_ENDPOINT`` and
``HF_TOKEN`` pointing at the stand-in, as a user would. In-process tests call the release
functions directly to aim faults at single requests. ``HF_HUB_DISABLE_XET=1`` throughout: the
Xet transfer path (the production default) is not exercised offline.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import pytest
import yaml

from tests.archive import link_fixtures
from tests.hub_loopback import HubLoopback

pytestmark = pytest.mark.slow
LIVECC = [sys.executable, "-m", "livecc"]
TOKEN = "hf_SECRETtoken_5eb1c0ffee"
FAST_RETRY = {"base_s": 0.01, "max_s": 0.05}


def write_config(tmp: Path, root: Path, archive: Path, **release) -> Path:
    cfg = {"corpus": "rel", "flow": "pretrain", "root": str(root), "part_size": 3, "ray": {"part_retries": 1},
           "stages": {"ingest": {"path": str(archive)}, "lm_loss": {"enabled": False},  # no Qwen2 weights here
                      "shard": {"include_mp4": True, "max_samples_per_shard": 3}},
           "release": {"retry": FAST_RETRY, "batch_files": 2, "num_threads": 1, **release}}
    path = tmp / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args, env, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(LIVECC + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"livecc {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def env(services):
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE")}
    return {**base, **services, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, env):
    """A corpus built by `livecc build` from the real fixtures: clips with an mp4 member (the
    narration video) and caption-only clips (the json3 lesson, the VTT and SRT captions)."""
    tmp = tmp_path_factory.mktemp("release")
    archive = tmp / "archive"
    link_fixtures(archive)
    root = tmp / "root"
    config = write_config(tmp, root, archive)
    run_cli("build", config, "--no-progress", env=env)
    return {"tmp": tmp, "archive": archive, "root": root, "config": config, "folder": root / "rel" / "release"}


@pytest.fixture
def hub():
    with HubLoopback(token=TOKEN) as h:
        yield h


@pytest.fixture
def hub_here(hub, monkeypatch):
    """huggingface_hub in this process pointed at the stand-in (its constants are read at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    return hub


def pipeline_and_config(built, **release):
    from flows.build import open_pipeline
    from release.config import release_config

    pipe = open_pipeline(str(built["config"]), [f"release.{k}={json.dumps(v)}" for k, v in release.items()])
    return pipe, release_config(pipe.cfg)


def staged_release(built, hub=None, repo="lab/rel"):
    from release.folder import stage_release

    pipe, rcfg = pipeline_and_config(built)
    return stage_release(pipe, rcfg, repo_id=repo, endpoint=hub.url if hub else None), rcfg


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_json(a, b) -> bool:
    """Equal JSON values, floats to 1e-12: datasets stores a Json feature as text from pandas'
    ujson and parses it with its fast float parser, which can be off in the last digit
    (0.832 -> 0.8320000000000001)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * max(1.0, abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def shard_samples(shards: list[Path]) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in shards:
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, member = m.name.split(".", 1)
                out.setdefault(key, {})[member] = tf.extractfile(m).read()
    return out


# -- refusing, dry run -------------------------------------------------------------------------

def test_refuses_an_incomplete_corpus_naming_the_parts_and_allow_partial_says_so_in_the_card(built, env, hub):
    extra = built["archive"] / "zlatevideo1.en.vtt"   # a video found after the build: a new ingest part
    extra.write_text((built["archive"] / "manifesto01.en.vtt").read_text())
    try:
        proc = run_cli("release", built["config"], "--repo", "lab/rel", env={**env, "HF_ENDPOINT": hub.url,
                                                                           "HF_TOKEN": TOKEN}, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "is not complete" in proc.stderr and "ingest: 1 pending part(s) [3]" in proc.stderr
        assert "--allow-partial" in proc.stderr and not hub.hits and "Traceback" not in proc.stderr
        part = run_cli("release", built["config"], "--dry-run", "--allow-partial", env=env)
        assert "partial release" in part.stderr
        card = (built["folder"] / "README.md").read_text()
        assert "**Partial release.**" in card and "ingest: 1 pending part(s) [3]" in card
    finally:
        extra.unlink()
    run_cli("release", built["config"], "--dry-run", env=env)   # complete again: the card loses the note
    assert "Partial release" not in (built["folder"] / "README.md").read_text()


def test_dry_run_prints_files_bytes_and_card_and_sends_nothing(built, env, hub):
    proc = run_cli("release", built["config"], "--repo", "lab/rel", "--dry-run",
                   env={**env, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN})
    assert not hub.hits, "a dry run sent requests"
    files = folder_files(built["folder"])
    total = sum(len(b) for b in files.values())
    for path, data in files.items():
        assert path in proc.stdout and f"{len(data):,}" in proc.stdout
    assert f"total: {len(files)} files, {total:,} bytes" in proc.stdout and "nothing was sent" in proc.stdout
    assert "--- README.md (dataset card) ---" in proc.stdout and "task_categories:" in proc.stdout
    assert "## Loading" in proc.stdout and TOKEN not in proc.stdout + proc.stderr


# -- the release folder and the card -------------------------------------------------------------

def test_release_folder_links_the_shards_and_points_index_and_list_at_repo_paths(built):
    from schemas.seek_index import SeekIndex

    staged, _ = staged_release(built)
    folder, shard_dir = built["folder"], built["root"] / "rel" / "shards"
    shards = sorted(shard_dir.glob("*.tar"))
    assert len(shards) >= 3
    for src in shards:
        dst = folder / "data" / "train" / src.name
        assert dst.stat().st_ino == src.stat().st_ino, "shards are hard links, never rewritten"
    listing = json.loads((folder / "shardlist.json").read_text())
    original = json.loads((shard_dir / "shardlist.json").read_text())
    assert [s["url"] for s in listing["shardlist"]] == [f"data/train/{s['url']}" for s in original["shardlist"]]
    assert [(s["sha256"], s["filesize"]) for s in listing["shardlist"]] == \
        [(hashlib.sha256((folder / s["url"]).read_bytes()).hexdigest(), (folder / s["url"]).stat().st_size)
         for s in listing["shardlist"]]
    released, built_index = SeekIndex.open(str(folder)), SeekIndex.open(str(shard_dir))
    assert released.keys() == built_index.keys()
    assert all(released.read(k) == built_index.read(k) for k in built_index.keys())
    assert (folder / "rel_with_seeks.jsonl").stat().st_ino == (shard_dir / "rel_with_seeks.jsonl").stat().st_ino
    assert {f.path for f in staged.files} == set(folder_files(folder))
    assert {"plots/pretrain_clip_duration.png", "plots/wps_filter_wps.png"} <= set(folder_files(folder))
    # staging again changes nothing and leaves no scratch file
    before = {p: (folder / p).stat().st_mtime_ns for p in folder_files(folder)}
    staged_release(built)
    assert {p: (folder / p).stat().st_mtime_ns for p in folder_files(folder)} == before


def test_no_released_file_holds_a_path_of_the_build_machine(built):
    staged, _ = staged_release(built)
    needles = {str(built["root"]), str(built["archive"]), str(built["tmp"]), os.path.realpath(built["tmp"]),
               str(Path(__file__).resolve().parents[2] / "shared" / "fixtures")}
    for path, data in folder_files(built["folder"]).items():   # every byte, shards and mp4 members included
        for needle in needles:
            assert needle.encode() not in data, f"{path} holds {needle}"
    # the check itself refuses a release that would leak (e.g. shards built by an older version)
    from release.folder import ReleaseError, check_no_build_paths
    with pytest.raises(ReleaseError, match="paths of the build machine.*rel_with_seeks.jsonl"):
        check_no_build_paths(staged, [json.loads((built["folder"] / "rel_with_seeks.jsonl").read_text().splitlines()[0])
                                      [0]["content"][1]["title"]])


def test_card_yaml_and_body(built, hub):
    from huggingface_hub import DatasetCard

    staged, rcfg = staged_release(built, hub)
    card = DatasetCard.load(built["folder"] / "README.md", repo_type="dataset")
    data = card.data.to_dict()
    assert data["license"] == "unknown" and data["task_categories"] == ["video-text-to-text"]
    assert data["size_categories"] == ["n<1K"] and data["tags"][:4] == ["webdataset", "video", "streaming", "livecc"]
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train/*.tar"}]}]
    import datasets
    feats = datasets.Features._from_yaml_list(data["dataset_info"]["features"])
    assert set(feats) == {"__key__", "__url__", "json", "mp4"} and feats["mp4"] == datasets.Value("binary")
    assert isinstance(feats["json"]["conversation"], datasets.Json)
    assert feats["json"]["metadata"]["wps"] == datasets.Value("float64") and "media_path" not in feats["json"]["metadata"]
    body = card.text
    facts = staged.facts
    for section in ("## How it was built", "## Statistics", "## Sample format", "## Loading", "## Provenance and rights"):
        assert section in body
    for s in facts["stages"]:
        c = s["counts"]
        assert f"| `{s['name']}` |" in body and f"| {c.get('input', 0):,} | {c.get('kept', 0):,} |" in body
        for reason in list(s["reasons"])[:6]:
            assert f"`{reason}`" in body
    assert any(s["reasons"] for s in facts["stages"]), "the fixtures give rejections to show"
    t = facts["totals"]
    assert f"**{t['samples']:,} clips**" in body and f"from **{t['videos']:,} videos**" in body and t["words"] > 1000
    assert 0 < t["samples_with_mp4"] < t["samples"], "the corpus mixes mp4 and caption-only samples"
    assert f"config hash `{facts['provenance']['config_hash']}`" in body
    assert 'load_dataset("lab/rel", split="train", streaming=True)' in body and "wds.WebDataset" in body
    assert "train.py --annotation_paths ../rel_with_seeks.jsonl" in body
    assert "path: <local path>" in body and str(built["archive"]) not in body
    for p in facts["plots"]:
        assert f"]({p['path']})" in body
    # the Hub's validate-yaml (the stand-in's licence and category checks) accepts it ...
    import requests
    assert requests.post(f"{hub.url}/api/validate-yaml", json={"content": staged.card, "repoType": "dataset"},
                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_card_the_hub_refuses_fails_before_any_upload(built, hub_here):
    from release.folder import ReleaseError, stage_release
    from release.hub import upload_release

    pipe, rcfg = pipeline_and_config(built, license="my-own-licence")
    staged = stage_release(pipe, rcfg, repo_id="lab/badcard", endpoint=hub_here.url)
    with pytest.raises(ReleaseError, match="refuses the dataset card's YAML.*license"):
        upload_release(staged, "lab/badcard", token=TOKEN, rcfg=rcfg, message="m", progress=False)
    assert not hub_here.hits_for("upload") and not hub_here.hits_for("preupload")
    from pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="release.license"):
        pipeline_and_config(built, license="Not A Licence")


# -- loading the release ------------------------------------------------------------------------

def test_datasets_streams_the_staged_folder_with_json_only_samples_as_none(built, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    import datasets

    staged_release(built)
    folder = built["folder"]
    expected = shard_samples(sorted((folder / "data" / "train").glob("*.tar")))
    ds = datasets.load_dataset(str(folder), streaming=True, split="train")
    got = list(ds)
    assert [s["__key__"] for s in got] == list(expected)
    caption_only = 0
    for s in got:
        members = expected[s["__key__"]]
        record = json.loads(members["json"])
        assert s["json"]["metadata"] == record["metadata"] and s["json"]["media"] == record["media"]   # typed: exact
        assert s["json"]["clip_id"] == record["clip_id"]
        assert same_json(s["json"]["conversation"], record["conversation"]), s["__key__"]
        if "mp4" in members:
            assert s["mp4"] == members["mp4"]
        else:
            assert s["mp4"] is None
            caption_only += 1
    assert caption_only and caption_only < len(got)


def test_the_jsonl_works_as_the_reference_train_py_reads_it(built, tmp_path, monkeypatch):
    """Reference data/lmm_dataset.py: ``os.path.exists(video)`` in the working directory, frames
    whose pts lie in [video_start, video_end], words whose end is at or before a frame's pts. Run
    from a folder holding the extracted members, each line must open its clip and its words must
    fall inside the decoded frames; our own loader gives the same turns from the line as from the
    shard sample."""
    from schemas.seek_index import SeekIndex, read_jsonl_with_seeks
    from tests.train_shards import extract_media
    from train.dataset import SourceSpec, StreamingDataset
    from train.video import VideoBudget

    staged_release(built)
    folder = built["folder"]
    clips = extract_media(folder / "data" / "train", tmp_path / "clips")
    seeks, open_line = read_jsonl_with_seeks(str(folder / "rel_with_seeks.jsonl"))
    index = SeekIndex.open(str(folder))
    assert len(seeks) == len(index)
    monkeypatch.chdir(clips)
    with_media = 0
    for i in range(len(seeks)):
        line = open_line(i)
        video = line[0]["content"][0]
        sample = index.sample_json(i)
        if sample["media"]["member"] is None:
            assert not video["video"].startswith("/") and not os.path.exists(video["video"])
            continue
        with_media += 1
        assert video["video"] == f"{sample['clip_id']}.mp4" and os.path.exists(video["video"])
        with av.open(video["video"]) as c:
            pts = [float(f.pts * f.time_base) for f in c.decode(video=0)]
        inside = [t for t in pts if video["video_start"] <= t <= video["video_end"]]
        assert inside and inside[0] < 0.05 and abs(inside[-1] - video["video_end"]) < 1.0
        ends = [w[1] for w in line[1]["content"][0]["text_stream"]]
        assert ends[0] >= -0.05 and ends[-1] <= inside[-1] + 1.0
    assert with_media
    budget = VideoBudget(min_pixels=16 * 28 * 28, max_frames=480, total_pixels=16 * 28 * 28 * 30)
    ds = StreamingDataset([SourceSpec(str(folder)), SourceSpec(str(folder / "rel_with_seeks.jsonl"), media_root=str(clips))],
                          processor=None, budget=budget)
    n = len(index)
    for i in range(n):
        if index.sample_json(i)["media"]["member"]:
            assert ds.prepare(n + i).messages == ds.prepare(i).messages


# -- the upload ---------------------------------------------------------------------------------

def test_release_to_the_hub_as_a_user_with_tag_and_no_token_anywhere(built, env, hub, services):
    user_env = {**env, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    proc = run_cli("release", built["config"], "--repo", "lab/rel", "--tag", "v1", "--no-progress", env=user_env)
    url = f"{hub.url}/datasets/lab/rel"
    assert f"repo:     {url}" in proc.stdout
    repo = hub.repos["lab/rel"]
    files = hub.files("lab/rel")
    assert files.pop(".gitattributes")
    assert files == folder_files(built["folder"]), "the repo holds exactly the release folder"
    head = repo.commits[repo.branches["main"]]
    from pipeline.manifest import code_version
    from release.folder import load_staged
    card_yaml = yaml.safe_load((built["folder"] / "README.md").read_text().split("---")[1])
    assert card_yaml["pretty_name"] == "rel"
    assert head.summary.startswith("Release rel: ") and "config " in head.summary and code_version() in head.summary
    assert repo.tags["v1"] == head.sha
    assert "verified:" in proc.stdout and "sha256 of" in proc.stdout
    listing = json.loads(files["shardlist.json"])
    for s in listing["shardlist"]:   # shards went as LFS objects whose oid is the shard list's sha256
        assert head.tree[s["url"]].lfs_oid == s["sha256"]
    # a user streams it from the Hub by repo id (datasets resolves data/train/*.tar through the Hub API)
    code = ("import json, sys\nfrom datasets import load_dataset\n"
            "ds = load_dataset('lab/rel', split='train', streaming=True)\n"
            "print(json.dumps([[s['__key__'], s['mp4'] is None] for s in ds]))")
    streamed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**user_env, "HF_HOME": str(built["tmp"] / "hf_home_user")})
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    expected = shard_samples(sorted((built["folder"] / "data" / "train").glob("*.tar")))
    assert json.loads(streamed.stdout.strip().splitlines()[-1]) == [[k, "mp4" not in m] for k, m in expected.items()]
    # again: nothing to send, no new commit
    again = run_cli("release", built["config"], "--repo", "lab/rel", "--no-progress", env=user_env)
    assert "no change" in again.stdout and repo.branches["main"] == head.sha
    assert len(load_staged(str(built["folder"])).files) == len(folder_files(built["folder"]))
    # the token is in no output, no file of the corpus and no record of the Prefect server
    for text in (proc.stdout, proc.stderr, again.stdout, again.stderr, head.description, head.summary):
        assert TOKEN not in text
    for base in (built["tmp"], Path(services["PREFECT_HOME"])):
        for p in base.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert TOKEN.encode() not in p.read_bytes(), f"token in {p}"
    for data in hub.files("lab/rel").values():
        assert TOKEN.encode() not in data


def test_sigkill_mid_upload_then_rerun_sends_no_byte_twice(built, env, hub, services):
    from prefect.blocks.system import Secret

    Secret(value=TOKEN).save("hf-token-release-test", overwrite=True)   # the token from a Prefect Secret block
    user_env = {**env, "HF_ENDPOINT": hub.url}                          # no HF_TOKEN
    hub.fail("upload", "ok", "ok", "hold")                              # the third object is in flight at the kill
    args = ["release", built["config"], "--repo", "lab/killed", "--token-secret", "hf-token-release-test", "--no-progress"]
    proc = subprocess.Popen(LIVECC + [str(a) for a in args], env=user_env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert hub.held.wait(300), "the release never reached its third upload"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    finally:
        hub.release_hold()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(hub.repos["lab/killed"].commits) == 1   # created, nothing committed
    first = {oid for oid, n in hub.completed.items() if n}
    assert len(first) == 2
    out = run_cli(*args, env=user_env)
    assert "repo:" in out.stdout and TOKEN not in out.stdout + out.stderr
    files = hub.files("lab/killed")
    files.pop(".gitattributes")
    assert files == folder_files(built["folder"])
    head = hub.repos["lab/killed"].commits[hub.repos["lab/killed"].branches["main"]]
    sizes = {b.lfs_oid: b.size for b in head.tree.values() if b.lfs_oid}
    assert set(hub.completed) == set(sizes) and all(n == 1 for n in hub.completed.values())
    assert dict(hub.received) == sizes, "some LFS bytes were received twice"
    assert not any(oid in h.path for h in hub.hits_for("upload")[3:] for oid in first), "a finished object was sent again"


def test_429_storm_on_commit_and_faults_on_every_endpoint_are_survived(built, hub_here):
    from release.hub import upload_release

    staged, rcfg = staged_release(built, hub_here, repo="lab/storm")
    hub = hub_here
    hub.fail("commit", *["429"] * 6, "drop-after")    # a storm, then an answer lost after the commit landed
    for endpoint, faults in {"create": ["503"], "info": ["drop", "500"], "validate": ["429"], "tree": ["429", "drop"],
                             "preupload": ["500", "429"], "batch": ["drop", "502"], "upload": ["503", "drop"],
                             "verify": ["500"], "tag": ["429"]}.items():
        hub.fail(endpoint, *faults)
    result = upload_release(staged, "lab/storm", token=TOKEN, rcfg=rcfg, message="storm", tag="v2", progress=False)
    repo = hub.repos["lab/storm"]
    assert len(repo.commits) == 2, "exactly one release commit (the retried commit was not applied twice)"
    assert repo.tags["v2"] == repo.branches["main"] == result["commit"]
    files = hub.files("lab/storm")
    files.pop(".gitattributes")
    assert files == folder_files(built["folder"])
    assert result["retries"]["commit"] == 7 and result["verified"]["files"] == len(staged.files)
    assert sum(1 for h in hub.hits_for("commit") if h.status == 429) == 6
    assert all(not hub.faults[e] for e in hub.faults), "every injected fault was met"


def test_retry_after_is_honoured_and_persistent_errors_give_up(hub_here):
    import requests
    from huggingface_hub.errors import HfHubHTTPError

    from release.config import RetryPolicy
    from release.hub import RetryingAdapter, backoff_s, retry_after_s

    hub = hub_here
    hub.retry_after = "7"
    slept: list[float] = []
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    session.mount("http://", RetryingAdapter(RetryPolicy(attempts=4, base_s=0.01, max_s=0.02), sleep=slept.append))
    hub.fail("validate", "429", "503")
    assert session.post(f"{hub.url}/api/validate-yaml", json={"content": "---\nlicense: mit\n---\n"}).status_code == 200
    assert len(slept) == 2 and all(7.0 <= s < 7.1 for s in slept), slept
    hub.fail("validate", *["500"] * 4)
    resp = session.post(f"{hub.url}/api/validate-yaml", json={"content": "---\n---\n"})
    assert resp.status_code == 500 and len(hub.hits_for("validate")) == 3 + 4   # gave up after 4 tries
    # full jitter: spread over [0, ceiling), ceiling doubling up to max_s
    import random
    rng = random.Random(0)
    policy = RetryPolicy(base_s=1.0, max_s=8.0)
    draws = [backoff_s(3, policy, rng=rng) for _ in range(2000)]
    assert 0 <= min(draws) < 0.5 and 7.5 < max(draws) < 8.0
    assert max(backoff_s(0, policy, rng=rng) for _ in range(200)) < 1.0
    assert backoff_s(0, policy, retry_after=30.0) == 30.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_s("12") == 12.0
    assert retry_after_s("soon") is None
    # through huggingface_hub: a 500 that never stops ends in its HTTP error, after our attempts
    from huggingface_hub import HfApi

    from release.hub import hub_session
    with hub_session(RetryPolicy(attempts=3, base_s=0.0)):
        hub.fail("create", *["500"] * 3)
        with pytest.raises(HfHubHTTPError):
            HfApi(endpoint=hub.url, token=TOKEN).create_repo("lab/never", repo_type="dataset")
    assert len(hub.hits_for("create")) == 3


def test_a_release_replaces_an_older_one_and_a_branch_moved_by_someone_else_is_refused(built, hub_here):
    from huggingface_hub import CommitOperationAdd, HfApi

    from release.folder import ReleaseError
    from release.hub import hub_session, upload_release

    staged, rcfg = staged_release(built, hub_here, repo="lab/old")
    api = HfApi(endpoint=hub_here.url, token=TOKEN)
    with hub_session(rcfg.retry):
        api.create_repo("lab/old", repo_type="dataset")
        api.create_commit("lab/old", repo_type="dataset", commit_message="older release", operations=[
            CommitOperationAdd("data/train/rel-00099-000.tar", b"old shard"), CommitOperationAdd("notes.txt", b"x")])
    upload_release(staged, "lab/old", token=TOKEN, rcfg=rcfg, message="new", progress=False)
    files = hub_here.files("lab/old")
    assert "data/train/rel-00099-000.tar" not in files and "notes.txt" not in files
    # someone else commits between our pre-uploads and our commit: refused, not overwritten
    real = api.__class__.preupload_lfs_files

    def preupload_then_someone_commits(self, *a, **kw):
        real(self, *a, **kw)
        if not getattr(preupload_then_someone_commits, "done", False):
            preupload_then_someone_commits.done = True
            HfApi(endpoint=hub_here.url, token=TOKEN).create_commit(
                "lab/old", repo_type="dataset", commit_message="someone else",
                operations=[CommitOperationAdd("README.md", b"---\nlicense: mit\n---\nnot ours\n")])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api.__class__, "preupload_lfs_files", preupload_then_someone_commits)
        (built["folder"] / "README.md").write_text((built["folder"] / "README.md").read_text() + "\nchanged\n")
        changed = staged.__class__(staged.folder, [f.__class__(f.path, f.local, os.path.getsize(f.local), f.sha256)
                                                   for f in staged.files], staged.card)
        with pytest.raises(ReleaseError, match="moved during the release"):
            upload_release(changed, "lab/old", token=TOKEN, rcfg=rcfg, message="newer", progress=False)
    staged_release(built)   # restore the folder's card


def test_branch_revision_and_target_folder(built, hub_here, tmp_path):
    from release.hub import upload_release
    from release.target import publish_to_target

    staged, rcfg = staged_release(built, hub_here, repo="lab/branchy")
    result = upload_release(staged, "lab/branchy", token=TOKEN, rcfg=rcfg, message="on a branch",
                            revision="v0-candidate", progress=False)
    repo = hub_here.repos["lab/branchy"]
    assert result["url"].endswith("/datasets/lab/branchy/tree/v0-candidate")
    assert repo.branches["v0-candidate"] == result["commit"] != repo.branches["main"]
    target = tmp_path / "bucket" / "rel"
    first = publish_to_target(staged, str(target))
    assert folder_files(target) == folder_files(built["folder"]) and first["sent_files"] == len(staged.files)
    (target / "data" / "train" / "rel-00077-000.tar").write_bytes(b"stale")
    (target / "plots" / "x.png.tmp-1234").write_bytes(b"scratch")
    again = publish_to_target(staged, str(target))
    assert again["sent_files"] == 0 and again["removed"] == ["data/train/rel-00077-000.tar"]
    assert folder_files(target) == folder_files(built["folder"])
    mem = publish_to_target(staged, "memory://bucket/rel")
    import fsspec
    fs = fsspec.filesystem("memory")
    assert mem["sent_files"] == len(staged.files)
    assert {f.path: fs.cat_file(f"/bucket/rel/{f.path}") for f in staged.files} == folder_files(built["folder"])


def test_webdataset_reads_the_released_shards_over_http(built, hub_here):
    import webdataset as wds

    from release.hub import upload_release

    staged, rcfg = staged_release(built, hub_here, repo="lab/wds")
    upload_release(staged, "lab/wds", token=TOKEN, rcfg=rcfg, message="for webdataset", progress=False)
    import urllib.request
    base = f"{hub_here.url}/datasets/lab/wds/resolve/main/"
    listing = json.load(urllib.request.urlopen(base + "shardlist.json"))
    urls = [base + s["url"] for s in listing["shardlist"]]
    got = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
           for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}
    assert got == shard_samples(sorted((built["folder"] / "data" / "train").glob("*.tar")))
    assert len(hub_here.hits_for("lfs-get")) >= len(urls)   # served through the LFS redirect
    # one sample with one ranged read, through the released seek index
    import pyarrow.parquet as pq
    row = pq.read_table(io.BytesIO(urllib.request.urlopen(base + "seek_index.parquet").read())).to_pylist()[0]
    req = urllib.request.Request(base + row["shard"], headers={"Range": f"bytes={row['offset']}-{row['offset'] + row['size'] - 1}"})
    assert urllib.request.urlopen(req).read() == got[row["key"]][row["member"]]


def test_release_depends_only_on_the_engine_and_schemas():
    """release/ sits between flows/ and the engine: it imports pipeline/ and schemas/ only, and
    the engine never imports it."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "release").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in {"stages", "recipes", "flows", "livecc", "train"}, f"{path.name}: {name}"
    for path in sorted((repo / "pipeline").glob("*.py")):
        assert "import release" not in path.read_text() and "from release" not in path.read_text()


def test_missing_token_and_offline_mode_are_clear_errors(built, env, hub):
    proc = run_cli("release", built["config"], "--repo", "lab/rel", env={**env, "HF_ENDPOINT": hub.url,
                                                                       "HF_HOME": str(built["tmp"] / "nohome")}, check=False)
    assert proc.returncode == 1 and "no Hugging Face token" in proc.stderr and "HF_TOKEN" in proc.stderr
    proc = run_cli("release", built["config"], "--repo", "lab/rel", env={**env, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN,
                                                                       "HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode == 1 and "HF_HUB_OFFLINE" in proc.stderr
    proc = run_cli("release", built["config"], env=env, check=False)
    assert proc.returncode == 2 and "--repo OWNER/NAME" in proc.stderr
    proc = run_cli("release", built["config"], "--repo", "no-slash", env=env, check=False)
    assert proc.returncode == 2 and "expected OWNER/NAME" in proc.stderr
    assert not hub.hits


def test_the_prefect_deployment_names_the_release_flow_and_its_parameters():
    import inspect

    from prefect import Flow

    from flows.release import release_corpus

    repo = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((repo / "infra" / "prefect" / "prefect.yaml").read_text())
    dep = next(d for d in spec["deployments"] if d["entrypoint"] == "flows/release.py:release_corpus")
    assert isinstance(release_corpus, Flow) and release_corpus.name == "livecc-release"
    params = inspect.signature(release_corpus.fn).parameters
    assert set(dep["parameters"]) <= set(params) and "token" not in params   # a token is never a parameter
    assert (repo / dep["parameters"]["config_path"]).exists()
