"""Per-stage ``_manifest.json``: the record of which parts are done, with what config.

Only the driver writes a manifest (Ray workers return results to it), always atomically.
A part is *done* when its entry says so, its ``config_hash`` equals the stage's current key
(its own config, declared version and extra inputs: :mod:`pipeline.pipeline`), its
``input_fingerprint`` equals the upstream part's current ``output_fingerprint``, and its
part file exists. Otherwise it is *stale* (an entry that no longer matches), *failed*,
or *pending* (no entry, or its input is not ready).
"""
from __future__ import annotations

import datetime as _dt
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import schemas
from pipeline import __version__

DONE, PENDING, STALE, FAILED = "done", "pending", "stale", "failed"
BLOCKED = "blocked"  # not a manifest status: a part whose upstream part failed (status only)


class PartEntry(BaseModel):
    status: str                               # done | failed
    config_hash: str
    input_fingerprint: str | None = None      # upstream part's output fingerprint (or plan hash)
    output_fingerprint: str | None = None     # sha256 of the part file written
    counts: dict[str, int] = Field(default_factory=dict)   # input, kept, rejected, errors
    reasons: dict[str, int] = Field(default_factory=dict)  # rejection reason -> count
    seconds: float = 0.0                      # wall time of the part on its worker
    attempts: int = 1
    error: str | None = None                  # last error, for failed parts
    finished_at: str | None = None


class Manifest(BaseModel):
    stage: str
    schema_version: str = schemas.SCHEMA_VERSION
    config_hash: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    code_version: str = ""
    parts: dict[str, PartEntry] = Field(default_factory=dict)
    finalize: dict[str, Any] | None = None
    updated_at: str | None = None

    @staticmethod
    def key(part: int) -> str:
        return f"{part:05d}"

    def entry(self, part: int) -> PartEntry | None:
        return self.parts.get(self.key(part))

    def set(self, part: int, entry: PartEntry) -> None:
        self.parts[self.key(part)] = entry


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def load_manifest(storage, stage_dir: str, stage: str) -> Manifest:
    data = storage.read_json(f"{stage_dir}/_manifest.json")
    return Manifest.model_validate(data) if data else Manifest(stage=stage)


def save_manifest(storage, stage_dir: str, manifest: Manifest) -> None:
    manifest.updated_at = now()
    manifest.code_version = code_version()
    storage.write_bytes(f"{stage_dir}/_manifest.json", manifest.model_dump_json(indent=1).encode())
