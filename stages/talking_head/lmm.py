"""The LMM talking-head backend: Qwen2-VL-2B-Instruct looks at 8 frames of a clip and is asked
whether someone is always showing their face and talking; ``talking_head_p_yes`` is the
probability of its answer "Yes".

Source: showlab/livecc ``data/production/distributed_lmm4asd.py`` (pre-training step A3 in
``data/production/README.md``); docs/recipes.md#talking_head. Facts taken from it:

* model ``Qwen/Qwen2-VL-2B-Instruct``; processor with ``padding_side='left'`` (so the last
  position of every row in a batch is its answer position);
* 8 frames at ``torch.linspace(0, n - 1, 8).round()`` frame indices (evenly spaced, first and
  last frame included), resized with torchvision ``resize(images, (320, 180), BICUBIC,
  antialias=True)``. torchvision reads that size as (height, width): every frame is stretched
  to 180 px wide x 320 px high whatever its aspect ratio. We do the same by default
  (``lmm_frame_height``/``lmm_frame_width``), with PIL's bicubic filter, which torchvision's
  antialiased bicubic is made to match;
* one user turn: the 8 images, then the text :data:`REFERENCE_PROMPT`, rendered with the chat
  template and the generation prompt (``<|im_start|>assistant\\n``);
* the score: ``softmax(logits[:, -1])[:, 9454]``, token 9454 being "Yes" in the Qwen2
  vocabulary. Here the id comes from the tokenizer (:func:`answer_token_id`).

What differs, on purpose (issue 12):

* **The clip's range, not the whole video.** The reference scores whole videos; here the 8
  frames span the clip's ``[start, end]`` (``lmm_sample_range: media`` spans the whole media
  file instead, as the reference). Frame indices are counted on the video stream's frame grid
  inside the range, so the reference's rule applies to the clip as if it were cut out.
* **Seeking, not decoding.** The reference's ``decord`` reader demuxes the whole file to index
  it, then decodes every frame from the keyframe before each index up to it. Here each frame
  is one keyframe seek and a decode up to it, skipping non-reference frames until 0.5 s before
  it; the file is never read whole (``bench/bench_lmm_frames.py``).
* **Only the last position's logits.** ``lm_head`` is applied to the last position only
  (:func:`last_position_head`): the full logits would be ~600 positions x 151,936 floats per
  clip, 365 MB in fp32, for one number.
* **Bad input is an error row** (undecodable or truncated media, no video stream, a range past
  the end); the reference retries another random video instead.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from stages.talking_head import video as V
from stages.talking_head.analyze import ClipRequest, checked_range
from stages.talking_head.audio import MediaError

log = logging.getLogger(__name__)

#: the reference's model (``distributed_lmm4asd.py``)
REFERENCE_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
#: the reference's question, verbatim (grammar included); ``{num_frames}`` is 8 there
REFERENCE_PROMPT = ("Here are {num_frames} evenly sampled frames from a YouTube video. Are there someone always "
                    "showing their faces and talking? Answer Yes or No.")
#: the id the reference hard-codes for "Yes" in the Qwen2 vocabulary; a check, never used to score
REFERENCE_YES_TOKEN_ID = 9454
ANSWER = "Yes"
#: after a seek, frames nothing refers to are skipped until this long before the target
PREROLL_FULL_DECODE_S = V.PREROLL_FULL_DECODE_S


@dataclass
class ClipFrames:
    """The frames the model sees for one clip: ``frames`` is a list of ``(H, W, 3)`` uint8 RGB
    arrays (already resized); ``times_s`` the presentation time of each source frame on the
    file's clock (s); ``indices`` their frame numbers on the stream's frame grid."""
    request: ClipRequest
    frames: list[np.ndarray]
    times_s: np.ndarray
    indices: np.ndarray


@dataclass
class LmmResult:
    """One clip's outcome: ``p_yes`` in [0, 1] and the frames' times (s, file clock)."""
    p_yes: float
    times_s: np.ndarray
    n_frames: int
    frames: list[np.ndarray] | None = None     # kept only with ``keep_frames``


# -- frames ---------------------------------------------------------------------------------

def frame_indices(first: int, last: int, num_frames: int) -> np.ndarray:
    """``num_frames`` evenly spaced frame numbers from ``first`` to ``last`` inclusive: the
    reference's ``torch.linspace(0, n - 1, num_frames).round()`` shifted to ``first``
    (round half to even, as torch)."""
    return first + np.round(np.linspace(0, last - first, num_frames)).astype(np.int64)


def sample_times(start_s: float, end_s: float, info: V.MediaInfo, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers and their times (s, file clock) of ``num_frames`` evenly spaced frames in
    ``[start_s, end_s)``, on the video stream's frame grid (frame *k* at
    ``video_start_s + k / fps``). A range shorter than one frame gives the frame on screen at
    ``start_s``, repeated. Raises :class:`MediaError` when no video frame lies in the range."""
    lo, hi = max(start_s, info.video_start_s), min(end_s, info.video_end_s)
    if not hi > lo:
        raise MediaError(f"{info.path}: no video frames between {start_s:.2f} and {end_s:.2f} s "
                         f"(video stream {info.video_start_s:.2f}-{info.video_end_s:.2f} s)")
    fps = info.fps
    first = math.ceil((lo - info.video_start_s) * fps - 1e-6)
    last = math.ceil((hi - info.video_start_s) * fps - 1e-6) - 1
    if last < first:   # shorter than one frame: the one on screen
        first = last = max(0, math.floor((lo - info.video_start_s) * fps + 1e-6))
    idx = frame_indices(first, last, num_frames)
    return idx, info.video_start_s + idx / fps


