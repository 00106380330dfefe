"""Training data the way users hold it: every form of image column, streaming, and the per-image data check.

`train_mblip.py` (mblip/training.py) and `predict.py` read their rows through this module:

- **Loading.** `--train_file` / `--validation_file` take one file, several separated by commas, or globs, of any
  format `datasets` infers from the extension (json/jsonl, csv/tsv, parquet, arrow, webdataset `.tar` shards, image
  files for imagefolder; `.gz`/`.zst`/... compressed text files too). `--dataset_name` takes a Hub id, a local folder
  (imagefolder with `metadata.jsonl`, a folder of parquet or tar shards, a `save_to_disk` folder) or anything else
  `datasets.load_dataset` accepts. `--streaming` loads an `IterableDataset` instead, never materialised.
- **Image columns.** A column holds, per row, one image or a list of them, each a path relative to `--image_root`,
  a `datasets.Image` value (a decoded PIL image, or a `{"bytes", "path"}` record), or raw image bytes. `Image()`
  columns are cast to `Image(decode=False)`, so that nothing is decoded before the collator needs it. Column names can
  point into nested fields with dots: webdataset's `json.context`, say (a top-level column of that exact name wins).
- **The data check.** `check_split` checks each distinct image once (paths by their normalised path, embedded images
  by a hash of their bytes), in parallel processes, and caches the result under `--data_check_cache` keyed by the
  dataset's fingerprint. The cache keeps each image's verdict with its file's stamp (size, mtime_ns, ctime_ns, taken
  before the check): a rerun on the same data stats every image file and checks again only those whose stamp changed
  (a restored missing image, an image edited or truncated in place); an embedded image's verdict is keyed by its
  content. A streaming run checks lazily as rows arrive (`CheckedStream`), each distinct image once per process. Both
  count every skipped row by reason, keep a few examples naming the row, the column and what was found, and fail past
  `--max_bad_rows`; nothing is substituted.
- **Streaming and resume.** `CheckedStream` records the stream's state (`IterableDataset.state_dict()`) and the
  running counts at every global batch boundary; `StreamState` writes the one matching each checkpoint into its
  `trainer_state.json`, and a resumed run starts the stream there instead of reading past the trained rows.

A cached check trusts a file whose size and times did not change (a rewrite that restores all three is not seen;
`--recheck_images` checks everything again, `--data_check_cache none` turns the cache off). An image that passes the
check and still fails to decode in training is counted by the collator.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections import OrderedDict
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from mblip.data.storage import atomic_open, atomic_write_json
from mblip.images import NO_STAMP, check_files, check_kind, file_stamp


logger = logging.getLogger("train_mblip")

CHECK_VERSION = 2  # bump when what the check decides changes, so that older cached checks are not reused
EXAMPLES = 5  # examples of skipped rows kept in the report
PARALLEL_FROM = 2000  # rows (images) below which processes cost more than they save
STREAM_MIN_ROWS = 1000  # a stream is judged against --max_bad_rows mid-run only after this many rows (and at its end)
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")

# The data check's reason for each kind of ImageDecodeError (mblip/images.py), and the other reasons.
IMAGE_PROBLEMS = {
    "missing": "missing image",
    "too_large": "image over the pixel limit",
    "unreadable": "unreadable image",
}
EMPTY_TARGET, NO_IMAGE, NOT_AN_IMAGE = "empty target", "no image", "not an image"


# ------------------------------------------------------------------------------------------------ loading
def data_files(spec: str, flag: str = "--train_file") -> list[str]:
    """One file, several separated by commas, or glob patterns -> the files, in the order given (globs sorted)."""
    files = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        if glob.has_magic(part):
            matches = sorted(glob.glob(part, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{flag} pattern {part!r} matches no file")
            files += matches
        elif Path(part).is_dir():
            raise ValueError(f"{flag} {part!r} is a folder; pass it as --dataset_name (imagefolder, shards, ...)")
        elif not Path(part).is_file():
            raise FileNotFoundError(f"{flag} {part!r} does not exist")
        else:
            files.append(part)
    if not files:
        raise ValueError(f"{flag} {spec!r} names no file")
    return files


def builder_for(files: list[str], flag: str = "--train_file") -> tuple[str, dict]:
    """The `datasets` packaged builder (and its keyword arguments) for these files, from their extensions."""
    from datasets.packaged_modules import _EXTENSION_TO_MODULE

    found = {}
    for path in files:
        name = Path(path).name
        stem, ext = os.path.splitext(name)
        if ext.lower() in COMPRESSIONS:  # data.jsonl.gz is read as jsonl
            ext = os.path.splitext(stem)[1]
        module = _EXTENSION_TO_MODULE.get(ext) or _EXTENSION_TO_MODULE.get(ext.lower())
        if module is None:
            known = sorted({e for e, (m, _) in _EXTENSION_TO_MODULE.items() if m != "imagefolder" and e.islower()})
            raise ValueError(
                f"{flag}: cannot tell the format of {path!r} from its extension {ext!r}; use one of {known}, image "
                "files (imagefolder), or pass a folder or Hub id as --dataset_name"
            )
        found.setdefault(module[0], (module[1], path))
    if len(found) > 1:
        raise ValueError(f"{flag}: the files mix formats {sorted(found)}; e.g. {[p for _, p in found.values()]}")
    ((builder, (kwargs, _)),) = found.items()
    return builder, dict(kwargs)


def _load(path, name=None, split="train", data_files_=None, streaming=False, **kwargs):
    if data_files_ is None and path and Path(path).is_dir():
        folder = Path(path)
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():  # save_to_disk
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{path!r} has no split {split!r}; its splits are {list(loaded)}")
                loaded = loaded[split]
            return loaded.to_iterable_dataset(num_shards=max(1, min(64, len(loaded) // 1000))) if streaming else loaded
    return datasets.load_dataset(path, name, split=split, data_files=data_files_, streaming=streaming, **kwargs)


class RawData(dict):
    """{"train": ..., "validation": ...}; `line_problems[split]` lists data-file lines that never became rows."""

    def __init__(self):
        super().__init__()
        self.line_problems: dict[str, list[dict]] = {}


def load_raw_datasets(data_args, read_jsonl=None) -> RawData:
    """The train (and validation) data as `datasets.Dataset`s, the train data as an `IterableDataset` with
    --streaming. `read_jsonl(path) -> (dataset, line problems)` reads plain .jsonl files when given (train_mblip's
    reader, which keeps a malformed line from failing the whole file)."""
    streaming = bool(getattr(data_args, "streaming", False))
    splits = RawData()
    if data_args.dataset_name:
        splits["train"] = _load(
            data_args.dataset_name, data_args.dataset_config_name, data_args.train_split, streaming=streaming
        )
        if data_args.validation_split:
            # Validation is evaluated whole: never streamed.
            splits["validation"] = _load(
                data_args.dataset_name, data_args.dataset_config_name, data_args.validation_split
            )
    else:
        for split, spec in (("train", data_args.train_file), ("validation", data_args.validation_file)):
            if spec is None:
                continue
            flag = f"--{split}_file"
            files = data_files(spec, flag)
            builder, kwargs = builder_for(files, flag)
            stream = streaming and split == "train"
            if read_jsonl is not None and not stream and all(f.endswith(".jsonl") for f in files):
                parts = [read_jsonl(f) for f in files]
                splits[split] = parts[0][0] if len(parts) == 1 else datasets.concatenate_datasets([d for d, _ in parts])
                splits.line_problems[split] = [problem for _, problems in parts for problem in problems]
                continue
            try:
                splits[split] = datasets.load_dataset(
                    builder, data_files=files, split="train", streaming=stream, **kwargs
                )
            except (FileNotFoundError, ValueError):
                raise
            except Exception as err:
                raise ValueError(f"Cannot read {flag} {spec}: {type(err).__name__}: {err}") from err
    for split, dataset in splits.items():
        splits[split] = decode_lazily(dataset, data_args.image_column, f"the {split} data")
    return splits


def decode_lazily(dataset, column: str, what: str = "the data"):
    """Casts an `Image()` column (or a list of them) to `Image(decode=False)`: rows then hold {"bytes", "path"}
    records, opened only by the collator. Refuses a column of numbers (or booleans) up front, naming it."""
    features = dataset.features
    if features is None:  # a streamed dataset whose features are not known before reading
        return dataset
    top = resolve_column(list(features), column, what)
    feature = features[top]
    if top == column:
        if isinstance(feature, datasets.Image) and feature.decode:
            return dataset.cast_column(top, datasets.Image(decode=False))
        inner = getattr(feature, "feature", None)
        if isinstance(inner, datasets.Image) and inner.decode:
            return dataset.cast_column(top, type(feature)(datasets.Image(decode=False)))
        kind = getattr(feature, "dtype", None) or getattr(inner, "dtype", None)
        if isinstance(feature, datasets.Value) or isinstance(inner, datasets.Value):
            if kind and kind != "string" and kind not in ("binary", "large_binary", "large_string"):
                raise ValueError(
                    f"--image_column {column!r} of {what} holds {kind} values, not images; expected image paths "
                    f"(relative to --image_root), an Image() column, image bytes, or a list of those. Columns: "
                    f"{list(features)}"
                )
    return dataset


# ------------------------------------------------------------------------------------------------ columns
def resolve_column(columns: list[str], name: str, what: str = "the data") -> str:
    """The top-level column that `name` reads: `name` itself, or the longest prefix before a dot (json.context)."""
    if name in columns:
        return name
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in columns:
            return head
    raise ValueError(
        f"{what} has no column {name!r} (nor a field of that path); its columns are {columns}. "
        "Set --image_column / --prompt_column / --target_column (nested fields with dots, e.g. json.context)."
    )


_MISSING = object()


def get_field(row: dict, name: str, default=_MISSING):
    """row[name], or a nested field: get_field(row, "json.context") is row["json"]["context"]."""
    if name in row:
        return row[name]
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in row and isinstance(row[head], dict):
            return get_field(row[head], ".".join(parts[i:]), default)
    if default is _MISSING:
        raise KeyError(name)
    return default


# ------------------------------------------------------------------------------------------------ image values
class ImageValueError(ValueError):
    """A row's image value that is no image at all: `reason` is NO_IMAGE or NOT_AN_IMAGE, `found` describes it."""

    def __init__(self, reason: str, found: str):
        super().__init__(f"{reason}: {found}")
        self.reason, self.found = reason, found


