"""Model cards through huggingface_hub: they parse with `ModelCard.load`, state the right licence and Hub-only base
models, merge newer evaluation results, and hold exactly the evaluation's `model-index.yaml`; written repositories
keep no loading-time keys."""

import json
import logging
from pathlib import Path

import pytest
import yaml
from conftest import make_blip2
from huggingface_hub import EvalResult, ModelCard

from mblip import cards
from mblip import convert as convert_mblip
from mblip.cards import PROJECT_LICENSE, load_model_index, merge_eval_results, model_card, model_index_yaml
from mblip.evaluation.report import eval_results
from mblip.hub import LOADING_KEYS


def load(card: ModelCard, tmp_path: Path, name: str = "README.md") -> ModelCard:
    """Saved and parsed again, as the Hub and every reader see it."""
    card.save(tmp_path / name)
    return ModelCard.load(tmp_path / name)


def local_model(path: Path, metadata: dict | None = None, config: dict | None = None) -> Path:
    """A local model folder with an optional card (its YAML metadata) and config.json."""
    path.mkdir(parents=True)
    if metadata is not None:
        (path / "README.md").write_text(f"---\n{yaml.safe_dump(metadata)}---\n\n# A model\n", encoding="utf-8")
    (path / "config.json").write_text(json.dumps(config or {"model_type": "t5"}), encoding="utf-8")
    return path


def result(dataset="xgqa", language="de", split="test", metric="acc", value=50.0) -> EvalResult:
    return EvalResult(
        task_type="visual-question-answering",
        dataset_type=dataset,
        dataset_name=f"{dataset} ({language}, {split})",
        dataset_config=language,
        dataset_split=split,
        metric_type=metric,
        metric_value=value,
    )


# ---------------------------------------------------------------------------------------------------- metadata
def test_card_metadata_parses_with_huggingface_hub(tmp_path):
    built = model_card(
        "mBLIP test",
        "A description.",
        ["Salesforce/blip2-flan-t5-xl", "bigscience/mt0-xl"],
        languages=["no", "de", "en"],
        datasets=["Gregor/mblip-train", str(tmp_path)],  # a local dataset folder is no Hub dataset id
        eval_results=[result()],
        model_name="mblip-test",
        repo_id="me/mblip-test",
        sections={"Training data": "Some rows."},
    )
    card = load(built, tmp_path)
    data = card.data
    assert data.license == "bigscience-bloom-rail-1.0"
    assert data.language == ["no", "de", "en"]  # "no" stays Norwegian, not YAML's false
    assert data.library_name == "transformers" and data.pipeline_tag == "image-text-to-text"
    assert data.base_model == ["Salesforce/blip2-flan-t5-xl", "bigscience/mt0-xl"]
    assert data.datasets == ["Gregor/mblip-train"]
    assert "mblip" in data.tags and "multilingual" in data.tags
    assert data.model_name == "mblip-test" and data.eval_results == [result()]
    assert card.content == built.content
    assert card.text.startswith("\n# mBLIP test\n")
    for heading in ("## Usage", "## Base models", "## Training data", "## License"):
        assert heading in card.text
    assert 'from_pretrained("me/mblip-test", trust_remote_code=True)' in card.text
    assert str(card).startswith("---\nlicense: bigscience-bloom-rail-1.0\n")
    assert str(card).rstrip().endswith("## License\n\n" + card.text.split("## License\n\n")[1].rstrip())


def test_plain_transformers_cards_need_no_remote_code(tmp_path):
    card = load(model_card("BLIP-2 export", "d", remote_code=False), tmp_path)
    assert "trust_remote_code" not in card.text and 'from_pretrained("org/mblip-model")' in card.text
    assert card.data.eval_results is None and "model-index" not in str(card) and "model_name" not in str(card)


# ---------------------------------------------------------------------------------------------------- licences
@pytest.mark.parametrize(
    ("bases", "expected"),
    [
        ([], PROJECT_LICENSE),  # built by the toolkit alone
        (["Salesforce/blip2-flan-t5-xl"], "mit"),
        (["Gregor/mblip-mt0-xl"], "mit"),
        (["gregor/mblip-bloomz-7b"], "mit"),
        (["bigscience/bloomz-7b1"], "bigscience-bloom-rail-1.0"),
        # A permissive licence lets its part be redistributed under the more restrictive one.
        (["Salesforce/blip2-flan-t5-xl", "bigscience/mt0-xl"], "bigscience-bloom-rail-1.0"),
    ],
)
def test_well_known_ids_carry_their_licence(bases, expected, tmp_path):
    assert load(model_card("t", "d", bases), tmp_path).data.license == expected


