"""The Prefect flows that run a corpus build or one stage, and publish stage reports.

Prefect orchestrates (one task per stage, with retries; reports as artifacts); Ray does
the work inside each stage (:mod:`pipeline.executor`). Ray workers never talk to Prefect.
With no ``PREFECT_API_URL`` set, Prefect runs a local ephemeral server (SQLite).
"""
from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows import flow_stages
from pipeline.config import load_config
from pipeline.executor import Pipeline
from pipeline.report import build_report


def prepare_services(pipe: Pipeline) -> None:
    """Start Prefect's ephemeral server (when no ``PREFECT_API_URL`` is set) in a thread while
    Ray starts, and the first stage's actors spawn, in this one: both take seconds, and one
    after the other they dominate a small build."""
    import os
    import threading

    from pipeline.executor import ensure_ray, warm_pool

    thread = None
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.server.api.server import SubprocessASGIServer

        timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
        thread = threading.Thread(target=SubprocessASGIServer().start, kwargs={"timeout": timeout}, daemon=True)
        thread.start()
    ensure_ray(pipe.cfg)
    warm_pool(pipe, pipe.stages[0])
    if thread is not None:
        thread.join()


def open_pipeline(config_path: str, overrides: list[str] | None = None) -> Pipeline:
    cfg = load_config(config_path, overrides)
    return Pipeline(cfg, flow_stages(cfg.flow))


def _artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


@task(name="run-stage", retries=1, retry_delay_seconds=5, task_run_name="{stage_name}")
def stage_task(config_path: str, overrides: list[str], stage_name: str, force: bool = False,
               parts: list[int] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run one stage on Ray, then publish its report (Prefect artifact + files)."""
    logger = get_run_logger()
    pipe = open_pipeline(config_path, overrides)
    run = pipe.run_stage(stage_name, parts=parts, force=force, progress=progress)
    report = build_report(pipe, stage_name)
    create_markdown_artifact(key=_artifact_key(pipe.cfg.corpus, stage_name), markdown=report["markdown"],
                             description=f"{pipe.cfg.corpus}/{stage_name} stage report")
    c = report["counts"]
    logger.info("%s: ran %d part(s), skipped %d, failed %d; kept %s, rejected %s, errors %s",
                stage_name, len(run.ran), run.skipped, len(run.failed), c.get("kept", 0), c.get("rejected", 0),
                c.get("errors", 0))
    return {"stage": stage_name, "ran": run.ran, "skipped": run.skipped, "failed": run.failed,
            "finalized": run.finalized, "counts": c, "report": pipe.storage.url_of(f"{pipe.stage_dir(stage_name)}/_report.md")}


@flow(name="livecc-corpus-build", log_prints=True)
def build_corpus(config_path: str, overrides: list[str] | None = None, force: bool = False,
                 progress: bool | None = None) -> list[dict[str, Any]]:
    """Run every stage of the config's flow in order; each stage resumes where it stopped."""
    pipe = open_pipeline(config_path, overrides)
    results = []
    try:
        for stage in pipe.stages:
            results.append(stage_task(config_path, overrides or [], stage.name, force=force, progress=progress))
    finally:
        from pipeline.executor import shutdown_ray
        shutdown_ray()
    return results


@flow(name="livecc-stage-rerun", log_prints=True)
def rerun_stage(config_path: str, stage_name: str, overrides: list[str] | None = None,
                parts: list[int] | None = None, force: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Run one stage again (chosen parts, or whatever is not done)."""
    try:
        return stage_task(config_path, overrides or [], stage_name, force=force, parts=parts, progress=progress)
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