def describe(value, limit: int = 120) -> str:
    """What was found, short enough for a log line or a report example."""
    if isinstance(value, dict):
        data = value.get("bytes")
        path = value.get("path")
        data = f"{len(data)} bytes starting {bytes(data[:8])!r}" if data else "None"
        return f"{{'bytes': {data}, 'path': {path!r}}}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes starting {bytes(value[:8])!r}"
    if isinstance(value, Image.Image):
        return f"PIL image {value.mode} {value.size[0]}x{value.size[1]}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v, 40) for v in value[:3]) + (", ...]" if len(value) > 3 else "]")
    text = f"{type(value).__name__} {value!r}" if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def image_sources(value, image_root: str = ".") -> list:
    """What `mblip.images.open_image` takes, for each image of a row's value: paths joined to image_root, records
    with bytes, raw bytes, PIL images. Raises ImageValueError for no image or a value that is not an image."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ImageValueError(NO_IMAGE, describe(value))
    sources = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ImageValueError(NO_IMAGE, describe(value))
        if isinstance(v, (str, os.PathLike)):
            sources.append(os.path.join(image_root, os.fspath(v)))
        elif isinstance(v, dict):
            if v.get("bytes"):
                sources.append(v)
            elif v.get("path"):
                path = os.fspath(v["path"])
                sources.append(path if os.path.isabs(path) else os.path.join(image_root, path))
            else:
                raise ImageValueError(NO_IMAGE, describe(value))
        elif isinstance(v, (bytes, bytearray, memoryview)):
            if not len(v):
                raise ImageValueError(NO_IMAGE, describe(value))
            sources.append(bytes(v))
        elif isinstance(v, Image.Image):
            sources.append(v)
        else:
            raise ImageValueError(NOT_AN_IMAGE, describe(value))
    return sources


def image_key(source) -> str:
    """A distinct image's identity: a normalised path, or a hash of the content for embedded images (whose record
    path, if any, may not exist on this machine)."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.normpath(os.fspath(source))
    if isinstance(source, dict):
        source = source["bytes"]
    if isinstance(source, Image.Image):
        digest = hashlib.sha1(f"{source.mode}{source.size}".encode())
        digest.update(source.tobytes())
        return "pil-sha1:" + digest.hexdigest()
    return "sha1:" + hashlib.sha1(bytes(source)).hexdigest()


