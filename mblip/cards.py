"""Model cards: the one builder of every README.md this toolkit writes, through huggingface_hub's `ModelCard`,
`ModelCardData` and `EvalResult`.

A card's metadata follows three rules:
- `license`: a card of a model built from nothing but this toolkit (the demo, tiny random models) carries the
  repository's own licence, `PROJECT_LICENSE`. A derived model (converted, assembled, trained) carries its base models'
  licence: the one given (`--license`), else the one in a local base model's own card, else the one in a cached Hub
  card, else the known licence of a well-known checkpoint (`KNOWN_LICENSES`), else "other", with a warning. Of
  several bases, the most restrictive licence wins (a permissive one lets its work be redistributed under another).
- `base_model` holds Hub ids only. A local folder stands for the `base_model` of its own card (or its config's
  `_name_or_path` when that is a Hub id); with neither, the folder appears in the card's text only.
- `model-index` comes from `EvalResult`s, so the evaluation's `model-index.yaml` is exactly what a card holds, and
  `merge_eval_results` puts newer results into an existing card; `update_card` does that to a local model folder's
  README.md (rewritten atomically) or to a Hub repository's card (`python -m eval ... --update_card DIR_OR_ID`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from huggingface_hub import (
    EvalResult,
    ModelCard,
    ModelCardData,
    constants,
    metadata_load,
    try_to_load_from_cache,
)
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from mblip.outputs import atomic_open
from mblip.prompts import ENGLISH_ANSWER_TEMPLATE, EVAL_CAPTION_TEMPLATE


logger = logging.getLogger(__name__)

# The repository's LICENSE file; the one place this toolkit states its own licence.
PROJECT_LICENSE = "mit"
# Licences of the checkpoints the mBLIP recipe starts from, for when their cards are not on this machine.
KNOWN_LICENSES = {
    "Salesforce/blip2-flan-t5-xl": "mit",
    "bigscience/mt0-xl": "bigscience-bloom-rail-1.0",
    "bigscience/bloomz-7b1": "bigscience-bloom-rail-1.0",
    "Gregor/mblip-*": "mit",
}
# Licences that let a work be redistributed under another licence's terms (keeping the notice).
PERMISSIVE_LICENSES = {"mit", "apache-2.0", "bsd", "bsd-2-clause", "bsd-3-clause", "isc", "unlicense", "cc0-1.0"}
UNKNOWN_LICENSE = "other"

LIBRARY_NAME = "transformers"
PIPELINE_TAG = "image-text-to-text"
TAGS = ["mblip", "multilingual", "vision-language", "image-captioning", "visual-question-answering"]
METADATA_ORDER = [
    "license",
    "license_name",
    "license_link",
    "language",
    "library_name",
    "pipeline_tag",
    "base_model",
    "datasets",
    "tags",
]  # model-index always comes last


# ---------------------------------------------------------------------------------------------------- base models
def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repository id ("org/name" or a legacy "name") and is no local path."""
    if not name or name.startswith((".", "~")) or Path(name).exists():
        return False
    try:
        validate_repo_id(name)  # at most one "/", allowed characters only
    except HFValidationError:
        return False
    return True


def card_metadata(source: str | os.PathLike) -> dict:
    """The YAML metadata of a base model's card: a local folder's README.md, or a Hub id's cached one ({} if none)."""
    path = Path(source)
    if path.is_dir():
        readme = path / "README.md"
    elif is_hub_id(str(source)):
        cached = try_to_load_from_cache(str(source), "README.md")
        readme = Path(cached) if isinstance(cached, str) else None
    else:
        readme = None
    if readme is None or not readme.is_file():
        return {}
    try:
        return metadata_load(readme) or {}
    except yaml.YAMLError as err:
        logger.warning("%s has unreadable card metadata, ignored: %s", readme, err)
        return {}


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def base_model_ids(source: str | os.PathLike) -> list[str]:
    """The Hub ids `source` stands for in `base_model`: itself if it is a Hub id; for a local folder, its own card's
    `base_model`, else its config's `_name_or_path` when that is a Hub id; else none."""
    if is_hub_id(str(source)):
        return [str(source)]
    path = Path(source)
    if not path.is_dir():
        return []
    recorded = [name for name in _as_list(card_metadata(path).get("base_model")) if is_hub_id(str(name))]
    if recorded:
        return recorded
    config = path / "config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path")
        except (json.JSONDecodeError, AttributeError):
            name = None
        if isinstance(name, str) and is_hub_id(name):
            return [name]
    return []


