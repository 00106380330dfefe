"""VQAv2: English visual question answering on COCO val2014, the VQA accuracy over ten human answers.

Annotations: the VQAv2 release's two files, in one folder (--data_dir; the official zips unpack them flat):
- `v2_OpenEnded_mscoco_val2014_questions.json`: `{"questions": [{"image_id": 262148, "question": "Where is he
  looking?", "question_id": 262148000}, ...], "data_subtype": "val2014", ...}`;
- `v2_mscoco_val2014_annotations.json`: `{"annotations": [{"question_id": 262148000, "image_id": 262148,
  "answers": [{"answer": "down", "answer_confidence": "yes", "answer_id": 1}, ...], "multiple_choice_answer":
  "down", "answer_type": "other", "question_type": "none of the above"}, ...], ...}`.
Splits: "val5000" (the default: the first 5000 questions of the questions file, the official mBLIP test set,
`vqav2_val.json` read with `split: train[:5000]`) and "val" (all 214354 questions). Images:
`COCO_val2014_<image_id, 12 digits>.jpg` under `--image_dir` or its `val2014/`.
Scored with `vqa_accuracy`: min(1, matches / 3) over the ten leave-one-out subsets of the answers, after the VQA
answer normalisation, as the official evaluation does.
"""

from __future__ import annotations

from pathlib import Path

from mblip.prompts import ENGLISH_ANSWER_TEMPLATE

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_json


QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
ANSWERS = "v2_mscoco_val2014_annotations.json"
SUBSETS = {"val5000": 5000, "val": None}


class VQAv2(Task):
    name = "vqav2"
    title = "VQAv2"
    kind = "vqa"
    languages = ("en",)
    splits = ("val5000", "val")
    default_splits = ("val5000",)
    # The official VQAv2 test configuration (configs/datamodule/mblip_vqa2.yaml, mblip_eval_vqa_classification).
    prompt = ENGLISH_ANSWER_TEMPLATE
    fields = ("question",)
    generation = {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}
    metrics = ("vqa_acc",)
    primary_metric = "vqa_acc"
    hf_task_type = "visual-question-answering"
    hf_task_name = "Visual Question Answering"
    dataset_type = "vqav2"
    annotations_url = "https://visualqa.org/download.html (v2_Questions_Val_mscoco.zip, v2_Annotations_Val_mscoco.zip)"
    images_url = "COCO val2014 images: https://cocodataset.org/#download"

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        folder = Path(data_dir)
        if folder.is_file():  # either file given directly: the other one sits next to it
            folder = folder.parent
        prefixes = ("", "Questions/", "Annotations/", "questions/", "annotations/", "vqav2/")
        questions_path = find_annotation_file(folder, [p + QUESTIONS for p in prefixes], "VQAv2 questions")
        answers_path = find_annotation_file(folder, [p + ANSWERS for p in prefixes], "VQAv2 answers")
        questions = _list(read_json(questions_path), "questions", questions_path)
        answers = {}
        for annotation in _list(read_json(answers_path), "annotations", answers_path):
            if isinstance(annotation, dict) and "question_id" in annotation:
                answers[str(annotation["question_id"])] = annotation
        if SUBSETS[split] is not None:
            questions = questions[: SUBSETS[split]]
        finder = ImageFinder([*image_dirs, *(Path(d) / "val2014" for d in image_dirs)])
        examples, problems = [], []
        for index, row in enumerate(questions):
            where = f"{questions_path.name}:questions[{index}]"
            if not isinstance(row, dict):
                problems.append(Problem("malformed_line", where, "not a JSON object"))
                continue
            missing = [key for key in ("question_id", "image_id", "question") if key not in row]
            if missing or not isinstance(row["question"], str) or not isinstance(row["image_id"], int):
                detail = f"missing {missing}" if missing else "'question' must be a string, 'image_id' an integer"
                problems.append(Problem("malformed_line", where, detail))
                continue
            question_id = str(row["question_id"])
            annotation = answers.get(question_id)
            given = annotation.get("answers") if annotation is not None else None
            if not isinstance(given, list) or not given:
                detail = "no entry" if annotation is None else "no 'answers' list"
                problems.append(Problem("no_answers", f"{where} ({question_id})", f"{detail} in {answers_path.name}"))
                continue
            references = [a.get("answer") for a in given if isinstance(a, dict)]
            if len(references) != len(given) or not all(isinstance(a, str) for a in references):
                problems.append(Problem("malformed_line", f"{where} ({question_id})", "an answer lacks its 'answer'"))
                continue
            images = finder.resolve(question_id, [f"COCO_val2014_{row['image_id']:012d}.jpg"], problems)
            if images is not None:
                examples.append(
                    Example(id=question_id, images=images, fields={"question": row["question"]}, references=references)
                )
        return TaskData(examples, problems, f"{questions_path}, {answers_path}")

    def score(self, predictions, examples, lang):
        from ..metrics import vqa_accuracy

        return {"vqa_acc": 100 * vqa_accuracy(predictions, [e.references for e in examples], normalize=True)}


def _list(release, key: str, path: Path) -> list:
    value = release.get(key) if isinstance(release, dict) else None
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected the VQAv2 release format, a JSON object with a {key!r} list")
    return value
