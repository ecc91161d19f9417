"""Qwen2-VL streaming training on the produced shards (docs/recipes.md#training).

Modules: :mod:`train.video` (2 FPS decoding and the visual budget), :mod:`train.interleave`
(the LiveCC streaming interleave), :mod:`train.collator` (tokens, labels, patches, batches),
:mod:`train.dataset` (sources, mixing, broken samples), :mod:`train.trainer` (HF Trainer entry),
:mod:`train.cli` (``livecc train``). Depends on ``schemas`` only, never on ``pipeline`` or ``stages``.
"""
