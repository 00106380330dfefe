"""mBLIP behaves like a first-class transformers model: generation config, processor keywords, chat template and
pipeline, attention per sub-model, prompt-lookup decoding and text-only generation."""

import base64
import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPTS, TARGETS, build, random_pixels

from mblip.configuration_mblip import MBlipConfig
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.processing_mblip import CHAT_TEMPLATE, DEFAULT_CAPTION_PROMPT, MBlipProcessor


DECODER_ONLY = ("bloom", "llama")
# Random models love pad/EOS: suppressing them makes every row run to its length limit, so lengths are informative.
NO_STOP = dict(suppress_tokens=[0, 1])


def image(color=(200, 30, 30), size=(40, 50)):
    return PIL.Image.new("RGB", size, color)


def saved(tmp_path, family):
    model, processor = build(family)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return model, processor


# ---------------------------------------------------------------------------------------------------- generation config
def test_saved_generation_config_is_honoured_and_explicit_kwargs_win(family, tmp_path):
    model, processor = saved(tmp_path, family)
    path = tmp_path / "generation_config.json"
    settings = json.loads(path.read_text())
    assert settings["max_new_tokens"] == 30  # mBLIP's captioning default, written by save_pretrained
    path.write_text(json.dumps({**settings, "max_new_tokens": 3, "num_beams": 2}))
    loaded = MBlipForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (loaded.generation_config.max_new_tokens, loaded.generation_config.num_beams) == (3, 2)
    pixels, batch = random_pixels(2), processor(text=PROMPTS[:2])
    out = loaded.generate(pixel_values=pixels, **batch, **NO_STOP)
    assert out.shape == (2, 3)
    # The file's num_beams=2 is used: the output equals asking for it by keyword.
    assert torch.equal(out, loaded.generate(pixel_values=pixels, **batch, **NO_STOP, max_new_tokens=3, num_beams=2))
    assert loaded.generate(pixel_values=pixels, **batch, **NO_STOP, max_new_tokens=5).shape == (2, 5)


def test_run_time_generation_config_edits_apply(family):
    model, processor = build(family)
    pixels, batch = random_pixels(2), processor(text=PROMPTS[:2])
    assert model.generate(pixel_values=pixels, **batch, **NO_STOP).shape == (2, 30)
    model.generation_config.max_new_tokens = 4
    model.generation_config.num_return_sequences = 2
    model.generation_config.num_beams = 2
    out = model.generate(pixel_values=pixels, **batch, **NO_STOP)
    assert out.shape == (4, 4)
    # A `generation_config` argument sits between the call's keywords and the model's own.
    from transformers import GenerationConfig

    out = model.generate(pixel_values=pixels, **batch, **NO_STOP, generation_config=GenerationConfig(max_new_tokens=2))
    assert out.shape == (4, 2)  # num_beams/num_return_sequences still from model.generation_config
    out = model.generate(
        pixel_values=pixels,
        **batch,
        **NO_STOP,
        generation_config=GenerationConfig(max_new_tokens=2),
        num_beams=1,
        num_return_sequences=1,
    )
    assert out.shape == (2, 2)


def test_greedy_default_matches_explicit_greedy(family):
    model, processor = build(family)
    pixels, batch = random_pixels(2), processor(text=PROMPTS[:2])
    model.generation_config.max_new_tokens = 5
    explicit = model.generate(pixel_values=pixels, **batch, max_new_tokens=5, num_beams=1, do_sample=False)
    assert torch.equal(model.generate(pixel_values=pixels, **batch), explicit)


# ---------------------------------------------------------------------------------------------------- processor keywords
@pytest.mark.parametrize("grouped", [False, True])
def test_tokenizer_keywords_flat_or_in_text_kwargs(family, grouped):
    _, processor = build(family)
    tokenizer = processor.tokenizer
    text_kwargs = dict(add_special_tokens=False, truncation=True, max_length=6, pad_to_multiple_of=4)
    kwargs = {"text_kwargs": text_kwargs} if grouped else text_kwargs
    enc = processor(text=PROMPTS, **kwargs)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-6:] for p in PROMPTS]  # prompts keep their end
    width = 8  # longest is 6, rounded up to a multiple of 4
    side = "right" if family == "mt5" else "left"
    for row, expected in zip(enc["input_ids"].tolist(), ids):
        pad = [tokenizer.pad_token_id] * (width - len(expected))
        assert row == (expected + pad if side == "right" else pad + expected)
    assert enc["attention_mask"].sum(1).tolist() == [len(x) for x in ids]
    assert "attention_mask" not in processor(text=PROMPTS, return_attention_mask=False)