# ---------------------------------------------------------------------------------------------------- licences
def known_license(hub_id: str) -> str | None:
    for pattern, license in KNOWN_LICENSES.items():
        if fnmatch.fnmatchcase(hub_id.lower(), pattern.lower()):
            return license
    return None


def license_of(source: str | os.PathLike) -> str | None:
    """A base model's licence: its own card's (local folder, or cached Hub card), else a well-known id's; else None."""
    license = card_metadata(source).get("license")
    if license:
        return str(license)
    for hub_id in [str(source)] if is_hub_id(str(source)) else base_model_ids(source):
        license = known_license(hub_id)
        if license:
            return license
    return None


def resolve_license(sources: Sequence[str], license: str | None = None) -> tuple[str, dict[str, str | None]]:
    """The licence a card states and each source's licence (None where unknown). See the module docstring."""
    found = {str(source): license_of(source) for source in sources}
    if license:
        return license, found
    if not found:
        return PROJECT_LICENSE, found
    unknown = [source for source, value in found.items() if value is None]
    if unknown:
        logger.warning(
            "No licence found for %s (no card metadata, not a well-known id): the card says %r; pass --license",
            ", ".join(unknown),
            UNKNOWN_LICENSE,
        )
        return UNKNOWN_LICENSE, found
    distinct = sorted(set(found.values()))
    restrictive = [value for value in distinct if value not in PERMISSIVE_LICENSES]
    if len(distinct) == 1:
        return distinct[0], found
    if len(restrictive) == 1:
        return restrictive[0], found
    logger.warning(
        "The base models' licences differ (%s): the card says %r; pass --license",
        ", ".join(f"{source}: {value}" for source, value in found.items()),
        UNKNOWN_LICENSE,
    )
    return UNKNOWN_LICENSE, found


