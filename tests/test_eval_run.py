"""The evaluation suite end to end: every benchmark's reader on tiny files written in its released format, the
command line on a tiny model for every task, resume, bad input, and argument errors."""

import json
import logging
import os
import shutil

import pytest
import torch
from conftest import build
from PIL import Image

from mblip.evaluation.run import main, parse_args
from mblip.evaluation.tasks import get_task, image_dirs_from_arg
from mblip.hub import register_auto_classes
from mblip.modeling_mblip import MBlipForConditionalGeneration


# ================================================================================================ tiny benchmarks
def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (12, 12, 3), generator=generator, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path, format="PNG")  # content sniffed by PIL whatever the extension


def _jsonl(path, rows, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def write_xm3600(root):
    """captions.jsonl as released: one object per image, a {"caption": [...], ...} entry per language."""
    rows = []
    for i, key in enumerate(["a1b2c3", "d4e5f6", "0f9e8d"]):
        _image(root / "images" / f"{key}.jpg", i)
        rows.append(
            {
                "image/key": key,
                "image/locale": "de",
                "de": {
                    "caption": [f"ein roter Kreis {i}", "ein Bild"],
                    "caption/tokenized": ["x"],
                    "caption/tokenized/lowercase": ["x"],
                },
                "en": {
                    "caption": [f"a red circle {i}", "a picture"],
                    "caption/tokenized": ["x"],
                    "caption/tokenized/lowercase": ["x"],
                },
            }
        )
    _jsonl(root / "captions.jsonl", rows)
    return root, root / "images"


def write_xflickrco(root):
    """IGLUE layout: annotations/<lang>/test.jsonl, Flickr30k and COCO file names, two image folders."""
    _image(root / "flickr" / "1007129816.jpg", 1)
    _image(root / "coco" / "COCO_val2014_000000392892.jpg", 2)
    for lang, words in (("de", "Ein Mann"), ("en", "A man")):
        _jsonl(
            root / "annotations" / lang / "test.jsonl",
            [
                {"sentences": [f"{words} mit Hut."], "id": "1007129816", "img_path": "1007129816.jpg"},
                {"sentences": [f"{words} am Strand."], "id": 392892, "img_path": "COCO_val2014_000000392892.jpg"},
            ],
        )
    # English is scored on Flickr30k's test set (five references), IGLUE's datasets/flickr30k next to xFlickrCO.
    _jsonl(
        root.parent / "flickr30k" / "annotations" / "test_ann.jsonl",
        [
            {
                "sentences": [
                    "The man with pierced ears is wearing glasses and an orange hat.",
                    "A man with glasses is wearing a beer can crocheted hat.",
                    "A man with gauges and glasses is wearing a Blitz hat.",
                    "A man in an orange hat starring at something.",
                    "A man wears an orange hat and glasses.",
                ],
                "id": "1007129816",
                "img_path": "1007129816.jpg",
            }
        ],
    )
    return root, f"{root / 'flickr'},{root / 'coco'}"


def write_xgqa(root):
    """few_shot/<lang>/test.json in GQA's question format: {question_id: {...}}."""
    for i, image in enumerate(["n235859", "n179136"]):
        _image(root / "images" / f"{image}.jpg", 10 + i)
    for lang, questions in (
        ("de", ["Wer trägt das Kleid?", "Ist es nass?"]),
        ("en", ["Who wears the dress?", "Is it wet?"]),
    ):
        _json(
            root / "few_shot" / lang / "test.json",
            {
                "201640614": {
                    "question": questions[0],
                    "imageId": "n235859",
                    "answer": "women",
                    "isBalanced": True,
                    "fullAnswer": "The women are wearing a dress.",
                    "semantic": [],
                },
                "2062325": {"question": questions[1], "imageId": "n179136", "answer": "yes", "isBalanced": True},
            },
        )
    return root, root / "images"


def write_maxm(root):
    """maxm_v1_<lang>.json as released (Hebrew is "iw"), XM3600 images."""
    _image(root / "images" / "a1b2c3.jpg", 20)
    for lang, question in (("fr", "Quelle couleur ?"), ("iw", "איזה צבע?")):
        _json(
            root / "maxm_v1_release" / f"maxm_v1_{lang}.json",
            {
                "dataset": "maxm",
                "version": "v1",
                "split": lang,
                "annotations": [
                    {
                        "image_id": "a1b2c3",
                        "image_url": "https://example.invalid/a1b2c3.jpg",
                        "qa_pairs": [
                            {
                                "question_id": f"{lang}-q1",
                                "question": question,
                                "answers": ["Rouge"],
                                "processed_answers": ["rouge", "rouge vif"],
                                "is_collection": False,
                            },
                            {
                                "question_id": f"{lang}-q2",
                                "question": question,
                                "answers": ["2"],
                                "processed_answers": ["2"],
                                "is_collection": True,
                            },
                        ],
                    }
                ],
            },
        )
    return root / "maxm_v1_release", root / "images"


def write_xvnli(root):
    """annotations/<lang>/test.jsonl, SNLI-style lines; one line with gold label "-" (skipped by protocol)."""
    _image(root / "flickr" / "759822302.jpg", 30)
    rows = [
        {
            "gold_label": "contradiction",
            "sentence1": "Un homme.",
            "sentence2": "Il dort.",
            "captionID": "759822302.jpg#2",
            "pairID": "759822302.jpg#2r1c",
            "Flikr30kID": "759822302",
        },
        {
            "gold_label": "entailment",
            "sentence1": "Un homme.",
            "sentence2": "Un homme.",
            "captionID": "759822302.jpg#2",
            "pairID": "759822302.jpg#2r1e",
            "Flikr30kID": "759822302",
        },
        {
            "gold_label": "-",
            "sentence1": "Un homme.",
            "sentence2": "Il lit.",
            "captionID": "759822302.jpg#2",
            "pairID": "759822302.jpg#2r1n",
            "Flikr30kID": "759822302",
        },
    ]
    _jsonl(root / "annotations" / "fr" / "test.jsonl", rows)
    return root, root / "flickr"


def write_marvl(root):
    """zero_shot/annotations/marvl-<lang>.jsonl; images under <language>/images/<concept>/ (non-ASCII concept)."""
    concept = "82-铅笔"
    for i, name in enumerate(["82-6.jpg", "82-1.jpg", "82-4.jpg"]):
        _image(root / "images" / "zh" / "images" / concept / name, 40 + i)
    info = {
        "annotator_id": "zh_01",
        "country_of_birth": "Taiwan",
        "country_of_residence": "Belgium",
        "gender": "male",
        "age": 25,
    }
    rows = [
        {
            "concept": concept,
            "language": "zh",
            "caption": "左圖有好幾隻鉛筆。",
            "left_img": "82-6.jpg",
            "right_img": "82-1.jpg",
            "annotator_info": info,
            "chapter": "Cognition",
            "id": "zh-0",
            "label": False,
        },
        {
            "concept": concept,
            "language": "zh",
            "caption": "右圖只有一支鉛筆。",
            "left_img": "82-4.jpg",
            "right_img": "82-1.jpg",
            "annotator_info": info,
            "chapter": "Cognition",
            "id": "zh-1",
            "label": True,
        },
    ]
    _jsonl(root / "zero_shot" / "annotations" / "marvl-zh.jsonl", rows)
    return root, root / "images"


def write_pope(root):
    """output/coco/coco_pope_<setting>.json: JSON lines; COCO val2014 images."""
    _image(root / "val2014" / "COCO_val2014_000000548882.jpg", 50)
    for setting in ("random", "popular", "adversarial"):
        _jsonl(
            root / "output" / "coco" / f"coco_pope_{setting}.json",
            [
                {
                    "question_id": 0,
                    "image": "COCO_val2014_000000548882.jpg",
                    "image_id": 548882,
                    "text": "Is there a dining table in the image?",
                    "label": "yes",
                },
                {
                    "question_id": 1,
                    "image": "COCO_val2014_000000548882.jpg",
                    "image_id": 548882,
                    "text": "Is there a zebra in the image?",
                    "label": "no",
                },
            ],
        )
    return root, root / "val2014"


WRITERS = {
    "xm3600": (write_xm3600, "de,en"),
    "xflickrco": (write_xflickrco, "de,en"),
    "xgqa": (write_xgqa, "de,en"),
    "maxm": (write_maxm, "fr,iw"),
    "xvnli": (write_xvnli, "fr"),
    "marvl": (write_marvl, "zh"),
    "pope": (write_pope, "en"),
}


def _benchmark(tmp_path, task):
    writer, languages = WRITERS[task]
    data_dir, image_dir = writer(tmp_path / task)
    return str(data_dir), str(image_dir), languages


# ================================================================================================ readers
@pytest.mark.parametrize("task_name", sorted(WRITERS))
def test_reader_reads_released_format(tmp_path, task_name):
    task = get_task(task_name)
    data_dir, image_dir, languages = _benchmark(tmp_path, task_name)
    lang = languages.split(",")[0]
    data = task.read(data_dir, image_dirs_from_arg(image_dir), lang, task.default_splits[0])
    expected = {"xm3600": 3, "xflickrco": 2, "xgqa": 2, "maxm": 2, "xvnli": 2, "marvl": 2, "pope": 2}[task_name]
    assert len(data.examples) == expected
    assert all(p.kind == "no_gold_label" for p in data.problems)  # only XVNLI's "-" line
    assert len(data.problems) == (1 if task_name == "xvnli" else 0)
    for example in data.examples:
        assert len(example.images) == task.images_per_example and all(p.is_file() for p in example.images)
        assert example.references and all(isinstance(r, str) for r in example.references)
        assert set(example.fields) == set(task.fields)


def test_readers_keep_the_benchmarks_labels_and_references(tmp_path):
    def read(name, lang):
        task = get_task(name)
        data_dir, image_dir, _ = _benchmark(tmp_path, name)
        return task.read(data_dir, image_dirs_from_arg(image_dir), lang, task.default_splits[0]).examples

    assert [e.references for e in read("xvnli", "fr")] == [["no"], ["yes"]]
    assert [e.references for e in read("marvl", "zh")] == [["no"], ["yes"]]
    assert read("maxm", "iw")[0].references == ["rouge", "rouge vif"]  # processed_answers
    assert read("xm3600", "en")[1].references == ["a red circle 1", "a picture"]  # the raw "caption" field
    xgqa = read("xgqa", "de")
    assert xgqa[0].fields == {"question": "Wer trägt das Kleid?"} and xgqa[0].references == ["women"]
    assert {e.id for e in read("xflickrco", "de")} == {"1007129816.jpg", "COCO_val2014_000000392892.jpg"}


def test_malformed_lines_and_missing_images_are_counted_not_dropped(tmp_path):
    task = get_task("xvnli")
    data_dir, image_dir, _ = _benchmark(tmp_path, "xvnli")
    path = tmp_path / "xvnli" / "annotations" / "fr" / "test.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.append('{"gold_label": "neutral", "sentence2": "cut off')  # not JSON
    lines.append(json.dumps({"gold_label": "neutral", "pairID": "x#1", "Flikr30kID": "1"}))  # no sentence2
    lines.append(
        json.dumps({"gold_label": "neutral", "sentence2": "S", "pairID": "x#2", "Flikr30kID": "404"})
    )  # no image
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = task.read(data_dir, image_dirs_from_arg(image_dir), "fr", "test")
    kinds = sorted(p.kind for p in data.problems)
    assert kinds == ["malformed_line", "malformed_line", "missing_image", "no_gold_label"]
    assert data.n_rows == 6 and len(data.examples) == 2
    missing = next(p for p in data.problems if p.kind == "missing_image")
    assert missing.where == "x#2" and "404.jpg" in missing.detail


# ================================================================================================ command line
@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory):
    """Saved tiny models: mt5 (encoder-decoder) and llama (decoder-only)."""
    register_auto_classes()
    dirs = {}
    for family in ("mt5", "llama"):
        model, processor = build(family)
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        dirs[family] = str(folder)
    return dirs


