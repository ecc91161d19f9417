"""The Batch API path of the query stage (``mode: batch``; docs/recipes.md#query).

Per part: the requests not answered by the response cache are written as JSONL request files
(one ``{"custom_id", "method", "url", "body"}`` line each, at most ``max_requests`` per file),
uploaded with ``files.create(purpose="batch")`` and submitted with ``batches.create``. The
batch ids are saved in ``<stage dir>/_batches/part-XXXXX.json`` as soon as they exist, so a
build killed while a batch runs resumes polling it instead of submitting it again (a kill
between the upload and the submission is found again through ``batches.list``). When the
batches end, their output and error files are read back into one result per request.

``custom_id`` is the request's response-cache key, so a batch made for another model or
template is never mistaken for this one.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from stages.query.client import Redactor, RetryPolicy, content_of, usage_of
from stages.ratelimit import backoff_delay

log = logging.getLogger(__name__)

#: Batch states after which nothing more will be answered.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Of those, the ones whose unanswered requests a later run submits again.
DEAD = frozenset({"failed", "expired", "cancelled"})


class BatchTimeout(RuntimeError):
    """The part's batches did not end within ``timeout_s``; a re-run resumes polling them."""


class BatchJobs:
    """Submit, persist, poll and read back the batches of one part.

    Args:
        client: an ``openai.OpenAI`` / ``AzureOpenAI`` client.
        storage: the corpus :class:`pipeline.storage.Storage`; ``stage_dir`` the stage's folder.
        url: the endpoint path written in each request line (``/v1/chat/completions``; Azure:
            ``/chat/completions``).
        poll_s: seconds between status checks; ``timeout_s``: give up waiting (the part fails
            and a re-run resumes polling).
    """

    def __init__(self, client, storage, stage_dir: str, url: str, *, poll_s: float, timeout_s: float,
                 max_requests: int, policy: RetryPolicy, redactor: Redactor,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.client, self.storage, self.stage_dir, self.url = client, storage, stage_dir, url
        self.poll_s, self.timeout_s, self.max_requests = poll_s, timeout_s, max_requests
        self.policy, self.redactor, self.sleep, self.clock = policy, redactor, sleep, clock
        self.submitted = 0  # request lines submitted by this object (the count a resumed run keeps at 0)

    # -- state -------------------------------------------------------------------------------
    def state_path(self, part: int) -> str:
        return f"{self.stage_dir}/_batches/part-{part:05d}.json"

    def _load(self, part: int) -> dict[str, Any]:
        state = self.storage.read_json(self.state_path(part))
        return state if isinstance(state, dict) and isinstance(state.get("chunks"), list) else {"chunks": []}

    def _save(self, part: int, state: dict[str, Any]) -> None:
        self.storage.write_json(self.state_path(part), state)

    def mark_consumed(self, part: int) -> None:
        """Record that the answers of the part's finished batches are in the response cache: a
        later run submits their unanswered requests again instead of re-reading the same errors."""
        state = self._load(part)
        for ch in state["chunks"]:
            if ch.get("status") in TERMINAL:
                ch["consumed"] = True
        self._save(part, state)

    # -- API calls, with backoff on transient failures ---------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        import openai

        for attempt in range(self.policy.retries + 1):
            try:
                return fn(*args, **kwargs)
            except openai.APIStatusError as exc:
                if exc.status_code != 429 and exc.status_code < 500:
                    raise RuntimeError(self.redactor.scrub(f"batch {what}: {type(exc).__name__}: {exc}")[:1000]) from None
                err = exc
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                err = exc
            if attempt == self.policy.retries:
                raise RuntimeError(self.redactor.scrub(f"batch {what} still failing: {type(err).__name__}: {err}")[:1000])
            self.sleep(backoff_delay(attempt, self.policy.backoff_base_s, self.policy.backoff_max_s))

    def _find_batch(self, input_file_id: str) -> Any | None:
        for b in self._call("list", self.client.batches.list, limit=100):
            if getattr(b, "input_file_id", None) == input_file_id:
                return b
        return None

    # -- the run ---------------------------------------------------------------------------------
    def run(self, part: int, requests: dict[str, dict[str, Any]], name: str = "query"
            ) -> tuple[dict[str, tuple[str, dict[str, int] | None]], dict[str, str]]:
        """Answer ``requests`` (custom_id -> chat request body) through batches.

        Returns:
            ``(answers, failures)``: custom_id -> (reply text, usage or None), and custom_id ->
            why it has no answer (its line in the error file, or the batch's fate).

        Raises:
            BatchTimeout: the batches did not end within ``timeout_s``.
            RuntimeError: an upload or submission failed for good.
        """
        state = self._load(part)
        needed = set(requests)
        live = []
        for ch in state["chunks"]:
            if not needed & set(ch["custom_ids"]) or ch.get("consumed") or ch.get("status") in DEAD:
                continue
            if not ch.get("batch_id"):  # killed between the upload and batches.create
                found = self._find_batch(ch["input_file_id"])
                ch["batch_id"] = found.id if found is not None else self._create(ch["input_file_id"])
                self._save(part, state)
            live.append(ch)
        covered = {cid for ch in live for cid in ch["custom_ids"]}
        rest = [cid for cid in requests if cid not in covered]
        for i in range(0, len(rest), self.max_requests):
            ids = rest[i:i + self.max_requests]
            n = len(state["chunks"])
            lines = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": self.url, "body": requests[cid]},
                                       ensure_ascii=False) + "\n" for cid in ids).encode("utf-8")
            jsonl = f"{self.stage_dir}/_batches/part-{part:05d}-{n:03d}.jsonl"
            self.storage.write_bytes(jsonl, lines)
            fobj = self._call("upload", self.client.files.create,
                              file=(f"{name}-part-{part:05d}-{n:03d}.jsonl", lines, "application/jsonl"),
                              purpose="batch")
            ch = {"input_file_id": fobj.id, "batch_id": None, "custom_ids": ids, "requests_file": jsonl,
                  "status": "uploaded"}
            state["chunks"].append(ch)
            self._save(part, state)
            ch["batch_id"] = self._create(fobj.id)
            ch["status"] = "submitted"
            self._save(part, state)
            self.submitted += len(ids)
            live.append(ch)
            log.info("query part %d: submitted batch %s with %d request(s)", part, ch["batch_id"], len(ids))
        return self._wait(part, state, live, needed)

    def _create(self, input_file_id: str) -> str:
        b = self._call("create", self.client.batches.create, input_file_id=input_file_id, endpoint=self.url,
                       completion_window="24h")
        return b.id

    def _wait(self, part: int, state: dict[str, Any], live: list[dict[str, Any]], needed: set[str]):
        deadline = self.clock() + self.timeout_s
        batches: dict[str, Any] = {}
        while True:
            pending = 0
            for ch in live:
                if ch["batch_id"] in batches and batches[ch["batch_id"]].status in TERMINAL:
                    continue
                b = self._call("retrieve", self.client.batches.retrieve, ch["batch_id"])
                batches[ch["batch_id"]] = b
                if b.status != ch.get("status"):
                    ch["status"] = b.status
                    self._save(part, state)
                if b.status not in TERMINAL:
                    pending += 1
            if not pending:
                break
            if self.clock() > deadline:
                raise BatchTimeout(f"query part {part}: {pending} batch(es) still running after {self.timeout_s:.0f} s "
                                   f"({', '.join(ch['batch_id'] for ch in live)}); run the build again to resume polling")
            self.sleep(self.poll_s)
        answers: dict[str, tuple[str, dict[str, int] | None]] = {}
        failures: dict[str, str] = {}
        for ch in live:
            b = batches[ch["batch_id"]]
            for fid in (getattr(b, "output_file_id", None), getattr(b, "error_file_id", None)):
                if fid:
                    self._read_results(fid, needed, answers, failures)
            for cid in ch["custom_ids"]:
                if cid in needed and cid not in answers and cid not in failures:
                    errors = getattr(getattr(b, "errors", None), "data", None) or []
                    why = "; ".join(f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in errors[:3])
                    failures[cid] = f"batch {b.id} ended {b.status} without an answer" + (f" ({why})" if why else "")
        return answers, failures

    def _read_results(self, file_id: str, needed: set[str], answers: dict, failures: dict) -> None:
        text = self._call("download", self.client.files.content, file_id).text
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            cid = item.get("custom_id")
            if cid not in needed:
                continue
            resp = item.get("response") or {}
            status = resp.get("status_code")
            body = resp.get("body") or {}
            if status == 200 and not item.get("error"):
                answers[cid] = (content_of(body), usage_of(body))
                failures.pop(cid, None)
            elif cid not in answers:
                err = item.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
                msg = err.get("message") if isinstance(err, dict) else str(err)
                failures[cid] = self.redactor.scrub(f"batch request failed (HTTP {status}): {msg}")[:1000]
