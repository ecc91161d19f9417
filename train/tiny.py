"""A tiny, randomly initialised Qwen2-VL built offline: for tests, benchmarks and smoke runs.

Nothing is downloaded. The tokenizer is a small byte-level BPE trained on the given texts with
the Qwen2 pre-tokenizer rule and the Qwen chat special tokens (``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``,
``<|video_pad|>``), wrapped in ``Qwen2TokenizerFast``; the image processor is the real
``Qwen2VLImageProcessor``; the model is the real ``Qwen2VLForConditionalGeneration`` with a
small ``Qwen2VLConfig`` whose vision-token ids match the tokenizer.
"""
from __future__ import annotations

from typing import Iterable

from train.collator import QWEN2VL_CHAT_TEMPLATE, StreamProcessor

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
#: Qwen2's pre-tokenisation rule (contractions, letters, single digits, punctuation, newlines, spaces).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
_BASE_TEXTS = ["system", "You are a helpful assistant.", "user", "assistant", "Time=0.0-3.0s Time=12.5-13.5s ...",
               "0 1 2 3 4 5 6 7 8 9 . , - = ? ! ' \""]


def tiny_tokenizer(texts: Iterable[str] = (), vocab_size: int = 600):
    """A ``Qwen2TokenizerFast`` with a BPE vocabulary of at most ``vocab_size`` trained on ``texts``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(_BASE_TEXTS) + list(texts), trainer)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = QWEN2VL_CHAT_TEMPLATE
    return tokenizer


def tiny_processor(texts: Iterable[str] = (), vocab_size: int = 600) -> StreamProcessor:
    """:class:`StreamProcessor` over :func:`tiny_tokenizer` and a default ``Qwen2VLImageProcessor``."""
    from transformers import Qwen2VLImageProcessor

    return StreamProcessor(tiny_tokenizer(texts, vocab_size), Qwen2VLImageProcessor())


def tiny_config(tokenizer, *, hidden_size: int = 64, layers: int = 2, vision_depth: int = 1, vision_dim: int = 32):
    """A small ``Qwen2VLConfig`` (head dim 16, M-RoPE sections 2/3/3) matching ``tokenizer``'s ids."""
    from transformers import Qwen2VLConfig

    ids = tokenizer.get_vocab()
    heads = hidden_size // 16
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=32768, rope_theta=10000.0, tie_word_embeddings=False,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden_size, num_heads=2,
                           mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )


def tiny_model(tokenizer, seed: int = 0, **config_kwargs):
    """A randomly initialised ``Qwen2VLForConditionalGeneration`` (float32) for ``tokenizer``."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_config(tokenizer, **config_kwargs)
    config._attn_implementation = "sdpa"
    return Qwen2VLForConditionalGeneration(config).float()


def save_tiny_checkpoint(folder, texts: Iterable[str] = (), seed: int = 0, **config_kwargs) -> str:
    """Write a tiny random Qwen2-VL as a Hugging Face checkpoint folder: ``config.json`` and
    ``model.safetensors``, the tokenizer files (with the chat template, also as
    ``chat_template.json``, where ``Qwen2VLProcessor`` looks) and ``preprocessor_config.json``
    (a default ``Qwen2VLImageProcessor``). Anything that loads a real checkpoint folder loads
    this one. Returns the folder."""
    import json
    from pathlib import Path

    from transformers import Qwen2VLImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(texts)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessor().save_pretrained(folder)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2VL_CHAT_TEMPLATE}))
    tiny_model(tokenizer, seed=seed, **config_kwargs).save_pretrained(folder)
    return str(folder)
