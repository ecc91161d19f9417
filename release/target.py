"""Write a staged release folder to an fsspec URL (``s3://bucket/prefix``, ``gs://...``, a
local folder), for teams without the Hub (docs/recipes.md#release).

Resumable: a file already at the target with the right size is not sent again; each file is
written under a temporary name and renamed where the filesystem can rename (local folders),
and an object store's single PUT is atomic, so a kill never leaves a short file under a final
name. Shards and plots of an older release that are not in this one are removed from the
target's ``data/train/`` and ``plots/``; nothing else there is touched. Afterwards every file's
size at the target is checked against the folder.
"""
from __future__ import annotations

import logging
import posixpath
import uuid
from typing import Any

import fsspec

from release.folder import DATA_DIR, PLOTS_DIR, ReleaseError, StagedRelease, human_bytes

log = logging.getLogger("livecc.release")


def publish_to_target(staged: StagedRelease, target: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the staged folder to ``target`` and check the sizes there.

    Returns:
        ``{"url", "files", "bytes", "sent_files", "sent_bytes", "removed"}``.

    Raises:
        ReleaseError: a file at the target has another size after the copy.
    """
    fs, root = fsspec.core.url_to_fs(target, **(storage_options or {}))
    root = root.rstrip("/")
    local_fs = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    existing = _sizes(fs, root)
    for path in existing.pop(_SCRATCH, []):   # a killed earlier copy's temporary files
        fs.rm(posixpath.join(root, path))
    sent_files = sent_bytes = 0
    for f in staged.files:
        dst = posixpath.join(root, f.path)
        if existing.get(f.path) == f.size_bytes:
            continue
        fs.makedirs(posixpath.dirname(dst), exist_ok=True)
        if local_fs:
            tmp = f"{dst}.tmp-{uuid.uuid4().hex[:8]}"
            fs.put_file(f.local, tmp)
            fs.mv(tmp, dst)
        else:
            fs.put_file(f.local, dst)
        sent_files += 1
        sent_bytes += f.size_bytes
        log.info("target: %s (%s)", f.path, human_bytes(f.size_bytes))
    planned = {f.path for f in staged.files}
    removed = []
    for path in sorted(existing):
        if path not in planned and (path.startswith(DATA_DIR + "/") or path.startswith(PLOTS_DIR + "/")):
            fs.rm(posixpath.join(root, path))
            removed.append(path)
    after = _sizes(fs, root)
    wrong = [f"{f.path}: {after.get(f.path)} bytes at the target, {f.size_bytes} here"
             for f in staged.files if after.get(f.path) != f.size_bytes]
    if wrong:
        raise ReleaseError(f"{target} does not match the release folder: " + "; ".join(wrong[:20]))
    return {"url": target, "files": len(staged.files), "bytes": staged.size_bytes, "sent_files": sent_files,
            "sent_bytes": sent_bytes, "removed": removed}


def _sizes(fs, root: str) -> dict[str, Any]:
    """Relative path -> size of every file under ``root`` (empty when it does not exist); temporary
    files of a killed copy are listed under ``_SCRATCH``."""
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = posixpath.relpath(path, root) if path.startswith(root) else path
        if ".tmp-" in rel:
            out.setdefault(_SCRATCH, []).append(rel)
        else:
            out[rel] = int(info["size"])
    return out


_SCRATCH = "\0scratch"


__all__ = ["publish_to_target"]
