"""Talking-head filter with two backends: ``asd`` (SCRFD faces, IoU tracking and Light-ASD give
each clip a talking-head ratio; the SFT default) and ``lmm`` (Qwen2-VL-2B-Instruct's P("Yes") to
"is someone always showing their face and talking?" on 8 frames; the YouTube pre-training
default, :mod:`.lmm`). docs/recipes.md#talking_head.

**asd** -- source: showlab/livecc ``data/production/distributed_lighter_asd/`` ("Lighter-ASD").
Per clip:

1. **Audio**: 16 kHz mono -> MFCC (``python_speech_features``, 100 Hz, 13 coefficients, 4 per
   video frame) -- :mod:`.audio`.
2. **Video**: 25 fps frames, aligned to the audio by timestamps, scaled to fit the detection
   size; windows of 150 frames every 750 (6 s of every 30 s); a clip shorter than one window is
   one window -- :mod:`.video`.
3. **Faces**: SCRFD-500M (insightface ``buffalo_sc``) through onnxruntime, batched across
   frames, score >= 0.5, NMS IoU 0.4 -- :mod:`.detect`.
4. **Tracks**: IoU > 0.7 between consecutive frames, at least 5 frames; 112x112 grayscale crops
   -- :mod:`.track`.
5. **Light-ASD** (``finetuning_TalkSet.model``) scores each track frame; > 0 = speaking --
   :mod:`.lightasd`.
6. ``talking_head_ratio`` = frames with any speaking face / frames examined. ``filter`` mode
   rejects clips above ``threshold`` (0.05: the reference's SFT corpus keeps <= 0.05).

Decisions (issue 4):

* **Small faces.** Frames are decoded and detected at up to 512x288 (aspect ratio kept, never
  upscaled, padded to multiples of 32), not the reference's 288x160: 1.8x the linear
  resolution. Measured on a talking head pasted small into a 960x540 frame (a test): its face is
  ~16 px high at 512x288 and is tracked over every frame (ratio 1.0); at 288x160 (~9 px) SCRFD
  finds nothing (ratio 0). At ~30 px (288x160 scale) both sizes work on that clip, but the
  larger box jitters less relative to its size, so IoU > 0.7 tracking keeps small faces in
  one track. Crops come from the same frames. Cost: about 3.2x the reference's detection
  pixels for 16:9 video, 1.8x for square video; on CPU about as much as Light-ASD per face,
  negligible on a GPU. ``det_width``/``det_height`` change it.
* **Silent audio.** Frames whose audio is below ``silence_dbfs`` (within +-0.2 s) cannot count
  as speaking; a clip with no audible frame gets ratio 0 without running the models (the
  reference divides by zero there; and, as measured for issue 4, zeros fed to the model can
  score a visibly speaking face as talking).
* **No audio stream, an undecodable file, a range beyond the media**: the item raises
  :class:`MediaError` (an ``_errors`` row); the part goes on. A clip with no faces has ratio 0.
* **A/V alignment** by presentation timestamps (:mod:`.video`); frames outside the video
  stream's time range are not examined.

**lmm** -- source: showlab/livecc ``data/production/distributed_lmm4asd.py`` (facts and
differences in :mod:`.lmm`). ``talking_head_p_yes`` on every clip; ``filter`` mode rejects
clips above ``p_yes_threshold`` (0.5: the reference publishes none; above 0.5 "Yes" is the
model's most likely answer, i.e. what it would say when asked). Audio is not used, so clips
without an audio stream are scored too.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

import schemas
from pipeline.stage import Histogram, Rejected, Resources, Stage, StageConfig
from stages.models import model_fingerprint
from stages.talking_head import lmm
from stages.talking_head.analyze import Analyzer, ClipRequest, ClipResult
from stages.talking_head.audio import MediaError, NoAudioStreamError
from stages.talking_head.lmm import LmmResult

log = logging.getLogger(__name__)

class TalkingHeadConfig(StageConfig):
    """Thresholds, window scheme, sizes and runtime settings of the talking-head stage."""
    # speed and placement, not results: kept out of the config hash
    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {"model_dir", "device", "decode_workers", "det_batch_frames", "asd_batch_frames", "lmm_batch_clips"})

    backend: Literal["asd", "lmm"] = Field("asd", description="'asd': face tracks + Light-ASD -> talking_head_ratio "
                                                              "(SFT); 'lmm': Qwen2-VL-2B -> talking_head_p_yes (pre-training)")
    threshold: float = Field(0.05, ge=0, le=1, description="reject clips with a ratio above this (reference SFT: 0.05)")
    mode: Literal["filter", "score"] = Field("filter", description="'filter' rejects above the threshold "
                                                                    "(threshold or p_yes_threshold); 'score' keeps all")
    window_frames: int = Field(150, ge=1, description="frames per examined window (reference: 150 = 6 s at 25 fps)")
    window_every_frames: int = Field(750, ge=1, description="a window starts every this many frames (reference: 750 = 30 s)")
    all_frames: bool = Field(False, description="examine every frame (consecutive windows) instead of the window scheme")
    model_dir: str | None = Field(None, description="folder with the weights; also $LIVECC_MODEL_DIR and the usual caches")
    asd_weights: list[str] = Field(["finetuning_TalkSet.model", "lightasd_finetuning_TalkSet.model"],
                                   description="Light-ASD checkpoint file names (or paths), first found wins")
    detector_weights: list[str] = Field(["det_500m.onnx", "scrfd_500m_bnkps.onnx", "scrfd_500m_bnkps_640.onnx"],
                                        description="SCRFD ONNX file names (or paths), first found wins")
    det_width: int = Field(512, ge=32, description="detection canvas width, pixels (multiple of 32; reference: 288)")
    det_height: int = Field(288, ge=32, description="detection canvas height, pixels (multiple of 32; reference: 160)")
    det_score_threshold: float = Field(0.5, gt=0, lt=1, description="SCRFD face probability threshold (insightface: 0.5)")
    det_nms_iou: float = Field(0.4, gt=0, le=1, description="NMS IoU (insightface: 0.4)")
    track_iou: float = Field(0.7, gt=0, lt=1, description="IoU between consecutive frames to continue a track (reference: 0.7)")
    min_track_frames: int = Field(5, ge=1, description="shortest track kept, frames (reference: 5)")
    silence_dbfs: float = Field(-60.0, description="frames with audio below this RMS level (dBFS) cannot be speaking")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': CUDA when torch sees a GPU")
    decode_workers: int = Field(2, ge=1, description="threads decoding windows ahead of inference")
    det_batch_frames: int | None = Field(None, ge=1, description="frames per SCRFD call (None: 8 on CPU, 64 on CUDA)")
    asd_batch_frames: int | None = Field(None, ge=1, description="padded track frames per Light-ASD call, bounds "
                                                                 "activation memory (None: 150 on CPU, 4800 on CUDA)")
    # backend: lmm (reference distributed_lmm4asd.py)
    lmm_model: str = Field("Qwen/Qwen2-VL-2B-Instruct", description="Qwen2-VL checkpoint: a folder, or a Hub id "
                                                                    "looked up under model_dir, $LIVECC_MODEL_DIR, the HF cache")
    p_yes_threshold: float = Field(0.5, ge=0, le=1, description="reject clips with P(Yes) above this (our choice: "
                                                                "Yes is then the model's most likely answer)")
    lmm_frames: int = Field(8, ge=1, description="evenly spaced frames per clip (reference: 8)")
    lmm_frame_height: int = Field(320, ge=28, description="frame height, pixels (reference: resize to (320, 180) = (h, w))")
    lmm_frame_width: int = Field(180, ge=28, description="frame width, pixels; aspect ratio not kept, as the reference")
    lmm_sample_range: Literal["clip", "media"] = Field("clip", description="frames over the clip's range, or the whole "
                                                                           "media file (the reference scores whole videos)")
    lmm_prompt: str = Field(lmm.REFERENCE_PROMPT, description="the question; {num_frames} is replaced (reference's, verbatim)")
    lmm_answer: str = Field(lmm.ANSWER, description="the answer whose first token's probability is talking_head_p_yes")
    lmm_batch_clips: int | None = Field(None, ge=1, description="clips per Qwen2-VL forward pass (None: 4 on CPU, 32 on CUDA)")

    @field_validator("det_width", "det_height")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"{v} is not a multiple of 32 (SCRFD's largest stride)")
        return v


class TalkingHead(Stage):
    """Sets ``talking_head_ratio`` (``backend: asd``) or ``talking_head_p_yes`` (``backend: lmm``)
    on each clip; in ``filter`` mode rejects clips above the threshold (reason ``talking_head``).

    Reads ``media_path`` over ``[start - media_offset, end - media_offset]`` (s). Raises per
    item (``_errors`` rows): :class:`MediaError` (undecodable or truncated, no video stream,
    range beyond the media, no ``media_path``) and, for ``asd``, :class:`NoAudioStreamError`.
    ``setup`` raises ``FileNotFoundError`` (:class:`stages.models.MissingWeightsError` for the
    LMM) naming the weights and how to download them when they are missing.
    """

    name: ClassVar[str] = "talking_head"
    Config: ClassVar[type[StageConfig]] = TalkingHeadConfig
    input_schema = schemas.CLIPS
    output_schema = schemas.CLIPS
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=None)
    key_field = "clip_id"
    report_histograms: ClassVar[dict[str, Histogram]] = {
        "talking_head_ratio": Histogram("talking-head ratio", ("talking_head_ratio",)),
        "talking_head_p_yes": Histogram("talking-head P(Yes) (LMM)", ("talking_head_p_yes",))}

    config: TalkingHeadConfig

    def fingerprint(self) -> Any:
        """The model files the backend reads: part of every part's key."""
        cfg = self.config
        if cfg.backend == "lmm":
            return model_fingerprint(lambda: lmm.checkpoint_path(cfg), cfg.lmm_model)
        from stages.talking_head.weights import find_weights

        return model_fingerprint(lambda: [find_weights("asd", cfg.asd_weights, cfg.model_dir),
                                          find_weights("detector", cfg.detector_weights, cfg.model_dir)],
                                 [cfg.asd_weights, cfg.detector_weights])

    def setup(self) -> None:
        """Load the backend's models once per actor."""
        if self.config.backend == "lmm":
            self.scorer = lmm.load_scorer(self.config, resolve_device(self.config.device))
        else:
            self.analyzer = build_analyzer(self.config)

    def process_batch(self, rows: list[dict[str, Any]]):
        """The rows (by default a whole part) through one decode/inference pipeline: decoding
        runs on threads ahead of the models, across clip boundaries."""
        lmm_backend = self.config.backend == "lmm"
        if not hasattr(self, "scorer" if lmm_backend else "analyzer"):
            self.setup()
        out: list[Any] = [None] * len(rows)
        requests, index = [], []
        for i, row in enumerate(rows):
            try:
                requests.append(clip_request(row, self.context.storage if self.context else None,
                                             need_audio=not lmm_backend))
                index.append(i)
            except Exception as exc:  # noqa: BLE001 - per-item isolation
                out[i] = exc
        runner = self.scorer.run(requests) if lmm_backend else self.analyzer.run(requests)
        for j, result in runner:
            i = index[j]
            out[i] = result if isinstance(result, BaseException) else self.decide(rows[i], result)
        return out

    def decide(self, row: dict[str, Any], result: ClipResult | LmmResult) -> list:
        """The row with its score, or a :class:`Rejected` in filter mode above the threshold."""
        cfg = self.config
        if isinstance(result, LmmResult):
            scored = dict(row, talking_head_p_yes=float(result.p_yes))
            if cfg.mode == "filter" and result.p_yes > cfg.p_yes_threshold:
                return [Rejected(scored, "talking_head", f"p_yes={result.p_yes:.3f} > {cfg.p_yes_threshold:g}")]
            return [scored]
        scored = dict(row, talking_head_ratio=round(float(result.ratio), 4))
        if cfg.mode == "filter" and result.ratio > cfg.threshold:
            return [Rejected(scored, "talking_head", f"ratio={result.ratio:.2f} > {cfg.threshold:g}")]
        return [scored]


