"""COCO captioning on Karpathy's test split: 5000 COCO val2014 images, five English references each, CIDEr.

Annotations: Karpathy's `dataset_coco.json` (from `caption_datasets.zip`), one JSON object
`{"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test", "cocoid": 391895,
"sentences": [{"raw": "A man with a red helmet on a small moped on a dirt road. ", "tokens": [...], ...}, ...], ...},
...], "dataset": "coco"}`. The raw sentences are the references, as in the official evaluation.
Splits: "test" (the paper's, the default) and "val", 5000 images each. Images: `<filepath>/<filename>` under
`--image_dir` (the COCO folder holding val2014/), or `<filename>` directly (--image_dir the val2014 folder).
"""

from __future__ import annotations

from pathlib import Path

from mblip.prompts import EVAL_CAPTION_TEMPLATE

from .base import (
    Example,
    ImageFinder,
    Problem,
    Task,
    TaskData,
    find_annotation_file,
    non_empty_references,
    read_json,
    require,
)


KARPATHY_FILES = ["dataset_coco.json", "caption_datasets/dataset_coco.json", "karpathy/dataset_coco.json"]


def read_karpathy(data_dir, split: str, what: str) -> tuple[Path, list[tuple[str, dict]], list[Problem]]:
    """Karpathy's dataset_coco.json: (its path, [(where, image entry)] of `split` in file order, problems)."""
    path = find_annotation_file(data_dir, KARPATHY_FILES, what)
    release = read_json(path)
    images = release.get("images") if isinstance(release, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path}: expected Karpathy's format, a JSON object with an 'images' list")
    entries, problems = [], []
    for index, entry in enumerate(images):
        where = f"{path.name}:images[{index}]"
        if not isinstance(entry, dict):
            problems.append(Problem("malformed_line", where, "not a JSON object"))
            continue
        if entry.get("split") == split:
            entries.append((where, entry))
    if not entries and not problems:
        found = sorted({str(e.get("split")) for e in images if isinstance(e, dict)})
        raise ValueError(f"{path} has no image of split {split!r}; its splits: {', '.join(found)}")
    return path, entries, problems


def find_coco_image(finder: ImageFinder, entry: dict) -> Path | None:
    """`<filepath>/<filename>` under an image folder, else `<filename>` directly in it."""
    relatives = [entry["filename"]]
    if isinstance(entry.get("filepath"), str):
        relatives.insert(0, f"{entry['filepath']}/{entry['filename']}")
    for relative in relatives:
        found = finder.find(relative)
        if found is not None:
            return found
    return None


def missing_coco_image(finder: ImageFinder, example_id: str, entry: dict) -> Problem:
    where = " or ".join(str(d / entry.get("filepath", "") / entry["filename"]) for d in finder.image_dirs)
    return Problem("missing_image", example_id, f"no file {where} (nor {entry['filename']} directly in those folders)")


class COCOCaptions(Task):
    name = "coco"
    title = "COCO Karpathy"
    kind = "captioning"
    languages = ("en",)
    splits = ("test", "val")
    default_splits = ("test",)
    # The official COCO test configuration (configs/datamodule/mblip_mscoco.yaml) with language "English".
    prompt = EVAL_CAPTION_TEMPLATE
    language_names = {"en": "English"}
    generation = {"num_beams": 5, "max_new_tokens": 50, "min_new_tokens": 1, "length_penalty": 1.0}
    metrics = ("cider", "bleu4", "lang_fidelity")
    primary_metric = "cider"
    hf_task_type = "image-to-text"
    hf_task_name = "Image Captioning"
    dataset_type = "coco-karpathy"
    annotations_url = "Karpathy's split: https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
    images_url = "COCO val2014 images: https://cocodataset.org/#download"

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        path, entries, problems = read_karpathy(data_dir, split, "COCO Karpathy (dataset_coco.json)")
        finder = ImageFinder(image_dirs)
        examples = []
        for where, entry in entries:
            problem = require(entry, {"filename": str, "sentences": list}, where)
            if problem is None and not all(
                isinstance(s, dict) and isinstance(s.get("raw"), str) for s in entry["sentences"]
            ):
                problem = Problem("malformed_line", where, "every sentence needs a 'raw' string")
            if problem is not None:
                problems.append(problem)
                continue
            example_id = entry["filename"]
            references = non_empty_references(
                [s["raw"] for s in entry["sentences"]], f"{where} ({example_id})", problems
            )
            if references is None:
                continue
            image = find_coco_image(finder, entry)
            if image is None:
                problems.append(missing_coco_image(finder, example_id, entry))
                continue
            examples.append(Example(id=example_id, images=[image], fields={}, references=references))
        return TaskData(examples, problems, str(path))
