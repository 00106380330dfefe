"""convert_mblip.py: BLIP-2 -> mBLIP -> BLIP-2 round trips, parts assembly, Hub-ready folders, clear errors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import PROMPTS, build, make_blip2, random_pixels, save_llm
from huggingface_hub import ModelCard
from transformers import (
    AutoProcessor,
    Blip2ForConditionalGeneration,
    Blip2Processor,
)

from mblip import convert as convert_mblip
from mblip.cards import model_card
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.processing_mblip import MBlipProcessor


def blip2_generate(blip2, blip2_processor, pixels, prompts, **kwargs):
    """New tokens only, from a plain transformers BLIP-2 model (which returns the prompt too for decoder-only LLMs)."""
    enc = blip2_processor(
        images=[torch.zeros(3, 30, 30)] * len(prompts), text=prompts, return_tensors="pt", padding=True
    )
    out = blip2.generate(
        pixel_values=pixels, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs
    )
    if blip2.config.text_config.is_encoder_decoder:
        return out[:, 1:]
    return out[:, enc["input_ids"].shape[1] :]


GENERATION = dict(max_new_tokens=6, do_sample=False, suppress_tokens=[0, 1])  # random models love pad/EOS


@pytest.mark.parametrize("family", ["mt5", "bloom"])
def test_blip2_to_mblip_to_blip2_generates_the_same(family, tmp_path):
    blip2, blip2_processor = make_blip2(family, tmp_path / "blip2")
    assert convert_mblip.main(["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "mblip")]) == 0

    model = MBlipForConditionalGeneration.from_pretrained(tmp_path / "mblip").eval()
    processor = MBlipProcessor.from_pretrained(tmp_path / "mblip")
    assert processor.is_encoder_decoder is (family == "mt5")
    for key, value in blip2.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    pixels = random_pixels(3)
    ours = model.generate(pixel_values=pixels, **processor(text=PROMPTS), **GENERATION)
    theirs = blip2_generate(blip2, blip2_processor, pixels, PROMPTS, **GENERATION)
    assert ours.tolist() == theirs.tolist()
    assert len(set(ours.flatten().tolist())) > 1, "degenerate generations prove nothing"

    # ... and back to plain BLIP-2, loaded without remote code.
    assert convert_mblip.main(["--to_blip2", str(tmp_path / "mblip"), "--output_dir", str(tmp_path / "back")]) == 0
    files = {p.name for p in (tmp_path / "back").iterdir()}
    assert not any(name.endswith("_mblip.py") for name in files)
    back = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    back_processor = AutoProcessor.from_pretrained(tmp_path / "back")
    assert isinstance(back_processor, Blip2Processor) and back_processor.num_query_tokens == 4
    assert back.config.image_token_index == back_processor.tokenizer.convert_tokens_to_ids("<image>")
    again = blip2_generate(back, back_processor, pixels, PROMPTS, **GENERATION)
    assert again.tolist() == ours.tolist()
    assert back_processor.batch_decode(again, skip_special_tokens=True) == processor.batch_decode(
        ours, skip_special_tokens=True
    )


@pytest.mark.parametrize("family", ["mt5", "llama"])
def test_mblip_without_spare_vocabulary_row_exports_to_blip2(family, tmp_path):
    """The tiny tokenizer fills its embedding matrix exactly, so the placeholder token needs a new row."""
    model, processor = build(family)
    from mblip.hub import save_model_repository

    save_model_repository(model, processor, tmp_path / "mblip", model_card("t", "d", []))
    convert_mblip.main(["--to_blip2", str(tmp_path / "mblip"), "--output_dir", str(tmp_path / "back")])
    back = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    back_processor = AutoProcessor.from_pretrained(tmp_path / "back")
    assert back.get_input_embeddings().weight.shape[0] == model.get_input_embeddings().weight.shape[0] + 1
    pixels = random_pixels(3)
    ours = model.generate(pixel_values=pixels, **processor(text=PROMPTS), **GENERATION)
    assert blip2_generate(back, back_processor, pixels, PROMPTS, **GENERATION).tolist() == ours.tolist()


@pytest.mark.parametrize("llm_family", ["bloom", "mt5"])
def test_parts_assembly_keeps_each_part_and_never_loads_the_blip2_llm(llm_family, tmp_path, monkeypatch):
    import safetensors

    blip2, blip2_processor = make_blip2("mt5", tmp_path / "blip2")
    llm, tokenizer = save_llm(llm_family, tmp_path / "llm")

    # Record every tensor the converter reads from the BLIP-2 checkpoint.
    read = []
    real_open = safetensors.safe_open

    class SpyingSafeOpen:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", SpyingSafeOpen)

    rc = convert_mblip.main(
        [
            "--vision_model",
            str(tmp_path / "blip2"),
            "--language_model",
            str(tmp_path / "llm"),
            "--output_dir",
            str(tmp_path / "out"),
            "--projection_init",
            "random",
        ]
    )
    assert rc == 0
    assert read and not any(key.startswith("language_model.") for key in read)
    assert all(key.startswith(("vision_model.", "qformer.", "query_tokens")) for key in read)

    model = MBlipForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    processor = MBlipProcessor.from_pretrained(tmp_path / "out")
    for key, value in blip2.state_dict().items():
        if key.startswith(("vision_model.", "qformer.", "query_tokens")):
            assert torch.equal(model.state_dict()[key], value), key
    for key, value in llm.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[key], value), key
    assert model.language_projection.weight.shape == (llm.config.hidden_size, blip2.config.qformer_config.hidden_size)
    assert 0 < model.language_projection.weight.std() < 0.05 and not model.language_projection.bias.any()
    assert processor.is_encoder_decoder is llm.config.is_encoder_decoder
    assert processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert processor.image_processor.size == blip2_processor.image_processor.size
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in readme and str(tmp_path / "llm") in readme
    out = model.generate(pixel_values=random_pixels(2), **processor(text=PROMPTS[:2]), max_new_tokens=3)
    assert out.shape[0] == 2


def test_parts_assembly_is_a_python_call(tmp_path):
    make_blip2("mt5", tmp_path / "blip2")
    save_llm("llama", tmp_path / "llm")
    model, processor = convert_mblip.from_parts(str(tmp_path / "blip2"), str(tmp_path / "llm"))
    assert isinstance(model, MBlipForConditionalGeneration) and not model.config.is_encoder_decoder
    assert processor.tokenizer.padding_side == "left"


def save_wide_llm(family, path, hidden=128):
    """A tiny LLM whose hidden size differs from the tiny BLIP-2's text side (64), like BLOOMZ-7B's 4096 vs 2048."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from mblip.demo.tiny import tiny_processor, tiny_text_config

    tokenizer = tiny_processor(family).tokenizer
    config = tiny_text_config(family, len(tokenizer))
    for name in ("d_model", "hidden_size"):
        if hasattr(config, name):
            setattr(config, name, hidden)
    torch.manual_seed(3)
    llm = (AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM).from_config(config)
    llm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return llm