def test_a_local_base_models_card_states_its_licence(tmp_path):
    vision = local_model(tmp_path / "blip2", {"license": "apache-2.0"})
    # A local copy of a well-known checkpoint: its own card wins over the table.
    llm = local_model(tmp_path / "mt0", {"license": "apache-2.0", "base_model": "bigscience/mt0-xl"})
    card = load(model_card("t", "d", [str(vision), str(llm)]), tmp_path)
    assert card.data.license == "apache-2.0"
    assert f"`{vision}`: `apache-2.0`" in card.text


def test_unknown_licences_say_other_and_log_it(tmp_path, caplog):
    unknown = local_model(tmp_path / "llm")
    with caplog.at_level(logging.WARNING, logger="mblip.cards"):
        card = load(model_card("t", "d", ["Salesforce/blip2-flan-t5-xl", str(unknown)]), tmp_path)
    assert card.data.license == "other"
    assert any(str(unknown) in r.message and "--license" in r.message for r in caplog.records)
    caplog.clear()
    two = [
        str(local_model(tmp_path / "a", {"license": "openrail"})),
        str(local_model(tmp_path / "b", {"license": "llama2"})),
    ]
    with caplog.at_level(logging.WARNING, logger="mblip.cards"):
        assert cards.resolve_license(two)[0] == "other"
    assert any("differ" in r.message for r in caplog.records)


def test_an_explicit_licence_wins(tmp_path, caplog):
    unknown = local_model(tmp_path / "llm")
    with caplog.at_level(logging.WARNING, logger="mblip.cards"):
        card = load(model_card("t", "d", ["bigscience/mt0-xl", str(unknown)], license="cc-by-nc-4.0"), tmp_path)
    assert card.data.license == "cc-by-nc-4.0" and not caplog.records


# ---------------------------------------------------------------------------------------------------- base models
def test_base_model_holds_hub_ids_only(tmp_path):
    converted = local_model(tmp_path / "converted", {"license": "mit", "base_model": ["Gregor/mblip-mt0-xl"]})
    named = local_model(tmp_path / "named", config={"model_type": "bloom", "_name_or_path": "bigscience/bloomz-7b1"})
    nameless = local_model(tmp_path / "nameless", config={"model_type": "t5", "_name_or_path": str(tmp_path / "x")})
    stale = local_model(tmp_path / "stale", {"base_model": [str(tmp_path / "elsewhere")]})  # an older card's path
    sources = [str(converted), str(named), str(nameless), str(stale), "Salesforce/blip2-flan-t5-xl"]
    card = load(model_card("t", "d", sources), tmp_path)
    assert card.data.base_model == ["Gregor/mblip-mt0-xl", "bigscience/bloomz-7b1", "Salesforce/blip2-flan-t5-xl"]
    # Every local folder is named in the text, with the Hub id it stands for where one is known.
    assert f"the local folder `{converted}`, based on `Gregor/mblip-mt0-xl`" in card.text
    assert f"the local folder `{nameless}` (no Hub id recorded)" in card.text
    assert f"the local folder `{stale}` (no Hub id recorded)" in card.text
    only_local = load(model_card("t", "d", [str(nameless)]), tmp_path, "only.md")
    assert only_local.data.base_model is None and "base_model" not in str(only_local).split("\n---\n")[0]


def test_is_hub_id():
    assert cards.is_hub_id("Gregor/mblip-mt0-xl") and cards.is_hub_id("gpt2")
    for name in ("/data/run: 2/blip2", "./blip2", "outputs/demo/llm", "~/models/x", "a/b/c", ""):
        assert not cards.is_hub_id(name), name


# ---------------------------------------------------------------------------------------------------- eval results
def test_merged_eval_results_replace_the_same_measurement_and_keep_the_rest(tmp_path):
    old = [
        result("xgqa", "de", "test", "acc", 40.0),
        result("xgqa", "de", "test", "relaxed_acc", 41.0),
        result("xgqa", "en", "test", "acc", 60.0),
        result("xgqa", "de", "dev", "acc", 45.0),
    ]
    card = load(model_card("m", "d", eval_results=old, model_name="mblip-m"), tmp_path)
    new = [result("xgqa", "de", "test", "acc", 42.5), result("xm3600", "de", "test", "cider", 30.1)]
    merged = merge_eval_results(card, new)
    assert merged is card
    again = load(card, tmp_path, "merged.md")
    got = [
        (r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_value)
        for r in again.data.eval_results
    ]
    assert got == [
        ("xgqa", "de", "test", "acc", 42.5),  # replaced where it stood
        ("xgqa", "de", "test", "relaxed_acc", 41.0),  # another metric of the same dataset: kept
        ("xgqa", "en", "test", "acc", 60.0),  # another language: kept
        ("xgqa", "de", "dev", "acc", 45.0),  # another split: kept
        ("xm3600", "de", "test", "cider", 30.1),  # new: added
    ]
    assert again.data.model_name == "mblip-m" and again.data.license == PROJECT_LICENSE


