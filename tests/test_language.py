"""language stage: the offline default (py3langid) on real English fixture transcripts and real
non-English text (the pinchflat info.json's German and French caption tracks; the system's
gettext catalogs in 30 languages when present, see tests/langid_set.py), the decision rule,
Whisper's language, the transformers backend with a tiny random classifier, and the
reference's xlm-roberta classifier when its weights are here."""
from __future__ import annotations

import pytest

from pipeline.stage import Rejected, StageContext
from pipeline.storage import Storage
from stages.clip import clip_row
from stages.language import REFERENCE_MODEL, LanguageConfig, LanguageFilter, decide, make_detector
from stages.models import MissingWeightsError
from tests.langid_set import english_samples, gettext_samples, pinchflat_samples

#: the papluca classifier's labels (its config.json id2label)
PAPLUCA_LABELS = ["ja", "nl", "ar", "pl", "de", "it", "pt", "tr", "es", "hi", "el", "ur", "bg", "en", "fr", "zh",
                  "ru", "th", "sw", "vi"]


def make_stage(tmp_path, **config) -> LanguageFilter:
    ctx = StageContext(storage=Storage(str(tmp_path)), corpus="c", stage_dir="c/language")
    st = LanguageFilter(LanguageConfig(**config), ctx)
    st.setup()
    return st


def clip(text: str, k: int = 0, **extra) -> dict:
    words = [{"start": float(i), "end": i + 0.5, "text": w} for i, w in enumerate(text.split())]
    return {"clip_id": f"v{k}_0_{len(words)}", "video_id": f"v{k}", "start": 0.0, "end": float(len(words)),
            "words": words, "previous": "", "title": "t", "transcript_source": "cc", **extra}


def decisions(stage, samples):
    out = stage.process_batch([clip(s.text, k) for k, s in enumerate(samples)])
    return [r[0] for r in out]


def test_english_fixture_transcripts_are_kept_and_non_english_rejected(tmp_path):
    english, foreign = english_samples(), pinchflat_samples()
    assert len(english) >= 60 and {s.lang for s in foreign} == {"de", "fr"} and len(foreign) >= 30
    stage = make_stage(tmp_path)
    kept = decisions(stage, english)
    assert all(isinstance(r, dict) and r["lang"] == "en" and r["lang_score"] >= 0.9 for r in kept), \
        [(s.source, getattr(r, "detail", "")) for s, r in zip(english, kept) if not isinstance(r, dict)]
    dropped = decisions(stage, foreign)
    for s, r in zip(foreign, dropped):
        assert isinstance(r, Rejected) and r.reason == "language", (s.source, r)
        assert r.row["lang"] == s.lang and 0.0 < r.row["lang_score"] <= 1.0 and s.lang in r.detail


def test_gettext_catalogs_in_thirty_languages(tmp_path):
    samples = gettext_samples(chars=360)
    if not samples:
        pytest.skip("no gettext catalogs under /usr/share/locale (gtk20-properties.mo, glib20.mo) on this machine")
    stage = make_stage(tmp_path)
    results = decisions(stage, samples)
    right = sum(isinstance(r, dict) == (s.lang == "en") for s, r in zip(samples, results))
    assert len({s.lang for s in samples}) >= 20
    assert right >= 0.97 * len(samples), [(s.source, r.reason if isinstance(r, Rejected) else "kept")
                                          for s, r in zip(samples, results) if isinstance(r, dict) != (s.lang == "en")]


