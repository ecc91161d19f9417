"""Shard: WebDataset tar shards with a seek index, a wids-style shard list and the
reference's JSONL-with-seeks (docs/recipes.md#shard; reference
``data/production/to_conversation.py`` and ``append_jsonl_seeks.py``).

Per part (:meth:`Shard.process_batch`, one call per part) the stage writes ``<corpus>-<part:05d>-<n:03d>.tar``
into ``<root>/<corpus>/<shard_dir>/`` with ``webdataset.TarWriter``. Each clip is one
sample keyed by its clip_id, holding ``json`` (:func:`schemas.record.sample_json`) and,
when ``include_mp4`` and the clip has media, ``mp4``: the clip cut from its media. A shard
closes when it holds ``max_samples_per_shard`` samples or when the next sample would make
the file exceed ``max_bytes_per_shard`` (a single sample larger than that gets a shard of
its own). The part's output rows are :data:`schemas.seek_index.SEEK_INDEX` rows, one per
member, with offsets read back from the finished tar (``TarInfo.offset_data``).

**The mp4 member is a stream copy, not a re-encode.** It is cut with FFmpeg's libavformat
through PyAV, in-process (no ffmpeg process per clip): packets of the first video and
first audio stream are copied from the video keyframe at or before the clip start up to
the clip end, with timestamps shifted so that the clip start is time 0. Why: a re-encode
decodes and encodes every frame. On this project's 2-core machine, x264 ``veryfast``
took 78 s for a 37 s 720p clip and 4 s for a 37 s 320x180 one. The in-process stream
copy took 0.12 s and 0.05 s. A re-encode also loses quality. Only a stream copy gets near
the shard bench's baseline, a plain file copy. The catch with stream copy and input
seeking is the first frames. Decoding has to begin at a keyframe, up to one GOP (often
2-10 s) before the clip start. A plain cut would show those earlier frames, or a frozen
picture, before the clip. So the pre-roll packets are kept with negative timestamps, and
the MP4 muxer writes an edit list that starts presentation at the clip start. Readers
that honour edit lists (FFmpeg/PyAV, ffprobe) then decode the first frame at time 0, and
it is the frame at the clip start. Readers that ignore edit lists see up to one GOP of
extra frames before 0. Audio starts at the packet that overlaps the clip start (about
23 ms for AAC). With B-frames, a few frames (the reorder depth) may follow the clip end.
``media.start`` in the sample JSON is the clip start: member time 0 is that media-clock
time (tests/test_shard.py checks it against the source audio).

**No path of the build machine is written** (shards are released as they are): the record's
``video`` is the sample's own member file ``<clip_id>.mp4``, else the clip's URL, else its
video id (:func:`schemas.record.video_reference`), and ``metadata`` leaves out
``media_path``. A sample with an ``mp4`` member gets a JSONL line on the member's clock
(:func:`schemas.record.jsonl_conversation`), so the reference ``train.py`` decodes the clip from
the extracted member file.

:meth:`Shard.finalize` writes, into the shard folder, ``seek_index.parquet`` (all parts in
part order), ``shardlist.json`` (wids-style) and ``<corpus>_with_seeks.jsonl`` (one
conversation per line in seek-index order; the last line is the JSON list of the BYTE
offset of each line; the reference counts characters, which is wrong once a line holds
non-ASCII text). sha256 and the conversation lines are computed while each part is
written and kept next to its part file (``<stage dir>/_shards/part-XXXXX.json`` and
``.jsonl``), so finalize never re-reads the shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import uuid
from typing import Any

import av
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

import schemas
from pipeline.stage import Output, Resources, Stage, StageConfig
from pipeline.storage import part_name
from schemas.record import jsonl_conversation, sample_json, video_reference
from schemas.seek_index import INDEX_NAME, SEEK_INDEX, SHARDLIST_NAME, jsonl_name

#: webdataset splits a member name at its first dot into key and extension, so keys must not
#: hold dots; clip ids are ``<video_id>_<start_ms>_<end_ms>`` over this alphabet.
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
TAR_BLOCK = 512
TAR_RECORD = 10240       # tarfile's stream mode pads the archive to a multiple of this
TAR_END = 2 * TAR_BLOCK  # two NUL blocks close an archive
TAR_MTIME = 0            # fixed member mtime: identical input gives byte-identical shards


class ShardConfig(StageConfig):
    """Shard stage settings (``stages.shard`` in the build config)."""

    max_samples_per_shard: int = Field(1000, ge=1, description="samples per shard at most")
    max_bytes_per_shard: int = Field(1_000_000_000, ge=TAR_RECORD,
                                     description="shard file size in bytes at most (one oversized sample gets its own shard)")
    include_mp4: bool = Field(True, description="add an `mp4` member (stream-copied clip) when the clip has media")
    shard_dir: str = Field("shards", description="folder of the shards, relative to <root>/<corpus>/")
    range_tolerance_s: float = Field(
        1.0, ge=0,
        description="seconds a clip may start before / end after its media file before the cut is an error "
                    "(caption times often overshoot the last frame a little); the cut is clamped to the file")

    @field_validator("resources")
    @classmethod
    def _whole_parts(cls, v: Resources | None) -> Resources | None:
        if v is not None and v.batch_size is not None:
            raise ValueError("the shard stage writes each part's shards in one batch: leave batch_size unset")
        return v

    @field_validator("shard_dir")
    @classmethod
    def _relative_dir(cls, v: str) -> str:
        parts = v.strip("/").split("/")
        if not v or v.startswith("/") or any(p in ("", ".", "..") or not _NAME_RE.match(p) for p in parts):
            raise ValueError(f"shard_dir must be a relative folder of [A-Za-z0-9_.-] names, got {v!r}")
        return v.strip("/")


class MediaCutError(RuntimeError):
    """A clip's media could not be cut (unreadable/corrupt media, range outside the file)."""


