"""Evaluate an mBLIP checkpoint (a folder or a Hub id) on the paper's benchmarks, per language.

    python -m eval --model Gregor/mblip-mt0-xl --task xm3600 --languages de,fr,zh \
        --data_dir benchmarks/xm3600 --image_dir benchmarks/xm3600/images --output_dir results/mblip-mt0-xl

or with the same keys in one JSON or YAML file, flags after it overriding it:
`python -m eval eval_xm3600.yaml --languages de`.

Tasks: xm3600, xflickrco, xgqa, maxm, xvnli, marvl, pope, coco, vqav2, chair (see eval/README.md for each benchmark's files). The
paper's prompts and decoding settings are the defaults; `--prompt`, `--num_beams`, `--max_new_tokens`, ... override.

Writes, under `<output_dir>/<task>/`: `predictions_<split>_<lang>.jsonl` (appended to `.jsonl.partial` as they are
produced and renamed when the language is done; a rerun skips the ids already there, drops a last line cut by a kill,
and refuses predictions whose `predictions_<split>_<lang>.settings.json` records another model, dtype, quantization,
prompt or decoding: see mblip/outputs.py), `results_<split>_<lang>.json`, `results.md` (languages x metrics with the average)
and `results.png`; and `<output_dir>/model-index.yaml` and `<output_dir>/results.md` over every task evaluated
there. `--update_card DIR_OR_ID` then merges the run's results into that model repository's card (mblip/cards.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mblip.bad_rows import MAX_BAD_ROWS_HELP, BadRows, check_threshold
from mblip.data.languages import LANGID_IDENTIFIER
from mblip.images import ImageDecodeError, open_image
from mblip.loading import DTYPE_HELP, DTYPES, describe_quantization, load_for_inference
from mblip.outputs import ResumableJsonl, atomic_write_json, model_identity, read_resumable_jsonl
from mblip.prompts import render

from .prompts import PROMPT_LANGUAGES, check_template, load_override, template_for
from .tasks import TASKS, Example, Problem, Task, get_task, image_dirs_from_arg, resolve_languages, resolve_splits


logger = logging.getLogger("eval")

# Skips that are part of a benchmark's protocol (the official evaluation drops these rows too) rather than data
# errors: reported, but not held against --max_bad_rows.
PROTOCOL_SKIPS = {"no_gold_label"}


# ================================================================================================ arguments
@dataclass
class ModelArguments:
    model: str = field(metadata={"help": "mBLIP model folder or Hub id, e.g. Gregor/mblip-mt0-xl."})
    dtype: str = field(
        default="auto",
        metadata={"help": f"One of {DTYPES}. {DTYPE_HELP}."},
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "Quantize the LLM to 8 bit with bitsandbytes (the paper's setting)."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the LLM to 4 bit (NF4) with bitsandbytes."})
    device: str | None = field(
        default=None, metadata={"help": "cuda, cuda:1, cpu, ...; default: cuda if available, else cpu."}
    )

    def __post_init__(self):
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("Choose one of --load_in_8bit and --load_in_4bit, not both.")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass
class EvalArguments:
    task: str = field(metadata={"help": f"Benchmark, one of: {', '.join(TASKS)}."})
    data_dir: str = field(metadata={"help": "The benchmark's released annotations: its folder (or the file itself)."})
    image_dir: str = field(
        metadata={"help": "Folder with the benchmark's images; several folders separated by commas."}
    )
    languages: str = field(default="all", metadata={"help": "Comma-separated language codes, or 'all'."})
    split: str | None = field(
        default=None,
        metadata={"help": "Comma-separated splits; default: the paper's (test; POPE: all three settings)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Examples per generate call."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Default: the paper's (captioning 50, else 10)."}
    )
    min_new_tokens: int | None = field(default=None, metadata={"help": "Default: the paper's (1)."})
    num_beams: int | None = field(default=None, metadata={"help": "Default: the paper's (5)."})
    length_penalty: float | None = field(
        default=None, metadata={"help": "Default: the paper's (captioning 1, else -1)."}
    )
    prompt: str | None = field(
        default=None,
        metadata={
            "help": "Prompt template overriding the paper's, e.g. 'Question: {question} Answer:'; or a JSON "
            "file {language: template}. Placeholders: the task's fields, {language}."
        },
    )
    prompt_language: str = field(
        default="en",
        metadata={"help": "en: the paper's English prompts; target: prompts translated into each language."},
    )
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N examples per language."})
    output_dir: str = field(default="eval_results", metadata={"help": "Where predictions, results and reports go."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Discard earlier predictions instead of resuming.",
            "aliases": ["--overwrite_output"],  # its name before 0.3, deprecated
        },
    )
    max_bad_rows: float = field(
        default=0.05,
        metadata={
            "help": f"{MAX_BAD_ROWS_HELP} Per language; bad rows: missing or unreadable images, malformed lines.",
            "aliases": ["--max_skipped_fraction"],  # its name before 0.3, deprecated
        },
    )
    seed: int = field(default=42, metadata={"help": "Random seed (generation is deterministic: no sampling)."})
    update_card: str | None = field(
        default=None,
        metadata={
            "help": "After the run, merge its results into this model repository's card (README.md): its "
            "model-index and its results table, through huggingface_hub's ModelCard. A local folder: its README.md "
            "is rewritten atomically. A Hub id: the card is downloaded and pushed, which needs network and a token "
            "with write access (`hf auth login` or HF_TOKEN). Results of the same task, split, language and metric "
            "replace older ones; the others stay. Checked before the model is loaded; not with --limit."
        },
    )

    def __post_init__(self):
        task = get_task(self.task)  # ValueError listing the supported tasks
        self.task = task.name
        self.language_list = resolve_languages(task, self.languages)  # ValueError listing the supported languages
        self.split_list = resolve_splits(task, self.split)
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}")
        for name in ("max_new_tokens", "num_beams", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        if self.min_new_tokens is not None and self.min_new_tokens < 0:
            raise ValueError(f"--min_new_tokens must be at least 0, got {self.min_new_tokens}")
        max_new = self.max_new_tokens or task.generation["max_new_tokens"]
        if (self.min_new_tokens or 0) > max_new:
            raise ValueError(f"--min_new_tokens ({self.min_new_tokens}) exceeds --max_new_tokens ({max_new})")
        if self.prompt_language not in PROMPT_LANGUAGES:
            raise ValueError(f"--prompt_language must be one of {PROMPT_LANGUAGES}, got {self.prompt_language!r}")
        if self.prompt is not None and self.prompt_language != "en":
            raise ValueError(
                "--prompt replaces the built-in prompts; it cannot be combined with --prompt_language target"
            )
        check_threshold(self.max_bad_rows)
        if self.update_card is not None and self.limit is not None:
            raise ValueError(
                f"--update_card {self.update_card} writes results into a model card, but --limit {self.limit} "
                "evaluates part of the benchmark only: drop one of them"
            )
        override = load_override(self.prompt)
        for lang in self.language_list:  # every template is checked before any work starts
            check_template(template_for(task, lang, override, self.prompt_language), task, list(task.fields))


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, EvalArguments]:
    """Flags, or one .json/.yaml file followed by flags that override it (mblip/arguments.py)."""
    from mblip.arguments import parse_args as parse_arguments

    return parse_arguments((ModelArguments, EvalArguments), argv)


# ================================================================================================ model
def load_model(args: ModelArguments):
    """The model (on its device, in eval mode), its processor and the device (mblip.loading.load_for_inference)."""
    model, processor = load_for_inference(args.model, args.dtype, args.load_in_8bit, args.load_in_4bit, args.device)
    return model, processor, model.device


def _quantization(args: ModelArguments) -> str:
    return describe_quantization(args.load_in_8bit, args.load_in_4bit)


# ================================================================================================ units of work
@dataclass
class Unit:
    """One (split, language) of a task: its examples, the rows skipped on reading, its prompt template."""

    split: str
    lang: str
    examples: list[Example]
    problems: list[Problem]
    n_rows: int
    annotation_file: str
    template: str

    @property
    def stem(self) -> str:
        return f"{self.split}_{self.lang}"


def read_units(task: Task, args: EvalArguments) -> list[Unit]:
    """Reads every requested split and language before the model is loaded, so that bad input fails fast."""
    override = load_override(args.prompt)
    image_dirs = image_dirs_from_arg(args.image_dir)
    for folder in image_dirs:
        if not folder.is_dir():
            raise FileNotFoundError(f"--image_dir {folder} is not a folder")
    units = []
    for split in args.split_list:
        for lang in args.language_list:
            data = task.read(args.data_dir, image_dirs, lang, split)
            problems = list(data.problems)
            examples, seen = [], set()
            for example in data.examples:
                if example.id in seen:
                    problems.append(
                        Problem("duplicate_id", example.id, "id already used by an earlier row; row skipped")
                    )
                    continue
                seen.add(example.id)
                examples.append(example)
            if args.limit is not None:
                examples = examples[: args.limit]
            template = template_for(task, lang, override, args.prompt_language)
            units.append(Unit(split, lang, examples, problems, data.n_rows, data.annotation_file, template))
            _log_problems(task, split, lang, problems, data.n_rows)
    for unit in units:
        bad_rows(unit.problems, unit.n_rows).check(
            args.max_bad_rows, hint=f"{task.title} {unit.split}/{unit.lang}: check --data_dir / --image_dir"
        )
    return units


def bad_rows(problems: list[Problem], n_rows: int) -> BadRows:
    """The problems held against --max_bad_rows (protocol skips are reported, not counted) as a BadRows report."""
    bad = BadRows(total=n_rows, noun="rows", state="skipped")
    for problem in problems:
        if problem.kind not in PROTOCOL_SKIPS:
            bad.add(problem.kind, problem.where, problem.detail)
    return bad


def _summary(problems: list[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    return counts


def _log_problems(task: Task, split: str, lang: str, problems: list[Problem], n_rows: int):
    if not problems:
        return
    shown = "; ".join(f"{p.kind} at {p.where}: {p.detail}" for p in problems[:3])
    logger.warning(
        "%s %s/%s: skipped %d of %d rows %s, e.g. %s",
        task.title,
        split,
        lang,
        len(problems),
        n_rows,
        _summary(problems),
        shown,
    )


# ================================================================================================ predictions
def _check_record(record: dict):
    str(record["id"]), record["prediction"]


def open_predictions(path: Path, settings: dict, overwrite: bool) -> ResumableJsonl:
    """The predictions file of a unit, with what an earlier run of the same settings left in it (mblip.outputs)."""
    return ResumableJsonl(path, settings, overwrite=overwrite, reopen=True, check=_check_record)


def read_predictions(path: Path) -> dict[str, dict]:
    """Finished predictions by id."""
    return {str(row["id"]): row for row in read_resumable_jsonl(path, _check_record)[0]} if path.exists() else {}


def generation_kwargs(task: Task, args: EvalArguments) -> dict:
    settings = dict(task.generation)
    for name in ("num_beams", "max_new_tokens", "min_new_tokens", "length_penalty"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if settings["num_beams"] == 1:
        settings.pop("length_penalty", None)  # only beam search uses it
    settings["do_sample"] = False
    return settings


@torch.no_grad()
def generate_unit(
    task, unit: Unit, model, processor, device, gen_kwargs: dict, predictions: ResumableJsonl, batch_size: int
) -> list[Problem]:
    """Generates the predictions missing from `predictions`, appending each batch as soon as it is decoded."""
    path = predictions.output
    done = {str(row["id"]) for row in predictions.rows}
    todo = [e for e in unit.examples if e.id not in done]
    label = f"{task.name}/{unit.split}/{unit.lang}"
    if not todo:
        logger.info("%s: all %d predictions already in %s; nothing to generate", label, len(unit.examples), path)
        return []
    logger.info(
        "%s: %d of %d predictions already done, generating %d",
        label,
        len(unit.examples) - len(todo),
        len(unit.examples),
        len(todo),
    )
    language_name = task.language_name(unit.lang)
    vision_dtype = next(model.vision_model.parameters()).dtype
    problems = []
    with tqdm(total=len(todo), desc=label, unit="ex") as progress:
        for start in range(0, len(todo), batch_size):
            batch, images = [], []
            for example in todo[start : start + batch_size]:
                try:
                    loaded = [open_image(path) for path in example.images]
                except ImageDecodeError as error:
                    problems.append(Problem("unreadable_image", example.id, str(error)))
                    continue
                batch.append(example)
                images.append(loaded if task.images_per_example > 1 else loaded[0])
            if batch:
                prompts = [render(unit.template, example, language_name) for example in batch]
                inputs = processor(images=images, text=prompts)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                inputs["pixel_values"] = inputs["pixel_values"].to(vision_dtype)
                output = model.generate(**inputs, **gen_kwargs)
                texts = processor.batch_decode(output, skip_special_tokens=True)
                predictions.write(
                    [
                        {
                            "id": example.id,
                            "prediction": text.strip(),
                            "prompt": prompt,
                            "references": example.references,
                            "images": [str(p) for p in example.images],
                        }
                        for example, prompt, text in zip(batch, prompts, texts)
                    ]
                )
            progress.update(len(todo[start : start + batch_size]))
    if problems:
        _log_problems(task, unit.split, unit.lang, problems, len(todo))
    return problems


# ================================================================================================ main
def evaluate_unit(task, unit, model_args, args, model, processor, device, task_dir: Path) -> dict:
    gen_kwargs = generation_kwargs(task, args)
    path = task_dir / f"predictions_{unit.stem}.jsonl"
    settings = {
        "model": model_args.model,
        "model_identity": model_identity(model_args.model),
        "dtype": model_args.dtype,
        "quantization": _quantization(model_args),
        "prompt_template": unit.template,
        "generation": gen_kwargs,
    }
    output = open_predictions(path, settings, args.overwrite)
    try:
        late_problems = generate_unit(task, unit, model, processor, device, gen_kwargs, output, args.batch_size)
    finally:
        output.close()  # a failure keeps the .partial file, so that a rerun resumes there
    output.finish()
    done = read_predictions(path)
    scored = [e for e in unit.examples if e.id in done]
    predictions = [done[e.id]["prediction"] for e in scored]
    metrics = task.score(predictions, scored, unit.lang) if scored else {}
    problems = unit.problems + late_problems
    bad = bad_rows(problems, unit.n_rows)
    n_skipped = bad.count
    example_prompt = render(unit.template, unit.examples[0], task.language_name(unit.lang)) if unit.examples else None
    result = {
        "task": task.name,
        "benchmark": task.title,
        "split": unit.split,
        "language": unit.lang,
        "model": model_args.model,
        "quantization": _quantization(model_args),
        "dtype": str(next(model.vision_model.parameters()).dtype).replace("torch.", ""),
        "prompt_template": unit.template,
        "prompt_example": example_prompt,
        "generation": gen_kwargs,
        "metrics": metrics,
        # Language fidelity depends on the identifier: results of different identifiers are not comparable.
        "language_identifier": LANGID_IDENTIFIER if "lang_fidelity" in metrics else None,
        "primary_metric": task.primary_metric,
        "metric_scale": "percent (CIDEr and BLEU x100, as in the paper)",
        "n_rows": unit.n_rows,
        "n_scored": len(scored),
        "limit": args.limit,
        "n_skipped": n_skipped,
        "bad_rows": bad.to_dict(),
        "max_bad_rows": args.max_bad_rows,
        "skipped": _summary(problems),
        "skipped_examples": [p.as_dict() for p in problems[:10]],
        "complete": n_skipped == 0 and args.limit is None and len(scored) == len(unit.examples),
        "annotation_file": unit.annotation_file,
        "predictions_file": str(path),
    }
    atomic_write_json(task_dir / f"results_{unit.stem}.json", result)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
    logger.info(
        "%s %s/%s: %s (%d scored, %d skipped)", task.title, unit.split, unit.lang, shown, len(scored), n_skipped
    )
    if late_problems:
        bad.check(args.max_bad_rows, hint=f"{task.title} {unit.split}/{unit.lang}; see {task_dir}")
    return result


def main(argv: list[str] | None = None) -> dict:
    """Runs one task over the requested languages; returns {"<split>/<lang>": results} and prints the table."""
    model_args, args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.setLevel(logging.INFO)
    from transformers import set_seed

    from mblip.cards import check_card_target, update_card

    from .report import eval_results, model_name, write_reports

    set_seed(args.seed)
    task = get_task(args.task)
    if args.update_card is not None:
        check_card_target(args.update_card)  # a card that cannot be updated fails now, not after the run
    logger.info("%s: languages %s, splits %s", task.title, ",".join(args.language_list), ",".join(args.split_list))
    units = read_units(task, args)
    task_dir = Path(args.output_dir) / task.name
    task_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(task_dir / "arguments.json", {"model": asdict(model_args), "eval": asdict(args)})

    model, processor, device = load_model(model_args)
    results = {}
    for unit in units:
        results[f"{unit.split}/{unit.lang}"] = evaluate_unit(
            task, unit, model_args, args, model, processor, device, task_dir
        )
    table = write_reports(Path(args.output_dir), task, model_args.model)
    print(table)

    # ============================================================================================ the model card
    if args.update_card is not None:
        incomplete = [key for key, result in results.items() if not result["complete"]]
        if incomplete:
            logger.warning(
                "%s: %s skipped rows (see the results files); their scores go into the card all the same",
                task.title,
                ", ".join(incomplete),
            )
        where = update_card(
            args.update_card,
            eval_results({task.name: list(results.values())}),
            model_name(model_args.model),
            commit_message=f"Evaluation results: {task.title} ({', '.join(results)})",
        )
        logger.info("Model card updated: %s", where)
    return results
