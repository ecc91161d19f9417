"""Run a pipeline's parts: a streaming scheduler over two executors, Ray and in-process.

:class:`Pipeline` (:mod:`pipeline.pipeline`) says what is done; :meth:`Executor.run` runs the
rest (docs/architecture.md, "Execution").

**Streaming.** Lineage is by part id, so each part flows down the chain on its own: when part
*k* of stage *s* is written, part *k* of stage *s+1* is runnable. Parts of different stages run
at the same time, each on actors of its own resource shape; a part whose stage is already done
for its input is skipped on the driver and flows on at once. There is no barrier between stages.

**Backpressure.** A stage starts a part only while the stage after it has fewer than its
``resources.max_parts_waiting`` parts waiting (finished upstream, not started); a stage's parts
in flight are capped by its actors and ``resources.concurrency``. A fast upstream stage
therefore stalls instead of filling memory or disk ahead of a slow one.

**Fusion.** Consecutive stages with the same resource shape (CPUs, GPUs, memory) run fused: one
task takes a part through all of them, the kept rows of one passed in memory to the next, and
every stage still writes its part files and gets its manifest entry. It is the executor's
decision (``ray.fuse``), invisible to stages.

**Failures.** A part that raises (or whose actor or node dies) is retried ``ray.part_retries``
times, then marked failed; that stops only its own chain: its downstream parts are blocked, the
other parts run to the end.

**Why Ray Core actors, not Ray Data.** The unit of resumption is our part, with its three part
files and a manifest entry written by the driver, and a part's stage must be skippable when it
is done for the input it gets. Ray Data's streaming executor moves blocks of rows between
operators and owns their retry and ordering, so it would hide exactly the per-part decisions
that resume and lineage need. Actors with futures keep those decisions here, and an actor
still loads a stage's models once (``setup``) and then serves part after part.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import BuildConfig
from pipeline.manifest import DONE, FAILED, Manifest, PartEntry, now
from pipeline.pipeline import BuildRun, Listener, Pipeline, StageRun, has_finalize
from pipeline.stage import Resources, Stage
from pipeline.storage import part_name
from pipeline.worker import StageRunner, items_fingerprint

log = logging.getLogger("livecc")

OFFLINE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
COSTLY_SETUP_S = 0.5    # a stage whose setup() takes longer is not spread over cold workers lightly
MANIFEST_SAVE_S = 2.0   # a kill loses at most this much of the manifest records (the parts are redone)
LIVE_WRITE_S = 1.0


def shape(res: Resources) -> tuple:
    """What an actor needs: stages with equal shapes share actors (and may be fused)."""
    return (res.num_cpus, res.num_gpus, res.memory_bytes)


@dataclass
class Group:
    """Consecutive stages of one resource shape; a task runs a part through them fused."""
    stages: list[type[Stage]]
    resources: Resources
    concurrency: int | None
    max_waiting: int


@dataclass(order=True)
class _Chain:
    """One part's way down the chosen stages: ``at`` is the next stage (index into them)."""
    part: int
    at: int = field(compare=False, default=0)
    input_fp: str = field(compare=False, default="")
    items: Any = field(compare=False, default=None)   # plan items while at a source
    attempts: dict[int, int] = field(compare=False, default_factory=dict)


