"""English task rows from the official source files, ready for ``python -m mblip.data.translate``.

    python -m mblip.data.tasks --source vqav2 --questions v2_OpenEnded_mscoco_train2014_questions.json \\
        --annotations v2_mscoco_train2014_annotations.json --output vqav2.jsonl
    python -m mblip.data.tasks --source aokvqa --aokvqa aokvqa_v1p0_train.json --output aokvqa.jsonl
    python -m mblip.data.tasks --source imagenet --image_root imagenet/train --class_index imagenet_class_index.json \\
        --output imagenet.jsonl
    python -m mblip.data.tasks --source matching --captions captions.jsonl --negatives negatives/negatives.jsonl \\
        --output matching.jsonl

Each source gives the rows of the official tasks made from it (data/*/generate_train.py in gregor-ge/mBLIP):

- VQAv2 questions + annotations: one ``vqa`` row (question -> answer) and one ``vqg`` row (answer -> question) per
  question, with the annotation's ``multiple_choice_answer``. Questions and annotations are joined by
  ``question_id``; the official script zipped the two lists and asserted they were aligned.
- A-OKVQA: per rationale, one ``vqa_rationale`` row (chain of thought) and one ``explanation`` row; the answer is
  ``choices[correct_choice_idx]``. With ``--image_root``, questions whose image is missing are skipped and counted,
  as the official script skipped A-OKVQA images outside COCO train2014.
- ImageNet (a folder per class and a class-name file): per image one ``classification`` row and one ``decide`` row.
  Half of the "decide" rows ask about the image's class (yes); the other half ask about a random other class or the
  next class in the list (no), a quarter each, as in the official script (whose random pick could hit the true class
  and then answer "no"; ours never does).
- Captions + mined hard negatives (``mblip.data.hard_negatives``): per caption one ``matching`` row; half are the
  image's own caption (yes), the others (no) draw uniformly among a random caption of another image and the
  negatives mined at the official ranks.

Languages, translation and templates are the translation step's business; these rows are English.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mblip.outputs import read_json, read_jsonl, write_jsonl

from .inputs import iter_rows
from .languages import stable_seed


logger = logging.getLogger(__name__)

SOURCES = ("vqav2", "aokvqa", "imagenet", "matching")
COCO_TRAIN2014 = "COCO_train2014_{image_id:012d}.jpg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _load(source) -> object:
    return read_json(source) if isinstance(source, (str, os.PathLike)) else source


# ----------------------------------------------------------------------------------------------------------------
# VQAv2: answering and question generation
# ----------------------------------------------------------------------------------------------------------------


def vqav2_rows(questions, annotations, image_format: str = COCO_TRAIN2014) -> Iterator[dict]:
    """``vqa`` and ``vqg`` rows from VQAv2's questions and annotations files (paths or loaded dicts)."""
    answers = {a["question_id"]: a for a in _load(annotations)["annotations"]}
    missing = 0
    for question in _load(questions)["questions"]:
        annotation = answers.get(question["question_id"])
        if annotation is None:
            missing += 1
            continue
        image_id = image_format.format(image_id=int(question["image_id"]))
        answer = annotation["multiple_choice_answer"]
        common = {"image_id": image_id, "question_id": question["question_id"]}
        yield {**common, "context": question["question"], "label": answer, "task": "vqa"}
        yield {**common, "context": answer, "label": question["question"], "task": "vqg"}
    if missing:
        logger.warning("%d VQAv2 questions have no annotation and are skipped.", missing)


# ----------------------------------------------------------------------------------------------------------------
# A-OKVQA: chain of thought and explanation
# ----------------------------------------------------------------------------------------------------------------


