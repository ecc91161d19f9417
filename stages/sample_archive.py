"""A small, deterministic sample archive in yt-dlp naming, made offline with ffmpeg.

It lets a new user (and CI) run a whole build with no network: a few short test-pattern
videos with a tone track, each with an info.json and captions in the formats YouTube
serves: json3 auto captions (per-word ``tOffsetMs``), rolling auto-generated VTT with
inline word times, and a manual SRT. The spoken text is a fixed narration; word times
follow a steady ~2.5 words/s with pauses at sentence ends, so clips pass the 1-4 wps check.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

NARRATION = (
    "Today we are building a small wooden birdhouse from a single pine board. "
    "First we mark the front, the back, the two sides, the floor and the roof on the board with a pencil. "
    "Then we cut each piece with a hand saw, keeping the blade straight along the line. "
    "Next we drill an entrance hole in the front panel, about one and a half inches wide. "
    "We also drill a few small holes in the floor so that rain water can drain away. "
    "Now we glue the sides to the floor and hold them together with clamps while the glue sets. "
    "After that we nail the front and the back in place and check that the box is square. "
    "The roof goes on last, with a small overhang to keep the rain away from the entrance. "
    "Finally we sand the edges smooth and leave the wood unpainted on the inside. "
    "Hang the birdhouse on a post or a tree about five feet above the ground, facing away from the wind. "
    "In a few weeks you may see a family of birds moving in. "
    "That is all for today, thanks for watching and see you next time."
).split()

WPS = 2.5           # words per second while speaking
SENTENCE_PAUSE_S = 0.8
LEAD_IN_S = 1.0


def word_times(duration_s: float, offset: int = 0) -> list[tuple[float, float, str]]:
    """(start, end, word) in seconds for the narration, rotated by ``offset`` words, until ``duration_s - 1``."""
    words = NARRATION[offset:] + NARRATION[:offset]
    out, t, i = [], LEAD_IN_S, 0
    step = 1.0 / WPS
    while t + step < duration_s - 1.0:
        w = words[i % len(words)]
        out.append((round(t, 3), round(t + step * 0.9, 3), w))
        t += step + (SENTENCE_PAUSE_S if w.endswith(".") else 0.0)
        i += 1
    return out


def _ts(t: float, sep: str = ".") -> str:
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{int(s):02d}{sep}{int(round((s % 1) * 1000)) % 1000:03d}"


def _lines(words, per_line: int = 8):
    return [words[i:i + per_line] for i in range(0, len(words), per_line)]


def to_json3(words) -> str:
    """YouTube json3 auto captions: one event per line, per-word ``tOffsetMs``, newline append events."""
    events = [{"tStartMs": 0, "dDurationMs": int(words[-1][1] * 1000) + 1000, "id": 1, "wpWinPosId": 1, "wsWinStyleId": 1}]
    for line in _lines(words):
        t0 = int(line[0][0] * 1000)
        segs = [{"utf8": line[0][2], "acAsrConf": 0}]
        segs += [{"utf8": " " + w, "tOffsetMs": int(s * 1000) - t0, "acAsrConf": 0} for s, _, w in line[1:]]
        events.append({"tStartMs": t0, "dDurationMs": int(line[-1][1] * 1000) - t0 + 400, "wWinId": 1, "segs": segs})
        events.append({"tStartMs": int(line[-1][1] * 1000), "dDurationMs": 10, "wWinId": 1, "aAppend": 1, "segs": [{"utf8": "\n"}]})
    return json.dumps({"wireMagic": "pb3", "pens": [{}], "wsWinStyles": [{}], "wpWinPositions": [{}], "events": events})


def to_auto_vtt(words) -> str:
    """Rolling two-line auto-generated VTT as yt-dlp writes it: each cue repeats the previous
    line, the new line carries inline ``<hh:mm:ss.mmm><c>`` word times, then a 10 ms cue."""
    out = ["WEBVTT", "Kind: captions", "Language: en", ""]
    prev = ""
    lines = _lines(words)
    for n, line in enumerate(lines):
        start = line[0][0]
        end = lines[n + 1][0][0] if n + 1 < len(lines) else line[-1][1] + 0.5
        timed = line[0][2] + "".join(f"<{_ts(s)}><c> {w}</c>" for s, _, w in line[1:])
        out += [f"{_ts(start)} --> {_ts(end - 0.01)} align:start position:0%", prev or " ", timed, ""]
        plain = " ".join(w for _, _, w in line)
        out += [f"{_ts(end - 0.01)} --> {_ts(end)} align:start position:0%", plain, " ", ""]
        prev = plain
    return "\n".join(out) + "\n"


def to_srt(words) -> str:
    """Manual-style SRT: one cue per sentence-ish line, no word times."""
    out = []
    for n, line in enumerate(_lines(words, 10), 1):
        out += [str(n), f"{_ts(line[0][0], ',')} --> {_ts(line[-1][1], ',')}", " ".join(w for _, _, w in line), ""]
    return "\n".join(out) + "\n"


def make_sample_archive(out_dir: str | Path, n_videos: int = 3, duration_s: float = 80.0) -> list[Path]:
    """Write ``n_videos`` videos (320x180, 25 fps, H.264 + AAC tone) with info.json and captions.

    Video *i* gets json3 (i % 3 == 0), auto VTT (1) or manual SRT (2) captions. Files that
    already exist are kept, so a second call is instant. Returns the paths written or found.

    Raises:
        RuntimeError: ffmpeg fails.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_videos):
        vid = f"sample{i:04d}"          # 10 chars, a valid id
        words = word_times(duration_s, offset=i * 7)
        media = out / f"{vid}.mp4"
        if not media.exists():
            tmp = out / f".{vid}.tmp.mp4"
            cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                   "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=25:duration={duration_s}",
                   "-f", "lavfi", "-i", f"sine=frequency={330 + 110 * i}:sample_rate=16000:duration={duration_s}",
                   "-c:v", "libx264", "-preset", "ultrafast", "-crf", "30", "-pix_fmt", "yuv420p", "-g", "50", "-threads", "1",
                   "-c:a", "aac", "-b:a", "48k", "-shortest", "-movflags", "+faststart", str(tmp)]
            proc = subprocess.run(cmd, capture_output=True)
            if proc.returncode != 0:
                raise RuntimeError(f"ffmpeg failed making {media}: {proc.stderr.decode(errors='replace')[-500:]}")
            tmp.rename(media)
        kind = ("json3", "vtt", "srt")[i % 3]
        caption = out / f"{vid}.en.{kind}"
        caption.write_text({"json3": to_json3, "vtt": to_auto_vtt, "srt": to_srt}[kind](words), encoding="utf-8")
        info = {
            "id": vid, "title": f"Sample {i}: building a birdhouse", "channel": "livecc sample",
            "webpage_url": f"https://www.youtube.com/watch?v={vid}", "duration": duration_s,
            "categories": ["Howto & Style"], "language": "en",
            ("automatic_captions" if kind != "srt" else "subtitles"): {"en": [{"ext": kind}]},
        }
        (out / f"{vid}.info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        paths += [media, caption, out / f"{vid}.info.json"]
    return paths