class Executor:
    """Runs the parts a pipeline needs; subclasses say where a task runs.

    A task is a part taken through one or more stages (:meth:`pipeline.worker.StageRunner.run_chain`).
    Subclasses implement :meth:`free_slots`, :meth:`want`, :meth:`submit`, :meth:`poll` and
    :meth:`close`.
    """

    fuse: bool = True
    part_retries: int = 2
    setup_s: dict[str, float]  # stage -> its setup() seconds on a worker, once seen

    # -- backend -----------------------------------------------------------------------------
    def free_slots(self, res: Resources, stage: str | None = None, set_up: bool = False) -> int:
        """Tasks of this resource shape that can start now; with ``set_up``, only on workers
        that have ``stage`` set up already."""
        raise NotImplementedError

    def has_stage(self, res: Resources, stage: str) -> bool:
        """Whether some worker of this shape has ``stage`` set up (or is setting it up)."""
        return True

    def want(self, demand: list[tuple[Resources, int]], active: set[tuple] | None = None) -> None:
        """Per resource shape, how many tasks could start now but have no free worker: grow
        capacity there if the backend can. ``active``: the shapes that will still have work in
        this run (their last worker is kept)."""

    def prepare(self, groups: list[tuple[Resources, list[dict[str, Any]]]], first_workers: int = 1) -> None:
        """A run is about to start these groups (resources, stage specs; the first group may use
        ``first_workers`` at once): start workers and set the stages up ahead of their first
        part, if the backend can."""

    def submit(self, res: Resources, task: dict[str, Any], set_up: bool = False) -> Any:
        """Start a task (``set_up``: on a worker that has its first stage set up); returns a
        handle that :meth:`poll` reports."""
        raise NotImplementedError

    def poll(self, timeout_s: float) -> list[tuple[Any, Any]]:
        """Finished tasks: ``(handle, results or the exception)``; waits up to ``timeout_s``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release workers."""

    # -- scheduling ----------------------------------------------------------------------------
    def run(self, pipe: Pipeline, stages: list[type[Stage]], parts: list[int] | None = None, force: bool = False,
            progress: bool | None = None, listener: Listener | None = None) -> BuildRun:
        """Run ``stages`` (consecutive in the recipe) for the parts that need it, streaming.

        Raises:
            KeyError: ``parts`` names a part that has no input.
            ValueError: ``stages`` are not consecutive in the recipe.
        """
        return _Schedule(self, pipe, stages, parts, force, progress, listener or Listener()).run()


