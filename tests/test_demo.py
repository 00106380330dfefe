"""The offline demo (demo/world.py, demo/mix.py, demo/realign.py): its world, its data files and a quick run end to end."""

import json
import subprocess
import sys
import unicodedata

import pytest
import torch
from PIL import Image

from mblip.demo import world
from mblip.demo.mix import caption_prompt, image_rows, question_prompt, text_rows
from mblip.demo.world import LANGUAGES, SCRIPTS, Scene, Thing


def script_of(text: str) -> set[str]:
    """Unicode script families of the letters in `text` (from the first word of their character names)."""
    names = {unicodedata.name(c).split()[0] for c in text if c.isalpha()}
    return {"Han" if n == "CJK" else n.capitalize() for n in names}


# ------------------------------------------------------------------------------------------------ the world
def test_same_seed_same_world_other_seed_other_world():
    train_a, test_a = world.make_scenes(3, 50, 10)
    train_b, test_b = world.make_scenes(3, 50, 10)
    assert train_a == train_b and test_a == test_b
    for a, b in zip(train_a[:10] + test_a, train_b[:10] + test_b):
        assert world.render(a).tobytes() == world.render(b).tobytes()
        assert [world.caption(a, lang) for lang in LANGUAGES] == [world.caption(b, lang) for lang in LANGUAGES]
    assert image_rows(train_a, 3, "mix") == image_rows(train_b, 3, "mix")
    assert text_rows(train_a, 3) == text_rows(train_b, 3)
    other, _ = world.make_scenes(4, 50, 10)
    assert [s.layout for s in other] != [s.layout for s in train_a]


def test_test_layouts_never_appear_in_training():
    train, test = world.make_scenes(0, 500, 50)
    assert not {s.layout for s in train} & {s.layout for s in test}