@pytest.fixture
def count_generate(monkeypatch):
    calls = []
    original = MBlipForConditionalGeneration.generate

    def counting(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MBlipForConditionalGeneration, "generate", counting)
    return calls


def _argv(model_dir, task, data_dir, image_dir, languages, output_dir, *extra):
    return [
        "--model",
        model_dir,
        "--task",
        task,
        "--languages",
        languages,
        "--data_dir",
        data_dir,
        "--image_dir",
        image_dir,
        "--output_dir",
        str(output_dir),
        "--batch_size",
        "2",
        "--num_beams",
        "2",
        "--max_new_tokens",
        "4",
        *extra,
    ]


EXPECTED_UNITS = {
    "xm3600": ["test/de", "test/en"],
    "xflickrco": ["test/de", "test/en"],
    "xgqa": ["test/de", "test/en"],
    "maxm": ["test/fr", "test/iw"],
    "xvnli": ["test/fr"],
    "marvl": ["test/zh"],
    "pope": ["random/en", "popular/en", "adversarial/en"],
}


@pytest.mark.parametrize("task_name", sorted(WRITERS))
def test_every_task_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dirs, count_generate, task_name):
    data_dir, image_dir, languages = _benchmark(tmp_path, task_name)
    out = tmp_path / "out"
    results = main(_argv(tiny_model_dirs["mt5"], task_name, data_dir, image_dir, languages, out))
    task = get_task(task_name)

    assert list(results) == EXPECTED_UNITS[task_name]
    for key, result in results.items():
        split, lang = key.split("/")
        assert result["n_scored"] == len(task.read(data_dir, image_dirs_from_arg(image_dir), lang, split).examples)
        assert set(result["metrics"]) >= {task.primary_metric}
        assert all(0.0 <= v <= 1000.0 for v in result["metrics"].values())
        lines = (out / task_name / f"predictions_{split}_{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == result["n_scored"]
        assert all(isinstance(r["prediction"], str) and r["prompt"] for r in records)
        on_disk = json.loads((out / task_name / f"results_{split}_{lang}.json").read_text(encoding="utf-8"))
        assert on_disk["metrics"] == result["metrics"]
    # The paper's prompt, filled in; the overridden decoding settings reached generate.
    first = json.loads(
        (out / task_name / f"predictions_{EXPECTED_UNITS[task_name][0].replace('/', '_')}.jsonl")
        .read_text()
        .splitlines()[0]
    )
    if task_name == "xgqa":
        assert first["prompt"] == "Question: Wer trägt das Kleid? Short answer in English:"
    if task_name == "xm3600":
        assert first["prompt"] == "Caption in German: "
    if task_name == "marvl":
        assert count_generate[0]["pixel_values"].shape[1] == 2  # both images of each pair
    assert all(c["num_beams"] == 2 and c["max_new_tokens"] == 4 and c["do_sample"] is False for c in count_generate)
    # Reports: the task's table and chart, the folder's model-index.
    table = (out / task_name / "results.md").read_text(encoding="utf-8")
    assert "| **avg** |" in table
    assert (out / task_name / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import yaml

    index = yaml.safe_load((out / "model-index.yaml").read_text(encoding="utf-8"))
    entries = index["model-index"][0]["results"]
    assert len(entries) == len(results)
    assert {e["dataset"]["config"] for e in entries} == {k.split("/")[1] for k in results}


def test_scores_are_computed_from_the_generated_text(tmp_path, tiny_model_dirs, monkeypatch):
    """With a generate that always writes the same text, every metric is known from the gold data."""
    from mblip.data.languages import LANGID_IDENTIFIER
    from mblip.evaluation.metrics import caption_scores, language_fidelity
    from mblip.processing_mblip import MBlipProcessor

    tokenizer = MBlipProcessor.from_pretrained(tiny_model_dirs["mt5"]).tokenizer
    answer = {"text": "yes"}

    def fixed_text(self, pixel_values=None, **kwargs):
        ids = tokenizer(answer["text"], add_special_tokens=False)["input_ids"]
        return torch.tensor([ids] * pixel_values.shape[0])

    monkeypatch.setattr(MBlipForConditionalGeneration, "generate", fixed_text)
    out = tmp_path / "out"

    data_dir, image_dir, _ = _benchmark(tmp_path, "pope")
    pope = main(_argv(tiny_model_dirs["mt5"], "pope", data_dir, image_dir, "en", out, "--split", "random"))["random/en"]
    assert pope["metrics"] == pytest.approx(
        {
            "acc": 50.0,
            "relaxed_acc": 50.0,
            "pope_accuracy": 50.0,
            "pope_precision": 50.0,
            "pope_recall": 100.0,
            "pope_f1": 200 / 3,
            "pope_yes_ratio": 100.0,
        }
    )
    data_dir, image_dir, _ = _benchmark(tmp_path, "xvnli")
    assert main(_argv(tiny_model_dirs["mt5"], "xvnli", data_dir, image_dir, "fr", out))["test/fr"]["metrics"] == {
        "acc": 50.0,
        "relaxed_acc": 50.0,
    }

    answer["text"] = "a red circle 1"  # the first reference of the second English XM3600 image
    data_dir, image_dir, _ = _benchmark(tmp_path, "xm3600")
    result = main(_argv(tiny_model_dirs["mt5"], "xm3600", data_dir, image_dir, "en", out))["test/en"]
    predictions, references = ["a red circle 1"] * 3, [[f"a red circle {i}", "a picture"] for i in range(3)]
    expected = caption_scores(predictions, references, "en")
    assert result["metrics"]["cider"] == pytest.approx(100 * expected["cider"]) and result["metrics"]["cider"] > 10
    assert result["metrics"]["bleu4"] == pytest.approx(100 * expected["bleu4"])
    assert result["metrics"]["lang_fidelity"] == pytest.approx(100 * language_fidelity(predictions, "en"))
    # Language fidelity names its identifier, in the results and in the table; other tasks have none.
    assert result["language_identifier"] == LANGID_IDENTIFIER and pope["language_identifier"] is None
    table = (out / "xm3600" / "results.md").read_text(encoding="utf-8")
    assert f"Language fidelity: identified by `{LANGID_IDENTIFIER}`." in table


def test_decoder_only_model_and_model_index_over_tasks(tmp_path, tiny_model_dirs):
    out = tmp_path / "out"
    data_dir, image_dir, _ = _benchmark(tmp_path, "xgqa")
    main(_argv(tiny_model_dirs["llama"], "xgqa", data_dir, image_dir, "en", out))
    data_dir, image_dir, _ = _benchmark(tmp_path, "xvnli")
    main(_argv(tiny_model_dirs["llama"], "xvnli", data_dir, image_dir, "fr", out))
    import yaml

    index = yaml.safe_load((out / "model-index.yaml").read_text(encoding="utf-8"))
    entries = index["model-index"][0]["results"]
    assert [(e["dataset"]["type"], e["dataset"]["config"]) for e in entries] == [("xgqa", "en"), ("xvnli", "fr")]
    assert entries[0]["task"]["type"] == "visual-question-answering"
    assert {m["type"] for m in entries[1]["metrics"]} == {"acc", "relaxed_acc"}
    combined = (out / "results.md").read_text(encoding="utf-8")
    assert "## xGQA" in combined and "## XVNLI" in combined


def test_quantized_llm_through_bitsandbytes(tmp_path, tiny_model_dirs):
    import bitsandbytes as bnb

    from mblip.evaluation.run import ModelArguments, load_model

    model, _, device = load_model(ModelArguments(model=tiny_model_dirs["mt5"], load_in_4bit=True))
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.language_model.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.vision_model.modules())
    data_dir, image_dir, _ = _benchmark(tmp_path, "xvnli")
    result = main(_argv(tiny_model_dirs["mt5"], "xvnli", data_dir, image_dir, "fr", tmp_path / "out", "--load_in_8bit"))
    assert result["test/fr"]["quantization"] == "8-bit LLM" and result["test/fr"]["n_scored"] == 2


def test_resume_generates_nothing_new(tmp_path, tiny_model_dirs, count_generate, caplog):
    data_dir, image_dir, _ = _benchmark(tmp_path, "xgqa")
    out = tmp_path / "out"
    argv = _argv(tiny_model_dirs["mt5"], "xgqa", data_dir, image_dir, "de", out, "--batch_size", "1")
    first = main(argv)
    predictions = out / "xgqa" / "predictions_test_de.jsonl"
    assert len(count_generate) == 2
    before = predictions.read_bytes()

    with caplog.at_level(logging.INFO, logger="eval"):
        second = main(argv)
    assert len(count_generate) == 2  # nothing generated again
    assert predictions.read_bytes() == before
    assert "all 2 predictions already in" in caplog.text
    assert second["test/de"]["metrics"] == first["test/de"]["metrics"]

    # An interrupted run: one prediction lost and the last line cut mid-write. Only the lost one is generated, and
    # the cut line is dropped: the file stays one JSON object per line.
    lines = before.decode().splitlines()
    predictions.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2], encoding="utf-8")
    third = main(argv)
    assert len(count_generate) == 3
    records = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == ["201640614", "2062325"]
    assert third["test/de"]["n_scored"] == 2


