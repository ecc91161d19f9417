"""Model inputs for Qwen2-VL from an interleaved conversation: tokens, labels, video patches, batching.

Sources: the reference ``data/lmm_dataset.py`` (``getitem``: chat template, processor call, labels
from after ``<|im_start|>assistant\\n`` up to and including ``<|im_end|>``) and transformers'
``Qwen2VLProcessor`` / ``Qwen2VLImageProcessor`` (placeholder expansion and patch layout).

* **Labels.** Only assistant content carries loss: the tokens after ``<|im_start|>assistant\\n``
  up to and including the turn's ``<|im_end|>``; everything else (system, user, ``Time=`` text,
  vision tokens, the newline after ``<|im_end|>``) is -100. Spans are found on the rendered
  text and mapped to tokens through the tokenizer's offsets, so they do not depend on how a
  particular vocabulary splits ``assistant\\n``.
* **Video patches.** Frames arrive sized by :mod:`train.video` (multiples of 28), so no resizing
  is left to do. They are cut into the vision tower's patch layout as **uint8**
  (``(t*h*w, 3*2*14*14)``, channel-major inside a patch, exactly the image processor's order);
  :meth:`StreamProcessor.normalize_patches` rescales and normalises them on the training device.
  That moves 4x fewer bytes through workers and host-to-device copies than float patches, and
  keeps the loader near pure decoding speed. Tests check the result equals
  ``Qwen2VLImageProcessor``'s output.
* **Placeholders.** Each ``<|video_pad|>`` / ``<|image_pad|>`` of the rendered text becomes
  ``t*h*w / merge_size**2`` copies, one per visual token, as ``Qwen2VLProcessor`` does.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np
import torch

#: The Qwen2-VL chat format (as shipped with Qwen2-VL-7B-Instruct): a default system turn, then
#: ``<|im_start|>role\\n ... <|im_end|>\\n`` per message; a video element renders as
#: ``<|vision_start|><|video_pad|><|vision_end|>``, an image as the same with ``<|image_pad|>``.
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

ASSISTANT_HEADER = "<|im_start|>assistant\n"
IM_END = "<|im_end|>"
VIDEO_PAD = "<|video_pad|>"
IMAGE_PAD = "<|image_pad|>"
IGNORE_INDEX = -100


class _DropVideoDeprecation(logging.Filter):
    """transformers warns on every image-processor call that carries videos; the call is still the
    supported one below transformers 5 (pinned), so keep the log readable."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "doesn't process videos anymore" not in record.getMessage()


logging.getLogger("transformers.models.qwen2_vl.image_processing_qwen2_vl").addFilter(_DropVideoDeprecation())


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of assistant content in a rendered chat ``text``: from after
    ``<|im_start|>assistant\\n`` to the end of the following ``<|im_end|>``.

    Raises ValueError when an assistant turn is not closed.
    """
    spans, pos = [], 0
    while (head := text.find(ASSISTANT_HEADER, pos)) >= 0:
        start = head + len(ASSISTANT_HEADER)
        end = text.find(IM_END, start)
        if end < 0:
            raise ValueError("assistant turn without <|im_end|>")
        spans.append((start, end + len(IM_END)))
        pos = end
    return spans


def label_tokens(input_ids: np.ndarray, offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Labels for ``input_ids`` (L,): the id where the token's character span (``offsets``, (L, 2))
    lies inside one of ``spans``, -100 elsewhere."""
    labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
    starts, ends = offsets[:, 0], offsets[:, 1]
    inside = np.zeros(input_ids.shape, dtype=bool)
    for a, b in spans:
        lo = np.searchsorted(starts, a, side="left")      # offsets are sorted by start
        hi = np.searchsorted(ends, b, side="right")
        inside[lo:hi] = True
    inside &= ends > starts   # zero-width tokens carry no text
    labels[inside] = input_ids[inside]
    return labels


