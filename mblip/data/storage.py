"""The task mix's final file, as jsonl or parquet, written atomically through mblip.outputs (the owner of atomic
writes, settings checks and done markers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

# atomic_write_json is re-exported for mblip/training.py only, until its import moves to mblip.outputs.
from mblip.outputs import atomic_open, atomic_write_json, write_jsonl  # noqa: F401


# ----------------------------------------------------------------------------------------------------------------
# Final file
# ----------------------------------------------------------------------------------------------------------------


def write_final_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    return write_jsonl(path, rows)


def _arrow_schema(rows_factory: Callable[[], Iterable[dict]]):
    """One pass over the rows: a column type per column. Scalars of one kind keep their type; anything else
    (lists, dicts, mixed kinds) is stored as JSON text, so no row is dropped or silently retyped per batch."""
    import pyarrow as pa

    kinds: dict[str, set] = {}
    for row in rows_factory():
        for name, value in row.items():
            seen = kinds.setdefault(name, set())
            if value is not None:
                seen.add(type(value))
    fields, as_json = [], set()
    for name, seen in kinds.items():
        if seen <= {str} or not seen:
            fields.append(pa.field(name, pa.string()))
        elif seen == {bool}:
            fields.append(pa.field(name, pa.bool_()))
        elif seen == {int}:
            fields.append(pa.field(name, pa.int64()))
        elif seen <= {int, float}:
            fields.append(pa.field(name, pa.float64()))
        else:
            fields.append(pa.field(name, pa.string()))
            as_json.add(name)
    return pa.schema(fields), as_json


def write_final_parquet(
    path: str | os.PathLike, rows_factory: Callable[[], Iterable[dict]], batch_rows: int = 10_000
) -> int:
    """Stream rows into a parquet file; ``rows_factory`` is called twice (schema pass, write pass)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, as_json = _arrow_schema(rows_factory)
    count = 0
    with atomic_open(path, "wb", encoding=None) as handle:
        writer = pq.ParquetWriter(handle, schema)
        batch: list[dict] = []

        def flush():
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            batch.clear()

        for row in rows_factory():
            for name in as_json:
                if name in row and row[name] is not None and not isinstance(row[name], str):
                    row[name] = json.dumps(row[name], ensure_ascii=False)
            batch.append(row)
            count += 1
            if len(batch) >= batch_rows:
                flush()
        if batch or count == 0:
            flush()
        writer.close()
    return count