@pytest.mark.parametrize("tail", ["glued", "cut-utf8"])
def test_resume_drops_a_torn_tail_of_a_partial_file(tmp_path, tiny_model_dirs, count_generate, caplog, tail):
    """A kill (or a full disk) leaves the last line without its newline, perhaps cut inside a UTF-8 character."""
    data_dir, image_dir, _ = _benchmark(tmp_path, "xgqa")
    out = tmp_path / "out"
    argv = _argv(tiny_model_dirs["mt5"], "xgqa", data_dir, image_dir, "de", out, "--batch_size", "1")
    main(argv)
    predictions = out / "xgqa" / "predictions_test_de.jsonl"
    lines = predictions.read_bytes().splitlines(keepends=True)
    second = json.dumps({**json.loads(lines[1]), "prediction": "हिन्दी"}, ensure_ascii=False).encode()
    torn = second if tail == "glued" else second[: second.index("न्".encode()) + 1]
    partial = predictions.with_name(predictions.name + ".partial")
    partial.write_bytes(lines[0] + torn)
    predictions.unlink()
    with caplog.at_level(logging.INFO):
        result = main(argv)["test/de"]
    assert len(count_generate) == 3  # two at first, then only the torn one
    records = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == ["201640614", "2062325"] and not partial.exists()
    assert result["n_scored"] == 2
    assert str(partial) in caplog.text and f"byte offset {len(lines[0])}" in caplog.text


