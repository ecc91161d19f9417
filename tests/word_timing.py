"""Word times against an independent recogniser: sequence alignment of normalised words and
the error of word ends. Shared by the caption and transcribe tests and ``bench/bench_word_timing.py``."""
from __future__ import annotations

import difflib
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path


def normalise(text: str) -> str:
    """Lower case, letters, digits and apostrophes only: ``"Workers,"`` -> ``"workers"``."""
    return re.sub(r"[^\w']", "", text.lower())


def vosk_words(path: str | Path) -> list[dict]:
    """``[{"start", "end", "text"}]`` from a videogrep/Vosk transcript
    (``[{"content", "start", "end", "words": [{"word", "start", "end", "conf"}]}]``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [{"start": w["start"], "end": w["end"], "text": w["word"]} for seg in data for w in seg["words"]]


def align(ours: list[dict], ref: list[dict]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` of words equal after :func:`normalise`, in the longest matching
    blocks of the two sequences (difflib, no junk heuristic)."""
    a = [normalise(w["text"]) for w in ours]
    b = [normalise(w["text"]) for w in ref]
    blocks = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks()
    return [(i + k, j + k) for i, j, n in blocks for k in range(n)]


@dataclass
class EndErrors:
    """Errors of word ends (ours - reference, s) over the aligned words."""

    errors: list[float]
    n_ours: int
    n_ref: int

    @property
    def matched(self) -> int:
        return len(self.errors)

    @property
    def mae_s(self) -> float:
        return statistics.mean(map(abs, self.errors))

    @property
    def max_s(self) -> float:
        return max(map(abs, self.errors))

    def over(self, limit_s: float = 0.5) -> float:
        """Fraction of matched ends more than ``limit_s`` off."""
        return sum(abs(e) > limit_s for e in self.errors) / len(self.errors)

    def summary(self) -> str:
        return (f"{self.matched} of {self.n_ours} words matched to {self.n_ref} reference words; end MAE "
                f"{self.mae_s:.3f} s, {100 * self.over():.1f}% > 0.5 s off, worst {self.max_s:.2f} s")


def end_errors(ours: list[dict], ref: list[dict]) -> EndErrors:
    """Word-end errors of ``ours`` against ``ref`` over the words :func:`align` matches."""
    pairs = align(ours, ref)
    if not pairs:
        raise ValueError("no word of the two transcripts matches")
    return EndErrors([ours[i]["end"] - ref[j]["end"] for i, j in pairs], len(ours), len(ref))