# ---------------------------------------------------------------------------------------------------- the builder
def usage(repo_id: str, remote_code: bool = True, chat_template: bool = True) -> str:
    """The card's Usage section: batched captioning in several languages, VQA with the paper's prompt, 8-bit and
    4-bit loading and (`chat_template`) chat messages through `pipeline("image-text-to-text")`."""
    trust = ", trust_remote_code=True" if remote_code else ""
    captions = EVAL_CAPTION_TEMPLATE.strip()  # the paper's captioning prompt (XM3600, xFlickrCO)
    lines = [
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        '# On a GPU add dtype=torch.bfloat16, device_map="auto"',
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}"{trust})',
        f'processor = AutoProcessor.from_pretrained("{repo_id}"{trust})',
        "",
        'image = Image.open("photo.jpg")  # any image file',
        "",
        "# Captions in several languages, in one batch (the paper's captioning prompt)",
        'languages = ["English", "German", "Swahili", "Chinese"]',
        f'prompts = [f"{captions}" for language in languages]',
        'inputs = processor(images=[image] * len(prompts), text=prompts, padding=True, return_tensors="pt")',
        "inputs = inputs.to(model.device)",
        "with torch.no_grad():",
        "    output = model.generate(**inputs, max_new_tokens=50, num_beams=5)",
        "for language, caption in zip(languages, processor.batch_decode(output, skip_special_tokens=True)):",
        '    print(f"{language}: {caption}")',
        "",
        "# Visual question answering with the paper's prompt (xGQA): questions in any language, short English answers",
        'questions = ["What colour is the car?", "Wie viele Menschen sind auf dem Bild?"]',
        f'prompts = [f"{ENGLISH_ANSWER_TEMPLATE}" for question in questions]',
        'inputs = processor(images=[image] * len(prompts), text=prompts, padding=True, return_tensors="pt")',
        "inputs = inputs.to(model.device)",
        "with torch.no_grad():",
        "    output = model.generate(**inputs, max_new_tokens=10, num_beams=5, length_penalty=-1.0)",
        "print(processor.batch_decode(output, skip_special_tokens=True))",
        "```",
        "",
        (
            "8-bit (the paper's evaluation setting) or 4-bit NF4 loading through bitsandbytes quantizes the language "
            "model only; the ViT, Q-Former and projection stay in `dtype`. bitsandbytes runs on CPU too:"
            if remote_code
            else "8-bit or 4-bit NF4 loading through bitsandbytes:"
        ),
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig",
        "",
        '# On a GPU add device_map="auto"',
        f'model_8bit = AutoModelForImageTextToText.from_pretrained("{repo_id}"{trust}, quantization_config=BitsAndBytesConfig(load_in_8bit=True))',
        'nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)',
        f'model_4bit = AutoModelForImageTextToText.from_pretrained("{repo_id}"{trust}, quantization_config=nf4)',
        f'processor = AutoProcessor.from_pretrained("{repo_id}"{trust})',
        "",
        'inputs = processor(images=Image.open("photo.jpg"), text="Caption in German:", return_tensors="pt")',
        "for model in (model_8bit, model_4bit):",
        "    output = model.generate(**inputs.to(model.device), max_new_tokens=50, num_beams=5)",
        '    print(f"{model.get_memory_footprint() / 2**30:.2f} GiB:", processor.batch_decode(output, skip_special_tokens=True))',
        "```",
    ]
    if chat_template:
        lines += [
            "",
            "Chat messages: the processor's chat template turns one user turn with an image (two for MaRVL-style pairs) "
            "and text into exactly the plain prompt the model was trained on; an image with no text asks for an English "
            "caption.",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            f'pipe = pipeline("image-text-to-text", model="{repo_id}"{trust})',
            "messages = [",
            "    {",
            '        "role": "user",',
            '        "content": [',
            '            {"type": "image", "url": "photo.jpg"},',
            '            {"type": "text", "text": "Question: What is in the image? Short answer in English:"},',
            "        ],",
            "    }",
            "]",
            'print(pipe(text=messages, max_new_tokens=10, return_full_text=False)[0]["generated_text"])',
            "```",
        ]
    return "\n".join(lines)


# The paper's multilingual benchmarks: the Evaluation section's commands when a card has no results yet.
PAPER_BENCHMARKS = ("xm3600", "xflickrco", "xgqa", "maxm", "xvnli", "marvl")
# Where each benchmark's annotations and images lie once unpacked under benchmarks/ (eval/README.md says where to get
# them); `python -m eval` finds the released layouts below these folders.
BENCHMARK_DIRS = {
    "xm3600": ("benchmarks/xm3600", "benchmarks/xm3600/images"),
    "xflickrco": ("benchmarks/iglue/datasets/xFlickrCO", "benchmarks/flickr30k-images,benchmarks/coco/val2014"),
    "xgqa": ("benchmarks/iglue/datasets/xGQA/annotations", "benchmarks/gqa/images"),
    "maxm": ("benchmarks/maxm_v1_release", "benchmarks/xm3600/images"),
    "xvnli": ("benchmarks/iglue/datasets/XVNLI", "benchmarks/flickr30k-images"),
    "marvl": ("benchmarks/marvl", "benchmarks/marvl/marvl-images"),
    "pope": ("benchmarks/POPE/output/coco", "benchmarks/coco/val2014"),
    "coco": ("benchmarks/karpathy", "benchmarks/coco"),
    "vqav2": ("benchmarks/vqav2", "benchmarks/coco/val2014"),
    "chair": ("benchmarks/chair", "benchmarks/coco"),
}
# An HTML comment before a code block that tests/test_snippets.py must not run, with the reason it gives.
SKIP_MARKER = "<!-- snippet: skip reason={} -->"
RESULTS_START, RESULTS_END = "<!-- results: start -->", "<!-- results: end -->"
# In the split of a result from train_mblip.py's validation by generation (mblip/validation.py), e.g. "test, first 200
# per language, validation during training: final (step 5000)": a sample scored while training, not the benchmark.
VALIDATION_MARK = "validation during training"