def test_resume_refuses_predictions_of_another_model_at_the_same_path(tmp_path, tiny_model_dirs):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["mt5"], model)
    data_dir, image_dir, _ = _benchmark(tmp_path, "xgqa")
    out = tmp_path / "out"
    argv = _argv(str(model), "xgqa", data_dir, image_dir, "en", out)
    main(argv)
    # The model was retrained into the same folder: same path, other weights.
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"(?s)predictions_test_en.jsonl was made with other settings.*model_identity"):
        main(argv)
    assert main([*argv, "--overwrite"])["test/en"]["n_scored"] == 2


def test_resume_refuses_predictions_made_with_other_settings(tmp_path, tiny_model_dirs):
    data_dir, image_dir, _ = _benchmark(tmp_path, "xgqa")
    out = tmp_path / "out"
    main(_argv(tiny_model_dirs["mt5"], "xgqa", data_dir, image_dir, "en", out))
    with pytest.raises(ValueError, match="(?s)other settings.*prompt_template.*--overwrite to start over"):
        main(_argv(tiny_model_dirs["mt5"], "xgqa", data_dir, image_dir, "en", out, "--prompt", "Q: {question} A:"))
    main(
        _argv(
            tiny_model_dirs["mt5"],
            "xgqa",
            data_dir,
            image_dir,
            "en",
            out,
            "--prompt",
            "Q: {question} A:",
            "--overwrite_output",  # the deprecated name of --overwrite still works
        )
    )
    record = json.loads((out / "xgqa" / "predictions_test_en.jsonl").read_text().splitlines()[0])
    assert record["prompt"] == "Q: Who wears the dress? A:"


