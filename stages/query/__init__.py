"""query: GPT-4o user queries for clips (docs/recipes.md#query; reference
``data/production/make_prompt.py``).

For each clip the model reads the transcript in the reference's prompt (:mod:`stages.query.prompt`)
and answers ``{"result": "YES"|"NO", "query": ...}``: YES when the speech comments on the video
in real time, is not personal experience, is not a conversation and has no garbled characters;
then ``query`` is a generic user request for commentary in that style. Outcomes:

* YES: the clip is kept with ``query`` set (the conversation's user text, and metadata);
* NO: a rejected row, reason ``not_commentary`` (the reference kept such clips without a query);
* an unparseable reply is asked again once (``parse_retries``), then is an error row holding
  the first 500 characters of the reply.

Any OpenAI-compatible endpoint works through the official ``openai`` SDK: OpenAI, Azure OpenAI
(``api: azure``, deployment, ``api_version``) or a local vLLM / SGLang server (``base_url``).
JSON is asked for with structured output (``response_format`` with a JSON schema); an endpoint
that rejects it gets the prompt alone. Answers are cached in the corpus (:mod:`stages.query.cache`),
requests share cluster-wide request and token budgets with backoff (:mod:`stages.query.client`),
and ``mode: batch`` uses the Batch API at half the price (:mod:`stages.query.batch`). Each part
records its requests, cache hits, tokens and cost in ``<stage dir>/_usage/part-XXXXX.json``;
the stage report sums them, and ``livecc stage run query CONFIG --dry-run`` estimates a run's
requests and cost without sending anything.
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

import schemas
from pipeline.stage import Rejected, Resources, Stage, StageConfig
from pipeline.storage import part_name
from stages.query.batch import BatchJobs
from stages.query.cache import ResponseCache, cache_key
from stages.query.client import (EST_COMPLETION_TOKENS, ChatEndpoint, Counters, EndpointRefused, QueryRequestError,
                                 Redactor, RetryPolicy, estimate_prompt_tokens, make_client, request_body,
                                 resolve_api_key)
from stages.query.cost import DEFAULT_PRICES, ModelPrice, cost_usd, price_for
from stages.query.prompt import TEMPLATE, UnparseableReply, build_prompt, parse_reply, template_hash, transcript
from stages.ratelimit import RateLimiter

log = logging.getLogger(__name__)

REASON_NO = "not_commentary"


class QueryConfig(StageConfig):
    """Query stage settings (``stages.query`` in the build config; table in docs/recipes.md#query)."""

    model: str = Field("gpt-4o-2024-08-06", description="model name: the request's `model` (Azure: see `deployment`), "
                       "the cache key and the price lookup")
    api: Literal["openai", "azure"] = Field("openai", description="`openai`: OpenAI or any OpenAI-compatible server; "
                                            "`azure`: Azure OpenAI")
    base_url: str | None = Field(None, description="endpoint: null = OpenAI; `http://host:8000/v1` for vLLM/SGLang; "
                                 "the resource endpoint `https://<name>.openai.azure.com` for Azure")
    api_version: str | None = Field("2024-10-21", description="Azure only: the API version")
    deployment: str | None = Field(None, description="Azure only: the deployment name (default: `model`)")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key; "
                                    "null with no secret: no key (local servers)")
    api_key_secret: str | None = Field(None, description="Prefect Secret block holding the key, read when the "
                                       "environment variable is unset")
    mode: Literal["online", "batch"] = Field("online", description="`batch`: the Batch API (half price, answers within 24 h)")
    template: str | None = Field(None, description="prompt template with `{asr}`; null = the reference's, word for word")
    structured_output: Literal["json_schema", "json_object", "off"] = "json_schema"
    temperature: float | None = Field(None, ge=0, le=2, description="null: the endpoint's default, as the reference")
    max_tokens: int | None = Field(256, ge=1, description="completion cap per request")
    seed: int | None = None
    parse_retries: int = Field(1, ge=0, description="asks again after an unparseable reply")
    requests_per_minute: float | None = Field(500.0, gt=0, description="cluster-wide; null: unbounded")
    tokens_per_minute: float | None = Field(30_000.0, gt=0, description="cluster-wide; null: unbounded")
    burst: int = Field(1, ge=1)
    rate_limit_key: str | None = Field(None, description="budget name shared across stages and builds "
                                       "(default: one per endpoint)")
    concurrency: int = Field(8, ge=1, description="requests in flight per actor")
    retries: int = Field(6, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(60.0, gt=0, description="per request")
    batch_poll_s: float = Field(30.0, gt=0)
    batch_timeout_s: float = Field(26 * 3600.0, gt=0, description="then the part fails; a re-run resumes polling")
    batch_max_requests: int = Field(50_000, ge=1, description="requests per batch file (OpenAI's limit: 50,000)")
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES),
                                          description="USD per million tokens by model (a prefix covers dated snapshots)")
    batch_discount: float = Field(0.5, ge=0, le=1)

    # where and how politely requests go, and what they cost, does not change the answers
    runtime_fields: ClassVar[frozenset[str]] = frozenset({
        "api", "base_url", "api_version", "deployment", "api_key_env", "api_key_secret", "mode", "parse_retries",
        "requests_per_minute", "tokens_per_minute", "burst", "rate_limit_key", "concurrency", "retries",
        "backoff_base_s", "backoff_max_s", "timeout_s", "batch_poll_s", "batch_timeout_s", "batch_max_requests",
        "prices", "batch_discount"})

    @field_validator("resources")
    @classmethod
    def _whole_parts(cls, v: Resources | None) -> Resources | None:
        if v is not None and v.batch_size is not None:
            raise ValueError("the query stage takes each part whole (its requests run `concurrency` at a time): "
                             "leave batch_size unset")
        return v

    @field_validator("template")
    @classmethod
    def _has_slot(cls, v: str | None) -> str | None:
        if v is not None and "{asr}" not in v:
            raise ValueError("template must contain {asr} where the transcript goes")
        return v

    @property
    def prompt_template(self) -> str:
        return TEMPLATE if self.template is None else self.template

    def hash_payload(self) -> dict[str, Any]:
        # the template in code is part of what decides the answers
        return {**super().hash_payload(), "template_sha": template_hash(self.prompt_template)}

    def generation_params(self) -> dict[str, Any]:
        """The request settings that decide an answer (part of the cache key)."""
        return {"structured_output": self.structured_output, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.seed}

    def budget_key(self) -> str:
        if self.rate_limit_key:
            return self.rate_limit_key
        where = f"{self.api}:{self.base_url or 'https://api.openai.com/v1'}"
        return "query-" + hashlib.sha256(where.encode()).hexdigest()[:10]


