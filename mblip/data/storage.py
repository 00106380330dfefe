"""Crash-safe files: atomic writes, jsonl shards, and the final jsonl/parquet task mix.

Every file is written to a temporary name in its final directory, flushed and fsynced, then moved into place with
``os.replace``. A run killed at any moment leaves either the old file or the new one, never half of one; temporaries
left behind by a kill carry a ``.tmp`` suffix and are removed on the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    kwargs = {"encoding": encoding} if "b" not in mode else {}
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries a killed run left in ``directory``; returns how many."""
    removed = 0
    for tmp in Path(directory).glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


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
