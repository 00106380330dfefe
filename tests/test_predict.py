"""predict.py: folders and lists of images -> JSONL, batched like per-image generation, unreadable files counted and
reported, resumable output, clear errors."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build
from PIL import Image

from mblip import predict
from mblip.cards import model_card
from mblip.hub import save_model_repository
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.processing_mblip import MBlipProcessor


GOOD = ["a_red.png", "b_grey.jpg", "c_alpha.png", "d_palette.gif", "e_noise.png"]
CORRUPT = "broken.jpg"
TRUNCATED = "truncated.png"
NOT_AN_IMAGE = "notes.txt"
FAST = ["--num_beams", "1", "--max_new_tokens", "6"]


def speaking_model(family: str = "mt5", seed: int = 0):
    """A tiny random mBLIP whose greedy text differs from image to image and is printable.

    At the default init (std 0.02) the Q-Former barely sees the image, so every image would get the same text and a
    test could not tell images apart; larger vision-stack weights make the text depend on the pixels. Special,
    blank and unprintable tokens get a zero output row (logit 0, below the best of the random rows), so the text is
    never empty and a browser shows it verbatim.
    """
    model, processor = build(family, seed)
    tokenizer = processor.tokenizer
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.vision_model, model.qformer, model.language_projection):
            for parameter in module.parameters():
                if parameter.ndim >= 2:
                    parameter.normal_(0.0, 0.3, generator=generator)
        silent = [
            i
            for i in range(len(tokenizer))
            if i in tokenizer.all_special_ids
            or not tokenizer.decode([i]).strip()
            or not tokenizer.decode([i]).isprintable()
            or "\ufffd" in tokenizer.decode([i])
        ]
        model.get_output_embeddings().weight[silent] = 0
    return model, processor


def direct(model, processor, image_path, prompt, **generation_kwargs) -> str:
    """The reference: one image through the processor and model.generate by hand, as the README shows."""
    with Image.open(image_path) as image:
        inputs = processor(images=[image.copy()], text=[prompt])
    output = model.generate(**inputs, **generation_kwargs)
    return processor.batch_decode(output, skip_special_tokens=True)[0].strip()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, processor = speaking_model()
    path = tmp_path_factory.mktemp("model") / "mblip"
    save_model_repository(model, processor, path, model_card("Tiny test mBLIP", "Random weights.", base_models=[]))
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return MBlipForConditionalGeneration.from_pretrained(model_dir).eval(), MBlipProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Five readable images in different modes and sizes, a corrupt and a truncated one, a text file, a hidden file
    and a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    Image.new("RGB", (40, 30), (220, 30, 30)).save(root / GOOD[0])
    Image.new("L", (20, 50), 90).save(root / GOOD[1])
    Image.new("RGBA", (32, 32), (0, 0, 250, 128)).save(root / GOOD[2])
    Image.new("RGB", (30, 30), (0, 200, 0)).convert("P").save(root / GOOD[3])
    Image.effect_noise((36, 36), 80).convert("RGB").save(root / GOOD[4])
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff this is not really a jpeg")
    png = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(png, "PNG")
    (root / TRUNCATED).write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / NOT_AN_IMAGE).write_text("shopping list")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "sub").mkdir()
    Image.new("RGB", (30, 30), (250, 250, 0)).save(root / "sub" / "f_yellow.png")
    return root


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def run(argv) -> int:
    return predict.main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------------- end to end
def test_folder_batched_equals_per_image_generation_and_skips_unreadable_files(
    model_dir, loaded, image_dir, tmp_path, caplog
):
    out = tmp_path / "preds.jsonl"
    prompt = "Caption the image in German."
    argv = [
        "--model",
        model_dir,
        "--image_dir",
        image_dir,
        "--prompt",
        prompt,
        "--batch_size",
        3,
        "--num_beams",
        2,
        "--max_new_tokens",
        6,
        "--output",
        out,
        "--max_unreadable_fraction",  # the deprecated name of --max_bad_rows still works
        0.3,
    ]
    with caplog.at_level("INFO"):
        assert run(argv) == 0

    rows = read_jsonl(out)
    assert [Path(r["image"]).name for r in rows] == GOOD  # sorted, subfolder and non-images left out
    assert all(list(r) == ["image", "prompt", "text"] and r["prompt"] == prompt for r in rows)
    model, processor = loaded
    expected = [direct(model, processor, r["image"], prompt, num_beams=2, max_new_tokens=6) for r in rows]
    assert [r["text"] for r in rows] == expected
    assert len(set(expected)) >= 3 and all(expected)  # the test model tells images apart, so the check has teeth
    assert not out.with_name("preds.jsonl.partial").exists()

    log = caplog.text
    assert "Skipped 2 unreadable images" in log and CORRUPT in log and TRUNCATED in log and "truncated" in log
    assert "1 files that are not images" in log and NOT_AN_IMAGE in log and ".DS_Store" not in log


def test_report_counts_and_stdout_rows(model_dir, image_dir, capsys):
    args = predict.PredictArguments(
        model=str(model_dir),
        image_dir=str(image_dir),
        recursive=True,
        lang="fr",
        batch_size=4,
        num_beams=1,
        max_new_tokens=6,
        max_bad_rows=0.3,
    )
    report = predict.predict(args)
    assert report.written == 6 and report.resumed == 0
    assert sorted(Path(p).name for p, _ in report.unreadable) == [CORRUPT, TRUNCATED]
    assert [Path(p).name for p in report.not_images] == [NOT_AN_IMAGE]
    assert report.unreadable_fraction == pytest.approx(2 / 8) == report.bad_rows.fraction
    assert report.bad_rows.to_dict()["by_reason"] and report.bad_rows.total == 8
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["image"]).name for r in rows] == GOOD + ["f_yellow.png"]
    assert {r["prompt"] for r in rows} == {"Caption the image in French."}


def test_prompts_file_gives_each_image_its_prompt_in_padded_batches(model_dir, loaded, image_dir, tmp_path):
    # Prompts of different lengths are padded within a batch; each row must still equal its image run alone.
    questions = tmp_path / "questions.jsonl"
    rel = Path("..") / image_dir.name
    lines = [
        {"image": str(image_dir / GOOD[0]), "prompt": "Question: how many circles are there? Short answer in English:"},
        {"image": str(image_dir / GOOD[1]), "prompt": "zwei"},
        {"image": str(image_dir / GOOD[4])},  # no prompt: --lang's
        {"image": str(rel / GOOD[2]), "prompt": "Caption the image in German."},  # relative to the file
        {"image": str(image_dir / "missing.png"), "prompt": "zwei"},
    ]
    questions.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    out = tmp_path / "answers.jsonl"
    argv = [
        "--model",
        model_dir,
        "--prompts_file",
        questions,
        "--lang",
        "hi",
        "--batch_size",
        4,
        *FAST,
        "--output",
        out,
        "--max_bad_rows",
        0.25,
    ]
    assert run(argv) == 0
    rows = read_jsonl(out)
    prompts = [line.get("prompt", "Caption the image in Hindi.") for line in lines[:4]]
    assert [r["prompt"] for r in rows] == prompts
    assert rows[3]["image"] == str(tmp_path / rel / GOOD[2])
    model, processor = loaded
    expected = [direct(model, processor, r["image"], r["prompt"], num_beams=1, max_new_tokens=6) for r in rows]
    assert [r["text"] for r in rows] == expected


@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_4bit"])
def test_quantized_loading_quantizes_only_the_llm_and_generates(flag, model_dir, image_dir):
    import bitsandbytes as bnb

    model, processor = predict.load_model(str(model_dir), **{flag: True})
    quantized = [n for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))]
    assert quantized and all(n.startswith("language_model.") for n in quantized)
    with Image.open(image_dir / GOOD[0]) as image:
        texts = predict.generate_texts(
            model, processor, [image, image], ["zwei", "Caption the image in German."], max_new_tokens=4
        )
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# ---------------------------------------------------------------------------------------------------- resume, failure
def killed(out: Path, rows: list[dict], tail: bytes = b"") -> Path:
    """What a kill leaves: OUTPUT.partial with `rows` and a torn `tail`, beside the job's OUTPUT.settings.json."""
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows) + tail)
    out.unlink(missing_ok=True)
    return partial


