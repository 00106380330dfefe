"""MBlipForConditionalGeneration: the paper's computation, padding invariance, generation, loading, precision."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import PROMPTS, TARGETS, build, random_pixels
from torch.nn import functional as F

from mblip.configuration_mblip import MBlipConfig
from mblip.demo.tiny import FAMILIES, tiny_processor, tiny_qformer_config, tiny_text_config, tiny_vision_config
from mblip.hub import register_auto_classes
from mblip.modeling_mblip import MBlipForConditionalGeneration


def by_hand(model, pixel_values, prompt_ids, target_ids):
    """The paper's function for ONE unpadded example, written directly from the BLIP-2 submodules.

    pixel_values: (n_images, 3, H, W); prompt_ids, target_ids: 1-D. Returns (text logits, summed target NLL, n).
    """
    with torch.no_grad():
        patches = model.vision_model(pixel_values=pixel_values).last_hidden_state
        queries = model.qformer(
            query_embeds=model.query_tokens.expand(len(pixel_values), -1, -1), encoder_hidden_states=patches
        ).last_hidden_state
        visual = model.language_projection(queries).reshape(1, -1, model.config.text_config.hidden_size)
        embed = model.language_model.get_input_embeddings()
        if model.config.is_encoder_decoder:
            inputs = torch.cat([visual, embed(prompt_ids[None])], dim=1)
            out = model.language_model(inputs_embeds=inputs, labels=target_ids[None])
            logits = out.logits[0]
            nll = F.cross_entropy(logits, target_ids, reduction="sum")
            return logits, nll, len(target_ids)
        ids = torch.cat([prompt_ids, target_ids])
        inputs = torch.cat([visual, embed(ids[None])], dim=1)
        logits = model.language_model(inputs_embeds=inputs).logits[0]
        n_visual = visual.shape[1]
        # Target token k of `ids` is predicted at position n_visual + k - 1.
        positions = torch.arange(len(prompt_ids), len(ids)) + n_visual - 1
        nll = F.cross_entropy(logits[positions], target_ids, reduction="sum")
        return logits[n_visual:], nll, len(target_ids)


def single(processor, i, with_target=True):
    enc = processor(text=PROMPTS[i], text_target=TARGETS[i] if with_target else None)
    if processor.is_encoder_decoder:
        return enc["input_ids"][0], enc["labels"][0] if with_target else None
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    n_prompt = int((labels == -100).sum())
    return ids[:n_prompt], ids[n_prompt:]


# ---------------------------------------------------------------------------------------------------- config
def test_config_defaults_are_the_released_mt0_xl_shapes():
    config = MBlipConfig()
    assert config.model_type == "mblip"
    assert config.is_encoder_decoder and not config.use_decoder_only_language_model
    assert config.text_config.model_type == "mt5"
    assert (config.text_config.d_model, config.text_config.num_layers, config.text_config.vocab_size) == (
        2048,
        24,
        250112,
    )
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1408, 39)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (224, 14)
    assert config.qformer_config.hidden_size == 768 and config.qformer_config.encoder_hidden_size == 1408
    assert config.num_query_tokens == 32


@pytest.mark.parametrize("family,encoder_decoder", [("mt5", True), ("bloom", False), ("llama", False)])
def test_config_accepts_dicts_or_objects_and_derives_the_family(family, encoder_decoder, tmp_path):
    objects = MBlipConfig(tiny_vision_config(), tiny_qformer_config(), tiny_text_config(family, 100), 4)
    dicts = MBlipConfig(
        vision_config=tiny_vision_config().to_dict(),
        qformer_config=tiny_qformer_config().to_dict(),
        text_config=tiny_text_config(family, 100).to_dict(),
        num_query_tokens=4,
    )
    assert objects.to_dict() == dicts.to_dict()
    assert objects.is_encoder_decoder is encoder_decoder
    assert objects.qformer_config.encoder_hidden_size == objects.vision_config.hidden_size == 32
    objects.save_pretrained(tmp_path)
    loaded = MBlipConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == objects.to_dict() and loaded.is_encoder_decoder is encoder_decoder
    assert type(loaded.text_config) is type(objects.text_config)


def test_config_rejects_unknown_or_missing_model_type():
    with pytest.raises(ValueError, match="not-a-model"):
        MBlipConfig(text_config={"model_type": "not-a-model"})
    with pytest.raises(ValueError, match="model_type"):
        MBlipConfig(text_config={"hidden_size": 8})
    with pytest.raises(ValueError, match="num_query_tokens"):
        MBlipConfig(num_query_tokens=0)


# ---------------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("family", ["mt5", "bloom"])
def test_blip2_checkpoints_load_key_for_key(family, tmp_path):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    model, _ = build(family)
    blip2_config = Blip2Config(
        vision_config=model.config.vision_config.to_dict(),
        qformer_config=model.config.qformer_config.to_dict(),
        text_config=model.config.text_config.to_dict(),
        num_query_tokens=model.config.num_query_tokens,
        image_token_index=model.config.text_config.vocab_size - 1,
    )
    torch.manual_seed(3)
    blip2 = Blip2ForConditionalGeneration(blip2_config)
    ours, theirs = model.state_dict(), blip2.state_dict()
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)

    blip2.save_pretrained(tmp_path)
    loaded, info = MBlipForConditionalGeneration.from_pretrained(
        tmp_path, config=model.config, output_loading_info=True
    )
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for key, value in blip2.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    model, _ = build("mt5")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("language_projection.bias")
    weights["qformer.not_a_weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = MBlipForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert "language_projection.bias" in info["missing_keys"]
    assert "qformer.not_a_weight" in info["unexpected_keys"]


# ---------------------------------------------------------------------------------------------------- forward
def test_padded_batch_equals_the_paper_computed_by_hand_per_example(family):
    model, processor = build(family)
    pixels = random_pixels(3)
    batch = processor(text=PROMPTS, text_target=TARGETS)
    if not model.config.is_encoder_decoder:
        assert (batch["attention_mask"][:, 0] == 0).any(), "the batch must actually be left-padded"
    out = model(pixel_values=pixels, **batch)

    nll_sum, n_tokens = 0.0, 0
    for i in range(3):
        prompt_ids, target_ids = single(processor, i)
        logits, nll, n = by_hand(model, pixels[i : i + 1], prompt_ids, target_ids)
        nll_sum, n_tokens = nll_sum + nll, n_tokens + n
        if model.config.is_encoder_decoder:
            torch.testing.assert_close(out.logits[i, : len(target_ids)], logits, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(out.logits[i, -len(logits) :], logits, rtol=1e-5, atol=1e-5)
    # The batch loss is the mean over all target tokens of the batch: the same as the examples' pooled NLL.
    torch.testing.assert_close(out.loss, nll_sum / n_tokens, rtol=1e-5, atol=1e-5)


def test_each_example_alone_gives_the_same_loss_through_the_model(family):
    model, processor = build(family)
    pixels = random_pixels(3)
    out = model(pixel_values=pixels, **processor(text=PROMPTS, text_target=TARGETS))
    losses, counts = [], []
    for i in range(3):
        alone = processor(text=PROMPTS[i], text_target=TARGETS[i])
        losses.append(model(pixel_values=pixels[i : i + 1], **alone).loss)
        counts.append(int((alone["labels"] != -100).sum()))
    pooled = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    torch.testing.assert_close(out.loss, pooled, rtol=1e-5, atol=1e-6)


def test_several_images_per_example_concatenate_their_queries(family):
    model, processor = build(family)
    pixels = random_pixels(2, n_images=2)
    batch = processor(text=PROMPTS[:2], text_target=TARGETS[:2])
    features = model.get_image_features(pixels)
    q = model.config.num_query_tokens
    assert features.shape == (2, 2 * q, model.config.text_config.hidden_size)
    torch.testing.assert_close(features[:, q:], model.get_image_features(pixels[:, 1]), rtol=1e-6, atol=1e-6)
    out = model(pixel_values=pixels, **batch)
    prompt_ids, target_ids = single(processor, 1)
    logits, _, _ = by_hand(model, pixels[1], prompt_ids, target_ids)
    got = out.logits[1, : len(target_ids)] if model.config.is_encoder_decoder else out.logits[1, -len(logits) :]
    torch.testing.assert_close(got, logits, rtol=1e-5, atol=1e-5)


def test_image_features_and_precomputed_vit_outputs(family):
    model, processor = build(family)
    pixels = random_pixels(2)
    with torch.no_grad():
        patches = model.vision_model(pixel_values=pixels).last_hidden_state
        queries = model.qformer(query_embeds=model.query_tokens.expand(2, -1, -1), encoder_hidden_states=patches)
        expected = model.language_projection(queries.last_hidden_state)
        torch.testing.assert_close(model.get_image_features(pixels), expected, rtol=1e-6, atol=1e-6)
        batch = processor(text=PROMPTS[:2], text_target=TARGETS[:2])
        from_pixels = model(pixel_values=pixels, **batch)
        from_embeds = model(image_embeds=patches, **batch)
    torch.testing.assert_close(from_embeds.logits, from_pixels.logits, rtol=0, atol=0)
    torch.testing.assert_close(from_embeds.loss, from_pixels.loss, rtol=0, atol=0)


def test_frozen_vit_gets_no_gradient_and_builds_no_graph():
    model, processor = build("bloom")
    model.train()
    model.vision_model.requires_grad_(False)
    batch = processor(text=PROMPTS[:2], text_target=TARGETS[:2])
    pixels = random_pixels(2)
    out = model(pixel_values=pixels, **batch)
    out.loss.backward()
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.query_tokens.grad is not None and model.language_projection.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.qformer.parameters())
    # Trainable ViT: it gets gradients again.
    model.zero_grad()
    model.vision_model.requires_grad_(True)
    model(pixel_values=pixels, **batch).loss.backward()
    assert model.vision_model.embeddings.patch_embedding.weight.grad is not None


# ---------------------------------------------------------------------------------------------------- generate
def greedy_by_forward(model, processor, pixels, prompt, max_new_tokens):
    """Greedy decoding of one unpadded example by repeated full forward passes: no cache, no generate()."""
    eos = model.config.text_config.eos_token_id
    enc = processor(text=prompt)
    tokens = []
    for _ in range(max_new_tokens):
        if model.config.is_encoder_decoder:
            start = model.config.text_config.decoder_start_token_id
            decoder_input_ids = torch.tensor([[start] + tokens])
            logits = model(pixel_values=pixels, **enc, decoder_input_ids=decoder_input_ids).logits[0, -1]
        else:
            ids = torch.cat([enc["input_ids"][0], torch.tensor(tokens, dtype=torch.long)])[None]
            logits = model(pixel_values=pixels, input_ids=ids).logits[0, -1]
        tokens.append(int(logits.argmax()))
        if tokens[-1] == eos:
            break
    return tokens


def test_batched_greedy_generation_equals_per_example_forward_loop(family):
    model, processor = build(family)
    pixels = random_pixels(3)
    batch = processor(text=PROMPTS)
    out = model.generate(pixel_values=pixels, **batch, max_new_tokens=6, do_sample=False)
    eos, pad = model.config.text_config.eos_token_id, model.config.text_config.pad_token_id
    for i in range(3):
        expected = greedy_by_forward(model, processor, pixels[i : i + 1], PROMPTS[i], 6)
        got = out[i].tolist()
        if eos in expected:  # after EOS the batch pads
            assert got[: len(expected)] == expected and all(t == pad for t in got[len(expected) :])
        else:
            assert got == expected
    # Only new tokens come back: decoding gives the answer alone.
    texts = processor.batch_decode(out, skip_special_tokens=True)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_beam_search_and_sampling(family):
    model, processor = build(family)
    pixels = random_pixels(2)
    batch = processor(text=PROMPTS[:2])
    beams = model.generate(
        pixel_values=pixels, **batch, num_beams=3, num_return_sequences=2, max_new_tokens=5, length_penalty=-1.0
    )
    assert beams.shape[0] == 4 and beams.shape[1] <= 5
    torch.manual_seed(0)
    first = model.generate(pixel_values=pixels, **batch, do_sample=True, top_k=5, max_new_tokens=5)
    torch.manual_seed(0)
    again = model.generate(pixel_values=pixels, **batch, do_sample=True, top_k=5, max_new_tokens=5)
    assert torch.equal(first, again)
    dict_out = model.generate(
        pixel_values=pixels, **batch, max_new_tokens=4, return_dict_in_generate=True, output_scores=True
    )
    assert dict_out.sequences.shape[1] == len(dict_out.scores)


def test_generation_with_empty_prompt_and_no_text(family):
    model, _ = build(family)
    out = model.generate(pixel_values=random_pixels(2), max_new_tokens=3)
    assert out.shape[0] == 2 and 1 <= out.shape[1] <= 3


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors_naming_the_values(family):
    model, processor = build(family)
    batch = processor(text=PROMPTS[:2])
    with pytest.raises(ValueError, match=r"3 \(RGB\) channels, got 1"):
        model(pixel_values=torch.zeros(2, 1, 30, 30), **batch)
    with pytest.raises(ValueError, match=r"\(16, 16\) pixels but the ViT expects \(30, 30\)"):
        model(pixel_values=torch.zeros(2, 3, 16, 16), **batch)
    with pytest.raises(ValueError, match="3 examples of images but 2 prompts"):
        model(pixel_values=random_pixels(3), **batch)
    with pytest.raises(ValueError, match="holds no image"):
        model(pixel_values=torch.zeros(0, 3, 30, 30), input_ids=torch.zeros(0, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        model(pixel_values=torch.zeros(3, 30, 30), **batch)
    wrong_side = "left" if model.config.is_encoder_decoder else "right"
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 0 if wrong_side == "left" else -1] = 0
    with pytest.raises(ValueError, match="padded"):
        model(pixel_values=random_pixels(2), input_ids=torch.full((2, 5), 5), attention_mask=mask)


# ---------------------------------------------------------------------------------------------------- precision
def saved(tmp_path, family):
    model, processor = build(family)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return model, processor


@pytest.mark.parametrize("family", ["mt5", "bloom", "llama"])
@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_quantizes_only_the_language_model(family, bits, tmp_path):
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    reference, processor = saved(tmp_path, family)
    quantization = (
        BitsAndBytesConfig(load_in_8bit=True)
        if bits == 8
        else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    )
    model = MBlipForConditionalGeneration.from_pretrained(tmp_path, quantization_config=quantization).eval()
    quantized_type = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    quantized = {n for n, m in model.named_modules() if isinstance(m, quantized_type)}
    assert quantized and all(n.startswith("language_model.") for n in quantized)
    for name in ("vision_model", "qformer", "language_projection"):
        module = model.get_submodule(name)
        assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in module.modules()), name
    assert model.query_tokens.dtype == torch.float32
    assert not any(n.endswith("lm_head") for n in quantized)
    # The vision stack is bit-identical to the un-quantized model.
    torch.testing.assert_close(
        model.get_image_features(random_pixels(2)), reference.get_image_features(random_pixels(2)), rtol=0, atol=0
    )
    batch = processor(text=PROMPTS[:2], text_target=TARGETS[:2])
    loss = model(pixel_values=random_pixels(2), **batch).loss
    ref_loss = reference(pixel_values=random_pixels(2), **batch).loss
    assert torch.isfinite(loss) and abs(loss.item() - ref_loss.item()) < 0.05 * ref_loss.item()
    out = model.generate(pixel_values=random_pixels(2), **processor(text=PROMPTS[:2]), max_new_tokens=3)
    assert out.shape[0] == 2


def test_bf16_runs_and_fp16_keeps_t5_wo_and_qformer_in_fp32(tmp_path):
    reference, processor = saved(tmp_path, "mt5")
    batch = processor(text=PROMPTS[:2], text_target=TARGETS[:2])
    bf16 = MBlipForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert bf16.language_projection.weight.dtype == torch.bfloat16
    loss = bf16(pixel_values=random_pixels(2), **batch).loss
    ref = reference(pixel_values=random_pixels(2), **batch).loss
    assert loss.dtype in (torch.bfloat16, torch.float32) and abs(loss.float().item() - ref.item()) < 0.01 * ref.item()
    fp16 = MBlipForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16)
    wo = [m.weight.dtype for n, m in fp16.language_model.named_modules() if n.endswith(".wo")]
    assert wo and all(dtype == torch.float32 for dtype in wo)
    assert all(p.dtype == torch.float32 for p in fp16.qformer.parameters()) and fp16.query_tokens.dtype == torch.float32
    assert fp16.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16


def test_device_map_never_splits_a_layer(tmp_path):
    from accelerate import infer_auto_device_map

    model, processor = saved(tmp_path, "llama")
    no_split = model._no_split_modules
    assert {"Blip2EncoderLayer", "LlamaDecoderLayer", "Blip2QFormerMultiHeadAttention"} <= set(no_split)
    # Three small fake devices force the map to spread the model; blocks must never be cut.
    device_map = infer_auto_device_map(
        model, max_memory={0: "60KB", 1: "60KB", "cpu": "10GB"}, no_split_module_classes=list(no_split)
    )
    assert len(set(device_map.values())) > 1
    blocks = [name for name, module in model.named_modules() if type(module).__name__ in no_split]
    for key in device_map:
        assert not any(key.startswith(block + ".") for block in blocks), f"{key} splits a no-split block"
    loaded = MBlipForConditionalGeneration.from_pretrained(tmp_path, device_map="auto").eval()
    out = loaded.generate(pixel_values=random_pixels(2), **processor(text=PROMPTS[:2]), max_new_tokens=3)
    assert out.shape[0] == 2


@pytest.mark.parametrize("family", ["mt5", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(family):
    model, processor = build(family)
    model.train()
    batch = processor(text=PROMPTS, text_target=TARGETS)
    pixels = random_pixels(3)
    model(pixel_values=pixels, **batch).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert checkpointed, "no layer was set to checkpoint"
    model(pixel_values=pixels, **batch).loss.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    # Some gradients are zero in exact arithmetic (a key bias under softmax): judge against the largest gradient.
    scale = max(g.abs().max().item() for g in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("family", ["mt5", "llama"])
def test_sdpa_and_eager_attention_agree(family, tmp_path):
    _, processor = saved(tmp_path, family)
    batch = processor(text=PROMPTS, text_target=TARGETS)
    pixels = random_pixels(3)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = MBlipForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert model.config.text_config._attn_implementation == implementation
        outputs[implementation] = model(pixel_values=pixels, **batch)
    torch.testing.assert_close(outputs["sdpa"].loss, outputs["eager"].loss, rtol=1e-5, atol=1e-5)
    # Padding positions carry no meaning (each kernel fills fully-masked rows its own way): compare real tokens.
    real = batch["attention_mask"].bool() if family != "mt5" else batch["labels"] != -100
    torch.testing.assert_close(outputs["sdpa"].logits[real], outputs["eager"].logits[real], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- hub loading
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    path, pixels_file = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    pixels = torch.tensor(json.load(open(pixels_file)))
    batch = processor(text=%r, text_target=%r)
    with torch.no_grad():
        out = model(pixel_values=pixels, **batch)
    generated = model.generate(pixel_values=pixels, **processor(text=%r), max_new_tokens=5)
    print(json.dumps({"config": type(config).__name__, "model": type(model).__name__,
                      "processor": type(processor).__name__, "loss": out.loss.item(),
                      "logits": out.logits.flatten()[:50].tolist(), "generated": generated.tolist(),
                      "module": type(model).__module__}))
    """
    % (PROMPTS, TARGETS, PROMPTS)
)


