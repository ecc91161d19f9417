"""Launch training from a corpus build's shards: a Prefect flow that runs (or resumes) the
build, then starts ``livecc train`` (torchrun on this node) on the shards it produced.

``train/`` itself needs neither Prefect nor Ray; this flow only chains the two.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from flows.build import build_corpus, open_pipeline


@task(name="launch-training", retries=0)
def launch_training(stage: str, shards: list[str], output_dir: str | None, config: str | None = None,
                    overrides: list[str] | None = None, dry_run: bool = False, model: str | None = None) -> int:
    """Run ``train.cli.launch``; a non-zero torchrun exit fails the task. ``model``: the initial
    model, or ``tiny`` (a random tiny Qwen2-VL for a CPU smoke run)."""
    from train.cli import launch

    logger = get_run_logger()
    code = launch(stage, shards=shards, config=config, output_dir=output_dir, model=model,
                  overrides=overrides or [], dry_run=dry_run, echo=logger.info)
    if code != 0:
        raise RuntimeError(f"training exited with code {code}")
    return code


@flow(name="livecc-build-and-train", log_prints=True)
def build_and_train(config_path: str, stage: str = "pretrain", output_dir: str | None = "checkpoints/livecc",
                    train_config: str | None = None, train_overrides: list[str] | None = None,
                    overrides: list[str] | None = None, dry_run: bool = False,
                    model: str | None = None) -> dict[str, Any]:
    """Bring the corpus up to date, then train ``stage`` (pretrain | sft) on its shards.
    ``output_dir`` None: the training config's; ``model``: the initial model (``tiny``: a
    random tiny Qwen2-VL built offline, for a CPU smoke run).

    Raises:
        RuntimeError: a stage left failed parts (training on a partial corpus is refused),
            or training failed.
    """
    results = build_corpus(config_path, overrides or [])
    failed = {r["stage"]: r["failed"] for r in results if r["failed"]}
    if failed:
        raise RuntimeError(f"corpus build has failed parts {failed}; fix them before training")
    pipe = open_pipeline(config_path, overrides)
    shard_dirs = [pipe.storage.url_of(o.path) for o in pipe.outputs("shards")]
    if not shard_dirs:
        raise RuntimeError(f"recipe {pipe.cfg.flow!r} publishes no shards to train on")
    code = launch_training(stage, shard_dirs, output_dir, train_config, train_overrides, dry_run, model)
    if output_dir is None:
        from train.cli import resolve

        output_dir = resolve(stage, train_config, shard_dirs, [], None, model, train_overrides or []).output_dir
    return {"shards": shard_dirs, "output_dir": output_dir, "exit_code": code}