def test_results_merge_into_a_card_without_any(tmp_path):
    card = load(model_card("mBLIP (demo)", "d"), tmp_path)
    merge_eval_results(card, [result()])
    again = load(card, tmp_path, "merged.md")
    assert again.data.eval_results == [result()] and again.data.model_name == "mBLIP (demo)"


def test_model_index_yaml_is_what_a_card_holds_and_round_trips(tmp_path):
    results_by_task = {
        "xgqa": [
            {"split": "test", "language": "de", "metrics": {"acc": 51.234, "relaxed_acc": 52.0}},
            {"split": "test", "language": "no", "metrics": {"acc": 48.0, "relaxed_acc": float("nan")}},
        ],
        "xm3600": [{"split": "test", "language": "de", "metrics": {"cider": 30.0, "bleu4": None}}],
    }
    found = eval_results(results_by_task)
    assert [(r.dataset_type, r.dataset_config, r.metric_type, r.metric_value) for r in found] == [
        ("xgqa", "de", "acc", 51.23),
        ("xgqa", "de", "relaxed_acc", 52.0),
        ("xgqa", "no", "acc", 48.0),  # NaN and missing metrics are left out
        ("crossmodal-3600", "de", "cider", 30.0),
    ]
    (tmp_path / "model-index.yaml").write_text(model_index_yaml("mblip-m", found), encoding="utf-8")
    name, loaded = load_model_index(tmp_path / "model-index.yaml")
    assert name == "mblip-m" and loaded == found

    card = load(model_card("m", "d", eval_results=found, model_name="mblip-m"), tmp_path)
    block = yaml.safe_load((tmp_path / "model-index.yaml").read_text(encoding="utf-8"))
    assert card.data.to_dict()["model-index"] == block["model-index"]
    assert block["model-index"][0]["results"][1]["dataset"]["config"] == "no"

    # ... and an evaluation's file merges into a card written before it.
    plain = load(model_card("m", "d"), tmp_path, "plain.md")
    merge_eval_results(plain, loaded, model_name=name)
    assert load(plain, tmp_path, "plain.md").data.to_dict()["model-index"] == block["model-index"]


# ---------------------------------------------------------------------------------------------------- repositories
def loading_keys_in(folder: Path) -> dict[str, list[str]]:
    def keys(data):
        if isinstance(data, dict):
            return [k for k in data if k in LOADING_KEYS] + [k for v in data.values() for k in keys(v)]
        if isinstance(data, list):
            return [k for v in data for k in keys(v)]
        return []

    found = {}
    for path in sorted(folder.glob("*.json")):
        if path.name != "tokenizer.json":  # the tokenizer's vocabulary may hold any word
            found[path.name] = keys(json.loads(path.read_text(encoding="utf-8")))
    return {name: k for name, k in found.items() if k}


def test_converted_repositories_carry_licence_base_model_and_no_loading_keys(tmp_path, caplog):
    make_blip2("mt5", tmp_path / "blip2")
    (tmp_path / "blip2" / "README.md").write_text(
        "---\nlicense: apache-2.0\nbase_model: Salesforce/blip2-flan-t5-xl\n---\n\n# A BLIP-2\n", encoding="utf-8"
    )
    assert convert_mblip.main(["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "mblip")]) == 0
    card = ModelCard.load(tmp_path / "mblip" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.base_model == ["Salesforce/blip2-flan-t5-xl"]
    assert f"`{tmp_path / 'blip2'}`" in card.text
    # The processor was loaded with from_pretrained, whose is_local / local_files_only must not be saved.
    assert json.loads((tmp_path / "mblip" / "tokenizer_config.json").read_text())
    assert loading_keys_in(tmp_path / "mblip") == {}

    # Exported back to BLIP-2: the licence and base model follow the mBLIP folder's own card.
    assert convert_mblip.main(["--to_blip2", str(tmp_path / "mblip"), "--output_dir", str(tmp_path / "back")]) == 0
    back = ModelCard.load(tmp_path / "back" / "README.md")
    assert back.data.license == "apache-2.0" and back.data.base_model == ["Salesforce/blip2-flan-t5-xl"]
    assert "trust_remote_code=True" not in back.text
    assert loading_keys_in(tmp_path / "back") == {}

    # --license states it outright.
    argv = ["--to_blip2", str(tmp_path / "mblip"), "--output_dir", str(tmp_path / "mine"), "--license", "mit"]
    assert convert_mblip.main(argv) == 0
    assert ModelCard.load(tmp_path / "mine" / "README.md").data.license == "mit"
