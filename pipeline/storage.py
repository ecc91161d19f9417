"""fsspec-backed storage for a corpus root: part paths, atomic writes, Parquet part files.

A root is any fsspec URL: a local folder, ``s3://bucket/prefix``, ``gs://...``, ``hf://...``.
On a local filesystem a write goes to a temporary sibling and is renamed into place; on
object stores a single PUT is already atomic, so the object is written directly.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

import schemas

PART_NAME = "part-{:05d}.parquet"


def part_name(part: int) -> str:
    return PART_NAME.format(part)


class Storage:
    """One corpus root. Paths passed to methods are relative to the root (posix style)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.url = root
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            self.root = os.path.abspath(self.root)

    # -- paths -------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        return posixpath.join(*parts) if parts else ""

    def full(self, path: str) -> str:
        """Filesystem path (no protocol) of a root-relative path."""
        return posixpath.join(self.root, path) if path else self.root

    def url_of(self, path: str) -> str:
        """A URL another process (or ffmpeg, for local roots) can open."""
        if self.local:
            return self.full(path)
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{self.full(path)}"

    def resolve(self, path: str) -> str:
        """A path as stored in a row (``media_path``), made openable: URLs and absolute paths
        as they are, a relative path under this root (as the media stage writes it)."""
        if "://" in path or os.path.isabs(path):
            return path
        return self.url_of(path)

    # -- basic I/O -----------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.exists(self.full(path))

    def open(self, path: str, mode: str = "rb"):
        return self.fs.open(self.full(path), mode)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(self.full(path))

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes from byte ``offset``: one ranged read (HTTP Range / S3 GetObject)."""
        return self.fs.cat_file(self.full(path), start=offset, end=offset + size)

    def read_json(self, path: str, default: Any = None) -> Any:
        try:
            return json.loads(self.read_bytes(path))
        except FileNotFoundError:
            return default

    def ls(self, path: str) -> list[str]:
        """Names (not paths) in a folder; empty when it does not exist."""
        try:
            entries = self.fs.ls(self.full(path), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def rm(self, path: str) -> None:
        if self.exists(path):
            self.fs.rm(self.full(path), recursive=True)

    def makedirs(self, path: str) -> None:
        if self.local:
            os.makedirs(self.full(path), exist_ok=True)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write atomically: readers see the old file or the new one, never a torn one."""
        full = self.full(path)
        if self.local:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = f"{full}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, full)
        else:
            with self.fs.open(full, "wb") as f:
                f.write(data)

    def put_file(self, local_path: str, path: str) -> None:
        """Move a finished local file into place atomically (rename when local, upload otherwise)."""
        full = self.full(path)
        if self.local:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            os.replace(local_path, full)
        else:
            self.fs.put_file(local_path, full)
            os.unlink(local_path)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    # -- Parquet part files ------------------------------------------------------
    def write_table(self, path: str, table: pa.Table) -> str:
        """Write a Parquet file atomically with the schema version in its metadata.

        Returns the sha256 of the bytes written: the part's output fingerprint, stable
        for identical content, so a re-run that changes nothing keeps downstream parts done.
        """
        meta = dict(table.schema.metadata or {})
        meta[b"livecc.schema_version"] = schemas.SCHEMA_VERSION.encode()
        table = table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.write_bytes(path, data)
        return hashlib.sha256(data).hexdigest()

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        with self.open(path) as f:
            return pq.read_table(f, columns=columns)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"
