"""Map-style training dataset over shard sets and JSONL-with-seeks files, with weighted mixing.

Sources: the reference ``data/lmm_dataset.py`` (``LMMDataset``: JSONL-with-seeks handles, stream
vs. plain conversations, retry on a failing sample) and docs/recipes.md#training.

* **Sources.** A shard folder (``seek_index.parquet`` + tars, :class:`schemas.seek_index.SeekIndex`:
  one ranged read per sample) or a reference JSONL-with-seeks file
  (:func:`schemas.seek_index.read_jsonl_with_seeks`: one ranged read per line). Paths may be
  fsspec URLs. Sample ``i`` of the dataset is sample ``i - offset`` of the source it falls in.
* **Mixing.** Each source has a ``weight``: how many times its samples are drawn per epoch
  (1 = each once, 0.5 = a random half, 2 = each twice). :class:`MixSampler` draws the per-epoch
  multiset and shuffles it with ``(seed, epoch)``; every rank computes the same order and
  takes its own share (HF Trainer / accelerate split it; :meth:`MixSampler.rank_indices` does it
  without them). The reference's SFT mix is LiveCC conversations + LLaVA-Video-178K-style
  conversations, each a source here.
* **Video.** A stream sample decodes strictly at 2 FPS inside ``[video_start, video_end]`` from
  its ``mp4`` member (member time 0 = media-clock ``media.start``) or, without one, from the
  referenced media (:mod:`train.video`), then goes through the interleave
  (:mod:`train.interleave`). Plain conversations keep their turns; their videos are sampled
  uniformly (qwen_vl_utils' rule) and their images go through the image processor.
* **Broken samples.** Any failure while reading, decoding or encoding a sample (missing media,
  undecodable range, no words in range, bad JSON) is logged with the sample key and the error,
  counted, and the sample is replaced by ``index = Random(f"{seed}:{i}:{attempt}")`` - the same
  replacement every time. The keys travel with the batch (``broken_keys``) so the trainer's
  :class:`BrokenSampleMonitor` fails the run once the broken rate passes its limit.
"""
from __future__ import annotations

import functools
import json
import logging
import posixpath
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from schemas.seek_index import INDEX_NAME, SeekIndex, read_jsonl_with_seeks
from train.collator import StreamProcessor, collate
from train.interleave import (INITIAL_FRAMES, STREAMING_FRAMES, is_stream, plain_conversation,
                              stream_conversation)
from train.video import VideoBudget, decode_video

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """One training source: ``path`` (shard folder or ``.jsonl`` file, local or fsspec URL),
    ``weight`` (draws per sample per epoch, > 0), ``kind`` (``"shards"``, ``"jsonl"`` or
    ``"auto"``: ``.jsonl`` files are JSONL, anything else a shard folder), ``media_root``
    (folder or URL that relative video/image paths in the records are under, e.g. the
    LLaVA-Video-178K video folder; None: relative to the working directory)."""

    path: str
    weight: float = 1.0
    kind: str = "auto"
    media_root: str | None = None

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"source {self.path}: weight must be > 0, got {self.weight}")
        if self.kind not in ("auto", "shards", "jsonl"):
            raise ValueError(f"source {self.path}: kind must be auto, shards or jsonl, got {self.kind!r}")

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "jsonl" if self.path.endswith(".jsonl") else "shards"

    @classmethod
    def parse(cls, text: str) -> "SourceSpec":
        """``PATH`` or ``PATH@WEIGHT`` (e.g. ``s3://b/live_cc/shards@0.5``). Raises ValueError."""
        path, sep, weight = text.rpartition("@")
        if sep and path:
            try:
                return cls(path, float(weight))
            except ValueError as exc:
                if "weight must be" in str(exc):
                    raise
        return cls(text)


@dataclass
class RawSample:
    """What a source yields: the record and where its media is."""

    key: str
    record: list[dict[str, Any]]
    media: bytes | None = None     # the clip's media member, if the sample has one
    media_start_s: float = 0.0      # media-clock time of the media member's time 0


