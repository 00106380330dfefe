"""`python -m eval ... --update_card DIR_OR_ID`: the run's results go into a model repository's card (its model-index
and its results table); a second run replaces the results of the same task, split and language and keeps the rest.
A Hub id cannot be reached here: offline it fails before any work, with an error naming the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build
from huggingface_hub import EvalResult, ModelCard
from test_eval_run import _argv, write_xgqa

from mblip.cards import CardUpdateError, model_card, update_card
from mblip.evaluation.metrics import normalize_answer
from mblip.evaluation.run import main, parse_args
from mblip.hub import register_auto_classes


ROOT = Path(__file__).resolve().parents[1]
# A result from an earlier evaluation of another benchmark: it must survive every merge.
XM3600_DE = EvalResult(
    task_type="image-to-text",
    dataset_type="xm3600",
    dataset_name="XM3600 (de, test)",
    dataset_config="de",
    dataset_split="test",
    metric_type="cider",
    metric_value=40.0,
    metric_name="CIDEr",
)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A saved tiny model (BLOOM: its untrained generations are non-empty text) without a card."""
    register_auto_classes()
    model, processor = build("bloom")
    folder = tmp_path_factory.mktemp("tiny-bloom")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def model_repo(tmp_path, saved_model):
    """A model repository of its own (the card is rewritten) whose card already holds an XM3600 result."""
    repo = tmp_path / "mblip-tiny"
    shutil.copytree(saved_model, repo)
    card = model_card("mBLIP tiny", "A tiny test model.", eval_results=[XM3600_DE], repo_id="me/mblip-tiny")
    card.save(repo / "README.md")
    return repo


def card_results(repo: Path) -> dict[tuple, float]:
    card = ModelCard.load(repo / "README.md")
    found = [
        ((r.dataset_type, r.dataset_split, r.dataset_config, r.metric_type), r.metric_value)
        for r in card.data.eval_results
    ]
    assert len(found) == len(dict(found)), f"duplicated entries in the card: {found}"
    return dict(found)


def table_row(repo: Path, language: str) -> list[str]:
    """The card's results table (between its markers), row `language`, as its cells."""
    text = (repo / "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- results: start -->")[1].split("<!-- results: end -->")[0].strip().splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    row = next(line for line in table[2:] if line.startswith(f"| {language} |"))
    return dict(zip(header, (cell.strip() for cell in row.strip("|").split("|"))))


def test_results_merge_into_a_local_card_and_a_second_run_replaces_them(tmp_path, model_repo):
    data_dir, image_dir = write_xgqa(tmp_path / "xgqa")
    out = tmp_path / "out"
    license = ModelCard.load(model_repo / "README.md").data.license

    # The model evaluated is the folder whose card is updated: its README.md changes between the runs.
    argv = [str(model_repo), "xgqa", str(data_dir), str(image_dir)]
    first = main(_argv(*argv, "de,en", out, "--update_card", str(model_repo)))
    expected = {("xm3600", "test", "de", "cider"): 40.0}
    for key, result in first.items():
        split, lang = key.split("/")
        for metric, value in result["metrics"].items():
            expected["xgqa", split, lang, metric] = round(value, 2)
    assert len(expected) == 5  # acc and relaxed_acc for de and en, and XM3600
    assert card_results(model_repo) == expected
    card = ModelCard.load(model_repo / "README.md")
    assert card.data.license == license and card.data.model_name == "mBLIP tiny"  # the rest of the card stays
    assert table_row(model_repo, "de")["XM3600 CIDEr"] == "40.0"
    assert table_row(model_repo, "en")["xGQA Acc."] == f"{first['test/en']['metrics']['acc']:.1f}"
    assert not [p.name for p in model_repo.iterdir() if p.name.startswith(".")]  # no temporary left behind

    # New scores for German only: its gold answers become the model's own answers, so German scores 100.
    rows = (out / "xgqa" / "predictions_test_de.jsonl").read_text(encoding="utf-8").splitlines()
    answers = {row["id"]: row["prediction"] for row in map(json.loads, rows)}
    assert all(normalize_answer(a) for a in answers.values()), f"tiny model answered nothing usable: {answers}"
    annotations = data_dir / "few_shot" / "de" / "test.json"
    questions = json.loads(annotations.read_text(encoding="utf-8"))
    for question_id, question in questions.items():
        question["answer"] = answers[question_id]
    annotations.write_text(json.dumps(questions, ensure_ascii=False), encoding="utf-8")
    # Same settings: the predictions are resumed (the changed card does not make the model another one) and rescored.
    second = main(_argv(*argv, "de", out, "--update_card", str(model_repo)))
    assert second["test/de"]["metrics"] == {"acc": 100.0, "relaxed_acc": 100.0}
    expected["xgqa", "test", "de", "acc"] = expected["xgqa", "test", "de", "relaxed_acc"] = 100.0
    assert expected["xgqa", "test", "en", "acc"] != 100.0  # English keeps its first score
    assert card_results(model_repo) == expected
    assert table_row(model_repo, "de")["xGQA Acc."] == "100.0"
    assert table_row(model_repo, "de")["XM3600 CIDEr"] == "40.0"