@pytest.mark.parametrize("llm_family", ["mt5", "bloom"])
def test_projection_starts_from_blip2_when_it_fits_the_llm_else_fresh(llm_family, tmp_path):
    blip2, _ = make_blip2("mt5", tmp_path / "blip2")
    with torch.no_grad():  # make BLIP-2's projection unmistakable, then save it again
        blip2.language_projection.weight.normal_(0.0, 1.0)
        blip2.language_projection.bias.uniform_(1.0, 2.0)
    blip2.save_pretrained(tmp_path / "blip2")
    own = blip2.language_projection
    save_llm(llm_family, tmp_path / "same")  # hidden 64 = BLIP-2's text hidden size (mT0-XL vs Flan-T5-XL: 2048)
    wide = save_wide_llm(llm_family, tmp_path / "wide")
    assert wide.config.get_text_config().hidden_size != blip2.config.text_config.hidden_size

    def projection(llm, init, seed=0):
        model, _ = convert_mblip.from_parts(
            str(tmp_path / "blip2"), str(tmp_path / llm), seed=seed, projection_init=init
        )
        return model.language_projection

    for init in ("auto", "blip2"):
        copied = projection("same", init)
        assert torch.equal(copied.weight, own.weight) and torch.equal(copied.bias, own.bias), init
    fresh = projection("same", "random")
    assert not torch.equal(fresh.weight, own.weight) and not fresh.bias.any()
    assert 0 < fresh.weight.std() < 0.05  # N(0, initializer_range), unlike the copied N(0, 1)
    assert torch.equal(projection("same", "random", seed=1).weight, projection("same", "random", seed=1).weight)

    auto_wide = projection("wide", "auto")
    assert auto_wide.weight.shape == (128, blip2.config.qformer_config.hidden_size)
    assert 0 < auto_wide.weight.std() < 0.05 and not auto_wide.bias.any()
    with pytest.raises(convert_mblip.ConversionError, match=r"projection of shape \(64, 32\).*needs \(128, 32\)"):
        projection("wide", "blip2")

    # The command line: the card says which projection the starting point has.
    parts = ["--vision_model", str(tmp_path / "blip2"), "--language_model", str(tmp_path / "same")]
    assert convert_mblip.main([*parts, "--output_dir", str(tmp_path / "out")]) == 0
    saved = MBlipForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert torch.equal(saved.language_projection.weight, own.weight)
    assert "the linear projection of" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(SystemExit):
        convert_mblip.main([*parts, "--output_dir", str(tmp_path / "bad"), "--projection_init", "copy"])


