"""``livecc train pretrain|sft``: launch Qwen2-VL streaming training on produced shards with torchrun.

The command resolves the config (YAML + ``--shards``/``--jsonl`` + ``--set`` overrides), writes
it to ``<output_dir>/train_config.yaml`` (the record of the run, and what every rank reads),
then runs ``torchrun -m train.trainer --config <that file>`` with one process per local GPU
(one process on a CPU-only machine). Multi-node is configuration only: ``--nnodes``,
``--node-rank`` and ``--rdzv-endpoint`` go to torchrun (``infra/slurm/train.sbatch`` runs this
command on every node; ``infra/ray/train_job.py`` runs the same trainer on a Ray cluster).

Mounted by the lead under the ``livecc`` CLI as ``train``; standalone: ``python -m train.cli``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import typer

app = typer.Typer(help="Qwen2-VL streaming pre-training and SFT on produced shards (LiveCC).", no_args_is_help=True)

SHARDS_HELP = "shard folder (<root>/<corpus>/shards, local or fsspec URL), optionally PATH@WEIGHT; repeatable"
JSONL_HELP = "reference JSONL-with-seeks file, optionally PATH@WEIGHT; repeatable (e.g. LLaVA-Video-178K)"
MODEL_HELP = ("initial model (Hub id or folder), or 'tiny': a tiny RANDOM Qwen2-VL built offline that trains a few "
              "CPU steps to show the path works (defaults: train.cli.TINY_OVERRIDES)")

#: ``--model tiny``: a tiny randomly initialised Qwen2-VL and processor built offline
#: (``train/tiny.py``), sized for a CPU smoke run: 5 steps of batch 1 at a small visual budget,
#: loss logged every step, a checkpoint and TensorBoard logs in ``checkpoints/tiny_smoke``.
#: Applied before the config file's own overrides, so ``--set`` still wins.
TINY_MODEL = "tiny"
TINY_OVERRIDES = [
    "model_name_or_path=tiny", "processor_name_or_path=null", "output_dir=checkpoints/tiny_smoke",
    "run_name=tiny_smoke", "max_steps=5", "save_steps=5", "logging_steps=1", "effective_batch_size=1",
    "per_device_train_batch_size=1", "learning_rate=1e-3", "warmup_ratio=0.0", "bf16=false", "tf32=false",
    "gradient_checkpointing=false", "deepspeed=null", "use_liger_kernel=false", "attn_implementation=sdpa",
    "dataloader_num_workers=0", "report_to=[tensorboard]", "resume=never",
    "video.min_pixels=12544", "video.total_pixels=376320",   # 16 and 16 x 30 visual tokens of 28x28
]
TINY_NOTICE = ("NOTE: --model tiny trains a tiny, RANDOMLY INITIALISED Qwen2-VL built offline. Its checkpoint is "
               "useless as a model: this run only shows that shards -> streaming samples -> training -> "
               "checkpoint + TensorBoard logs works on this machine.")


def local_gpus() -> int:
    """CUDA devices visible to this node (0 without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means CPU
        return 0


def resolve(stage: str, config: Optional[str], shards: list[str], jsonl: list[str], output_dir: Optional[str],
            model: Optional[str], overrides: list[str]):
    """The run's :class:`train.trainer.TrainConfig` from the CLI options."""
    from train.dataset import SourceSpec
    from train.trainer import TrainConfig, load_config

    if model == TINY_MODEL:
        overrides = TINY_OVERRIDES + list(overrides)
    cfg = load_config(config or stage, overrides)
    if cfg.stage != stage:
        raise ValueError(f"config {config} is for stage {cfg.stage!r}, not {stage!r}")
    sources = [SourceSpec.parse(s) for s in shards]
    sources = [SourceSpec(s.path, s.weight, "shards") for s in sources]
    sources += [SourceSpec(s.path, s.weight, "jsonl") for s in (SourceSpec.parse(j) for j in jsonl)]
    data = cfg.model_dump()
    if sources:
        data["data"]["sources"] = [{"path": s.path, "weight": s.weight, "kind": s.kind} for s in sources]
    if output_dir:
        data["output_dir"] = output_dir
    if model:
        data["model_name_or_path"] = model
    cfg = TrainConfig.model_validate(data)
    if not cfg.data.sources:
        raise ValueError("no data: give --shards and/or --jsonl (or data.sources in the config)")
    return cfg


def torchrun_command(config_path: str, nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: Optional[str] = None) -> list[str]:
    """The torchrun command line for one node. Single node: ``--standalone``; multi-node: c10d
    rendezvous at ``rdzv_endpoint`` (host:port), required. Raises ValueError."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("multi-node runs need --rdzv-endpoint HOST:PORT (the first node)")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        cmd += ["--standalone", "--nnodes=1"]
    return cmd + ["-m", "train.trainer", "--config", config_path]


def launch(stage: str, *, shards: Sequence[str] = (), jsonl: Sequence[str] = (), config: Optional[str] = None,
           output_dir: Optional[str] = None, model: Optional[str] = None, overrides: Sequence[str] = (),
           nproc_per_node: Optional[int] = None, nnodes: int = 1, node_rank: int = 0,
           rdzv_endpoint: Optional[str] = None, dry_run: bool = False, echo=print) -> int:
    """Resolve the config, write it to ``<output_dir>/train_config.yaml`` and run torchrun on this
    node; returns torchrun's exit code (0 for a dry run). What ``livecc train`` runs, and what a
    Prefect task can call after a corpus build. Raises ValueError for bad options."""
    from train.trainer import dump_config

    cfg = resolve(stage, config, list(shards), list(jsonl), output_dir, model, list(overrides))
    nproc = nproc_per_node or max(local_gpus(), 1)
    config_path = str(Path(cfg.output_dir) / "train_config.yaml")
    cmd = torchrun_command(config_path, nproc, nnodes, node_rank, rdzv_endpoint)
    if cfg.model_name_or_path == TINY_MODEL:
        echo(TINY_NOTICE)
    echo(f"{stage}: {len(cfg.data.sources)} source(s), {nproc} process(es) on this node x {nnodes} node(s); "
         f"config -> {config_path}")
    echo(shlex.join(cmd))
    if dry_run:
        return 0
    dump_config(cfg, config_path)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # the project root must be importable by every rank (train.trainer, schemas)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.call(cmd, env=env)


def _command(stage: str):
    def command(
        shards: list[str] = typer.Option([], "--shards", help=SHARDS_HELP),
        jsonl: list[str] = typer.Option([], "--jsonl", help=JSONL_HELP),
        config: Optional[str] = typer.Option(None, "--config",
                                             help=f"YAML config (default: train/configs/{stage}.yaml)"),
        output_dir: Optional[str] = typer.Option(None, "--output-dir", help="checkpoints and logs"),
        model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
        overrides: list[str] = typer.Option([], "--set", help="config override KEY=VALUE (YAML value), repeatable"),
        nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", help="default: local GPUs, or 1 on CPU"),
        nnodes: int = typer.Option(1, "--nnodes", min=1),
        node_rank: int = typer.Option(0, "--node-rank", min=0),
        rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint",
                                                    help="HOST:PORT of the rendezvous (multi-node)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved command; start nothing"),
    ) -> None:
        try:
            code = launch(stage, shards=shards, jsonl=jsonl, config=config, output_dir=output_dir, model=model,
                          overrides=overrides, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                          rdzv_endpoint=rdzv_endpoint, dry_run=dry_run, echo=typer.echo)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        raise typer.Exit(code)

    command.__doc__ = {"pretrain": "Streaming pre-training (lr 2e-5 from Qwen2-VL-7B).",
                       "sft": "SFT from the pre-trained checkpoint (lr 1e-5)."}[stage]
    return command


app.command("pretrain")(_command("pretrain"))
app.command("sft")(_command("sft"))


if __name__ == "__main__":
    app()
