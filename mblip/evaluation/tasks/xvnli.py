"""XVNLI (IGLUE): visual entailment on Flickr30k images in 5 languages, accuracy.

Annotations: IGLUE's `datasets/XVNLI/annotations/<lang>/test.jsonl`, SNLI-style lines
`{"gold_label": "entailment"|"neutral"|"contradiction", "sentence1": ..., "sentence2": ..., "pairID": ...,
"Flikr30kID": ...}`; `sentence2` is the hypothesis about the image. Labels become yes / maybe / no, as in the
paper; lines without one of the three gold labels (e.g. "-") are counted and skipped.
Images: Flickr30k `<Flikr30kID>.jpg`.
"""

from __future__ import annotations

from mblip.prompts import XVNLI_TEMPLATE

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_jsonl, require


LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


class XVNLI(Task):
    name = "xvnli"
    title = "XVNLI"
    kind = "classification"
    languages = ("ar", "en", "es", "fr", "ru")
    prompt = XVNLI_TEMPLATE
    fields = ("hypothesis",)
    generation = {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}
    metrics = ("acc", "relaxed_acc")
    primary_metric = "acc"
    hf_task_type = "visual-entailment"
    hf_task_name = "Visual Entailment"
    dataset_type = "xvnli"
    annotations_url = "https://github.com/e-bug/iglue (datasets/XVNLI/annotations/<lang>/test.jsonl)"
    images_url = "Flickr30k images: https://shannon.cs.illinois.edu/DenotationGraph/"

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        path = find_annotation_file(
            data_dir,
            [f"annotations/{lang}/{split}.jsonl", f"{lang}/{split}.jsonl", f"XVNLI/annotations/{lang}/{split}.jsonl"],
            f"XVNLI ({lang}, {split})",
        )
        rows, problems = read_jsonl(path)
        finder = ImageFinder(image_dirs)
        examples = []
        for number, row in rows:
            where = f"{path.name}:{number}"
            problem = require(row, {"sentence2": str, "pairID": str, "Flikr30kID": str, "gold_label": str}, where)
            if problem is not None:
                problems.append(problem)
                continue
            if row["gold_label"] not in LABELS:
                problems.append(
                    Problem("no_gold_label", f"{where} ({row['pairID']})", f"gold_label {row['gold_label']!r}")
                )
                continue
            images = finder.resolve(row["pairID"], [f"{row['Flikr30kID']}.jpg"], problems)
            if images is not None:
                examples.append(
                    Example(
                        id=row["pairID"],
                        images=images,
                        fields={"hypothesis": row["sentence2"]},
                        references=[LABELS[row["gold_label"]]],
                    )
                )
        return TaskData(examples, problems, str(path))
