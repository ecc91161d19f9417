"""Clipping: a video's words -> 30-240 s clips, and the words-per-second (wps) filter.

Sources (showlab/livecc; docs/recipes.md#pretrain_clip, #sft_clip, #wps_filter):

* :class:`PretrainClip` -- ``data/production/pretrain_to_clips.py`` (``clip4pretrain``).
  Greedy scan from word *i*: extend *j* while ``words[j].end - words[i].end <= 240 s`` and
  ``words[j].end - words[j-1].end <= 3 s``; keep ``words[i:j]`` when
  ``words[j-1].end - words[i].end >= 30 s``; ``previous`` is the space-joined text of all
  words before *i*; continue from *j*.
* :class:`SftClip` -- ``data/production/sft_to_clips.py`` (``clipping``). The same rule
  measured on word starts, and a clip may only begin at a sentence start. ``previous`` is the
  reference's ``preasr`` (stripped texts of the words before the clip, space-joined).
* :class:`WpsFilter` -- ``check()`` in ``pretrain_to_clips.py``:
  ``wps = len(words) / (words[-1].end - words[0].end)``, kept when ``1 <= wps <= 4``.

Every clip has ``start`` = its first word's start and ``end`` = its last word's end (s),
rounded to milliseconds (compat words carry the reference's 0.1 s rounding already).

Two modes, chosen per stage by ``mode``:

``compat`` reproduces the reference scripts exactly, quirks included:

* Bounds are measured between word ends (pre-training) or word starts (SFT), not over the
  clip's span, so ``end - start`` is never below 30 s but can exceed 240 s by the first
  word's duration (pre-training) or the last word's duration (SFT).
* When the scan reaches the last word without a break, the reference's ``for j in range``
  leaves ``j`` at the last index, so the clip stops *before* the last word, and the last
  word can never start a clip: the final word of a video is never in a clip.
* SFT sentence start: word 0, or the previous text ends with ``.``, ``?`` or ``!`` (no
  stripping) and ``text.isupper()`` holds for the whole word -- so "I" and "OK" start a
  sentence, "The" does not.

``precise`` keeps the same greedy scan and the same gap rule (pre-training: consecutive word
ends; SFT: consecutive word starts, both ``<= max_empty_sec``) but:

* extends *j* while ``words[j].end - words[i].start <= max_clip_sec`` and keeps a clip only
  when ``min_clip_sec <= end - start <= max_clip_sec`` over its real span, so every clip is
  30-240 s long; the wps filter (``mode: precise``) divides by the same span,
  ``len(words) / (end - start)``;
* includes the last word when the scan reaches it;
* SFT sentence start: the previous text, with trailing whitespace and closing quotes or
  brackets removed, ends with ``.``, ``?`` or ``!``, and the first letter of this word is
  uppercase ("The" starts a sentence).
"""
from __future__ import annotations

import math
from operator import itemgetter
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

import schemas
from pipeline.stage import Histogram, Rejected, Stage, StageConfig

Mode = Literal["precise", "compat"]


class ClipConfig(StageConfig):
    """Clip-length and gap thresholds (seconds) and the mode (module docstring)."""

    min_clip_sec: float = Field(30.0, ge=0, description="shortest clip, s (reference: 30)")
    max_clip_sec: float = Field(240.0, gt=0, description="longest clip, s (reference: 240)")
    max_empty_sec: float = Field(3.0, ge=0, description="longest gap between consecutive words, s (reference: 3)")
    mode: Mode = Field("precise", description="'compat': the reference exactly; 'precise': 30-240 s guaranteed")

    @model_validator(mode="after")
    def _bounds(self) -> "ClipConfig":
        if self.min_clip_sec > self.max_clip_sec:
            raise ValueError(f"min_clip_sec ({self.min_clip_sec}) > max_clip_sec ({self.max_clip_sec})")
        return self


class PretrainClipConfig(ClipConfig):
    """Config of :class:`PretrainClip`."""


class SftClipConfig(ClipConfig):
    """Config of :class:`SftClip`."""