def test_resume_skips_finished_rows_and_drops_a_cut_off_line(model_dir, image_dir, tmp_path, caplog):
    full = tmp_path / "full.jsonl"
    common = ["--model", model_dir, "--image_dir", image_dir, *FAST, "--max_bad_rows", 0.3]
    assert run([*common, "--output", full]) == 0
    reference = read_jsonl(full)

    # A run killed after two rows, in the middle of writing the third. The marker proves the two are not redone.
    out = tmp_path / "preds.jsonl"
    assert run([*common, "--output", out]) == 0
    done = [{**row, "text": "FROM-AN-EARLIER-RUN"} for row in reference[:2]]
    killed(out, done, b'{"image": "' + reference[2]["image"][:5].encode())
    with caplog.at_level("INFO"):
        assert run([*common, "--output", out]) == 0
    assert read_jsonl(out) == done + reference[2:]
    assert "2 rows already done" in caplog.text and "Dropped the incomplete last line" in caplog.text
    assert not out.with_name("preds.jsonl.partial").exists()

    # A finished file is kept unless --overwrite.
    with pytest.raises(SystemExit) as exit_info:
        run([*common, "--output", out])
    assert exit_info.value.code == 2
    assert run([*common, "--output", out, "--overwrite"]) == 0
    assert read_jsonl(out) == reference


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param("glued", id="last-line-without-newline"),  # the whole row, but not its newline
        pytest.param("cut-utf8", id="tail-cut-inside-a-utf8-character"),  # a full disk on Devanagari output
    ],
)
def test_resume_after_a_torn_last_line_gives_valid_jsonl(model_dir, image_dir, tmp_path, caplog, tail):
    common = ["--model", model_dir, "--image_dir", image_dir, *FAST, "--max_bad_rows", 0.3]
    out = tmp_path / "preds.jsonl"
    assert run([*common, "--output", out]) == 0
    reference = read_jsonl(out)
    done = [{**row, "text": "पहले का पाठ"} for row in reference[:2]]
    third = json.dumps({**reference[2], "text": "हिन्दी"}, ensure_ascii=False).encode()
    torn = third if tail == "glued" else third[: third.index("न्".encode()) + 1]
    if tail == "cut-utf8":
        with pytest.raises(UnicodeDecodeError):
            torn.decode("utf-8")
    partial = killed(out, done, torn)
    offset = partial.stat().st_size - len(torn)
    with caplog.at_level("INFO"):
        assert run([*common, "--output", out]) == 0
    text = out.read_text(encoding="utf-8")  # all UTF-8
    rows = [json.loads(line) for line in text.splitlines()]  # one JSON object per line: nothing glued
    assert rows == done + reference[2:]
    assert f"{partial}" in caplog.text and f"byte offset {offset}" in caplog.text


