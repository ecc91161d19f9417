"""Property-based fuzzing of the caption parsers (hypothesis).

Documents in all four formats are generated valid, then mutated: truncated, cues reordered,
timestamps duplicated, huge or negative numbers, NUL bytes, mixed encodings, a 100k-word
cue. Every document, as bytes, must either parse into words that keep the ``words``
contract, or raise :class:`CaptionError` -- the stage's documented error, which the engine
records as an ``_errors`` row. No document may take longer than ``DOC_LIMIT_S``.

The normal suite runs a small example budget (profile ``default``, tests/conftest.py); for
a deeper search: ``./scripts/test tests/test_caption_fuzz.py --hypothesis-profile=long``.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import xml.sax.saxutils as saxutils

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import schemas  # noqa: E402
from pipeline.stage import Rejected, StageContext  # noqa: E402
from pipeline.storage import Storage  # noqa: E402
from stages.caption_parse import (FORMATS, MAX_WORD_SEC, CaptionError, CaptionParse,  # noqa: E402
                                  decode_caption, parse_caption)

#: Wall-clock bound per document, s. A 100k-word cue parses in well under a second here;
#: the margin is for a shared, busy machine.
DOC_LIMIT_S = 20.0
MODES = ("precise", "compat")


# -- the property ---------------------------------------------------------------------

class DocumentTimeout(AssertionError):
    pass


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Fail (not hang) when the body runs longer than ``seconds`` of wall time (SIGALRM)."""
    def expire(signum, frame):
        raise DocumentTimeout(f"{what} took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_words(words: list[dict], mode: str) -> None:
    """The invariants of parsed words: finite non-negative times, start <= end, starts
    non-decreasing, times rounded (ms; 0.1 s in compat); in precise mode no empty text, no
    overlap and no word longer than ``max_word_sec``."""
    decimals = 3 if mode == "precise" else 1
    prev_start = -math.inf
    for k, w in enumerate(words):
        s, e, t = w["start"], w["end"], w["text"]
        assert isinstance(t, str)
        assert math.isfinite(s) and math.isfinite(e) and 0 <= s <= e, w
        assert s >= prev_start, (words[k - 1], w)
        assert round(s, decimals) == s and round(e, decimals) == e, w
        if mode == "precise":
            assert t.strip() == t and t, w
            assert e - s <= MAX_WORD_SEC + 1e-3 + 1e-15 * s, w
            if k + 1 < len(words):
                assert e <= words[k + 1]["start"], (w, words[k + 1])
        prev_start = s


def parse_bytes(data: bytes, fmt: str, mode: str, kind: str | None) -> list[dict] | CaptionError:
    """What the stage does with a file's bytes, without the I/O: words, or the CaptionError."""
    with time_limit(DOC_LIMIT_S, f"a {len(data)}-byte {fmt} document ({mode})"):
        try:
            return parse_caption(decode_caption(data), fmt, mode, kind=kind)[0]
        except CaptionError as exc:
            return exc


# -- generators -------------------------------------------------------------------------

VOCAB = ["the", "world", "unite", "A1,", "", "COOKIE MONSTER:", ">>", "[Music]", "[background", "noise]",
         "♪", "café", "naïve", "&amp;", "<i>it</i>", "l'été", "-", "ok.", "1848", "日本語", "\t"]
word = st.one_of(st.sampled_from(VOCAB), st.text(min_size=1, max_size=8))
line = st.lists(word, min_size=0, max_size=8).map(lambda ws: " ".join(ws))
spaces = st.sampled_from([" ", "  ", "   "])
time_ms = st.one_of(st.integers(0, 3_600_000), st.integers(-10_000, -1), st.sampled_from([0, 10**12, 10**18]))


@st.composite
def cues(draw, min_size=1, max_size=12):
    """``[(start_ms, end_ms, [lines])]``: mostly increasing, sometimes overlapping, reversed or repeated."""
    out, t = [], draw(st.integers(0, 5_000))
    for _ in range(draw(st.integers(min_size, max_size))):
        t += draw(st.integers(0, 8_000))
        dur = draw(st.one_of(st.integers(0, 6_000), st.integers(-2_000, -1)))
        lines = draw(st.lists(line, min_size=1, max_size=3))
        out.append((t, t + dur, lines))
    return out


def ts_vtt(ms: int) -> str:
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    h, rest = divmod(ms, 3_600_000)
    return f"{sign}{h:02d}:{rest // 60_000:02d}:{rest % 60_000 // 1000:02d}.{rest % 1000:03d}"


def ts_srt(ms: int) -> str:
    return ts_vtt(ms).replace(".", ",")


def vtt_manual(cs) -> str:
    blocks = [f"{ts_vtt(a)} --> {ts_vtt(b)}\n" + "\n".join(ls) for a, b, ls in cs]
    return "WEBVTT\nKind: captions\nLanguage: en\n\n" + "\n\n".join(blocks) + "\n"


def vtt_auto(cs) -> str:
    """Rolling cues with inline word times, each followed by a 10 ms bridge cue."""
    blocks, previous = [], " "
    for a, b, ls in cs:
        ws = " ".join(ls).split(" ")
        step = max(1, (b - a) // max(len(ws), 1))
        body = ws[0] + "".join(f"<{ts_vtt(a + k * step)}><c> {w}</c>" for k, w in enumerate(ws[1:], 1))
        blocks.append(f"{ts_vtt(a)} --> {ts_vtt(b)} align:start position:0%\n{previous}\n{body}")
        blocks.append(f"{ts_vtt(b)} --> {ts_vtt(b + 10)} align:start position:0%\n{' '.join(ws)}\n ")
        previous = " ".join(ws)
    return "WEBVTT\nKind: captions\nLanguage: en\n\n" + "\n\n".join(blocks) + "\n"


def srt_doc(cs) -> str:
    return "\n".join(f"{k}\n{ts_srt(a)} --> {ts_srt(b)}\n" + "\n".join(ls) + "\n"
                     for k, (a, b, ls) in enumerate(cs, 1))


def json3_doc(cs) -> str:
    events = [{"tStartMs": 0, "dDurationMs": 10**7, "id": 1, "wpWinPosId": 1}]  # window set-up, no segs
    for a, b, ls in cs:
        ws = " ".join(ls).split(" ")
        step = max(1, (b - a) // max(len(ws), 1))
        events.append({"tStartMs": a, "dDurationMs": b - a, "wWinId": 1,
                       "segs": [{"utf8": (" " if k else "") + w, **({"tOffsetMs": k * step} if k else {})}
                                for k, w in enumerate(ws)]})
        events.append({"tStartMs": b, "dDurationMs": 10, "wWinId": 1, "aAppend": 1, "segs": [{"utf8": "\n"}]})
    return json.dumps({"wireMagic": "pb3", "events": events}, ensure_ascii=False)


def srv3_doc(cs) -> str:
    ps = []
    for a, b, ls in cs:
        ws = " ".join(ls).split(" ")
        step = max(1, (b - a) // max(len(ws), 1))
        inner = saxutils.escape(ws[0]) + "".join(f'<s t="{k * step}"> {saxutils.escape(w)}</s>'
                                                  for k, w in enumerate(ws[1:], 1))
        ps.append(f'<p t="{a}" d="{b - a}" w="1">{inner}</p><p t="{b}" d="10" w="1" a="1">\n</p>')
    head = '<?xml version="1.0" encoding="utf-8" ?><timedtext format="3"><body>'
    return head + "".join(ps) + "</body></timedtext>"


WRITERS = {"vtt": vtt_manual, "vtt_auto": vtt_auto, "srt": srt_doc, "json3": json3_doc, "srv3": srv3_doc}


def giant_cue(writer, n_words: int = 100_000):
    """One cue of ``n_words`` words after a normal one."""
    words = " ".join(VOCAB[k % 4] or "x" for k in range(n_words))
    return writer([(0, 1000, ["first cue"]), (1000, 600_000, [words])])


@st.composite
def mutated(draw, doc: str):
    """``doc`` as bytes after zero or more mutations."""
    ops = draw(st.lists(st.sampled_from(["truncate", "nul", "latin1", "cp1252", "junk_number", "dup_line",
                                         "drop_line", "swap_lines", "bom", "crlf"]), max_size=3))
    text = doc
    for op in ops:
        lines = text.split("\n")
        if op == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
        elif op == "junk_number":
            text = text.replace(draw(st.sampled_from(["0", "1", "2", "00:", "\"t\"", ","])),
                                draw(st.sampled_from(["99999999999999999999", "-5", "1e400", "NaN", "x", ""])), 1)
        elif op == "dup_line" and lines:
            k = draw(st.integers(0, len(lines) - 1))
            lines.insert(k, lines[k])
            text = "\n".join(lines)
        elif op == "drop_line" and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "\n".join(lines)
        elif op == "swap_lines" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == "crlf":
            text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    if "bom" in ops:
        data = b"\xef\xbb\xbf" + data
    if "latin1" in ops or "cp1252" in ops:  # mixed: a stretch in a legacy encoding inside UTF-8
        cut = draw(st.integers(0, len(text)))
        enc = "latin-1" if "latin1" in ops else "cp1252"
        data = text[:cut].encode("utf-8") + text[cut:].encode(enc, errors="replace")
    if "nul" in ops:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00" * draw(st.integers(1, 3)) + data[at:]
    return data


@st.composite
def documents(draw):
    """``(bytes, fmt, kind)``: a generated caption, reordered or not, then mutated."""
    name = draw(st.sampled_from(sorted(WRITERS)))
    cs = draw(cues())
    if draw(st.booleans()):
        cs = draw(st.permutations(cs))                         # reordered cues
    if draw(st.booleans()) and len(cs) > 1:                     # duplicated timestamps
        k = draw(st.integers(1, len(cs) - 1))
        cs[k] = (cs[k - 1][0], cs[k - 1][1], cs[k][2])
    if draw(st.booleans()):                                     # huge or negative numbers
        k = draw(st.integers(0, len(cs) - 1))
        cs[k] = (draw(time_ms), draw(time_ms), cs[k][2])
    doc = WRITERS[name](cs)
    fmt = "vtt" if name.startswith("vtt") else name
    kind = draw(st.sampled_from(["auto", "manual", None]))
    return draw(mutated(doc)), fmt, kind


# -- tests ------------------------------------------------------------------------------

@given(documents(), st.sampled_from(MODES))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_any_document_parses_to_valid_words_or_raises_caption_error(doc, mode):
    data, fmt, kind = doc
    result = parse_bytes(data, fmt, mode, kind)
    if not isinstance(result, CaptionError):
        check_words(result, mode)


@given(st.binary(max_size=2048), st.sampled_from(FORMATS), st.sampled_from(MODES))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_never_crash_a_parser(data, fmt, mode):
    result = parse_bytes(data, fmt, mode, None)
    if not isinstance(result, CaptionError):
        check_words(result, mode)


@given(st.text(max_size=400), st.sampled_from(["WEBVTT\n\n", "1\n00:00:01,000 --> 00:00:02,000\n",
                                                '{"events": [', '<timedtext format="3"><body><p t="1">']),
       st.sampled_from(FORMATS), st.sampled_from(MODES))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_format_headers_followed_by_any_text(text, head, fmt, mode):
    result = parse_bytes((head + text).encode("utf-8", errors="surrogatepass"), fmt, mode, "auto")
    if not isinstance(result, CaptionError):
        check_words(result, mode)


@pytest.mark.parametrize("name", sorted(WRITERS))
@pytest.mark.parametrize("mode", MODES)
def test_a_100k_word_cue_parses_in_bounded_time(name, mode):
    fmt = "vtt" if name.startswith("vtt") else name
    words = parse_bytes(giant_cue(WRITERS[name]).encode("utf-8"), fmt, mode, "auto")
    assert not isinstance(words, CaptionError), words
    check_words(words, mode)
    assert len(words) >= 50_000


@given(documents(), st.sampled_from(MODES))
@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                   HealthCheck.function_scoped_fixture])
def test_the_stage_turns_every_document_into_rows_rejections_or_caption_errors(tmp_path, doc, mode):
    data, fmt, kind = doc
    path = tmp_path / f"doc.en.{fmt}"
    path.write_bytes(data)
    context = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/caption_parse", part=0)
    stage = CaptionParse(CaptionParse.Config(mode=mode, min_words=1), context)
    row = {"video_id": "fuzz", "source": "local", "title": "t", "categories": [], "language": "en",
           "caption_kind": kind, "caption_format": fmt, "caption_path": str(path), "has_audio": None}
    with time_limit(DOC_LIMIT_S, f"the stage on a {len(data)}-byte {fmt} document"):
        [result] = stage.process_batch([row])
    if isinstance(result, BaseException):
        assert isinstance(result, CaptionError) and str(path) in str(result), repr(result)
        return
    [out] = result
    if isinstance(out, Rejected):
        assert out.reason in {"no_words", "no_valid_timestamps", "too_few_words"}
        return
    check_words(out["words"], mode)
    schemas.rows_to_table([out], schemas.TRANSCRIPTS)