@pytest.mark.parametrize("family", ["mt5", "bloom"])
def test_save_then_fresh_offline_process_loads_with_trust_remote_code(family, tmp_path):
    model, processor = build(family)
    register_auto_classes()
    model.save_pretrained(tmp_path / "repo")
    processor.save_pretrained(tmp_path / "repo")
    files = {p.name for p in (tmp_path / "repo").iterdir()}
    assert {"configuration_mblip.py", "modeling_mblip.py", "processing_mblip.py", "model.safetensors"} <= files
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_mblip.MBlipForConditionalGeneration"
    pixels = random_pixels(3)
    (tmp_path / "pixels.json").write_text(json.dumps(pixels.tolist()))
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "repo"), str(tmp_path / "pixels.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert (fresh["config"], fresh["model"], fresh["processor"]) == (
        "MBlipConfig",
        "MBlipForConditionalGeneration",
        "MBlipProcessor",
    )
    assert fresh["module"].startswith("transformers_modules.")  # the copied remote code, not this repository
    with torch.no_grad():
        out = model(pixel_values=pixels, **processor(text=PROMPTS, text_target=TARGETS))
        generated = model.generate(pixel_values=pixels, **processor(text=PROMPTS), max_new_tokens=5)
    assert abs(fresh["loss"] - out.loss.item()) < 1e-6
    torch.testing.assert_close(torch.tensor(fresh["logits"]), out.logits.flatten()[:50], rtol=1e-6, atol=1e-6)
    assert fresh["generated"] == generated.tolist()


