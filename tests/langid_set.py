"""A language-ID test set of clip-length transcripts, built from real text found offline.

Used by ``tests/test_language.py`` and ``bench/bench_language.py`` (and the README's detector
comparison). Every sample is ``Sample(source, lang, text)``:

* **English, real speech:** every English caption fixture with at least 30 s of words
  (the json3 lesson, the manifesto SRT and auto-VTT, the Cookie Monster SRT, the Longson and
  birthday-party VTTs), the English auto-caption track inside the pinchflat info.json and
  Whisper-large's Apollo 11 radio transcript; parsed with our caption parser, then cut into
  consecutive windows of ``window_s`` seconds of speech (30 s by default: the shortest clip
  the clipper keeps, the hardest case for a detector). A last window shorter than that is
  dropped.
* **Non-English, real speech:** the German (manual) and French (auto-translated, rolling)
  caption tracks held in the pinchflat info.json's ``requested_subtitles``, windowed the same
  way. Always present with the fixtures.
* **Non-English (and English), real text, when the machine has it:** the translated messages
  of the system's gettext catalogs (``/usr/share/locale/<lang>/LC_MESSAGES/gtk20-properties.mo``,
  ``glib20.mo``), one catalog per language, joined into chunks as long as the median English
  window (in characters). These are UI sentences, not speech, but they are real, human
  translations in dozens of languages; :func:`gettext_samples` returns ``[]`` where the
  catalogs are absent.
"""
from __future__ import annotations

import gettext
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from stages.caption_parse import decode_caption, detect_format, parse_caption
from tests.conftest import FIXTURES

#: English caption fixtures with >= 30 s of words.
ENGLISH_CAPTIONS = (
    "ytenglishhub_english_lesson_asr.en.json3",
    "videogrep_manifesto.en.srt",
    "videogrep_manifesto_auto.en.vtt",
    "ytenglishhub_cookiemonster_Ye8mB6VsUHw_manual.en.srt",
    "longson_jackaskew_N0gZFvpxNhQ_manual.en.vtt",
    "subtest2_birthday_party_auto.en.vtt",
)
PINCHFLAT = "pinchflat_example_postdownload.info.json"
LOCALE_DIR = Path("/usr/share/locale")
GETTEXT_DOMAINS = ("gtk20-properties", "glib20")
#: Catalog folder -> ISO 639-1 code, for the languages compared (the papluca model's 19
#: non-English languages where a catalog exists, and a spread of others).
GETTEXT_LANGS = {
    "ar": "ar", "bg": "bg", "de": "de", "el": "el", "es": "es", "fr": "fr", "hi": "hi", "it": "it",
    "ja": "ja", "nl": "nl", "pl": "pl", "pt": "pt", "ru": "ru", "tr": "tr", "vi": "vi", "zh_CN": "zh",
    "cs": "cs", "da": "da", "fi": "fi", "hu": "hu", "id": "id", "ko": "ko", "ro": "ro", "sv": "sv",
    "uk": "uk", "ca": "ca", "af": "af", "nb": "nb", "cy": "cy", "gl": "gl",
    "en_GB": "en", "en_CA": "en",
}


@dataclass(frozen=True)
class Sample:
    source: str   # where the text comes from, e.g. "pinchflat:de#3"
    lang: str     # ISO 639-1 code of the truth
    text: str     # the clip's words joined by spaces, as the stage sees them


def windows(words: list[dict], window_s: float) -> list[list[dict]]:
    """Consecutive runs of ``words`` spanning ``window_s`` seconds each (by word start); a
    last run shorter than ``window_s`` is dropped."""
    out: list[list[dict]] = []
    cur: list[dict] = []
    for w in words:
        if cur and w["start"] - cur[0]["start"] >= window_s:
            out.append(cur)
            cur = []
        cur.append(w)
    if cur and cur[-1]["end"] - cur[0]["start"] >= window_s:
        out.append(cur)
    return out


def _caption_words(text: str) -> list[dict]:
    words, _ = parse_caption(text, detect_format(text))
    return words


