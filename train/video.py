"""Video frames for training: strict 2 FPS inside ``[video_start, video_end]``, sized by Qwen2-VL's rules.

Sources (facts only): the reference ``livecc-utils/src/livecc_utils/video_process_patch.py``
(``_read_video_decord_plus(strict_fps=True)`` and ``_spatial_resize_video``), the
``qwen_vl_utils`` resize rules it patches (``smart_resize``, ``smart_nframes``), and the budgets
exported by ``scripts/pt_local.sh`` / ``scripts/sft_local.sh``:

* ``VIDEO_MIN_PIXELS = 100*28*28`` pixels per frame (at least 100 visual tokens per frame pair),
* ``FPS_MAX_FRAMES = 480`` frames (4 min at 2 FPS),
* ``VIDEO_MAX_PIXELS = 24576*28*28`` pixels over all frames of one sample (about 24k visual tokens;
  the reference reuses this variable name for the *total* budget),
* at most ``768*28*28`` pixels per frame (qwen_vl_utils' per-frame cap).

Strict FPS sampling: the wanted times are ``first_pts + k/fps`` up to the last frame's pts; each
takes the first frame whose pts is at or after it (a gap repeats a frame); the list is cut to
``max_frames`` and padded to an even count by repeating the last frame (the vision tower's
temporal patch is 2 frames). Timestamps are compared exactly (PyAV ``Fraction`` time bases), so a
30 fps frame at 15/30 s counts as 0.5 s.

Decoding is PyAV only (no torchvision, no decord): one cheap demux pass finds the frame
timestamps in the range, which fixes the frame count and hence the size, then one decode pass
converts only the chosen frames, resized by swscale (bicubic), to RGB.

Frame-time conventions (``docs/recipes.md``, section "training"; reference:
``_read_video_decord_plus`` in ``livecc-utils/src/livecc_utils/video_process_patch.py`` and
``get_phrase_before_timestamp`` in ``data/lmm_dataset.py``). Our loader and the reference agree
on every turn, token and label of the sample corpus; these three conventions differ, and are
kept on purpose:

1. **A frame is stamped with its start time** (its pts). decord's ``_frame_pts[:, 1]``, which
   the reference samples on, is each frame's *end* time. For a wanted time t both take the
   first frame stamped at or after t, so at t = 1.0 s of a 25 fps video we take the frame
   [1.00, 1.04) and the reference the frame [0.96, 1.00): our pixels are one source frame
   (40 ms at 25 fps) later. A frame's pixels are on screen from its start, so the start is
   the time the words it is paired with can refer to.
2. **Times are exact.** We compare pts as ``Fraction`` and return them as float64; decord keeps
   them in float32. A word enters the turn whose last frame time is at or after the word's
   end (``train/interleave.py``); when a word's end equals that frame time exactly (e.g.
   both 0.96 s), the reference's float32 time is 0.9599999785 s, below the word's end, so
   the reference moves the word into the next turn and we do not.
3. **Raw pts, not pts minus the stream's start time.** decord measures frame times from the
   video stream's ``start_time``; we use the pts as the container presents them (edit lists
   applied), which is the clock captions and audio are on. For a file whose video stream
   does not start at 0 our times are that start later than the reference's: for the same
   ``video_start``/``video_end`` the reference takes frames that much later in the content.
   Two fixtures: ``videollama_ironman_movie_face_audio.mp4`` (video starts at 0.067 s, audio
   at 0) and ``retalking_face1_man_suit_talkinghead.mp4`` (0.033 s).
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

#: Pixels per side of one merged 2x2 patch of 14-pixel patches: sizes are multiples of this.
IMAGE_FACTOR = 28
#: Frames per temporal patch of the Qwen2-VL vision tower.
FRAME_FACTOR = 2
#: Aspect ratios above this are rejected by Qwen2-VL's resize rule.
MAX_RATIO = 200
#: Fewest frames a uniformly sampled (non-streaming) video gets (qwen_vl_utils FPS_MIN_FRAMES).
FPS_MIN_FRAMES = 4


@dataclass(frozen=True)
class VideoBudget:
    """Sampling rate and pixel budgets of one training sample's video.

    ``min_pixels`` and ``max_pixels_per_frame`` are pixels per frame, ``total_pixels`` is pixels
    summed over the frames of the sample divided by :data:`FRAME_FACTOR` (i.e. 28*28 pixels per
    visual token), ``fps`` is frames per second.
    """

    min_pixels: int = 100 * 28 * 28
    max_frames: int = 480
    total_pixels: int = 24576 * 28 * 28
    max_pixels_per_frame: int = 768 * 28 * 28
    fps: float = 2.0

    #: Environment variables read by :meth:`from_env`, named as in the reference scripts.
    ENV = {"min_pixels": "VIDEO_MIN_PIXELS", "max_frames": "FPS_MAX_FRAMES", "total_pixels": "VIDEO_MAX_PIXELS"}

    @classmethod
    def from_env(cls, **settings: int | float | None) -> "VideoBudget":
        """Defaults, overridden by non-null ``settings`` (the config), overridden by the environment.

        The environment wins so the reference's launch scripts (which export these) keep working.
        Raises ValueError for a non-numeric variable.
        """
        budget = replace(cls(), **{k: v for k, v in settings.items() if v is not None})
        for field, var in cls.ENV.items():
            if os.environ.get(var):
                try:
                    value = int(float(os.environ[var]))
                except ValueError as exc:
                    raise ValueError(f"{var}={os.environ[var]!r} is not a number") from exc
                budget = replace(budget, **{field: value})
        return budget

    def frame_size(self, height: int, width: int, nframes: int) -> tuple[int, int]:
        """(height, width) in pixels for ``nframes`` frames of a ``height`` x ``width`` video.

        Per-frame cap: ``max(min(max_pixels_per_frame, total_pixels / nframes * 2), 1.05 * min_pixels)``.
        """
        max_pixels = max(
            min(self.max_pixels_per_frame, self.total_pixels / max(nframes, 1) * FRAME_FACTOR),
            int(self.min_pixels * 1.05),
        )
        return smart_resize(height, width, factor=IMAGE_FACTOR, min_pixels=self.min_pixels, max_pixels=max_pixels)


def visual_tokens(nframes: int, height: int, width: int) -> int:
    """Visual tokens the language model sees for ``nframes`` frames of ``height`` x ``width`` pixels."""
    return math.ceil(nframes / FRAME_FACTOR) * (height // IMAGE_FACTOR) * (width // IMAGE_FACTOR)


def smart_resize(
    height: int, width: int, *, factor: int = IMAGE_FACTOR, min_pixels: float, max_pixels: float
) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within [min, max] pixels,
    aspect ratio kept as closely as possible.

    Sides are first rounded to the nearest multiple (at least ``factor``); if the area is then
    above ``max_pixels`` both sides are scaled down and floored, if below ``min_pixels`` scaled up
    and ceiled. Raises ValueError when the aspect ratio exceeds :data:`MAX_RATIO`.
    """
    if min(height, width) <= 0:
        raise ValueError(f"frame size {width}x{height} is empty")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def strict_fps_indices(
    pts: Sequence[int | Fraction], fps: float, max_frames: int, time_base: Fraction = Fraction(1)
) -> list[int]:
    """Indices into the sorted frame timestamps ``pts`` for strict ``fps`` sampling.

    ``pts`` are in units of ``time_base`` seconds (stream ticks, or seconds as ``Fraction`` with the
    default time base); integer ticks keep the arithmetic exact and fast. Returns an even-length
    list (the last index repeated when needed), at most ``max_frames`` rounded up to even,
    possibly with repeats where the source has gaps. Empty input -> [].
    """
    if not pts:
        return []
    # step between wanted times, in ticks, as num/den: compare pts*den with first*den + k*num
    step = 1 / (Fraction(fps).limit_denominator(1000) * Fraction(time_base))
    num, den = step.numerator, step.denominator
    first, last = pts[0] * den, pts[-1] * den
    indices, i, k = [], 0, 0
    while len(indices) < max_frames and first + k * num <= last:
        t = first + k * num
        while pts[i] * den < t:  # first frame at or after the wanted time; exists because t <= last
            i += 1
        indices.append(i)
        k += 1
    while len(indices) % FRAME_FACTOR:
        indices.append(indices[-1])
    return indices


