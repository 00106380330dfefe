"""Training rows for the paper's task fine-tuning recipes, read straight from each dataset's released training file.

    python -m mblip.data.finetune --task gqa --input gqa/questions1.2 --image_root data/gqa/images \\
        --output data/finetune/xgqa_train_en.jsonl
    python -m mblip.data.finetune --task snli_ve --input SNLI-VE/data --image_root data/flickr30k/images \\
        --output data/finetune/xvnli_train_en.jsonl
    python -m mblip.data.finetune --task nlvr2 --input nlvr/nlvr2/data --image_root data/nlvr2/images \\
        --output data/finetune/nlvr2_train_en.jsonl
    python -m mblip.data.finetune --task flickr30k --input iglue/datasets/flickr30k \\
        --image_root data/flickr30k/images --output data/finetune/flickr30k_train.jsonl

The output names are the ``train_file`` placeholders of configs/recipes/finetune_{xgqa,xvnli,marvl,flickr30k}.yaml
(``accelerate launch train_mblip.py configs/recipes/finetune_xgqa.yaml --train_file ... --image_root ...``).

One reader per recipe (the official code first converted each file with a script under its ``data/``; ours reads
the release directly):

==========  =========  =====================================================================  ====================
--task      for        --input (a file, or a folder holding one of these)                     --image_root
==========  =========  =====================================================================  ====================
gqa         xGQA       GQA ``train_balanced_questions.json`` (``{qid: {"question", "imageId",  GQA ``images/``
                       "answer", ...}}``), or IGLUE's ``datasets/gqa/annotations/train.json``
                       (LXMERT's ``[{"img_id", "sent", "label": {answer: score}}]``, the file
                       the official script read)
snli_ve     XVNLI      SNLI-VE ``snli_ve_train.jsonl`` (``Flikr30kID``, ``sentence2``,          ``flickr30k-images/``
                       ``gold_label``), or IGLUE's ``datasets/XVNLI/annotations/en/train.jsonl``
nlvr2       MaRVL      NLVR2 ``nlvr2/data/train.json`` (one object a line: ``identifier``,      NLVR2's ``images/``
                       ``sentence``, ``label`` "True"/"False", ``directory``), or IGLUE's       (or ``images/train``)
                       ``datasets/nlvr2/annotations/train.jsonl``
flickr30k   xFlickrCO  IGLUE's ``datasets/flickr30k/annotations/train_ann.jsonl``             ``flickr30k-images/``
                       (``{"sentences", "img_path"}``), or Karpathy's ``dataset_flickr30k.json``
                       (its ``"split": "train"`` images)
==========  =========  =====================================================================  ====================

Each good row becomes one line of the columns train_mblip.py reads: ``image_id`` (relative to --image_root; a list
of [left, right] for NLVR2), ``context`` (the official prompt, filled), ``label``, ``lang`` ("en"), ``task`` (the
--task) and ``id`` (the source's question, pair, identifier or image#caption id). The prompts and labels are the
official ones and come from their owners here: the xGQA, XVNLI and MaRVL prompts are the benchmarks' own
(``mblip.evaluation.tasks``; the official configs train and test with one template), so fine-tuning and evaluation
cannot drift apart:

- gqa: "Question: {question} Short answer in English:", label = GQA's short answer;
- snli_ve: 'Is it guaranteed true that "{hypothesis}"? Yes, no, or maybe? Answer in English:', label yes / maybe /
  no for entailment / neutral / contradiction;
- nlvr2: 'Based on the two images, is it correct to say "{statement}"? Yes or no?', label yes / no for True / False;
  images ``<identifier without its last -N>-img0.png`` and ``-img1.png``, in ``<directory>/`` for the train split;
- flickr30k: one row per caption, its prompt drawn from the five plain English caption templates
  (``mblip.data.templates``) with ``random.Random(--seed)``, one draw per caption in file order, exactly as the
  official ``data/flickr/generate_flickr.py`` (``random.seed(42)``, ``random.choice``) assigned them.

A row that cannot be trained on is skipped, counted by reason, and never repaired: ``malformed_line`` (not JSON, a
field missing or of the wrong type; where = file:line, or file:question-id in a JSON document),
``missing_image_file``, ``unknown_label`` (e.g. SNLI's "-"), ``empty_text``. More of them than ``--max_bad_rows``
(a fraction of the rows read) fails the run and leaves no output file. Each distinct image file is looked up once;
images are not decoded here (train_mblip.py checks each one before step 1).

Output: the rows, written atomically (a killed run leaves the old file or none), and ``<output stem>.report.json``
next to them (counts, bad rows by reason with examples, label counts), written also when the threshold fails.

Memory: jsonl files are read a line at a time. GQA's ``train_balanced_questions.json`` (1.2 GB, one JSON document) and
the other JSON documents are streamed with ijson when it is installed (it is in requirements.txt); without it they
are read with ``json.load``, which holds the whole document as Python objects: about six times the file size
(measured on a GQA-format document: 71 MB on disk, 423 MB in memory), so some 7 GB for GQA's file; a warning says so.
Streamed, the reader's memory stays flat (the same document: 2 MB).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mblip.outputs import atomic_open, atomic_write_json

from ..arguments import parse_args as parse_arguments
from ..arguments import run_command
from ..evaluation.tasks.base import find_annotation_file
from ..evaluation.tasks.marvl import MaRVL
from ..evaluation.tasks.xgqa import XGQA
from ..evaluation.tasks.xvnli import LABELS as XVNLI_LABELS
from ..evaluation.tasks.xvnli import XVNLI
from .inputs import Columns, check_malformed, malformed_rows
from .templates import TASKS as TEMPLATE_TASKS


logger = logging.getLogger(__name__)

# Reasons a row is skipped.
MALFORMED_LINE = "malformed_line"
MISSING_IMAGE_FILE = "missing_image_file"
UNKNOWN_LABEL = "unknown_label"
EMPTY_TEXT = "empty_text"

# The official captioning templates (data/flickr/generate_flickr.py `templates_en`), in their order: the plain English
# caption templates of the task mix. The official "Short image caption: " ends in a space that every rendered prompt
# here drops.
CAPTION_PROMPTS: tuple[str, ...] = tuple(template.prompt for template in TEMPLATE_TASKS["caption"].plain)
NLVR2_LABELS = {"true": "yes", "false": "no"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------------------------------------ bookkeeping
class Reading:
    """What a reader has seen so far: rows read, bad rows by reason, files looked up (each distinct one once)."""

    def __init__(self, path: Path, image_root: Path, count_labels: bool = True):
        self.path = path
        self.image_root = image_root
        self.count_labels = count_labels  # not for captions: one per row
        self.rows_read = 0
        self.bad = malformed_rows()
        self.skipped: Counter = Counter()  # rows that are not training rows at all (e.g. Karpathy's val/test images)
        self.labels: Counter = Counter()
        self._exists: dict[str, bool] = {}

    def where(self, key: Any) -> str:
        return f"{self.path.name}:{key}"

    def drop(self, where: str, reason: str, detail: str, row: Any = None, rows: int = 1) -> None:
        """Count `rows` training rows lost for `reason`; one example is kept with its location and the cause."""
        self.rows_read += rows
        excerpt = detail if row is None else f"{detail} | {json.dumps(row, ensure_ascii=False, default=str)}"
        self.bad.add(reason, where, excerpt, count=rows)

    def keep(self, row: dict) -> dict:
        self.rows_read += 1
        if self.count_labels:
            self.labels[row["label"]] += 1
        return row

    def exists(self, relative: str) -> bool:
        if relative not in self._exists:
            self._exists[relative] = os.path.isfile(self.image_root / relative)
        return self._exists[relative]

    def find_image(self, candidates: Sequence[str]) -> str | None:
        """The first of `candidates` (paths relative to the image root) that is a file."""
        return next((candidate for candidate in candidates if self.exists(candidate)), None)

    @property
    def images_found(self) -> int:
        return sum(self._exists.values())


def _row(image_id, context: str, label: str, task: str, source_id: str) -> dict:
    return {"image_id": image_id, "context": context, "label": label, "lang": "en", "task": task, "id": source_id}


def _text(value: Any) -> str | None:
    """The stripped string, or None for a non-string (a malformed field)."""
    return value.strip() if isinstance(value, str) else None


def _missing_fields(row: Any, keys: dict[str, type | tuple[type, ...]]) -> str | None:
    """Why `row` is malformed (not an object, a field missing or of the wrong type), or None."""
    if not isinstance(row, dict):
        return f"not a JSON object but {type(row).__name__}"
    for key, kind in keys.items():
        if key not in row:
            return f"missing field {key!r}"
        if not isinstance(row[key], kind):
            return f"field {key!r} is {type(row[key]).__name__}"
    return None


def _with_suffix(name: str, suffix: str = ".jpg") -> str:
    """Flickr30k/GQA ids come with (SNLI-VE) or without (IGLUE, GQA) their file extension."""
    return name if name.lower().endswith(IMAGE_SUFFIXES) else name + suffix


# ------------------------------------------------------------------------------------------------ file formats
def _jsonl_entries(reading: Reading) -> Iterator[tuple[str, Any]]:
    """(file:line, object) for each JSON line; a line that is not JSON is counted as malformed_line."""
    with open(reading.path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = reading.where(number)
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                reading.drop(where, MALFORMED_LINE, f"not JSON ({error.msg} at column {error.colno}): {line[:200]}")


def _json_entries(path: Path, prefix: str) -> Iterator[tuple[str, Any]]:
    """The entries of one JSON document, streamed: prefix "" = the top-level object's (key, value) pairs; "item" =
    the top-level array's elements; "images.item" = the elements of its "images" array (keys are positions)."""
    try:
        import ijson
    except ImportError:
        ijson = None
    if ijson is None:
        size_gb = path.stat().st_size / 1e9
        logger.warning(
            "ijson is not installed: reading %s (%.2f GB) whole with json.load, which holds the document in memory "
            "as Python objects (about six times its size on disk). `pip install ijson` streams it instead.",
            path,
            size_gb,
        )
        yield from _loaded_entries(path, prefix)
        return
    count = 0
    with open(path, "rb") as handle:
        try:
            if prefix == "":
                for key, value in ijson.kvitems(handle, "", use_float=True):
                    count += 1
                    yield key, value
            else:
                label = "images" if prefix == "images.item" else ""
                for index, value in enumerate(ijson.items(handle, prefix, use_float=True)):
                    count += 1
                    yield f"{label}[{index}]", value
        except ijson.JSONError as error:
            raise ValueError(f"{path} is not valid JSON (after {count} entries): {error}") from error


