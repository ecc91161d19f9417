"""What a build runs: a build config bound to a recipe's stages, and the state of every part.

:class:`Pipeline` works out *what* to run; an executor (:mod:`pipeline.executor`) runs it. It
holds the stage configs and keys, the source plans, the manifests, and decides for each part of
each stage whether it is done, stale, failed, pending or blocked (docs/architecture.md).

**Staleness by content.** A part's output depends on its input rows, its own stage's config and
the stage's code, so part *k* of a stage is done when its manifest entry carries the stage's
current key -- the hash of its own config section, its declared ``version`` and
:meth:`Stage.fingerprint` (model files and anything else it reads besides its input part) --
and the fingerprint of its input (the sha256 of part *k* of the stage before it, or of the plan
items for a source), and its part file exists. A changed threshold that leaves a filter's output
byte-identical therefore leaves every part downstream done.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import schemas
from pipeline.config import BuildConfig, ConfigError, check_stage_sections, config_hash, stage_config
from pipeline.manifest import (BLOCKED, DONE, FAILED, PENDING, STALE, Manifest, load_manifest, now,
                               save_manifest)
from pipeline.stage import Output, Stage, StageContext
from pipeline.storage import Storage, part_name
from pipeline.worker import items_fingerprint

log = logging.getLogger("livecc")

#: written by a running build under ``<corpus>/_build/``: parts in flight, for ``livecc status``
LIVE_FILE = "_build/live.json"
LIVE_STALE_S = 15.0


@dataclass
class StageRun:
    """What one stage did in a run: parts run, skipped (already done), failed (part -> error),
    blocked (an upstream part failed), and whether it was finalized."""
    stage: str
    ran: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    blocked: list[int] = field(default_factory=list)
    finalized: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def did_work(self) -> bool:
        return bool(self.ran or self.failed or self.finalized)

    def summary(self) -> dict[str, Any]:
        return {"stage": self.stage, "ran": sorted(self.ran), "skipped": len(self.skipped),
                "failed": {k: v for k, v in sorted(self.failed.items())}, "blocked": sorted(self.blocked),
                "finalized": self.finalized, "counts": dict(self.counts)}


@dataclass
class BuildRun:
    """A run of some stages: each stage's :class:`StageRun` and the part timeline
    (``stage, part, start, end`` in epoch seconds, ``ran``)."""
    stages: dict[str, StageRun]
    timeline: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def failed(self) -> dict[str, dict[int, str]]:
        return {name: r.failed for name, r in self.stages.items() if r.failed}


class Listener:
    """Hooks a run calls on the driver as stages start and finish (the Prefect flow shows each
    stage as a task this way). The default does nothing."""

    def stage_started(self, stage: str) -> None: ...

    def stage_finished(self, stage: str, run: StageRun) -> None: ...


class Pipeline:
    """A build config bound to a recipe's stages.

    Raises:
        ConfigError: on construction, when a stage section is unknown or invalid, or a stage
            switched off leaves neighbours that do not connect.
    """

    def __init__(self, cfg: BuildConfig, stages: list[type[Stage]]):
        check_stage_sections(cfg, stages)
        self.cfg = cfg
        self.all_stages = list(stages)
        self.storage = Storage(cfg.root, cfg.storage_options)
        self.configs = {s.name: stage_config(cfg, s) for s in self.all_stages}
        self.stages = enabled_stages(cfg, self.all_stages, self.configs)
        self.keys = {s.name: self._key(s) for s in self.stages}

    # -- lookup ------------------------------------------------------------------------
    def stage(self, name: str) -> type[Stage]:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in flow {self.cfg.flow!r}; stages: {', '.join(s.name for s in self.stages)}")

    def index(self, name: str) -> int:
        return self.stages.index(self.stage(name))

    def stage_dir(self, name: str) -> str:
        return f"{self.cfg.corpus}/{name}"

    def context(self, stage: type[Stage], part: int | None = None) -> StageContext:
        return StageContext(storage=self.storage, corpus=self.cfg.corpus, stage_dir=self.stage_dir(stage.name),
                            part=part, build=self.cfg.model_dump(mode="json"))

    def instantiate(self, stage: type[Stage]) -> Stage:
        return stage(self.configs[stage.name], self.context(stage))

    def manifest(self, name: str) -> Manifest:
        return load_manifest(self.storage, self.stage_dir(name), name)

    def outputs(self, kind: str | None = None) -> list[Output]:
        """What the stages publish (e.g. ``kind="shards"``), with their finalize counts."""
        found = []
        for s in self.stages:
            summary = (self.manifest(s.name).finalize or {}).get("summary")
            found += [o for o in self.instantiate(s).outputs(summary) if kind is None or o.kind == kind]
        return found

    @property
    def corpus_hash(self) -> str:
        """One hash of every stage's key, in order: what this config builds (for provenance)."""
        return config_hash([self.keys[s.name] for s in self.stages])

    def _key(self, stage: type[Stage]) -> str:
        return config_hash({"stage": stage.name, "config": self.configs[stage.name].hash_payload(),
                            "version": stage.version, "schema": schemas.SCHEMA_VERSION,
                            "reads": self.instantiate(stage).fingerprint(),
                            "part_size": self.cfg.part_size if stage.input_schema is None else None})

    # -- source plans ----------------------------------------------------------------------
    def saved_plan(self, stage: type[Stage]) -> list[list[dict[str, Any]]] | None:
        """The saved item grouping of a source for its current key; never lists anything."""
        saved = self.storage.read_json(f"{self.stage_dir(stage.name)}/_plan.json")
        return saved["parts"] if saved and saved.get("config_hash") == self.keys[stage.name] else None

    def plan_source(self, save: bool = True) -> list[list[dict[str, Any]]]:
        """List the source's items and save their grouping into parts: a saved plan keeps its
        membership and new items become new parts; a source with ``replan = False`` lists once
        per key (discovery costs requests). Builds call this; status never does. ``save=False``
        only looks (a release checking for items not built yet)."""
        stage = self.stages[0]
        saved = self.saved_plan(stage)
        if saved is not None and not stage.replan:
            return saved
        parts = saved or []
        inst = self.instantiate(stage)
        known = {inst.key(it) for p in parts for it in p}
        new = [it for it in inst.plan() if inst.key(it) not in known]
        if new or saved is None:
            size = self.cfg.part_size
            parts = parts + [new[i:i + size] for i in range(0, len(new), size)]
            if save:
                self.storage.write_json(f"{self.stage_dir(stage.name)}/_plan.json",
                                        {"config_hash": self.keys[stage.name], "parts": parts})
        return parts

    # -- part states ----------------------------------------------------------------------
    def entry_state(self, stage: type[Stage], manifest: Manifest, part: int, input_fp: str) -> str:
        """DONE, STALE, FAILED or PENDING of one part whose input is ready with ``input_fp``."""
        e = manifest.entry(part)
        key = self.keys[stage.name]
        if e is None:
            return PENDING
        if e.status == FAILED:
            return FAILED if e.config_hash == key and e.input_fingerprint == input_fp else STALE
        if e.config_hash != key or e.input_fingerprint != input_fp:
            return STALE
        if not self.storage.exists(f"{self.stage_dir(stage.name)}/{part_name(part)}"):
            return PENDING
        return DONE

    def states(self, manifests: dict[str, Manifest] | None = None) -> dict[str, dict[int, tuple[str, str | None]]]:
        """stage -> part -> (state, input fingerprint when the input is ready). Reads manifests and
        the saved source plan only. A part whose input is not ready yet is PENDING, or BLOCKED when
        an upstream part failed."""
        manifests = manifests or {s.name: self.manifest(s.name) for s in self.stages}
        out: dict[str, dict[int, tuple[str, str | None]]] = {}
        prev: dict[int, tuple[str, str | None]] | None = None
        for i, stage in enumerate(self.stages):
            m = manifests[stage.name]
            cur: dict[int, tuple[str, str | None]] = {}
            if i == 0:
                for k, items in enumerate(self.saved_plan(stage) or []):
                    fp = items_fingerprint(items)
                    cur[k] = (self.entry_state(stage, m, k, fp), fp)
            else:
                up = manifests[self.stages[i - 1].name]
                for k, (state, _) in prev.items():
                    if state == DONE:
                        fp = up.entry(k).output_fingerprint
                        cur[k] = (self.entry_state(stage, m, k, fp), fp)
                    else:
                        cur[k] = (BLOCKED if state in (FAILED, BLOCKED) else PENDING, None)
            out[stage.name] = cur
            prev = cur
        return out

    def part_states(self, index: int) -> dict[int, str]:
        """part -> state of the stage at ``index`` (see :meth:`states`)."""
        return {k: st for k, (st, _) in self.states()[self.stages[index].name].items()}

    def finalize_fingerprint(self, stage: type[Stage], manifest: Manifest, done: list[int]) -> str:
        return config_hash([self.keys[stage.name]] + [manifest.entry(k).output_fingerprint for k in done])

    def finalize_state(self, stage: type[Stage], manifest: Manifest, done: list[int]) -> str | None:
        if not has_finalize(stage):
            return None
        fin = manifest.finalize or {}
        return DONE if done and fin.get("fingerprint") == self.finalize_fingerprint(stage, manifest, done) else PENDING

    def finalize(self, stage: type[Stage], manifests: dict[str, Manifest], force: bool = False) -> bool:
        """Run ``stage.finalize`` over its done parts when that set changed (or ``force``);
        records the summary in ``manifests[stage.name]`` (the run's manifests, ahead of storage).
        Returns whether it ran."""
        if not has_finalize(stage):
            return False
        manifest = manifests[stage.name]
        states = self.states({s.name: manifests.get(s.name) or self.manifest(s.name) for s in self.stages})
        done = sorted(k for k, (st, _) in states[stage.name].items() if st == DONE)
        if not done:
            return False
        fp = self.finalize_fingerprint(stage, manifest, done)
        if not force and (manifest.finalize or {}).get("fingerprint") == fp:
            return False
        summary = self.instantiate(stage).finalize(done)
        manifest.finalize = {"fingerprint": fp, "parts": len(done), "summary": summary, "finished_at": now()}
        return True

    # -- status ------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One entry per stage: parts by state, summed counts of done parts, the finalize
        state, and the parts in flight when a build is running. Never lists a source: a source
        without a saved plan shows no parts (``planned: False``)."""
        manifests = {s.name: self.manifest(s.name) for s in self.stages}
        states = self.states(manifests)
        live = self.live()
        rows = []
        for stage in self.stages:
            m, st = manifests[stage.name], states[stage.name]
            counts: dict[str, int] = {}
            for k, (s, _) in st.items():
                if s == DONE:
                    for c, v in m.entry(k).counts.items():
                        counts[c] = counts.get(c, 0) + v
            by_state = {s: sorted(k for k, (v, _) in st.items() if v == s) for s in (DONE, PENDING, STALE, FAILED, BLOCKED)}
            rows.append({"stage": stage.name, "parts": by_state, "counts": counts,
                         "finalize": self.finalize_state(stage, m, by_state[DONE]),
                         "in_flight": (live or {}).get("stages", {}).get(stage.name, {}).get("in_flight", []),
                         "planned": stage.input_schema is not None or self.saved_plan(stage) is not None})
        return rows

    def up_to_date(self) -> bool:
        """True when every stage has all parts done and nothing to finalize. Reads manifests
        and the saved plan only (a build first refreshes the plan, :meth:`plan_source`)."""
        rows = self.status()
        if not rows[0]["planned"]:
            return False
        for row in rows:
            p = row["parts"]
            if p[PENDING] or p[STALE] or p[FAILED] or p[BLOCKED] or row["finalize"] == PENDING:
                return False
        return True

    # -- the live file: what a running build has in flight -----------------------------------
    def write_live(self, stages: dict[str, dict[str, list[int]]], started_at: float) -> None:
        self.storage.write_json(f"{self.cfg.corpus}/{LIVE_FILE}", {
            "pid": os.getpid(), "host": socket.gethostname(), "started_at": started_at,
            "updated_at": time.time(), "stages": stages})

    def clear_live(self) -> None:
        self.storage.rm(f"{self.cfg.corpus}/{LIVE_FILE}")

    def live(self) -> dict[str, Any] | None:
        """The running build's live file, if it was updated in the last few seconds."""
        data = self.storage.read_json(f"{self.cfg.corpus}/{LIVE_FILE}")
        if not data or time.time() - float(data.get("updated_at", 0)) > LIVE_STALE_S:
            return None
        return data

    # -- running ------------------------------------------------------------------------------
    def run(self, stages: list[str] | None = None, parts: list[int] | None = None, force: bool = False,
            executor: "Any | None" = None, progress: bool | None = None, listener: Listener | None = None) -> BuildRun:
        """Run ``stages`` (names, default all, in recipe order), streaming parts from stage to
        stage, on ``executor`` (default: :func:`pipeline.executor.make_executor` for this config).

        ``parts``: exactly these parts of the first stage are redone (and flow on); ``force``:
        every part of the chosen stages is redone.

        Raises:
            KeyError: an unknown stage name, or a part with no input.
        """
        from pipeline.executor import make_executor

        own = executor is None
        executor = executor or make_executor(self.cfg)
        try:
            return executor.run(self, [self.stage(n) for n in (stages or [s.name for s in self.stages])],
                                parts=parts, force=force, progress=progress, listener=listener or Listener())
        finally:
            if own:
                executor.close()

    def run_stage(self, name: str, parts: list[int] | None = None, force: bool = False,
                  progress: bool | None = None, executor: Any | None = None) -> StageRun:
        """Run one stage (its parts that are not done; all with ``force``; exactly ``parts``)."""
        return self.run([name], parts=parts, force=force, progress=progress, executor=executor).stages[name]

    def save(self, manifests: dict[str, Manifest]) -> None:
        for name, m in manifests.items():
            m.config_hash = self.keys[name]
            m.config = self.configs[name].model_dump(mode="json")
            save_manifest(self.storage, self.stage_dir(name), m)


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


def has_finalize(stage: type[Stage]) -> bool:
    return stage.finalize is not Stage.finalize

