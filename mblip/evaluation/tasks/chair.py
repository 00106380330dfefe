"""CHAIR: object hallucination in English captions of COCO images, CHAIR-s and CHAIR-i (lower is better).

As in the official mBLIP evaluation: the first 1000 images of Karpathy's val split (`chair_val.json` read with
`split: train[:1000]`), captioned with two prompts, run as the two splits (both by default):
- "short": "Caption in English:";
- "long": "Describe the image in English with as much detail as possible.";
decoded with 5 beams, at most 256 new tokens, length penalty 1 and repetition penalty 1.5.
The objects really in each image are its COCO instance annotations (the official evaluation read the same objects
from POPE's `segmentation/coco_ground_truth_segmentation.json`, which lists them per image); a caption's objects are
found with the official CHAIR synonym list (see `metrics.chair`).

Files, in one folder (--data_dir): Karpathy's `dataset_coco.json` (also under `caption_datasets/`) and COCO's
`annotations/instances_val2014.json` (from annotations_trainval2014.zip; also found directly in the folder).
Images: COCO val2014, `<filepath>/<filename>` under `--image_dir` or `<filename>` directly.
"""

from __future__ import annotations

from pathlib import Path

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_json
from .coco import find_coco_image, missing_coco_image, read_karpathy


# The official CHAIR test configuration (configs/datamodule/mblip_halu_chair.yaml): one prompt per setting.
INSTRUCTIONS = {
    "short": "Caption in English:",
    "long": "Describe the image in English with as much detail as possible.",
}
IMAGES = 1000  # the official `split: train[:1000]`


class CHAIR(Task):
    name = "chair"
    title = "CHAIR"
    kind = "captioning"
    languages = ("en",)
    splits = ("short", "long")
    default_splits = ("short", "long")
    # The setting's instruction (INSTRUCTIONS); --prompt replaces it for both settings.
    prompt = "{instruction}"
    fields = ("instruction",)
    language_names = {"en": "English"}
    # configs/evaluation/mblip_eval_chair.yaml
    generation = {
        "num_beams": 5,
        "max_new_tokens": 256,
        "min_new_tokens": 1,
        "length_penalty": 1.0,
        "repetition_penalty": 1.5,
    }
    metrics = ("chair_s", "chair_i")
    primary_metric = "chair_s"
    hf_task_type = "image-to-text"
    hf_task_name = "Object Hallucination (CHAIR)"
    dataset_type = "chair"
    annotations_url = (
        "Karpathy's split (https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip) and COCO "
        "instances (http://images.cocodataset.org/annotations/annotations_trainval2014.zip)"
    )
    images_url = "COCO val2014 images: https://cocodataset.org/#download"

    def __init__(self):
        self._objects: dict = {}

    def _objects_by_image(self, path: Path) -> dict[int, set[str]]:
        """{image id: the category names of its instance annotations}, for every image the file lists."""
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._objects:
            release = read_json(path)
            if not isinstance(release, dict) or not all(
                isinstance(release.get(k), list) for k in ("images", "annotations", "categories")
            ):
                raise ValueError(f"{path}: expected COCO's instances format with 'images', 'annotations', 'categories'")
            names = {c["id"]: c["name"] for c in release["categories"] if isinstance(c, dict) and "id" in c}
            objects = {image["id"]: set() for image in release["images"] if isinstance(image, dict) and "id" in image}
            for annotation in release["annotations"]:
                if not isinstance(annotation, dict):
                    continue
                name = names.get(annotation.get("category_id"))
                if annotation.get("image_id") in objects and name is not None:
                    objects[annotation["image_id"]].add(name)
            self._objects = {key: objects}  # one file at a time: read once for both settings
        return self._objects[key]

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        karpathy, entries, problems = read_karpathy(data_dir, "val", "CHAIR images (Karpathy's dataset_coco.json)")
        instances = find_annotation_file(
            karpathy.parent if Path(data_dir).is_file() else data_dir,
            ["annotations/instances_val2014.json", "instances_val2014.json", "coco/annotations/instances_val2014.json"],
            "CHAIR objects (COCO instances_val2014.json)",
        )
        objects = self._objects_by_image(instances)
        finder = ImageFinder(image_dirs)
        examples = []
        for where, entry in entries[:IMAGES]:
            if not isinstance(entry.get("filename"), str) or not isinstance(entry.get("cocoid"), int):
                problems.append(Problem("malformed_line", where, "needs a 'filename' string and a 'cocoid' integer"))
                continue
            example_id = entry["filename"]
            if entry["cocoid"] not in objects:
                problems.append(
                    Problem("no_object_annotations", example_id, f"image {entry['cocoid']} is not in {instances.name}")
                )
                continue
            image = find_coco_image(finder, entry)
            if image is None:
                problems.append(missing_coco_image(finder, example_id, entry))
                continue
            examples.append(
                Example(
                    id=example_id,
                    images=[image],
                    fields={"instruction": INSTRUCTIONS[split]},
                    references=sorted(objects[entry["cocoid"]]),
                )
            )
        return TaskData(examples, problems, f"{karpathy}, {instances}")

    def score(self, predictions, examples, lang):
        from ..metrics import chair

        scores = chair(predictions, [e.references for e in examples])
        return {name: 100 * scores[name] for name in self.metrics}