def test_remote_code_files_import_only_torch_transformers_and_each_other():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("configuration_mblip.py", "modeling_mblip.py", "processing_mblip.py"):
        tree = ast.parse((root / name).read_text())
        for node in tree.body:  # module level; guarded imports (inside `if is_..._available()`) are allowed
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = ["." if node.level else node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in {"torch", "transformers", "", "inspect", "dataclasses", "typing"}, (name, module)
        source = (root / name).read_text()
        for forbidden in ("pickle", "torch.load", "requests", "urllib", "hf_hub_download", "print("):
            assert forbidden not in source, (name, forbidden)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_tokenizer_families(family):
    processor = tiny_processor(family)
    ids = processor.tokenizer("zwei")["input_ids"]
    assert (ids[-1] == 1) is (family == "mt5") and (ids[0] == 2) is (family == "llama")


def test_decoder_only_padding_goes_in_front_of_the_visual_prefix():
    """[padding | visual | prompt + target]: nothing separates the images from the prompt (unlike the official code)."""
    model, processor = build("llama")
    batch = processor(text=PROMPTS, text_target=TARGETS)
    features = model.get_image_features(random_pixels(3))
    embeds, mask = model._build_llm_inputs(features, batch["input_ids"], batch["attention_mask"], None)
    n_visual, text_embeds = features.shape[1], model.get_input_embeddings()(batch["input_ids"])
    for row in range(3):
        n_pad = int((batch["attention_mask"][row] == 0).sum())
        assert mask[row].tolist() == [0] * n_pad + [1] * (mask.shape[1] - n_pad)
        torch.testing.assert_close(embeds[row, n_pad : n_pad + n_visual], features[row], rtol=0, atol=0)
        torch.testing.assert_close(embeds[row, n_pad + n_visual :], text_embeds[row, n_pad:], rtol=0, atol=0)
    assert model._position_ids(mask)[0, -1] == int(mask[0].sum()) - 1