def test_resume_refuses_a_partial_file_of_another_job(model_dir, image_dir, tmp_path, capsys):
    """Rows of another model, other decoding settings or other images never end up in one file."""
    model_copy = tmp_path / "model"
    shutil.copytree(model_dir, model_copy)
    common = ["--image_dir", image_dir, *FAST, "--max_bad_rows", 0.3]
    out = tmp_path / "preds.jsonl"
    assert run(["--model", model_copy, *common, "--output", out]) == 0
    rows = read_jsonl(out)
    partial = killed(out, rows[:2])

    weights = next(model_copy.glob("*.safetensors"))
    other_images = tmp_path / "other_images"
    other_images.mkdir()
    shutil.copy(next(Path(image_dir).glob("a_*")), other_images)
    changed_model = ["--model", model_copy, *common]
    cases = {
        "num_beams: 1 -> 2": ["--model", model_copy, *common, "--num_beams", "2"],
        "inputs.sha256": ["--model", model_copy, "--image_dir", other_images, *FAST],
        "model_identity": changed_model,
    }
    for difference, argv in cases.items():
        if argv is changed_model:
            os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained
        with pytest.raises(SystemExit) as exit_info:
            run([*argv, "--output", out])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and difference in err and str(partial) in err and "--overwrite" in err, err
        assert read_jsonl(partial) == rows[:2]  # untouched
    assert run([*changed_model, "--output", out, "--overwrite"]) == 0
    assert len(read_jsonl(out)) == len(rows)


def test_a_malformed_line_before_the_end_is_an_error_naming_file_line_and_offset(model_dir, image_dir, tmp_path):
    common = ["--model", model_dir, "--image_dir", image_dir, *FAST, "--max_bad_rows", 0.3]
    out = tmp_path / "preds.jsonl"
    assert run([*common, "--output", out]) == 0
    rows = read_jsonl(out)
    partial = killed(out, rows[:1])
    first = partial.stat().st_size
    with open(partial, "ab") as handle:
        handle.write(b"not json\n" + json.dumps(rows[1]).encode() + b"\n")
    with pytest.raises(ValueError, match=rf"{partial} line 2 \(byte offset {first}\)"):
        args = dict(num_beams=1, max_new_tokens=6, max_bad_rows=0.3)
        predict.predict(
            predict.PredictArguments(model=str(model_dir), image_dir=str(image_dir), output=str(out), **args)
        )