class ShardSource:
    """Samples of one shard folder, read through its seek index (opened lazily per process)."""

    def __init__(self, path: str):
        self.path = path.rstrip("/")
        self._index: SeekIndex | None = None
        self._len = len(self.index)

    @property
    def index(self) -> SeekIndex:
        if self._index is None:
            self._index = SeekIndex.open(self.path)
        return self._index

    def __getstate__(self) -> dict[str, Any]:   # workers started by spawn reopen the index
        return {**self.__dict__, "_index": None}

    def __len__(self) -> int:
        return self._len

    def key(self, i: int) -> str:
        return self.index.members(i)[0]["key"]

    def load(self, i: int) -> RawSample:
        members = self.index.read(i)
        if "json" not in members:
            raise ValueError(f"sample {i} of {self.path} has no json member")
        sample = json.loads(members["json"])
        media = sample.get("media") or {}
        member = media.get("member")
        data = members.get(member) if member else None
        if member and data is None:
            raise ValueError(f"sample {sample.get('clip_id')} names media member {member!r} but has none")
        return RawSample(sample.get("clip_id") or self.key(i), sample["conversation"], data,
                         float(media.get("start") or 0.0) if data is not None else 0.0)


class JsonlSource:
    """Lines of a JSONL-with-seeks file (the reference's annotation format), one conversation each."""

    def __init__(self, path: str):
        self.path = path
        self._reader = None
        self._len = len(self._open()[0])

    def _open(self):
        if self._reader is None:
            self._reader = read_jsonl_with_seeks(self.path)
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}

    def __len__(self) -> int:
        return self._len

    def key(self, i: int) -> str:
        return f"{posixpath.basename(self.path)}:{i}"

    def load(self, i: int) -> RawSample:
        line = self._open()[1](i)
        record = line["conversation"] if isinstance(line, dict) and "conversation" in line else line
        return RawSample(self.key(i), record)


