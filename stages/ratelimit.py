"""Politeness: one rate limit for the whole cluster, and backoff for retries.

A limit counts units: requests (the crawl, the media downloads, the query stage's requests per
minute) or tokens (the query stage's tokens per minute, booked as an estimate before a request
and corrected with :meth:`RateLimiter.adjust` once the answer's ``usage`` is known).

The limit is a GCRA token bucket (the "generic cell rate algorithm": a token bucket kept
as one timestamp). A caller *reserves* a send time and sleeps until then, so the bucket
itself never blocks and one bucket can serve every worker:

* when Ray is initialised, the bucket lives in a named Ray actor (``livecc-ratelimit-<key>``
  in namespace ``livecc``), created by whichever worker asks first; every Ray worker of
  every stage that uses the same ``key`` shares it, so the limit holds across the cluster;
* otherwise a process-wide in-memory bucket per ``key`` serves all threads.

With ``burst = 1`` grants are spaced exactly ``60 / requests_per_minute`` seconds apart,
so no window of any length sees more than its share plus one. A 429 answer *penalises*
the bucket: nobody sends again until the server's ``Retry-After`` (or the backoff delay)
has passed.

Backoff (:func:`backoff_delay`) is exponential with jitter: attempt *n* (0-based) waits
``min(cap, base * 2**n)`` scaled by a uniform factor in ``[0.5, 1]``, so workers that failed
together do not retry together.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

RAY_NAMESPACE = "livecc"


class TokenBucket:
    """GCRA bucket: ``rate_per_s`` sustained, up to ``burst`` back-to-back grants.

    :meth:`reserve` returns the seconds the caller must wait before sending (>= 0) and
    books that slot; it never sleeps itself. ``clock`` is injectable for tests.
    """

    def __init__(self, rate_per_s: float, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.configure(rate_per_s, burst)
        self._tat = clock()  # theoretical arrival time of the next conforming request

    def configure(self, rate_per_s: float, burst: int = 1) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got {rate_per_s}, {burst})")
        self.interval_s = 1.0 / rate_per_s
        self.burst = int(burst)

    def reserve(self, n: int = 1) -> float:
        now = self.clock()
        tat = max(self._tat, now)
        grant = max(now, tat - (self.burst - 1) * self.interval_s)
        self._tat = tat + n * self.interval_s
        return grant - now

    def penalize(self, seconds: float) -> None:
        """Grant nothing for the next ``seconds`` (server said slow down)."""
        self._tat = max(self._tat, self.clock() + seconds + (self.burst - 1) * self.interval_s)

    def adjust(self, n: float) -> None:
        """Book ``n`` more units without waiting (``n < 0`` gives units back), for a cost known
        only after the request: tokens, whose count the answer's ``usage`` tells. A refund
        never takes the bucket below idle, so it cannot build up extra burst."""
        now = self.clock()
        if n >= 0:
            self._tat = max(self._tat, now) + n * self.interval_s
        else:
            self._tat = max(now, self._tat + n * self.interval_s)


class _LocalLimiter:
    """Thread-safe bucket shared by all threads of one process."""

    def __init__(self, rate_per_s: float, burst: int):
        self._bucket = TokenBucket(rate_per_s, burst)
        self._lock = threading.Lock()

    def reserve(self, n: int = 1) -> float:
        with self._lock:
            return self._bucket.reserve(n)

    def penalize(self, seconds: float) -> None:
        with self._lock:
            self._bucket.penalize(seconds)

    def adjust(self, n: float) -> None:
        with self._lock:
            self._bucket.adjust(n)

    def configure(self, rate_per_s: float, burst: int) -> None:
        with self._lock:
            self._bucket.configure(rate_per_s, burst)


_ray_actor_cls = None


def _bucket_actor_class():
    """The Ray actor class, defined lazily so importing this module never imports Ray."""
    global _ray_actor_cls
    if _ray_actor_cls is None:
        import ray

        @ray.remote(num_cpus=0, max_restarts=-1)
        class BucketActor:
            def __init__(self, rate_per_s: float, burst: int):
                self.bucket = TokenBucket(rate_per_s, burst)

            def reserve(self, n: int = 1) -> float:
                return self.bucket.reserve(n)

            def penalize(self, seconds: float) -> None:
                self.bucket.penalize(seconds)

            def adjust(self, n: float) -> None:
                self.bucket.adjust(n)

            def configure(self, rate_per_s: float, burst: int) -> None:
                self.bucket.configure(rate_per_s, burst)

        _ray_actor_cls = BucketActor
    return _ray_actor_cls


class RateLimiter:
    """The request-rate limit named ``key``: ``requests_per_minute`` with ``burst``.

    :meth:`acquire` blocks until the caller may send ``n`` requests. Backed by a named Ray
    actor when Ray is initialised in this process (driver or worker), else by a process-wide
    bucket. ``requests_per_minute=None`` disables the limit.
    """

    _local: dict[str, _LocalLimiter] = {}
    _local_lock = threading.Lock()

    def __init__(self, key: str, requests_per_minute: float | None, burst: int = 1):
        self.key = key
        self.rate_per_s = None if not requests_per_minute else requests_per_minute / 60.0
        self.burst = burst
        self._actor = None
        self._backend = None
        self._init_lock = threading.Lock()

    def _get_backend(self):
        if self._backend is not None:
            return self._backend
        with self._init_lock:  # threads of one worker share this object
            if self._backend is not None:
                return self._backend
            try:
                import ray
                use_ray = ray.is_initialized()
            except ImportError:  # pragma: no cover - ray is a dependency
                use_ray = False
            if use_ray:
                self._actor = self._ray_actor()
                self._backend = "ray"
            else:
                with RateLimiter._local_lock:
                    lim = RateLimiter._local.get(self.key)
                    if lim is None:
                        lim = RateLimiter._local[self.key] = _LocalLimiter(self.rate_per_s, self.burst)
                    else:
                        lim.configure(self.rate_per_s, self.burst)
                self._actor = lim
                self._backend = "local"
        return self._backend

    def _ray_actor(self):
        import ray
        actor = _bucket_actor_class().options(
            name=f"livecc-ratelimit-{self.key}", namespace=RAY_NAMESPACE, get_if_exists=True,
        ).remote(self.rate_per_s, self.burst)
        # get_if_exists may return a bucket created with other settings: the latest config wins.
        ray.get(actor.configure.remote(self.rate_per_s, self.burst))
        return actor

    @property
    def backend(self) -> str:
        """``"ray"``, ``"local"`` or ``"off"``."""
        return "off" if self.rate_per_s is None else self._get_backend()

    def _call(self, method: str, *args):
        if self._get_backend() == "local":
            return getattr(self._actor, method)(*args)
        import ray
        for attempt in range(3):
            try:
                return ray.get(getattr(self._actor, method).remote(*args))
            except ray.exceptions.RayActorError:
                # The worker that owned the bucket went away: make (or find) a new one.
                log.warning("rate-limit actor %s lost; recreating", self.key)
                self._actor = self._ray_actor()
        raise RuntimeError(f"rate-limit actor {self.key} keeps failing")

    def acquire(self, n: int = 1) -> float:
        """Block until ``n`` requests may be sent; returns the seconds waited."""
        if self.rate_per_s is None:
            return 0.0
        delay = self._call("reserve", n)
        if delay > 0:
            time.sleep(delay)
        return delay

    def penalize(self, seconds: float) -> None:
        """Hold every user of this limit for ``seconds`` (after a 429)."""
        if self.rate_per_s is not None and seconds > 0:
            self._call("penalize", seconds)

    def adjust(self, n: float) -> None:
        """Correct an earlier :meth:`acquire` by ``n`` units (negative: a refund) without
        waiting: a token budget books an estimate before the request and the true count after."""
        if self.rate_per_s is not None and n:
            self._call("adjust", n)

    def __getstate__(self):
        # Travels to Ray workers as settings only; each process finds the shared bucket itself.
        return {"key": self.key, "rate_per_s": self.rate_per_s, "burst": self.burst}

    def __setstate__(self, state):
        self.key, self.rate_per_s, self.burst = state["key"], state["rate_per_s"], state["burst"]
        self._actor = self._backend = None
        self._init_lock = threading.Lock()


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential, capped, jittered.

    ``min(cap_s, base_s * 2**attempt) * U(0.5, 1)``.
    """
    r = (rng or random).random()
    return min(cap_s, base_s * (2 ** attempt)) * (0.5 + 0.5 * r)
