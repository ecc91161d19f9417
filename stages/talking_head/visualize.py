"""Render a clip's talking-head analysis to an mp4, so a person can check a decision by eye.

Each examined frame is drawn with its face boxes (red: speaking, score > 0 while the audio is
audible; green: not speaking), the track id and the per-frame Light-ASD score, a header with
the time and the running ratio, and a timeline strip (grey: not examined, dark: no speaking
face, red: speaking face). The clip's audio is muxed frame by frame, so it stays in sync even
when the window scheme skips time. The lead wires this as
``livecc inspect talking-head MEDIA --start --end --out``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stages.talking_head import TalkingHeadConfig, build_analyzer
from stages.talking_head.analyze import ClipRequest, ClipResult
from stages.talking_head import audio as A
from stages.talking_head import video as V

RED = (230, 40, 40)     # RGB
GREEN = (40, 200, 80)
WHITE = (255, 255, 255)


def render(media_path: str, start_s: float, end_s: float, out_path: str,
           config: TalkingHeadConfig | None = None) -> dict[str, Any]:
    """Analyse ``media_path`` over ``[start_s, end_s]`` (s, the file's clock) and write an
    H.264/AAC mp4 at 25 fps to ``out_path``.

    ``config`` defaults to the stage's defaults with ``all_frames=True`` (a continuous video);
    with the window scheme only the examined windows are written, back to back. Returns the
    stats (:meth:`ClipResult.stats`: ``ratio``, frames examined and speaking, windows, tracks,
    ``silent``) plus ``talking_head_ratio`` (= ``ratio``), ``out_path`` and ``frames_written``.
    Raises what the stage raises per item (``MediaError``, ``NoAudioStreamError``) and
    ``FileNotFoundError`` when weights are missing.
    """
    cfg = config or TalkingHeadConfig(all_frames=True, mode="score")
    analyzer = build_analyzer(cfg)
    request = ClipRequest(media_path, float(start_s), float(end_s))
    ((_, result),) = list(analyzer.run([request], keep_frames=True))
    if isinstance(result, BaseException):
        raise result
    with V.open_media(media_path) as container:
        info = V.probe(container, media_path)
        clip_start = max(0.0, float(start_s))
        samples = A.decode_audio(container, clip_start, clip_start + result.n_frames / A.VIDEO_FPS, info.origin_s)
    order = [k for a, b in result.windows for k in range(a, b)]
    missing = [k for k in order if k not in result.frames]
    if missing:  # windows the models skipped (silent audio): decode them for the picture
        with V.open_media(media_path) as container:
            rgb, _ = V.decode_frames(container, info, V.frame_times(clip_start, 0, result.n_frames)[missing], result.size)
        result.frames.update(zip(missing, rgb))
    n = _write(out_path, result, order, samples, clip_start)
    return dict(result.stats(), talking_head_ratio=result.ratio, out_path=str(out_path), frames_written=n)


def draw_frame(frame: np.ndarray, k: int, result: ClipResult, overlays: list[tuple[int, np.ndarray, float]],
               start_s: float, scale: int = 1) -> np.ndarray:
    """One annotated RGB frame (upscaled by ``scale``). ``overlays``: (track id, box, score)."""
    import cv2

    img = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else frame.copy()
    audible_speaking = bool(result.speaking[k])
    for tid, box, score in overlays:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
        color = RED if score > 0 and audible_speaking else GREEN
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        cv2.putText(img, f"#{tid} {score:+.2f}", (x1, max(12, y1 - 5)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, color, 1, cv2.LINE_AA)
    upto = result.examined[:k + 1].sum()
    running = result.speaking[:k + 1].sum() / upto if upto else 0.0
    header = (f"t={start_s + k / A.VIDEO_FPS:7.2f}s  frame {k}  "
              f"{'SPEAKING' if audible_speaking else ('examined' if result.examined[k] else 'missing')}  "
              f"ratio so far {running:.2f} / clip {result.ratio:.2f}")
    cv2.putText(img, header, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, header, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, WHITE, 1, cv2.LINE_AA)
    _timeline(img, k, result)
    return img


def _timeline(img: np.ndarray, k: int, result: ClipResult) -> None:
    """A strip along the bottom: per clip frame, grey / dark / red; a white cursor at ``k``."""
    h, w = img.shape[:2]
    n = max(1, result.n_frames)
    cols = (np.arange(w) * n // w).clip(0, n - 1)
    strip = np.full((w, 3), 110, dtype=np.uint8)
    strip[result.examined[cols]] = (40, 40, 40)
    strip[result.speaking[cols]] = RED
    img[h - 8:h] = strip[None]
    x = int(k * w / n)
    img[h - 12:h, max(0, x - 1):x + 1] = WHITE


def _write(out_path: str, result: ClipResult, order: list[int], samples: np.ndarray, start_s: float) -> int:
    import av

    overlays: dict[int, list[tuple[int, np.ndarray, float]]] = {}
    for tid, tr in enumerate(result.tracks):
        for f, box, s in zip(tr.frames, tr.boxes, tr.scores):
            overlays.setdefault(int(f), []).append((tid, box, float(s)))
    w, h = result.size
    scale = max(1, int(round(640 / w)))
    out_w, out_h = (w * scale) // 2 * 2, (h * scale) // 2 * 2
    with av.open(str(out_path), "w") as out:
        vs = out.add_stream("libx264", rate=A.VIDEO_FPS)
        vs.width, vs.height, vs.pix_fmt = out_w, out_h, "yuv420p"
        a_s = out.add_stream("aac", rate=A.SAMPLE_RATE_HZ)
        a_s.layout = "mono"
        a_pts = 0
        for k in order:
            img = draw_frame(result.frames[k], k, result, overlays.get(k, []), start_s, scale)[:out_h, :out_w]
            for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
            chunk = samples[k * A.SAMPLES_PER_VIDEO_FRAME:(k + 1) * A.SAMPLES_PER_VIDEO_FRAME]
            chunk = np.pad(chunk, (0, A.SAMPLES_PER_VIDEO_FRAME - len(chunk))).astype(np.float32)
            af = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            af.sample_rate, af.pts = A.SAMPLE_RATE_HZ, a_pts
            a_pts += len(chunk)
            for packet in a_s.encode(af):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        for packet in a_s.encode(None):
            out.mux(packet)
    return len(order)
