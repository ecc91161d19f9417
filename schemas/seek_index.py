"""The seek index of a shard set, and readers for it and for JSONL-with-seeks files.

Depends only on pyarrow (with numpy), fsspec and the stdlib: ``train/`` imports it without the pipeline.

Shard folder (``<root>/<corpus>/shards/``, written by ``stages/shard.py``)::

    <corpus>-<part:05d>-<n:03d>.tar     WebDataset tar shards (POSIX tar, no compression)
    seek_index.parquet                  SEEK_INDEX rows, one per member of every sample
    shardlist.json                      wids-style shard list (nsamples, filesize, sha256)
    <corpus>_with_seeks.jsonl           the reference's JSONL with a last line of byte seeks

Tar byte layout. A sample with key ``K`` (its clip_id, ``[A-Za-z0-9_-]+``) is consecutive
members ``K.json`` then, optionally, ``K.mp4``. Each member is a 512-byte tar header
(preceded by a PAX extended header only if its name does not fit ustar, which our keys
avoid; ``offset`` is exact either way), then ``size`` data bytes, then NUL padding to a
multiple of 512. The archive ends with two 512-byte NUL blocks, padded to a multiple of
10240 bytes. :data:`SEEK_INDEX` gives, per member, ``offset``: the byte offset of its
DATA in the shard file (after its header), and ``size``: its length in bytes. Bytes
``[offset, offset + size)`` of the shard are exactly the member file, so one HTTP Range /
S3 GetObject reads a member; the members of a sample are contiguous, so one ranged read
``[min offset, max offset + size)`` reads a whole sample.

Index rows are grouped by sample (a sample's rows are adjacent) in shard order; sample
position ``i`` is the order of first appearance of its key in the index file.
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Callable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SEEK_INDEX = pa.schema([
    pa.field("key", pa.string(), nullable=False),      # sample key = clip_id
    pa.field("shard", pa.string(), nullable=False),    # shard file name, relative to the shard folder
    pa.field("member", pa.string(), nullable=False),   # member extension: "json", "mp4"
    pa.field("offset", pa.int64(), nullable=False),    # bytes: start of the member's data in the shard
    pa.field("size", pa.int64(), nullable=False),      # bytes: length of the member's data
], metadata={"livecc.table": "seek_index"})

INDEX_NAME = "seek_index.parquet"
SHARDLIST_NAME = "shardlist.json"


def jsonl_name(corpus: str) -> str:
    """File name of a corpus's JSONL-with-seeks in the shard folder."""
    return f"{corpus}_with_seeks.jsonl"


