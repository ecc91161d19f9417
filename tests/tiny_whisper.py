"""A tiny, randomly initialised Whisper checkpoint in CTranslate2 format, built locally.

Exercises the real faster-whisper code path (VAD, features, language detection, batched
beam search, cross-attention word timing) without downloading weights:

* a byte-level BPE tokenizer trained on a few fixture transcripts, laid out like Whisper's
  multilingual vocabulary: 50,256 text tokens (unused ids filled with ``Ġw<i>`` tokens no
  merge produces), the empty token at id 50,256, then ``<|endoftext|>``, ``<|startoftranscript|>``,
  the 100 language tokens, task/prev/nospeech/notimestamps tokens and 1,501 timestamp
  tokens: 51,866 ids, as ``large-v3``. CTranslate2 derives "multilingual" and the number of
  languages from this layout, so it must match;
* a ``transformers`` ``WhisperForConditionalGeneration`` with a small config (2+2 layers,
  d_model 64, 80 mel bins), seeded;
* converted with CTranslate2's ``TransformersConverter``, copying ``tokenizer.json`` and
  ``preprocessor_config.json`` so faster-whisper never reaches for the Hub.

Its output text is garbage (random weights); the tests check structure and timing.
"""
from __future__ import annotations

import json
from pathlib import Path

#: Whisper multilingual layout (large-v3): text tokens before <|endoftext|>.
N_TEXT_TOKENS = 50257


def build_tiny_whisper(out_dir: Path, seed: int = 0) -> Path:
    """Build the checkpoint under ``out_dir`` (``out_dir/ct2`` is returned; ``out_dir/hf`` holds
    the transformers model it was converted from). Takes ~15 s, mostly importing torch."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, PreTrainedTokenizerFast, WhisperConfig,
                              WhisperFeatureExtractor, WhisperForConditionalGeneration)

    from tests.conftest import FIXTURES

    hf_dir, ct2_dir = out_dir / "hf", out_dir / "ct2"
    corpus = [line for p in sorted((FIXTURES / "audio").glob("*.ref.txt"))
              for line in p.read_text().splitlines()]
    srt = FIXTURES / "captions" / "videogrep_manifesto.en.srt"
    if srt.exists():
        corpus += srt.read_text().splitlines()

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    state = json.loads(bpe.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    i = 0
    while len(vocab) < N_TEXT_TOKENS - 1:
        vocab[f"\u0120w{i}"] = len(vocab)  # " w<i>": a word of its own when decoded
        i += 1
    vocab[""] = len(vocab)  # CTranslate2 treats a vocabulary holding "" as multilingual
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in _LANGUAGE_CODES]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                   "<|notimestamps|>"] + ["<|%.2f|>" % (k * 0.02) for k in range(1501)])
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    ids = {s: tok.token_to_id(s) for s in specials}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    assert eot == N_TEXT_TOKENS, eot

    hf_dir.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(hf_dir)
    config = WhisperConfig(
        vocab_size=tok.get_vocab_size(), num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, decoder_start_token_id=sot,
        eos_token_id=eot, pad_token_id=eot, bos_token_id=eot)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, suppress_tokens=[],
        begin_suppress_tokens=[eot], alignment_heads=[[1, 0], [1, 1]], is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in _LANGUAGE_CODES},
        no_timestamps_token_id=ids["<|notimestamps|>"])
    model.save_pretrained(hf_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)
    TransformersConverter(str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
        str(ct2_dir), force=True)
    return ct2_dir


_CACHE: dict[str, Path] = {}


def tiny_whisper_dir(tmp_path_factory) -> Path:
    """The checkpoint folder, built once per test session (shared by every test module)."""
    if "ct2" not in _CACHE:
        _CACHE["ct2"] = build_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))
    return _CACHE["ct2"]