def decode_at(container, info: V.MediaInfo, times_s: np.ndarray, *, seek: bool = True) -> tuple[list, np.ndarray]:
    """The frame shown at each of ``times_s`` (sorted, s, file clock): the first frame whose
    presentation time is at or after ``t - half a frame``. Each target seeks to the keyframe
    before it, unless it lies ahead of the decoder within :data:`PREROLL_FULL_DECODE_S` or
    within the longest interval between consecutive keyframes seen so far (then decoding goes
    on); non-reference frames are skipped until :data:`PREROLL_FULL_DECODE_S` before the target.

    Returns ``(frames, pts_s)``: PyAV ``VideoFrame`` objects and their times (s); a target that
    falls on the frame already taken repeats it. ``seek=False`` decodes every frame from the
    start of the file (the baseline the seeking path is checked against). Raises
    :class:`MediaError` when the stream cannot be decoded or ends before a target.
    """
    import av

    stream = container.streams.video[0]
    # one thread per decoder: parallelism comes from decoding clips side by side
    stream.thread_type = "SLICE"
    stream.thread_count = 1
    half = 0.5 / info.fps
    frames: list = []
    got: list[float] = []
    decoder: Iterator | None = None
    last_t = -math.inf       # time of the last decoded frame
    last_key_t = -math.inf   # time of the last keyframe decoded
    run_key_t = -math.inf    # the last keyframe decoded since the last seek
    gop_s = 0.0              # longest interval between consecutive keyframes seen
    skipping = False

    def skip_nonref(on: bool) -> None:
        nonlocal skipping
        if seek:
            stream.codec_context.skip_frame = "NONREF" if on else "DEFAULT"
            skipping = on

    try:
        for target in (float(t) for t in times_s):
            if got and got[-1] >= target - half:   # the frame already taken is still on screen
                frames.append(frames[-1])
                got.append(got[-1])
                continue
            # decoding on is never worse than a seek within the preroll (a seek decodes that
            # much anyway), nor while no keyframe can lie between here and the target
            on = target - half > last_t and (target - last_t <= PREROLL_FULL_DECODE_S or target - last_key_t < gop_s)
            if decoder is None or (seek and not on):
                if seek and target - half > 1.0 / info.fps:
                    container.seek(int((target - half + info.origin_s) / stream.time_base), stream=stream,
                                   backward=True)
                decoder = iter(container.decode(stream))
                run_key_t = -math.inf
                skip_nonref(True)
            elif target - last_t > PREROLL_FULL_DECODE_S:
                skip_nonref(True)
            while True:
                frame = next(decoder, None)
                if frame is None:
                    raise MediaError(f"{info.path}: video ends before {target:.2f} s"
                                     + (f" (last frame at {last_t:.2f} s)" if last_t > -math.inf else ""))
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base) - info.origin_s
                if frame.key_frame:
                    if t > run_key_t > -math.inf:
                        gop_s = max(gop_s, t - run_key_t)
                    last_key_t = run_key_t = t
                last_t = t
                if skipping and t >= target - PREROLL_FULL_DECODE_S:
                    skip_nonref(False)
                if t >= target - half:
                    frames.append(frame)
                    got.append(t)
                    break
    except (av.error.FFmpegError, ValueError) as exc:
        raise MediaError(f"{info.path}: cannot decode video: {exc}") from exc
    return frames, np.asarray(got, dtype=np.float64)