class QueryOffConfig(QueryConfig):
    """:class:`QueryConfig` switched off unless ``enabled: true`` (the pre-training recipes)."""
    enabled: bool = False


class Query(Stage):
    """Clips -> clips with a ``query`` (YES) or ``not_commentary`` rejections (NO); see the module docstring."""

    name = "query"
    Config = QueryConfig
    input_schema = schemas.CLIPS
    output_schema = schemas.CLIPS
    # network-bound: threads overlap the requests (a part at a time, so a part's requests share one
    # pool), and the actor mostly waits: no CPU reserved, beside the CPU stages' (4 parts in flight)
    resources = Resources(num_cpus=0, batch_size=None, concurrency=4)
    key_field = "clip_id"

    config: QueryConfig

    def setup(self) -> None:
        """Resolve the key and open the client; raises :class:`stages.query.client.MissingApiKey`."""
        cfg = self.config
        # the HTTP client logs a line per request at INFO: millions of lines in a worker's log
        for name in ("httpx2", "httpx", "openai"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
        key = resolve_api_key(cfg.api_key_env, cfg.api_key_secret)
        self.redactor = Redactor(key)
        self.client = make_client(cfg.api, cfg.base_url, key, cfg.timeout_s, cfg.api_version)
        del key
        budget = cfg.budget_key()
        self.endpoint = ChatEndpoint(
            self.client, RateLimiter(budget, cfg.requests_per_minute, cfg.burst),
            RateLimiter(f"{budget}-tokens", cfg.tokens_per_minute, cfg.burst),
            self.policy(), self.redactor)
        self._pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="query")

    def policy(self) -> RetryPolicy:
        c = self.config
        return RetryPolicy(retries=c.retries, backoff_base_s=c.backoff_base_s, backoff_max_s=c.backoff_max_s)

    @property
    def cache(self) -> ResponseCache:
        return ResponseCache(self.context.storage, f"{self.context.stage_dir}/_cache")

    @property
    def request_model(self) -> str:
        c = self.config
        return (c.deployment or c.model) if c.api == "azure" else c.model

    def cache_key(self, text: str) -> str:
        return cache_key(self.config.model, template_hash(self.config.prompt_template),
                         self.config.generation_params(), text)

    def body(self, prompt: str) -> dict[str, Any]:
        c = self.config
        return request_body(self.request_model, prompt, structured_output=c.structured_output,
                            temperature=c.temperature, max_tokens=c.max_tokens, seed=c.seed)

    # -- the part -------------------------------------------------------------------------------
    def process_batch(self, rows: list[dict[str, Any]]) -> list:
        """A whole part: cached answers first, the rest online (``concurrency`` at a time) or
        in batches; then one result per clip, and the part's ``_usage`` record."""
        if not hasattr(self, "endpoint"):
            self.setup()
        cfg = self.config
        counters = Counters()
        texts = [transcript(r.get("words")) for r in rows]
        keys = [self.cache_key(t) if t else None for t in texts]
        unique = list(dict.fromkeys(k for k in keys if k))  # row order: requests go out as the clips come
        cache = self.cache
        cached = dict(zip(unique, self._pool.map(cache.get, unique)))
        answers: dict[str, dict[str, Any] | BaseException] = {k: e for k, e in cached.items() if e is not None}
        hits = len(answers)
        todo = [k for k in unique if k not in answers]
        wanted = set(todo)
        prompt_of = {k: build_prompt(t, cfg.prompt_template) for k, t in zip(keys, texts) if k in wanted}
        batch_requests = 0
        if todo and cfg.mode == "batch":
            batch_requests = self._ask_batch(todo, prompt_of, answers, counters)
        elif todo:
            for k, got in zip(todo, self._pool.map(lambda k: self._ask_online_safe(k, prompt_of[k], counters), todo)):
                answers[k] = got
        refused = next((a for a in answers.values() if isinstance(a, EndpointRefused)), None)
        if refused is not None:  # a wrong key or model: the whole part fails (retried, then `failed`)
            raise refused
        results: list = []
        for row, k in zip(rows, keys):
            if k is None:
                results.append(ValueError("the clip has no words: no transcript to ask about"))
            else:
                results.append(self._outcome(row, answers[k]))
        self._write_usage(rows, keys, answers, hits, counters, batch_requests)
        return results

    def _ask_online_safe(self, key: str, prompt: str, counters: Counters, usage: dict | None = None):
        try:
            return self._ask_online(key, prompt, counters, usage)
        except Exception as exc:  # noqa: BLE001 - per-clip isolation
            return self._safe(exc)

    def _ask_online(self, key: str, prompt: str, counters: Counters, usage: dict | None = None,
                    attempts: int | None = None) -> dict[str, Any]:
        """One clip's answer online: asked again after an unparseable reply, then cached.

        Raises:
            UnparseableReply: still unparseable after ``parse_retries`` more attempts.
            QueryRequestError: the request failed for good.
        """
        n = 1 + self.config.parse_retries if attempts is None else attempts
        reply = ""
        for attempt in range(n):
            reply, u = self.endpoint.complete(self.body(prompt), counters)
            usage = _add_usage(usage, u)
            try:
                parse_reply(reply)
            except UnparseableReply:
                counters.add(unparseable=1)
                continue
            entry = {"reply": reply, "usage": usage, "mode": "online", "model": self.config.model}
            self.cache.put(key, entry)
            return entry
        raise UnparseableReply(reply, f"after {n} attempt(s)")

    def _ask_batch(self, todo: list[str], prompt_of: dict[str, str], answers: dict, counters: Counters) -> int:
        cfg = self.config
        jobs = BatchJobs(self.client, self.context.storage, self.context.stage_dir,
                         "/chat/completions" if cfg.api == "azure" else "/v1/chat/completions",
                         poll_s=cfg.batch_poll_s, timeout_s=cfg.batch_timeout_s, max_requests=cfg.batch_max_requests,
                         policy=self.policy(), redactor=self.redactor)
        part = self.context.part or 0
        got, failures = jobs.run(part, {k: self.body(prompt_of[k]) for k in todo}, name=self.context.corpus)
        retry = []
        for k, (reply, usage) in got.items():
            if usage is None:
                counters.add(no_usage=1)
            else:
                counters.add(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                             batch_prompt_tokens=usage["prompt_tokens"],
                             batch_completion_tokens=usage["completion_tokens"])
            try:
                parse_reply(reply)
            except UnparseableReply:
                counters.add(unparseable=1)
                retry.append((k, usage))
                continue
            entry = {"reply": reply, "usage": usage, "mode": "batch", "model": cfg.model}
            self.cache.put(k, entry)
            answers[k] = entry
        # an unparseable batch answer is asked again online: a second batch would wait up to 24 h more
        if retry and cfg.parse_retries:
            for (k, usage), res in zip(retry, self._pool.map(
                    lambda ku: self._ask_online_safe_n(ku[0], prompt_of[ku[0]], counters, ku[1]), retry)):
                answers[k] = res
        else:
            for k, _ in retry:
                answers[k] = UnparseableReply(got[k][0], "batch answer")
        for k, why in failures.items():
            answers[k] = QueryRequestError(why)
        jobs.mark_consumed(part)
        return jobs.submitted

    def _ask_online_safe_n(self, key, prompt, counters, usage):
        try:
            return self._ask_online(key, prompt, counters, usage, attempts=self.config.parse_retries)
        except Exception as exc:  # noqa: BLE001 - per-clip isolation
            return self._safe(exc)

    def _safe(self, exc: BaseException) -> BaseException:
        """The exception with the key scrubbed from its message (it becomes an error row)."""
        msg = str(exc)
        clean = self.redactor.scrub(msg)
        if clean == msg:
            return exc
        return QueryRequestError(f"{type(exc).__name__}: {clean}")

    def _outcome(self, row: dict[str, Any], answer) -> list | BaseException:
        if isinstance(answer, BaseException):
            return answer
        result, query = parse_reply(answer["reply"])
        usage = answer.get("usage") or {}
        out = {**row, "query_prompt_tokens": usage.get("prompt_tokens"),
               "query_completion_tokens": usage.get("completion_tokens")}
        if result == "NO":
            return [Rejected({**out, "query": None}, REASON_NO, "the model answered NO")]
        return [{**out, "query": query}]

    # -- accounting -------------------------------------------------------------------------------
    def _price(self) -> ModelPrice | None:
        return price_for(self.config.model, self.config.prices)

    def _write_usage(self, rows, keys, answers, hits: int, counters: Counters, batch_requests: int) -> None:
        cfg = self.config
        price = self._price()
        c = counters.as_dict()
        batch_p, batch_c = c.pop("batch_prompt_tokens", 0), c.pop("batch_completion_tokens", 0)
        online_p, online_c = c["prompt_tokens"] - batch_p, c["completion_tokens"] - batch_c
        sent_cost = _sum_cost(cost_usd(online_p, online_c, price), cost_usd(batch_p, batch_c, price, True,
                                                                              cfg.batch_discount))
        ans_p = ans_c = 0
        ans_cost: float | None = 0.0 if price else None
        answered = 0
        for k in keys:
            a = answers.get(k) if k else None
            if not isinstance(a, dict):
                continue
            answered += 1
            u = a.get("usage") or {}
            p, cpl = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
            ans_p, ans_c = ans_p + p, ans_c + cpl
            ans_cost = _sum_cost(ans_cost, cost_usd(p, cpl, price, a.get("mode") == "batch", cfg.batch_discount))
        record = {"part": self.context.part, "model": cfg.model, "mode": cfg.mode, "clips": len(rows),
                  "unique_transcripts": len({k for k in keys if k}), "cache_hits": hits,
                  "batch_requests": batch_requests, **c, "cost_usd": sent_cost, "answered": answered,
                  "answer_prompt_tokens": ans_p, "answer_completion_tokens": ans_c, "answer_cost_usd": ans_cost}
        part = self.context.part or 0
        self.context.storage.write_json(f"{self.context.stage_dir}/_usage/{part_name(part).replace('.parquet', '.json')}",
                                        record)
        log.info("query part %d: %d clip(s), %d cache hit(s), %d request(s), %d batch request(s)", part, len(rows),
                 hits, c["requests"], batch_requests)

    # -- engine hooks -------------------------------------------------------------------------------
    def dry_run(self, rows: list[dict[str, Any]]) -> str:
        """Requests and estimated cost of running ``rows``, without sending anything: clips
        already in the response cache cost nothing; prompt tokens are estimated from the prompt
        length (:data:`stages.query.client.CHARS_PER_TOKEN`), completions at
        :data:`stages.query.client.EST_COMPLETION_TOKENS` each."""
        cfg = self.config
        texts = [transcript(r.get("words")) for r in rows]
        keys = {self.cache_key(t): t for t in texts if t}
        cache = self.cache
        with ThreadPoolExecutor(8) as pool:
            hit = dict(zip(keys, pool.map(lambda k: cache.get(k) is not None, keys)))
        send = [t for k, t in keys.items() if not hit[k]]
        p = sum(estimate_prompt_tokens(build_prompt(t, cfg.prompt_template)) for t in send)
        c = EST_COMPLETION_TOKENS * len(send)
        price = self._price()
        usd = cost_usd(p, c, price, cfg.mode == "batch", cfg.batch_discount)
        cost = (f"${usd:.4f}" + (f" (batch discount {cfg.batch_discount:.0%} applied)" if cfg.mode == "batch" else "")
                if usd is not None else f"unknown (no price for {cfg.model!r} in stages.query.prices)")
        return (f"requests: {len(send)} to {cfg.model} ({cfg.mode}), for {len(rows)} clip(s): "
                f"{sum(hit.values())} transcript(s) already answered in the response cache, "
                f"{sum(1 for t in texts if not t)} without words\n"
                f"estimated tokens: {p} prompt + {c} completion\nestimated cost: {cost}")

    def report_section(self, parts: list[int]) -> dict[str, Any] | None:
        """Requests, cache hits, tokens and estimated cost over ``parts`` (their ``_usage`` records)."""
        fields = ("clips", "cache_hits", "requests", "retries", "rate_limited", "unparseable", "no_usage",
                  "batch_requests", "prompt_tokens", "completion_tokens", "answered", "answer_prompt_tokens",
                  "answer_completion_tokens")
        total = {f: 0 for f in fields}
        cost = answer_cost = 0.0
        unknown = False
        seen = 0
        for k in parts:
            rec = self.context.storage.read_json(f"{self.context.stage_dir}/_usage/{part_name(k).replace('.parquet', '.json')}")
            if not rec:
                continue
            seen += 1
            for f in fields:
                total[f] += int(rec.get(f) or 0)
            if rec.get("cost_usd") is None or rec.get("answer_cost_usd") is None:
                unknown = True
            cost += rec.get("cost_usd") or 0.0
            answer_cost += rec.get("answer_cost_usd") or 0.0
        if not seen:
            return None
        usage = {**total, "cost_usd": None if unknown else round(cost, 6),
                 "answer_cost_usd": None if unknown else round(answer_cost, 6), "model": self.config.model,
                 "mode": self.config.mode}

        def usd(v):
            return "n/a (no price)" if v is None else f"${v:.4f}"
        md = ["## Requests and cost", "",
              "Last run of each part:", "",
              "| requests | batch requests | cache hits | retries | 429s | unparseable | prompt tokens | completion tokens | est. cost (USD) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {total['requests']} | {total['batch_requests']} | {total['cache_hits']} | {total['retries']} | "
              f"{total['rate_limited']} | {total['unparseable']} | {total['prompt_tokens']} | "
              f"{total['completion_tokens']} | {usd(usage['cost_usd'])} |", "",
              f"The {total['answered']} answers in the corpus ({self.config.model}) took "
              f"{total['answer_prompt_tokens']} prompt + {total['answer_completion_tokens']} completion tokens, "
              f"estimated {usd(usage['answer_cost_usd'])}"
              + (f"; {total['no_usage']} answer(s) came without usage" if total["no_usage"] else "") + "."]
        return {"usage": usage, "markdown": "\n".join(md)}


class OptionalQuery(Query):
    """The query stage, switched off unless ``stages.query.enabled: true`` (pre-training recipes)."""

    Config = QueryOffConfig


def _add_usage(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a or b
    return {k: a.get(k, 0) + b.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}


def _sum_cost(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
