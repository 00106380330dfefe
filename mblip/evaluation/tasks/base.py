"""What every benchmark reader shares: the example record, problem accounting, file lookup and image lookup."""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Example:
    """One evaluation item.

    `fields` fill the prompt template's placeholders (e.g. {"question": ...}); `references` are the reference
    captions, the accepted answers or the single gold label.
    """

    id: str
    images: list[Path]
    fields: dict[str, str]
    references: list[str]


@dataclass
class Problem:
    """A row that could not be evaluated: counted and reported, never dropped silently."""

    kind: str  # "malformed_line", "missing_image", "unreadable_image", "no_gold_label", ...
    where: str  # file:line or example id
    detail: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "where": self.where, "detail": self.detail}


@dataclass
class TaskData:
    examples: list[Example]
    problems: list[Problem] = field(default_factory=list)
    annotation_file: str = ""

    @property
    def n_rows(self) -> int:
        """Rows in the annotation file(s): the examples plus every row skipped for a problem."""
        return len(self.examples) + len(self.problems)


class Task:
    """A benchmark: its languages, its released annotation format, the paper's prompt and decoding, its metrics.

    Subclasses set the class attributes and implement `read` (and `score` through `kind`).
    """

    name: str = ""
    title: str = ""
    kind: str = ""  # "captioning", "vqa" or "classification"
    languages: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("test",)
    default_splits: tuple[str, ...] = ("test",)
    # The paper's English prompt (from mblip/prompts.py); placeholders are the example's fields and {language}.
    prompt: str = ""
    # The example fields the prompt may use as placeholders.
    fields: tuple[str, ...] = ()
    language_names: dict[str, str] = {}
    # The paper's decoding settings (the official evaluation configs).
    generation: dict = {}
    metrics: tuple[str, ...] = ()
    primary_metric: str = ""
    images_per_example: int = 1
    # For the model card's model-index.
    hf_task_type: str = ""
    hf_task_name: str = ""
    dataset_type: str = ""
    # Documentation: where to get the annotations and the images.
    annotations_url: str = ""
    images_url: str = ""
    # Other spellings of language codes accepted on the command line (e.g. "he" for MaXM's "iw").
    aliases: dict[str, str] = {}

    def read(self, data_dir: str | Path, image_dirs: list[Path], lang: str, split: str) -> TaskData:
        raise NotImplementedError

    def score(self, predictions: list[str], examples: list[Example], lang: str) -> dict[str, float]:
        """Metrics on the paper's scale (x100), keyed by name, for predictions aligned with examples.

        Captioning: CIDEr and BLEU-4 (paper tokenization) and, where language identification knows the language,
        language fidelity. Other tasks: accuracy (exact match after the VQA answer normalisation) and the relaxed
        accuracy of the official evaluation.
        """
        from ..metrics import caption_scores, exact_match, identifiable_language, language_fidelity, relaxed_match

        references = [example.references for example in examples]
        if self.kind == "captioning":
            scores = {name: 100 * value for name, value in caption_scores(predictions, references, lang).items()}
            if identifiable_language(lang):
                scores["lang_fidelity"] = 100 * language_fidelity(predictions, lang)
            return scores
        return {
            "acc": 100 * exact_match(predictions, references, normalize=True),
            "relaxed_acc": 100 * relaxed_match(predictions, references, normalize=True),
        }

    def language_name(self, lang: str) -> str:
        return self.language_names.get(lang, lang)


# ------------------------------------------------------------------------------------------------- helpers
def find_annotation_file(data_dir: str | Path, candidates: list[str], what: str) -> Path:
    """The first of `candidates` (relative to data_dir) that exists; `data_dir` may also be the file itself."""
    data_dir = Path(data_dir)
    if data_dir.is_file():
        return data_dir
    tried = []
    for candidate in candidates:
        path = data_dir / candidate
        tried.append(str(path))
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"No {what} annotation file found; looked for: {', '.join(tried)}. {describe_folder(data_dir)}"
    )


def describe_folder(folder: Path, limit: int = 20) -> str:
    """What a folder holds (its first entries, sub-folders marked with /), for error messages about layouts."""
    if not folder.is_dir():
        return f"{folder} is not a folder."
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    if not entries:
        return f"{folder} is empty."
    shown = [entry.name + ("/" if entry.is_dir() else "") for entry in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{folder} holds: {', '.join(shown)}{more}."


def non_empty_references(sentences: list[str], where: str, problems: list[Problem]) -> list[str] | None:
    """The reference captions that are not blank; None (and an empty_reference Problem) when none is left.

    Some releases hold blank references (IGLUE's German and Indonesian xFlickrCO files have `"sentences": [""]`
    once each); a blank reference would enter CIDEr as a caption no prediction can match, so the row is skipped
    and reported instead. Blank references next to real ones are dropped from the row.
    """
    kept = [s for s in sentences if s.strip()]
    if not kept:
        problems.append(Problem("empty_reference", where, f"no non-blank reference caption in {sentences!r}"))
        return None
    return kept


def read_jsonl(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """(line number, object) for every well-formed line; a Problem for every line that is not a JSON object."""
    rows, problems = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(Problem("malformed_line", f"{path.name}:{number}", f"not JSON: {error.msg}"))
                continue
            if not isinstance(row, dict):
                problems.append(Problem("malformed_line", f"{path.name}:{number}", "not a JSON object"))
                continue
            rows.append((number, row))
    return rows, problems


def read_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error


def require(row: dict, keys: dict[str, type], where: str) -> Problem | None:
    """A malformed_line Problem when `row` lacks one of `keys` or has it with the wrong type."""
    for key, kind in keys.items():
        if key not in row:
            return Problem("malformed_line", where, f"missing field {key!r}")
        if not isinstance(row[key], kind):
            return Problem("malformed_line", where, f"field {key!r} is {type(row[key]).__name__}, expected {kind}")
    return None


class ImageFinder:
    """Finds image files under one or more folders (searched in order), under their NFC or NFKD spelling."""

    def __init__(self, image_dirs: list[Path]):
        self.image_dirs = [Path(d) for d in image_dirs]

    def find(self, relative: str) -> Path | None:
        spellings = dict.fromkeys(
            [relative, unicodedata.normalize("NFC", relative), unicodedata.normalize("NFKD", relative)]
        )
        for folder in self.image_dirs:
            for spelling in spellings:
                path = folder / spelling
                if path.is_file():
                    return path
        return None

    def resolve(self, example_id: str, relatives: list[str], problems: list[Problem]) -> list[Path] | None:
        """All images of one example, or None (and a missing_image Problem) when any is missing."""
        found = []
        for relative in relatives:
            path = self.find(relative)
            if path is None:
                where = " or ".join(str(d / relative) for d in self.image_dirs)
                problems.append(Problem("missing_image", example_id, f"no file {where}"))
                return None
            found.append(path)
        return found


def image_dirs_from_arg(value: str) -> list[Path]:
    """`--image_dir` may list several folders, separated by commas (e.g. Flickr30k and COCO for xFlickrCO)."""
    dirs = [Path(os.path.expanduser(part.strip())) for part in value.split(",") if part.strip()]
    if not dirs:
        raise ValueError("--image_dir is empty")
    return dirs
