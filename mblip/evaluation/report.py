"""Human-readable and machine-readable reports from the results files of an output folder.

Every report is rebuilt from the `results_*.json` files on disk, so languages evaluated in separate runs add up.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from huggingface_hub import EvalResult

from mblip.cards import model_index_yaml

from .tasks import TASKS, Task, get_task


logger = logging.getLogger(__name__)

METRIC_NAMES = {
    "cider": "CIDEr",
    "bleu4": "BLEU-4",
    "lang_fidelity": "Lang. fidelity",
    "acc": "Acc.",
    "relaxed_acc": "Relaxed acc.",
    "pope_accuracy": "POPE acc.",
    "pope_f1": "F1",
    "pope_precision": "Precision",
    "pope_recall": "Recall",
    "pope_yes_ratio": "Yes ratio",
    "vqa_acc": "VQA acc.",
    "chair_s": "CHAIR-s",
    "chair_i": "CHAIR-i",
}


def load_results(task: Task, task_dir: Path, model: str | None = None) -> list[dict]:
    """The task's results files, in the task's order of splits and languages; with `model`, only that model's."""
    results = []
    for path in sorted(task_dir.glob("results_*.json")):
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        if model is not None and result.get("model") != model:
            logger.warning("%s holds results of %s, not %s: left out of the reports", path, result.get("model"), model)
            continue
        results.append(result)

    def order(result):
        split, lang = result["split"], result["language"]
        return (
            task.splits.index(split) if split in task.splits else len(task.splits),
            split,
            task.languages.index(lang) if lang in task.languages else len(task.languages),
            lang,
        )

    return sorted(results, key=order)


def _labels(results: list[dict]) -> list[str]:
    splits = {r["split"] for r in results}
    languages = {r["language"] for r in results}
    if len(splits) > 1 and len(languages) == 1:
        return [r["split"] for r in results]
    if len(splits) > 1:
        return [f"{r['language']} ({r['split']})" for r in results]
    return [r["language"] for r in results]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def averages(task: Task, results: list[dict]) -> list[tuple[str, dict]]:
    """("avg", metrics) over all rows and, when English is among several languages, ("avg w/o en", ...)."""
    rows = [("avg", {m: _mean([r["metrics"].get(m) for r in results]) for m in task.metrics})]
    languages = {r["language"] for r in results}
    if "en" in languages and len(languages) > 1:
        others = [r for r in results if r["language"] != "en"]
        rows.append(("avg w/o en", {m: _mean([r["metrics"].get(m) for r in others]) for m in task.metrics}))
    return rows


def markdown_table(task: Task, results: list[dict]) -> str:
    if not results:
        return f"## {task.title}\n\nNo results yet.\n"
    columns = [m for m in task.metrics if any(m in r["metrics"] for r in results)]
    header = "| language | " + " | ".join(METRIC_NAMES.get(m, m) for m in columns) + " | n |"
    lines = [f"## {task.title}", "", header, "|" + "---|" * (len(columns) + 2)]

    def cell(value):
        return "–" if value is None else f"{value:.1f}"

    notes = []
    for label, result in zip(_labels(results), results):
        marker = ""
        if not result.get("complete", True):
            marker = " *"
            skipped = ", ".join(f"{k}: {v}" for k, v in result.get("skipped", {}).items()) or "none"
            limit = f", --limit {result['limit']}" if result.get("limit") else ""
            notes.append(f"{label}: {result['n_scored']} of {result['n_rows']} rows scored (skipped {skipped}{limit})")
        values = " | ".join(cell(result["metrics"].get(m)) for m in columns)
        lines.append(f"| {label}{marker} | {values} | {result['n_scored']} |")
    for label, metrics in averages(task, results):
        lines.append(f"| **{label}** | " + " | ".join(cell(metrics.get(m)) for m in columns) + " | |")
    if notes:
        lines += ["", "\\* not the complete benchmark: " + "; ".join(notes)]
    prompt = results[0].get("prompt_template")
    generation = results[0].get("generation", {})
    settings = ", ".join(f"{k}={v}" for k, v in generation.items())
    model = f"`{results[0].get('model')}` ({results[0].get('quantization')})"
    lines += ["", f"Model: {model}. Prompt: `{prompt!r}`. Decoding: {settings}."]
    identifiers = sorted({r["language_identifier"] for r in results if r.get("language_identifier")})
    if "lang_fidelity" in columns:
        named = ", ".join(f"`{name}`" for name in identifiers) or "an identifier not recorded (older results)"
        lines += ["", f"Language fidelity: identified by {named}."]
    return "\n".join(lines) + "\n"


