"""Qwen2-VL streaming pre-training and SFT with the HF ``Trainer``.

Sources: the reference ``train.py`` (HF Trainer on the checkpoint's architecture, frozen
modules, resume) and ``scripts/pt_local.sh`` / ``scripts/sft_local.sh`` (hyper-parameters):

==========================  =====================  =========================
setting                     pre-training           SFT
==========================  =====================  =========================
initial model               ``Qwen/Qwen2-VL-7B``   the pre-trained checkpoint
learning rate               2e-5                   1e-5
==========================  =====================  =========================

Both: AdamW (torch), cosine schedule, warm-up ratio 0.03, 1 epoch, effective batch 512 (1 per
device x gradient accumulation x world size; the accumulation is derived), bf16, TF32 on
Ampere+, frozen ``visual``, gradient checkpointing, DeepSpeed ZeRO-2
(``train/configs/deepspeed_zero2.json``), Liger kernels and FlashAttention-2 on GPU.

On a machine without CUDA the GPU-only parts (DeepSpeed, Liger, FlashAttention-2, TF32) are
skipped with a log line, so the same config runs a CPU smoke test. Weights load in bf16 under
DeepSpeed (it keeps fp32 master weights in the optimizer) and in fp32 otherwise (bf16 autocast
then does the maths; plain AdamW on bf16 weights would lose small updates).

``model_name_or_path: tiny`` (``livecc train ... --model tiny``) builds a tiny randomly
initialised Qwen2-VL and processor offline (``train/tiny.py``) instead of loading a checkpoint:
a CPU smoke run that shows the data, training, checkpoint and logging path works.

Resume: ``resume: auto`` continues from the newest ``checkpoint-*`` in ``output_dir``
(model, optimizer, scheduler, RNG states and the data position, which is reproducible because
the sample order is a pure function of ``(seed, epoch)``).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field
from transformers import Trainer, TrainerCallback

from train.dataset import BrokenSampleMonitor, MixSampler, SourceSpec, StreamingDataset, collate_fn
from train.video import VideoBudget

logger = logging.getLogger("train.trainer")   # also when run as __main__ by torchrun

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class SourceConfig(BaseModel):
    """One data source: shard folder or JSONL-with-seeks file, and its draws per epoch."""

    model_config = ConfigDict(extra="forbid")
    path: str
    weight: float = Field(1.0, gt=0)
    kind: Literal["auto", "shards", "jsonl"] = "auto"
    media_root: str | None = Field(None, description="folder/URL that relative media paths in the records are under")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SourceConfig] = Field(default_factory=list, description="shard folders / JSONL files and weights")
    with_context: bool = Field(True, description="append the previous transcript (or title) to the query")
    initial_frames: int = Field(6, ge=2, description="frames of the first window (3 s at 2 FPS)")
    streaming_frames: int = Field(2, ge=2, description="frames of every later window (1 s at 2 FPS)")
    max_broken_rate: float = Field(0.01, ge=0, le=1, description="fail the run above this broken-sample rate")
    broken_min_samples: int = Field(100, ge=1, description="samples tried before the rate is enforced")
    max_attempts: int = Field(10, ge=1, description="replacements tried for one broken sample")


class VideoConfig(BaseModel):
    """Visual budget; VIDEO_MIN_PIXELS / FPS_MAX_FRAMES / VIDEO_MAX_PIXELS in the environment win."""

    model_config = ConfigDict(extra="forbid")
    min_pixels: int = Field(100 * 28 * 28, description="pixels per frame at least")
    max_frames: int = Field(480, description="frames per sample at most (4 min at 2 FPS)")
    total_pixels: int = Field(24576 * 28 * 28, description="pixels over all frames / 2 (28*28 per visual token)")

    def budget(self) -> VideoBudget:
        return VideoBudget.from_env(min_pixels=self.min_pixels, max_frames=self.max_frames,
                                    total_pixels=self.total_pixels)


class TrainConfig(BaseModel):
    """Everything one training run needs (``train/configs/pretrain.yaml``, ``sft.yaml``)."""

    model_config = ConfigDict(extra="forbid")
    stage: Literal["pretrain", "sft"]
    model_name_or_path: str
    processor_name_or_path: str | None = Field(None, description="tokenizer + image processor; default: the model")
    output_dir: str
    run_name: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    learning_rate: float
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    effective_batch_size: int = Field(512, ge=1, description="per device x grad accumulation x world size")
    per_device_train_batch_size: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    logging_steps: int = 10
    save_steps: int = 1000
    save_total_limit: int | None = None
    save_on_each_node: bool = False
    bf16: bool = True
    tf32: bool = True
    gradient_checkpointing: bool = True
    freeze_modules: list[str] = Field(default_factory=lambda: ["visual"])
    deepspeed: str | None = "deepspeed_zero2.json"
    use_liger_kernel: bool = True
    attn_implementation: str = "auto"
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    dataloader_num_workers: int = 16
    seed: int = 42
    resume: str = Field("auto", description="auto (newest checkpoint in output_dir), never, or a checkpoint path")
    training_args: dict[str, Any] = Field(default_factory=dict, description="extra transformers.TrainingArguments")


# -- config ----------------------------------------------------------------------------

def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (values parsed as YAML).

    ``path`` may name a packaged config (``pretrain``, ``sft.yaml``). Raises FileNotFoundError,
    ValueError for a malformed override and pydantic's ValidationError for bad values.
    """
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / p.name).exists():
        p = CONFIG_DIR / p.name
    elif not p.exists() and (CONFIG_DIR / f"{p.name}.yaml").exists():
        p = CONFIG_DIR / f"{p.name}.yaml"
    if not p.exists():
        packaged = sorted(x.name for x in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"training config {path} not found (packaged: {packaged})")
    data = yaml.safe_load(p.read_text()) or {}
    if overrides:
        from omegaconf import OmegaConf

        for item in overrides:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise ValueError(f"override {item!r} is not key=value")
        # OmegaConf's dot-list parser, as the build config's --set uses
        data = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(list(overrides))),
                                      resolve=False)
    return TrainConfig.model_validate(data)


