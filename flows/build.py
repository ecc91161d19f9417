"""The Prefect flows that run a corpus build or one stage, and publish stage reports.

Prefect orchestrates (one task per stage; reports as artifacts); Ray does the work inside
each stage (:mod:`pipeline.executor`). Ray workers never talk to Prefect. The CLI brings up
the Prefect API first (:class:`pipeline.prefect_server.PrefectServer`). A stage's report (a
separate task) renders while the next stage runs.

Retries have one layer per kind of failure (docs/architecture.md): a part that raises, or
whose actor dies, is retried by the executor (``ray.part_retries``); everything else -- a
config error, a failing ``finalize``, a report -- is deterministic, so Prefect does not retry
it, and a re-run of the build resumes from the parts already done.
"""
from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipeline.config import load_config
from pipeline.executor import Pipeline
from pipeline.report import build_report
from recipes import recipe_stages


def open_pipeline(config_path: str, overrides: list[str] | None = None) -> Pipeline:
    """The build config at ``config_path`` (with ``overrides``) bound to its recipe's stages.

    Raises:
        ConfigError: a bad config or an unknown recipe.
    """
    cfg = load_config(config_path, overrides)
    return Pipeline(cfg, recipe_stages(cfg))


def _artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


@task(name="run-stage", retries=0, task_run_name="{stage_name}")
def stage_task(config_path: str, overrides: list[str], stage_name: str, force: bool = False,
               parts: list[int] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run one stage's parts on Ray (resuming: parts already done are skipped)."""
    pipe = open_pipeline(config_path, overrides)
    run = pipe.run_stage(stage_name, parts=parts, force=force, progress=progress)
    return {"stage": stage_name, "ran": run.ran, "skipped": run.skipped, "failed": run.failed,
            "finalized": run.finalized}


@task(name="stage-report", retries=0, task_run_name="{stage_name}-report")
def report_task(config_path: str, overrides: list[str], stage_name: str) -> dict[str, Any]:
    """Publish a finished stage's report: files next to its manifest and a Prefect artifact."""
    logger = get_run_logger()
    pipe = open_pipeline(config_path, overrides)
    report = build_report(pipe, stage_name)
    create_markdown_artifact(key=_artifact_key(pipe.cfg.corpus, stage_name), markdown=report["markdown"],
                             description=f"{pipe.cfg.corpus}/{stage_name} stage report")
    c = report["counts"]
    logger.info("%s: %d/%d parts done; kept %s, rejected %s, errors %s", stage_name, report["parts_done"],
                report["parts_total"], c.get("kept", 0), c.get("rejected", 0), c.get("errors", 0))
    return {"counts": c, "report": pipe.storage.url_of(f"{pipe.stage_dir(stage_name)}/_report.md")}


@flow(name="livecc-corpus-build", log_prints=True)
def build_corpus(config_path: str, overrides: list[str] | None = None, force: bool = False,
                 progress: bool | None = None) -> list[dict[str, Any]]:
    """Run every stage of the config's flow in order; each stage resumes where it stopped.
    A stage's report renders while the next stage runs (it reads only finished outputs)."""
    pipe = open_pipeline(config_path, overrides)
    pending = []
    try:
        for stage in pipe.stages:
            run = stage_task(config_path, overrides or [], stage.name, force=force, progress=progress)
            pending.append((run, report_task.submit(config_path, overrides or [], stage.name)))
        return [{**run, **report.result()} for run, report in pending]
    finally:
        from pipeline.executor import shutdown_ray
        shutdown_ray()


@flow(name="livecc-stage-rerun", log_prints=True)
def rerun_stage(config_path: str, stage_name: str, overrides: list[str] | None = None,
                parts: list[int] | None = None, force: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Run one stage again (chosen parts, or whatever is not done), then its report."""
    try:
        run = stage_task(config_path, overrides or [], stage_name, force=force, parts=parts, progress=progress)
        return {**run, **report_task(config_path, overrides or [], stage_name)}
    finally:
        from pipeline.executor import shutdown_ray
        shutdown_ray()


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