def is_embedded(key: str) -> bool:
    return key.startswith(("sha1:", "pil-sha1:"))


def image_problem(kind: str) -> str:
    """The data check's reason for an `ImageDecodeError.kind` ('' for none: the image passed)."""
    return IMAGE_PROBLEMS.get(kind, IMAGE_PROBLEMS["unreadable"]) if kind else ""


def check_source(source) -> str:
    """'' for an image that passes `check_image`, else the reason."""
    return image_problem(check_kind(source))


def target_problem(target) -> str:
    """'' for a usable target (text, or a list with at least one non-blank text), else EMPTY_TARGET."""
    if isinstance(target, (list, tuple)):
        return "" if any(t is not None and str(t).strip() for t in target) else EMPTY_TARGET
    return "" if target is not None and str(target).strip() else EMPTY_TARGET


def scan_row(row: dict, data_args) -> tuple[str, str, list]:
    """(problem found without opening any image, what was found, the row's image sources)."""
    problem = target_problem(get_field(row, data_args.target_column, None))
    value = get_field(row, data_args.image_column, None)
    if problem:
        return problem, describe(get_field(row, data_args.target_column, None)), []
    try:
        return "", describe(value), image_sources(value, data_args.image_root)
    except ImageValueError as err:
        return err.reason, err.found, []


def row_problem(row: dict, data_args) -> str:
    """'' for a usable row, else the reason (the check for a single row, opening no pixels)."""
    problem, _, sources = scan_row(row, data_args)
    if problem:
        return problem
    for source in sources:
        problem = check_source(source)
        if problem:
            return problem
    return ""


# ------------------------------------------------------------------------------------------------ the report
class Tally:
    """Rows seen and skipped, by reason, with the first few examples: one split's part of data_report.json."""

    def __init__(self, report: dict | None = None):
        self.report = report if report is not None else {}
        self.report.setdefault("rows", 0)
        self.report.setdefault("bad_rows", 0)
        self.report.setdefault("by_reason", {})
        self.report.setdefault("examples", [])

    def seen(self, n: int = 1):
        self.report["rows"] += n

    def skip(self, row: int, reason: str, column: str, found: str, detail: str | None = None):
        """Counts a skipped row under `reason`; its example names the row, the column, what was found there, and
        `detail` where it says more than the reason."""
        self.report["bad_rows"] += 1
        self.report["by_reason"][reason] = self.report["by_reason"].get(reason, 0) + 1
        if len(self.report["examples"]) < EXAMPLES:
            example = {"row": row, "reason": detail or reason, "column": column, "image": found}
            self.report["examples"].append(example)

    def restore(self, saved: dict):
        self.report.clear()
        self.report.update(copy.deepcopy(saved))

    def snapshot(self) -> dict:
        return copy.deepcopy(self.report)

    def check(self, split: str, max_bad_rows: float, final: bool = True):
        rows, bad = self.report["rows"], self.report["bad_rows"]
        if rows and bad / rows > max_bad_rows and (final or rows >= STREAM_MIN_ROWS):
            raise ValueError(
                f"{bad} of {rows} {split} rows ({bad / rows:.1%}) are unusable, more than --max_bad_rows "
                f"{max_bad_rows}: {self.report['by_reason']}; e.g. {self.report['examples'][:3]}"
            )


