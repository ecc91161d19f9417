"""Caption parse: YouTube closed captions (json3, srv3, VTT, SRT) -> ``words``.

Source: docs/recipes.md#caption_parse; the even split is ``split2words`` in the
reference's ``data/production/pretrain_to_clips.py`` (showlab/livecc).

Two modes (config ``mode``):

* ``precise`` (default) uses the word timings the format carries. json3 and srv3 give each
  segment a start (event ``tStartMs`` + segment ``tOffsetMs``); auto-generated VTT gives
  inline ``<hh:mm:ss.mmm>`` tags. Captions give no word *ends*, and the trainer emits a
  word in the turn in which it ends, so ends are estimated so that a pause stays a gap:
  a word ends at the earliest of the next word's start, its event (json3/srv3) or cue
  (VTT) end, and its start plus its estimated spoken duration
  (:func:`spoken_duration_s`, capped by ``max_word_sec``). Formats without word timings
  (manual VTT, SRT) keep the even split of each cue's span over its words (starts), with
  each end capped the same way, so no word is stretched over a pause inside a cue. They
  keep repeated words ("cookie, cookie, cookie" is what a human captioner heard; the
  reference's de-duplication guards against rolling auto captions, which precise mode
  de-duplicates line by line instead). Times are rounded to milliseconds.
* ``compat`` reproduces the reference's even split exactly: drop every cue whose text
  contains ``[`` or ``]``; split the text with ``text.split(" ")`` -- so a double space
  gives an empty-string word, which takes its share of the cue like any other; drop
  consecutive duplicate words; spread the cue's duration evenly over its words; round
  times to 0.1 s. It is applied to each format's cues (see "Cues" below). Empty words are
  kept, as the reference keeps them.

Cues, per format (what ``compat`` splits, and what ``precise`` splits for manual captions).
A cue's text is what the reference's ``subtitle`` would be: its lines joined with one
space, tags removed and HTML entities decoded, spaces inside a line kept as they are.
Cues with no text at all (blank) are skipped.

* VTT/SRT: one cue per caption block.
* Auto-generated (rolling) VTT: each cue repeats the line(s) of the previous cue above its
  new line, and every cue is followed by a 10 ms cue that repeats it. Only the new lines
  of each cue are kept (:func:`rolling_new_lines`), so no word is counted twice.
* json3/srv3 and rolling VTT: an event stays on screen while the next line is spoken, so
  its cue ends at ``min(event end, next event start)`` -- the timing YouTube itself serves
  as VTT. ``aAppend`` (srv3 ``a="1"``) newline events are skipped.

Clean-up in ``precise`` mode (``compat`` keeps the reference's text untouched):

* bracketed annotations (``[Music]``, ``[Applause]``, ``[background noise]``) are
  dropped word by word, not the whole cue, so real words in the same cue survive;
* tokens with no letter or digit (``>>`` speaker-change marks, ``-``, ``♪``) are dropped;
* an all-caps speaker label at the start of a line (``COOKIE MONSTER:``, ``>> JOHN:``) is
  dropped. Mixed-case labels are left alone: they cannot be told from speech.

Timestamps are repaired by :func:`repair_words`: words with a negative or non-finite time
are dropped; an end before its start is set to the start (a cue that ends before it
starts becomes zero-length, so its words keep their order); words are stably sorted by
start; in ``precise`` mode an end past the next word's start is clamped to it and empty
words are dropped. Text with no word left is rejected (``no_words``); words with no valid
time left are rejected (``no_valid_timestamps``); fewer than ``min_words`` is
``too_few_words``.

Text decoding: UTF-8 (with or without BOM), else the encoding charset-normalizer finds;
on a tie it prefers Windows-1252 (a superset of Latin-1's letters), the usual legacy
encoding of English caption files. Binary data raises :class:`CaptionError`.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Literal

import charset_normalizer
import fsspec
import srt
import webvtt
from pydantic import Field
from webvtt.models import Timestamp

import schemas
from pipeline.stage import Rejected, Resources, Stage, StageConfig

log = logging.getLogger(__name__)

FORMATS = ("json3", "srv3", "vtt", "srt")
Mode = Literal["precise", "compat"]

#: Estimated spoken duration of a word: ``WORD_BASE_SEC + WORD_SEC_PER_CHAR * letters``.
#: Calibration in :func:`spoken_duration_s`.
WORD_BASE_SEC = 0.36
WORD_SEC_PER_CHAR = 0.035
#: Default cap on a word's estimated duration, s (config ``max_word_sec``).
MAX_WORD_SEC = 1.0
#: Decimals of the times ``precise`` mode writes (milliseconds); ``compat`` writes 1.
PRECISE_DECIMALS = 3


class CaptionError(ValueError):
    """A caption file that cannot be read as its format (empty, binary, malformed)."""


class CaptionParseConfig(StageConfig):
    """Settings of :class:`CaptionParse`.

    ``mode``: ``precise`` (format word timings) or ``compat`` (the reference's even split).
    ``min_words``: transcripts with fewer words are rejected (``too_few_words``). A clip
    needs >= 30 words (30 s at >= 1 wps), so this only screens out captions that are music
    or noise with a stray word; the clip stage decides the rest.
    ``max_caption_bytes``: larger files raise, e.g. a video path given as a caption.
    ``max_word_sec``: ``precise`` mode's cap on a word's estimated spoken duration, s
    (:func:`spoken_duration_s`); a word never ends later than this after its start.
    """
    mode: Mode = "precise"
    min_words: int = Field(5, ge=1)
    max_caption_bytes: int = Field(64 * 2**20, ge=1)
    max_word_sec: float = Field(MAX_WORD_SEC, gt=0, description="precise mode: longest a word may last, s")


class CaptionParse(Stage):
    """VIDEOS row -> TRANSCRIPTS row: the video row plus ``words`` and ``transcript_source="cc"``.

    Rejects (reason codes): ``no_caption`` (row has no ``caption_path``), ``no_words``,
    ``no_valid_timestamps``, ``too_few_words``. Raises :class:`CaptionError` (recorded in
    ``_errors``) for a missing, empty, binary or malformed caption file, naming the file.
    """
    name = "caption_parse"
    Config = CaptionParseConfig
    input_schema = schemas.VIDEOS
    output_schema = schemas.TRANSCRIPTS
    resources = Resources(num_cpus=1, batch_size=64)
    config: CaptionParseConfig

    def process(self, row: dict[str, Any]) -> list[dict[str, Any] | Rejected]:
        path = row.get("caption_path")
        if not path:
            return [Rejected(row, "no_caption", "the row has no caption_path")]
        declared = row.get("caption_format")
        try:
            text = decode_caption(_read_bytes(path, self.config.max_caption_bytes))
            fmt = declared if declared in FORMATS else detect_format(text)
            raw = parse_caption_words(text, fmt, self.config.mode, kind=row.get("caption_kind"),
                                      max_word_sec=self.config.max_word_sec)
        except Exception as exc:  # noqa: BLE001 - name the file in every per-item error
            what = f" ({declared})" if declared else ""
            prefix = "" if isinstance(exc, CaptionError) else f"{type(exc).__name__}: "
            raise CaptionError(f"caption {path}{what}: {prefix}{exc}") from exc
        if not raw:
            return [Rejected(row, "no_words", f"{fmt} caption has no spoken words "
                                              f"(only annotations such as [Music], or empty)")]
        precise = self.config.mode == "precise"
        words, repairs = repair_words(raw, clamp_overlaps=precise, drop_empty=precise)
        if any(repairs.values()):
            log.info("caption %s: repaired timestamps %s", path, repairs)
        if not words:
            return [Rejected(row, "no_valid_timestamps",
                             f"all {len(raw)} words have negative or non-finite times ({repairs})")]
        if len(words) < self.config.min_words:
            return [Rejected(row, "too_few_words",
                             f"{len(words)} word(s) < min_words={self.config.min_words}: "
                             + " ".join(w["text"] for w in words[:20]))]
        return [{**row, "words": words, "transcript_source": "cc"}]


def _read_bytes(path: str, max_bytes: int) -> bytes:
    fs, fs_path = fsspec.core.url_to_fs(path)
    try:
        size = fs.size(fs_path)
    except FileNotFoundError:
        raise CaptionError("file not found") from None
    if size is not None and size > max_bytes:
        raise CaptionError(f"file is {size} bytes, over max_caption_bytes={max_bytes}")
    return fs.cat_file(fs_path)


# -- pure functions: text in, plain data out ------------------------------------------------

_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0e-\x1f]")  # C0 controls but tab, newlines, form feed


def decode_caption(data: bytes) -> str:
    """Decode caption bytes to text.

    UTF-8 (a BOM is removed) first; else the best charset-normalizer match, preferring
    Windows-1252 among equally good matches (charset-normalizer cannot tell Western from
    Central European code pages on mostly-ASCII English text, and picks cp1250 first).

    Raises:
        CaptionError: empty data, or data that is not text in any encoding.
    """
    if not data:
        raise CaptionError("file is empty (0 bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        matches = list(charset_normalizer.from_bytes(data))
        if not matches:
            raise CaptionError("not text: no character encoding decodes it "
                               "(binary or corrupt data)") from None
        best = matches[0]
        tied = [m for m in matches if m.chaos <= best.chaos + 1e-3]
        western = [m for m in tied if "cp1252" in m.could_be_from_charset]
        text = str((western or [best])[0])
    controls = len(_CONTROL_CHARS.findall(text))
    if "\x00" in text or controls > 0.01 * len(text):
        raise CaptionError(f"not text: {controls} control characters in {len(text)} "
                           f"(binary data)")
    return text.lstrip("\ufeff")


def detect_format(text: str) -> str:
    """Guess the caption format of ``text`` from its first characters (one of FORMATS)."""
    head = text.lstrip("\ufeff \t\r\n")[:64]
    if head.startswith("WEBVTT"):
        return "vtt"
    if head.startswith("{"):
        return "json3"
    if head.startswith("<"):
        return "srv3"
    return "srt"


def parse_caption_words(text: str, fmt: str, mode: Mode = "precise", *, kind: str | None = None,
                        max_word_sec: float | None = MAX_WORD_SEC) -> list[dict]:
    """Words of a caption in format ``fmt`` (one of FORMATS), before :func:`repair_words`.
    ``kind`` is the row's ``caption_kind``; ``"auto"`` marks a VTT as rolling.
    ``max_word_sec`` caps ``precise`` mode's estimated word durations (s); ``None`` turns
    the estimate off: a word then lasts until the next word's start or its cue's end (the
    rule this replaced, kept as the ``word_timing`` benchmark's baseline). ``compat``
    ignores it.

    Returns:
        ``[{"start": s, "end": s, "text": str}, ...]`` in file order, seconds.
    Raises:
        CaptionError: unknown format or malformed input.
    """
    if fmt == "vtt":
        return parse_vtt(text, mode, rolling=True if kind == "auto" else None, max_word_sec=max_word_sec)
    parsers = {"json3": parse_json3, "srv3": parse_srv3, "srt": parse_srt}
    if fmt not in parsers:
        raise CaptionError(f"unknown caption format {fmt!r}; expected one of {FORMATS}")
    return parsers[fmt](text, mode, max_word_sec=max_word_sec)


def parse_caption(text: str, fmt: str, mode: Mode = "precise", *, kind: str | None = None,
                  max_word_sec: float | None = MAX_WORD_SEC) -> tuple[list[dict], dict[str, int]]:
    """Parse and repair: ``(words, repairs)`` as :func:`parse_caption_words` then
    :func:`repair_words` (overlaps clamped and empty words dropped in ``precise`` mode only)."""
    precise = mode == "precise"
    return repair_words(parse_caption_words(text, fmt, mode, kind=kind, max_word_sec=max_word_sec),
                        clamp_overlaps=precise, drop_empty=precise)


def parse_json3(text: str, mode: Mode = "precise", *, max_word_sec: float | None = MAX_WORD_SEC) -> list[dict]:
    """Words of a YouTube json3 caption (``{"events": [{"tStartMs", "dDurationMs", "segs":
    [{"utf8", "tOffsetMs"}]}]}``); times in ms in the file, seconds in the result.

    Events without ``segs`` (window set-up) and ``aAppend`` newline events are skipped; a
    missing ``tOffsetMs`` is 0; a non-numeric time becomes NaN (dropped by repair). Word
    ends: :func:`events_to_words`.

    Raises:
        CaptionError: not JSON, or no ``events`` list.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionError(f"malformed json3: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise CaptionError("malformed json3: no 'events' list at the top level")
    events = []
    for ev in data["events"]:
        if not isinstance(ev, dict) or ev.get("aAppend") or not isinstance(ev.get("segs"), list):
            continue
        start = _ms(ev.get("tStartMs"))
        end = start + _ms(ev["dDurationMs"]) if "dDurationMs" in ev else None
        segments = [(start + _ms(seg.get("tOffsetMs", 0)), str(seg.get("utf8", "")))
                    for seg in ev["segs"] if isinstance(seg, dict)]
        events.append({"start": start, "end": end, "segments": segments})
    return events_to_words(events, mode, max_word_sec=max_word_sec)


def parse_srv3(text: str, mode: Mode = "precise", *, max_word_sec: float | None = MAX_WORD_SEC) -> list[dict]:
    """Words of a YouTube srv3 caption (``<timedtext format="3"><body><p t= d=><s t=>``),
    parsed with the stdlib XML parser. ``p@t``/``p@d`` are the event start and duration and
    ``s@t`` the word offset, all in ms; text directly in ``<p>`` starts at offset 0.
    ``a="1"`` append paragraphs are skipped. Same word rule as :func:`parse_json3`.

    Raises:
        CaptionError: malformed XML, or no ``<p>`` element.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise CaptionError(f"malformed srv3 XML: {exc}") from None
    paragraphs = list(root.iter("p"))
    if not paragraphs:
        raise CaptionError("malformed srv3: no <p> elements")
    events = []
    for p in paragraphs:
        if p.get("a") == "1":
            continue
        start = _ms(p.get("t"))
        end = start + _ms(p.get("d")) if p.get("d") is not None else None
        segments = [(start, p.text or "")]
        for child in p:
            child_text = "".join(child.itertext()) + (child.tail or "")
            if child.tag == "s":
                segments.append((start + _ms(child.get("t", 0)), child_text))
            else:  # e.g. <br/>: its text continues the current segment
                segments[-1] = (segments[-1][0], segments[-1][1] + " " + child_text)
        events.append({"start": start, "end": end, "segments": segments})
    return events_to_words(events, mode, max_word_sec=max_word_sec)


# a timing line whose hour field has 7+ digits: found by fuzzing, srt's timedelta overflows
_SRT_HUGE_HOURS = re.compile(r"^[^\n]*(?:\d{7,}:\d+:\d+[,.]\d+[^\n]*-->|-->[^\n]*\d{7,}:\d+:\d+)[^\n]*$", re.M)
_INLINE_TIME = re.compile(r"<((?:\d+:)?\d{2}:\d{2}\.\d{3})>")
_TAG = re.compile(r"<[^>]*>")


def parse_vtt(text: str, mode: Mode = "precise", rolling: bool | None = None, *,
              max_word_sec: float | None = MAX_WORD_SEC) -> list[dict]:
    """Words of a WebVTT caption, parsed with webvtt-py.

    A file with inline word times (``word<00:00:01.920><c> next</c>``), with rolling cues
    (each cue repeating the previous one's line; ``rolling=None`` detects it with
    :func:`is_rolling`) or marked ``rolling=True`` is an auto caption: only each cue's new
    lines are kept (:func:`rolling_new_lines`) and, in ``precise`` mode, the text before
    the first inline time starts at the cue start and each ``<t>`` chunk at ``t``. Old-style
    ``<c.colorXXXXXX>`` tags are stripped. Other files are manual captions: one cue per
    block, split evenly (:func:`even_split`). Cue blocks whose timing line webvtt-py cannot
    read (e.g. a negative time) are skipped and logged.

    Raises:
        CaptionError: not a WebVTT file (no ``WEBVTT`` header or unparseable).
    """
    try:
        captions = webvtt.from_string(text).captions
    except (webvtt.errors.MalformedFileError, webvtt.errors.MalformedCaptionError) as exc:
        raise CaptionError(f"malformed WebVTT: {exc}") from None
    timing_lines = sum(1 for line in text.splitlines() if "-->" in line)
    if timing_lines > len(captions):
        log.warning("WebVTT: skipped %d cue(s) with unreadable timings", timing_lines - len(captions))
    cues = [{"start": c.start_time.in_milliseconds() / 1000, "end": c.end_time.in_milliseconds() / 1000,
             "lines": list(c.lines)} for c in captions]
    timed = any(_INLINE_TIME.search(line) for c in cues for line in c["lines"])
    if rolling is None:
        rolling = is_rolling([[_plain(line) for line in c["lines"]] for c in cues])
    if timed or rolling:
        new_lines = rolling_new_lines([c["lines"] for c in cues])
        events = [{"start": c["start"], "end": c["end"],
                   "segments": _inline_segments(" ".join(lines), c["start"])}
                  for c, lines in zip(cues, new_lines) if lines]
        return events_to_words(events, mode, max_word_sec=max_word_sec)
    return cues_to_words([{"start": c["start"], "end": c["end"], "text": cue_text(c["lines"])} for c in cues],
                         mode, max_word_sec=max_word_sec)


def parse_srt(text: str, mode: Mode = "precise", *, max_word_sec: float | None = MAX_WORD_SEC) -> list[dict]:
    """Words of a SubRip caption, parsed with the ``srt`` package; each cue is split evenly
    (:func:`even_split`). Unparseable stretches are skipped when at least one cue parses;
    a malformed cue that ``srt`` folds into the previous cue's text (e.g. one with a
    negative time) is cut off that text. A timing line with an hour count of 7 or more
    digits (over a century; ``srt`` overflows on it) is made unreadable, so its cue is
    skipped the same way.

    Raises:
        CaptionError: no SRT cue can be read.
    """
    text = _SRT_HUGE_HOURS.sub("-->", text)
    try:
        subtitles = list(srt.parse(text))
    except srt.SRTParseError as exc:
        subtitles = list(srt.parse(text, ignore_errors=True))
        if not subtitles:
            raise CaptionError(f"malformed SRT: {exc}") from None
        log.warning("SRT: skipped unparseable data (%s)", exc)
    cues = []
    for sub in subtitles:
        lines = sub.content.split("\n")
        swallowed = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if swallowed is not None:  # a cue block srt could not read became text: cut it off
            lines = lines[:swallowed]
            while lines and (not lines[-1].strip() or lines[-1].strip().isdigit()):
                lines.pop()
            log.warning("SRT: dropped a malformed cue after cue %s", sub.index)
        cues.append({"start": sub.start.total_seconds(), "end": sub.end.total_seconds(),
                     "text": cue_text(lines)})
    return cues_to_words(cues, mode, max_word_sec=max_word_sec)


def cues_to_words(cues: list[dict], mode: Mode = "precise", *,
                  max_word_sec: float | None = MAX_WORD_SEC) -> list[dict]:
    """Even split of cues ``[{"start", "end", "text"}]`` (seconds; text as :func:`cue_text`
    makes it).

    ``compat``: the reference's exact rule (:func:`even_split`: ``split(" ")``, rounded to
    0.1 s). ``precise``: the cue text is cleaned (:func:`spoken_text`); word *i* of *n*
    starts at ``start + i*d`` (``d = (end - start) / n``) and ends at
    ``min(start + (i+1)*d, its start + spoken_duration_s(word))``, so a cue that holds a
    pause does not stretch its words over it; times rounded to ms. Blank cues are skipped.
    A cue that ends before it starts is made zero-length at its start, so its words keep
    their order.
    """
    reversed_cues = sum(1 for c in cues if c["end"] < c["start"])
    if reversed_cues:
        log.warning("%d cue(s) end before they start; made zero-length", reversed_cues)
        cues = [{**c, "end": c["start"]} if c["end"] < c["start"] else c for c in cues]
    if mode == "compat":
        return even_split([c for c in cues if c["text"].strip()])
    words: list[dict] = []
    for c in cues:
        tokens = spoken_text(c["text"]).split(" ")
        if tokens != [""]:
            words.extend(_spread(c["start"], c["end"], tokens, max_word_sec))
    return words


def even_split(cues: list[dict], decimals: int | None = 1, dedupe: bool = True) -> list[dict]:
    """The reference's ``split2words`` (data/production/pretrain_to_clips.py).

    For each cue ``{"start": s, "end": s, "text": str}`` in order: skip it when its text
    contains ``[`` or ``]``; split the text with ``text.split(" ")`` (a double space gives
    an empty-string word, as in the reference); drop a word equal to the one
    before it (``dedupe``); give word *i* of *n* the span ``start + i*d .. start + (i+1)*d``
    with ``d = (end - start) / n``, rounded to ``decimals`` (``None``: not rounded).
    The defaults are the reference's rule exactly.

    Returns:
        ``[{"start", "end", "text"}]`` in cue order, seconds.
    """
    words: list[dict] = []
    for cue in cues:
        text = cue["text"]
        if "[" in text or "]" in text:
            continue
        tokens: list[str] = []
        for token in text.split(" "):
            if not dedupe or not tokens or tokens[-1] != token:
                tokens.append(token)
        start, step = cue["start"], (cue["end"] - cue["start"]) / len(tokens)
        for i, token in enumerate(tokens):
            s, e = start + i * step, start + (i + 1) * step
            if decimals is not None:
                s, e = round(s, decimals), round(e, decimals)
            words.append({"start": s, "end": e, "text": token})
    return words


def events_to_words(events: list[dict], mode: Mode = "precise", *,
                    max_word_sec: float | None = MAX_WORD_SEC) -> list[dict]:
    """Words of timed events ``[{"start": s, "end": s | None, "segments": [(start_s, text)]}]``.

    ``precise``: every non-blank segment starts at its own time and its span ends at the
    earliest of the next segment's start (over all events, by time) and its event's end.
    Its words' starts are spread evenly over that span, and each word ends at the earliest
    of the next word's start and its own start plus its estimated spoken duration
    (:func:`spoken_duration_s`, capped by ``max_word_sec``; ``None``: no estimate) --
    :func:`_spread`. A one-word segment (json3, srv3 and auto-VTT words) thus ends at
    ``min(next start, event end, start + estimate)``. Annotations are then dropped per
    event (:func:`spoken_mask`). Times rounded to ms. ``compat``: each event is a cue ending at
    ``min(end, next event start)`` with the segments' text (lines joined with one space),
    split by :func:`even_split`.
    """
    if mode == "compat":
        cues = []
        live = [ev for ev in events if any(t.strip() for _, t in ev["segments"])]
        for i, ev in enumerate(live):
            end = ev["end"] if ev["end"] is not None else ev["start"]
            if i + 1 < len(live) and live[i + 1]["start"] >= ev["start"]:
                end = min(end, live[i + 1]["start"])
            cues.append({"start": ev["start"], "end": end,
                         "text": cue_text("".join(t for _, t in ev["segments"]).split("\n"), tags=False)})
        return cues_to_words(cues, "compat")
    segments = [(start, ev["end"], text, k) for k, ev in enumerate(events)
                for start, text in ev["segments"] if text.strip()]
    order = sorted(range(len(segments)), key=lambda i: _sort_key(segments[i][0]))
    words_by_event: dict[int, list[dict]] = {}
    for rank, i in enumerate(order):
        start, cap, text, k = segments[i]
        tokens = [t for line in text.split("\n") for t in strip_speaker_label(line).split()]
        if not tokens:
            continue
        end = math.inf
        if rank + 1 < len(order) and math.isfinite(segments[order[rank + 1]][0]):
            end = segments[order[rank + 1]][0]
        if cap is not None:
            end = min(end, cap)
        if end == math.inf:  # the last segment of an event with no end: spoken back to back
            end = start + (sum(spoken_duration_s(t, max_word_sec) for t in tokens) if max_word_sec else 0.0)
        words_by_event.setdefault(k, []).extend(_spread(start, end, tokens, max_word_sec))
    words = []
    for k in sorted(words_by_event):
        ev_words = words_by_event[k]
        words.extend(w for w, keep in zip(ev_words, spoken_mask([w["text"] for w in ev_words])) if keep)
    return words


def spoken_duration_s(text: str, max_word_sec: float = MAX_WORD_SEC) -> float:
    """Estimated spoken duration of one word, s: ``0.36 + 0.035 * n``, ``n`` its letters and
    digits (at least 1), capped by ``max_word_sec``.

    Captions time word onsets only; this estimate ends a word that is followed by a pause
    (the next word's start and the cue's end bound it otherwise). The constants were
    calibrated by grid search (``docs/recipes.md``, "caption_parse") to minimise the mean
    absolute error of ``min(next word's start, start + estimate)`` against acoustic word
    ends, on two fixtures: ``videogrep_manifesto_vosk_words.json`` (an independent
    recogniser, Vosk; 210 words) with the 183 words of ``videogrep_manifesto_auto.en.vtt``
    matched to them by sequence alignment, and ``wts_apollo11_large.words.json`` (Whisper
    large word times, 146 words, the rule applied to its own starts).

    Figures: manifesto end MAE 0.100 s (the next-word-start rule: 0.190 s), 1 of 183 ends
    > 0.5 s off (a misaligned repeat of "and"; next-word-start: 12); Apollo 0.100 s
    (next-word-start 0.194 s); Vosk's own starts 0.015 s. A plain least-squares fit of
    durations gives a smaller intercept (Vosk 0.02 + 0.057 s/letter, Apollo 0.24 + 0.026
    s/letter; means 0.30 and 0.34 s): the estimate only matters before a pause, where words
    are phrase-final and longer. Letters predicted ends slightly better than vowel-group
    syllables (0.102 s). Vosk's longest word lasts 1.02 s, hence the default cap of 1.0 s.
    """
    letters = sum(ch.isalnum() for ch in text)
    return min(max_word_sec, WORD_BASE_SEC + WORD_SEC_PER_CHAR * max(letters, 1))


def _spread(start: float, end: float, tokens: list[str], max_word_sec: float | None) -> list[dict]:
    """Tokens spread evenly over ``[start, end]`` (s): token *j* of *n* starts at
    ``start + j*d`` and ends at ``min(start + (j+1)*d, its start + spoken_duration_s)``
    (no cap when ``max_word_sec`` is None); times rounded to ms."""
    step = (end - start) / len(tokens)
    out = []
    for j, token in enumerate(tokens):
        s = start + j * step
        e = start + (j + 1) * step
        if max_word_sec is not None:
            e = min(e, s + spoken_duration_s(token, max_word_sec))
        out.append({"start": _round(s), "end": _round(e), "text": token})
    return out


def _round(t: float) -> float:
    return round(t, PRECISE_DECIMALS) if math.isfinite(t) else t


def rolling_new_lines(cues_lines: list[list[str]]) -> list[list[str]]:
    """For rolling (auto-generated) captions: the raw lines each cue adds.

    A cue's leading lines that repeat the trailing lines of the previous cue (compared
    without tags and blank lines) are dropped; a line with inline word times is always new.
    The 10 ms cues that only repeat the previous cue thus add nothing.

    Args:
        cues_lines: each cue's raw text lines, in file order.
    Returns:
        each cue's new raw lines (possibly empty), aligned with ``cues_lines``.
    """
    out, previous = [], []
    for lines in cues_lines:
        items = [(raw, _plain(raw)) for raw in lines if _plain(raw)]
        keep_from = 0
        for k in range(min(len(items), len(previous)), 0, -1):
            head = items[:k]
            if [p for _, p in head] == previous[-k:] and not any(_INLINE_TIME.search(r) for r, _ in head):
                keep_from = k
                break
        out.append([raw for raw, _ in items[keep_from:]])
        previous = [p for _, p in items]
    return out


def is_rolling(cues_plain_lines: list[list[str]]) -> bool:
    """True when most cues start with the previous cue's last non-blank line: the rolling
    layout of YouTube auto captions, also without inline word times."""
    pairs = hits = 0
    previous: list[str] = []
    for lines in cues_plain_lines:
        lines = [line for line in lines if line.strip()]
        if previous and lines:
            pairs += 1
            hits += lines[0] == previous[-1]
        previous = lines
    return pairs >= 2 and hits >= 0.5 * pairs


_SPEAKER_LABEL = re.compile(r"""
    ^\s*(?:>>\s*|-\s*)?                                   # optional speaker-change mark or dash
    ([A-Z][A-Z0-9'’.&-]*(?:\s+[A-Z][A-Z0-9'’.&-]*){0,3})    # up to four all-caps words
    \s*:(?=\s|$)""", re.VERBOSE)


def strip_speaker_label(line: str) -> str:
    """Remove an all-caps speaker label (``COOKIE MONSTER:``, ``>> JOHN:``) from the start of
    one line of caption text; at least two capital letters, so ``I:`` and times stay."""
    m = _SPEAKER_LABEL.match(line)
    if m and sum(c.isupper() for c in m.group(1)) >= 2:
        return line[m.end():]
    return line


def spoken_mask(tokens: list[str]) -> list[bool]:
    """Which tokens are spoken words: False for tokens inside or touching a ``[...]``
    annotation (which may span tokens; an unclosed ``[`` runs to the end) and for tokens
    with no letter or digit (``>>``, ``-``, ``♪``)."""
    mask, depth = [], 0
    for token in tokens:
        opens, closes = token.count("["), token.count("]")
        annotated = depth > 0 or opens > 0 or closes > 0
        depth = max(0, depth + opens - closes)
        mask.append(not annotated and any(c.isalnum() for c in token))
    return mask


def spoken_text(text: str) -> str:
    """Cue text reduced to its spoken words (``precise`` mode): speaker labels stripped per
    line, then tokens kept by :func:`spoken_mask`, joined with single spaces."""
    tokens = [t for line in text.split("\n") for t in strip_speaker_label(line).split()]
    return " ".join(t for t, keep in zip(tokens, spoken_mask(tokens)) if keep)


def repair_words(words: Iterable[dict], *, clamp_overlaps: bool = True,
                 drop_empty: bool = True) -> tuple[list[dict], dict[str, int]]:
    """Make words fit the ``words`` contract: finite, non-negative, sorted by start.

    * a word with a negative, NaN, infinite or non-numeric time is dropped; so is a word
      whose text is not a string, or (``drop_empty``; ``compat`` keeps the reference's
      empty-string words) is blank;
    * an end before its start is set to the start (the onset is kept);
    * words are stably sorted by start (file order kept for equal starts);
    * with ``clamp_overlaps``, an end past the next word's start is set to that start.

    Returns:
        ``(words, repairs)``: new word dicts (``start``/``end`` floats, seconds) and counts
        ``{"dropped_invalid_time", "dropped_empty", "end_before_start", "out_of_order",
        "overlap_clamped"}``.
    """
    repairs = dict.fromkeys(("dropped_invalid_time", "dropped_empty", "end_before_start",
                             "out_of_order", "overlap_clamped"), 0)
    kept: list[dict] = []
    for w in words:
        start, end, text = _float(w.get("start")), _float(w.get("end")), w.get("text")
        if not isinstance(text, str) or (drop_empty and not text.strip()):
            repairs["dropped_empty"] += 1
            continue
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
            repairs["dropped_invalid_time"] += 1
            continue
        if end < start:
            repairs["end_before_start"] += 1
            end = start
        kept.append({"start": start, "end": end, "text": text})
    repairs["out_of_order"] = sum(1 for a, b in zip(kept, kept[1:]) if b["start"] < a["start"])
    kept.sort(key=lambda w: w["start"])
    if clamp_overlaps:
        for a, b in zip(kept, kept[1:]):
            if a["end"] > b["start"]:
                a["end"] = b["start"]
                repairs["overlap_clamped"] += 1
    return kept, repairs


def _ms(value: Any) -> float:
    """Milliseconds (int, float or numeric string) -> seconds; NaN when not a number."""
    try:
        return float(value) / 1000
    except (TypeError, ValueError):
        return math.nan


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _sort_key(t: float) -> float:
    return t if t == t else math.inf  # NaN sorts last instead of breaking the order


def _collapse(text: str) -> str:
    return " ".join(text.split())


def cue_text(lines: list[str], *, tags: bool = True) -> str:
    """A cue's text as the reference's ``subtitle`` holds it: its lines joined with one
    space, tags removed (``tags``) and HTML entities decoded; spaces inside a line are kept,
    so ``"A1,  A2"`` keeps its double space. Line-end characters are dropped."""
    if tags:
        lines = [html.unescape(_TAG.sub("", line)) for line in lines]
    return " ".join(line.strip("\r\n") for line in lines)


def _plain(line: str) -> str:
    """One caption line without tags or entities, whitespace collapsed."""
    return _collapse(html.unescape(_TAG.sub("", line)))


def _inline_segments(raw: str, cue_start: float) -> list[tuple[float, str]]:
    """``"a<00:00:01.920><c> b</c>"`` -> ``[(cue_start, "a"), (1.92, " b")]``."""
    parts = _INLINE_TIME.split(raw)
    segments = [(cue_start, html.unescape(_TAG.sub("", parts[0])))]
    for stamp, chunk in zip(parts[1::2], parts[2::2]):
        try:
            t = Timestamp.from_string(stamp).in_milliseconds() / 1000
        except webvtt.errors.MalformedCaptionError:  # e.g. minutes > 59: repair drops it
            t = math.nan
        segments.append((t, html.unescape(_TAG.sub("", chunk))))
    return segments
