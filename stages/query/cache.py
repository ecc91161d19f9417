"""The query stage's response cache: one small JSON file per answer, in the corpus under the
stage's folder (``<stage dir>/_cache/<k[:2]>/<k>.json``), through the corpus storage (fsspec),
so it travels with the corpus to object storage and every worker of a cluster shares it.

The key is the sha256 of the endpoint model, the prompt template's hash, the generation
parameters and the transcript text: a re-run (plain, ``--force`` or after a kill) answers
every clip already answered without a request, and a changed model, template or parameter
misses. An entry is written the moment its answer arrives (atomically), so a killed build
loses no paid answer. Only parseable answers are cached.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def cache_key(model: str, template_sha: str, params: dict[str, Any], text: str) -> str:
    """sha256 hex of what decides an answer (``params``: the generation parameters)."""
    payload = json.dumps({"model": model, "template": template_sha, "params": params, "text": text},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers by :func:`cache_key` under ``folder`` of ``storage`` (a :class:`pipeline.storage.Storage`)."""

    def __init__(self, storage, folder: str):
        self.storage, self.folder = storage, folder

    def path(self, key: str) -> str:
        return f"{self.folder}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry, or None (absent or unreadable: a miss)."""
        try:
            entry = self.storage.read_json(self.path(key))
        except ValueError:
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("reply"), str) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.storage.write_json(self.path(key), entry)
