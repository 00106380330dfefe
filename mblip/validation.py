"""Validation by generation while training, as the official mBLIP runs did (XVNLI, XM3600 and xGQA during training).

At every evaluation (`--eval_strategy steps --eval_steps N`, and the final `trainer.evaluate()`), the model generates
answers for the named benchmarks with `python -m eval`'s readers, prompts and decoding (mblip/evaluation), and the
per-language scores join the Trainer's evaluation metrics:

    accelerate launch train_mblip.py ... --eval_strategy steps --eval_steps 1000 \
        --validation_tasks xm3600 xgqa xvnli \
        --validation_data_dirs bench/xm3600 bench/xgqa bench/xvnli \
        --validation_image_dirs bench/xm3600/images bench/gqa/images bench/flickr30k/images \
        --validation_languages de,en,zh en,de,zh all --validation_max_per_language 200 \
        --metric_for_best_model xm3600_avg_cider --load_best_model_at_end

Metric names: `eval_<task>_<language>_<metric>` for every language, and `eval_<task>_avg_<metric>` (the mean over the
languages validated), with the metrics of `python -m eval` on the paper's scale: `cider`, `bleu4` and `lang_fidelity`
for captioning, `acc` and `relaxed_acc` for the other tasks. They go to the Trainer's loggers (`log_history`,
TensorBoard, W&B, ...), are returned by `trainer.evaluate()`, and `--metric_for_best_model` can name any of them (the
Trainer adds the `eval_` prefix itself). Without a `--validation_file`, generation is the run's whole evaluation.

With several processes, the examples are split between them, the predictions gathered, and the main process scores
them and shares the scores, so every process returns the same metrics. Each evaluation writes its predictions and
scores under `<output_dir>/validation/step-<N>/`.

The model card written at the end of training holds the final evaluation's per-language scores and, with
`--metric_for_best_model`, those of the best evaluation, in its results table and `model-index` (`EvalResult`s like
`python -m eval`'s), each marked as validation during training in its split: "test, first 200 per language,
validation during training: final (step 5000)". A later `python -m eval` run merged into the card adds the full
benchmark's rows next to them.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from huggingface_hub import EvalResult
from transformers.trainer_utils import speed_metrics

from mblip.cards import VALIDATION_MARK
from mblip.evaluation.run import EvalArguments, generation_kwargs, read_units
from mblip.evaluation.tasks import get_task
from mblip.images import ImageDecodeError, open_image
from mblip.prompts import render


logger = logging.getLogger("train_mblip")

VALIDATION_DIR = "validation"


# ---------------------------------------------------------------------------------------------------- arguments
@dataclass
class ValidationArguments:
    """The `--validation_*` options (fields of train_mblip.py's DataArguments)."""

    validation_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Benchmarks to validate on by generation at each evaluation (as `python -m eval --task`): "
            "xm3600, xgqa, xvnli, maxm, marvl, xflickrco, ... Scores: eval_<task>_<lang>_<metric> and "
            "eval_<task>_avg_<metric>."
        },
    )
    validation_data_dirs: list[str] | None = field(
        default=None, metadata={"help": "Each task's released annotations (as `python -m eval --data_dir`), in order."}
    )
    validation_image_dirs: list[str] | None = field(
        default=None,
        metadata={"help": "Each task's image folder (as `python -m eval --image_dir`; commas join several)."},
    )
    validation_languages: list[str] | None = field(
        default=None,
        metadata={
            "help": "Each task's languages, comma-separated, or 'all' (the default); one value applies to every task."
        },
    )
    validation_splits: list[str] | None = field(
        default=None,
        metadata={
            "help": "Each task's split; one value applies to every task. Default: 'dev' where the benchmark has one "
            "(xGQA), else the paper's test split."
        },
    )
    validation_max_per_language: int | None = field(
        default=None, metadata={"help": "Validate on the first N examples of each language (default: all)."}
    )
    validation_num_beams: int | None = field(
        default=None, metadata={"help": "Beams for validation (default: the paper's decoding of each task, 5)."}
    )

    def check_validation_arguments(self):
        tasks = self.validation_tasks or []
        given = [
            name
            for name in ("validation_data_dirs", "validation_image_dirs", "validation_languages", "validation_splits")
            if getattr(self, name)
        ]
        if not tasks:
            if given:
                raise ValueError(f"--{given[0]} needs --validation_tasks")
            return
        for name in tasks:
            get_task(name)  # ValueError listing the supported tasks
        for name in ("validation_data_dirs", "validation_image_dirs"):
            values = getattr(self, name) or []
            if len(values) != len(tasks):
                raise ValueError(
                    f"--{name} needs one entry per --validation_tasks entry ({len(tasks)}: {tasks}), got {values}"
                )
        for name in ("validation_languages", "validation_splits"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, len(tasks)):
                raise ValueError(f"--{name} needs one entry, or one per task ({len(tasks)}: {tasks}), got {values}")
        for name in ("validation_max_per_language", "validation_num_beams"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")

    def eval_arguments(self, batch_size: int) -> list[EvalArguments]:
        """One `python -m eval` argument set per task (checked there: languages, splits, prompts)."""
        tasks = self.validation_tasks or []

        def per_task(values, i):
            return None if not values else values[0] if len(values) == 1 else values[i]

        out = []
        for i, name in enumerate(tasks):
            task = get_task(name)
            split = per_task(self.validation_splits, i) or ("dev" if "dev" in task.splits else None)
            if split is not None and "," in split:
                raise ValueError(f"--validation_splits takes one split per task, got {split!r} for {name}")
            out.append(
                EvalArguments(
                    task=name,
                    data_dir=self.validation_data_dirs[i],
                    image_dir=self.validation_image_dirs[i],
                    languages=per_task(self.validation_languages, i) or "all",
                    split=split,
                    batch_size=batch_size,
                    num_beams=self.validation_num_beams,
                    limit=self.validation_max_per_language,
                )
            )
        return out


# ---------------------------------------------------------------------------------------------------- validation
class GenerationValidation:
    """The benchmarks' examples (read once, before training) and the generate-gather-score step."""

    def __init__(self, args: ValidationArguments, processor, batch_size: int):
        self.processor = processor
        self.batch_size = batch_size
        self.max_per_language = args.validation_max_per_language
        self.units = []  # (task, unit, generation settings)
        for eval_args in args.eval_arguments(batch_size):
            task = get_task(eval_args.task)
            settings = generation_kwargs(task, eval_args)
            for unit in read_units(task, eval_args):  # fails fast on missing files or too many bad rows
                if not unit.examples:
                    raise ValueError(f"No {task.title} {unit.split}/{unit.lang} example to validate on")
                self.units.append((task, unit, settings))
        logger.info(
            "Validation by generation: %s",
            ", ".join(f"{t.name}/{u.split}/{u.lang} ({len(u.examples)})" for t, u, _ in self.units),
        )

    @classmethod
    def from_arguments(cls, args: ValidationArguments, processor, batch_size: int) -> "GenerationValidation | None":
        return cls(args, processor, batch_size) if args.validation_tasks else None

    def __len__(self) -> int:
        return sum(len(unit.examples) for _, unit, _ in self.units)

    @torch.no_grad()
    def generate(self, task, unit, examples: list, model, settings: dict) -> tuple[list[dict], int]:
        """Prediction records for `examples` (batched as `python -m eval` does: its prompts, image opening and
        decoding settings), and the number skipped for an unreadable image (never replaced)."""
        device = getattr(model, "device", None) or next(model.parameters()).device
        vision_dtype = next(model.vision_model.parameters()).dtype
        language_name = task.language_name(unit.lang)
        records, skipped = [], 0
        for start in range(0, len(examples), self.batch_size):
            batch, images = [], []
            for example in examples[start : start + self.batch_size]:
                try:
                    loaded = [open_image(path) for path in example.images]
                except ImageDecodeError as error:
                    logger.warning("Validation: skipping %s/%s %s: %s", task.name, unit.lang, example.id, error)
                    skipped += 1
                    continue
                batch.append(example)
                images.append(loaded if task.images_per_example > 1 else loaded[0])
            if not batch:
                continue
            prompts = [render(unit.template, example, language_name) for example in batch]
            inputs = {k: v.to(device) for k, v in self.processor(images=images, text=prompts).items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(vision_dtype)
            texts = self.processor.batch_decode(model.generate(**inputs, **settings), skip_special_tokens=True)
            records += [
                {"id": example.id, "prediction": text.strip(), "prompt": prompt, "references": example.references}
                for example, prompt, text in zip(batch, prompts, texts)
            ]
        return records, skipped

    def predict(self, model) -> tuple[list[tuple[int, dict]], int]:
        """This process's share of the predictions, as (unit index, prediction record), and its skipped examples."""
        work = [(u, e) for u, (_, unit, _) in enumerate(self.units) for e in range(len(unit.examples))]
        records, skipped = [], 0
        with PartialState().split_between_processes(work) as mine:
            for u, (task, unit, settings) in enumerate(self.units):
                examples = [unit.examples[e] for v, e in mine if v == u]
                if examples:
                    done, failed = self.generate(task, unit, examples, model, settings)
                    records += [(u, record) for record in done]
                    skipped += failed
        return records, skipped

    def score(self, records: list[tuple[int, dict]], folder: Path | None) -> dict[str, float]:
        """Per-language scores and per-task averages (main process); predictions written to `folder` if given."""
        by_unit: dict[int, dict[str, dict]] = {}
        for u, record in records:
            by_unit.setdefault(u, {})[str(record["id"])] = record
        scores, per_task = {}, {}
        for u, (task, unit, _) in enumerate(self.units):
            done = by_unit.get(u, {})
            scored = [e for e in unit.examples if e.id in done]
            if not scored:
                logger.warning("%s %s/%s: no prediction to score", task.title, unit.split, unit.lang)
                continue
            metrics = task.score([done[e.id]["prediction"] for e in scored], scored, unit.lang)
            for metric, value in metrics.items():
                scores[f"{task.name}_{unit.lang}_{metric}"] = float(value)
                per_task.setdefault((task.name, metric), []).append(float(value))
            if folder is not None:
                (folder / task.name).mkdir(parents=True, exist_ok=True)
                with open(folder / task.name / f"predictions_{unit.stem}.jsonl", "w", encoding="utf-8") as handle:
                    for example in scored:
                        handle.write(json.dumps(done[example.id], ensure_ascii=False) + "\n")
        for (task_name, metric), values in per_task.items():
            scores[f"{task_name}_avg_{metric}"] = sum(values) / len(values)
        return scores

    def eval_results(self, scores: dict[str, float], evaluation: str, prefix: str = "eval_") -> list[EvalResult]:
        """The model card's results (`EvalResult`s, as `python -m eval` writes them) of one evaluation's `scores`
        (`evaluate()`'s metrics, or a `log_history` entry), one per task, language and metric; the split says they
        come from validation during training, on how many examples, and which evaluation (`evaluation`)."""
        from mblip.evaluation.report import eval_result

        found = []
        for task, unit, _ in self.units:
            sample = f", first {self.max_per_language} per language" if self.max_per_language else ""
            split = f"{unit.split}{sample}, {VALIDATION_MARK}: {evaluation}"
            for metric in task.metrics:
                value = scores.get(f"{prefix}{task.name}_{unit.lang}_{metric}")
                if value is None or value != value:  # not scored, or NaN
                    continue
                found.append(eval_result(task, unit.lang, split, metric, value))
        return found

    def describe(self) -> str:
        """What was validated on, for the model card: tasks, splits, languages, examples and decoding."""
        tasks = {}
        for task, unit, settings in self.units:
            entry = tasks.setdefault(task.name, {"task": task, "split": unit.split, "langs": [], "n": 0})
            entry["langs"].append(unit.lang)
            entry["n"] += len(unit.examples)
            entry["settings"] = settings
        lines = []
        for entry in tasks.values():
            decoding = ", ".join(f"{k}={v}" for k, v in entry["settings"].items())
            lines.append(
                f"- {entry['task'].title} ({entry['task'].name}), split {entry['split']}, languages "
                f"{', '.join(entry['langs'])}: {entry['n']} examples"
                + (f" (the first {self.max_per_language} of each language)" if self.max_per_language else "")
                + f"; decoding {decoding}"
            )
        return "\n".join(lines)

    def run(self, model, output_dir: str | None, step: int) -> dict[str, float]:
        """Generates on every process, scores on the main one; every process returns the same scores."""
        was_training = model.training
        model.eval()
        try:
            records, skipped = self.predict(model)
        finally:
            model.train(was_training)
        state = PartialState()
        records = gather_object(records)  # every process's share, in process order
        skipped = sum(gather_object([skipped]))
        scores = None
        if state.is_main_process:
            folder = Path(output_dir) / VALIDATION_DIR / f"step-{step}" if output_dir else None
            scores = self.score(records, folder)
            if skipped:
                logger.warning("Validation: %d examples skipped (unreadable images); see the warnings above", skipped)
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        return broadcast_object_list([scores])[0]


# ---------------------------------------------------------------------------------------------------- trainer
class GenerationValidationMixin:
    """Trainer mixin: `evaluate()` adds the generation scores of `validation` to its metrics, before the Trainer logs
    them and calls the `on_evaluate` callbacks, so loggers, `metric_for_best_model` and early stopping all see them.

    Without an eval dataset of its own (no --validation_file), the validation stands in as the Trainer's evaluation
    data (the Trainer requires one for `eval_strategy` other than "no") and generation is the whole evaluation.
    """

    def __init__(self, *args, validation: GenerationValidation | None = None, **kwargs):
        self.validation = validation
        self._validation_scores = None
        if validation is not None and kwargs.get("eval_dataset") is None:
            kwargs["eval_dataset"] = validation
        super().__init__(*args, **kwargs)

    def _scores(self, metric_key_prefix: str) -> dict[str, float]:
        scores = self.validation.run(
            self.accelerator.unwrap_model(self.model),
            self.args.output_dir if self.args.should_save else None,
            self.state.global_step,
        )
        return {f"{metric_key_prefix}_{name}": value for name, value in scores.items()}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.validation is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        start = time.time()
        scores = self._scores(metric_key_prefix)
        if dataset is not self.validation:
            # Also a loss evaluation: evaluation_loop adds the scores to its metrics, logged together.
            self._validation_scores = scores
            try:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            finally:
                self._validation_scores = None
        metrics = {**scores, **speed_metrics(metric_key_prefix, start, num_samples=len(self.validation))}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        if self._validation_scores:
            output.metrics.update(self._validation_scores)
        return output


# ---------------------------------------------------------------------------------------------------- model card
def best_evaluation(state, args) -> dict | None:
    """The `log_history` entry of the best evaluation by `metric_for_best_model` (the first one logged at the
    Trainer's best step: the evaluation during training, not a later `evaluate()` at the same step); None without
    `metric_for_best_model` or an evaluation."""
    if not args.metric_for_best_model or state.best_metric is None:
        return None
    name = args.metric_for_best_model
    key = name if name.startswith("eval_") else f"eval_{name}"
    entries = [entry for entry in state.log_history if key in entry]
    if state.best_global_step is not None:
        entries = [entry for entry in entries if entry.get("step") == state.best_global_step]
    else:  # no checkpoints saved: the Trainer records the value only
        entries = [entry for entry in entries if entry[key] == state.best_metric]
    return entries[0] if entries else None


def card_validation(trainer, final: dict[str, float]) -> tuple[list, str] | None:
    """The validation scores for the model card written at the end of training: `EvalResult`s of the final
    evaluation (`final`, the metrics of `trainer.evaluate()` on the exported weights) and, with
    `--metric_for_best_model`, of the best evaluation, and the text of the card's "Validation during training"
    section. None without `--validation_tasks`."""
    validation = getattr(trainer, "validation", None)
    if validation is None:
        return None
    args, state = trainer.args, trainer.state
    step = state.global_step
    evaluations = [("final", f"final (step {step})", final, step)]
    best = best_evaluation(state, args)
    metric = args.metric_for_best_model
    if best is not None:
        evaluations.append(("best", f"best {metric} (step {best['step']})", best, best["step"]))
    results = [r for _, label, scores, _ in evaluations for r in validation.eval_results(scores, label)]
    if not results:
        return None
    loaded = " (the best checkpoint's weights: --load_best_model_at_end)" if args.load_best_model_at_end else ""
    lines = [
        "Scores of train_mblip.py's validation by generation (`--validation_tasks`), computed while training with "
        "`python -m eval`'s readers, prompts and metrics, on:",
        "",
        validation.describe(),
        "",
        f"- **final**: the exported weights{loaded}, evaluated after training, at step {step}.",
    ]
    if best is not None:
        better = "higher" if args.greater_is_better else "lower"
        lines.append(
            f"- **best**: the evaluation at step {best['step']}, the best by `{metric}` ({better} is better): "
            f"{state.best_metric:.4g}."
        )
    averages = sorted({k.removeprefix("eval_") for _, _, scores, _ in evaluations for k in scores if "_avg_" in k})
    if averages:
        lines += ["", "| evaluation | step | " + " | ".join(averages) + " |", "|---" * (len(averages) + 2) + "|"]
        for name, _, scores, at in evaluations:
            cells = [scores.get(f"eval_{k}") for k in averages]
            shown = ["" if v is None else f"{v:.2f}" for v in cells]
            lines.append(f"| {name} | {at} | " + " | ".join(shown) + " |")
    lines += [
        "",
        "The per-language scores are in the Results table and the `model-index`, their split marked "
        f'"{VALIDATION_MARK}". They score a sample while training, not the benchmark: the Evaluation section\'s '
        "commands score the full benchmark. Every evaluation's scores are in `trainer_state.json` (`log_history`).",
    ]
    return results, "\n".join(lines)