def test_missing_image_is_counted_and_reported(tmp_path, tiny_model_dirs, caplog):
    data_dir, image_dir, _ = _benchmark(tmp_path, "xm3600")
    (tmp_path / "xm3600" / "images" / "d4e5f6.jpg").unlink()
    out = tmp_path / "out"
    argv = _argv(tiny_model_dirs["mt5"], "xm3600", data_dir, image_dir, "en", out)
    with pytest.raises(
        ValueError, match=r"1 of 3 rows \(33.3%\) are skipped, more than --max_bad_rows=0.05.*XM3600 test/en"
    ):
        main(argv)  # 1 of 3 is over the default 5% threshold
    with caplog.at_level(logging.WARNING, logger="eval"):
        result = main([*argv, "--max_bad_rows", "0.5"])["test/en"]
    assert result["n_scored"] == 2 and result["n_skipped"] == 1 and result["complete"] is False
    assert result["skipped"] == {"missing_image": 1}
    assert result["skipped_examples"][0]["where"] == "d4e5f6"
    assert "missing_image" in caplog.text and "d4e5f6" in caplog.text
    assert "2 of 3 rows scored (skipped missing_image: 1)" in (out / "xm3600" / "results.md").read_text()


def test_unreadable_image_is_skipped_not_replaced(tmp_path, tiny_model_dirs, count_generate):
    data_dir, image_dir, _ = _benchmark(tmp_path, "pope")
    (tmp_path / "pope" / "val2014" / "COCO_val2014_000000548882.jpg").write_bytes(b"not an image")
    result = main(
        _argv(
            tiny_model_dirs["mt5"],
            "pope",
            data_dir,
            image_dir,
            "en",
            tmp_path / "out",
            "--split",
            "random",
            "--max_bad_rows",
            "1",
        )
    )["random/en"]
    assert count_generate == []  # no black stand-in image was captioned
    assert result["skipped"] == {"unreadable_image": 2} and result["n_scored"] == 0 and result["metrics"] == {}