def aokvqa_rows(data, image_format: str = COCO_TRAIN2014, image_root: str | None = None) -> Iterator[dict]:
    """``vqa_rationale`` and ``explanation`` rows, one of each per rationale, from an A-OKVQA file."""
    skipped = 0
    for example in _load(data):
        image_id = image_format.format(image_id=int(example["image_id"]))
        if image_root is not None and not os.path.exists(os.path.join(image_root, image_id)):
            skipped += 1
            continue
        answer = example["choices"][example["correct_choice_idx"]]
        for rationale in example["rationales"]:
            common = {"image_id": image_id, "context": example["question"], "label": answer, "rationale": rationale}
            common["question_id"] = example.get("question_id")
            yield {**common, "task": "vqa_rationale"}
            yield {**common, "task": "explanation"}
    if skipped:
        logger.warning("%d A-OKVQA questions skipped: their image is not under %s.", skipped, image_root)


# ----------------------------------------------------------------------------------------------------------------
# ImageNet: classification and "decide"
# ----------------------------------------------------------------------------------------------------------------


def read_class_names(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(folder, class name) in class order from ``imagenet_class_index.json`` (``{"0": ["n01440764", "tench"]}``),
    a ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``: the first name), or a JSON list of
    ``[folder, name]`` pairs. Underscores become spaces ("golden_retriever" -> "golden retriever")."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path)
        pairs = [data[k] for k in sorted(data, key=int)] if isinstance(data, dict) else data
    else:
        pairs = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                folder, _, names = line.strip().partition(" ")
                pairs.append((folder, names.split(",")[0]))
    return [(str(folder), str(name).replace("_", " ").strip()) for folder, name in pairs]


def imagenet_rows(
    image_root: str | os.PathLike,
    classes: Sequence[tuple[str, str]],
    seed: int = 42,
    images_per_class: int | None = None,
) -> Iterator[dict]:
    """``classification`` and ``decide`` rows for the images under ``image_root/<folder>/``."""
    rng = np.random.default_rng(stable_seed(seed, "imagenet"))
    names = [name for _, name in classes]
    for i, (folder, name) in enumerate(classes):
        directory = Path(image_root) / folder
        if not directory.is_dir():
            logger.warning("No image folder %s for class %r.", directory, name)
            continue
        images = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for image in images[:images_per_class]:
            image_id = f"{folder}/{image}"
            yield {"image_id": image_id, "label": name, "task": "classification"}
            u_match, u_kind, u_class = rng.random(3)
            if u_match < 0.5 or len(names) < 2:
                yield {"image_id": image_id, "context": name, "label": "yes", "task": "decide"}
                continue
            if u_kind < 0.5:  # a random other class
                other = (i + 1 + int(u_class * (len(names) - 1))) % len(names)
            else:  # the next class in the list: neighbouring synsets are often close (dog breeds)
                other = (i + 1) % len(names)
            yield {"image_id": image_id, "context": names[other], "label": "no", "task": "decide"}


# ----------------------------------------------------------------------------------------------------------------
# Captions and caption matching
# ----------------------------------------------------------------------------------------------------------------


def read_captions(source, image_column: str = "image_id", caption_column: str = "caption") -> list[tuple[str, str]]:
    """(image, caption) pairs from COCO's captions file (``images`` + ``annotations``), Karpathy's
    ``dataset_coco.json`` (``images`` with ``sentences``; its train split, as the official script), or rows (jsonl,
    json, csv, parquet, a saved dataset) with an image and a caption column."""
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".json":
        data = read_json(source)
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            files = {image["id"]: image.get("file_name", str(image["id"])) for image in data["images"]}
            return [(files[a["image_id"]], a["caption"].strip()) for a in data["annotations"]]
        if isinstance(data, dict) and data.get("images") and "sentences" in data["images"][0]:
            return [
                (image["filename"], sentence["raw"].strip())
                for image in data["images"]
                if image.get("split", "train") == "train"
                for sentence in image["sentences"]
            ]
    pairs = []
    for row in iter_rows(source):
        image, caption = row.get(image_column), row.get(caption_column)
        if image is None or caption is None or not str(caption).strip():
            raise ValueError(f"Caption rows need {image_column!r} and {caption_column!r}; got {row!r}.")
        pairs.append((str(image), str(caption).strip()))
    return pairs


