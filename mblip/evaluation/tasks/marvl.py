"""MaRVL: reasoning over a pair of images in 5 languages, yes/no accuracy.

Annotations: `marvl-<lang>.jsonl`, lines `{"concept", "language", "caption", "left_img", "right_img",
"label": true|false, "id", ...}`, found without flags in each layout the downloads have:
- the marvl-code repository: `data/<lang>/annotations/marvl-<lang>.jsonl` (--data_dir the repository or its `data/`);
- the Dataverse release: `marvl-annotations/marvl-<lang>.jsonl` (--data_dir the unpacked release);
- IGLUE: `datasets/marvl/zero_shot/annotations/marvl-<lang>.jsonl` (--data_dir IGLUE, its `datasets/marvl`, ...);
- or the file itself.
Images: `<language>/images/<concept>/<file>` under `--image_dir` (the Dataverse `marvl-images/` folder, or a folder
holding it; NFC or NFKD file names both work). Both images go to the model; their queries are concatenated.
"""

from __future__ import annotations

from pathlib import Path

from mblip.prompts import MARVL_TEMPLATE

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_jsonl, require


def _label(value) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return "yes" if value.strip().lower() == "true" else "no"
    return None


class MaRVL(Task):
    name = "marvl"
    title = "MaRVL"
    kind = "classification"
    languages = ("id", "sw", "ta", "tr", "zh")
    prompt = MARVL_TEMPLATE  # the official test configuration's template
    fields = ("statement",)
    generation = {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}
    metrics = ("acc", "relaxed_acc")
    primary_metric = "acc"
    images_per_example = 2
    hf_task_type = "visual-reasoning"
    hf_task_name = "Visual Reasoning"
    dataset_type = "marvl"
    annotations_url = (
        "https://github.com/marvl-challenge/marvl-code (data/<lang>/annotations), the Dataverse release "
        "(https://doi.org/10.5683/SP3/42VZ4P) or https://github.com/e-bug/iglue (datasets/marvl)"
    )
    images_url = "MaRVL images: https://marvl-challenge.github.io/download"

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        name = f"marvl-{lang}.jsonl"
        path = find_annotation_file(
            data_dir,
            [
                name,
                f"annotations/{name}",
                # marvl-code repository
                f"{lang}/annotations/{name}",
                f"data/{lang}/annotations/{name}",
                # Dataverse release
                f"marvl-annotations/{name}",
                # IGLUE
                f"zero_shot/annotations/{name}",
                f"marvl/zero_shot/annotations/{name}",
                f"datasets/marvl/zero_shot/annotations/{name}",
            ],
            f"MaRVL ({lang})",
        )
        rows, problems = read_jsonl(path)
        # The Dataverse images unpack into marvl-images/, IGLUE's into images/: a folder above them works too.
        image_dirs = [Path(d) for d in image_dirs]
        image_dirs += [d / sub for d in image_dirs for sub in ("marvl-images", "images") if (d / sub).is_dir()]
        finder = ImageFinder(image_dirs)
        examples = []
        for number, row in rows:
            where = f"{path.name}:{number}"
            problem = require(
                row, {"concept": str, "language": str, "caption": str, "left_img": str, "right_img": str}, where
            )
            if problem is None and "label" not in row:
                problem = Problem("malformed_line", where, "missing field 'label'")
            if problem is not None:
                problems.append(problem)
                continue
            label = _label(row["label"])
            if label is None:
                problems.append(Problem("no_gold_label", where, f"label {row['label']!r} is not true/false"))
                continue
            example_id = str(row.get("id", where))
            folder = f"{row['language']}/images/{row['concept']}"
            images = finder.resolve(
                example_id, [f"{folder}/{row['left_img']}", f"{folder}/{row['right_img']}"], problems
            )
            if images is not None:
                examples.append(
                    Example(id=example_id, images=images, fields={"statement": row["caption"]}, references=[label])
                )
        return TaskData(examples, problems, str(path))
