"""Validation by generation while training: tiny model, tiny XM3600 and xGQA files in their released formats."""

import json
import os
import subprocess
from types import SimpleNamespace

import pytest
from huggingface_hub import EvalResult, ModelCard
from test_eval_run import write_xgqa, write_xm3600
from test_train_mblip import cli, parts  # noqa: F401  (parts is a fixture)

from mblip import training as train_mblip
from mblip.cards import merge_eval_results
from mblip.evaluation.tasks import get_task
from mblip.validation import GenerationValidation, ValidationArguments, card_validation


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_xm3600(root / "xm3600")
    write_xgqa(root / "xgqa")
    return root


def validation_flags(bench, *extra):
    return [
        "--validation_tasks",
        "xm3600",
        "xgqa",
        "--validation_data_dirs",
        str(bench / "xm3600"),
        str(bench / "xgqa"),
        "--validation_image_dirs",
        str(bench / "xm3600" / "images"),
        str(bench / "xgqa" / "images"),
        "--validation_languages",
        "de,en",
        "--validation_splits",
        "test",  # the tiny xGQA has only its test files (the default would be dev)
        "--validation_max_per_language",
        "3",
        "--per_device_eval_batch_size",
        "1",
        *extra,
    ]


PER_LANGUAGE = [f"eval_xm3600_{lang}_{m}" for lang in ("de", "en") for m in ("cider", "bleu4", "lang_fidelity")] + [
    f"eval_xgqa_{lang}_{m}" for lang in ("de", "en") for m in ("acc", "relaxed_acc")
]
AVERAGES = ["eval_xm3600_avg_cider", "eval_xgqa_avg_acc"]


TASK_OF = {get_task(name).dataset_type: name for name in ("xm3600", "xgqa")}


def check_card(readme, final: dict, best: dict):
    """The card written at the end of training holds the final and the best evaluation's per-language scores in its
    model-index and results table, each marked as validation during training (split, examples per language, which
    evaluation); a later `python -m eval` result merged into the card stands next to them, replacing none."""
    card = ModelCard.load(readme)
    results = card.data.eval_results
    final_split, best_split = (
        f"test, first 3 per language, validation during training: final (step {final['step']})",
        f"test, first 3 per language, validation during training: best xm3600_avg_bleu4 (step {best['step']})",
    )
    assert {r.dataset_split for r in results} == {final_split, best_split}
    for split, entry in ((final_split, final), (best_split, best)):
        found = {
            f"eval_{TASK_OF[r.dataset_type]}_{r.dataset_config}_{r.metric_type}": r.metric_value
            for r in results
            if r.dataset_split == split
        }
        assert set(found) == set(PER_LANGUAGE)
        assert found == {k: round(entry[k], 2) for k in PER_LANGUAGE}
    xgqa = next(r for r in results if r.dataset_type == "xgqa" and r.dataset_split == final_split)
    assert xgqa.task_type == "visual-question-answering" and xgqa.dataset_name == f"xGQA (de, {final_split})"
    assert f"xGQA {final_split} Acc." in card.text  # the results table's column
    assert "Columns marked *validation during training*" in card.text
    assert "## Validation during training" in card.text and "the first 3 of each language" in card.text
    assert f"| final | {final['step']} |" in card.text and f"step {best['step']}, the best by" in card.text
    # A full-benchmark result of the same task, split, language and metric is another row, not a replacement.
    full = EvalResult(
        task_type=xgqa.task_type,
        dataset_type="xgqa",
        dataset_name="xGQA (de, test)",
        dataset_config="de",
        dataset_split="test",
        metric_type="acc",
        metric_value=12.5,
    )
    assert "These commands score in full the benchmarks validated during training" in card.text
    merged = merge_eval_results(card, [full]).data.eval_results
    assert len(merged) == len(results) + 1 and merged[:-1] == results