def column_for(reason: str, data_args) -> str:
    return data_args.target_column if reason == EMPTY_TARGET else data_args.image_column


# ------------------------------------------------------------------------------------------------ file-based check
def _scan_batch(batch: dict, indices: list[int], data_args) -> dict:
    """Per row: its distinct-image keys, or the problem found without opening an image (and what was found)."""
    names = list(batch)
    keys, problems, found = [], [], []
    for i in range(len(indices)):
        row = {name: batch[name][i] for name in names}
        problem, what, sources = scan_row(row, data_args)
        problems.append(problem)
        found.append(what)
        keys.append([image_key(s) for s in sources])
    return {"_keys": keys, "_problem": problems, "_found": found, "_count": [len(k) for k in keys]}


def _check_batch(batch: dict, indices: list[int], data_args, assigned: dict) -> dict:
    """Checks the images assigned to these rows (each distinct image is assigned to its first row only): per image
    [key, verdict, what was found, stamp], the stamp of a path taken before its check."""
    names = list(batch)
    results = []
    for i, index in enumerate(indices):
        row = {name: batch[name][i] for name in names}
        todo = set(assigned[index])
        found = []
        for source in scan_row(row, data_args)[2]:
            key = image_key(source)
            if key in todo:
                todo.discard(key)
                stamp = NO_STAMP if is_embedded(key) else file_stamp(source)
                found.append([key, check_source(source), describe(source), stamp])
        results.append(json.dumps(found))
    return {"_checked": results}


def fork_start_method() -> str | None:
    """'fork' where the platform forks safely (not macOS, whose system libraries are not fork-safe, nor Windows, which
    cannot), else None (the default start method)."""
    return "fork" if sys.platform != "darwin" and "fork" in multiprocessing.get_all_start_methods() else None


def check_pool_context():
    """How the image check's worker processes start: forked where fork_start_method allows, else the default (None).

    The workers run `mblip.images.check_files`, which needs only PIL; but a worker that is not forked (spawn, or a
    fork server: Linux's default from Python 3.14, and what the bench's child processes use) must import the `mblip`
    package to find it, and mblip/__init__.py imports transformers and the model classes (torch): 10-14 s per worker
    on 2 cores, 30-40 s to start a pool of two, against 0.1 s forked. Forking is safe here even from a process with
    threads (pyarrow's, tokenizers', torch's): a worker only stats files and parses image files with PIL, so it never
    enters a library whose lock another thread may hold at the fork (CPython and glibc reset their own)."""
    method = fork_start_method()
    return multiprocessing.get_context(method) if method else None


