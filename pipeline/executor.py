"""Run a flow's stages part by part on Ray, with resume, retries and progress.

:class:`Pipeline` binds a build config to a flow's ordered stage list. For each stage it
works out which parts are done, stale, failed or pending (see :mod:`pipeline.manifest`),
sends the parts that need work to Ray actors, and records the results in the manifest.

Ray: a local instance is started by the command itself (no dashboard, usage stats off);
``ray.address`` in the config, or ``$RAY_ADDRESS``, points at a cluster instead. Actors are
pooled by resource shape and reused across stages; each actor runs a stage's ``setup()``
once and then processes part after part. A part that raises is retried
``ray.part_retries`` times, then marked failed while the other parts finish.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import BuildConfig, ConfigError, check_stage_sections, config_hash, stage_config
from pipeline.manifest import (DONE, FAILED, PENDING, STALE, Manifest, PartEntry, load_manifest, now,
                               save_manifest)
from pipeline.stage import Output, Resources, Stage, StageContext
from pipeline.storage import Storage, part_name
from pipeline.worker import items_fingerprint

log = logging.getLogger("livecc")

OFFLINE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


@dataclass
class StageRun:
    """What one ``run_stage`` call did."""
    stage: str
    ran: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: int = 0
    finalized: bool = False
    seconds: float = 0.0

    @property
    def did_work(self) -> bool:
        return bool(self.ran or self.failed or self.finalized)


class Pipeline:
    """A build config bound to a flow's stages.

    Raises:
        ConfigError: on construction, when a stage section is unknown or invalid.
    """

    def __init__(self, cfg: BuildConfig, stages: list[type[Stage]]):
        check_stage_sections(cfg, stages)
        self.cfg = cfg
        self.all_stages = list(stages)
        self.storage = Storage(cfg.root, cfg.storage_options)
        self.configs = {s.name: stage_config(cfg, s) for s in self.all_stages}
        self.stages = enabled_stages(cfg, self.all_stages, self.configs)
        self.hashes: dict[str, str] = {}
        upstream = ""
        for s in self.stages:
            upstream = config_hash({"stage": s.name, "config": self.configs[s.name].hash_payload(),
                                    "upstream": upstream, "part_size": cfg.part_size if s.input_schema is None else None})
            self.hashes[s.name] = upstream

    # -- lookup ------------------------------------------------------------------
    def stage(self, name: str) -> type[Stage]:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in flow {self.cfg.flow!r}; stages: {', '.join(s.name for s in self.stages)}")

    def stage_dir(self, name: str) -> str:
        return f"{self.cfg.corpus}/{name}"

    def context(self, stage: type[Stage], part: int | None = None) -> StageContext:
        return StageContext(storage=self.storage, corpus=self.cfg.corpus, stage_dir=self.stage_dir(stage.name),
                            part=part, build=self.cfg.model_dump(mode="json"))

    def instantiate(self, stage: type[Stage]) -> Stage:
        return stage(self.configs[stage.name], self.context(stage))

    def outputs(self, kind: str | None = None) -> list[Output]:
        """What the stages publish (e.g. ``kind="shards"``), with their finalize counts."""
        found = []
        for s in self.stages:
            summary = (load_manifest(self.storage, self.stage_dir(s.name), s.name).finalize or {}).get("summary")
            found += [o for o in self.instantiate(s).outputs(summary) if kind is None or o.kind == kind]
        return found

    # -- plans and inputs ------------------------------------------------------------
    def plan(self, stage: type[Stage], save: bool) -> list[list[dict[str, Any]]]:
        """Parts of a source stage. A saved plan keeps its part membership; items found
        later are appended as new parts. A changed source config starts a new plan."""
        path = f"{self.stage_dir(stage.name)}/_plan.json"
        saved = self.storage.read_json(path)
        h = self.hashes[stage.name]
        parts: list[list[dict]] = saved["parts"] if saved and saved.get("config_hash") == h else []
        if parts and not stage.replan:
            return parts
        inst = self.instantiate(stage)
        key = inst.key
        known = {key(it) for p in parts for it in p}
        new = [it for it in inst.plan() if key(it) not in known]
        if new or not saved or saved.get("config_hash") != h:
            size = self.cfg.part_size
            parts = parts + [new[i:i + size] for i in range(0, len(new), size)]
            if save:
                self.storage.write_json(path, {"config_hash": h, "parts": parts})
        return parts

    def inputs(self, index: int, save_plan: bool = False) -> dict[int, tuple[str, Any]]:
        """part -> (input fingerprint, input) for the parts stage ``index`` can process:
        plan items for a source, else the upstream's done part files."""
        stage = self.stages[index]
        if stage.input_schema is None:
            return {k: (items_fingerprint(items), items) for k, items in enumerate(self.plan(stage, save_plan))}
        up = self.stages[index - 1]
        up_manifest = load_manifest(self.storage, self.stage_dir(up.name), up.name)
        return self._done_upstream(index, up_manifest, self.part_states(index - 1, up_manifest))

    def _done_upstream(self, index: int, up_manifest: Manifest, up_states: dict[int, str]) -> dict[int, tuple[str, Any]]:
        """The inputs of stage ``index``: the previous stage's done part files."""
        up_dir = self.stage_dir(self.stages[index - 1].name)
        return {k: (up_manifest.entry(k).output_fingerprint, f"{up_dir}/{part_name(k)}")
                for k, state in up_states.items() if state == DONE}

    def part_states(self, index: int, manifest: Manifest | None = None,
                    inputs: dict[int, tuple[str, Any]] | None = None) -> dict[int, str]:
        stage = self.stages[index]
        manifest = manifest or load_manifest(self.storage, self.stage_dir(stage.name), stage.name)
        inputs = self.inputs(index) if inputs is None else inputs
        h = self.hashes[stage.name]
        states = {}
        for k, (fp, _) in inputs.items():
            e = manifest.entry(k)
            if e is None:
                states[k] = PENDING
            elif e.status == FAILED:
                states[k] = FAILED if e.config_hash == h and e.input_fingerprint == fp else STALE
            elif e.config_hash != h or e.input_fingerprint != fp:
                states[k] = STALE
            elif not self.storage.exists(f"{self.stage_dir(stage.name)}/{part_name(k)}"):
                states[k] = PENDING
            else:
                states[k] = DONE
        return states

    def _finalize_fingerprint(self, stage: type[Stage], manifest: Manifest, done: list[int]) -> str:
        return config_hash([self.hashes[stage.name]] + [manifest.entry(k).output_fingerprint for k in done])

    # -- status --------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One entry per stage: part states, summed counts, finalize state."""
        rows = []
        manifest = states = None
        for i, stage in enumerate(self.stages):
            # each stage's inputs come from the states just computed for the stage before it,
            # instead of re-deriving the whole upstream chain (and re-listing the source) per stage
            inputs = self.inputs(i) if i == 0 else self._done_upstream(i, manifest, states)
            manifest = load_manifest(self.storage, self.stage_dir(stage.name), stage.name)
            states = self.part_states(i, manifest, inputs)
            counts: dict[str, int] = {}
            for k, st in states.items():
                if st == DONE:
                    for c, v in manifest.entry(k).counts.items():
                        counts[c] = counts.get(c, 0) + v
            by_state = {s: sorted(k for k, v in states.items() if v == s) for s in (DONE, PENDING, STALE, FAILED)}
            finalize = None
            if _has_finalize(stage):
                done = by_state[DONE]
                fin = manifest.finalize or {}
                finalize = DONE if done and fin.get("fingerprint") == self._finalize_fingerprint(stage, manifest, done) else PENDING
            rows.append({"stage": stage.name, "parts": by_state, "counts": counts, "finalize": finalize,
                         "upstream_parts_missing": i > 0 and not inputs})
        return rows

    def up_to_date(self) -> bool:
        """True when every stage has all parts done and nothing to finalize (no Ray, no Prefect)."""
        for row in self.status():
            p = row["parts"]
            if p[PENDING] or p[STALE] or p[FAILED] or row["finalize"] == PENDING:
                return False
        return True

    # -- running ---------------------------------------------------------------------
    def run_stage(self, name: str, parts: list[int] | None = None, force: bool = False,
                  progress: bool | None = None) -> StageRun:
        """Run one stage: the parts that are not done (all with ``force``; exactly ``parts``
        when given), then its ``finalize`` if the set of done parts changed."""
        t0 = time.perf_counter()
        index = [s.name for s in self.stages].index(self.stage(name).name)
        stage = self.stages[index]
        sdir = self.stage_dir(name)
        manifest = load_manifest(self.storage, sdir, name)
        manifest.config_hash = self.hashes[name]
        manifest.config = self.configs[name].model_dump(mode="json")
        inputs = self.inputs(index, save_plan=True)
        states = self.part_states(index, manifest, inputs)
        if parts is not None:
            unknown = sorted(set(parts) - set(inputs))
            if unknown:
                raise KeyError(f"{name}: no input for part(s) {unknown}; available: {sorted(inputs)[:20]}")
            todo = sorted(parts)
        else:
            todo = sorted(k for k, st in states.items() if force or st != DONE)
        run = StageRun(stage=name, skipped=len(inputs) - len(todo))
        if todo:
            log.info("%s: %d part(s) to run, %d already done", name, len(todo), run.skipped)
            self._dispatch(stage, todo, inputs, manifest, run, progress)
        else:
            log.info("%s: all %d part(s) done, nothing to run", name, len(inputs))
        done = sorted(k for k, st in self.part_states(index, manifest, inputs).items() if st == DONE)
        if _has_finalize(stage) and done:
            fp = self._finalize_fingerprint(stage, manifest, done)
            if force or (manifest.finalize or {}).get("fingerprint") != fp:
                summary = self.instantiate(stage).finalize(done)
                manifest.finalize = {"fingerprint": fp, "parts": len(done), "summary": summary, "finished_at": now()}
                run.finalized = True
        save_manifest(self.storage, sdir, manifest)
        run.seconds = round(time.perf_counter() - t0, 3)
        return run

    def _dispatch(self, stage: type[Stage], todo: list[int], inputs: dict, manifest: Manifest,
                  run: StageRun, progress: bool | None) -> None:
        import ray

        ensure_ray(self.cfg)
        cfg = self.configs[stage.name]
        res: Resources = cfg.resources or stage.resources
        n_actors = _capacity(res, len(todo))
        actors = _pool(res, n_actors)
        h = self.hashes[stage.name]
        ctx = self.context(stage)
        max_attempts = self.cfg.ray.part_retries + 1
        queue = deque(todo)
        attempts = {k: 0 for k in todo}
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (part, actor index)
        idle = deque(range(len(actors)))
        up_counts = self._input_sizes(stage, todo, inputs)
        bar = _Progress(stage.name, len(todo), sum(up_counts.values()), progress)
        last_save = time.monotonic()

        def submit(actor_i: int) -> None:
            k = queue.popleft()
            attempts[k] += 1
            spec = {"stage_cls": stage, "config": cfg.model_dump(mode="json"), "context": ctx,
                    "config_hash": h, "part": k, "input": inputs[k][1], "source": stage.input_schema is None}
            inflight[actors[actor_i].run_part.remote(spec)] = (k, actor_i)

        try:
            while queue or inflight:
                while queue and idle:
                    submit(idle.popleft())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    k, ai = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a part failure must not stop the others
                        if isinstance(exc, ray.exceptions.RayActorError):
                            actors[ai] = _new_actor(res)  # the actor died (OOM, segfault): replace it
                        err = _short_error(exc)
                        if attempts[k] < max_attempts:
                            log.warning("%s part %d failed (attempt %d/%d), retrying: %s", stage.name, k,
                                        attempts[k], max_attempts, err)
                            queue.append(k)
                        else:
                            log.error("%s part %d failed after %d attempts: %s", stage.name, k, attempts[k], err)
                            manifest.set(k, PartEntry(status=FAILED, config_hash=h, input_fingerprint=inputs[k][0],
                                                      attempts=attempts[k], error=err, finished_at=now()))
                            run.failed[k] = err
                            bar.advance(up_counts.get(k, 0))
                        idle.append(ai)
                        continue
                    manifest.set(k, PartEntry(status=DONE, config_hash=h, input_fingerprint=inputs[k][0],
                                              output_fingerprint=result["output_fingerprint"], counts=result["counts"],
                                              reasons=result["reasons"], seconds=result["seconds"],
                                              attempts=attempts[k], finished_at=now()))
                    run.ran.append(k)
                    bar.advance(result["counts"]["input"])
                    idle.append(ai)
                if time.monotonic() - last_save > 2.0:  # throttled: a kill loses at most ~2 s of records
                    save_manifest(self.storage, self.stage_dir(stage.name), manifest)
                    last_save = time.monotonic()
        finally:
            bar.close()
            save_manifest(self.storage, self.stage_dir(stage.name), manifest)

    def _input_sizes(self, stage: type[Stage], todo: list[int], inputs: dict) -> dict[int, int]:
        if stage.input_schema is None:
            return {k: len(inputs[k][1]) for k in todo}
        index = self.stages.index(stage)
        up = self.stages[index - 1]
        m = load_manifest(self.storage, self.stage_dir(up.name), up.name)
        return {k: (m.entry(k).counts.get("kept", 0) if m.entry(k) else 0) for k in todo}


