"""MBlipProcessor: the model's input contract per LLM family, any image mode, clear errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPTS, TARGETS

from mblip.demo.tiny import IMAGE_SIZE, tiny_processor
from mblip.processing_mblip import MBlipProcessor, to_rgb


def image(color=(200, 30, 30), size=(40, 50), mode="RGB"):
    return PIL.Image.new("RGB", size, color).convert(mode)


def test_encoder_decoder_contract():
    processor = tiny_processor("mt5")
    tokenizer = processor.tokenizer
    enc = processor(images=[image()] * 3, text=PROMPTS, text_target=TARGETS)
    assert enc["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    for i in range(3):
        prompt = tokenizer(PROMPTS[i])["input_ids"]
        target = tokenizer(TARGETS[i])["input_ids"]
        n = len(prompt)
        assert enc["input_ids"][i, :n].tolist() == prompt and prompt[-1] == tokenizer.eos_token_id
        assert (enc["input_ids"][i, n:] == tokenizer.pad_token_id).all()  # right-padded
        assert enc["attention_mask"][i].tolist() == [1] * n + [0] * (enc["input_ids"].shape[1] - n)
        assert enc["labels"][i, : len(target)].tolist() == target
        assert (enc["labels"][i, len(target) :] == -100).all()


@pytest.mark.parametrize("family", ["bloom", "llama"])
def test_decoder_only_contract(family):
    processor = tiny_processor(family)
    tokenizer = processor.tokenizer
    enc = processor(images=[image()] * 3, text=PROMPTS, text_target=TARGETS)
    width = enc["input_ids"].shape[1]
    for i in range(3):
        prompt = tokenizer(PROMPTS[i])["input_ids"]
        target = tokenizer(TARGETS[i], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n_pad = width - len(prompt) - len(target)
        assert enc["input_ids"][i].tolist() == [tokenizer.pad_token_id] * n_pad + prompt + target  # left-padded
        assert enc["attention_mask"][i].tolist() == [0] * n_pad + [1] * (len(prompt) + len(target))
        assert enc["labels"][i].tolist() == [-100] * (n_pad + len(prompt)) + target
    # Without targets: the left-padded prompt, ready for generate().
    gen = processor(images=[image()] * 3, text=PROMPTS)
    assert "labels" not in gen
    assert all(gen["input_ids"][i, -1] != tokenizer.pad_token_id for i in range(3))
    assert processor.tokenizer.padding_side == "left"


def test_family_is_saved_with_the_processor_not_guessed(tmp_path):
    processor = tiny_processor("bloom")
    processor.save_pretrained(tmp_path)
    loaded = MBlipProcessor.from_pretrained(tmp_path)
    assert loaded.is_encoder_decoder is False and loaded.tokenizer.padding_side == "left"
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(
            loaded(text=PROMPTS, text_target=TARGETS)[key], processor(text=PROMPTS, text_target=TARGETS)[key]
        )
    with pytest.raises(ValueError, match="is_encoder_decoder"):
        MBlipProcessor(processor.image_processor, processor.tokenizer)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I", "F"])
def test_any_pil_mode_becomes_rgb(mode):
    processor = tiny_processor("mt5")
    enc = processor(images=image(mode=mode), text="zwei")
    assert enc["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(enc["pixel_values"]).all()


def test_sixteen_bit_images_are_scaled_not_clipped():
    grey8 = PIL.Image.fromarray(np.full((8, 8), 128, np.uint8), mode="L")
    grey16 = PIL.Image.fromarray(np.full((8, 8), 128 * 257, np.uint16))
    assert grey16.mode == "I;16"
    assert np.array_equal(np.asarray(to_rgb(grey16)), np.asarray(to_rgb(grey8)))
    processor = tiny_processor("mt5")
    torch.testing.assert_close(
        processor(images=grey16, text="x")["pixel_values"], processor(images=grey8, text="x")["pixel_values"]
    )


def test_transparency_is_composited_on_white():
    clear = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(clear)).tolist() == np.full((4, 4, 3), 255).tolist()
    half = np.zeros((4, 4, 4), np.uint8)
    half[..., 3] = 128
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [127, 127, 127]


def test_arrays_and_tensors_in_any_layout():
    processor = tiny_processor("mt5")
    rgb = np.array(image(size=(40, 40)))
    reference = processor(images=PIL.Image.fromarray(rgb), text="x")["pixel_values"]
    for variant in (
        rgb,
        np.moveaxis(rgb, -1, 0),  # channels first
        rgb.astype(np.float32) / 255.0,  # floats in [0, 1]
        torch.from_numpy(rgb),
        torch.from_numpy(np.moveaxis(rgb, -1, 0).copy()).float() / 255.0,
    ):
        torch.testing.assert_close(processor(images=variant, text="x")["pixel_values"], reference, atol=0.02, rtol=0)
    grey = processor(images=np.full((40, 40), 90, np.uint8), text="x")["pixel_values"]
    assert grey.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_several_images_per_example():
    processor = tiny_processor("bloom")
    enc = processor(images=[[image(), image(mode="L")], [image(), image()]], text=PROMPTS[:2])
    assert enc["pixel_values"].shape == (2, 2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match=r"same number of images.*\[2, 1\]"):
        processor(images=[[image(), image()], [image()]], text=PROMPTS[:2])


def test_bad_input_names_what_was_wrong():
    processor = tiny_processor("mt5")
    with pytest.raises(ValueError, match="3 images .* but 2 prompts"):
        processor(images=[image()] * 3, text=PROMPTS[:2])
    with pytest.raises(ValueError, match="empty"):
        processor(images=[], text=None)
    with pytest.raises(ValueError, match="empty list"):
        processor(images=None, text=[])
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        processor(text=PROMPTS[:2], text_target=TARGETS[:1])
    with pytest.raises(ValueError, match=r"shape \(5, 5, 2\).*channels"):
        processor(images=np.zeros((5, 5, 2), np.uint8), text="x")
    with pytest.raises(ValueError, match="image 0 is the string 'cat.jpg', which is not an image file"):
        processor(images="cat.jpg", text="x")
    with pytest.raises(ValueError, match="strings"):
        processor(text=[1, 2])
    with pytest.raises(ValueError, match="return_tensors='tf'"):
        processor(text="x", return_tensors="tf")
    with pytest.raises(ValueError, match="Pass `images`, `text`, or both"):
        processor()


def test_long_prompts_are_truncated_with_a_warning_keeping_their_end():
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    processor = tiny_processor("bloom")
    processor.max_length = 5
    long_prompt = PROMPTS[2]
    full = processor.tokenizer(long_prompt)["input_ids"]
    assert len(full) > 5
    with CaptureLogger(logging.get_logger("mblip.processing_mblip")) as captured:
        enc = processor(text=[long_prompt, "zwei"])
    assert "Truncated 1 of 2 prompts to 5 tokens" in captured.out
    assert enc["input_ids"][0].tolist() == full[-5:]


def test_decode_delegates_to_the_tokenizer():
    processor = tiny_processor("llama")
    ids = processor.tokenizer(["zwei grüne Dreiecke", "два"], add_special_tokens=False)["input_ids"]
    assert processor.batch_decode(ids) == ["zwei grüne Dreiecke", "два"]
    assert processor.decode(ids[1]) == "два"


@pytest.mark.parametrize("family", ["mt5", "bloom", "llama"])
def test_truncation_keeps_the_chosen_end_and_the_tokens_the_tokenizer_adds(family):
    """The official training keeps each text's start (`prompt_truncation_side="right"`) and, like the tokenizer's own
    truncation, T5's EOS and Llama's BOS; the default keeps a prompt's end."""
    processor = tiny_processor(family)
    tokenizer = processor.tokenizer
    text = "Question: what colour is the big circle on the left of the picture? Short answer in English:"
    full = tokenizer(text)["input_ids"]
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    at = next(i for i in range(len(full)) if full[i : i + len(body)] == body)
    added, suffix = full[:at], full[at + len(body) :]  # the tokens the tokenizer adds around the text
    limit = 8
    room = limit - len(added) - len(suffix)
    start = processor(
        text=[text], text_target=[text], max_length=limit, prompt_truncation_side="right", return_tensors=None
    )
    end = processor(text=[text], max_length=limit, return_tensors=None)
    if processor.is_encoder_decoder:
        assert start["input_ids"][0] == added + body[:room] + suffix  # suffix: T5's EOS
        assert start["labels"][0] == added + body[:room] + suffix
        assert suffix == [tokenizer.eos_token_id]
    else:
        target = body[:limit] + [tokenizer.eos_token_id]  # decoder-only targets: limit tokens, then EOS
        assert start["input_ids"][0] == added + body[:room] + target
    assert end["input_ids"][0] == added + body[-room:] + suffix
    with pytest.raises(ValueError, match="prompt_truncation_side"):
        processor(text=[text], prompt_truncation_side="middle")
