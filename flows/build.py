"""The Prefect flows that run a corpus build or one stage, and publish the reports.

Prefect orchestrates; Ray does the work (:mod:`pipeline.executor`). Parts stream from stage to
stage, so stages overlap in time: each stage is a Prefect task that starts when the stage's
first part starts and finishes when its last part is done and it is finalized, and the flow
run's page shows the tasks overlapping. A stage's report (a separate task and artifact) is
published as soon as the stage completes; the build report (a timeline of every part, and each
stage's busy and idle time) when the build ends. Ray workers never talk to Prefect. The CLI
brings up the Prefect API first (:class:`pipeline.prefect_server.PrefectServer`).

Retries have one layer per kind of failure (docs/architecture.md): a part that raises, or whose
actor or node dies, is retried by the executor (``ray.part_retries``) and the stage task logs
it; everything else -- a config error, a failing ``finalize``, a report -- is deterministic, so
Prefect does not retry it, and a re-run of the build resumes from the parts already done.
"""
from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import Future
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.config import load_config
from pipeline.pipeline import BuildRun, Listener, Pipeline, StageRun
from pipeline.report import build_report, timeline_report
from recipes import recipe_stages

#: run id -> stage -> the future its Prefect task waits on (set by the scheduler on the driver)
_STAGES: dict[str, dict[str, Future]] = {}
_LOCK = threading.Lock()


def open_pipeline(config_path: str, overrides: list[str] | None = None) -> Pipeline:
    """The build config at ``config_path`` (with ``overrides``) bound to its recipe's stages.

    Raises:
        ConfigError: a bad config or an unknown recipe.
    """
    cfg = load_config(config_path, overrides)
    return Pipeline(cfg, recipe_stages(cfg))


def _artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


@task(name="stage", retries=0, cache_policy=NO_CACHE, task_run_name="{stage_name}")
def stage_task(run_id: str, stage_name: str) -> dict[str, Any]:
    """A stage while its parts run: waits for the scheduler to finish the stage, then logs and
    returns what it did (parts run, skipped, failed, blocked; counts)."""
    with _LOCK:
        fut = _STAGES[run_id][stage_name]
    run: StageRun = fut.result()
    logger = get_run_logger()
    c = run.counts
    logger.info("%s: ran %d part(s), skipped %d, failed %d, blocked %d; kept %s, rejected %s, errors %s",
                stage_name, len(run.ran), len(run.skipped), len(run.failed), len(run.blocked),
                c.get("kept", 0), c.get("rejected", 0), c.get("errors", 0))
    for k, err in sorted(run.failed.items()):
        logger.error("%s part %d failed: %s", stage_name, k, err)
    return run.summary()


@task(name="stage-report", retries=0, cache_policy=NO_CACHE, task_run_name="{stage_name}-report")
def report_task(config_path: str, overrides: list[str], stage_name: str) -> dict[str, Any]:
    """Publish a finished stage's report: files next to its manifest and a Prefect artifact."""
    pipe = open_pipeline(config_path, overrides)
    report = build_report(pipe, stage_name)
    create_markdown_artifact(key=_artifact_key(pipe.cfg.corpus, stage_name), markdown=report["markdown"],
                             description=f"{pipe.cfg.corpus}/{stage_name} stage report")
    return {"report": pipe.storage.url_of(f"{pipe.stage_dir(stage_name)}/_report.md")}


class _PrefectStages(Listener):
    """Submits a stage's task when its first part starts, resolves it when the stage finishes,
    and submits the stage's report then (all on the flow's thread)."""

    def __init__(self, config_path: str, overrides: list[str]):
        self.config_path, self.overrides = config_path, overrides
        self.run_id = uuid.uuid4().hex
        self.tasks: dict[str, Any] = {}
        self.reports: dict[str, Any] = {}
        with _LOCK:
            _STAGES[self.run_id] = {}

    def stage_started(self, stage: str) -> None:
        with _LOCK:
            _STAGES[self.run_id][stage] = Future()
        self.tasks[stage] = stage_task.submit(self.run_id, stage)

    def stage_finished(self, stage: str, run: StageRun) -> None:
        _STAGES[self.run_id][stage].set_result(run)
        self.reports[stage] = report_task.submit(self.config_path, self.overrides, stage)

    def results(self, build: BuildRun) -> list[dict[str, Any]]:
        out = []
        for name, sr in build.stages.items():
            info = self.tasks[name].result() if name in self.tasks else sr.summary()
            report = self.reports[name].result() if name in self.reports else {}
            out.append({**info, **report})
        return out

    def abandon(self, exc: BaseException) -> None:
        """The build raised: fail the stage tasks still waiting, so none hangs."""
        for fut in _STAGES.get(self.run_id, {}).values():
            if not fut.done():
                fut.set_exception(exc)
        for t in self.tasks.values():
            try:
                t.wait()
            except Exception:  # noqa: BLE001 - already failing
                pass

    def close(self) -> None:
        with _LOCK:
            _STAGES.pop(self.run_id, None)


def _run(pipe: Pipeline, config_path: str, overrides: list[str], stages: list[str] | None, parts: list[int] | None,
         force: bool, progress: bool | None) -> list[dict[str, Any]]:
    listener = _PrefectStages(config_path, overrides)
    try:
        try:
            build = pipe.run(stages, parts=parts, force=force, progress=progress, listener=listener)
        except BaseException as exc:
            listener.abandon(exc)
            raise
        results = listener.results(build)
        report = timeline_report(pipe, build)
        create_markdown_artifact(key=_artifact_key(pipe.cfg.corpus, "build"), markdown=report["markdown"],
                                 description=f"{pipe.cfg.corpus}: build timeline, busy and idle time per stage")
        for r in results:
            r["build_report"] = pipe.storage.url_of(f"{pipe.cfg.corpus}/_build/report.md")
        return results
    finally:
        listener.close()
        from pipeline.executor import shutdown_ray
        shutdown_ray()


@flow(name="livecc-corpus-build", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=64))
def build_corpus(config_path: str, overrides: list[str] | None = None, force: bool = False,
                 progress: bool | None = None) -> list[dict[str, Any]]:
    """Run every stage of the config's recipe, parts streaming from stage to stage; every part
    resumes where it stopped. Returns one dict per stage (parts run, skipped, failed, blocked,
    counts, report paths)."""
    pipe = open_pipeline(config_path, overrides)
    return _run(pipe, config_path, overrides or [], None, None, force, progress)


@flow(name="livecc-stage-rerun", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def rerun_stage(config_path: str, stage_name: str, overrides: list[str] | None = None,
                parts: list[int] | None = None, force: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Run one stage again (chosen parts, or whatever is not done), then its report."""
    pipe = open_pipeline(config_path, overrides)
    pipe.stage(stage_name)
    return _run(pipe, config_path, overrides or [], [stage_name], parts, force, progress)[0]


def deployment(config_path: str, cron: str, name: str | None = None, overrides: list[str] | None = None):
    """A Prefect deployment of :func:`build_corpus` on a cron schedule (e.g. ``"0 3 * * *"``:
    daily at 03:00). Each scheduled run resumes the corpus: only new or stale parts do work."""
    import os

    pipe = open_pipeline(config_path, overrides)
    return build_corpus.to_deployment(
        name=name or f"{pipe.cfg.corpus}-build", cron=cron,
        parameters={"config_path": os.path.abspath(config_path), "overrides": overrides or []},
        description=f"Scheduled build of corpus {pipe.cfg.corpus!r} at {pipe.cfg.root}",
        tags=["livecc", pipe.cfg.flow])