def test_code_switched_clip_is_uncertain_and_every_row_records_its_language(tmp_path):
    english, german = english_samples(), [s for s in pinchflat_samples() if s.lang == "de"]
    stage = make_stage(tmp_path)
    mixes = []
    for a, b in zip(english, german):
        wa, wb = a.text.split(), b.text.split()
        mixes.append(" ".join(wa[:len(wa) // 2] + wb[:len(wb) // 2]))
    out = [r[0] for r in stage.process_batch([clip(t, k) for k, t in enumerate(mixes)])]
    reasons = {r.reason for r in out if isinstance(r, Rejected)}
    assert "language_uncertain" in reasons  # half English, half German: English, but not at 0.9
    for r in out:
        row = r if isinstance(r, dict) else r.row
        assert row["lang"] and 0.0 <= row["lang_score"] <= 1.0
    unsure = next(r for r in out if isinstance(r, Rejected) and r.reason == "language_uncertain")
    assert unsure.row["lang"] == "en" and unsure.row["lang_score"] < 0.9 and "< 0.9" in unsure.detail
    empty = stage.process_batch([{**clip("x"), "words": []}])[0][0]
    assert isinstance(empty, Rejected) and empty.reason == "no_words"


def test_decision_rule_and_thresholds():
    row = {"clip_id": "c"}
    assert decide(row, "en", 0.95, "en", 0.9, "d") == [{"clip_id": "c", "lang": "en", "lang_score": 0.95}]
    assert decide(row, "EN", 0.9, "en", 0.9, "d")[0]["lang"] == "en"  # the bound is kept (>=)
    (r,) = decide(row, "en", 0.89, "en", 0.9, "d")
    assert r.reason == "language_uncertain" and r.row["lang_score"] == 0.89
    (r,) = decide(row, "fr", 0.99, "en", 0.9, "d")
    assert r.reason == "language" and "fr" in r.detail
    assert isinstance(decide(row, "fr", 0.99, "fr", 0.9, "d")[0], dict)  # another target language
    assert LanguageConfig().min_score == 0.9 and LanguageConfig().language == "en"
    assert LanguageConfig(device="cuda", batch_size=8).hash_payload() == LanguageConfig().hash_payload()


def test_whisper_language_reaches_clips_and_decides_only_when_asked(tmp_path):
    words = [{"start": float(i), "end": i + 0.5, "text": w} for i, w in enumerate(
        "today we mark the board and cut every piece with a saw".split())]
    whisper = {"video_id": "w1", "title": "t", "transcript_source": "whisperx", "language": "de", "lang_score": 0.97}
    captions = {"video_id": "c1", "title": "t", "transcript_source": "cc", "language": "en", "lang_score": None}
    c = {"start": 0.0, "end": 11.5, "words": words, "previous": ""}
    w_clip, c_clip = clip_row(whisper, c), clip_row(captions, c)
    assert (w_clip["lang"], w_clip["lang_score"]) == ("de", 0.97)
    assert (c_clip["lang"], c_clip["lang_score"]) == (None, None)  # a caption label is not a detection
    by_text = make_stage(tmp_path).process_batch([w_clip, c_clip])
    assert [r[0]["lang"] for r in by_text] == ["en", "en"]  # the text detector decides by default
    by_whisper = make_stage(tmp_path, use_transcript_language=True).process_batch([w_clip, c_clip])
    assert isinstance(by_whisper[0][0], Rejected) and by_whisper[0][0].reason == "language"
    assert "Whisper" in by_whisper[0][0].detail and by_whisper[0][0].row["lang_score"] == 0.97
    assert by_whisper[1][0]["lang"] == "en"  # no Whisper language: detected from the text


# -- the transformers backend ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A randomly initialised XLM-RoBERTa sequence classifier with the papluca labels and a BPE
    tokenizer trained on fixture text, saved as a checkpoint folder."""
    pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    texts = [s.text for s in english_samples()[:10] + pinchflat_samples()[:10]]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                       special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
    tok = XLMRobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                  cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                  model_max_length=128)  # the real one: 512 of its 514 positions
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                              id2label=dict(enumerate(PAPLUCA_LABELS)),
                              label2id={lab: i for i, lab in enumerate(PAPLUCA_LABELS)})
    out = tmp_path_factory.mktemp("xlmr") / "tiny-language-detection"
    XLMRobertaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_transformers_backend_runs_a_classifier_checkpoint_batched(tiny_classifier, tmp_path):
    samples = english_samples()[:5] + pinchflat_samples()[:4]
    stage = make_stage(tmp_path, backend="transformers", model=str(tiny_classifier), device="cpu", batch_size=4,
                       min_score=0.0)
    out = [r[0] for r in stage.process_batch([clip(s.text, k) for k, s in enumerate(samples)])]
    for r in out:  # random weights: any label, but a label of the checkpoint with a softmax score
        row = r if isinstance(r, dict) else r.row
        assert row["lang"] in PAPLUCA_LABELS and 0.0 < row["lang_score"] <= 1.0
        assert isinstance(r, dict) == (row["lang"] == "en")
    # batching does not change a result (long texts are truncated to the model's length, as the reference)
    alone = [stage.detector.detect([s.text])[0] for s in samples[:3]]
    together = stage.detector.detect([s.text for s in samples[:3]])
    assert [a[0] for a in alone] == [b[0] for b in together]
    assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(alone, together))


def test_transformers_backend_without_weights_names_the_download(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")
    import huggingface_hub.constants

    monkeypatch.delenv("LIVECC_MODEL_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(MissingWeightsError) as err:
        make_stage(tmp_path, backend="transformers", model_dir=str(tmp_path / "models"))
    assert (f"huggingface-cli download {REFERENCE_MODEL} --local-dir "
            f"{tmp_path / 'models' / 'xlm-roberta-base-language-detection'}") in str(err.value)


def test_reference_classifier_when_its_weights_are_present():
    pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")
    try:
        detector = make_detector("transformers", device="cpu")
    except MissingWeightsError as exc:
        pytest.skip(f"{REFERENCE_MODEL} is not on this machine: {exc}")
    english, foreign = english_samples()[:20], pinchflat_samples()
    found = detector.detect([s.text for s in english + foreign])
    assert sum(lang == "en" and score >= 0.9 for lang, score in found[:len(english)]) >= 0.95 * len(english)
    assert all(lang == s.lang for (lang, _), s in zip(found[len(english):], foreign))
