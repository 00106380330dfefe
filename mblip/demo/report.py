"""The demo's report: per-language scores from eval/'s results files, sample outputs, loss curves and charts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .world import LANGUAGES, SCRIPTS


SAMPLES_PER_TASK = 1
VARIANTS = {"mblip": "mBLIP (multilingual mix)", "pivot": "English-only pivot"}


# ================================================================================================ reading
def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_scores(eval_dir: Path) -> dict[str, dict[str, float]]:
    """{lang: {cider, bleu4, lang_fidelity, vqa_acc}} from eval/'s results_test_<lang>.json files."""
    scores = {lang: {} for lang in LANGUAGES}
    for lang in LANGUAGES:
        caption = eval_dir / "xm3600" / f"results_test_{lang}.json"
        if caption.is_file():
            scores[lang].update(read_json(caption)["metrics"])
        vqa = eval_dir / "xgqa" / f"results_test_{lang}.json"
        if vqa.is_file():
            scores[lang]["vqa_acc"] = read_json(vqa)["metrics"]["acc"]
    return scores


def read_samples(eval_dir: Path, n: int = SAMPLES_PER_TASK) -> dict[str, list[dict]]:
    """The first n predictions per language and task: prompt, prediction, references."""
    samples = {}
    for lang in LANGUAGES:
        samples[lang] = []
        for task in ("xm3600", "xgqa"):
            path = eval_dir / task / f"predictions_test_{lang}.jsonl"
            if not path.is_file():
                continue
            with open(path, encoding="utf-8") as handle:
                for line, _ in zip(handle, range(n)):
                    record = json.loads(line)
                    samples[lang].append(
                        {
                            "task": task,
                            "image": Path(record["images"][0]).name,
                            "prompt": record["prompt"],
                            "prediction": record["prediction"],
                            "references": record["references"],
                        }
                    )
    return samples


def prior_accuracy(train_rows: list[dict], test_file: Path) -> float:
    """Accuracy (%) of answering each test question with the commonest training answer of its kind: what a model
    that reads the question but not the image can reach."""
    by_kind: dict[str, Counter] = {}
    for row in train_rows:
        if row["task"].startswith("vqa-"):
            by_kind.setdefault(row["task"][4:], Counter())[row["label"]] += 1
    questions = read_json(test_file)
    hits = [q["answer"] == by_kind[q["kind"]].most_common(1)[0][0] for q in questions.values() if q["kind"] in by_kind]
    return 100 * sum(hits) / max(1, len(hits))