def test_padding_strategies(family):
    _, processor = build(family)
    longest = processor(text=PROMPTS)["input_ids"].shape[1]
    assert processor(text=PROMPTS, padding="longest")["input_ids"].shape[1] == longest
    padded = processor(text=PROMPTS, padding="max_length", max_length=longest + 3)
    assert padded["input_ids"].shape == (3, longest + 3)
    assert padded["attention_mask"].sum().item() == processor(text=PROMPTS)["attention_mask"].sum().item()
    ragged = processor(text=PROMPTS, padding=False, return_tensors=None)
    assert [len(r) for r in ragged["input_ids"]] == [len(processor.tokenizer(p)["input_ids"]) for p in PROMPTS]
    one = processor(text=PROMPTS[0], padding=False)  # one row needs no padding to be a tensor
    assert one["input_ids"].tolist() == [processor.tokenizer(PROMPTS[0])["input_ids"]]
    with pytest.raises(ValueError, match=r"padding=False leaves `input_ids` rows of lengths \[.*return_tensors=None"):
        processor(text=PROMPTS, padding=False)
    with pytest.raises(ValueError, match="padding='max_length' with max_length=2, but a sequence has"):
        processor(text=PROMPTS, padding="max_length", max_length=2, truncation=False)


def test_decoder_only_targets_keep_the_contract_under_padding_keywords():
    _, processor = build("llama")
    enc = processor(text=PROMPTS, text_target=TARGETS, padding="max_length", max_length=60, pad_to_multiple_of=16)
    base = processor(text=PROMPTS, text_target=TARGETS)
    width = enc["input_ids"].shape[1]
    assert width == 64 and base["input_ids"].shape[1] <= 60
    extra = width - base["input_ids"].shape[1]
    # Left padding only grows: the same rows with more padding (and -100 labels) in front.
    assert torch.equal(enc["input_ids"][:, extra:], base["input_ids"])
    assert torch.equal(enc["labels"][:, extra:], base["labels"])
    assert (enc["labels"][:, :extra] == -100).all() and (enc["attention_mask"][:, :extra] == 0).all()


@pytest.mark.parametrize("targets", [False, True])
def test_return_tensors_np_and_none_equal_pt(family, targets):
    _, processor = build(family)
    images = [image(), image((0, 90, 200)), image((10, 200, 10))]
    kwargs = dict(images=images, text=PROMPTS, text_target=TARGETS if targets else None)
    pt, np_out, plain = (processor(**kwargs, return_tensors=r) for r in ("pt", "np", None))
    assert set(pt) == set(np_out) == set(plain)
    for key in pt:
        assert isinstance(np_out[key], np.ndarray), key
        np.testing.assert_array_equal(np_out[key], pt[key].numpy())
        if key == "pixel_values":
            assert isinstance(plain[key], list)
            np.testing.assert_array_equal(np.stack(plain[key]), pt[key].numpy())
        else:
            assert plain[key] == pt[key].tolist(), key


def test_image_keywords_go_to_the_image_processor(family):
    _, processor = build(family)
    flat = processor(images=image(), text="x", do_normalize=False)["pixel_values"]
    grouped = processor(images=image(), text="x", images_kwargs={"do_normalize": False})["pixel_values"]
    torch.testing.assert_close(flat, grouped, rtol=0, atol=0)
    assert flat.min() >= 0 and flat.max() <= 1  # rescaled, not normalised
    assert processor(images=image(), text="x")["pixel_values"].min() < 0


def test_images_as_paths_urls_and_base64(family, tmp_path, monkeypatch):
    _, processor = build(family)
    picture = image((30, 160, 90))
    picture.save(tmp_path / "picture.png")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    reference = processor(images=picture, text="x")["pixel_values"]
    path = processor(images=str(tmp_path / "picture.png"), text="x")["pixel_values"]
    encoded = processor(images=base64.b64encode(buffer.getvalue()).decode(), text="x")["pixel_values"]

    class Response:
        content = buffer.getvalue()

    fetched = []
    import transformers.image_utils

    # No network in tests: transformers' image loader gets its bytes from here.
    monkeypatch.setattr(transformers.image_utils.httpx, "get", lambda url, **kw: fetched.append(url) or Response())
    url = processor(images="https://example.org/picture.png", text="x")["pixel_values"]
    assert fetched == ["https://example.org/picture.png"]
    for got in (path, encoded, url):
        torch.testing.assert_close(got, reference, rtol=0, atol=0)


