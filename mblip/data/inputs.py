"""Reading English vision-and-language examples and sorting out malformed rows.

Inputs: jsonl, json (a list of objects, or an object holding one under "data"), csv, parquet, or a ``datasets``
dataset saved with ``save_to_disk`` (a directory). A malformed row is never dropped silently: it is counted by
reason, a few are kept as examples for the report, and too many of them fail the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mblip.bad_rows import BadRows

from .templates import TASKS, parse_match_label, resolve_task, tasks_message


MAX_EXAMPLES_KEPT = 5


@dataclass(frozen=True)
class Columns:
    image: str = "image_id"
    context: str = "context"
    label: str = "label"
    task: str = "task"
    rationale: str = "rationale"

    def roles(self) -> dict[str, str]:
        return {"context": self.context, "label": self.label, "rationale": self.rationale}

    def consumed(self) -> set[str]:
        return {self.image, self.context, self.label, self.task, self.rationale}


@dataclass
class Example:
    index: int  # position in the input: fixes language, template and shard assignment
    task: str
    image_id: str
    fields: dict[str, Any]  # role ("context", "label", "rationale") -> value
    extra: dict[str, Any]  # other input columns, passed through to the output


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------

_INVALID = object()


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                yield (_INVALID, f"invalid JSON ({error.msg} at column {error.colno}): {line.strip()}")


def _json_rows(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of examples (or {{'data': [...]}}), got {type(data).__name__}.")
    yield from data


def _dataset_rows(dataset) -> Iterator[Any]:
    yield from dataset


def _load_dataset(path: Path, split: str):
    import datasets

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(
                    f"{path}: no split {split!r}; splits: {', '.join(loaded)}. Pick one with --input_split."
                )
            loaded = loaded[split]
        return loaded
    builder = {".csv": "csv", ".parquet": "parquet"}[path.suffix.lower()]
    return datasets.load_dataset(builder, data_files=str(path), split="train")


SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def iter_rows(source, split: str = "train") -> Iterator[Any]:
    """Rows of ``source``: a path (see module doc) or a ``datasets.Dataset``/any iterable of dicts."""
    if not isinstance(source, (str, os.PathLike)):
        yield from _dataset_rows(source)
        return
    path = Path(source)
    if not path.exists():
        raise ValueError(f"Input {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".csv", ".parquet"):
        yield from _dataset_rows(_load_dataset(path, split))
    elif suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from _json_rows(path)
    else:
        raise ValueError(
            f"Cannot read {str(path)!r}: use one of {', '.join(SUPPORTED_SUFFIXES)} or a directory written by "
            "datasets' save_to_disk."
        )


def input_fingerprint(source, split: str = "train") -> str:
    """Identifies the input, so a resumed run can tell that it still reads the same data."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return "sha256:" + digest.hexdigest()
        return "dataset:" + str(getattr(_load_dataset(path, split), "_fingerprint", path.resolve()))
    fingerprint = getattr(source, "_fingerprint", None)
    if fingerprint is None:
        rows = json.dumps(list(source), sort_keys=True, ensure_ascii=False, default=str)
        fingerprint = hashlib.sha256(rows.encode("utf-8")).hexdigest()
    return "dataset:" + str(fingerprint)


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A usable text value: strings and numbers (VQA answers like 2) count; None, blanks and containers don't."""
    if value is None or isinstance(value, (dict, list, tuple)):
        return None
    if isinstance(value, float) and math.isnan(value):  # an empty csv/parquet cell
        return None
    text = str(value).strip()
    return text or None


_MISSING_REASON = {"context": "missing_context", "label": "missing_target", "rationale": "missing_rationale"}


def validate_row(index: int, row: Any, columns: Columns, default_task: str | None) -> tuple[Example | None, str | None]:
    """An Example, or the reason the row is malformed."""
    if isinstance(row, tuple) and row and row[0] is _INVALID:
        return None, "invalid_json"
    if not isinstance(row, dict):
        return None, "not_an_object"
    raw_task = _text(row.get(columns.task)) or default_task
    if raw_task is None:
        return None, "missing_task"
    task = resolve_task(raw_task)
    if task is None:
        return None, "unknown_task"
    image = _text(row.get(columns.image))
    if image is None:
        return None, "missing_image"
    spec = TASKS[task]
    fields = {}
    for role, column in columns.roles().items():
        if role not in spec.slots:
            continue
        value = row.get(column)
        if role == "label" and spec.yes_no:
            if value is None or (isinstance(value, str) and not value.strip()):
                return None, "missing_target"
            if parse_match_label(value) is None:
                return None, "bad_match_label"
            fields[role] = value
            continue
        text = _text(value)
        if text is None and role in spec.required:
            return None, _MISSING_REASON[role]
        fields[role] = text
    extra = {k: v for k, v in row.items() if k not in columns.consumed()}
    return Example(index, task, image, fields, extra), None


def load_examples(
    source,
    columns: Columns = Columns(),
    default_task: str | None = None,
    split: str = "train",
    max_rows: int | None = None,
) -> tuple[list[Example], BadRows, int]:
    """Valid examples, the malformed-row record, and the number of rows read."""
    examples, malformed, n_rows = [], malformed_rows(), 0
    for index, row in enumerate(iter_rows(source, split)):
        if max_rows is not None and index >= max_rows:
            break
        n_rows += 1
        example, reason = validate_row(index, row, columns, default_task)
        if example is None:
            row = row[1] if isinstance(row, tuple) and row and row[0] is _INVALID else row
            excerpt = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False, default=str)
            malformed.add(reason, index, excerpt)
        else:
            examples.append(example)
    malformed.total = n_rows
    return examples, malformed, n_rows


def malformed_rows() -> BadRows:
    """The bad-row report of an input reader (mblip.bad_rows)."""
    return BadRows(noun="input rows", state="malformed", max_examples=MAX_EXAMPLES_KEPT)


def check_malformed(malformed: BadRows, n_rows: int, max_bad_rows: float, columns: Columns) -> None:
    """Fail clearly when more than ``max_bad_rows`` (a fraction) of the rows are malformed."""
    if n_rows == 0:
        raise ValueError("The input holds no rows.")
    malformed.total = n_rows
    hints = []
    if malformed.by_reason.get("missing_task"):
        hints.append(f"rows need a {columns.task!r} column or --task")
    if malformed.by_reason.get("unknown_task"):
        hints.append(f"known tasks: {tasks_message()}")
    if malformed.by_reason.get("missing_image"):
        hints.append(f"the image column is {columns.image!r} (--image_column)")
    if malformed.by_reason.get("missing_target"):
        hints.append(f"the target column is {columns.label!r} (--target_column)")
    malformed.check(max_bad_rows, hint=("Hints: " + "; ".join(hints)) if hints else "")