class _Schedule:
    """One run of :meth:`Executor.run` (driver side)."""

    def __init__(self, ex: Executor, pipe: Pipeline, stages: list[type[Stage]], parts: list[int] | None,
                 force: bool, progress: bool | None, listener: Listener):
        idx = [pipe.index(s.name) for s in stages]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(f"stages {[s.name for s in stages]} are not consecutive in the recipe")
        self.ex, self.pipe, self.stages, self.first = ex, pipe, stages, idx[0]
        self.parts, self.force, self.listener = parts, force, listener
        self.manifests = {s.name: pipe.manifest(s.name) for s in stages}
        self.runs = {s.name: StageRun(s.name) for s in stages}
        self.groups = self._groups()
        self.group_of = {s.name: gi for gi, g in enumerate(self.groups) for s in g.stages}
        self.waiting: list[list[_Chain]] = [[] for _ in self.groups]
        self.inflight: dict[Any, tuple[_Chain, int]] = {}
        self.inflight_count = [0] * len(self.groups)
        self.served = [0.0] * len(self.groups)   # when each group last started a task
        self.setup_s: dict[str, float] = {}      # stage -> its setup() seconds on a worker, once seen
        self.remaining = [0] * len(stages)
        self.finished: set[str] = set()
        self.timeline: list[dict[str, Any]] = []
        self.progress = _Progress([s.name for s in stages], progress)
        self._dirty: set[str] = set()
        self._saved_at = self._live_at = 0.0

    def _groups(self) -> list[Group]:
        groups: list[Group] = []
        for s in self.stages:
            res = self.pipe.configs[s.name].resources or s.resources
            if groups and self.ex.fuse and shape(groups[-1].resources) == shape(res):
                g = groups[-1]
                g.stages.append(s)
                caps = [c for c in (g.concurrency, res.concurrency) if c]
                g.concurrency = min(caps) if caps else None
                g.max_waiting = min(g.max_waiting, res.max_parts_waiting)
            else:
                groups.append(Group([s], res, res.concurrency, res.max_parts_waiting))
        return groups

    # -- the chains ----------------------------------------------------------------------------
    def _initial_chains(self) -> list[_Chain]:
        s0, pipe = self.stages[0], self.pipe
        if s0.input_schema is None:
            plan = pipe.plan_source()
            inputs = {k: (items_fingerprint(items), items) for k, items in enumerate(plan)}
            unready: dict[int, str] = {}
        else:
            up = pipe.stages[self.first - 1]
            states = pipe.states()[up.name]
            up_m = pipe.manifest(up.name)
            inputs = {k: (up_m.entry(k).output_fingerprint, None) for k, (st, _) in states.items() if st == DONE}
            unready = {k: st for k, (st, _) in states.items() if st != DONE}
        if self.parts is not None:
            unknown = sorted(set(self.parts) - set(inputs))
            if unknown:
                raise KeyError(f"{s0.name}: no input for part(s) {unknown}; available: {sorted(inputs)[:20]}")
            inputs = {k: inputs[k] for k in sorted(self.parts)}
        else:
            for k, st in unready.items():  # an upstream part that failed blocks this one
                if st in (FAILED, "blocked"):
                    for s in self.stages:
                        self.runs[s.name].blocked.append(k)
        self.remaining = [len(inputs)] * len(self.stages)
        return [_Chain(k, 0, fp, items) for k, (fp, items) in sorted(inputs.items())]

    def _advance(self, c: _Chain) -> None:
        """Skip the stages already done for the chain's input, then queue it at the next one."""
        while c.at < len(self.stages):
            stage = self.stages[c.at]
            self._started(stage)
            m = self.manifests[stage.name]
            forced = self.force or (self.parts is not None and c.at == 0)
            if not forced and self.pipe.entry_state(stage, m, c.part, c.input_fp) == DONE:
                self.runs[stage.name].skipped.append(c.part)
                self._passed(c.at)
                c.input_fp, c.items = m.entry(c.part).output_fingerprint, None
                c.at += 1
                continue
            heapq.heappush(self.waiting[self.group_of[stage.name]], c)
            return

    def _passed(self, at: int) -> None:
        self.remaining[at] -= 1
        self.progress.advance(self.stages[at].name)

    def _stop(self, c: _Chain, error: str) -> None:
        stage = self.stages[c.at]
        self.manifests[stage.name].set(c.part, PartEntry(
            status=FAILED, config_hash=self.pipe.keys[stage.name], input_fingerprint=c.input_fp,
            attempts=c.attempts.get(c.at, 1), error=error, finished_at=now()))
        self._dirty.add(stage.name)
        self.runs[stage.name].failed[c.part] = error
        log.error("%s part %d failed after %d attempt(s): %s", stage.name, c.part, c.attempts.get(c.at, 1), error)
        for i in range(c.at, len(self.stages)):
            if i > c.at:
                self.runs[self.stages[i].name].blocked.append(c.part)
            self._passed(i)

    def _started(self, stage: type[Stage]) -> None:
        run = self.runs[stage.name]
        if run.started_at is None:
            run.started_at = time.time()
            self.listener.stage_started(stage.name)

    # -- tasks ---------------------------------------------------------------------------------
    def _task(self, c: _Chain, gi: int) -> dict[str, Any]:
        group = self.groups[gi]
        names = [s.name for s in group.stages]
        chain = [s for s in self.stages[c.at:] if s.name in names]
        specs = []
        for s in chain:
            e = self.manifests[s.name].entry(c.part)
            done = e is not None and e.status == DONE and e.config_hash == self.pipe.keys[s.name]
            specs.append({"cls": s, "config": self.pipe.configs[s.name].model_dump(mode="json"),
                          "context": self.pipe.context(s), "done_input": e.input_fingerprint if done else None,
                          "done_output": e.output_fingerprint if done else None})
        source = chain[0].input_schema is None
        up = None if source else self.pipe.stages[self.pipe.index(chain[0].name) - 1]
        return {"part": c.part, "source": source, "force": self.force,
                "input": c.items if source else f"{self.pipe.stage_dir(up.name)}/{part_name(c.part)}",
                "input_fingerprint": c.input_fp, "stages": specs}

    def _allowed(self, gi: int) -> int:
        """How many more parts the group may start now, by its concurrency cap and by
        backpressure (the next group's waiting room), whatever the free actors."""
        g, n = self.groups[gi], len(self.waiting[gi])
        if g.concurrency is not None:
            n = min(n, g.concurrency - self.inflight_count[gi])
        nxt = gi + 1
        if nxt < len(self.groups):  # backpressure: the next stage has enough waiting
            n = min(n, self.groups[nxt].max_waiting - len(self.waiting[nxt]) - self.inflight_count[gi])
        return max(0, n)

    def _start_tasks(self) -> None:
        """Start what may start. Groups that share a resource shape take turns, one task each per
        round (the group served least recently first, then downstream first), so a slow stage
        cannot take every worker from a fast one that feeds the network."""
        allowed = [self._allowed(gi) for gi in range(len(self.groups))]
        order = sorted(range(len(self.groups)), key=lambda gi: (self.served[gi], -gi))
        progress = True
        while progress:
            progress = False
            for gi in order:
                g = self.groups[gi]
                if allowed[gi] <= 0:
                    continue
                stage = self.stages[self.waiting[gi][0].at].name
                # a stage whose setup is costly (models to load) takes a worker that has it set up;
                # a cold one only as its first worker, or when its queue is full (scale out)
                set_up = (self._setup_s(stage) >= COSTLY_SETUP_S
                          and self.ex.has_stage(g.resources, stage) and len(self.waiting[gi]) < g.max_waiting)
                if self.ex.free_slots(g.resources, stage, set_up) > 0:
                    c = heapq.heappop(self.waiting[gi])
                    c.attempts[c.at] = c.attempts.get(c.at, 0) + 1
                    handle = self.ex.submit(g.resources, self._task(c, gi), set_up)
                    self.inflight[handle] = (c, gi)
                    self.inflight_count[gi] += 1
                    self.served[gi] = time.monotonic()
                    allowed[gi] -= 1
                    progress = True
        demand: dict[tuple, list] = {}
        for gi, g in enumerate(self.groups):
            entry = demand.setdefault(shape(g.resources), [g.resources, 0])
            if not self.waiting[gi]:
                continue
            stage = self.stages[self.waiting[gi][0].at].name
            if (self._setup_s(stage) < COSTLY_SETUP_S or not self.ex.has_stage(g.resources, stage)
                    or len(self.waiting[gi]) >= g.max_waiting):
                entry[1] += allowed[gi]  # parts that could start if there were a worker for them
        active = {shape(g.resources) for g in self.groups if any(s.name not in self.finished for s in g.stages)}
        self.ex.want([(res, n) for res, n in demand.values()], active)

    def _setup_s(self, stage: str) -> float:
        """The stage's setup() seconds on a worker as seen so far; unknown counts as costly."""
        seen = [d[stage] for d in (self.setup_s, self.ex.setup_s) if stage in d]
        return max(seen) if seen else COSTLY_SETUP_S

    def _record(self, c: _Chain, results: list[dict[str, Any]]) -> None:
        for r in results:
            stage = self.stages[c.at]
            if r.get("setup_s") is not None:
                self.setup_s[stage.name] = max(self.setup_s.get(stage.name, 0.0), r["setup_s"])
            if r["stage"] != stage.name:
                raise RuntimeError(f"worker ran {r['stage']} where {stage.name} was next for part {c.part}")
            run = self.runs[stage.name]
            if r["ran"]:
                self.manifests[stage.name].set(c.part, PartEntry(
                    status=DONE, config_hash=self.pipe.keys[stage.name], input_fingerprint=r["input_fingerprint"],
                    output_fingerprint=r["output_fingerprint"], counts=r["counts"], reasons=r["reasons"],
                    seconds=r["seconds"], attempts=c.attempts.get(c.at, 1), finished_at=now()))
                self._dirty.add(stage.name)
                run.ran.append(c.part)
                self.timeline.append({"stage": stage.name, "part": c.part, "start": r["start"], "end": r["end"],
                                      "items": r["counts"]["input"]})
            else:
                run.skipped.append(c.part)
            self._passed(c.at)
            c.input_fp, c.items = r["output_fingerprint"], None
            c.at += 1

    def _done(self, handle: Any, outcome: Any) -> None:
        c, gi = self.inflight.pop(handle)
        self.inflight_count[gi] -= 1
        if not isinstance(outcome, BaseException):
            self._record(c, outcome)
            self._advance(c)
            return
        cause = getattr(outcome, "cause", None) or outcome
        finished = getattr(cause, "livecc_results", None) or []
        self._record(c, finished)
        if finished:  # a fused task failed at a later stage: its first attempt there
            c.attempts[c.at] = c.attempts.get(c.at, 0) + 1
        err = _short_error(outcome)
        stage = self.stages[c.at]
        if c.attempts.get(c.at, 1) <= self.ex.part_retries:
            log.warning("%s part %d failed (attempt %d/%d), retrying: %s", stage.name, c.part, c.attempts[c.at],
                        self.ex.part_retries + 1, err)
            heapq.heappush(self.waiting[self.group_of[stage.name]], c)
        else:
            self._stop(c, err)

    def _finish_stages(self) -> None:
        """Finalize each stage no part can reach any more, in order, and tell the listener."""
        for i, s in enumerate(self.stages):
            if s.name in self.finished:
                continue
            if self.remaining[i] > 0 or any(n not in self.finished for n in (x.name for x in self.stages[:i])):
                return
            run = self.runs[s.name]
            self._started(s)
            if has_finalize(s):
                run.finalized = self.pipe.finalize(s, self.manifests, force=self.force)
                self._dirty.add(s.name)
            self._save(force=True)
            run.finished_at = time.time()
            run.counts = _sum_counts(self.manifests[s.name], run.ran)
            self.finished.add(s.name)
            self.progress.finish(s.name)
            self.listener.stage_finished(s.name, run)

    def _save(self, force: bool = False) -> None:
        if self._dirty and (force or time.monotonic() - self._saved_at > MANIFEST_SAVE_S):
            self.pipe.save({n: self.manifests[n] for n in self._dirty})
            self._dirty.clear()
            self._saved_at = time.monotonic()

    def _write_live(self, started_at: float) -> None:
        if time.monotonic() - self._live_at < LIVE_WRITE_S:
            return
        stages: dict[str, dict[str, list[int]]] = {s.name: {"in_flight": [], "waiting": []} for s in self.stages}
        for c, _ in self.inflight.values():
            stages[self.stages[c.at].name]["in_flight"].append(c.part)
        for gi, q in enumerate(self.waiting):
            for c in q:
                stages[self.stages[c.at].name]["waiting"].append(c.part)
        self.pipe.write_live({k: {a: sorted(b) for a, b in v.items()} for k, v in stages.items()}, started_at)
        self._live_at = time.monotonic()

    def _prepare(self, n_chains: int) -> None:
        """Every group's workers start, and set their stages up, while the first parts run: a
        GPU stage loads its model while the crawl is still listing."""
        specs = []
        for g in self.groups:
            specs.append((g.resources, [{"cls": s, "config": self.pipe.configs[s.name].model_dump(mode="json"),
                                         "context": self.pipe.context(s)} for s in g.stages]))
        # the first group has every part ready: as many workers as it may use, from the start
        first = self.groups[0]
        spread = min(n_chains, first.concurrency or n_chains)
        self.ex.prepare(specs, spread)

    def run(self) -> BuildRun:
        started = time.time()
        chains = self._initial_chains()
        if chains:
            self._prepare(len(chains))
        self.progress.start(len(chains))
        try:
            for c in chains:
                self._advance(c)
            self._finish_stages()
            while self.inflight or any(self.waiting):
                self._start_tasks()
                self._write_live(started)
                for handle, outcome in self.ex.poll(0.2):
                    self._done(handle, outcome)
                self._save()
                self._finish_stages()
            self._finish_stages()
        finally:
            self.progress.close()
            self._save(force=True)
            self.pipe.clear_live()
        return BuildRun(self.runs, self.timeline, started, time.time())


