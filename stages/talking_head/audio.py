"""Clip audio for Light-ASD: 16 kHz mono, MFCC at 100 Hz, silence per video frame.

Source: showlab/livecc ``data/production/distributed_lighter_asd/asd_utils.py`` (``get_audio``:
16 kHz mono, peak-normalised to the int16 range) and ``main.py`` (``python_speech_features.mfcc``
with its defaults: 25 ms windows every 10 ms, 13 coefficients; 4 MFCC frames per 25 fps video
frame).

What differs from the reference, on purpose (issue 4):

* **Timestamps.** Samples are placed by their presentation time, so sample 0 is the clip's
  start on the media clock even when the audio stream starts late; missing audio is zeros.
* **Silence.** The reference divides by the peak, which is 0 on digital silence. Here the
  peak is only used when the clip is audible, and each video frame gets an ``audible`` flag
  (RMS above ``silence_dbfs`` within +-0.2 s): a face cannot be the active speaker while the
  track is silent. Feeding the model zeros instead is not safe: a visibly speaking face over
  a muted track scores as speaking.
* **No audio stream** raises :class:`NoAudioStreamError`.
"""
from __future__ import annotations

import numpy as np

from stages.audio import SAMPLE_RATE_HZ, MediaError, NoAudioStreamError  # noqa: F401 - one set of media errors

VIDEO_FPS = 25
SAMPLES_PER_VIDEO_FRAME = SAMPLE_RATE_HZ // VIDEO_FPS   # 640
MFCC_PER_VIDEO_FRAME = 4                                # 100 Hz / 25 fps
MFCC_HOP = SAMPLES_PER_VIDEO_FRAME // MFCC_PER_VIDEO_FRAME  # 160 samples = 10 ms
MFCC_WIN = 400                                          # 25 ms
PREEMPH = 0.97
INT16_PEAK = 32767.0
#: a frame counts as audible when any frame within this many seconds is above the threshold,
#: so the short gaps between words stay audible
SILENCE_HOLD_S = 0.2

def decode_audio(container, start_s: float, end_s: float, origin_s: float = 0.0,
                 sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode ``[start_s, end_s)`` of the first audio stream of an open PyAV ``container``.

    Times are seconds on the media clock (``origin_s`` = the container's start time, so clip
    time 0 is the first presentation time in the file). Returns float32 mono samples at
    ``sample_rate_hz``, ``round((end_s - start_s) * sample_rate_hz)`` long; sample 0 is at
    ``start_s``; where the stream has no samples (before it starts, after it ends) the
    output is 0. Raises :class:`NoAudioStreamError`.
    """
    import av

    if not container.streams.audio:
        raise NoAudioStreamError(f"{container.name}: no audio stream; the talking-head ratio needs audio")
    stream = container.streams.audio[0]
    n = max(0, int(round((end_s - start_s) * sample_rate_hz)))
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    seek_s = start_s + origin_s - 0.5  # a little early: the first decoded packet may start late
    if seek_s > 0:
        container.seek(int(seek_s / stream.time_base), stream=stream, backward=True)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate_hz)

    def place(frames) -> bool:
        """Copy resampled frames into ``out``; True once past the end."""
        for rf in frames:
            if rf.pts is None:
                continue
            at = int(round((float(rf.pts * rf.time_base) - origin_s - start_s) * sample_rate_hz))
            data = rf.to_ndarray().reshape(-1)
            lo, hi = max(at, 0), min(at + len(data), n)
            if hi > lo:
                out[lo:hi] = data[lo - at:hi - at]
            if at >= n:
                return True
        return False

    for frame in container.decode(stream):
        if place(resampler.resample(frame)):
            break
    else:
        place(resampler.resample(None))  # flush the resampler's tail at end of stream
    return out

def frame_rms_dbfs(samples: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS level of each 40 ms video frame in dB relative to full scale (1.0): ``(n_frames,)``.
    ``samples`` is 16 kHz audio starting at frame 0; frames past its end are -inf."""
    need = n_frames * SAMPLES_PER_VIDEO_FRAME
    x = np.zeros(need, dtype=np.float64)
    m = min(need, len(samples))
    x[:m] = samples[:m]
    rms = np.sqrt(np.mean(x.reshape(n_frames, -1) ** 2, axis=1))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(rms)

def audible_frames(samples: np.ndarray, n_frames: int, silence_dbfs: float,
                   hold_s: float = SILENCE_HOLD_S) -> np.ndarray:
    """``(n_frames,)`` bool: frames with some audio above ``silence_dbfs`` within ``+-hold_s``."""
    loud = frame_rms_dbfs(samples, n_frames) > silence_dbfs
    hold = int(round(hold_s * VIDEO_FPS))
    if hold <= 0 or not loud.any():
        return loud
    padded = np.concatenate([np.zeros(hold, bool), loud, np.zeros(hold, bool)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * hold + 1)
    return windows.any(axis=1)

def prepare_signal(samples: np.ndarray) -> np.ndarray:
    """Peak-normalise to the int16 range (the reference's scaling) and pre-emphasise once
    for the whole clip, so per-window MFCCs equal slices of the whole-clip MFCC.
    Raises ``ValueError`` on an all-zero signal (callers check silence first)."""
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak <= 0.0:
        raise ValueError("cannot normalise digital silence")
    x = samples.astype(np.float64) * (INT16_PEAK / peak)
    return np.append(x[:1], x[1:] - PREEMPH * x[:-1])

def mfcc_frames(signal: np.ndarray, first_frame: int, n_frames: int) -> np.ndarray:
    """MFCC of video frames ``[first_frame, first_frame + n_frames)``: ``(4 * n_frames, 13)`` float32.

    ``signal`` comes from :func:`prepare_signal` (16 kHz, sample 0 = video frame 0). MFCC frame
    ``j`` covers samples ``[160 j, 160 j + 400)``; the last one needs 240 samples past the last
    video frame, zero-padded past the end of ``signal``.
    """
    import python_speech_features as psf

    lo = first_frame * SAMPLES_PER_VIDEO_FRAME
    hi = lo + (MFCC_PER_VIDEO_FRAME * n_frames - 1) * MFCC_HOP + MFCC_WIN
    chunk = signal[lo:hi]
    if len(chunk) < hi - lo:
        chunk = np.concatenate([chunk, np.zeros(hi - lo - len(chunk))])
    feats = psf.mfcc(chunk, samplerate=SAMPLE_RATE_HZ, winlen=MFCC_WIN / SAMPLE_RATE_HZ,
                     winstep=MFCC_HOP / SAMPLE_RATE_HZ, numcep=13, preemph=0.0)
    return feats[: MFCC_PER_VIDEO_FRAME * n_frames].astype(np.float32)