FRESH = textwrap.dedent(
    """
    import json, sys, torch
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline
    path = sys.argv[1]
    names = [type(AutoConfig.from_pretrained(path, trust_remote_code=True)).__name__]
    names.append(type(AutoModel.from_pretrained(path, trust_remote_code=True)).__name__)
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    names += [type(model).__name__, type(processor).__name__]
    pipe = pipeline("image-text-to-text", model=path, trust_remote_code=True)
    result = pipe(images=Image.new("RGB", (40, 40), (200, 10, 10)), text="zwei", max_new_tokens=3)
    print(json.dumps({"names": names, "pipeline": result}))
    """
)


@pytest.mark.parametrize("family", ["mt5", "bloom"])
def test_output_is_a_hub_ready_repository_loadable_offline_in_a_fresh_process(family, tmp_path):
    make_blip2(family, tmp_path / "blip2")
    convert_mblip.main(
        ["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "repo"), "--max_shard_size", "100KB"]
    )
    repo = tmp_path / "repo"
    files = {p.name for p in repo.iterdir()}
    assert {"configuration_mblip.py", "modeling_mblip.py", "processing_mblip.py", "README.md"} <= files
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "config.json"} <= files
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) > 1
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    auto_map = json.loads((repo / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mblip.MBlipConfig",
        "AutoModel": "modeling_mblip.MBlipForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_mblip.MBlipForConditionalGeneration",
    }
    assert json.loads((repo / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_mblip.MBlipProcessor"
    }
    readme = (repo / "README.md").read_text()
    assert readme.startswith("---\nlicense:") and "trust_remote_code=True" in readme
    card = ModelCard.load(repo / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.library_name == "transformers"
    # A local source without a card or a Hub id: no base_model (Hub ids only), named in the text; licence unknown.
    assert card.data.base_model is None and f"`{tmp_path / 'blip2'}`" in card.text
    assert card.data.license == "other"

    (tmp_path / "fresh.py").write_text(FRESH)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "fresh.py"), str(repo)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["names"] == [
        "MBlipConfig",
        "MBlipForConditionalGeneration",
        "MBlipForConditionalGeneration",
        "MBlipProcessor",
    ]
    assert isinstance(fresh["pipeline"][0]["generated_text"], str)


def test_a_killed_conversion_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    make_blip2("bloom", tmp_path / "blip2")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the processor")

    monkeypatch.setattr(MBlipProcessor, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_mblip.main(["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blip2"]


def test_a_rerun_removes_what_a_killed_conversion_left(tmp_path, caplog):
    """A SIGKILL skips every cleanup: the hidden full-size temporary stays. The next run removes it and says so."""
    make_blip2("bloom", tmp_path / "blip2")
    stale = [tmp_path / ".out.incomplete-4194999-x1y2", tmp_path / ".out.incomplete-k3j_a9z0"]  # a dead pid; older
    running = tmp_path / f".out.incomplete-{os.getppid()}-abcd"  # another conversion still running: kept
    for folder in [*stale, running]:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    (tmp_path / ".other.incomplete-1-abcd").mkdir()  # another output's: not ours to remove
    with caplog.at_level("WARNING"):
        convert_mblip.main(["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["blip2", "out", running.name, ".other.incomplete-1-abcd"]
    )
    assert all(f"Removed {folder}" in caplog.text for folder in stale)


def run_cli(args, tmp_path):
    result = subprocess.run(
        [sys.executable, "convert_mblip.py", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin"},
    )
    return result.returncode, result.stderr.strip().splitlines()


def test_bad_sources_get_a_one_line_error(tmp_path):
    code, lines = run_cli(["--from_blip2", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out")], tmp_path)
    assert code == 2 and len(lines) == 1 and "neither a local folder nor a reachable Hub id" in lines[0]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, lines = run_cli(["--from_blip2", str(tmp_path / "bert"), "--output_dir", str(tmp_path / "out")], tmp_path)
    assert code == 2 and len(lines) == 1 and "model_type 'bert'" in lines[0]
    (tmp_path / "empty").mkdir()
    code, lines = run_cli(["--from_blip2", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out")], tmp_path)
    assert code == 2 and len(lines) == 1 and "no config.json" in lines[0]
    code, lines = run_cli(["--vision_model", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out")], tmp_path)
    assert code == 2 and "needs both --vision_model and --language_model" in lines[-1]
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_the_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    make_blip2("mt5", tmp_path / "blip2")
    weights = load_file(tmp_path / "blip2" / "model.safetensors")
    weights["language_projection.weight"] = torch.zeros(7, 5)
    save_file(weights, tmp_path / "blip2" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SystemExit) as exit_info:
        convert_mblip.main(["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    with pytest.raises(convert_mblip.ConversionError, match=r"language_projection.weight: checkpoint \(7, 5\)"):
        convert_mblip.from_blip2(str(tmp_path / "blip2"))


def test_existing_output_is_not_overwritten_without_asking(tmp_path):
    make_blip2("bloom", tmp_path / "blip2")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        convert_mblip.main(["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    convert_mblip.main(
        ["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "out"), "--overwrite", "true"]
    )
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").exists()


def test_model_card_metadata_survives_yaml(tmp_path):
    # "no" (Norwegian) is false to YAML 1.1; a local path may hold ": " (it stays in the text, never in base_model).
    local = tmp_path / "run: 2" / "blip2"
    local.mkdir(parents=True)
    model_card("t", "d", [str(local), "bigscience/mt0-xl"], languages=["no", "en"]).save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.language == ["no", "en"] and card.data.base_model == ["bigscience/mt0-xl"]
    assert f"`{local}`" in card.text


def test_default_dtype_keeps_the_checkpoints_own_and_a_named_one_is_applied(tmp_path):
    blip2, _ = make_blip2("mt5", tmp_path / "blip2")
    blip2.to(torch.bfloat16).save_pretrained(tmp_path / "blip2")  # as BLIP-2 checkpoints are often published
    assert convert_mblip.main(["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "kept")]) == 0
    kept = MBlipForConditionalGeneration.from_pretrained(tmp_path / "kept", dtype="auto")
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    for key, value in blip2.state_dict().items():
        assert torch.equal(kept.state_dict()[key], value), key
    argv = ["--from_blip2", str(tmp_path / "blip2"), "--output_dir", str(tmp_path / "fp32"), "--dtype", "float32"]
    assert convert_mblip.main(argv) == 0
    wide = MBlipForConditionalGeneration.from_pretrained(tmp_path / "fp32", dtype="auto")
    assert {p.dtype for p in wide.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match=r"--dtype must be one of \['checkpoint', 'auto', .*got 'fp8'"):
        convert_mblip.ConvertArguments(from_blip2="x", output_dir="y", dtype="fp8")
