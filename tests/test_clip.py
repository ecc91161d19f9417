"""Clipping stages (stages/clip.py) on real caption and ASR words.

``compat`` mode is checked against a plain transcription of the reference loops
(showlab/livecc ``data/production/pretrain_to_clips.py`` and ``sft_to_clips.py``), written
here on ``[start, end, text]`` lists the way those scripts hold words.
"""
from __future__ import annotations

import json

import pytest
import srt
import webvtt
from pydantic import ValidationError

import schemas
from pipeline.stage import Rejected, StageContext
from pipeline.storage import Storage
from schemas.record import conversation
from stages.caption_parse import parse_json3
from stages.clip import (PretrainClip, SftClip, WpsFilter, clip_row, clip_span_s, pretrain_clips,
                         sentence_start_flags, sft_clips, words_per_second)
from tests.conftest import fixture_path

LESSON = ("captions", "ytenglishhub_english_lesson_asr.en.json3")
THRESHOLDS = [(30, 240, 3), (5, 20, 1), (0, 15, 2), (45, 90, 5), (20, 40, 1.5)]


# -- real words ------------------------------------------------------------------------



def even_split(cues) -> list[dict]:
    """The reference's split2words on (start_s, end_s, text) cues (pretrain_to_clips.py); a
    cue's lines are joined with one space, so a double space still gives an empty word."""
    out = []
    for start, end, text in cues:
        text = " ".join(text.split("\n"))
        if "[" in text or "]" in text:
            continue
        ws = []
        for w in text.split(" "):
            if not ws or ws[-1] != w:
                ws.append(w)
        per = (end - start) / len(ws)
        for k, w in enumerate(ws):
            out.append({"start": round(start + k * per, 1), "end": round(start + (k + 1) * per, 1), "text": w})
    return out