def test_scores_reach_loggers_evaluate_files_and_the_best_checkpoint(parts, bench, tmp_path):  # noqa: F811
    output_dir = tmp_path / "out"
    trainer, _ = train_mblip.main(
        cli(
            parts,
            output_dir,
            "--max_steps",
            "2",
            "--lora_learning_rate",
            "1e-2",
            *validation_flags(
                bench,
                "--validation_num_beams",
                "1",  # greedy, to keep the test cheap
                "--eval_strategy",
                "steps",
                "--eval_steps",
                "1",
                "--save_strategy",
                "steps",
                "--save_steps",
                "1",
                "--metric_for_best_model",
                "xm3600_avg_bleu4",
                "--load_best_model_at_end",
            ),
        )
    )
    evaluations = [entry for entry in trainer.state.log_history if "eval_xgqa_en_acc" in entry]
    assert [entry["step"] for entry in evaluations] == [1, 2, 2]  # two during training, the final evaluate()
    for entry in evaluations:
        assert set(PER_LANGUAGE + AVERAGES) <= set(entry), sorted(entry)
        assert entry["eval_xm3600_avg_cider"] == pytest.approx(
            (entry["eval_xm3600_de_cider"] + entry["eval_xm3600_en_cider"]) / 2
        )
    # metric_for_best_model found its score (the Trainer raises KeyError otherwise) and picked the best checkpoint.
    values = [entry["eval_xm3600_avg_bleu4"] for entry in evaluations[:2]]
    best_step = evaluations[values.index(max(values))]["step"]
    assert trainer.state.best_metric == max(values)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}"), (values, trainer.state)

    check_card(output_dir / "README.md", final=evaluations[2], best=evaluations[values.index(max(values))])

    metrics = trainer.evaluate()
    assert set(PER_LANGUAGE + AVERAGES) <= set(metrics)

    # The scores are the evaluation package's, computed from the predictions written for that step.
    folder = output_dir / "validation" / "step-2"
    assert json.loads((folder / "scores.json").read_text())["xgqa_en_acc"] == metrics["eval_xgqa_en_acc"]
    task = get_task("xgqa")
    examples = task.read(bench / "xgqa", [bench / "xgqa" / "images"], "de", "test").examples
    records = [json.loads(line) for line in (folder / "xgqa" / "predictions_test_de.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [e.id for e in examples]
    assert records[0]["prompt"] == f"Question: {examples[0].fields['question']} Short answer in English:"
    expected = task.score([r["prediction"] for r in records], examples, "de")
    assert metrics["eval_xgqa_de_acc"] == pytest.approx(expected["acc"])
    xm3600 = (folder / "xm3600" / "predictions_test_en.jsonl").read_text().splitlines()
    assert len(xm3600) == 3 and json.loads(xm3600[0])["prompt"] == "Caption in English: "


def test_two_processes_score_like_one(parts, bench, tmp_path):  # noqa: F811
    # No learning (rates 0, LoRA B starts at 0): both runs validate the same weights, split differently.
    extra = [
        "--max_steps",
        "1",
        "--learning_rate",
        "0",
        "--qformer_learning_rate",
        "0",
        "--lora_learning_rate",
        "0",
        "--per_device_train_batch_size",
        "2",
        *validation_flags(bench),
    ]
    train_mblip.main(cli(parts, tmp_path / "one", *extra))
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "train_mblip.py"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, *cli(parts, tmp_path / "two", *extra)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "distributed True" in result.stdout + result.stderr
    one = json.loads((tmp_path / "one" / "validation" / "step-1" / "scores.json").read_text())
    two = json.loads((tmp_path / "two" / "validation" / "step-1" / "scores.json").read_text())
    assert set(one) == {k.removeprefix("eval_") for k in PER_LANGUAGE} | {
        f"{task}_avg_{m}"
        for task, ms in (("xm3600", ("cider", "bleu4", "lang_fidelity")), ("xgqa", ("acc", "relaxed_acc")))
        for m in ms
    }
    assert one == two
    for name in ("xm3600/predictions_test_en.jsonl", "xgqa/predictions_test_de.jsonl"):
        assert (tmp_path / "one" / "validation" / "step-1" / name).read_text() == (
            tmp_path / "two" / "validation" / "step-1" / name
        ).read_text()
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "eval_xgqa_en_acc" in e]
    assert logged and logged[-1]["eval_xgqa_en_acc"] == one["xgqa_en_acc"]


def test_inconsistent_validation_options_are_rejected(parts, tmp_path):  # noqa: F811
    base = cli(parts, tmp_path / "x")
    with pytest.raises(ValueError, match="--validation_data_dirs needs one entry per --validation_tasks entry"):
        train_mblip.parse_args([*base, "--validation_tasks", "xgqa", "xm3600", "--validation_data_dirs", "a"])
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        train_mblip.parse_args([*base, "--validation_tasks", "nope"])
    with pytest.raises(ValueError, match="--validation_languages needs --validation_tasks"):
        train_mblip.parse_args([*base, "--validation_languages", "de"])


def test_card_holds_the_final_and_the_best_evaluation(bench):
    """card_validation takes the final scores from `evaluate()`'s metrics and the best ones from the log entry of the
    Trainer's best evaluation (the one during training, not a later `evaluate()` at the same step), or, without a
    best step (no checkpoints), the entry holding the best value."""
    args = ValidationArguments(
        validation_tasks=["xm3600", "xgqa"],
        validation_data_dirs=[str(bench / "xm3600"), str(bench / "xgqa")],
        validation_image_dirs=[str(bench / "xm3600" / "images"), str(bench / "xgqa" / "images")],
        validation_languages=["de,en"],
        validation_splits=["test"],
        validation_max_per_language=2,
    )
    args.check_validation_arguments()
    validation = GenerationValidation(args, processor=None, batch_size=1)  # generation is not called

    def scores(base: float) -> dict:
        # Distinct values per key and per evaluation, so that no mix-up can pass.
        return {key: base + i for i, key in enumerate([*PER_LANGUAGE, *AVERAGES, "eval_xm3600_avg_bleu4"])}

    during_1, during_2, final = scores(10.0), scores(20.0), scores(30.0)
    log_history = [{"loss": 1.0, "step": 1}, {**during_1, "step": 1}, {**during_2, "step": 2}, {**final, "step": 2}]
    state = SimpleNamespace(global_step=2, log_history=log_history, best_metric=during_2["eval_xm3600_avg_bleu4"])
    state.best_global_step = 2
    train_args = SimpleNamespace(
        metric_for_best_model="xm3600_avg_bleu4", greater_is_better=True, load_best_model_at_end=False
    )
    trainer = SimpleNamespace(validation=validation, args=train_args, state=state)

    def by_evaluation(results) -> dict:
        found = {}
        for r in results:
            evaluation = r.dataset_split.split(": ", 1)[1]
            key = f"eval_{TASK_OF[r.dataset_type]}_{r.dataset_config}_{r.metric_type}"
            found.setdefault(evaluation, {})[key] = r.metric_value
        return found

    results, text = card_validation(trainer, final)
    assert by_evaluation(results) == {
        "final (step 2)": {k: final[k] for k in PER_LANGUAGE},
        "best xm3600_avg_bleu4 (step 2)": {k: during_2[k] for k in PER_LANGUAGE},  # not the final entry at step 2
    }
    assert all(r.dataset_split.startswith("test, first 2 per language, validation during training: ") for r in results)
    assert "| final | 2 | " in text and "| best | 2 | " in text

    # Without checkpoints the Trainer keeps no best step: the entry holding the best value is the best evaluation.
    state.best_global_step, state.best_metric = None, during_1["eval_xm3600_avg_bleu4"]
    results, _ = card_validation(trainer, final)
    assert by_evaluation(results)["best xm3600_avg_bleu4 (step 1)"] == {k: during_1[k] for k in PER_LANGUAGE}
    # Without metric_for_best_model: the final evaluation only.
    train_args.metric_for_best_model = None
    results, text = card_validation(trainer, final)
    assert set(by_evaluation(results)) == {"final (step 2)"} and "**best**" not in text
    assert card_validation(SimpleNamespace(validation=None), final) is None
