"""Requests to an OpenAI-compatible chat endpoint through the official ``openai`` SDK, with the
politeness the query stage needs (docs/recipes.md#query):

* one cluster-wide budget of requests per minute and one of tokens per minute
  (:class:`stages.ratelimit.RateLimiter`, a named Ray actor when Ray runs); tokens are booked as
  an estimate before a request and corrected with the answer's ``usage``;
* exponential backoff with jitter on 429, 5xx, timeouts and dropped connections, honouring
  ``retry-after-ms`` / ``Retry-After``; a 429 pauses every worker sharing the budget;
* the SDK's own retries are off (``max_retries=0``), so the two retry layers never stack.

The API key is resolved once per actor (:func:`resolve_api_key`) and never logged: every
message that leaves this module goes through :meth:`Redactor.scrub`.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from stages.query.prompt import RESPONSE_SCHEMA
from stages.ratelimit import RateLimiter, backoff_delay

log = logging.getLogger(__name__)

#: chars per token of English text for GPT-4o's tokenizer, for estimates made before a request
#: (the rate budget, ``--dry-run``); the answer's ``usage`` gives the true count afterwards.
CHARS_PER_TOKEN = 4.0
#: completion tokens assumed per answer when estimating: ``{"result": "YES", "query": "<one
#: sentence>"}`` is 25-45 tokens with GPT-4o's tokenizer.
EST_COMPLETION_TOKENS = 40
#: tokens the chat format adds around one user message (role markers).
CHAT_OVERHEAD_TOKENS = 7


class MissingApiKey(RuntimeError):
    """No API key where the config says to find it."""


class QueryRequestError(RuntimeError):
    """A request failed for good: a non-retryable answer (400, 422) or still failing after
    ``retries`` attempts."""


class EndpointRefused(QueryRequestError):
    """The endpoint refuses every request (401, 403, 404: a wrong key, model, deployment or
    URL): not a fault of one clip, so the stage fails the part instead of writing error rows."""


def estimate_prompt_tokens(prompt: str) -> int:
    """Prompt tokens of one chat request, estimated from its length (no tokenizer download)."""
    return int(math.ceil(len(prompt) / CHARS_PER_TOKEN)) + CHAT_OVERHEAD_TOKENS


class Redactor:
    """Removes an API key from text that may leave the process (errors, logs, reports).

    Besides the exact key, a masked echo of it as OpenAI writes in 401 messages
    (``sk-...abcd``, ``sk-proj-****...abcd``) loses everything after the prefix."""

    _ECHO = re.compile(r"\b(sk-(?:proj-|svcacct-|admin-)?)[A-Za-z0-9_*\-]{4,}")

    def __init__(self, key: str | None):
        self.key = key if key and len(key) >= 4 else None

    def scrub(self, text: str) -> str:
        if self.key:
            text = text.replace(self.key, "***")
        return self._ECHO.sub(r"\1***", text)


def resolve_api_key(api_key_env: str | None, api_key_secret: str | None) -> str:
    """The API key: the environment variable ``api_key_env``, else the Prefect Secret block
    ``api_key_secret``; ``"EMPTY"`` when neither is configured (local vLLM or SGLang servers
    take any key).

    Raises:
        MissingApiKey: the variable is unset and no Secret block is named, or the block cannot
            be read (the message says which, never the value).
    """
    if api_key_env and os.environ.get(api_key_env):
        return os.environ[api_key_env]
    if api_key_secret:
        try:
            from prefect.blocks.system import Secret

            value = Secret.load(api_key_secret).get()
        except Exception as exc:  # noqa: BLE001 - any failure means: no key
            raise MissingApiKey(
                f"could not read the Prefect Secret block {api_key_secret!r} ({type(exc).__name__}: "
                f"{str(exc)[:200]}); Ray workers need PREFECT_API_URL (and PREFECT_API_KEY for Prefect "
                f"Cloud) to read blocks") from None
        if not value:
            raise MissingApiKey(f"the Prefect Secret block {api_key_secret!r} is empty")
        return str(value)
    if api_key_env:
        raise MissingApiKey(
            f"no API key: ${api_key_env} is not set where the stage runs (on a Ray cluster: in the "
            f"workers' environment). Set it, or name a Prefect Secret block in "
            f"stages.query.api_key_secret; a local vLLM/SGLang server needs none: stages.query.api_key_env=null")
    return "EMPTY"


def make_client(api: str, base_url: str | None, api_key: str, timeout_s: float, api_version: str | None = None):
    """An ``openai.OpenAI`` (or ``AzureOpenAI``) client with the SDK's retries off.

    Raises:
        ValueError: ``api="azure"`` without ``base_url`` (the resource endpoint).
    """
    import openai

    common = {"api_key": api_key, "max_retries": 0, "timeout": timeout_s}
    if api == "azure":
        if not base_url:
            raise ValueError("stages.query.base_url must be the Azure resource endpoint (https://<name>.openai.azure.com)")
        # no azure_deployment on the client: it would pin every URL to one deployment and break
        # the files and batches endpoints; the deployment goes in each request's `model`
        return openai.AzureOpenAI(azure_endpoint=base_url, api_version=api_version, **common)
    return openai.OpenAI(base_url=base_url or None, **common)


def request_body(model: str, prompt: str, *, structured_output: str, temperature: float | None,
                 max_tokens: int | None, seed: int | None) -> dict[str, Any]:
    """The chat-completions request for one prompt, as sent online and written to batch files."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if seed is not None:
        body["seed"] = seed
    if structured_output == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": RESPONSE_SCHEMA}
    elif structured_output == "json_object":
        body["response_format"] = {"type": "json_object"}
    return body


