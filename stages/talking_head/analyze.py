"""The talking-head analysis of clips: plan, decode, detect, track, crop, score, count.

Source: showlab/livecc ``data/production/distributed_lighter_asd/main.py`` (``DistributedASD``
and ``calculate_asd_ratio``): ``talking_head_ratio`` = frames with any speaking face (Light-ASD
score > 0) / frames examined.

Work is pipelined so inference never waits on ffmpeg: a producer thread plans each clip
(probe, audio, MFCC signal) and submits its windows to a pool of decode threads; the
consumer (the caller's thread) takes decoded windows in order, detects faces on the whole
window in batches, tracks and crops them, then scores all tracks of the clip with Light-ASD in
padded batches. A bounded queue caps the decoded windows held in memory.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from stages.talking_head import audio as A
from stages.talking_head import video as V
from stages.talking_head.track import Track, crop_faces, track_faces


@dataclass
class ClipRequest:
    """A time range of one media file. ``start_s``/``end_s`` are seconds on the file's own
    clock (0 = its first sample)."""
    path: str
    start_s: float
    end_s: float


@dataclass
class ClipPlan:
    """A clip ready to decode: frame grid, windows, audio features and silence flags."""
    request: ClipRequest
    info: V.MediaInfo
    n_frames: int                      # 25 fps frames in the clip
    windows: list[tuple[int, int]]     # [first, end) frame indices examined
    present: np.ndarray                # (n_frames,) bool: inside the video stream
    audible: np.ndarray                # (n_frames,) bool: audio above the silence threshold
    signal: np.ndarray | None          # normalised, pre-emphasised 16 kHz audio; None when silent
    size: tuple[int, int]              # decoded frame (w, h), pixels

    def needs_video(self, window: tuple[int, int]) -> bool:
        a, b = window
        return bool((self.audible[a:b] & self.present[a:b]).any())


@dataclass
class WindowData:
    """One decoded window: frames ``first..end-1`` of the clip."""
    first: int
    end: int
    rgb: np.ndarray        # (T, h, w, 3) uint8
    gray: np.ndarray       # (T, h, w) uint8
    found: np.ndarray      # (T,) bool: a source frame was decoded for this time
    mfcc: np.ndarray       # (4T, 13) float32


@dataclass
class ScoredTrack:
    """A face track with per-frame Light-ASD scores (> 0: speaking)."""
    frames: np.ndarray     # (L,) clip frame indices
    boxes: np.ndarray      # (L, 4) x1, y1, x2, y2 in decoded-frame pixels
    scores: np.ndarray     # (L,) float32 logits


@dataclass
class ClipResult:
    """The outcome for one clip. ``speaking``/``examined`` are per clip frame (n_frames,)."""
    ratio: float
    frames_examined: int
    frames_speaking: int
    n_frames: int
    windows: list[tuple[int, int]]
    tracks: list[ScoredTrack]
    examined: np.ndarray
    speaking: np.ndarray
    silent: bool                               # no audible frame: models not run
    size: tuple[int, int]
    frames: dict[int, np.ndarray] = field(default_factory=dict)   # clip frame -> rgb (keep_frames only)

    def stats(self) -> dict[str, Any]:
        """Plain numbers for reports and the inspect command."""
        return {
            "ratio": self.ratio, "frames_examined": self.frames_examined,
            "frames_speaking": self.frames_speaking, "windows": len(self.windows),
            "tracks": len(self.tracks), "silent": self.silent,
            "frame_size": list(self.size),
        }


class Analyzer:
    """Holds the models and runs clips through the pipeline.

    ``detector``: a :class:`stages.talking_head.detect.FaceDetector` (or anything with its
    ``detect``); ``asd``: a Light-ASD module (already on ``device``); ``cfg``: the stage config
    (window scheme, sizes, thresholds, decode workers); ``asd_batch_frames``: padded frames per
    Light-ASD call.
    """

    def __init__(self, detector, asd, cfg, device: str = "cpu", asd_batch_frames: int = 300):
        self.detector = detector
        self.asd = asd
        self.cfg = cfg
        self.device = device
        self.asd_batch_frames = asd_batch_frames

    # -- per clip, in the producer / decode threads -----------------------------------
    def plan(self, req: ClipRequest) -> ClipPlan:
        """Probe the media, check the range, decode the clip's audio. Raises
        :class:`stages.talking_head.audio.MediaError` (and its subclasses) on bad input."""
        import av

        cfg = self.cfg
        with V.open_media(req.path) as container:
            info = V.probe(container, req.path)
            if not info.has_audio:
                raise A.NoAudioStreamError(f"{req.path}: no audio stream; the talking-head ratio needs audio")
            start, end = checked_range(req, info)
            n_frames = V.clip_frame_count(start, end)
            if n_frames == 0:
                raise A.MediaError(f"{req.path}: clip [{start:.3f}, {end:.3f}] s is shorter than one frame")
            # audio up to 15 ms past the last frame: the last MFCC window needs it
            tail = (A.MFCC_WIN - A.MFCC_HOP) / A.SAMPLE_RATE_HZ
            try:
                samples = A.decode_audio(container, start, start + n_frames / A.VIDEO_FPS + tail, info.origin_s)
            except A.MediaError:
                raise
            except (av.error.FFmpegError, ValueError) as exc:
                raise A.MediaError(f"{req.path}: cannot decode audio: {exc}") from exc
        windows = V.plan_windows(n_frames, cfg.window_frames, cfg.window_every_frames, cfg.all_frames)
        present = V.present_frames(V.frame_times(start, 0, n_frames), info)
        audible = A.audible_frames(samples, n_frames, cfg.silence_dbfs)
        signal = A.prepare_signal(samples) if audible.any() else None
        size = V.fit_size(info.width, info.height, cfg.det_width, cfg.det_height)
        return ClipPlan(ClipRequest(req.path, start, end), info, n_frames, windows, present, audible, signal, size)

    def decode(self, plan: ClipPlan, window: tuple[int, int]) -> WindowData:
        """Decode one window's frames (RGB and grayscale) and its MFCC."""
        import cv2

        a, b = window
        times = V.frame_times(plan.request.start_s, a, b)
        with V.open_media(plan.request.path) as container:
            rgb, found = V.decode_frames(container, plan.info, times, plan.size)
        found &= plan.present[a:b]
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]) if len(rgb) else np.zeros((0,) + rgb.shape[1:3], np.uint8)
        mfcc = A.mfcc_frames(plan.signal, a, b - a)
        return WindowData(a, b, rgb, gray, found, mfcc)

    # -- in the consumer thread ----------------------------------------------------------
    def detect_and_track(self, win: WindowData) -> list[tuple[Track, np.ndarray]]:
        """Faces of every frame of the window in batches, then tracks and their 112x112 crops."""
        h, w = win.rgb.shape[1:3]
        # the detector is fully convolutional: pad only up to multiples of 32, so a square video
        # (288x288 frames) costs 288x288, not the whole 512x288 canvas
        canvas = np.zeros((len(win.rgb), -(-h // 32) * 32, -(-w // 32) * 32, 3), dtype=np.uint8)
        canvas[:, :h, :w] = win.rgb  # top-left, zero padding (insightface's layout)
        detections: list[np.ndarray | None] = list(self.detector.detect(canvas)) if len(canvas) else []
        for t in np.flatnonzero(~win.found):
            detections[t] = None
        tracks = track_faces(detections, self.cfg.track_iou, self.cfg.min_track_frames)
        return [(tr, crop_faces(win.gray, tr)) for tr in tracks]

    def score(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Light-ASD on ``(crops (L, 112, 112) uint8, mfcc (4L, 13))`` pairs, padded and batched
        by similar length (at most ``asd_batch_frames`` padded frames per batch). Returns the
        ``(L,)`` float32 scores of each pair, in input order."""
        import torch

        out: list[np.ndarray | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        budget = max(1, int(self.asd_batch_frames))
        batches: list[list[int]] = []
        for i in order:  # longest first, so the first track of a batch sets its padded length
            if batches and (len(batches[-1]) + 1) * len(items[batches[-1][0]][0]) <= budget:
                batches[-1].append(i)
            else:
                batches.append([i])
        with torch.inference_mode():
            for batch in batches:
                t_max = len(items[batch[0]][0])
                faces = np.zeros((len(batch), t_max, 112, 112), dtype=np.uint8)
                mfcc = np.zeros((len(batch), 4 * t_max, 13), dtype=np.float32)
                lengths = np.zeros(len(batch), dtype=np.int64)
                for j, i in enumerate(batch):
                    crops, feats = items[i]
                    faces[j, :len(crops)] = crops
                    mfcc[j, :len(feats)] = feats
                    lengths[j] = len(crops)
                scores = self.asd(torch.from_numpy(faces).to(self.device), torch.from_numpy(mfcc).to(self.device),
                                  torch.from_numpy(lengths).to(self.device)).float().cpu().numpy()
                for j, i in enumerate(batch):
                    out[i] = scores[j, :lengths[j]]
        return out  # type: ignore[return-value]

    def finish(self, plan: ClipPlan, tracked: list[tuple[int, Track, np.ndarray, np.ndarray]],
               frames: dict[int, np.ndarray]) -> ClipResult:
        """Score all tracks of a clip and count frames. ``tracked``: (window first frame,
        track, crops, window mfcc)."""
        items = []
        for first, tr, crops, mfcc in tracked:
            f0, f1 = tr.frames[0], tr.frames[-1] + 1
            items.append((crops, mfcc[4 * f0:4 * f1]))
        scores = self.score(items) if items else []
        examined = np.zeros(plan.n_frames, dtype=bool)
        for a, b in plan.windows:
            examined[a:b] = plan.present[a:b]
        speaking = np.zeros(plan.n_frames, dtype=bool)
        scored = []
        for (first, tr, _, _), s in zip(tracked, scores):
            idx = first + np.asarray(tr.frames)
            speaking[idx[s > 0]] = True
            scored.append(ScoredTrack(idx, tr.box_array, s))
        speaking &= plan.audible & examined
        n_exam, n_speak = int(examined.sum()), int(speaking.sum())
        if n_exam == 0:
            raise A.MediaError(f"{plan.request.path}: no video frames between {plan.request.start_s:.2f} "
                               f"and {plan.request.end_s:.2f} s")
        return ClipResult(n_speak / n_exam, n_exam, n_speak, plan.n_frames, plan.windows, scored,
                          examined, speaking, plan.signal is None, plan.size, frames)

    # -- the pipeline ----------------------------------------------------------------------
    def run(self, requests: Iterable[ClipRequest], keep_frames: bool = False) -> Iterator[tuple[int, ClipResult | BaseException]]:
        """Analyse clips in order; yields ``(index, ClipResult or the exception it raised)``.
        ``keep_frames``: keep every decoded frame in the result (for visualisation only)."""
        workers = max(1, int(self.cfg.decode_workers))
        q: queue.Queue = queue.Queue(maxsize=workers + 1)
        stop = threading.Event()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="talking-head-decode")

        def put(item) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                for i, req in enumerate(requests):
                    if stop.is_set():
                        return
                    try:
                        plan = self.plan(req)
                    except Exception as exc:  # noqa: BLE001 - per-clip isolation
                        put(("error", i, exc))
                        continue
                    put(("plan", i, plan))
                    for window in plan.windows:
                        if plan.signal is not None and plan.needs_video(window):
                            put(("window", i, pool.submit(self.decode, plan, window)))
                    put(("end", i, None))
            except BaseException as exc:  # noqa: BLE001 - surface producer bugs to the caller
                put(("fatal", -1, exc))
            finally:
                put(("done", -1, None))

        producer = threading.Thread(target=produce, name="talking-head-plan", daemon=True)
        producer.start()
        plan: ClipPlan | None = None
        tracked: list = []
        frames: dict[int, np.ndarray] = {}
        failed: BaseException | None = None
        try:
            while True:
                kind, i, payload = q.get()
                if kind == "done":
                    break
                if kind == "fatal":
                    raise payload
                if kind == "error":
                    yield i, payload
                elif kind == "plan":
                    plan, tracked, frames, failed = payload, [], {}, None
                elif kind == "window":
                    fut: Future = payload
                    if failed is not None:
                        fut.cancel()
                        continue
                    try:
                        win = fut.result()
                        for tr, crops in self.detect_and_track(win):
                            tracked.append((win.first, tr, crops, win.mfcc))
                        if keep_frames:
                            frames.update({win.first + k: f for k, f in enumerate(win.rgb)})
                    except Exception as exc:  # noqa: BLE001
                        failed = exc
                elif kind == "end":
                    if failed is not None:
                        yield i, failed
                    else:
                        try:
                            yield i, self.finish(plan, tracked, frames)
                        except Exception as exc:  # noqa: BLE001
                            yield i, exc
                    plan, tracked, frames = None, [], {}
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            producer.join(timeout=5)


def checked_range(req: ClipRequest, info: V.MediaInfo) -> tuple[float, float]:
    """The clip's range clamped to the media, or :class:`MediaError` when it lies outside."""
    start, end = float(req.start_s), float(req.end_s)
    if not end > start:
        raise A.MediaError(f"{req.path}: empty clip range [{start:.3f}, {end:.3f}] s")
    if start < -V.RANGE_TOLERANCE_S or end > info.duration_s + V.RANGE_TOLERANCE_S:
        raise A.MediaError(f"{req.path}: clip range [{start:.3f}, {end:.3f}] s is beyond the media "
                           f"[0, {info.duration_s:.3f}] s")
    return max(0.0, start), min(end, info.duration_s)