def open_source(spec: SourceSpec) -> ShardSource | JsonlSource:
    """Open a source. Raises FileNotFoundError (no seek index / no file) or ValueError."""
    if spec.resolved_kind == "jsonl":
        return JsonlSource(spec.path)
    try:
        return ShardSource(spec.path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{spec.path}: no {INDEX_NAME} (is this a shard folder written by `livecc build`?)") from exc


@dataclass
class Prepared:
    """A sample before tokenisation: chat messages with vision placeholders, and the media."""

    key: str
    messages: list[dict[str, Any]]
    videos: list[np.ndarray] = field(default_factory=list)   # uint8 (T, H, W, 3) per video placeholder
    images: list[Any] = field(default_factory=list)
    frame_pts_s: list[float] | None = None                     # stream samples: media-clock time per frame
    windows: list[Any] | None = None                           # stream samples: train.interleave.StreamWindow


class StreamingDataset(Dataset):
    """Map-style dataset of encoded Qwen2-VL training samples over several sources.

    ``dataset[i]`` -> dict of 1-D ``input_ids``/``attention_mask``/``labels``, uint8
    ``pixel_values_videos`` + ``video_grid_thw`` (and ``pixel_values``/``image_grid_thw`` for
    images), ``sample_key`` and ``broken_keys`` (keys replaced on the way to this sample).
    Raises RuntimeError when ``max_attempts`` samples in a row are broken.
    """

    def __init__(
        self,
        sources: Sequence[SourceSpec],
        processor: StreamProcessor,
        *,
        budget: VideoBudget | None = None,
        with_context: bool = False,
        initial_frames: int = INITIAL_FRAMES,
        streaming_frames: int = STREAMING_FRAMES,
        max_attempts: int = 10,
        seed: int = 0,
    ):
        if not sources:
            raise ValueError("no training sources")
        self.specs = list(sources)
        self.sources = [open_source(s) for s in self.specs]
        self.media_roots = [s.media_root for s in self.specs]
        self.lengths = [len(s) for s in self.sources]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.processor = processor
        self.budget = budget or VideoBudget.from_env()
        self.with_context = with_context
        self.initial_frames = initial_frames
        self.streaming_frames = streaming_frames
        self.max_attempts = max_attempts
        self.seed = seed
        self.broken_count = 0     # in this process (each DataLoader worker counts its own)
        self.served_count = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[ShardSource | JsonlSource, int]:
        s, j = self._locate(i)
        return self.sources[s], j

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range (0..{len(self) - 1})")
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return s, i - int(self.offsets[s])

    def key(self, i: int) -> str:
        source, j = self.locate(i)
        return source.key(j)

    def prepare(self, i: int) -> Prepared:
        """Read sample ``i``, decode its media and build its conversation (no tokens yet)."""
        s, j = self._locate(i)
        raw = self.sources[s].load(j)
        root = self.media_roots[s]
        if is_stream(raw.record):
            video = next(e for e in raw.record[0]["content"] if e.get("type") == "video")
            decoded = decode_video(
                raw.media if raw.media is not None else media_path(video["video"], root),
                start_s=video.get("video_start"), end_s=video.get("video_end"),
                offset_s=raw.media_start_s, budget=self.budget, sampling="strict",
            )
            inter = stream_conversation(
                raw.record, decoded.pts_s, with_context=self.with_context, fps=self.budget.fps,
                initial_frames=self.initial_frames, streaming_frames=self.streaming_frames,
            )
            videos = [decoded.frames[a:b] for a, b in inter.frame_slices]
            return Prepared(raw.key, inter.messages, videos, [], decoded.pts_s, inter.windows)
        messages, media = plain_conversation(raw.record, with_context=self.with_context)
        videos, images = [], []
        for element in media:
            if element["type"] == "video":
                decoded = decode_video(
                    media_path(element["video"], root), start_s=element.get("video_start"), end_s=element.get("video_end"),
                    budget=self.budget, sampling="uniform", nframes=element.get("nframes"),
                )
                videos.append(decoded.frames)
            else:
                images.append(_load_image(media_path(element["image"], root)))
        return Prepared(raw.key, messages, videos, images)

    def encode(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as model inputs (no replacement on failure)."""
        prepared = self.prepare(i)
        out = self.processor.encode(prepared.messages, prepared.videos, prepared.images)
        out["sample_key"] = prepared.key
        return out

    def replacement(self, i: int, attempt: int) -> int:
        """The index tried instead of ``i`` after ``attempt`` failures: deterministic per (seed, i, attempt)."""
        return random.Random(f"{self.seed}:{i}:{attempt}").randrange(len(self))

    def __getitem__(self, i: int) -> dict[str, Any]:
        broken: list[str] = []
        index = int(i)
        for attempt in range(self.max_attempts):
            try:
                out = self.encode(index)
            except Exception as exc:  # noqa: BLE001 - a broken sample must not kill the run; it is counted
                key = self._safe_key(index)
                nxt = self.replacement(int(i), attempt)
                logger.warning("broken sample %s (index %d): %s: %s; replaced by index %d",
                               key, index, type(exc).__name__, exc, nxt)
                broken.append(key)
                self.broken_count += 1
                index = nxt
                continue
            self.served_count += 1
            out["broken_keys"] = broken
            return out
        raise RuntimeError(f"{self.max_attempts} broken samples in a row starting at index {i}: {broken}")

    def _safe_key(self, i: int) -> str:
        try:
            return self.key(i)
        except Exception:  # noqa: BLE001 - the key itself may be what is broken
            return f"#{i}"


def media_path(ref: Any, root: str | None) -> Any:
    """``ref`` under ``root`` when it is a relative path and a root is set; otherwise unchanged."""
    if not root or not isinstance(ref, str) or "://" in ref or posixpath.isabs(ref):
        return ref
    return posixpath.join(root.rstrip("/"), ref)


def _load_image(ref: Any):
    """A PIL image from a path/URL (fsspec) or raw bytes."""
    import io

    import fsspec
    from PIL import Image

    if isinstance(ref, (bytes, bytearray)):
        return Image.open(io.BytesIO(ref)).convert("RGB")
    with fsspec.open(ref, "rb") as f:
        return Image.open(io.BytesIO(f.read())).convert("RGB")


class MixSampler(Sampler[int]):
    """Per-epoch weighted draw over concatenated sources, shuffled with ``(seed, epoch)``.

    ``lengths``: samples per source (in dataset order); ``weights``: draws per sample per epoch.
    Source s contributes ``round(weight * length)`` indices: ``floor(weight)`` full passes plus a
    random subset for the fraction, re-drawn each epoch. ``rank``/``world_size`` (both or
    neither): yield only this rank's share, ``order[rank::world_size]`` after wrapping the order
    to a multiple of ``world_size`` (accelerate's split with batch size 1); leave them unset
    under HF Trainer, which splits the batches itself.
    """

    def __init__(self, lengths: Sequence[int], weights: Sequence[float], *, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        if len(lengths) != len(weights):
            raise ValueError("one weight per source")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        self.lengths = [int(n) for n in lengths]
        self.weights = [float(w) for w in weights]
        self.counts = [int(round(w * n)) for w, n in zip(self.weights, self.lengths)]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        if sum(self.counts) == 0:
            raise ValueError("the mix draws no samples (empty sources or tiny weights)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """All ranks' indices for ``epoch``, in order (int64 array of length ``sum(counts)``)."""
        parts = []
        for s, (n, count) in enumerate(zip(self.lengths, self.counts)):
            if count == 0:
                continue
            rng = np.random.default_rng([self.seed, epoch, s])
            full, rest = divmod(count, n)
            local = np.concatenate([np.tile(np.arange(n), full), rng.choice(n, size=rest, replace=False)])
            parts.append(local + self.offsets[s])
        order = np.concatenate(parts)
        return np.random.default_rng([self.seed, epoch]).permutation(order)

    def rank_indices(self, epoch: int, rank: int, world_size: int) -> np.ndarray:
        order = self.epoch_indices(epoch)
        per_rank = -(-len(order) // world_size)
        order = np.resize(order, per_rank * world_size)    # wrap around, as accelerate's even_batches
        return order[rank::world_size]

    def __iter__(self) -> Iterator[int]:
        if self.rank is None:
            order = self.epoch_indices(self.epoch)
        else:
            order = self.rank_indices(self.epoch, self.rank, self.world_size)
        return iter(order.tolist())

    def __len__(self) -> int:
        total = sum(self.counts)
        return total if self.rank is None else -(-total // self.world_size)


class BrokenSampleMonitor:
    """Counts served and broken samples seen by one rank and fails past ``max_rate``.

    ``update(n_served, broken_keys)`` after each batch; raises RuntimeError when
    ``broken / (served + broken) > max_rate`` once at least ``min_samples`` samples were tried
    (so one bad sample at step 1 does not abort a run, but a broken corpus does).
    """

    def __init__(self, max_rate: float = 0.01, min_samples: int = 100):
        self.max_rate, self.min_samples = float(max_rate), int(min_samples)
        self.served = 0
        self.broken = 0

    @property
    def rate(self) -> float:
        tried = self.served + self.broken
        return self.broken / tried if tried else 0.0

    def update(self, n_served: int, broken_keys: Sequence[str]) -> None:
        self.served += int(n_served)
        self.broken += len(broken_keys)
        if self.served + self.broken >= self.min_samples and self.rate > self.max_rate:
            raise RuntimeError(
                f"broken sample rate {self.rate:.2%} ({self.broken} of {self.served + self.broken}) exceeds "
                f"the limit {self.max_rate:.2%}; last broken: {list(broken_keys)[-5:]} "
                "(see the 'broken sample' warnings; fix the corpus or raise data.max_broken_rate)"
            )


def collate_fn(pad_token_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A picklable DataLoader ``collate_fn`` for :class:`StreamingDataset` samples
    (see :func:`train.collator.collate`)."""
    return functools.partial(collate, pad_token_id=pad_token_id)


__all__ = ["SourceSpec", "ShardSource", "JsonlSource", "StreamingDataset", "MixSampler",
           "BrokenSampleMonitor", "Prepared", "RawSample", "open_source", "collate_fn"]
