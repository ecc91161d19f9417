"""Ray Job entry: LiveCC training on the Ray cluster that built the corpus.

    ray job submit --address http://<head>:8265 --working-dir . -- \\
        python infra/ray/train_job.py pretrain --shards s3://bucket/corpus/live_cc/shards \\
            --output-dir /shared/checkpoints/livecc_pretrain --num-workers 16

Ray Train (``TorchTrainer``) starts ``--num-workers`` workers with one GPU each, sets up
``torch.distributed`` and the RANK / LOCAL_RANK / WORLD_SIZE variables, and every worker runs
:func:`train.trainer.run` with the resolved config: the same code path as ``livecc train``
under torchrun, so the effective batch (512, accumulation derived from the world size),
DeepSpeed ZeRO-2, checkpoints and ``resume: auto`` behave the same.

* Shards and JSONL sources are read through fsspec, so ``s3://`` / ``gs://`` roots work as
  they do for the build; the workers need the credentials the build used.
* ``output_dir`` must be a filesystem every worker sees (NFS, FSx, a bucket mount): HF writes
  checkpoints there and a restarted job resumes from the newest one. Without shared storage add
  ``--set save_on_each_node=true``.
* ``--max-failures`` lets Ray restart the worker group after a node loss; the restarted
  workers resume from the newest checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the project root (ray job --working-dir .)


def train_loop_per_worker(config: dict) -> None:
    """What every Ray Train worker runs: the trainer entry on the resolved config."""
    import logging

    from train.trainer import TrainConfig, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(TrainConfig.model_validate(config))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["pretrain", "sft"])
    parser.add_argument("--config", default=None, help="YAML config (default: train/configs/<stage>.yaml)")
    parser.add_argument("--shards", action="append", default=[], help="shard folder[@weight], repeatable")
    parser.add_argument("--jsonl", action="append", default=[], help="JSONL-with-seeks file[@weight], repeatable")
    parser.add_argument("--output-dir", default=None, help="shared checkpoint folder")
    parser.add_argument("--model", default=None, help="initial model (Hub id or folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--num-workers", type=int, required=True, help="training processes (one GPU each)")
    parser.add_argument("--cpus-per-worker", type=int, default=8, help="CPUs per worker (data loader workers)")
    parser.add_argument("--cpu", action="store_true", help="no GPUs (a smoke run of the job wiring)")
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts Ray may do")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from train.cli import resolve
    from train.trainer import dump_config

    args = parse_args(argv)
    cfg = resolve(args.stage, args.config, args.shards, args.jsonl, args.output_dir, args.model, args.overrides)
    workers = min(cfg.dataloader_num_workers, max(args.cpus_per_worker - 1, 0))   # loader processes per rank
    cfg = cfg.model_copy(update={"dataloader_num_workers": workers})
    dump_config(cfg, Path(cfg.output_dir) / "train_config.yaml")     # the run's record, as the CLI writes it
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init()        # RAY_ADDRESS (set by `ray job submit`) or a local instance
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=args.num_workers, use_gpu=not args.cpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run_name or f"livecc-{cfg.stage}",
                             storage_path=str(Path(cfg.output_dir).resolve() / "ray"),
                             failure_config=FailureConfig(max_failures=args.max_failures)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    print(f"training finished: checkpoints in {cfg.output_dir}")


if __name__ == "__main__":
    main()
