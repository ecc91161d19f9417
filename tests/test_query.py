"""The query stage (stages/query) against a loopback server speaking the OpenAI wire format
(tests/openai_loopback.py), through the real ``openai`` SDK: the reference prompt, YES/NO and
unparseable replies, retries and backoff, the response cache, the request and token budgets,
the Batch API with resume after SIGKILL, cost accounting, dry runs, and the API key never
leaving the process. Clips are cut from real fixture captions."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

import schemas
from pipeline.stage import StageContext
from pipeline.storage import Storage
from pipeline.worker import execute_part
from stages.caption_parse import parse_json3, parse_vtt
from stages.clip import clip_row, pretrain_clips
from stages.query import OptionalQuery, Query, QueryConfig, QueryOffConfig
from stages.query.client import EndpointRefused, MissingApiKey, Redactor, estimate_prompt_tokens
from stages.query.cost import DEFAULT_PRICES, cost_usd, price_for
from stages.query.prompt import TEMPLATE, UnparseableReply, build_prompt, parse_reply, transcript
from tests.conftest import fixture_path
from tests.openai_loopback import QUERY, OpenAILoopback, says_no

KEY_ENV = "LIVECC_TEST_OPENAI_KEY"
REPO = Path(__file__).resolve().parents[1]


def key() -> str:
    return os.environ[KEY_ENV]


@pytest.fixture(scope="module")
def clips() -> list[dict]:
    """CLIPS rows cut from three real caption files (json3 lesson, auto-VTT manifesto, manual VTT)."""
    out = []
    sources = [("lesson00001", parse_json3(fixture_path("captions", "ytenglishhub_english_lesson_asr.en.json3")
                                           .read_text(encoding="utf-8"))),
               ("manifesto01", parse_vtt(fixture_path("captions", "videogrep_manifesto_auto.en.vtt")
                                         .read_text(encoding="utf-8"))),
               ("jackaskew01", parse_vtt(fixture_path("captions", "longson_jackaskew_N0gZFvpxNhQ_manual.en.vtt")
                                         .read_text(encoding="utf-8")))]
    for vid, words in sources:
        for c in pretrain_clips(words):
            out.append(clip_row({"video_id": vid, "title": f"fixture {vid}", "transcript_source": "cc"}, c))
    assert len(out) >= 6 and len({transcript(c["words"]) for c in out}) == len(out)
    return out


def make_stage(tmp_path, srv=None, part=0, cls=Query, **kw) -> Query:
    settings = {"api_key_env": KEY_ENV, "requests_per_minute": None, "tokens_per_minute": None,
                "backoff_base_s": 0.01, "backoff_max_s": 2.0, "batch_poll_s": 0.02, **kw}
    if srv is not None:
        settings.setdefault("base_url", srv.base_url)
    ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/query", part=part)
    return cls(cls.Config(**settings), ctx)


def run_part(stage: Query, rows: list[dict], part: int = 0) -> dict:
    return execute_part(stage, stage.context.storage, part, rows)


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.exists() else []


# -- the prompt and the reply --------------------------------------------------------------------

def test_prompt_is_the_reference_template_word_for_word(clips):
    words = [{"start": 0.0, "end": 0.4, "text": " So "}, {"start": 0.5, "end": 0.9, "text": "here"},
             {"start": 1.0, "end": 1.3, "text": "we go. "}]
    text = transcript(words)
    assert text == "So here we go."  # each word stripped, joined with one space (make_prompt.get_prompt)
    expected = textwrap.dedent('''\
        This is the speech transcription from a video clip:

        "So here we go."

        Analyze this transcription and determine if ALL of the following conditions are met:
        1. The speech is describing or commenting on real-time video content
        2. The speaker is not sharing personal experiences or feelings
        3. The transcription is not from multiple people having a conversation
        4. the transcription text has no garbled characters

        If ALL conditions are met, respond with "YES" and suggest a generic user query that would prompt an AI to generate commentary in a similar style (without including any specific content from the original transcription).

        If ANY condition is NOT met, respond with "NO" and no further explanation.

        Format your response as JSON:
        {"result": "YES" or "NO", "query": "your suggested query here or empty string if result is NO"}
        ''')
    assert build_prompt(text) == expected
    assert TEMPLATE.count("{asr}") == 1
    # braces in a transcript survive (str.replace, not str.format)
    assert '"{x} y"' in build_prompt("{x} y")


@pytest.mark.parametrize("reply, expected", [
    ('```json\n{"result": "YES", "query": "Comment on this match live."}\n```', ("YES", "Comment on this match live.")),
    ('{"result": "NO", "query": ""}', ("NO", "")),
    ('Sure! ```\n{"result": "no", "query": "ignored"}```', ("NO", "")),
    ('My answer: {"result": "YES", "query": " Narrate the cooking steps. "} done', ("YES", "Narrate the cooking steps.")),
])
def test_parse_reply_reads_fenced_bare_and_embedded_json(reply, expected):
    assert parse_reply(reply) == expected


@pytest.mark.parametrize("reply", ["", "YES", '{"result": "MAYBE", "query": "x"}', '{"result": "YES", "query": ""}',
                                   "```json\n{not json}\n```", "x" * 900])
def test_parse_reply_rejects_garbage_with_the_reply_cut_to_500_chars(reply):
    with pytest.raises(UnparseableReply) as err:
        parse_reply(reply)
    assert len(str(err.value)) < 620


# -- outcomes ----------------------------------------------------------------------------------------

def test_yes_sets_the_query_no_is_rejected_not_commentary(tmp_path, clips):
    with OpenAILoopback(key=key()) as srv:
        stage = make_stage(tmp_path, srv)
        res = run_part(stage, clips)
        hits = srv.chat_hits()
    no = {c["clip_id"] for c in clips if says_no(transcript(c["words"]))}
    assert 0 < len(no) < len(clips)
    assert res["counts"] == {"input": len(clips), "kept": len(clips) - len(no), "rejected": len(no), "errors": 0}
    assert res["reasons"] == {"not_commentary": len(no)}
    assert len(hits) == len(clips)  # one request per clip
    kept = read(tmp_path / "c/query/part-00000.parquet")
    rejected = read(tmp_path / "c/query/_rejected/part-00000.parquet")
    assert {r["clip_id"] for r in rejected} == no and all(r["reason"] == "not_commentary" for r in rejected)
    assert all(r["query"] == QUERY for r in kept)
    assert all(r["query_prompt_tokens"] > 0 and r["query_completion_tokens"] > 0 for r in kept + rejected)
    # every request asked for JSON through structured output, with the model from the config
    body = hits[0].body
    assert body["model"] == "gpt-4o-2024-08-06" and body["messages"][0]["role"] == "user"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["result"]["enum"] == ["YES", "NO"]
    # the conversation record carries the query as the user text, and in metadata
    from schemas.record import sample_json
    sample = sample_json(kept[0], "v.mp4", False)
    assert sample["conversation"][0]["content"][1]["text"] == QUERY and sample["metadata"]["query"] == QUERY
    usage = json.loads((tmp_path / "c/query/_usage/part-00000.json").read_text())
    assert usage["requests"] == len(clips) and usage["cache_hits"] == 0
    assert usage["prompt_tokens"] == sum(r["query_prompt_tokens"] for r in kept + rejected)
    price = DEFAULT_PRICES["gpt-4o"]
    assert usage["cost_usd"] == pytest.approx(cost_usd(usage["prompt_tokens"], usage["completion_tokens"], price))


def test_unparseable_reply_is_asked_again_once_then_an_error_row_with_500_chars(tmp_path, clips):
    long_garbage = "raw:" + "The speaker seems to " * 60  # > 500 chars, no JSON
    with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
        srv.replies.extend(["garbage", "yes", long_garbage, long_garbage])  # clip 0: garbage, yes; clip 1: garbage twice
        stage = make_stage(tmp_path, srv, concurrency=1)
        res = run_part(stage, clips[:3])
        n = len(srv.chat_hits())
    assert n == 5  # 2 + 2 + 1
    assert res["counts"]["kept"] == 2 and res["counts"]["errors"] == 1
    (err,) = read(tmp_path / "c/query/_errors/part-00000.parquet")
    assert err["item_key"] == clips[1]["clip_id"] and err["error_type"] == "UnparseableReply"
    assert "after 2 attempt(s)" in err["message"] and "The speaker seems to" in err["message"]
    assert len(err["message"]) < 620  # the first 500 characters of the reply, quoted
    usage = json.loads((tmp_path / "c/query/_usage/part-00000.json").read_text())
    assert usage["unparseable"] == 3 and usage["requests"] == 5
    # an unparseable answer is not cached: a forced re-run asks again
    assert len(list((tmp_path / "c/query/_cache").rglob("*.json"))) == 2


def test_missing_usage_gives_null_tokens_and_is_counted(tmp_path, clips):
    with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
        srv.replies.append("nousage:yes")
        res = run_part(make_stage(tmp_path, srv, concurrency=1), clips[:2])
    assert res["counts"]["kept"] == 2
    rows = read(tmp_path / "c/query/part-00000.parquet")
    assert [r["query_prompt_tokens"] is None for r in rows] == [True, False]
    assert json.loads((tmp_path / "c/query/_usage/part-00000.json").read_text())["no_usage"] == 1


def test_a_clip_without_words_is_an_error_row_without_a_request(tmp_path, clips):
    with OpenAILoopback(key=key()) as srv:
        res = run_part(make_stage(tmp_path, srv), [{**clips[0], "words": []}])
        assert srv.count("chat") == 0
    assert res["counts"]["errors"] == 1


# -- retries, backoff, budgets ---------------------------------------------------------------------------

def test_429_500_drops_and_timeouts_are_retried_honouring_retry_after_ms(tmp_path, clips):
    with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
        srv.fail("429:400", "500", "drop", "slow:1.5")
        stage = make_stage(tmp_path, srv, concurrency=1, timeout_s=0.5, backoff_base_s=0.01)
        res = run_part(stage, clips[:2])
        hits = srv.chat_hits()
    assert res["counts"]["kept"] == 2 and res["counts"]["errors"] == 0
    assert [h.status for h in hits[:3]] == [429, 500, -1] and len(hits) == 6  # hits[3]: answered after the timeout
    # the slow answer came too late for the client (0.5 s timeout): asked again, same clip
    assert hits[3].body == hits[4].body
    assert hits[1].t - hits[0].t >= 0.4  # retry-after-ms: 400 honoured over a 10 ms backoff
    assert hits[2].t - hits[1].t < 0.3
    usage = json.loads((tmp_path / "c/query/_usage/part-00000.json").read_text())
    assert usage["rate_limited"] == 1 and usage["retries"] == 4 and usage["requests"] == 6


def test_sdk_retries_are_off_so_retries_do_not_stack(tmp_path, clips):
    stage = make_stage(tmp_path, base_url="http://127.0.0.1:9/v1")
    stage.setup()
    assert stage.client.max_retries == 0


def test_retries_exhausted_and_client_errors_become_error_rows(tmp_path, clips):
    with OpenAILoopback(key=key()) as srv:
        srv.fail("500", "500", "500")
        res = run_part(make_stage(tmp_path, srv, retries=2, concurrency=1), clips[:1])
        assert srv.count("chat") == 3
    (err,) = read(tmp_path / "c/query/_errors/part-00000.parquet")
    assert err["error_type"] == "QueryRequestError" and "still failing after 3 attempts" in err["message"]
    assert res["counts"]["errors"] == 1


def test_requests_per_minute_hold_across_threads(tmp_path, clips):
    rpm = 600.0
    with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
        stage = make_stage(tmp_path, srv, requests_per_minute=rpm, concurrency=6, rate_limit_key=f"rpm-{os.getpid()}")
        run_part(stage, clips)
        times = sorted(h.t for h in srv.chat_hits())
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert rate <= rpm * 1.02, rate


def test_tokens_per_minute_budget_paces_requests(tmp_path, clips):
    tpm = 120_000.0  # 2,000 tokens/s; each request here is ~250-700 tokens
    with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
        stage = make_stage(tmp_path, srv, tokens_per_minute=tpm, max_tokens=16, concurrency=6,
                           rate_limit_key=f"tpm-{os.getpid()}")
        run_part(stage, clips)
        hits = sorted(srv.chat_hits(), key=lambda h: h.t)
    rows = read(tmp_path / "c/query/part-00000.parquet") + read(tmp_path / "c/query/_rejected/part-00000.parquet")
    tokens = sum(r["query_prompt_tokens"] + r["query_completion_tokens"] for r in rows)
    span = hits[-1].t - hits[0].t
    # all but the first request waited for the budget to refill: tokens of the others over the span
    slack = max(r["query_prompt_tokens"] for r in rows) + 200  # one request's estimate: the bucket's granularity
    assert (tokens - slack) / span * 60 <= tpm * 1.05, (tokens, span)
    assert span >= (tokens - 2 * slack) / tpm * 60 * 0.9


# -- the response cache ----------------------------------------------------------------------------------

def test_rerun_force_rerun_send_zero_requests_changed_model_or_template_miss(tmp_path, clips):
    with OpenAILoopback(key=key()) as srv:
        first = run_part(make_stage(tmp_path, srv), clips)
        sent = srv.count("chat")
        assert sent == len(clips)
        # a new actor (a re-run, or `--force`) redoes the part from the cache, byte for byte
        again = run_part(make_stage(tmp_path, srv), clips)
        assert srv.count("chat") == sent
        assert again["output_fingerprint"] == first["output_fingerprint"] and again["counts"] == first["counts"]
        usage = json.loads((tmp_path / "c/query/_usage/part-00000.json").read_text())
        assert usage["cache_hits"] == len(clips) and usage["requests"] == 0 and usage["cost_usd"] == 0
        assert usage["answered"] == len(clips) and usage["answer_cost_usd"] > 0
        # the endpoint does not matter (Azure or vLLM serving the same model), politeness neither
        run_part(make_stage(tmp_path, srv, concurrency=2, requests_per_minute=100), clips)
        assert srv.count("chat") == sent
        run_part(make_stage(tmp_path, srv, model="gpt-4o-mini"), clips)
        assert srv.count("chat") == 2 * sent
        run_part(make_stage(tmp_path, srv, template=TEMPLATE.replace("ALL of", "all of")), clips)
        assert srv.count("chat") == 3 * sent
        run_part(make_stage(tmp_path, srv, temperature=0.0), clips[:2])
        assert srv.count("chat") == 3 * sent + 2


def test_answers_are_cached_as_they_arrive(tmp_path, clips):
    """A kill in the middle of a part loses no answer: each is written when it arrives."""
    with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
        srv.fail(*(["ok"] * 3), "500", "500", "500")
        run_part(make_stage(tmp_path, srv, retries=2, concurrency=1), clips[:5])
        assert len(list((tmp_path / "c/query/_cache").rglob("*.json"))) == 4  # clip 4 failed: not cached
        before = srv.count("chat")
        res = run_part(make_stage(tmp_path, srv), clips[:5])
        assert srv.count("chat") == before + 1 and res["counts"]["kept"] == 5


# -- structured output -----------------------------------------------------------------------------------

def test_endpoint_without_structured_output_gets_the_prompt_alone(tmp_path, clips, caplog):
    with OpenAILoopback(key=key(), reject_response_format=True) as srv:
        with caplog.at_level(logging.WARNING, logger="stages.query.client"):
            res = run_part(make_stage(tmp_path, srv, concurrency=1), clips[:3])
        hits = srv.chat_hits()
    assert res["counts"]["errors"] == 0 and res["counts"]["input"] == 3
    assert [h.status for h in hits] == [400, 200, 200, 200]
    assert all("response_format" not in h.body for h in hits[1:])
    assert sum("rejects response_format" in r.message for r in caplog.records) == 1


# -- endpoints and keys ---------------------------------------------------------------------------------

def test_azure_deployment_api_version_and_api_key_header(tmp_path, clips):
    with OpenAILoopback(key=key(), answer=lambda text: "yes") as srv:
        stage = make_stage(tmp_path, api="azure", base_url=srv.azure_endpoint, deployment="gpt4o-prod",
                           api_version="2024-10-21")
        res = run_part(stage, clips[:2])
        hits = srv.chat_hits()
    assert res["counts"]["kept"] == 2
    assert all(h.path == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21" for h in hits)
    assert all(h.body["model"] == "gpt4o-prod" and h.auth == key() for h in hits)


def test_missing_key_fails_setup_with_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("LIVECC_NO_SUCH_KEY", raising=False)
    with pytest.raises(MissingApiKey, match=r"\$LIVECC_NO_SUCH_KEY is not set"):
        make_stage(tmp_path, api_key_env="LIVECC_NO_SUCH_KEY").setup()
    stage = make_stage(tmp_path, api_key_env=None, base_url="http://127.0.0.1:9/v1")  # a local server: no key
    stage.setup()
    assert stage.client.api_key == "EMPTY"


def test_key_never_reaches_outputs_or_logs(tmp_path, clips, caplog, capfd):
    secret = key()
    wrong = "sk-proj-" + "Zq9" * 12
    with caplog.at_level(logging.DEBUG):
        with OpenAILoopback(key=secret) as srv:
            srv.replies.extend(["garbage", "garbage"])
            srv.fail("429:10", "500")
            run_part(make_stage(tmp_path, srv), clips[:4])
            assert all(h.auth == secret for h in srv.hits)
            # a wrong key fails the part (not one error row per clip); OpenAI-style 401 bodies
            # echo the key masked, and the failure (the manifest's `error`) must not
            os.environ["LIVECC_TEST_WRONG_KEY"] = wrong
            try:
                stage = make_stage(tmp_path / "wrong", srv, api_key_env="LIVECC_TEST_WRONG_KEY", concurrency=1)
                with pytest.raises(EndpointRefused) as refused:
                    run_part(stage, clips[:4])
                assert sum(1 for h in srv.hits if h.auth == wrong) == 1  # refused once: nobody asks again
            finally:
                del os.environ["LIVECC_TEST_WRONG_KEY"]
    out, err = capfd.readouterr()
    failure = str(refused.value)
    assert "AuthenticationError" in failure and "Incorrect API key" in failure and "api_key_env" in failure
    texts = [caplog.text, out, err, failure] + [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*")
                                                if p.is_file()]
    for needle in (secret, wrong, secret[-12:], wrong[-12:], wrong[-4:] + "."):
        assert not any(needle in t for t in texts), needle


def test_redactor_masks_the_key_and_openai_style_echoes():
    r = Redactor("sk-test-0123456789abcdef")
    assert r.scrub("bad key sk-test-0123456789abcdef here") == "bad key *** here"
    assert r.scrub("Incorrect API key provided: sk-proj-********abcd.") == "Incorrect API key provided: sk-proj-***."


# -- the Batch API ------------------------------------------------------------------------------------

def test_batch_mode_uploads_submits_polls_and_reads_output_and_error_files(tmp_path, clips):
    def answer(text):
        return "error" if text == transcript(clips[0]["words"]) else ("garbage" if text == transcript(clips[1]["words"])
                                                                       else "no" if says_no(text) else "yes_fenced")
    with OpenAILoopback(key=key(), answer=answer) as srv:
        srv.replies.extend([])  # online retry of the garbage answer uses the answer rule again: garbage
        stage = make_stage(tmp_path, srv, mode="batch", batch_max_requests=4)
        res = run_part(stage, clips)
        n_files, n_batches, n_chat = srv.count("files.create"), srv.count("batches.create"), srv.count("chat")
        uploads = [h.body for h in srv.hits if h.route == "files.create"]
        # everything answered is cached: a re-run touches no endpoint at all
        hits_before = len(srv.hits)
        again = run_part(make_stage(tmp_path, srv, mode="batch", part=1), clips[2:], part=1)
        assert len(srv.hits) == hits_before and again["counts"]["errors"] == 0
    chunks = -(-len(clips) // 4)
    assert n_files == n_batches == chunks and all(u["purpose"] == "batch" for u in uploads)
    assert sum(u["lines"] for u in uploads) == len(clips)
    assert n_chat == 1  # the unparseable batch answer, asked once more online
    errors = {e["item_key"]: e for e in read(tmp_path / "c/query/_errors/part-00000.parquet")}
    assert set(errors) == {clips[0]["clip_id"], clips[1]["clip_id"]}
    assert "HTTP 500" in errors[clips[0]["clip_id"]]["message"]
    assert errors[clips[1]["clip_id"]]["error_type"] == "UnparseableReply"
    no = sum(1 for c in clips[2:] if says_no(transcript(c["words"])))
    assert res["counts"]["rejected"] == no and res["counts"]["kept"] == len(clips) - 2 - no
    state = json.loads((tmp_path / "c/query/_batches/part-00000.json").read_text())
    assert len(state["chunks"]) == chunks and all(ch["status"] == "completed" and ch["consumed"] for ch in state["chunks"])
    lines = (tmp_path / state["chunks"][0]["requests_file"]).read_text().splitlines()
    assert json.loads(lines[0])["url"] == "/v1/chat/completions" and json.loads(lines[0])["body"]["messages"]
    usage = json.loads((tmp_path / "c/query/_usage/part-00000.json").read_text())
    assert usage["batch_requests"] == len(clips) and usage["requests"] == 1
    price = DEFAULT_PRICES["gpt-4o"]
    rows = read(tmp_path / "c/query/part-00000.parquet") + read(tmp_path / "c/query/_rejected/part-00000.parquet")
    p = sum(r["query_prompt_tokens"] for r in rows)
    c = sum(r["query_completion_tokens"] for r in rows)
    assert usage["answer_cost_usd"] == pytest.approx(cost_usd(p, c, price) / 2)  # the batch discount


_KILLED_CHILD = """
import os, sys
sys.path.insert(0, {repo!r})
import pyarrow.parquet as pq
from pipeline.stage import StageContext
from pipeline.storage import Storage
from pipeline.worker import execute_part
from stages.query import Query, QueryConfig
cfg = QueryConfig(base_url={url!r}, api_key_env={env!r}, mode="batch", batch_poll_s=0.05)
ctx = StageContext(storage=Storage({root!r}), corpus="c", stage_dir="c/query", part=0)
stage = Query(cfg, ctx)
rows = pq.read_table({rows!r}).to_pylist()
execute_part(stage, ctx.storage, 0, rows)
"""


def test_batch_resumes_polling_after_sigkill_instead_of_resubmitting(tmp_path, clips):
    import pyarrow as pa

    rows_file = tmp_path / "rows.parquet"
    pq.write_table(schemas.rows_to_table(clips, schemas.CLIPS), rows_file)
    root = tmp_path / "root"
    with OpenAILoopback(key=key()) as srv:
        srv.batch_hold = True  # the batch runs until released
        script = _KILLED_CHILD.format(repo=str(REPO), url=srv.base_url, env=KEY_ENV, root=str(root), rows=str(rows_file))
        child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        state = root / "c/query/_batches/part-00000.json"
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            if srv.count("batches.retrieve") >= 2:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stdout.read().decode()[-3000:]
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        saved = json.loads(state.read_text())
        assert saved["chunks"][0]["batch_id"] and srv.count("batches.create") == 1
        srv.batch_hold = False
        res = run_part(make_stage(root, srv, mode="batch"), clips)
        assert srv.count("files.create") == 1 and srv.count("batches.create") == 1  # polled, not resubmitted
        assert srv.count("chat") == 0
    assert res["counts"]["errors"] == 0 and res["counts"]["kept"] + res["counts"]["rejected"] == len(clips)
    assert json.loads((root / "c/query/_usage/part-00000.json").read_text())["batch_requests"] == 0
    del pa


def test_batch_killed_between_upload_and_submission_finds_its_batch(tmp_path, clips):
    with OpenAILoopback(key=key()) as srv:
        stage = make_stage(tmp_path, srv, mode="batch")
        stage.setup()
        # what a kill right after batches.create but before the state was saved leaves behind
        fobj = stage.client.files.create(file=("x.jsonl", b"", "application/jsonl"), purpose="batch")
        from stages.query.cache import cache_key  # noqa: F401 - custom ids are cache keys
        ids = [stage.cache_key(transcript(c["words"])) for c in clips]
        lines = "".join(json.dumps({"custom_id": i, "method": "POST", "url": "/v1/chat/completions",
                                    "body": stage.body(build_prompt(transcript(c["words"])))}) + "\n"
                        for i, c in zip(ids, clips)).encode()
        srv.files[fobj.id] = lines
        stage.client.batches.create(input_file_id=fobj.id, endpoint="/v1/chat/completions", completion_window="24h")
        stage.context.storage.write_json("c/query/_batches/part-00000.json", {"chunks": [
            {"input_file_id": fobj.id, "batch_id": None, "custom_ids": ids, "status": "uploaded"}]})
        res = run_part(stage, clips)
        assert srv.count("batches.create") == 1 and srv.count("batches.list") == 1
    assert res["counts"]["errors"] == 0


# -- cost, dry run, config ----------------------------------------------------------------------------

def test_prices_by_model_with_prefix_and_batch_discount():
    assert price_for("gpt-4o-2024-08-06", {}) == DEFAULT_PRICES["gpt-4o"]
    assert price_for("gpt-4o-mini-2024-07-18", {}) == DEFAULT_PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-05-13", {}).prompt_usd_per_mtok == 5.0
    assert price_for("Qwen/Qwen2.5-7B-Instruct", {}) is None
    assert cost_usd(1_000_000, 100_000, DEFAULT_PRICES["gpt-4o"]) == pytest.approx(3.5)
    assert cost_usd(1_000_000, 100_000, DEFAULT_PRICES["gpt-4o"], batch=True) == pytest.approx(1.75)


def test_dry_run_counts_requests_and_cost_before_and_after(tmp_path, clips):
    stage = make_stage(tmp_path)
    text = stage.dry_run(clips)
    p = sum(estimate_prompt_tokens(build_prompt(transcript(c["words"]))) for c in clips)
    expected = cost_usd(p, 40 * len(clips), DEFAULT_PRICES["gpt-4o"])
    assert f"requests: {len(clips)} to gpt-4o-2024-08-06 (online)" in text
    assert f"estimated tokens: {p} prompt + {40 * len(clips)} completion" in text
    assert f"${expected:.4f}" in text
    batch = make_stage(tmp_path, mode="batch").dry_run(clips)
    assert f"${expected / 2:.4f} (batch discount 50% applied)" in batch
    assert "unknown (no price" in make_stage(tmp_path, model="my-local-llama").dry_run(clips)
    with OpenAILoopback(key=key()) as srv:
        run_part(make_stage(tmp_path, srv), clips[:3])
    assert f"requests: {len(clips) - 3} to" in make_stage(tmp_path).dry_run(clips)


def test_config_hash_covers_answers_not_endpoints_and_pretrain_default_is_off():
    base = QueryConfig()
    assert base.enabled and not QueryOffConfig().enabled
    assert OptionalQuery.name == Query.name == "query"
    same = QueryConfig(base_url="http://h/v1", api="azure", mode="batch", concurrency=3, api_key_env="X",
                       requests_per_minute=5, prices={"x": {"prompt_usd_per_mtok": 1, "completion_usd_per_mtok": 1}})
    assert same.hash_payload() == base.hash_payload()
    assert QueryConfig(model="gpt-4o-mini").hash_payload() != base.hash_payload()
    assert QueryConfig(template=TEMPLATE + " ").hash_payload() != base.hash_payload()
    assert "template_sha" in base.hash_payload()
    with pytest.raises(ValidationError):
        QueryConfig(template="no slot")
    with pytest.raises(ValidationError):
        QueryConfig(resources={"batch_size": 8})
    with pytest.raises(ValidationError):
        QueryConfig(mode="bulk")


def test_recipes_place_query_before_shard_on_in_sft_off_in_pretraining(tmp_path):
    import yaml

    from pipeline.config import load_config
    from pipeline.executor import Pipeline
    from recipes import recipe_stages

    for flow, on in (("pretrain", False), ("youtube_pretrain", False), ("sft", True), ("youtube_sft", True)):
        cfg_file = tmp_path / f"{flow}.yaml"
        cfg_file.write_text(yaml.safe_dump({"corpus": "c", "flow": flow, "root": str(tmp_path / "r"),
                                            "stages": {"ingest": {"path": str(tmp_path)}} if "youtube" not in flow
                                            else {"crawl": {"ids": ["emyi4z-O0ls"]}}}))
        cfg = load_config(cfg_file)
        names = [s.name for s in recipe_stages(cfg)]
        assert names[-2:] == ["query", "shard"], flow
        assert ("query" in [s.name for s in Pipeline(cfg, recipe_stages(cfg)).stages]) is on, flow
        cfg = load_config(cfg_file, [f"stages.query.enabled={str(not on).lower()}"])
        assert ("query" in [s.name for s in Pipeline(cfg, recipe_stages(cfg)).stages]) is (not on), flow


def test_token_bucket_adjust_books_and_refunds_without_building_burst():
    from stages.ratelimit import TokenBucket

    now = [100.0]
    bucket = TokenBucket(rate_per_s=10.0, clock=lambda: now[0])  # 10 tokens/s
    assert bucket.reserve(50) == 0.0           # first booking goes at once, the next waits 5 s
    bucket.adjust(-30)                          # the answer used 20 tokens, not 50
    assert bucket.reserve(1) == pytest.approx(2.0)
    bucket.adjust(40)                           # and a larger one costs more than booked
    assert bucket.reserve(1) == pytest.approx(2.1 + 4.0)
    now[0] += 100.0
    bucket.adjust(-1000)                        # a refund never takes the bucket below idle
    assert bucket.reserve(10) == 0.0 and bucket.reserve(1) == pytest.approx(1.0)