def is_validation_result(result: EvalResult) -> bool:
    return VALIDATION_MARK in (result.dataset_split or "")


def _evaluated_tasks(eval_results: Sequence[EvalResult] | None) -> list[str]:
    """The toolkit's task names of the benchmarks in `eval_results` (in its order), or the paper's benchmarks."""
    from mblip.evaluation.tasks import TASKS  # imported here: the evaluation's report imports this module

    by_dataset = {task.dataset_type: name for name, task in TASKS.items()}
    found = {by_dataset[r.dataset_type] for r in eval_results or () if r.dataset_type in by_dataset}
    return [name for name in TASKS if name in found] or list(PAPER_BENCHMARKS)


def results_table(eval_results: Sequence[EvalResult] | None) -> str:
    """The card's per-language results: one row per language, one column per benchmark, split and metric."""
    if not eval_results:
        return (
            "No results yet: run the commands above with `--update_card` and this repository's folder or Hub id, and "
            "their results go into this card (`mblip.cards.update_card`)."
        )
    columns, rows, cells = [], [], {}
    for r in eval_results:
        title = (r.dataset_name or r.dataset_type).split(" (")[0]
        split = f" {r.dataset_split}" if r.dataset_split and r.dataset_split != "test" else ""
        column = f"{title}{split} {r.metric_name or r.metric_type}"
        language = r.dataset_config or "-"
        columns += [column] if column not in columns else []
        rows += [language] if language not in rows else []
        cells[language, column] = r.metric_value
    lines = ["| language | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for language in rows:
        values = [cells.get((language, column)) for column in columns]
        shown = [
            "" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value) for value in values
        ]
        lines.append(f"| {language} | " + " | ".join(shown) + " |")
    if any(is_validation_result(r) for r in eval_results):
        lines += [
            "",
            f"Columns marked *{VALIDATION_MARK}* are train_mblip.py's validation by generation (see its section): "
            "a sample scored while training, not the full benchmark.",
        ]
    return "\n".join(lines)