def reference_fidelity(captions_file: Path) -> dict[str, float]:
    """Language fidelity (%) of the reference captions themselves: language identification's ceiling on such short
    synthetic sentences."""
    from mblip.evaluation.metrics import language_fidelity

    references = {lang: [] for lang in LANGUAGES}
    with open(captions_file, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            for lang in LANGUAGES:
                references[lang] += row[lang]["caption"]
    return {lang: 100 * language_fidelity(texts, lang) for lang, texts in references.items()}


def loss_curves(paths, pivot: bool) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    english = paths.logs / "english_blip2.json"
    if english.is_file():
        history = read_json(english)["log_history"]
        curves["1a. English BLIP-2: ViT + Q-Former"] = [(e["step"], e["loss"]) for e in history["representation"]]
        curves["1b. English BLIP-2: + English LM"] = [(e["step"], e["loss"]) for e in history["generative"]]
    text = paths.logs / "multilingual_lm.json"
    if text.is_file():
        curves["2. multilingual LM (text only)"] = [(e["step"], e["loss"]) for e in read_json(text)["log_history"]]
    for variant, label in ((False, "3. mBLIP re-alignment (8-bit LLM + LoRA)"), (True, "3'. English-only pivot")):
        state = paths.model(variant) / "trainer_state.json"
        if (variant and not pivot) or not state.is_file():
            continue
        curves[label] = [(e["step"], e["loss"]) for e in read_json(state)["log_history"] if "loss" in e]
    return curves


def build_report(paths, rows: dict, pivot: bool) -> dict:
    variants = {"mblip": False, **({"pivot": True} if pivot else {})}
    report = {
        "languages": list(LANGUAGES),
        "scripts": {lang: SCRIPTS[lang] for lang in LANGUAGES},
        "scores": {name: read_scores(paths.eval(variant)) for name, variant in variants.items()},
        "samples": {name: read_samples(paths.eval(variant)) for name, variant in variants.items()},
        "baselines": {
            "vqa_prior_acc": prior_accuracy(rows["mix"], paths.xgqa / "few_shot" / "en" / "test.json"),
            "reference_lang_fidelity": reference_fidelity(paths.xm3600 / "captions.jsonl"),
        },
        "losses": loss_curves(paths, pivot),
        "files": {
            "model": str(paths.model()),
            **({"pivot_model": str(paths.model(True))} if pivot else {}),
            "english_blip2": str(paths.blip2),
            "multilingual_lm": str(paths.llm),
            "eval": str(paths.eval().parent),
            "loss_chart": str(paths.root / "loss.png"),
            "score_chart": str(paths.root / "scores.png"),
        },
    }
    return report


# ================================================================================================ text
def _cell(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _average(scores: dict, metric: str, languages) -> float | None:
    values = [scores[lang].get(metric) for lang in languages if scores[lang].get(metric) is not None]
    return sum(values) / len(values) if values else None


def score_table(report: dict) -> str:
    names = list(report["scores"])
    metrics = [("cider", "CIDEr"), ("lang_fidelity", "lang. fid."), ("vqa_acc", "VQA acc.")]
    header = ["lang", "script"] + [
        f"{label}" + ("" if name == "mblip" else " (pivot)") for name in names for _, label in metrics
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang in report["languages"]:
        cells = [lang, report["scripts"][lang]]
        cells += [_cell(report["scores"][name][lang].get(metric)) for name in names for metric, _ in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    for label, languages in (("avg", report["languages"]), ("avg w/o en", report["languages"][1:])):
        cells = [f"**{label}**", ""]
        cells += [_cell(_average(report["scores"][name], metric, languages)) for name in names for metric, _ in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    baselines = report["baselines"]
    lines = [
        "",
        "mBLIP demo: an English BLIP-2 re-aligned to a multilingual LLM (8-bit, LoRA) on synthetic scenes",
        "",
        f"Held-out scenes, {len(report['languages'])} languages in {len(set(report['scripts'].values()))} scripts. "
        "Captions: XM3600 format, CIDEr (x100) and language fidelity (%); questions in each language with English "
        "answers: xGQA format, accuracy (%).",
        "",
        score_table(report),
        "",
        f"Reference points: answering from the question alone (commonest answer per question kind) scores "
        f"{baselines['vqa_prior_acc']:.1f}% VQA accuracy; language identification recognises "
        f"{_average({l: {'f': v} for l, v in baselines['reference_lang_fidelity'].items()}, 'f', report['languages']):.1f}%"
        " of the reference captions themselves.",
    ]
    for name, samples in report["samples"].items():
        lines += ["", f"Sample outputs, {VARIANTS[name]}:"]
        for lang in report["languages"]:
            for sample in samples.get(lang, []):
                lines.append(f"  [{lang}] {sample['image']}  {sample['prompt']!r}")
                lines.append(f"       -> {sample['prediction']!r}   (reference: {sample['references'][0]!r})")
    files = report["files"]
    lines += ["", "Files:"] + [f"  {key}: {value}" for key, value in files.items()]
    timings = report.get("timings", {})
    if timings:
        lines += ["", "Seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    return "\n".join(lines) + "\n"


# ================================================================================================ charts
def write_charts(paths, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_loss_chart(plt, report["losses"], paths.root / "loss.png")
    write_score_chart(plt, report, paths.root / "scores.png")


def write_loss_chart(plt, curves: dict, path: Path) -> None:
    """One panel per training stage: their steps and losses are not on a common scale."""
    figure, axes = plt.subplots(1, max(1, len(curves)), figsize=(3.6 * max(1, len(curves)), 3.2), squeeze=False)
    for axis, (label, points) in zip(axes[0], curves.items()):
        steps, losses = zip(*points) if points else ((), ())
        axis.plot(steps, losses, color="#4c72b0", linewidth=1.2)
        axis.set_yscale("log")
        axis.set_title(label, fontsize=8)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss (log scale)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_score_chart(plt, report: dict, path: Path) -> None:
    """Per-language bars for each metric, one bar per model; the VQA panel marks the question-only baseline."""
    import numpy as np

    languages = report["languages"]
    names = list(report["scores"])
    panels = [
        ("cider", "XM3600-style captioning: CIDEr"),
        ("lang_fidelity", "caption language fidelity (%)"),
        ("vqa_acc", "xGQA-style VQA: accuracy (%)"),
    ]
    colours = {"mblip": "#4c72b0", "pivot": "#dd8452"}
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    x = np.arange(len(languages))
    width = 0.8 / len(names)
    for axis, (metric, title) in zip(axes, panels):
        for i, name in enumerate(names):
            values = [report["scores"][name][lang].get(metric) or 0.0 for lang in languages]
            axis.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=VARIANTS[name], color=colours[name])
        if metric == "vqa_acc":
            prior = report["baselines"]["vqa_prior_acc"]
            axis.axhline(prior, color="#c44e52", linestyle="--", linewidth=1, label=f"question only {prior:.0f}%")
        if metric != "cider":
            axis.set_ylim(0, 105)
        axis.set_xticks(x, [f"{lang}\n{report['scripts'][lang]}" for lang in languages], fontsize=6.5)
        axis.set_title(title, fontsize=9)
        axis.tick_params(axis="y", labelsize=7)
        axis.grid(axis="y", alpha=0.3)
    # One legend for the figure, below the panels: inside a panel it covers bars.
    legend = {label: handle for axis in axes for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