def srt_words(name):
    subs = srt.parse(fixture_path("captions", name).read_text(encoding="utf-8"))
    return even_split((s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs)


def vtt_words(name):
    cues = webvtt.read(str(fixture_path("captions", name)))
    return even_split((c.start_in_seconds, c.end_in_seconds, c.text) for c in cues)


def whisper_words():
    data = json.loads(fixture_path("audio", "wts_apollo11_large.words.json").read_text(encoding="utf-8"))
    return [{"start": w["start"], "end": w["end"], "text": w["text"]}
            for seg in data["segments"] for w in seg["words"]]


@pytest.fixture(scope="module")
def lesson_words():
    return parse_json3(fixture_path(*LESSON).read_text(encoding="utf-8"))


def manual_word_sets():
    return {
        "srt_cookiemonster": srt_words("ytenglishhub_cookiemonster_Ye8mB6VsUHw_manual.en.srt"),
        "srt_manifesto": srt_words("videogrep_manifesto.en.srt"),
        "vtt_jackaskew": vtt_words("longson_jackaskew_N0gZFvpxNhQ_manual.en.vtt"),
    }


# -- the reference loops, transcribed -----------------------------------------------------

def reference_pretrain(words, mn, mx, gap):
    """clip4pretrain: words are [start, end, text]; measured on ends."""
    out, i = [], 0
    while i < len(words):
        j = None
        for j in range(i + 1, len(words)):
            if words[j][1] - words[i][1] > mx:
                break
            if words[j][1] - words[j - 1][1] > gap:
                break
        if j is not None and j > i and words[j - 1][1] - words[i][1] >= mn:
            out.append((words[i:j], " ".join(w[2] for w in words[:i])))
        if j is None:
            break
        i = j
    return out


def reference_sft(words, mn, mx, gap):
    """clipping() of sft_to_clips.py: measured on starts; starts only at sentence starts."""
    out, i = [], 0
    while i < len(words):
        ok = i == 0 or (any(words[i - 1][-1].endswith(e) for e in (".", "?", "!")) and words[i][-1].isupper())
        if not ok:
            i += 1
            continue
        j = None
        for j in range(i + 1, len(words)):
            if words[j][0] - words[i][0] > mx:
                break
            if words[j][0] - words[j - 1][0] > gap:
                break
        if j is not None and j > i and words[j - 1][0] - words[i][0] >= mn:
            out.append((words[i:j], " ".join(w[2].strip() for w in words[:i])))
        if j is None:
            break
        i = j
    return out


def as_lists(words):
    return [[w["start"], w["end"], w["text"]] for w in words]


def normalized(clips):
    """Our clip dicts -> (start, end, words, previous) for comparison."""
    return [(c["start"], c["end"], as_lists(c["words"]), c["previous"]) for c in clips]


def reference_normalized(ref):
    return [(ws[0][0], ws[-1][1], ws, prev) for ws, prev in ref]


def words_at(times, text="w"):
    """Words with (start, end) pairs; texts numbered so slices are identifiable."""
    return [{"start": float(s), "end": float(e), "text": f"{text}{k}"} for k, (s, e) in enumerate(times)]


def one_per_second(n):
    return words_at([(k, k + 1) for k in range(n)])


# -- compat == reference on real words --------------------------------------------------

@pytest.mark.parametrize("mn,mx,gap", THRESHOLDS)
def test_pretrain_compat_matches_reference_on_json3(lesson_words, mn, mx, gap):
    ours = pretrain_clips(lesson_words, min_clip_sec=mn, max_clip_sec=mx, max_empty_sec=gap, mode="compat")
    ref = reference_pretrain(as_lists(lesson_words), mn, mx, gap)
    assert ref, "thresholds chosen so that the reference yields clips"
    assert normalized(ours) == reference_normalized(ref)


@pytest.mark.parametrize("mn,mx,gap", THRESHOLDS)
def test_pretrain_compat_matches_reference_on_manual_even_split(mn, mx, gap):
    total = 0
    for name, words in manual_word_sets().items():
        ours = pretrain_clips(words, min_clip_sec=mn, max_clip_sec=mx, max_empty_sec=gap, mode="compat")
        ref = reference_pretrain(as_lists(words), mn, mx, gap)
        assert normalized(ours) == reference_normalized(ref), name
        total += len(ref)
    assert total > 0


@pytest.mark.parametrize("mn,mx,gap", THRESHOLDS)
def test_sft_compat_matches_reference(lesson_words, mn, mx, gap):
    sets = {"whisper_apollo": whisper_words(), "json3_lesson": lesson_words, **manual_word_sets()}
    total = 0
    for name, words in sets.items():
        ours = sft_clips(words, min_clip_sec=mn, max_clip_sec=mx, max_empty_sec=gap, mode="compat")
        ref = reference_sft(as_lists(words), mn, mx, gap)
        assert normalized(ours) == reference_normalized(ref), name
        total += len(ref)
    assert total > 0


def test_sft_compat_starts_only_at_all_caps_words_precise_at_capitalised_words():
    # Real manual captions: the reference's whole-word isupper() lets only "A2"/"B1"-style
    # words begin a clip mid-transcript; precise mode also takes "So", "Before", ...
    words = vtt_words("longson_jackaskew_N0gZFvpxNhQ_manual.en.vtt")
    compat = sft_clips(words, min_clip_sec=5, max_clip_sec=20, max_empty_sec=2, mode="compat")
    precise = sft_clips(words, min_clip_sec=5, max_clip_sec=20, max_empty_sec=2, mode="precise")
    compat_starts = [c["words"][0]["text"] for c in compat if c["previous"]]
    precise_starts = [c["words"][0]["text"] for c in precise if c["previous"]]
    assert compat_starts and all(t.isupper() for t in compat_starts)
    assert any(not t.isupper() and t[0].isupper() for t in precise_starts)
    assert len(precise) > len(compat)


# -- precise mode ----------------------------------------------------------------------------

def check_precise(clips, words, mn, mx, gap, gap_key):
    starts = [w["start"] for w in words]
    last_index = -1
    for c in clips:
        assert mn <= c["end"] - c["start"] <= mx
        assert c["start"] == c["words"][0]["start"] and c["end"] == c["words"][-1]["end"]
        i = next(k for k, w in enumerate(words) if w is c["words"][0])
        assert i > last_index, "clips are disjoint and in time order"
        assert words[i:i + len(c["words"])] == c["words"], "a clip is a contiguous run of words"
        last_index = i + len(c["words"]) - 1
        ts = [w[gap_key] for w in c["words"]]
        assert all(b - a <= gap for a, b in zip(ts, ts[1:]))
        assert c["previous"] == " ".join(w["text"].strip() for w in words[:i])
    assert starts == sorted(starts)


@pytest.mark.parametrize("mn,mx,gap", THRESHOLDS)
def test_pretrain_precise_bounds_on_json3(lesson_words, mn, mx, gap):
    clips = pretrain_clips(lesson_words, min_clip_sec=mn, max_clip_sec=mx, max_empty_sec=gap)
    assert clips
    check_precise(clips, lesson_words, mn, mx, gap, "end")


def test_lesson_alone_yields_several_clips_with_defaults(lesson_words):
    assert len(lesson_words) > 2000
    precise = pretrain_clips(lesson_words)
    compat = pretrain_clips(lesson_words, mode="compat")
    assert len(precise) >= 3 and len(compat) >= 3
    check_precise(precise, lesson_words, 30, 240, 3, "end")
    # compat measures from the first word's end, so on this file some spans pass 240 s slightly
    assert all(30 <= c["end"] - c["start"] <= 240 + (c["words"][0]["end"] - c["words"][0]["start"]) for c in compat)
    assert any(c["end"] - c["start"] > 240 for c in compat)
    # the scan reaches the end of the lesson: precise keeps the final word, compat drops it
    assert precise[-1]["words"][-1] is lesson_words[-1]
    assert compat[-1]["words"][-1] is lesson_words[-2]


@pytest.mark.parametrize("mn,mx,gap", THRESHOLDS)
def test_sft_precise_bounds_and_sentence_starts(mn, mx, gap):
    for words in [whisper_words(), *manual_word_sets().values()]:
        flags = sentence_start_flags(words, "precise")
        clips = sft_clips(words, min_clip_sec=mn, max_clip_sec=mx, max_empty_sec=gap)
        check_precise(clips, words, mn, mx, gap, "start")
        for c in clips:
            assert flags[next(k for k, w in enumerate(words) if w is c["words"][0])]


def test_one_word_per_second_precise_keeps_last_word_compat_drops_it():
    words = one_per_second(100)  # word k spans [k, k+1] s
    (p,) = pretrain_clips(words)
    assert (p["start"], p["end"], len(p["words"])) == (0.0, 100.0, 100)
    (c,) = pretrain_clips(words, mode="compat")
    assert (c["start"], c["end"], len(c["words"])) == (0.0, 99.0, 99)
    assert c["words"][-1]["text"] == "w98"


def test_one_word_per_second_max_split():
    words = one_per_second(300)
    p = pretrain_clips(words)
    assert [(c["start"], c["end"]) for c in p] == [(0.0, 240.0), (240.0, 300.0)]  # 240 s is inclusive
    assert p[1]["previous"] == " ".join(f"w{k}" for k in range(240))
    c = pretrain_clips(words, mode="compat")
    # the reference bounds end(last) - end(first) = 240, so the span is 241 s; the last word is lost
    assert [(x["start"], x["end"]) for x in c] == [(0.0, 241.0), (241.0, 299.0)]


@pytest.mark.parametrize("mode", ["precise", "compat"])
def test_empty_and_one_word(mode):
    assert pretrain_clips([], mode=mode) == []
    assert sft_clips([], mode=mode) == []
    assert pretrain_clips(words_at([(0, 0.5)]), mode=mode) == []
    assert sft_clips(words_at([(0, 0.5)]), mode=mode) == []
    assert pretrain_clips(words_at([(0, 0.5)]), min_clip_sec=0, mode=mode) == (
        [] if mode == "compat" else [{"start": 0.0, "end": 0.5, "words": words_at([(0, 0.5)]), "previous": ""}])


def test_one_word_longer_than_max_is_never_a_precise_clip():
    assert pretrain_clips(words_at([(0, 300)])) == []
    assert sft_clips(words_at([(0, 300)])) == []


@pytest.mark.parametrize("mode", ["precise", "compat"])
def test_gaps_over_max_empty_split_clips(mode):
    burst = lambda t0, n: [(t0 + k * 0.5, t0 + k * 0.5 + 0.5) for k in range(n)]  # noqa: E731
    # two 40 s bursts, 10 s of silence between them
    words = words_at(burst(0, 80) + burst(50, 80))
    clips = pretrain_clips(words, mode=mode)
    assert len(clips) == 2
    assert clips[0]["end"] <= 40 and clips[1]["start"] == 50.0
    # two 20 s bursts: nothing reaches 30 s
    assert pretrain_clips(words_at(burst(0, 40) + burst(30, 40)), mode=mode) == []


@pytest.mark.parametrize("mode", ["precise", "compat"])
def test_gap_exactly_at_threshold_is_allowed(mode):
    # 20 words 0-10 s, a gap of exactly 3 s between word ends, then 60 more words
    times = [(k * 0.5, k * 0.5 + 0.5) for k in range(20)] + [(13 + k * 0.5 - 0.5, 13 + k * 0.5) for k in range(60)]
    assert times[20][1] - times[19][1] == 3.0
    (clip,) = pretrain_clips(words_at(times), mode=mode)
    assert clip["start"] == 0.0
    shifted = times[:20] + [(s + 0.25, e + 0.25) for s, e in times[20:]]  # gap 3.25 s
    clips = pretrain_clips(words_at(shifted), mode=mode)
    assert all(c["start"] > 10 for c in clips)


def test_min_exactly_at_threshold():
    # precise: span first start -> last end; exactly 30 s is kept, 29.5 s is not
    assert len(pretrain_clips(one_per_second(30))) == 1
    assert pretrain_clips(words_at([(k, k + 1) for k in range(29)] + [(29, 29.5)])) == []
    # compat: end(j-1) - end(i) >= 30 over the words it keeps (all but the last)
    assert len(pretrain_clips(one_per_second(32), mode="compat")) == 1   # 31 - 1 = 30
    assert pretrain_clips(one_per_second(31), mode="compat") == []       # 30 - 1 = 29


# -- sentence starts -------------------------------------------------------------------------

def test_sentence_start_rule_both_modes():
    texts = ["Hi.", "The", "end?", "I", "ok!", "OK", "so.", "lower", 'said."', "Yes",
             "yes.", '"Wait', "no", "x!", "  B-1."]
    words = words_at([(k, k + 1) for k in range(len(texts))])
    for w, t in zip(words, texts):
        w["text"] = t
    compat = sentence_start_flags(words, "compat")
    precise = sentence_start_flags(words, "precise")
    starts = lambda flags: [t for t, f in zip(texts, flags) if f]  # noqa: E731
    assert starts(compat) == ["Hi.", "I", "OK", "  B-1."]           # whole-word isupper(); "The" fails
    assert starts(precise) == ["Hi.", "The", "I", "OK", "Yes", '"Wait', "  B-1."]
    assert sentence_start_flags([], "precise") == []


@pytest.mark.parametrize("mode,expected_start", [("compat", 40.0), ("precise", 20.0)])
def test_sft_clip_begins_only_at_sentence_start(mode, expected_start):
    texts = ["w"] * 100
    texts[0] = "lower"  # word 0 is always a start, but its run is too short (gap after word 10)
    texts[19], texts[20] = "done.", "The"     # a start in precise mode only
    texts[39], texts[40] = "done.", "I"       # a start in both modes
    times = [(k, k + 0.5) for k in range(10)] + [(k + 5, k + 5.5) for k in range(10, 100)]
    words = words_at(times)
    for w, t in zip(words, texts):
        w["text"] = t
    clips = sft_clips(words, mode=mode)
    assert clips and clips[0]["start"] == expected_start + 5


# -- WpsFilter --------------------------------------------------------------------------------

def clip_with(n_words, span, mode="compat"):
    """A CLIPS row whose words span exactly ``span`` s as ``mode`` measures it: first end to
    last end (compat), first start to last end (precise). Words last 0.1 s."""
    dur = 0.0 if span == 0 else 0.1
    inner = span - (dur if mode == "precise" else 0.0)
    step = inner / (n_words - 1) if n_words > 1 else 0.0
    words = [{"start": k * step, "end": k * step + dur, "text": f"w{k}"} for k in range(n_words)]
    return {"clip_id": schemas.clip_id("v", 0, span), "video_id": "v", "start": 0.0,
            "end": words[-1]["end"], "words": words}


def wps_stage(tmp_path, **cfg):
    ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/wps_filter", part=0)
    return WpsFilter(WpsFilter.Config(**cfg), ctx)


@pytest.mark.parametrize("mode,span_name", [("compat", "last.end - first.end"), ("precise", "last.end - first.start")])
def test_wps_filter_boundaries(tmp_path, mode, span_name):
    stage = wps_stage(tmp_path, mode=mode)
    # wps = len / span: 41 words / 41 s = 1.0, 41 / 10.25 = 4.0 (both kept)
    rows = [clip_with(41, 41.0, mode), clip_with(41, 10.25, mode), clip_with(41, 10.0, mode),
            clip_with(41, 41.5, mode), clip_with(1, 0.0, mode), {**clip_with(3, 2.0, mode), "words": []}]
    results = stage.process_batch(rows)
    kept = [r for res in results for r in res if not isinstance(r, Rejected)]
    rejected = [r for res in results for r in res if isinstance(r, Rejected)]
    assert [r["wps"] for r in kept] == pytest.approx([1.0, 4.0], abs=1e-12)
    assert [(r.reason, r.detail) for r in rejected] == [
        ("wps_out_of_range", "wps=4.10 > 4"),
        ("wps_out_of_range", "wps=0.99 < 1"),
        ("wps_zero_span", f"1 word(s), {span_name} = 0.000 s <= 0; wps undefined"),
        ("no_words", "clip has no words; wps undefined"),
    ]
    assert rejected[0].row["wps"] == pytest.approx(4.1)
    assert rejected[2].row is rows[4]
    schemas.rows_to_table(kept, schemas.CLIPS)
    schemas.rows_to_table([{**r.row, "reason": r.reason, "detail": r.detail} for r in rejected],
                          schemas.rejected_schema(schemas.CLIPS))
    assert words_per_second(rows[0]["words"], mode) == pytest.approx(1.0) and words_per_second([], mode) is None
    hists = WpsFilter.report_histograms
    assert {k: h.label for k, h in hists.items()} == {"wps": "words per second", "duration": "clip duration (s)"}
    table = schemas.rows_to_table(kept, schemas.CLIPS)
    assert hists["duration"].compute(table).to_pylist() == pytest.approx([r["end"] - r["start"] for r in kept])


def test_precise_wps_uses_the_clip_span_compat_the_reference_span(tmp_path, lesson_words):
    """precise: wps over end - start, the span the precise clipper bounds; compat: the
    reference's last.end - first.end, which leaves out the first word."""
    [clip] = pretrain_clips(lesson_words[:200], min_clip_sec=30, max_clip_sec=240, mode="precise")[:1]
    words = clip["words"]
    assert clip_span_s(words, "precise") == pytest.approx(clip["end"] - clip["start"])
    assert clip_span_s(words, "compat") == pytest.approx(words[-1]["end"] - words[0]["end"])
    precise = wps_stage(tmp_path, mode="precise").process_batch([{**clip, "clip_id": "c", "video_id": "v"}])[0][0]
    compat = wps_stage(tmp_path, mode="compat").process_batch([{**clip, "clip_id": "c", "video_id": "v"}])[0][0]
    assert precise["wps"] == pytest.approx(len(words) / (clip["end"] - clip["start"]))
    assert compat["wps"] == pytest.approx(len(words) / (words[-1]["end"] - words[0]["end"]))
    assert precise["wps"] < compat["wps"]
    with pytest.raises(ValueError, match="mode"):
        clip_span_s(words, "fast")
    with pytest.raises(ValueError, match="no words"):
        clip_span_s([], "precise")
    assert WpsFilter.Config().mode == "precise"


def test_wps_filter_thresholds_are_configurable(tmp_path):
    (res,) = wps_stage(tmp_path, min_wps=0.5, max_wps=0.9).process_batch([clip_with(41, 41.0)])
    assert isinstance(res[0], Rejected) and res[0].detail == "wps=1.00 > 0.9"
    with pytest.raises(ValidationError):
        WpsFilter.Config(min_wps=5, max_wps=4)


# -- the stages through process_batch ----------------------------------------------------------

def transcript_row(video_id, words, **extra):
    row = {"video_id": video_id, "source": "local", "url": f"https://www.youtube.com/watch?v={video_id}",
           "title": "An English lesson", "categories": ["Education", "People & Blogs"], "words": words,
           "transcript_source": "cc", "media_path": None, "has_audio": None}
    row.update(extra)
    return row


def clip_stage(cls, tmp_path, **cfg):
    ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir=f"c/{cls.name}", part=0)
    return cls(cls.Config(**cfg), ctx)


