"""Resumable outputs: atomic writes, the settings check on resume, done markers, and resumable JSONL files.

Every long job writes through this module, so every job resumes the same way:

- A file is written to a temporary name in its final directory, flushed and fsynced, then moved into place with
  ``os.replace`` (``atomic_open``). A kill leaves the old file or the new one, never half of one; temporaries left by
  a kill carry a ``.tmp`` suffix and are removed on the next start (``remove_stale_temporaries``).
- A JSONL output that grows batch by batch (``ResumableJsonl``) is appended to ``OUTPUT.partial``, flushed after
  every batch, and renamed to ``OUTPUT`` when complete. Beside it, ``OUTPUT.settings.json`` records what the rows
  depend on (the model's identity, the settings, the inputs); a rerun with anything else is refused with the
  differences and the flag that starts over (``--overwrite``), so rows of two jobs never share a file.
- Reading a partial file back (``read_resumable_jsonl``) drops a torn tail, which is what a kill or a full disk
  leaves: a last line without its newline, possibly cut inside a multi-byte UTF-8 character. The drop is logged
  with the file and byte offset and the file is truncated there before appending. A malformed line *before* the
  tail is not a kill's trace, so it is an error naming the file, line and byte offset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"
SETTINGS_SUFFIX = ".settings.json"
OVERWRITE_FLAG = "--overwrite"
# Weight files are identified by name, size and modification time: cheap for checkpoints of many GB.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".model")


class SettingsMismatch(ValueError):
    """An output on disk was made by another job; the message names the differences and how to start over."""


class CorruptOutput(ValueError):
    """A line in the middle of a resumable output is not valid JSON: not a kill's trace, so never skipped."""


# ================================================================================================================
# Atomic writes
# ================================================================================================================


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


def save_array(path: str | os.PathLike, array) -> None:
    """A numpy array as an .npy file, atomically."""
    import numpy as np

    with atomic_open(path, "wb", encoding=None) as handle:
        np.save(handle, array, allow_pickle=False)


# ================================================================================================================
# Settings check on resume
# ================================================================================================================