def patchify_video(
    frames: np.ndarray, *, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cut uint8 frames (T, H, W, 3) into Qwen2-VL vision patches, kept as uint8.

    Returns ``(patches, (t, h, w))``: patches (t*h*w, 3*temporal*patch*patch) in the image
    processor's order; ``t = T / temporal`` (T padded by repeating the last frame), ``h = H /
    patch``, ``w = W / patch``. Raises ValueError when H or W is not a multiple of patch*merge.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {frames.shape}")
    if len(frames) % temporal_patch_size:
        pad = temporal_patch_size - len(frames) % temporal_patch_size
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    T, H, W, C = frames.shape
    unit = patch_size * merge_size
    if H % unit or W % unit:
        raise ValueError(f"frame size {W}x{H} is not a multiple of {unit}")
    t, h, w = T // temporal_patch_size, H // patch_size, W // patch_size
    x = torch.from_numpy(np.ascontiguousarray(frames)).view(
        t, temporal_patch_size, h // merge_size, merge_size, patch_size, w // merge_size, merge_size, patch_size, C
    )
    # -> t, h-blocks, w-blocks, merge-row, merge-col, C, temporal, patch-row, patch-col
    x = x.permute(0, 2, 5, 3, 6, 8, 1, 4, 7).reshape(t * h * w, C * temporal_patch_size * patch_size * patch_size)
    return x.contiguous(), (t, h, w)


class StreamProcessor:
    """Tokenizer + Qwen2-VL image processor + chat template, producing training inputs with labels.

    ``tokenizer``: a Qwen2 tokenizer with the chat special tokens; ``image_processor``: a
    ``Qwen2VLImageProcessor`` (its mean/std and patch sizes are used; images of plain
    conversations go through it unchanged). ``chat_template`` defaults to
    :data:`QWEN2VL_CHAT_TEMPLATE`.
    """

    def __init__(self, tokenizer, image_processor, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or QWEN2VL_CHAT_TEMPLATE
        self.patch_size = int(image_processor.patch_size)
        self.merge_size = int(image_processor.merge_size)
        self.temporal_patch_size = int(image_processor.temporal_patch_size)
        vocab = tokenizer.get_vocab()
        needed = ("<|im_start|>", IM_END, VIDEO_PAD, IMAGE_PAD, "<|vision_start|>", "<|vision_end|>")
        missing = [t for t in needed if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the Qwen2-VL special tokens {missing}")
        self.video_pad_id = vocab[VIDEO_PAD]
        self.image_pad_id = vocab[IMAGE_PAD]
        channel = lambda v: torch.tensor(v, dtype=torch.float32).repeat_interleave(  # noqa: E731
            self.temporal_patch_size * self.patch_size * self.patch_size
        )
        std = channel(image_processor.image_std)
        # normalised = (x * rescale - mean) / std, folded into one multiply-add per patch value
        self._scale = channel([float(image_processor.rescale_factor)] * 3) / std
        self._shift = -channel(image_processor.image_mean) / std

    #: What HF Trainer looks up on its ``processing_class``.
    model_input_names = ["input_ids", "attention_mask"]

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> "StreamProcessor":
        """Load tokenizer and image processor from a Hub id or folder (offline when HF_HUB_OFFLINE=1).

        Only the image processor is loaded (no ``Qwen2VLVideoProcessor``), so torchvision is not
        needed. Raises OSError when the files are missing, saying what to download.
        """
        from transformers import AutoTokenizer, Qwen2VLImageProcessor

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
            image_processor = Qwen2VLImageProcessor.from_pretrained(name_or_path, **kwargs)
        except OSError as exc:
            raise OSError(
                f"cannot load the Qwen2-VL processor {name_or_path!r}: download it first "
                f"(`huggingface-cli download {name_or_path}`) or point processor_name_or_path at a local copy"
            ) from exc
        return cls(tokenizer, image_processor)

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Save tokenizer (with this chat template) and image processor next to a checkpoint."""
        self.tokenizer.chat_template = self.chat_template
        self.tokenizer.save_pretrained(path, **kwargs)
        self.image_processor.save_pretrained(path)

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The chat text of ``messages`` (no generation prompt)."""
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False)

    def encode(
        self, messages: list[dict[str, Any]], videos: Sequence[np.ndarray] = (), images: Sequence[Any] = ()
    ) -> dict[str, torch.Tensor]:
        """Training inputs for one conversation.

        ``videos``: uint8 frames (T, H, W, 3), one per video placeholder, in order; ``images``:
        PIL images or arrays, one per image placeholder. Returns 1-D ``input_ids``,
        ``attention_mask`` and ``labels`` (L,), plus ``pixel_values_videos`` (uint8, (N, 1176))
        and ``video_grid_thw`` (V, 3) when there are videos, ``pixel_values`` and
        ``image_grid_thw`` when there are images. Raises ValueError when placeholders and media
        do not match.
        """
        text = self.render(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        labels = label_tokens(ids, offsets, assistant_spans(text))
        out: dict[str, torch.Tensor] = {}
        repeats = np.ones(len(ids), dtype=np.int64)
        merge = self.merge_size ** 2
        if videos:
            patches, grids = [], []
            for frames in videos:
                p, grid = patchify_video(frames, patch_size=self.patch_size, merge_size=self.merge_size,
                                         temporal_patch_size=self.temporal_patch_size)
                patches.append(p)
                grids.append(grid)
            out["pixel_values_videos"] = torch.cat(patches)
            out["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
            self._expand(ids, repeats, self.video_pad_id, [t * h * w // merge for t, h, w in grids], "video")
        elif (ids == self.video_pad_id).any():
            raise ValueError("video placeholders without videos")
        if images:
            vision = self.image_processor(images=list(images), return_tensors="pt")
            out["pixel_values"] = vision["pixel_values"]
            out["image_grid_thw"] = vision["image_grid_thw"]
            counts = [int(g.prod()) // merge for g in vision["image_grid_thw"]]
            self._expand(ids, repeats, self.image_pad_id, counts, "image")
        elif (ids == self.image_pad_id).any():
            raise ValueError("image placeholders without images")
        ids, labels = np.repeat(ids, repeats), np.repeat(labels, repeats)
        out["input_ids"] = torch.from_numpy(ids)
        out["attention_mask"] = torch.ones(len(ids), dtype=torch.long)
        out["labels"] = torch.from_numpy(labels)
        return out

    @staticmethod
    def _expand(ids: np.ndarray, repeats: np.ndarray, pad_id: int, counts: list[int], kind: str) -> None:
        where = np.flatnonzero(ids == pad_id)
        if len(where) != len(counts):
            raise ValueError(f"{len(where)} {kind} placeholders in the text but {len(counts)} {kind}s")
        repeats[where] = counts

    def normalize_patches(self, patches: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rescale and normalise uint8 patches (N, 1176) on their device, as the image processor
        would (``(x / 255 - mean) / std`` per channel). Float input is returned unchanged."""
        if patches.is_floating_point():
            return patches
        scale = self._scale.to(patches.device)
        shift = self._shift.to(patches.device)
        return torch.addcmul(shift, patches.to(torch.float32), scale).to(dtype)


def collate(samples: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Batch encoded samples: right-pad ``input_ids`` (``pad_token_id``), ``labels`` (-100) and
    ``attention_mask`` (0) to the longest; concatenate vision patches and grids (Qwen2-VL takes
    them flat). ``sample_key`` and ``broken_keys`` entries become lists (bookkeeping the
    trainer removes before the forward pass)."""
    batch: dict[str, Any] = {}
    length = max(len(s["input_ids"]) for s in samples)
    for name, fill in (("input_ids", pad_token_id), ("labels", IGNORE_INDEX), ("attention_mask", 0)):
        out = torch.full((len(samples), length), fill, dtype=torch.long)
        for i, s in enumerate(samples):
            out[i, : len(s[name])] = s[name]
        batch[name] = out
    for name in ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw"):
        parts = [s[name] for s in samples if name in s]
        if parts:
            batch[name] = torch.cat(parts)
    if any("sample_key" in s for s in samples):
        batch["sample_keys"] = [s.get("sample_key") for s in samples]
        batch["broken_keys"] = [k for s in samples for k in s.get("broken_keys", [])]
    return batch