def _sum_counts(m: Manifest, parts: list[int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for k in parts:
        e = m.entry(k)
        for c, v in (e.counts if e else {}).items():
            total[c] = total.get(c, 0) + v
    return total


# -- in-process ---------------------------------------------------------------------------------

class LocalExecutor(Executor):
    """Runs tasks one at a time in this process: engine tests and tiny builds need no Ray."""

    def __init__(self, cfg: BuildConfig | None = None):
        self.runner = StageRunner()
        self.setup_s = self.runner.setup_s
        self.part_retries = cfg.ray.part_retries if cfg else 0
        self.fuse = cfg.ray.fuse if cfg else True
        self._done: list[tuple[Any, Any]] = []
        self._n = 0

    def free_slots(self, res: Resources, stage: str | None = None, set_up: bool = False) -> int:
        return 0 if self._done else 1

    def submit(self, res: Resources, task: dict[str, Any], set_up: bool = False) -> Any:
        self._n += 1
        try:
            outcome: Any = self.runner.run_chain(task)
        except Exception as exc:  # noqa: BLE001 - reported to the scheduler like a remote failure
            outcome = exc
        self._done.append((self._n, outcome))
        return self._n

    def poll(self, timeout_s: float) -> list[tuple[Any, Any]]:
        done, self._done = self._done, []
        return done


# -- Ray ----------------------------------------------------------------------------------------

def ensure_ray(cfg: BuildConfig) -> None:
    """Connect to ``ray.address`` / ``$RAY_ADDRESS``, or start a local Ray, once per process."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if cfg.ray.runtime_env:
        kwargs["runtime_env"] = cfg.ray.runtime_env
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # a local instance listens on loopback only
        ray.init(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", **kwargs)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@dataclass
class _Slot:
    actor: Any
    ready_ref: Any
    ready: bool = False
    busy: bool = False
    since: float = field(default_factory=time.monotonic)
    stages: set = field(default_factory=set)  # stages set up (or being set up) on this actor
    unplaced: bool = False  # not started, and the cluster has no room for it now


class _Pool:
    """The actors of one resource shape, shared by every stage of that shape."""

    def __init__(self, res: Resources, max_actors: int):
        self.res, self.max_actors = res, max_actors
        self.slots: list[_Slot] = []
        self.demand = 0

    def new_actor(self) -> _Slot:
        import ray

        from pipeline.actor import StageWorker

        opts: dict[str, Any] = {"num_cpus": self.res.num_cpus, "num_gpus": self.res.num_gpus}
        if self.res.memory_bytes:
            opts["memory"] = self.res.memory_bytes
        actor = ray.remote(StageWorker).options(**opts).remote()
        slot = _Slot(actor, actor.ready.remote())
        self.slots.append(slot)
        return slot

    def idle(self) -> list[_Slot]:
        return [s for s in self.slots if s.ready and not s.busy]


class RayExecutor(Executor):
    """Runs tasks on Ray actors, pooled by resource shape; it owns its pools.

    A pool grows while its stages have parts waiting, up to what the cluster fits. When a pool
    waits for an actor the cluster cannot place, an idle actor of a pool with nothing to do is
    released, so a later stage's shape is never starved by an earlier one's idle actors. An actor
    that dies (OOM, segfault, a lost node) is dropped from its pool and its part retried.
    """

    def __init__(self, cfg: BuildConfig):
        ensure_ray(cfg)
        self.part_retries = cfg.ray.part_retries
        self.fuse = cfg.ray.fuse
        self.pools: dict[tuple, _Pool] = {}
        self.inflight: dict[Any, tuple[_Pool, _Slot]] = {}
        self.setup_s: dict[str, float] = {}  # stage -> its setup() seconds on an actor, once seen
        self.active: set[tuple] = set()      # shapes that still have work in this run

    def pool(self, res: Resources) -> _Pool:
        key = shape(res)
        if key not in self.pools:
            self.pools[key] = _Pool(res, _capacity(res))
            if res.num_cpus == 0 and res.num_gpus == 0 and res.concurrency is None:
                log.warning("stages of shape %s reserve no CPU or GPU and set no resources.concurrency: their "
                            "actors are bounded by the parts waiting only", key)
        return self.pools[key]

    def free_slots(self, res: Resources, stage: str | None = None, set_up: bool = False) -> int:
        idle = self.pool(res).idle()
        return len([s for s in idle if stage in s.stages] if set_up else idle)

    def has_stage(self, res: Resources, stage: str) -> bool:
        # an actor the cluster cannot place yet does not count: its parts take any idle actor
        return any(stage in s.stages and not s.unplaced for s in self.pool(res).slots)

    def want(self, demand: list[tuple[Resources, int]], active: set[tuple] | None = None) -> None:
        self.active = active if active is not None else set(self.pools)
        for p in self.pools.values():
            p.demand = 0
        for res, n in demand:
            pool = self.pool(res)
            pool.demand = n
            busy = sum(1 for s in pool.slots if s.busy)
            for _ in range(max(0, min(n + busy, pool.max_actors) - len(pool.slots))):
                pool.new_actor()

    def prepare(self, groups: list[tuple[Resources, list[dict[str, Any]]]], first_workers: int = 1) -> None:
        """One actor per group where the cluster fits it (else the least loaded actor of the
        shape), then more for the first group up to ``first_workers``, each setting its group's
        stages up before the first part arrives (the set-up times come back with readiness)."""
        plan = [(res, specs) for res, specs in groups] + [groups[0]] * max(0, first_workers - 1)
        for i, (res, specs) in enumerate(plan):
            pool = self.pool(res)
            if len(pool.slots) < pool.max_actors:
                slot = pool.new_actor()
            elif i >= len(groups):
                break  # no room for more workers of the first group
            else:
                slot = min(pool.slots, key=lambda s: len(s.stages))
            slot.stages.update(spec["cls"].name for spec in specs)
            # the actor is ready for parts once its stages are set up: none queues behind the set-up
            slot.ready_ref, slot.ready = slot.actor.warm.remote(specs), False

    def submit(self, res: Resources, task: dict[str, Any], set_up: bool = False) -> Any:
        pool = self.pool(res)
        first = task["stages"][0]["cls"].name
        idle = pool.idle()
        # an actor that has this stage set up already (models loaded) first
        slot = next((s for s in idle if first in s.stages), None if set_up else idle[0])
        slot.stages.update(spec["cls"].name for spec in task["stages"])
        slot.busy = True
        ref = slot.actor.run_chain.remote(task)
        self.inflight[ref] = (pool, slot)
        return ref

    def poll(self, timeout_s: float) -> list[tuple[Any, Any]]:
        import ray

        readiness = {s.ready_ref: (p, s) for p in self.pools.values() for s in p.slots if not s.ready}
        refs = list(self.inflight) + list(readiness)
        if not refs:
            time.sleep(timeout_s)
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done: list[tuple[Any, Any]] = []
        for ref in ready:
            if ref in readiness:
                pool, slot = readiness[ref]
                try:
                    setup = ray.get(ref)
                    slot.ready, slot.unplaced, slot.since = True, False, time.monotonic()
                    for name, sec in (setup if isinstance(setup, dict) else {}).items():
                        self.setup_s[name] = max(self.setup_s.get(name, 0.0), sec)
                except Exception as exc:  # noqa: BLE001 - an actor that cannot start is dropped
                    log.warning("an actor of shape %s did not start: %s", shape(pool.res), _short_error(exc))
                    pool.slots.remove(slot)
                continue
            pool, slot = self.inflight.pop(ref)
            slot.busy, slot.since = False, time.monotonic()
            try:
                done.append((ref, ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - a part failure must not stop the others
                if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
                    # dead, or unreachable (its node is going away): either way it leaves the pool;
                    # an unreachable one would take the next part and never answer
                    pool.slots.remove(slot)  # replaced on demand by want()
                    with contextlib.suppress(Exception):
                        ray.kill(slot.actor)
                done.append((ref, exc))
        self._release_idle()
        return done

    def _release_idle(self) -> None:
        """An idle actor of a pool with no waiting parts makes room for a pool whose new actor the
        cluster has not placed (not ready after a second while its parts wait, or after five
        seconds with nothing running at all); a pool whose stages still have work keeps its last
        actor (its stages are set up there) unless nothing is running (a stall: its parts wait
        on the starved pool)."""
        import ray

        now_s = time.monotonic()
        pending = [p for p in self.pools.values() if any(not s.ready and now_s - s.since > 1.0 for s in p.slots)]
        if not pending:
            return
        # nothing running and an actor waiting for seconds: only a release can make progress.
        # (No ray.available_resources() here: that GCS call can block while a node is lost.)
        stalled = not self.inflight and any(now_s - s.since > 5.0 for p in pending for s in p.slots if not s.ready)
        starved = pending if stalled else [p for p in pending if p.demand and not p.idle()]
        if not starved:
            return
        for p in starved:
            for s in p.slots:
                s.unplaced = s.unplaced or (not s.ready and now_s - s.since > 1.0)
        for key, p in self.pools.items():
            if p in starved or p.demand or (not stalled and len(p.slots) <= 1 and key in self.active):
                continue
            for s in p.idle():
                if now_s - s.since > 0.5:
                    ray.kill(s.actor)
                    p.slots.remove(s)
                    return

    def close(self) -> None:
        import ray

        for p in self.pools.values():
            for s in p.slots:
                try:
                    ray.kill(s.actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.pools.clear()


def _capacity(res: Resources) -> int:
    """How many actors of this shape the whole cluster fits."""
    import ray

    total = ray.cluster_resources()
    fits = []
    if res.num_cpus > 0:
        fits.append(int(total.get("CPU", 1) // res.num_cpus))
    if res.num_gpus > 0:
        fits.append(int(total.get("GPU", 0) // res.num_gpus))
    if not fits:  # needs no CPU or GPU (waits on the network): its stages' concurrency bounds it
        return 1 << 30
    return max(1, min(fits))


def make_executor(cfg: BuildConfig) -> Executor:
    """``ray.executor``: ``ray`` (default) or ``local`` (in-process, no Ray)."""
    return LocalExecutor(cfg) if cfg.ray.executor == "local" else RayExecutor(cfg)


def _short_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}"
    return text.strip().splitlines()[0][:500] if "\n" in text and len(text) > 500 else text[:2000]


class _Progress:
    """A bar per stage (parts that passed it); plain log lines when stderr is not a terminal."""

    def __init__(self, names: list[str], enabled: bool | None):
        self.names = names
        self.live = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()
        self.done = dict.fromkeys(names, 0)
        self.total = 0
        self.p = None

    def start(self, total: int) -> None:
        self.total = total
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), transient=False)
            self.tasks = {n: self.p.add_task(n, total=total) for n in self.names}
            self.p.start()

    def advance(self, name: str) -> None:
        self.done[name] += 1
        if self.p is not None:
            self.p.advance(self.tasks[name])

    def finish(self, name: str) -> None:
        if self.p is None:
            log.info("%s: %d/%d parts (%.1f s)", name, self.done[name], self.total, time.monotonic() - self.t0)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