def test_keywords_mblip_cannot_honour_say_why(family):
    _, processor = build(family)
    with pytest.raises(ValueError, match="does not support return_offsets_mapping=True: it builds `input_ids`"):
        processor(text="x", return_offsets_mapping=True)
    with pytest.raises(ValueError, match="does not support stride=2"):
        processor(text="x", text_kwargs={"stride": 2})
    wrong = "left" if family == "mt5" else "right"
    with pytest.raises(ValueError, match=f"padding_side='{wrong}'.*-padded"):
        processor(text="x", padding_side=wrong)
    with pytest.raises(ValueError, match="token type ids"):
        processor(text="x", return_token_type_ids=True)
    with pytest.raises(ValueError, match="padding='middle'"):
        processor(text="x", padding="middle")
    with pytest.raises(ValueError, match="return_tensors='jax'"):
        processor(text="x", return_tensors="jax")


# ---------------------------------------------------------------------------------------------------- chat template
def chat(text=None, images=1, picture=None):
    content = [{"type": "image", "image": picture or image()} for _ in range(images)]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("n_images", [1, 2])  # 2: MaRVL's left and right image
def test_chat_template_gives_the_plain_prompt_tokens(family, n_images):
    _, processor = build(family)
    prompt = PROMPTS[2]
    assert processor.apply_chat_template(chat(prompt, n_images), add_generation_prompt=True) == prompt
    enc = processor.apply_chat_template(chat(prompt, n_images), tokenize=True, return_dict=True)
    plain = processor(images=[[image()] * n_images], text=prompt)
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(enc[key], plain[key]), key
    assert processor.apply_chat_template(chat(None)) == DEFAULT_CAPTION_PROMPT
    assert processor.apply_chat_template([{"role": "user", "content": prompt}]) == prompt
    with pytest.raises(Exception, match="system prompts"):
        processor.apply_chat_template([{"role": "system", "content": "be brief"}, *chat(prompt)])


def test_chat_template_is_saved_and_a_default(family, tmp_path):
    _, processor = build(family)
    assert processor.chat_template == CHAT_TEMPLATE
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert MBlipProcessor.from_pretrained(tmp_path).chat_template == CHAT_TEMPLATE
    # A repository saved before the template existed gets it on loading.
    (tmp_path / "chat_template.jinja").unlink()
    assert MBlipProcessor.from_pretrained(tmp_path).chat_template == CHAT_TEMPLATE
    own = MBlipProcessor.for_model_config(
        MBlipConfig(text_config={"model_type": family}),
        processor.image_processor,
        processor.tokenizer,
        chat_template="{{ messages[0]['content'] }}!",
    )
    assert own.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


def test_image_text_to_text_pipeline_with_chat_messages(family):
    from transformers import pipeline

    model, processor = build(family)
    picture = image((90, 20, 160))
    pipe = pipeline("image-text-to-text", model=model, processor=processor, trust_remote_code=True)
    result = pipe(text=chat(PROMPTS[2], picture=picture), max_new_tokens=4, return_full_text=False, **NO_STOP)
    expected = model.generate(**processor(images=picture, text=PROMPTS[2]), max_new_tokens=4, **NO_STOP)
    assert result[0]["generated_text"] == processor.batch_decode(expected, skip_special_tokens=True)[0]
    # An image without text: mBLIP's captioning prompt.
    caption = pipe(text=chat(None, picture=picture), max_new_tokens=3, return_full_text=False, **NO_STOP)
    expected = model.generate(**processor(images=picture, text=DEFAULT_CAPTION_PROMPT), max_new_tokens=3, **NO_STOP)
    assert caption[0]["generated_text"] == processor.batch_decode(expected, skip_special_tokens=True)[0]


# ---------------------------------------------------------------------------------------------------- attention
# The attention kernels each LLM family has in transformers 5 (BLOOM has no sdpa path).
LLM_ATTENTION = {"mt5": ("eager", "sdpa"), "bloom": ("eager",), "llama": ("eager", "sdpa")}


def test_attention_per_sub_model_gives_equal_outputs(family, tmp_path):
    _, processor = saved(tmp_path, family)
    batch = processor(text=PROMPTS, text_target=TARGETS)
    pixels = random_pixels(3)
    reference = None
    for llm in LLM_ATTENTION[family]:
        for vision, qformer in (("eager", "eager"), ("sdpa", "eager"), ("eager", "sdpa"), ("sdpa", "sdpa")):
            choice = {"text_config": llm, "vision_config": vision, "qformer_config": qformer}
            model = MBlipForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=choice).eval()
            assert model.language_model.config._attn_implementation == llm
            assert model.vision_model.config._attn_implementation == vision
            assert model.qformer.config._attn_implementation == qformer
            with torch.no_grad():
                out = model(pixel_values=pixels, **batch)
            if reference is None:
                reference = out
                continue
            torch.testing.assert_close(out.loss, reference.loss, rtol=1e-5, atol=1e-5)
            real = batch["labels"] != -100 if family == "mt5" else batch["attention_mask"].bool()
            torch.testing.assert_close(out.logits[real], reference.logits[real], rtol=1e-5, atol=1e-5)
    # At run time too.
    model.set_attn_implementation({"text_config": "eager", "qformer_config": "eager"})
    assert (model.language_model.config._attn_implementation, model.qformer.config._attn_implementation) == (
        "eager",
        "eager",
    )