def evaluation(
    repo_id: str,
    eval_results: Sequence[EvalResult] | None = None,
    remote_code: bool = True,
    source_repo_id: str | None = None,
) -> str:
    """The card's Evaluation section: the command of every benchmark score in the card (or of the paper's benchmarks),
    a quick check of the set-up, a snippet that scores the predictions with the metrics, and the results table.

    A plain BLIP-2 export (`remote_code` False) is evaluated as the mBLIP repository it was exported from
    (`source_repo_id`), or converted back first."""
    name = repo_id.rstrip("/").split("/")[-1]
    model = repo_id
    lines = []
    if not remote_code:
        model = source_repo_id if source_repo_id and is_hub_id(source_repo_id) else name
        lines += [
            "`python -m eval` evaluates mBLIP repositories: evaluate the mBLIP model this export was made from, or "
            "convert it back first:",
            "",
            "```bash",
            f"python convert_mblip.py --from_blip2 {repo_id} --output_dir {name}",
            "```",
            "",
        ]
    tasks = _evaluated_tasks(eval_results)
    commands = [
        f"python -m eval --model {model} --task {task} --data_dir {BENCHMARK_DIRS[task][0]} "
        f"--image_dir {BENCHMARK_DIRS[task][1]} --output_dir results/{name} --load_in_8bit"
        for task in tasks
    ]
    data_dir, image_dir = BENCHMARK_DIRS["xm3600"]
    benchmark = [r for r in eval_results or () if not is_validation_result(r)]
    intro = (
        "These commands reproduce every score of this card"
        if benchmark
        else "These commands score in full the benchmarks validated during training"
        if eval_results
        else "The paper's benchmarks"
    )
    lines += [
        intro + " with the mBLIP toolkit's evaluation (`pip install -e .` in its repository, then run from its root; "
        "eval/README.md says where to get each benchmark's files). The paper's prompts and decoding settings are the "
        "defaults, and the language model is loaded in 8 bit as in the paper:",
        "",
        SKIP_MARKER.format("full benchmark run: the released benchmark files and hours of GPU time"),
        "```bash",
        *commands,
        "```",
        "",
        "A quick check of the set-up first: two languages, 20 images each, minutes on a CPU:",
        "",
        "```bash",
        f"python -m eval --model {model} --task xm3600 --languages de,en --limit 20 --data_dir {data_dir} "
        f"--image_dir {image_dir} --output_dir results/{name}-check",
        "```",
        "",
        "Each run writes `predictions_<split>_<lang>.jsonl`, per-language results, `results.md` and this card's "
        "results metadata (YAML) under `--output_dir`. The metrics load as `evaluate` modules (or plain functions "
        "in `mblip.evaluation.metrics`) from any directory, e.g. to score the predictions again:",
        "",
        "```python",
        "import json",
        "",
        "import evaluate",
        "from mblip.evaluation.metrics import metric_path",
        "",
        f'with open("results/{name}-check/xm3600/predictions_test_de.jsonl", encoding="utf-8") as file:',
        "    rows = [json.loads(line) for line in file]",
        'predictions = [row["prediction"] for row in rows]',
        'references = [row["references"] for row in rows]',
        "cider = evaluate.load(metric_path(\"cider\"))  # pycocoevalcap's scale: x100 for the paper's numbers",
        'fidelity = evaluate.load(metric_path("language_fidelity"))  # share of captions in German',
        'print(cider.compute(predictions=predictions, references=references, lang="de"))',
        'print(fidelity.compute(predictions=predictions, lang="de"))',
        "```",
        "",
        "### Results",
        "",
        RESULTS_START,
        results_table(eval_results),
        RESULTS_END,
    ]
    return "\n".join(lines)


def model_card(
    title: str,
    description: str,
    base_models: Sequence[str] = (),
    *,
    license: str | None = None,
    languages: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    model_name: str | None = None,
    repo_id: str = "org/mblip-model",
    sections: dict[str, str] | None = None,
    remote_code: bool = True,
    chat_template: bool = True,
) -> ModelCard:
    """A model card: metadata (licence, languages, library, pipeline tag, Hub base models, datasets, tags,
    model-index) and a body with usage snippets, an Evaluation section (commands, a metrics snippet and the
    per-language results), the base models, `sections` and the licence. Every snippet names `repo_id`.

    `base_models` are what the model was made from, as given (Hub ids or local folders); `license` None derives the
    licence from them (`resolve_license`); `remote_code` False writes snippets for a plain transformers model;
    `chat_template` False leaves out the chat-pipeline snippet (for processors without a chat template).
    """
    base_models = [str(source) for source in base_models]
    license, licenses = resolve_license(base_models, license)
    hub_ids = list(dict.fromkeys(hub_id for source in base_models for hub_id in base_model_ids(source)))
    data = ModelCardData(
        license=license,
        language=list(languages) if languages else None,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        base_model=hub_ids or None,
        datasets=[name for name in datasets or () if is_hub_id(name)] or None,
        tags=list(TAGS),
        eval_results=list(eval_results) if eval_results else None,
        model_name=(model_name or title) if eval_results else None,
    )
    body = [f"# {title}", "", description.strip(), "", "## Usage", "", usage(repo_id, remote_code, chat_template)]
    body += ["", "## Evaluation", "", evaluation(repo_id, eval_results, remote_code)]
    if base_models:
        body += ["", "## Base models", ""] + [_describe_source(source) for source in base_models]
    for heading, text in (sections or {}).items():
        body += ["", f"## {heading}", "", text.strip()]
    body += ["", "## License", "", _describe_license(license, licenses)]
    return ModelCard(f"---\n{data.to_yaml(original_order=METADATA_ORDER)}\n---\n\n" + "\n".join(body) + "\n")


