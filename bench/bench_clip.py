"""Clipping throughput (words/s) of stages/clip.py against the reference loops.

Words: the 20-minute json3 lesson in ../shared/fixtures (about 2,700 words), parsed here with a
minimal json3 reader (start = tStartMs + tOffsetMs; end = next start capped by the event end).
Baseline: the reference functions re-typed below, run on the same words in the same process.

Prints one line per figure:
    bench clip_throughput: ratio=<ours / reference, the slower of precise and compat> target=1.0 (...)
    bench sft_clip_throughput: ratio=... target=1.0 (...)

Run: python bench/bench_clip.py   (about 10 s)
"""
from __future__ import annotations

import os
import sys
import time
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.caption_parse import parse_json3
from stages.clip import pretrain_clips, sft_clips  # noqa: E402

FIXTURES = Path(os.environ.get("LIVECC_FIXTURES", REPO.parent / "shared" / "fixtures"))
LESSON = FIXTURES / "captions" / "ytenglishhub_english_lesson_asr.en.json3"
REPEATS = 100   # clippings per timed round
ROUNDS = 5      # best round counts (the machine is shared)


# -- baseline: the loop of clip4pretrain in showlab/livecc data/production/pretrain_to_clips.py,
# re-typed with the same operations (generator join for the context, list words) --
def reference_clip4pretrain(datum: dict, args):
    words, title = datum["content"], datum["title"]
    clips, contexts, i = [], [], 0
    while i < len(words):
        j = None
        for j in range(i + 1, len(words)):
            if words[j][1] - words[i][1] > args.max_clip_sec:
                break
            if words[j][1] - words[j - 1][1] > args.max_empty_sec:
                break
        if j is not None and j > i and words[j - 1][1] - words[i][1] >= args.min_clip_sec:
            clips.append(words[i:j])
            contexts.append(" ".join(word[2] for word in words[:i]))
        if j is not None:
            i = j
        else:
            break
    return [{"video": datum["video"], "content": clip, "previous": context, "title": title,
             "category": datum["category"]} for clip, context in zip(clips, contexts)]


# -- baseline: clipping() in showlab/livecc data/production/sft_to_clips.py, re-typed with the
# same operations, except that it receives the parsed datum instead of a JSON line, so
# json.loads is not timed --
def reference_sft_clipping(datum: dict, min_clip_sec=30, max_clip_sec=240, max_silence_sec=3):
    words, title = datum["content"], datum["title"]
    clips, preasrs, i = [], [], 0
    while i < len(words):
        can_be_start = (i == 0) or (any(words[i - 1][-1].endswith(e) for e in [".", "?", "!"])
                                    and words[i][-1].isupper())
        if not can_be_start:
            i += 1
            continue
        j = None
        for j in range(i + 1, len(words)):
            if words[j][0] - words[i][0] > max_clip_sec:
                break
            if words[j][0] - words[j - 1][0] > max_silence_sec:
                break
        if j is not None and j > i and words[j - 1][0] - words[i][0] >= min_clip_sec:
            clips.append(words[i:j])
            preasrs.append(" ".join(word[2].strip() for word in words[:i]))
        if j is not None:
            i = j
        else:
            break
    return [{"video": datum["video"], "content": clip, "preasr": preasr, "title": title,
             "category": datum["category"]} for clip, preasr in zip(clips, preasrs)]




def best_seconds(fn) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(REPEATS):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best


def figure(name: str, n_words: int, timings: dict[str, float]) -> str:
    rate = {k: n_words * REPEATS / v for k, v in timings.items()}
    ratio = min(rate["precise"], rate["compat"]) / rate["reference"]
    details = ", ".join(f"{k} {v / 1e6:.2f}M words/s" for k, v in rate.items())
    return (f"bench {name}: ratio={ratio:.2f} target=1.0 "
            f"({n_words} json3 words x {REPEATS}, best of {ROUNDS} rounds: {details})")


def main() -> None:
    if not LESSON.exists():
        sys.exit(f"fixture {LESSON} not found (set LIVECC_FIXTURES to ../shared/fixtures)")
    words = parse_json3(LESSON.read_text(encoding="utf-8"))
    datum = {"video": "lesson", "title": "lesson", "category": "Education",
             "content": [[w["start"], w["end"], w["text"]] for w in words]}
    args = Namespace(min_clip_sec=30, max_clip_sec=240, max_empty_sec=3)

    # same words, same clips: compat must reproduce the baseline before its speed counts
    ref = reference_clip4pretrain(datum, args)
    ours = pretrain_clips(words, mode="compat")
    assert [c["content"] for c in ref] == [[[w["start"], w["end"], w["text"]] for w in c["words"]] for c in ours]
    assert [c["previous"] for c in ref] == [c["previous"] for c in ours]
    ref_sft = reference_sft_clipping(datum)
    assert [c["preasr"] for c in ref_sft] == [c["previous"] for c in sft_clips(words, mode="compat")]

    print(figure("clip_throughput", len(words), {
        "reference": best_seconds(lambda: reference_clip4pretrain(datum, args)),
        "compat": best_seconds(lambda: pretrain_clips(words, mode="compat")),
        "precise": best_seconds(lambda: pretrain_clips(words, mode="precise")),
    }))
    print(figure("sft_clip_throughput", len(words), {
        "reference": best_seconds(lambda: reference_sft_clipping(datum)),
        "compat": best_seconds(lambda: sft_clips(words, mode="compat")),
        "precise": best_seconds(lambda: sft_clips(words, mode="precise")),
    }))


if __name__ == "__main__":
    main()
