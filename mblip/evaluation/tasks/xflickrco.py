"""xFlickrCO (IGLUE): image captioning on 1000 Flickr30k and 1000 COCO images in 8 languages, CIDEr.

Annotations: IGLUE's `datasets/xFlickrCO/annotations/<lang>/test.jsonl`, one JSON object per image:
`{"sentences": [...], "id": ..., "img_path": "1007129816.jpg" | "COCO_val2014_000000392892.jpg"}`.
English, split "test" (the default): like the official evaluation, Flickr30k's own 1000 test images with five
references each, IGLUE's `datasets/flickr30k/annotations/test_ann.jsonl` (same line format), so English CIDEr compares
with the paper's; split "iglue" selects IGLUE's English xFlickrCO file instead (2000 images, one reference each).
For the other languages both splits read the xFlickrCO file. Blank references (IGLUE's de and id files have one
`"sentences": [""]` each) are skipped and reported as `empty_reference`, never scored.
Images: Flickr30k images and COCO val2014 images; pass both folders: `--image_dir flickr30k-images,val2014`.
"""

from __future__ import annotations

from mblip.prompts import EVAL_CAPTION_TEMPLATE

from .base import (
    Example,
    ImageFinder,
    Problem,
    Task,
    TaskData,
    find_annotation_file,
    non_empty_references,
    read_jsonl,
    require,
)


XFLICKRCO_LANGUAGE_NAMES = {
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "id": "Indonesian",
    "ja": "Japanese",
    "ru": "Russian",
    "tr": "Turkish",
    "zh": "Chinese",
}


class XFlickrCO(Task):
    name = "xflickrco"
    title = "xFlickrCO"
    kind = "captioning"
    languages = tuple(sorted(XFLICKRCO_LANGUAGE_NAMES))
    # "test": the paper's sets (English: Flickr30k's test set, five references); "iglue": IGLUE's file for every
    # language (English: 2000 images, one reference).
    splits = ("test", "iglue")
    default_splits = ("test",)
    prompt = EVAL_CAPTION_TEMPLATE
    language_names = XFLICKRCO_LANGUAGE_NAMES
    generation = {"num_beams": 5, "max_new_tokens": 50, "min_new_tokens": 1, "length_penalty": 1.0}
    metrics = ("cider", "bleu4", "lang_fidelity")
    primary_metric = "cider"
    hf_task_type = "image-to-text"
    hf_task_name = "Image Captioning"
    dataset_type = "xflickrco"
    annotations_url = "https://github.com/e-bug/iglue (datasets/xFlickrCO/annotations/<lang>/test.jsonl)"
    images_url = (
        "Flickr30k images (https://shannon.cs.illinois.edu/DenotationGraph/) and COCO val2014 (https://cocodataset.org)"
    )

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        if lang == "en" and split == "test":
            path = find_annotation_file(
                data_dir,
                [
                    "test_ann.jsonl",
                    "annotations/test_ann.jsonl",
                    "flickr30k/annotations/test_ann.jsonl",
                    "../flickr30k/annotations/test_ann.jsonl",  # --data_dir is IGLUE's datasets/xFlickrCO
                    "datasets/flickr30k/annotations/test_ann.jsonl",
                ],
                "Flickr30k test (xFlickrCO English, five references; --split iglue for IGLUE's English file)",
            )
        else:
            name = f"{lang}/test.jsonl"
            path = find_annotation_file(
                data_dir,
                [
                    f"annotations/{name}",
                    name,
                    f"xFlickrCO/annotations/{name}",
                    f"datasets/xFlickrCO/annotations/{name}",
                ],
                f"xFlickrCO ({lang})",
            )
        rows, problems = read_jsonl(path)
        finder = ImageFinder(image_dirs)
        examples = []
        for number, row in rows:
            where = f"{path.name}:{number}"
            problem = require(row, {"sentences": list, "img_path": str}, where)
            if problem is None and (not row["sentences"] or not all(isinstance(s, str) for s in row["sentences"])):
                problem = Problem("malformed_line", where, "'sentences' must be a non-empty list of strings")
            if problem is not None:
                problems.append(problem)
                continue
            references = non_empty_references(row["sentences"], f"{where} ({row['img_path']})", problems)
            if references is None:
                continue
            images = finder.resolve(row["img_path"], [row["img_path"]], problems)
            if images is not None:
                examples.append(Example(id=row["img_path"], images=images, fields={}, references=references))
        return TaskData(examples, problems, str(path))
