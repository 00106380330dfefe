"""MaXM: visual question answering on XM3600 images in 7 languages, accuracy.

Annotations: `maxm_v1_<lang>.json` from the MaXM v1 release (github.com/google-research-datasets/maxm), Hebrew as
"iw": `{"annotations": [{"image_id": ..., "qa_pairs": [{"question_id", "question", "answers",
"processed_answers", ...}]}]}`. Images: XM3600's `<image_id>.jpg`.
Accuracy is exact match against any of the processed answers (stripped, lower-cased), as in the paper.
"""

from __future__ import annotations

from mblip.prompts import QUESTION_TEMPLATE

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_json, require


MAXM_LANGUAGE_NAMES = {
    "en": "English",
    "fr": "French",
    "hi": "Hindi",
    "iw": "Hebrew",
    "ro": "Romanian",
    "th": "Thai",
    "zh": "Chinese",
}


class MaXM(Task):
    name = "maxm"
    title = "MaXM"
    kind = "vqa"
    languages = tuple(sorted(MAXM_LANGUAGE_NAMES))
    aliases = {"he": "iw"}
    prompt = QUESTION_TEMPLATE
    fields = ("question",)
    language_names = MAXM_LANGUAGE_NAMES
    generation = {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}
    metrics = ("acc",)
    primary_metric = "acc"
    hf_task_type = "visual-question-answering"
    hf_task_name = "Visual Question Answering"
    dataset_type = "maxm"
    annotations_url = "https://github.com/google-research-datasets/maxm (maxm_v1_release.zip)"
    images_url = "XM3600 images: https://google.github.io/crossmodal-3600/"

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        name = f"maxm_v1_{lang}.json"
        path = find_annotation_file(data_dir, [name, f"maxm_v1_release/{name}"], f"MaXM ({lang})")
        release = read_json(path)
        annotations = release.get("annotations") if isinstance(release, dict) else None
        if not isinstance(annotations, list):
            raise ValueError(f"{path}: expected a JSON object with an 'annotations' list")
        finder = ImageFinder(image_dirs)
        examples, problems = [], []
        for index, annotation in enumerate(annotations):
            where = f"{path.name}:annotations[{index}]"
            problem = (
                require(annotation, {"image_id": str, "qa_pairs": list}, where)
                if isinstance(annotation, dict)
                else Problem("malformed_line", where, "not a JSON object")
            )
            if problem is not None:
                problems.append(problem)
                continue
            for pair_index, pair in enumerate(annotation["qa_pairs"]):
                pair_where = f"{where}.qa_pairs[{pair_index}]"
                problem = (
                    require(pair, {"question_id": str, "question": str, "processed_answers": list}, pair_where)
                    if isinstance(pair, dict)
                    else Problem("malformed_line", pair_where, "not a JSON object")
                )
                if problem is None and not (
                    pair["processed_answers"] and all(isinstance(a, str) for a in pair["processed_answers"])
                ):
                    problem = Problem(
                        "malformed_line", pair_where, "'processed_answers' must be a non-empty list of strings"
                    )
                if problem is not None:
                    problems.append(problem)
                    continue
                images = finder.resolve(pair["question_id"], [f"{annotation['image_id']}.jpg"], problems)
                if images is not None:
                    examples.append(
                        Example(
                            id=pair["question_id"],
                            images=images,
                            fields={"question": pair["question"]},
                            references=list(pair["processed_answers"]),
                        )
                    )
        return TaskData(examples, problems, str(path))

    def score(self, predictions, examples, lang):
        from ..metrics import exact_match

        # MaXM's answers are in the target language: no English answer normalisation, only strip + lower case.
        return {"acc": 100 * exact_match(predictions, [e.references for e in examples], normalize=False)}