def dump_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (atomically: rank processes may read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)


def gradient_accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    """``effective_batch_size / (per_device_train_batch_size * world_size)``; ValueError unless exact."""
    per_step = cfg.per_device_train_batch_size * world_size
    steps, rest = divmod(cfg.effective_batch_size, per_step)
    if rest or steps < 1:
        raise ValueError(
            f"effective batch {cfg.effective_batch_size} is not a multiple of "
            f"{cfg.per_device_train_batch_size} per device x {world_size} processes")
    return steps


def _resolve_deepspeed(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / p.name).exists():
        p = CONFIG_DIR / p.name
    if not p.exists():
        raise FileNotFoundError(f"DeepSpeed config {path} not found")
    return str(p)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def training_arguments(cfg: TrainConfig, world_size: int | None = None):
    """``transformers.TrainingArguments`` for ``cfg`` on this machine (see the module docstring)."""
    from transformers import TrainingArguments

    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    cuda = _cuda()
    deepspeed = _resolve_deepspeed(cfg.deepspeed)
    if deepspeed and not (cuda and _importable("deepspeed")):
        logger.warning("DeepSpeed %s skipped: %s", deepspeed, "no CUDA device" if not cuda else
                       "deepspeed is not installed (pip install 'livecc-pipeline[gpu]')")
        deepspeed = None
    liger = cfg.use_liger_kernel and cuda and _importable("liger_kernel")
    if cfg.use_liger_kernel and not liger:
        logger.warning("Liger kernels skipped: %s", "no CUDA device" if not cuda else "liger-kernel is not installed")
    kwargs: dict[str, Any] = dict(
        output_dir=cfg.output_dir,
        run_name=cfg.run_name,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(cfg, world_size),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_on_each_node=cfg.save_on_each_node,
        bf16=cfg.bf16,
        use_cpu=not cuda,   # bf16 then means CPU autocast
        tf32=True if (cfg.tf32 and cuda and torch_supports_tf32()) else None,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # non-reentrant checkpointing works with a frozen vision tower (no input needs grad)
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        deepspeed=deepspeed,
        use_liger_kernel=liger,
        report_to=cfg.report_to,
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=cuda,
        seed=cfg.seed,
        eval_strategy="no",
        remove_unused_columns=False,
        label_names=["labels"],
        do_train=True,
    )
    kwargs.update(cfg.training_args)
    return TrainingArguments(**kwargs)


def torch_supports_tf32() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


# -- model -----------------------------------------------------------------------------