class SeekIndex:
    """Random access to the samples of one shard folder through its seek index.

    ``len(index)`` is the number of samples; ``index.keys()`` their keys in position
    order. Samples are addressed by position (int) or key (str).
    """

    def __init__(self, table: pa.Table, shard_dir: str, fs: fsspec.AbstractFileSystem):
        table = table.select(SEEK_INDEX.names).combine_chunks()
        self.shard_dir = shard_dir.rstrip("/")
        self.fs = fs
        # Arrow/numpy columns, not Python lists: an index of millions of samples stays small.
        self._key = table.column("key").chunk(0) if table.num_rows else pa.array([], pa.string())
        shard = pc.dictionary_encode(table.column("shard")).combine_chunks()
        member = pc.dictionary_encode(table.column("member")).combine_chunks()
        self._shard_names = shard.dictionary.to_pylist()
        self._shard_code = shard.indices.to_numpy(zero_copy_only=False)
        self._member_names = member.dictionary.to_pylist()
        self._member_code = member.indices.to_numpy(zero_copy_only=False)
        self._offset = table.column("offset").to_numpy()
        self._size = table.column("size").to_numpy()
        # sample i owns index rows [_start[i], _start[i+1]): a new sample where the key changes
        n = table.num_rows
        if n:
            changed = pc.not_equal(self._key[1:], self._key[:-1]).to_numpy(zero_copy_only=False)
            starts = np.concatenate([[0], np.flatnonzero(changed) + 1, [n]])
        else:
            starts = np.zeros(1, dtype=np.int64)
        self._start = starts.astype(np.int64)
        if len(self._start) - 1 != len(pc.unique(self._key)):
            raise ValueError("seek index: the rows of a sample are not adjacent (or a key repeats)")
        self._pos: dict[str, int] | None = None

    @classmethod
    def open(cls, shard_dir: str, storage_options: dict[str, Any] | None = None) -> "SeekIndex":
        """Open ``<shard_dir>/seek_index.parquet``; ``shard_dir`` is a path or fsspec URL.

        Raises:
            FileNotFoundError: no seek index in that folder.
            ValueError: a sample's rows are not adjacent.
        """
        fs, path = fsspec.core.url_to_fs(shard_dir, **(storage_options or {}))
        with fs.open(posixpath.join(path, INDEX_NAME), "rb") as f:
            table = pq.read_table(f)
        return cls(table, path, fs)

    def __len__(self) -> int:
        return len(self._start) - 1

    def keys(self) -> list[str]:
        """Sample keys (clip_ids) in position order."""
        return self._key.take(pa.array(self._start[:-1])).to_pylist()

    def position(self, i_or_key: int | str) -> int:
        """Position of a sample given by position or key.

        Raises:
            KeyError: unknown key. IndexError: position out of range.
        """
        if isinstance(i_or_key, str):
            if self._pos is None:  # built on first use: positional readers never pay for it
                self._pos = {k: i for i, k in enumerate(self.keys())}
            return self._pos[i_or_key]
        i = int(i_or_key)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range (0..{len(self) - 1})")
        return i

    def members(self, i_or_key: int | str) -> list[dict[str, Any]]:
        """The index rows of one sample: dicts with key, shard, member, offset, size."""
        i = self.position(i_or_key)
        key = self._key[int(self._start[i])].as_py()
        return [{"key": key, "shard": self._shard_names[self._shard_code[r]],
                 "member": self._member_names[self._member_code[r]],
                 "offset": int(self._offset[r]), "size": int(self._size[r])}
                for r in range(int(self._start[i]), int(self._start[i + 1]))]

    def shard_path(self, shard: str) -> str:
        """Filesystem path (for ``self.fs``) of a shard named in the index."""
        return posixpath.join(self.shard_dir, shard)

    def read(self, i_or_key: int | str) -> dict[str, bytes]:
        """All members of one sample, ``{member: bytes}``, with one ranged read.

        Raises:
            KeyError / IndexError: unknown sample. ValueError: the sample spans two shards.
            OSError: the shard cannot be read or is shorter than the index says.
        """
        rows = self.members(i_or_key)
        shards = {r["shard"] for r in rows}
        if len(shards) != 1:
            raise ValueError(f"sample {rows[0]['key']!r} spans several shards: {sorted(shards)}")
        lo = min(r["offset"] for r in rows)
        hi = max(r["offset"] + r["size"] for r in rows)
        data = self._range(rows[0]["shard"], lo, hi)
        return {r["member"]: data[r["offset"] - lo:r["offset"] - lo + r["size"]] for r in rows}

    def read_member(self, i_or_key: int | str, member: str) -> bytes:
        """One member of one sample (e.g. ``"json"``), with one ranged read.

        Raises:
            KeyError: the sample has no such member (or unknown key). OSError: as :meth:`read`.
        """
        for r in self.members(i_or_key):
            if r["member"] == member:
                return self._range(r["shard"], r["offset"], r["offset"] + r["size"])
        raise KeyError(f"sample {i_or_key!r} has no member {member!r}")

    def sample_json(self, i_or_key: int | str) -> dict[str, Any]:
        """The decoded ``json`` member (layout: :mod:`schemas.record`)."""
        return json.loads(self.read_member(i_or_key, "json"))

    def _range(self, shard: str, start: int, end: int) -> bytes:
        data = self.fs.cat_file(self.shard_path(shard), start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"shard {shard}: read {len(data)} bytes at {start}, expected {end - start} "
                          "(shard shorter than its index: stale or truncated)")
        return data


def read_jsonl_with_seeks(path: str, storage_options: dict[str, Any] | None = None
                          ) -> tuple[list[int], Callable[[int], Any]]:
    """Open a JSONL-with-seeks file (the reference's annotation format).

    Layout: one JSON value per line (``\\n``-terminated, UTF-8), then a last line (no
    trailing newline needed) holding the JSON list of the BYTE offset of each line's
    first byte. Reads only the tail of the file to find the seeks.

    Returns:
        ``(seeks, open_line)``: ``open_line(i)`` reads line ``i`` with one ranged read and
        returns its decoded JSON.

    Raises:
        ValueError: the last line is not a JSON list of non-decreasing integers.
    """
    fs, fpath = fsspec.core.url_to_fs(path, **(storage_options or {}))
    size = fs.size(fpath)
    body_end = _last_line_start(fs, fpath, size)
    last = fs.cat_file(fpath, start=body_end, end=size)
    try:
        seeks = json.loads(last)
    except ValueError as exc:
        raise ValueError(f"{path}: last line is not a JSON list of seeks ({exc})") from None
    if not isinstance(seeks, list) or not all(isinstance(s, int) for s in seeks) or \
            any(b < a for a, b in zip(seeks, seeks[1:])) or (seeks and not 0 <= seeks[-1] < body_end):
        raise ValueError(f"{path}: last line is not a sorted list of byte offsets within the file")
    ends = seeks[1:] + [body_end]

    def open_line(i: int) -> Any:
        if not 0 <= i < len(seeks):
            raise IndexError(f"line {i} out of range (0..{len(seeks) - 1})")
        return json.loads(fs.cat_file(fpath, start=seeks[i], end=ends[i]))

    return seeks, open_line


def _last_line_start(fs: fsspec.AbstractFileSystem, path: str, size: int, chunk: int = 1 << 16) -> int:
    """Byte offset where the file's last line starts (a trailing newline is ignored)."""
    end = size
    if size and fs.cat_file(path, start=size - 1, end=size) == b"\n":
        end -= 1
    pos = end
    while pos > 0:
        lo = max(0, pos - chunk)
        block = fs.cat_file(path, start=lo, end=pos)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return lo + nl + 1
        pos = lo
    return 0


__all__ = ["SEEK_INDEX", "INDEX_NAME", "SHARDLIST_NAME", "SeekIndex", "jsonl_name", "read_jsonl_with_seeks"]