@pytest.mark.parametrize("mode", ["precise", "compat"])
def test_pretrain_clip_stage_process_batch(tmp_path, lesson_words, mode):
    rows = [
        transcript_row("lesson01", lesson_words),
        transcript_row("withmedia", lesson_words[:400], media_path="/media/withmedia.mp4", has_audio=True,
                       categories=None),
        transcript_row("short", lesson_words[:20]),
        transcript_row("nowords", []),
        transcript_row("badword", [{"start": 1.0, "end": float("nan"), "text": "x"}]),
        transcript_row("nostart", [{"end": 2.0, "text": "a"}]),
        transcript_row("unsorted", [{"start": 2.0, "end": 3.0, "text": "a"}, {"start": 1.0, "end": 2.0, "text": "b"}]),
    ]
    stage = clip_stage(PretrainClip, tmp_path, mode=mode)
    results = stage.process_batch(rows)
    assert len(results) == len(rows)
    lesson, media, short, nowords, bad, nostart, unsorted = results
    assert lesson == [r for r in lesson if not isinstance(r, Rejected)] and len(lesson) >= 3
    expected = pretrain_clips(lesson_words, mode=mode)
    assert [(r["start"], r["end"]) for r in lesson] == [(c["start"], c["end"]) for c in expected]
    first = lesson[0]
    assert first["clip_id"] == f"lesson01_{round(first['start'] * 1000)}_{round(first['end'] * 1000)}"
    assert first["category"] == "Education" and first["media_offset"] is None
    assert first["title"] == "An English lesson" and first["transcript_source"] == "cc"
    assert lesson[1]["previous"].startswith("hey in today's lesson")
    assert all(r["media_offset"] == 0.0 and r["has_audio"] is True and r["category"] is None for r in media)
    for res, why in [(short, "20 words spanning"), (nowords, "no words")]:
        (rej,) = res
        assert isinstance(rej, Rejected) and rej.reason == "no_clip" and why in rej.detail
    assert short[0].row is rows[2]
    assert isinstance(bad, ValueError) and "words[0] has bad times" in str(bad)
    assert isinstance(nostart, ValueError) and "not a {start, end, text} record" in str(nostart)
    assert isinstance(unsorted, ValueError) and "must be sorted" in str(unsorted)
    table = schemas.rows_to_table(lesson + media, schemas.CLIPS)
    assert table.num_rows == len(lesson) + len(media)
    assert len(set(table.column("clip_id").to_pylist())) == table.num_rows
    schemas.rows_to_table([{**r.row, "reason": r.reason, "detail": r.detail} for r in (short[0], nowords[0])],
                          schemas.rejected_schema(schemas.TRANSCRIPTS))
    # the clips feed the wps filter
    wps = [r for res in wps_stage(tmp_path).process_batch(lesson) for r in res]
    schemas.rows_to_table([r for r in wps if not isinstance(r, Rejected)], schemas.CLIPS)
    assert all(r.row["wps"] is not None for r in wps if isinstance(r, Rejected))