def _window_samples(name: str, lang: str, words: list[dict], window_s: float) -> list[Sample]:
    return [Sample(f"{name}#{k}", lang, " ".join(w["text"] for w in win))
            for k, win in enumerate(windows(words, window_s))]


def english_samples(window_s: float = 30.0, fixtures: Path = FIXTURES) -> list[Sample]:
    """English speech transcripts, windowed (module docstring)."""
    out: list[Sample] = []
    for name in ENGLISH_CAPTIONS:
        path = fixtures / "captions" / name
        if path.exists():
            out += _window_samples(name, "en", _caption_words(decode_caption(path.read_bytes())), window_s)
    info = fixtures / "infojson" / PINCHFLAT
    if info.exists():
        subs = json.loads(info.read_text())["requested_subtitles"]
        out += _window_samples("pinchflat:en", "en", _caption_words(subs["en"]["data"]), window_s)
    apollo = fixtures / "audio" / "wts_apollo11_large.words.json"
    if apollo.exists():
        words = [{"start": w["start"], "end": w["end"], "text": w["text"].strip()}
                 for seg in json.loads(apollo.read_text())["segments"] for w in seg["words"]]
        out += _window_samples("apollo11", "en", words, window_s)
    return out


def pinchflat_samples(window_s: float = 30.0, fixtures: Path = FIXTURES) -> list[Sample]:
    """The German and French caption tracks of the pinchflat info.json, windowed."""
    info = fixtures / "infojson" / PINCHFLAT
    if not info.exists():
        return []
    subs = json.loads(info.read_text())["requested_subtitles"]
    out: list[Sample] = []
    for lang in ("de", "fr"):
        out += _window_samples(f"pinchflat:{lang}", lang, _caption_words(subs[lang]["data"]), window_s)
    return out


_PLACEHOLDER = re.compile(r"%[-+ #0-9.]*[a-zA-Z]|%\([^)]*\)[a-z]|\{[^}]*\}|<[^>]+>")


def catalog_text(lang_dir: str, locale_dir: Path = LOCALE_DIR) -> str:
    """The translated messages of ``lang_dir``'s gettext catalogs (:data:`GETTEXT_DOMAINS`),
    placeholders, markup and mnemonic underscores removed, joined by spaces ("" when none)."""
    parts: list[str] = []
    for domain in GETTEXT_DOMAINS:
        mo = locale_dir / lang_dir / "LC_MESSAGES" / f"{domain}.mo"
        if not mo.exists():
            continue
        with mo.open("rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - the plain message table
        for key, msg in sorted(catalog.items(), key=lambda kv: str(kv[0])):
            if not key or not isinstance(msg, str) or msg == key:
                continue  # the header, or an untranslated message
            msg = _PLACEHOLDER.sub(" ", msg).replace("_", "")
            msg = " ".join(msg.split())
            if len(msg) >= 12:
                parts.append(msg)
    return " ".join(parts)


def gettext_samples(chars: int, per_language: int = 4, locale_dir: Path = LOCALE_DIR) -> list[Sample]:
    """Up to ``per_language`` chunks of about ``chars`` characters per language of
    :data:`GETTEXT_LANGS` (cut at a space where the script has spaces); ``[]`` where the
    system has no catalogs."""
    out: list[Sample] = []
    for lang_dir, code in GETTEXT_LANGS.items():
        text = catalog_text(lang_dir, locale_dir)
        # Chunks from evenly spread places of the catalog, not just its first (A-sorted) keys.
        n = min(per_language, len(text) // chars)
        for k in range(n):
            pos = k * (len(text) // n)
            chunk = text[pos:pos + chars]
            if " " in chunk[1:-1]:
                chunk = chunk[chunk.index(" ") + 1:chunk.rindex(" ")]
            out.append(Sample(f"gettext:{lang_dir}#{k}", code, chunk))
    return out


def language_set(window_s: float = 30.0, with_gettext: bool = True) -> list[Sample]:
    """Everything above: English and non-English speech transcripts, plus the gettext chunks
    (sized as the median English window) when the machine has the catalogs."""
    english = english_samples(window_s)
    out = english + pinchflat_samples(window_s)
    if with_gettext and english:
        out += gettext_samples(int(statistics.median(len(s.text) for s in english)))
    return out