def test_translated_prompts_and_prompt_file(tmp_path, tiny_model_dirs):
    data_dir, image_dir, _ = _benchmark(tmp_path, "xgqa")
    out = tmp_path / "out"
    main(_argv(tiny_model_dirs["mt5"], "xgqa", data_dir, image_dir, "de", out, "--prompt_language", "target"))
    record = json.loads((out / "xgqa" / "predictions_test_de.jsonl").read_text().splitlines()[0])
    assert record["prompt"] == "Frage: Wer trägt das Kleid? Kurze Antwort auf Englisch:"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"de": "Frage: {} Antwort:"}), encoding="utf-8")
    main(_argv(tiny_model_dirs["mt5"], "xgqa", data_dir, image_dir, "de", tmp_path / "out2", "--prompt", str(prompts)))
    record = json.loads((tmp_path / "out2" / "xgqa" / "predictions_test_de.jsonl").read_text().splitlines()[0])
    assert record["prompt"] == "Frage: Wer trägt das Kleid? Antwort:"


# ================================================================================================ argument errors
BASE = ["--model", "m", "--data_dir", "d", "--image_dir", "i"]


def test_unknown_task_lists_the_supported_ones():
    with pytest.raises(
        ValueError, match="Unknown task 'okvqa'. Supported tasks: xm3600, xflickrco, xgqa, maxm, xvnli, marvl, pope"
    ):
        parse_args([*BASE, "--task", "okvqa"])