def attention_implementation(requested: str) -> str:
    """``auto`` -> FlashAttention-2 when on CUDA with flash-attn installed, else SDPA."""
    if requested != "auto":
        return requested
    if _cuda():
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return "flash_attention_2"
        logger.warning("flash-attn is not installed: using SDPA attention")
    return "sdpa"


def load_model(cfg: TrainConfig, deepspeed: bool):
    """``Qwen2VLForConditionalGeneration`` from ``cfg.model_name_or_path`` (Hub id or folder).

    Raises OSError with a download hint when the weights are not available offline.
    """
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    try:
        return Qwen2VLForConditionalGeneration.from_pretrained(
            cfg.model_name_or_path,
            dtype=torch.bfloat16 if deepspeed else torch.float32,
            attn_implementation=attention_implementation(cfg.attn_implementation),
        )
    except OSError as exc:
        raise OSError(
            f"cannot load {cfg.model_name_or_path!r}: download it (`huggingface-cli download "
            f"{cfg.model_name_or_path}`) or set model_name_or_path to a local checkpoint") from exc


def freeze(model, names: Sequence[str]) -> int:
    """Stop gradients for the named sub-modules (e.g. ``visual``); returns the frozen parameter count.

    Raises AttributeError for an unknown module name.
    """
    frozen = 0
    for name in names:
        module = model
        for part in name.split("."):
            module = getattr(module, part)
        module.requires_grad_(False)
        frozen += sum(p.numel() for p in module.parameters())
        logger.info("froze %s (%d parameters)", name, frozen)
    return frozen


# -- trainer ---------------------------------------------------------------------------

