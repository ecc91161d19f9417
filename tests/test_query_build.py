"""The query stage inside the engine: the request budget shared by Ray workers, the key from a
Prefect Secret block, and `livecc build` of the shipped caption-only pre-training config with
`query` switched on by `--set` keys, against the OpenAI wire-format loopback server.

The CLI runs as a subprocess against the session's Ray head and Prefect server; its Ray
workers take the head's environment, where tests/conftest.py put the session's random key.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.stage import StageContext
from pipeline.storage import Storage
from stages.query import Query, QueryConfig
from stages.query.prompt import transcript
from tests.archive import link_fixtures
from tests.openai_loopback import QUERY, OpenAILoopback, says_no
from tests.test_query import KEY_ENV, clips, key  # noqa: F401 - the real-caption clips fixture

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LIVECC = [sys.executable, "-m", "livecc"]


def read_parts(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_requests_per_minute_hold_across_ray_workers(tmp_path, clips, services):  # noqa: F811
    ray = pytest.importorskip("ray")
    rpm, workers = 300.0, 2
    rows = (clips * 3)[:12]
    rows = [{**r, "clip_id": f"{r['clip_id']}_{i}", "words": r["words"] + [{"start": 999.0, "end": 999.5, "text": str(i)}]}
            for i, r in enumerate(rows)]  # distinct transcripts: no cache hits
    started = not ray.is_initialized()
    if started:
        ray.init(address=services["RAY_ADDRESS"], log_to_driver=False)
    try:
        with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
            settings = dict(base_url=srv.base_url, api_key_env=KEY_ENV, requests_per_minute=rpm, tokens_per_minute=None,
                            concurrency=3, rate_limit_key=f"query-ray-test-{os.getpid()}")

            @ray.remote(num_cpus=1)
            def query_part(root, part, batch):
                # what an engine actor does: build the stage, set it up, process its part
                ctx = StageContext(storage=Storage(root), corpus="c", stage_dir="c/query", part=part)
                stage = Query(QueryConfig(**settings), ctx)
                stage.setup()
                out = stage.process_batch(batch)
                return os.getpid(), stage.endpoint.requests.backend, [type(r).__name__ for r in out]

            results = ray.get([query_part.remote(str(tmp_path), i, rows[i::workers]) for i in range(workers)])
            times = sorted(h.t for h in srv.chat_hits())
    finally:
        if started:
            ray.shutdown()
    assert {b for _, b, _ in results} == {"ray"} and len({pid for pid, _, _ in results}) == 2
    assert all(t == "list" for _, _, out in results for t in out)
    assert len(times) == len(rows)
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert rate <= rpm * 1.02, rate
    assert times[-1] - times[0] >= (len(times) - 1) * 60 / rpm * 0.98  # the budget paced them


def test_key_from_a_prefect_secret_block(tmp_path, clips, services, monkeypatch):  # noqa: F811
    from prefect.blocks.system import Secret

    block = f"livecc-test-openai-key-{os.getpid()}"
    Secret(value=key()).save(block, overwrite=True)
    monkeypatch.delenv("LIVECC_UNSET_KEY_VAR", raising=False)
    with OpenAILoopback(key=key()) as srv:
        ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/query", part=0)
        stage = Query(QueryConfig(base_url=srv.base_url, api_key_env="LIVECC_UNSET_KEY_VAR", api_key_secret=block,
                                  requests_per_minute=None, tokens_per_minute=None), ctx)
        stage.setup()
        out = stage.process_batch(clips[:2])
        assert all(h.auth == key() for h in srv.chat_hits()) and len(srv.chat_hits()) == 2
    assert all(isinstance(r, list) for r in out)
    ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/query")
    with pytest.raises(RuntimeError, match="could not read the Prefect Secret block 'no-such-block-x'"):
        Query(QueryConfig(api_key_env="LIVECC_UNSET_KEY_VAR", api_key_secret="no-such-block-x"), ctx).setup()


def livecc(*args, env, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(LIVECC + list(args), env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"livecc {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def query_sets(srv: OpenAILoopback, root: Path, mode: str) -> list[str]:
    """The `--set` keys a user gives to switch `query` on in configs/pretrain.yaml."""
    return ["--set", f"root={root}", "--set", "stages.shard.include_mp4=false",
            "--set", "stages.query.enabled=true", "--set", f"stages.query.base_url={srv.base_url}",
            "--set", "stages.query.model=gpt-4o-mini", "--set", f"stages.query.api_key_env={KEY_ENV}",
            "--set", f"stages.query.mode={mode}", "--set", "stages.query.batch_poll_s=0.1",
            "--set", "stages.query.backoff_base_s=0.05"]


def shard_samples(shards: Path) -> dict[str, dict]:
    out = {}
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    sample = json.loads(tf.extractfile(m).read())
                    out[sample["clip_id"]] = sample
    return out


def test_caption_only_build_with_query_switched_on(tmp_path, services, mode="online"):
    # batch mode through the engine is the same stage code as tests/test_query.py's batch tests
    archive = tmp_path / "archive"
    link_fixtures(archive)
    config = REPO / "configs" / "pretrain.yaml"
    env = {**os.environ, **services, "PYTHONUNBUFFERED": "1"}
    root = tmp_path / "root"
    with OpenAILoopback(key=key()) as srv:
        srv.fail("429:300", "500", "drop")
        sets = query_sets(srv, root, mode) + ["--set", f"stages.ingest.path={archive}"]
        proc = livecc("build", str(config), *sets, "--no-progress", env=env)
        sent = srv.count("chat") + sum(h.body.get("lines", 0) for h in srv.hits if h.route == "files.create")
        corpus = root / "pretrain"
        clips = read_parts(corpus / "wps_filter")
        assert len(clips) >= 5
        assert sent >= len(clips)
        # NO clips are rejected rows; every sample in the shards has the query as its user text
        no = {c["clip_id"] for c in clips if says_no(transcript(c["words"]))}
        assert 0 < len(no) < len(clips)
        rejected = read_parts(corpus / "query" / "_rejected")
        assert {r["clip_id"] for r in rejected} == no and {r["reason"] for r in rejected} == {"not_commentary"}
        samples = shard_samples(corpus / "shards")
        assert set(samples) == {c["clip_id"] for c in clips} - no
        for s in samples.values():
            text = s["conversation"][0]["content"][1]["text"]
            assert text == QUERY and s["metadata"]["query"] == QUERY
            assert s["metadata"]["query_prompt_tokens"] > 0
        report = (corpus / "query" / "_report.md").read_text()
        assert "## Requests and cost" in report and "gpt-4o-mini" in report
        rep = json.loads((corpus / "query" / "_report.json").read_text())["stage_section"]["usage"]
        assert rep["answered"] == len(clips) and rep["answer_cost_usd"] > 0
        assert rep["requests" if mode == "online" else "batch_requests"] >= len(clips)
        # a forced re-run asks nothing: every answer is in the corpus's response cache
        before = len(srv.hits)
        forced = livecc("stage", "run", "query", str(config), *sets, "--force", "--no-progress", env=env)
        assert "ran parts [0" in forced.stdout
        assert len(srv.hits) == before
        # the dry run: nothing to send now; another model would send a request per clip
        dry = livecc("stage", "run", "query", str(config), *sets, "--dry-run", "--force", env=env)
        assert "requests: 0 to gpt-4o-mini" in dry.stdout, dry.stdout
        other = livecc("stage", "run", "query", str(config), *sets, "--set", "stages.query.model=gpt-4o", "--dry-run",
                       env=env)
        assert f"requests: {len(clips)} to gpt-4o ({mode})" in other.stdout and "estimated cost: $" in other.stdout
        assert len(srv.hits) == before
    # the key is nowhere: not in any file of the corpus, the command's output, or Prefect
    secret = key()
    for p in root.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p
    for text in (proc.stdout, proc.stderr, forced.stdout, forced.stderr, dry.stdout, other.stdout):
        assert secret not in text
    artifacts = prefect_api("artifacts/filter", {"limit": 200, "offset": 0, "sort": "CREATED_DESC"})
    logs = prefect_api("logs/filter", {"limit": 200, "offset": 0, "sort": "TIMESTAMP_DESC"})
    assert any("Requests and cost" in str(a.get("data")) for a in artifacts)
    assert not any(secret in json.dumps(a) for a in artifacts)
    assert logs and not any(secret in json.dumps(log) for log in logs)


def prefect_api(route: str, body: dict) -> list[dict]:
    """POST to the session's Prefect API (the REST filter endpoints)."""
    import urllib.request

    req = urllib.request.Request(f"{os.environ['PREFECT_API_URL']}/{route}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())