class WpsFilterConfig(StageConfig):
    """Words-per-second bounds (reference ``--min_wps 1 --max_wps 4``) and the span they are
    measured over (``mode``, :func:`words_per_second`)."""

    min_wps: float = Field(1.0, ge=0, description="lowest words per second kept")
    max_wps: float = Field(4.0, gt=0, description="highest words per second kept")
    mode: Mode = Field("precise", description="'precise': over the clip's span, last.end - first.start; "
                       "'compat': the reference's last.end - first.end")

    @model_validator(mode="after")
    def _bounds(self) -> "WpsFilterConfig":
        if self.min_wps > self.max_wps:
            raise ValueError(f"min_wps ({self.min_wps}) > max_wps ({self.max_wps})")
        return self


def clip_durations(table: pa.Table) -> pa.Array:
    """``end - start`` (s) of each clip row."""
    return pc.subtract(table["end"], table["start"])


DURATION_HISTOGRAM = Histogram("clip duration (s)", ("start", "end"), clip_durations)


class _ClipStage(Stage):
    """Shared body of the clip stages: one transcript row -> its clip rows, or ``no_clip``."""

    input_schema = schemas.TRANSCRIPTS
    output_schema = schemas.CLIPS
    report_histograms = {"duration": DURATION_HISTOGRAM}
    #: "end" or "start": which word time the gap rule compares (for the no_clip detail)
    _gap_on: str

    def _clips(self, words: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def process(self, row: dict[str, Any]) -> list[dict[str, Any] | Rejected]:
        """One :data:`schemas.TRANSCRIPTS` row -> :data:`schemas.CLIPS` rows, or
        ``Rejected(row, "no_clip", detail)`` when no clip satisfies the thresholds.

        Raises:
            ValueError: a word is malformed (missing keys, non-finite or reversed times,
                starts out of order).
        """
        words = row.get("words") or []
        check_words(words)
        clips = self._clips(words)
        if not clips:
            return [Rejected(row, "no_clip", self._no_clip_detail(words))]
        return [clip_row(row, clip) for clip in clips]

    def _no_clip_detail(self, words: list[dict[str, Any]]) -> str:
        return no_clip_detail(words, self.config, self._gap_on)


class PretrainClip(_ClipStage):
    """Pre-training clips from caption words (``pretrain_to_clips.py``; module docstring)."""

    name = "pretrain_clip"
    Config = PretrainClipConfig
    _gap_on = "end"

    def _clips(self, words):
        c = self.config
        return pretrain_clips(words, min_clip_sec=c.min_clip_sec, max_clip_sec=c.max_clip_sec,
                              max_empty_sec=c.max_empty_sec, mode=c.mode)


class SftClip(_ClipStage):
    """SFT clips that begin at sentence starts (``sft_to_clips.py``; module docstring)."""

    name = "sft_clip"
    Config = SftClipConfig
    _gap_on = "start"

    def _clips(self, words):
        c = self.config
        return sft_clips(words, min_clip_sec=c.min_clip_sec, max_clip_sec=c.max_clip_sec,
                         max_empty_sec=c.max_empty_sec, mode=c.mode)

    def _no_clip_detail(self, words):
        n_starts = sum(sentence_start_flags(words, self.config.mode))
        return f"{super()._no_clip_detail(words)}; {n_starts} sentence start(s)"


class WpsFilter(Stage):
    """Keeps clips with ``min_wps <= wps <= max_wps`` and writes ``wps`` into the row.

    ``wps = len(words) / span`` in words per second, ``span`` as :func:`clip_span_s` for the
    config's ``mode``: ``precise`` the clip's duration ``last.end - first.start``, the span
    the precise clippers bound; ``compat`` the reference's ``last.end - first.end``
    (``check()`` in ``pretrain_to_clips.py``). Rejection reasons: ``wps_out_of_range`` (the
    rejected row carries its ``wps``), ``wps_zero_span`` (span <= 0, wps undefined),
    ``no_words``.
    """

    name = "wps_filter"
    Config = WpsFilterConfig
    input_schema = schemas.CLIPS
    output_schema = schemas.CLIPS
    key_field = "clip_id"
    report_histograms = {"wps": Histogram("words per second", ("wps",)), "duration": DURATION_HISTOGRAM}

    def process(self, row: dict[str, Any]) -> list[dict[str, Any] | Rejected]:
        words = row.get("words") or []
        if not words:
            return [Rejected(row, "no_words", "clip has no words; wps undefined")]
        span = clip_span_s(words, self.config.mode)
        if not span > 0:  # also catches NaN
            what = "last.end - first.start" if self.config.mode == "precise" else "last.end - first.end"
            return [Rejected(row, "wps_zero_span",
                             f"{len(words)} word(s), {what} = {span:.3f} s <= 0; wps undefined")]
        wps = len(words) / span
        out = {**row, "wps": wps}
        lo, hi = self.config.min_wps, self.config.max_wps
        if wps < lo:
            return [Rejected(out, "wps_out_of_range", f"wps={wps:.2f} < {lo:g}")]
        if wps > hi:
            return [Rejected(out, "wps_out_of_range", f"wps={wps:.2f} > {hi:g}")]
        return [out]


# -- pure functions on plain data -------------------------------------------------------

_START = itemgetter("start")
_END = itemgetter("end")
_TEXT = itemgetter("text")
_SENTENCE_END = (".", "?", "!")
_CLOSERS = "\"')]}\u00bb\u201d\u2019"  # closing quotes/brackets after a full stop: `end."`


def pretrain_clips(words: list[dict[str, Any]], *, min_clip_sec: float = 30.0, max_clip_sec: float = 240.0,
                   max_empty_sec: float = 3.0, mode: Mode = "precise") -> list[dict[str, Any]]:
    """Pre-training clips of one video (``clip4pretrain`` in ``pretrain_to_clips.py``).

    Args:
        words: ``[{"start": s, "end": s, "text": str}, ...]`` sorted by start (seconds).
        min_clip_sec, max_clip_sec, max_empty_sec: thresholds in seconds (30, 240, 3).
        mode: ``"compat"`` or ``"precise"`` (module docstring).

    Returns:
        ``[{"start": s, "end": s, "words": words[i:j], "previous": str}, ...]`` in time
        order; ``start``/``end`` are the first word's start and the last word's end.
    """
    if mode == "compat":
        spans = _pretrain_spans_compat(list(map(_END, words)), min_clip_sec, max_clip_sec, max_empty_sec)
    elif mode == "precise":
        spans = _pretrain_spans_precise(list(map(_START, words)), list(map(_END, words)),
                                        min_clip_sec, max_clip_sec, max_empty_sec)
    else:
        raise ValueError(f"mode must be 'precise' or 'compat', not {mode!r}")
    return _assemble(words, spans, strip=False)


def sft_clips(words: list[dict[str, Any]], *, min_clip_sec: float = 30.0, max_clip_sec: float = 240.0,
              max_empty_sec: float = 3.0, mode: Mode = "precise") -> list[dict[str, Any]]:
    """SFT clips of one video, each beginning at a sentence start (``sft_to_clips.py``).

    Same arguments and return shape as :func:`pretrain_clips`; ``previous`` joins the
    stripped texts (the reference's ``preasr``). Gaps are measured between word starts.
    """
    if mode not in ("compat", "precise"):
        raise ValueError(f"mode must be 'precise' or 'compat', not {mode!r}")
    starts = list(map(_START, words))
    can_start = sentence_start_flags(words, mode)
    if mode == "compat":
        spans = _sft_spans_compat(starts, can_start, min_clip_sec, max_clip_sec, max_empty_sec)
    else:
        spans = _sft_spans_precise(starts, list(map(_END, words)), can_start,
                                   min_clip_sec, max_clip_sec, max_empty_sec)
    return _assemble(words, spans, strip=True)


def sentence_start_flags(words: list[dict[str, Any]], mode: Mode = "precise") -> list[bool]:
    """``flags[k]`` is True when a clip may begin at ``words[k]``: word 0, or the previous word
    ends a sentence (``.``, ``?``, ``!``) and this word begins with a capital.

    ``compat`` uses the reference's test exactly (``sft_to_clips.py``): ``prev.endswith`` on the
    raw text and ``text.isupper()`` on the whole word. ``precise`` strips trailing whitespace
    and closing quotes/brackets from the previous word and tests this word's first letter.
    """
    texts = list(map(_TEXT, words))
    if not texts:
        return []
    if mode == "compat":
        rest = [p.endswith(_SENTENCE_END) and t.isupper() for p, t in zip(texts, texts[1:])]
    else:
        rest = [p.rstrip().rstrip(_CLOSERS).endswith(_SENTENCE_END) and _first_letter_upper(t)
                for p, t in zip(texts, texts[1:])]
    return [True] + rest


def clip_span_s(words: list[dict[str, Any]], mode: Mode = "precise") -> float:
    """The span a clip's wps is measured over, s: ``precise`` its duration
    ``words[-1].end - words[0].start`` (``docs/recipes.md``, "wps_filter"); ``compat`` the reference's
    ``words[-1].end - words[0].end`` (``check()`` in ``pretrain_to_clips.py``), which
    leaves out the first word.

    Raises:
        ValueError: no words, or an unknown mode.
    """
    if not words:
        raise ValueError("a clip with no words has no span")
    if mode == "precise":
        return words[-1]["end"] - words[0]["start"]
    if mode == "compat":
        return words[-1]["end"] - words[0]["end"]
    raise ValueError(f"mode must be 'precise' or 'compat', not {mode!r}")


def words_per_second(words: list[dict[str, Any]], mode: Mode = "precise") -> float | None:
    """``len(words) / clip_span_s(words, mode)`` in words per second; ``None`` when there are
    no words or the span is not positive."""
    if not words:
        return None
    span = clip_span_s(words, mode)
    return len(words) / span if span > 0 else None


def check_words(words: list[dict[str, Any]]) -> None:
    """Check the text-stream contract the clippers rely on.

    Raises:
        ValueError: naming the first word that lacks ``start``/``end``/``text``, has a
            non-finite time or ``end < start``, or starts before its predecessor.
    """
    prev = -math.inf
    isfinite = math.isfinite
    for k, w in enumerate(words):
        try:
            s, e, t = w["start"], w["end"], w["text"]
        except (KeyError, TypeError, IndexError):
            raise ValueError(f"words[{k}] is not a {{start, end, text}} record: {w!r:.80}") from None
        if not isinstance(t, str):
            raise ValueError(f"words[{k}].text is {type(t).__name__}, not str")
        try:
            good = isfinite(s) and isfinite(e) and s <= e
        except TypeError:
            good = False
        if not good:
            raise ValueError(f"words[{k}] has bad times start={s!r} end={e!r} (need finite, start <= end)")
        if s < prev:
            raise ValueError(f"words[{k}] starts at {s} s, before words[{k - 1}] ({prev} s): words must be sorted")
        prev = s


def clip_row(row: dict[str, Any], clip: dict[str, Any]) -> dict[str, Any]:
    """A :data:`schemas.CLIPS` row from a transcript row and one clip dict of the clippers.
    ``start``/``end`` are rounded to ms; ``media_offset`` is 0.0 when the video has media
    (the whole file), else None. A transcript with a detected language (Whisper's
    ``language`` with its probability ``lang_score``) passes both on as the clip's
    ``lang``/``lang_score``, which the language stage replaces with its own detection unless
    ``use_transcript_language`` (docs/recipes.md#language); a caption track's language is a
    label, not a detection, and is not copied."""
    video_id = row["video_id"]
    detected = row.get("lang_score") is not None and bool(row.get("language"))
    start, end = round(clip["start"], 3), round(clip["end"], 3)
    categories = row.get("categories") or []
    media_path = row.get("media_path")
    return {
        "clip_id": schemas.clip_id(video_id, start, end),
        "video_id": video_id,
        "start": start,
        "end": end,
        "words": clip["words"],
        "previous": clip["previous"],
        "title": row.get("title"),
        "category": categories[0] if categories else None,
        "transcript_source": row.get("transcript_source"),
        "url": row.get("url"),
        "media_path": media_path,
        "media_offset": 0.0 if media_path else None,
        "has_audio": row.get("has_audio"),
        "lang": row.get("language") if detected else None,
        "lang_score": row.get("lang_score") if detected else None,
    }


def no_clip_detail(words: list[dict[str, Any]], config: ClipConfig, gap_on: str = "end") -> str:
    """Why a video gave no clip: speech span, gaps over ``max_empty_sec`` (between word
    ``gap_on`` times) and the longest gap-free run, against the configured bounds."""
    if not words:
        return "no words"
    key = _END if gap_on == "end" else _START
    times = list(map(key, words))
    span = words[-1]["end"] - words[0]["start"]
    n_gaps, run_first, longest = 0, 0, 0.0
    for k in range(1, len(words) + 1):
        if k == len(words) or times[k] - times[k - 1] > config.max_empty_sec:
            longest = max(longest, words[k - 1]["end"] - words[run_first]["start"])
            if k < len(words):
                n_gaps += 1
                run_first = k
    return (f"{len(words)} words spanning {span:.1f} s; {n_gaps} gap(s) > {config.max_empty_sec:g} s "
            f"between word {gap_on}s; longest run without one {longest:.1f} s "
            f"(clips need {config.min_clip_sec:g}-{config.max_clip_sec:g} s, mode {config.mode})")


# -- scans: index spans (i, j) of words[i:j]; on plain float lists for speed -------------

def _pretrain_spans_compat(ends, mn, mx, gap):
    # Transcribes clip4pretrain's loop. Subtractions are kept as written there so float
    # comparisons round exactly as the reference's.
    n = len(ends)
    spans = []
    i = 0
    while i < n - 1:  # at i == n-1 the reference's inner range is empty -> j is None -> break
        ei = ends[i]
        prev = ei
        for j in range(i + 1, n):  # unbroken, j stays n-1: the last word is dropped (quirk)
            ej = ends[j]
            if ej - ei > mx or ej - prev > gap:
                break
            prev = ej
        if ends[j - 1] - ei >= mn:
            spans.append((i, j))
        i = j
    return spans


def _pretrain_spans_precise(starts, ends, mn, mx, gap):
    n = len(ends)
    spans = []
    i = 0
    while i < n:
        si = starts[i]
        prev = ends[i]
        for j in range(i + 1, n):
            ej = ends[j]
            if ej - si > mx or ej - prev > gap:
                break
            prev = ej
        else:
            j = n  # reached the end: keep the last word
        if mn <= ends[j - 1] - si <= mx:
            spans.append((i, j))
        i = j
    return spans


def _sft_spans_compat(starts, can_start, mn, mx, gap):
    # Transcribes clipping() in sft_to_clips.py, on word starts.
    n = len(starts)
    spans = []
    i = 0
    while i < n:
        if not can_start[i]:
            i += 1
            continue
        if i == n - 1:  # the reference's inner range is empty -> j is None -> break
            break
        si = starts[i]
        prev = si
        for j in range(i + 1, n):  # unbroken, j stays n-1: the last word is dropped (quirk)
            sj = starts[j]
            if sj - si > mx or sj - prev > gap:
                break
            prev = sj
        if starts[j - 1] - si >= mn:
            spans.append((i, j))
        i = j
    return spans


def _sft_spans_precise(starts, ends, can_start, mn, mx, gap):
    n = len(starts)
    spans = []
    i = 0
    while i < n:
        if not can_start[i]:
            i += 1
            continue
        si = starts[i]
        prev = si
        for j in range(i + 1, n):
            sj = starts[j]
            if ends[j] - si > mx or sj - prev > gap:
                break
            prev = sj
        else:
            j = n
        if mn <= ends[j - 1] - si <= mx:
            spans.append((i, j))
        i = j
    return spans


def _assemble(words, spans, strip):
    """Clip dicts for index spans; ``previous`` is built incrementally (linear in the
    number of words, not words x clips) and equals ``" ".join(texts[:i])``."""
    clips = []
    previous, done = "", 0
    for i, j in spans:
        if i > done:
            texts = map(_TEXT, words[done:i])
            piece = " ".join(map(str.strip, texts) if strip else texts)
            previous = piece if done == 0 else f"{previous} {piece}"
            done = i
        clips.append({"start": words[i]["start"], "end": words[j - 1]["end"],
                      "words": words[i:j], "previous": previous})
    return clips


def _first_letter_upper(text: str) -> bool:
    for ch in text:
        if ch.isalpha():
            return ch.isupper()
    return False
