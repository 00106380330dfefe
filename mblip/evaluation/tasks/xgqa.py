"""xGQA: visual question answering on GQA images in 8 languages, accuracy.

Annotations: the xGQA release (github.com/Adapter-Hub/xGQA, also in IGLUE as `datasets/xGQA/annotations`), in GQA's
question format, a JSON object `{question_id: {"question": ..., "imageId": ..., "answer": ..., ...}}`:
- split "test" (the paper's, the default): `few_shot/<lang>/test.json`; split "dev": `few_shot/<lang>/dev.json`;
- split "testdev" (GQA's balanced test-dev, translated): `zero_shot/testdev_balanced_questions_<lang>.json`;
found without flags under the xGQA repository (`data/...`) or IGLUE (`datasets/xGQA/annotations/...`), from either
repository's root or any folder on the way down.
Images: GQA's `images/<imageId>.jpg`. Questions are in the target language, answers are English GQA labels.
"""

from __future__ import annotations

from mblip.prompts import ENGLISH_ANSWER_TEMPLATE

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_json, require


class XGQA(Task):
    name = "xgqa"
    title = "xGQA"
    kind = "vqa"
    languages = ("bn", "de", "en", "id", "ko", "pt", "ru", "zh")
    splits = ("test", "dev", "testdev")
    prompt = ENGLISH_ANSWER_TEMPLATE
    fields = ("question",)
    generation = {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}
    metrics = ("acc", "relaxed_acc")
    primary_metric = "acc"
    hf_task_type = "visual-question-answering"
    hf_task_name = "Visual Question Answering"
    dataset_type = "xgqa"
    annotations_url = "https://github.com/Adapter-Hub/xGQA (or https://github.com/e-bug/iglue datasets/xGQA)"
    images_url = "GQA images: https://cs.stanford.edu/people/dorarad/gqa/download.html"

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        if split == "testdev":
            names = [f"zero_shot/testdev_balanced_questions_{lang}.json"]
        else:
            names = [f"few_shot/{lang}/{split}.json"]
        # The xGQA repository keeps them under data/, IGLUE under datasets/xGQA/annotations/.
        prefixes = ("", "annotations/", "data/", "xGQA/annotations/", "datasets/xGQA/annotations/")
        candidates = [prefix + name for name in names for prefix in prefixes]
        path = find_annotation_file(data_dir, candidates, f"xGQA ({lang}, {split})")
        questions = read_json(path)
        if not isinstance(questions, dict):
            raise ValueError(f"{path}: expected a JSON object of questions keyed by id, got {type(questions).__name__}")
        finder = ImageFinder(image_dirs)
        examples, problems = [], []
        for question_id, row in questions.items():
            where = f"{path.name}:{question_id}"
            if not isinstance(row, dict):
                problems.append(Problem("malformed_line", where, "question entry is not a JSON object"))
                continue
            problem = require(row, {"question": str, "imageId": str, "answer": str}, where)
            if problem is not None:
                problems.append(problem)
                continue
            images = finder.resolve(str(question_id), [f"{row['imageId']}.jpg"], problems)
            if images is not None:
                examples.append(
                    Example(
                        id=str(question_id),
                        images=images,
                        fields={"question": row["question"]},
                        references=[row["answer"]],
                    )
                )
        return TaskData(examples, problems, str(path))