def test_one_flash_value_leaves_the_qformer_on_sdpa(family):
    _, processor = build(family)
    from mblip.demo.tiny import tiny_config

    config = tiny_config(family, len(processor.tokenizer))
    config._attn_implementation = "flash_attention_2"
    assert config.text_config._attn_implementation == "flash_attention_2"
    assert config.vision_config._attn_implementation == "flash_attention_2"
    assert config.qformer_config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match=r"attn_implementation\['qformer_config'\]='flash_attention_2'.*'sdpa' or"):
        config._attn_implementation = {"qformer_config": "flash_attention_2"}
    with pytest.raises(ValueError, match=r"keys \['llm'\]"):
        config._attn_implementation = {"llm": "sdpa"}
    assert MBlipForConditionalGeneration._supports_flash_attn  # the sub-models decide for themselves


def _flash_attn_installed():
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(not torch.cuda.is_available() or not _flash_attn_installed(), reason="needs CUDA and flash_attn")
@pytest.mark.parametrize("family", ["llama"])
def test_flash_attention_2_in_the_llm_matches_sdpa(family, tmp_path):
    _, processor = saved(tmp_path, family)
    batch = processor(text=PROMPTS, text_target=TARGETS).to("cuda")
    pixels = random_pixels(3).to("cuda", torch.bfloat16)
    outputs = {}
    for implementation in ("flash_attention_2", "sdpa"):
        model = (
            MBlipForConditionalGeneration.from_pretrained(
                tmp_path, attn_implementation=implementation, dtype=torch.bfloat16
            )
            .to("cuda")
            .eval()
        )
        assert model.language_model.config._attn_implementation == implementation
        assert model.qformer.config._attn_implementation == "sdpa"
        with torch.no_grad():
            outputs[implementation] = model(pixel_values=pixels, **batch).loss.float()
    torch.testing.assert_close(outputs["flash_attention_2"], outputs["sdpa"], rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------------- decoding modes
def test_prompt_lookup_decoding_equals_greedy_for_one_example(family):
    model, processor = build(family)
    pixels, batch = random_pixels(1), processor(text=PROMPTS[2])
    greedy = model.generate(pixel_values=pixels, **batch, max_new_tokens=8, num_beams=1, **NO_STOP)
    lookup = model.generate(
        pixel_values=pixels, **batch, max_new_tokens=8, num_beams=1, prompt_lookup_num_tokens=3, **NO_STOP
    )
    assert torch.equal(lookup, greedy)
    with pytest.raises(ValueError, match="batch of one; got a batch of 2"):
        model.generate(pixel_values=random_pixels(2), **processor(text=PROMPTS[:2]), prompt_lookup_num_tokens=3)


def test_assisted_decoding_is_refused_with_the_reason(family):
    model, processor = build(family)
    with pytest.raises(ValueError, match=r"assisted decoding \(got \['assistant_model'\]\).*prompt_lookup_num_tokens"):
        model.generate(pixel_values=random_pixels(1), **processor(text="x"), assistant_model=model)


def test_text_only_generation_and_forward_are_the_llm_alone(family):
    model, processor = build(family)
    batch = processor(text=PROMPTS)
    out = model.generate(**batch, max_new_tokens=4, num_beams=1, **NO_STOP)
    for row in range(3):
        alone = processor(text=PROMPTS[row])
        llm_inputs = dict(inputs_embeds=model.get_input_embeddings()(alone["input_ids"]), **NO_STOP)
        expected = model.language_model.generate(
            **llm_inputs, attention_mask=alone["attention_mask"], max_new_tokens=4, num_beams=1
        )
        expected = expected[:, 1:] if family == "mt5" else expected
        assert out[row].tolist() == expected[0].tolist()
    # forward without an image: the LLM's own loss.
    enc = processor(text=PROMPTS[:1], text_target=TARGETS[:1])
    ours = model(**enc)
    if family == "mt5":
        theirs = model.language_model(**enc)
        torch.testing.assert_close(ours.logits, theirs.logits)
    else:
        theirs = model.language_model(input_ids=enc["input_ids"], labels=enc["labels"])
        torch.testing.assert_close(ours.logits, theirs.logits)
    torch.testing.assert_close(ours.loss, theirs.loss)
    with pytest.raises(ValueError, match="got none of them"):
        model.generate(max_new_tokens=2)