def resize_frame(frame, height: int, width: int) -> np.ndarray:
    """A PyAV frame (or an ``(H, W, 3)`` uint8 array) as RGB uint8 ``(height, width, 3)``,
    stretched (aspect ratio not kept, as the reference), bicubic with antialiasing (PIL)."""
    from PIL import Image

    img = frame.to_image() if hasattr(frame, "to_image") else Image.fromarray(np.asarray(frame))
    return np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC))


def sample_frames(request: ClipRequest, num_frames: int = 8, height: int = 320, width: int = 180,
                  whole_media: bool = False) -> ClipFrames:
    """Open ``request.path``, check the range and decode ``num_frames`` evenly spaced frames of
    ``[start_s, end_s]`` (file clock; the whole file with ``whole_media``), resized to
    ``height x width``. Raises :class:`MediaError` (unopenable, no video stream, range past the
    end, undecodable or truncated)."""
    with V.open_media(request.path) as container:
        info = V.probe(container, request.path)
        if whole_media:
            start, end = 0.0, info.duration_s
        else:
            start, end = checked_range(request, info)
        indices, times = sample_times(start, end, info, num_frames)
        frames, got = decode_at(container, info, times)
        pixels = [resize_frame(f, height, width) for f in frames]
    return ClipFrames(ClipRequest(request.path, start, end), pixels, got, indices)


# -- the model ------------------------------------------------------------------------------

def answer_token_id(tokenizer, answer: str = ANSWER) -> int:
    """The id of the first token of ``answer`` as the model would write it right after
    ``<|im_start|>assistant\\n`` (no leading space): 9454 ("Yes") in the Qwen2 vocabulary.
    Raises ``ValueError`` when the tokenizer gives no token."""
    ids = tokenizer.encode(answer, add_special_tokens=False)
    if not ids:
        raise ValueError(f"the tokenizer encodes {answer!r} as no token")
    return int(ids[0])


def conversation(num_frames: int, prompt: str = REFERENCE_PROMPT) -> list[dict[str, Any]]:
    """The reference's single user turn: ``num_frames`` images, then the question."""
    return [{"role": "user", "content": [{"type": "image"} for _ in range(num_frames)]
             + [{"type": "text", "text": prompt.format(num_frames=num_frames)}]}]


