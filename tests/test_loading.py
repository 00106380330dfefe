"""mblip/loading.py, the one way to load a model for inference: one meaning of dtype "auto" in every script, the
bitsandbytes config with the settings asked for, and quantization of the LLM alone."""

import pytest
import torch
from conftest import build, make_blip2

from mblip import loading, predict
from mblip.loading import get_quantization_config, load_for_inference, resolve_dtype


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory):
    """A tiny mBLIP saved in bfloat16: "auto" must not keep the checkpoint's dtype."""
    model, processor = build("mt5")
    path = tmp_path_factory.mktemp("tiny-bf16")
    model.to(torch.bfloat16).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def pretend_gpu(monkeypatch, bf16: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)


# ---------------------------------------------------------------------------------------------------- dtype
def test_auto_is_bf16_on_a_gpu_that_supports_it_else_float32(monkeypatch):
    assert resolve_dtype("auto", "cpu") is torch.float32
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") is torch.float32  # the default device here is the CPU
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(name, "cpu") is getattr(torch, name)  # explicit names never depend on the device
    pretend_gpu(monkeypatch, bf16=True)
    assert resolve_dtype("auto") is torch.bfloat16 and resolve_dtype("auto", "cuda:0") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is torch.float32
    pretend_gpu(monkeypatch, bf16=False)
    assert resolve_dtype("auto", "cuda") is torch.float32  # not float16: T5-family LLMs overflow in it
    with pytest.raises(ValueError, match=r"--dtype must be one of \['auto', 'bfloat16', 'float16', 'float32'\]"):
        resolve_dtype("float64")


def test_auto_resolves_the_same_in_every_caller(bf16_model_dir, tmp_path):
    """predict, app (through predict), eval and convert load a bfloat16 checkpoint with --dtype auto on the CPU: all
    get float32, loading's answer, and none keeps the checkpoint's bfloat16."""
    from mblip.app import AppArguments
    from mblip.convert import from_blip2
    from mblip.evaluation.run import ModelArguments
    from mblip.evaluation.run import load_model as eval_load_model

    expected = resolve_dtype("auto", "cpu")
    assert expected is torch.float32
    assert predict.PredictArguments(images=["a.png"]).dtype == "auto" and AppArguments().dtype == "auto"
    predicted, _ = predict.load_model(str(bf16_model_dir), device="cpu")
    evaluated, _, _ = eval_load_model(ModelArguments(model=str(bf16_model_dir), device="cpu"))
    blip2, _ = make_blip2("mt5", tmp_path / "blip2")
    blip2.to(torch.bfloat16).save_pretrained(tmp_path / "blip2")  # a bfloat16 BLIP-2 checkpoint
    converted, _ = from_blip2(str(tmp_path / "blip2"), "auto")
    for model in (predicted, evaluated, converted):
        assert {p.dtype for p in model.parameters()} == {expected}
        assert not model.training


def test_training_takes_the_transformers_flag_name_and_refuses_auto():
    from mblip.training import ModelArguments

    assert ModelArguments(model_name_or_path="m", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="--dtype must be float32, bfloat16 or float16 for training, got 'auto'"):
        ModelArguments(model_name_or_path="m", dtype="auto")


# ---------------------------------------------------------------------------------------------------- quantization config
def test_the_4bit_config_has_the_settings_asked_for():
    for double_quant in (True, False):
        config = get_quantization_config(
            load_in_4bit=True,
            bnb_4bit_quant_type="fp4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=double_quant,
        )
        assert config.load_in_4bit and not config.load_in_8bit
        assert config.bnb_4bit_use_double_quant is double_quant
        assert config.bnb_4bit_quant_type == "fp4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    eight = get_quantization_config(load_in_8bit=True)
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert get_quantization_config() is None
    with pytest.raises(ValueError, match="not both"):
        get_quantization_config(load_in_8bit=True, load_in_4bit=True)
    with pytest.raises(ValueError, match="nf4"):
        get_quantization_config(load_in_4bit=True, bnb_4bit_quant_type="int4")


def test_training_double_quantizes_in_its_mixed_precision_and_inference_does_not():
    from transformers import TrainingArguments

    from mblip.training import ModelArguments, quantization_config

    args = ModelArguments(model_name_or_path="m", load_in_8bit=False, load_in_4bit=True, bnb_4bit_quant_type="fp4")
    config = quantization_config(args, TrainingArguments(output_dir="unused", bf16=True, use_cpu=True))
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_quant_type == "fp4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    # The official BLOOMZ-7B recipe (configs/recipes/bloomz_7b_instruct.yaml) turns double quantization off.
    official_bloomz = ModelArguments(
        model_name_or_path="m", load_in_8bit=False, load_in_4bit=True, bnb_4bit_use_double_quant=False
    )
    config = quantization_config(official_bloomz, TrainingArguments(output_dir="unused", bf16=True, use_cpu=True))
    assert not config.bnb_4bit_use_double_quant and config.bnb_4bit_quant_type == "nf4"
    plain = ModelArguments(model_name_or_path="m", load_in_8bit=False, load_in_4bit=False)
    assert quantization_config(plain, TrainingArguments(output_dir="unused")) is None


# ---------------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_4bit"])
def test_quantized_loading_quantizes_only_the_llm(bf16_model_dir, flag):
    import bitsandbytes as bnb

    model, processor = load_for_inference(str(bf16_model_dir), device="cpu", **{flag: True})
    assert not model.training
    layers = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    quantized = [n for n, m in model.named_modules() if isinstance(m, layers)]
    assert quantized and all(n.startswith("language_model.") for n in quantized)
    for part in (model.vision_model, model.qformer, model.language_projection):
        assert not any(isinstance(m, layers) for m in part.modules())
        assert {p.dtype for p in part.parameters()} == {torch.float32}  # "auto" on the CPU, not the checkpoint's
    config = model.config.quantization_config
    if flag == "load_in_4bit":
        assert config.bnb_4bit_compute_dtype == torch.float32 and not config.bnb_4bit_use_double_quant
    from PIL import Image

    inputs = processor(images=[Image.new("RGB", (30, 30), (200, 0, 0))], text=["Caption the image."])
    output = model.generate(**inputs, max_new_tokens=3, num_beams=1)
    assert output.shape[0] == 1


def test_user_errors_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="has model_type 'bert'; expected 'mblip'"):
        load_for_inference(str(tmp_path))
    with pytest.raises(ValueError, match="is not a torch device"):
        loading.choose_device("gpu-please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        loading.choose_device("cuda")