def uniform_indices(nframes_total: int, video_fps: float, budget: VideoBudget, nframes: int | None = None) -> list[int]:
    """qwen_vl_utils ``smart_nframes`` + linspace: evenly spread frames for plain (non-streaming) videos.

    ``nframes`` (when given) is rounded to an even count; otherwise the count is the clip length
    at ``budget.fps``, clamped to [4, min(max_frames, nframes_total)] and floored to even.
    Raises ValueError when fewer than 2 frames can be taken.
    """
    if nframes is not None:
        count = round(nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        lo = math.ceil(FPS_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(min(budget.max_frames, nframes_total) / FRAME_FACTOR) * FRAME_FACTOR
        count = nframes_total / max(video_fps, 1e-6) * budget.fps
        count = min(min(max(count, lo), hi), nframes_total)
        count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= nframes_total:
        raise ValueError(f"cannot take {count} frames out of {nframes_total}")
    return np.linspace(0, nframes_total - 1, count).round().astype(int).tolist()


@dataclass
class DecodedVideo:
    """Frames of one clip.

    ``frames``: uint8 array (T, H, W, 3), RGB, H and W multiples of 28, T even.
    ``pts_s``: per frame, seconds on the media clock (file time + the member's offset).
    """

    frames: np.ndarray
    pts_s: list[float]
    source_size: tuple[int, int]   # (height, width) in pixels before resizing

    @property
    def visual_tokens(self) -> int:
        return visual_tokens(*self.frames.shape[:3])


def _open(source) -> tuple[av.container.InputContainer, object | None]:
    """(container, the file handle to close after it, if we opened one)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return av.open(io.BytesIO(bytes(source)), mode="r"), None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.startswith("file://"):
            path = path[len("file://"):]
        if "://" not in path:
            if not os.path.exists(path):
                raise FileNotFoundError(f"video not found: {path}")
            return av.open(path, mode="r"), None
        import fsspec  # remote media: read through fsspec (s3://, gs://, hf://, http(s)://)

        handle = fsspec.open(path, "rb").open()   # PyAV does not close file objects it is given
        try:
            return av.open(handle, mode="r"), handle
        except BaseException:
            handle.close()
            raise
    return av.open(source, mode="r"), None


def decode_video(
    source,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    offset_s: float = 0.0,
    budget: VideoBudget | None = None,
    sampling: str = "strict",
    nframes: int | None = None,
    threads: int = 1,
) -> DecodedVideo:
    """Decode the frames of ``source`` inside ``[start_s, end_s]`` (media-clock seconds, inclusive).

    ``source``: mp4 bytes (a shard's ``mp4`` member), a local path, a ``file://`` path or an fsspec
    URL. ``offset_s``: media-clock time of the file's time 0 (the member's ``media.start``).
    ``sampling``: ``"strict"`` (2 FPS streaming rule, see module docstring) or ``"uniform"``
    (qwen_vl_utils ``smart_nframes``; ``nframes`` overrides the count). ``threads``: decoder
    threads; 1 by default because DataLoader workers already decode in parallel (frame threads
    in every worker would oversubscribe the cores), 0 lets FFmpeg choose.

    Raises FileNotFoundError for missing media, ValueError for an empty range or a frame size
    Qwen2-VL refuses, and PyAV's errors (``av.error.InvalidDataError`` ...) for undecodable data.
    """
    budget = budget or VideoBudget.from_env()
    container, handle = _open(source)
    try:
        if not container.streams.video:
            raise ValueError("media has no video stream")
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
            stream.thread_count = threads
        tb = stream.time_base
        # range in stream ticks (integers), widened by 1 us against float rounding of the bounds
        lo = None if start_s is None else math.floor((Fraction(start_s - offset_s) - Fraction(1, 10**6)) / tb)
        hi = None if end_s is None else math.ceil((Fraction(end_s - offset_s) + Fraction(1, 10**6)) / tb)

        def seek(ticks: int | None) -> None:
            container.seek(max(ticks or 0, 0), stream=stream, backward=True, any_frame=False)

        # Pass 1: demux only, to learn the timestamps of all frames in range (no decoding).
        seek(lo)
        pts_ticks = []
        for packet in container.demux(stream):
            pts, dts = packet.pts, packet.dts
            if pts is None:
                continue
            if hi is not None and dts is not None and dts > hi:
                break  # dts <= pts and packets come in dts order: nothing later is in range
            if (lo is None or pts >= lo) and (hi is None or pts <= hi):
                pts_ticks.append(pts)
        pts_ticks.sort()
        if not pts_ticks:
            raise ValueError(f"no video frames in [{start_s}, {end_s}] s (file offset {offset_s} s)")
        if sampling == "strict":
            chosen = strict_fps_indices(pts_ticks, budget.fps, budget.max_frames, time_base=tb)
        elif sampling == "uniform":
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            chosen = uniform_indices(len(pts_ticks), rate, budget, nframes)
        else:
            raise ValueError(f"unknown sampling {sampling!r}")
        src_h, src_w = stream.codec_context.height, stream.codec_context.width
        height, width = budget.frame_size(src_h, src_w, len(chosen))

        # Pass 2: decode from the keyframe before the first chosen frame; convert only chosen frames.
        wanted: dict[int, list[int]] = {}
        for slot, idx in enumerate(chosen):
            wanted.setdefault(pts_ticks[idx], []).append(slot)
        last_wanted = max(wanted)
        frames = np.empty((len(chosen), height, width, 3), dtype=np.uint8)
        reformatter = VideoReformatter()  # one swscale context for all frames (per-frame setup is slow)
        seek(pts_ticks[chosen[0]])
        for frame in container.decode(stream):
            slots = wanted.pop(frame.pts, None)
            if slots:
                rgb = reformatter.reformat(
                    frame, width=width, height=height, format="rgb24", interpolation="BICUBIC"
                ).to_ndarray()
                for slot in slots:
                    frames[slot] = rgb
            if frame.pts is not None and frame.pts >= last_wanted:
                break
        if wanted:
            raise ValueError(f"{len(wanted)} frames listed by the demuxer were not decoded (corrupt media?)")
        # to the microsecond, the precision of record times (media.start, words): a word ending
        # exactly on a frame then compares equal on the media clock and on a member's clock
        pts_s = [round(float(pts_ticks[i] * tb) + offset_s, 6) for i in chosen]
        return DecodedVideo(frames=frames, pts_s=pts_s, source_size=(src_h, src_w))
    finally:
        container.close()
        if handle is not None:
            handle.close()