def _loaded_entries(path: Path, prefix: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
    if prefix == "":
        if isinstance(data, dict):
            yield from data.items()
        return
    if prefix == "images.item":
        data = data.get("images") if isinstance(data, dict) else None
        label = "images"
    else:
        label = ""
    if isinstance(data, list):
        for index, value in enumerate(data):
            yield f"{label}[{index}]", value


def _first_char(path: Path) -> str:
    with open(path, encoding="utf-8") as handle:
        while True:
            block = handle.read(4096)
            if not block:
                return ""
            stripped = block.lstrip()
            if stripped:
                return stripped[0]


# ------------------------------------------------------------------------------------------------ readers
def read_gqa(reading: Reading, task: str = "gqa") -> Iterator[dict]:
    """GQA balanced questions (``{qid: {...}}``) or LXMERT/IGLUE's ``[{"img_id", "sent", "label"}]``."""
    first = _first_char(reading.path)
    if first == "{":
        entries, keys = _json_entries(reading.path, ""), {"question": str, "imageId": str, "answer": str}
    elif first == "[":
        entries, keys = _json_entries(reading.path, "item"), {"sent": str, "img_id": str, "label": dict}
    else:
        raise ValueError(
            f"{reading.path}: expected GQA's questions (a JSON object keyed by question id) or LXMERT's train.json "
            f"(a JSON array); the file starts with {first!r}"
        )
    for key, entry in entries:
        where = reading.where(key)
        problem = _missing_fields(entry, keys)
        if problem is not None:
            reading.drop(where, MALFORMED_LINE, problem, entry)
            continue
        if first == "{":
            question_id, question, image, answer = str(key), entry["question"], entry["imageId"], entry["answer"]
        else:
            question_id, question, image = str(entry.get("question_id", key)), entry["sent"], entry["img_id"]
            # LXMERT's label maps answers to scores; GQA questions have one answer (score 1). None when empty.
            scored = [(score, name) for name, score in entry["label"].items() if isinstance(score, (int, float))]
            answer = max(scored)[1] if scored else None
            if answer is None:
                reading.drop(where, UNKNOWN_LABEL, f"no scored answer in label {entry['label']!r}", entry)
                continue
        question, answer = question.strip(), answer.strip()
        if not question or not answer:
            reading.drop(where, EMPTY_TEXT, "empty question" if not question else "empty answer", entry)
            continue
        image_id = reading.find_image([_with_suffix(image.strip())])
        if image_id is None:
            reading.drop(where, MISSING_IMAGE_FILE, f"no file {reading.image_root / _with_suffix(image.strip())}")
            continue
        yield reading.keep(_row(image_id, XGQA.prompt.format(question=question), answer, task, question_id))


def read_snli_ve(reading: Reading, task: str = "snli_ve") -> Iterator[dict]:
    """SNLI-VE (``Flikr30kID`` "123.jpg") or IGLUE XVNLI (``Flikr30kID`` "123") lines."""
    for where, entry in _jsonl_entries(reading):
        problem = _missing_fields(entry, {"sentence2": str})
        image_key = next((k for k in ("Flikr30kID", "Flickr30K_ID") if isinstance(entry, dict) and k in entry), None)
        if problem is None and (image_key is None or not isinstance(entry[image_key], str)):
            problem = "missing field 'Flikr30kID' (or a non-string one)"
        if problem is not None:
            reading.drop(where, MALFORMED_LINE, problem, entry)
            continue
        # gold_label is SNLI's majority label; SNLI's train pairs have one annotator, so it equals the
        # annotator_labels[0] the official script read.
        gold = entry.get("gold_label")
        if gold is None and isinstance(entry.get("annotator_labels"), list) and entry["annotator_labels"]:
            gold = entry["annotator_labels"][0]
        if gold not in XVNLI_LABELS:
            reading.drop(where, UNKNOWN_LABEL, f"gold_label {gold!r}", entry)
            continue
        hypothesis = entry["sentence2"].strip()
        if not hypothesis:
            reading.drop(where, EMPTY_TEXT, "empty sentence2 (the hypothesis)", entry)
            continue
        relative = _with_suffix(entry[image_key].strip())
        image_id = reading.find_image([relative])
        if image_id is None:
            reading.drop(where, MISSING_IMAGE_FILE, f"no file {reading.image_root / relative}")
            continue
        context = XVNLI.prompt.format(hypothesis=hypothesis)
        yield reading.keep(_row(image_id, context, XVNLI_LABELS[gold], task, str(entry.get("pairID", where))))


def _nlvr2_label(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return NLVR2_LABELS.get(value.strip().lower()) if isinstance(value, str) else None


def read_nlvr2(reading: Reading, task: str = "nlvr2") -> Iterator[dict]:
    """NLVR2 lines; images ``<identifier without -N>-img0.png``/``-img1.png``, in ``<directory>/`` for train."""
    for where, entry in _jsonl_entries(reading):
        problem = _missing_fields(entry, {"identifier": str, "sentence": str})
        if problem is None and "label" not in entry:
            problem = "missing field 'label'"
        if problem is None and entry["identifier"].count("-") < 3:
            problem = f"identifier {entry['identifier']!r} is not split-set_id-pair_id-sentence_id"
        if problem is not None:
            reading.drop(where, MALFORMED_LINE, problem, entry)
            continue
        label = _nlvr2_label(entry["label"])
        if label is None:
            reading.drop(where, UNKNOWN_LABEL, f"label {entry['label']!r} is not True/False", entry)
            continue
        sentence = entry["sentence"].strip()
        if not sentence:
            reading.drop(where, EMPTY_TEXT, "empty sentence", entry)
            continue
        stem = entry["identifier"].rsplit("-", 1)[0]
        folders = [""]
        if entry.get("directory") is not None:
            # NLVR2's images/train/<directory>/; the official config's image root was the train folder itself.
            folders = [f"{entry['directory']}/", f"train/{entry['directory']}/", "", "train/"]
        images = []
        for side in ("img0", "img1"):
            candidates = [f"{folder}{stem}-{side}.png" for folder in folders]
            found = reading.find_image(candidates)
            if found is None:
                reading.drop(where, MISSING_IMAGE_FILE, f"no file {' or '.join(candidates)} under {reading.image_root}")
                break
            images.append(found)
        if len(images) == 2:
            context = MaRVL.prompt.format(statement=sentence)
            yield reading.keep(_row(images, context, label, task, entry["identifier"]))


def read_flickr30k(reading: Reading, task: str = "flickr30k", seed: int = 42) -> Iterator[dict]:
    """IGLUE's train_ann.jsonl (``{"sentences": [...], "img_path"}``) or Karpathy's dataset_flickr30k.json."""
    rng = random.Random(seed)
    karpathy = reading.path.suffix.lower() == ".json"
    if karpathy:
        if _first_char(reading.path) != "{":
            raise ValueError(f"{reading.path}: expected Karpathy's {{'images': [...]}} document")
        entries, keys = _json_entries(reading.path, "images.item"), {"sentences": list, "filename": str, "split": str}
    else:
        entries, keys = _jsonl_entries(reading), {"sentences": list, "img_path": str}
    for where, entry in entries:
        where = where if not karpathy else reading.where(where)
        problem = _missing_fields(entry, keys)
        if problem is None:
            captions = [s.get("raw") if karpathy and isinstance(s, dict) else s for s in entry["sentences"]]
            if not captions or not all(isinstance(c, str) for c in captions):
                problem = "'sentences' must be a non-empty list of " + ("{'raw': str}" if karpathy else "strings")
        if problem is not None:
            reading.drop(where, MALFORMED_LINE, problem, entry)
            continue
        if karpathy and entry["split"] != "train":
            reading.skipped[f"split {entry['split']}"] += len(captions)
            continue
        # One template draw per caption, before any check, so the good rows get the official assignment.
        prompts = [rng.choice(CAPTION_PROMPTS) for _ in captions]
        relative = (entry["filename"] if karpathy else entry["img_path"]).strip()
        image_id = reading.find_image([relative])
        if image_id is None:
            reading.drop(where, MISSING_IMAGE_FILE, f"no file {reading.image_root / relative}", rows=len(captions))
            continue
        for number, (prompt, caption) in enumerate(zip(prompts, captions)):
            caption = caption.strip()
            if not caption:
                reading.drop(f"{where}#{number}", EMPTY_TEXT, f"empty caption {number} of {relative}")
                continue
            yield reading.keep(_row(image_id, prompt, caption, task, f"{relative}#{number}"))


@dataclass(frozen=True)
class Recipe:
    reader: Callable[..., Iterator[dict]]
    benchmark: str
    # Where the file lies under --input when that is a folder (the dataset's own layout first, then IGLUE's).
    candidates: tuple[str, ...]
    prompt: str


RECIPES: dict[str, Recipe] = {
    "gqa": Recipe(
        read_gqa,
        "xgqa",
        (
            "train_balanced_questions.json",
            "questions1.2/train_balanced_questions.json",
            "train.json",
            "annotations/train.json",
            "gqa/annotations/train.json",
            "datasets/gqa/annotations/train.json",
        ),
        XGQA.prompt,
    ),
    "snli_ve": Recipe(
        read_snli_ve,
        "xvnli",
        (
            "snli_ve_train.jsonl",
            "data/snli_ve_train.jsonl",
            "train.jsonl",
            "en/train.jsonl",
            "annotations/en/train.jsonl",
            "XVNLI/annotations/en/train.jsonl",
            "datasets/XVNLI/annotations/en/train.jsonl",
        ),
        XVNLI.prompt,
    ),
    "nlvr2": Recipe(
        read_nlvr2,
        "marvl",
        (
            "train.json",
            "data/train.json",
            "nlvr2/data/train.json",
            "train.jsonl",
            "annotations/train.jsonl",
            "nlvr2/annotations/train.jsonl",
            "datasets/nlvr2/annotations/train.jsonl",
        ),
        MaRVL.prompt,
    ),
    "flickr30k": Recipe(
        read_flickr30k,
        "xflickrco",
        (
            "train_ann.jsonl",
            "annotations/train_ann.jsonl",
            "flickr30k/annotations/train_ann.jsonl",
            "datasets/flickr30k/annotations/train_ann.jsonl",
            "dataset_flickr30k.json",
        ),
        " | ".join(CAPTION_PROMPTS),
    ),
}


def iter_rows(task: str, input_path: str | os.PathLike, image_root: str | os.PathLike, seed: int = 42):
    """(rows, reading): the training rows of `task`'s file, lazily, and the Reading that counts what they cost."""
    if task not in RECIPES:
        raise ValueError(f"Unknown --task {task!r}; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[task]
    path = find_annotation_file(input_path, list(recipe.candidates), f"{task} training")
    root = Path(image_root)
    if not root.is_dir():
        raise ValueError(f"--image_root {str(root)!r} is not a folder")
    reading = Reading(path, root, count_labels=task != "flickr30k")
    rows = recipe.reader(reading, task, seed) if task == "flickr30k" else recipe.reader(reading, task)
    return rows, reading


def report_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.report.json")


def convert(
    task: str,
    input_path: str | os.PathLike,
    image_root: str | os.PathLike,
    output: str | os.PathLike,
    max_bad_rows: float = 0.01,
    seed: int = 42,
    progress: bool = True,
) -> dict:
    """Write `task`'s training rows to `output` (jsonl, atomically) and the report next to it; returns the report.

    Raises ValueError (after writing the report, with no output file) when more than `max_bad_rows` of the rows
    read are bad.
    """
    from tqdm.auto import tqdm

    rows, reading = iter_rows(task, input_path, image_root, seed)
    logger.info("Reading %s training rows from %s (images under %s)", task, reading.path, reading.image_root)
    written = 0
    report = {}
    try:
        with atomic_open(output) as handle:
            for row in tqdm(rows, desc=f"{task} rows", unit=" rows", disable=not progress, mininterval=2.0):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
            report = _report(task, reading, output, written, max_bad_rows, seed)
            # Raising inside atomic_open discards the temporary: a failed run leaves no output file.
            check_malformed(reading.bad, reading.rows_read, max_bad_rows, Columns())
    except ValueError:
        if report:
            report["failed"] = True
            atomic_write_json(report_path(output), report)
        raise
    atomic_write_json(report_path(output), report)
    bad = reading.bad
    logger.info(
        "Wrote %d %s training rows to %s; %d of %d rows skipped%s (report: %s)",
        written,
        task,
        output,
        bad.count,
        reading.rows_read,
        f" {dict(bad.by_reason.most_common())}" if bad.count else "",
        report_path(output),
    )
    return report


def _report(task: str, reading: Reading, output, written: int, max_bad_rows: float, seed: int) -> dict:
    recipe = RECIPES[task]
    reading.bad.total = reading.rows_read
    report = {
        "task": task,
        "benchmark": recipe.benchmark,
        "input": str(reading.path),
        "image_root": str(reading.image_root),
        "output": str(output),
        "prompt": recipe.prompt,
        "rows_read": reading.rows_read,
        "rows_written": written,
        "bad_rows": reading.bad.to_dict(),
        "max_bad_rows": max_bad_rows,
        "skipped": dict(reading.skipped),
        "images_found": reading.images_found,
        "failed": False,
    }
    if task in ("snli_ve", "nlvr2"):
        report["label_counts"] = dict(reading.labels.most_common())
    elif task == "gqa":
        report["distinct_answers"] = len(reading.labels)
    else:
        report["seed"] = seed
    return report


# ------------------------------------------------------------------------------------------------ command line
@dataclass
class FinetuneDataArguments:
    task: str = field(metadata={"help": f"The recipe's dataset: one of {', '.join(RECIPES)}."})
    input: str = field(
        metadata={"help": "The released training file, or a folder holding it (the dataset's or IGLUE's layout)."}
    )
    image_root: str = field(metadata={"help": "Folder the images are under; image_id is written relative to it."})
    output: str = field(metadata={"help": "Output .jsonl (train_mblip.py --train_file); the report goes next to it."})
    max_bad_rows: float = field(
        default=0.01,
        metadata={"help": "Fail (and write no output) when more than this fraction of the rows read is bad."},
    )
    seed: int = field(
        default=42, metadata={"help": "flickr30k: seed of the caption-template draws (official: random.seed(42))."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if self.task not in RECIPES:
            raise ValueError(f"--task must be one of {', '.join(RECIPES)}, got {self.task!r}")
        if not 0.0 <= self.max_bad_rows <= 1.0:
            raise ValueError(f"--max_bad_rows is a fraction between 0 and 1, got {self.max_bad_rows}")
        if not self.output.endswith(".jsonl"):
            raise ValueError(f"--output must be a .jsonl file, got {self.output!r}")


def parse_args(argv: Sequence[str] | None = None) -> FinetuneDataArguments:
    (args,) = parse_arguments(
        (FinetuneDataArguments,),
        argv,
        prog="python -m mblip.data.finetune",
        description=__doc__,
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    def convert_from_command_line() -> None:
        args = parse_args(argv)
        convert(args.task, args.input, args.image_root, args.output, args.max_bad_rows, args.seed, args.progress)

    # A missing input file is the user's to fix too (too many bad rows and bad options are ValueErrors).
    return run_command(convert_from_command_line, logger, user_errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
