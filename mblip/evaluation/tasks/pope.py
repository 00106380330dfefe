"""POPE: object hallucination on COCO val2014, yes/no questions in three sampling settings.

Annotations: POPE's `output/coco/coco_pope_<random|popular|adversarial>.json` (github.com/AoiDragon/POPE), JSON
lines `{"question_id", "image": "COCO_val2014_....jpg", "text": "Is there a ... in the image?", "label": "yes"|"no"}`.
Images: COCO val2014. English only; the three settings are run as splits (all three by default).
Reported: the official mBLIP accuracy (exact and relaxed match) and POPE's own accuracy, precision, recall, F1 and
yes-ratio.
"""

from __future__ import annotations

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_jsonl, require


class POPE(Task):
    name = "pope"
    title = "POPE"
    kind = "classification"
    languages = ("en",)
    splits = ("random", "popular", "adversarial")
    default_splits = ("random", "popular", "adversarial")
    prompt = "{question}"
    fields = ("question",)
    generation = {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}
    metrics = ("acc", "relaxed_acc", "pope_accuracy", "pope_f1", "pope_precision", "pope_recall", "pope_yes_ratio")
    primary_metric = "acc"
    hf_task_type = "visual-question-answering"
    hf_task_name = "Object Hallucination (POPE)"
    dataset_type = "pope"
    annotations_url = "https://github.com/AoiDragon/POPE (output/coco/coco_pope_*.json)"
    images_url = "COCO val2014 images: https://cocodataset.org/#download"

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        name = f"coco_pope_{split}.json"
        path = find_annotation_file(data_dir, [name, f"output/coco/{name}", f"coco/{name}"], f"POPE ({split})")
        rows, problems = read_jsonl(path)
        finder = ImageFinder(image_dirs)
        examples = []
        for number, row in rows:
            where = f"{path.name}:{number}"
            problem = require(row, {"image": str, "text": str, "label": str}, where)
            if problem is None and "question_id" not in row:
                problem = Problem("malformed_line", where, "missing field 'question_id'")
            if problem is not None:
                problems.append(problem)
                continue
            label = row["label"].strip().lower()
            if label not in ("yes", "no"):
                problems.append(Problem("no_gold_label", where, f"label {row['label']!r} is not yes/no"))
                continue
            example_id = str(row["question_id"])
            images = finder.resolve(example_id, [row["image"]], problems)
            if images is not None:
                examples.append(
                    Example(id=example_id, images=images, fields={"question": row["text"]}, references=[label])
                )
        return TaskData(examples, problems, str(path))

    def score(self, predictions, examples, lang):
        from ..metrics import pope_metrics

        scores = super().score(predictions, examples, lang)
        pope = pope_metrics(predictions, [e.references[0] for e in examples])
        scores.update({f"pope_{name}": 100 * value for name, value in pope.items()})
        return scores