def usage_of(obj: Any) -> dict[str, int] | None:
    """``{"prompt_tokens", "completion_tokens"}`` from a completion (SDK object or dict), or None
    when the endpoint sent no ``usage``."""
    usage = obj.get("usage") if isinstance(obj, dict) else getattr(obj, "usage", None)
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else (lambda k: getattr(usage, k, None))
    p, c = get("prompt_tokens"), get("completion_tokens")
    if p is None and c is None:
        return None
    return {"prompt_tokens": int(p or 0), "completion_tokens": int(c or 0)}


def content_of(obj: Any) -> str:
    """The first choice's text (its refusal when the model refused), from an SDK object or dict."""
    if isinstance(obj, dict):
        msg = ((obj.get("choices") or [{}])[0] or {}).get("message") or {}
        return msg.get("content") or msg.get("refusal") or ""
    choices = getattr(obj, "choices", None) or []
    if not choices:
        return ""
    msg = choices[0].message
    return (getattr(msg, "content", None) or getattr(msg, "refusal", None) or "")


def retry_after_s(exc: Any) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``Retry-After`` (seconds)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


@dataclass
class Counters:
    """What one part's requests did; thread-safe increments."""
    requests: int = 0            # HTTP requests sent (retries included)
    retries: int = 0             # of those, repeats after a 429, 5xx, timeout or dropped connection
    rate_limited: int = 0        # 429 answers
    unparseable: int = 0         # replies that were not the JSON asked for
    prompt_tokens: int = 0       # billed, from usage, of the requests sent
    completion_tokens: int = 0
    no_usage: int = 0            # answers without usage
    structured_fallback: int = 0  # requests re-sent without response_format
    batch_prompt_tokens: int = 0      # of the billed tokens, those billed at the batch price
    batch_completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class RetryPolicy:
    retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0


_FORMAT_REFUSED = re.compile(r"response_format|json_schema|structured output|guided", re.I)


class ChatEndpoint:
    """One chat-completions endpoint shared by an actor's threads.

    ``requests`` and ``tokens`` are the cluster-wide budgets; ``structured_output`` falls back
    to no ``response_format`` (once per actor, logged) when the endpoint rejects it with a 400.
    """

    def __init__(self, client, requests: RateLimiter, tokens: RateLimiter, policy: RetryPolicy,
                 redactor: Redactor, sleep=None):
        import time

        self.client, self.requests, self.tokens = client, requests, tokens
        self.policy, self.redactor = policy, redactor
        self.sleep = sleep or time.sleep
        self.structured_ok = True
        self.refused: EndpointRefused | None = None  # once refused, no thread asks again

    def complete(self, body: dict[str, Any], counters: Counters) -> tuple[str, dict[str, int] | None]:
        """Send one request (retrying as the module docstring says); returns the reply text and
        its usage (None when the endpoint sent none).

        Raises:
            QueryRequestError: a non-retryable answer, or retries exhausted (key redacted).
        """
        import openai

        est = estimate_prompt_tokens(body["messages"][0]["content"]) + (body.get("max_tokens") or EST_COMPLETION_TOKENS)
        if self.refused is not None:
            raise self.refused
        attempt = 0
        last: str = ""
        while True:
            if not self.structured_ok and "response_format" in body:
                body = {k: v for k, v in body.items() if k != "response_format"}
            self.requests.acquire()
            self.tokens.acquire(est)
            counters.add(requests=1, retries=1 if attempt else 0)
            try:
                resp = self.client.chat.completions.create(**body)
            except openai.BadRequestError as exc:
                self.tokens.adjust(-est)
                if "response_format" in body and _FORMAT_REFUSED.search(str(exc)):
                    if self.structured_ok:
                        log.warning("the endpoint rejects response_format (%s); asking for JSON in the prompt only",
                                    self.redactor.scrub(str(exc))[:200])
                    self.structured_ok = False
                    counters.add(structured_fallback=1)
                    continue
                raise QueryRequestError(self.redactor.scrub(f"{type(exc).__name__}: {exc}")[:1000]) from None
            except openai.APIStatusError as exc:
                self.tokens.adjust(-est)
                status = exc.status_code
                last = f"HTTP {status}: {exc}"
                if status in (401, 403, 404):
                    self.refused = EndpointRefused(self.redactor.scrub(
                        f"the endpoint refused the request ({type(exc).__name__}: {exc}); check the key "
                        f"(stages.query.api_key_env / api_key_secret), model, deployment and base_url")[:1000])
                    raise self.refused from None
                if status != 429 and status < 500 and status not in (408, 409):
                    raise QueryRequestError(self.redactor.scrub(f"{type(exc).__name__}: {exc}")[:1000]) from None
                delay = backoff_delay(attempt, self.policy.backoff_base_s, self.policy.backoff_max_s)
                hint = retry_after_s(exc)
                if hint is not None:
                    delay = max(delay, min(hint, self.policy.backoff_max_s))
                if status == 429:
                    counters.add(rate_limited=1)
                    self.requests.penalize(delay)  # every worker holds off, not just this thread
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                delay = backoff_delay(attempt, self.policy.backoff_base_s, self.policy.backoff_max_s)
            else:
                usage = usage_of(resp)
                if usage is None:
                    counters.add(no_usage=1)
                else:
                    counters.add(**usage)
                    self.tokens.adjust(usage["prompt_tokens"] + usage["completion_tokens"] - est)
                return content_of(resp), usage
            if attempt >= self.policy.retries:
                raise QueryRequestError(self.redactor.scrub(
                    f"still failing after {attempt + 1} attempts: {last}")[:1000])
            log.debug("query request failed (%s); retry %d in %.2f s", self.redactor.scrub(last)[:200],
                      attempt + 1, delay)
            self.sleep(delay)
            attempt += 1