def write_chart(task: Task, results: list[dict], path: Path) -> None:
    """A bar chart of the primary metric per language (or setting), values on the bars, the average dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = task.primary_metric
    name = METRIC_NAMES.get(metric, metric)
    labels = _labels(results)
    values = [r["metrics"].get(metric) or 0.0 for r in results]
    figure, axis = plt.subplots(figsize=(max(4.0, 0.45 * len(labels) + 2), 3.6))
    bars = axis.bar(labels, values, color="#4c72b0")
    axis.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=2)
    average = _mean([r["metrics"].get(metric) for r in results])
    if average is not None:
        axis.axhline(average, color="#c44e52", linestyle="--", linewidth=1, label=f"avg {average:.1f}")
        axis.legend(loc="upper right", fontsize=8)
    # Accuracies are percentages; CIDEr has no upper bound.
    top = 100.0 if task.kind != "captioning" else max([*values, 1.0]) * 1.2
    axis.set_ylim(0, top * (1.12 if task.kind != "captioning" else 1.0))
    axis.set_ylabel(name)
    per = "setting" if labels == [r["split"] for r in results] and len(labels) > 1 else "language"
    model = results[0].get("model", "") if results else ""
    axis.set_title(f"{task.title}: {name} per {per} ({model_name(model)})", fontsize=9)
    axis.tick_params(axis="x", labelrotation=90 if len(labels) > 12 else 0, labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def model_name(model: str) -> str:
    """The name for the model card: the Hub id, or a local folder's name."""
    path = Path(model)
    return path.name if path.exists() else model


def eval_results(results_by_task: dict[str, list[dict]]) -> list[EvalResult]:
    """The model card's evaluation results (its `model-index`): one per task, split, language and metric."""
    found = []
    for task_name, results in results_by_task.items():
        task = get_task(task_name)
        for result in results:
            for metric in task.metrics:
                value = result["metrics"].get(metric)
                if value is None or math.isnan(value):
                    continue
                found.append(eval_result(task, result["language"], result["split"], metric, value))
    return found


def eval_result(task: Task, language: str, split: str, metric: str, value: float) -> EvalResult:
    """One score as a card's `EvalResult` (`python -m eval` and validation during training build them alike)."""
    return EvalResult(
        task_type=task.hf_task_type,
        task_name=task.hf_task_name,
        dataset_type=task.dataset_type,
        dataset_name=f"{task.title} ({language}, {split})",
        dataset_config=language,
        dataset_split=split,
        metric_type=metric,
        metric_value=round(float(value), 2),
        metric_name=METRIC_NAMES.get(metric, metric),
    )


def write_reports(output_dir: Path, task: Task, model: str) -> str:
    """The task's results.md and results.png, and the output folder's results.md and model-index.yaml (the
    `model-index` block exactly as a model card holds it: mblip/cards.py merges it into one)."""
    task_dir = output_dir / task.name
    results = load_results(task, task_dir, model)
    table = markdown_table(task, results)
    (task_dir / "results.md").write_text(table, encoding="utf-8")
    if results:
        write_chart(task, results, task_dir / "results.png")

    results_by_task = {}
    for name in TASKS:  # every task evaluated in this output folder, in a fixed order
        if (output_dir / name).is_dir():
            found = load_results(get_task(name), output_dir / name, model)
            if found:
                results_by_task[name] = found
    tables = [markdown_table(get_task(name), found) for name, found in results_by_task.items()]
    (output_dir / "results.md").write_text("\n".join(tables), encoding="utf-8")
    block = model_index_yaml(model_name(model), eval_results(results_by_task))
    (output_dir / "model-index.yaml").write_text(block, encoding="utf-8")
    return table