def test_too_many_unreadable_images_fail_and_keep_the_partial_output(model_dir, image_dir, tmp_path, caplog):
    out = tmp_path / "preds.jsonl"
    common = ["--model", model_dir, "--image_dir", image_dir, *FAST, "--output", out]
    with caplog.at_level("INFO"):
        assert run(common) == 1  # 2 of 7 unreadable > the default 0.1
    assert "2 of 7 images (28.6%) are unreadable, more than --max_bad_rows=0.1" in caplog.text
    assert not out.exists() and len(read_jsonl(out.with_name("preds.jsonl.partial"))) == 5
    # Accepting the loss resumes: the resumed rows count in the fraction, and the file is finalised.
    assert run([*common, "--max_bad_rows", 0.3]) == 0
    assert len(read_jsonl(out)) == 5


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [],
            "Pass exactly one of --images FILE..., --image_dir DIR, --prompts_file FILE, --dataset_name NAME or "
            "--data_files FILES (got none)",
        ),
        (["--images", "a.png", "--image_dir", "x"], "(got --images, --image_dir)"),
        (["--images", "a.png", "--prompt", "Hi", "--lang", "de"], "not both (got prompt='Hi', lang='de')"),
        (["--images", "a.png", "--lang", "klingon"], "--lang 'klingon' is not one of mBLIP's 96 languages"),
        (["--images", "a.png", "--batch_size", "0"], "--batch_size must be at least 1, got 0"),
        (["--images", "a.png", "--temperature", "0.7"], "--temperature 0.7 / --top_p 1.0 only apply with --do_sample"),
        (["--images", "a.png", "--do_sample", "--top_p", "1.5"], "--top_p must be in (0, 1], got 1.5"),
        (["--images", "a.png", "--load_in_8bit", "--load_in_4bit"], "--load_in_8bit or --load_in_4bit, not both"),
        (
            ["--images", "a.png", "--dtype", "float64"],
            "--dtype must be one of ['auto', 'bfloat16', 'float16', 'float32'], got 'float64'",
        ),
        (["--images", "a.png", "--recursive"], "--recursive only applies to --image_dir"),
        (
            ["--images", "a.png", "--max_bad_rows", "2"],
            "--max_bad_rows is a fraction in [0, 1], got 2.0",
        ),
    ],
)
def test_inconsistent_options_are_rejected_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_bad_inputs_and_models_get_one_line_errors(model_dir, image_dir, tmp_path, capsys):
    (tmp_path / "blip2").mkdir()
    (tmp_path / "blip2" / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    cases = [
        (
            ["--model", tmp_path / "blip2", "--images", image_dir / GOOD[0]],
            "has model_type 'blip-2'; expected 'mblip' (convert it: python convert_mblip.py --from_blip2",
        ),
        (
            ["--model", model_dir, "--images", image_dir / GOOD[0], tmp_path / "nope.png"],
            "--images: 1 of 2 files do not exist",
        ),
        (["--model", model_dir, "--image_dir", tmp_path / "nowhere"], "is not a folder"),
        (["--model", model_dir, "--prompts_file", image_dir / NOT_AN_IMAGE], "line 1 is not JSON"),
        (
            ["--model", tmp_path / "no-such-model", "--images", image_dir / GOOD[0]],
            "neither a model folder nor a reachable Hub id",
        ),
        (
            ["--model", image_dir / GOOD[0], "--images", image_dir / GOOD[0]],
            "is a file; expected a model folder or a Hub id",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], (argv, err)


def test_missing_default_model_says_to_run_the_demo(image_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no outputs/demo/mblip here
    with pytest.raises(SystemExit) as exit_info:
        run(["--images", image_dir / GOOD[0], "--output", "preds.jsonl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert f"No model at the default {predict.DEFAULT_MODEL}" in err[0]
    assert "`python train_mblip.py`" in err[0] and "--model DIR_OR_HUB_ID" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written before the model was found


def test_language_codes_and_names():
    assert predict.caption_prompt("de") == predict.caption_prompt("GERMAN") == "Caption the image in German."
    assert predict.language_name("iw") == "Hebrew" and len(predict.LANGUAGES) == 96
    with pytest.raises(ValueError, match="'xx' is not one of"):
        predict.language_name("xx")


def test_help_shows_the_options(tmp_path):
    result = subprocess.run(
        [sys.executable, "predict.py", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for option in (
        "--image_dir",
        "--prompts_file",
        "--lang",
        "--batch_size",
        "--load_in_8bit",
        "--max_bad_rows",
        "--overwrite",
    ):
        assert option in result.stdout
    assert "python train_mblip.py" in result.stdout