def test_rendered_shapes_sit_in_their_slots():
    scene = Scene("x", (Thing("red", "square", "left"), Thing("blue", "circle", "bottom")))
    image = world.render(scene)
    size = world.IMAGE_SIZE
    assert image.getpixel((size // 6, size // 2)) == world.COLOURS["red"]
    assert image.getpixel((size // 2, 5 * size // 6)) == world.COLOURS["blue"]
    assert image.getpixel((size // 2, size // 6)) == world.BACKGROUND  # top slot empty
    assert image.getpixel((size // 2, size // 2)) == world.BACKGROUND


def test_at_least_six_languages_in_at_least_three_scripts_each_written_in_its_script():
    assert len(LANGUAGES) >= 6 and len(set(SCRIPTS.values())) >= 3
    scenes, _ = world.make_scenes(1, 30, 0)
    expected = {
        "Latin": {"Latin"},
        "Cyrillic": {"Cyrillic"},
        "Han": {"Han"},
        "Hangul": {"Hangul"},
        "Bengali": {"Bengali"},
    }
    for lang in LANGUAGES:
        texts = [world.caption(s, lang) for s in scenes]
        texts += [q.text(lang) for s in scenes for q in world.questions(s, 5, world.stable_rng(0, lang))]
        assert set().union(*map(script_of, texts)) == expected[SCRIPTS[lang]], lang
    # The languages really differ: no caption is shared between two of them.
    captions = [world.caption(s, lang) for s in scenes for lang in LANGUAGES]
    assert len(set(captions)) == len(captions)


def test_captions_and_questions_follow_each_languages_grammar():
    scene = Scene(
        "x", (Thing("red", "circle", "top"), Thing("green", "triangle", "left"), Thing("blue", "square", "bottom"))
    )
    assert (
        world.caption(scene, "en")
        == "a red circle at the top, a green triangle on the left and a blue square at the bottom"
    )
    assert world.caption(scene, "de") == "ein roter Kreis oben, ein grünes Dreieck links und ein blaues Quadrat unten"
    assert world.caption(scene, "ru") == "красный круг сверху, зелёный треугольник слева и синий квадрат снизу"
    assert world.caption(scene, "zh") == "上面有一个红色的圆形，左边有一个绿色的三角形，下面有一个蓝色的正方形"
    circle = world.Question("exists", "no", "red", "circle")
    assert circle.text("de") == "Gibt es einen roten Kreis?"  # accusative masculine
    assert world.Question("where", "left", "green", "triangle").text("de") == "Wo ist das grüne Dreieck?"
    assert world.Question("colour", "red", position="left").text("bn") == "বাঁদিকের আকৃতিটি কী রঙের?"


def test_questions_have_the_right_answers():
    scene = Scene(
        "x", (Thing("red", "circle", "top"), Thing("red", "circle", "left"), Thing("blue", "square", "right"))
    )
    rng = world.stable_rng(0, "t")
    assert world.ask(scene, "count", rng).answer == "3"
    for _ in range(20):
        q = world.ask(scene, "exists", rng)
        assert q.answer == ("yes" if scene.count(q.colour, q.shape) else "no")
        where = world.ask(scene, "where", rng)
        assert (where.colour, where.shape, where.answer) == ("blue", "square", "right")  # the only unique shape
        colour = world.ask(scene, "colour", rng)
        assert colour.answer == scene.at(colour.position).colour


# ------------------------------------------------------------------------------------------------ the files
def test_benchmark_files_are_read_by_eval_unchanged(tmp_path):
    from mblip.evaluation.tasks import get_task

    _, test = world.make_scenes(0, 0, 7)
    world.save_images(test, tmp_path / "images")
    world.write_xm3600(test, tmp_path / "xm3600" / "captions.jsonl")
    world.write_xgqa(test, tmp_path / "xgqa", seed=0, per_scene=2)
    for lang in LANGUAGES:
        captions = get_task("xm3600").read(tmp_path / "xm3600", [tmp_path / "images"], lang, "test")
        assert not captions.problems and len(captions.examples) == 7
        assert captions.examples[0].references == [world.caption(test[0], lang)]
        questions = get_task("xgqa").read(tmp_path / "xgqa", [tmp_path / "images"], lang, "test")
        assert not questions.problems and len(questions.examples) == 14
    # Same question ids in every language, English answers: xGQA's layout.
    ids = [list(json.loads((tmp_path / "xgqa" / "few_shot" / lang / "test.json").read_text())) for lang in LANGUAGES]
    assert all(i == ids[0] for i in ids)


def test_training_prompts_are_the_evaluation_prompts():
    from mblip.evaluation.tasks import Example, get_task
    from mblip.prompts import render

    task = get_task("xm3600")
    assert caption_prompt("pt") == render(task.prompt, Example("", [], {}, []), task.language_name("pt"))
    assert caption_prompt("de") == "Caption in German: "
    assert (
        question_prompt("Wie viele Formen gibt es?") == "Question: Wie viele Formen gibt es? Short answer in English:"
    )
    rows = image_rows(world.make_scenes(0, 200, 0)[0], 0, "mix")
    assert {r["lang"] for r in rows} == set(LANGUAGES)
    assert {r["context"] for r in rows if r["task"] == "caption"} >= {caption_prompt(lang) for lang in LANGUAGES}
    assert all(
        r["label"]
        in world.NUMBERS.values() | world.COLOURS.keys() | set(world.SHAPES) | set(world.POSITIONS) | {"yes", "no"}
        for r in rows
        if r["task"].startswith("vqa")
    )


def test_the_multilingual_lm_never_sees_an_image():
    rows = text_rows(world.make_scenes(0, 20, 0)[0], 0)
    assert rows and all(set(r) == {"context", "label", "task"} for r in rows)


# ------------------------------------------------------------------------------------------------ the demo
def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "mblip.demo.realign", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for option in ("--output_dir", "--quick", "--english_pivot", "--seed"):
        assert option in result.stdout


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from mblip.demo.realign import main

    output_dir = tmp_path_factory.mktemp("demo") / "out"
    return output_dir, main(output_dir=str(output_dir), quick=True, seed=0)


def test_quick_demo_writes_a_model_repository_that_loads_and_generates(quick_demo):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    output_dir, _ = quick_demo
    model_dir = output_dir / "mblip"
    for name in ("config.json", "processor_config.json", "README.md", "modeling_mblip.py", "trainer_state.json"):
        assert (model_dir / name).is_file(), name
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    assert model.config.text_config.model_type == "bloom"  # the multilingual LM, not the English one
    image = Image.open(next((output_dir / "world" / "images").glob("test-*.jpg")))
    inputs = processor(
        images=[image, image],
        text=["Caption in German: ", "Question: Wie viele Formen gibt es? Short answer in English:"],
    )
    output = model.generate(**inputs, max_new_tokens=5, min_new_tokens=1)
    assert output.shape[0] == 2 and output.shape[1] >= 1
    # The parts it was assembled from are ordinary transformers folders.
    assert json.loads((output_dir / "blip2-english" / "config.json").read_text())["model_type"] == "blip-2"
    assert json.loads((output_dir / "multilingual-lm" / "config.json").read_text())["model_type"] == "bloom"


def test_quick_demo_reports_every_language_and_writes_png_charts(quick_demo):
    output_dir, report = quick_demo
    scores = report["scores"]["mblip"]
    assert len(scores) >= 6 and len(set(report["scripts"].values())) >= 3
    for lang in LANGUAGES:
        assert {"cider", "lang_fidelity", "vqa_acc"} <= set(scores[lang]), lang
        assert (output_dir / "eval" / "mblip" / "xm3600" / f"results_test_{lang}.json").is_file()
        assert (output_dir / "eval" / "mblip" / "xgqa" / f"results_test_{lang}.json").is_file()
        assert report["samples"]["mblip"][lang], lang
    for name in ("loss.png", "scores.png"):
        with Image.open(output_dir / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert len(report["losses"]) == 4  # 1a, 1b, 2, 3
    assert json.loads((output_dir / "report.json").read_text())["languages"] == list(LANGUAGES)


def test_quick_demo_resumes_without_redoing_work_and_refuses_other_settings(quick_demo):
    from mblip.demo.realign import main

    output_dir, _ = quick_demo
    marker = (output_dir / "mblip" / "config.json").stat().st_mtime_ns
    results = (output_dir / "eval" / "mblip" / "xgqa" / "results_test_de.json").stat().st_mtime_ns
    report = main(output_dir=str(output_dir), quick=True, seed=0)
    assert (output_dir / "mblip" / "config.json").stat().st_mtime_ns == marker
    assert (output_dir / "eval" / "mblip" / "xgqa" / "results_test_de.json").stat().st_mtime_ns == results
    assert set(report["timings"]) == {"world", "report", "total"}  # nothing was trained or evaluated again
    with pytest.raises(ValueError, match="other settings"):
        main(output_dir=str(output_dir), quick=True, seed=1)


def test_quick_demo_is_reproducible_run_to_run(quick_demo, tmp_path):
    """The README's demo table holds only if a rerun prints the same: same seed, same weights, bit for bit."""
    from safetensors.torch import load_file

    from mblip.demo.realign import main

    output_dir, report = quick_demo
    again = main(output_dir=str(tmp_path / "again"), quick=True, seed=0)
    assert again["scores"] == report["scores"]
    for name in ("mblip", "blip2-english", "multilingual-lm"):
        first = {p.name for p in (output_dir / name).glob("*.safetensors")}
        assert first, name
        for file in sorted(first):
            a, b = load_file(output_dir / name / file), load_file(tmp_path / "again" / name / file)
            assert a.keys() == b.keys(), (name, file)
            for key in a:
                assert torch.equal(a[key], b[key]), (name, file, key)