class StreamTrainer(Trainer):
    """HF ``Trainer`` with the mixed-source sampler, on-device patch normalisation and the
    broken-sample monitor. Extra keyword arguments: ``sampler`` (:class:`MixSampler`),
    ``monitor`` (:class:`BrokenSampleMonitor`)."""

    def __init__(self, *args: Any, sampler: MixSampler, monitor: BrokenSampleMonitor, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mix_sampler = sampler
        self.monitor = monitor

    def _get_train_sampler(self, train_dataset=None):
        return self.mix_sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        keys = inputs.pop("sample_keys", None)
        broken = inputs.pop("broken_keys", None) or []
        if keys is not None:
            self.monitor.update(len(keys), broken)
        videos = inputs.get("pixel_values_videos")
        if videos is not None and not videos.is_floating_point():
            inputs["pixel_values_videos"] = self.processing_class.normalize_patches(videos)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # HF saves Qwen2-VL under its legacy names (visual.*, model.*) but Trainer's resume loads
        # the file as-is with strict=False, silently keeping the fresh weights (transformers 4.5x).
        model = model if model is not None else self.model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not _checkpoint_files(resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(model, resume_from_checkpoint)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            logs["broken_sample_rate"] = self.monitor.rate
        super().log(logs, *args, **kwargs)


class LossPrinter(TrainerCallback):
    """One plain line per logging step on the main process: ``step 3/5: loss 6.1234 ...``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            total = f"/{state.max_steps}" if state.max_steps and state.max_steps > 0 else ""
            extra = "".join(f", {k} {logs[k]:.3g}" for k in ("learning_rate", "grad_norm") if k in logs)
            line = f"step {state.global_step}{total}: loss {logs['loss']:.4f}{extra}"
            try:  # above the progress bar, not inside it
                from tqdm.auto import tqdm

                tqdm.write(line)
            except ImportError:
                print(line, flush=True)


def _checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    return sorted(Path(folder).glob("model*.safetensors"))


def load_checkpoint_weights(model, folder: str | os.PathLike) -> int:
    """Load the safetensors weights of a checkpoint folder (single file or shards) into ``model``,
    renaming saved legacy keys through the model's ``_checkpoint_conversion_mapping`` as
    ``from_pretrained`` does. Returns the number of tensors loaded.

    Raises FileNotFoundError (no weights) and RuntimeError when a key is unexpected or a
    parameter (other than a tied one) is not in the checkpoint.
    """
    import re

    from safetensors.torch import load_file

    files = _checkpoint_files(folder)
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {folder}")
    mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    loaded: set[str] = set()
    for file in files:
        renamed = {}
        for key, tensor in load_file(str(file), device="cpu").items():
            for pattern, replacement in mapping.items():
                key, n = re.subn(pattern, replacement, key)
                if n:
                    break
            renamed[key] = tensor
        result = model.load_state_dict(renamed, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"{file}: keys not in the model: {result.unexpected_keys[:5]}")
        loaded |= set(renamed)
    output, inp = model.get_output_embeddings(), model.get_input_embeddings()
    tied = set()
    if output is not None and output.weight is inp.weight:   # tied weights are saved once
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = set(model.state_dict()) - loaded - tied
    if missing:
        raise RuntimeError(f"checkpoint {folder} lacks {len(missing)} parameters, e.g. {sorted(missing)[:5]}")
    return len(loaded)


def build_dataset(cfg: TrainConfig, processor) -> StreamingDataset:
    if not cfg.data.sources:
        raise ValueError("no data sources: give --shards/--jsonl or data.sources in the config")
    specs = [SourceSpec(s.path, s.weight, s.kind, s.media_root) for s in cfg.data.sources]
    return StreamingDataset(
        specs, processor, budget=cfg.video.budget(), with_context=cfg.data.with_context,
        initial_frames=cfg.data.initial_frames, streaming_frames=cfg.data.streaming_frames,
        max_attempts=cfg.data.max_attempts, seed=cfg.seed,
    )


def build_trainer(cfg: TrainConfig, *, model=None, processor=None, dataset: StreamingDataset | None = None,
                  callbacks: Sequence[Any] = (), world_size: int | None = None) -> StreamTrainer:
    """The configured :class:`StreamTrainer`. ``model``/``processor``/``dataset`` default to
    loading from the config (tests pass tiny ones)."""
    from train.collator import StreamProcessor

    args = training_arguments(cfg, world_size)
    if cfg.model_name_or_path == "tiny":
        from train.tiny import tiny_model, tiny_processor

        processor = processor or tiny_processor()
        model = model or tiny_model(processor.tokenizer, seed=cfg.seed)
        logger.warning("model: tiny RANDOM Qwen2-VL (%d parameters), built offline: the path works, the model "
                       "learns nothing useful", sum(p.numel() for p in model.parameters()))
    if processor is None:
        processor = StreamProcessor.from_pretrained(cfg.processor_name_or_path or cfg.model_name_or_path)
    if model is None:
        model = load_model(cfg, deepspeed=bool(args.deepspeed))
    freeze(model, cfg.freeze_modules)
    dataset = dataset or build_dataset(cfg, processor)
    sampler = MixSampler(dataset.lengths, [s.weight for s in dataset.specs], seed=cfg.seed)
    monitor = BrokenSampleMonitor(cfg.data.max_broken_rate, cfg.data.broken_min_samples)
    return StreamTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collate_fn(processor.pad_token_id),
        processing_class=processor, callbacks=[LossPrinter(), *callbacks], sampler=sampler, monitor=monitor,
    )


def resume_checkpoint(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: per ``cfg.resume`` (auto / never / a path)."""
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        if not Path(cfg.resume).is_dir():
            raise FileNotFoundError(f"resume checkpoint {cfg.resume} does not exist")
        return cfg.resume
    if not Path(cfg.output_dir).is_dir():
        return None
    return get_last_checkpoint(cfg.output_dir)


def run(cfg: TrainConfig, **build_kwargs: Any):
    """Train per ``cfg`` (resuming when a checkpoint exists), save the final model and processor.

    Returns the ``TrainOutput``. Raises RuntimeError when the broken-sample rate passes the limit.
    """
    trainer = build_trainer(cfg, **build_kwargs)
    checkpoint = resume_checkpoint(cfg)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(cfg.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        print(f"checkpoint: {cfg.output_dir} (model.safetensors, processor); logs: {trainer.args.logging_dir} "
              f"(tensorboard --logdir {trainer.args.logging_dir})", flush=True)
        if cfg.model_name_or_path == "tiny":
            print("NOTE: the tiny model is random: this checkpoint only shows that the training path works.",
                  flush=True)
    return output


def main(argv: Sequence[str] | None = None) -> None:
    """Per-process entry (what torchrun, SLURM and the Ray job start): ``python -m train.trainer
    --config RESOLVED.yaml [--set key=value ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(load_config(ns.config, ns.set))


if __name__ == "__main__":
    main()
