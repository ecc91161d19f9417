"""Row validation against an Arrow schema, with errors that name the offending field."""
from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa


class SchemaError(ValueError):
    """A row does not fit a schema. ``field`` names the column, ``row`` its index."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None):
        super().__init__(message)
        self.field = field
        self.row = row


def rows_to_table(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from dict rows; missing keys become nulls, unknown keys are an error.

    Raises:
        SchemaError: naming the first field (and row) that does not convert, or an unknown key.
    """
    rows = list(rows)
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise SchemaError(f"row {i}: unknown field(s) {sorted(extra)} for table "
                              f"{(schema.metadata or {}).get(b'livecc.table', b'?').decode()}",
                              field=sorted(extra)[0], row=i)
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        try:
            arr = pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            bad = _first_bad_row(values, field.type)
            raise SchemaError(f"field {field.name!r} (row {bad}): {exc}", field=field.name, row=bad) from exc
        if not field.nullable and arr.null_count:
            bad = next(i for i, v in enumerate(values) if v is None)
            raise SchemaError(f"field {field.name!r} (row {bad}): null in a non-nullable field",
                              field=field.name, row=bad)
        columns.append(arr)
    return pa.Table.from_arrays(columns, schema=schema)


def validate_rows(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> None:
    """Check that ``rows`` fit ``schema``.

    Raises:
        SchemaError: naming the offending field and row.
    """
    rows_to_table(rows, schema)


def _first_bad_row(values: list[Any], type_: pa.DataType) -> int | None:
    for i, v in enumerate(values):
        try:
            pa.array([v], type=type_)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return i
    return None
