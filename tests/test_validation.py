"""Validation by generation while training: tiny model, tiny XM3600 and xGQA files in their released formats."""

import json
import os
import subprocess

import pytest
from test_eval_run import write_xgqa, write_xm3600
from test_train_mblip import cli, parts  # noqa: F401  (parts is a fixture)

from mblip import training as train_mblip
from mblip.evaluation.tasks import get_task


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
