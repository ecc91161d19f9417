"""Re-transcription with Whisper: the Live-WhisperX SFT corpus's text stream (docs/recipes.md#transcribe,
"transcribe (WhisperX)"; the paper's Live-WhisperX-526K).

Source: ``data/production/distributed_whisperx.py`` in showlab/livecc. Its "WhisperX" step is
faster-whisper's ``BatchedInferencePipeline`` with ``large-v3-turbo``, ``batch_size=16``,
``word_timestamps=True``, fp16 on GPU, default decoding (beam 5, temperature 0), audio decoded
to 16 kHz and averaged to mono; each word becomes ``[start, end, word.strip()]``.

What this stage does per part, on one Ray actor that loads the model once (``setup``):

1. **Audio.** ffmpeg decodes each video's first audio stream to 16 kHz mono
   (:func:`stages.audio.extract_audio`), on a thread pool that runs ahead of the model,
   so the accelerator does not wait for decoding.
2. **VAD.** Silero VAD with the batched pipeline's settings (speech regions of at most
   ``window_s`` = 30 s, 160 ms minimum silence). Its speech regions are merged into windows
   of at most 30 s (WhisperX's "cut and merge"), which become the decoder's inputs. This
   differs from the batched pipeline's own chunking, which glues speech regions together
   without the silence between them: keeping the silence puts every window on its video's
   clock, which is what lets several videos share one call (step 4). A window never spans
   a silence longer than ``window_max_silence_s`` (1 s): decoding without timestamps (as
   the reference does), Whisper tends to stop at a long silence inside its window and drop
   the speech after it -- measured with Whisper tiny.en on the manifesto fixture, windows
   across VAD silences of 1.7 s lost 38 of 208 words; split there, none (3 windows became
   6; on the 802 s sermon fixture the split adds none to its 28).
   No speech at all: ``Rejected(row, "no_speech")``.
3. **Language.** Whisper's language token probabilities on the first 30 s of speech,
   batched over the videos of a batch (``language`` set: no detection, ``lang_score`` null).
4. **Decoding, packed across videos.** Videos of one language are concatenated and their
   windows passed as ``clip_timestamps``, so one ``BatchedInferencePipeline`` call fills the
   decoder batch (``batch_size`` windows) with windows from several short videos instead of
   running a half-empty batch per video. Words come back on the packed timeline and are
   mapped to their video, clamped to their window, and made non-decreasing.
5. **Timing.** Each row's extraction, VAD and decoding seconds (a packed call's time is
   shared by audio length) are logged with the speed in times real time, and kept in
   :attr:`Transcribe.timings`.

Backends: ``faster-whisper`` (default, as the reference) and ``whisperx`` (optional GPU
extra: faster-whisper decoding plus wav2vec2 forced alignment of the words; imported lazily).

Rejection reasons: ``no_audio`` (no audio stream), ``no_speech`` (VAD found none: silence,
music only), ``language`` (detected language not in ``languages``), ``language_uncertain``
(probability below ``min_language_prob``), ``no_words`` (the model produced no words).
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np
from pydantic import Field

import schemas
from pipeline.stage import Histogram, Rejected, Resources, Result, Stage, StageConfig
from stages.audio import SAMPLE_RATE_HZ, NoAudioStreamError, extract_audio, peak_dbfs
from stages.models import MissingWeightsError, has_files, model_fingerprint, resolve_checkpoint

log = logging.getLogger(__name__)

#: Whisper's encoder window: 30 s of audio (3,000 mel frames).
WINDOW_S = 30.0
TRANSCRIPT_SOURCE = "whisperx"


class TranscribeConfig(StageConfig):
    """Settings of :class:`Transcribe`. Defaults reproduce the reference's WhisperX step."""

    backend: Literal["faster-whisper", "whisperx"] = "faster-whisper"
    model: str = Field("large-v3-turbo", description="faster-whisper model name (large-v3-turbo, "
                       "small, ...), a Hub id of a CTranslate2 conversion, or a model folder")
    model_dir: str | None = Field(None, description="folder holding model folders (<model_dir>/<model>) "
                                  "or a Hugging Face cache; also $LIVECC_MODEL_DIR. The default Hugging "
                                  "Face cache is searched last", json_schema_extra={"local_path": True})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = Field("auto", description="CTranslate2 compute type; auto: float16 on cuda, int8 on cpu")
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 threads on cpu (0: its default)")
    batch_size: int = Field(16, ge=1, description="videos per decoding round and 30-s windows per decoder "
                            "batch (reference: 16)")
    beam_size: int = Field(5, ge=1, description="beam search width (faster-whisper default, as the reference)")
    max_new_tokens: int | None = Field(None, ge=1, description="cap on tokens per window (None: the model's 448)")
    language: str | None = Field(None, description="force a language code (None: detect per video)")
    languages: list[str] = Field(default_factory=list, description="keep only videos detected in these "
                                 "languages, before decoding (empty: any)")
    min_language_prob: float = Field(0.0, ge=0.0, le=1.0, description="reject videos whose detected-language "
                                     "probability is lower (0: keep all)")
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Silero speech probability threshold")
    vad_min_silence_ms: int = Field(160, ge=0, description="silence that splits speech (batched pipeline: 160 ms)")
    window_s: float = Field(WINDOW_S, gt=0.0, le=WINDOW_S, description="longest decoder window in seconds")
    window_max_silence_s: float | None = Field(1.0, ge=0.0, description="a decoder window never spans a VAD "
                                               "silence longer than this, s (None: only window_s limits it)")
    pack_max_audio_s: float = Field(1800.0, gt=0.0, description="audio seconds packed into one decoding call "
                                    "(bounds host memory: 1800 s of 16 kHz float32 is 115 MB)")
    extract_workers: int = Field(4, ge=1, description="ffmpeg decodes running ahead of the model")