def enabled_stages(cfg: BuildConfig, stages: list[type[Stage]], configs: dict) -> list[type[Stage]]:
    """The recipe without the stages switched off (``stages.<name>.enabled: false``).

    Raises:
        ConfigError: the source is switched off, or a stage would read rows of another schema
            than the stage now before it writes.
    """
    kept = [s for s in stages if configs[s.name].enabled]
    where = cfg.path or "config"
    if not kept or kept[0] is not stages[0]:
        raise ConfigError(f"{where}: stages.{stages[0].name}.enabled: the source stage cannot be switched off")
    for prev, nxt in zip(kept, kept[1:]):
        if nxt.input_schema is not None and not nxt.input_schema.equals(prev.output_schema):
            off = [s.name for s in stages[stages.index(prev) + 1:stages.index(nxt)]]
            raise ConfigError(f"{where}: stages.{off[0]}.enabled: with {', '.join(off)} switched off, {nxt.name} "
                              f"would read the rows {prev.name} writes, which have another schema")
    return kept


def _has_finalize(stage: type[Stage]) -> bool:
    return stage.finalize is not Stage.finalize


# -- Ray plumbing ---------------------------------------------------------------------
_POOLS: dict[tuple, list] = {}


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


def warm_pool(pipe: "Pipeline", stage: type[Stage]) -> None:
    """Ask Ray for a stage's actors now; they start while the caller does other work."""
    res = pipe.configs[stage.name].resources or stage.resources
    _pool(res, _capacity(res, 1 << 30))