class ImageTextProcessor:
    """Qwen2-VL inputs from a tokenizer (``padding_side='left'``) and ``Qwen2VLImageProcessor``:
    what ``Qwen2VLProcessor`` does for images (each ``<|image_pad|>`` expanded to the image's
    merged patch count), for transformers installs that cannot build that class (below
    transformers 5 it also builds a video processor, which needs torchvision)."""

    def __init__(self, tokenizer, image_processor, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        self.image_token = "<|image_pad|>"

    @classmethod
    def from_pretrained(cls, path: str, padding_side: str = "left") -> "ImageTextProcessor":
        from transformers import AutoTokenizer, Qwen2VLImageProcessor

        tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
        template = None
        for name in ("chat_template.json", "chat_template.jinja"):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    template = json.load(f)["chat_template"] if name.endswith(".json") else f.read()
                break
        return cls(tokenizer, Qwen2VLImageProcessor.from_pretrained(path), template)

    def apply_chat_template(self, conversations, **kwargs):
        return self.tokenizer.apply_chat_template(conversations, chat_template=self.chat_template, **kwargs)

    def __call__(self, text: list[str], images: list, padding: bool = True, return_tensors: str = "pt"):
        from transformers import BatchFeature

        image_inputs = self.image_processor(images=images, return_tensors=return_tensors)
        merge = self.image_processor.merge_size ** 2
        counts = iter(int(g.prod()) // merge for g in image_inputs["image_grid_thw"])
        expanded = []
        for t in text:
            parts = t.split(self.image_token)
            expanded.append(parts[0] + "".join(self.image_token * next(counts) + p for p in parts[1:]))
        text_inputs = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors)
        return BatchFeature(data={**text_inputs, **image_inputs})


def load_processor(path: str):
    """The checkpoint's ``Qwen2VLProcessor`` with ``padding_side='left'`` (fast image processor
    as the reference), or :class:`ImageTextProcessor` over the same files where transformers
    cannot build it without torchvision."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, padding_side="left", use_fast=True)
    except ImportError as exc:
        log.info("talking_head: Qwen2VLProcessor unavailable (%s); tokenizer + Qwen2VLImageProcessor instead",
                 str(exc).strip().splitlines()[0])
        return ImageTextProcessor.from_pretrained(path, padding_side="left")


def last_position_head(head):
    """``head`` (the model's ``lm_head``) wrapped to compute logits for the last position only."""
    import torch

    class LastPositionHead(torch.nn.Module):
        last_position_only = True

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, hidden):
            return self.inner(hidden[:, -1:, :])

    return LastPositionHead(head)


class LmmScorer:
    """One model and processor (an actor's ``setup``) scoring clips in batches.

    ``model``: a ``Qwen2VLForConditionalGeneration`` already on ``device`` in eval mode;
    ``processor``: :func:`load_processor`'s; ``cfg``: the stage config (frames, size, prompt,
    range, decode workers); ``batch_clips``: clips per forward pass.
    """

    def __init__(self, model, processor, cfg, device: str = "cpu", batch_clips: int = 4):
        self.model = model
        self.processor = processor
        self.cfg = cfg
        self.device = device
        self.batch_clips = max(1, int(batch_clips))
        tokenizer = getattr(processor, "tokenizer", processor)
        if getattr(tokenizer, "padding_side", "left") != "left":
            raise ValueError("the processor must pad on the left (padding_side='left'): the answer "
                             "position is then the last one in every row of a batch")
        self.yes_id = answer_token_id(tokenizer, cfg.lmm_answer)
        if not getattr(model.lm_head, "last_position_only", False):
            model.lm_head = last_position_head(model.lm_head)
        self.prompt = processor.apply_chat_template(conversation(cfg.lmm_frames, cfg.lmm_prompt),
                                                    tokenize=False, add_generation_prompt=True)

    def frames(self, request: ClipRequest) -> ClipFrames:
        c = self.cfg
        return sample_frames(request, c.lmm_frames, c.lmm_frame_height, c.lmm_frame_width,
                             whole_media=c.lmm_sample_range == "media")

    def p_yes(self, clips: list[ClipFrames]) -> np.ndarray:
        """P("Yes") at the answer position for each clip: ``(len(clips),)`` float64 in [0, 1]."""
        import torch

        if not clips:
            return np.zeros(0)
        images = [f for c in clips for f in c.frames]
        inputs = self.processor(text=[self.prompt] * len(clips), images=images, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        dtype = next(self.model.parameters()).dtype
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            logits = self.model(**inputs, use_cache=False).logits[:, -1].float()
        return logits.softmax(dim=-1)[:, self.yes_id].double().cpu().numpy()

    def run(self, requests: Iterable[ClipRequest], keep_frames: bool = False) -> Iterator[tuple[int, LmmResult | BaseException]]:
        """Score clips; yields ``(index, LmmResult or the exception it raised)``, each index once.
        Frames are decoded on ``decode_workers`` threads, up to two batches ahead of the model;
        requests for the same frames (same file and range) are decoded and scored once.
        ``keep_frames`` keeps the resized frames in each result (tests, inspection)."""
        requests = list(requests)
        copies: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            copies.setdefault(self._key(r), []).append(i)
        todo = iter(copies.values())
        ahead = 2 * self.batch_clips + max(1, int(self.cfg.decode_workers))
        pool = ThreadPoolExecutor(max(1, int(self.cfg.decode_workers)), thread_name_prefix="talking-head-lmm-decode")
        pending: deque[tuple[list[int], Future]] = deque()

        def fill() -> None:
            while len(pending) < ahead:
                same = next(todo, None)
                if same is None:
                    return
                pending.append((same, pool.submit(self.frames, requests[same[0]])))

        try:
            fill()
            batch: list[tuple[list[int], ClipFrames]] = []
            while pending:
                same, fut = pending.popleft()
                fill()
                try:
                    batch.append((same, fut.result()))
                except Exception as exc:  # noqa: BLE001 - per-clip isolation
                    yield from ((j, exc) for j in same)
                if batch and (len(batch) >= self.batch_clips or not pending):
                    yield from self._score(batch, keep_frames)
                    batch = []
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _score(self, batch: list[tuple[list[int], ClipFrames]], keep_frames: bool):
        try:
            scores = self.p_yes([c for _, c in batch])
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its clips, not the part
            for same, _ in batch:
                yield from ((j, exc) for j in same)
            return
        for (same, clip), p in zip(batch, scores):
            result = LmmResult(float(p), clip.times_s, len(clip.frames), clip.frames if keep_frames else None)
            yield from ((j, result) for j in same)

    def _key(self, r: ClipRequest) -> tuple:
        return (r.path,) if self.cfg.lmm_sample_range == "media" else (r.path, r.start_s, r.end_s)


# -- loading ----------------------------------------------------------------------------------

def is_qwen2vl_checkpoint(path: str) -> bool:
    """A folder with a model config, the tokenizer, the image processor config and safetensors weights."""
    files = set(os.listdir(path)) if os.path.isdir(path) else set()
    return ({"config.json", "preprocessor_config.json"} <= files
            and bool(files & {"tokenizer.json", "vocab.json"})
            and bool(files & {"model.safetensors", "model.safetensors.index.json"}))


def attention_implementation(device: str) -> str:
    """FlashAttention-2 on CUDA when installed (the reference's), else SDPA."""
    if device == "cuda":
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return "flash_attention_2"
        log.warning("talking_head: flash-attn is not installed (the 'gpu' extra); Qwen2-VL uses SDPA attention")
    return "sdpa"


def load_scorer(cfg, device: str) -> LmmScorer:
    """Find the checkpoint (never downloading) and load model and processor once: bf16 with
    FlashAttention-2 on CUDA, fp32 with SDPA on the CPU.

    Raises:
        stages.models.MissingWeightsError: the checkpoint is not on this machine (the message
            has the download command).
        ImportError: transformers is not installed (``pip install -e '.[lmm]'``).
    """
    path = checkpoint_path(cfg)
    try:
        import torch
        from transformers import Qwen2VLForConditionalGeneration
    except ImportError as exc:
        raise ImportError(f"the LMM talking-head backend needs transformers: pip install -e '.[lmm]' ({exc})") from exc
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=dtype,
                                                            attn_implementation=attention_implementation(device))
    model.to(device).eval()
    processor = load_processor(path)
    batch = cfg.lmm_batch_clips or (32 if device == "cuda" else 4)
    log.info("talking_head: LMM %s (%s, %s), %d clips per batch", path, device, dtype, batch)
    return LmmScorer(model, processor, cfg, device, batch)


def _repo_id(model: str) -> str | None:
    return model if model.count("/") == 1 and not os.path.isabs(model) and not model.startswith(".") else None


def checkpoint_path(cfg) -> str:
    """The Qwen2-VL checkpoint folder of ``cfg.lmm_model`` (no download).

    Raises:
        stages.models.MissingWeightsError: not on this machine (the message has the download command).
    """
    from stages.models import resolve_checkpoint

    return resolve_checkpoint(cfg.lmm_model, stage="talking_head", repo_id=_repo_id(cfg.lmm_model),
                              model_dir=cfg.model_dir, is_checkpoint=is_qwen2vl_checkpoint,
                              what="Qwen2-VL", model_key="lmm_model")
