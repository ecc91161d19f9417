"""Assemble yt-dlp-named archives from the real fixtures (symlinks, read in place) plus bad inputs."""
from __future__ import annotations

import os
import random
from pathlib import Path

from tests.conftest import FIXTURES

#: id -> fixture files, in yt-dlp naming (docs/recipes.md#ingest)
GOOD = {
    "manifesto01": {"mp4": "video/videogrep_manifesto_narration.mp4", "en.vtt": "captions/videogrep_manifesto_auto.en.vtt"},
    "lesson00001": {"en.json3": "captions/ytenglishhub_english_lesson_asr.en.json3"},
    "jackaskew01": {"en.vtt": "captions/longson_jackaskew_N0gZFvpxNhQ_manual.en.vtt"},
    "cookiemon01": {"en.srt": "captions/ytenglishhub_cookiemonster_Ye8mB6VsUHw_manual.en.srt"},
    "musiconly01": {"en.vtt": "captions/subtest2_short_music_only_auto.en.vtt"},
    "biblia00001": {"en.vtt": "captions/subtest2_biblia_music_truncated_auto.en.vtt"},
    "emyi4z-O0ls": {"info.json": "infojson/ytdlp_TEDEd_emyi4z-O0ls.info.json"},   # metadata only: no caption
}


def link_fixtures(folder: Path, entries: dict[str, dict[str, str]] = GOOD) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for vid, files in entries.items():
        for suffix, rel in files.items():
            dst = folder / f"{vid}.{suffix}"
            if not dst.exists():
                os.symlink(FIXTURES / rel, dst)


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """The bad inputs of issue 2, next to good files. Returns id -> what is wrong with it."""
    rng = random.Random(1234)
    srt = (FIXTURES / "captions/videogrep_manifesto.en.srt").read_bytes()
    mp4 = (FIXTURES / "video/videogrep_manifesto_narration.mp4").read_bytes()
    (folder / "truncated01.mp4").write_bytes(mp4[: len(mp4) // 3])
    (folder / "truncated01.en.srt").write_bytes(srt)
    (folder / "zerobyte001.en.vtt").write_bytes(b"")
    (folder / "randombytes.en.srt").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (folder / "reversedts1.en.vtt").write_text(
        "WEBVTT\n\n00:00:10.000 --> 00:00:05.000\nthis cue runs backwards\n\n"
        "-00:00:02.000 --> 00:00:01.000\nthis cue starts before zero\n\n"
        "00:00:20.000 --> 00:00:22.000\nand this one is fine\n", encoding="utf-8")
    latin1 = "1\n00:00:01,000 --> 00:00:04,000\nCaf\u00e9 cr\u00e8me br\u00fbl\u00e9e, d\u00e9j\u00e0 vu.\n\n"
    (folder / "latin1srt01.en.srt").write_bytes(latin1.encode("latin-1"))
    (folder / "hostile0001.info.json").write_text('{"id": "../../x", "title": "escape"}', encoding="utf-8")
    (folder / "hostile0001.en.srt").write_bytes(srt)
    (folder / "nowords0001.en.vtt").write_text(
        "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n[Music]\n\n00:00:04.000 --> 00:00:06.000\n \n", encoding="utf-8")
    return {"truncated01": "truncated mp4", "zerobyte001": "zero-byte caption", "randombytes": "random bytes",
            "reversedts1": "reversed and negative timestamps", "latin1srt01": "Latin-1 SRT",
            "hostile0001": "info.json id ../../x", "nowords0001": "caption with no words"}
