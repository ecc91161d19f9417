"""LM-loss throughput (clips/s): the stage (clips of a video on one cached prefix, the rest in
length-bucketed batches) against the reference's batch-1 loop, on the same clips, with the same
tiny random Qwen2 on CPU.

Clips: every English caption fixture in ../shared/fixtures cut by the pre-training clipper
(30-240 s, and again with 60 s clips for more, shorter ones), each with its title and previous
transcription, as the stage receives them.

Baseline: ``pure_lm_loss`` of showlab/livecc ``data/production/lm_loss.py`` re-typed below: one
clip at a time, ``apply_chat_template`` + ``[a+2:-2]`` labels, a full forward with logits for every
position, the reference's loss function. Ours: :class:`stages.lm_loss.LossScorer` as the stage
runs it (encode each clip; a video's clips on one cached prefix; the rest in length-sorted
batches of <= 16,384 padded tokens, right padding; LM head only on scored positions), and once
more with batching alone (no prefix sharing). All timed from clip rows to losses; the losses
must agree to 1e-4.

Prints:
    bench lm_loss_throughput: ratio=<ours / reference, clips/s> target=3.0 (... batching alone ...)

Run: python bench/bench_lm_loss.py   (about a minute on a quiet 2-core machine)
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from stages.caption_parse import decode_caption, detect_format, parse_caption  # noqa: E402
from stages.clip import clip_row, pretrain_clips  # noqa: E402
from stages.lm_loss import LossScorer, chat_messages, clip_text  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402
from tests.langid_set import ENGLISH_CAPTIONS  # noqa: E402
from tests.tiny_qwen2 import build_tiny_qwen2  # noqa: E402

ROUNDS = 3   # best round counts (the machine is shared)


def fixture_clips() -> list[dict]:
    rows = []
    for name in ENGLISH_CAPTIONS:
        path = FIXTURES / "captions" / name
        if not path.exists():
            continue
        raw = decode_caption(path.read_bytes())
        words, _ = parse_caption(raw, detect_format(raw))
        for max_clip_sec in (240.0, 60.0):
            rows += [clip_row({"video_id": name[:16], "title": name.split(".")[0]}, c)
                     for c in pretrain_clips(words, max_clip_sec=max_clip_sec)]
    return rows


# -- baseline: the loop of pure_lm_loss() in showlab/livecc data/production/lm_loss.py, re-typed
# (batch 1, labels from the assistant token, full logits, the reference's loss function) --
def reference_loss_function(logits, labels, vocab_size, ignore_index=-100):
    logits = logits.float()
    labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
    shift_labels = labels[..., 1:].contiguous()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab_size), shift_labels.view(-1),
                                             ignore_index=ignore_index, reduction="none")
    return loss.view_as(shift_labels).sum(dim=-1) / (shift_labels > 0).sum(dim=-1)


def reference_loop(model, tokenizer, rows) -> list[float]:
    im_start_id, assistant_id = tokenizer("<|im_start|>assistant").input_ids
    out = []
    for row in rows:
        conversation = chat_messages(row["title"], row["previous"], clip_text(row["words"]))
        inputs = tokenizer.apply_chat_template([conversation], return_tensors="pt", padding=True,
                                               return_dict=True, truncation=True)
        input_ids = inputs["input_ids"]
        labels = torch.full_like(input_ids, -100)
        for b, a in torch.argwhere(input_ids == assistant_id):
            if input_ids[b, a - 1] == im_start_id:
                labels[b, a + 2:-2] = input_ids[b, a + 2:-2]
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=inputs["attention_mask"]).logits
            out += reference_loss_function(logits, labels, logits.shape[-1]).tolist()
    return out


def ours(scorer: LossScorer, rows, share_prefix: bool = True) -> list[float]:
    encoded = [scorer.encode(r["title"], r["previous"], clip_text(r["words"])) for r in rows]
    return scorer.losses(encoded, groups=[r["video_id"] for r in rows] if share_prefix else None)


def best_of(fn, *args):
    best, result = float("inf"), None
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    rows = fixture_clips()
    if not rows:
        print("bench lm_loss_throughput: skipped (no caption fixtures in ../shared/fixtures)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_qwen2(Path(tmp) / "tiny-qwen2")
        scorer = LossScorer.load(str(folder), device="cpu")
    ours(scorer, rows[:2])  # warm-up
    t_ref, ref = best_of(reference_loop, scorer.model, scorer.tokenizer, rows)
    t_ours, got = best_of(ours, scorer, rows)
    t_buckets, got_buckets = best_of(ours, scorer, rows, False)
    worst = max(abs(a - b) for a, b in [*zip(ref, got), *zip(ref, got_buckets)])
    assert worst < 1e-4, f"losses differ from the reference loop by {worst}"
    tokens = sum(len(scorer.encode(r["title"], r["previous"], clip_text(r["words"])).input_ids) for r in rows)
    print(f"bench lm_loss_throughput: ratio={t_ref / t_ours:.2f} target=3.0 "
          f"({len(rows)} fixture clips, {tokens} tokens with titles and previous transcriptions; "
          f"{len(rows) / t_ours:.1f} clips/s (prefix sharing + buckets) vs {len(rows) / t_ref:.1f} clips/s "
          f"batch-1 reference loop; batching alone: ratio {t_ref / t_buckets:.2f}; "
          f"tiny random Qwen2 (2 layers, hidden 64) on CPU, {torch.get_num_threads()} threads; "
          f"max |loss difference| {worst:.1e})")


if __name__ == "__main__":
    main()