def test_unknown_language_lists_the_supported_ones():
    with pytest.raises(
        ValueError, match="Unknown language 'fr' for xGQA. Supported languages: bn, de, en, id, ko, pt, ru, zh"
    ):
        parse_args([*BASE, "--task", "xgqa", "--languages", "de,fr"])


def test_inconsistent_options_are_rejected():
    with pytest.raises(ValueError, match="not both"):
        parse_args([*BASE, "--task", "xgqa", "--load_in_8bit", "--load_in_4bit"])
    with pytest.raises(ValueError, match="allowed placeholders"):
        parse_args([*BASE, "--task", "xgqa", "--prompt", "Q: {query}"])
    with pytest.raises(ValueError, match="No translated XM3600 prompt for 'quz'"):
        parse_args([*BASE, "--task", "xm3600", "--languages", "quz", "--prompt_language", "target"])
    with pytest.raises(ValueError, match="Unknown split"):
        parse_args([*BASE, "--task", "pope", "--split", "hard"])


def test_paper_defaults_and_aliases():
    _, args = parse_args([*BASE, "--task", "maxm", "--languages", "he,fr"])
    assert args.language_list == ["iw", "fr"]
    from mblip.evaluation.run import generation_kwargs

    assert generation_kwargs(get_task("xgqa"), args) == {
        "num_beams": 5,
        "max_new_tokens": 10,
        "min_new_tokens": 1,
        "length_penalty": -1.0,
        "do_sample": False,
    }
    assert generation_kwargs(get_task("xm3600"), args)["max_new_tokens"] == 50
    _, pope = parse_args([*BASE, "--task", "pope"])
    assert pope.split_list == ["random", "popular", "adversarial"] and pope.language_list == ["en"]


def test_arguments_from_a_yaml_file(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("model: m\ntask: xvnli\ndata_dir: d\nimage_dir: i\nlanguages: ar,ru\nload_in_8bit: true\n")
    model_args, args = parse_args([str(config)])
    assert model_args.load_in_8bit and args.language_list == ["ar", "ru"]