def shutdown_ray() -> None:
    import ray

    _POOLS.clear()
    if ray.is_initialized():
        ray.shutdown()


def _capacity(res: Resources, n_parts: int) -> int:
    import ray

    total = ray.cluster_resources()
    fits = []
    if res.num_cpus > 0:
        fits.append(int(total.get("CPU", 1) // res.num_cpus))
    if res.num_gpus > 0:
        fits.append(int(total.get("GPU", 0) // res.num_gpus))
    n = min(fits) if fits else n_parts
    if res.concurrency:
        n = min(n, res.concurrency)
    return max(1, min(n, n_parts))


def _new_actor(res: Resources):
    import ray

    from pipeline.actor import StageWorker

    opts: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.memory_bytes:
        opts["memory"] = res.memory_bytes
    return ray.remote(StageWorker).options(**opts).remote()


def _pool(res: Resources, n: int) -> list:
    import ray

    key = (res.num_cpus, res.num_gpus, res.memory_bytes)
    if key not in _POOLS:
        # idle actors of another resource shape hold the CPUs/GPUs this stage needs: with
        # them alive, the new actors could never be scheduled and the build would hang
        for other in _POOLS.values():
            for actor in other:
                ray.kill(actor)
        _POOLS.clear()
    pool = _POOLS.setdefault(key, [])
    while len(pool) < n:
        pool.append(_new_actor(res))
    return pool[:n]


def _short_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}"
    return text.strip().splitlines()[0][:500] if "\n" in text and len(text) > 500 else text[:2000]


class _Progress:
    """Two bars, parts and items; plain log lines when stderr is not a terminal."""

    def __init__(self, name: str, parts: int, items: int, enabled: bool | None):
        self.name, self.parts, self.done = name, parts, 0
        self.live = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.t_parts = self.p.add_task(f"{name} parts", total=parts)
            self.t_items = self.p.add_task(f"{name} items", total=items or None)
            self.p.start()

    def advance(self, items: int) -> None:
        self.done += 1
        if self.live:
            self.p.advance(self.t_parts)
            self.p.advance(self.t_items, items)
        elif self.done == self.parts or self.done % max(1, self.parts // 10) == 0:
            log.info("%s: %d/%d parts (%.1f s)", self.name, self.done, self.parts, time.monotonic() - self.t0)

    def close(self) -> None:
        if self.live:
            self.p.stop()