def test_no_clip_detail_names_gaps(tmp_path):
    burst = [(k * 0.5, k * 0.5 + 0.5) for k in range(40)]
    words = words_at(burst + [(s + 30, e + 30) for s, e in burst])
    ((rej,),) = clip_stage(PretrainClip, tmp_path).process_batch([transcript_row("gappy", words)])
    assert rej.reason == "no_clip"
    assert rej.detail.startswith("80 words spanning 50.0 s; 1 gap(s) > 3 s between word ends; "
                                 "longest run without one 20.0 s")


def test_sft_clip_stage(tmp_path):
    words = whisper_words()
    stage = clip_stage(SftClip, tmp_path, min_clip_sec=5, max_clip_sec=20, max_empty_sec=2)
    (res, short) = stage.process_batch([transcript_row("apollo11", words, transcript_source="whisperx"),
                                       transcript_row("few", words[:5])])
    assert len(res) > 2 and all(not isinstance(r, Rejected) for r in res)
    assert all(5 <= r["end"] - r["start"] <= 20 for r in res)
    assert res[1]["previous"] == " ".join(w["text"].strip() for w in words[:words.index(res[1]["words"][0])])
    schemas.rows_to_table(res, schemas.CLIPS)
    (rej,) = short
    assert rej.reason == "no_clip" and rej.detail.endswith("2 sentence start(s)")  # "Apollo", "We"
    assert SftClip.name == "sft_clip" and PretrainClip.name == "pretrain_clip"
    assert SftClip.report_histograms == PretrainClip.report_histograms
    assert PretrainClip.report_histograms["duration"].columns == ("start", "end")