def check_cache_path(dataset, data_args, split: str) -> Path | None:
    folder = getattr(data_args, "data_check_cache", None)
    if folder is not None and str(folder).lower() == "none":
        return None
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        return None
    folder = Path(folder) if folder else Path(datasets.config.HF_DATASETS_CACHE) / "mblip_data_checks"
    identity = {
        "version": CHECK_VERSION,
        "fingerprint": fingerprint,
        "rows": len(dataset),
        "image_column": data_args.image_column,
        "target_column": data_args.target_column,
        "image_root": os.path.abspath(data_args.image_root),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return folder / f"{split}-{digest}.json"


STAMP_COLUMNS = ("size", "mtime_ns", "ctime_ns")


def _read_check_cache(cache: Path) -> tuple[dict, pa.Table] | None:
    """(the cached outcome, its per-image table: key, verdict, found and the stamp columns), or None without one."""
    if not cache.is_file():
        return None
    images_path = cache.with_suffix(".images.parquet")
    try:
        saved = json.loads(cache.read_text(encoding="utf-8"))
        images = pq.read_table(images_path)
        if images.num_rows != saved["images"]:
            raise ValueError(f"{images.num_rows} images where the check counted {saved['images']}")
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        logger.warning("Ignoring the cached data check %s (%s: %s): checking again", cache, type(err).__name__, err)
        return None
    return saved, images


def _write_check_cache(cache: Path, outcome: dict, images: pa.Table):
    with atomic_open(cache.with_suffix(".images.parquet"), "wb") as handle:
        pq.write_table(images, handle)
    atomic_write_json(cache, {**outcome, "images": images.num_rows})


def _stamps_now(images: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(each cached image's stamp now, whether it differs from the cached one): one stat() per image file (15-20 us
    each on a local disk: 0.3 s for 20k files); an embedded image, keyed by its content, keeps NO_STAMP."""
    keys = images.column("key").to_pylist()
    cached = np.stack([images.column(c).to_numpy() for c in STAMP_COLUMNS], axis=1).reshape(-1, len(STAMP_COLUMNS))
    now = np.array([NO_STAMP if is_embedded(k) else file_stamp(k) for k in keys], dtype=np.int64)
    now = now.reshape(-1, len(STAMP_COLUMNS))
    return now, (now != cached).any(axis=1)


def num_workers(data_args) -> int:
    workers = getattr(data_args, "preprocessing_num_workers", None)
    return max(1, workers if workers else min(8, os.cpu_count() or 1))


def check_split(
    dataset: datasets.Dataset, data_args, split: str, line_problems: list[dict] = ()
) -> tuple[datasets.Dataset, dict]:
    """Skips unusable rows, counts them by reason with a few examples, and fails past --max_bad_rows. Each distinct
    image is checked once, in parallel; the outcome is cached for the next run on the same data. The rows kept carry
    their index in `dataset` as `_row`. `line_problems` are lines of a data file that never became rows (malformed
    JSONL lines, say); they count as unusable rows too."""
    columns = dataset.column_names
    names = [data_args.image_column, data_args.target_column] + [data_args.prompt_column or ""]
    missing = []
    for name in filter(None, names):
        try:
            resolve_column(columns, name)
        except ValueError:
            missing.append(name)
    if missing:
        raise ValueError(
            f"The {split} data has no column(s) {sorted(missing)}; its columns are {columns}. Set --image_column / "
            "--prompt_column / --target_column (nested fields with dots, e.g. json.context; --prompt_column '' trains "
            "without prompts)."
        )
    cache = check_cache_path(dataset, data_args, split)
    saved = None
    if cache is not None and not getattr(data_args, "recheck_images", False):
        saved = _read_check_cache(cache)
    known = {}
    if saved is not None:
        outcome, images = saved
        now, changed = _stamps_now(images)
        if changed.any():
            # The rows are the same (same fingerprint) but some files are not: only those are checked again.
            logger.info(
                "Data check of the %s rows: %d of %d images changed since %s, e.g. %s; checking them again",
                split,
                int(changed.sum()),
                images.num_rows,
                cache,
                images.column("key")[int(np.argmax(changed))].as_py(),
            )
            columns = [images.column(c).to_pylist() for c in ("key", "verdict", "found")]
            known = {
                key: (verdict, what, tuple(stamp))
                for key, verdict, what, stamp, moved in zip(*columns, now.tolist(), changed)
                if not moved
            }
            saved = None
        else:
            logger.info("Data check of the %s rows: reusing %s (%d distinct images)", split, cache, images.num_rows)
    if saved is not None:
        bad_rows, reasons, found = outcome["bad_rows"], outcome["reasons"], outcome["found"]
    else:
        bad_rows, reasons, found, images = _check_uncached(dataset, data_args, split, known)
        if cache is not None:
            _write_check_cache(cache, {"bad_rows": bad_rows, "reasons": reasons, "found": found}, images)
    tally = Tally()
    tally.seen(len(dataset) + len(line_problems))
    for problem in line_problems:
        reason = "not UTF-8" if problem["reason"].startswith("not UTF-8") else "malformed JSON line"
        tally.report["bad_rows"] += 1
        tally.report["by_reason"][reason] = tally.report["by_reason"].get(reason, 0) + 1
    tally.report["examples"] = [dict(p) for p in line_problems[:EXAMPLES]]
    for row, reason, what in zip(bad_rows, reasons, found):
        counted = "another number of images" if "images where the data has" in reason else reason
        tally.skip(row, counted, column_for(reason, data_args), what, detail=reason)
    report = tally.report
    feature = dataset.features.get(data_args.target_column)
    if isinstance(feature, (datasets.Sequence, list, getattr(datasets, "List", ()))):
        report["list_targets"] = len(dataset)
        logger.warning(
            "The %s column %r holds lists of answers: each row trains on its most common answer (the first of those "
            "tied)",
            split,
            data_args.target_column,
        )
    if report["bad_rows"]:
        logger.warning(
            "Skipping %d of %d %s rows: %s; e.g. %s",
            report["bad_rows"],
            report["rows"],
            split,
            report["by_reason"],
            report["examples"][:3],
        )
    tally.check(split, data_args.max_bad_rows)
    if len(bad_rows) == len(dataset):
        raise ValueError(f"No usable {split} rows are left out of {len(dataset)}: {report['by_reason']}")
    dataset = dataset.add_column("_row", np.arange(len(dataset), dtype=np.int64))
    if not bad_rows:
        return dataset, report
    keep = np.ones(len(dataset), dtype=bool)
    keep[bad_rows] = False
    return dataset.select(np.flatnonzero(keep)), report


def _check_uncached(dataset, data_args, split: str, known: dict | None = None):
    """(bad row indices, their reasons, what was found, the per-image table for the cache). `known` maps the images
    whose cached verdict still holds to (verdict, what was found, stamp); only the other images are checked."""
    known = known or {}
    tops = sorted(
        {resolve_column(dataset.column_names, getattr(data_args, f), split) for f in ("image_column", "target_column")}
    )
    slim = dataset.select_columns(tops)
    workers = num_workers(data_args)
    embedded = _has_embedded_images(slim, data_args)
    # Pass 1: each row's image keys (hashes of embedded bytes: parallel) and the problems that need no image.
    scanned = slim.map(
        _scan_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"data_args": data_args},
        remove_columns=tops,
        num_proc=workers if embedded and len(slim) >= PARALLEL_FROM else None,
        desc=f"Reading the {split} image column",
    )
    table = scanned.with_format("arrow")[:]
    problems = table.column("_problem").to_pylist()
    found = table.column("_found").to_pylist()
    counts = table.column("_count").to_numpy()
    keys = table.column("_keys").combine_chunks()
    # Pass 2: the first row of each distinct image, then one check per distinct image.
    flat = pc.list_flatten(keys)
    parents = pc.list_parent_indices(keys)
    first = (
        pa.table({"key": flat, "row": parents}).group_by("key", use_threads=False).aggregate([("row", "min")])
        if len(flat)
        else pa.table({"key": pa.array([], pa.string()), "row_min": pa.array([], pa.int64())})
    )
    distinct = first.column("key").to_pylist()
    todo = [k for k in distinct if k not in known]
    logger.info(
        "Data check of the %s rows: %d rows, %d distinct images, %d to check, %d processes",
        split,
        len(dataset),
        len(distinct),
        len(todo),
        workers,
    )
    checked = {}  # key -> (verdict, what was found, stamp)
    if todo and not embedded:
        chunk = max(1, min(1000, len(todo) // (workers * 4) or 1))
        chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        if workers > 1 and len(todo) >= PARALLEL_FROM:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=check_pool_context()) as pool:
                parts = list(pool.map(check_files, chunks))
        else:
            parts = list(map(check_files, chunks))
        results = ((image_problem(kind), stamp) for part in parts for kind, stamp in part)
        checked = {k: (r, repr(k) if r else "", stamp) for k, (r, stamp) in zip(todo, results)}
    elif todo:
        assigned = {}
        for key, row in zip(distinct, first.column("row_min").to_pylist()):
            if key not in known:
                assigned.setdefault(row, []).append(key)
        rows = sorted(assigned)
        results = slim.select(rows).map(
            lambda batch, idx: _check_batch(batch, [rows[i] for i in idx], data_args, assigned),
            batched=True,
            with_indices=True,
            remove_columns=tops,
            num_proc=workers if len(rows) >= PARALLEL_FROM else None,
            desc=f"Checking the {split} images",
        )
        for entry in results["_checked"]:
            for key, verdict, what, stamp in json.loads(entry):
                checked[key] = (verdict, what if verdict else "", tuple(stamp))
    entries = [checked[k] if k in checked else known[k] for k in distinct]
    stamps = np.array([e[2] for e in entries], dtype=np.int64).reshape(-1, len(STAMP_COLUMNS))
    images = pa.table(
        {
            "key": pa.array(distinct, pa.string()),
            "verdict": pa.array([e[0] for e in entries], pa.string()),
            "found": pa.array([e[1] for e in entries], pa.string()),
            **{name: stamps[:, i] for i, name in enumerate(STAMP_COLUMNS)},
        }
    )
    verdicts = {k: (e[0], e[1]) for k, e in zip(distinct, entries) if e[0]}
    bad_rows, reasons, whats = [], [], []
    bad_image_rows = {}
    if verdicts:
        is_bad = pc.is_in(flat, value_set=pa.array(list(verdicts), pa.string()))
        for position in np.flatnonzero(is_bad.to_numpy(zero_copy_only=False)):
            row = parents[int(position)].as_py()
            bad_image_rows.setdefault(row, verdicts[flat[int(position)].as_py()])
    # A batch stacks its rows' images: one number of images per dataset, the most common; other rows are unusable.
    usable = np.array([not p for p in problems], dtype=bool)
    usable[list(bad_image_rows)] = False
    usual = int(np.bincount(counts[usable]).argmax()) if usable.any() else 1
    for row, problem in enumerate(problems):
        if not problem and row in bad_image_rows:
            problem, found[row] = bad_image_rows[row]
        elif not problem and counts[row] != usual:
            problem = f"{counts[row]} images where the data has {usual}"
        if problem:
            bad_rows.append(row)
            reasons.append(problem)
            whats.append(found[row])
    return bad_rows, reasons, whats, images


def _has_embedded_images(dataset, data_args) -> bool:
    """Whether the image column holds image content (bytes), not paths: decides whether pass 1 needs processes."""
    feature = dataset.features.get(resolve_column(dataset.column_names, data_args.image_column))
    inner = getattr(feature, "feature", feature)
    if isinstance(inner, datasets.Image):
        return True
    if isinstance(inner, datasets.Value):
        return inner.dtype in ("binary", "large_binary")
    return True  # nested or unusual: read it the careful way


# ------------------------------------------------------------------------------------------------ streaming
class CheckedStream(torch.utils.data.IterableDataset):
    """An `IterableDataset` that checks its rows lazily (each distinct image once per process, remembered in a
    bounded memo), skips and counts unusable ones, and records its resumable state at every global batch boundary.

    Every process reads the whole stream and accelerate's `IterableDatasetShard` hands each its own slice of every
    global batch, so all processes skip the same rows and keep the same counts, and the state recorded at a batch
    boundary is the whole run's.
    """

    def __init__(self, dataset, data_args, split: str, rows_per_batch: int, report: dict, languages: list | None):
        self.dataset, self.data_args, self.split = dataset, data_args, split
        self.rows_per_batch = rows_per_batch  # per-device batch x processes: one global micro-batch
        self.tally = Tally(report)
        self.languages = languages
        self.memo: OrderedDict[str, str] = OrderedDict()
        self.memo_size = 200_000
        self.snapshots: dict[int, dict] = {}
        self.base = 0  # global micro-batches before this pass over the stream (resume, earlier epochs)
        self.epoch_offset = 0
        self.position = 0  # rows read from the stream, good and bad, in this pass

    def set_epoch(self, epoch: int):
        self.dataset.set_epoch(self.epoch_offset + epoch)

    def resume(self, saved: dict, micro_batches: int):
        self.dataset.load_state_dict(saved["dataset"])
        self.tally.restore(saved["report"])
        self.base = micro_batches
        self.epoch_offset = saved["dataset"].get("epoch", 0)

    def _problem(self, row: dict) -> tuple[str, str]:
        problem, found, sources = scan_row(row, self.data_args)
        if problem:
            return problem, found
        for source in sources:
            key = image_key(source)
            verdict = self.memo.get(key)
            if verdict is None:
                verdict = check_source(source)
                self.memo[key] = verdict
                if len(self.memo) > self.memo_size:
                    self.memo.popitem(last=False)
            else:
                self.memo.move_to_end(key)
            if verdict:
                return verdict, describe(source)
        return "", ""

    def __iter__(self):
        good = 0
        self.snapshots = {self.base: self._snapshot()}
        for row in self.dataset:
            index = self.tally.report["rows"]
            self.tally.seen()
            problem, found = self._problem(row)
            if problem:
                self.tally.skip(index, problem, column_for(problem, self.data_args), found)
                if self.tally.report["bad_rows"] <= EXAMPLES:
                    logger.warning("Skipping %s row %d (%s): %s", self.split, index, problem, found)
                self.tally.check(self.split, self.data_args.max_bad_rows, final=False)
                continue
            if self.languages is not None and "lang" in row and row["lang"] not in self.languages:
                self.languages.append(row["lang"])
                self.languages.sort()
            yield {**row, "_row": index}  # its position in the stream: per-row augmentation, decode failures
            good += 1
            if good % self.rows_per_batch == 0:
                self.snapshots[self.base + good // self.rows_per_batch] = self._snapshot()
        # The last, partial global batch is completed by accelerate from the stream's start: count it as one.
        self.base += -(-good // self.rows_per_batch)
        self.tally.check(self.split, self.data_args.max_bad_rows)

    def _snapshot(self) -> dict:
        return {"dataset": self.dataset.state_dict(), "report": self.tally.snapshot()}

    def state_at(self, micro_batches: int) -> dict | None:
        return self.snapshots.get(micro_batches)

    def forget_before(self, micro_batches: int):
        for key in [k for k in self.snapshots if k < micro_batches]:
            del self.snapshots[key]


class StreamState(TrainerCallback, ExportableState):
    """Puts the stream's state at each checkpoint's step into that checkpoint's trainer_state.json."""

    def __init__(self, stream: CheckedStream | None = None, accumulation: int = 1, resumed_from: str | None = None):
        self.stream, self.accumulation, self.step = stream, accumulation, 0
        self.resumed_from = resumed_from

    def on_step_begin(self, args, state, control, **kwargs):
        if self.resumed_from:
            # Skipping no batches, the Trainer restores the checkpoint's RNG states *before* it starts the data
            # loader, whose start draws a seed from torch's global RNG: every draw after it (dropout) would be one
            # off an uninterrupted run's. Restored again here, before the first step, they match it exactly.
            restore_rng_states(self.resumed_from, args)
            self.resumed_from = None

    def state(self) -> dict:
        saved = self.stream.state_at(self.step * self.accumulation) if self.stream is not None else None
        return {"args": {}, "attributes": {"step": self.step, "stream": saved}}

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        if self.stream is not None:
            self.stream.forget_before(self.step * self.accumulation)

    def on_train_end(self, args, state, control, **kwargs):
        if self.stream is None:
            return
        # The report covers the rows trained through, not those the data loader had read ahead.
        trained = self.stream.state_at(state.global_step * self.accumulation)
        if trained is not None:
            self.stream.tally.restore(trained["report"])
        self.stream.tally.check(self.stream.split, self.stream.data_args.max_bad_rows)


def restore_rng_states(checkpoint: str, args) -> None:
    """The RNG states the Trainer saved with `checkpoint` (python, numpy, torch CPU and CUDA), for this process."""
    import random

    name = f"rng_state_{args.process_index}.pth" if args.world_size > 1 else "rng_state.pth"
    path = Path(checkpoint) / name
    if not path.is_file():
        logger.warning("%s has no %s: a resumed stream's random draws (dropout) may differ", checkpoint, name)
        return
    states = torch.load(path, weights_only=False)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if torch.cuda.is_available() and "cuda" in states:
        cuda = states["cuda"]
        if isinstance(cuda, (list, tuple)):
            torch.cuda.random.set_rng_state_all(cuda)
        else:
            torch.cuda.random.set_rng_state(cuda)


def saved_stream_state(checkpoint: str | None) -> dict | None:
    if not checkpoint:
        return None
    path = Path(checkpoint) / "trainer_state.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8")).get("stateful_callbacks", {}).get(StreamState.__name__)
    saved = saved[0] if isinstance(saved, list) else saved
    return (saved or {}).get("attributes", {}).get("stream")


