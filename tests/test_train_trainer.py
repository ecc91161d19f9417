"""train/trainer.py and train/cli.py: the HF Trainer on a tiny randomly initialised Qwen2-VL,
fed by the real data path (shards from the real narration video, 2 FPS decoding, interleave,
labels), on CPU."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback
from typer.testing import CliRunner

from tests.train_shards import corpus_texts, extract_media, manifesto_shards
from train.cli import app, resolve
from train.tiny import tiny_model, tiny_processor
from train.trainer import TrainConfig, build_trainer, gradient_accumulation_steps, load_config, run


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machine's cores are shared: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return manifesto_shards(tmp_path_factory.mktemp("root"))


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(corpus_texts())


def tiny_config(output_dir: Path, sources: list[str], **overrides) -> TrainConfig:
    """The packaged pre-training config, scaled down to a CPU test (small visual budget, batch 1)."""
    cfg = load_config("pretrain").model_dump()
    cfg.update(
        model_name_or_path="tiny", output_dir=str(output_dir), effective_batch_size=1, logging_steps=1,
        dataloader_num_workers=0, report_to=[], bf16=False, save_steps=1000,
        data={**cfg["data"], "sources": [{"path": s} for s in sources]},
        video={"min_pixels": 16 * 28 * 28, "max_frames": 480, "total_pixels": 16 * 28 * 28 * 30},
    )
    cfg.update(overrides)
    return TrainConfig.model_validate(cfg)


def losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_three_optimizer_steps_with_finite_loss_frozen_visual_and_tensorboard(shards, processor, tmp_path):
    cfg = tiny_config(tmp_path / "run", [str(shards)], max_steps=3, learning_rate=1e-3, bf16=True,
                      report_to=["tensorboard"])
    model = tiny_model(processor.tokenizer)
    visual_before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    lm_before = model.lm_head.weight.detach().clone()
    trainer = build_trainer(cfg, model=model, processor=processor)
    assert trainer.args.bf16 and trainer.args.gradient_checkpointing
    assert trainer.args.gradient_accumulation_steps == 1 and trainer.args.lr_scheduler_type == "cosine"
    trainer.train()
    got = losses(trainer)
    assert sorted(got) == [1, 2, 3] and all(math.isfinite(v) and v > 0 for v in got.values())
    assert trainer.state.global_step == 3
    assert all(torch.equal(v, model.visual.state_dict()[k]) for k, v in visual_before.items())   # frozen
    assert not torch.equal(lm_before, model.lm_head.weight)                                      # trained
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))


def test_overfitting_one_sample_halves_its_loss(shards, processor, tmp_path):
    line = (shards / "c_with_seeks.jsonl").read_text().splitlines()[0]    # one clip, media by reference
    one = tmp_path / "one_with_seeks.jsonl"
    one.write_text(line + "\n" + json.dumps([0]))
    cfg = tiny_config(tmp_path / "run", [str(one)], max_steps=20, learning_rate=3e-3,
                      lr_scheduler_type="constant", warmup_ratio=0.0)
    # the line names its clip's member file: resolve it under the extracted members
    cfg.data.sources[0].media_root = str(extract_media(shards, tmp_path / "members"))
    trainer = build_trainer(cfg, model=tiny_model(processor.tokenizer), processor=processor)
    trainer.train()
    got = [v for _, v in sorted(losses(trainer).items())]
    assert len(got) == 20
    assert got[-1] <= got[0] / 2, got


class StopAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_after_step_2_reaches_the_uninterrupted_step_3_loss(shards, processor, tmp_path):
    settings = dict(max_steps=3, save_steps=2, learning_rate=2e-3, seed=7)
    straight = build_trainer(tiny_config(tmp_path / "a", [str(shards)], **settings),
                             model=tiny_model(processor.tokenizer), processor=processor)
    straight.train()
    expected = losses(straight)

    cfg = tiny_config(tmp_path / "b", [str(shards)], **settings)
    first = build_trainer(cfg, model=tiny_model(processor.tokenizer), processor=processor, callbacks=[StopAfter(2)])
    first.train()
    assert first.state.global_step == 2 and (tmp_path / "b" / "checkpoint-2").is_dir()
    assert losses(first) == {1: expected[1], 2: expected[2]}
    # a new process would build a fresh model; another init proves the weights come from the checkpoint
    resumed = run(cfg, model=tiny_model(processor.tokenizer, seed=123), processor=processor)
    assert resumed.global_step == 3
    state = json.loads((tmp_path / "b" / "trainer_state.json").read_text())
    got = {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}
    assert got[3] == pytest.approx(expected[3], rel=1e-5, abs=1e-6)
    assert (tmp_path / "b" / "model.safetensors").exists() and (tmp_path / "b" / "tokenizer.json").exists()


def test_packaged_configs_follow_the_reference_scripts():
    pre, sft = load_config("pretrain"), load_config("train/configs/sft.yaml")
    assert (pre.stage, pre.model_name_or_path, pre.learning_rate) == ("pretrain", "Qwen/Qwen2-VL-7B", 2e-5)
    assert (sft.stage, sft.learning_rate) == ("sft", 1e-5) and sft.model_name_or_path != pre.model_name_or_path
    for cfg in (pre, sft):
        assert (cfg.lr_scheduler_type, cfg.warmup_ratio, cfg.effective_batch_size) == ("cosine", 0.03, 512)
        assert cfg.per_device_train_batch_size == 1 and cfg.freeze_modules == ["visual"]
        assert cfg.bf16 and cfg.gradient_checkpointing and cfg.deepspeed.endswith("zero2.json")
        assert (cfg.video.min_pixels, cfg.video.max_frames, cfg.video.total_pixels) == (100 * 784, 480, 24576 * 784)
        assert gradient_accumulation_steps(cfg, world_size=8) == 64      # the reference's 8-GPU setting
        assert gradient_accumulation_steps(cfg, world_size=64) == 8
        with pytest.raises(ValueError):
            gradient_accumulation_steps(cfg, world_size=6)
    ds = json.loads(Path("train/configs/deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] == "auto"


def test_cli_resolves_sources_and_prints_one_torchrun_process_per_gpu(shards, tmp_path):
    cfg = resolve("sft", None, [f"{shards}@0.5"], [f"{shards / 'c_with_seeks.jsonl'}"], str(tmp_path / "o"),
                  None, ["learning_rate=3e-6", "data.with_context=false"])
    assert [(s.path, s.weight, s.kind) for s in cfg.data.sources] == [
        (str(shards), 0.5, "shards"), (str(shards / "c_with_seeks.jsonl"), 1.0, "jsonl")]
    assert cfg.learning_rate == 3e-6 and cfg.data.with_context is False and cfg.output_dir == str(tmp_path / "o")
    result = CliRunner().invoke(app, ["pretrain", "--shards", str(shards), "--output-dir", str(tmp_path / "p"),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    expected_procs = max(torch.cuda.device_count(), 1)
    assert f"--nproc-per-node={expected_procs}" in result.output and "--standalone" in result.output
    assert "-m train.trainer --config" in result.output and not (tmp_path / "p").exists()
    multi = CliRunner().invoke(app, ["pretrain", "--shards", str(shards), "--nnodes", "2", "--node-rank", "1",
                                     "--rdzv-endpoint", "head:29500", "--nproc-per-node", "8", "--dry-run"])
    assert multi.exit_code == 0 and "--rdzv-endpoint=head:29500" in multi.output and "--node-rank=1" in multi.output
    bad = CliRunner().invoke(app, ["pretrain", "--shards", str(shards), "--nnodes", "2", "--dry-run"])
    assert bad.exit_code != 0