@pytest.mark.parametrize("mode,decimals", [("precise", 3), ("compat", 1)])
@pytest.mark.parametrize("caption", ["videogrep_manifesto_auto.en.vtt", "videogrep_manifesto.en.srt",
                                     "longson_jackaskew_N0gZFvpxNhQ_manual.en.vtt",
                                     "ytenglishhub_english_lesson_asr.en.json3"])
def test_times_in_the_conversation_record_are_clean_numbers(caption, mode, decimals):
    """Clip bounds and word times reach the shards and the JSONL as ms (precise) or the
    reference's 0.1 s (compat), never as 78.96000000000001."""
    import re

    from stages.caption_parse import detect_format, parse_caption

    text = fixture_path("captions", caption).read_text(encoding="utf-8")
    words, _ = parse_caption(text, detect_format(text), mode, kind="auto" if "auto" in caption else "manual")
    clips = pretrain_clips(words, min_clip_sec=20, mode=mode)
    assert clips
    for clip in clips:
        row = clip_row({"video_id": "v", "categories": []}, clip)
        line = json.dumps(conversation(row, "v.mp4"))
        numbers = re.findall(r"(?<![\w.])-?\d+\.\d+(?:e-?\d+)?", line)
        assert numbers and all(len(n.split(".")[1]) <= decimals and "e" not in n for n in numbers), line[:300]


def test_clip_config_validation():
    with pytest.raises(ValidationError):
        PretrainClip.Config(min_clip_sec=300)
    with pytest.raises(ValidationError):
        SftClip.Config(mode="exact")
    with pytest.raises(ValidationError):
        PretrainClip.Config(max_words=3)