def streaming_problems(data_args, training_args) -> list[str]:
    problems = []
    if training_args.max_steps is None or training_args.max_steps <= 0:
        problems.append("--streaming needs --max_steps (a stream has no length to count epochs in)")
    if training_args.dataloader_num_workers:
        problems.append(
            "--streaming reads the stream in the main process (its counts and resumable state live there); "
            f"drop --dataloader_num_workers {training_args.dataloader_num_workers}"
        )
    if data_args.image_features_cache:
        problems.append("--image_features_cache needs the whole dataset up front; it cannot go with --streaming")
    return problems


# ------------------------------------------------------------------------------------------------ train_mblip's data step
def prepare_data(data_args, training_args, last_checkpoint: str | None = None, callbacks=None, read_jsonl=None):
    """Loads and checks the data for a run: (train, validation or None, report, languages, callbacks).

    File-based: every row checked before step 1 (each distinct image once, cached), the unusable ones dropped.
    Streaming: a `CheckedStream` checking lazily, whose counts fill report["train"] as training reads it."""
    raw = load_raw_datasets(data_args, read_jsonl)
    callbacks = list(callbacks or [])
    train = raw["train"]
    if data_args.max_train_samples is not None:
        if isinstance(train, datasets.IterableDataset):
            train = train.take(data_args.max_train_samples)
        else:
            train = train.select(range(min(data_args.max_train_samples, len(train))))
    validation = raw.get("validation")
    if validation is not None and data_args.max_eval_samples is not None:
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))
    report = {}
    with training_args.main_process_first(desc="checking the data"):
        problems = raw.line_problems
        if validation is not None:
            validation, report["validation"] = check_split(
                validation, data_args, "validation", problems.get("validation", [])
            )
        if not isinstance(train, datasets.IterableDataset):
            train, report["train"] = check_split(train, data_args, "train", problems.get("train", []))
    if not isinstance(train, datasets.IterableDataset):
        languages = sorted(set(train["lang"])) if "lang" in train.column_names else None
        return train, validation, report, languages, callbacks

    problems = streaming_problems(data_args, training_args)
    if problems:
        raise ValueError("; ".join(problems))
    if train.column_names is not None:
        for flag in ("image_column", "target_column"):
            resolve_column(train.column_names, getattr(data_args, flag), "The train stream")
    if data_args.shuffle_buffer_size:
        train = train.shuffle(seed=training_args.seed, buffer_size=data_args.shuffle_buffer_size)
    # Each process reads the whole stream; accelerate gives each its slice of every global batch (no dispatching
    # of collated batches from process 0, whose padded lengths could not be concatenated).
    training_args.accelerator_config.dispatch_batches = False
    rows_per_batch = training_args.per_device_train_batch_size * training_args.world_size
    report["train"] = {}
    languages = [] if train.column_names is None or "lang" in train.column_names else None
    stream = CheckedStream(train, data_args, "train", rows_per_batch, report["train"], languages)
    saved = saved_stream_state(last_checkpoint)
    if saved is not None:
        step = json.loads((Path(last_checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
        stream.resume(saved, step * training_args.gradient_accumulation_steps)
        training_args.ignore_data_skip = True  # the stream starts where the checkpoint left it: skip nothing
        logger.info("Resuming the stream at step %d from its saved state (no rows re-read)", step)
    elif last_checkpoint:
        logger.warning("%s holds no stream state: the Trainer re-reads the stream up to its step", last_checkpoint)
    resumed_from = last_checkpoint if saved is not None else None
    callbacks.append(StreamState(stream, training_args.gradient_accumulation_steps, resumed_from))
    return stream, validation, report, languages, callbacks


# ------------------------------------------------------------------------------------------------ other readers
def iter_column_sources(dataset, column: str, image_root: str, batch_size: int = 1000):
    """(row, [image sources]) for every row of a `datasets.Dataset`, in batches (never the whole column at once);
    rows whose value is not an image are left out (the data check counted them)."""
    top = resolve_column(dataset.column_names, column)
    offset = 0
    for batch in dataset.select_columns([top]).iter(batch_size=batch_size):
        for i, value in enumerate(batch[top]):
            try:
                yield offset + i, image_sources(get_field({top: value}, column, None), image_root)
            except ImageValueError:
                pass
        offset += len(batch[top])


# ------------------------------------------------------------------------------------------------ inference
def load_dataset_for_inference(
    dataset_name: str | None, config_name: str | None, split: str | None, files: str | None, image_column: str
) -> tuple[datasets.Dataset, str]:
    """A dataset (any form above) to predict on, with its image column decoded lazily, and the split's name. Without
    `split`, a dataset with a single split uses it; several are an error that names them."""
    if files:
        builder, kwargs = builder_for(data_files(files, "--data_files"), "--data_files")
        loaded = datasets.load_dataset(builder, data_files=data_files(files, "--data_files"), **kwargs)
    elif (
        dataset_name
        and Path(dataset_name).is_dir()
        and any((Path(dataset_name) / name).is_file() for name in ("dataset_dict.json", "state.json"))
    ):
        loaded = datasets.load_from_disk(dataset_name)
    else:
        loaded = datasets.load_dataset(dataset_name, config_name)
    if isinstance(loaded, datasets.Dataset):
        dataset, split = loaded, split or "train"
    else:
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"--dataset_split {split!r} is not a split of the data; its splits are {list(loaded)}")
        dataset = loaded[split]
    return decode_lazily(dataset, image_column, f"the {split} split"), split


def inference_name(value, split: str, row: int, image_root: str = ".") -> str:
    """How prediction output names a dataset row's image: its path where it has one on disk, else split[row]."""
    if isinstance(value, str):
        return os.path.join(image_root, value)
    if isinstance(value, dict) and not value.get("bytes") and value.get("path"):
        return os.fspath(value["path"])
    name = f"{split}[{row}]"
    if isinstance(value, dict) and value.get("path"):
        name += f" ({value['path']})"
    return name
