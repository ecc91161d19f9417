"""What runs on a worker: a part through one stage, or through a fused chain of stages, from
input rows to each stage's three part files.

Kept free of Ray: :class:`StageRunner` is the body of the Ray actor (:mod:`pipeline.actor`) and
of the in-process :class:`pipeline.executor.LocalExecutor` alike.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from pipeline.stage import Rejected, Stage
from pipeline.storage import Storage, part_name

log = logging.getLogger("livecc")


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
    """Process one part and write its files (see :func:`execute_part_table`); returns the result."""
    return execute_part_table(stage, storage, part, rows)[0]


def execute_part_table(stage: Stage, storage: Storage, part: int, rows: list[dict[str, Any]],
                       rows_schema: pa.Schema | None = None, want_rows: bool = False,
                       ) -> tuple[dict[str, Any], pa.Table, list[dict] | None]:
    """Process one part and write ``part-k``, ``_rejected/part-k`` and ``_errors/part-k``.

    The main part file is written last: its presence (with a matching manifest entry)
    is what makes the part done, so a kill at any point leaves the part redoable.

    Returns:
        the result -- counts (input, kept, rejected, errors), rejection reasons, the output
        fingerprint (sha256 of the part file) and the wall seconds -- the table written, and
        (``want_rows``) its rows exactly as reading the part file back gives them (see
        :func:`canonical_rows`; ``rows_schema``: the schema ``rows`` were read with, ``None``
        if they were not read from a part file).
    """
    t0 = time.perf_counter()
    stage.context.part = part
    name = stage.name
    results = run_batches(stage, rows)
    kept, kept_keys, rejected, rejected_keys, errors = [], [], [], [], []
    kept_src: list[dict[str, Any]] = []
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
                kept_src.append(row)
    n_kept = len(kept)
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
    }, table, (None if not want_rows else table.to_pylist() if n_kept != table.num_rows  # rows went to errors
               else canonical_rows(table, kept, kept_src, rows_schema))


def canonical_rows(table: pa.Table, kept: list[dict[str, Any]], sources: list[dict[str, Any]],
                   source_schema: pa.Schema | None) -> list[dict[str, Any]]:
    """``table.to_pylist()`` for a table just built from ``kept``, without converting again the
    values a stage passed through from its input: a fused chain hands these rows to the next
    stage, which must see exactly what it would read from the part file.

    A value is reused when its column has the same type in ``source_schema`` (the schema the
    input rows were read with) and it is the very object of its input row (``sources[i]`` made
    ``kept[i]``), or, in a list column, a new list of such objects (a clip's slice of its
    video's words). Anything else is converted from the table: a value a
    stage built can differ from its Arrow round trip (an int in a double column, a tuple, a
    missing key, dict key order). Stages do not mutate their input rows in place.
    """
    if source_schema is None or not kept:
        return table.to_pylist()
    names = table.column_names
    columns: list[list[Any]] = []
    for field in table.schema:
        name = field.name
        idx = source_schema.get_field_index(name)
        if idx < 0 or not source_schema.field(idx).type.equals(field.type):
            columns.append(table.column(name).to_pylist())
            continue
        values = [r.get(name) for r in kept]
        bad = [i for i, (v, src) in enumerate(zip(values, sources)) if v is not src.get(name)]
        if bad and (pa.types.is_list(field.type) or pa.types.is_large_list(field.type)):
            known = {id(e) for src in {id(x): x for x in sources}.values() for e in (src.get(name) or ())}
            bad = [i for i in bad if not (type(values[i]) is list and all(id(e) in known for e in values[i]))]
        if len(bad) == len(values):
            values = table.column(name).to_pylist()
        elif bad:
            for i, v in zip(bad, table.column(name).take(bad).to_pylist()):
                values[i] = v
        columns.append(values)
    return [dict(zip(names, vals)) for vals in zip(*columns)]


class StageRunner:
    """Runs part specs from the executor; keeps each stage it set up for later parts.

    A stage is set up once per runner (actor) and config: the whole config, runtime fields
    (device, proxies ...) included, so a changed setting gets a fresh stage even where the output
    key is the same; several builds (roots) may share one runner.
    """

    def __init__(self) -> None:
        self._stages: dict[tuple[str, ...], Stage] = {}
        self.setup_s: dict[str, float] = {}   # stage name -> seconds its setup() took here

    def stage(self, spec: dict[str, Any]) -> Stage:
        cls: type[Stage] = spec["cls"]
        ctx = spec["context"]
        key = (f"{cls.__module__}.{cls.__qualname__}", json.dumps(spec["config"], sort_keys=True, default=str),
               ctx.storage.url, ctx.corpus)
        stage = self._stages.get(key)
        if stage is None:
            t0 = time.perf_counter()
            stage = cls(cls.Config.model_validate(spec["config"]), ctx)
            stage.setup()
            self._stages[key] = stage
            self.setup_s[cls.name] = round(time.perf_counter() - t0, 3)
            log.info("%s: set up in %.2f s", cls.name, self.setup_s[cls.name])
        return stage

    def run_chain(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """Part ``task["part"]`` through ``task["stages"]`` in order, the kept rows of one stage
        passed in memory to the next (a fused chain; one stage is a chain of one). Every stage
        still writes its part files. A later stage whose part is already done for the input it
        now gets (``done_input`` in its spec, and its part file exists) is skipped unless
        ``task["force"]``, and the next reads its part file.

        Returns one result per stage that was reached: ``{"stage", "ran", "start", "end"}`` plus,
        for a stage that ran, :func:`execute_part`'s result. An exception ends the chain; the
        results so far are attached to it as ``exc.livecc_results``.
        """
        k, results = task["part"], []
        rows: list[dict[str, Any]] | None = None
        rows_schema: pa.Schema | None = None
        input_fp = task["input_fingerprint"]
        for i, spec in enumerate(task["stages"]):
            start = time.time()
            try:
                stage = self.stage(spec)
                storage: Storage = stage.context.storage
                path = f"{stage.context.stage_dir}/{part_name(k)}"
                if i > 0 and not task["force"] and spec["done_input"] == input_fp and storage.exists(path):
                    results.append({"stage": stage.name, "ran": False, "start": start, "end": time.time(),
                                    "output_fingerprint": spec["done_output"], "setup_s": self.setup_s.get(stage.name)})
                    input_fp, rows = spec["done_output"], None
                    continue
                if rows is None:
                    src = task["input"] if i == 0 else f"{task['stages'][i - 1]['context'].stage_dir}/{part_name(k)}"
                    if i == 0 and task["source"]:
                        rows, rows_schema = list(src), None
                    else:
                        read = storage.read_table(src)
                        rows, rows_schema = read.to_pylist(), read.schema
                result, table, out_rows = execute_part_table(stage, storage, k, rows, rows_schema,
                                                             want_rows=i + 1 < len(task["stages"]))
            except BaseException as exc:
                exc.livecc_results = results  # stages finished before the failure are kept
                exc.livecc_stage = spec["cls"].name
                raise
            results.append({"stage": stage.name, "ran": True, "start": start, "end": time.time(),
                            "input_fingerprint": input_fp, "setup_s": self.setup_s.get(stage.name), **result})
            input_fp = result["output_fingerprint"]
            rows, rows_schema = (out_rows, table.schema) if i + 1 < len(task["stages"]) else (None, None)
        return results
