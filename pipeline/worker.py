"""What runs on a Ray actor: one part of one stage, from input rows to three part files.

Kept free of Ray so that it can run in-process too (tests, debugging, the bench baseline).
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from pipeline.stage import Rejected, Stage
from pipeline.storage import Storage, part_name


def error_row(stage: str, part: int, key: str, exc: BaseException) -> dict[str, Any]:
    msg = str(exc) or repr(exc)
    if not str(exc):
        tb = traceback.extract_tb(exc.__traceback__)
        if tb:
            msg += f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})"
    return {"stage": stage, "part": part, "item_key": key, "error_type": type(exc).__name__, "message": msg[:4000]}


def items_fingerprint(items: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def _isolating_table(rows: list[dict], keys: list[str], schema: pa.Schema, stage: str, part: int,
                     errors: list[dict], lenient: bool = False) -> pa.Table:
    """Build the table; a row that does not fit the schema becomes an error row for its item
    (named field and all) instead of failing the whole part."""
    if lenient:  # rejected rows: keep what fits, drop keys the schema does not know
        names = set(schema.names)
        rows = [{k: v for k, v in r.items() if k in names} for r in rows]
    while True:
        try:
            return schemas.rows_to_table(rows, schema)
        except schemas.SchemaError as exc:
            if exc.row is None:
                raise
            errors.append(error_row(stage, part, keys[exc.row], exc))
            del rows[exc.row]
            del keys[exc.row]


def run_batches(stage: Stage, rows: list[dict[str, Any]]) -> list[Any]:
    """All rows of a part through :meth:`Stage.process_batch`, ``resources.batch_size`` rows at
    a time (``None``: one call with the whole part, even an empty one: a whole-part stage
    writes its per-part files anyway); entry *i* is the result for ``rows[i]``.

    Raises:
        RuntimeError: the stage returned a result list of the wrong length.
    """
    size = (stage.config.resources or stage.resources).batch_size or max(1, len(rows))
    results: list[Any] = []
    for i in range(0, len(rows), size) or [0]:
        batch = rows[i:i + size]
        out = stage.process_batch(batch)
        if len(out) != len(batch):
            raise RuntimeError(f"{stage.name}.process_batch returned {len(out)} results for {len(batch)} rows")
        results.extend(out)
    return results


def execute_part(stage: Stage, storage: Storage, part: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Process one part and write ``part-k``, ``_rejected/part-k`` and ``_errors/part-k``.

    The main part file is written last: its presence (with a matching manifest entry)
    is what makes the part done, so a kill at any point leaves the part redoable.

    Returns:
        counts (input, kept, rejected, errors), rejection reasons, the output fingerprint
        (sha256 of the part file) and the wall seconds.
    """
    t0 = time.perf_counter()
    stage.context.part = part
    name = stage.name
    results = run_batches(stage, rows)
    kept, kept_keys, rejected, rejected_keys, errors = [], [], [], [], []
    reasons: Counter[str] = Counter()
    for row, res in zip(rows, results):
        key = stage.key(row)
        if isinstance(res, BaseException):
            errors.append(error_row(name, part, key, res))
            continue
        for out in res:
            if isinstance(out, Rejected):
                rejected.append({**out.row, "reason": out.reason, "detail": out.detail or None})
                rejected_keys.append(key)
                reasons[out.reason] += 1
            else:
                kept.append(out)
                kept_keys.append(key)
    table = _isolating_table(kept, kept_keys, stage.output_schema, name, part, errors)
    rej_schema = schemas.rejected_schema(stage.input_schema or stage.output_schema)
    rej_table = _isolating_table(rejected, rejected_keys, rej_schema, name, part, errors, lenient=True)
    stage_dir = stage.context.stage_dir
    fname = part_name(part)
    for sub, tbl in (("_rejected", rej_table), ("_errors", schemas.rows_to_table(errors, schemas.ERRORS))):
        path = f"{stage_dir}/{sub}/{fname}"
        if tbl.num_rows:
            storage.write_table(path, tbl)
        elif storage.exists(path):  # an earlier run's leftovers would be double-counted
            storage.rm(path)
    fingerprint = storage.write_table(f"{stage_dir}/{fname}", table)
    counts = {"input": len(rows), "kept": table.num_rows, "rejected": rej_table.num_rows, "errors": len(errors)}
    if stage.count_field:  # several rows per kept item (the shard's member rows): count items
        counts["rows"] = table.num_rows
        counts["kept"] = len(pc.unique(table[stage.count_field])) if table.num_rows else 0
    return {
        "counts": counts,
        "reasons": dict(reasons),
        "output_fingerprint": fingerprint,
        "seconds": round(time.perf_counter() - t0, 3),
    }
