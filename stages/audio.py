"""Audio extraction with ffmpeg: a time range of a media file as 16 kHz mono float32 samples.

Shared by the stages that listen (transcribe, the talking-head filter's MFCC input). Only
the requested range is decoded: ``-ss`` before ``-i`` makes ffmpeg seek in the container
and decode from the nearest packet, then drop samples up to the exact start, so a 60 s
range at the end of a 13-minute file costs about 60 s of decoding, not 13 minutes.

Channels are averaged to mono (ffmpeg's default ``-ac 1`` downmix), as the reference does
(``AudioReader(...)._array.T.mean(axis=1)`` in ``data/production/distributed_whisperx.py``).

Paths: a local path, an ``http(s)://`` URL (ffmpeg reads it with range requests), or any
other fsspec URL (``s3://``, ``gs://``, ``hf://``), which is copied to a temporary file first
because ffmpeg cannot open it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from typing import Iterator

import numpy as np

#: Whisper's input rate; also what the talking-head filter's MFCC front end expects.
SAMPLE_RATE_HZ = 16000


class MediaError(RuntimeError):
    """The media cannot be used for an item: undecodable, a stream missing, a range outside it."""


class AudioError(MediaError):
    """ffmpeg could not decode the audio; the message carries ffmpeg's own error text."""


class NoAudioStreamError(AudioError):
    """The media file has no audio stream (e.g. a video-only download). One class for every
    stage that listens (transcribe, the talking-head filter)."""


def extract_audio(path: str | os.PathLike, start_s: float | None = None, end_s: float | None = None,
                  sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode ``[start_s, end_s)`` of ``path``'s first audio stream to mono float32.

    Args:
        path: local path, http(s) URL or fsspec URL of an audio or video file.
        start_s: range start in seconds on the media clock (``None``: from the beginning).
        end_s: range end in seconds (``None``: to the end of the stream). A range that runs
            past the end of the stream returns what is there.
        sample_rate_hz: output sample rate in Hz.

    Returns:
        ``float32`` array of shape ``(n_samples,)`` with values in ``[-1, 1]``;
        ``n_samples == round((end_s - start_s) * sample_rate_hz)`` for a range inside the stream.

    Raises:
        ValueError: the range is empty or negative.
        FileNotFoundError: ``path`` does not exist.
        NoAudioStreamError: the file has no audio stream.
        AudioError: any other ffmpeg failure (corrupt file, unsupported codec), with ffmpeg's message.
    """
    start = float(start_s or 0.0)
    if start < 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    if end_s is not None and end_s <= start:
        raise ValueError(f"empty audio range: start_s={start_s} end_s={end_s}")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError("ffmpeg is not on PATH; install it (Debian/Ubuntu: apt-get install ffmpeg)")

    with _local_input(str(path)) as source:
        cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
        if start > 0:
            cmd += ["-ss", f"{start:.6f}"]  # input option: seek, then decode only from there
        cmd += ["-i", source]
        if end_s is not None:
            cmd += ["-t", f"{end_s - start:.6f}"]
        cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(int(sample_rate_hz)),
                "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)

    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        if "matches no streams" in message or "does not contain any stream" in message:
            raise NoAudioStreamError(f"{path} has no audio stream")
        if "No such file or directory" in message:
            raise FileNotFoundError(f"media file not found: {path}")
        raise AudioError(f"ffmpeg failed on {path} (exit {proc.returncode}): {message[-800:]}")
    audio = np.frombuffer(proc.stdout, dtype=np.float32)
    if end_s is not None:
        # ffmpeg may emit one extra resampler frame; the contract is the requested length.
        audio = audio[: int(round((end_s - start) * sample_rate_hz))]
    return audio.copy()  # frombuffer views are read-only; callers may normalise in place


@contextlib.contextmanager
def _local_input(path: str) -> Iterator[str]:
    """Yield something ffmpeg can open: the path itself, or a temporary copy of a remote object."""
    protocol = path.split("://", 1)[0] if "://" in path else "file"
    if protocol in ("file", "http", "https"):
        yield path[len("file://"):] if path.startswith("file://") else path
        return
    import fsspec  # only remote object stores need it

    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with fsspec.open(path, "rb") as src:
            shutil.copyfileobj(src, tmp, length=1 << 20)
        tmp.flush()
        yield tmp.name


def peak_dbfs(audio: np.ndarray) -> float:
    """Peak level of ``audio`` in dB relative to full scale (``-inf`` for digital silence)."""
    if audio.size == 0:
        return float("-inf")
    peak = float(np.max(np.abs(audio)))
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")
