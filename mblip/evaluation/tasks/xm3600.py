"""XM3600 (Crossmodal-3600): image captioning in 36 languages, CIDEr.

Annotations: `captions.jsonl` as released by Google, one JSON object per image:
`{"image/key": "...", "image/locale": "...", "<lang>": {"caption": [...], "caption/tokenized": [...], ...}, ...}`.
Images: `images/<image/key>.jpg` from the same release. The raw `caption` field is the reference, as in the paper.
"""

from __future__ import annotations

from pathlib import Path

from mblip.prompts import EVAL_CAPTION_TEMPLATE

from .base import Example, ImageFinder, Problem, Task, TaskData, find_annotation_file, read_jsonl


# Language names as the official evaluation files spell them ("Farsi", "Ukranian", "Portugese" included), so the
# prompts match the ones behind the published numbers token for token.
XM3600_LANGUAGE_NAMES = {
    "ar": "Arabic",
    "bn": "Bengali",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fa": "Farsi",
    "fi": "Finnish",
    "fil": "Filipino",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "mi": "Maori",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portugese",
    "quz": "Quechua",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "sw": "Swahili",
    "te": "Telugu",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukranian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}


class XM3600(Task):
    name = "xm3600"
    title = "XM3600"
    kind = "captioning"
    languages = tuple(sorted(XM3600_LANGUAGE_NAMES))
    prompt = EVAL_CAPTION_TEMPLATE
    language_names = XM3600_LANGUAGE_NAMES
    generation = {"num_beams": 5, "max_new_tokens": 50, "min_new_tokens": 1, "length_penalty": 1.0}
    metrics = ("cider", "bleu4", "lang_fidelity")
    primary_metric = "cider"
    hf_task_type = "image-to-text"
    hf_task_name = "Image Captioning"
    dataset_type = "crossmodal-3600"
    annotations_url = "https://google.github.io/crossmodal-3600/ (captions.jsonl)"
    images_url = "https://google.github.io/crossmodal-3600/ (images.tgz)"

    def __init__(self):
        self._cache: dict = {}

    def _rows(self, path: Path):
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._cache:
            self._cache = {key: read_jsonl(path)}  # one file at a time: it is read once for all 36 languages
        return self._cache[key]

    def read(self, data_dir, image_dirs, lang, split) -> TaskData:
        path = find_annotation_file(data_dir, ["captions.jsonl", "Crossmodal3600/captions.jsonl"], "XM3600")
        rows, problems = self._rows(path)
        problems = list(problems)
        finder = ImageFinder(image_dirs)
        examples = []
        for number, row in rows:
            where = f"{path.name}:{number}"
            key = row.get("image/key")
            if not isinstance(key, str) or not key:
                problems.append(Problem("malformed_line", where, "missing 'image/key'"))
                continue
            entry = row.get(lang)
            captions = entry.get("caption") if isinstance(entry, dict) else None
            if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
                problems.append(Problem("malformed_line", where, f"no list of {lang!r} captions for image {key}"))
                continue
            images = finder.resolve(key, [f"{key}.jpg"], problems)
            if images is not None:
                examples.append(Example(id=key, images=images, fields={}, references=list(captions)))
        return TaskData(examples, problems, str(path))