class PretrainTalkingHeadConfig(TalkingHeadConfig):
    """The talking-head settings of the pre-training recipes: the LMM backend by default, as the
    reference's pre-training corpus (``data/production/README.md`` step A3)."""
    backend: Literal["asd", "lmm"] = Field("lmm", description="'lmm' (default here, the reference's pre-training "
                                                              "filter) or 'asd'")


class PretrainTalkingHead(TalkingHead):
    """:class:`TalkingHead` with the LMM backend as default (``recipes/youtube_pretrain.py``)."""
    Config: ClassVar[type[StageConfig]] = PretrainTalkingHeadConfig


def clip_request(row: dict[str, Any], storage: Any = None, need_audio: bool = True) -> ClipRequest:
    """A clips-schema row -> the media range to read (file clock). A relative ``media_path`` is
    under the corpus root (``storage``), as the media download writes it. Raises
    :class:`MediaError` when the row has no media, :class:`NoAudioStreamError` when it says it
    has no audio and ``need_audio``."""
    path = row.get("media_path")
    if not path:
        raise MediaError(f"clip {row.get('clip_id')}: no media_path (run media download first)")
    if need_audio and row.get("has_audio") is False:
        raise NoAudioStreamError(f"{path}: no audio stream (has_audio is false); the talking-head ratio needs audio")
    if storage is not None:
        path = storage.resolve(path)
    offset = float(row.get("media_offset") or 0.0)
    return ClipRequest(path, float(row["start"]) - offset, float(row["end"]) - offset)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_analyzer(cfg: TalkingHeadConfig) -> Analyzer:
    """Find the weights and load both models once (an actor's ``setup``).
    Raises ``FileNotFoundError`` when weights are missing, ``RuntimeError`` for a bad checkpoint."""
    import torch

    from stages.talking_head.detect import FaceDetector
    from stages.talking_head.lightasd import load_lightasd
    from stages.talking_head.weights import find_weights

    asd_path = find_weights("asd", cfg.asd_weights, cfg.model_dir)
    det_path = find_weights("detector", cfg.detector_weights, cfg.model_dir)
    device = resolve_device(cfg.device)
    threads = max(1, torch.get_num_threads())  # Ray sets OMP_NUM_THREADS to the actor's CPUs
    if device == "cuda":
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    # CPU: small batches stay in cache and keep onnxruntime's arena small; GPU: fill it
    det_batch = cfg.det_batch_frames or (64 if device == "cuda" else 8)
    asd_batch = cfg.asd_batch_frames or (4800 if device == "cuda" else 150)
    detector = FaceDetector(det_path, providers=providers, threads=threads,
                            score_threshold=cfg.det_score_threshold, iou_threshold=cfg.det_nms_iou,
                            batch_size=det_batch)
    if device == "cuda" and detector.providers[0] != "CUDAExecutionProvider":
        log.warning("talking_head: onnxruntime has no CUDA provider (install onnxruntime-gpu, the 'gpu' extra); "
                    "SCRFD runs on the CPU")
    asd = load_lightasd(asd_path).fused().to(device)
    log.info("talking_head: Light-ASD %s, SCRFD %s (%s), device %s", asd_path, det_path, detector.providers[0], device)
    return Analyzer(detector, asd, cfg, device, asd_batch_frames=asd_batch)


__all__ = ["TalkingHead", "TalkingHeadConfig", "PretrainTalkingHead", "PretrainTalkingHeadConfig", "build_analyzer", "clip_request", "MediaError",
           "NoAudioStreamError", "ClipRequest", "ClipResult", "LmmResult"]