@dataclass
class AudioClip:
    """One range of media audio to transcribe: 16 kHz mono float32 ``audio`` whose first
    sample is at ``start_s`` seconds on the media clock."""
    key: str
    audio: np.ndarray
    start_s: float = 0.0


@dataclass
class Transcript:
    """What :meth:`Transcribe.transcribe_clips` returns per clip.

    ``words``: ``[{"start": s, "end": s, "text": str}]`` on the media clock, starts and ends
    non-decreasing, inside the clip's range. ``rejected``/``detail``: a rejection reason code
    (then ``words`` is empty). Times: ``audio_s`` clip length, ``vad_s``/``asr_s`` wall seconds.
    """
    words: list[dict[str, Any]] = field(default_factory=list)
    language: str | None = None
    lang_score: float | None = None
    rejected: str | None = None
    detail: str = ""
    audio_s: float = 0.0
    vad_s: float = 0.0
    asr_s: float = 0.0


class Transcribe(Stage):
    """``videos`` -> ``transcripts``: Whisper words with ``transcript_source = "whisperx"``,
    the detected ``language`` and its probability ``lang_score`` (module docstring).

    Raises (per item, recorded in ``_errors``): :class:`stages.audio.AudioError` (corrupt
    media), ``FileNotFoundError`` (media missing), ``ValueError`` (row without ``media_path``).
    ``setup`` raises :class:`MissingWeightsError` when the checkpoint is absent.
    """

    name = "transcribe"
    Config = TranscribeConfig
    input_schema = schemas.VIDEOS
    output_schema = schemas.TRANSCRIPTS
    # One model per actor. On GPU nodes set stages.transcribe.resources.num_gpus: 1 (the
    # default asks for none so CPU-only installs schedule it).
    resources = Resources(num_cpus=1, num_gpus=0, batch_size=None)
    report_histograms = {"lang_score": Histogram("detected-language probability", ("lang_score",))}

    config: TranscribeConfig

    def __init__(self, config: TranscribeConfig, context):
        super().__init__(config, context)
        self.model = None          # faster_whisper.WhisperModel
        self.pipeline = None       # faster_whisper.BatchedInferencePipeline
        self._whisperx = None      # (whisperx module, its pipeline) for the whisperx backend
        self._align_models: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.device = "cpu"
        self.compute_type = "int8"
        self.model_path = ""
        #: per-row timing of the last part: key, audio_s, extract_s, vad_s, asr_s, speed_x
        self.timings: list[dict[str, Any]] = []

    # -- lifecycle -------------------------------------------------------------
    def fingerprint(self) -> Any:
        """The Whisper checkpoint's files: part of every part's key."""
        return model_fingerprint(lambda: resolve_model_path(self.config.model, self.config.model_dir), self.config.model)

    def setup(self) -> None:
        """Resolve and load the checkpoint once per actor.

        Raises:
            MissingWeightsError: the model is in none of the searched places.
            ImportError: faster-whisper (or, for ``backend="whisperx"``, whisperx) is not installed.
        """
        cfg = self.config
        self.model_path = resolve_model_path(cfg.model, cfg.model_dir)
        try:
            import ctranslate2
        except ImportError as exc:
            raise ImportError("the transcribe stage needs faster-whisper and ctranslate2: "
                              "pip install -e '.[whisper]'") from exc
        self.device = cfg.device if cfg.device != "auto" else (
            "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
        self.compute_type = pick_compute_type(cfg.compute_type, self.device)
        if cfg.backend == "whisperx":
            try:
                import whisperx  # optional GPU extra
            except ImportError as exc:
                raise ImportError("backend 'whisperx' needs the whisperx package (pip install whisperx; "
                                  "it needs torchaudio), or use backend 'faster-whisper'") from exc
            wx = whisperx.load_model(self.model_path, self.device, compute_type=self.compute_type,
                                     language=cfg.language, asr_options={"beam_size": cfg.beam_size})
            self._whisperx = (whisperx, wx)
            self.model = wx.model  # the faster-whisper model inside, for language detection
            if cfg.language:
                self._align_model(cfg.language)  # fail early when the alignment weights are missing
        else:
            from faster_whisper import BatchedInferencePipeline, WhisperModel

            self.model = WhisperModel(self.model_path, device=self.device, compute_type=self.compute_type,
                                      cpu_threads=cfg.cpu_threads, local_files_only=True)
            self.pipeline = BatchedInferencePipeline(self.model)
        log.info("transcribe: %s backend, model %s on %s (%s)", cfg.backend, self.model_path,
                 self.device, self.compute_type)

    def process_batch(self, rows: list[dict[str, Any]]) -> list[Result | BaseException]:
        """The rows (by default a whole part), ``batch_size`` videos per packed decoding round,
        with the audio of the next round decoding on threads meanwhile."""
        return self._run(rows)

    def transcribe_clips(self, clips: list[AudioClip]) -> list[Transcript | BaseException]:
        """Transcribe audio already in memory (e.g. clip ranges from
        :func:`stages.audio.extract_audio` with ``start_s``/``end_s``); entry *i* is the
        result for ``clips[i]`` or the exception it raised. Words are on the media clock:
        ``clip.start_s`` is added."""
        if self.model is None:
            raise RuntimeError("call setup() first")
        items: list[_Item | BaseException] = []
        for clip in clips:
            try:
                items.append(self._prepare(clip, extract_s=0.0))
            except Exception as exc:  # noqa: BLE001 - per-item isolation
                items.append(exc)
        self._transcribe(items)
        return [it if isinstance(it, BaseException) else (it.error or it.result) for it in items]

    # -- per part ----------------------------------------------------------------
    def _run(self, rows: list[dict[str, Any]]) -> list[Result | BaseException]:
        if self.model is None:
            raise RuntimeError("call setup() first")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.extract_workers, thread_name_prefix="transcribe-audio")
        size = self.config.batch_size
        self.timings = []
        pending: deque[Future] = deque()
        submitted = 0
        out: list[Result | BaseException] = []
        for start in range(0, len(rows), size):
            # keep one batch decoding ahead of the model: bounded memory, no idle accelerator
            while submitted < min(len(rows), start + 2 * size):
                pending.append(self._pool.submit(self._load, rows[submitted]))
                submitted += 1
            batch_rows = rows[start:start + size]
            loaded = [pending.popleft().result() for _ in batch_rows]
            items = [x for x in loaded if isinstance(x, _Item)]
            self._transcribe(items)
            for row, x in zip(batch_rows, loaded):
                out.append(self._row_result(row, x))
        return out

    def _load(self, row: dict[str, Any]) -> "_Item | Rejected | BaseException":
        """Thread-pool side: decode the audio and run VAD (both CPU)."""
        try:
            if row.get("has_audio") is False:
                return Rejected(row, "no_audio", "has_audio is false: the media has no audio stream")
            if not row.get("media_path"):
                raise ValueError("row has no media_path: download the media first (video_media stage)")
            path = row["media_path"] if self.context is None else self.context.storage.resolve(row["media_path"])
            t0 = time.perf_counter()
            try:
                audio = extract_audio(path, sample_rate_hz=SAMPLE_RATE_HZ)
            except NoAudioStreamError as exc:
                return Rejected(row, "no_audio", str(exc))
            return self._prepare(AudioClip(self.key(row), audio, 0.0), extract_s=time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - per-item isolation is the contract
            return exc

    def _prepare(self, clip: AudioClip, extract_s: float) -> "_Item":
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        cfg = self.config
        t0 = time.perf_counter()
        audio = np.ascontiguousarray(clip.audio, dtype=np.float32)
        speech = get_speech_timestamps(audio, VadOptions(threshold=cfg.vad_threshold,
                                                         max_speech_duration_s=cfg.window_s,
                                                         min_silence_duration_ms=cfg.vad_min_silence_ms),
                                       sampling_rate=SAMPLE_RATE_HZ) if audio.size else []
        item = _Item(clip.key, audio, float(clip.start_s), speech,
                     speech_windows(speech, SAMPLE_RATE_HZ, cfg.window_s,
                                    max_silence_s=cfg.window_max_silence_s), extract_s)
        item.result.audio_s = audio.size / SAMPLE_RATE_HZ
        item.result.vad_s = time.perf_counter() - t0
        if not item.windows:
            item.reject("no_speech", f"VAD found no speech in {item.result.audio_s:.1f} s of audio "
                                     f"(peak {peak_dbfs(audio):.1f} dBFS)")
        return item

    def _row_result(self, row: dict[str, Any], x: Any) -> Result | BaseException:
        if isinstance(x, (Rejected, BaseException)):
            return [x] if isinstance(x, Rejected) else x
        if x.error is not None:  # failed on its own after a packed call failed
            return x.error
        r = x.result
        speed = r.audio_s / max(x.extract_s + r.vad_s + r.asr_s, 1e-9)
        self.timings.append({"key": x.key, "audio_s": r.audio_s, "extract_s": x.extract_s,
                             "vad_s": r.vad_s, "asr_s": r.asr_s, "speed_x": speed})
        log.info("transcribe %s: audio %.1f s, extract %.2f s, vad %.2f s, asr %.2f s: %.1fx real time; "
                 "language %s (p=%s), %d words%s", x.key, r.audio_s, x.extract_s, r.vad_s, r.asr_s, speed,
                 r.language, "n/a" if r.lang_score is None else f"{r.lang_score:.2f}", len(r.words),
                 f", rejected {r.rejected}" if r.rejected else "")
        if r.rejected:
            return [Rejected(row, r.rejected, r.detail)]
        return [{**row, "words": r.words, "transcript_source": TRANSCRIPT_SOURCE,
                 "language": r.language, "lang_score": r.lang_score}]

    # -- model side --------------------------------------------------------------
    def _transcribe(self, items: list[Any]) -> None:
        """Fill ``item.result`` for every :class:`_Item` in ``items`` that is not rejected yet."""
        live = [it for it in items if isinstance(it, _Item) and not it.result.rejected]
        if not live:
            return
        t0 = time.perf_counter()
        self._detect_languages(live)
        _share(live, time.perf_counter() - t0)
        live = [it for it in live if not it.result.rejected]
        by_language: dict[str, list[_Item]] = {}
        for it in live:
            by_language.setdefault(it.result.language or "en", []).append(it)
        for language, group in by_language.items():
            for pack in _packs(group, self.config.pack_max_audio_s):
                self._decode_isolated(pack, language)
        for it in live:
            if not it.result.rejected and not it.result.words:
                it.reject("no_words", f"the model produced no words for {it.speech_s:.1f} s of speech")

    def _detect_languages(self, items: list["_Item"]) -> None:
        """Language and probability per item, from one batched encoder pass over the first
        30 s of each item's speech (Whisper's language tokens)."""
        cfg = self.config
        if cfg.language:
            for it in items:
                it.result.language, it.result.lang_score = cfg.language, None
            return
        if not self.model.model.is_multilingual:  # English-only checkpoint (*.en)
            for it in items:
                it.result.language, it.result.lang_score = "en", None
            return
        from faster_whisper.audio import pad_or_trim

        fe = self.model.feature_extractor
        for i in range(0, len(items), cfg.batch_size):
            chunk = items[i:i + cfg.batch_size]
            feats = np.stack([pad_or_trim(fe(it.speech_audio(fe.n_samples))) for it in chunk])
            encoded = self.model.encode(feats)
            for it, probs in zip(chunk, self.model.model.detect_language(encoded)):
                token, prob = probs[0]
                it.result.language, it.result.lang_score = token[2:-2], float(prob)
        for it in items:
            lang, p = it.result.language, it.result.lang_score
            if cfg.languages and lang not in cfg.languages:
                it.reject("language", f"detected {lang} (p={p:.2f}), not in {cfg.languages}")
            elif p is not None and p < cfg.min_language_prob:
                it.reject("language_uncertain", f"detected {lang} with p={p:.2f} < {cfg.min_language_prob}")

    def _decode_isolated(self, pack: list["_Item"], language: str) -> None:
        """Decode a pack; if the packed call fails, decode its items one by one so only the
        item that fails carries the error."""
        try:
            self._decode(pack, language)
            return
        except Exception as exc:  # noqa: BLE001
            if len(pack) == 1:
                pack[0].error = exc
                return
            log.warning("transcribe: packed call over %d items failed; retrying one by one", len(pack),
                        exc_info=True)
            for it in pack:
                try:
                    self._decode([it], language)
                except Exception as item_exc:  # noqa: BLE001
                    it.error = item_exc

    def _decode(self, pack: list["_Item"], language: str) -> None:
        t0 = time.perf_counter()
        if self._whisperx is not None:
            for it in pack:
                self._decode_whisperx(it, language)
        else:
            self._decode_packed(pack, language)
        _share(pack, time.perf_counter() - t0)

    def _decode_packed(self, pack: list["_Item"], language: str) -> None:
        cfg = self.config
        sr = SAMPLE_RATE_HZ
        offsets = np.cumsum([0] + [it.audio.size for it in pack])  # samples
        packed = np.concatenate([it.audio for it in pack]) if len(pack) > 1 else pack[0].audio
        windows = [(int(off) + s, int(off) + e) for it, off in zip(pack, offsets) for s, e in it.windows]
        clip_timestamps = [{"start": s / sr, "end": e / sr} for s, e in windows]
        # faster-whisper tags every segment with seek = int(window start s * 100): map it back
        window_of_seek = {int(int(c["start"] * sr) / sr * 100): w for c, w in zip(clip_timestamps, windows)}
        segments, _info = self.pipeline.transcribe(
            packed, language=language, task="transcribe", clip_timestamps=clip_timestamps,
            batch_size=cfg.batch_size, beam_size=cfg.beam_size, word_timestamps=True,
            max_new_tokens=cfg.max_new_tokens, log_progress=False)
        raw: list[list[dict[str, Any]]] = [[] for _ in pack]
        for seg in segments:
            w_start, w_end = window_of_seek[seg.seek]
            k = bisect.bisect_right(offsets, w_start) - 1
            shift = float(pack[k].start_s - offsets[k] / sr)
            raw[k].extend(backend_words_to_words(seg.words or [], shift_s=shift,
                                                 lo_s=float(w_start / sr + shift), hi_s=float(w_end / sr + shift)))
        for it, words in zip(pack, raw):
            it.result.words = enforce_monotonic(words)

    def _decode_whisperx(self, it: "_Item", language: str) -> None:
        whisperx, wx = self._whisperx
        result = wx.transcribe(it.audio, batch_size=self.config.batch_size, language=language)
        align_model, metadata = self._align_model(language)
        aligned = whisperx.align(result["segments"], align_model, metadata, it.audio, self.device,
                                 return_char_alignments=False)
        hi = it.start_s + it.audio.size / SAMPLE_RATE_HZ
        it.result.words = backend_words_to_words(aligned.get("word_segments") or [], shift_s=it.start_s,
                                                 lo_s=it.start_s, hi_s=hi)

    def _align_model(self, language: str):
        if language not in self._align_models:
            whisperx = self._whisperx[0]
            try:
                self._align_models[language] = whisperx.load_align_model(
                    language_code=language, device=self.device, model_dir=self.config.model_dir)
            except Exception as exc:
                raise MissingWeightsError(
                    f"no wav2vec2 alignment model for language {language!r}: {exc}. WhisperX downloads it "
                    f"(torchaudio bundle or Hugging Face) on first use; on an offline machine, fetch it "
                    f"once with internet access into the Hugging Face / torch hub cache, or into "
                    f"model_dir={self.config.model_dir!r}") from exc
        return self._align_models[language]


# -- items -----------------------------------------------------------------------
@dataclass
class _Item:
    key: str
    audio: np.ndarray
    start_s: float
    speech: list[dict[str, int]]          # VAD regions, samples
    windows: list[tuple[int, int]]        # decoder windows, samples
    extract_s: float
    result: Transcript = field(default_factory=Transcript)
    error: BaseException | None = None

    @property
    def speech_s(self) -> float:
        return sum(s["end"] - s["start"] for s in self.speech) / SAMPLE_RATE_HZ

    def speech_audio(self, max_samples: int) -> np.ndarray:
        """The first ``max_samples`` samples of speech (VAD regions joined): the language probe."""
        parts, n = [], 0
        for s in self.speech:
            part = self.audio[s["start"]:min(s["end"], s["start"] + max_samples - n)]
            parts.append(part)
            n += part.size
            if n >= max_samples:
                break
        return np.concatenate(parts) if parts else self.audio[:max_samples]

    def reject(self, reason: str, detail: str) -> None:
        self.result.rejected, self.result.detail, self.result.words = reason, detail, []


def _share(items: list[_Item], seconds: float) -> None:
    """Attribute a shared call's wall time to its items by audio length."""
    total = sum(it.audio.size for it in items) or 1
    for it in items:
        it.result.asr_s += seconds * it.audio.size / total


def _packs(items: list[_Item], max_audio_s: float) -> Iterable[list[_Item]]:
    pack: list[_Item] = []
    n = 0.0
    for it in items:
        dur = it.audio.size / SAMPLE_RATE_HZ
        if pack and n + dur > max_audio_s:
            yield pack
            pack, n = [], 0.0
        pack.append(it)
        n += dur
    if pack:
        yield pack


# -- pure functions ----------------------------------------------------------------
def speech_windows(speech: list[dict[str, int]], sample_rate_hz: int = SAMPLE_RATE_HZ,
                   max_window_s: float = WINDOW_S, min_window_s: float = 0.1, *,
                   max_silence_s: float | None = None) -> list[tuple[int, int]]:
    """Merge VAD speech regions into decoder windows of at most ``max_window_s`` seconds.

    ``speech``: ``[{"start": sample, "end": sample}]`` sorted, as Silero VAD returns them.
    Returns ``[(start_sample, end_sample)]``: consecutive regions join a window while the
    window stays within ``max_window_s`` (silence between them included, as WhisperX's
    merge of VAD segments) and, with ``max_silence_s``, while the silence before the region
    is at most that long (module docstring, step 2); windows shorter than ``min_window_s``
    are dropped (nothing to decode).
    A region longer than the limit (VAD splits at ``max_speech_duration_s``, so only by
    rounding) is cut into pieces.
    """
    limit = int(max_window_s * sample_rate_hz)
    max_gap = math.inf if max_silence_s is None else max_silence_s * sample_rate_hz
    windows: list[tuple[int, int]] = []
    cur: list[int] | None = None
    for region in speech:
        s, e = int(region["start"]), int(region["end"])
        while e - s > limit:
            if cur is not None:
                windows.append((cur[0], cur[1]))
                cur = None
            windows.append((s, s + limit))
            s += limit
        if cur is not None and e - cur[0] <= limit and s - cur[1] <= max_gap:
            cur[1] = e
        else:
            if cur is not None:
                windows.append((cur[0], cur[1]))
            cur = [s, e]
    if cur is not None:
        windows.append((cur[0], cur[1]))
    return [(s, e) for s, e in windows if (e - s) >= min_window_s * sample_rate_hz]


def backend_words_to_words(raw: Iterable[Any], shift_s: float = 0.0, lo_s: float | None = None,
                           hi_s: float | None = None) -> list[dict[str, Any]]:
    """Map a backend's words to the ``words`` structure.

    ``raw``: faster-whisper ``Word`` objects (``.word``, ``.start``, ``.end``) or WhisperX
    ``word_segments`` dicts (``"word"``, optional ``"start"``/``"end"``: WhisperX leaves
    them out for tokens it cannot align, such as numerals). Times in seconds.

    Returns ``[{"start", "end", "text"}]``: text stripped of the leading space Whisper puts
    on words, empty words dropped; times shifted by ``shift_s``, clamped to
    ``[lo_s, hi_s]``, rounded to milliseconds and made non-decreasing
    (:func:`enforce_monotonic`). A word without times takes the previous word's end (or
    ``lo_s``) as a zero-length span.
    """
    out: list[dict[str, Any]] = []
    lo = -math.inf if lo_s is None else lo_s
    hi = math.inf if hi_s is None else hi_s
    prev_end: float | None = None
    for w in raw:
        if isinstance(w, dict):
            text, start, end = w.get("word", w.get("text")), w.get("start"), w.get("end")
        else:
            text, start, end = getattr(w, "word", None), getattr(w, "start", None), getattr(w, "end", None)
        text = (text or "").strip()
        if not text:
            continue
        if start is None or not math.isfinite(start):
            start = None
        else:
            start = min(max(float(start) + shift_s, lo), hi)
        if end is None or not math.isfinite(end):
            end = None
        else:
            end = min(max(float(end) + shift_s, lo), hi)
        if start is None:
            start = prev_end if prev_end is not None else (lo if math.isfinite(lo) else (end or 0.0))
        if end is None:
            end = start
        out.append({"start": round(float(start), 3), "end": round(float(end), 3), "text": text})
        prev_end = out[-1]["end"]
    return enforce_monotonic(out)


def enforce_monotonic(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make starts and ends non-decreasing and ``end >= start`` (in place; returns ``words``).

    Whisper's cross-attention word times are monotonic in practice; this only repairs the
    rare inversions (and garbage from untrained models) so downstream clipping can rely on it.
    """
    prev_start = prev_end = -math.inf
    for w in words:
        w["start"] = max(w["start"], prev_start)
        w["end"] = max(w["end"], w["start"], prev_end)
        prev_start, prev_end = w["start"], w["end"]
    return words


def pick_compute_type(compute_type: str, device: str) -> str:
    """``auto`` -> ``float16`` on cuda (the reference), ``int8`` on cpu; else as given."""
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def model_repo_id(model: str) -> str | None:
    """The Hugging Face repository of a faster-whisper model name (``large-v3-turbo`` ->
    ``mobiuslabsgmbh/faster-whisper-large-v3-turbo``), the name itself for a Hub id, else ``None``."""
    if "/" in model and not os.path.exists(model):
        return model
    try:
        from faster_whisper import utils
    except ImportError:
        return None
    return getattr(utils, "_MODELS", {}).get(model)


#: a CTranslate2 Whisper checkpoint folder holds these
_CT2_FILES = ("model.bin", "config.json", "tokenizer.json")


def resolve_model_path(model: str, model_dir: str | None = None) -> str:
    """Find a CTranslate2 Whisper checkpoint (``model.bin``, ``config.json``, ``tokenizer.json``)
    without any download: :func:`stages.models.resolve_checkpoint`, also trying
    ``<dir>/faster-whisper-<model>``.

    Raises:
        MissingWeightsError: not found; the message gives the download command and the place.
    """
    try:
        return resolve_checkpoint(model, stage="transcribe", repo_id=model_repo_id(model), model_dir=model_dir,
                                  is_checkpoint=has_files(*_CT2_FILES),
                                  aliases=(f"faster-whisper-{model.rsplit('/', 1)[-1]}",), what="Whisper weights")
    except MissingWeightsError as exc:
        if os.path.isdir(model):
            raise MissingWeightsError(f"{exc} (it needs {', '.join(_CT2_FILES)})") from None
        raise