def matching_rows(
    captions: Sequence[tuple[str, str]], negatives: Mapping[str, Sequence[str]] | str | os.PathLike, seed: int = 42
) -> Iterator[dict]:
    """``matching`` rows: half positives, half negatives drawn among a random other image's caption and the image's
    mined negatives (official: a random caption and the neighbours at ranks 3, 10, 30, 100 and 300)."""
    if isinstance(negatives, (str, os.PathLike)):
        negatives = {row["image_id"]: row["negatives"] for row in read_jsonl(negatives)}
    rng = np.random.default_rng(stable_seed(seed, "matching"))
    missing = 0
    for image_id, caption in captions:
        u_match, u_pick, u_random = rng.random(3)
        if u_match < 0.5:
            yield {"image_id": image_id, "context": caption, "label": "yes", "task": "matching"}
            continue
        mined = negatives.get(image_id)
        if mined is None:
            missing += 1
            continue
        candidates = [None, *mined]
        pick = candidates[min(int(u_pick * len(candidates)), len(candidates) - 1)]
        if pick is None:  # a random caption of another image
            for step in range(len(captions)):
                other_image, other = captions[(int(u_random * len(captions)) + step) % len(captions)]
                if other_image != image_id:
                    pick = other
                    break
            else:
                continue
        yield {"image_id": image_id, "context": pick, "label": "no", "task": "matching"}
    if missing:
        logger.warning("%d negative matching examples skipped: no mined negatives for their image.", missing)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TaskArguments:
    source: str = field(metadata={"help": f"One of {', '.join(SOURCES)}."})
    output: str = field(metadata={"help": "The English rows (.jsonl), input of python -m mblip.data.translate."})
    questions: str | None = field(default=None, metadata={"help": "vqav2: the questions file."})
    annotations: str | None = field(default=None, metadata={"help": "vqav2: the annotations file."})
    aokvqa: str | None = field(default=None, metadata={"help": "aokvqa: aokvqa_v1p0_train.json."})
    image_format: str = field(
        default=COCO_TRAIN2014, metadata={"help": "vqav2/aokvqa: image file name from the numeric {image_id}."}
    )
    image_root: str | None = field(
        default=None, metadata={"help": "imagenet: folder of class folders; aokvqa: skip questions without image."}
    )
    class_index: str | None = field(
        default=None, metadata={"help": "imagenet: imagenet_class_index.json or LOC_synset_mapping.txt."}
    )
    images_per_class: int | None = field(default=None, metadata={"help": "imagenet: at most this many per class."})
    captions: str | None = field(
        default=None, metadata={"help": "matching: captions (COCO, Karpathy, or rows with image_id and caption)."}
    )
    negatives: str | None = field(
        default=None, metadata={"help": "matching: negatives.jsonl from python -m mblip.data.hard_negatives."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the yes/no draws and negative picks."})

    def __post_init__(self):
        needs = {
            "vqav2": ("questions", "annotations"),
            "aokvqa": ("aokvqa",),
            "imagenet": ("image_root", "class_index"),
            "matching": ("captions", "negatives"),
        }
        if self.source not in needs:
            raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}.")
        missing = [f"--{name}" for name in needs[self.source] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"--source {self.source} needs {' and '.join(missing)}.")


def build_rows(args: TaskArguments) -> Iterable[dict]:
    if args.source == "vqav2":
        return vqav2_rows(args.questions, args.annotations, args.image_format)
    if args.source == "aokvqa":
        return aokvqa_rows(args.aokvqa, args.image_format, args.image_root)
    if args.source == "imagenet":
        return imagenet_rows(args.image_root, read_class_names(args.class_index), args.seed, args.images_per_class)
    return matching_rows(read_captions(args.captions), args.negatives, args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    from mblip.arguments import parse_args

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        (args,) = parse_args((TaskArguments,), argv, prog="python -m mblip.data.tasks", description=__doc__)
        count = write_jsonl(args.output, build_rows(args))
    except ValueError as error:
        logger.error("%s", error)
        return 2
    tasks = Counter(row["task"] for row in read_jsonl(args.output))
    logger.info("Wrote %d rows to %s: %s", count, args.output, json.dumps(dict(tasks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