def model_identity(name_or_path: str | os.PathLike) -> str:
    """What a model's outputs depend on, cheaply: for a folder, config.json's content plus every other file's name,
    size and modification time (no weight is read; not README.md, the card, which `python -m eval --update_card`
    rewrites); for a Hub id, the cached revision when there is one."""
    path = Path(name_or_path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = file.relative_to(path).as_posix()
            if any(part.startswith(".") for part in Path(relative).parts) or relative == "README.md":
                continue
            digest.update(relative.encode() + b"\0")
            if file.suffix == ".json" and file.stat().st_size < (1 << 20):
                digest.update(file.read_bytes())  # config.json, generation_config.json, the tokenizer's settings
            else:
                stat = file.stat()
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            digest.update(b"\0")
        return "sha256:" + digest.hexdigest()[:32]
    identity = f"hub:{name_or_path}"
    with contextlib.suppress(Exception):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
        if isinstance(cached, str):
            identity += "@" + Path(cached).parent.name  # snapshots/<commit>/config.json
    return identity


def _same(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    # A Hub model first seen before it was downloaded has no recorded revision: the id alone must match.
    if key.endswith("model_identity") and isinstance(old, str) and isinstance(new, str):
        return old.split("@")[0] == new.split("@")[0] and ("@" not in old or "@" not in new)
    return False


def _flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_differences(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """``key: old -> new`` for every setting that differs (nested dicts by dotted key). ``defaults`` (dotted keys)
    stand in for settings a record written by an older version lacks."""
    old, new = {**(defaults or {}), **_flatten(old)}, _flatten(new)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if not _same(key, old.get(key), new.get(key))
    ]


def check_settings(
    path: str | os.PathLike,
    settings: dict,
    *,
    what: str,
    overwrite_flag: str = OVERWRITE_FLAG,
    write: bool = True,
    defaults: dict | None = None,
) -> None:
    """Refuse to resume ``what`` (an output described in the message) when ``path`` records other settings.

    With no record yet, ``settings`` is written there (unless ``write`` is False: the caller writes it later with
    ``atomic_write_json``, e.g. once the first row exists)."""
    path = Path(path)
    if path.exists():
        previous = read_json(path)
        diffs = settings_differences(previous, settings, defaults)
        if diffs:
            raise SettingsMismatch(
                f"{what} was made with other settings (recorded in {path}), so it cannot be resumed:\n  "
                + "\n  ".join(diffs)
                + f"\nRerun with the same settings to resume, or pass {overwrite_flag} to start over."
            )
        return
    if write:
        atomic_write_json(path, settings)


def check_or_write_run_config(
    path: str | os.PathLike, config: dict, overwrite: bool = False, overwrite_flag: str = OVERWRITE_FLAG
) -> None:
    """A run directory's settings record: written fresh, compared on resumption (see ``check_settings``)."""
    path = Path(path)
    if overwrite:
        path.unlink(missing_ok=True)
    check_settings(path, config, what=f"{path.parent} holds a run that", overwrite_flag=overwrite_flag)


# ================================================================================================================
# Done markers
# ================================================================================================================


def mark_done(path: str | os.PathLike, info: dict) -> None:
    """The done marker of a shard, written after the shard's data: a shard counts only once both are in place."""
    atomic_write_json(path, info)


def read_done(path: str | os.PathLike, expected: dict | None = None) -> dict | None:
    """The done marker's contents, or None when it is missing or disagrees with ``expected`` on any key."""
    path = Path(path)
    if not path.exists():
        return None
    info = read_json(path)
    if expected and any(info.get(k) != v for k, v in expected.items()):
        return None
    return info


# ================================================================================================================
# Resumable JSONL
# ================================================================================================================


def read_resumable_jsonl(path: str | os.PathLike, check: Callable[[dict], Any] | None = None) -> tuple[list[dict], int]:
    """The rows of a JSONL file a killed run may have left, and the byte length of its intact part.

    A torn tail (the bytes after the last newline: a line cut by a kill or a full disk, perhaps inside a multi-byte
    UTF-8 character) is dropped with a log line naming the file and offset. Any other line that is not a JSON object
    (or that ``check`` rejects by raising) raises ``CorruptOutput`` with the file, line number and byte offset."""
    path = Path(path)
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning(
            "Dropped the incomplete last line of %s (%d bytes from byte offset %d, cut by an interrupted write); "
            "its row is done again",
            path,
            len(data) - end,
            end,
        )
    rows, offset = [], 0
    for number, raw in enumerate(data[:end].splitlines(keepends=True), start=1):
        if raw.strip():
            try:
                row = json.loads(raw.decode("utf-8"))
                if not isinstance(row, dict):
                    raise ValueError(f"a JSON {type(row).__name__}, not an object")
                if check is not None:
                    check(row)
            except (ValueError, KeyError, TypeError) as err:
                raise CorruptOutput(
                    f"{path} line {number} (byte offset {offset}) is not a valid row ({err}); it is not the last "
                    f"line, so no interrupted write explains it. Fix or remove the line, or pass {OVERWRITE_FLAG} "
                    "to start over."
                ) from None
            rows.append(row)
        offset += len(raw)
    return rows, end


class ResumableJsonl:
    """A JSONL output written batch by batch: OUTPUT.partial while running, OUTPUT once ``finish()`` is called.

    ``settings`` (what the rows depend on) is checked against OUTPUT.settings.json before a partial file is reused.
    ``rows`` holds what an earlier run of the same job left. A finished OUTPUT is refused unless ``reopen`` is true
    (its rows then count as done and new rows extend it) or ``overwrite`` (everything is discarded).
    """

    def __init__(
        self,
        output: str | os.PathLike,
        settings: dict,
        *,
        overwrite: bool = False,
        reopen: bool = False,
        check: Callable[[dict], Any] | None = None,
        overwrite_flag: str = OVERWRITE_FLAG,
    ):
        self.output = Path(output)
        self.partial = self.output.with_name(self.output.name + PARTIAL_SUFFIX)
        self.settings_path = self.output.with_name(self.output.stem + SETTINGS_SUFFIX)
        self.settings = settings
        self.handle = None
        self.rows: list[dict] = []
        if overwrite:
            for stale in (self.output, self.partial, self.settings_path):
                stale.unlink(missing_ok=True)
        if self.output.exists() and not reopen:
            raise FileExistsError(f"{self.output} exists; pass {overwrite_flag} to replace it")
        existing = [p for p in (self.partial, self.output) if p.exists()]
        if existing and not self.settings_path.exists():
            raise SettingsMismatch(
                f"{existing[0]} has no record of the settings that made it ({self.settings_path} is missing), so it "
                f"cannot be resumed safely; pass {overwrite_flag} to start over."
            )
        if existing:
            check_settings(self.settings_path, settings, what=str(existing[0]), overwrite_flag=overwrite_flag)
            # While OUTPUT.partial exists OUTPUT does not (see write), so the partial file is the current one.
            source = existing[0]
            self.rows, keep = read_resumable_jsonl(source, check)
            if keep < source.stat().st_size:
                os.truncate(source, keep)  # a torn tail would glue itself to the next row appended
            logger.info("Resuming from %s: %d rows already done", source, len(self.rows))

    def write(self, rows: list[dict]) -> None:
        """Appends ``rows`` and flushes them: a kill loses at most the batch being written."""
        if self.handle is None:
            # Opened on the first row, so that a run failing before any row leaves no partial file behind.
            self.output.parent.mkdir(parents=True, exist_ok=True)
            if not self.settings_path.exists():
                atomic_write_json(self.settings_path, self.settings)
            if not self.partial.exists() and self.output.exists():
                os.replace(self.output, self.partial)  # a finished output reopened for more rows
            self.handle = self.partial.open("a", encoding="utf-8")
        self.handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.handle.flush()

    def close(self) -> None:
        """Stops writing and keeps OUTPUT.partial, so that a rerun resumes from it."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def finish(self) -> Path:
        """Closes the output and gives it its final name; with no row ever written, OUTPUT is an empty file."""
        self.close()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if not self.settings_path.exists():
            atomic_write_json(self.settings_path, self.settings)
        if self.partial.exists():
            os.replace(self.partial, self.output)
            _fsync_dir(self.output.parent)
        elif not self.output.exists():
            self.output.touch()
        return self.output
