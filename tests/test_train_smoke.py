"""`--model tiny` (issue 12): the README's third command, a training run a new user can watch on
a machine without a GPU or a checkpoint, run here as written in the README."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def readme_smoke_command() -> list[str]:
    """The `livecc build-and-train ... --model tiny ...` line of the README's quick start."""
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in quick.splitlines()]
    (line,) = [ln for ln in lines if "build-and-train" in ln and "--model tiny" in ln]
    args = shlex.split(line)
    assert re.fullmatch(r"(\.venv/bin/)?livecc", args[0]), line
    return args[1:]


def test_readme_quick_start_has_the_smoke_command_third():
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [ln.split("#", 1)[0].strip() for ln in quick.split("```bash", 1)[1].split("```", 1)[0].splitlines()]
    commands = [c for c in commands if c]
    assert commands[:2] == ["./scripts/build", "./scripts/test"]
    assert "--model tiny" in commands[2] and "build-and-train" in commands[2]
    assert "random" in quick.lower()


def test_tiny_settings_apply_first_and_user_overrides_win(tmp_path):
    from train.cli import TINY_OVERRIDES, resolve

    cfg = resolve("pretrain", None, [str(tmp_path)], [], None, "tiny", ["max_steps=3", "learning_rate=0.01"])
    assert (cfg.model_name_or_path, cfg.processor_name_or_path) == ("tiny", None)
    assert (cfg.max_steps, cfg.learning_rate, cfg.logging_steps, cfg.effective_batch_size) == (3, 0.01, 1, 1)
    assert cfg.deepspeed is None and cfg.report_to == ["tensorboard"] and cfg.output_dir == "checkpoints/tiny_smoke"
    assert "max_steps=5" in TINY_OVERRIDES
    explicit = resolve("pretrain", None, [str(tmp_path)], [], str(tmp_path / "o"), "tiny", [])
    assert explicit.output_dir == str(tmp_path / "o")


def test_set_with_a_training_key_says_to_use_train_set():
    from livecc.cli import app

    res = CliRunner().invoke(app, ["build-and-train", str(REPO / "configs" / "pretrain.yaml"), "--model", "tiny",
                                   "--set", "max_steps=5"])
    assert res.exit_code == 2
    assert "--train-set max_steps=5" in res.output


@pytest.mark.slow
def test_readme_smoke_training_command_runs(services, tmp_path):
    """The README's command, verbatim, in a fresh folder (so ``checkpoints/tiny_smoke`` lands
    there), on a sample archive built by the same command: five steps with a loss each, a
    checkpoint and TensorBoard logs, and the notice that the model is random."""
    env = {**os.environ, **services, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    archive = tmp_path / "archive"
    subprocess.run([sys.executable, "-m", "livecc", "sample-archive", str(archive)], env=env, check=True,
                   capture_output=True, cwd=tmp_path)
    args = readme_smoke_command()
    args[1] = str(REPO / args[1])   # the config, as the README names it from the repository root
    args += ["--set", f"root={tmp_path / 'corpus'}", "--set", f"stages.ingest.path={archive}"]
    proc = subprocess.run([sys.executable, "-m", "livecc", *args], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    steps = [int(m) for m in re.findall(r"^step (\d+)/5: loss \d+\.\d+", proc.stdout, flags=re.M)]
    assert steps == [1, 2, 3, 4, 5], out[-4000:]
    assert "RANDOMLY INITIALISED" in out and "the tiny model is random" in out
    ckpt = tmp_path / "checkpoints" / "tiny_smoke"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    assert (ckpt / "checkpoint-5").is_dir()
    assert list((ckpt / "runs").rglob("events.out.tfevents.*"))