def _describe_source(source: str) -> str:
    if is_hub_id(source):
        return f"- [`{source}`](https://huggingface.co/{source})"
    ids = base_model_ids(source)
    based = f", based on {', '.join(f'`{hub_id}`' for hub_id in ids)}" if ids else " (no Hub id recorded)"
    return f"- the local folder `{source}`{based}"


def _describe_license(license: str, licenses: dict[str, str | None]) -> str:
    if not licenses:
        return f"`{license}`, the licence of the mBLIP toolkit that built this model."
    each = "; ".join(f"`{source}`: {f'`{value}`' if value else 'unknown'}" for source, value in licenses.items())
    return f"`{license}`. The base models' licences: {each}. Their terms apply to this model too."


# ---------------------------------------------------------------------------------------------------- eval results
def result_key(result: EvalResult) -> tuple:
    """What makes two results the same measurement: task, dataset, split, language (the dataset config), metric."""
    return (result.task_type, result.dataset_type, result.dataset_split, result.dataset_config, result.metric_type)


def merge_eval_results(card: ModelCard, results: Iterable[EvalResult], model_name: str | None = None) -> ModelCard:
    """Puts `results` into `card`'s model-index (in place; returns `card`): each replaces an older result of the same
    task, dataset, split, language and metric where that one stood; the other older results stay."""
    new = {}
    for result in results:
        new[result_key(result)] = result
    if not new:
        return card
    merged, placed = [], set()
    for old in card.data.eval_results or []:
        key = result_key(old)
        if key in new:
            if key not in placed:
                merged.append(new[key])
                placed.add(key)
        else:
            merged.append(old)
    merged += [result for key, result in new.items() if key not in placed]
    title = next((line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")), None)
    name = card.data.model_name or model_name or title
    if not name:
        raise ValueError("The card has neither a model-index name nor a title: pass model_name")
    card.data.model_name = name
    card.data.eval_results = merged
    if RESULTS_START in card.text and RESULTS_END in card.text:  # the Evaluation section's table follows
        before, rest = card.text.split(RESULTS_START, 1)
        after = rest.split(RESULTS_END, 1)[1]
        card.text = f"{before}{RESULTS_START}\n{results_table(merged)}\n{RESULTS_END}{after}"
    return card


def model_index_yaml(model_name: str, results: Sequence[EvalResult]) -> str:
    """The `model-index` block exactly as a card with these results holds it."""
    return ModelCardData(model_name=model_name, eval_results=list(results)).to_yaml() + "\n"


def load_model_index(path: str | os.PathLike) -> tuple[str, list[EvalResult]]:
    """A `model-index.yaml` (as `model_index_yaml` writes it) back as its model name and `EvalResult`s."""
    block = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not block.get("model-index"):
        raise ValueError(f"{path} holds no model-index")
    return model_index_to_eval_results(block["model-index"])


# ---------------------------------------------------------------------------------------------------- updating a card
class CardUpdateError(ValueError):
    """A card that `update_card` cannot read or write: a folder without README.md, a Hub repository out of reach."""


HUB_NEEDS = "updating a Hub repository's card needs network and a token with write access (`hf auth login` or HF_TOKEN)"


def _card_target(target: str | os.PathLike) -> tuple[str, Path | str]:
    """("folder", its README.md) or ("hub", the repository id); CardUpdateError for anything else."""
    path = Path(target)
    if path.is_dir():
        readme = path / "README.md"
        if not readme.is_file():
            raise CardUpdateError(
                f"{path} has no README.md to merge evaluation results into: write the model's card first "
                "(convert_mblip.py and train_mblip.py write one; mblip.cards.model_card builds one)"
            )
        return "folder", readme
    if path.exists():
        raise CardUpdateError(f"{path} is a file: pass the model folder that holds README.md, or a Hub id")
    if not is_hub_id(str(target)):
        raise CardUpdateError(f"{str(target)!r} is neither a local folder nor a Hub repository id (org/name)")
    return "hub", str(target)


def _hub_error(repo_id: str, doing: str, err: Exception | None = None) -> CardUpdateError:
    found = [f"{type(err).__name__}: {str(err).rstrip('.')}"] if err is not None else []
    if constants.HF_HUB_OFFLINE:
        found.append("huggingface_hub is in offline mode (HF_HUB_OFFLINE=1)")
    return CardUpdateError(
        f"Cannot {doing} the model card of the Hub repository {repo_id!r} (no local folder of that name either): "
        f"{'; '.join(found)}. Note: {HUB_NEEDS}."
    )


def _load_hub_card(repo_id: str, token: str | None) -> ModelCard:
    try:
        return ModelCard.load(repo_id, token=token)
    except Exception as err:  # the Hub's HTTP errors, connection errors, offline mode, no README.md
        raise _hub_error(repo_id, "load", err) from err


def check_card_target(target: str | os.PathLike, token: str | None = None) -> None:
    """Fails fast, before any work, when `update_card(target, ...)` could not succeed: a folder without a readable
    README.md; a Hub repository in offline mode, or whose card cannot be downloaded (this needs network)."""
    kind, where = _card_target(target)
    if kind == "folder":
        try:
            ModelCard.load(where)
        except (ValueError, yaml.YAMLError) as err:
            raise CardUpdateError(f"{where} is no readable model card: {err}") from err
        return
    if constants.HF_HUB_OFFLINE:
        raise _hub_error(where, "update")
    _load_hub_card(where, token)


def update_card(
    target: str | os.PathLike,
    results: Sequence[EvalResult],
    model_name: str | None = None,
    *,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Merges `results` into the card of a model repository (`merge_eval_results`: its model-index and its results
    table; a card without the table's markers gets a Results section at its end) and writes it back. `target` is a
    local folder, whose README.md is rewritten atomically, or a Hub id, whose card is downloaded and pushed with
    `ModelCard.load` / `push_to_hub` (network and a write token: `token`, else the stored login or HF_TOKEN).
    Returns the README.md path or the commit's URL."""
    kind, where = _card_target(target)
    if kind == "folder":
        try:
            card = ModelCard.load(where)
        except (ValueError, yaml.YAMLError) as err:
            raise CardUpdateError(f"{where} is no readable model card: {err}") from err
    else:
        card = _load_hub_card(where, token)
    results = list(results)
    if not results:
        logger.warning("No results to merge into the card of %s: left unchanged", target)
        return str(where)
    merge_eval_results(card, results, model_name)
    if RESULTS_START not in card.text or RESULTS_END not in card.text:
        table = results_table(card.data.eval_results)
        card.text = f"{card.text.rstrip()}\n\n## Results\n\n{RESULTS_START}\n{table}\n{RESULTS_END}\n"
    if kind == "folder":
        with atomic_open(where) as handle:
            handle.write(str(card))
        logger.info("Merged %d evaluation results into %s", len(results), where)
        return str(where)
    try:
        url = card.push_to_hub(where, token=token, commit_message=commit_message or "Update evaluation results")
    except Exception as err:  # as above, and a missing or read-only token
        raise _hub_error(where, "push", err) from err
    logger.info("Merged %d evaluation results into the card of %s: %s", len(results), where, url)
    return str(url)