def test_a_card_without_a_results_table_gets_one(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("---\nlicense: mit\n---\n\n# Someone's model\n\nSome text.\n", encoding="utf-8")
    assert update_card(repo, [XM3600_DE]) == str(repo / "README.md")
    card = ModelCard.load(repo / "README.md")
    assert card.data.license == "mit" and card.data.model_name == "Someone's model"
    assert card.text.startswith("\n# Someone's model\n\nSome text.\n\n## Results\n")
    assert table_row(repo, "de") == {"language": "de", "XM3600 CIDEr": "40.0"}


def test_bad_targets_fail_before_the_model_is_loaded(tmp_path, saved_model):
    data_dir, image_dir = write_xgqa(tmp_path / "xgqa")
    out = tmp_path / "out"
    argv = [str(saved_model), "xgqa", str(data_dir), str(image_dir), "de", out]
    with pytest.raises(CardUpdateError, match=f"{saved_model} has no README.md to merge evaluation results into"):
        main(_argv(*argv, "--update_card", str(saved_model)))
    with pytest.raises(CardUpdateError, match="config.json is a file: pass the model folder"):
        main(_argv(*argv, "--update_card", str(saved_model / "config.json")))
    with pytest.raises(CardUpdateError, match="'no/such/folder' is neither a local folder nor a Hub repository id"):
        main(_argv(*argv, "--update_card", "no/such/folder"))
    assert not (out / "xgqa").exists()  # nothing was evaluated
    with pytest.raises(ValueError, match="--update_card me/model writes results into a model card, but --limit 2"):
        parse_args(_argv(*argv, "--update_card", "me/model", "--limit", "2"))


def test_a_hub_id_without_network_fails_fast_naming_the_repository(tmp_path, saved_model):
    """The command line, offline: refused before the model is loaded, not after the run."""
    data_dir, image_dir = write_xgqa(tmp_path / "xgqa")
    out = tmp_path / "out"
    argv = _argv(
        str(saved_model), "xgqa", str(data_dir), str(image_dir), "de", out, "--update_card", "me/no-such-mblip"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-m", "eval", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "CardUpdateError: Cannot update the model card of the Hub repository 'me/no-such-mblip'" in done.stderr
    assert "needs network and a token with write access" in done.stderr and "offline mode" in done.stderr
    assert not (out / "xgqa").exists()


def test_update_card_wraps_the_hubs_error_naming_the_repository(monkeypatch):
    """The library call, offline: ModelCard.load's own error, wrapped in ours and chained."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # whatever the environment says: never the network
    with pytest.raises(
        CardUpdateError, match="Cannot load the model card of the Hub repository 'me/no-such-mblip'"
    ) as err:
        update_card("me/no-such-mblip", [XM3600_DE])
    assert "needs network and a token with write access" in str(err.value)
    assert err.value.__cause__ is not None