class Shard(Stage):
    """Clips -> WebDataset shards + seek index (see the module docstring). One batch is the
    whole part: a part's samples go into that part's shards."""

    name = "shard"
    Config = ShardConfig
    input_schema = schemas.CLIPS
    output_schema = SEEK_INDEX
    resources = Resources(num_cpus=1, batch_size=None)
    key_field = "clip_id"
    count_field = "key"  # one output row per member; a sample is one key
    config: ShardConfig

    # -- per part ----------------------------------------------------------------
    def process_batch(self, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]] | BaseException]:
        """Write the part's shards; entry *i* is ``rows[i]``'s SEEK_INDEX rows, or the
        exception that item raised (bad clip id, bad words, media cut failure).

        Raises (the whole part fails): the corpus name is not a valid file-name stem, or
        writing / moving a shard fails.
        """
        ctx, cfg, storage = self.context, self.config, self.context.storage
        part = int(ctx.part or 0)
        if not _NAME_RE.match(ctx.corpus):
            raise ValueError(f"corpus name {ctx.corpus!r} cannot name shard files ([A-Za-z0-9_.-] only)")
        shard_dir = ctx.corpus_path(cfg.shard_dir)
        prefix = f"{ctx.corpus}-{part:05d}-"

        results: list[list[dict[str, Any]] | BaseException] = [[] for _ in rows]
        seen: set[str] = set()
        tmp = self._tmp_dir(f"part-{part:05d}")
        out = None
        try:
            # samples stream into the open shard one at a time: memory holds one clip, not a part
            out = _PartWriter(tmp, prefix, storage, shard_dir, cfg.max_samples_per_shard, cfg.max_bytes_per_shard)
            for i, row in enumerate(rows):
                try:
                    key = row_key(row)
                    if key in seen:
                        raise ValueError(f"duplicate clip_id {key!r} in part {part}")
                    members, line = self._sample(row)
                except Exception as exc:  # noqa: BLE001 - per-item isolation is the contract
                    results[i] = exc
                    continue
                seen.add(key)
                out.add(i, key, members, line)
            out.close()
            for i, rec in out.index_rows:
                results[i].append(rec)
            # stale shards of this part from an earlier run (it may have had more shards)
            keep = {s["url"] for s in out.shards}
            for old in storage.ls(shard_dir):
                if old.startswith(prefix) and old.endswith(".tar") and old not in keep:
                    storage.rm(posixpath.join(shard_dir, old))
            side = posixpath.join(ctx.stage_dir, "_shards", part_name(part)[:-len(".parquet")])
            storage.write_bytes(side + ".jsonl", b"".join(out.lines))
            storage.write_bytes(side + ".json", json.dumps({"part": part, "shards": out.shards}, indent=1).encode())
        finally:
            if out is not None:
                out.discard()
            shutil.rmtree(tmp, ignore_errors=True)
        return results

    def _sample(self, row: dict[str, Any]) -> tuple[dict[str, bytes], bytes]:
        """Members of one clip's sample and its JSONL line (UTF-8, newline-terminated)."""
        row_key(row)  # validates the sample key before any media work
        media_path = row.get("media_path")
        with_mp4 = bool(self.config.include_mp4 and media_path)
        # shards are released as they are: `video` is never a path of this machine
        # (the member's file name, else the URL, else the video id; schemas/record.py)
        record = sample_json(row, video_reference(row, with_mp4), with_mp4)
        members = {"json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
        if with_mp4:
            offset = row.get("media_offset") or 0.0
            members["mp4"], lead_s = cut_clip(self.context.storage.resolve(media_path), row["start"] - offset, row["end"] - offset,
                                              tolerance_s=self.config.range_tolerance_s, return_lead=True)
            # the muxer's edit list starts at the first frame at or after the clip start: that
            # frame, not the requested start, is the member's time 0
            record["media"]["start"] = round(float(row["start"]) + lead_s, 6)
            members["json"] = json.dumps(record, ensure_ascii=False).encode("utf-8")
        # a line naming the member file has its times on the member's clock
        line = (json.dumps(jsonl_conversation(record), ensure_ascii=False) + "\n").encode("utf-8")
        return members, line

    def _tmp_dir(self, label: str) -> str:
        """A private scratch folder for this part's shards. On a local root it lies inside the
        stage folder (same filesystem, so the final move is a rename, and nothing is
        written outside the root); leftovers of a killed run of this part are removed."""
        storage = self.context.storage
        if not storage.local:
            return tempfile.mkdtemp(prefix=f"livecc-shard-{label}-")
        base = storage.full(posixpath.join(self.context.stage_dir, "_tmp"))
        os.makedirs(base, exist_ok=True)
        for old in os.listdir(base):
            if old.startswith(f"{label}-"):
                shutil.rmtree(os.path.join(base, old), ignore_errors=True)
        path = os.path.join(base, f"{label}-{uuid.uuid4().hex[:8]}")
        os.makedirs(path)
        return path

    # -- over all parts ------------------------------------------------------------
    def finalize(self, part_ids: list[int]) -> dict[str, Any]:
        """Write ``seek_index.parquet``, ``shardlist.json`` and ``<corpus>_with_seeks.jsonl``
        into the shard folder from the done parts (formats: :mod:`schemas.seek_index`).

        Returns:
            ``{"samples", "shards", "bytes" (shard bytes), "members", "jsonl_bytes"}``.

        Raises:
            ValueError: a part's side files are missing or disagree with its part file or
                with the shards on storage (re-run the shard stage for that part), or a
                clip_id occurs in two parts.
        """
        ctx, storage = self.context, self.context.storage
        shard_dir = ctx.corpus_path(self.config.shard_dir)
        sizes = _sizes(storage, shard_dir)
        tables, shardlist, jsonl_parts = [], [], []
        for k in sorted(part_ids):
            table = storage.read_table(posixpath.join(ctx.stage_dir, part_name(k))).select(SEEK_INDEX.names)
            side = posixpath.join(ctx.stage_dir, "_shards", part_name(k)[:-len(".parquet")])
            info = storage.read_json(side + ".json")
            if info is None or not storage.exists(side + ".jsonl"):
                raise ValueError(f"part {k}: shard side files {side}.json/.jsonl are missing; "
                                 f"re-run the shard stage for part {k} with --force")
            named = {s["url"] for s in info["shards"]}
            if not set(table.column("shard").to_pylist()) <= named:
                raise ValueError(f"part {k}: part file names shards missing from {side}.json; re-run part {k}")
            for s in info["shards"]:
                if sizes.get(s["url"]) != s["filesize"]:
                    raise ValueError(f"part {k}: shard {s['url']} is {sizes.get(s['url'])} bytes on storage, "
                                     f"expected {s['filesize']} (stale or missing); re-run part {k}")
            tables.append(table.cast(SEEK_INDEX))
            shardlist.extend(info["shards"])
            jsonl_parts.append((k, side + ".jsonl", table))
        index = pa.concat_tables(tables) if tables else SEEK_INDEX.empty_table()
        keys = index.column("key")
        n_samples = sum(s["nsamples"] for s in shardlist)
        distinct = len(pc.unique(keys)) if index.num_rows else 0
        if distinct != n_samples:
            raise ValueError(f"{n_samples} samples in the shard lists but {distinct} distinct keys in the "
                             "seek index: a clip_id occurs in more than one part")
        storage.write_table(posixpath.join(shard_dir, INDEX_NAME), index)
        storage.write_bytes(posixpath.join(shard_dir, SHARDLIST_NAME), json.dumps(
            {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": ctx.corpus, "shardlist": shardlist},
            indent=1, ensure_ascii=False).encode("utf-8"))
        jsonl_bytes = self._write_jsonl(shard_dir, jsonl_parts)
        return {"samples": n_samples, "shards": len(shardlist), "bytes": sum(s["filesize"] for s in shardlist),
                "members": index.num_rows, "jsonl_bytes": jsonl_bytes}

    def outputs(self, summary: dict[str, Any] | None) -> list[Output]:
        """The shard folder, with its sample and shard counts once finalized."""
        counts = {k: int(summary[k]) for k in ("samples", "shards") if k in (summary or {})}
        return [Output("shards", self.context.corpus_path(self.config.shard_dir), counts)]

    def _write_jsonl(self, shard_dir: str, parts: list[tuple[int, str, Any]]) -> int:
        """Concatenate the parts' conversation lines, streaming, and append the byte seeks."""
        storage = self.context.storage
        tmp = self._tmp_dir("finalize")
        try:
            local = os.path.join(tmp, "with_seeks.jsonl")
            seeks: list[int] = []
            pos = 0
            with open(local, "wb") as out:
                for k, path, table in parts:
                    n_json = sum(1 for m in table.column("member").to_pylist() if m == "json")
                    n = 0
                    with storage.open(path, "rb") as f:
                        for line in f:
                            seeks.append(pos)
                            out.write(line)
                            pos += len(line)
                            n += 1
                    if n != n_json:
                        raise ValueError(f"part {k}: {n} JSONL lines but {n_json} samples; re-run part {k}")
                out.write(json.dumps(seeks).encode("ascii"))
            size = os.path.getsize(local)
            storage.put_file(local, posixpath.join(shard_dir, jsonl_name(self.context.corpus)))
            return size
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _PartWriter:
    """Writes one part's samples into consecutive shards ``<prefix><n:03d>.tar``: fills a local
    tar, and when the next sample does not fit, closes it, reads its member offsets back and
    moves it into ``shard_dir`` on storage.

    After :meth:`close`: ``shards`` (shard-list entries), ``index_rows`` (``(row index,
    SEEK_INDEX row)`` in shard order) and ``lines`` (the samples' JSONL lines, same order).
    """

    def __init__(self, tmp: str, prefix: str, storage, shard_dir: str, max_samples: int, max_bytes: int):
        self.tmp, self.prefix, self.storage, self.shard_dir = tmp, prefix, storage, shard_dir
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shards: list[dict[str, Any]] = []
        self.index_rows: list[tuple[int, dict[str, Any]]] = []
        self.lines: list[bytes] = []
        self._file = self._hashed = self._tar = None
        self._rows: dict[str, int] = {}
        self._content = 0

    def add(self, row_index: int, key: str, members: dict[str, bytes], line: bytes) -> None:
        size = tar_sample_bytes(key, members)
        if self._tar is not None and shard_is_full(len(self._rows), self._content, size,
                                                   self.max_samples, self.max_bytes):
            self._close_shard()
        if self._tar is None:
            self._file = open(os.path.join(self.tmp, self._name()), "wb")
            self._hashed = _HashingWriter(self._file)   # sha256 on the way out: no second read
            self._tar = _tar_writer(self._hashed)
        self._tar.write({"__key__": key, **members})
        self._rows[key] = row_index
        self._content += size
        self.lines.append(line)

    def close(self) -> None:
        if self._tar is not None:
            self._close_shard()

    def discard(self) -> None:
        """Close an unfinished shard's handles (after a failure; its file is scratch)."""
        if self._file is not None:
            self._file.close()
        self._file = self._hashed = self._tar = None

    def _name(self) -> str:
        return f"{self.prefix}{len(self.shards):03d}.tar"

    def _close_shard(self) -> None:
        name = self._name()
        local = os.path.join(self.tmp, name)
        self._tar.close()
        self._file.close()
        size = os.path.getsize(local)
        if size != self._hashed.size_bytes:
            raise OSError(f"shard {name}: wrote {self._hashed.size_bytes} bytes but the file has {size}")
        for rec in tar_members(local):
            self.index_rows.append((self._rows[rec["key"]], {**rec, "shard": name}))
        self.shards.append({"url": name, "nsamples": len(self._rows), "filesize": size,
                            "sha256": self._hashed.sha256.hexdigest()})
        self.storage.put_file(local, posixpath.join(self.shard_dir, name))
        self._file = self._hashed = self._tar = None
        self._rows, self._content = {}, 0


# -- small pure-ish functions (tests call these directly) ------------------------------

def row_key(row: dict[str, Any]) -> str:
    """The sample key (clip_id), checked to be a safe WebDataset key.

    Raises:
        ValueError: missing, or holds characters outside ``[A-Za-z0-9_-]`` (a dot would split
            the key into key + extension when the tar is read).
    """
    key = row.get("clip_id")
    if not key or not KEY_RE.match(key):
        raise ValueError(f"clip_id {key!r} is not a valid sample key ([A-Za-z0-9_-]+ only)")
    return key


def tar_sample_bytes(key: str, members: dict[str, bytes]) -> int:
    """Bytes a sample takes in a ustar archive: per member a 512-byte header plus its data
    padded to 512 (names here fit ustar's 100 bytes, so no PAX header is needed)."""
    total = 0
    for ext, data in members.items():
        if len(f"{key}.{ext}".encode()) > 100:
            total += 3 * TAR_BLOCK  # PAX header + its data block; a generous bound
        total += TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK
    return total


def tar_file_size(content_bytes: int) -> int:
    """Size of a tar file written in stream mode whose members take ``content_bytes``."""
    return -(-(content_bytes + TAR_END) // TAR_RECORD) * TAR_RECORD


def shard_is_full(n_samples: int, content_bytes: int, next_sample_bytes: int, max_samples: int,
                  max_bytes: int) -> bool:
    """Whether a shard holding ``n_samples`` samples (``content_bytes`` of tar members) must be
    closed before the next sample: it would pass ``max_samples`` or make the file
    (:func:`tar_file_size`) larger than ``max_bytes``."""
    return n_samples >= max_samples or tar_file_size(content_bytes + next_sample_bytes) > max_bytes


def plan_shards(sample_bytes: list[int], max_samples: int, max_bytes: int) -> list[list[int]]:
    """Group samples, in order, into shards by :func:`shard_is_full` (the rule the writer
    applies as samples stream in); a sample that alone exceeds ``max_bytes`` gets a shard
    of its own. Returns lists of sample indices."""
    groups: list[list[int]] = []
    current: list[int] = []
    content = 0
    for i, size in enumerate(sample_bytes):
        if current and shard_is_full(len(current), content, size, max_samples, max_bytes):
            groups.append(current)
            current, content = [], 0
        current.append(i)
        content += size
    if current:
        groups.append(current)
    return groups


def tar_members(path: str) -> list[dict[str, Any]]:
    """``{"key", "member", "offset", "size"}`` of every member of a tar file, in order, with
    ``offset`` the byte offset of the member's data (after its header)."""
    out = []
    with tarfile.open(path, "r:") as tf:
        for ti in tf:
            if not ti.isfile():
                continue
            key, _, ext = ti.name.partition(".")
            out.append({"key": key, "member": ext, "offset": ti.offset_data, "size": ti.size})
    return out


def _tar_writer(f):
    import webdataset as wds
    # encoder=False: members are bytes we made; fixed owner and mtime keep shards reproducible
    return wds.TarWriter(f, encoder=False, user="livecc", group="livecc", mode=0o444, mtime=TAR_MTIME)


class _HashingWriter:
    """A write-only file wrapper that hashes (sha256) and counts what passes through."""

    def __init__(self, f):
        self.f = f
        self.sha256 = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size_bytes += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _sizes(storage, folder: str) -> dict[str, int]:
    """File name -> size in bytes of the files in a storage folder."""
    try:
        entries = storage.fs.ls(storage.full(folder), detail=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(e["name"].rstrip("/")): int(e["size"]) for e in entries if e.get("type") == "file"}


def cut_clip(media: str, start_s: float, end_s: float, tolerance_s: float = 1.0,
             return_lead: bool = False) -> bytes | tuple[bytes, float]:
    """The MP4 bytes of ``[start_s, end_s)`` of a media file, stream-copied (no re-encode).

    Times are seconds on the file's own clock (media clock minus ``media_offset``). The
    first video and first audio streams are copied, from the video keyframe at or before
    ``start_s``; timestamps are shifted so ``start_s`` is time 0 and the pre-roll before it
    is hidden by the MP4 edit list (see the module docstring).

    Raises:
        FileNotFoundError: the media file does not exist.
        MediaCutError: unreadable or corrupt media, no audio/video stream, the range lies
            more than ``tolerance_s`` outside the file, or no packet falls in the range.
    """
    if end_s <= start_s:
        raise MediaCutError(f"{media}: empty range [{start_s:.3f}, {end_s:.3f}) s")
    local = "://" not in media or media.startswith("file://")
    path = media[len("file://"):] if media.startswith("file://") else media
    if local and not os.path.exists(path):
        raise FileNotFoundError(f"media file {path} does not exist")
    src = None
    try:
        # remote media (s3://, gs://, hf://) is read through fsspec; PyAV seeks in it
        src = path if local else fsspec.open(media, "rb").open()
        inp = av.open(src)
    except av.error.FFmpegError as exc:
        if src is not None and not isinstance(src, str):
            src.close()
        raise MediaCutError(f"{media}: unreadable media ({exc})") from None
    try:
        data, lead_s = _remux(inp, media, start_s, end_s, tolerance_s)
        return (data, lead_s) if return_lead else data
    except av.error.FFmpegError as exc:
        raise MediaCutError(f"{media}: cutting [{start_s:.3f}, {end_s:.3f}) s failed ({exc})") from None
    finally:
        inp.close()
        if not isinstance(src, str):
            src.close()


def _remux(inp, media: str, start_s: float, end_s: float, tolerance_s: float) -> bytes:
    video = next((s for s in inp.streams.video
                  if not (s.disposition & av.stream.Disposition.attached_pic)), None)
    audio = next(iter(inp.streams.audio), None)
    streams = [s for s in (video, audio) if s is not None]
    if not streams:
        raise MediaCutError(f"{media}: no audio or video stream")
    base = (inp.start_time or 0) / av.time_base     # file clock origin, s (0 for most MP4)
    duration = (inp.duration or 0) / av.time_base
    if duration <= 0:
        raise MediaCutError(f"{media}: media has no duration (truncated?)")
    if start_s < -tolerance_s or start_s >= duration:
        raise MediaCutError(f"{media}: clip start {start_s:.3f} s is outside the media (0-{duration:.3f} s)")
    if end_s > duration + tolerance_s:
        raise MediaCutError(f"{media}: clip end {end_s:.3f} s is past the media end ({duration:.3f} s)")
    start_s, end_s = max(start_s, 0.0), min(end_s, duration)

    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    # per input stream index: (output stream, shift, end, is_audio), in stream time_base units
    plan = {}
    for s in streams:
        tb = s.time_base
        plan[s.index] = (out.add_stream_from_template(s), round((start_s + base) / tb),
                         round((end_s + base) / tb), s.type == "audio")
    lead = video or audio
    inp.seek(max(0, plan[lead.index][1]), stream=lead, backward=True, any_frame=False)
    pending = set(plan)
    copied = 0
    first_lead_pts = None   # earliest presentation time >= the clip start on the lead stream
    for pkt in inp.demux(streams):
        if pkt.dts is None:   # the demuxer's flush packet
            continue
        ostream, shift, end, is_audio = plan[pkt.stream.index]
        pts = pkt.pts if pkt.pts is not None else pkt.dts
        if is_audio:
            if pts >= end:
                pending.discard(pkt.stream.index)
                if not pending:
                    break
                continue
            if pts + (pkt.duration or 0) <= shift:   # wholly before the clip: not needed
                continue
        elif pkt.dts >= end:   # decoded after the clip end; pts >= dts, so later ones too
            pending.discard(pkt.stream.index)
            if not pending:
                break
            continue
        if pkt.stream is lead and pts >= shift and (first_lead_pts is None or pts < first_lead_pts):
            first_lead_pts = pts
        # video pre-roll from the keyframe keeps negative timestamps: the edit list hides it
        pkt.pts = pts - shift
        pkt.dts = pkt.dts - shift
        pkt.stream = ostream
        out.mux(pkt)
        copied += 1
    out.close()
    if not copied:
        raise MediaCutError(f"{media}: no packets in [{start_s:.3f}, {end_s:.3f}) s")
    lead_s = 0.0
    if first_lead_pts is not None:
        lead_s = max(0.0, float((first_lead_pts - plan[lead.index][1]) * lead.time_base))
    return buf.getvalue(), lead_s


__all__ = ["Shard", "ShardConfig", "MediaCutError", "cut_clip", "plan_shards", "shard_is_full", "tar_members",
           "tar_sample_bytes", "tar_file_size", "row_key"]
