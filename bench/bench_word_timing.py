"""Word-end accuracy of precise caption parsing against acoustic word times.

Words: ``videogrep_manifesto_auto.en.vtt`` (a real YouTube auto caption, inline word starts)
parsed by ``stages.caption_parse`` in ``precise`` mode; reference: the independent recogniser's
word times of the same audio (``videogrep_manifesto_vosk_words.json``, Vosk), matched by
sequence alignment of the normalised words (``tests/word_timing.py``).
Baseline, same run, same parser: ``max_word_sec=None``, the rule precise mode used before,
where a word lasts until the next word's start (or its cue's end).

Prints one line:
    bench word_timing: ratio=<end MAE ours / end MAE of the next-word-start rule> target=0.7 (...)

Lower is better. Quality, not speed: the figure does not depend on the machine's load.
Run: python bench/bench_word_timing.py   (under a second)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.caption_parse import MAX_WORD_SEC, parse_caption  # noqa: E402
from tests.word_timing import end_errors, vosk_words  # noqa: E402

FIXTURES = Path(os.environ.get("LIVECC_FIXTURES", REPO.parent / "shared" / "fixtures"))
CAPTION = FIXTURES / "captions" / "videogrep_manifesto_auto.en.vtt"
VOSK = FIXTURES / "captions" / "videogrep_manifesto_vosk_words.json"


def main() -> None:
    if len(sys.argv) > 1:  # scripts/bench passes the same arguments to every bench
        print(f"bench_word_timing: ignoring arguments {sys.argv[1:]}", file=sys.stderr)
    text = CAPTION.read_text(encoding="utf-8")
    reference = vosk_words(VOSK)
    ours = end_errors(parse_caption(text, "vtt", kind="auto")[0], reference)
    baseline = end_errors(parse_caption(text, "vtt", kind="auto", max_word_sec=None)[0], reference)
    print(f"bench word_timing: ratio={ours.mae_s / baseline.mae_s:.2f} target=0.7 "
          f"(manifesto auto-VTT vs Vosk, {ours.matched} words aligned; end MAE {ours.mae_s:.3f} s, "
          f"{100 * ours.over():.1f}% > 0.5 s off, worst {ours.max_s:.2f} s with the spoken-duration "
          f"estimate, max_word_sec {MAX_WORD_SEC:g}; next-word-start rule {baseline.mae_s:.3f} s, "
          f"{100 * baseline.over():.1f}% > 0.5 s off, worst {baseline.max_s:.2f} s)")


if __name__ == "__main__":
    main()
